/**
 * README.md "Use as a library": every ```ts block there is a program a user
 * could paste. Each is type-checked against the package's published
 * declarations and run against the built package, imported by name the way
 * a consumer does (a temporary project whose node_modules/moat links to this
 * repository, so `exports` and `types` are what resolve), from the root of
 * the clone (examples read test fixtures by relative path). Its standard
 * output must be exactly the `// prints:` comment that ends the block.
 *
 * Needs `npm run build` (npm test does): the package entries are dist/.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest';
import { execFile } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import ts from 'typescript';

const ROOT = resolve(__dirname, '..', '..');
const SECTION = '## Use as a library';
const run = promisify(execFile);

interface Example {
  index: number;
  code: string;
  expected: string[];
}

/** The ```ts blocks of the section (up to the next "## " heading), with the lines their `// prints:` comment lists. */
export function examplesOf(markdown: string): Example[] {
  const start = markdown.indexOf(`\n${SECTION}\n`);
  if (start < 0) throw new Error(`README.md has no "${SECTION}" section`);
  const rest = markdown.slice(start + SECTION.length + 2);
  const end = rest.search(/\n## /);
  const section = end < 0 ? rest : rest.slice(0, end);
  const examples: Example[] = [];
  for (const m of section.matchAll(/```ts\n([\s\S]*?)```/g)) {
    const code = m[1]!;
    const lines = code.trimEnd().split('\n');
    const at = lines.lastIndexOf('// prints:');
    if (at < 0) throw new Error(`README example ${examples.length + 1} has no "// prints:" comment:\n${code}`);
    const expected = lines.slice(at + 1).map((l) => {
      if (!l.startsWith('// ')) throw new Error(`README example ${examples.length + 1}: after "// prints:" every line must be "// output", got ${JSON.stringify(l)}`);
      return l.slice(3);
    });
    examples.push({ index: examples.length + 1, code, expected });
  }
  return examples;
}

const examples = examplesOf(readFileSync(join(ROOT, 'README.md'), 'utf8'));
let project = '';

beforeAll(() => {
  for (const entry of ['dist/src/index.js', 'dist/dns/index.d.ts', 'dist/sni/index.d.ts', 'dist/netstack/index.js']) {
    if (!existsSync(join(ROOT, entry))) throw new Error(`${entry} is missing: run npm run build first`);
  }
  project = mkdtempSync(join(tmpdir(), 'moat-readme-'));
  mkdirSync(join(project, 'node_modules'));
  symlinkSync(ROOT, join(project, 'node_modules', 'moat'), 'dir');
  for (const ex of examples) writeFileSync(join(project, `example-${ex.index}.mts`), ex.code);
});

afterAll(() => {
  if (project !== '') rmSync(project, { recursive: true, force: true });
});

describe('README "Use as a library"', () => {
  it('has the examples it promises (zone table, ClientHello, policy, serve, learn)', () => {
    const all = examples.map((e) => e.code).join('\n');
    expect(examples.length).toBeGreaterThanOrEqual(5);
    for (const needle of ['ZoneTable', 'ClientHelloReader', 'EgressPolicy', "from 'moat'", 'serve(', 'learnAllowlist']) expect(all).toContain(needle);
  });

  it('every example type-checks against the published declarations', () => {
    const files = examples.map((ex) => join(project, `example-${ex.index}.mts`));
    const program = ts.createProgram(files, {
      module: ts.ModuleKind.NodeNext,
      moduleResolution: ts.ModuleResolutionKind.NodeNext,
      target: ts.ScriptTarget.ES2022,
      lib: ['lib.es2022.d.ts', 'lib.dom.d.ts'],
      strict: true,
      noEmit: true,
      skipLibCheck: true,
      types: ['node'],
      typeRoots: [join(ROOT, 'node_modules', '@types')],
    });
    const problems = ts.getPreEmitDiagnostics(program).map((d) => {
      const where = d.file && d.start !== undefined ? `${d.file.fileName.slice(project.length + 1)}:${d.file.getLineAndCharacterOfPosition(d.start).line + 1}` : '';
      return `${where} ${ts.flattenDiagnosticMessageText(d.messageText, '\n')}`;
    });
    expect(problems).toEqual([]);
  });

  for (const ex of examples) {
    it(`example ${ex.index} runs and prints what it says`, async () => {
      const js = ts.transpileModule(ex.code, { compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022 } }).outputText;
      const file = join(project, `example-${ex.index}.mjs`);
      writeFileSync(file, js);
      const { stdout } = await run(process.execPath, [file], { cwd: ROOT, timeout: 20_000 });
      expect(stdout.trimEnd().split('\n')).toEqual(ex.expected);
    }, 30_000);
  }
});
