// A tiny TCP tool run inside network namespaces by the end-to-end tests (plain JavaScript: it starts fast).
//   serve PORT [PORT...]      echo server on every port; prints "ready" once listening
//   probe HOST PORT MS        prints "open", "refused" or "timeout"
//   hold HOST PORT            connects ("connected"), then sends each stdin line and prints "echo:<line>" or "closed"
//   serve-udp PORT [PORT...]  UDP echo on every port (IPv4); prints "ready" once bound
//   probe-udp HOST PORT MS    sends a datagram; prints "open" (echoed), "refused" (ICMP unreachable) or "timeout"
//   wait-open PORT            reads a HOST line on stdin, then connects to HOST:PORT again and again (5 ms apart, each
//                             attempt at most 200 ms) until one opens; prints the wall-clock time (ms) it did
//   loop HOST PORT MS         connects again and again (each attempt closed at once, MS timeout); prints "started"
//                             after the first attempt, and on a "stop" line on stdin the counts as JSON:
//                             {"open":n,"refused":n,"timeout":n,"error":n}
import dgram from 'node:dgram';
import net from 'node:net';
import readline from 'node:readline';

const [mode, ...args] = process.argv.slice(2);
if (mode === 'serve') {
  // IPv4 and IPv6 (when the namespace has it) on every port
  let pending = args.length * 2;
  const up = () => {
    if (--pending === 0) console.log('ready');
  };
  for (const port of args.map(Number)) {
    net.createServer((s) => s.pipe(s)).listen(port, '0.0.0.0', up);
    const v6 = net.createServer((s) => s.pipe(s));
    v6.once('error', up);
    v6.listen({ port, host: '::', ipv6Only: true }, up);
  }
} else if (mode === 'serve-udp') {
  let pending = args.length;
  for (const port of args.map(Number)) {
    const sock = dgram.createSocket('udp4');
    sock.on('message', (msg, from) => sock.send(msg, from.port, from.address));
    sock.bind(port, '0.0.0.0', () => {
      if (--pending === 0) console.log('ready');
    });
  }
} else if (mode === 'probe-udp') {
  const [host, port, ms] = args;
  const sock = dgram.createSocket('udp4');
  const done = (r) => {
    console.log(r);
    process.exit(0);
  };
  setTimeout(() => done('timeout'), Number(ms));
  sock.on('message', () => done('open'));
  sock.on('error', (e) => done(e.code === 'ECONNREFUSED' ? 'refused' : `error:${e.code}`));
  sock.connect(Number(port), host, () => sock.send('ping'));
} else if (mode === 'wait-open') {
  const [port] = args;
  console.log('waiting');
  readline.createInterface({ input: process.stdin }).once('line', (host) => {
    const attempt = () => {
      const s = net.connect({ host, port: Number(port) });
      let over = false;
      const retry = () => {
        if (over) return;
        over = true;
        s.destroy();
        setTimeout(attempt, 5);
      };
      s.setTimeout(200, retry);
      s.once('connect', () => {
        console.log(String(Date.now()));
        process.exit(0);
      });
      s.once('error', retry);
    };
    attempt();
  });
} else if (mode === 'probe') {
  const [host, port, ms] = args;
  const s = net.connect({ host, port: Number(port) });
  const done = (r) => {
    console.log(r);
    s.destroy();
    process.exit(0);
  };
  s.setTimeout(Number(ms), () => done('timeout'));
  s.once('connect', () => done('open'));
  s.once('error', (e) => done(e.code === 'ECONNREFUSED' || e.code === 'ECONNRESET' ? 'refused' : `error:${e.code}`));
} else if (mode === 'hold') {
  const [host, port] = args;
  const s = net.connect({ host, port: Number(port) });
  s.once('connect', () => console.log('connected'));
  s.once('error', (e) => console.log(`error:${e.code}`));
  s.once('close', () => console.log('closed'));
  let buf = '';
  s.on('data', (d) => {
    buf += d.toString();
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      console.log(`echo:${buf.slice(0, i)}`);
      buf = buf.slice(i + 1);
    }
  });
  readline.createInterface({ input: process.stdin }).on('line', (line) => s.write(line + '\n'));
} else if (mode === 'loop') {
  const [host, port, ms] = args;
  const counts = { open: 0, refused: 0, timeout: 0, error: 0 };
  let stopping = false;
  let first = true;
  const attempt = () => {
    if (stopping) {
      console.log(JSON.stringify(counts));
      process.exit(0);
    }
    const s = net.connect({ host, port: Number(port) });
    let done = false;
    const finish = (r) => {
      if (done) return;
      done = true;
      counts[r] += 1;
      s.destroy();
      if (first) {
        first = false;
        console.log('started');
      }
      setImmediate(attempt);
    };
    s.setTimeout(Number(ms), () => finish('timeout'));
    s.once('connect', () => finish('open'));
    s.once('error', (e) => finish(e.code === 'ECONNREFUSED' || e.code === 'ECONNRESET' ? 'refused' : 'error'));
  };
  readline.createInterface({ input: process.stdin }).on('line', (line) => {
    if (line === 'stop') stopping = true;
  });
  attempt();
} else {
  console.error('usage: tcp-tool serve|probe|hold …');
  process.exit(2);
}
