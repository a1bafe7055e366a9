/**
 * The Stack: frames in, socket events out, frames back.
 *
 * It plays every address that is not the guest: the gateway (ARP, ICMP echo,
 * DHCP), the host alias and any other virtual IP (ARP, ICMP echo), and, for
 * TCP and UDP, whatever remote address the guest talks to. It decides nothing
 * about policy: new TCP connections are raised as PendingTcp, datagrams as
 * onUdp, and the owner (src/ in the service) decides and does the I/O.
 *
 * Batching: input() takes every frame one read produced; connections ask for
 * their coalesced ACK with scheduleFlush(), and all frames of the batch leave
 * in one onOutput call at the end. Work started outside input() (an owner's
 * write(), a timer) is flushed through the injected `defer`, once per turn.
 */
import type {
  FourTuple,
  NetStack,
  PendingTcp,
  StackConfig,
  StackEvents,
  StackStats,
  SynInfo,
  TcpHandlers,
  TcpSocket,
} from './api.js';
import {
  inPrefix6, inSubnet, IPV4_BROADCAST, ipv4, ipv6, IPV6_ANY, isLinkLocal6, isMulticast6, linkLocalFromMac, MAC_BROADCAST,
  multicastMac, prefixMask, solicitedNode, withInterfaceId, type IpAddress, type IPv4, type IPv6, type Mac,
} from './addr.js';
import { ARP_LEN, ARP_REPLY, ARP_REQUEST, emitArp, parseArp } from './arp.js';
import type { Clock } from './clock.js';
import { DhcpServer } from './dhcp-server.js';
import { ParseError } from './errors.js';
import {
  emitEthernetHeader,
  ETH_HEADER_LEN,
  ETHERTYPE_ARP,
  ETHERTYPE_IPV4,
  ETHERTYPE_IPV6,
  parseEthernet,
  type EthernetRepr,
} from './ethernet.js';
import { FlowTable } from './flow-table.js';
import { FrameArena, type Allocator } from './frame-arena.js';
import { emitIcmp, ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST, parseIcmp } from './icmp.js';
import {
  emitIpv4Header,
  fragmentPlan,
  IPPROTO_ICMP,
  IPPROTO_TCP,
  IPPROTO_UDP,
  IPV4_HEADER_LEN,
  parseIpv4,
  type Ipv4Repr,
} from './ipv4.js';
import { NeighborTable } from './neighbors.js';
import { Reassembler } from './reassembly.js';
import {
  emitFragmentHeader, emitIpv6Header, FRAGMENT_HEADER_LEN, fragmentPlan6, IPPROTO_ICMPV6, IPPROTO_NONE, IPV6_HEADER_LEN,
  IPPROTO_FRAGMENT, IPV6_MIN_MTU, Ipv6Problem, PARAM_INCOMPLETE_CHAIN, parseIpv6, walkIpv6Chain, type Ipv6Repr,
} from './ipv6.js';
import {
  emitIcmp6Header, ICMP6_ECHO_REPLY, ICMP6_ECHO_REQUEST, ICMP6_HEADER_LEN, ICMP6_MLD2_REPORT, ICMP6_MLD_DONE, ICMP6_MLD_QUERY,
  ICMP6_MLD_REPORT, ICMP6_NEIGHBOR_ADVERT, ICMP6_NEIGHBOR_SOLICIT, ICMP6_PACKET_TOO_BIG, ICMP6_PARAM_PROBLEM, ICMP6_REDIRECT,
  ICMP6_ROUTER_ADVERT, ICMP6_ROUTER_SOLICIT, icmp6ErrorQuote, isIcmp6Error, parseIcmp6, type Icmp6Repr,
} from './icmp6.js';
import {
  emitNeighborBody, emitRouterAdvertBody, NA_OVERRIDE, NA_ROUTER, NA_SOLICITED, NDP_HOP_LIMIT, NDP_OPT_SOURCE_LL,
  NDP_OPT_TARGET_LL, parseNdpOptions, parseNeighborMessage, routerAdvertBodyLength, routerAdvertRest, type RouterAdvert,
} from './ndp.js';
import { MAX_GSO_FRAME, RX_GSO_TCP, RX_L4_CHECKSUM_OK } from './rx-marks.js';
import { answerDhcp6, DHCP6_SERVER_PORT } from './dhcp6.js';
import { TcpConnection, rstForUnknown, type PayloadSource, type TcpConfig, type TcpHost } from './tcp/connection.js';
import {
  emitTcpHeader,
  parseTcp,
  TCP_ACK,
  TCP_FIN,
  TCP_RST,
  TCP_SYN,
  tcpHeaderLength,
  type TcpRepr,
  type TcpSegmentFields,
} from './tcp/header.js';
import { IsnGenerator } from './tcp/isn.js';
import { TimeWaitTable, type TimeWaitFields } from './tcp/time-wait.js';
import { Timer, TimerWheel } from './timer-wheel.js';
import { emitUdpHeader, parseUdp, UDP_HEADER_LEN } from './udp.js';

export const MIN_MTU = 576;
export const MAX_MTU = 65520;

/**
 * Delayed ACK for request/response connections: long enough for a host
 * server on the same machine to answer (typically 0.1-1 ms), short next to
 * Linux's 40 ms minimum, so that a writer held by Nagle waits little.
 */
export const DEFAULT_DELAYED_ACK_MS = 4;

/**
 * Four-tuples held in TIME-WAIT at once (Linux tcp_max_tw_buckets): 1,000
 * server-closed connections per second for the 60 s of TIME-WAIT, at about
 * 450 bytes each (about 30 MB when full, measured); beyond it the oldest is recycled.
 */
export const DEFAULT_MAX_TIME_WAIT = 65_536;
/** Linux's TCP_TIMEWAIT_LEN, as the connection's default. */
const TIME_WAIT_MS = 60_000;

/** gvproxy's defaults, so that guests configured for gvproxy work unchanged. */
export const DEFAULT_STACK_CONFIG: StackConfig = Object.freeze({
  mtu: 1500,
  network: ipv4(192, 168, 127, 0),
  prefix: 24,
  gatewayIp: ipv4(192, 168, 127, 1),
  gatewayMac: 0x5a94efe40cdd,
  guestIp: ipv4(192, 168, 127, 2),
  hostIp: ipv4(192, 168, 127, 254),
  extraVirtualIps: [],
  dnsServers: [ipv4(192, 168, 127, 1)],
  domainName: undefined,
  searchDomains: [],
  staticLeases: [],
  dhcpLeaseTimeSec: 3600,
  tcp: Object.freeze({
    sendBufferBytes: 1024 * 1024,
    // The receive window starts at 64 KiB (as Linux's, near) and grows up to 4 MiB for a sender it
    // limits (tcp/connection.ts growWindow) while the owner grants it: what a guest can make the NAT
    // hold in receive rings without its budget's consent is flows x this (src/limits.ts BufferBudget).
    recvBufferBytes: 4 * 1024 * 1024,
    recvWindowInitialBytes: 64 * 1024,
    oooBytes: 1024 * 1024,
    synHoldTimeoutMs: 30_000,
    maxConnections: 16_384,
    maxHeldSyns: 1024,
    maxTimeWait: DEFAULT_MAX_TIME_WAIT,
  }),
  fragments: Object.freeze({ maxBytes: 4 * 1024 * 1024, maxDatagrams: 256, timeoutMs: 30_000 }),
}) as StackConfig;

export function createStack(
  config: StackConfig,
  events: StackEvents,
  clock: Clock,
  defer: (fn: () => void) => void,
  options: StackOptions = {},
): Stack {
  return new Stack(config, events, clock, defer, options);
}

/** Injected capabilities beyond the clock: all optional, with portable defaults. */
export interface StackOptions {
  /** Output staging buffers (see frame-arena.ts); the service passes Buffer.allocUnsafe. */
  allocate?: Allocator;
  /**
   * Uniform random numbers in [0, 1), for the key of the initial sequence numbers (tcp/isn.ts). Default
   * Math.random; tests pass a seeded generator so that a failing case replays.
   */
  random?: () => number;
  /** Initial sequence numbers chosen by the caller instead (tests pin one to drive a wrap or a far-away ISN). */
  isn?: (tuple: FourTuple) => number;
  /**
   * The owner's onOutput is done with a batch when it returns (it writes each
   * frame synchronously, as the TAP link does). Small batches are then lent
   * straight from the staging buffer instead of copied out. Default false:
   * a batch stays valid until release(), as a socket writer needs.
   */
  syncOutput?: boolean;
  /**
   * The owner writes each frame from pieces (OutputBatch.forEachFramePart)
   * before onOutput returns: TCP payload is then not copied into the frame
   * but handed over as slices of the send ring. Only with syncOutput and
   * tcp.checksumOffload (a full checksum would have to read the payload anyway). Default false.
   */
  gatherPayload?: boolean;
}

/** An offloaded TCP segment still fits one IPv4 datagram: 65535 less the IPv4 header and the largest TCP header. */
const MAX_OFFLOAD_SEGMENT_BYTES = 65535 - 20 - 60;

/** DHCP runs on these ports (RFC 2131 §4.1). */
const DHCP_SERVER_PORT = 67;
/** The RA's O flag: guests ask stateless DHCPv6 (dhcp6.ts) for DNS settings too. */
const DHCP6_ANSWERS = true;

/** Ethernet + IPv4 header bytes before the L4 header of every IPv4 frame we build. */
const L4_OFFSET = ETH_HEADER_LEN + IPV4_HEADER_LEN;
/** The same for IPv6 (we send no extension headers but the fragment header). */
const L4_OFFSET6 = ETH_HEADER_LEN + IPV6_HEADER_LEN;

/** ff02::1 all-nodes, ff02::2 all-routers, ff02::1:2 all DHCP agents (RFC 4291 §2.7.1, RFC 8415 §7.1). */
const ALL_NODES = ipv6(0xff02, 0, 0, 0, 0, 0, 0, 1);
const ALL_ROUTERS = ipv6(0xff02, 0, 0, 0, 0, 0, 0, 2);
const ALL_DHCP = ipv6(0xff02, 0, 0, 0, 0, 0, 1, 2);
const FE80 = ipv6(0xfe80, 0, 0, 0, 0, 0, 0, 0);
/** RFC 4861 §10 MIN_DELAY_BETWEEN_RAS: a multicast RA at most every 3 s, whatever the guest solicits. */
const MIN_DELAY_BETWEEN_RAS_MS = 3000;
/** Router lifetime, prefix lifetimes and RDNSS lifetime announced (RFC 4861 defaults; RFC 8106 asks RDNSS >= 3 x MaxRtrAdvInterval). */
const ROUTER_LIFETIME_SEC = 1800;
/**
 * RFC 4861 §6.2.1 MaxRtrAdvInterval (default 600 s): unsolicited RAs keep the
 * guest's default route (lifetime 1800 s, three intervals) alive; a guest
 * solicits only when its link comes up.
 */
const UNSOLICITED_RA_INTERVAL_MS = 600_000;
const PREFIX_VALID_SEC = 86400;
const PREFIX_PREFERRED_SEC = 14400;
const RDNSS_LIFETIME_SEC = 1800;
/** ICMPv6 errors the stack sends (RFC 4443 §2.4(f) asks for a bound): a bucket of this many, refilled this many per second. */
const ICMP6_ERROR_BURST = 10;
const ICMP6_ERRORS_PER_SEC = 10;

/** The IPv6 side, resolved once (stack config ipv6 plus what follows from it). */
interface V6 {
  readonly prefix: IPv6;
  readonly gatewayIp: IPv6;
  readonly hostIp: IPv6;
  readonly linkLocal: IPv6;
  readonly dnsServers: IPv6[];
}

export class Stack implements NetStack, TcpHost {
  readonly config: Readonly<StackConfig>;
  readonly stats: StackStats = {
    framesIn: 0,
    bytesIn: 0,
    framesOut: 0,
    bytesOut: 0,
    drops: {},
    tcpConnections: 0,
    tcpHeldSyns: 0,
    tcpTimeWait: 0,
    tcpTimeWaitRecycled: 0,
  };
  readonly timers: TimerWheel;
  readonly localMss: number;

  private readonly arena: FrameArena;
  /** TCP payload leaves as send-ring slices (StackOptions.gatherPayload). */
  private readonly gatherPayload: boolean;
  private readonly random: () => number;
  private readonly pinnedIsn: ((tuple: FourTuple) => number) | undefined;
  private readonly isnGenerator: IsnGenerator;
  private readonly neighbors = new NeighborTable();
  private readonly connections = new FlowTable<TcpConnection>();
  private readonly held = new FlowTable<HeldSyn>();
  /** Four-tuples in TIME-WAIT: small records outside `connections` and its limit, bounded on their own. */
  private readonly timeWait: TimeWaitTable;
  private readonly dhcp: DhcpServer;
  private readonly reassembler: Reassembler;
  private readonly v6: V6 | undefined;
  private readonly neighbors6: NeighborTable<IPv6>;
  private readonly reassembler6: Reassembler;
  private lastMulticastRa = -Infinity;
  private readonly raTimer = new Timer(() => this.unsolicitedRa());
  private icmp6Tokens = ICMP6_ERROR_BURST;
  private icmp6TokensAt = 0;
  private fragId6 = 0;
  private readonly tcpConfig: TcpConfig;
  private readonly broadcastIp: IPv4;
  /** Connections owed a flushAck() at the end of this batch, each once. */
  // The connections with an ACK to coalesce, in order, as a list that is
  // emptied by count: `length = 0` would free the store and the next push
  // allocate a new one, and Set#clear allocates a new table, per packet.
  private readonly flushQueue: TcpConnection[] = [];
  private flushQueueLength = 0;
  private inBatch = false;
  private deferredFlush = false;
  private ipId = 0;

  constructor(
    config: StackConfig,
    private readonly events: StackEvents,
    readonly clock: Clock,
    private readonly defer: (fn: () => void) => void,
    options: StackOptions = {},
  ) {
    validateConfig(config);
    this.arena = new FrameArena(options.allocate, undefined, options.syncOutput ?? false);
    this.gatherPayload = options.gatherPayload === true && options.syncOutput === true && config.tcp.checksumOffload === true;
    this.random = options.random ?? Math.random;
    this.pinnedIsn = options.isn;
    this.isnGenerator = new IsnGenerator(() => clock.now(), this.random);
    this.config = config;
    this.timers = new TimerWheel(clock);
    // Largest TCP payload the guest may send us: the MTU less IPv4 and TCP headers.
    this.localMss = config.mtu - 40;
    this.broadcastIp = (config.network | ~prefixMask(config.prefix)) >>> 0;
    this.dhcp = new DhcpServer(
      {
        serverIp: config.gatewayIp,
        network: config.network,
        prefix: config.prefix,
        router: config.gatewayIp,
        dnsServers: config.dnsServers,
        domainName: config.domainName,
        searchDomains: config.searchDomains,
        mtu: config.mtu,
        leaseTimeSec: config.dhcpLeaseTimeSec,
        reserved: [config.gatewayIp, config.hostIp, ...config.extraVirtualIps],
        staticLeases: config.staticLeases,
        preferredFirst: config.guestIp,
      },
      clock,
    );
    this.reassembler = new Reassembler(config.fragments, this.timers);
    this.reassembler6 = new Reassembler(config.fragments, this.timers);
    const c6 = config.ipv6;
    this.v6 = c6 === undefined ? undefined : {
      prefix: withInterfaceId(c6.prefix, IPV6_ANY),
      gatewayIp: c6.gatewayIp,
      hostIp: c6.hostIp,
      linkLocal: linkLocalFromMac(config.gatewayMac),
      dnsServers: c6.dnsServers,
    };
    this.neighbors6 = new NeighborTable<IPv6>(c6?.maxNeighbors ?? 256);
    if (this.v6 !== undefined) this.timers.arm(this.raTimer, UNSOLICITED_RA_INTERVAL_MS);
    this.timeWait = new TimeWaitTable(config.tcp.maxTimeWait ?? DEFAULT_MAX_TIME_WAIT, TIME_WAIT_MS, clock, this.timers, (t, seg) => {
      this.transmitRaw(t.dst, t.src, seg);
      if (!this.inBatch) this.kick();
    });
    this.tcpConfig = {
      sendBufferBytes: config.tcp.sendBufferBytes,
      recvBufferBytes: config.tcp.recvBufferBytes,
      recvWindowInitialBytes: Math.min(config.tcp.recvWindowInitialBytes ?? config.tcp.recvBufferBytes, config.tcp.recvBufferBytes),
      oooBytes: config.tcp.oooBytes,
      delayedAckMs: config.tcp.delayedAckMs ?? DEFAULT_DELAYED_ACK_MS,
      segmentOffloadBytes: Math.min(config.tcp.segmentOffloadBytes ?? 0, MAX_OFFLOAD_SEGMENT_BYTES),
      timeWaitMs: TIME_WAIT_MS,
    };
  }

  // ---------------------------------------------------------------- input

  input(frames: readonly Uint8Array[], marks?: ArrayLike<number>): void {
    this.inBatch = true;
    for (let i = 0; i < frames.length; i++) {
      const frame = frames[i]!;
      this.stats.framesIn++;
      this.stats.bytesIn += frame.length;
      try {
        this.inputFrame(frame, marks === undefined ? 0 : marks[i]! | 0);
      } catch (err) {
        // A bug here or in an owner's callback must cost one frame, not the service.
        this.drop('stack:internal-error');
        this.events.onError?.(err);
      }
    }
    this.inBatch = false;
    this.flush();
  }

  advance(now = this.clock.now()): void {
    // What the timers send leaves in the flush below, not in a second, deferred one.
    this.inBatch = true;
    try {
      this.timers.advance(now);
    } finally {
      this.inBatch = false;
    }
    this.flush();
  }

  nextDeadline(): number | undefined {
    return this.timers.nextDeadline();
  }

  private inputFrame(frame: Uint8Array, mark: number): void {
    if (frame.length > ((mark & RX_GSO_TCP) !== 0 ? MAX_GSO_FRAME : MAX_MTU + ETH_HEADER_LEN)) return this.drop('eth:oversized');
    const eth = parseEthernet(frame);
    if (eth instanceof ParseError) return this.drop(eth.reason);
    // Unicast to anyone but us is not ours (a bridge would flood it; we are not one).
    // IPv6 multicast (33:33:...) carries NDP and DHCPv6: its IPv6 destination decides.
    if (eth.dst !== this.config.gatewayMac && eth.dst !== MAC_BROADCAST) {
      const multicast = isMulticastMac(eth.dst);
      if (!(multicast && eth.etherType === ETHERTYPE_IPV6 && this.v6 !== undefined)) {
        return this.drop(multicast ? 'eth:multicast' : 'eth:not-for-us');
      }
    }
    if (mark & RX_GSO_TCP && eth.etherType !== ETHERTYPE_IPV4) return this.drop('offload:gso-not-tcp');
    switch (eth.etherType) {
      case ETHERTYPE_ARP:
        return this.inputArp(eth);
      case ETHERTYPE_IPV4:
        return this.inputIpv4(eth, mark);
      case ETHERTYPE_IPV6:
        if (this.v6 === undefined) return this.drop('ipv6:unsupported');
        return this.inputIpv6(eth, this.v6, mark);
      default:
        return this.drop('eth:unsupported-ethertype');
    }
  }

  private inputArp(eth: EthernetRepr): void {
    const arp = parseArp(eth.payload);
    if (arp instanceof ParseError) return this.drop(arp.reason);
    if (arp.senderIp !== 0 && this.isGuestAddress(arp.senderIp)) this.neighbors.learn(arp.senderIp, arp.senderMac);
    if (arp.op !== ARP_REQUEST) return;
    // Answer only for addresses the stack plays; everything else on the subnet is the guest's business.
    if (!this.isVirtualIp(arp.targetIp)) return this.drop('arp:not-ours');
    const off = this.arena.begin(ETH_HEADER_LEN + ARP_LEN);
    const buf = this.arena.buf;
    emitEthernetHeader(buf, off, arp.senderMac, this.config.gatewayMac, ETHERTYPE_ARP);
    emitArp(buf, off + ETH_HEADER_LEN, {
      op: ARP_REPLY,
      senderMac: this.config.gatewayMac,
      senderIp: arp.targetIp,
      targetMac: arp.senderMac,
      targetIp: arp.senderIp,
    });
    this.commitFrame(ETH_HEADER_LEN + ARP_LEN);
  }

  private inputIpv4(eth: EthernetRepr, mark: number): void {
    let ip = parseIpv4(eth.payload);
    if (ip instanceof ParseError) return this.drop(ip.reason);
    if (mark & RX_GSO_TCP && (ip.protocol !== IPPROTO_TCP || ip.moreFragments || ip.fragmentOffset !== 0)) return this.drop('offload:gso-not-tcp');
    if (this.isVirtualIp(ip.src) || ip.src === this.broadcastIp) return this.drop('ipv4:spoofed-source');
    if (ip.src !== 0) {
      if (!this.isGuestAddress(ip.src)) return this.drop('ipv4:source-outside-subnet');
      this.neighbors.learn(ip.src, eth.src);
    }
    if (ip.moreFragments || ip.fragmentOffset !== 0) {
      mark = 0; // a mark speaks for one frame, never for a reassembled datagram
      const whole = this.reassembler.push(ip);
      if (whole === null) return;
      if (whole instanceof ParseError) return this.drop(whole.reason);
      ip = { ...ip, moreFragments: false, fragmentOffset: 0, payload: whole };
    }
    const dst = ip.dst;
    const broadcast = dst === IPV4_BROADCAST || dst === this.broadcastIp;
    if (dst >>> 28 === 0xe) return this.drop('ipv4:multicast');
    switch (ip.protocol) {
      case IPPROTO_TCP:
        if (broadcast || ip.src === 0) return this.drop('tcp:broadcast');
        return this.inputTcp(ip.src, ip.dst, ip.payload, mark);
      case IPPROTO_UDP:
        return this.inputUdp(eth, ip, broadcast, mark);
      case IPPROTO_ICMP:
        if (broadcast || ip.src === 0) return this.drop('icmp:broadcast');
        return this.inputIcmp(ip);
      default:
        return this.drop('ipv4:unsupported-protocol');
    }
  }

  private inputIcmp(ip: Ipv4Repr): void {
    const icmp = parseIcmp(ip.payload);
    if (icmp instanceof ParseError) return this.drop(icmp.reason);
    if (icmp.type === ICMP_ECHO_REQUEST && icmp.code === 0 && this.isVirtualIp(ip.dst)) {
      const l4Length = 8 + icmp.payload.length;
      const l4 = this.beginIpv4(ip.dst, ip.src, IPPROTO_ICMP, l4Length);
      if (l4 < 0) return;
      emitIcmp(this.arena.buf, l4, ICMP_ECHO_REPLY, 0, icmp.rest, icmp.payload);
      this.commitIpv4(l4Length);
      return;
    }
    if (this.events.onIcmp === undefined) return this.drop('icmp:unhandled');
    this.events.onIcmp(ip.src, ip.dst, ip.payload);
  }

  private inputUdp(eth: EthernetRepr, ip: Ipv4Repr, broadcast: boolean, mark: number): void {
    const udp = parseUdp(ip.payload, ip.src, ip.dst, (mark & RX_L4_CHECKSUM_OK) !== 0);
    if (udp instanceof ParseError) return this.drop(udp.reason);
    if (udp.dstPort === DHCP_SERVER_PORT && (broadcast || ip.dst === this.config.gatewayIp)) {
      const reply = this.dhcp.handle(udp.payload, eth.src);
      if (reply === null) return;
      this.sendUdpFrame(
        this.config.gatewayIp,
        DHCP_SERVER_PORT,
        reply.dstIp,
        reply.dstPort,
        reply.message,
        reply.dstMac,
      );
      return;
    }
    if (broadcast || ip.src === 0) return this.drop('udp:broadcast');
    this.events.onUdp({
      src: ip.src,
      srcPort: udp.srcPort,
      dst: ip.dst,
      dstPort: udp.dstPort,
      payload: udp.payload,
    });
  }

  private inputTcp(src: IpAddress, dst: IpAddress, payload: Uint8Array, mark: number): void {
    const seg = parseTcp(payload, src, dst, (mark & RX_L4_CHECKSUM_OK) !== 0);
    if (seg instanceof ParseError) return this.drop(seg.reason);
    const conn = this.connections.get(src, seg.srcPort, dst, seg.dstPort);
    if (conn !== undefined) {
      // A new SYN on a tuple still in TIME-WAIT starts a new connection
      // (RFC 9293 §3.10.7.4 allows it; RFC 6191): never stall a guest that reuses ports.
      if (conn.state === 'TIME-WAIT' && (seg.flags & (TCP_SYN | TCP_ACK | TCP_RST)) === TCP_SYN) {
        conn.abortSilently();
      } else {
        conn.input(seg);
        return;
      }
    }
    const tw = this.timeWait.get(src, seg.srcPort, dst, seg.dstPort);
    if (tw !== undefined) {
      // A pure SYN reopens the four-tuple at once (RFC 6191); everything else is TIME-WAIT's to answer.
      if (this.timeWait.input(tw, seg) === 'done') return this.countTimeWait();
      this.timeWait.remove(tw);
      this.countTimeWait();
    }
    const held = this.held.get(src, seg.srcPort, dst, seg.dstPort);
    if (held !== undefined) {
      // The guest retransmitted its SYN while the owner decides: nothing new to say.
      if (seg.flags & TCP_RST) held.discard();
      else this.drop('tcp:syn-held');
      return;
    }
    if ((seg.flags & (TCP_SYN | TCP_ACK | TCP_RST | TCP_FIN)) === TCP_SYN) {
      return this.newSyn(src, dst, seg);
    }
    const rst = rstForUnknown(seg, seg.payload.length);
    if (rst !== null) this.transmitRaw(dst, src, rst);
  }

  private newSyn(src: IpAddress, dst: IpAddress, seg: TcpRepr): void {
    const tuple: FourTuple = { src, srcPort: seg.srcPort, dst, dstPort: seg.dstPort };
    if (this.connections.size >= this.config.tcp.maxConnections) {
      this.drop('tcp:connection-limit');
      const rst = rstForUnknown(seg, seg.payload.length);
      if (rst !== null) this.transmitRaw(dst, src, rst);
      return;
    }
    if (this.held.size >= this.config.tcp.maxHeldSyns) return this.drop('tcp:syn-backlog-full');
    const o = seg.options;
    // Literals, not spreads: `{ ...tuple, more }` cost ~10 us per SYN here (a
    // quarter of the stack's own time per connection in bench:compare's
    // new-connections profile); these are plain object allocations.
    const syn: SynInfo = {
      src,
      srcPort: seg.srcPort,
      dst,
      dstPort: seg.dstPort,
      mss: o.mss ?? 536,
      windowScale: o.windowScale,
      sackPermitted: o.sackPermitted,
      timestamps: o.timestamp !== null,
    };
    // Keep the SYN (its options) for accept(); its bytes belong to the input frame, so copy the payload away.
    const kept: TcpRepr = {
      srcPort: seg.srcPort,
      dstPort: seg.dstPort,
      seq: seg.seq,
      ack: seg.ack,
      flags: seg.flags,
      window: seg.window,
      urgent: seg.urgent,
      headerLength: seg.headerLength,
      options: seg.options,
      payload: EMPTY,
    };
    const pending = new HeldSyn(this, tuple, syn, kept);
    this.held.set(tuple, pending);
    this.stats.tcpHeldSyns = this.held.size;
    this.events.onTcpSyn(pending);
  }

  /** @internal HeldSyn calls back here. */
  acceptHeld(h: HeldSyn, handlers: TcpHandlers): TcpSocket {
    this.forgetHeld(h);
    const conn = TcpConnection.acceptSyn(this, this.tcpConfig, h.tuple, h.seg, handlers);
    this.connections.set(h.tuple, conn);
    this.stats.tcpConnections = this.connections.size;
    this.kick();
    return conn;
  }

  /** @internal */
  refuseHeld(h: HeldSyn): void {
    this.forgetHeld(h);
    const rst = rstForUnknown(h.seg, 0);
    if (rst !== null) this.transmitRaw(h.tuple.dst, h.tuple.src, rst);
    this.kick();
  }

  /** @internal */
  forgetHeld(h: HeldSyn): void {
    this.timers.cancel(h.timer);
    this.held.delete(h.tuple, h);
    this.stats.tcpHeldSyns = this.held.size;
  }

  // ---------------------------------------------------------------- TcpHost

  transmit(conn: TcpConnection, seg: TcpSegmentFields, source: PayloadSource | null, from: number, len: number): void {
    const t = conn.tuple;
    const hl = tcpHeaderLength(seg);
    const v4 = typeof t.dst === 'number';
    const l4 = v4 ? this.beginIpv4(t.dst as IPv4, t.src as IPv4, IPPROTO_TCP, hl + len) : this.beginIpv6(t.dst as IPv6, t.src as IPv6, IPPROTO_TCP, hl + len);
    if (l4 < 0) return;
    const buf = this.arena.buf;
    const checksumOffload = this.config.tcp.checksumOffload === true;
    // A super-segment carries its connection's segment size to the link (a TAP's gso_size): the guest's MSS, not the link MTU's.
    const segmentSize = len > conn.segmentSize ? conn.segmentSize : 0;
    const head = (v4 ? L4_OFFSET : L4_OFFSET6) + hl;
    if (len > 0 && source !== null && this.gatherPayload) {
      // The payload stays in the send ring: the link writes header and ring
      // slices as one frame (writev) before this turn ends, one copy fewer.
      // Ring bytes are only ever rewritten after being acknowledged; should
      // an ACK in this same input batch free bytes of a segment not yet
      // written and the owner refill them, they lie below the guest's own
      // RCV.NXT, so its TCP discards them (and they are this connection's bytes).
      // Checksums are left to the link (checksumOffload): the sum would read the payload.
      emitTcpHeader(buf, l4, seg, t.dst, t.src, len, true);
      const payload = source.contiguous(from, len);
      const payload2 = payload.length < len ? source.contiguous(from + payload.length, len - payload.length) : null;
      this.arena.commitGathered(head, segmentSize, payload, payload2);
      this.countFrameOut(head + len);
    } else {
      if (len > 0 && source !== null) source.copyOut(from, buf, l4 + hl, len);
      emitTcpHeader(buf, l4, seg, t.dst, t.src, len, checksumOffload);
      this.commitFrame(head + len, segmentSize);
    }
    if (!this.inBatch) this.kick();
  }

  /** Initial sequence numbers: RFC 6528's 4 µs clock plus a keyed hash of the four-tuple (tcp/isn.ts). */
  isn(tuple: FourTuple): number {
    if (this.pinnedIsn !== undefined) return this.pinnedIsn(tuple) >>> 0;
    return this.isnGenerator.isn(tuple);
  }

  scheduleFlush(conn: TcpConnection): void {
    if (!conn.flushQueued) {
      conn.flushQueued = true;
      this.flushQueue[this.flushQueueLength++] = conn;
    }
    if (!this.inBatch) this.kick();
  }

  released(conn: TcpConnection): void {
    this.connections.delete(conn.tuple, conn);
    this.stats.tcpConnections = this.connections.size;
  }

  adoptTimeWait(fields: TimeWaitFields): void {
    this.timeWait.add(fields);
    this.countTimeWait();
  }

  private countTimeWait(): void {
    const s = this.timeWait.stats();
    this.stats.tcpTimeWait = s.size;
    this.stats.tcpTimeWaitRecycled = s.recycled;
  }

  // ---------------------------------------------------------------- owner API

  connectTcp(
    endpoints: { from: IpAddress; fromPort: number; to: IpAddress; toPort: number },
    handlers: TcpHandlers,
  ): TcpSocket {
    if (typeof endpoints.from !== typeof endpoints.to) throw new Error('connectTcp: both ends must be of one address family');
    const tuple: FourTuple = {
      src: endpoints.to,
      srcPort: endpoints.toPort,
      dst: endpoints.from,
      dstPort: endpoints.fromPort,
    };
    if (this.connections.get(tuple.src, tuple.srcPort, tuple.dst, tuple.dstPort) !== undefined) {
      throw new Error(`connectTcp: a connection on this four-tuple already exists`);
    }
    // Our own TIME-WAIT on the tuple: the new ISN (clock-driven, tcp/isn.ts) is past the old connection's numbers.
    const tw = this.timeWait.get(tuple.src, tuple.srcPort, tuple.dst, tuple.dstPort);
    if (tw !== undefined) {
      this.timeWait.remove(tw);
      this.countTimeWait();
    }
    const conn = TcpConnection.connect(this, this.tcpConfig, tuple, handlers);
    this.connections.set(tuple, conn);
    this.stats.tcpConnections = this.connections.size;
    this.kick();
    return conn;
  }

  sendUdp(from: IpAddress, fromPort: number, to: IpAddress, toPort: number, payload: Uint8Array): void {
    if (typeof from === 'number' && typeof to === 'number') this.sendUdpFrame(from, fromPort, to, toPort, payload, undefined);
    else if (typeof from === 'string' && typeof to === 'string') this.sendUdp6(from, fromPort, to, toPort, payload, undefined);
    else throw new Error('sendUdp: both ends must be of one address family');
    this.kick();
  }

  sendIcmp(from: IPv4, to: IPv4, icmp: Uint8Array): void {
    if (icmp.length < 8) throw new RangeError('sendIcmp: an ICMP message has at least 8 bytes');
    const l4 = this.beginIpv4(from, to, IPPROTO_ICMP, icmp.length);
    if (l4 < 0) return;
    const rest = ((icmp[4]! << 24) | (icmp[5]! << 16) | (icmp[6]! << 8) | icmp[7]!) >>> 0;
    emitIcmp(this.arena.buf, l4, icmp[0]!, icmp[1]!, rest, icmp.subarray(8));
    this.commitIpv4(icmp.length);
    this.kick();
  }

  resetGuest(): void {
    for (const h of this.held.values()) this.forgetHeld(h);
    for (const c of this.connections.values()) c.abort();
    this.timeWait.clear();
    this.countTimeWait();
    this.neighbors.clear();
    this.neighbors6.clear();
    this.reassembler.clear();
    this.reassembler6.clear();
    this.lastMulticastRa = -Infinity;
    // A new guest (another MAC after a VM re-create) must still get the guest
    // address; the old lease stays listed until it expires.
    this.dhcp.guestLeft();
    this.clearFlushQueue();
    // Whatever was queued for the old guest would reach the new one: drop it.
    this.arena.take();
  }

  /** How full each table is: for /stats, and for tests that check nothing is left behind. */
  tableSizes(): { connections: number; heldSyns: number; timeWait: number; fragmentDatagrams: number; fragmentBytes: number; neighbors: number; neighbors6: number; timers: number } {
    return {
      connections: this.connections.size,
      heldSyns: this.held.size,
      timeWait: this.timeWait.size,
      fragmentDatagrams: this.reassembler.datagrams + this.reassembler6.datagrams,
      fragmentBytes: this.reassembler.bufferedBytes + this.reassembler6.bufferedBytes,
      neighbors: this.neighbors.size,
      neighbors6: this.neighbors6.size,
      timers: this.timers.size,
    };
  }

  /** Whether `tuple` (guest side first) is held in TIME-WAIT: for tests and diagnostics. */
  inTimeWait(tuple: FourTuple): boolean {
    return this.timeWait.get(tuple.src, tuple.srcPort, tuple.dst, tuple.dstPort) !== undefined;
  }

  dhcpLeases(): { mac: Mac; ip: IPv4; expiresAt: number }[] {
    return this.dhcp.leases().map((l) => ({ mac: l.mac, ip: l.ip, expiresAt: l.expiresAt }));
  }

  // ---------------------------------------------------------------- output

  /** Sends the coalesced ACKs and everything queued, as one batch. */
  flush(): void {
    this.deferredFlush = false;
    // What flushAck() transmits is taken below: while it runs, transmit() must
    // not kick() (a deferred flush per flush, finding nothing, and its hop).
    const nested = this.inBatch;
    this.inBatch = true;
    try {
      // flushAck() may transmit and even close connections: iterate over a stable list.
      for (let i = 0; i < this.flushQueueLength; i++) this.flushQueue[i]!.flushAck();
    } finally {
      this.inBatch = nested;
    }
    this.clearFlushQueue();
    const batch = this.arena.take();
    if (batch !== null) this.events.onOutput(batch);
  }

  private clearFlushQueue(): void {
    for (let i = 0; i < this.flushQueueLength; i++) {
      this.flushQueue[i]!.flushQueued = false;
      this.flushQueue[i] = undefined!;
    }
    this.flushQueueLength = 0;
  }

  /** Output produced outside input(): flush it once this turn of the owner's loop ends. */
  private kick(): void {
    if (this.inBatch || this.deferredFlush) return;
    this.deferredFlush = true;
    this.defer(this.flushIfStillDeferred);
  }

  /** One function object for every kick(), not a closure per packet. */
  private readonly flushIfStillDeferred = (): void => {
    if (this.deferredFlush) this.flush();
  };

  /**
   * Starts an IPv4 frame from `src` to `dst` (a guest-side address) carrying
   * `l4Length` bytes of `protocol`: writes the Ethernet and IPv4 headers and
   * returns the arena offset where the L4 bytes go; finish with
   * commitIpv4(l4Length). Returns -1 if the guest's MAC is unknown: an ARP
   * request goes out instead, and the sender's retransmission will find it.
   */
  private beginIpv4(
    src: IPv4,
    dst: IPv4,
    protocol: number,
    l4Length: number,
    dstMac?: Mac,
    id = this.nextIpId(),
    fragmentOffset = 0,
    moreFragments = false,
  ): number {
    const mac = dstMac ?? this.neighbors.lookup(dst);
    if (mac === undefined) {
      this.drop('ipv4:no-neighbor');
      this.sendArpRequest(dst);
      return -1;
    }
    const off = this.arena.begin(L4_OFFSET + l4Length);
    const buf = this.arena.buf;
    emitEthernetHeader(buf, off, mac, this.config.gatewayMac, ETHERTYPE_IPV4);
    emitIpv4Header(buf, off + ETH_HEADER_LEN, { src, dst, protocol, id, fragmentOffset, moreFragments, payloadLength: l4Length });
    return off + L4_OFFSET;
  }

  private commitIpv4(l4Length: number): void {
    this.commitFrame(L4_OFFSET + l4Length);
  }

  private commitFrame(length: number, segmentSize = 0): void {
    this.arena.commit(length, segmentSize);
    this.countFrameOut(length);
  }

  private countFrameOut(length: number): void {
    this.stats.framesOut++;
    this.stats.bytesOut += length;
  }

  private sendArpRequest(targetIp: IPv4): void {
    if (!this.isGuestAddress(targetIp)) return;
    const off = this.arena.begin(ETH_HEADER_LEN + ARP_LEN);
    const buf = this.arena.buf;
    emitEthernetHeader(buf, off, MAC_BROADCAST, this.config.gatewayMac, ETHERTYPE_ARP);
    emitArp(buf, off + ETH_HEADER_LEN, {
      op: ARP_REQUEST,
      senderMac: this.config.gatewayMac,
      senderIp: this.config.gatewayIp,
      targetMac: 0,
      targetIp,
    });
    this.commitFrame(ETH_HEADER_LEN + ARP_LEN);
    this.kick();
  }

  /** A TCP segment with no connection behind it (RST replies). */
  private transmitRaw(src: IpAddress, dst: IpAddress, seg: TcpSegmentFields): void {
    const hl = tcpHeaderLength(seg);
    const v4 = typeof src === 'number';
    const l4 = v4 ? this.beginIpv4(src, dst as IPv4, IPPROTO_TCP, hl) : this.beginIpv6(src, dst as IPv6, IPPROTO_TCP, hl);
    if (l4 < 0) return;
    emitTcpHeader(this.arena.buf, l4, seg, src, dst, 0, this.config.tcp.checksumOffload === true);
    this.commitFrame((v4 ? L4_OFFSET : L4_OFFSET6) + hl);
  }

  /**
   * A UDP datagram to the guest, fragmented when it does not fit the MTU.
   * The checksum covers the whole datagram, so it is built whole in a scratch
   * buffer first and then cut (rare: DNS answers over 1472 bytes, big UDP).
   */
  private sendUdpFrame(
    from: IPv4,
    fromPort: number,
    to: IPv4,
    toPort: number,
    payload: Uint8Array,
    dstMac: Mac | undefined,
  ): void {
    const udpLength = UDP_HEADER_LEN + payload.length;
    const id = this.nextIpId();
    if (IPV4_HEADER_LEN + udpLength <= this.config.mtu) {
      const l4 = this.beginIpv4(from, to, IPPROTO_UDP, udpLength, dstMac, id);
      if (l4 < 0) return;
      const buf = this.arena.buf;
      buf.set(payload, l4 + UDP_HEADER_LEN);
      emitUdpHeader(buf, l4, from, to, fromPort, toPort, payload.length);
      this.commitIpv4(udpLength);
      return;
    }
    const whole = new Uint8Array(udpLength);
    whole.set(payload, UDP_HEADER_LEN);
    emitUdpHeader(whole, 0, from, to, fromPort, toPort, payload.length);
    for (const piece of fragmentPlan(udpLength, this.config.mtu)) {
      const l4 = this.beginIpv4(from, to, IPPROTO_UDP, piece.length, dstMac, id, piece.offset, piece.more);
      if (l4 < 0) return;
      this.arena.buf.set(whole.subarray(piece.offset, piece.offset + piece.length), l4);
      this.commitIpv4(piece.length);
    }
  }

  // ---------------------------------------------------------------- IPv6

  /**
   * An IPv6 packet from the guest: fixed header, source checks, the
   * extension-header chain (RFC 8200 §4), fragments reassembled (with the
   * same bounds as IPv4's), then ICMPv6/NDP, UDP or TCP, the last two through
   * the same code as IPv4.
   */
  private inputIpv6(eth: EthernetRepr, v6: V6, mark: number): void {
    const ip = parseIpv6(eth.payload);
    if (ip instanceof ParseError) return this.drop(ip.reason);
    const packet = eth.payload.subarray(0, IPV6_HEADER_LEN + ip.payload.length);
    const { src, dst } = ip;
    const unspecified = src === IPV6_ANY;
    if (isMulticast6(src)) return this.drop('ipv6:multicast-source');
    if (this.isVirtualIp6(src, v6) || src === v6.prefix) return this.drop('ipv6:spoofed-source');
    if (!unspecified && !isLinkLocal6(src) && !inPrefix6(src, v6.prefix, 64)) return this.drop('ipv6:source-outside-prefix');
    const dstMulticast = isMulticast6(dst);
    // A multicast frame (let in for NDP and DHCPv6) must carry a packet for the group its MAC maps to (RFC 2464 §7).
    if (isMulticastMac(eth.dst) && eth.dst !== MAC_BROADCAST && !(dstMulticast && multicastMac(dst) === eth.dst)) return this.drop('eth:multicast');
    if (dstMulticast) {
      if (!this.isOurGroup(dst, v6)) return this.drop('ipv6:multicast');
    } else if (isLinkLocal6(dst) ? dst !== v6.linkLocal : inPrefix6(dst, v6.prefix, 64) && !this.isVirtualIp6(dst, v6)) {
      // An address on the link that is not ours: another guest address (the guest talks to itself over lo) or nobody.
      return this.drop('ipv6:not-for-us');
    }
    if (!unspecified) this.neighbors6.learn(src, eth.src);
    if (packet.length > this.config.mtu) {
      // Bigger than the link's MTU (the RA announced it): say so, as a router on the path would (RFC 4443 §3.2).
      this.sendIcmp6Error(ip, packet, dstMulticast, ICMP6_PACKET_TOO_BIG, 0, this.config.mtu);
      return this.drop('ipv6:packet-too-big');
    }
    const chain = walkIpv6Chain(ip.payload, ip.nextHeader, IPV6_HEADER_LEN, false, dstMulticast);
    if (chain instanceof Ipv6Problem) {
      if (chain.icmpCode !== null) this.sendIcmp6Error(ip, packet, dstMulticast, ICMP6_PARAM_PROBLEM, chain.icmpCode, chain.pointer);
      return this.drop(chain.reason);
    }
    let protocol = chain.protocol;
    let upper = ip.payload.subarray(chain.offset);
    const frag = chain.fragment;
    // A link's checksum mark speaks for TCP/UDP right after the fixed header only (src/transport/vnet-header.ts), never for a reassembled datagram.
    if (chain.offset !== 0 || frag !== null) mark = 0;
    if (frag !== null) {
      let data = ip.payload.subarray(frag.dataOffset);
      if (frag.offset === 0 && frag.more && !this.firstFragmentComplete(data, frag.nextHeader, dstMulticast)) {
        // RFC 7112: the first fragment carries every header up to and including the upper-layer one.
        this.sendIcmp6Error(ip, packet, dstMulticast, ICMP6_PARAM_PROBLEM, PARAM_INCOMPLETE_CHAIN, 0);
        return this.drop('ipv6:first-fragment-incomplete');
      }
      if (frag.offset !== 0 || frag.more) {
        const whole = this.reassembler6.push({
          src, dst, protocol: frag.nextHeader, id: frag.id, moreFragments: frag.more, fragmentOffset: frag.offset,
          headerLength: frag.dataOffset - FRAGMENT_HEADER_LEN, payload: data,
        });
        if (whole === null) return;
        if (whole instanceof ParseError) return this.drop(whole.reason);
        data = whole;
      } // else an atomic fragment (RFC 6946): the data is the whole packet
      const rest = walkIpv6Chain(data, frag.nextHeader, 0, true, dstMulticast);
      if (rest instanceof Ipv6Problem) return this.drop(rest.reason);
      protocol = rest.protocol;
      upper = data.subarray(rest.offset);
    }
    switch (protocol) {
      case IPPROTO_TCP:
        if (dstMulticast || !this.isFlowEndpoint6(src, dst)) return this.drop('tcp:not-unicast-global');
        return this.inputTcp(src, dst, upper, mark);
      case IPPROTO_UDP:
        return this.inputUdp6(v6, src, dst, upper, dstMulticast, mark);
      case IPPROTO_ICMPV6:
        return this.inputIcmp6(eth, v6, ip, packet, upper, dstMulticast);
      default:
        return this.drop('ipv6:no-next-header');
    }
  }

  /** RFC 7112 for a first fragment: the rest of the chain and the upper-layer header's fixed part are in it. */
  private firstFragmentComplete(data: Uint8Array, nextHeader: number, dstMulticast: boolean): boolean {
    const chain = walkIpv6Chain(data, nextHeader, 0, true, dstMulticast);
    if (chain instanceof Ipv6Problem) return chain.reason !== 'ipv6:truncated-extension-header';
    const need = chain.protocol === IPPROTO_TCP ? 20 : chain.protocol === IPPROTO_NONE ? 0 : 8;
    return data.length - chain.offset >= need;
  }

  /** TCP and UDP flows run between global addresses: the guest's in the prefix, ours or the world's. */
  private isFlowEndpoint6(src: IPv6, dst: IPv6): boolean {
    return src !== IPV6_ANY && !isLinkLocal6(src) && !isLinkLocal6(dst);
  }

  private inputUdp6(v6: V6, src: IPv6, dst: IPv6, upper: Uint8Array, dstMulticast: boolean, mark: number): void {
    const udp = parseUdp(upper, src, dst, (mark & RX_L4_CHECKSUM_OK) !== 0);
    if (udp instanceof ParseError) return this.drop(udp.reason);
    if (udp.dstPort === DHCP6_SERVER_PORT && (dst === ALL_DHCP || dst === v6.linkLocal || dst === v6.gatewayIp)) {
      return this.inputDhcp6(v6, src, udp.srcPort, udp.payload);
    }
    if (dstMulticast) return this.drop('udp:multicast');
    if (!this.isFlowEndpoint6(src, dst)) return this.drop('udp:not-unicast-global');
    this.events.onUdp({ src, srcPort: udp.srcPort, dst, dstPort: udp.dstPort, payload: udp.payload });
  }

  /** Stateless DHCPv6 (RFC 8415 §18.2.6): an Information-request from the guest's link-local address gets DNS and the search list. */
  private inputDhcp6(v6: V6, src: IPv6, srcPort: number, payload: Uint8Array): void {
    if (!isLinkLocal6(src)) return this.drop('dhcp6:not-link-local');
    const reply = answerDhcp6(payload, { serverMac: this.config.gatewayMac, dnsServers: v6.dnsServers, searchDomains: this.config.searchDomains });
    if (reply instanceof ParseError) return this.drop(reply.reason);
    this.sendUdp6(v6.linkLocal, DHCP6_SERVER_PORT, src, srcPort, reply, undefined);
  }

  private inputIcmp6(eth: EthernetRepr, v6: V6, ip: Ipv6Repr, packet: Uint8Array, upper: Uint8Array, dstMulticast: boolean): void {
    const m = parseIcmp6(upper, ip.src, ip.dst);
    if (m instanceof ParseError) return this.drop(m.reason);
    switch (m.type) {
      case ICMP6_ECHO_REQUEST: {
        if (m.code !== 0) return this.drop('icmp6:bad-code');
        if (ip.src === IPV6_ANY) return this.drop('icmp6:unspecified-source');
        // Only the gateway's own addresses answer; the world's are not reached by ping (as for IPv4 without an ICMP handler).
        if (!dstMulticast && !this.isVirtualIp6(ip.dst, v6)) return this.drop('icmp6:unhandled');
        const from = dstMulticast ? v6.linkLocal : ip.dst;
        const len = ICMP6_HEADER_LEN + m.body.length;
        const l4 = this.beginIpv6(from, ip.src, IPPROTO_ICMPV6, len);
        if (l4 < 0) return;
        this.arena.buf.set(m.body, l4 + ICMP6_HEADER_LEN);
        emitIcmp6Header(this.arena.buf, l4, from, ip.src, ICMP6_ECHO_REPLY, 0, m.rest, m.body.length);
        this.commitFrame(L4_OFFSET6 + len);
        return;
      }
      case ICMP6_NEIGHBOR_SOLICIT:
        return this.inputNeighborSolicit(eth, v6, ip, m);
      case ICMP6_NEIGHBOR_ADVERT:
        return this.inputNeighborAdvert(v6, ip, m);
      case ICMP6_ROUTER_SOLICIT:
        return this.inputRouterSolicit(eth, v6, ip, m);
      case ICMP6_ROUTER_ADVERT:
        // Only the gateway routes on this link: a guest's RA changes nothing here.
        return this.drop('ndp:router-advert-from-guest');
      case ICMP6_REDIRECT:
        return this.drop('ndp:redirect-from-guest');
      case ICMP6_MLD_QUERY:
      case ICMP6_MLD_REPORT:
      case ICMP6_MLD_DONE:
      case ICMP6_MLD2_REPORT:
        // We forward no multicast: group membership is noted by nobody.
        return this.drop('icmp6:mld');
      default:
        if (m.type === ICMP6_PACKET_TOO_BIG) return this.drop('icmp6:packet-too-big-from-guest');
        return this.drop(isIcmp6Error(m.type) ? 'icmp6:error-from-guest' : 'icmp6:unsupported-type');
    }
  }

  /** RFC 4861 §7.1.1 validity, then an NA for our own addresses (§7.2.4); DAD probes for ours get an NA to all-nodes. */
  private inputNeighborSolicit(eth: EthernetRepr, v6: V6, ip: Ipv6Repr, m: Icmp6Repr): void {
    if (ip.hopLimit !== NDP_HOP_LIMIT || m.code !== 0) return this.drop('ndp:invalid');
    const ns = parseNeighborMessage(m.body);
    if (ns instanceof ParseError) return this.drop(ns.reason);
    if (isMulticast6(ns.target)) return this.drop('ndp:invalid');
    const dad = ip.src === IPV6_ANY;
    const sll = ns.options.sourceLinkAddr;
    if (dad && (ip.dst !== solicitedNode(ns.target) || sll !== undefined)) return this.drop('ndp:invalid');
    if (!dad && sll !== undefined) this.neighbors6.learn(ip.src, sll);
    if (!this.isVirtualIp6(ns.target, v6)) return this.drop('ndp:not-ours');
    const to = dad ? ALL_NODES : ip.src;
    const l4 = this.beginIpv6(ns.target, to, IPPROTO_ICMPV6, ICMP6_HEADER_LEN + 24, dad ? multicastMac(ALL_NODES) : (sll ?? eth.src), NDP_HOP_LIMIT);
    if (l4 < 0) return;
    emitNeighborBody(this.arena.buf, l4 + ICMP6_HEADER_LEN, ns.target, NDP_OPT_TARGET_LL, this.config.gatewayMac);
    const flags = NA_ROUTER | NA_OVERRIDE | (dad ? 0 : NA_SOLICITED);
    emitIcmp6Header(this.arena.buf, l4, ns.target, to, ICMP6_NEIGHBOR_ADVERT, 0, flags >>> 0, 24);
    this.commitFrame(L4_OFFSET6 + ICMP6_HEADER_LEN + 24);
  }

  /** A guest's NA binds its own address to a MAC; one claiming any address of ours is refused and changes nothing. */
  private inputNeighborAdvert(v6: V6, ip: Ipv6Repr, m: Icmp6Repr): void {
    if (ip.hopLimit !== NDP_HOP_LIMIT || m.code !== 0) return this.drop('ndp:invalid');
    const na = parseNeighborMessage(m.body);
    if (na instanceof ParseError) return this.drop(na.reason);
    if (isMulticast6(na.target)) return this.drop('ndp:invalid');
    if (this.isVirtualIp6(na.target, v6) || na.target === v6.prefix) return this.drop('ndp:spoofed-target');
    if (!this.isGuestAddress6(na.target, v6)) return this.drop('ndp:not-on-link');
    const tll = na.options.targetLinkAddr;
    if (tll !== undefined) this.neighbors6.learn(na.target, tll);
  }

  /** RFC 4861 §6.1.1 validity, then an RA: unicast to a soliciting address, or to all-nodes at most every 3 s. */
  private inputRouterSolicit(eth: EthernetRepr, v6: V6, ip: Ipv6Repr, m: Icmp6Repr): void {
    if (ip.hopLimit !== NDP_HOP_LIMIT || m.code !== 0) return this.drop('ndp:invalid');
    const opts = parseNdpOptions(m.body, 0);
    if (opts instanceof ParseError) return this.drop(opts.reason);
    const unspecified = ip.src === IPV6_ANY;
    if (unspecified && opts.sourceLinkAddr !== undefined) return this.drop('ndp:invalid');
    if (!unspecified && opts.sourceLinkAddr !== undefined) this.neighbors6.learn(ip.src, opts.sourceLinkAddr);
    if (unspecified) {
      const now = this.clock.now();
      if (now - this.lastMulticastRa < MIN_DELAY_BETWEEN_RAS_MS) return this.drop('ndp:ra-rate-limited');
      this.lastMulticastRa = now;
      this.sendRouterAdvert(v6, ALL_NODES, multicastMac(ALL_NODES));
    } else {
      this.sendRouterAdvert(v6, ip.src, opts.sourceLinkAddr ?? eth.src);
    }
  }

  /** Every UNSOLICITED_RA_INTERVAL_MS: an RA to all-nodes, so that the guest's default route never expires. */
  private unsolicitedRa(): void {
    const v6 = this.v6!;
    this.timers.arm(this.raTimer, UNSOLICITED_RA_INTERVAL_MS);
    this.lastMulticastRa = this.clock.now();
    this.sendRouterAdvert(v6, ALL_NODES, multicastMac(ALL_NODES));
    this.kick();
  }

  /** The RA (RFC 4861 §4.2): the prefix for SLAAC (L and A), the MTU, RDNSS and DNSSL (RFC 8106). */
  private sendRouterAdvert(v6: V6, to: IPv6, mac: Mac): void {
    const ra: RouterAdvert = {
      curHopLimit: 64,
      otherConfig: DHCP6_ANSWERS,
      routerLifetimeSec: ROUTER_LIFETIME_SEC,
      sourceMac: this.config.gatewayMac,
      mtu: this.config.mtu,
      prefix: v6.prefix,
      prefixLength: 64,
      validLifetimeSec: PREFIX_VALID_SEC,
      preferredLifetimeSec: PREFIX_PREFERRED_SEC,
      dnsServers: v6.dnsServers,
      dnsLifetimeSec: RDNSS_LIFETIME_SEC,
      searchDomains: this.config.searchDomains,
    };
    const bodyLength = routerAdvertBodyLength(ra);
    const l4 = this.beginIpv6(v6.linkLocal, to, IPPROTO_ICMPV6, ICMP6_HEADER_LEN + bodyLength, mac, NDP_HOP_LIMIT);
    if (l4 < 0) return;
    emitRouterAdvertBody(this.arena.buf, l4 + ICMP6_HEADER_LEN, ra);
    emitIcmp6Header(this.arena.buf, l4, v6.linkLocal, to, ICMP6_ROUTER_ADVERT, 0, routerAdvertRest(ra), bodyLength);
    this.commitFrame(L4_OFFSET6 + ICMP6_HEADER_LEN + bodyLength);
  }

  /**
   * An ICMPv6 error about a guest packet (RFC 4443 §2.4): never about an
   * error, an unspecified or multicast source, or (but for packet-too-big
   * and an unrecognised option) a multicast destination; at most
   * ICMP6_ERRORS_PER_SEC a second. It comes from the address the packet was
   * for: the stack plays every destination.
   */
  private sendIcmp6Error(ip: Ipv6Repr, packet: Uint8Array, dstMulticast: boolean, type: number, code: number, rest: number): void {
    const v6 = this.v6!;
    if (ip.src === IPV6_ANY || isMulticast6(ip.src)) return;
    if (dstMulticast && !(type === ICMP6_PACKET_TOO_BIG || (type === ICMP6_PARAM_PROBLEM && code === 2))) return;
    if (ip.nextHeader === IPPROTO_ICMPV6 && (ip.payload[0] === undefined || isIcmp6Error(ip.payload[0]))) return;
    const now = this.clock.now();
    this.icmp6Tokens = Math.min(ICMP6_ERROR_BURST, this.icmp6Tokens + ((now - this.icmp6TokensAt) * ICMP6_ERRORS_PER_SEC) / 1000);
    this.icmp6TokensAt = now;
    if (this.icmp6Tokens < 1) return this.drop('icmp6:error-rate-limited');
    this.icmp6Tokens -= 1;
    const from = dstMulticast || isLinkLocal6(ip.dst) ? v6.linkLocal : ip.dst;
    const quote = icmp6ErrorQuote(packet);
    const l4 = this.beginIpv6(from, ip.src, IPPROTO_ICMPV6, ICMP6_HEADER_LEN + quote.length);
    if (l4 < 0) return;
    this.arena.buf.set(quote, l4 + ICMP6_HEADER_LEN);
    emitIcmp6Header(this.arena.buf, l4, from, ip.src, type, code, rest >>> 0, quote.length);
    this.commitFrame(L4_OFFSET6 + ICMP6_HEADER_LEN + quote.length);
  }

  /**
   * Starts an IPv6 frame to a guest-side address (see beginIpv4); returns the
   * arena offset of the upper-layer bytes, or -1 when the guest's MAC for
   * `dst` is unknown (a Neighbor Solicitation goes out instead).
   */
  private beginIpv6(src: IPv6, dst: IPv6, nextHeader: number, l4Length: number, dstMac?: Mac, hopLimit = 64): number {
    const mac = dstMac ?? (isMulticast6(dst) ? multicastMac(dst) : this.neighbors6.lookup(dst));
    if (mac === undefined) {
      this.drop('ipv6:no-neighbor');
      this.sendNeighborSolicit(dst);
      return -1;
    }
    const off = this.arena.begin(L4_OFFSET6 + l4Length);
    const buf = this.arena.buf;
    emitEthernetHeader(buf, off, mac, this.config.gatewayMac, ETHERTYPE_IPV6);
    emitIpv6Header(buf, off + ETH_HEADER_LEN, { src, dst, nextHeader, hopLimit, payloadLength: l4Length });
    return off + L4_OFFSET6;
  }

  /** RFC 4861 §7.2.2: ask the guest for the MAC of one of its addresses, at its solicited-node group. */
  private sendNeighborSolicit(target: IPv6): void {
    const v6 = this.v6;
    if (v6 === undefined || !this.isGuestAddress6(target, v6)) return;
    const group = solicitedNode(target);
    const l4 = this.beginIpv6(v6.linkLocal, group, IPPROTO_ICMPV6, ICMP6_HEADER_LEN + 24, multicastMac(group), NDP_HOP_LIMIT);
    emitNeighborBody(this.arena.buf, l4 + ICMP6_HEADER_LEN, target, NDP_OPT_SOURCE_LL, this.config.gatewayMac);
    emitIcmp6Header(this.arena.buf, l4, v6.linkLocal, group, ICMP6_NEIGHBOR_SOLICIT, 0, 0, 24);
    this.commitFrame(L4_OFFSET6 + ICMP6_HEADER_LEN + 24);
    this.kick();
  }

  /** A UDP datagram to the guest over IPv6; over the MTU it leaves in fragments (RFC 8200 §4.5), the checksum over the whole. */
  private sendUdp6(from: IPv6, fromPort: number, to: IPv6, toPort: number, payload: Uint8Array, dstMac: Mac | undefined): void {
    const udpLength = UDP_HEADER_LEN + payload.length;
    if (IPV6_HEADER_LEN + udpLength <= this.config.mtu) {
      const l4 = this.beginIpv6(from, to, IPPROTO_UDP, udpLength, dstMac);
      if (l4 < 0) return;
      this.arena.buf.set(payload, l4 + UDP_HEADER_LEN);
      emitUdpHeader(this.arena.buf, l4, from, to, fromPort, toPort, payload.length);
      this.commitFrame(L4_OFFSET6 + udpLength);
      return;
    }
    const whole = new Uint8Array(udpLength);
    whole.set(payload, UDP_HEADER_LEN);
    emitUdpHeader(whole, 0, from, to, fromPort, toPort, payload.length);
    this.fragId6 = (this.fragId6 + 1) >>> 0;
    for (const piece of fragmentPlan6(udpLength, this.config.mtu)) {
      const l4 = this.beginIpv6(from, to, IPPROTO_FRAGMENT, FRAGMENT_HEADER_LEN + piece.length, dstMac);
      if (l4 < 0) return;
      emitFragmentHeader(this.arena.buf, l4, IPPROTO_UDP, piece.offset, piece.more, this.fragId6);
      this.arena.buf.set(whole.subarray(piece.offset, piece.offset + piece.length), l4 + FRAGMENT_HEADER_LEN);
      this.commitFrame(L4_OFFSET6 + FRAGMENT_HEADER_LEN + piece.length);
    }
  }

  /** The gateway's addresses: its link-local one, its address in the prefix, the host alias. */
  private isVirtualIp6(ip: IPv6, v6: V6): boolean {
    return ip === v6.gatewayIp || ip === v6.hostIp || ip === v6.linkLocal;
  }

  /** Multicast groups the gateway listens to: all-nodes, all-routers, all-DHCP, its addresses' solicited-node groups. */
  private isOurGroup(group: IPv6, v6: V6): boolean {
    return group === ALL_NODES || group === ALL_ROUTERS || group === ALL_DHCP ||
      group === solicitedNode(v6.linkLocal) || group === solicitedNode(v6.gatewayIp) || group === solicitedNode(v6.hostIp);
  }

  /** An address the guest may hold: link-local or in the prefix, not ours, not the subnet-router anycast. */
  private isGuestAddress6(ip: IPv6, v6: V6): boolean {
    return (isLinkLocal6(ip) || inPrefix6(ip, v6.prefix, 64)) && ip !== v6.prefix && ip !== FE80 && !this.isVirtualIp6(ip, v6) && !isMulticast6(ip);
  }

  /** The guest's IPv6 addresses in the prefix, newest first (as learned from its packets): where a port forward goes. */
  guestIpv6Addresses(): IPv6[] {
    const v6 = this.v6;
    if (v6 === undefined) return [];
    return this.neighbors6.addresses().filter((a) => inPrefix6(a, v6.prefix, 64)).reverse();
  }

  /** The IPv6 side as configured (with the link-local address derived from the MAC), or undefined when off. */
  ipv6Addresses(): { prefix: IPv6; gatewayIp: IPv6; hostIp: IPv6; linkLocal: IPv6 } | undefined {
    const v6 = this.v6;
    return v6 === undefined ? undefined : { prefix: v6.prefix, gatewayIp: v6.gatewayIp, hostIp: v6.hostIp, linkLocal: v6.linkLocal };
  }

  // ---------------------------------------------------------------- helpers

  private drop(reason: string): void {
    const drops = this.stats.drops;
    drops[reason] = (drops[reason] ?? 0) + 1;
    this.events.onDrop?.(reason);
  }

  private nextIpId(): number {
    this.ipId = (this.ipId + 1) & 0xffff;
    return this.ipId;
  }

  /** Addresses the stack itself answers for (ARP, NDP, ICMP echo). */
  isVirtualIp(ip: IpAddress): boolean {
    if (typeof ip !== 'number') return this.v6 !== undefined && this.isVirtualIp6(ip, this.v6);
    const c = this.config;
    return ip === c.gatewayIp || ip === c.hostIp || c.extraVirtualIps.includes(ip);
  }

  /** An address a guest may use: inside the subnet, not network, broadcast or virtual. */
  private isGuestAddress(ip: IPv4): boolean {
    const c = this.config;
    return inSubnet(ip, c.network, c.prefix) && ip !== c.network && ip !== this.broadcastIp && !this.isVirtualIp(ip);
  }
}

const EMPTY = new Uint8Array(0);

/** A guest SYN waiting for its owner's decision (PendingTcp). */
class HeldSyn implements PendingTcp {
  readonly timer: Timer;
  private settled = false;

  constructor(
    private readonly stack: Stack,
    readonly tuple: FourTuple,
    readonly syn: SynInfo,
    readonly seg: TcpRepr,
  ) {
    this.timer = new Timer(() => this.discard());
    stack.timers.arm(this.timer, stack.config.tcp.synHoldTimeoutMs);
  }

  accept(handlers: TcpHandlers): TcpSocket {
    this.settle('accept');
    return this.stack.acceptHeld(this, handlers);
  }

  refuse(): void {
    this.settle('refuse');
    this.stack.refuseHeld(this);
  }

  ignore(): void {
    this.settle('ignore');
    this.stack.forgetHeld(this);
  }

  /** Timed out, or the guest gave up (RST) or went away: forget it; a late decision is a no-op. */
  discard(): void {
    if (this.settled) return;
    this.settled = true;
    this.stack.forgetHeld(this);
  }

  private settle(what: string): void {
    if (this.settled) throw new Error(`PendingTcp.${what}(): this SYN was already decided or expired`);
    this.settled = true;
  }
}

function isMulticastMac(mac: Mac): boolean {
  // The I/G bit: lowest bit of the first octet.
  return Math.floor(mac / 0x10000000000) % 2 === 1;
}

function validateConfig(c: StackConfig): void {
  const fail = (field: string, why: string) => {
    throw new RangeError(`stack config: ${field}: ${why}`);
  };
  if (!Number.isInteger(c.mtu) || c.mtu < MIN_MTU || c.mtu > MAX_MTU) fail('mtu', `must be an integer ${MIN_MTU}..${MAX_MTU}, got ${c.mtu}`);
  if (!Number.isInteger(c.prefix) || c.prefix < 8 || c.prefix > 30) fail('prefix', `must be 8..30, got ${c.prefix}`);
  for (const [name, ip] of [['gatewayIp', c.gatewayIp], ['guestIp', c.guestIp], ['hostIp', c.hostIp]] as const) {
    if (!inSubnet(ip, c.network, c.prefix)) fail(name, 'must be inside the subnet');
  }
  if (new Set([c.gatewayIp, c.guestIp, c.hostIp]).size !== 3) fail('gatewayIp/guestIp/hostIp', 'must be distinct');
  if (c.ipv6 !== undefined) {
    const v6 = c.ipv6;
    if (c.mtu < IPV6_MIN_MTU) fail('mtu', `must be at least ${IPV6_MIN_MTU} with IPv6 on (RFC 8200 §5), got ${c.mtu}`);
    const prefix = withInterfaceId(v6.prefix, IPV6_ANY);
    for (const [name, ip] of [['ipv6.gatewayIp', v6.gatewayIp], ['ipv6.hostIp', v6.hostIp]] as const) {
      if (!inPrefix6(ip, prefix, 64)) fail(name, 'must be inside the IPv6 /64 prefix');
      if (ip === prefix) fail(name, 'must not be the subnet-router anycast address (the prefix itself)');
    }
    if (v6.gatewayIp === v6.hostIp) fail('ipv6.gatewayIp/ipv6.hostIp', 'must be distinct');
    if (isLinkLocal6(prefix) || isMulticast6(prefix)) fail('ipv6.prefix', 'must be a unicast prefix, not link-local or multicast');
  }
  const tw = c.tcp.maxTimeWait;
  if (tw !== undefined && (!Number.isInteger(tw) || tw < 1)) fail('tcp.maxTimeWait', `must be a positive integer, got ${tw}`);
}
