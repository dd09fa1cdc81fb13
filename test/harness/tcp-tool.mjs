// A tiny TCP tool run inside network namespaces by the end-to-end tests (plain JavaScript: it starts fast).
//   serve PORT [PORT...]      echo server on every port; prints "ready" once listening
//   probe HOST PORT MS        prints "open", "refused" or "timeout"
//   hold HOST PORT            connects ("connected"), then sends each stdin line and prints "echo:<line>" or "closed"
import net from 'node:net';
import readline from 'node:readline';

const [mode, ...args] = process.argv.slice(2);
if (mode === 'serve') {
  let listening = 0;
  for (const port of args.map(Number)) {
    net
      .createServer((s) => s.pipe(s))
      .listen(port, '0.0.0.0', () => {
        if (++listening === args.length) console.log('ready');
      });
  }
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
} else {
  console.error('usage: tcp-tool serve|probe|hold …');
  process.exit(2);
}
