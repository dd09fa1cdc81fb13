// Output helpers: human-readable by default, JSON with --json. Errors go to stderr with their code.
import { NetfoldError } from '../runtime/errors.ts';

export class UsageError extends NetfoldError {
  constructor(message: string) {
    super(message, 'usage', 400, false);
    this.name = 'UsageError';
  }
}

export type Out = { json: boolean; print(human: string, data: unknown): void };

export function output(json: boolean): Out {
  return {
    json,
    print(human, data) {
      process.stdout.write(json ? JSON.stringify(data) + '\n' : human + '\n');
    },
  };
}

export function table(rows: string[][]): string {
  if (rows.length === 0) return '';
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  return rows.map((r) => r.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd()).join('\n');
}
