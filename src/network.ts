/**
 * One guest network: everything one guest has (link, Stack, NAT, allowlist,
 * gateway DNS, DHCP leases, port forwards, pcap, limits, counters), built by
 * startGuestNetwork and closed as a unit. `moat serve` (src/serve.ts) is one
 * network plus the control API; `moat host` (src/host.ts) runs many side by
 * side, one fault scope each.
 *
 *   guest socket --frames--> QemuStreamServer --input()--> Stack --events--> Nat --> host sockets
 *        ^                                                   |
 *        +-------------------- onOutput(batch) --------------+
 *
 * The TimerDriver keeps the stack's single timeout armed; after every batch
 * of input (and every deferred flush) it is re-armed for the stack's next
 * deadline. Everything that opens a socket is opened before the network is
 * returned, and closed again if any part fails to start.
 *
 * With --allow, the allowed hosts are resolved first (fail closed: start-up
 * rejects, naming every host that failed, before any socket is opened), the
 * gateway's DNS is an AllowlistDns instead of the forwarder, and the NAT puts
 * every flow to the egress policy (src/egress/). Both come from one
 * AllowlistRuntime, which the API's PUT /allowlist reloads.
 */
import type { IPv4 } from '../netstack/addr.js';
import { formatIPv4, formatIPv6, formatMac } from '../netstack/addr.js';
import type { Clock } from '../netstack/clock.js';
import type { NetStack, PendingTcp, StackConfig, StackEvents, UdpDatagram } from '../netstack/api.js';
import { randomBytes } from 'node:crypto';
import { ipv6HostLoopback } from './host-loopback.js';
import { beginHostWrites, endHostWrites } from './nat/host-write-batch.js';
import { createStack, DEFAULT_STACK_CONFIG, type StackOptions } from '../netstack/stack.js';
import type { Resolver } from '../dns/preresolve.js';
import { NodeDnsResolver } from './allowlist/resolver.js';
import { NetworkRoutes, type AllowlistControl } from './api-server.js';
import { AllowlistRuntime, zoneNames } from './egress/allowlist-runtime.js';
import type { AskCallback } from './egress/ask-gate.js';
import { unansweredAskWarning } from './egress/ask-flags.js';
import { decisionFileError, logStats, openDecisionLog } from './egress/decision-log.js';
import type { DecisionLog } from './egress/decision-log.js';
import type { RotatingFile } from './rotating-file.js';
import { DEFAULT_EGRESS_OPTIONS, type Egress } from './egress/egress.js';
import { MonotonicClock, NODE_TIMERS, TimerDriver } from './clock.js';
import { networkScope } from './fault-scope.js';
import type { DnsUpstream, ServeConfig } from './config.js';
import type { GatewayDns } from './gateway-dns.js';
import type { Logger } from './log.js';
import { DEFAULT_LIMITS, RefusalLog, REFUSAL_LOG_INTERVAL_MS, type Limits } from './limits.js';
import { DEFAULT_LOG_LIMITS } from './log-flags.js';
import { PortForwarder } from './forwarder.js';
import { Nat, type GatewayUdpClaims, type NatOptions, type NatStats } from './nat/index.js';
import { PcapWriter } from './pcap-writer.js';
import { DecisionCounts, networkMetrics, renderExposition } from './metrics.js';
import { ForwardError, type ForwardKey, type ForwardSpec, type PortForwards } from './port-forwards.js';
import { QemuStreamServer, type GuestSink, type QemuStreamOptions } from './transport/qemu-stream.js';
import { LocalZones, type LocalZone } from './local-zones.js';
import { LocalZonesDns } from './local-zones-dns.js';
import { limitNotifier, NO_NOTIFIER, NotificationSender, type NotificationMessage, type Notifier } from './notification.js';
import { TapFdLink, TAP_GSO_SEGMENT_BYTES } from './transport/tap-fd.js';
import { openPingSocket } from './transport/ping-socket.js';
import type { InjectControl } from './api-server.js';
import type { Injector } from './inject/interceptor.js';

/** The guest's side of the wire: a QEMU stream listener or a TAP descriptor. */
type GuestLink = QemuStreamServer | TapFdLink;

/** What serve() needs of the NAT (src/nat/index.ts `Nat` has this shape). */
export interface NatLike extends GatewayUdpClaims {
  attach(stack: NetStack): void;
  onTcpSyn(pending: PendingTcp): void;
  onUdp(datagram: UdpDatagram): void;
  onIcmp(src: IPv4, dst: IPv4, icmp: Uint8Array): void;
  /** After an allowlist reload with drop: reset the flows the new policy refuses; returns how many. */
  dropRefusedFlows(): number;
  resetGuest(): void;
  close(): Promise<void>;
  stats(): object;
}

/** What a port-forward implementation is built from. */
export interface PortForwardsContext {
  stack: NetStack;
  nat: NatLike;
  config: ServeConfig;
  log: Logger;
}

export type PortForwardsFactory = (ctx: PortForwardsContext) => PortForwards | Promise<PortForwards>;

/** The parts serve() builds; tests replace them with fakes. */
export interface ServeDeps {
  clock: Clock;
  createStack(
    config: StackConfig,
    events: StackEvents,
    clock: Clock,
    defer: (fn: () => void) => void,
    options?: StackOptions,
  ): NetStack;
  /** `dns` serves gateway:53 when given (allowlist mode); otherwise the NAT forwards DNS. `egress` decides every flow. */
  createNat(options: Partial<NatOptions>, log: Logger, dns?: GatewayDns, egress?: Egress): NatLike;
  /** The upstream allowed names are resolved at (--resolver). */
  createDnsResolver(servers: readonly DnsUpstream[]): Resolver;
  createPortForwards: PortForwardsFactory;
  link: Partial<QemuStreamOptions>;
}

export function stackConfigFor(config: ServeConfig): StackConfig {
  const limits = limitsOf(config);
  return {
    ...DEFAULT_STACK_CONFIG,
    tcp: {
      ...DEFAULT_STACK_CONFIG.tcp,
      maxHeldSyns: limits.maxHalfOpen,
      // The NAT enforces --max-tcp-flows; the stack's own bound (which also
      // counts port-forward connections) must not be lower. TIME-WAIT is outside both.
      maxConnections: Math.max(DEFAULT_STACK_CONFIG.tcp.maxConnections, limits.maxTcpFlows),
      maxTimeWait: limits.maxTimeWait,
      // A TAP with a virtio-net header takes TCP segments beyond the MTU (the link marks them GSO).
      ...(config.tapFd !== undefined && config.tapVnetHdr === true ? { segmentOffloadBytes: TAP_GSO_SEGMENT_BYTES } : {}),
      // With offloads on, the TAP completes TCP checksums too (the link marks every TCP frame NEEDS_CSUM).
      ...(config.tapFd !== undefined && config.tapOffload === true ? { checksumOffload: true } : {}),
    },
    fragments: { ...DEFAULT_STACK_CONFIG.fragments, maxBytes: limits.maxFragmentBytes, maxDatagrams: limits.maxFragmentDatagrams },
    mtu: config.mtu,
    network: config.network,
    prefix: config.prefix,
    gatewayIp: config.gatewayIp,
    gatewayMac: config.gatewayMac,
    guestIp: config.guestIp,
    hostIp: config.hostIp,
    // The gateway answers DNS (forwarded to --dns-upstream); a different --gateway-ip moves it too.
    dnsServers: [config.gatewayIp],
    ...(config.ipv6 === undefined ? {} : {
      ipv6: { prefix: config.ipv6.prefix, gatewayIp: config.ipv6.gatewayIp, hostIp: config.ipv6.hostIp, dnsServers: [config.ipv6.gatewayIp] },
    }),
  };
}

/** The config's limits, DEFAULT_LIMITS for any it does not set (configs built by hand). */
export function limitsOf(config: ServeConfig): Limits {
  return { ...DEFAULT_LIMITS, ...config.limits };
}

export function natOptionsFor(config: ServeConfig): Partial<NatOptions> {
  const limits = limitsOf(config);
  return {
    maxTcpFlows: limits.maxTcpFlows,
    maxUdpFlows: limits.maxUdpFlows,
    perFlowBufferBytes: limits.flowBufferBytes,
    totalBufferBytes: limits.totalBufferBytes,
    maxHeldConnections: limits.maxHeldConnections,
    dnsMaxInFlight: limits.dnsMaxInFlight,
    dnsTimeoutMs: limits.dnsTimeoutMs,
    connectTimeoutMs: limits.connectTimeoutMs,
    gatewayIp: config.gatewayIp,
    hostIp: config.hostIp,
    network: config.network,
    prefix: config.prefix,
    allowLinkLocal: config.allowLinkLocal,
    dnsUpstreams: config.dnsUpstreams,
    ...(config.traffic?.rateEgress ? { rateEgress: config.traffic.rateEgress } : {}),
    ...(config.traffic?.rateIngress ? { rateIngress: config.traffic.rateIngress } : {}),
    ...(config.ipv6 === undefined ? {} : {
      ipv6: { gatewayIp: config.ipv6.gatewayIp, hostIp: config.ipv6.hostIp, prefix: config.ipv6.prefix, hostLoopback: ipv6HostLoopback() },
    }),
    maxIcmpEcho: limits.maxIcmpEcho,
    icmpEchoPerSec: limits.icmpEchoPerSec,
  };
}

export const DEFAULT_SERVE_DEPS: ServeDeps = {
  clock: new MonotonicClock(),
  createStack,
  createNat: (options, log, dns, egress) => new Nat(options, log, dns, egress),
  createDnsResolver: (servers) => new NodeDnsResolver(servers),
  createPortForwards: createPortForwarder,
  link: {},
};

export interface ServeOptions {
  /** Aborts start-up (pre-resolution of allowed hosts); the CLI aborts it on SIGINT/SIGTERM. */
  signal?: AbortSignal;
  /** Ask mode's callback (the library's serve({ ask })): answers each pending decision, alongside the API. */
  ask?: AskCallback;
}

/** What startGuestNetwork takes besides the config. */
export interface GuestNetworkOptions extends ServeOptions {
  /** The network's name under `moat host` (in its logs and decision records); undefined for `moat serve`. */
  name?: string;
  /**
   * Run guest input inside this network's fault scope (src/fault-scope.ts),
   * so that an exception in a host socket callback the NAT set up is routed
   * to this network. `moat host` sets it; it costs async context tracking.
   */
  faultScope?: boolean;
  /** DNS zones the gateway answers from the start (`moat gvproxy`: gvproxy's containers.internal. and docker.internal.); more come over the API. */
  dnsZones?: readonly LocalZone[];
}

/** running; failed (a fault inside it closed it, `failure` says why); closed (by its owner). */
export type NetworkState = 'running' | 'failed' | 'closed';

/**
 * Everything one guest has: its link (the QEMU stream listener, or a TAP
 * descriptor under `moat serve`), Stack, NAT, allowlist (zones, pins, policy,
 * decision log), gateway DNS, DHCP leases, port forwards, pcap, limits and
 * counters. Nothing in it is shared with another network, so `moat host`
 * runs many of these side by side; `moat serve` is one of them plus the API.
 */
export interface GuestNetwork {
  readonly name: string | undefined;
  readonly config: ServeConfig;
  /** The guest listen addresses as bound (tcp with the real port). */
  readonly listen: readonly string[];
  readonly stack: NetStack;
  readonly forwards: PortForwards;
  /** The running allowlist (undefined without --allow): its rules and reload. */
  readonly allowlist: AllowlistControl | undefined;
  /** The allowlist's decision log (undefined without --allow). */
  readonly decisions: DecisionLog | undefined;
  /** The API's routes over this network (/stats, /services/*, /allowlist, /healthz); `moat host` mounts them under /networks/{name}. */
  readonly routes: NetworkRoutes;
  /** Everything /stats reports. */
  stats(): Record<string, unknown>;
  /** Sends a lifecycle event to --notification (nothing without it); serve() sends "ready". */
  notify(msg: NotificationMessage): void;
  /** DHCP leases as text addresses (kept after the guest disconnects, until they expire). */
  leases(): { ip: string; mac: string }[];
  guestConnected(): boolean;
  readonly state: NetworkState;
  /** Why a fault closed the network (state 'failed'), else undefined. */
  readonly failure: string | undefined;
  /**
   * Resolves (with why) when the network ends by itself: its --tap-fd device
   * disappeared, or a fault inside its stack or NAT closed it. Never resolves
   * otherwise (a --listen-qemu guest may always reconnect).
   */
  readonly ended: Promise<string>;
  /** Closes the link, every flow and host socket, and frees the tables; safe to call more than once. */
  close(): Promise<void>;
}

/**
 * Builds one guest network and opens its link; resolves once the link
 * listens (or, with --tap-fd, reads). Rejects, with everything it opened
 * closed again, if any part fails to start.
 */
export async function startGuestNetwork(
  config: ServeConfig,
  log: Logger,
  deps: Partial<ServeDeps> = {},
  options: GuestNetworkOptions = {},
): Promise<GuestNetwork> {
  const d: ServeDeps = { ...DEFAULT_SERVE_DEPS, ...deps };
  const allowlist = config.allow.length > 0;
  if (!allowlist && config.dnsUpstreams.length === 0) log.warn('no DNS upstream: none given and /etc/resolv.conf names none; guest DNS queries will fail');
  if (allowlist) {
    // Say so rather than ignore it silently: with an allowlist nothing is forwarded.
    log.info('allowlist mode: guest DNS is answered from the allowlist zones; --dns-upstream is not used', {
      resolvers: config.resolvers.map((r) => `${r.host}:${r.port}`),
    });
  }
  for (const l of config.listen) {
    if (l.kind === 'tcp' && l.host !== '127.0.0.1' && l.host !== '::1' && l.host !== 'localhost') {
      log.warn('guest socket listens beyond loopback: anyone who can connect gets the guest network', { listen: l.url });
    }
  }

  const closers: (() => Promise<void> | void)[] = [];
  const closeAll = async (): Promise<void> => {
    // Reverse order of opening: stop new input first, release host resources last.
    while (closers.length > 0) {
      const c = closers.pop()!;
      try {
        await c();
      } catch (e) {
        log.error('error while closing', { error: e });
      }
    }
  };

  let state: NetworkState = 'running';
  let failure: string | undefined;
  let closing: Promise<void> | undefined;
  const close = (): Promise<void> => {
    closing ??= closeAll().then(() => {
      if (state === 'running') state = 'closed';
    });
    return closing;
  };
  let onEnded: (why: string) => void = () => {};
  const ended = new Promise<string>((resolve) => (onEnded = resolve));
  // A throw inside this network's stack or NAT (from guest input, a timer or
  // deferred output) ends this network only: it is logged and closed, never
  // the process or another network.
  const fault = (e: unknown): void => {
    if (state !== 'running') return;
    state = 'failed';
    failure = e instanceof Error ? e.message : String(e);
    log.error('network fault: closing this network', { network: options.name, error: e });
    onEnded(`fault: ${failure}`);
    void close();
  };
  const faultHook = testFaultHook();

  try {
    // Deferred output (host bytes for the guest) leaves once the current
    // callback is done. Over a TAP every frame is its own write anyway, so it
    // goes at once, in a microtask; over a stream socket it waits for
    // setImmediate, so that the whole poll round's frames share one writev.
    const driver = new TimerDriver(d.clock, NODE_TIMERS, config.tapFd === undefined ? (fn) => setImmediate(fn) : soonAfterThisCallback, fault);
    closers.push(() => driver.stop());

    // Every refusal by a limit is counted; at most one log line per limit per interval.
    const limits = limitsOf(config);
    const refusals = new RefusalLog(log.child({ component: 'limits' }));
    closers.push(() => refusals.close());

    // --notification: lifecycle events to a listener's unix socket (never fatal, bounded queue).
    const sender = config.notification === undefined ? undefined : new NotificationSender(config.notification, log.child({ component: 'notification' }));
    if (sender !== undefined) closers.push(() => sender.close());
    const notifier: Notifier = sender ?? NO_NOTIFIER;
    const notifyLimit = limitNotifier(notifier, REFUSAL_LOG_INTERVAL_MS);
    const onLimit = (limit: string, fields: Record<string, unknown>): void => {
      refusals.refused(limit, fields);
      notifyLimit(limit);
    };
    // Records added over the API (/services/dns/add), answered in front of the gateway's DNS.
    const zones = new LocalZones(options.dnsZones ?? []);

    const runtime = allowlist ? await startAllowlist(config, d, log, options.signal, options.name, options.ask) : undefined;
    // Under `moat host` the host's API answers; alone, only --api or the callback can.
    if (config.ask !== undefined && options.name === undefined && config.apiSocket === undefined && options.ask === undefined) log.warn(unansweredAskWarning(config.ask.timeoutMs));
    if (runtime !== undefined) closers.push(() => runtime.close());
    // --icmp-fd: the ping socket moat-shim handed over (the NAT closes it).
    const pingSocket = config.icmpFd === undefined ? undefined : await openPingSocket(config.icmpFd);
    if (pingSocket !== undefined) log.info('icmp echo beyond the gateway: through the ping socket', { icmpFd: config.icmpFd });
    const nat = d.createNat(
      { ...natOptionsFor(config), ...(pingSocket ? { pingSocket } : {}), onLimit, wrapDns: (dns) => new LocalZonesDns(dns, zones) },
      log.child({ component: 'nat' }),
      runtime?.runtime.dns,
      runtime?.runtime.egress,
    );
    closers.push(() => nat.close());
    const allowlistControl = runtime === undefined ? undefined : allowlistControlFor(runtime.runtime, nat, log, notifier);

    // The link is created before the stack (the stack's onOutput needs it) and listens after.
    let stack: NetStack | undefined;
    // The guest's MAC as its first frame gives it, for gvproxy's connection_established/closed events.
    let guestMac: string | undefined;
    const input = (frames: readonly Uint8Array[], marks?: ArrayLike<number>): void => {
      if (state !== 'running') return;
      try {
        faultHook?.(frames);
        if (guestMac === undefined && sender !== undefined && frames.length > 0 && frames[0]!.length >= 12) {
          guestMac = sourceMac(frames[0]!);
          notifier.send({ notification_type: 'connection_established', mac_address: guestMac });
        }
        beginHostWrites(frames);
        try {
          stack!.input(frames, marks);
        } finally {
          endHostWrites();
        }
        driver.reschedule();
      } catch (e) {
        fault(e);
      }
    };
    const sink: GuestSink = {
      input: options.faultScope === true ? (frames, marks) => networkScope.run(fault, input, frames, marks) : input,
      guestGone() {
        if (state !== 'running') return;
        if (guestMac !== undefined) notifier.send({ notification_type: 'connection_closed', mac_address: guestMac });
        guestMac = undefined;
        try {
          stack!.resetGuest();
          nat.resetGuest();
          driver.reschedule();
        } catch (e) {
          fault(e);
        }
      },
    };
    const link: GuestLink =
      config.tapFd === undefined
        ? new QemuStreamServer(sink, log, d.link)
        : new TapFdLink({ fd: config.tapFd, vnetHdr: config.tapVnetHdr === true, offload: config.tapOffload === true, mtu: config.mtu }, sink, log, (why) => onEnded(why));

    const dropLog = log.child({ component: 'stack' });
    const events: StackEvents = {
      onTcpSyn: (pending) => nat.onTcpSyn(pending),
      onUdp: (datagram) => nat.onUdp(datagram),
      onIcmp: (src, dst, icmp) => nat.onIcmp(src, dst, icmp),
      onOutput: (batch) => link.send(batch),
      onDrop: (reason) => {
        const limit = STACK_LIMIT_DROPS[reason];
        if (limit !== undefined) onLimit(limit, { reason });
        else if (dropLog.enabled('debug')) dropLog.debug('frame dropped', { reason });
      },
    };
    // Output staging buffers are written in full before they are sent: skip the zero-fill.
    stack = d.createStack(stackConfigFor(config), events, d.clock, driver.defer, {
      allocate: (n) => Buffer.allocUnsafe(n),
      // The TAP link writes every frame before onOutput returns.
      syncOutput: link instanceof TapFdLink,
      // ... from pieces (writev): TCP payload straight from the send ring (with --tap-offload: the TAP completes the checksum).
      gatherPayload: link instanceof TapFdLink,
      // The ISN key (RFC 6528) from the OS, not Math.random, whose state its outputs reveal.
      random: () => randomBytes(4).readUInt32BE(0) / 0x100000000,
    });
    driver.attach(stack);
    nat.attach(stack);
    const theStack = stack;

    let pcap: PcapWriter | undefined;
    if (config.pcapFile !== undefined) {
      pcap = await PcapWriter.open(config.pcapFile, (e) => log.error('pcap write failed; capture stopped', { file: config.pcapFile, error: e }));
      link.tap = pcap;
      const p = pcap;
      closers.push(() => {
        link.tap = undefined;
        return p.close();
      });
    }

    const forwards = await d.createPortForwards({ stack: theStack, nat, config, log: log.child({ component: 'forwarder' }) });
    closers.push(() => forwards.close());
    for (const spec of config.forwards) {
      try {
        await forwards.expose(spec);
      } catch (e) {
        throw new Error(`--forward ${spec.local}=${spec.remote}/${spec.protocol}: ${(e as Error).message}`);
      }
    }

    const leases = (): { ip: string; mac: string }[] => theStack.dhcpLeases().map((l) => ({ ip: formatIPv4(l.ip), mac: formatMac(l.mac) }));
    const guestConnected = (): boolean => link.guestConnected;
    let routes: NetworkRoutes | undefined;
    const stats = (): Record<string, unknown> => {
      const s = collectStats(theStack, link, nat, pcap, forwards);
      const decisions = runtime?.runtime.egress.decisions;
      return {
        ...s,
        limits: limitStats(limits, theStack, s.nat as Partial<NatStats>, routes),
        ...(decisions === undefined ? {} : { decisions: { ...decisions.stats } }),
        ...(runtime === undefined || runtime.runtime.budgets.size === 0 ? {} : { budgets: runtime.runtime.budgets.stats() }),
        ...(askGate === undefined ? {} : { ask: askGate.stats() }),
        ...(runtime?.injector ? { inject: runtime.injector.stats() } : {}),
        logs: logStats(log, decisions, runtime?.file),
        ...(sender === undefined ? {} : { notifications: { path: sender.path, ...sender.stats } }),
        // gvproxy's /stats keys (pkg/virtualnetwork/stats.go): bytes sent to and received from the guest.
        BytesSent: (s.bytes as { out: number }).out,
        BytesReceived: (s.bytes as { in: number }).in,
      };
    };
    // Decisions by verdict and reason for /metrics (/stats has the verdict totals).
    const decisionCounts = runtime === undefined ? undefined : new DecisionCounts();
    if (decisionCounts !== undefined) closers.push(runtime!.runtime.egress.decisions.subscribe(decisionCounts.record));
    const metrics = (): string =>
      renderExposition(networkMetrics({ stats: stats(), rss: process.memoryUsage.rss(), ...(decisionCounts ? { decisions: decisionCounts } : {}) }));
    const askGate = runtime?.runtime.ask;
    routes = new NetworkRoutes(
      { forwards, leases, stats, guestConnected, dnsZones: zones, metrics, ...(allowlistControl ? { allowlist: allowlistControl } : {}), ...(askGate ? { ask: askGate } : {}), ...(runtime?.injectApi ? { inject: runtime.injectApi } : {}) },
      log,
      { maxBodyBytes: limits.apiMaxBodyBytes, onTooLarge: (fields) => onLimit('apiBody', fields) },
    );

    closers.push(() => link.close());
    const urls = link instanceof TapFdLink ? link.start() : await link.listen(config.listen);

    const theRoutes = routes;
    return {
      name: options.name,
      config,
      listen: urls,
      stack: theStack,
      forwards,
      allowlist: allowlistControl,
      decisions: runtime?.runtime.egress.decisions,
      routes: theRoutes,
      stats,
      notify: (msg) => notifier.send(msg),
      leases,
      guestConnected,
      get state() {
        return state;
      },
      get failure() {
        return failure;
      },
      ended,
      close,
    };
  } catch (e) {
    await closeAll();
    throw e;
  }
}

const RESOLVED = Promise.resolve();
/**
 * Runs fn once the current callback is done (a V8 microtask): over a TAP,
 * where deferred output needs no coalescing. Not queueMicrotask, which wraps
 * each call in an AsyncResource and a bound function (one per host read).
 * fn must not throw (the TimerDriver's work is guarded by its fault handler).
 */
function soonAfterThisCallback(fn: () => void): void {
  void RESOLVED.then(fn);
}

/**
 * A fault injected on purpose, for the tests that prove a fault stays inside
 * its network: with MOAT_TEST_FAULT=<marker> in the environment, a guest
 * frame containing <marker> (at least 8 bytes) throws inside the network's
 * input. Read once at start; without the variable there is no hook and no cost.
 */
function testFaultHook(): ((frames: readonly Uint8Array[]) => void) | undefined {
  const marker = process.env['MOAT_TEST_FAULT'];
  if (marker === undefined || marker.length < 8) return undefined;
  const needle = Buffer.from(marker);
  return (frames) => {
    for (const f of frames) {
      if (Buffer.from(f.buffer, f.byteOffset, f.byteLength).includes(needle)) throw new Error('injected fault (MOAT_TEST_FAULT)');
    }
  };
}

/**
 * Resolves every allowed host (fail closed) and builds the allowlist's DNS
 * and egress policy; nothing is opened before. The decision log file, if
 * any, is opened here too, so a bad path stops start-up.
 */
async function startAllowlist(
  config: ServeConfig,
  d: ServeDeps,
  log: Logger,
  signal: AbortSignal | undefined,
  network: string | undefined,
  askCallback: AskCallback | undefined,
): Promise<{ runtime: AllowlistRuntime; file: RotatingFile | undefined; injector: Injector | undefined; injectApi: InjectControl | undefined; close(): Promise<void> }> {
  // The CA first: a bad --state-dir stops start-up before anything is resolved or opened. The X.509 code loads only with --inject.
  const injectModule = config.inject === undefined ? undefined : await import('./inject/index.js');
  const injector = config.inject === undefined || injectModule === undefined ? undefined : injectModule.startInjector(config.inject, log);
  const resolver = d.createDnsResolver(config.resolvers);
  const started = d.clock.now();
  const logLimits = config.logLimits ?? DEFAULT_LOG_LIMITS;
  const sink = config.decisionLog === undefined ? undefined : await openDecisionLog(config.decisionLog, logLimits.decisionLogRotation, decisionFileError(log));
  let runtime: AllowlistRuntime;
  try {
    runtime = await AllowlistRuntime.start(
      {
        rules: config.allow,
        resolver,
        gatewayIpv4: formatIPv4(config.gatewayIp),
        hostAliasIpv4: formatIPv4(config.hostIp),
        sinkhole: config.sinkhole,
        guestSubnet: { network: formatIPv4(config.network), prefix: config.prefix },
        // IPv6 on the link: AAAA zones and pins, the guest's prefix and IPv6 host alias in the policy (issue 19).
        ...(config.ipv6 === undefined ? {} : {
          ipv6: { guestPrefix: { network: formatIPv6(config.ipv6.prefix), prefix: 64 }, gatewayIpv6: formatIPv6(config.ipv6.gatewayIp), hostAliasIpv6: formatIPv6(config.ipv6.hostIp) },
        }),
        admitResolved: config.admitResolved,
        hostAliasExempt: config.allowHostAlias,
        allowLinkLocal: config.allowLinkLocal,
        egress: { ...DEFAULT_EGRESS_OPTIONS, peekTimeoutMs: config.peekTimeoutMs, mode: config.mode, refusalDetails: config.refusalDetails ?? false, refuseEch: config.refuseEch, ...(injector ? { injector } : {}) },
        ...(config.liveLookups ? { liveLookups: config.liveLookups } : {}),
        ...(config.traffic ? { budgets: config.traffic.budgets, budgetDirection: config.traffic.budgetDirection } : {}),
        ...(config.ask ? { ask: { settings: config.ask, ...(askCallback ? { callback: askCallback } : {}) } } : {}),
        now: () => d.clock.now(),
        ...(sink ? { decisionSink: sink } : {}),
        decisionBudget: logLimits.budget,
        ...(network !== undefined ? { network } : {}),
        ...(signal ? { signal } : {}),
      },
      log,
    );
  } catch (e) {
    sink?.end();
    throw e;
  }
  log.info('allowlist zones ready', { zones: zoneNames(runtime.zoneTable), resolveMs: Math.round(d.clock.now() - started) });
  if (config.mode === 'audit') log.warn('audit mode: nothing is refused (but 169.254.0.0/16); flows the rules refuse are logged as would-block');
  return {
    runtime,
    file: sink,
    injector,
    injectApi: injector === undefined ? undefined : injectModule?.injectControl(injector),
    close: async () => {
      await runtime.close();
      if (sink) await new Promise<void>((resolve) => sink.end(resolve));
    },
  };
}

/** What the API's /allowlist routes drive. */
function allowlistControlFor(runtime: AllowlistRuntime, nat: NatLike, log: Logger, notifier: Notifier): AllowlistControl {
  return {
    rules: () => runtime.ruleTexts,
    zones: () => zoneNames(runtime.zoneTable),
    budgets: () => runtime.budgets.stats(),
    reload: async (texts, drop, budgets) => {
      let result;
      try {
        result = await runtime.reload(texts, budgets);
      } catch (e) {
        log.warn('allowlist reload refused; the running allowlist is unchanged', { allow: texts, error: e });
        throw e;
      }
      const dropped = drop ? nat.dropRefusedFlows() : 0;
      log.info('allowlist reloaded', { allow: result.rules, zones: result.zones, dropped });
      notifier.send({ notification_type: 'allowlist_reloaded', rules: result.rules.length, dropped });
      return { ...result, dropped };
    },
  };
}

/** Stack drop reasons that are refusals by a limit, and the limit's name in /stats.limits. */
const STACK_LIMIT_DROPS: Readonly<Record<string, string>> = {
  'tcp:syn-backlog-full': 'halfOpen',
  'tcp:connection-limit': 'tcpFlows',
  'frag:limit': 'fragments',
};

/**
 * /stats.limits: each limit's bound, what it holds now and how much it
 * refused (the newest work, as counted where it was refused).
 */
function limitStats(limits: Limits, stack: NetStack, nat: Partial<NatStats>, api: { tooLarge: number } | undefined): Record<string, unknown> {
  const drops = stack.stats.drops;
  const tables = (stack as Partial<{ tableSizes(): { fragmentDatagrams: number; fragmentBytes: number } }>).tableSizes?.();
  return {
    tcpFlows: {
      max: limits.maxTcpFlows,
      current: (nat.tcpFlows ?? 0) + (nat.held ?? 0),
      refused: (nat.tcp?.limitRefused ?? 0) + (drops['tcp:connection-limit'] ?? 0),
    },
    halfOpen: { max: limits.maxHalfOpen, current: stack.stats.tcpHeldSyns, refused: drops['tcp:syn-backlog-full'] ?? 0 },
    timeWait: { max: limits.maxTimeWait, current: stack.stats.tcpTimeWait ?? 0, recycled: stack.stats.tcpTimeWaitRecycled ?? 0 },
    udpFlows: { max: limits.maxUdpFlows, current: nat.udpFlows ?? 0, refused: nat.udp?.refused ?? 0, evictedIdle: nat.udp?.evicted ?? 0 },
    buffers: { perFlow: limits.flowBufferBytes, ...(nat.buffers ?? { max: limits.totalBufferBytes }) },
    fragments: {
      maxBytes: limits.maxFragmentBytes,
      maxDatagrams: limits.maxFragmentDatagrams,
      datagrams: tables?.fragmentDatagrams ?? 0,
      bytes: tables?.fragmentBytes ?? 0,
      refused: drops['frag:limit'] ?? 0,
    },
    peek: { max: limits.maxHeldConnections, current: nat.held ?? 0, bytes: nat.heldBytes ?? 0, refused: nat.heldRefused ?? 0 },
    dnsInFlight: { max: limits.dnsMaxInFlight, current: nat.dnsInFlight ?? 0, refused: nat.dnsRefused ?? 0 },
    // UDP flows held for the name in their QUIC Initial (with --allow; src/nat/quic-flows.ts).
    ...(nat.quic ? { quic: { max: nat.quic.max, current: nat.quic.held, bytes: nat.quic.heldBytes, refused: nat.quic.heldRefused } } : {}),
    apiBody: { max: limits.apiMaxBodyBytes, refused: api?.tooLarge ?? 0 },
    ...(nat.icmpEcho
      ? { icmpEcho: { max: nat.icmpEcho.max, current: nat.icmpEcho.current, perSec: limits.icmpEchoPerSec, refused: nat.icmpEcho.outstandingFull + nat.icmpEcho.rateLimited } }
      : {}),
  };
}

function collectStats(
  stack: NetStack,
  link: GuestLink,
  nat: NatLike,
  pcap: PcapWriter | undefined,
  forwards: PortForwards,
): Record<string, unknown> {
  const s = stack.stats;
  const l = link.stats;
  const drops: Record<string, number> = { ...s.drops };
  if (l.framingErrors > 0) drops['link:framing-error'] = l.framingErrors;
  if (l.outputDroppedBackpressure > 0) drops['link:guest-queue-full'] = l.outputDroppedBackpressure;
  if (l.outputDroppedNoGuest > 0) drops['link:no-guest'] = l.outputDroppedNoGuest;
  if (l.outputRejected > 0) drops['link:rejected-by-device'] = l.outputRejected;
  for (const [reason, n] of Object.entries(l.inputDropped ?? {})) drops[reason] = n;
  return {
    frames: { in: l.framesIn, out: l.framesOut },
    bytes: { in: l.bytesIn, out: l.bytesOut },
    drops,
    flows: { tcpConnections: s.tcpConnections, tcpHeldSyns: s.tcpHeldSyns, tcpTimeWait: s.tcpTimeWait ?? 0, forwards: forwards.list().length },
    link: { ...l },
    stack: { ...s, drops: { ...s.drops } },
    nat: nat.stats(),
    ...(pcap === undefined ? {} : { pcap: { file: pcap.path, ...pcap.stats } }),
  };
}

/** The real forwarder (src/forwarder.ts); forwarded connections come from the gateway's address. */
function createPortForwarder(ctx: PortForwardsContext): PortForwards {
  const fwd = new PortForwarder({ gatewayIp: ctx.config.gatewayIp, gatewayIp6: ctx.config.ipv6?.gatewayIp }, ctx.log, ctx.nat);
  fwd.attach(ctx.stack);
  return fwd;
}

/** Stands in where no forwarding is wanted (tests, embedders): lists nothing, refuses every expose. */
export class UnavailablePortForwards implements PortForwards {
  async expose(spec: ForwardSpec): Promise<void> {
    throw new ForwardError('invalid', `port forwarding is not available in this build (${spec.local})`);
  }
  async unexpose(key: ForwardKey): Promise<void> {
    throw new ForwardError('not-found', `no forward for ${key.local}/${key.protocol}`);
  }
  list(): ForwardSpec[] {
    return [];
  }
  async close(): Promise<void> {}
}

/** An Ethernet frame's source MAC as text (bytes 6..11). */
function sourceMac(frame: Uint8Array): string {
  let out = '';
  for (let i = 6; i < 12; i++) out += (i > 6 ? ':' : '') + frame[i]!.toString(16).padStart(2, '0');
  return out;
}
