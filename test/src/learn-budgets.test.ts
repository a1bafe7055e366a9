/**
 * `moat learn --budgets`: budgets per learned rule from the decision log's
 * flow lines, each flow charged to the rule the policy would allow it by.
 */
import { describe, expect, it } from 'vitest';
import { runCli, type CliIo } from '../../src/cli.js';
import { parseFlowBytesLine, proposeBudgets, roundedSize } from '../../src/learn/budgets.js';
import { parseDecisionLine } from '../../src/learn/read.js';
import { DecisionLog } from '../../src/egress/decision-log.js';
import { NULL_LOGGER } from '../../src/log.js';

function fakeIo(files: Record<string, string>): { io: CliIo; out: () => string; err: () => string } {
  let out = '';
  let err = '';
  const io: CliIo = {
    stdout: { write: (s: string) => (out += s) },
    stderr: { write: (s: string) => (err += s) },
    config: { readFile: (p) => files[p] ?? (() => { throw new Error(`ENOENT ${p}`); })(), readResolvConf: () => undefined },
    stopSignal: () => new Promise(() => {}),
    readStdin: async () => '',
  };
  return { io, out: () => out, err: () => err };
}

const MiB = 1024 * 1024;

/** What a run writes: decisions and flow lines, through the real DecisionLog. */
function runLog(): string {
  let text = '';
  const log = new DecisionLog({ burst: 20, windowMs: 10_000, maxDestinations: 100, now: () => 0, sink: { write: (l: string) => void (text += l) } }, NULL_LOGGER);
  const allow = (dst: string, name: string | null, rule: string): void =>
    log.record({ id: log.nextId(), decision: 'allowed', reason: name === null ? 'ip-rule' : 'name-sni', rule, proto: 'tcp', dst, name, via: name === null ? null : 'sni' });
  allow('140.82.112.3:443', 'api.github.com', 'api.github.com');
  allow('198.51.100.9:5432', null, '198.51.100.9:5432');
  // Three uploads to api.github.com on separate connections, one to the database, one download-only flow.
  for (const up of [3 * MiB, 2 * MiB, 1 * MiB]) log.flowClosed({ proto: 'tcp', dst: '140.82.112.3:443', rule: 'api.github.com', name: 'api.github.com', bytesUp: up, bytesDown: 1000 });
  log.flowClosed({ proto: 'tcp', dst: '198.51.100.9:5432', rule: '198.51.100.9:5432', name: null, bytesUp: 10_000, bytesDown: 40 * MiB });
  log.flowClosed({ proto: 'tcp', dst: '140.82.112.3:443', rule: null, name: null, bytesUp: 0, bytesDown: 0 }); // moved nothing: no line
  return text;
}

describe('moat learn --budgets', () => {
  it('the decision log carries one flow line per flow that moved bytes (every field of a decision line, reason flow-closed; learn does not read it as a decision)', () => {
    const lines = runLog().trim().split('\n');
    const flows = lines.map(parseFlowBytesLine).filter((f) => f !== null);
    expect(flows).toHaveLength(4);
    expect(flows[0]).toEqual({ proto: 'tcp', dst: '140.82.112.3:443', name: 'api.github.com', bytesUp: 3 * MiB, bytesDown: 1000 });
    const flowLines = lines.filter((l) => l.includes('"flow-closed"')).map((l) => JSON.parse(l) as Record<string, unknown>);
    for (const f of flowLines) for (const k of ['id', 'decision', 'reason', 'rule', 'proto', 'dst', 'name', 'via']) expect(f).toHaveProperty(k);
    expect(lines.map(parseDecisionLine).filter((r) => r !== null)).toHaveLength(2); // the two decisions only
  });

  it('proposes the egress of every flow of a rule, summed over connections, times the margin, rounded up', () => {
    const flows = runLog().split('\n').map(parseFlowBytesLine).filter((f) => f !== null);
    const p = proposeBudgets(['api.github.com', '198.51.100.9:5432', 'unused.test'], flows, { hostAlias: '192.168.127.254' });
    // 6 MiB up x 2 = 12 MiB; the database moved 10,000 B up -> 20,000 B -> the 64 KiB floor.
    expect(p.budgets).toEqual(['api.github.com=12MiB', '198.51.100.9:5432=64KiB']);
    expect(p.notes.join(' ')).toMatch(/unused\.test/);
    const both = proposeBudgets(['198.51.100.9:5432'], flows, { hostAlias: '192.168.127.254', direction: 'both', margin: 1.5 });
    expect(both.budgets).toEqual(['198.51.100.9:5432=61MiB']); // (40 MiB + 10,000 B) x 1.5 rounded up
  });

  it('a flow is charged to the learned rule that covers it (a wildcard when names collapsed)', () => {
    const flows = ['a', 'b', 'c'].map((n) => ({ proto: 'tcp' as const, dst: '203.0.113.1:443', name: `${n}.cdn.example.com`, bytesUp: MiB, bytesDown: 0 }));
    expect(proposeBudgets(['*.cdn.example.com'], flows, { hostAlias: '192.168.127.254', margin: 1 }).budgets).toEqual(['*.cdn.example.com=3MiB']);
  });

  it('rounding: whole KiB, MiB, GiB, at least 64 KiB', () => {
    expect(roundedSize(1)).toBe('64KiB');
    expect(roundedSize(100 * 1024 + 1)).toBe('101KiB');
    expect(roundedSize(5 * MiB + 1)).toBe('6MiB');
    expect(roundedSize(3 * 1024 ** 3)).toBe('3GiB');
  });

  it('through the CLI: flags and json formats carry the budgets; a bad margin is a usage error naming the flag', async () => {
    const t = fakeIo({ '/d.jsonl': runLog() });
    expect(await runCli(['learn', '--budgets', '--format', 'flags', '/d.jsonl'], t.io)).toBe(0);
    expect(t.out()).toBe("--allow api.github.com --allow 198.51.100.9:5432 --budget api.github.com=12MiB --budget 198.51.100.9:5432=64KiB\n");
    expect(t.err()).not.toMatch(/not decisions skipped/);
    const j = fakeIo({ '/d.jsonl': runLog() });
    expect(await runCli(['learn', '--budgets', '--format', 'json', '/d.jsonl'], j.io)).toBe(0);
    expect(JSON.parse(j.out())).toEqual({ allow: ['api.github.com', '198.51.100.9:5432'], budget: ['api.github.com=12MiB', '198.51.100.9:5432=64KiB'] });
    const bad = fakeIo({ '/d.jsonl': runLog() });
    expect(await runCli(['learn', '--budgets', '--budget-margin', '0.5', '/d.jsonl'], bad.io)).toBe(2);
    expect(bad.err()).toMatch(/--budget-margin/);
    const plain = fakeIo({ '/d.jsonl': runLog() });
    expect(await runCli(['learn', '/d.jsonl'], plain.io)).toBe(0);
    expect(plain.out()).toBe('api.github.com\n198.51.100.9:5432\n'); // without --budgets: as before
  });
});
