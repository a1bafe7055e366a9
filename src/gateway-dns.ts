/**
 * The gateway's DNS service (UDP and TCP :53) as the NAT sees it. Two
 * implementations: without an allowlist, DnsForwarder (src/dns-forward.ts)
 * relays every query to the host's resolvers; with one, AllowlistDns
 * (src/allowlist/dns.ts) answers from the zone table and never sends a
 * query for a name outside the allowed zones upstream. The NAT routes
 * gateway:53 to whichever it was given and does not know which it is.
 */
import type { DnsTcpSession } from './dns-forward.js';

export type DnsVia = 'udp' | 'tcp';

/** Answers one DNS message; what a guest DNS TCP connection is served by. */
export interface DnsAnswerer {
  /**
   * The answer to `query`, or undefined when there is nothing to say (a
   * malformed message, a response, the service closed). `query` may be a
   * short-lived view: implementations copy what they keep.
   */
  resolve(query: Uint8Array, via: DnsVia): Promise<Uint8Array | undefined>;
}

/** Bounds of one guest DNS TCP connection (RFC 7766). */
export interface DnsTcpLimits {
  /** Queries one guest TCP connection may have outstanding; beyond it the connection is paused. */
  maxTcpPipelined: number;
  /** A guest DNS TCP connection idle this long is closed (RFC 7766 6.2.3). */
  tcpIdleTimeoutMs: number;
}

export interface GatewayDns extends DnsAnswerer {
  /** Handlers for a guest TCP connection to gateway:53; bind the accepted socket with session.bind(). */
  openTcpSession(): DnsTcpSession;
  /** Counters for /stats (`mode` tells which implementation answered; each adds its own). */
  stats(): GatewayDnsStats;
  /** Ends every query in flight and releases host resources. */
  close(): Promise<void>;
}

export interface GatewayDnsStats {
  readonly mode: 'forward' | 'allowlist';
  readonly queries: number;
  readonly answered: number;
}
