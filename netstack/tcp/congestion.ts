/**
 * Congestion control: NewReno, RFC 5681 (slow start, congestion avoidance,
 * fast retransmit / fast recovery) with RFC 6582's partial-ACK handling, and
 * an initial window of 10 segments (RFC 6928, Linux's default). With SACK,
 * recovery is RFC 6675's instead (enterSackRecovery: cwnd = ssthresh, the
 * connection sends by "pipe"); loss is then found by RACK (scoreboard.ts).
 *
 * All quantities are bytes. The connection tells this object what happened
 * (new data acknowledged, duplicate ACK, timeout) and asks it how much may be
 * in flight; the decision of what to (re)transmit stays with the connection.
 *
 * Slow start grows cwnd by the full number of bytes acknowledged: our own
 * receivers acknowledge once per input batch (stretch ACKs), and RFC 3465's
 * L = 2*SMSS cap would slow a 64-segment batch to a crawl. The cap exists to
 * limit misbehaving receivers; a guest kernel gains nothing by it.
 */
import { seqGe, seqLt } from './seq.js';

export const INITIAL_WINDOW_SEGMENTS = 10;

export class NewReno {
  cwnd: number;
  ssthresh = 0x7fffffff;
  /** In fast recovery (RFC 6582 §3.2 step 2 until a full ACK). */
  inRecovery = false;
  /** RFC 6582 "recover": the highest sequence number sent when recovery began. */
  recover = 0;
  dupAcks = 0;
  /** Bytes acknowledged in congestion avoidance since cwnd last grew (RFC 5681 §3.1 byte counting). */
  private bytesAckedCa = 0;

  constructor(private smss: number, iss: number) {
    this.cwnd = INITIAL_WINDOW_SEGMENTS * smss;
    this.recover = iss;
  }

  setMss(smss: number): void {
    this.smss = smss;
    this.cwnd = INITIAL_WINDOW_SEGMENTS * smss;
  }

  /**
   * New data acknowledged. Returns 'partial' when the ACK is a partial ACK in
   * recovery (the caller retransmits the first unacknowledged segment), else null.
   */
  onNewAck(ack: number, ackedBytes: number, flightBefore: number, sack = false): 'partial' | null {
    this.dupAcks = 0;
    if (this.inRecovery) {
      if (sack) {
        // RFC 6675: cwnd was set to ssthresh on entry and never inflated; recovery ends at the recovery point.
        if (seqGe(ack, this.recover)) {
          this.inRecovery = false;
          this.bytesAckedCa = 0;
        }
        return null;
      }
      if (seqGe(ack, this.recover)) {
        // Full ACK (RFC 6582 §3.2 step 3): deflate to ssthresh, bounded by what is in flight.
        const flightAfter = Math.max(0, flightBefore - ackedBytes);
        this.cwnd = Math.min(this.ssthresh, Math.max(flightAfter, this.smss) + this.smss);
        this.inRecovery = false;
        this.bytesAckedCa = 0;
        return null;
      }
      // Partial ACK (step 4): deflate by the amount acknowledged, add back one SMSS.
      this.cwnd = Math.max(this.smss, this.cwnd - ackedBytes + (ackedBytes >= this.smss ? this.smss : 0));
      return 'partial';
    }
    // RFC 7661: grow only a window that is used. An application-limited
    // flow (less than half of cwnd in flight) would otherwise earn a window
    // it never tested, and its next large write would leave as one burst.
    if (flightBefore * 2 < this.cwnd) return null;
    if (this.cwnd < this.ssthresh) {
      this.cwnd += ackedBytes;
    } else {
      this.bytesAckedCa += ackedBytes;
      if (this.bytesAckedCa >= this.cwnd) {
        this.bytesAckedCa -= this.cwnd;
        this.cwnd += this.smss;
      }
    }
    return null;
  }

  /**
   * A duplicate ACK (RFC 5681 §2 definition). Returns true when this one
   * triggers fast retransmit (the caller retransmits SND.UNA's segment).
   */
  onDupAck(ack: number, flight: number, sndMax: number): boolean {
    this.dupAcks++;
    if (this.inRecovery) {
      this.cwnd += this.smss; // inflate: one segment left the network
      return false;
    }
    if (this.dupAcks !== 3) return false;
    // RFC 6582 §3.2 step 2: only if the ACK covers more than "recover" (avoids
    // a second reduction for losses of the same window after a timeout). The
    // RFC's recover is the highest sequence number sent, SND.MAX - 1; ours is
    // SND.MAX, so "covers more than" is ack >= recover here.
    if (seqLt(ack, this.recover)) return false;
    this.ssthresh = Math.max(Math.floor(flight / 2), 2 * this.smss);
    this.recover = sndMax;
    this.inRecovery = true;
    this.cwnd = this.ssthresh + 3 * this.smss;
    return true;
  }

  /**
   * SACK-based recovery starts (RFC 6675 §5 step 4.2, loss found by RACK or
   * by duplicate ACKs): halve, and stay in recovery until `sndMax` is acknowledged.
   */
  enterSackRecovery(flight: number, sndMax: number): void {
    this.ssthresh = Math.max(Math.floor(flight / 2), 2 * this.smss);
    this.cwnd = this.ssthresh;
    this.inRecovery = true;
    this.recover = sndMax;
    this.bytesAckedCa = 0;
  }

  /**
   * New data leaves after `idleMs` with nothing in flight (RFC 5681 §4.1):
   * the ACK clock is gone, so cwnd no longer reflects the path. As Linux's
   * tcp_cwnd_restart: halve it per RTO of idleness, down to the initial
   * window (never up to it), remembering 3/4 of the old window in ssthresh.
   */
  restartAfterIdle(idleMs: number, rtoMs: number): void {
    const restart = Math.min(INITIAL_WINDOW_SEGMENTS * this.smss, this.cwnd);
    let cwnd = this.cwnd;
    for (let left = idleMs - rtoMs; left > 0 && cwnd > restart; left -= rtoMs) cwnd = Math.floor(cwnd / 2);
    this.ssthresh = Math.max(this.ssthresh, Math.floor((this.cwnd * 3) / 4));
    this.cwnd = Math.max(cwnd, restart);
    this.bytesAckedCa = 0;
  }

  /** The timeout was spurious (Eifel): back to the window from before it. */
  undoTimeout(cwnd: number, ssthresh: number): void {
    this.cwnd = Math.max(this.cwnd, cwnd);
    this.ssthresh = ssthresh;
    this.inRecovery = false;
    this.dupAcks = 0;
  }

  /** Retransmission timeout (RFC 5681 §3.1 eq. 4, cwnd = loss window). */
  onTimeout(flight: number, sndMax: number): void {
    this.ssthresh = Math.max(Math.floor(flight / 2), 2 * this.smss);
    this.cwnd = this.smss;
    this.inRecovery = false;
    this.dupAcks = 0;
    this.bytesAckedCa = 0;
    this.recover = sndMax;
  }
}
