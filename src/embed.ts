/**
 * `moat serve` in-process, for Node programs that launch sandboxes and want
 * the guest network in their own process:
 *
 *   import { serve } from 'moat';
 *   const moat = await serve({ listenQemu: 'unix:///tmp/vm1.sock', allow: ['github.com'] });
 *   moat.onDecision((d) => console.log(d.decision, d.dst, d.name));
 *   await moat.setAllowlist(['github.com', '*.npmjs.org'], { drop: true });
 *   await moat.close();
 *
 * The options ARE the command line's: an object whose keys are `moat serve`
 * flag names (kebab-case as on the command line, or camelCase) or an argv
 * array. Both are turned into arguments and go through the CLI's own parser
 * (src/config.ts parseServeArgs) and the CLI's own serve(), so a flag means
 * the same thing here and there, with the same validation and errors
 * (ConfigError naming the flag).
 */
import type { DecisionLog, DecisionRecord } from './egress/decision-log.js';
import type { ReloadResult } from './egress/allowlist-runtime.js';
import { ConfigError, NODE_CONFIG_IO, parseServeArgs, type ConfigIo, type ServeConfig } from './config.js';
import { createLogger, NULL_LOGGER, type Logger, type LogStream } from './log.js';
import { mainLogBudget } from './log-flags.js';
import { serve as startService, type GuestNetwork, type RunningServer, type ServeDeps } from './serve.js';
import { parseHostArgs } from './host-config.js';
import { startHost, type NetworkSummary } from './host.js';
import type { NetStack } from '../netstack/api.js';
import { parseProxyArgs, type ProxyConfig } from './proxy/config.js';
import { startProxy, type ProxyDeps, type ProxyStats, type RunningProxy } from './proxy/index.js';

import { flagsToArgs, type ServeFlags } from './flags.js';
import { parseBudgetList } from './traffic/flags.js';
import type { BudgetSpec } from './traffic/byte-budgets.js';
import { DEFAULT_ASK_SETTINGS, type AskCallback, type AskSettings } from './egress/ask-gate.js';

export { flagsToArgs, type ServeFlags, type ServeFlagValue } from './flags.js';

export interface EmbedOptions {
  /**
   * Where the service logs: a Logger, or a stream (process.stderr) written
   * with the flags' --log-level and --log-format. Default: nothing is logged.
   */
  log?: Logger | LogStream;
  /** Aborts start-up (the pre-resolution of allowed hosts). */
  signal?: AbortSignal;
  /** Reads the --config file and /etc/resolv.conf; replace it to run without the file system. */
  configIo?: ConfigIo;
  /** Replaces parts of the service (tests: a fake resolver). */
  deps?: Partial<ServeDeps>;
  /**
   * Ask mode's answer: called once per pending decision (a request for a
   * name no rule covers) with { id, name, proto, port, dst, via, since };
   * return 'allow-once', 'allow-name', 'deny' or 'deny-name'. Giving it turns
   * ask mode on (as --on-unlisted ask; the API may answer too, the first
   * answer wins). A throw or no verdict leaves the decision to the API or
   * --ask-timeout-ms.
   */
  ask?: AskCallback;
}

export interface SetAllowlistOptions {
  /** Also reset the open flows the new rules refuse (PUT /allowlist?drop=1). Default false. */
  drop?: boolean;
  /** New byte budgets, `RULE=SIZE[/PERIOD]` as --budget takes them; absent: the current ones are kept. */
  budgets?: readonly string[];
}

/** The budgets of SetAllowlistOptions, parsed (a bad one throws ConfigError naming it). */
function budgetsOption(opts: SetAllowlistOptions): BudgetSpec[] | undefined {
  if (opts.budgets === undefined) return undefined;
  const parsed = parseBudgetList(opts.budgets, 'budgets');
  if (typeof parsed === 'string') throw new ConfigError(parsed);
  return parsed;
}

export interface AllowlistUpdate extends ReloadResult {
  /** Flows reset because the new rules refuse them (0 without `drop`). */
  dropped: number;
}

/** A running service, as serve() returns it. */
export interface MoatServer {
  /** The guest listen addresses as bound (a tcp://...:0 shows its real port). */
  readonly listen: readonly string[];
  /** The control API's unix socket path, if --api was given. */
  readonly apiSocket: string | undefined;
  /** The configuration the flags gave. */
  readonly config: ServeConfig;
  /** The TCP/IP stack (moat/netstack's NetStack). */
  readonly stack: NetStack;
  /** The same counters as GET /stats. */
  stats(): Record<string, unknown>;
  /** The allow rules as written, or undefined when no allowlist runs. */
  rules(): string[] | undefined;
  /**
   * Replaces the allowlist (as PUT /allowlist): parses and resolves the new
   * rules first and changes nothing if any fails (the error names them).
   * Rejects when the service was started without an allowlist.
   */
  setAllowlist(rules: readonly string[], options?: SetAllowlistOptions): Promise<AllowlistUpdate>;
  /**
   * Calls `fn` with every egress decision (allowed, blocked, would-block;
   * TCP, UDP and DNS), unthrottled; returns the unsubscribe function.
   * Without an allowlist there is no policy and no decision: `fn` is never called.
   */
  onDecision(fn: (record: DecisionRecord) => void): () => void;
  /** Stops everything; safe to call more than once. */
  close(): Promise<void>;
}

/** Starts `moat serve` in this process. Rejects with ConfigError for bad flags, or with the start-up error (nothing is left open). */
export async function serve(flags: ServeFlags | readonly string[], options: EmbedOptions = {}): Promise<MoatServer> {
  const args = isArgv(flags) ? [...flags] : flagsToArgs(flags);
  const parsed = parseServeArgs(args, options.configIo ?? NODE_CONFIG_IO);
  if (parsed.kind === 'help') throw new ConfigError('"help" is not a setting (the flags are listed by moat serve --help)');
  const config = withAsk(parsed.config, options.ask);
  const log = loggerFor(options.log, config);
  const running = await startService(config, log, options.deps ?? {}, { ...(options.signal ? { signal: options.signal } : {}), ...(options.ask ? { ask: options.ask } : {}) });
  return wrap(running, config);
}

/** An `ask` callback turns ask mode on (the flags' --ask-timeout-ms, or the default), with the flags' own checks. */
function withAsk<C extends { allow: readonly unknown[]; mode: string; ask?: AskSettings }>(config: C, ask: AskCallback | undefined): C {
  if (ask === undefined || config.ask !== undefined) return config;
  if (config.allow.length === 0) throw new ConfigError('ask: needs allow rules (without them no name is unlisted)');
  if (config.mode === 'audit') throw new ConfigError('ask: cannot be combined with mode audit (audit lets unlisted names through)');
  return { ...config, ask: { ...DEFAULT_ASK_SETTINGS } };
}

function isArgv(flags: ServeFlags | readonly string[]): flags is readonly string[] {
  return Array.isArray(flags);
}

function loggerFor(log: Logger | LogStream | undefined, config: Pick<ServeConfig, 'logLevel' | 'logFormat'> & { logLimits?: ServeConfig['logLimits'] }): Logger {
  if (log === undefined) return NULL_LOGGER;
  if (typeof (log as Logger).child === 'function') return log as Logger;
  return createLogger({ level: config.logLevel, format: config.logFormat, stream: log as LogStream, budget: mainLogBudget(config) });
}

/** The parts of a running service the library exposes, from a `moat serve` or one `moat host` network. */
type Exposed = Pick<RunningServer, 'listen' | 'stack' | 'stats' | 'allowlist' | 'decisions' | 'close'>;

function wrap(running: RunningServer, config: ServeConfig): MoatServer {
  return { ...exposed(running), apiSocket: running.apiSocket, config };
}

function exposed(running: Exposed): Omit<MoatServer, 'apiSocket' | 'config'> {
  const decisions: DecisionLog | undefined = running.decisions;
  return {
    listen: running.listen,
    stack: running.stack,
    stats: () => running.stats(),
    rules: () => running.allowlist?.rules(),
    setAllowlist: async (rules, opts = {}) => {
      const control = running.allowlist;
      if (control === undefined) throw new Error('no allowlist is running: start the service with at least one "allow" rule to change it later');
      return control.reload([...rules], opts.drop === true, budgetsOption(opts));
    },
    onDecision: (fn) => (decisions === undefined ? () => {} : decisions.subscribe(fn)),
    close: () => running.close(),
  };
}

export interface ProxyEmbedOptions extends Omit<EmbedOptions, 'deps'> {
  deps?: Partial<ProxyDeps>;
}

/** A running `moat proxy`, as proxy() returns it. */
export interface MoatProxy {
  /** The HTTP proxy address as bound ("127.0.0.1:3128"). */
  readonly http: string;
  /** The SOCKS5 address as bound, or undefined. */
  readonly socks: string | undefined;
  readonly apiSocket: string | undefined;
  /** The lines a user pastes into a shell (export HTTPS_PROXY=...). */
  readonly envLines: readonly string[];
  readonly config: ProxyConfig;
  stats(): ProxyStats;
  rules(): string[];
  /** As serve's: resolves first, changes nothing on failure. */
  setAllowlist(rules: readonly string[], options?: SetAllowlistOptions): Promise<AllowlistUpdate>;
  onDecision(fn: (record: DecisionRecord) => void): () => void;
  close(): Promise<void>;
}

/**
 * Starts `moat proxy` in this process, with the command line's flags
 * (`{ listen: '127.0.0.1:0', allow: ['github.com'] }` or an argv array),
 * parsed by the CLI's own parser.
 */
export async function proxy(flags: ServeFlags | readonly string[], options: ProxyEmbedOptions = {}): Promise<MoatProxy> {
  const args = isArgv(flags) ? [...flags] : flagsToArgs(flags);
  const parsed = parseProxyArgs(args, options.configIo ?? NODE_CONFIG_IO);
  if (parsed.kind === 'help') throw new ConfigError('"help" is not a setting (the flags are listed by moat proxy --help)');
  const config = withAsk(parsed.config, options.ask);
  const running: RunningProxy = await startProxy(config, loggerFor(options.log, config), options.deps ?? {}, { ...(options.signal ? { signal: options.signal } : {}), ...(options.ask ? { ask: options.ask } : {}) });
  return {
    http: running.http,
    socks: running.socks,
    apiSocket: running.apiSocket,
    envLines: running.envLines,
    config,
    stats: () => running.stats(),
    rules: () => running.allowlist.rules(),
    setAllowlist: async (rules, opts = {}) => running.allowlist.reload([...rules], opts.drop === true, budgetsOption(opts)),
    onDecision: (fn) => running.onDecision(fn),
    close: () => running.close(),
  };
}

export interface HostEmbedOptions {
  /** As serve's: a Logger, or a stream written with --log-level and --log-format. Default: nothing is logged. */
  log?: Logger | LogStream;
  /** Reads /etc/resolv.conf for networks without --dns-upstream; replace it to run without the file system. */
  configIo?: ConfigIo;
  /** Replaces parts of every network (tests: a fake resolver). */
  deps?: Partial<ServeDeps>;
}

/** One network of a host: what serve() gives for its one guest, plus its name and state. */
export interface MoatNetwork extends Omit<MoatServer, 'apiSocket' | 'close'> {
  readonly name: string;
  /** 'running'; 'failed' once a fault inside it closed it (`failure` says why). */
  readonly state: GuestNetwork['state'];
  readonly failure: string | undefined;
  /** DHCP leases (kept after the guest disconnects, until they expire). */
  leases(): { ip: string; mac: string }[];
}

/** A running `moat host`, as host() returns it. */
export interface MoatHost {
  /** The control API's socket, if `api` was given. */
  readonly apiSocket: string | undefined;
  /**
   * Creates a network: `moat serve` settings by flag name plus `name`.
   * Resolves once its guest socket listens. Rejects with NetworkConfigError
   * (`errors` names every bad field), NetworkExistsError for a name in use,
   * or the start-up error; nothing is left open then.
   */
  addNetwork(settings: ServeFlags & { name: string }): Promise<MoatNetwork>;
  /** Closes the network (its socket, every flow) and forgets it; false if there is none by that name. */
  removeNetwork(name: string): Promise<boolean>;
  network(name: string): MoatNetwork | undefined;
  networks(): NetworkSummary[];
  /** Closes every network and the API. */
  close(): Promise<void>;
}

/**
 * Starts `moat host` in this process: `{ api: 'unix:///run/moat.sock',
 * maxNetworks: 100 }` (both optional here) or an argv array. Networks come
 * from addNetwork() or POST /networks.
 */
export async function host(flags: ServeFlags | readonly string[] = {}, options: HostEmbedOptions = {}): Promise<MoatHost> {
  const args = isArgv(flags) ? [...flags] : flagsToArgs(flags);
  const io = options.configIo ?? NODE_CONFIG_IO;
  const parsed = parseHostArgs(args, io, false, 0);
  if (parsed.kind === 'help') throw new ConfigError('"help" is not a setting (the flags are listed by moat host --help)');
  if (parsed.config.workers > 0) throw new ConfigError('--workers: not in-process: host() keeps its networks on this thread (moat host --workers N places them on threads)');
  const hostLog = loggerFor(options.log, parsed.config);
  const stream = options.log !== undefined && typeof (options.log as Logger).child !== 'function' ? (options.log as LogStream) : undefined;
  const started = await startHost(parsed.config, hostLog, {
    configIo: io,
    ...(options.deps ? { deps: options.deps } : {}),
    // Given a stream, each network logs with a budget of its own, as under the CLI.
    ...(stream ? { networkLogger: (name: string, c: ServeConfig) => loggerFor(stream, { ...c, logLevel: parsed.config.logLevel, logFormat: parsed.config.logFormat }).child({ network: name }) } : {}),
  });
  const running = { ...started, networks: started.networks! };
  const wrapNetwork = (n: GuestNetwork): MoatNetwork => ({
    ...exposed(n),
    config: n.config,
    name: n.name!,
    get state() {
      return n.state;
    },
    get failure() {
      return n.failure;
    },
    leases: () => n.leases(),
  });
  return {
    apiSocket: running.apiSocket,
    addNetwork: async (settings) => wrapNetwork(await running.networks.add(settings)),
    removeNetwork: (name) => running.networks.remove(name),
    network: (name) => {
      const n = running.networks.get(name);
      return n === undefined ? undefined : wrapNetwork(n);
    },
    networks: () => running.networks.list(),
    close: () => running.close(),
  };
}
