/**
 * Where a hostname-authorised connection is dialed: addresses Moat resolved
 * itself for that name, never the address the guest chose.
 *
 *  1. Pinned addresses first: an exact host's pre-resolved records (pinned
 *     for the life of the allowlist) and the answers the gateway's DNS gave
 *     the guest (pinned for their TTL). Dialing those means the guest and
 *     Moat agree on where the name leads.
 *  2. Otherwise a live lookup (a name below `*.domain` the guest reached
 *     without asking our DNS first), with the shared retry policy; its
 *     answer is pinned for its (clamped) TTL. It spends from the same
 *     LiveLookupBudget as the gateway's DNS (a held connection whose SNI is
 *     `<data>.wild.test` is the same tunnel as a query for it); over budget,
 *     or with live lookups off, it fails with LiveLookupRefusedError and the
 *     caller refuses the connection with that reason.
 *
 * Which of the addresses may actually be dialed (the DNS-rebinding guard) is
 * the policy's call (EgressPolicy.admitResolved), not this module's.
 *
 * Families (issue 19): on a guest network with IPv6 (`ipv6`), a live lookup
 * asks A and AAAA and the pins hold both, so a name is dialed in whichever
 * family it resolved to on the host: dialOrder() puts the guest flow's own
 * family first and the other after it, so an IPv6 guest flow reaches an
 * IPv4-only host (and the reverse) and a dual-stack name keeps the family
 * the guest chose.
 */
import { clampTtl, DEFAULT_RETRY_POLICY, DEFAULT_TTL_CLAMP, isNxdomain, lookup, type Resolver, type Timers } from '../../dns/preresolve.js';
import type { LiveLookupBudget } from '../../dns/live-budget.js';
import type { PinTable } from '../../sni/pins.js';

/**
 * The order to dial a name's admitted addresses in, for a guest flow of
 * family `prefer` (4 or 6): that family's addresses first, then the other's,
 * each in the order given (resolver order; pins keep theirs).
 */
export function dialOrder(addresses: readonly string[], prefer: 4 | 6): string[] {
  const first: string[] = [];
  const then: string[] = [];
  for (const a of addresses) ((a.includes(':') ? 6 : 4) === prefer ? first : then).push(a);
  return [...first, ...then];
}

/** The family of an address as text (IPv6 has a colon, IPv4 never does). */
export function familyOf(address: string): 4 | 6 {
  return address.includes(':') ? 6 : 4;
}

export interface DialTargetsOptions {
  resolver: Resolver;
  timers: Timers;
  pins: PinTable;
  /** Live lookups in flight at once; beyond it a dial fails at once (a guest cannot queue unbounded work upstream). */
  maxLookups: number;
  /** The runtime's live-lookup budget (shared with its DNS); absent: unbudgeted. */
  budget?: LiveLookupBudget;
  /** The guest network carries IPv6: live lookups ask A and AAAA. Default false (A only). */
  ipv6?: boolean;
}

/** A live lookup the budget refused: 'live-budget' (over it) or 'live-off' (--no-live-lookups). The decision reason. */
export class LiveLookupRefusedError extends Error {
  constructor(
    readonly reason: 'live-budget' | 'live-off',
    detail: string,
  ) {
    super(detail);
    this.name = 'LiveLookupRefusedError';
  }
}

export class LookupOverloadedError extends Error {
  constructor() {
    super('too many name lookups in flight');
    this.name = 'LookupOverloadedError';
  }
}

export class DialTargets {
  private inFlight = 0;
  lookups = 0;
  /**
   * Lookups in flight by name (callers without a signal): many connections
   * released at once for one name (ask mode's allow-once of a hundred
   * waiters) share one lookup and one slot of maxLookups. At most
   * maxLookups entries, one per lookup in flight.
   */
  private readonly shared = new Map<string, Promise<readonly string[]>>();

  constructor(private readonly opts: DialTargetsOptions) {}

  /** Addresses for a canonical name (IPv4, and IPv6 with `ipv6`); rejects when the name does not resolve. */
  async addressesFor(name: string, signal?: AbortSignal): Promise<readonly string[]> {
    const pinned = this.opts.pins.addressesFor(name);
    if (pinned.length > 0) return pinned;
    if (signal !== undefined) return this.live(name, signal);
    const running = this.shared.get(name);
    if (running !== undefined) return running;
    const p = this.live(name, undefined);
    this.shared.set(name, p);
    const forget = (): void => void (this.shared.get(name) === p && this.shared.delete(name));
    p.then(forget, forget);
    return p;
  }

  private async live(name: string, signal: AbortSignal | undefined): Promise<readonly string[]> {
    if (this.inFlight >= this.opts.maxLookups) throw new LookupOverloadedError();
    const budget = this.opts.budget;
    const spend = budget?.spend(name);
    if (spend === 'over-budget') throw new LiveLookupRefusedError('live-budget', `live lookup budget exhausted (${budget!.describe})`);
    if (spend === 'off') throw new LiveLookupRefusedError('live-off', 'live lookups are off and the name was not resolved at start-up');
    this.inFlight++;
    this.lookups++;
    try {
      const ctx = { timers: this.opts.timers, policy: DEFAULT_RETRY_POLICY, ...(signal ? { signal } : {}) };
      const r = this.opts.ipv6 === true ? await lookupBoth(this.opts.resolver, name, ctx) : await lookup(this.opts.resolver, 'A', name, ctx);
      const ttl = clampTtl(r.ttl, DEFAULT_TTL_CLAMP);
      budget?.answered(name, ttl);
      if (r.addresses.length > 0) this.opts.pins.pin(name, r.addresses, ttl * 1000);
      return r.addresses;
    } catch (err) {
      if (isNxdomain(err)) budget?.answered(name, DEFAULT_TTL_CLAMP.min);
      throw err;
    } finally {
      this.inFlight--;
    }
  }
}

/**
 * A and AAAA at once: the addresses of both (A first), the shorter TTL of the
 * families that answered. One family failing is fine when the other has an
 * address (an upstream that times out on AAAA must not cut an IPv4 host
 * off); both failing rethrows the A lookup's error (NXDOMAIN if it was one).
 */
async function lookupBoth(resolver: Resolver, name: string, ctx: Parameters<typeof lookup>[3]): Promise<{ addresses: string[]; ttl: number }> {
  const [a, aaaa] = await Promise.allSettled([lookup(resolver, 'A', name, ctx), lookup(resolver, 'AAAA', name, ctx)]);
  const answered = [a, aaaa].filter((r): r is PromiseFulfilledResult<Awaited<ReturnType<typeof lookup>>> => r.status === 'fulfilled' && r.value.addresses.length > 0);
  if (answered.length === 0) {
    if (a.status === 'rejected') throw a.reason;
    if (aaaa.status === 'rejected' && !isNxdomain(aaaa.reason)) throw aaaa.reason;
    return { addresses: [], ttl: a.status === 'fulfilled' ? a.value.ttl : DEFAULT_TTL_CLAMP.min };
  }
  return { addresses: answered.flatMap((r) => r.value.addresses), ttl: Math.min(...answered.map((r) => r.value.ttl)) };
}
