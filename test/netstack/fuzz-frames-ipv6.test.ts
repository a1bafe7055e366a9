/**
 * Frame fuzzing over IPv6 (issue 19, with issue 9's harness): every
 * one-field-wrong IPv6 frame is dropped and counted exactly once under the
 * reason of the layer that owns the broken field, and the stack never throws.
 * FUZZ_FRAMES and FUZZ_SEED work as in fuzz-frames.test.ts.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { almostValidFrame6, buildAlmostValid6, KIND6_COUNT, MUTATIONS6 } from '../support/fuzz-gen6.js';
import { bareStack, FUZZ_SEED, fuzzFrames } from '../support/fuzz-gen-run.js';
import { IPV6_CONFIG } from '../support/frames6.js';

const EACH_FRAME = fuzzFrames(20_000);
const dropsTotal = (d: Record<string, number>) => Object.values(d).reduce((a, b) => a + b, 0);

describe('fuzz IPv6: one field wrong', () => {
  it('every IPv6 mutation is reachable from the generator and builds a frame', () => {
    const seen = new Set<string>();
    for (let k = 0; k < KIND6_COUNT; k++) for (let m = 0; m < MUTATIONS6.length; m++) seen.add(buildAlmostValid6(k, m, 12345, 4242, 100).mutation.split('/')[1]!);
    expect([...seen].sort()).toEqual(MUTATIONS6.map((m) => m.name).sort());
  });

  it(`each IPv6 frame that must be dropped is dropped exactly once under its reason (${EACH_FRAME} frames)`, () => {
    const h = bareStack({}, { ipv6: IPV6_CONFIG });
    const byMutation = new Map<string, number>();
    fc.assert(
      fc.property(almostValidFrame6, (f) => {
        const before = { ...h.stack.stats.drops };
        h.stack.input([f.frame]);
        h.runDeferred();
        byMutation.set(f.mutation, (byMutation.get(f.mutation) ?? 0) + 1);
        const after = h.stack.stats.drops;
        if (after['stack:internal-error'] !== undefined) throw new Error(`${f.mutation}: the stack threw`);
        if (!f.mustDrop) return;
        // Dropped once; an ICMPv6 error the drop answers may be refused by the rate limit (counted apart).
        const grew = Object.keys(after).filter((r) => after[r]! !== (before[r] ?? 0) && r !== 'icmp6:error-rate-limited' && r !== 'ipv6:no-neighbor');
        const extra = (after['icmp6:error-rate-limited'] ?? 0) - (before['icmp6:error-rate-limited'] ?? 0) + (after['ipv6:no-neighbor'] ?? 0) - (before['ipv6:no-neighbor'] ?? 0);
        expect(dropsTotal(after) - dropsTotal(before) - extra, f.mutation).toBe(1);
        expect(grew.length, f.mutation).toBe(1);
        expect(grew[0]!.startsWith(f.reasonPrefix), `${f.mutation}: dropped as ${grew[0]}, wanted ${f.reasonPrefix}*`).toBe(true);
      }),
      { numRuns: EACH_FRAME, seed: FUZZ_SEED },
    );
    console.log(`fuzz IPv6 one-field-wrong: ${EACH_FRAME} frames, ${byMutation.size} kinds/mutations; drops: ${JSON.stringify(h.stack.stats.drops)}`);
    expect(byMutation.size).toBeGreaterThan(50);
    for (let i = 0; i < 100; i++) {
      h.clock.advance(1_000);
      h.stack.advance();
      h.runDeferred();
    }
    expect(h.stack.tableSizes()).toMatchObject({ connections: 0, heldSyns: 0, fragmentDatagrams: 0, fragmentBytes: 0 });
    expect(h.stack.tableSizes().neighbors6).toBeLessThanOrEqual(256);
  }, 120_000);
});
