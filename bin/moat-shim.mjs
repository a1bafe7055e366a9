#!/usr/bin/env node
// Launcher for the C shim built by `npm install` (scripts/build-shim.mjs):
// npm bins must be files that exist in the package, so this finds the binary
// and hands it our arguments, stdio and exit status.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const binary = join(dirname(fileURLToPath(import.meta.url)), '..', 'src', 'shim', 'moat-shim');
if (!existsSync(binary)) {
  console.error(`moat-shim: ${binary} is not built; run \`npm install\` (or \`node scripts/build-shim.mjs\`) with a C compiler installed`);
  process.exit(1);
}
const r = spawnSync(binary, process.argv.slice(2), { stdio: 'inherit' });
if (r.error) {
  console.error(`moat-shim: ${r.error.message}`);
  process.exit(1);
}
process.exit(r.status ?? (r.signal ? 128 : 1));
