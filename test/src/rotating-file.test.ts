/**
 * Size-based rotation of the --decision-log file (src/rotating-file.ts),
 * driven past its bound many times in a real temporary directory, and read
 * back the way `moat learn` reads it.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openDecisionLog } from '../../src/egress/decision-log.js';
import { readDecisionRecords } from '../../src/learn/read.js';
import { RotatingFile } from '../../src/rotating-file.js';

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});
function tempDir(): string {
  const d = mkdtempSync(join(tmpdir(), 'moat-rotate-'));
  dirs.push(d);
  return d;
}
const end = (f: RotatingFile): Promise<void> => new Promise((r) => f.end(r));

/** One decision line as the decision log writes it (about 150 bytes). */
const decisionLine = (i: number): string =>
  JSON.stringify({ time: '2026-01-01T00:00:00.000Z', id: `abc-${i}`, decision: 'blocked', reason: 'dns-sinkhole', rule: null, proto: 'dns', dst: `n${i}.blocked.test`, name: `n${i}.blocked.test`, via: 'dns' }) + '\n';

describe('RotatingFile', () => {
  it('past maxBytes many times: FILE is the newest, FILE.1..FILE.keep the older ones, the oldest removed, none over the bound', async () => {
    const dir = tempDir();
    const path = join(dir, 'decisions.jsonl');
    const f = new RotatingFile(path, { maxBytes: 4096, keep: 2 });
    const n = 400; // ~60 KB: 14 rotations
    for (let i = 0; i < n; i++) f.write(decisionLine(i));
    await end(f);
    expect(f.stats.rotations).toBeGreaterThan(10);
    expect(readdirSync(dir).sort()).toEqual(['decisions.jsonl', 'decisions.jsonl.1', 'decisions.jsonl.2']);
    for (const name of readdirSync(dir)) expect(statSync(join(dir, name)).size).toBeLessThanOrEqual(4096);
    // The files in order .2, .1, current hold the newest lines without a gap, ending with the last.
    const ids = [`${path}.2`, `${path}.1`, path].flatMap((p) => readDecisionRecords(readFileSync(p, 'utf8')).records.map((r) => Number(r.dst.slice(1).split('.')[0])));
    expect(ids.at(-1)).toBe(n - 1);
    expect(ids).toEqual(Array.from({ length: ids.length }, (_, k) => n - ids.length + k));
    // `moat learn FILE` reads the current file: whole records, nothing skipped.
    const current = readDecisionRecords(readFileSync(path, 'utf8'));
    expect(current.skipped).toBe(0);
    expect(current.records.length).toBeGreaterThan(0);
    expect(current.records[0]).toMatchObject({ decision: 'blocked', proto: 'dns', reason: 'dns-sinkhole' });
  });

  it('appends to an existing file and counts its size (rotates at once when it is already full)', async () => {
    const dir = tempDir();
    const path = join(dir, 'd.jsonl');
    writeFileSync(path, 'x'.repeat(5000) + '\n');
    const f = new RotatingFile(path, { maxBytes: 4096, keep: 1 });
    f.write(decisionLine(1));
    await end(f);
    expect(readFileSync(`${path}.1`, 'utf8')).toBe('x'.repeat(5000) + '\n');
    expect(readFileSync(path, 'utf8')).toBe(decisionLine(1));
  });

  it('without maxBytes it never rotates; a line longer than maxBytes gets a file of its own', async () => {
    const dir = tempDir();
    const plain = new RotatingFile(join(dir, 'plain.jsonl'));
    for (let i = 0; i < 200; i++) plain.write(decisionLine(i));
    await end(plain);
    expect(readdirSync(dir)).toEqual(['plain.jsonl']);
    const big = new RotatingFile(join(dir, 'big.jsonl'), { maxBytes: 4096, keep: 3 });
    big.write('a\n');
    big.write('b'.repeat(10_000) + '\n');
    big.write('c\n');
    await end(big);
    expect(readFileSync(join(dir, 'big.jsonl.2'), 'utf8')).toBe('a\n');
    expect(readFileSync(join(dir, 'big.jsonl.1'), 'utf8').length).toBe(10_001);
    expect(readFileSync(join(dir, 'big.jsonl'), 'utf8')).toBe('c\n');
  });

  it('a rotation that fails drops the line (counted, error reported) rather than growing the file past its bound', async () => {
    const dir = tempDir();
    const path = join(dir, 'sub', 'd.jsonl');
    const { mkdirSync } = await import('node:fs');
    mkdirSync(join(dir, 'sub'));
    const errors: Error[] = [];
    const f = new RotatingFile(path, { maxBytes: 4096, keep: 2 }, (e) => errors.push(e));
    for (let i = 0; i < 20; i++) f.write(decisionLine(i)); // ~3 KB
    rmSync(join(dir, 'sub'), { recursive: true, force: true }); // the new file cannot be created
    for (let i = 20; i < 60; i++) f.write(decisionLine(i));
    await end(f);
    expect(f.stats.droppedLines).toBeGreaterThan(0);
    expect(f.stats.errors).toBeGreaterThan(0);
    expect(errors[0]?.message).toMatch(/cannot open ".*d\.jsonl"/);
    expect(existsSync(join(dir, 'sub'))).toBe(false);
  });

  it('openDecisionLog names the flag and the path when the file cannot be opened', async () => {
    await expect(openDecisionLog('/nonexistent-dir-moat/d.jsonl', { maxBytes: 0, keep: 1 })).rejects.toThrow(
      /^--decision-log: cannot open "\/nonexistent-dir-moat\/d\.jsonl": ENOENT/,
    );
  });

  it('a "log lines suppressed" summary in the decision log is skipped by moat learn, not taken for a record', () => {
    const text = decisionLine(1) + JSON.stringify({ time: 't', msg: 'log lines suppressed', suppressed: 5, byReason: { 'dns-sinkhole': 5 }, periodMs: 10_000, suppressedTotal: 5 }) + '\n' + decisionLine(2);
    const r = readDecisionRecords(text);
    expect(r.records).toHaveLength(2);
    expect(r.skipped).toBe(1);
  });
});
