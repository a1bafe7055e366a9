/**
 * `moat proxy`: the allowlist as an HTTP/SOCKS5 proxy for plain processes.
 *
 *   client --CONNECT / GET http:// --> http-proxy.ts --+
 *   client --SOCKS5 CONNECT ---------> socks5.ts ------+--> targets.ts admit()  (Egress: decideName / decide,
 *                                                      |                        DialTargets, admitResolved)
 *                                                      +--> tunnel.ts (peek SNI/Host, then dial, then pipe)
 *
 * The allowlist is the one AllowlistRuntime `moat serve` runs (rules,
 * pre-resolution that fails closed, pins, policy, decision log, reload);
 * its DNS half is built but unused here (no guest asks it). Dials go
 * through TcpFlowTable.connectFirst, as the NAT's held connections do.
 */
import type { AddressInfo, Server, Socket } from 'node:net';
import type { Resolver } from '../../dns/preresolve.js';
import { NodeDnsResolver } from '../allowlist/resolver.js';
import type { LiveBudgetStats } from '../../dns/live-budget.js';
import { ApiServer, type AllowlistControl } from '../api-server.js';
import { MonotonicClock } from '../clock.js';
import { DEFAULT_SUBNET, formatUpstream, type DnsUpstream } from '../config.js';
import { AllowlistRuntime, zoneNames } from '../egress/allowlist-runtime.js';
import { ClientRates } from '../traffic/client-rates.js';
import { decisionFileError, logStats, openDecisionLog } from '../egress/decision-log.js';
import { DEFAULT_LOG_LIMITS } from '../log-flags.js';
import { DEFAULT_EGRESS_OPTIONS, type Egress } from '../egress/egress.js';
import type { Logger } from '../log.js';
import { TcpFlowTable } from '../nat/tcp-flows.js';
import { UnavailablePortForwards } from '../network.js';
import type { ProxyConfig } from './config.js';
import type { AskCallback, AskGate } from '../egress/ask-gate.js';
import { unansweredAskWarning } from '../egress/ask-flags.js';
import { AuthFailureLog } from './auth.js';
import { exposureWarnings } from './exposure.js';
import { createHttpProxy } from './http-proxy.js';
import { createSocks5Server } from './socks5.js';
import type { Admission } from './targets.js';
import { Tunnel, type Dialer } from './tunnel.js';

export { parseProxyArgs, proxyHelp, PROXY_FLAGS, type ProxyConfig } from './config.js';

export interface ProxyDeps {
  createDnsResolver(servers: readonly DnsUpstream[]): Resolver;
  /** Monotonic milliseconds (pins, log rate limits). */
  now(): number;
  /** How long an 'optional' tunnel (a port a rule names) waits for the client to speak first. */
  serverFirstGraceMs: number;
  connectTimeoutMs: number;
}

const clock = new MonotonicClock();
export const DEFAULT_PROXY_DEPS: ProxyDeps = {
  createDnsResolver: (servers) => new NodeDnsResolver(servers),
  now: () => clock.now(),
  serverFirstGraceMs: 1_000,
  connectTimeoutMs: 10_000,
};

export interface ProxyStats {
  /** Credential injection (--inject): tunnels intercepted, open now, leaf certificates cached and issued. */
  inject?: { intercepted: number; open: number; leaves: number; leavesIssued: number };
  connects: number;
  socksConnects: number;
  requests: number;
  refused: number;
  /** Requests, CONNECTs and SOCKS5 handshakes refused for missing or wrong credentials (--auth-file). */
  authFailures: number;
  /** SOCKS5 UDP ASSOCIATE: associations opened, datagrams the kernel took out / in, dropped (policy, fragments, names), sends that failed. */
  udpAssociations: number;
  udpOut: number;
  udpIn: number;
  udpDropped: number;
  udpSendErrors: number;
  tunnels: { open: number; peeking: number; opened: number; bytesUp: number; bytesDown: number; peekBufferedBytes: number };
  decisions: { allowed: number; blocked: number; wouldBlock: number; suppressedLines: number };
  connections: { http: number; socks: number };
  /** The live-lookup budget of all clients together (dns/live-budget.ts). */
  liveBudget: LiveBudgetStats & { enabled: boolean };
  /** What the main log's and the decision log's budgets wrote and held back (as serve's /stats.logs). */
  logs: Record<string, unknown>;
  /** Ask mode's pending decisions and verdicts (--on-unlisted ask only). */
  ask?: ReturnType<AskGate['stats']>;
}

export interface RunningProxy {
  /** The HTTP proxy address as bound ("127.0.0.1:3128"). */
  readonly http: string;
  /** The SOCKS5 address as bound, or undefined. */
  readonly socks: string | undefined;
  readonly apiSocket: string | undefined;
  /** The lines a user pastes into a shell (export HTTPS_PROXY=... ). */
  readonly envLines: readonly string[];
  readonly allowlist: AllowlistControl;
  /** Every decision as an event; returns the unsubscribe. */
  onDecision(fn: Parameters<Egress['decisions']['subscribe']>[0]): () => void;
  stats(): ProxyStats;
  close(): Promise<void>;
}

/** Placeholder addresses for the runtime's unused DNS half and the policy's guest range (serve's defaults). */
const PROXY_NETWORK = { network: DEFAULT_SUBNET.split('/')[0]!, prefix: Number(DEFAULT_SUBNET.split('/')[1]) };

export async function startProxy(config: ProxyConfig, log: Logger, deps: Partial<ProxyDeps> = {}, options: { signal?: AbortSignal; ask?: AskCallback } = {}): Promise<RunningProxy> {
  const d: ProxyDeps = { ...DEFAULT_PROXY_DEPS, ...deps };
  log.info('moat proxy starting', describeProxyConfig(config));
  const closers: (() => Promise<void> | void)[] = [];
  const closeAll = async (): Promise<void> => {
    while (closers.length > 0) {
      try {
        await closers.pop()!();
      } catch (e) {
        log.error('error while closing', { error: e });
      }
    }
  };
  try {
    const logLimits = config.logLimits ?? DEFAULT_LOG_LIMITS;
    // The CA first: a bad --state-dir stops start-up before anything is resolved or opened.
    const injectModule = config.inject === undefined ? undefined : await import('../inject/index.js');
    const injector = config.inject === undefined || injectModule === undefined ? undefined : injectModule.startInjector(config.inject, log);
    const sink = config.decisionLog === undefined ? undefined : await openDecisionLog(config.decisionLog, logLimits.decisionLogRotation, decisionFileError(log));
    if (sink) closers.push(() => new Promise<void>((r) => sink.end(r)));
    const runtime = await AllowlistRuntime.start(
      {
        rules: config.allow,
        resolver: d.createDnsResolver(config.resolvers),
        gatewayIpv4: '192.168.127.1',
        hostAliasIpv4: '192.168.127.254',
        sinkhole: 'zero',
        guestSubnet: PROXY_NETWORK,
        admitResolved: config.admitResolved,
        hostAliasExempt: false,
        allowLinkLocal: false,
        egress: { ...DEFAULT_EGRESS_OPTIONS, peekTimeoutMs: config.peekTimeoutMs, maxHeld: config.maxConnections, mode: config.mode, refusalDetails: config.refusalDetails, refuseEch: config.refuseEch, ...(injector ? { injector } : {}) },
        liveLookups: config.liveLookups,
        ...(config.traffic ? { budgets: config.traffic.budgets, budgetDirection: config.traffic.budgetDirection } : {}),
        ...(config.ask ? { ask: { settings: config.ask, ...(options.ask ? { callback: options.ask } : {}) } } : {}),
        now: d.now,
        ...(sink ? { decisionSink: sink } : {}),
        decisionBudget: logLimits.budget,
        ...(options.signal ? { signal: options.signal } : {}),
      },
      log,
    );
    closers.push(() => runtime.close());
    if (config.ask !== undefined && config.apiSocket === undefined && options.ask === undefined) log.warn(unansweredAskWarning(config.ask.timeoutMs));
    const egress = runtime.egress;

    const flows = new TcpFlowTable({ maxFlows: Infinity, connectTimeoutMs: d.connectTimeoutMs, perFlowBufferBytes: 256 * 1024 }, log.child({ component: 'proxy' }));
    const dialer: Dialer = { connectFirst: (addresses, port) => flows.connectFirst(addresses, port) };
    const tunnels = new Set<Tunnel>();
    const finished = { opened: 0, bytesUp: 0, bytesDown: 0 };
    const counters = { requests: 0, connects: 0, socksConnects: 0, refused: 0, authFailures: 0, udpAssociations: 0, udpOut: 0, udpIn: 0, udpDropped: 0, udpSendErrors: 0 };
    const tlog = log.child({ component: 'proxy' });
    // Rate limits per client address: every tunnel and forwarded request of one address shares them.
    const clientRates = new ClientRates(config.traffic?.rateEgress, config.traffic?.rateIngress);
    const openTunnel = (client: Socket, a: Extract<Admission, { ok: true }>, head: Uint8Array): void => {
      finished.opened++;
      const rate = clientRates.acquire(client.remoteAddress);
      const t = new Tunnel(client, a, { egress, dialer, log: tlog, serverFirstGraceMs: d.serverFirstGraceMs, rate }, (done) => {
        rate?.release();
        if (!tunnels.delete(done)) return;
        egress.decisions.flowClosed({ proto: 'tcp', dst: done.plan.dst, rule: done.plan.rule ?? null, name: done.plan.name, bytesUp: done.bytesUp, bytesDown: done.bytesDown });
        finished.bytesUp += done.bytesUp;
        finished.bytesDown += done.bytesDown;
      });
      tunnels.add(t);
      t.start(head);
    };
    closers.push(() => {
      for (const t of [...tunnels]) t.destroy();
    });

    const authFailures = new AuthFailureLog(counters, tlog);
    closers.push(() => authFailures.close());
    const core = { egress: () => egress, dialer, log: tlog, openTunnel, counters, auth: config.auth, authFailures, clientRates };
    const { server: httpServer, agents } = createHttpProxy(core, { maxConnections: config.maxConnections, headersTimeoutMs: config.peekTimeoutMs });
    closers.push(() => agents.destroy());
    const httpSockets = track(httpServer);
    const httpAddr = await listen(httpServer, config.listen.host, config.listen.port);
    closers.push(() => closeServer(httpServer, httpSockets));

    let socksSockets: Set<Socket> | undefined;
    let socksAddr: string | undefined;
    if (config.socks !== undefined) {
      const s = createSocks5Server(core, { maxConnections: config.maxConnections, handshakeTimeoutMs: config.peekTimeoutMs });
      const sockets = (socksSockets = track(s));
      socksAddr = await listen(s, config.socks.host, config.socks.port);
      closers.push(() => closeServer(s, sockets));
    }

    const allowlist: AllowlistControl = {
      rules: () => runtime.ruleTexts,
      zones: () => zoneNames(runtime.zoneTable),
      budgets: () => runtime.budgets.stats(),
      reload: async (texts, drop, budgets) => {
        const result = await runtime.reload(texts, budgets);
        let dropped = 0;
        if (drop) {
          // Each tunnel and upstream connection is re-decided as it was admitted (Egress.recheck, one record per refusal); refused ones are closed.
          for (const t of [...tunnels]) if (!t.recheck()) dropped++;
          dropped += agents.dropRefused();
        }
        log.info('allowlist reloaded', { allow: result.rules, dropped });
        return { ...result, dropped };
      },
    };

    const stats = (): ProxyStats => {
      let open = 0;
      let peeking = 0;
      let up = finished.bytesUp;
      let down = finished.bytesDown;
      let buffered = 0;
      for (const t of tunnels) {
        if (t.phase === 'peeking') peeking++;
        else open++;
        up += t.bytesUp;
        down += t.bytesDown;
        buffered += t.bufferedBytes;
      }
      return {
        ...counters,
        tunnels: { open, peeking, opened: finished.opened, bytesUp: up, bytesDown: down, peekBufferedBytes: buffered },
        decisions: { ...egress.decisions.stats },
        liveBudget: { enabled: runtime.liveBudget.enabled, ...runtime.liveBudget.stats },
        connections: { http: httpSockets.size, socks: socksSockets?.size ?? 0 },
        logs: logStats(log, egress.decisions, sink),
        ...(clientRates.enabled ? { rate: clientRates.stats() } : {}),
        ...(runtime.budgets.size > 0 ? { budgets: runtime.budgets.stats() } : {}),
        ...(runtime.ask ? { ask: runtime.ask.stats() } : {}),
        ...(injector ? { inject: injector.stats() } : {}),
      };
    };

    if (config.apiSocket !== undefined) {
      const api = new ApiServer(
        { forwards: new UnavailablePortForwards(), leases: () => [], stats: () => ({ ...stats() }), guestConnected: () => false, allowlist, ...(runtime.ask ? { ask: runtime.ask } : {}), ...(injector && injectModule ? { inject: injectModule.injectControl(injector) } : {}) },
        log,
      );
      closers.push(() => api.close());
      await api.listen(config.apiSocket);
    }

    const envLines = [
      `export HTTPS_PROXY=http://${httpAddr} https_proxy=http://${httpAddr}`,
      `export HTTP_PROXY=http://${httpAddr} http_proxy=http://${httpAddr}`,
      socksAddr !== undefined ? `export ALL_PROXY=socks5h://${socksAddr} all_proxy=socks5h://${socksAddr}` : `export ALL_PROXY=http://${httpAddr} all_proxy=http://${httpAddr}`,
    ];
    const ready: Record<string, unknown> = {
      http: httpAddr,
      socks: socksAddr,
      api: config.apiSocket === undefined ? undefined : `unix://${config.apiSocket}`,
      allow: config.allow.map((r) => r.text),
    };
    const exposure = exposureWarnings(config);
    if (exposure.length > 0) {
      ready['exposure'] = exposure;
      for (const w of exposure) log.warn(w);
    }
    if (config.allowAll) {
      ready['warning'] = 'NO ALLOWLIST (--allow-all): every name and public address is allowed';
      log.warn('moat proxy runs without an allowlist (--allow-all): every name and public address is allowed');
    }
    log.info('moat proxy ready', ready);

    let closing: Promise<void> | undefined;
    return {
      http: httpAddr,
      socks: socksAddr,
      apiSocket: config.apiSocket,
      envLines,
      allowlist,
      onDecision: (fn) => egress.decisions.subscribe(fn),
      stats,
      close: () => {
        closing ??= closeAll().then(() => {
          log.info('moat proxy stopped');
          log.flush?.(); // the main log's last "log lines suppressed" summary
        });
        return closing;
      },
    };
  } catch (e) {
    await closeAll();
    throw e;
  }
}

export function describeProxyConfig(c: ProxyConfig): Record<string, unknown> {
  return {
    listen: `${c.listen.host}:${c.listen.port}`,
    socks: c.socks === undefined ? undefined : `${c.socks.host}:${c.socks.port}`,
    allow: c.allow.map((r) => r.text),
    allowAll: c.allowAll,
    resolvers: c.resolvers.map(formatUpstream),
    admitResolved: c.admitResolved,
    peekTimeoutMs: c.peekTimeoutMs,
    decisionLog: c.decisionLog,
    maxConnections: c.maxConnections,
    api: c.apiSocket,
    listenPublic: c.listenPublic,
    // Where the users come from and how many: never the file's contents.
    auth: c.auth === undefined ? undefined : { file: c.authFile, users: c.auth.size },
    refusalDetails: c.refusalDetails,
    ...(c.logLimits === undefined ? {} : { logLimits: c.logLimits }),
    // Rates and the budget direction need a restart; budgets reload with the rules (SIGHUP, PUT /allowlist).
    ...(c.traffic?.rateEgress === undefined ? {} : { rateEgress: c.traffic.rateEgress }),
    ...(c.traffic?.rateIngress === undefined ? {} : { rateIngress: c.traffic.rateIngress }),
    ...(c.traffic === undefined || c.traffic.budgets.length === 0 ? {} : { budget: c.traffic.budgets, budgetDirection: c.traffic.budgetDirection }),
    ...(c.ask === undefined ? {} : { onUnlisted: 'ask', askTimeoutMs: c.ask.timeoutMs }),
  };
}

function listen(server: Server, host: string, port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host, port }, () => {
      server.off('error', reject);
      const a = server.address() as AddressInfo;
      resolve(a.family === 'IPv6' ? `[${a.address}]:${a.port}` : `${a.address}:${a.port}`);
    });
  });
}

/** The client sockets a listener holds now (for stats and for closing them all). */
function track(server: Server): Set<Socket> {
  const sockets = new Set<Socket>();
  server.on('connection', (s: Socket) => {
    sockets.add(s);
    s.once('close', () => sockets.delete(s));
  });
  return sockets;
}

/** Stops listening and destroys every client socket (server.close alone waits for them). */
function closeServer(server: Server, sockets: Set<Socket>): Promise<void> {
  return new Promise((resolve) => {
    server.close(() => resolve());
    for (const s of sockets) s.destroy();
  });
}

