/**
 * Loss recovery against burst losses on the in-memory link (issue 16): SACK
 * recovery (RFC 6675) with RACK (RFC 8985) finds every hole of a burst in one
 * round trip, and the tail loss probe turns a lost tail into a fast repair
 * instead of a 200 ms RTO. The scenarios are bench/tcp-loss.ts's (which
 * prints the times); here the clock is simulated, so the bounds below are
 * exact properties of the algorithm, not of the machine.
 */
import { describe, expect, it } from 'vitest';
import { CASES, runCase } from '../../bench/tcp-loss.js';

const RTT = 2;
const RTO_MIN = 200;
const byName = (prefix: string) => CASES.find((c) => c.name.startsWith(prefix))!;

describe('loss recovery on a 2 ms link (bench/tcp-loss.ts scenarios)', () => {
  const clean = runCase(byName('clean, 400'), RTT);

  it('30 consecutive segments lost: every hole is resent once, within 3 RTT of the clean transfer', () => {
    const r = runCase(byName('30 consecutive'), RTT);
    expect(r.complete).toBe(true);
    expect(r.dataFrames).toBe(400 + 30); // each lost segment once more, nothing spurious
    expect(r.ms - clean.ms).toBeLessThanOrEqual(3 * RTT);
  });

  it('the last 3 segments lost: repaired by the tail loss probe, not an RTO', () => {
    const r = runCase(byName('last 3'), RTT);
    expect(r.complete).toBe(true);
    expect(r.dataFrames).toBeLessThanOrEqual(400 + 3 + 1); // at most the probe on top of the three
    expect(r.ms).toBeLessThan(RTO_MIN);
  });

  it('the first of a 3-segment answer lost: RACK resends it after one round trip, not an RTO', () => {
    const r = runCase(byName('first of a 3-segment'), RTT);
    expect(r.complete).toBe(true);
    expect(r.dataFrames).toBe(4);
    expect(r.ms).toBeLessThanOrEqual(2 * RTT + 1);
  });
});
