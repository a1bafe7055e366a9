/**
 * The SACK/RACK scoreboard (netstack/tcp/scoreboard.ts) under random
 * sequences of sends, cumulative ACKs, SACK blocks (valid and hostile),
 * loss detection and retransmissions: its books always balance.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { Scoreboard } from '../../netstack/tcp/scoreboard.js';
import { seqAdd, seqDiff, seqGe, seqLe, seqLt } from '../../netstack/tcp/seq.js';

const ISS = 0xffff0000; // the sequence space wraps during the run

type Op =
  | { k: 'send'; len: number; dt: number }
  | { k: 'ack'; frac: number; dt: number }
  | { k: 'sack'; a: number; b: number; dt: number }
  | { k: 'garbage'; s: number; e: number }
  | { k: 'detect'; dt: number }
  | { k: 'resend' };

const opArb: fc.Arbitrary<Op> = fc.oneof(
  fc.record({ k: fc.constant('send' as const), len: fc.integer({ min: 1, max: 3000 }), dt: fc.integer({ min: 0, max: 3 }) }),
  fc.record({ k: fc.constant('ack' as const), frac: fc.double({ min: 0, max: 1, noNaN: true }), dt: fc.integer({ min: 0, max: 3 }) }),
  fc.record({ k: fc.constant('sack' as const), a: fc.double({ min: 0, max: 1, noNaN: true }), b: fc.double({ min: 0, max: 1, noNaN: true }), dt: fc.integer({ min: 0, max: 3 }) }),
  fc.record({ k: fc.constant('garbage' as const), s: fc.integer({ min: 0, max: 0xffffffff }), e: fc.integer({ min: 0, max: 0xffffffff }) }),
  fc.record({ k: fc.constant('detect' as const), dt: fc.integer({ min: 0, max: 20 }) }),
  fc.constant({ k: 'resend' as const }),
);

describe('Scoreboard (SACK + RACK bookkeeping)', () => {
  it('pipe stays within the flight, resent holes come out in order and inside it, a full ACK empties it (property)', () => {
    fc.assert(
      fc.property(fc.array(opArb, { minLength: 1, maxLength: 200 }), (ops) => {
        const b = new Scoreboard();
        let una = ISS;
        let sndMax = ISS;
        let now = 0;
        const r: [number, number] = [0, 0];
        for (const op of ops) {
          switch (op.k) {
            case 'send':
              now += op.dt;
              b.sent(sndMax, seqAdd(sndMax, op.len), now);
              sndMax = seqAdd(sndMax, op.len);
              break;
            case 'ack': {
              now += op.dt;
              una = seqAdd(una, Math.floor(seqDiff(sndMax, una) * op.frac));
              b.ack(una, null, sndMax, now);
              break;
            }
            case 'sack': {
              now += op.dt;
              const span = seqDiff(sndMax, una);
              const x = seqAdd(una, Math.floor(span * Math.min(op.a, op.b)));
              const y = seqAdd(una, Math.floor(span * Math.max(op.a, op.b)));
              b.ack(una, [x, y], sndMax, now);
              break;
            }
            case 'garbage':
              b.ack(una, [op.s, op.e], sndMax, now);
              break;
            case 'detect':
              now += op.dt;
              b.detectLoss(now);
              break;
            case 'resend': {
              let last = -1;
              let guard = 0;
              while (b.nextLost(r) && guard++ < 10_000) {
                expect(seqLe(una, r[0]) && seqLt(r[0], r[1]) && seqLe(r[1], sndMax)).toBe(true);
                if (last !== -1) expect(seqGe(r[0], last)).toBe(true);
                last = r[1];
                b.sent(r[0], r[1], now);
              }
              expect(b.hasLost).toBe(false);
              break;
            }
          }
          const flight = seqDiff(sndMax, una);
          const pipe = b.pipe(flight);
          expect(pipe).toBeGreaterThanOrEqual(0);
          expect(pipe).toBeLessThanOrEqual(flight);
        }
        b.ack(sndMax, null, sndMax, now + 1);
        expect(b.count).toBe(0);
        expect(b.hasSacked || b.hasLost).toBe(false);
        expect(b.pipe(0)).toBe(0);
      }),
      { numRuns: 300 },
    );
  });

  it('RACK: a segment sent before a delivered one is lost once RTT + RTT/4 has passed, not before', () => {
    const b = new Scoreboard();
    b.sent(0, 1000, 0);
    b.sent(1000, 2000, 0);
    b.sent(2000, 3000, 0);
    // At t=4 (RTT 4) the 2nd and 3rd are SACKed: the first was sent before them.
    b.ack(0, [1000, 3000], 3000, 4);
    expect(b.detectLoss(4)).toBe(1); // reo_wnd = min RTT / 4 = 1 ms to wait
    expect(b.hasLost).toBe(false);
    expect(b.detectLoss(5)).toBe(0);
    expect(b.hasLost).toBe(true);
    const r: [number, number] = [0, 0];
    expect(b.nextLost(r)).toBe(true);
    expect(r).toEqual([0, 1000]);
    expect(b.pipe(3000)).toBe(0);
  });
});
