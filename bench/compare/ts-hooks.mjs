/**
 * Lets `node` run bench/compare.ts straight from the source tree:
 *
 *   node --import ./bench/compare/ts-hooks.mjs bench/compare.ts
 *
 * Why not run dist/bench/compare.js? The e2e support code it reuses
 * (test/e2e/harness.ts, moat-fixture.ts) finds the repository root as
 * `import.meta.url/../..`, which is right for test/e2e/*.ts but points at
 * dist/ once compiled, so the shim and bin/moat.mjs would not be found.
 * Moat itself still runs from dist/ (bin/moat.mjs), built by `npm run build`.
 *
 * Hooks: a relative `./x.js` that does not exist resolves to `./x.ts`
 * (tsc NodeNext convention), and .ts files are transpiled one by one with
 * the project's own TypeScript (types are checked by `tsc`, not here).
 */
import { register } from 'node:module';
import { isMainThread } from 'node:worker_threads';
import { readFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

if (isMainThread) register(import.meta.url);

let ts;

export async function resolve(specifier, context, next) {
  if (specifier.endsWith('.js') && (specifier.startsWith('.') || specifier.startsWith('file:')) && context.parentURL) {
    const asJs = new URL(specifier, context.parentURL);
    if (!existsSync(fileURLToPath(asJs))) {
      const asTs = new URL(specifier.replace(/\.js$/, '.ts'), context.parentURL);
      if (existsSync(fileURLToPath(asTs))) return { url: asTs.href, shortCircuit: true };
    }
  }
  return next(specifier, context);
}

export async function load(url, context, next) {
  if (!url.startsWith('file:') || !url.endsWith('.ts')) return next(url, context);
  ts ??= (await import('typescript')).default;
  const source = await readFile(fileURLToPath(url), 'utf8');
  const out = ts.transpileModule(source, {
    fileName: fileURLToPath(url),
    compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022, sourceMap: false, inlineSourceMap: true },
  });
  return { format: 'module', source: out.outputText, shortCircuit: true };
}
