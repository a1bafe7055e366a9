#!/usr/bin/env node
// Bundle the CLI compiled by tsc (dist/src/) into dist/bundle/ with rolldown, so
// that `moat` loads a handful of files instead of ~110 ES modules: resolving,
// opening and compiling each module was most of `moat serve`'s start-up
// (bench/README.md, "moat host"). The commands that `serve` does not need
// (learn with tldts, proxy, explain, host) stay separate chunks, loaded by
// their dynamic import() as before. host-worker.js is an entry of its own,
// beside the chunk that starts it (`new URL('./host-worker.js', import.meta.url)`).
// bin/moat.mjs runs the bundle when it is at least as new as dist/src/cli.js,
// else the unbundled modules. Usage: node scripts/bundle-cli.mjs (after tsc).
import { rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'rolldown';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const out = join(root, 'dist', 'bundle');
rmSync(out, { recursive: true, force: true });
await build({
  input: {
    moat: join(root, 'dist', 'src', 'cli.js'),
    'host-worker': join(root, 'dist', 'src', 'host-worker.js'),
    // bin/moat.mjs starts the launcher watch before the CLI loads.
    'parent-watch': join(root, 'dist', 'src', 'parent-watch.js'),
  },
  platform: 'node',
  logLevel: 'warn',
  output: { dir: out, format: 'esm', entryFileNames: '[name].js', chunkFileNames: '[name].js' },
});
console.log('bundle-cli: built dist/bundle/moat.js');
