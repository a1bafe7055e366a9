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
 */
import { clampTtl, DEFAULT_RETRY_POLICY, DEFAULT_TTL_CLAMP, isNxdomain, lookup, type Resolver, type Timers } from '../../dns/preresolve.js';
import type { LiveLookupBudget } from '../../dns/live-budget.js';
import type { PinTable } from '../../sni/pins.js';

export interface DialTargetsOptions {
  resolver: Resolver;
  timers: Timers;
  pins: PinTable;
  /** Live lookups in flight at once; beyond it a dial fails at once (a guest cannot queue unbounded work upstream). */
  maxLookups: number;
  /** The runtime's live-lookup budget (shared with its DNS); absent: unbudgeted. */
  budget?: LiveLookupBudget;
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

  /** IPv4 addresses for a canonical name; rejects when the name does not resolve. */
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
      const r = await lookup(this.opts.resolver, 'A', name, {
        timers: this.opts.timers,
        policy: DEFAULT_RETRY_POLICY,
        ...(signal ? { signal } : {}),
      });
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
