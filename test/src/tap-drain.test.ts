import { describe, expect, it } from 'vitest';
import { BULK_FRAME_BYTES, TapDrainPolicy } from '../../src/transport/tap-drain.js';

/** Wake-ups with one small frame each, the TAP empty behind it: how many of them look (a failed read each). */
function probesOverLoneFrames(p: TapDrainPolicy, wakeups: number): number {
  let probes = 0;
  for (let i = 0; i < wakeups; i++) {
    if (p.worthDraining(80)) {
      probes++;
      p.drained(0);
    }
  }
  return probes;
}

describe('TapDrainPolicy (when a TAP wake-up reads on behind its first frame)', () => {
  it('lone small frames (request/response): probes back off to one in 64 wake-ups', () => {
    const p = new TapDrainPolicy();
    // every 8th, 16th, 32nd, then every 64th: at most ~1/64 of 6,400 wake-ups plus the ramp
    expect(probesOverLoneFrames(p, 6400)).toBeLessThanOrEqual(6400 / 64 + 4);
  });

  it('always looks behind a bulk-sized frame, and keeps looking while looks find frames (a burst)', () => {
    const p = new TapDrainPolicy();
    probesOverLoneFrames(p, 1000); // backed off
    expect(p.worthDraining(BULK_FRAME_BYTES)).toBe(true);
    p.drained(3000);
    expect(p.worthDraining(60)).toBe(true); // the burst goes on
    p.drained(0);
    expect(p.worthDraining(60)).toBe(false); // burst over
  });

  it('a probe that finds frames brings the probe interval back to every 8th wake-up', () => {
    const p = new TapDrainPolicy();
    probesOverLoneFrames(p, 1000);
    // the next probe (within 64 wake-ups) finds a burst of ACKs
    let i = 0;
    while (!p.worthDraining(60)) i++;
    expect(i).toBeLessThan(64);
    p.drained(120);
    expect(p.worthDraining(60)).toBe(true); // in the burst
    p.drained(0); // burst over: probes come every 8th wake-up again
    let gap = 1;
    while (!p.worthDraining(60)) gap++;
    expect(gap).toBeLessThanOrEqual(8);
  });
});
