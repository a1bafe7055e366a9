/**
 * What the gateway passes on of an upstream SVCB/HTTPS record (issue 14,
 * finding 7): ECH must be a decision, not an accident. A client that learns
 * an ECH config encrypts the real server name, and Moat's SNI check then
 * only sees the outer name; so `ech` never reaches the guest. Address hints
 * would let a client connect somewhere Moat did not resolve; Moat dials by
 * name anyway, but the hints are still cut to the addresses Moat pinned for
 * the target, ipv4hint and ipv6hint alike (on an IPv4-only guest network
 * ipv6hint goes: the guest could not use it).
 *
 * ServiceMode keeps only the keys a client needs to connect the way the
 * server prefers (mandatory, alpn, no-default-alpn, port, filtered
 * ipv4hint, ipv6hint if the guest has IPv6); every other key is removed: ech, and keys Moat does
 * not know (so an upstream cannot hand the guest arbitrary data through
 * them). A record whose `mandatory` list names a key that was removed would
 * be unusable (RFC 9460 8), so it is dropped; so is a record whose kept
 * values are malformed. AliasMode records keep their target and lose their
 * params (which clients ignore, RFC 9460 2.4.2).
 */
import { Address4, Address6 } from 'ip-address';
import { SVC_KEY, type SvcbRecord, type SvcParam } from './svcb.js';

export interface FilteredService {
  /** null: the record is dropped. */
  readonly record: SvcbRecord | null;
  /** The upstream record carried an ECH config. */
  readonly echRemoved: boolean;
}

const KEPT = new Set<number>([SVC_KEY.mandatory, SVC_KEY.alpn, SVC_KEY.noDefaultAlpn, SVC_KEY.port, SVC_KEY.ipv4hint]);
const KEPT_V6 = new Set<number>([...KEPT, SVC_KEY.ipv6hint]);

/** `pinned`: addresses of either family (any spelling); `ipv6`: does the guest network carry IPv6. */
export function filterServiceRecord(r: SvcbRecord, pinned: readonly string[], ipv6 = false): FilteredService {
  const kept = ipv6 ? KEPT_V6 : KEPT;
  const echRemoved = r.params.some((p) => p.key === SVC_KEY.ech);
  if (r.priority === 0) return { record: { ...r, params: [] }, echRemoved };
  const params: SvcParam[] = [];
  for (const p of r.params) {
    if (!kept.has(p.key)) continue;
    if (!wellFormed(p)) return { record: null, echRemoved };
    if (p.key === SVC_KEY.ipv4hint || p.key === SVC_KEY.ipv6hint) {
      const hint = pinnedHints(p.value, pinned, p.key === SVC_KEY.ipv4hint ? 4 : 16);
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
    case SVC_KEY.ipv6hint:
      return v.length > 0 && v.length % 16 === 0;
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

/**
 * The hint's addresses (`size` bytes each: 4 or 16) that Moat pinned, in the
 * hint's order; null when none is. Compared as numbers, so the pin's
 * spelling does not matter.
 */
function pinnedHints(value: Uint8Array, pinned: readonly string[], size: 4 | 16): Uint8Array | null {
  const allowed = new Set<bigint>();
  for (const p of pinned) {
    const n = addressNumber(p, size);
    if (n !== null) allowed.add(n);
  }
  const kept: number[] = [];
  for (let off = 0; off < value.length; off += size) {
    let n = 0n;
    for (let i = 0; i < size; i++) n = (n << 8n) | BigInt(value[off + i]!);
    if (allowed.has(n)) kept.push(off);
  }
  if (kept.length === 0) return null;
  const out = new Uint8Array(kept.length * size);
  kept.forEach((off, i) => out.set(value.subarray(off, off + size), i * size));
  return out;
}

/** A pinned address of the hint's family as a number, or null (other family, or not an address). */
function addressNumber(text: string, size: 4 | 16): bigint | null {
  try {
    if (size === 4) return Address4.isValid(text) ? new Address4(text).bigInt() : null;
    return text.includes(':') && Address6.isValid(text) && !text.includes('%') ? new Address6(text).bigInt() : null;
  } catch {
    return null;
  }
}
