// Prometheus text metrics: counters, gauges and histograms with labels, in one registry per process; rendered in
// the text exposition format (version 0.0.4). Small on purpose: what the services need, nothing more.
import { createServer, type Server } from 'node:http';

type Labels = Record<string, string>;
const key = (labels: Labels) => JSON.stringify(Object.entries(labels).sort(([a], [b]) => (a < b ? -1 : 1)));
const escape = (v: string) => v.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"');
const fmtLabels = (labels: Labels, extra?: [string, string]) => {
  const all = Object.entries(labels).sort(([a], [b]) => (a < b ? -1 : 1));
  if (extra) all.push(extra);
  return all.length === 0 ? '' : `{${all.map(([k, v]) => `${k}="${escape(v)}"`).join(',')}}`;
};

abstract class Metric {
  constructor(
    readonly name: string,
    readonly help: string,
    readonly type: 'counter' | 'gauge' | 'histogram',
  ) {}
  abstract lines(): string[];
}

export class Counter extends Metric {
  readonly #values = new Map<string, { labels: Labels; value: number }>();
  constructor(name: string, help: string) {
    super(name, help, 'counter');
  }
  inc(labels: Labels = {}, by = 1): void {
    const k = key(labels);
    const v = this.#values.get(k) ?? { labels, value: 0 };
    v.value += by;
    this.#values.set(k, v);
  }
  lines(): string[] {
    return [...this.#values.values()].map((v) => `${this.name}${fmtLabels(v.labels)} ${v.value}`);
  }
}

class Gauge extends Metric {
  readonly #values = new Map<string, { labels: Labels; value: number }>();
  constructor(name: string, help: string) {
    super(name, help, 'gauge');
  }
  set(labels: Labels, value: number): void {
    this.#values.set(key(labels), { labels, value });
  }
  lines(): string[] {
    return [...this.#values.values()].map((v) => `${this.name}${fmtLabels(v.labels)} ${v.value}`);
  }
}

class Histogram extends Metric {
  readonly #values = new Map<string, { labels: Labels; counts: number[]; sum: number; count: number }>();
  constructor(
    name: string,
    help: string,
    readonly buckets: number[],
  ) {
    super(name, help, 'histogram');
  }
  observe(labels: Labels, value: number): void {
    const k = key(labels);
    const v = this.#values.get(k) ?? { labels, counts: this.buckets.map(() => 0), sum: 0, count: 0 };
    this.buckets.forEach((b, i) => {
      if (value <= b) v.counts[i]! += 1;
    });
    v.sum += value;
    v.count += 1;
    this.#values.set(k, v);
  }
  lines(): string[] {
    const out: string[] = [];
    for (const v of this.#values.values()) {
      this.buckets.forEach((b, i) => out.push(`${this.name}_bucket${fmtLabels(v.labels, ['le', String(b)])} ${v.counts[i]}`));
      out.push(`${this.name}_bucket${fmtLabels(v.labels, ['le', '+Inf'])} ${v.count}`);
      out.push(`${this.name}_sum${fmtLabels(v.labels)} ${v.sum}`);
      out.push(`${this.name}_count${fmtLabels(v.labels)} ${v.count}`);
    }
    return out;
  }
}

/** Seconds: from a millisecond up to a minute. */
const LATENCY_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];

export class Registry {
  readonly #metrics = new Map<string, Metric>();
  readonly #collectors: (() => void)[] = [];

  /** Runs before every render: for values read from elsewhere (e.g. a sequence a service holds). */
  onCollect(fn: () => void): void {
    this.#collectors.push(fn);
  }

  #get<M extends Metric>(name: string, make: () => M): M {
    const m = this.#metrics.get(name) ?? make();
    this.#metrics.set(name, m);
    return m as M;
  }
  counter(name: string, help: string): Counter {
    return this.#get(name, () => new Counter(name, help));
  }
  gauge(name: string, help: string): Gauge {
    return this.#get(name, () => new Gauge(name, help));
  }
  histogram(name: string, help: string, buckets = LATENCY_BUCKETS): Histogram {
    return this.#get(name, () => new Histogram(name, help, buckets));
  }
  render(): string {
    for (const c of this.#collectors) c();
    const out: string[] = [];
    for (const m of [...this.#metrics.values()].sort((a, b) => (a.name < b.name ? -1 : 1))) {
      out.push(`# HELP ${m.name} ${m.help}`, `# TYPE ${m.name} ${m.type}`, ...m.lines());
    }
    return out.join('\n') + '\n';
  }
}

export const CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8';

/** Serves a registry at /metrics (for services without an HTTP server of their own). */
export async function serveMetrics(registry: Registry, host: string, port: number): Promise<{ url: string; close(): Promise<void> }> {
  const server: Server = createServer((req, res) => {
    if (req.url !== '/metrics') {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { 'content-type': CONTENT_TYPE }).end(registry.render());
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve());
  });
  const address = server.address() as { port: number };
  return { url: `http://${host}:${address.port}/metrics`, close: () => new Promise((r) => server.close(() => r())) };
}
