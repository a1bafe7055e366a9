/**
 * The sender's scoreboard for SACK-based loss recovery (RFC 6675) with RACK
 * loss detection (RFC 8985): one record per segment sent and not yet
 * cumulatively acknowledged, with its send time and what the peer's SACK
 * blocks said about it.
 *
 * RACK: a segment is lost when a segment sent after it has been delivered
 * (acknowledged or SACKed) and more than RACK.rtt + reo_wnd has passed
 * since it was sent. Unlike counting three duplicate ACKs, this finds a
 * lost first segment of a short answer (only two segments follow it), a
 * lost retransmission, and, with the tail loss probe (the connection's job),
 * the last segments of a flight.
 *
 * Records live in parallel number arrays from `head` (no object per
 * segment on the bulk path); they are bounded by the send buffer (at most
 * one record per segment in flight).
 */
import { seqDiff, seqGe, seqGt, seqLe, seqLt } from './seq.js';

const SACKED = 1;
/** Marked lost and not retransmitted since. */
const LOST = 2;
/** Retransmitted at least once (its send time is the retransmission's). */
const RETRANSMITTED = 4;

/** Dead records kept behind head once everything is acknowledged, before the arrays are emptied (see ack()). */
const REUSE_RECORDS = 64;

export class Scoreboard {
  private start: number[] = [];
  private end: number[] = [];
  private time: number[] = [];
  private flags: number[] = [];
  private head = 0;
  /** No record below this index is marked lost (nextLost starts here: resending n holes costs n, not n^2). */
  private lostHint = 0;
  /** Send time and end of the most recently sent segment known delivered (RACK.xmit_ts, RACK.end_seq). */
  private rackTime = -Infinity;
  private rackEnd = 0;
  /** RTT of that segment (RACK.rtt), and the smallest seen (for reo_wnd). */
  private rackRtt = 0;
  private minRtt = Infinity;
  /** Bytes SACKed, and bytes marked lost and not retransmitted, over the live records. */
  private sackedBytes = 0;
  private lostBytes = 0;

  get count(): number {
    return this.start.length - this.head;
  }

  get hasSacked(): boolean {
    return this.sackedBytes > 0;
  }

  get hasLost(): boolean {
    return this.lostBytes > 0;
  }

  /**
   * RFC 6675 pipe over `flight` bytes from SND.UNA: what is not SACKed and
   * not marked lost (a lost segment sent again counts once, as its copy).
   */
  pipe(flight: number): number {
    return Math.max(0, flight - this.sackedBytes - this.lostBytes);
  }

  clear(): void {
    this.start.length = this.end.length = this.time.length = this.flags.length = 0;
    this.head = 0;
    this.forgetAll();
  }

  /** No live record is left (head is at the end): the books start over. */
  private forgetAll(): void {
    this.lostHint = 0;
    this.sackedBytes = this.lostBytes = 0;
    this.rackTime = -Infinity;
  }

  /** A segment [s, e) left now: new data appends; an older range is a retransmission. */
  sent(s: number, e: number, now: number): void {
    const n = this.start.length;
    if (n === this.head || seqGe(s, this.end[n - 1]!)) {
      this.start.push(s);
      this.end.push(e);
      this.time.push(now);
      this.flags.push(0);
      return;
    }
    for (let i = this.firstEndingAfter(s); i < n; i++) {
      if (seqGe(this.start[i]!, e)) break;
      const f = this.flags[i]!;
      if ((f & SACKED) !== 0) continue;
      const len = seqDiff(this.end[i]!, this.start[i]!);
      if ((f & LOST) !== 0) this.lostBytes -= len;
      this.flags[i] = (f & ~LOST) | RETRANSMITTED;
      this.time[i] = now;
    }
  }

  /**
   * The peer acknowledged up to `una` and SACKed `blocks` (pairs, any
   * order, validated here against [una, sndMax]). Returns true if something
   * was newly delivered (RACK has news).
   */
  ack(una: number, blocks: readonly number[] | null, sndMax: number, now: number): boolean {
    let delivered = false;
    const n = this.start.length;
    // Cumulatively acknowledged records leave; a partly acknowledged one is trimmed.
    while (this.head < n && seqLe(this.end[this.head]!, una)) {
      this.noteDelivered(this.head, now);
      this.forget(this.head);
      this.head++;
      delivered = true;
    }
    if (this.head < n && seqLt(this.start[this.head]!, una)) {
      const i = this.head;
      const cut = seqDiff(una, this.start[i]!);
      if ((this.flags[i]! & SACKED) !== 0) this.sackedBytes -= cut;
      else if ((this.flags[i]! & LOST) !== 0) this.lostBytes -= cut;
      this.start[i] = una;
    }
    if (this.head === n) {
      // Everything was acknowledged. A request/response flow gets here on
      // every answer: emptying the arrays (length = 0) frees their stores and
      // the next sent() grows four new ones; below a few records the dead
      // ones are left behind head instead, and dropped every REUSE_RECORDS.
      if (n > REUSE_RECORDS) this.clear();
      else this.forgetAll();
    } else if (this.head > 1024 && this.head * 2 > n) {
      this.compact();
    }
    if (blocks !== null) {
      for (let b = 0; b + 1 < blocks.length; b += 2) {
        const bs = blocks[b]! >>> 0;
        const be = blocks[b + 1]! >>> 0;
        // RFC 2018 blocks above SND.UNA and not beyond what was sent; D-SACKs and nonsense are ignored.
        if (!seqLt(bs, be) || seqLe(be, una) || seqGt(be, sndMax)) continue;
        for (let i = this.firstEndingAfter(bs); i < this.start.length; i++) {
          if (seqGe(this.start[i]!, be)) break;
          // Only records the block covers whole count as SACKed (a partly covered one is sent again whole).
          if ((this.flags[i]! & SACKED) !== 0 || seqLt(this.start[i]!, bs) || seqGt(this.end[i]!, be)) continue;
          const len = seqDiff(this.end[i]!, this.start[i]!);
          const f = this.flags[i]!;
          if ((f & LOST) !== 0) this.lostBytes -= len;
          this.flags[i] = (f & ~LOST) | SACKED;
          this.sackedBytes += len;
          this.noteDelivered(i, now);
          delivered = true;
        }
      }
    }
    return delivered;
  }

  /**
   * RACK loss detection (RFC 8985 §6.2): marks lost every record sent before
   * the most recently sent delivered one, once RACK.rtt + reo_wnd passed
   * since its sending. Returns the ms until the next record would qualify
   * (the reorder timer), or 0 if none waits.
   */
  detectLoss(now: number): number {
    if (this.rackTime === -Infinity) return 0;
    const reoWnd = this.minRtt === Infinity ? 0 : this.minRtt / 4;
    let wait = 0;
    for (let i = this.head; i < this.start.length; i++) {
      const f = this.flags[i]!;
      if ((f & (SACKED | LOST)) !== 0) continue;
      const t = this.time[i]!;
      // Sent after the reference segment: RACK cannot judge it yet.
      if (t > this.rackTime || (t === this.rackTime && seqGt(this.end[i]!, this.rackEnd))) {
        // Records never resent are in sending order: every later one was sent later still (a resent one, later yet).
        if ((f & RETRANSMITTED) === 0) break;
        continue;
      }
      const left = t + this.rackRtt + reoWnd - now;
      if (left <= 0) {
        this.markLost(i);
      } else if (wait === 0 || left < wait) {
        wait = left;
      }
    }
    return wait;
  }

  /** No SACK information but three duplicate ACKs: the first segment is lost (RFC 6675 §5 fallback). */
  markFirstLost(): void {
    if (this.head < this.start.length && (this.flags[this.head]! & (SACKED | LOST)) === 0) this.markLost(this.head);
  }

  /** The first record marked lost and not retransmitted since, as [start, end], or null. */
  nextLost(out: [number, number]): boolean {
    if (this.lostBytes === 0) return false;
    for (let i = Math.max(this.head, this.lostHint); i < this.start.length; i++) {
      if ((this.flags[i]! & LOST) !== 0) {
        this.lostHint = i;
        out[0] = this.start[i]!;
        out[1] = this.end[i]!;
        return true;
      }
    }
    return false;
  }

  /** The last record (the tail loss probe's retransmission), as [start, end], or false. */
  last(out: [number, number]): boolean {
    const n = this.start.length;
    if (n === this.head) return false;
    out[0] = this.start[n - 1]!;
    out[1] = this.end[n - 1]!;
    return true;
  }

  /** Index of the first live record that ends after `seq` (records are in sequence order): a binary search, so a SACK block costs log n, not n. */
  private firstEndingAfter(seq: number): number {
    let lo = this.head;
    let hi = this.start.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (seqLe(this.end[mid]!, seq)) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  private markLost(i: number): void {
    const f = this.flags[i]!;
    const len = seqDiff(this.end[i]!, this.start[i]!);
    this.flags[i] = f | LOST;
    this.lostBytes += len;
    if (i < this.lostHint) this.lostHint = i;
  }

  private noteDelivered(i: number, now: number): void {
    const t = this.time[i]!;
    const f = this.flags[i]!;
    // RFC 8985 §6.2 step 2: a retransmitted segment acknowledged sooner than min RTT after its resend was the original's ACK.
    const rtt = now - t;
    if ((f & RETRANSMITTED) !== 0 && rtt < this.minRtt) return;
    if (t > this.rackTime || (t === this.rackTime && seqGt(this.end[i]!, this.rackEnd))) {
      this.rackTime = t;
      this.rackEnd = this.end[i]!;
      this.rackRtt = rtt;
    }
    if ((f & RETRANSMITTED) === 0 && rtt < this.minRtt) this.minRtt = rtt;
  }

  private forget(i: number): void {
    const f = this.flags[i]!;
    const len = seqDiff(this.end[i]!, this.start[i]!);
    if ((f & SACKED) !== 0) this.sackedBytes -= len;
    else if ((f & LOST) !== 0) this.lostBytes -= len;
  }

  private compact(): void {
    this.lostHint = Math.max(0, this.lostHint - this.head);
    this.start = this.start.slice(this.head);
    this.end = this.end.slice(this.head);
    this.time = this.time.slice(this.head);
    this.flags = this.flags.slice(this.head);
    this.head = 0;
  }
}
