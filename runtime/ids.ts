// Event and request ids: ULIDs, monotonic within a millisecond. The random part comes from a pooled buffer:
// the ulid package's default generator asks the OS for one byte per character, which showed up as the largest
// cost of the write path in the ingest benchmark's CPU profile.
import { randomFillSync } from 'node:crypto';
import { monotonicFactory } from 'ulid';

const pool = Buffer.alloc(4096);
let at = pool.length;

function pooledRandom(): number {
  if (at >= pool.length) {
    randomFillSync(pool);
    at = 0;
  }
  return pool[at++]! / 256;
}

export const newId: () => string = monotonicFactory(pooledRandom);
