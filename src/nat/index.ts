/**
 * The NAT of `moat serve`: guest flows raised by the netstack become real
 * host sockets, and their bytes and datagrams flow back into the stack.
 *
 *   TCP   SYN -> classify destination -> dial on the host -> SYN-ACK (or RST)
 *         gateway:53 -> DNS over TCP, served by the GatewayDns
 *   UDP   datagram -> per-four-tuple host socket (idle timeout, LRU bound)
 *         with an allowlist, UDP a hostname rule covers (443) -> held for the
 *         SNI of its QUIC Initial, then NATed to the name's address (quic-flows.ts)
 *         gateway:53 -> the GatewayDns; gateway:<claimed port> -> port forwarder
 *
 * The GatewayDns (src/gateway-dns.ts) is the forwarder of src/dns-forward.ts
 * unless the caller hands in another one (the allowlist's responder).
 *   ICMP  echo requests to a host address go through the ICMP ping socket
 *         moat-shim handed over (--icmp-fd; icmp-echo.ts), decided like a
 *         UDP flow, rate-limited and bounded; without the socket they are
 *         dropped and counted (Node cannot open one, and faking replies
 *         would lie about reachability). Other ICMP is dropped and counted.
 *         (The stack itself answers echo for its virtual addresses.)
 *
 * What is refused (RST for TCP, silent drop for UDP): see destination.ts.
 *
 * With an allowlist the NAT is given an Egress (src/egress/): every flow that
 * would leave the host is put to its policy first. Blocked -> RST / drop,
 * logged with a decision id; allowed by address -> dialed as usual; "needs a
 * name" -> the connection is accepted and held (HeldConnection) until its
 * SNI or Host decides, and is then dialed to an address Moat resolved for
 * that name. The gateway's own services (DNS) are never subject to it.
 */
import type { IPv4 } from '../../netstack/addr.js';
import type { NetStack, PendingTcp, UdpDatagram } from '../../netstack/api.js';
import { BuiltinNamesDns } from '../builtin-names-dns.js';
import { DnsForwarder, servfailFor, systemUpstreams } from '../dns-forward.js';
import { BufferBudget, type BufferBudgetStats } from '../limits.js';
import type { GatewayDns, GatewayDnsStats } from '../gateway-dns.js';
import type { Logger } from '../log.js';
import type { Egress, InFlight } from '../egress/egress.js';
import { HeldConnection } from '../egress/held-connection.js';
import { formatIp, formatIPv4, formatIPv6 } from '../../netstack/addr.js';
import type { SynInfo } from '../../netstack/api.js';
import { classifyDestination } from './destination.js';
import { natOptions, type NatOptions } from './options.js';
import { TcpFlowTable, type TcpFlowStats } from './tcp-flows.js';
import { describe, UdpFlowTable, type UdpFlowStats } from './udp-flows.js';
import { DEFAULT_QUIC_FLOW_OPTIONS, QuicFlows, type QuicFlowStats } from './quic-flows.js';
import { looksLikeQuicInitial } from '../../sni/quic-initial.js';
import { RateLimiter, type RateLimiterStats } from '../traffic/rate-limiter.js';
import { DEFAULT_ICMP_ECHO_TIMEOUT_MS, ICMP_ECHO_REQUEST, IcmpEcho, type IcmpEchoStats } from './icmp-echo.js';

export { DEFAULT_NAT_OPTIONS, natOptions, type NatOptions, type DnsUpstream } from './options.js';
export { classifyDestination, type Destination, type DestinationRefusal } from './destination.js';
export { TcpPipe, type TcpPipeOptions } from './tcp-pipe.js';

const DNS_PORT = 53;
/** Guest DNS-over-TCP connections to the gateway at once (RFC 7766 clients need one or two). */
export const MAX_DNS_TCP_SESSIONS = 64;

/** Receives guest datagrams sent to a gateway UDP port someone claimed (port forwarding replies). */
export type GatewayUdpHandler = (datagram: UdpDatagram) => void;

/** The hook the port forwarder uses to receive guest UDP replies addressed to the gateway. */
export interface GatewayUdpClaims {
  /** Routes guest datagrams to gatewayIp:port to `handler`; returns a function that releases the claim. Throws if taken. */
  claimGatewayUdp(port: number, handler: GatewayUdpHandler): () => void;
}

export interface NatStats {
  tcpFlows: number;
  udpFlows: number;
  tcp: TcpFlowStats;
  udp: UdpFlowStats;
  dns: GatewayDnsStats;
  udpRefused: number;
  /** ICMP from the guest that is not forwarded (not an echo request, or an echo that was not sent: see icmpEcho). */
  icmpDropped: number;
  /** Echo requests beyond the gateway (icmp-echo.ts). */
  icmpEcho: IcmpEchoStats;
  /** Connections held for their SNI/Host right now, and the bytes they hold. */
  held: number;
  heldBytes: number;
  /** Refused because maxHeld connections were already held. */
  heldRefused: number;
  /** Guest DNS-over-TCP connections to the gateway: open now, the bound, refused by it. */
  dnsTcp: { sessions: number; max: number; refused: number };
  /** UDP flows held for (or allowed by) the name in their QUIC Initial; undefined without an egress policy. */
  quic: QuicFlowStats | undefined;
  /** Flows the egress policy refused, by transport. */
  policyBlocked: { tcp: number; udp: number };
  /** Guest DNS queries over UDP waiting for an answer, and those answered SERVFAIL at once because dnsMaxInFlight were. */
  dnsInFlight: number;
  dnsRefused: number;
  /** The cap on bytes buffered over all TCP flows (undefined when totalBufferBytes is 0). */
  buffers: BufferBudgetStats | undefined;
  /** The guest's rate limits (--rate-egress, --rate-ingress), absent when unlimited. */
  rate?: { egress?: RateLimiterStats; ingress?: RateLimiterStats };
}

export class Nat implements GatewayUdpClaims {
  readonly options: NatOptions;
  private stack: NetStack | undefined;
  private readonly tcp: TcpFlowTable;
  private readonly udp: UdpFlowTable;
  private readonly dns: GatewayDns;
  private readonly gatewayUdp = new Map<number, GatewayUdpHandler>();
  private udpRefused = 0;
  private icmpDropped = 0;
  private heldRefused = 0;
  private dnsTcpSessions = 0;
  private dnsTcpRefused = 0;
  private dnsInFlight = 0;
  private dnsRefused = 0;
  private readonly budget: BufferBudget | undefined;
  private readonly policyBlocked = { tcp: 0, udp: 0 };
  private readonly held = new Set<HeldConnection>();
  private readonly quic: QuicFlows | undefined;
  private readonly rate: { egress?: RateLimiter | undefined; ingress?: RateLimiter | undefined } | undefined;
  private readonly echo: IcmpEcho;
  private closed = false;

  /**
   * `dns` answers gateway:53; without it, queries are forwarded to `opts.dnsUpstreams`.
   * `egress` is the allowlist's policy; without it every destination the NAT can reach is allowed.
   */
  constructor(
    opts: Partial<NatOptions>,
    private readonly log: Logger,
    dns?: GatewayDns,
    private readonly egress?: Egress,
  ) {
    this.options = natOptions(opts);
    if (dns === undefined && this.options.dnsUpstreams.length === 0) this.options.dnsUpstreams = systemUpstreams();
    this.budget = this.options.totalBufferBytes > 0 ? new BufferBudget(this.options.totalBufferBytes) : undefined;
    const onLimit = this.options.onLimit;
    const rateNow = this.options.now ?? ((): number => performance.now());
    const { rateEgress, rateIngress } = this.options;
    this.rate =
      rateEgress === undefined && rateIngress === undefined
        ? undefined
        : { egress: rateEgress && new RateLimiter(rateEgress, rateNow), ingress: rateIngress && new RateLimiter(rateIngress, rateNow) };
    // Byte budgets per rule live in the allowlist (reloaded with it); a flow cut by one is recorded as a refusal naming the rule.
    const budgets = egress?.budgets;
    this.tcp = new TcpFlowTable(
      {
        maxFlows: this.options.maxTcpFlows,
        connectTimeoutMs: this.options.connectTimeoutMs,
        perFlowBufferBytes: this.options.perFlowBufferBytes,
        ...(this.options.connectHost ? { connectHost: this.options.connectHost } : {}),
        ...(this.budget ? { budget: this.budget } : {}),
        // Connections held for their name are TCP flows too: they count against maxTcpFlows.
        extraFlows: () => this.held.size,
        ...(onLimit ? { onLimit: (f: Record<string, unknown>) => onLimit('tcpFlows', f) } : {}),
        ...(this.rate ? { rate: this.rate } : {}),
        ...(budgets !== undefined && egress !== undefined
          ? { budgets, onBudgetSpent: (syn, rule) => egress.recordBudgetCut('tcp', formatIp(syn.dst), syn.dstPort, rule, null, null) }
          : {}),
        ...(egress !== undefined
          ? {
              onClosed: (syn, tag, up, down) =>
                egress.decisions.flowClosed({ proto: 'tcp', dst: `${formatIp(syn.dst)}:${syn.dstPort}`, rule: tag.rule, name: tag.name, bytesUp: up, bytesDown: down }),
            }
          : {}),
      },
      log,
    );
    this.udp = new UdpFlowTable(
      {
        idleTimeoutMs: this.options.udpIdleTimeoutMs,
        maxFlows: this.options.maxUdpFlows,
        pendingDatagrams: this.options.udpPendingDatagrams,
        evictIdleMs: this.options.udpEvictIdleMs,
        ...(onLimit ? { onLimit: (f: Record<string, unknown>) => onLimit('udpFlows', f) } : {}),
        ...(this.rate ? { rate: this.rate } : {}),
        ...(budgets !== undefined && egress !== undefined
          ? { budgets, onBudgetSpent: (t, rule) => egress.recordBudgetCut('udp', formatIp(t.dst), t.dstPort, rule, null, null) }
          : {}),
        ...(egress !== undefined
          ? {
              onClosed: (t, rule, up, down) => {
                // A flow let out by its QUIC name carries that name (moat learn maps it to a hostname rule).
                const name = this.quic?.admittedName(t) ?? null;
                egress.decisions.flowClosed({ proto: name === null ? 'udp' : 'quic', dst: `${formatIp(t.dst)}:${t.dstPort}`, rule, name, bytesUp: up, bytesDown: down });
              },
            }
          : {}),
      },
      (from, fromPort, to, toPort, payload) => this.stack?.sendUdp(from, fromPort, to, toPort, payload),
      log,
    );
    if (egress !== undefined) {
      this.quic = new QuicFlows(
        { ...DEFAULT_QUIC_FLOW_OPTIONS, ...this.options.quic, ...(onLimit ? { onLimit } : {}) },
        egress,
        this.udp,
        log,
      );
    }
    const now = this.options.now ?? (() => performance.now());
    this.echo = new IcmpEcho(
      this.options.pingSocket,
      { maxOutstanding: this.options.maxIcmpEcho, perSecond: this.options.icmpEchoPerSec, timeoutMs: DEFAULT_ICMP_ECHO_TIMEOUT_MS, now },
      (from, to, icmp) => this.stack?.sendIcmp(from, to, icmp),
    );
    // Without an allowlist the gateway still answers its own names (as gvproxy does) and forwards the rest.
    const gatewayDns =
      dns ??
      new BuiltinNamesDns(
        new DnsForwarder(
          {
            upstreams: this.options.dnsUpstreams,
            timeoutMs: this.options.dnsTimeoutMs,
            maxInFlight: this.options.dnsMaxInFlight,
          },
          log,
        ),
        {
          gatewayIpv4: formatIPv4(this.options.gatewayIp),
          hostAliasIpv4: formatIPv4(this.options.hostIp),
          ...(this.options.ipv6 ? { gatewayIpv6: formatIPv6(this.options.ipv6.gatewayIp), hostAliasIpv6: formatIPv6(this.options.ipv6.hostIp) } : {}),
        },
      );
    this.dns = this.options.wrapDns ? this.options.wrapDns(gatewayDns) : gatewayDns;
  }

  /** The stack whose flows this NAT serves (replies are sent through it). */
  attach(stack: NetStack): void {
    this.stack = stack;
  }

  onTcpSyn(pending: PendingTcp): void {
    if (this.closed || this.stack === undefined) {
      pending.refuse();
      return;
    }
    const syn = pending.syn;
    const dest = classifyDestination(syn.dst, this.destinationRules());
    switch (dest.kind) {
      case 'refused':
        this.tcp.refuse(pending, dest.reason);
        return;
      case 'gateway':
        if (syn.dstPort !== DNS_PORT) {
          this.tcp.refuse(pending, 'gateway-port-closed');
          return;
        }
        this.acceptDnsTcp(pending);
        return;
      case 'host':
        if (this.egress === undefined) this.tcp.dial(pending, dest.address);
        else this.egressTcp(pending, this.egress, dest.address, syn);
        return;
    }
  }

  /** With an egress policy, link-local is the policy's call (a rule may name it), not the NAT's blanket refusal. */
  private destinationRules(): NatOptions {
    return this.egress === undefined || this.options.allowLinkLocal ? this.options : { ...this.options, allowLinkLocal: true };
  }

  /**
   * Either family (issue 19: no family may become the bypass): an IPv6
   * destination is decided by the same policy (sni/policy.ts decide6: IPv6
   * rules, its special ranges, the IPv6 host alias), held and dialed by name
   * like an IPv4 one (HeldConnection puts the flow's own family first).
   * `hostAddress` is the guest's own text but for the host alias; the forms
   * that ARE an IPv4 address (where the policy's dial address would differ)
   * never get here: classifyDestination refuses them.
   */
  private egressTcp(pending: PendingTcp, egress: Egress, hostAddress: string, syn: SynInfo): void {
    const flow = { proto: 'tcp', dst: formatIp(syn.dst), port: syn.dstPort } as const;
    const d = egress.decide(flow);
    // Audit: a web flow no hostname rule covers is still peeked, so that its
    // record (and what moat learn proposes) carries the name, not just an IP.
    const peekToLearn = egress.audit && d.verdict === 'block' && d.reason === 'no-rule' && (syn.dstPort === 80 || syn.dstPort === 443);
    if (d.verdict === 'block' && !peekToLearn) {
      const via = d.name === null ? null : 'pin';
      const id = egress.record(d, 'tcp', flow.dst, syn.dstPort, via);
      // Audit lets it through (recorded as would-block), but never to cloud metadata.
      if (egress.audit && d.reason !== 'link-local') {
        // Let through by address, and re-decided as such by a reload with drop (recorded as would-block again if still refused).
        const inFlight: InFlight = { version: egress.version, target: { kind: 'flow', flow }, dial: { kind: 'address', address: flow.dst }, via };
        this.tcp.dial(pending, hostAddress, (why) => egress.recheck(inFlight, why).keep);
        return;
      }
      this.policyBlocked.tcp++;
      this.tcp.refuse(pending, `policy:${d.reason}`, { decision: id });
      return;
    }
    if (d.verdict === 'allow') {
      const via = d.reason === 'pinned' ? 'pin' : null;
      egress.record(d, 'tcp', flow.dst, syn.dstPort, via);
      // Allowed before any byte arrived means allowed by address (IP rule,
      // pin): dial where classifyDestination leads (the host alias -> loopback).
      // A reload before the dial completes re-decides it (issue 14 finding 4).
      const inFlight: InFlight = {
        version: egress.version,
        target: { kind: 'flow', flow },
        dial: d.dial,
        via,
        ...(d.reason === 'pinned' && d.name !== null ? { pinnedName: d.name } : {}),
      };
      this.tcp.dial(pending, hostAddress, (why) => egress.recheck(inFlight, why).keep, { rule: d.rule, name: d.name });
      return;
    }
    // 'peek': the connection must be accepted for its first bytes to arrive.
    if (this.held.size >= this.maxHeld(egress)) {
      this.heldRefused++;
      if (this.options.onLimit !== undefined) {
        this.options.onLimit('peek', { ...describe(syn), max: this.maxHeld(egress) });
        pending.refuse();
      } else {
        this.tcp.refuse(pending, 'too-many-held-connections');
      }
      return;
    }
    if (this.tcp.atLimit()) {
      this.tcp.refuseAtLimit(pending);
      return;
    }
    const held = new HeldConnection(syn, hostAddress, egress, this.tcp, this.log, (h) => this.held.delete(h));
    this.held.add(held);
    let tcp;
    try {
      tcp = pending.accept(held.handlers);
    } catch (err) {
      this.held.delete(held);
      this.log.debug('tcp flow dropped', { ...describe(syn), reason: 'accept-failed', error: String(err) });
      return;
    }
    held.start(tcp);
  }

  /** Connections held for their name at once: maxHeldConnections, or the egress's own maxHeld when that is 0. */
  maxHeld(egress: Egress | undefined = this.egress): number {
    return this.options.maxHeldConnections > 0 ? this.options.maxHeldConnections : (egress?.options.maxHeld ?? 0);
  }

  onUdp(d: UdpDatagram): void {
    if (this.closed || this.stack === undefined) return;
    const dest = classifyDestination(d.dst, this.destinationRules());
    switch (dest.kind) {
      case 'refused':
        this.udpRefused++;
        this.log.debug('udp datagram refused', { ...describe(d), reason: dest.reason });
        return;
      case 'gateway': {
        if (d.dstPort === DNS_PORT) {
          this.forwardDnsUdp(d);
          return;
        }
        const claimed = this.gatewayUdp.get(d.dstPort);
        if (claimed !== undefined) {
          claimed(d);
          return;
        }
        this.udpRefused++;
        this.log.debug('udp datagram refused', { ...describe(d), reason: 'gateway-port-closed' });
        return;
      }
      case 'host':
        if (this.egress !== undefined && !this.udpAllowed(d, this.egress, dest.address)) return;
        this.udp.send(d, dest.address, d.payload);
        return;
    }
  }

  /**
   * UDP leaves by an IP/CIDR rule, or by the name in its QUIC Initial (the
   * QuicFlows gate takes the datagram and returns false here); a known
   * flow was decided by its first datagram(s). Either family, as egressTcp.
   */
  private udpAllowed(d: UdpDatagram, egress: Egress, hostAddress: string): boolean {
    const quic = this.quic!;
    if (quic.owns(d)) {
      quic.onDatagram(d, hostAddress);
      return false;
    }
    if (this.udp.has(d)) return true;
    const dst = formatIp(d.dst);
    const decision = egress.decide({ proto: 'udp', dst, port: d.dstPort });
    // Audit: QUIC to 443 no rule covers is still read, so that its record (and moat learn) carries the name.
    const peekToLearn = egress.audit && decision.verdict === 'block' && decision.reason === 'udp-needs-ip-rule' && d.dstPort === 443 && looksLikeQuicInitial(d.payload);
    if (decision.verdict === 'peek' || peekToLearn) {
      quic.onDatagram(d, hostAddress);
      return false;
    }
    egress.record(decision, 'udp', dst, d.dstPort, null);
    if (decision.verdict === 'allow') {
      // The flow opens here, charged to the rule that allowed it.
      this.udp.send(d, hostAddress, d.payload, decision.rule);
      return false;
    }
    if (egress.audit && decision.verdict === 'block' && decision.reason !== 'link-local') return true;
    this.policyBlocked.udp++;
    this.udpRefused++;
    return false;
  }

  /**
   * ICMP from the guest to an address the stack does not answer itself.
   * An echo request is decided like a UDP flow (destination refusals, then
   * the egress policy: an IP rule without a port), then forwarded through
   * the ping socket; everything else is dropped. Every drop is counted.
   */
  onIcmp(src: IPv4, dst: IPv4, icmp: Uint8Array): void {
    if (this.closed || icmp.length < 8 || icmp[0] !== ICMP_ECHO_REQUEST || icmp[1] !== 0) {
      this.icmpDropped++;
      return;
    }
    const dest = classifyDestination(dst, this.destinationRules());
    if (dest.kind !== 'host' || dest.address !== formatIPv4(dst)) {
      // Refused ranges, the gateway's other addresses; the host alias (127.0.0.1) is answered by the stack.
      this.echo.refused();
      this.icmpDropped++;
      return;
    }
    const egress = this.egress;
    if (egress !== undefined) {
      const d = egress.decideFlow('icmp', dst, 0);
      egress.record(d, 'icmp', dest.address, 0, null);
      const letThrough = d.verdict === 'allow' || (egress.audit && d.verdict === 'block' && d.reason !== 'link-local');
      if (!letThrough) {
        this.echo.refused();
        this.icmpDropped++;
        return;
      }
    }
    const why = this.echo.request(src, dst, dest.address, icmp);
    if (why !== undefined) {
      this.icmpDropped++;
      if (why !== 'unavailable') this.options.onLimit?.(why === 'rate-limited' ? 'icmpEchoRate' : 'icmpEcho', { dst: dest.address });
    }
  }

  claimGatewayUdp(port: number, handler: GatewayUdpHandler): () => void {
    if (port === DNS_PORT || this.gatewayUdp.has(port)) throw new Error(`gateway UDP port ${port} is already claimed`);
    this.gatewayUdp.set(port, handler);
    return () => {
      if (this.gatewayUdp.get(port) === handler) this.gatewayUdp.delete(port);
    };
  }

  /**
   * After an allowlist reload with ?drop=1: resets every TCP flow — open,
   * dialing, or held for its name — and closes every UDP flow the current
   * policy would refuse now. Returns how many. Every TCP flow carries what
   * it was decided as (InFlight) and is re-decided by Egress.recheck, which
   * records each refusal ('allowlist changed while ...').
   */
  dropRefusedFlows(): number {
    const egress = this.egress;
    if (egress === undefined) return 0;
    let dropped = this.tcp.recheckDials();
    for (const h of [...this.held]) if (!h.recheck()) dropped++;
    dropped += this.tcp.recheckOpen();
    dropped += this.quic?.recheckHeld() ?? 0;
    dropped += this.udp.closeWhere((t) => {
      // A flow let out by its QUIC name is re-decided as that (name and dial), like a TCP flow.
      const admitted = this.quic?.admitted(t);
      if (admitted !== undefined) return admitted('while open');
      // A UDP flow keeps no decision of its own (its first datagram was decided): re-decided as one made under no current version.
      const flow = { proto: 'udp', dst: formatIp(t.dst), port: t.dstPort } as const;
      return egress.recheck({ version: -1, target: { kind: 'flow', flow }, dial: { kind: 'address', address: flow.dst }, via: null }, 'while open').keep;
    });
    return dropped;
  }

  /** The guest went away: every host socket closes (TCP guest sides are reset), UDP flows end, SYNs being dialed are dropped. */
  resetGuest(): void {
    for (const h of [...this.held]) h.destroy();
    this.held.clear();
    this.tcp.closeAll();
    this.quic?.closeAll();
    this.udp.closeAll();
    this.echo.reset();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.resetGuest();
    this.echo.close();
    this.budget?.close();
    this.rate?.egress?.close();
    this.rate?.ingress?.close();
    await this.dns.close();
  }

  stats(): NatStats {
    return {
      tcpFlows: this.tcp.size,
      udpFlows: this.udp.size,
      tcp: this.tcp.stats(),
      udp: this.udp.stats(),
      dns: this.dns.stats(),
      udpRefused: this.udpRefused,
      icmpDropped: this.icmpDropped,
      icmpEcho: this.echo.stats(),
      held: this.held.size,
      heldBytes: [...this.held].reduce((n, h) => n + h.bufferedBytes, 0),
      heldRefused: this.heldRefused,
      dnsTcp: { sessions: this.dnsTcpSessions, max: MAX_DNS_TCP_SESSIONS, refused: this.dnsTcpRefused },
      quic: this.quic?.stats(),
      policyBlocked: { ...this.policyBlocked },
      dnsInFlight: this.dnsInFlight,
      dnsRefused: this.dnsRefused,
      buffers: this.budget?.stats(),
      ...(this.rate === undefined ? {} : { rate: { ...(this.rate.egress ? { egress: this.rate.egress.stats() } : {}), ...(this.rate.ingress ? { ingress: this.rate.ingress.stats() } : {}) } }),
    };
  }

  /**
   * DNS over TCP to the gateway is accepted at once (there is nothing to
   * dial), so a SYN flood to gateway:53 from spoofed sources would leave
   * half-open connections holding stack slots until their SYN-ACK retries
   * give up. At most MAX_DNS_TCP_SESSIONS exist at once; beyond it the
   * newest SYN gets RST (the guest's resolver still has UDP).
   */
  private acceptDnsTcp(pending: PendingTcp): void {
    if (this.dnsTcpSessions >= MAX_DNS_TCP_SESSIONS) {
      this.dnsTcpRefused++;
      this.tcp.refuse(pending, 'dns-tcp-sessions-full', { max: MAX_DNS_TCP_SESSIONS });
      return;
    }
    const session = this.dns.openTcpSession();
    this.log.debug('dns tcp open', describe(pending.syn));
    const handlers = session.handlers;
    this.dnsTcpSessions++;
    let counted = true;
    const release = (): void => {
      if (counted) this.dnsTcpSessions--;
      counted = false;
    };
    let tcp;
    try {
      tcp = pending.accept({ ...handlers, onClose: (reason) => (release(), handlers.onClose(reason)) });
    } catch (err) {
      release();
      throw err;
    }
    session.bind(tcp);
  }

  /**
   * Answers a guest DNS datagram. At most dnsMaxInFlight are waiting for an
   * answer (whichever GatewayDns answers: a flood of queries for names that
   * need an upstream must not pile up lookups); beyond it the newest query
   * is answered SERVFAIL at once (RFC 1035 4.1.1: the server could not
   * answer, the client may retry).
   */
  private forwardDnsUdp(d: UdpDatagram): void {
    const { src, srcPort, dst } = d;
    const reply = (answer: Uint8Array | undefined): void => {
      if (answer !== undefined && !this.closed) this.stack?.sendUdp(dst, DNS_PORT, src, srcPort, answer);
    };
    if (this.dnsInFlight >= this.options.dnsMaxInFlight) {
      this.dnsRefused++;
      if (this.options.onLimit !== undefined) this.options.onLimit('dnsInFlight', { ...describe(d), max: this.options.dnsMaxInFlight });
      reply(servfailFor(d.payload));
      return;
    }
    this.dnsInFlight++;
    const query = d.payload.slice(); // the view dies with this call; a failed lookup still needs its question
    void this.dns.resolve(query, 'udp').then(
      (answer) => {
        this.dnsInFlight--;
        reply(answer);
      },
      () => {
        this.dnsInFlight--;
        reply(servfailFor(query));
      },
    );
  }
}
