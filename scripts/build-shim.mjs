#!/usr/bin/env node
// Build src/shim/moat-shim from src/shim/*.c with the system C compiler.
// Usage: node scripts/build-shim.mjs   (honours $CC, default `cc`; $CFLAGS is appended)
// Exits non-zero with a message naming the compiler when it is missing or fails.
import { spawnSync } from 'node:child_process';
import { readdirSync, renameSync, rmSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const shimDir = join(root, 'src', 'shim');
const output = join(shimDir, 'moat-shim');
const cc = process.env.CC && process.env.CC.trim() !== '' ? process.env.CC.trim() : 'cc';

const sources = readdirSync(shimDir)
  .filter((name) => name.endsWith('.c'))
  .sort()
  .map((name) => join(shimDir, name));
if (sources.length === 0) {
  console.error(`build-shim: no C sources found in ${relative(root, shimDir)}`);
  process.exit(1);
}

const flags = ['-std=c11', '-Wall', '-Wextra', '-O2'];
const extra = (process.env.CFLAGS ?? '').split(/\s+/).filter((f) => f !== '');
// Compile to a private name and rename: parallel builds never see a half-written binary.
const tmpOutput = `${output}.tmp-${process.pid}`;
const args = [...flags, ...extra, '-o', tmpOutput, ...sources];

const result = spawnSync(cc, args, { stdio: 'inherit' });
if (result.error) {
  const err = /** @type {NodeJS.ErrnoException} */ (result.error);
  if (err.code === 'ENOENT') {
    console.error(
      `build-shim: C compiler '${cc}' not found. Install one (e.g. apt-get install gcc) ` +
        'or set CC to the compiler to use.',
    );
  } else {
    console.error(`build-shim: cannot run '${cc}': ${err.message}`);
  }
  process.exit(1);
}
if (result.status !== 0) {
  const how = result.signal ? `signal ${result.signal}` : `exit code ${result.status}`;
  rmSync(tmpOutput, { force: true });
  console.error(`build-shim: '${cc}' failed (${how}) building ${relative(root, output)}`);
  process.exit(1);
}
renameSync(tmpOutput, output);
console.log(`build-shim: built ${relative(root, output)}`);
