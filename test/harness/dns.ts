// A DNS query over TCP (two-byte length prefix) to 127.0.0.1, for the discovery tests.
import { connect as tcpConnect } from 'node:net';

export function tcpQuery(port: number, packet: Buffer): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const sock = tcpConnect(port, '127.0.0.1');
    const len = Buffer.alloc(2);
    len.writeUInt16BE(packet.length);
    sock.write(Buffer.concat([len, packet]));
    let buf = Buffer.alloc(0);
    sock.on('data', (d: Buffer) => {
      buf = Buffer.concat([buf, d]);
      if (buf.length >= 2 && buf.length >= 2 + buf.readUInt16BE(0)) {
        sock.destroy();
        resolve(buf.subarray(2, 2 + buf.readUInt16BE(0)));
      }
    });
    sock.once('error', reject);
  });
}
