#!/usr/bin/env node
// Thin launcher: the CLI is compiled TypeScript in dist/ (npm run build).
import { main } from '../dist/src/cli.js';
import { watchLauncher } from '../dist/src/parent-watch.js';

// Started by npx / npm exec: end with npm, which does not pass its SIGTERM
// on (src/parent-watch.ts; MOAT_EXIT_WITH_PARENT=0 turns it off).
watchLauncher();
await main();
