/**
 * The `moat` command line: picks the subcommand, prints help, turns errors
 * into exit codes (0 ok, 2 usage/config error, 1 runtime error) and shuts the
 * service down cleanly on SIGINT/SIGTERM.
 */
import { PreresolveError } from '../dns/preresolve.js';
import { formatZoneTable } from '../dns/zones.js';
import { NodeDnsResolver } from './allowlist/resolver.js';
import { buildAllowlistTable } from './allowlist/zones.js';
import type { AllowlistControl } from './api-server.js';
import {
  ConfigError,
  describeConfig,
  type ServeConfig,
  explainHelp,
  mainHelp,
  NODE_CONFIG_IO,
  parseExplainArgs,
  parseServeArgs,
  parseZonesArgs,
  serveHelp,
  zonesHelp,
  type ConfigIo,
} from './config.js';
import { hostHelp, parseHostArgs } from './host-config.js';
import type { RunningHost } from './host.js';
import type { LearnIo } from './learn.js';
import { formatIPv4 } from '../netstack/addr.js';
import { createLogger, type Logger, type LogStream } from './log.js';
import { mainLogBudget } from './log-flags.js';
import { serve, type RunningServer, type ServeDeps, type ServeExtras } from './serve.js';
import { parseProxyArgs, proxyHelp, type ProxyConfig } from './proxy/config.js';
import type { ProxyDeps, RunningProxy } from './proxy/index.js';
import type { BudgetSpec } from './traffic/byte-budgets.js';
import { caHelp, parseCaArgs } from './inject/ca-command.js';

// What one command needs is loaded when that command runs: `moat serve`
// starts without the learner (tldts: ~180 ms and ~12 MB), the proxy or the host.
const loadLearn = () => import('./learn.js');
const loadProxy = () => import('./proxy/index.js');
const loadGvproxy = () => import('./gvproxy/run.js');

export const EXIT_OK = 0;
export const EXIT_RUNTIME_ERROR = 1;
export const EXIT_USAGE = 2;

export interface CliIo {
  stdout: LogStream;
  stderr: LogStream;
  config: ConfigIo;
  /** Resolves when the process is asked to stop (SIGINT/SIGTERM). Called at most once per run. */
  stopSignal(): Promise<string>;
  /** Calls `listener` on every request to re-read the config (SIGHUP) until the returned function is called. */
  onReload?(listener: () => void): () => void;
  /** Replaces serve()'s parts (tests: a fake DNS resolver). */
  serveDeps?: Partial<ServeDeps>;
  /** Replaces startProxy()'s parts. */
  proxyDeps?: Partial<ProxyDeps>;
  /** Standard input as text (`moat learn -`); process.stdin when absent. */
  readStdin?: () => Promise<string>;
}

/**
 * Runs the CLI with `args` (without node and the script). For `serve`, the
 * promise settles when the service has stopped. Never throws.
 */
export async function runCli(args: readonly string[], io: CliIo = nodeCliIo()): Promise<number> {
  const [command, ...rest] = args;
  if (command === undefined || command === '--help' || command === '-h') {
    io.stdout.write(mainHelp());
    return command === undefined ? EXIT_USAGE : EXIT_OK;
  }
  if (command === 'help') {
    if (rest[0] === 'serve') io.stdout.write(serveHelp());
    else if (rest[0] === 'zones') io.stdout.write(zonesHelp());
    else if (rest[0] === 'explain') io.stdout.write(explainHelp());
    else if (rest[0] === 'proxy') io.stdout.write(proxyHelp());
    else if (rest[0] === 'learn') io.stdout.write((await loadLearn()).learnHelp());
    else if (rest[0] === 'host') io.stdout.write(hostHelp());
    else if (rest[0] === 'ca') io.stdout.write(caHelp());
    else if (rest[0] === 'gvproxy') io.stdout.write((await loadGvproxy()).gvproxyHelp());
    else io.stdout.write(mainHelp());
    return EXIT_OK;
  }
  if (command === 'serve') return runServe(rest, io);
  if (command === 'zones') return runZones(rest, io);
  if (command === 'explain') return runExplain(rest, io);
  if (command === 'proxy') return runProxy(rest, io);
  if (command === 'learn') return (await loadLearn()).runLearn(rest, learnIo(io));
  if (command === 'host') return runHost(rest, io);
  if (command === 'ca') return runCa(rest, io);
  if (command === 'gvproxy') return (await loadGvproxy()).runGvproxy(rest, io);
  io.stderr.write(`moat: unknown command "${command}" (see moat --help)\n`);
  return EXIT_USAGE;
}

/** An AbortSignal that fires when the process is asked to stop, and that stop's promise. */
function stopping(io: CliIo): { signal: AbortSignal; stopped: Promise<string> } {
  const controller = new AbortController();
  const stopped = io.stopSignal();
  void stopped.then((name) => controller.abort(new Error(`stopped by ${name}`)));
  return { signal: controller.signal, stopped };
}

/** `moat ca [--state-dir DIR]`: the PEM guests must trust for --inject (the CA is created if the directory has none). */
async function runCa(args: readonly string[], io: CliIo): Promise<number> {
  const r = parseCaArgs(args);
  if (r === 'help') {
    io.stdout.write(caHelp());
    return EXIT_OK;
  }
  if (typeof r !== 'object') {
    io.stderr.write(`moat ca: ${r}\n`);
    return EXIT_USAGE;
  }
  try {
    // The X.509 code loads only for this command (and for --inject).
    const { loadOrCreateCa } = await import('./inject/ca.js');
    io.stdout.write(loadOrCreateCa(r.stateDir).certPem);
    return EXIT_OK;
  } catch (e) {
    io.stderr.write(`moat ca: --state-dir: ${(e as Error).message}\n`);
    return EXIT_RUNTIME_ERROR;
  }
}

async function runZones(args: readonly string[], io: CliIo): Promise<number> {
  let parsed;
  try {
    parsed = parseZonesArgs(args, io.config);
  } catch (e) {
    io.stderr.write(`moat zones: ${(e as Error).message}\n`);
    return e instanceof ConfigError ? EXIT_USAGE : EXIT_RUNTIME_ERROR;
  }
  if (parsed.kind === 'help') {
    io.stdout.write(zonesHelp());
    return EXIT_OK;
  }
  const c = parsed.config;
  const { signal } = stopping(io);
  try {
    const createResolver = io.serveDeps?.createDnsResolver ?? ((servers) => new NodeDnsResolver(servers));
    const table = await buildAllowlistTable({
      rules: c.allow,
      resolver: createResolver(c.resolvers),
      gatewayIpv4: formatIPv4(c.gatewayIp),
      hostAliasIpv4: formatIPv4(c.hostIp),
      sinkhole: c.sinkhole,
      signal,
    });
    io.stdout.write(`${formatZoneTable(table)}\n`);
    return EXIT_OK;
  } catch (e) {
    // PreresolveError's message names every host that failed and why.
    const message = e instanceof PreresolveError || !signal.aborted ? (e as Error).message : `cancelled: ${(signal.reason as Error).message}`;
    io.stderr.write(`moat zones: ${message}\n`);
    return EXIT_RUNTIME_ERROR;
  }
}

/** `moat explain` exits 3 for "would be blocked", so scripts can branch on it. */
export const EXIT_BLOCKED = 3;

async function runExplain(args: readonly string[], io: CliIo): Promise<number> {
  let parsed;
  try {
    parsed = parseExplainArgs(args, io.config);
  } catch (e) {
    io.stderr.write(`moat explain: ${(e as Error).message}\n`);
    return e instanceof ConfigError ? EXIT_USAGE : EXIT_RUNTIME_ERROR;
  }
  if (parsed.kind === 'help') {
    io.stdout.write(explainHelp());
    return EXIT_OK;
  }
  const c = parsed.config;
  const { signal } = stopping(io);
  try {
    const createResolver = io.serveDeps?.createDnsResolver ?? ((servers) => new NodeDnsResolver(servers));
    const { explain } = await import('./explain.js');
    const result = await explain(c, createResolver(c.resolvers), signal);
    io.stdout.write(`${result.lines.join('\n')}\nresult       ${result.allowed ? 'allowed' : 'blocked'}\n`);
    return result.allowed ? EXIT_OK : EXIT_BLOCKED;
  } catch (e) {
    io.stderr.write(`moat explain: ${(e as Error).message}\n`);
    return EXIT_RUNTIME_ERROR;
  }
}

async function runServe(args: readonly string[], io: CliIo): Promise<number> {
  let parsed;
  try {
    parsed = parseServeArgs(args, io.config);
  } catch (e) {
    if (e instanceof ConfigError) {
      io.stderr.write(`moat serve: ${e.message}\n`);
      return EXIT_USAGE;
    }
    io.stderr.write(`moat serve: ${(e as Error).message}\n`);
    return EXIT_RUNTIME_ERROR;
  }
  if (parsed.kind === 'help') {
    io.stdout.write(serveHelp());
    return EXIT_OK;
  }
  const config = parsed.config;
  const log: Logger = createLogger({ level: config.logLevel, format: config.logFormat, stream: io.stderr, budget: mainLogBudget(config) });
  return serveUntilStopped(config, args, io, log);
}

/**
 * Starts serve() and runs it until SIGINT/SIGTERM (or a lost --tap-fd link),
 * with SIGHUP reloads; `moat serve` and `moat gvproxy` share it. `started`
 * runs once the service is up (gvproxy mode starts its ssh forwards there).
 */
export async function serveUntilStopped(
  config: ServeConfig,
  args: readonly string[],
  io: CliIo,
  log: Logger,
  extras: ServeExtras = {},
  started?: (server: RunningServer) => void,
): Promise<number> {
  // Asked before start-up: a SIGINT while allowed hosts are being resolved aborts that.
  const stop = stopping(io);
  let server: RunningServer;
  try {
    server = await serve(config, log, io.serveDeps ?? {}, { ...extras, signal: stop.signal });
  } catch (e) {
    if (stop.signal.aborted && !(e instanceof PreresolveError)) log.error('moat start-up cancelled', { reason: stop.signal.reason });
    else log.error('moat failed to start', { error: e });
    return EXIT_RUNTIME_ERROR;
  }
  started?.(server);
  // SIGHUP: re-read --config and apply what can change live (the allowlist), one reload at a time.
  let running = config;
  let reloading = Promise.resolve();
  const offReload = io.onReload?.(() => {
    reloading = reloading.then(async () => {
      running = await reloadServeConfig(args, io, server, running, log);
    });
  });
  // A --tap-fd link whose device disappeared ends the run (a supervisor restarts Moat with a new TAP).
  const ended = await Promise.race([stop.stopped.then((signal) => ({ signal })), server.linkLost.then((lost) => ({ lost }))]);
  offReload?.();
  const signal = 'signal' in ended ? ended.signal : undefined;
  log.info('shutting down: refusing new guests and flows, closing every flow', 'signal' in ended ? { signal } : { linkLost: ended.lost });
  // Drain within a bound: listeners close first, then every flow is reset and every host socket closed.
  const closed = await Promise.race([
    server.close().then(() => true),
    new Promise<false>((r) => setTimeout(() => r(false), SHUTDOWN_TIMEOUT_MS).unref()),
  ]);
  if (!closed) {
    log.error('shutdown did not finish in time; exiting anyway', { timeoutMs: SHUTDOWN_TIMEOUT_MS });
    return EXIT_RUNTIME_ERROR;
  }
  return 'lost' in ended ? EXIT_RUNTIME_ERROR : EXIT_OK;
}

/** `moat host`: the daemon runs until SIGINT/SIGTERM, then closes every network. */
async function runHost(args: readonly string[], io: CliIo): Promise<number> {
  let parsed;
  try {
    parsed = parseHostArgs(args, io.config);
  } catch (e) {
    io.stderr.write(`moat host: ${(e as Error).message}\n`);
    return e instanceof ConfigError ? EXIT_USAGE : EXIT_RUNTIME_ERROR;
  }
  if (parsed.kind === 'help') {
    io.stdout.write(hostHelp());
    return EXIT_OK;
  }
  const config = parsed.config;
  const log: Logger = createLogger({ level: config.logLevel, format: config.logFormat, stream: io.stderr });
  const stop = stopping(io);
  let host: RunningHost;
  try {
    const { startHost } = await import('./host.js');
    host = await startHost(config, log, {
      configIo: io.config,
      faultScope: true,
      // Each network logs on the same stream with a budget of its own (its log-* settings).
      networkLogger: (name, c) =>
        createLogger({ level: config.logLevel, format: config.logFormat, stream: io.stderr, budget: mainLogBudget(c) }).child({ network: name }),
      ...(io.serveDeps ? { deps: io.serveDeps } : {}),
    });
  } catch (e) {
    log.error('moat host failed to start', { error: e });
    return EXIT_RUNTIME_ERROR;
  }
  // An exception in a network's host-socket callbacks closes that network, not the daemon.
  const uninstall = (await import('./fault-scope.js')).installFaultRouter(log);
  const signal = await stop.stopped;
  uninstall();
  log.info('shutting down: closing every network', { signal, networks: host.count() });
  const closed = await Promise.race([
    host.close().then(() => true),
    new Promise<false>((r) => setTimeout(() => r(false), SHUTDOWN_TIMEOUT_MS).unref()),
  ]);
  if (!closed) {
    log.error('shutdown did not finish in time; exiting anyway', { timeoutMs: SHUTDOWN_TIMEOUT_MS });
    return EXIT_RUNTIME_ERROR;
  }
  return EXIT_OK;
}

/** How long SIGTERM/SIGINT may take to close everything before the process leaves anyway. */
export const SHUTDOWN_TIMEOUT_MS = 5_000;

/**
 * SIGHUP: parses the same command line again (so the --config file is read
 * afresh) and applies what can change while running. Fail closed: a file
 * that does not parse, a rule that is invalid, a host that does not resolve
 * leaves the running configuration in place, and the log says why. The
 * allowlist is reloaded (AllowlistRuntime.reload, as PUT /allowlist);
 * turning the allowlist on or off, and every other setting, needs a restart:
 * such changes are logged as "restart needed", never silently ignored.
 * Returns the configuration now running.
 */
export async function reloadServeConfig(args: readonly string[], io: CliIo, server: RunningServer, current: ServeConfig, log: Logger): Promise<ServeConfig> {
  return reloadAllowlistFromConfig(args, current, log, {
    parse: () => {
      const parsed = parseServeArgs(args, io.config);
      return parsed.kind === 'config' ? parsed.config : undefined;
    },
    describe: describeConfig,
    control: server.allowlist,
  });
}

/**
 * The SIGHUP reload both commands share: re-parse the command line (the
 * --config file read afresh), reload the allowlist if its rules changed and
 * the service runs one, name every other changed setting as "restart
 * needed". Fail closed: any error leaves the running configuration.
 */
async function reloadAllowlistFromConfig<C extends { allow: readonly { text: string }[]; traffic?: { budgets: BudgetSpec[] } | undefined }>(
  args: readonly string[],
  current: C,
  log: Logger,
  how: { parse(): C | undefined; describe(c: C): Record<string, unknown>; control: AllowlistControl | undefined },
): Promise<C> {
  if (!args.some((a) => a === '--config' || a.startsWith('--config='))) {
    log.warn('SIGHUP: no --config file to re-read; nothing changed');
    return current;
  }
  let next: C | undefined;
  try {
    next = how.parse();
  } catch (e) {
    log.warn('config reload refused: the running configuration is unchanged', { error: (e as Error).message });
    return current;
  }
  if (next === undefined) return current;
  const before = how.describe(current);
  const after = how.describe(next);
  // The rules and their byte budgets reload live; everything else needs a restart.
  const restartNeeded = [...new Set([...Object.keys(before), ...Object.keys(after)])].filter(
    (k) => k !== 'allow' && k !== 'budget' && JSON.stringify(before[k]) !== JSON.stringify(after[k]),
  );
  const rulesNext = next.allow.map((r) => r.text);
  const budgetsNext = next.traffic?.budgets ?? [];
  let applied = current;
  const budgetsChanged = JSON.stringify(current.traffic?.budgets ?? []) !== JSON.stringify(budgetsNext);
  if (JSON.stringify(current.allow.map((r) => r.text)) !== JSON.stringify(rulesNext) || budgetsChanged) {
    if (how.control === undefined || rulesNext.length === 0) {
      // Switching the allowlist on, or off (everything open), is a different service: never done live.
      restartNeeded.push('allow');
    } else {
      try {
        await how.control.reload(rulesNext, false, budgetsNext);
        applied = { ...current, allow: next.allow, ...(next.traffic === undefined ? {} : { traffic: { ...(current.traffic ?? next.traffic), budgets: budgetsNext } }) };
      } catch (e) {
        log.warn('config reload refused: the running allowlist is unchanged', { error: (e as Error).message });
        return current;
      }
    }
  }
  if (restartNeeded.length > 0) {
    log.warn('config reload: these settings change only with a restart; they keep their running values', { restartNeeded });
  }
  log.info('config reloaded', { allowlistReloaded: applied !== current, restartNeeded });
  return applied;
}

/** `moat learn` reads files through the CLI's config reader (tests fake it) and stdin for "-". */
function learnIo(io: CliIo): LearnIo {
  return {
    stdout: io.stdout,
    stderr: io.stderr,
    readFile: async (path) => io.config.readFile(path),
    readStdin: io.readStdin ?? readProcessStdin,
  };
}

async function readProcessStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

async function runProxy(args: readonly string[], io: CliIo): Promise<number> {
  let parsed;
  try {
    parsed = parseProxyArgs(args, io.config);
  } catch (e) {
    io.stderr.write(`moat proxy: ${(e as Error).message}\n`);
    return e instanceof ConfigError ? EXIT_USAGE : EXIT_RUNTIME_ERROR;
  }
  if (parsed.kind === 'help') {
    io.stdout.write(proxyHelp());
    return EXIT_OK;
  }
  const config = parsed.config;
  const log: Logger = createLogger({ level: config.logLevel, format: config.logFormat, stream: io.stderr, budget: mainLogBudget(config) });
  const stop = stopping(io);
  let proxy: RunningProxy;
  try {
    const createDnsResolver = io.proxyDeps?.createDnsResolver ?? io.serveDeps?.createDnsResolver;
    const { startProxy } = await loadProxy();
    proxy = await startProxy(config, log, { ...io.proxyDeps, ...(createDnsResolver ? { createDnsResolver } : {}) }, { signal: stop.signal });
  } catch (e) {
    if (stop.signal.aborted && !(e instanceof PreresolveError)) log.error('moat proxy start-up cancelled', { reason: stop.signal.reason });
    else log.error('moat proxy failed to start', { error: e });
    return EXIT_RUNTIME_ERROR;
  }
  // The lines a user pastes go to stdout, apart from the log on stderr.
  io.stdout.write(`${proxy.envLines.join('\n')}\n`);
  // SIGHUP: as for serve, the allowlist in --config is reloaded (fail closed); other changes need a restart.
  let running = config;
  let reloading = Promise.resolve();
  const offReload = io.onReload?.(() => {
    reloading = reloading.then(async () => {
      running = await reloadProxyConfig(args, io, proxy, running, log);
    });
  });
  const signal = await stop.stopped;
  offReload?.();
  log.info('shutting down', { signal });
  await proxy.close();
  return EXIT_OK;
}

/** SIGHUP for `moat proxy`: re-reads --config; only the allowlist changes live. Returns the configuration now running. */
export async function reloadProxyConfig(args: readonly string[], io: CliIo, proxy: RunningProxy, current: ProxyConfig, log: Logger): Promise<ProxyConfig> {
  return reloadAllowlistFromConfig(args, current, log, {
    parse: () => {
      const parsed = parseProxyArgs(args, io.config);
      return parsed.kind === 'config' ? parsed.config : undefined;
    },
    describe: (await loadProxy()).describeProxyConfig,
    // --allow-all runs without rules: adding some is a different proxy (restart).
    control: current.allowAll ? undefined : proxy.allowlist,
  });
}

function nodeCliIo(): CliIo {
  return {
    stdout: process.stdout,
    stderr: process.stderr,
    config: NODE_CONFIG_IO,
    stopSignal: () =>
      new Promise((resolve) => {
        const onSignal = (signal: NodeJS.Signals): void => {
          process.off('SIGINT', onSignal);
          process.off('SIGTERM', onSignal);
          // A second signal while closing means "now": leave without waiting.
          process.once('SIGINT', () => process.exit(EXIT_RUNTIME_ERROR));
          process.once('SIGTERM', () => process.exit(EXIT_RUNTIME_ERROR));
          resolve(signal);
        };
        process.once('SIGINT', onSignal);
        process.once('SIGTERM', onSignal);
      }),
    onReload: (listener) => {
      const onHup = (): void => listener();
      process.on('SIGHUP', onHup);
      return () => process.off('SIGHUP', onHup);
    },
  };
}

/** Entry point for bin/moat.mjs: runs the CLI and sets the exit code. */
export async function main(): Promise<void> {
  const code = await runCli(process.argv.slice(2));
  process.exitCode = code;
  // A clean shutdown closes every handle; anything left (a straggling host socket) must not keep us alive.
  if (['serve', 'proxy', 'host', 'gvproxy'].includes(process.argv[2] ?? '')) setTimeout(() => process.exit(code), 2000).unref();
}
