/**
 * bin/moat.mjs and the bundled CLI (scripts/bundle-cli.mjs, built by `npm
 * run build`): `moat serve` loads the bundle's few files rather than the
 * ~110 compiled modules (what made its start-up slow), and a bundle older
 * than the compiled modules (tsc run alone) is never what runs.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { spawn, spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';

const ROOT = resolve(import.meta.dirname, '..', '..');
const BIN = join(ROOT, 'bin', 'moat.mjs');

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'moat-bundle-'));
});
afterEach(() => {
  rmSync(dir, { recursive: true, force: true });
});

describe('bin/moat.mjs', () => {
  it('runs moat serve from the bundle: no compiled module of dist/src, no package of node_modules, a handful of files', async () => {
    expect(existsSync(join(ROOT, 'dist', 'bundle', 'moat.js')), 'dist/bundle/moat.js is missing: npm run build').toBe(true);
    // A loader hook that names every module node loads.
    writeFileSync(join(dir, 'hooks.mjs'), 'export async function load(url, context, next) { process.stderr.write(`LOAD ${url}\\n`); return next(url, context); }\n');
    writeFileSync(join(dir, 'register.mjs'), `import { register } from 'node:module';\nregister(${JSON.stringify(pathToFileURL(join(dir, 'hooks.mjs')).href)});\n`);
    const child = spawn(process.execPath, ['--import', pathToFileURL(join(dir, 'register.mjs')).href, BIN, 'serve', '--listen-qemu', `unix://${join(dir, 'g.sock')}`, '--dns-upstream', '127.0.0.1:9', '--log-format', 'json'], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let err = '';
    await new Promise<void>((done, fail) => {
      child.stderr.setEncoding('utf8').on('data', (d: string) => {
        err += d;
        if (err.includes('"moat ready"')) done();
      });
      child.once('exit', (code) => fail(new Error(`moat serve exited ${code}: ${err}`)));
    });
    child.removeAllListeners('exit');
    const gone = new Promise((r) => child.once('exit', r));
    child.kill('SIGTERM');
    await gone;
    const files = err
      .split('\n')
      .filter((l) => l.startsWith('LOAD file:'))
      .map((l) => l.slice('LOAD '.length));
    expect(files.filter((f) => f.includes('/dist/src/') || f.includes('/node_modules/'))).toEqual([]);
    expect(files.filter((f) => f.includes('/dist/bundle/')).length).toBeGreaterThan(0);
    // A handful of chunks (10 with the lazily loaded commands split out), not the ~110 modules of dist/src.
    expect(files.length).toBeLessThanOrEqual(12);
  });

  it('runs the compiled modules when the bundle is older than them (tsc run alone), the bundle otherwise', () => {
    // A stand-in tree: the real launcher, a "bundle" and "modules" that each say which they are.
    mkdirSync(join(dir, 'bin'));
    mkdirSync(join(dir, 'dist', 'bundle'), { recursive: true });
    mkdirSync(join(dir, 'dist', 'src'), { recursive: true });
    copyFileSync(BIN, join(dir, 'bin', 'moat.mjs'));
    writeFileSync(join(dir, 'package.json'), '{"type":"module"}\n');
    writeFileSync(join(dir, 'dist', 'bundle', 'moat.js'), "export async function main() { console.log('bundle'); }\n");
    writeFileSync(join(dir, 'dist', 'src', 'cli.js'), "export async function main() { console.log('modules'); }\n");
    // The launcher also starts the parent watch from the same tree (a no-op stand-in here).
    writeFileSync(join(dir, 'dist', 'bundle', 'parent-watch.js'), 'export function watchLauncher() {}\n');
    writeFileSync(join(dir, 'dist', 'src', 'parent-watch.js'), 'export function watchLauncher() {}\n');
    const run = () => spawnSync(process.execPath, [join(dir, 'bin', 'moat.mjs')], { encoding: 'utf8' }).stdout.trim();
    const at = (path: string, seconds: number) => utimesSync(join(dir, path), seconds, seconds);
    at('dist/bundle/moat.js', 2_000_000);
    at('dist/src/cli.js', 1_000_000);
    expect(run()).toBe('bundle');
    at('dist/src/cli.js', 3_000_000);
    expect(run()).toBe('modules');
    rmSync(join(dir, 'dist', 'bundle'), { recursive: true });
    expect(run()).toBe('modules');
  });
});
