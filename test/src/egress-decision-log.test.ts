import { describe, expect, it } from 'vitest';
import { DecisionLog, type DecisionRecord } from '../../src/egress/decision-log.js';
import { createLogger } from '../../src/log.js';

function setup(limits = { burst: 3, windowMs: 1000, maxDestinations: 2 }) {
  let now = 0;
  const fileLines: Record<string, unknown>[] = [];
  const mainLines: Record<string, unknown>[] = [];
  const log = createLogger({ level: 'info', format: 'json', stream: { write: (l: string) => mainLines.push(JSON.parse(l) as Record<string, unknown>) } });
  const d = new DecisionLog({ ...limits, now: () => now, sink: { write: (l: string) => fileLines.push(JSON.parse(l) as Record<string, unknown>) } }, log);
  return { d, fileLines, mainLines, advance: (ms: number) => (now += ms) };
}

const rec = (d: DecisionLog, dst: string, decision: DecisionRecord['decision'] = 'blocked'): DecisionRecord => ({
  id: d.nextId(),
  decision,
  reason: 'no-rule',
  rule: null,
  proto: 'tcp',
  dst,
  name: null,
  via: null,
});

describe('DecisionLog', () => {
  it('ids are unique and every field reaches the file as one JSON line', () => {
    const { d, fileLines } = setup();
    const ids = new Set(Array.from({ length: 1000 }, () => d.nextId()));
    expect(ids.size).toBe(1000);
    const r = { ...rec(d, '203.0.113.9:443'), name: 'x.test', via: 'sni', rule: 'y.test', detail: 'why' };
    d.record(r);
    expect(fileLines).toHaveLength(1);
    expect(fileLines[0]).toMatchObject({ ...r, time: expect.any(String) });
  });

  it('blocked and would-block go to the main log at info; allowed does not (debug)', () => {
    const { d, mainLines } = setup();
    d.record(rec(d, 'a:1', 'allowed'));
    d.record(rec(d, 'b:1', 'blocked'));
    d.record(rec(d, 'c:1', 'would-block'));
    expect(mainLines.map((l) => [l['msg'], l['decision']])).toEqual([
      ['egress decision', 'blocked'],
      ['egress decision', 'would-block'],
    ]);
    expect(d.stats).toMatchObject({ allowed: 1, blocked: 1, wouldBlock: 1 });
  });

  it('rate-limits per destination, reports what it suppressed, and keeps its table bounded', () => {
    const { d, fileLines, advance } = setup();
    for (let i = 0; i < 10; i++) d.record(rec(d, 'loop:443'));
    d.record(rec(d, 'other:443')); // another destination is not starved
    expect(fileLines.map((l) => l['dst'])).toEqual(['loop:443', 'loop:443', 'loop:443', 'other:443']);
    expect(d.stats.suppressedLines).toBe(7);
    advance(1000);
    d.record(rec(d, 'loop:443'));
    expect(fileLines.at(-1)).toMatchObject({ dst: 'loop:443', suppressedBefore: 7 });
    // maxDestinations 2: a third destination evicts the least recently used one, whose budget restarts.
    d.record(rec(d, 'third:1'));
    expect((d as unknown as { limit: { keys: number } }).limit.keys).toBe(2);
  });

  it('listeners see every decision, suppressed ones included', () => {
    const { d } = setup();
    const seen: string[] = [];
    const off = d.subscribe((r) => seen.push(r.id));
    for (let i = 0; i < 5; i++) d.record(rec(d, 'loop:443'));
    off();
    d.record(rec(d, 'loop:443'));
    expect(seen).toHaveLength(5);
  });
});
