import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { ByteBudgets } from '../../src/traffic/byte-budgets.js';

const MiB = 1024 * 1024;

describe('ByteBudgets', () => {
  it('a flow is given what is left; the charge that spends it ends that flow and resets every other under the rule', () => {
    const t = { now: 0 };
    const b = new ByteBudgets([{ rule: 'allowed.test', bytes: MiB }], 'egress', () => t.now);
    const cut: string[] = [];
    const f1 = b.open('allowed.test', () => cut.push('f1'))!;
    const f2 = b.open('allowed.test', () => cut.push('f2'))!;
    const other = b.open('other.test', () => cut.push('other'));
    expect(other).toBeUndefined(); // no budget: not metered
    expect(f1.charge(600 * 1024, 'egress')).toBe(600 * 1024);
    expect(b.spent('allowed.test')).toBe(false);
    expect(f2.charge(600 * 1024, 'egress')).toBe(424 * 1024);
    expect(f2.ended).toBe(true);
    expect(cut).toEqual(['f1']); // f2 ends itself after passing its part
    expect(f1.charge(1, 'egress')).toBe(0);
    expect(b.spent('allowed.test', true)).toBe(true);
    expect(b.spent('other.test')).toBe(false);
    expect(b.stats()[0]).toMatchObject({ rule: 'allowed.test', limit: MiB, used: MiB, remaining: 0, spent: true, flows: 0, refused: 1, reset: 2 });
  });

  it('property (splitting): over any split of an upload into flows and chunks, at most the budget passes', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 4 * MiB }), fc.array(fc.array(fc.integer({ min: 1, max: 256 * 1024 }), { maxLength: 20 }), { maxLength: 50 }), (size, flows) => {
        const b = new ByteBudgets([{ rule: 'r', bytes: size }], 'egress', () => 0);
        let passed = 0;
        for (const chunks of flows) {
          if (b.spent('r')) break; // what Egress does for a new flow
          const m = b.open('r', () => {})!;
          for (const c of chunks) {
            passed += m.charge(c, 'egress');
            if (m.ended) break;
          }
          m.close();
        }
        expect(passed).toBeLessThanOrEqual(size);
      }),
    );
  });

  it('ingress is free unless the direction is both', () => {
    const e = new ByteBudgets([{ rule: 'r', bytes: 100 }], 'egress', () => 0);
    expect(e.open('r', () => {})!.charge(1000, 'ingress')).toBe(1000);
    expect(e.spent('r')).toBe(false);
    const both = new ByteBudgets([{ rule: 'r', bytes: 100 }], 'both', () => 0);
    const m = both.open('r', () => {})!;
    expect(m.charge(1000, 'ingress')).toBe(100);
    expect(m.ended).toBe(true);
  });

  it('a period is a fixed window: used goes back to 0 at its end', () => {
    const t = { now: 0 };
    const b = new ByteBudgets([{ rule: 'r', bytes: 100, periodMs: 60_000 }], 'egress', () => t.now);
    b.open('r', () => {})!.charge(100, 'egress');
    expect(b.spent('r')).toBe(true);
    t.now = 59_999;
    expect(b.spent('r')).toBe(true);
    expect(b.stats()[0]!.resetsInMs).toBe(1);
    t.now = 60_000 * 5 + 10; // several windows later: one fresh window
    expect(b.spent('r')).toBe(false);
    expect(b.stats()[0]).toMatchObject({ used: 0, resetsInMs: 60_000 - 10 });
  });

  it('reload keeps the use of a rule still budgeted (a reload is not a fresh budget); a smaller size cuts at once; a dropped budget stops metering', () => {
    const b = new ByteBudgets([{ rule: 'a', bytes: 1000 }, { rule: 'b', bytes: 1000 }], 'egress', () => 0);
    const cut: string[] = [];
    const fa = b.open('a', () => cut.push('a'))!;
    const fb = b.open('b', () => cut.push('b'))!;
    fa.charge(600, 'egress');
    fb.charge(600, 'egress');
    b.replace([{ rule: 'a', bytes: 2000 }]);
    expect(b.stats()).toEqual([expect.objectContaining({ rule: 'a', used: 600, limit: 2000 })]);
    expect(fb.charge(10_000, 'egress')).toBe(10_000); // no budget any more
    b.replace([{ rule: 'a', bytes: 500 }]);
    expect(cut).toEqual(['a']);
    expect(b.spent('a')).toBe(true);
    b.replace([{ rule: 'a', bytes: 500 }, { rule: 'b', bytes: 1000 }]);
    expect(b.stats()[1]).toMatchObject({ rule: 'b', used: 0 }); // re-added: a new account
  });

  it('audit mode counts but never cuts', () => {
    const b = new ByteBudgets([{ rule: 'r', bytes: 100 }], 'egress', () => 0, true);
    const cut: string[] = [];
    const m = b.open('r', () => cut.push('x'))!;
    expect(m.charge(1000, 'egress')).toBe(1000);
    expect(m.ended).toBe(false);
    expect(cut).toEqual([]);
    expect(b.spent('r')).toBe(true); // Egress records new flows as would-block
  });

  it('counters stay exact up to the largest size (1 PiB) and stop at it', () => {
    const PiB = 1024 ** 5;
    const b = new ByteBudgets([{ rule: 'r', bytes: PiB }], 'egress', () => 0);
    const m = b.open('r', () => {})!;
    for (let i = 0; i < 1024; i++) m.charge(1024 ** 4, 'egress');
    expect(b.stats()[0]!.used).toBe(PiB);
    expect(m.ended).toBe(true);
    expect(Number.isSafeInteger(PiB * 2)).toBe(true);
  });
});
