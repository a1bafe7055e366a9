/**
 * The gateway's DHCP server (RFC 2131 §4.3), as a pure responder: the Stack
 * hands it the UDP payload of a datagram to port 67 plus the Ethernet source
 * MAC, and sends back whatever reply it returns, from serverIp:67.
 *
 *   const server = new DhcpServer(config, clock);
 *   const reply = server.handle(udpPayload, ethernetSourceMac);
 *   if (reply) stack.sendUdp(config.serverIp, 67, reply.dstIp, reply.dstPort, reply.message)
 *              // Ethernet destination: reply.dstMac (MAC_BROADCAST when broadcasting)
 *   server.leases();  // bound, unexpired leases
 *   server.stats;     // counters
 *
 * Choices (and why):
 *  - Clients are identified by MAC: chaddr when it is Ethernet (htype 1, hlen 6),
 *    else the Ethernet source MAC. Not by client-id (61): a guest whose initramfs
 *    (udhcpc, MAC client-id) and OS (systemd-networkd, DUID client-id) differ
 *    must keep one address. Client-id is not used.
 *  - Authoritative for the link (like dnsmasq --dhcp-authoritative): an
 *    INIT-REBOOT or RENEW for a valid, free address we have no record of (Moat
 *    restarted) is ACKed instead of ignored (RFC 2131 §4.3.2 lets a server
 *    without a record stay silent; the guest would then stall for seconds).
 *  - Relayed messages (giaddr ≠ 0) and BOOTREPLYs are ignored: Moat's link is
 *    a point-to-point virtual wire, no relay can exist on it. Plain BOOTP
 *    (no option 53) is ignored too.
 *  - RELEASE deletes the record. An expired lease (or an offer never taken
 *    up) stays remembered so its client gets the same address back, and is
 *    reclaimed (earliest expiry first) only when the pool has no untouched address.
 *  - A static address its client DECLINEs is withheld for declineHoldSec like
 *    any other: that client gets no OFFER meanwhile (counted as poolExhausted).
 *  - REQUEST in SELECTING state for an address other than the one offered is
 *    ACKed if that address is free for the client (else NAK); RENEWING and
 *    REBINDING cannot be told apart without the IP destination and are
 *    treated alike.
 *  - The lease table holds at most one record per pool/static address, so it is
 *    bounded by the pool size; DECLINEd addresses are held in a table bounded
 *    the same way.
 *  - Config errors (overlapping static leases, a pool outside the subnet...)
 *    throw RangeError from the constructor: they are operator errors found at
 *    start-up, not traffic. handle() never throws on any input bytes.
 *
 * Allocation scans the pool from its start for the lowest unused address
 * (deterministic; the first client gets `preferredFirst` when set), so it is
 * O(addresses in use) per new client, and O(1) to notice exhaustion.
 */
import { IPV4_BROADCAST, MAC_BROADCAST, formatIPv4, inSubnet, prefixMask, type IPv4, type Mac } from './addr.js';
import type { Clock } from './clock.js';
import {
  BOOTREPLY,
  BOOTREQUEST,
  DHCP_CLIENT_PORT,
  FLAG_BROADCAST,
  MsgType,
  Opt,
  clientMacOf,
  dhcpEncodedLength,
  encodeDhcp,
  encodeDomainSearch,
  findOption,
  ipListOption,
  ipOption,
  isValidDomainName,
  messageTypeOf,
  parseDhcp,
  textOption,
  textOptionOf,
  u16Option,
  u16OptionOf,
  u32OptionOf,
  u8Option,
  type DhcpMessage,
  type DhcpOption,
} from './dhcp.js';
import { ParseError } from './errors.js';

export interface DhcpServerConfig {
  /** The gateway: server identifier (54) and the address replies come from. */
  serverIp: IPv4;
  /** Subnet handed to clients (mask = option 1). Prefix 8..30. */
  network: IPv4;
  prefix: number;
  /** Option 3; defaults to serverIp. */
  router?: IPv4;
  /** Option 6. */
  dnsServers: readonly IPv4[];
  /** Option 15. */
  domainName?: string;
  /** Option 119 (RFC 3397, compressed). */
  searchDomains?: readonly string[];
  /** Option 26, 68..65535. */
  mtu: number;
  /** Option 51; default 3600. T1 (58) = 50 %, T2 (59) = 87.5 % of it (RFC 2131 §4.4.5). */
  leaseTimeSec?: number;
  /** Dynamic pool, inclusive; default network+1 .. broadcast-1. */
  poolStart?: IPv4;
  poolEnd?: IPv4;
  /**
   * Never handed out (host alias, ...). serverIp, router, in-subnet DNS
   * servers, the network and broadcast addresses are added automatically.
   */
  reserved?: readonly IPv4[];
  /** MAC -> fixed address (in the subnet, may lie outside the pool, never reserved). */
  staticLeases?: ReadonlyMap<Mac, IPv4> | ReadonlyArray<{ mac: Mac; ip: IPv4 }>;
  /** The address a client with no history gets first, when free (the configured guest IP). */
  preferredFirst?: IPv4;
  /** How long an OFFERed address is held for its client; default 60 s. */
  offerHoldSec?: number;
  /** How long a DECLINEd address is kept out of the pool (RFC 2131 §4.3.3); default 600 s. */
  declineHoldSec?: number;
}

export interface DhcpReply {
  /** The BOOTP message: the UDP payload to send from serverIp:67. */
  message: Uint8Array;
  dstIp: IPv4;
  dstPort: number;
  /** MAC_BROADCAST when dstIp is the broadcast address, else the client's MAC. */
  dstMac: Mac;
  /** Option 53 of the reply (MsgType.Offer, Ack or Nak), for logs. */
  type: number;
}

export interface DhcpLeaseInfo {
  mac: Mac;
  ip: IPv4;
  /** Clock time (ms) at which the lease ends. */
  expiresAt: number;
  hostname?: string;
}

export interface DhcpServerStats {
  received: number;
  discovers: number;
  requests: number;
  declines: number;
  releases: number;
  informs: number;
  offers: number;
  acks: number;
  naks: number;
  /** DISCOVERs left unanswered because no address was free. */
  poolExhausted: number;
  /** Messages dropped without an answer, by reason ('dhcp:truncated', 'dhcp-server:other-server', ...). */
  ignored: Record<string, number>;
}

const DEFAULT_LEASE_SEC = 3600;
const DEFAULT_OFFER_HOLD_SEC = 60;
const DEFAULT_DECLINE_HOLD_SEC = 600;
/** RFC 2131 §2: a client must accept 576-byte messages (IP+UDP headers included). */
const MIN_MAX_MESSAGE = 576;
const IP_UDP_HEADERS = 28;
const HOSTNAME_MAX = 63;

interface LeaseRecord {
  mac: Mac;
  ip: IPv4;
  /** 'offered' until the client REQUESTs it, then 'bound'. */
  state: 'offered' | 'bound';
  expiresAt: number;
  hostname?: string;
  /** Its guest went away (guestLeft): still listed until it expires, but any client may take the address. */
  orphaned?: boolean;
}

/** Options every ACK/OFFER carries, in the order used when the client asks for no particular order. */
const CONFIG_OPTION_ORDER = [
  Opt.SubnetMask,
  Opt.Router,
  Opt.DnsServers,
  Opt.DomainName,
  Opt.InterfaceMtu,
  Opt.DomainSearch,
  Opt.BroadcastAddress,
];
/** Dropped, in this order, when a reply would exceed the client's maximum message size (57). */
const DROPPABLE_WHEN_TOO_BIG = [Opt.DomainSearch, Opt.DomainName, Opt.BroadcastAddress];

export class DhcpServer {
  readonly stats: DhcpServerStats = {
    received: 0,
    discovers: 0,
    requests: 0,
    declines: 0,
    releases: 0,
    informs: 0,
    offers: 0,
    acks: 0,
    naks: 0,
    poolExhausted: 0,
    ignored: {},
  };

  private readonly serverIp: IPv4;
  private readonly network: IPv4;
  private readonly prefix: number;
  private readonly broadcast: IPv4;
  private readonly poolStart: IPv4;
  private readonly poolEnd: IPv4;
  private readonly leaseMs: number;
  private readonly leaseSec: number;
  private readonly offerHoldMs: number;
  private readonly declineHoldMs: number;
  private readonly preferredFirst: IPv4 | undefined;
  private readonly reserved = new Set<IPv4>();
  private readonly staticByMac = new Map<Mac, IPv4>();
  private readonly staticByIp = new Map<IPv4, Mac>();
  /** Pool addresses that are never dynamic (reserved or static): for the O(1) exhaustion check. */
  private readonly unusableInPool: number;
  /** Options from config, built once: code -> option. */
  private readonly configOptions = new Map<number, DhcpOption>();

  private readonly byMac = new Map<Mac, LeaseRecord>();
  private readonly byIp = new Map<IPv4, LeaseRecord>();
  /** DECLINEd address -> clock time it may be used again. */
  private readonly declined = new Map<IPv4, number>();
  /** Dynamic addresses that have a record or are declined: lowestFree() knows in O(1) that none is left. */
  private dynamicInUse = 0;

  constructor(
    config: DhcpServerConfig,
    private readonly clock: Clock,
  ) {
    const { prefix } = config;
    if (!Number.isInteger(prefix) || prefix < 8 || prefix > 30) throw new RangeError('dhcp: prefix must be 8..30');
    const mask = prefixMask(prefix);
    this.prefix = prefix;
    this.network = (config.network & mask) >>> 0;
    this.broadcast = (this.network | ~mask) >>> 0;
    this.serverIp = config.serverIp;
    if (!this.isHostAddress(config.serverIp)) throw new RangeError('dhcp: serverIp must be a host address of the subnet');

    this.poolStart = config.poolStart ?? this.network + 1;
    this.poolEnd = config.poolEnd ?? this.broadcast - 1;
    if (!this.isHostAddress(this.poolStart) || !this.isHostAddress(this.poolEnd) || this.poolStart > this.poolEnd) {
      throw new RangeError('dhcp: pool must be a non-empty range of host addresses in the subnet');
    }

    const leaseSec = config.leaseTimeSec ?? DEFAULT_LEASE_SEC;
    if (!Number.isInteger(leaseSec) || leaseSec < 60 || leaseSec > 0xfffffffe) {
      throw new RangeError('dhcp: leaseTimeSec must be an integer 60..2^32-2');
    }
    this.leaseSec = leaseSec;
    this.leaseMs = leaseSec * 1000;
    this.offerHoldMs = (config.offerHoldSec ?? DEFAULT_OFFER_HOLD_SEC) * 1000;
    this.declineHoldMs = (config.declineHoldSec ?? DEFAULT_DECLINE_HOLD_SEC) * 1000;

    const router = config.router ?? config.serverIp;
    for (const ip of [config.serverIp, router, ...config.dnsServers, ...(config.reserved ?? [])]) this.reserved.add(ip);

    const statics: Iterable<[Mac, IPv4]> =
      config.staticLeases === undefined
        ? []
        : Array.isArray(config.staticLeases)
          ? (config.staticLeases as ReadonlyArray<{ mac: Mac; ip: IPv4 }>).map((s) => [s.mac, s.ip] as [Mac, IPv4])
          : (config.staticLeases as ReadonlyMap<Mac, IPv4>).entries();
    for (const [mac, ip] of statics) {
      if (!this.isHostAddress(ip) || this.reserved.has(ip)) {
        throw new RangeError(`dhcp: static lease ${formatIPv4(ip)} is not a usable host address`);
      }
      if (this.staticByIp.has(ip) || this.staticByMac.has(mac)) throw new RangeError('dhcp: duplicate static lease');
      this.staticByMac.set(mac, ip);
      this.staticByIp.set(ip, mac);
    }

    let unusable = 0;
    for (const ip of new Set([...this.reserved, ...this.staticByIp.keys()])) {
      if (ip >= this.poolStart && ip <= this.poolEnd) unusable++;
    }
    this.unusableInPool = unusable;

    if (config.preferredFirst !== undefined && this.isDynamic(config.preferredFirst)) {
      this.preferredFirst = config.preferredFirst;
    }

    this.buildConfigOptions(config, mask, router);
  }

  /**
   * Answers one DHCP message (the UDP payload of a datagram to port 67).
   * Returns null when RFC 2131 says to stay silent or the input is not ours.
   */
  handle(message: Uint8Array, clientMac: Mac): DhcpReply | null {
    this.stats.received++;
    const msg = parseDhcp(message);
    if (msg instanceof ParseError) return this.ignore(msg.reason);
    if (msg.op !== BOOTREQUEST) return this.ignore('dhcp-server:not-request');
    if (msg.giaddr !== 0) return this.ignore('dhcp-server:relayed');
    const type = messageTypeOf(msg);
    const mac = clientMacOf(msg) ?? clientMac;
    this.expireDeclined();

    switch (type) {
      case MsgType.Discover:
        this.stats.discovers++;
        return this.onDiscover(msg, mac);
      case MsgType.Request:
        this.stats.requests++;
        return this.onRequest(msg, mac);
      case MsgType.Decline:
        this.stats.declines++;
        return this.onDecline(msg, mac);
      case MsgType.Release:
        this.stats.releases++;
        return this.onRelease(msg, mac);
      case MsgType.Inform:
        this.stats.informs++;
        return this.onInform(msg, mac);
      case null:
        return this.ignore('dhcp-server:no-message-type');
      default:
        return this.ignore('dhcp-server:unexpected-message-type');
    }
  }

  /**
   * The one guest this server serves went away (the VMM disconnected). Its
   * bound leases stay listed until they expire (as gvproxy keeps them: an
   * operator still sees who had which address), but its successor, rebooted
   * or new, gets the preferred address again whatever its MAC, because an
   * orphaned lease yields its address to any client. Offers in flight are
   * forgotten.
   */
  guestLeft(): void {
    for (const r of [...this.byIp.values()]) {
      if (r.state === 'offered') this.forget(r);
      else r.orphaned = true;
    }
  }

  /** Bound, unexpired leases (offers in flight and expired records are not listed). */
  leases(): DhcpLeaseInfo[] {
    const now = this.clock.now();
    const out: DhcpLeaseInfo[] = [];
    for (const r of this.byMac.values()) {
      if (r.state !== 'bound' || r.expiresAt <= now) continue;
      const info: DhcpLeaseInfo = { mac: r.mac, ip: r.ip, expiresAt: r.expiresAt };
      if (r.hostname !== undefined) info.hostname = r.hostname;
      out.push(info);
    }
    return out;
  }

  // ------------------------------------------------------------ RFC 2131 §4.3.1

  private onDiscover(msg: DhcpMessage, mac: Mac): DhcpReply | null {
    const ip = this.chooseForDiscover(msg, mac);
    if (ip === undefined) {
      this.stats.poolExhausted++;
      return this.ignore('dhcp-server:pool-exhausted');
    }
    const now = this.clock.now();
    const existing = this.byMac.get(mac);
    if (existing !== undefined && existing.ip === ip && existing.state === 'bound' && existing.expiresAt > now) {
      // Keep a live binding as it is: an OFFER does not shorten it.
    } else {
      this.assign(mac, ip, 'offered', now + this.offerHoldMs, hostnameOf(msg));
    }
    this.stats.offers++;
    return this.reply(msg, mac, MsgType.Offer, ip, true);
  }

  /** Static lease, then the client's previous address, then option 50, then preferredFirst, then the lowest free. */
  private chooseForDiscover(msg: DhcpMessage, mac: Mac): IPv4 | undefined {
    const fixed = this.staticByMac.get(mac);
    if (fixed !== undefined) return this.isDeclined(fixed) ? undefined : fixed;
    const previous = this.byMac.get(mac);
    if (previous !== undefined && this.availableTo(previous.ip, mac)) return previous.ip;
    const requested = ipOption(msg, Opt.RequestedIp);
    if (requested !== undefined && this.availableTo(requested, mac)) return requested;
    if (this.preferredFirst !== undefined && this.availableTo(this.preferredFirst, mac)) return this.preferredFirst;
    return this.lowestFree() ?? this.oldestReclaimable(mac);
  }

  // ------------------------------------------------------------ RFC 2131 §4.3.2

  private onRequest(msg: DhcpMessage, mac: Mac): DhcpReply | null {
    const serverId = ipOption(msg, Opt.ServerId);
    const requested = ipOption(msg, Opt.RequestedIp);
    if (serverId !== undefined) {
      if (serverId !== this.serverIp) {
        // SELECTING another server's offer: ours is no longer wanted.
        const offered = this.byMac.get(mac);
        if (offered !== undefined && offered.state === 'offered') this.forget(offered);
        return this.ignore('dhcp-server:other-server');
      }
      // SELECTING: 'requested IP address' MUST be filled in, 'ciaddr' MUST be zero.
      if (requested === undefined) return this.ignore('dhcp-server:selecting-without-requested-ip');
      return this.commit(msg, mac, requested);
    }
    if (requested !== undefined) {
      // INIT-REBOOT (ciaddr zero) — or a client filling both fields; the option wins.
      return this.commit(msg, mac, requested);
    }
    if (msg.ciaddr !== 0) {
      // RENEWING (unicast) or REBINDING (broadcast): the datagram's destination
      // would tell them apart, but both are answered the same way here.
      return this.commit(msg, mac, msg.ciaddr);
    }
    return this.ignore('dhcp-server:request-without-address');
  }

  /** ACK `ip` for `mac` if it may have it, else NAK (RFC 2131 §4.3.2: wrong address or network). */
  private commit(msg: DhcpMessage, mac: Mac, ip: IPv4): DhcpReply | null {
    if (!this.mayBind(ip, mac)) {
      this.stats.naks++;
      return this.nak(msg, mac);
    }
    this.assign(mac, ip, 'bound', this.clock.now() + this.leaseMs, hostnameOf(msg));
    this.stats.acks++;
    return this.reply(msg, mac, MsgType.Ack, ip, true);
  }

  /** Whether `mac` may hold `ip`: its static address if it has one, else any available dynamic one. */
  private mayBind(ip: IPv4, mac: Mac): boolean {
    const fixed = this.staticByMac.get(mac);
    if (fixed !== undefined) return ip === fixed && !this.isDeclined(ip);
    return this.availableTo(ip, mac);
  }

  // ------------------------------------------------------------ RFC 2131 §4.3.3, §4.3.4

  private onDecline(msg: DhcpMessage, mac: Mac): null {
    const serverId = ipOption(msg, Opt.ServerId);
    if (serverId !== undefined && serverId !== this.serverIp) return this.ignore('dhcp-server:other-server');
    const ip = ipOption(msg, Opt.RequestedIp);
    const record = ip === undefined ? undefined : this.byIp.get(ip);
    if (ip === undefined || record === undefined || record.mac !== mac) return this.ignore('dhcp-server:decline-unknown');
    // Someone else answers ARP for it: keep it out of the pool for a while.
    this.forget(record);
    this.decline(ip);
    return null;
  }

  private onRelease(msg: DhcpMessage, mac: Mac): null {
    const serverId = ipOption(msg, Opt.ServerId);
    if (serverId !== undefined && serverId !== this.serverIp) return this.ignore('dhcp-server:other-server');
    const record = this.byIp.get(msg.ciaddr);
    if (record === undefined || record.mac !== mac) return this.ignore('dhcp-server:release-unknown');
    this.forget(record);
    return null;
  }

  // ------------------------------------------------------------ RFC 2131 §4.3.5

  private onInform(msg: DhcpMessage, mac: Mac): DhcpReply | null {
    const serverId = ipOption(msg, Opt.ServerId);
    if (serverId !== undefined && serverId !== this.serverIp) return this.ignore('dhcp-server:other-server');
    this.stats.acks++;
    // No lease: yiaddr zero, no 51/58/59; unicast to ciaddr (reply() does that).
    return this.reply(msg, mac, MsgType.Ack, 0, false);
  }

  // ------------------------------------------------------------ replies

  private reply(request: DhcpMessage, mac: Mac, type: number, yiaddr: IPv4, withLease: boolean): DhcpReply {
    const options = this.replyOptions(request, type, withLease);
    const limit = maxReplySize(request);
    const message: DhcpMessage = {
      op: BOOTREPLY,
      htype: request.htype,
      hlen: request.hlen,
      hops: 0,
      xid: request.xid,
      secs: 0,
      flags: request.flags & FLAG_BROADCAST,
      ciaddr: request.ciaddr,
      yiaddr,
      siaddr: 0,
      giaddr: 0,
      chaddr: request.chaddr,
      sname: EMPTY,
      file: EMPTY,
      options,
    };
    // Fit the client's maximum message size (57) by dropping the least essential options.
    for (const code of DROPPABLE_WHEN_TOO_BIG) {
      if (dhcpEncodedLength(message) <= limit) break;
      message.options = message.options.filter((o) => o.code !== code);
    }
    return { ...this.destination(request, mac, type, yiaddr), message: encodeDhcp(message), type };
  }

  private nak(request: DhcpMessage, mac: Mac): DhcpReply {
    const message: DhcpMessage = {
      op: BOOTREPLY,
      htype: request.htype,
      hlen: request.hlen,
      hops: 0,
      xid: request.xid,
      secs: 0,
      flags: request.flags & FLAG_BROADCAST,
      ciaddr: 0,
      yiaddr: 0,
      siaddr: 0,
      giaddr: 0,
      chaddr: request.chaddr,
      sname: EMPTY,
      file: EMPTY,
      options: [
        u8Option(Opt.MessageType, MsgType.Nak),
        u32OptionOf(Opt.ServerId, this.serverIp),
        textOptionOf(Opt.Message, 'requested address not available'),
      ],
    };
    return { ...this.destination(request, mac, MsgType.Nak, 0), message: encodeDhcp(message), type: MsgType.Nak };
  }

  /**
   * RFC 2131 §4.1 (giaddr is always zero here): NAKs are broadcast; a client
   * with ciaddr set gets unicast there; the broadcast bit asks for broadcast;
   * otherwise unicast to yiaddr at chaddr. A chaddr that is not a MAC cannot
   * be unicast to before the client has an address, so that is broadcast too,
   * and so is an INFORM without ciaddr (broken, but broadcast still reaches it).
   */
  private destination(
    request: DhcpMessage,
    mac: Mac,
    type: number,
    yiaddr: IPv4,
  ): { dstIp: IPv4; dstPort: number; dstMac: Mac } {
    const broadcast = { dstIp: IPV4_BROADCAST, dstPort: DHCP_CLIENT_PORT, dstMac: MAC_BROADCAST };
    if (type === MsgType.Nak) return broadcast;
    if (request.ciaddr !== 0) return { dstIp: request.ciaddr, dstPort: DHCP_CLIENT_PORT, dstMac: mac };
    if ((request.flags & FLAG_BROADCAST) !== 0 || clientMacOf(request) === null || yiaddr === 0) return broadcast;
    return { dstIp: yiaddr, dstPort: DHCP_CLIENT_PORT, dstMac: mac };
  }

  /**
   * 53 and 54 first (some clients look for the type early), then lease times,
   * then what the client asked for in its 55 order, then the rest of ours.
   */
  private replyOptions(request: DhcpMessage, type: number, withLease: boolean): DhcpOption[] {
    const options: DhcpOption[] = [u8Option(Opt.MessageType, type), u32OptionOf(Opt.ServerId, this.serverIp)];
    if (withLease) {
      options.push(
        u32OptionOf(Opt.LeaseTime, this.leaseSec),
        u32OptionOf(Opt.RenewalTime, Math.floor(this.leaseSec / 2)),
        u32OptionOf(Opt.RebindingTime, Math.floor((this.leaseSec * 7) / 8)),
      );
    }
    const added = new Set<number>();
    const prl = findOption(request, Opt.ParameterRequestList);
    if (prl !== undefined) {
      for (const code of prl) {
        const o = this.configOptions.get(code);
        if (o !== undefined && !added.has(code)) {
          options.push(o);
          added.add(code);
        }
      }
    }
    for (const code of CONFIG_OPTION_ORDER) {
      const o = this.configOptions.get(code);
      // Broadcast address (28) only when asked for; the rest always.
      if (o !== undefined && !added.has(code) && code !== Opt.BroadcastAddress) options.push(o);
    }
    return options;
  }

  private buildConfigOptions(config: DhcpServerConfig, mask: number, router: IPv4): void {
    const set = (o: DhcpOption) => this.configOptions.set(o.code, o);
    set(u32OptionOf(Opt.SubnetMask, mask));
    set(ipListOption(Opt.Router, [router]));
    if (config.dnsServers.length > 0) set(ipListOption(Opt.DnsServers, config.dnsServers));
    if (config.domainName !== undefined) {
      if (!isValidDomainName(config.domainName)) throw new RangeError('dhcp: invalid domainName');
      set(textOptionOf(Opt.DomainName, config.domainName));
    }
    if (!Number.isInteger(config.mtu) || config.mtu < 68 || config.mtu > 65535) throw new RangeError('dhcp: mtu must be 68..65535');
    set(u16OptionOf(Opt.InterfaceMtu, config.mtu));
    const search = config.searchDomains ?? [];
    if (search.length > 0) {
      if (!search.every(isValidDomainName)) throw new RangeError('dhcp: invalid search domain');
      set({ code: Opt.DomainSearch, data: encodeDomainSearch(search) });
    }
    set(u32OptionOf(Opt.BroadcastAddress, this.broadcast));
  }

  // ------------------------------------------------------------ address bookkeeping

  /** In the subnet, not its network or broadcast address. */
  private isHostAddress(ip: IPv4): boolean {
    return inSubnet(ip, this.network, this.prefix) && ip !== this.network && ip !== this.broadcast;
  }

  /** A pool address that is neither reserved nor anyone's static address. */
  private isDynamic(ip: IPv4): boolean {
    return ip >= this.poolStart && ip <= this.poolEnd && !this.reserved.has(ip) && !this.staticByIp.has(ip) && this.isHostAddress(ip);
  }

  private isDeclined(ip: IPv4): boolean {
    const until = this.declined.get(ip);
    return until !== undefined && until > this.clock.now();
  }

  /** Dynamic, not declined, and not held (offered or bound, unexpired) by another MAC. */
  private availableTo(ip: IPv4, mac: Mac): boolean {
    if (!this.isDynamic(ip) || this.isDeclined(ip)) return false;
    const holder = this.byIp.get(ip);
    return holder === undefined || holder.mac === mac || holder.orphaned === true || holder.expiresAt <= this.clock.now();
  }

  /** The lowest dynamic address with no record and not declined, or undefined (O(1) when none is left). */
  private lowestFree(): IPv4 | undefined {
    const poolSize = this.poolEnd - this.poolStart + 1;
    if (this.dynamicInUse + this.unusableInPool >= poolSize) return undefined;
    for (let ip = this.poolStart; ip <= this.poolEnd; ip++) {
      if (this.isDynamic(ip) && !this.byIp.has(ip) && !this.declined.has(ip)) return ip;
    }
    return undefined;
  }

  /** An expired record's address (earliest expiry first), for when the pool has nothing untouched. */
  private oldestReclaimable(mac: Mac): IPv4 | undefined {
    const now = this.clock.now();
    let best: LeaseRecord | undefined;
    for (const r of this.byIp.values()) {
      if (r.expiresAt > now || !this.availableTo(r.ip, mac)) continue;
      if (best === undefined || r.expiresAt < best.expiresAt) best = r;
    }
    return best?.ip;
  }

  private expireDeclined(): void {
    if (this.declined.size === 0) return;
    const now = this.clock.now();
    for (const [ip, until] of this.declined) if (until <= now) this.undecline(ip);
  }

  private decline(ip: IPv4): void {
    if (!this.declined.has(ip) && this.isDynamic(ip)) this.dynamicInUse++;
    this.declined.set(ip, this.clock.now() + this.declineHoldMs);
  }

  private undecline(ip: IPv4): void {
    if (this.declined.delete(ip) && this.isDynamic(ip)) this.dynamicInUse--;
  }

  /** Gives `ip` to `mac`, dropping the MAC's previous record and any expired record of the address. */
  private assign(mac: Mac, ip: IPv4, state: LeaseRecord['state'], expiresAt: number, hostname: string | undefined): void {
    const mine = this.byMac.get(mac);
    if (mine !== undefined && mine.ip !== ip) this.forget(mine);
    const holder = this.byIp.get(ip);
    if (holder !== undefined && holder.mac !== mac) this.forget(holder);
    const record: LeaseRecord = { mac, ip, state, expiresAt };
    if (!this.byIp.has(ip) && this.isDynamic(ip)) this.dynamicInUse++;
    const name = hostname ?? mine?.hostname;
    if (name !== undefined) record.hostname = name;
    this.byMac.set(mac, record);
    this.byIp.set(ip, record);
  }

  private forget(record: LeaseRecord): void {
    if (this.byMac.get(record.mac) === record) this.byMac.delete(record.mac);
    if (this.byIp.get(record.ip) === record) {
      this.byIp.delete(record.ip);
      if (this.isDynamic(record.ip)) this.dynamicInUse--;
    }
  }

  private ignore(reason: string): null {
    this.stats.ignored[reason] = (this.stats.ignored[reason] ?? 0) + 1;
    return null;
  }
}

const EMPTY = new Uint8Array(0);

/** The client's option 57 (at least 576), minus IP and UDP headers: the BOOTP bytes it accepts. */
function maxReplySize(request: DhcpMessage): number {
  const asked = u16Option(request, Opt.MaxMessageSize);
  return Math.max(asked ?? MIN_MAX_MESSAGE, MIN_MAX_MESSAGE) - IP_UDP_HEADERS;
}

/** Option 12 as printable ASCII, at most 63 chars; undefined when absent or empty. */
function hostnameOf(msg: DhcpMessage): string | undefined {
  const raw = textOption(msg, Opt.Hostname);
  if (raw === undefined) return undefined;
  const clean = raw.replace(/[^\x21-\x7e]/g, '').slice(0, HOSTNAME_MAX);
  return clean.length > 0 ? clean : undefined;
}
