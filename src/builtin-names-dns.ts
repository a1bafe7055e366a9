/**
 * The gateway's own names without an allowlist: `gateway.containers.internal`
 * and `host.containers.internal` are answered by Moat itself (as gvproxy
 * does), every other query goes to the wrapped GatewayDns (the forwarder).
 * With an allowlist the zone table already serves them first.
 *
 * Only the first question's name is read (no compression is possible in it,
 * RFC 1035 4.1.4), so forwarded queries cost one short scan, not a decode.
 */
import { DnsResponder } from '../dns/responder.js';
import { builtinHosts, ZoneTable } from '../dns/zones.js';
import { realTimers } from './allowlist/resolver.js';
import { DEFAULT_DNS_FORWARDER_OPTIONS, DnsTcpSession } from './dns-forward.js';
import type { DnsVia, GatewayDns, GatewayDnsStats } from './gateway-dns.js';

const HEADER = 12;

export class BuiltinNamesDns implements GatewayDns {
  private readonly names: ReadonlySet<string>;
  private readonly responder: DnsResponder;
  private readonly sessions = new Set<DnsTcpSession>();
  private answeredLocally = 0;

  constructor(
    private readonly inner: GatewayDns,
    /** With the IPv6 addresses (an IPv6 guest link), the names answer AAAA too; without, AAAA is NODATA. */
    addresses: { gatewayIpv4: string; hostAliasIpv4: string; gatewayIpv6?: string; hostAliasIpv6?: string },
  ) {
    const builtins = builtinHosts(addresses);
    this.names = new Set(builtins.map((b) => b.name));
    this.responder = new DnsResponder({
      table: ZoneTable.build([], new Map(), builtins),
      resolver: {
        // The table holds no wildcard zones, so nothing is ever looked up.
        resolve4: () => Promise.reject(new Error('no upstream for built-in names')),
        resolve6: () => Promise.reject(new Error('no upstream for built-in names')),
      },
      timers: realTimers,
      ipv6: addresses.gatewayIpv6 !== undefined || addresses.hostAliasIpv6 !== undefined,
    });
  }

  async resolve(query: Uint8Array, via: DnsVia): Promise<Uint8Array | undefined> {
    const name = firstQuestionName(query);
    if (name === null || !this.names.has(name)) return this.inner.resolve(query, via);
    this.answeredLocally++;
    return (await this.responder.respond(query, via))?.bytes;
  }

  openTcpSession(): DnsTcpSession {
    const session = new DnsTcpSession(this, DEFAULT_DNS_FORWARDER_OPTIONS, () => this.sessions.delete(session));
    this.sessions.add(session);
    return session;
  }

  stats(): GatewayDnsStats & { builtinAnswered: number } {
    return { ...this.inner.stats(), builtinAnswered: this.answeredLocally };
  }

  async close(): Promise<void> {
    for (const s of [...this.sessions]) s.abort();
    await this.inner.close();
  }
}

/** The first question's name, lower-cased, without the trailing dot; null if it cannot be read plainly. */
export function firstQuestionName(msg: Uint8Array): string | null {
  if (msg.length < HEADER + 1 || ((msg[4]! << 8) | msg[5]!) === 0) return null;
  let off = HEADER;
  let name = '';
  for (;;) {
    if (off >= msg.length) return null;
    const len = msg[off]!;
    if (len === 0) break;
    if ((len & 0xc0) !== 0 || off + 1 + len > msg.length) return null;
    if (name.length > 0) name += '.';
    for (let i = off + 1; i <= off + len; i++) {
      const c = msg[i]!;
      name += String.fromCharCode(c >= 0x41 && c <= 0x5a ? c + 32 : c);
    }
    if (name.length > 253) return null;
    off += 1 + len;
  }
  return name;
}
