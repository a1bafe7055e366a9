/**
 * `moat gvproxy [gvproxy's flags]`: gvproxy's command line (src/gvproxy/
 * flags.ts, config.ts) run as `moat serve` with gvproxy's extras: the API on
 * every -listen/-services address, gvproxy's DNS zones
 * (containers.internal., docker.internal.), the -ssh-port forward, the
 * -forward-sock ssh forwards, -pid-file and -log-file. Loaded only when the
 * command runs.
 */
import { formatIPv4 } from '../../netstack/addr.js';
import { ConfigError } from '../config.js';
import { EXIT_OK, EXIT_RUNTIME_ERROR, EXIT_USAGE, serveUntilStopped, type CliIo } from '../cli.js';
import { gvproxyDefaultZones } from '../local-zones.js';
import { createLogger, type Logger } from '../log.js';
import { mainLogBudget } from '../log-flags.js';
import { parseGvproxyArgs } from './config.js';
import { openLogFile, writePidFile, type LogFile, type PidFile } from './files.js';
import { gvproxyUsage } from './flags.js';
import { SshSocketForwarder, type SshForwarderOptions } from './ssh-forward.js';

/** The package version, as `-version` prints it. */
const MOAT_VERSION = '0.1.0';

export function gvproxyHelp(): string {
  return gvproxyUsage();
}

/** Test seams: the ssh program, and the PID written to -pid-file. */
export interface GvproxyRunOptions {
  ssh?: Partial<SshForwarderOptions>;
  pid?: number;
}

export async function runGvproxy(args: readonly string[], io: CliIo, options: GvproxyRunOptions = {}): Promise<number> {
  let parsed;
  try {
    parsed = parseGvproxyArgs(args, io.config);
  } catch (e) {
    io.stderr.write(`moat gvproxy: ${(e as Error).message}\n`);
    return e instanceof ConfigError ? EXIT_USAGE : EXIT_RUNTIME_ERROR;
  }
  if (parsed.kind === 'help') {
    io.stdout.write(gvproxyUsage());
    return EXIT_OK;
  }
  if (parsed.kind === 'version') {
    io.stdout.write(`gvproxy version moat-${MOAT_VERSION} (Moat's gvproxy-compatible command)\n`);
    return EXIT_OK;
  }
  const c = parsed.config;
  let logFile: LogFile | undefined;
  if (c.logFile !== undefined) {
    try {
      logFile = openLogFile(c.logFile);
    } catch (e) {
      io.stderr.write(`moat gvproxy: ${(e as Error).message}\n`);
      return EXIT_RUNTIME_ERROR;
    }
  }
  const log: Logger = createLogger({ level: c.serve.logLevel, format: c.serve.logFormat, stream: logFile?.stream ?? io.stderr, budget: mainLogBudget(c.serve) });
  log.debug('gvproxy command line', { argv: args, serveArgs: c.serveArgs });
  let pidFile: PidFile | undefined;
  try {
    if (c.pidFile !== undefined) pidFile = writePidFile(c.pidFile, options.pid ?? process.pid);
  } catch (e) {
    log.error('moat gvproxy failed to start', { error: (e as Error).message });
    logFile?.close();
    return EXIT_RUNTIME_ERROR;
  }
  const forwarders = c.sshForwards.map((f) => new SshSocketForwarder(f, c.sshPort!, log.child({ component: 'ssh-forward' }), options.ssh));
  try {
    const zones = gvproxyDefaultZones(formatIPv4(c.serve.gatewayIp), formatIPv4(c.serve.hostIp));
    return await serveUntilStopped(c.serve, args, io, log, { apiListen: c.api, dnsZones: zones }, () => {
      for (const f of forwarders) f.start();
      if (forwarders.length > 0) log.info('ssh socket forwards started', { forwards: c.sshForwards.map((f) => `${f.socket} -> ${f.user}@guest:${f.dest}`) });
    });
  } finally {
    await Promise.all(forwarders.map((f) => f.close()));
    pidFile?.remove();
    log.flush?.();
    logFile?.close();
  }
}
