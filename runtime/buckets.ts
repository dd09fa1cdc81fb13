// Opening a KV bucket that may not exist yet (no agent or planner has created it): null instead of an error.
import { Kvm, type KV } from '@nats-io/kv';
import type { Bus } from './nats.ts';

export async function openBucket(bus: Bus, name: string): Promise<KV | null> {
  try {
    const kv = await new Kvm(bus.js).open(name);
    await kv.status(); // fails when the bucket's stream does not exist
    return kv;
  } catch {
    return null;
  }
}
