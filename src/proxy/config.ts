/**
 * `moat proxy` configuration: the same flag-table pattern as `moat serve`
 * (src/config.ts), and the same allowlist flags parsed by the same helpers,
 * so `--allow`, `--resolver`, `--admit-resolved`, `--peek-timeout-ms` and
 * `--decision-log` mean one thing in both commands.
 *
 * Fail closed: a proxy with no rules would let everything through, so it
 * refuses to start without `--allow` unless `--allow-all` says that is meant
 * (and then the ready line says so in words).
 */
import { isIP } from 'node:net';
import type { Rule } from '../../dns/rules.js';
import type { LogFormat, LogLevel } from '../log.js';
import {
  buildAllowlist,
  ConfigError,
  flagLines,
  getters,
  NODE_CONFIG_IO,
  parseAdmitResolved,
  parseDecisionLog,
  parseInjectFlagsOf,
  parseLiveLookupFlags,
  parseLogSettings,
  parseMode,
  parseAskFlagsOrThrow,
  parseListenUrl,
  parsePeekTimeout,
  parseRefuseEch,
  readFlags,
  SERVE_FLAGS,
  type ConfigIo,
  type DnsUpstream,
  type FlagDoc,
} from '../config.js';
import { parseHostPort } from '../port-forwards.js';
import { LIVE_LOOKUP_FLAG_NAMES, type LiveLookupSettings } from '../allowlist/live-lookup-flags.js';
import { ASK_FLAG_NAMES } from '../egress/ask-flags.js';
import type { AskSettings } from '../egress/ask-gate.js';

const askOf = (ask: AskSettings | undefined): { ask?: AskSettings } => (ask === undefined ? {} : { ask });
import { INJECT_FLAG_NAMES } from '../inject/flags.js';
import type { InjectSettings } from '../inject/interceptor.js';
import { logFlagDocs, parseLogLimits, type LogLimits } from '../log-flags.js';
import { parseTrafficFlags, trafficFlagDocs, type TrafficSettings } from '../traffic/flags.js';
import { ProxyCredentials } from './auth.js';
import { isLoopbackHost } from './exposure.js';

export interface HostPortAddress {
  host: string;
  port: number;
}

export interface ProxyConfig {
  /** The HTTP proxy (CONNECT and absolute-form requests). */
  listen: HostPortAddress;
  /** The SOCKS5 listener, or undefined for none. */
  socks: HostPortAddress | undefined;
  allow: Rule[];
  /** --allow-all: run with no rules (everything but link-local and rebinding answers allowed). */
  allowAll: boolean;
  resolvers: DnsUpstream[];
  admitResolved: string[];
  peekTimeoutMs: number;
  decisionLog: string | undefined;
  /** enforce, or audit: every target goes through and refusals are recorded as would-block. */
  mode: 'enforce' | 'audit';
  /** Refuse tunnels whose ClientHello carries encrypted_client_hello (--refuse-ech). */
  refuseEch: boolean;
  apiSocket: string | undefined;
  /** Client connections each listener holds at once (tunnels, keep-alive clients, handshakes). */
  maxConnections: number;
  /** --listen-public: a listener may be on a non-loopback address. */
  listenPublic: boolean;
  /** --auth-file: the users both listeners require (digests only), or undefined for none. */
  auth: ProxyCredentials | undefined;
  authFile: string | undefined;
  /** --refusal-details: a 403 lists the allow rules. */
  refusalDetails: boolean;
  logLevel: LogLevel;
  logFormat: LogFormat;
  /** The live-lookup budget of this proxy's clients together (--live-lookup-*, --no-live-lookups). */
  liveLookups: LiveLookupSettings;
  /** Ask mode (--on-unlisted ask, --ask-timeout-ms); absent: refuse. */
  ask?: AskSettings;
  /** Credential injection into CONNECT tunnels to declared hosts (--secret, --inject ...); absent = none. */
  inject?: InjectSettings;
  /** The logs' budget and the decision log's rotation (as for serve); DEFAULT_LOG_LIMITS where absent. */
  logLimits?: LogLimits;
  /** Rate limits per client address and byte budgets per rule (--rate-*, --budget); none when absent. */
  traffic?: TrafficSettings;
}

export const DEFAULT_PROXY_LISTEN = '127.0.0.1:3128';
export const DEFAULT_MAX_CONNECTIONS = 1024;

/** Serve's description of a shared flag, with proxy wording where serve's would mislead. */
function shared(name: string, help?: string, defaultText?: string): FlagDoc {
  const doc = SERVE_FLAGS.find((f) => f.name === name);
  if (doc === undefined) throw new Error(`no serve flag --${name}`);
  return { ...doc, ...(help !== undefined ? { help } : {}), ...(defaultText !== undefined ? { default: defaultText } : {}) };
}

export const PROXY_FLAGS: readonly FlagDoc[] = [
  {
    name: 'listen',
    type: 'string',
    value: 'HOST:PORT',
    default: DEFAULT_PROXY_LISTEN,
    help: 'Where the HTTP proxy listens: CONNECT tunnels (HTTPS_PROXY) and absolute-form plain HTTP requests (HTTP_PROXY), keep-alive. Port 0 picks a free port (the ready line names it).',
  },
  {
    name: 'socks',
    type: 'string',
    value: 'HOST:PORT',
    default: 'none',
    help: 'Also serve SOCKS5 here (RFC 1928; username/password, RFC 1929, with --auth-file): CONNECT, and UDP ASSOCIATE whose datagrams go only to addresses an IP/CIDR rule allows. Give clients socks5h:// so that names, not addresses, reach the proxy: an address target needs an IP/CIDR rule.',
    example: '127.0.0.1:1080',
  },
  shared(
    'allow',
    'Allow a destination: HOST, *.DOMAIN (every name below DOMAIN, not DOMAIN itself), IP or CIDR, each with an optional :PORT. A hostname rule without a port allows 80 and 443. Allowed hosts are resolved at start-up (the proxy does not start if one cannot be). Repeatable; required unless --allow-all.',
    'none (the proxy refuses to start without rules unless --allow-all)',
  ),
  {
    name: 'allow-all',
    type: 'boolean',
    default: 'off',
    help: 'Run with no --allow rules: every name and address is allowed (cloud metadata 169.254.0.0/16 and names resolving to private/loopback ranges are still refused). Without --allow and without this flag the proxy refuses to start.',
  },
  shared('resolver'),
  shared('admit-resolved'),
  shared(
    'peek-timeout-ms',
    'After a CONNECT (or SOCKS5 CONNECT) to :443/:80, the tunnel is held until its TLS SNI or HTTP Host has been read and compared with the requested host; a tunnel that names nothing in this long is closed. Nothing is dialed before.',
  ),
  shared('decision-log'),
  shared('refuse-ech', 'Refuse every tunnel whose TLS ClientHello carries encrypted_client_hello (reason "ech"): only the outer SNI could be checked. GREASE ECH looks the same, so clients that send it by default (Chrome) are refused too; see README.'),
  shared(
    'mode',
    'enforce refuses what the rules do not allow; audit lets every target through (cloud metadata 169.254.0.0/16 excepted) and records each one the rules would have refused as "would-block" in the decision log, so `moat learn` can propose an allowlist.',
  ),
  {
    name: 'max-connections',
    type: 'string',
    value: 'N',
    default: String(DEFAULT_MAX_CONNECTIONS),
    help: 'Client connections each listener holds at once (open tunnels, keep-alive clients, handshakes in progress); beyond it new connections are closed at once.',
  },
  {
    name: 'listen-public',
    type: 'boolean',
    default: 'off',
    help: 'Allow --listen / --socks on an address other than loopback (0.0.0.0, a LAN address). Whoever reaches a proxy port egresses through this allowlist as if they were the sandbox: pair it with --auth-file. Without it such an address refuses to start.',
  },
  {
    name: 'auth-file',
    type: 'string',
    value: 'FILE',
    default: 'none (no authentication)',
    help: 'Require a user and password on both listeners: HTTP Proxy-Authorization Basic (407 otherwise; clients take http://USER:PASSWORD@HOST:PORT) and SOCKS5 username/password (RFC 1929). FILE holds USER:PASSWORD lines (# comments); keep it mode 600. Compared in constant time; never logged.',
  },
  shared(
    'refusal-details',
    "A refusal's 403 body also lists the allow rules (for debugging). Off, it names the host, the reason and the decision id only: the rules would tell a client what else it may reach and which wildcards are resolved live.",
  ),
  ...LIVE_LOOKUP_FLAG_NAMES.map((name) => shared(name)),
  ...ASK_FLAG_NAMES.map((name) => shared(name)),
  ...INJECT_FLAG_NAMES.map((name) => shared(name)),
  shared('api', 'Serve the control API on a unix socket: GET /stats, GET /healthz, GET and PUT /allowlist (replace the rules at run time), /decisions/* (--on-unlisted ask).'),
  shared('config', 'Read settings from a JSON file whose keys are these flag names ({"listen": "127.0.0.1:3128", "allow": ["github.com"]}). Flags given on the command line override it.'),
  shared('log-level'),
  shared('log-format'),
  ...logFlagDocs(),
  ...trafficFlagDocs('client address'),
  shared('help'),
];

export type ParsedProxyArgs = { kind: 'help' } | { kind: 'config'; config: ProxyConfig };

/** Parses `moat proxy` arguments (without "proxy" itself). Throws ConfigError. */
export function parseProxyArgs(args: readonly string[], io: ConfigIo = NODE_CONFIG_IO): ParsedProxyArgs {
  const raw = readFlags(args, PROXY_FLAGS, 'proxy', io, undefined, PROXY_FLAGS);
  if (raw === 'help') return { kind: 'help' };
  const { str } = getters(raw);

  const listenRaw = str('listen') ?? { text: DEFAULT_PROXY_LISTEN, label: '--listen' };
  const listen = parseListen(listenRaw.text, listenRaw.label);
  const socksRaw = str('socks');
  const socks = socksRaw === undefined ? undefined : parseListen(socksRaw.text, socksRaw.label);
  const listenPublic = raw.get('listen-public')?.value === true;
  for (const [l, r] of [[listen, listenRaw], [socks, socksRaw]] as const) {
    if (l !== undefined && r !== undefined && !listenPublic && !isLoopbackHost(l.host)) {
      throw new ConfigError(
        `${r.label}: ${r.text} is not a loopback address; anyone who can reach it would egress through this allowlist. Pass --listen-public if that is meant (and --auth-file to require a password)`,
      );
    }
  }
  if (socks !== undefined && socks.port !== 0 && socks.port === listen.port && socks.host === listen.host) {
    throw new ConfigError(`--socks: ${socksRaw!.text} is also the --listen address`);
  }

  const allowlist = buildAllowlist(raw, io);
  const allowAll = raw.get('allow-all')?.value === true;
  if (allowlist.allow.length === 0 && !allowAll) {
    throw new ConfigError('--allow: at least one rule is required (e.g. --allow github.com); a proxy without rules would allow everything, pass --allow-all if that is meant');
  }
  if (allowlist.allow.length > 0 && allowAll) throw new ConfigError('--allow-all: cannot be combined with --allow rules');

  let maxConnections = DEFAULT_MAX_CONNECTIONS;
  const maxRaw = str('max-connections');
  if (maxRaw !== undefined) {
    const n = /^\d+$/.test(maxRaw.text) ? Number(maxRaw.text) : NaN;
    if (!(n >= 1 && n <= 100_000)) throw new ConfigError(`${maxRaw.label}: must be an integer 1..100000, got ${maxRaw.text}`);
    maxConnections = n;
  }

  let apiSocket: string | undefined;
  const apiRaw = str('api');
  if (apiRaw !== undefined) {
    const l = parseListenUrl(apiRaw.text, apiRaw.label);
    if (l.kind !== 'unix') throw new ConfigError(`${apiRaw.label}: the API listens on a unix socket only (unix:///PATH), got "${apiRaw.text}"`);
    apiSocket = l.path;
  }

  let auth: ProxyCredentials | undefined;
  const authRaw = str('auth-file');
  if (authRaw !== undefined) {
    let text: string;
    try {
      text = io.readFile(authRaw.text);
    } catch (e) {
      throw new ConfigError(`${authRaw.label}: cannot read ${authRaw.text}: ${(e as Error).message}`);
    }
    try {
      auth = ProxyCredentials.parse(text, authRaw.text);
    } catch (e) {
      throw new ConfigError(`${authRaw.label}: ${(e as Error).message}`);
    }
  }

  const { logLevel, logFormat } = parseLogSettings(raw);
  const logLimits = parseLogLimits(str);
  if (typeof logLimits === 'string') throw new ConfigError(logLimits);
  const traffic = parseTrafficFlags(str, getters(raw).list, allowlist.allow);
  if (typeof traffic === 'string') throw new ConfigError(traffic);

  return {
    kind: 'config',
    config: {
      listen,
      socks,
      allow: allowlist.allow,
      allowAll,
      resolvers: allowlist.resolvers,
      admitResolved: parseAdmitResolved(raw),
      peekTimeoutMs: parsePeekTimeout(raw),
      decisionLog: parseDecisionLog(raw),
      mode: parseMode(raw),
      refuseEch: parseRefuseEch(raw, true),
      apiSocket,
      maxConnections,
      listenPublic,
      auth,
      authFile: authRaw?.text,
      refusalDetails: raw.get('refusal-details')?.value === true,
      logLevel,
      logFormat,
      liveLookups: parseLiveLookupFlags(raw),
      ...askOf(parseAskFlagsOrThrow(raw, !allowAll, parseMode(raw) === 'audit')),
      logLimits,
      traffic,
      ...injectOf(parseInjectFlagsOf(raw, io, allowlist.allow.length > 0 || allowAll)),
    },
  };
}

function injectOf(inject: InjectSettings | undefined): { inject?: InjectSettings } {
  return inject === undefined ? {} : { inject };
}

/** HOST:PORT with an IP address host ([ADDR]:PORT for IPv6); port 0 asks for a free one. */
function parseListen(text: string, label: string): HostPortAddress {
  const hp = parseHostPort(text, { allowEmptyHost: false, allowPortZero: true });
  if (typeof hp === 'string') throw new ConfigError(`${label}: ${hp}`);
  if (isIP(hp.host) === 0 && hp.host !== 'localhost') throw new ConfigError(`${label}: must be an IP address and port (127.0.0.1:3128), got "${text}"`);
  return hp;
}

export function proxyHelp(): string {
  return [
    'Usage: moat proxy [--listen HOST:PORT] [--socks HOST:PORT] --allow RULE... [flags]',
    '',
    'An egress allowlist proxy for plain processes (build jobs, containers, coding agents): the same rules,',
    'resolution and policy as `moat serve --allow`. HTTP CONNECT tunnels and absolute-form HTTP requests',
    '(keep-alive), and SOCKS5 (CONNECT, UDP ASSOCIATE by IP rule). A target named by host is decided by name and dialed to addresses Moat',
    'resolves itself (rebinding answers refused); an address target needs an IP/CIDR rule. Inside a tunnel',
    'to :443/:80 the TLS SNI / HTTP Host must be the requested host before anything is dialed.',
    'Refusals: 403 with x-moat-reason and x-moat-decision (HTTP), reply 0x02 (SOCKS5), a TLS alert inside a tunnel.',
    '',
    'Flags:',
    ...flagLines(PROXY_FLAGS),
    '',
    'Example:',
    "  moat proxy --listen 127.0.0.1:3128 --socks 127.0.0.1:1080 --allow github.com --allow '*.githubusercontent.com'",
    '  # prints the lines to paste:',
    '  export HTTPS_PROXY=http://127.0.0.1:3128 HTTP_PROXY=http://127.0.0.1:3128 ALL_PROXY=socks5h://127.0.0.1:1080',
    '',
    'Exit status: 0 after a clean shutdown (SIGINT/SIGTERM), 2 for a usage or configuration error, 1 for a runtime error',
    '(an allowed host that does not resolve at start-up).',
    '',
  ].join('\n');
}
