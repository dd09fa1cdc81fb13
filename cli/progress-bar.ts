// A progress line on stderr for anything that can take more than a few seconds (replay, a large policy file, waiting
// for cells): `label [#######.......] done/total unit, rate/s, ETA s`, redrawn in place. Only on a terminal, and never
// with --json: elsewhere it draws nothing (a pipe or a log file gets no carriage returns).
export type ProgressBar = { update(done: number, total: number): void; finish(): void };

const WIDTH = 24;

/** The line for `done` of `total` after `elapsedMs` (pure: what `progressBar` draws). */
export function progressLine(label: string, unit: string, done: number, total: number, elapsedMs: number): string {
  const frac = total > 0 ? Math.min(1, done / total) : 1;
  const filled = Math.round(frac * WIDTH);
  const rate = done / Math.max(0.001, elapsedMs / 1000);
  const eta = rate > 0 ? Math.max(0, (total - done) / rate) : 0;
  return `${label} [${'#'.repeat(filled)}${'.'.repeat(WIDTH - filled)}] ${done}/${total} ${unit}, ${Math.round(rate)}/s, ETA ${eta.toFixed(1)} s`;
}

/** `delayMs`: draw nothing until the operation has run this long (a quick one leaves no trace). */
export function progressBar(label: string, unit: string, o: { json: boolean; delayMs?: number; stream?: NodeJS.WriteStream; now?: () => number }): ProgressBar {
  const stream = o.stream ?? process.stderr;
  const now = o.now ?? Date.now;
  if (o.json || !stream.isTTY) return { update() {}, finish() {} };
  const t0 = now();
  let drawn = false;
  return {
    update(done, total) {
      if (now() - t0 < (o.delayMs ?? 0)) return;
      drawn = true;
      stream.write(`\r${progressLine(label, unit, done, total, now() - t0)}   `);
    },
    finish() {
      if (drawn) stream.write('\n');
    },
  };
}
