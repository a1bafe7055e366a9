#!/usr/bin/env node
// Launcher for the C shim built by `npm install` (scripts/build-shim.mjs):
// npm bins must be files that exist in the package, so this finds the binary
// and hands it our arguments, stdio and exit status. Node cannot exec(), so
// the shim runs as our child: the signals a supervisor sends us are passed
// on to it, and (started by npx) it is stopped when npm ends, as moat is.
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { watchLauncher } from '../dist/src/parent-watch.js';

const binary = join(dirname(fileURLToPath(import.meta.url)), '..', 'src', 'shim', 'moat-shim');
if (!existsSync(binary)) {
  console.error(`moat-shim: ${binary} is not built; run \`npm install\` (or \`node scripts/build-shim.mjs\`) with a C compiler installed`);
  process.exit(1);
}
const child = spawn(binary, process.argv.slice(2), { stdio: 'inherit' });
for (const signal of ['SIGTERM', 'SIGINT', 'SIGHUP']) process.on(signal, () => child.kill(signal));
watchLauncher({ onGone: () => child.kill('SIGTERM') });
child.on('error', (e) => {
  console.error(`moat-shim: ${e.message}`);
  process.exit(1);
});
child.on('exit', (code, signal) => process.exit(code ?? (signal ? 128 : 1)));
