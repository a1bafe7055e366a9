import type { GatewayDns } from '../gateway-dns.js';
import type { NetConnectOpts, Socket } from 'node:net';
import { ipv4, type IPv4 } from '../../netstack/addr.js';
import type { QuicFlowOptions } from './quic-flows.js';
import type { RateLimitSpec } from '../traffic/rate-limiter.js';
import type { Ipv6DestinationRules } from './destination.js';
import type { PingSocket } from './icmp-echo.js';

/** An upstream DNS resolver on the host side. */
export interface DnsUpstream {
  host: string;
  port: number;
}

/** How the NAT behaves. Every field has a default in DEFAULT_NAT_OPTIONS. */
export interface NatOptions {
  /** The virtual gateway (192.168.127.1). Only :53 (DNS, UDP and TCP) is served on it here. */
  gatewayIp: IPv4;
  /** The host alias (192.168.127.254): connections to it are dialed to 127.0.0.1. */
  hostIp: IPv4;
  /** The virtual subnet: addresses in it other than the gateway and host alias have no host-side counterpart. */
  network: IPv4;
  prefix: number;
  /** Link-local 169.254.0.0/16 (cloud metadata lives there) is refused unless this is true. */
  allowLinkLocal: boolean;
  /** The IPv6 side (gateway, host alias, prefix, where the alias leads); absent: IPv6 flows are refused ('ipv6-off'). */
  ipv6?: Ipv6DestinationRules | undefined;
  /** A UDP flow with no datagram either way for this long is closed. */
  udpIdleTimeoutMs: number;
  /** UDP flows kept at once; a new flow beyond it is refused unless the least recently used one is idle udpEvictIdleMs. */
  maxUdpFlows: number;
  /** At maxUdpFlows, a flow idle this long may be closed to make room for a new one. */
  udpEvictIdleMs: number;
  /** Datagrams queued per UDP flow while its host socket is still connecting. */
  udpPendingDatagrams: number;
  /** TCP flows (dialing or open) at once; SYNs beyond it are refused with RST. */
  maxTcpFlows: number;
  /** Host resolvers DNS to the gateway is forwarded to (default: /etc/resolv.conf). */
  dnsUpstreams: DnsUpstream[];
  /** A DNS query without an upstream answer for this long is answered SERVFAIL. */
  dnsTimeoutMs: number;
  /** DNS queries in flight at once; beyond it queries are answered SERVFAIL at once. */
  dnsMaxInFlight: number;
  /** How long a host dial may take before the guest's SYN is dropped unanswered. */
  connectTimeoutMs: number;
  /**
   * Bytes a host socket may buffer towards the host before the guest side is
   * paused (the host socket's writableHighWaterMark). Towards the guest at most
   * one host read chunk is held while the guest's send buffer is full.
   */
  perFlowBufferBytes: number;
  /** Bytes buffered over all TCP flows before flows above their fair share are paused (src/limits.ts BufferBudget); 0 = no cap. */
  totalBufferBytes: number;
  /** Connections held for their SNI/Host at once (with an egress policy); the egress option maxHeld applies when this is 0. */
  maxHeldConnections: number;
  /**
   * Called for each refusal by a limit ('tcpFlows', 'udpFlows', 'dnsInFlight',
   * 'peek'), with details; serve() passes its RefusalLog, which counts and
   * logs at most one line per interval. Without it refusals are logged at debug.
   */
  onLimit?: (limit: string, fields: Record<string, unknown>) => void;
  /** Puts a layer in front of the gateway's DNS, whichever it is (the API's run-time records: src/local-zones-dns.ts). */
  wrapDns?: (dns: GatewayDns) => GatewayDns;
  /** With an egress policy: UDP flows held for the name in their QUIC Initial (src/nat/quic-flows.ts); defaults there. */
  quic?: Partial<Omit<QuicFlowOptions, 'onLimit'>>;
  /** The ICMP ping socket echo beyond the gateway goes through (--icmp-fd); without it such echo is dropped, counted 'unavailable'. */
  pingSocket?: PingSocket;
  /** Echo requests awaiting a reply at once (--max-icmp-echo). */
  maxIcmpEcho: number;
  /** Echo requests forwarded per second, burst the same (--icmp-echo-per-sec). */
  icmpEchoPerSec: number;
  /** Monotonic milliseconds (the echo rate and expiry); default performance.now. */
  now?: () => number;
  /**
   * How host TCP sockets are opened (default: node:net connect). Tests
   * replace it to prove where a flow would be dialed without dialing it.
   */
  connectHost?: (opts: NetConnectOpts) => Socket;
  /** The guest's rate limits (--rate-egress, --rate-ingress): one token bucket per direction for all its flows. */
  rateEgress?: RateLimitSpec;
  rateIngress?: RateLimitSpec;
}

export const DEFAULT_NAT_OPTIONS: Readonly<NatOptions> = Object.freeze({
  gatewayIp: ipv4(192, 168, 127, 1),
  hostIp: ipv4(192, 168, 127, 254),
  network: ipv4(192, 168, 127, 0),
  prefix: 24,
  allowLinkLocal: false,
  udpIdleTimeoutMs: 90_000,
  maxUdpFlows: 1024,
  udpEvictIdleMs: 30_000,
  udpPendingDatagrams: 16,
  // As many as the stack allows (DEFAULT_STACK_CONFIG.tcp.maxConnections): an idle flow costs a few KiB.
  maxTcpFlows: 16_384,
  dnsUpstreams: [],
  dnsTimeoutMs: 5_000,
  dnsMaxInFlight: 256,
  connectTimeoutMs: 10_000,
  perFlowBufferBytes: 256 * 1024,
  totalBufferBytes: 64 * 1024 * 1024,
  maxHeldConnections: 0,
  maxIcmpEcho: 64,
  icmpEchoPerSec: 20,
});

/** Fills the gaps of a partial options object with the defaults (dnsUpstreams empty = read /etc/resolv.conf). */
export function natOptions(partial: Partial<NatOptions> = {}): NatOptions {
  return { ...DEFAULT_NAT_OPTIONS, ...partial };
}
