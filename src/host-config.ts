/**
 * `moat host` configuration: the daemon's own flags (its control API, logs,
 * how many networks it holds), and the body of `POST /networks`, which is a
 * `moat serve` configuration as a JSON object plus a `name`.
 *
 * A network's settings go through the CLI's own parser (parseServeArgs), so
 * a key means what the flag of that name means. Unlike the command line,
 * which stops at the first mistake, a request is answered with every bad
 * field at once: each key is checked on its own, and again together with the
 * keys that are fine, so that a value valid only with another (a forward
 * inside a non-default --subnet) is not reported by mistake.
 */
import {
  ConfigError,
  flagLines,
  getters,
  NODE_CONFIG_IO,
  parseListenUrl,
  parseLogSettings,
  parseServeArgs,
  readFlags,
  SERVE_FLAGS,
  type ConfigIo,
  type FlagDoc,
  type ServeConfig,
} from './config.js';
import { availableParallelism } from 'node:os';
import { flagName, flagsToArgs, type ServeFlags } from './flags.js';
import type { LogFormat, LogLevel } from './log.js';

export interface HostConfig {
  /** The control API's unix socket (the CLI requires one; the library may run without). */
  apiSocket: string | undefined;
  /** Networks held at once; POST /networks beyond it is refused. */
  maxNetworks: number;
  /** Worker threads the networks are placed on (default: defaultWorkers()); 0: all on the API's thread. */
  workers: number;
  logLevel: LogLevel;
  logFormat: LogFormat;
}

export const DEFAULT_MAX_NETWORKS = 256;
export const MAX_WORKERS = 64;
export const MAX_NETWORKS_LIMIT = 10_000;

/**
 * `--workers` when it is not given: one worker per core, so that guests that
 * move data use every core (capped at MAX_WORKERS). On a 1-core machine, 0:
 * a worker there buys no parallelism, only an isolate (~15 MiB measured) and a thread
 * hop for every API request, so the networks stay on the API thread.
 */
export function defaultWorkers(cores: number = availableParallelism()): number {
  return cores <= 1 ? 0 : Math.min(cores, MAX_WORKERS);
}

/** Serve's description of a shared flag. */
function shared(name: string): FlagDoc {
  const doc = SERVE_FLAGS.find((f) => f.name === name);
  if (doc === undefined) throw new Error(`no serve flag --${name}`);
  return doc;
}

export const HOST_FLAGS: readonly FlagDoc[] = [
  {
    name: 'api',
    type: 'string',
    value: 'unix:///PATH',
    default: 'none (required)',
    help: 'The control API (HTTP on a unix socket): POST/GET/DELETE /networks, and each network\'s gvproxy paths under /networks/{name}/. Whoever can connect to it can create networks that listen and write files where Moat may: the socket is made owner-only (mode 0600).',
    example: 'unix:///run/moat/host.sock',
  },
  {
    name: 'max-networks',
    type: 'string',
    value: 'N',
    default: String(DEFAULT_MAX_NETWORKS),
    help: `Networks held at once (1..${MAX_NETWORKS_LIMIT}); POST /networks beyond it answers 503.`,
  },
  {
    name: 'workers',
    type: 'string',
    value: 'N',
    default: `the number of cores (os.availableParallelism(), at most ${MAX_WORKERS}); 0 on a 1-core machine`,
    help: `Place networks on N worker threads (0..${MAX_WORKERS}), the one holding the fewest first, so that guests use every core; the API thread only routes. 0 keeps every network on the API thread (one process, no worker). A worker that dies takes its networks (listed as failed until deleted), not the others. Command line only: host() in-process keeps its networks on the caller's thread.`,
  },
  shared('log-level'),
  shared('log-format'),
  { name: 'help', type: 'boolean', help: 'Show this help.' },
];

export type ParsedHostArgs = { kind: 'help' } | { kind: 'config'; config: HostConfig };

/**
 * Parses `moat host` arguments (without "host" itself). Throws ConfigError.
 * `workersDefault` is --workers when it is not given (host() in-process: 0).
 */
export function parseHostArgs(args: readonly string[], io: ConfigIo = NODE_CONFIG_IO, apiRequired = true, workersDefault: number = defaultWorkers()): ParsedHostArgs {
  // No --config file: the daemon's flags are few, and networks come over the API.
  const raw = readFlags(args, HOST_FLAGS, 'host', io, undefined, HOST_FLAGS);
  if (raw === 'help') return { kind: 'help' };
  const { str } = getters(raw);
  const apiRaw = str('api');
  if (apiRaw === undefined && apiRequired) throw new ConfigError('--api: the control API socket is required (e.g. --api unix:///run/moat/host.sock)');
  const api = apiRaw === undefined ? undefined : parseListenUrl(apiRaw.text, apiRaw.label);
  if (api !== undefined && api.kind !== 'unix') throw new ConfigError(`${apiRaw!.label}: the API listens on a unix socket only (unix:///PATH), got "${apiRaw!.text}"`);
  let maxNetworks = DEFAULT_MAX_NETWORKS;
  const maxRaw = str('max-networks');
  if (maxRaw !== undefined) {
    const n = /^\d{1,6}$/.test(maxRaw.text) ? Number(maxRaw.text) : NaN;
    if (!(n >= 1 && n <= MAX_NETWORKS_LIMIT)) throw new ConfigError(`${maxRaw.label}: must be an integer 1..${MAX_NETWORKS_LIMIT}, got "${maxRaw.text}"`);
    maxNetworks = n;
  }
  let workers = workersDefault;
  const workersRaw = str('workers');
  if (workersRaw !== undefined) {
    const n = /^\d{1,3}$/.test(workersRaw.text) ? Number(workersRaw.text) : NaN;
    if (!(n >= 0 && n <= MAX_WORKERS)) throw new ConfigError(`${workersRaw.label}: must be an integer 0..${MAX_WORKERS}, got "${workersRaw.text}"`);
    workers = n;
  }
  return { kind: 'config', config: { apiSocket: api?.kind === 'unix' ? api.path : undefined, maxNetworks, workers, ...parseLogSettings(raw) } };
}

export function hostHelp(): string {
  return [
    'Usage: moat host --api unix:///PATH [flags]',
    '',
    'A daemon that serves many guests from one process, each on its own network with its own allowlist,',
    'limits and counters. It starts with none; networks are created and removed over the control API:',
    '',
    '  POST   /networks           {"name":"vm1","listen-qemu":"unix:///run/vm1.sock","allow":["github.com"]}',
    '                             the keys are moat serve\'s flags (kebab-case or camelCase); answers 201 once',
    '                             the network\'s socket listens, 400 naming every bad field, 409 for a name in use',
    '  GET    /networks           every network: name, state, listen, guestConnected',
    '  GET    /networks/{name}    one network; a network a fault closed says why (state "failed", failure)',
    '  DELETE /networks/{name}    closes its socket and every flow, frees everything',
    '  /networks/{name}/stats, /services/forwarder/{expose,unexpose,all}, /services/dhcp/leases,',
    '  /allowlist (GET, PUT), /healthz: the moat serve API of that network',
    '',
    'Not in a network\'s settings: api (the host\'s own), config (no file is read for an API client),',
    'tap-fd and tap-vnet-hdr (a TAP handed over by descriptor stays a moat serve feature), log-level and',
    'log-format (the host\'s).',
    '',
    'Flags:',
    ...flagLines(HOST_FLAGS),
    '',
    'Example:',
    '  moat host --api unix:///tmp/moat-host.sock &',
    "  curl --unix-socket /tmp/moat-host.sock -X POST http://moat/networks -d '{\"name\":\"vm1\",\"listen-qemu\":\"unix:///tmp/vm1.sock\"}'",
    '',
    'Networks are placed on worker threads, one per core by default (--workers 0: all on the API thread); the paths',
    'are the same either way (GET /networks says which worker holds each).',
    '',
    'Signals: SIGTERM/SIGINT close every network and exit. Exit status: 0 after a clean shutdown, 2 for a usage error,',
    '1 for a runtime error.',
    '',
  ].join('\n');
}

/** A network's name: it is a path segment and a log field, so a plain token. */
const NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/;

/** Settings a network cannot have under `moat host`, and why. */
const NOT_PER_NETWORK: Readonly<Record<string, string>> = {
  api: "each network's API is /networks/{name}/ on the host's socket",
  config: 'no file is read on behalf of an API client; give the settings themselves',
  'tap-fd': 'a TAP handed over by descriptor is a moat serve feature (moat-shim tap --exec); use listen-qemu',
  'tap-vnet-hdr': 'a TAP handed over by descriptor is a moat serve feature (moat-shim tap --exec); use listen-qemu',
  'icmp-fd': "an API client may not name the daemon's descriptors; the ping socket is a moat serve feature (moat-shim tap --icmp --exec)",
  'log-level': "set for the whole host (moat host --log-level)",
  'log-format': "set for the whole host (moat host --log-format)",
  help: 'not a setting',
};

const SERVE_FLAG_NAMES = new Set(SERVE_FLAGS.map((f) => f.name));

export interface FieldError {
  field: string;
  error: string;
}

/** A POST /networks body that cannot become a network: every bad field, each with why. */
export class NetworkConfigError extends Error {
  constructor(readonly errors: readonly FieldError[]) {
    super(`invalid network: ${errors.map((e) => `${e.field}: ${e.error}`).join('; ')}`);
    this.name = 'NetworkConfigError';
  }
}

export interface NetworkRequest {
  name: string;
  config: ServeConfig;
}

/**
 * A `POST /networks` body (or addNetwork()'s argument) into a name and a
 * validated ServeConfig. Throws NetworkConfigError naming every bad field.
 */
export function parseNetworkRequest(body: unknown, io: ConfigIo = NODE_CONFIG_IO): NetworkRequest {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) {
    throw new NetworkConfigError([{ field: 'body', error: 'expected a JSON object of moat serve settings and a "name"' }]);
  }
  const errors: FieldError[] = [];
  const entries = Object.entries(body as Record<string, unknown>);
  const rawName = (body as Record<string, unknown>)['name'];
  let name = '';
  if (typeof rawName !== 'string' || !NAME_PATTERN.test(rawName)) {
    errors.push({ field: 'name', error: `required: 1-63 letters, digits, "_", "." or "-", starting with a letter or digit; got ${JSON.stringify(rawName) ?? 'nothing'}` });
  } else {
    name = rawName;
  }

  // Each setting by its flag name; unknown and host-wide ones are refused here.
  const settings = new Map<string, { field: string; value: unknown }>();
  for (const [key, value] of entries) {
    if (key === 'name') continue;
    const flag = flagName(key);
    if (NOT_PER_NETWORK[flag] !== undefined) errors.push({ field: key, error: `not a network setting: ${NOT_PER_NETWORK[flag]}` });
    else if (!SERVE_FLAG_NAMES.has(flag)) errors.push({ field: key, error: 'unknown setting (the keys are moat serve flag names: moat serve --help)' });
    else if (settings.has(flag)) errors.push({ field: key, error: `given twice (as "${settings.get(flag)!.field}" too)` });
    else settings.set(flag, { field: key, value });
  }
  if (!settings.has('listen-qemu')) errors.push({ field: 'listen-qemu', error: 'required: where the guest connects (unix:///PATH or tcp://HOST:PORT)' });

  const parse = (keys: readonly string[]): ServeConfig | ConfigError => {
    const flags: Record<string, unknown> = {};
    for (const k of keys) flags[k] = settings.get(k)!.value;
    // A placeholder guest socket, so that a key can be checked without one.
    if (!keys.includes('listen-qemu')) flags['listen-qemu'] = 'unix:///moat-host-check.sock';
    try {
      const parsed = parseServeArgs(flagsToArgs(flags as ServeFlags), io);
      if (parsed.kind !== 'config') return new ConfigError('"help" is not a setting');
      return parsed.config;
    } catch (e) {
      if (e instanceof ConfigError) return e;
      return new ConfigError(e instanceof Error ? e.message : String(e));
    }
  };

  const keys = [...settings.keys()];
  const whole = parse(keys);
  if (!(whole instanceof ConfigError) && errors.length === 0) return { name, config: whole };
  if (whole instanceof ConfigError) {
    // Which keys are wrong: each alone, then each failing one with every key that is fine alone.
    const fine = keys.filter((k) => !(parse([k]) instanceof ConfigError));
    for (const k of keys) {
      if (fine.includes(k)) continue;
      const together = parse([...fine, k]);
      if (together instanceof ConfigError) errors.push({ field: settings.get(k)!.field, error: withoutLabel(together.message, k) });
    }
    // Every key fine alone and with the others, yet not all together: a conflict between them.
    if (errors.length === 0) errors.push({ field: fieldOf(whole.message, settings), error: withoutLabel(whole.message, undefined) });
  }
  throw new NetworkConfigError(errors);
}

/** "--mtu: must be ..." -> "must be ..." (the field is named separately). */
function withoutLabel(message: string, flag: string | undefined): string {
  const m = /^--([a-z0-9-]+): (.*)$/s.exec(message);
  if (m !== null && (flag === undefined || m[1] === flag)) return m[2]!;
  return message;
}

/** The field a cross-field error names ("--forward: ..."), as the client wrote it. */
function fieldOf(message: string, settings: ReadonlyMap<string, { field: string }>): string {
  const m = /^--([a-z0-9-]+):/.exec(message);
  if (m === null) return 'body';
  return settings.get(m[1]!)?.field ?? m[1]!;
}
