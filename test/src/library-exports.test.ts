/**
 * The package as others install it: package.json `exports` point at files
 * `npm run build` emits (code and .d.ts), every entry loads by its package
 * name, and the pure libraries stay pure — nothing under dist/netstack,
 * dist/dns or dist/sni imports src/ (or anything outside those three
 * folders), only the npm dependencies package.json declares, and netstack
 * imports no package and no `node:` module at all.
 *
 * Reads dist/: run `npm run build` first (npm test does). A missing or stale
 * build fails with that message rather than passing on nothing.
 */
import { describe, it, expect } from 'vitest';
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import ts from 'typescript';

const ROOT = resolve(__dirname, '..', '..');
const DIST = join(ROOT, 'dist');
const PURE = ['netstack', 'dns', 'sni'] as const;
const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as {
  name: string;
  exports: Record<string, string | { types: string; default: string }>;
  dependencies: Record<string, string>;
};

function filesUnder(dir: string, ext: string): string[] {
  const out: string[] = [];
  for (const name of readdirSync(dir)) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...filesUnder(p, ext));
    else if (name.endsWith(ext) && !name.endsWith('.d.ts')) out.push(p);
  }
  return out;
}

/** Every module specifier a JS file imports (static, re-export, dynamic). */
function importsOf(file: string): string[] {
  const info = ts.preProcessFile(readFileSync(file, 'utf8'), true, true);
  return info.importedFiles.map((f) => f.fileName);
}

/** A fresh build: every source file has its .js and .d.ts, no older than the source. */
function expectBuilt(folder: string): void {
  for (const src of filesUnder(join(ROOT, folder), '.ts')) {
    const rel = relative(ROOT, src).replace(/\.ts$/, '');
    const js = join(DIST, `${rel}.js`);
    const dts = join(DIST, `${rel}.d.ts`);
    expect(existsSync(js) && existsSync(dts), `${rel}: not built (run npm run build)`).toBe(true);
    expect(statSync(js).mtimeMs, `${rel}.js is older than its source (run npm run build)`).toBeGreaterThanOrEqual(statSync(src).mtimeMs - 1000);
  }
}

describe('the pure libraries import nothing of the service', () => {
  const allowedPackages = new Set(Object.keys(pkg.dependencies));

  for (const folder of PURE) {
    it(`dist/${folder}: relative imports stay in netstack/dns/sni, packages are declared dependencies${folder === 'netstack' ? ' (none at all), no node: modules' : ', no node: modules'}`, () => {
      expectBuilt(folder);
      const files = filesUnder(join(DIST, folder), '.js');
      expect(files.length).toBeGreaterThan(0);
      const offences: string[] = [];
      for (const file of files) {
        for (const spec of importsOf(file)) {
          const where = `${relative(DIST, file)} imports "${spec}"`;
          if (spec.startsWith('.')) {
            const target = relative(DIST, resolve(dirname(file), spec));
            const top = target.split('/')[0]!;
            if (!(PURE as readonly string[]).includes(top)) offences.push(`${where} (outside netstack/dns/sni)`);
            else if (!existsSync(join(DIST, target))) offences.push(`${where} (no such file)`);
          } else if (spec.startsWith('node:')) {
            offences.push(`${where} (I/O module in a pure library)`);
          } else {
            const name = spec.startsWith('@') ? spec.split('/').slice(0, 2).join('/') : spec.split('/')[0]!;
            if (folder === 'netstack') offences.push(`${where} (netstack imports no package)`);
            else if (!allowedPackages.has(name)) offences.push(`${where} (not a dependency in package.json)`);
          }
        }
      }
      expect(offences).toEqual([]);
    });
  }

  it('the import check sees imports (a service file that imports node: and src/ is caught)', () => {
    // Guards the guard: if importsOf found nothing, the tests above would pass on anything.
    const specs = importsOf(join(DIST, 'src', 'config.js'));
    expect(specs).toContain('node:fs');
    expect(specs.some((s) => s.startsWith('../netstack/'))).toBe(true);
  });
});

describe('package.json exports', () => {
  it('every entry names a built .js and its .d.ts', () => {
    expect(Object.keys(pkg.exports).sort()).toEqual(['.', './dns', './netstack', './package.json', './sni']);
    for (const [entry, target] of Object.entries(pkg.exports)) {
      if (typeof target === 'string') {
        expect(existsSync(join(ROOT, target)), entry).toBe(true);
        continue;
      }
      expect(target.default.replace(/\.js$/, '.d.ts')).toBe(target.types);
      expect(existsSync(join(ROOT, target.default)), `${entry} -> ${target.default} (run npm run build)`).toBe(true);
      expect(existsSync(join(ROOT, target.types)), `${entry} -> ${target.types}`).toBe(true);
    }
  });

  it('each entry loads by its package name and exports what its docs promise', () => {
    // Package self-reference (Node resolves "moat/..." through "exports" from inside the package).
    const script = `
      const root = await import('${pkg.name}');
      const netstack = await import('${pkg.name}/netstack');
      const dns = await import('${pkg.name}/dns');
      const sni = await import('${pkg.name}/sni');
      console.log(JSON.stringify({
        root: [typeof root.serve, typeof root.learnAllowlist, typeof root.ConfigError, typeof root.host, typeof root.NetworkConfigError, typeof root.NetworkExistsError],
        netstack: [typeof netstack.createStack, typeof netstack.ManualClock, typeof netstack.parseIPv4],
        dns: [typeof dns.parseRules, typeof dns.ZoneTable, typeof dns.DnsResponder],
        sni: [typeof sni.ClientHelloReader, typeof sni.EgressPolicy, typeof sni.NamePeeker],
      }));
      let deep = 'refused';
      try { await import('${pkg.name}/dist/src/serve.js'); deep = 'loaded'; } catch (e) { deep = e.code; }
      console.log(deep);`;
    const out = execFileSync(process.execPath, ['--input-type=module', '-e', script], { cwd: ROOT, encoding: 'utf8' }).trim().split('\n');
    expect(JSON.parse(out[0]!)).toEqual({
      root: ['function', 'function', 'function', 'function', 'function', 'function'],
      netstack: ['function', 'function', 'function'],
      dns: ['function', 'function', 'function'],
      sni: ['function', 'function', 'function'],
    });
    // Only the listed entries are public: deep paths into dist are not part of the API.
    expect(out[1]).toBe('ERR_PACKAGE_PATH_NOT_EXPORTED');
  });
});
