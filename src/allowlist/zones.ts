/**
 * Start-up of the allowlist's DNS wall: rules → built-in names → fail-closed
 * pre-resolution of every exact host → the zone table. Shared by `moat
 * serve --allow` and `moat zones`, so what `moat zones` prints is what
 * serve would answer with.
 *
 * Either every allowed host resolved and a complete table comes back, or
 * this rejects (PreresolveError naming every failed host, or the abort
 * reason): there is no partial table to serve.
 */
import type { Rule } from '../../dns/rules.js';
import { preresolve, type Resolver, type RetryPolicy, type Timers } from '../../dns/preresolve.js';
import { builtinHosts, hostsToResolve, ZoneTable, type SinkholeMode } from '../../dns/zones.js';
import { realTimers } from './resolver.js';

export interface AllowlistTableOptions {
  rules: readonly Rule[];
  resolver: Resolver;
  /** Built-in names answer with these (gateway.containers.internal, host.containers.internal). */
  gatewayIpv4: string;
  hostAliasIpv4: string;
  sinkhole: SinkholeMode;
  /** Aborts the pre-resolution (the CLI aborts on SIGINT/SIGTERM). */
  signal?: AbortSignal;
  timers?: Timers;
  policy?: RetryPolicy;
  /**
   * The guest network carries IPv6 (issue 19): every allowed host is asked A
   * and AAAA (one of them must have an address), and the built-in names get
   * these AAAA addresses. Absent: IPv4 only, an allowed host needs an A record.
   */
  ipv6?: { gatewayIpv6?: string; hostAliasIpv6?: string };
}

/** Without `ipv6` options the guest network is IPv4 only: an allowed host needs an A record. */
export const GUEST_IPV6 = false;

export async function buildAllowlistTable(o: AllowlistTableOptions): Promise<ZoneTable> {
  const builtins = builtinHosts({
    gatewayIpv4: o.gatewayIpv4,
    hostAliasIpv4: o.hostAliasIpv4,
    ...(o.ipv6?.gatewayIpv6 ? { gatewayIpv6: o.ipv6.gatewayIpv6 } : {}),
    ...(o.ipv6?.hostAliasIpv6 ? { hostAliasIpv6: o.ipv6.hostAliasIpv6 } : {}),
  });
  const resolved = await preresolve(hostsToResolve(o.rules, builtins), {
    resolver: o.resolver,
    timers: o.timers ?? realTimers,
    ipv6: o.ipv6 !== undefined,
    ...(o.policy ? { policy: o.policy } : {}),
    ...(o.signal ? { signal: o.signal } : {}),
  });
  return ZoneTable.build(o.rules, resolved, builtins, o.sinkhole);
}
