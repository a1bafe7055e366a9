/**
 * When a TAP wake-up should look for more frames behind the one libuv read.
 *
 * libuv reads one frame per poll (it stops after a read shorter than its
 * buffer). Reading the rest of a burst at once lets the stack answer a batch
 * with one ACK and the NAT write it to the host in one go; but the look that
 * finds the TAP empty costs a failed read(2) and a thrown EAGAIN (~14 us of
 * CPU on Node 20, measured with perf on request/response: 5% of Moat's CPU
 * per exchange when it was made at every 8th wake-up). So: look behind a
 * full-sized frame (bulk data) and while the last look found frames (a
 * burst); otherwise probe now and then to notice a burst of small frames
 * (e.g. the guest's ACKs), at every 8th wake-up, backing off to every 64th
 * while the probes keep finding nothing (a lone request per wake-up), and
 * back to every 8th as soon as one finds frames.
 */
/** A frame this large is bulk data: more are probably queued behind it. */
export const BULK_FRAME_BYTES = 1000;
/** Probe at wake-ups where (count & mask) === 0: every 8th at first ... */
const FIRST_PROBE_MASK = 7;
/** ... every 64th at most, once probes keep failing. */
const LAST_PROBE_MASK = 63;

export class TapDrainPolicy {
  private inBurst = false;
  private wakeups = 0;
  private probeMask = FIRST_PROBE_MASK;
  /** Whether the last look was only a probe (no bulk frame, no burst). */
  private probing = false;

  /** A wake-up read a first frame of this many bytes: look behind it? */
  worthDraining(firstFrameBytes: number): boolean {
    this.wakeups++;
    this.probing = false;
    if (firstFrameBytes >= BULK_FRAME_BYTES || this.inBurst) return true;
    this.probing = (this.wakeups & this.probeMask) === 0;
    return this.probing;
  }

  /** The look worthDraining asked for read `found` more bytes (0: the TAP was empty). */
  drained(found: number): void {
    if (found > 0) this.probeMask = FIRST_PROBE_MASK;
    else if (this.probing) this.probeMask = Math.min(this.probeMask * 2 + 1, LAST_PROBE_MASK);
    this.inBurst = found > 0;
  }
}
