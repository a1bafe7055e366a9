/**
 * Retransmission timeout estimator, RFC 6298 §2, with Linux's floor of 200 ms
 * (RFC 6298 asks for 1 s; Linux's TCP_RTO_MIN is 200 ms and guests expect it)
 * and a 120 s ceiling (Linux TCP_RTO_MAX). Backoff doubles the RTO (§5.5)
 * until a new sample arrives (Karn's algorithm is the caller's job: do not
 * feed samples from retransmitted segments unless timestamps identify them).
 */
export class RttEstimator {
  srtt = 0;
  rttvar = 0;
  private base: number;
  private backoffShift = 0;
  hasSample = false;

  constructor(
    private readonly minRtoMs: number,
    private readonly maxRtoMs: number,
    initialRtoMs: number,
    /** Clock granularity G of RFC 6298 §2. */
    private readonly granularityMs = 1,
  ) {
    this.base = initialRtoMs;
  }

  /** The current RTO including backoff. */
  get rto(): number {
    return Math.min(this.maxRtoMs, this.base * 2 ** this.backoffShift);
  }

  get backoffCount(): number {
    return this.backoffShift;
  }

  sample(rttMs: number): void {
    const r = Math.max(0, rttMs);
    if (!this.hasSample) {
      // §2.2: first measurement.
      this.srtt = r;
      this.rttvar = r / 2;
      this.hasSample = true;
    } else {
      // §2.3: alpha = 1/8, beta = 1/4.
      this.rttvar = 0.75 * this.rttvar + 0.25 * Math.abs(this.srtt - r);
      this.srtt = 0.875 * this.srtt + 0.125 * r;
    }
    this.base = Math.min(this.maxRtoMs, Math.max(this.minRtoMs, this.srtt + Math.max(this.granularityMs, 4 * this.rttvar)));
    this.backoffShift = 0;
  }

  /** §5.5: the timer expired, double the RTO. */
  backoff(): void {
    if (this.base * 2 ** this.backoffShift < this.maxRtoMs) this.backoffShift++;
  }

  /** A new acknowledgment arrived: forget the backoff (Linux resets it on forward progress). */
  resetBackoff(): void {
    this.backoffShift = 0;
  }
}
