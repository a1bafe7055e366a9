#!/usr/bin/env node
// Thin launcher: the CLI is compiled TypeScript in dist/ (npm run build), bundled
// into dist/bundle/ (scripts/bundle-cli.mjs: a few files load faster than ~110
// modules). A bundle older than the compiled modules (tsc run alone) is not used.
import { statSync } from 'node:fs';

const bundle = new URL('../dist/bundle/moat.js', import.meta.url);
const modules = new URL('../dist/src/cli.js', import.meta.url);
const mtime = (url) => statSync(url, { throwIfNoEntry: false })?.mtimeMs ?? -1;
const useBundle = mtime(bundle) >= mtime(modules);
const { watchLauncher } = await import(new URL(useBundle ? '../dist/bundle/parent-watch.js' : '../dist/src/parent-watch.js', import.meta.url).href);

// Started by npx / npm exec: end with npm, which does not pass its SIGTERM
// on (src/parent-watch.ts; MOAT_EXIT_WITH_PARENT=0 turns it off).
watchLauncher();
const { main } = await import(useBundle ? bundle.href : modules.href);
await main();
