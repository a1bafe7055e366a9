/**
 * What the gateway passes on of an upstream SVCB/HTTPS record (issue 14,
 * finding 7): ECH must be a decision, not an accident. A client that learns
 * an ECH config encrypts the real server name, and Moat's SNI check then
 * only sees the outer name; so `ech` never reaches the guest. Address hints
 * would let a client connect somewhere Moat did not resolve; Moat dials by
 * name anyway, but the hints are still cut to the addresses Moat pinned for
 * the target (the guest is IPv4 only, so `ipv6hint` goes).
 *
 * ServiceMode keeps only the keys a client needs to connect the way the
 * server prefers (mandatory, alpn, no-default-alpn, port, filtered
 * ipv4hint); every other key is removed: ech, ipv6hint, and keys Moat does
 * not know (so an upstream cannot hand the guest arbitrary data through
 * them). A record whose `mandatory` list names a key that was removed would
 * be unusable (RFC 9460 8), so it is dropped; so is a record whose kept
 * values are malformed. AliasMode records keep their target and lose their
 * params (which clients ignore, RFC 9460 2.4.2).
 */
import { SVC_KEY, type SvcbRecord, type SvcParam } from './svcb.js';

export interface FilteredService {
  /** null: the record is dropped. */
  readonly record: SvcbRecord | null;
  /** The upstream record carried an ECH config. */
  readonly echRemoved: boolean;
}

const KEPT = new Set<number>([SVC_KEY.mandatory, SVC_KEY.alpn, SVC_KEY.noDefaultAlpn, SVC_KEY.port, SVC_KEY.ipv4hint]);

export function filterServiceRecord(r: SvcbRecord, pinned: readonly string[]): FilteredService {
  const echRemoved = r.params.some((p) => p.key === SVC_KEY.ech);
  if (r.priority === 0) return { record: { ...r, params: [] }, echRemoved };
  const params: SvcParam[] = [];
  for (const p of r.params) {
    if (!KEPT.has(p.key)) continue;
    if (!wellFormed(p)) return { record: null, echRemoved };
    if (p.key === SVC_KEY.ipv4hint) {
      const hint = pinnedHints(p.value, pinned);
      if (hint !== null) params.push({ key: p.key, value: hint });
    } else params.push(p);
  }
  const mandatory = params.find((p) => p.key === SVC_KEY.mandatory);
  if (mandatory !== undefined) {
    for (let i = 0; i < mandatory.value.length; i += 2) {
      const key = (mandatory.value[i]! << 8) | mandatory.value[i + 1]!;
      if (!params.some((p) => p.key === key)) return { record: null, echRemoved };
    }
  }
  return { record: { ...r, params }, echRemoved };
}

function wellFormed(p: SvcParam): boolean {
  const v = p.value;
  switch (p.key) {
    case SVC_KEY.mandatory:
      return v.length > 0 && v.length % 2 === 0;
    case SVC_KEY.noDefaultAlpn:
      return v.length === 0;
    case SVC_KEY.port:
      return v.length === 2;
    case SVC_KEY.ipv4hint:
      return v.length > 0 && v.length % 4 === 0;
    case SVC_KEY.alpn: {
      if (v.length === 0) return false;
      for (let off = 0; off < v.length; off += 1 + v[off]!) {
        if (v[off] === 0 || off + 1 + v[off]! > v.length) return false;
      }
      return true;
    }
    default:
      return false;
  }
}

/** The hint's addresses that Moat pinned, in the hint's order; null when none is. */
function pinnedHints(value: Uint8Array, pinned: readonly string[]): Uint8Array | null {
  const allowed = new Set(pinned);
  const kept: number[] = [];
  for (let off = 0; off < value.length; off += 4) {
    if (allowed.has(`${value[off]}.${value[off + 1]}.${value[off + 2]}.${value[off + 3]}`)) kept.push(off);
  }
  if (kept.length === 0) return null;
  const out = new Uint8Array(kept.length * 4);
  kept.forEach((off, i) => out.set(value.subarray(off, off + 4), i * 4));
  return out;
}
