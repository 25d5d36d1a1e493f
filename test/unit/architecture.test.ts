/**
 * The import direction of src/, read from the sources: every relative import
 * of every file (type-only ones too) must point down the layers, and no
 * import circle may exist anywhere. Every violation is reported with its file
 * and import.
 *
 *   wire <- core <- nat <- helpers (ipsec, pptp) <- persist <- query <- daemon, cli
 *   config (the file's reader, checks, schema) <- daemon, cli
 *   edge (tun, netlink, the native modules' check) depends only on wire and core
 *
 * Nothing imports daemon or cli but the program's entry point, src/bin/,
 * which hands the daemon to the CLI's `vpnmasq run`.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as ts from 'typescript';

const ROOT = path.resolve(__dirname, '../../..');
const SRC = path.join(ROOT, 'src');

/** What each layer may import (besides itself). */
const MAY_IMPORT: Readonly<Record<string, readonly string[]>> = {
  wire: [],
  core: ['wire'],
  edge: ['wire', 'core'],
  nat: ['wire', 'core'],
  helpers: ['wire', 'core', 'nat'],
  persist: ['wire', 'core', 'nat', 'helpers'],
  query: ['wire', 'core', 'nat', 'helpers', 'persist'],
  config: ['wire', 'core', 'persist'],
  daemon: ['wire', 'core', 'edge', 'nat', 'helpers', 'persist', 'query', 'config'],
  cli: ['wire', 'core', 'edge', 'nat', 'helpers', 'persist', 'query', 'config'],
  bin: ['cli', 'daemon'],
};

/** Single imports allowed across the rule, each with its reason. */
const ALLOWED: ReadonlyArray<{ from: string; to: string; why: string }> = [];

function sourceFiles(dir: string): string[] {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = path.join(dir, e.name);
    if (e.isDirectory()) return sourceFiles(p);
    return e.name.endsWith('.ts') && !e.name.endsWith('.d.ts') ? [p] : [];
  });
}

const rel = (file: string) => path.relative(ROOT, file).split(path.sep).join('/');

/** The layer of a file: its first directory under src/ (undefined for a file directly in src/). */
function layerOf(file: string): string | undefined {
  const parts = path.relative(SRC, file).split(path.sep);
  return parts.length > 1 ? parts[0] : undefined;
}

/** The file a relative specifier names, or null when it names none. */
function resolve(from: string, spec: string): string | null {
  const base = path.resolve(path.dirname(from), spec);
  for (const candidate of [base, `${base}.ts`, path.join(base, 'index.ts')]) {
    if (candidate.endsWith('.ts') && fs.existsSync(candidate) && fs.statSync(candidate).isFile()) return candidate;
  }
  return null;
}

interface Edge { from: string; spec: string; to: string }

/** Every relative import, re-export, dynamic import and require of every file under src/. */
function importGraph(): { files: string[]; edges: Edge[]; unresolved: Edge[] } {
  const files = sourceFiles(SRC).sort();
  const edges: Edge[] = [];
  const unresolved: Edge[] = [];
  for (const from of files) {
    const info = ts.preProcessFile(fs.readFileSync(from, 'utf8'), true, true);
    for (const ref of info.importedFiles) {
      if (!ref.fileName.startsWith('.')) continue;
      const to = resolve(from, ref.fileName);
      if (to === null) unresolved.push({ from, spec: ref.fileName, to: '' });
      else edges.push({ from, spec: ref.fileName, to });
    }
  }
  return { files, edges, unresolved };
}

/** Strongly connected components with more than one file, or a file importing itself (Tarjan). */
function circles(files: string[], edges: Edge[]): string[][] {
  const next = new Map<string, string[]>(files.map((f) => [f, []]));
  for (const e of edges) next.get(e.from)?.push(e.to);
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const found: string[][] = [];
  let counter = 0;
  const visit = (v: string): void => {
    index.set(v, counter);
    low.set(v, counter);
    counter++;
    stack.push(v);
    onStack.add(v);
    for (const w of next.get(v) ?? []) {
      if (!index.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v) as number, low.get(w) as number));
      } else if (onStack.has(w)) {
        low.set(v, Math.min(low.get(v) as number, index.get(w) as number));
      }
    }
    if (low.get(v) !== index.get(v)) return;
    const component: string[] = [];
    for (let w = stack.pop(); w !== undefined; w = stack.pop()) {
      onStack.delete(w);
      component.push(w);
      if (w === v) break;
    }
    if (component.length > 1 || (next.get(v) ?? []).includes(v)) found.push(component.sort());
  };
  for (const f of files) if (!index.has(f)) visit(f);
  return found;
}

/** One circle through the files of a component, as `a -> b -> a`. */
function circleThrough(component: string[], edges: Edge[]): string {
  const inside = new Set(component);
  const start = component[0];
  const seen = new Map<string, string | null>([[start, null]]);
  const queue = [start];
  while (queue.length > 0) {
    const v = queue.shift() as string;
    for (const e of edges) {
      if (e.from !== v || !inside.has(e.to)) continue;
      if (e.to === start) {
        const trail = [start];
        for (let w: string | null = v; w !== null && w !== start; w = seen.get(w) ?? null) trail.splice(1, 0, w);
        return [...trail, start].map(rel).join(' -> ');
      }
      if (!seen.has(e.to)) {
        seen.set(e.to, v);
        queue.push(e.to);
      }
    }
  }
  return component.map(rel).join(', ');
}

describe('architecture', () => {
  const graph = importGraph();

  it('reads the sources', () => {
    assert.ok(graph.files.length > 40, `found ${graph.files.length} files under ${SRC}`);
    assert.deepEqual(graph.unresolved.map((e) => `${rel(e.from)}: import '${e.spec}' names no file`), []);
  });

  it('every file is in a layer and every import points down the layers', () => {
    const problems: string[] = [];
    for (const f of graph.files) {
      const layer = layerOf(f);
      if (layer === undefined || MAY_IMPORT[layer] === undefined) problems.push(`${rel(f)}: not in a layer (${Object.keys(MAY_IMPORT).join(', ')})`);
    }
    for (const e of graph.edges) {
      const from = layerOf(e.from);
      const to = layerOf(e.to);
      if (from === undefined || to === undefined || MAY_IMPORT[from] === undefined || from === to) continue;
      if (MAY_IMPORT[from].includes(to)) continue;
      if (ALLOWED.some((a) => a.from === rel(e.from) && a.to === rel(e.to))) continue;
      problems.push(`${rel(e.from)} imports '${e.spec}' (${rel(e.to)}): ${from} may import ${MAY_IMPORT[from].join(', ') || 'nothing else'}`);
    }
    assert.deepEqual(problems, [], `\n${problems.join('\n')}`);
  });

  it('no import circle', () => {
    const found = circles(graph.files, graph.edges).map((c) => circleThrough(c, graph.edges));
    assert.deepEqual(found, [], `\n${found.join('\n')}`);
  });

  it('the exceptions are still needed', () => {
    const stale = ALLOWED.filter((a) => !graph.edges.some((e) => rel(e.from) === a.from && rel(e.to) === a.to));
    assert.deepEqual(stale, []);
  });
});
