/**
 * The packet path's layers depend one way (wire <- core <- nat <- helpers):
 * read from the sources' import statements, type-only imports included, with
 * no import circle among those modules.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';

const SRC = path.resolve(__dirname, '../../../src');
/** What each layer may import from (itself included). */
const ALLOWED: Record<string, string[]> = {
  wire: ['wire'],
  core: ['core', 'wire'],
  nat: ['nat', 'core', 'wire'],
  helpers: ['helpers', 'nat', 'core', 'wire'],
};

function sources(dir: string): string[] {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) return sources(p);
    return e.name.endsWith('.ts') && !e.name.endsWith('.test.ts') ? [p] : [];
  });
}

/** Modules a source file imports (relative specifiers resolved to files under src). */
function imports(file: string): string[] {
  const text = fs.readFileSync(file, 'utf8');
  const out: string[] = [];
  for (const m of text.matchAll(/^(?:import|export)\b[^'"]*?from\s+'(\.[^']+)'/gm)) out.push(path.resolve(path.dirname(file), m[1]) + '.ts');
  return out;
}

const layerOf = (file: string): string => path.relative(SRC, file).split(path.sep)[0];

test('wire, core, nat and helpers import only their own layer and those below it', () => {
  const wrong: string[] = [];
  for (const layer of Object.keys(ALLOWED)) {
    for (const file of sources(path.join(SRC, layer))) {
      for (const dep of imports(file)) {
        if (!ALLOWED[layer].includes(layerOf(dep))) wrong.push(`${path.relative(SRC, file)} -> ${path.relative(SRC, dep)}`);
      }
    }
  }
  assert.deepEqual(wrong, []);
});

test('no import circle among the packet path modules', () => {
  const files = Object.keys(ALLOWED).flatMap((l) => sources(path.join(SRC, l)));
  const graph = new Map(files.map((f) => [f, imports(f).filter((d) => files.includes(d))]));
  const state = new Map<string, 1 | 2>();
  const circles: string[] = [];
  const visit = (f: string, trail: string[]): void => {
    if (state.get(f) === 2) return;
    if (state.get(f) === 1) {
      circles.push([...trail.slice(trail.indexOf(f)), f].map((x) => path.relative(SRC, x)).join(' -> '));
      return;
    }
    state.set(f, 1);
    for (const d of graph.get(f) ?? []) visit(d, [...trail, f]);
    state.set(f, 2);
  };
  for (const f of files) visit(f, []);
  assert.deepEqual(circles, []);
});
