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
 *     answer is pinned for its (clamped) TTL.
 *
 * Which of the addresses may actually be dialed (the DNS-rebinding guard) is
 * the policy's call (EgressPolicy.admitResolved), not this module's.
 */
import { clampTtl, DEFAULT_RETRY_POLICY, DEFAULT_TTL_CLAMP, lookup, type Resolver, type Timers } from '../../dns/preresolve.js';
import type { PinTable } from '../../sni/pins.js';

export interface DialTargetsOptions {
  resolver: Resolver;
  timers: Timers;
  pins: PinTable;
  /** Live lookups in flight at once; beyond it a dial fails at once (a guest cannot queue unbounded work upstream). */
  maxLookups: number;
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

  constructor(private readonly opts: DialTargetsOptions) {}

  /** IPv4 addresses for a canonical name; rejects when the name does not resolve. */
  async addressesFor(name: string, signal?: AbortSignal): Promise<readonly string[]> {
    const pinned = this.opts.pins.addressesFor(name);
    if (pinned.length > 0) return pinned;
    if (this.inFlight >= this.opts.maxLookups) throw new LookupOverloadedError();
    this.inFlight++;
    this.lookups++;
    try {
      const r = await lookup(this.opts.resolver, 'A', name, {
        timers: this.opts.timers,
        policy: DEFAULT_RETRY_POLICY,
        ...(signal ? { signal } : {}),
      });
      if (r.addresses.length > 0) this.opts.pins.pin(name, r.addresses, clampTtl(r.ttl, DEFAULT_TTL_CLAMP) * 1000);
      return r.addresses;
    } finally {
      this.inFlight--;
    }
  }
}
