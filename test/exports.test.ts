// A lint rule as a test: every export of the product's code is used by another file (source, bench or test).
// An export nobody imports is dead code or should not be exported; this keeps the module surface honest.
import t from 'tap';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';

const root = new URL('..', import.meta.url).pathname;
const SOURCE_DIRS = ['events', 'projections', 'runtime', 'services', 'cli', 'cni', 'bench', 'scripts'];

function filesUnder(dir: string): string[] {
  const out: string[] = [];
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...filesUnder(p));
    else if (/\.(ts|mjs)$/.test(name)) out.push(p);
  }
  return out;
}

const sources = SOURCE_DIRS.flatMap((d) => filesUnder(join(root, d)));
const everything = [...sources, ...filesUnder(join(root, 'test')), join(root, 'bin/netfold.mjs'), join(root, 'bin/netfold-cni.mjs')];
const text = new Map(everything.map((f) => [f, readFileSync(f, 'utf8')]));

/**
 * Values a file exports (`export function f`, `export const x`, `export class C`). Types are left out: a type
 * exported to name the parameters or result of an exported function is part of its signature even when no other
 * file spells its name.
 */
function exportsOf(src: string): string[] {
  const names = new Set<string>();
  for (const m of src.matchAll(/^export\s+(?:declare\s+)?(?:async\s+)?(?:function\*?|const|let|class|enum)\s+([A-Za-z_$][\w$]*)/gm)) names.add(m[1]!);
  return [...names];
}

t.test('every exported value is used by another file', async (t) => {
  const unused: string[] = [];
  for (const file of sources) {
    for (const name of exportsOf(text.get(file)!)) {
      const word = new RegExp(`\\b${name.replace(/\$/g, '\\$')}\\b`);
      const usedElsewhere = everything.some((other) => other !== file && word.test(text.get(other)!));
      if (!usedElsewhere) unused.push(`${relative(root, file)}: ${name}`);
    }
  }
  t.same(unused, [], 'exports nobody else uses (remove them, or drop `export`)');
});

t.test('no line of the product code is longer than 160 characters', async (t) => {
  const long: string[] = [];
  for (const file of sources) {
    text
      .get(file)!
      .split('\n')
      .forEach((line, i) => {
        if (line.length > 160) long.push(`${relative(root, file)}:${i + 1} (${line.length})`);
      });
  }
  t.same(long, [], 'lines over 160 characters');
});
