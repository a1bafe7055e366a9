/**
 * Bounded IPv4 fragment reassembly (RFC 791 §3.2 "Reassembly", RFC 815).
 *
 * Datagrams being reassembled are keyed by (src, dst, protocol, id), as RFC
 * 791 specifies. Each keeps its received fragments sorted by offset (copies:
 * the caller's views die after the call), the total length once the last
 * fragment (MF = 0) arrived, and one Timer on the shared TimerWheel, armed
 * when the first fragment arrives and never extended (as Linux does, so that
 * a trickle of fragments cannot keep a datagram alive forever).
 *
 * Policy choices, the strict ones, because a user-space stack guarding a
 * sandbox has no reason to be generous with fragment tricks:
 * - An exact duplicate (same offset, same length, same bytes) is ignored.
 * - Any other overlap drops the WHOLE datagram ('frag:overlap'), as RFC 5722
 *   requires for IPv6 and Linux does for IPv4 since CVE-2018-5391: overlaps
 *   have no legitimate use and are how IDS evasion and "teardrop" work.
 * - A datagram whose end would pass 65535 bytes with its header is dropped
 *   ('frag:too-big', the "ping of death").
 * - Inconsistent pieces drop the datagram ('frag:bad-length'): a non-last
 *   fragment whose length is not a multiple of 8 or is empty, two different
 *   ends, or data beyond the known end.
 * - Limits (total buffered bytes, datagrams in progress, fragments per
 *   datagram) refuse the newest: a fragment that does not fit returns
 *   'frag:limit' and the datagram it belongs to is dropped too (it could never
 *   complete), so that older datagrams keep their chance to finish.
 * Every datagram that ends (complete, dropped, expired) leaves no state behind.
 *
 * IPv6 (RFC 8200 §4.5) uses the same rules with its own instance: the stack
 * passes the fragmentable part as the payload, the unfragmentable headers'
 * length as `headerLength`, and the 32-bit identification; the 65535 bound
 * then applies to the payload length as RFC 8200 states it.
 */
import type { IpAddress } from './addr.js';
import { ParseError, type DropReason } from './errors.js';
import { IPV4_MAX_TOTAL_LEN } from './ipv4.js';

/** One fragment as either family's parser sees it (Ipv4Repr is one). */
export interface FragmentPiece {
  src: IpAddress;
  dst: IpAddress;
  protocol: number;
  id: number;
  moreFragments: boolean;
  /** In bytes. */
  fragmentOffset: number;
  /** Bytes of header before the fragment's data that count against the 65535 bound. */
  headerLength: number;
  payload: Uint8Array;
}
import { Timer, type TimerWheel } from './timer-wheel.js';

export interface ReassemblyLimits {
  /** Fragment payload bytes buffered over all datagrams. */
  maxBytes: number;
  /** Datagrams being reassembled at once. */
  maxDatagrams: number;
  /** Time from a datagram's first fragment to giving up (Linux ipfrag_time: 30 s). */
  timeoutMs: number;
  /**
   * Fragments kept per datagram (default 1024). Bounds the per-fragment work
   * (a sorted insert) against floods of tiny fragments.
   */
  maxFragmentsPerDatagram?: number;
}

export const DEFAULT_REASSEMBLY_LIMITS: Readonly<ReassemblyLimits> = {
  maxBytes: 4 * 1024 * 1024,
  maxDatagrams: 64,
  timeoutMs: 30_000,
  maxFragmentsPerDatagram: 1024,
};

interface Fragment {
  offset: number;
  data: Uint8Array;
}

interface Datagram {
  readonly key: string;
  readonly src: IpAddress;
  readonly dst: IpAddress;
  readonly protocol: number;
  readonly id: number;
  /** Sorted by offset, never overlapping. */
  readonly fragments: Fragment[];
  /** Payload bytes held (sum of fragment lengths). */
  bytes: number;
  /** Payload length, known once the fragment with MF = 0 arrived; -1 until then. */
  totalLength: number;
  readonly timer: Timer;
}

export class Reassembler {
  /** Called when a datagram is given up, with why ('frag:timeout'); for counters and logs. */
  onExpire?: (reason: DropReason, datagram: { src: IpAddress; dst: IpAddress; protocol: number; id: number; hadFirstFragment: boolean }) => void;

  private readonly inProgress = new Map<string, Datagram>();
  private buffered = 0;
  private readonly maxFragments: number;

  constructor(private readonly limits: ReassemblyLimits, private readonly timers: TimerWheel) {
    this.maxFragments = limits.maxFragmentsPerDatagram ?? DEFAULT_REASSEMBLY_LIMITS.maxFragmentsPerDatagram!;
  }

  /** Fragment payload bytes held over all datagrams. */
  get bufferedBytes(): number {
    return this.buffered;
  }

  /** Datagrams being reassembled. */
  get datagrams(): number {
    return this.inProgress.size;
  }

  /**
   * Takes one fragment. Returns the whole payload (a fresh copy) when this
   * packet completes its datagram, null while more fragments are awaited, or
   * a ParseError when the fragment is refused. A packet that is not a
   * fragment is returned at once (copied, for the same ownership rule).
   */
  push(ip: FragmentPiece): Uint8Array | null | ParseError {
    const { fragmentOffset: offset, payload, moreFragments: more } = ip;
    if (!more && offset === 0) return payload.slice();
    const end = offset + payload.length;
    const key = `${ip.src}/${ip.dst}/${ip.protocol}/${ip.id}`;
    let d = this.inProgress.get(key);

    if (end + ip.headerLength > IPV4_MAX_TOTAL_LEN) return this.refuse(d, 'frag:too-big');
    // RFC 791: every fragment but the last carries a multiple of 8 bytes (and some bytes).
    if (more && (payload.length === 0 || payload.length % 8 !== 0)) return this.refuse(d, 'frag:bad-length');

    if (d === undefined) {
      if (this.inProgress.size >= this.limits.maxDatagrams) return ParseError.of('frag:limit');
      d = {
        key, src: ip.src, dst: ip.dst, protocol: ip.protocol, id: ip.id,
        fragments: [], bytes: 0, totalLength: -1,
        timer: new Timer(() => this.expire(key)),
      };
      this.inProgress.set(key, d);
      this.timers.arm(d.timer, this.limits.timeoutMs);
    }

    if (!more) {
      if (d.totalLength !== -1 && d.totalLength !== end) return this.refuse(d, 'frag:bad-length');
      const last = d.fragments[d.fragments.length - 1];
      if (last !== undefined && last.offset + last.data.length > end) return this.refuse(d, 'frag:bad-length');
      d.totalLength = end;
    }
    if (d.totalLength !== -1 && end > d.totalLength) return this.refuse(d, 'frag:bad-length');

    // Find where this fragment goes: the first fragment starting at or after `offset`.
    const frags = d.fragments;
    const i = lowerBound(frags, offset);
    const next = frags[i];
    if (next !== undefined && next.offset === offset && next.data.length === payload.length) {
      if (sameBytes(next.data, payload)) return null; // exact duplicate: ignore
      return this.refuse(d, 'frag:overlap');
    }
    const prev = frags[i - 1];
    if (prev !== undefined && prev.offset + prev.data.length > offset) return this.refuse(d, 'frag:overlap');
    if (next !== undefined && end > next.offset) return this.refuse(d, 'frag:overlap');
    // An empty last fragment adds no bytes, but may still be the one that says where the end is.
    if (payload.length > 0) {
      if (this.buffered + payload.length > this.limits.maxBytes || frags.length >= this.maxFragments) {
        return this.refuse(d, 'frag:limit');
      }
      frags.splice(i, 0, { offset, data: payload.slice() });
      d.bytes += payload.length;
      this.buffered += payload.length;
    }

    if (d.totalLength === -1 || d.bytes !== d.totalLength) return null;
    // Fragments never overlap, so bytes === totalLength means no holes.
    const whole = new Uint8Array(d.totalLength);
    for (const f of frags) whole.set(f.data, f.offset);
    this.forget(d);
    return whole;
  }

  /** Drops every datagram in progress and cancels their timers. */
  clear(): void {
    for (const d of this.inProgress.values()) this.timers.cancel(d.timer);
    this.inProgress.clear();
    this.buffered = 0;
  }

  private refuse(d: Datagram | undefined, reason: DropReason): ParseError {
    if (d !== undefined) this.forget(d);
    return ParseError.of(reason);
  }

  private forget(d: Datagram): void {
    this.timers.cancel(d.timer);
    this.inProgress.delete(d.key);
    this.buffered -= d.bytes;
  }

  private expire(key: string): void {
    const d = this.inProgress.get(key);
    if (d === undefined) return;
    this.forget(d);
    this.onExpire?.('frag:timeout', {
      src: d.src, dst: d.dst, protocol: d.protocol, id: d.id,
      // RFC 792/1122 §3.3.2: Time Exceeded may be sent only if fragment zero arrived.
      hadFirstFragment: d.fragments.length > 0 && d.fragments[0]!.offset === 0,
    });
  }
}

/** Index of the first fragment whose offset is >= `offset` (binary search). */
function lowerBound(frags: readonly Fragment[], offset: number): number {
  let lo = 0;
  let hi = frags.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (frags[mid]!.offset < offset) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
