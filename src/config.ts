/**
 * `moat serve` configuration: command-line flags plus an optional JSON file
 * (`--config FILE`), validated into one ServeConfig. Flags override the file;
 * a repeatable flag given on the command line replaces the file's list rather
 * than adding to it, so the command line always shows the whole truth for
 * what it names.
 *
 * Every flag is described once, in SERVE_FLAGS: the parser, the help text and
 * the config-file keys are all derived from that table, so they cannot drift.
 * Every error names the flag (or the file and key) and the bad value, and is a
 * ConfigError (exit code 2).
 */
import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { parseArgs } from 'node:util';
import {
  formatIPv4, formatIPv6, formatMac, inPrefix6, inSubnet, ipv6, isLinkLocal6, isMulticast6, parseCidr, parseIPv4, parseIPv6, parseMac, prefixMask,
  withInterfaceId, type IPv4, type IPv6, type Mac,
} from '../netstack/addr.js';
import { parseRules, RuleSetError, type Rule } from '../dns/rules.js';
import { parseIpv6, parseIpv6Cidr } from '../sni/ranges6.js';
import type { SinkholeMode } from '../dns/zones.js';
import { isLogFormat, isLogLevel, type LogFormat, type LogLevel } from './log.js';
import { limitFlagDocs, parseLimits, type Limits } from './limits.js';
import { liveLookupFlagDocs, parseLiveLookups, type LiveLookupSettings } from './allowlist/live-lookup-flags.js';
import { askFlagDocs, parseAskFlags } from './egress/ask-flags.js';
import type { AskSettings } from './egress/ask-gate.js';
import { logFlagDocs, parseLogLimits, type LogLimits } from './log-flags.js';
import { parseTrafficFlags, trafficFlagDocs, type TrafficSettings } from './traffic/flags.js';
import { parseForwardFlag, parseForwardSpec, parseHostPort, parsePort, type ForwardSpec } from './port-forwards.js';
import { injectFlagDocs, parseInjectFlags } from './inject/flags.js';
import type { InjectSettings } from './inject/interceptor.js';

/** A usage or configuration mistake: the CLI prints the message and exits with 2. */
export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

export type ListenAddress =
  | { readonly kind: 'unix'; readonly path: string; readonly url: string }
  | { readonly kind: 'tcp'; readonly host: string; readonly port: number; readonly url: string };

export interface DnsUpstream {
  host: string;
  port: number;
}

export interface ServeConfig {
  /** Where guests (QEMU `-netdev stream`, moat-shim) connect. Empty only when tapFd is given. */
  listen: ListenAddress[];
  /** An open TAP descriptor to serve instead of listening (`moat-shim tap --exec`), else undefined. */
  tapFd?: number;
  /** --icmp-fd: an ICMP ping socket open on this descriptor (moat-shim --icmp); echo beyond the gateway goes through it. */
  icmpFd?: number;
  /** The --tap-fd device was opened with IFF_VNET_HDR: frames carry a virtio-net header, TCP leaves in 64 KiB GSO segments. */
  tapVnetHdr?: boolean;
  /** The --tap-fd device was given TUNSETOFFLOAD (moat-shim --offload): the guest's TCP arrives in up to 64 KiB, checksums unfinished. */
  tapOffload?: boolean;
  mtu: number;
  network: IPv4;
  prefix: number;
  gatewayIp: IPv4;
  gatewayMac: Mac;
  guestIp: IPv4;
  hostIp: IPv4;
  /** IPv6 on the guest link (--ipv6, --ipv6-prefix); undefined: IPv6 frames are dropped and counted. */
  ipv6?: Ipv6Settings | undefined;
  /** Unix socket path of the control API, or undefined for no API. */
  apiSocket: string | undefined;
  forwards: ForwardSpec[];
  pcapFile: string | undefined;
  logLevel: LogLevel;
  logFormat: LogFormat;
  allowLinkLocal: boolean;
  /** Host resolvers the gateway's DNS forwards to; empty if none was given and /etc/resolv.conf names none. */
  dnsUpstreams: DnsUpstream[];
  /** The egress allowlist (--allow), parsed; empty = no allowlist, DNS is forwarded. */
  allow: Rule[];
  /** Resolvers that allowed names are looked up at (--resolver); never empty when `allow` is not. */
  resolvers: DnsUpstream[];
  /** What a name outside the allowlist gets (--sinkhole). */
  sinkhole: SinkholeMode;
  /** IPv4 CIDRs resolved answers may lie in for hostname-authorised dials (--admit-resolved). */
  admitResolved: string[];
  /** How long a connection held for its SNI/Host may stay silent (--peek-timeout-ms). */
  peekTimeoutMs: number;
  /** Where every egress decision is written as a JSON line (--decision-log), or undefined. */
  decisionLog: string | undefined;
  /** The host alias is reachable whatever the rules say (--allow-host-alias). */
  allowHostAlias: boolean;
  /** Refuse TLS ClientHellos that carry encrypted_client_hello (--refuse-ech). */
  refuseEch: boolean;
  /** enforce, or audit: everything flows and refusals are logged as would-block (--mode). */
  mode: 'enforce' | 'audit';
  /** Resource limits (--max-tcp-flows ... --api-max-body-bytes, src/limits.ts); DEFAULT_LIMITS where absent. */
  limits?: Limits;
  /** A 403 lists the allow rules (--refusal-details); absent = off. */
  refusalDetails?: boolean;
  /** The live-lookup budget (--live-lookup-*, --no-live-lookups); the defaults when absent. */
  liveLookups?: LiveLookupSettings;
  /** The logs' budget and the decision log's rotation (--log-lines-per-sec ..., src/log-flags.ts); DEFAULT_LOG_LIMITS where absent. */
  logLimits?: LogLimits;
  /** Rate limits and byte budgets (--rate-*, --budget, src/traffic/flags.ts); none when absent. */
  traffic?: TrafficSettings;
  /** Ask mode (--on-unlisted ask, --ask-timeout-ms); absent: refuse. */
  ask?: AskSettings;
  /** Credential injection (--secret, --inject, --upstream-ca, --state-dir, src/inject/); absent = none. */
  inject?: InjectSettings;
  /** Unix socket path lifecycle events go to as JSON lines (--notification, src/notification.ts), or undefined. */
  notification?: string;
}

/** What `moat zones` needs: the allowlist and the built-in addresses. */
export interface ZonesConfig {
  allow: Rule[];
  resolvers: DnsUpstream[];
  sinkhole: SinkholeMode;
  gatewayIp: IPv4;
  hostIp: IPv4;
}

export const MTU_MIN = 576; // RFC 791: every host must accept 576-byte datagrams
export const MTU_MAX = 65520; // the largest MTU Linux virtio-net and QEMU stream accept, as gvproxy
export const DEFAULT_MTU = 1500;
export const DEFAULT_SUBNET = '192.168.127.0/24';
/** A ULA /64 (RFC 4193) whose 40-bit global ID spells "moat" (6d 6f 61 74 00). */
export const DEFAULT_IPV6_PREFIX = 'fd6d:6f61:7400::/64';
/** RFC 8200 §5: an IPv6 link carries 1280-byte packets. */
export const IPV6_MIN_LINK_MTU = 1280;

/** The guest link's IPv6 side: a /64 for SLAAC, the gateway at ::1 and the host alias at ::fe in it. */
export interface Ipv6Settings {
  prefix: IPv6;
  gatewayIp: IPv6;
  hostIp: IPv6;
}
export const DEFAULT_GATEWAY_MAC = '5a:94:ef:e4:0c:dd';
/** sun_path is 108 bytes on Linux, including the terminating NUL. */
const UNIX_PATH_MAX = 107;
export const DEFAULT_PEEK_TIMEOUT_MS = 10_000;

export interface FlagDoc {
  name: string;
  type: 'string' | 'boolean';
  multiple?: boolean;
  /** Placeholder for the value in help ("N", "CIDR"). */
  value?: string;
  /** The default, as shown in help. */
  default?: string;
  help: string;
  example?: string;
}

/** The one description of every `moat serve` flag (gvproxy's names where gvproxy has one). */
export const SERVE_FLAGS: readonly FlagDoc[] = [
  {
    name: 'listen-qemu',
    type: 'string',
    multiple: true,
    value: 'URL',
    default: 'none (this or --tap-fd is required)',
    help: 'Listen for a guest speaking QEMU stream framing (u32 big-endian length + Ethernet frame): QEMU -netdev stream or moat-shim. unix:///PATH or tcp://HOST:PORT. Repeatable; one guest is served at a time and a new connection replaces the old one.',
    example: 'unix:///tmp/moat.sock',
  },
  {
    name: 'tap-fd',
    type: 'string',
    value: 'N',
    help: 'Serve the TAP device open on descriptor N instead of listening: one frame per read and write, no relay process in between. moat-shim tap --exec starts Moat this way (the TAP is on descriptor 3). Not with --listen-qemu; command line only (not a --config key).',
    example: '3',
  },
  {
    name: 'icmp-fd',
    type: 'string',
    value: 'N',
    help: 'An unprivileged ICMP socket (SOCK_DGRAM, IPPROTO_ICMP) open on descriptor N: guest ping to addresses beyond the gateway is forwarded through it (policy as for UDP: with --allow only an IP rule without a port opens an address; --icmp-echo-per-sec, --max-icmp-echo). moat-shim tap --icmp --exec (or, for any other link, moat-shim icmp --exec) puts one on descriptor 4. Without it such echo is dropped and counted. Command line only.',
    example: '4',
  },
  {
    name: 'tap-vnet-hdr',
    type: 'boolean',
    default: 'off',
    help: 'The --tap-fd device was opened with IFF_VNET_HDR (moat-shim tap --vnet-hdr --exec): every frame carries a 10-byte virtio-net header, and TCP to the guest leaves in segments of up to 64 KiB marked for segmentation offload, whatever the MTU. Command line only.',
  },
  {
    name: 'tap-offload',
    type: 'boolean',
    default: 'off',
    help: "Receive offload: the --tap-vnet-hdr device was given TUNSETOFFLOAD (moat-shim tap --vnet-hdr --offload --exec), so the guest's TCP arrives in segments of up to 64 KiB with checksums left to complete; Moat checks each virtio-net header against its frame and drops (and counts) any it does not believe. Needs --tap-vnet-hdr. Command line only.",
  },
  { name: 'mtu', type: 'string', value: 'N', default: String(DEFAULT_MTU), help: `Link MTU, ${MTU_MIN}..${MTU_MAX}. Handed to the guest by DHCP.` },
  { name: 'subnet', type: 'string', value: 'CIDR', default: DEFAULT_SUBNET, help: 'The virtual network (prefix /0../30).' },
  { name: 'gateway-ip', type: 'string', value: 'IP', default: 'first address of --subnet (192.168.127.1)', help: "The gateway's address: router, DHCP and DNS server." },
  { name: 'gateway-mac', type: 'string', value: 'MAC', default: DEFAULT_GATEWAY_MAC, help: "The gateway's MAC address." },
  { name: 'guest-ip', type: 'string', value: 'IP', default: 'second address of --subnet (192.168.127.2)', help: 'The address DHCP gives the guest.' },
  { name: 'host-ip', type: 'string', value: 'IP', default: 'last usable address of --subnet (192.168.127.254)', help: "A virtual address that reaches the host's loopback (127.0.0.1)." },
  { name: 'ipv6', type: 'string', value: 'on|off', default: `on (off when --mtu is below ${IPV6_MIN_LINK_MTU})`, help: "IPv6 on the guest link: router advertisements for SLAAC (prefix, MTU, DNS), the gateway's DNS and ping at ::1 of the prefix, the host alias at ::fe (mapped to the host's ::1, or 127.0.0.1 on a host without an IPv6 loopback). off: IPv6 frames are dropped and counted." },
  { name: 'ipv6-prefix', type: 'string', value: 'CIDR', default: DEFAULT_IPV6_PREFIX, help: 'The /64 the guest configures itself in (SLAAC needs exactly /64).' },
  { name: 'api', type: 'string', value: 'unix:///PATH', default: 'none (no API)', help: 'Serve the HTTP control API (gvproxy-compatible /services/forwarder/*, /services/dhcp/leases, /stats, /healthz; /allowlist and, with --on-unlisted ask, /decisions/*) on a unix socket.', example: 'unix:///tmp/moat-api.sock' },
  {
    name: 'forward',
    type: 'string',
    multiple: true,
    value: 'LOCAL=GUEST_IP:PORT[/tcp|/udp]',
    default: 'none',
    help: 'Forward a host address into the guest (tcp unless /udp is given). An empty LOCAL host (":2222") listens on every interface. Repeatable.',
    example: '127.0.0.1:2222=192.168.127.2:22',
  },
  {
    name: 'notification',
    type: 'string',
    value: 'unix:///PATH',
    default: 'none',
    help: 'Send lifecycle events to a unix socket someone listens on, one connection and one JSON line each, as gvproxy: {"notification_type":"ready"}, "connection_established"/"connection_closed" (with "mac_address"), and Moat\'s own "allowlist_reloaded" and "limit_hit". A listener that is absent or slow costs a log line, never the service; at most 100 events wait.',
    example: 'unix:///run/user/1000/moat-events.sock',
  },
  { name: 'pcap', type: 'string', value: 'FILE', default: 'none', help: 'Write every frame to and from the guest to FILE in libpcap format (read it with tcpdump -r FILE).' },
  { name: 'config', type: 'string', value: 'FILE', default: 'none', help: 'Read settings from a JSON file whose keys are these flag names ({"mtu": 9000, "forward": ["127.0.0.1:2222=192.168.127.2:22"]}). Flags given on the command line override it; a repeatable flag on the command line replaces the list from the file.' },
  { name: 'log-level', type: 'string', value: 'LEVEL', default: 'info', help: 'debug, info, warn or error.' },
  { name: 'log-format', type: 'string', value: 'FORMAT', default: 'pretty', help: 'json (one object per line) or pretty.' },
  { name: 'allow-link-local', type: 'boolean', default: 'off', help: 'Let the guest reach 169.254.0.0/16 (cloud metadata services live there). Refused unless given.' },
  {
    name: 'dns-upstream',
    type: 'string',
    multiple: true,
    value: 'IP[:PORT]',
    default: 'the nameservers in /etc/resolv.conf',
    help: "Resolver that DNS queries to the gateway are forwarded to (port 53 unless given; IPv6 as [ADDR]:PORT). Repeatable.",
    example: '1.1.1.1',
  },
  {
    name: 'allow',
    type: 'string',
    multiple: true,
    value: 'RULE',
    default: 'none (no allowlist: DNS is forwarded)',
    help: 'Allow a destination: HOST, *.DOMAIN (every name below DOMAIN, not DOMAIN itself), IP or CIDR, each with an optional :PORT. With any --allow, the gateway answers DNS itself: allowed hosts get the addresses they had at start-up (Moat does not start if one cannot be resolved), names below *.DOMAIN are resolved when asked, every other name is sinkholed without a query leaving the host. 169.254.0.0/16 opens only to a rule inside it and the host alias only to its exact address: 0.0.0.0/0 opens neither (a warning names such rules). Repeatable.',
    example: '*.github.com',
  },
  {
    name: 'resolver',
    type: 'string',
    multiple: true,
    value: 'IP[:PORT]',
    default: 'the nameservers in /etc/resolv.conf',
    help: 'Resolver that allowed names are looked up at (port 53 unless given; IPv6 as [ADDR]:PORT). Used with --allow only. Repeatable.',
    example: '1.1.1.1',
  },
  { name: 'sinkhole', type: 'string', value: 'MODE', default: 'zero', help: 'What a name outside the --allow list gets: zero (A 0.0.0.0, AAAA :: when the guest network has IPv6, other types no records) or nxdomain.' },
  {
    name: 'admit-resolved',
    type: 'string',
    multiple: true,
    value: 'CIDR',
    default: 'none',
    help: "With --allow, a connection allowed by hostname is dialed to addresses Moat resolved for that name; answers in loopback, private, link-local, CGNAT, multicast or the guest's subnet are refused (DNS rebinding) unless an IP/CIDR rule or this range admits them (IPv4 or IPv6; an IPv6 form of an IPv4 address, such as ::ffff:10.0.0.1 or 64:ff9b::a00:1, is admitted as that IPv4 address). Use it for internal services behind allowed names. Repeatable.",
    example: '10.20.0.0/16',
  },
  {
    name: 'peek-timeout-ms',
    type: 'string',
    value: 'MS',
    default: String(DEFAULT_PEEK_TIMEOUT_MS),
    help: 'With --allow, a connection to :443/:80 (or a port a hostname rule names) is held until its TLS SNI or HTTP Host has been read; one that names nothing in this long is reset.',
  },
  {
    name: 'decision-log',
    type: 'string',
    value: 'FILE',
    default: 'none (blocked decisions still go to the main log)',
    help: 'Append every egress decision (allowed and blocked, TCP, UDP and DNS) to FILE as one JSON line: id, decision, reason, rule, proto, dst, name, via. Rate-limited per destination, and by the log budget (--log-lines-per-sec ...); rotated with --decision-log-max-bytes.',
  },
  {
    name: 'mode',
    type: 'string',
    value: 'MODE',
    default: 'enforce',
    help: 'With --allow: enforce refuses what the rules do not allow; audit lets everything through (cloud metadata 169.254.0.0/16 excepted: still refused) and records each flow and DNS name the rules would have refused as "would-block" in the decision log, so `moat learn` can propose an allowlist.',
  },
  {
    name: 'refusal-details',
    type: 'boolean',
    default: 'off',
    help: "With --allow, a refusal's 403 body also lists the allow rules (for debugging). Off, it names the host, the reason and the decision id only: the rules would tell a guest what else it may reach and which wildcards are resolved live.",
  },
  { name: 'allow-host-alias', type: 'boolean', default: 'off', help: 'With --allow, let the guest reach the host alias (--host-ip) on any port. Otherwise only a rule naming its exact address opens it (e.g. --allow 192.168.127.254:8080); a CIDR containing it does not.' },
  {
    name: 'refuse-ech',
    type: 'boolean',
    default: 'off (ECH is allowed and recorded: "ech": true in the decision log)',
    help: 'With --allow, refuse every TLS ClientHello that carries encrypted_client_hello (reason "ech"): its real server name is encrypted, only the outer SNI is checked. GREASE ECH looks the same, so clients that send it by default (Chrome) are refused too; see README.',
  },
  // The live-lookup budget: described once in src/allowlist/live-lookup-flags.ts.
  ...liveLookupFlagDocs(),
  // Ask mode: described once in src/egress/ask-flags.ts.
  ...askFlagDocs(),
  // Resource limits: described once in src/limits.ts LIMIT_SPECS.
  ...limitFlagDocs(),
  // The logs' budget and the decision log's rotation: described once in src/log-flags.ts.
  ...logFlagDocs(),
  // Rate limits and byte budgets: described once in src/traffic/flags.ts.
  ...trafficFlagDocs('guest'),
  // Credential injection: described once in src/inject/flags.ts.
  ...injectFlagDocs(),
  { name: 'help', type: 'boolean', help: 'Show this help.' },
];

/** The flags `moat zones` takes: the allowlist's own, and the addresses its built-in names answer with. */
export const ZONES_FLAG_NAMES: readonly string[] = ['allow', 'resolver', 'sinkhole', 'subnet', 'gateway-ip', 'host-ip', 'config', 'help'];
export const ZONES_FLAGS: readonly FlagDoc[] = SERVE_FLAGS.filter((f) => ZONES_FLAG_NAMES.includes(f.name));

/** Flags a config file cannot set: help and config themselves, and a descriptor, which only the starting process can hand over. */
const COMMAND_LINE_ONLY = new Set(['help', 'config', 'tap-fd', 'tap-vnet-hdr', 'tap-offload', 'icmp-fd']);
const FILE_KEYS = new Set(SERVE_FLAGS.map((f) => f.name).filter((n) => !COMMAND_LINE_ONLY.has(n)));

export type ParsedServeArgs = { kind: 'help' } | { kind: 'config'; config: ServeConfig };

/** Where the outside world comes in; tests replace both. */
export interface ConfigIo {
  readFile(path: string): string;
  /** The text of /etc/resolv.conf, or undefined when there is none. */
  readResolvConf(): string | undefined;
  /** An environment variable (--secret NAME=env:VAR); process.env when absent. */
  readEnv?(name: string): string | undefined;
}

export const NODE_CONFIG_IO: ConfigIo = {
  readFile: (path) => readFileSync(path, 'utf8'),
  readResolvConf: () => {
    try {
      return readFileSync('/etc/resolv.conf', 'utf8');
    } catch {
      return undefined;
    }
  },
};

export type RawValue = string | boolean | string[];

/** A raw setting and how to name it in an error: "--mtu" or 'moat.json: "mtu"'. */
export interface Raw {
  value: RawValue;
  label: string;
}

/** Parses `moat serve` arguments (without "serve" itself). Throws ConfigError. */
export function parseServeArgs(args: readonly string[], io: ConfigIo = NODE_CONFIG_IO): ParsedServeArgs {
  const raw = readFlags(args, SERVE_FLAGS, 'serve', io);
  if (raw === 'help') return { kind: 'help' };
  return { kind: 'config', config: buildConfig(raw, io) };
}

export type ParsedZonesArgs = { kind: 'help' } | { kind: 'config'; config: ZonesConfig };

/** Parses `moat zones` arguments (without "zones" itself). Throws ConfigError. */
export function parseZonesArgs(args: readonly string[], io: ConfigIo = NODE_CONFIG_IO): ParsedZonesArgs {
  const raw = readFlags(args, ZONES_FLAGS, 'zones', io);
  if (raw === 'help') return { kind: 'help' };
  // A config file shared with `moat serve` may hold serve-only keys: zones reads what it needs.
  for (const key of [...raw.keys()]) if (!ZONES_FLAG_NAMES.includes(key)) raw.delete(key);
  const addresses = buildAddresses(raw);
  const allowlist = buildAllowlist(raw, io);
  if (allowlist.allow.length === 0) throw new ConfigError('--allow: at least one rule is required (e.g. moat zones --allow github.com)');
  return { kind: 'config', config: { ...allowlist, gatewayIp: addresses.gatewayIp, hostIp: addresses.hostIp } };
}

export const EXPLAIN_FLAG_NAMES: readonly string[] = [
  ...ZONES_FLAG_NAMES.filter((n) => n !== 'help'),
  'admit-resolved',
  'allow-host-alias',
  'allow-link-local',
  // serve's IPv6 side (its host alias and guest prefix) decides IPv6 targets as serve would.
  'ipv6',
  'ipv6-prefix',
  'help',
];
export const EXPLAIN_FLAGS: readonly FlagDoc[] = SERVE_FLAGS.filter((f) => EXPLAIN_FLAG_NAMES.includes(f.name));

/** What `moat explain` needs: the allowlist as `moat serve` would run it, and the destination asked about. */
export interface ExplainConfig extends ZonesConfig {
  network: IPv4;
  prefix: number;
  admitResolved: string[];
  allowHostAlias: boolean;
  allowLinkLocal: boolean;
  /** --ipv6, --ipv6-prefix as serve reads them (at the default MTU); undefined: serve would refuse every IPv6 destination. */
  ipv6: Ipv6Settings | undefined;
  /** A hostname or an address (IPv6 without brackets), as given. */
  target: string;
  /** The port asked about; 443 when none was given. */
  port: number;
}

export type ParsedExplainArgs = { kind: 'help' } | { kind: 'config'; config: ExplainConfig };

/** Parses `moat explain [flags] HOST[:PORT]|IP[:PORT]`. Throws ConfigError. */
export function parseExplainArgs(args: readonly string[], io: ConfigIo = NODE_CONFIG_IO): ParsedExplainArgs {
  const positionals: string[] = [];
  const raw = readFlags(args, EXPLAIN_FLAGS, 'explain', io, positionals);
  if (raw === 'help') return { kind: 'help' };
  for (const key of [...raw.keys()]) if (!EXPLAIN_FLAG_NAMES.includes(key)) raw.delete(key);
  if (positionals.length !== 1) {
    throw new ConfigError(`expected one destination (HOST[:PORT], IP[:PORT] or [IPv6]:PORT), got ${positionals.length === 0 ? 'none' : positionals.map((p) => `"${p}"`).join(' ')}`);
  }
  const text = positionals[0]!;
  let target = text;
  let port = 443;
  const colon = text.lastIndexOf(':');
  const bracketed = /^\[([^\]]*)\](?::(.*))?$/.exec(text);
  if (bracketed !== null) {
    // [IPv6] or [IPv6]:PORT
    if (parseIpv6(bracketed[1]!) === null) throw new ConfigError(`destination "${text}": not an IPv6 address in brackets (no zone id)`);
    target = bracketed[1]!;
    if (bracketed[2] !== undefined) {
      const p = parsePort(bracketed[2], false);
      if (typeof p === 'string') throw new ConfigError(`destination "${text}": ${p}`);
      port = p;
    }
  } else if (text.indexOf(':') !== colon) {
    // Two or more colons: a bare IPv6 address, port 443 (a port needs brackets: [ADDR]:PORT).
    if (parseIpv6(text) === null) throw new ConfigError(`destination "${text}": not an IPv6 address (a port needs brackets: [ADDR]:PORT; no zone id)`);
  } else if (colon >= 0) {
    const p = parsePort(text.slice(colon + 1), false);
    if (typeof p === 'string') throw new ConfigError(`destination "${text}": ${p}`);
    port = p;
    target = text.slice(0, colon);
  }
  if (target === '') throw new ConfigError(`destination "${text}": needs a host or address`);
  const addresses = buildAddresses(raw);
  const allowlist = buildAllowlist(raw, io);
  if (allowlist.allow.length === 0) throw new ConfigError('--allow: at least one rule is required (or --config with "allow")');
  const admitResolved = parseAdmitResolved(raw);
  const { str } = getters(raw);
  const ipv6 = parseIpv6Flags(str('ipv6'), str('ipv6-prefix'), DEFAULT_MTU);
  return {
    kind: 'config',
    config: {
      ...allowlist,
      ipv6,
      gatewayIp: addresses.gatewayIp,
      hostIp: addresses.hostIp,
      network: addresses.network,
      prefix: addresses.prefix,
      admitResolved,
      allowHostAlias: raw.get('allow-host-alias')?.value === true,
      allowLinkLocal: raw.get('allow-link-local')?.value === true,
      target,
      port,
    },
  };
}

export function explainHelp(): string {
  return [
    'Usage: moat explain [--allow RULE... | --config FILE] [--resolver IP[:PORT]] HOST[:PORT] | IP[:PORT] | [IPv6][:PORT]',
    '',
    'Says what `moat serve` with this allowlist would do for one destination: which rule matches,',
    'what the gateway\'s DNS would answer for the name, and what a TCP connection to it would get',
    '(port 443 unless given). Allowed hosts are resolved as at start-up, so the answers are real.',
    '',
    'Flags:',
    ...flagLines(EXPLAIN_FLAGS),
    '',
    'Examples:',
    "  moat explain --allow github.com --allow '*.githubusercontent.com' api.github.com",
    '  moat explain --config moat.json 169.254.169.254:80',
    '',
    'Exit status: 0 when the destination would be allowed, 3 when it would be blocked,',
    '2 for a usage error, 1 when an allowed host cannot be resolved.',
    '',
  ].join('\n');
}

/** Command-line flags (over the --config file's keys) as flag name → raw value, or 'help'. */
export function readFlags(
  args: readonly string[],
  flags: readonly FlagDoc[],
  command: string,
  io: ConfigIo,
  positionals?: string[],
  /** The flags a --config file may name: serve's unless a command (moat proxy) has its own table. */
  fileFlags: readonly FlagDoc[] = SERVE_FLAGS,
): Map<string, Raw> | 'help' {
  const options: Record<string, { type: 'string' | 'boolean'; multiple?: boolean; short?: string }> = {};
  for (const f of flags) options[f.name] = { type: f.type, ...(f.multiple === true ? { multiple: true } : {}) };
  options.help!.short = 'h';

  let values: Record<string, RawValue | undefined>;
  try {
    const parsed = parseArgs({ args: [...args], options, strict: true, allowPositionals: positionals !== undefined });
    values = parsed.values as Record<string, RawValue | undefined>;
    positionals?.push(...parsed.positionals);
  } catch (e) {
    throw new ConfigError(describeParseArgsError(e, command));
  }
  if (values.help === true) return 'help';

  const raw = new Map<string, Raw>();
  const configFile = values.config;
  if (typeof configFile === 'string') {
    for (const [key, value] of readConfigFile(configFile, io, fileFlags, command)) raw.set(key, { value, label: `${configFile}: "${key}"` });
  }
  for (const [key, value] of Object.entries(values)) {
    if (key === 'config' || key === 'help' || value === undefined) continue;
    raw.set(key, { value, label: `--${key}` });
  }
  return raw;
}

function describeParseArgsError(e: unknown, command = 'serve'): string {
  const err = e as { code?: string; message?: string };
  const msg = err.message ?? String(e);
  if (err.code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION') {
    const m = /'([^']+)'/.exec(msg);
    return `unknown flag ${m ? m[1] : ''} (see moat ${command} --help)`.replace('  ', ' ');
  }
  if (err.code === 'ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL') {
    const m = /'([^']+)'/.exec(msg);
    return `unexpected argument ${m ? `"${m[1]}"` : ''} (every setting is a --flag; see moat ${command} --help)`;
  }
  // ERR_PARSE_ARGS_INVALID_OPTION_VALUE: Node's message names the flag ("Option '--mtu <value>' argument missing").
  return msg;
}

/** Reads the JSON config file into flag-name → raw value, checking its shape. */
function readConfigFile(path: string, io: ConfigIo, fileFlags: readonly FlagDoc[] = SERVE_FLAGS, command = 'serve'): Map<string, RawValue> {
  const fileKeys = fileFlags === SERVE_FLAGS ? FILE_KEYS : new Set(fileFlags.map((f) => f.name).filter((n) => !COMMAND_LINE_ONLY.has(n)));
  const keysOf = fileFlags === SERVE_FLAGS ? 'serve' : command;
  let text: string;
  try {
    text = io.readFile(path);
  } catch (e) {
    throw new ConfigError(`--config: cannot read "${path}": ${(e as Error).message}`);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (e) {
    throw new ConfigError(`--config: "${path}" is not valid JSON: ${(e as Error).message}`);
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    throw new ConfigError(`--config: "${path}" must hold a JSON object whose keys are flag names`);
  }
  const out = new Map<string, RawValue>();
  for (const [key, value] of Object.entries(parsed as Record<string, unknown>)) {
    if (!fileKeys.has(key)) throw new ConfigError(`${path}: unknown key "${key}" (keys are the flag names of moat ${keysOf} --help, without --)`);
    const doc = fileFlags.find((f) => f.name === key)!;
    const label = `${path}: "${key}"`;
    if (doc.type === 'boolean') {
      if (typeof value !== 'boolean') throw new ConfigError(`${label}: must be true or false, got ${JSON.stringify(value)}`);
      out.set(key, value);
    } else if (doc.multiple === true) {
      const list = Array.isArray(value) ? value : [value];
      out.set(key, list.map((item) => fileItemToText(key, item, label)));
    } else {
      out.set(key, fileScalarToText(value, label));
    }
  }
  return out;
}

function fileScalarToText(value: unknown, label: string): string {
  if (typeof value === 'string') return value;
  if (typeof value === 'number' && Number.isFinite(value)) return String(value);
  throw new ConfigError(`${label}: must be a string or number, got ${JSON.stringify(value)}`);
}

/** Forwards may be written in the file as the flag text or as gvproxy's {"local","remote","protocol"} object. */
function fileItemToText(key: string, item: unknown, label: string): string {
  if (key === 'forward' && typeof item === 'object' && item !== null && !Array.isArray(item)) {
    const spec = parseForwardSpec(item);
    if (typeof spec === 'string') throw new ConfigError(`${label}: ${spec}`);
    return `${spec.local}=${spec.remote}/${spec.protocol}`;
  }
  return fileScalarToText(item, label);
}

export type StrGetter = (name: string) => { text: string; label: string } | undefined;
export type ListGetter = (name: string) => { items: string[]; label: string };

export function getters(raw: Map<string, Raw>): { str: StrGetter; list: ListGetter } {
  const str: StrGetter = (name) => {
    const r = raw.get(name);
    return r === undefined ? undefined : { text: r.value as string, label: r.label };
  };
  const list: ListGetter = (name) => {
    const r = raw.get(name);
    return r === undefined ? { items: [], label: `--${name}` } : { items: r.value as string[], label: r.label };
  };
  return { str, list };
}

interface Addresses {
  network: IPv4;
  prefix: number;
  subnetText: string;
  gatewayIp: IPv4;
  guestIp: IPv4;
  hostIp: IPv4;
}

/** --subnet and the addresses inside it. */
function buildAddresses(raw: Map<string, Raw>): Addresses {
  const { str } = getters(raw);
  const subnetRaw = str('subnet') ?? { text: DEFAULT_SUBNET, label: '--subnet' };
  const cidr = parseCidr(subnetRaw.text);
  if (cidr === undefined) throw new ConfigError(`${subnetRaw.label}: must be an IPv4 CIDR like ${DEFAULT_SUBNET}, got "${subnetRaw.text}"`);
  if (cidr.prefix > 30) throw new ConfigError(`${subnetRaw.label}: prefix must be /30 or shorter (room for gateway, guest and host), got "${subnetRaw.text}"`);
  const { network, prefix } = cidr;
  const broadcast = (network | ~prefixMask(prefix)) >>> 0;
  const gatewayIp = parseAddressIn('gateway-ip', str('gateway-ip'), network + 1, network, prefix, broadcast, subnetRaw.text);
  const guestIp = parseAddressIn('guest-ip', str('guest-ip'), network + 2, network, prefix, broadcast, subnetRaw.text);
  const hostIp = parseAddressIn('host-ip', str('host-ip'), broadcast - 1, network, prefix, broadcast, subnetRaw.text);
  const named: [string, IPv4][] = [
    ['--gateway-ip', gatewayIp],
    ['--guest-ip', guestIp],
    ['--host-ip', hostIp],
  ];
  for (let i = 0; i < named.length; i++) {
    for (let j = i + 1; j < named.length; j++) {
      if (named[i]![1] === named[j]![1]) {
        throw new ConfigError(`${named[i]![0]} and ${named[j]![0]}: must be distinct, both are ${formatIPv4(named[i]![1])}`);
      }
    }
  }
  return { network, prefix, subnetText: subnetRaw.text, gatewayIp, guestIp, hostIp };
}

export interface AllowlistSettings {
  allow: Rule[];
  resolvers: DnsUpstream[];
  sinkhole: SinkholeMode;
}

/** --allow, --resolver, --sinkhole. An invalid rule is an error naming it, never skipped. */
export function buildAllowlist(raw: Map<string, Raw>, io: ConfigIo): AllowlistSettings {
  const { str, list } = getters(raw);
  const allowRaw = list('allow');
  let allow: Rule[];
  try {
    allow = parseRules(allowRaw.items);
  } catch (e) {
    if (e instanceof RuleSetError) throw new ConfigError(`${allowRaw.label}: ${e.message}`);
    throw e;
  }

  const resolverRaw = list('resolver');
  const resolvers =
    resolverRaw.items.length > 0
      ? resolverRaw.items.map((t) => parseDnsUpstream(t, resolverRaw.label))
      : nameserversFromResolvConf(io.readResolvConf() ?? '');
  if (allow.length > 0 && resolvers.length === 0) {
    throw new ConfigError('--resolver: none given and /etc/resolv.conf names no nameserver; allowed hosts cannot be resolved (e.g. --resolver 1.1.1.1)');
  }

  const sinkholeRaw = str('sinkhole');
  if (sinkholeRaw !== undefined && sinkholeRaw.text !== 'zero' && sinkholeRaw.text !== 'nxdomain') {
    throw new ConfigError(`${sinkholeRaw.label}: must be zero or nxdomain, got "${sinkholeRaw.text}"`);
  }
  return { allow, resolvers, sinkhole: (sinkholeRaw?.text as SinkholeMode | undefined) ?? 'zero' };
}

/** --tap-fd N: a descriptor number above stdio (0..2 are stdin, stdout, stderr). */
function parseTapFd(raw: { label: string; text: string } | undefined): number | undefined {
  if (raw === undefined) return undefined;
  const n = /^\d{1,7}$/.test(raw.text) ? Number(raw.text) : NaN;
  if (!(n >= 3)) throw new ConfigError(`${raw.label}: must be an open descriptor number >= 3 (0..2 are stdio), got "${raw.text}"`);
  return n;
}

function buildConfig(raw: Map<string, Raw>, io: ConfigIo): ServeConfig {
  const { str, list } = getters(raw);

  // --listen-qemu / --tap-fd
  const listenRaw = list('listen-qemu');
  const tapFd = parseTapFd(str('tap-fd'));
  const icmpFd = parseTapFd(str('icmp-fd'));
  if (icmpFd !== undefined && icmpFd === tapFd) throw new ConfigError(`--icmp-fd: descriptor ${icmpFd} is the --tap-fd device; moat-shim --icmp puts the ping socket on 4`);
  if (tapFd !== undefined && listenRaw.items.length > 0) {
    throw new ConfigError('--tap-fd: serves one TAP device; it cannot be combined with --listen-qemu');
  }
  const tapVnetHdr = raw.get('tap-vnet-hdr')?.value === true;
  if (tapVnetHdr && tapFd === undefined) throw new ConfigError('--tap-vnet-hdr: describes the --tap-fd device; give --tap-fd N too');
  const tapOffload = raw.get('tap-offload')?.value === true;
  if (tapOffload && !tapVnetHdr) throw new ConfigError('--tap-offload: offloaded frames are described by the virtio-net header; give --tap-vnet-hdr (and moat-shim --vnet-hdr --offload) too');
  if (listenRaw.items.length === 0 && tapFd === undefined) {
    throw new ConfigError(
      '--listen-qemu: at least one listen address is required (e.g. --listen-qemu unix:///tmp/moat.sock), or --tap-fd N for a TAP handed over by moat-shim tap --exec',
    );
  }
  const listen = listenRaw.items.map((url) => parseListenUrl(url, listenRaw.label));
  const seen = new Set<string>();
  for (const l of listen) {
    const key = l.kind === 'unix' ? `unix:${l.path}` : `tcp:${l.host}:${l.port}`;
    if (seen.has(key) && !(l.kind === 'tcp' && l.port === 0)) throw new ConfigError(`${listenRaw.label}: "${l.url}" is given twice`);
    seen.add(key);
  }

  // --mtu
  let mtu = DEFAULT_MTU;
  const mtuRaw = str('mtu');
  if (mtuRaw !== undefined) {
    const n = /^\d+$/.test(mtuRaw.text) ? Number(mtuRaw.text) : NaN;
    if (!(n >= MTU_MIN && n <= MTU_MAX)) throw new ConfigError(`${mtuRaw.label}: must be an integer ${MTU_MIN}..${MTU_MAX}, got ${mtuRaw.text}`);
    mtu = n;
  }

  // --subnet and the addresses inside it
  const { network, prefix, subnetText, gatewayIp, guestIp, hostIp } = buildAddresses(raw);
  const subnetRaw = { text: subnetText };

  // --ipv6, --ipv6-prefix
  const ipv6 = parseIpv6Flags(str('ipv6'), str('ipv6-prefix'), mtu);

  // --gateway-mac
  const macRaw = str('gateway-mac') ?? { text: DEFAULT_GATEWAY_MAC, label: '--gateway-mac' };
  const gatewayMac = parseMac(macRaw.text);
  if (gatewayMac === undefined) throw new ConfigError(`${macRaw.label}: must be a MAC address like ${DEFAULT_GATEWAY_MAC}, got "${macRaw.text}"`);
  // Bit 0 of the first octet marks a group address: a unicast router must not have one (IEEE 802, 9.2).
  if (Math.floor(gatewayMac / 2 ** 40) & 1) throw new ConfigError(`${macRaw.label}: must be a unicast MAC (first octet even), got "${macRaw.text}"`);

  // --api
  let apiSocket: string | undefined;
  const apiRaw = str('api');
  if (apiRaw !== undefined) {
    const l = parseListenUrl(apiRaw.text, apiRaw.label);
    if (l.kind !== 'unix') throw new ConfigError(`${apiRaw.label}: the API listens on a unix socket only (unix:///PATH), got "${apiRaw.text}"`);
    if (listen.some((q) => q.kind === 'unix' && q.path === l.path)) throw new ConfigError(`${apiRaw.label}: "${apiRaw.text}" is also a --listen-qemu address`);
    apiSocket = l.path;
  }

  // --forward
  const fwdRaw = list('forward');
  const forwards: ForwardSpec[] = [];
  for (const text of fwdRaw.items) {
    const spec = parseForwardFlag(text);
    if (typeof spec === 'string') throw new ConfigError(`${fwdRaw.label}: ${spec}`);
    const hostText = spec.remote.slice(0, spec.remote.lastIndexOf(':'));
    if (hostText.startsWith('[')) {
      const guest6 = parseIPv6(hostText.slice(1, -1));
      if (ipv6 === undefined) throw new ConfigError(`${fwdRaw.label}: an IPv6 guest address needs IPv6 on (it is off: --ipv6 off or --mtu below ${IPV6_MIN_LINK_MTU}) in "${text}"`);
      if (guest6 === undefined || !inPrefix6(guest6, ipv6.prefix, 64) || guest6 === ipv6.prefix || guest6 === ipv6.gatewayIp || guest6 === ipv6.hostIp) {
        throw new ConfigError(`${fwdRaw.label}: guest address ${hostText} is not a guest address in --ipv6-prefix ${formatIPv6(ipv6.prefix)}/64 in "${text}"`);
      }
    } else {
      const guest = parseIPv4(hostText)!;
      if (!inSubnet(guest, network, prefix)) {
        throw new ConfigError(`${fwdRaw.label}: guest address ${formatIPv4(guest)} is outside --subnet ${subnetRaw.text} in "${text}"`);
      }
    }
    if (forwards.some((f) => f.local === spec.local && f.protocol === spec.protocol)) {
      throw new ConfigError(`${fwdRaw.label}: ${spec.local}/${spec.protocol} is forwarded twice ("${text}")`);
    }
    forwards.push(spec);
  }

  // --notification
  const notification = parseNotification(str('notification'));

  // --pcap
  const pcapRaw = str('pcap');
  if (pcapRaw !== undefined && pcapRaw.text === '') throw new ConfigError(`${pcapRaw.label}: needs a file name, got ""`);

  // --log-level, --log-format
  const { logLevel, logFormat } = parseLogSettings(raw);

  // --dns-upstream
  const dnsRaw = list('dns-upstream');
  const dnsUpstreams =
    dnsRaw.items.length > 0
      ? dnsRaw.items.map((t) => parseDnsUpstream(t, dnsRaw.label))
      : nameserversFromResolvConf(io.readResolvConf() ?? '');

  // --allow, --resolver, --sinkhole
  const allowlist = buildAllowlist(raw, io);

  // --admit-resolved, --peek-timeout-ms, --decision-log, --allow-host-alias
  const admitRaw = { items: parseAdmitResolved(raw) };
  const peekTimeoutMs = parsePeekTimeout(raw);
  const mode = parseMode(raw);
  const decisionLog = parseDecisionLog(raw);
  const liveLookups = parseLiveLookupFlags(raw);
  const ask = parseAskFlagsOrThrow(raw, allowlist.allow.length > 0, mode === 'audit');

  // --max-tcp-flows ... --api-max-body-bytes
  const limits = parseLimits(str);
  if (typeof limits === 'string') throw new ConfigError(limits);
  const logLimits = parseLogLimits(str);
  if (typeof logLimits === 'string') throw new ConfigError(logLimits);
  const traffic = parseTrafficFlags(str, list, allowlist.allow);
  if (typeof traffic === 'string') throw new ConfigError(traffic);

  const inject = parseInjectFlagsOf(raw, io, allowlist.allow.length > 0);

  const allowLinkLocal = raw.get('allow-link-local');
  return {
    listen,
    ...(tapFd === undefined ? {} : { tapFd, tapVnetHdr, tapOffload }),
    ...(icmpFd === undefined ? {} : { icmpFd }),
    mtu,
    network,
    prefix,
    gatewayIp,
    gatewayMac,
    guestIp,
    hostIp,
    ipv6,
    apiSocket,
    forwards,
    pcapFile: pcapRaw?.text,
    logLevel,
    logFormat,
    allowLinkLocal: allowLinkLocal?.value === true,
    dnsUpstreams,
    ...allowlist,
    admitResolved: admitRaw.items,
    peekTimeoutMs,
    decisionLog,
    allowHostAlias: raw.get('allow-host-alias')?.value === true,
    refuseEch: parseRefuseEch(raw, allowlist.allow.length > 0),
    mode,
    limits,
    refusalDetails: raw.get('refusal-details')?.value === true,
    liveLookups,
    logLimits,
    traffic,
    ...(ask === undefined ? {} : { ask }),
    ...(inject !== undefined ? { inject } : {}),
    ...(notification === undefined ? {} : { notification }),
  };
}

/** --on-unlisted, --ask-timeout-ms (shared by serve and proxy). */
export function parseAskFlagsOrThrow(raw: Map<string, Raw>, hasRules: boolean, audit: boolean): AskSettings | undefined {
  const r = parseAskFlags(getters(raw).str, { hasRules, audit });
  if (typeof r === 'string') throw new ConfigError(r);
  return r;
}

/** --secret, --inject, --upstream-ca, --state-dir (shared by serve and proxy). */
export function parseInjectFlagsOf(raw: Map<string, Raw>, io: ConfigIo, hasAllow: boolean): InjectSettings | undefined {
  const { list, str } = getters(raw);
  const r = parseInjectFlags(list, str, { readEnv: io.readEnv ?? ((n) => process.env[n]), readFile: io.readFile }, hasAllow);
  if (typeof r === 'string') throw new ConfigError(r);
  return r;
}

/** --notification unix:///PATH (gvproxy accepts only unix:// too): the socket path. */
function parseNotification(raw: { text: string; label: string } | undefined): string | undefined {
  if (raw === undefined) return undefined;
  if (!raw.text.startsWith('unix://')) throw new ConfigError(`${raw.label}: must be a unix:///PATH address, got "${raw.text}"`);
  return parseListenUrl(raw.text, raw.label).kind === 'unix' ? raw.text.slice('unix://'.length) : undefined;
}

/** --live-lookup-rate, --live-lookup-burst, --live-lookup-bytes, --live-lookup-burst-bytes, --no-live-lookups. Shared by serve and proxy. */
export function parseLiveLookupFlags(raw: Map<string, Raw>): LiveLookupSettings {
  const settings = parseLiveLookups(getters(raw).str, raw.get('no-live-lookups')?.value === true);
  if (typeof settings === 'string') throw new ConfigError(settings);
  return settings;
}

/**
 * --admit-resolved: IPv4 or IPv6 CIDRs with no host bits set, or single
 * addresses (shared by serve, proxy and explain). IPv6 as the policy reads
 * it (sni/ranges6.ts: no zone id, no brackets).
 */
export function parseAdmitResolved(raw: Map<string, Raw>): string[] {
  const admitRaw = getters(raw).list('admit-resolved');
  for (const text of admitRaw.items) {
    const c = parseCidr(text);
    const v4 = c !== undefined && formatIPv4(c.network) === text.split('/')[0];
    if (!v4 && (!text.includes(':') || parseIpv6Cidr(text) === null)) {
      throw new ConfigError(`${admitRaw.label}: must be an IPv4 or IPv6 CIDR with no host bits set (e.g. 10.20.0.0/16, fd00:1234::/48) or one IPv6 address, got "${text}"`);
    }
  }
  return admitRaw.items;
}

/** --refuse-ech: only meaningful with rules, which is when ClientHellos are read (shared by serve and proxy). */
export function parseRefuseEch(raw: Map<string, Raw>, hasRules: boolean): boolean {
  const on = raw.get('refuse-ech')?.value === true;
  if (on && !hasRules) throw new ConfigError('--refuse-ech: needs --allow rules (without them no ClientHello is read)');
  return on;
}

/** --peek-timeout-ms: 100..600000, DEFAULT_PEEK_TIMEOUT_MS when absent (shared by serve and proxy). */
export function parsePeekTimeout(raw: Map<string, Raw>): number {
  const peekRaw = getters(raw).str('peek-timeout-ms');
  if (peekRaw === undefined) return DEFAULT_PEEK_TIMEOUT_MS;
  const n = /^\d+$/.test(peekRaw.text) ? Number(peekRaw.text) : NaN;
  if (!(n >= 100 && n <= 600_000)) throw new ConfigError(`${peekRaw.label}: must be milliseconds, 100..600000, got ${peekRaw.text}`);
  return n;
}

function parseAddressIn(
  name: string,
  given: { text: string; label: string } | undefined,
  fallback: IPv4,
  network: IPv4,
  prefix: number,
  broadcast: IPv4,
  subnetText: string,
): IPv4 {
  if (given === undefined) return fallback >>> 0;
  const ip = parseIPv4(given.text);
  if (ip === undefined) throw new ConfigError(`${given.label}: must be an IPv4 address, got "${given.text}"`);
  if (!inSubnet(ip, network, prefix)) throw new ConfigError(`${given.label}: ${given.text} is outside --subnet ${subnetText}`);
  if (ip === network) throw new ConfigError(`${given.label}: ${given.text} is the network address of ${subnetText}`);
  if (ip === broadcast) throw new ConfigError(`${given.label}: ${given.text} is the broadcast address of ${subnetText}`);
  void name;
  return ip;
}

/** --log-level and --log-format. Shared by serve and proxy. */
export function parseLogSettings(raw: Map<string, Raw>): { logLevel: LogLevel; logFormat: LogFormat } {
  const { str } = getters(raw);
  const levelRaw = str('log-level');
  if (levelRaw !== undefined && !isLogLevel(levelRaw.text)) throw new ConfigError(`${levelRaw.label}: must be debug, info, warn or error, got "${levelRaw.text}"`);
  const formatRaw = str('log-format');
  if (formatRaw !== undefined && !isLogFormat(formatRaw.text)) throw new ConfigError(`${formatRaw.label}: must be json or pretty, got "${formatRaw.text}"`);
  return { logLevel: (levelRaw?.text as LogLevel | undefined) ?? 'info', logFormat: (formatRaw?.text as LogFormat | undefined) ?? 'pretty' };
}

/** --decision-log: a file name, or undefined. Shared by serve and proxy. */
export function parseDecisionLog(raw: Map<string, Raw>): string | undefined {
  const decisionRaw = getters(raw).str('decision-log');
  if (decisionRaw !== undefined && decisionRaw.text === '') throw new ConfigError(`${decisionRaw.label}: needs a file name, got ""`);
  return decisionRaw?.text;
}

/** --mode: enforce (default) or audit. Shared by serve and proxy. */
export function parseMode(raw: Map<string, Raw>): 'enforce' | 'audit' {
  const modeRaw = getters(raw).str('mode');
  if (modeRaw !== undefined && modeRaw.text !== 'enforce' && modeRaw.text !== 'audit') {
    throw new ConfigError(`${modeRaw.label}: must be enforce or audit, got "${modeRaw.text}"`);
  }
  return (modeRaw?.text as 'enforce' | 'audit' | undefined) ?? 'enforce';
}

/** Parses unix:///PATH or tcp://HOST:PORT. */
export function parseListenUrl(url: string, label: string): ListenAddress {
  if (url.startsWith('unix://')) {
    const path = url.slice('unix://'.length);
    if (!path.startsWith('/')) throw new ConfigError(`${label}: a unix socket needs an absolute path (unix:///tmp/moat.sock), got "${url}"`);
    if (Buffer.byteLength(path) > UNIX_PATH_MAX) throw new ConfigError(`${label}: unix socket path is longer than ${UNIX_PATH_MAX} bytes: "${url}"`);
    return { kind: 'unix', path, url };
  }
  if (url.startsWith('tcp://')) {
    // Port 0 asks the kernel for a free port (tests); the ready line reports the real one.
    const hp = parseHostPort(url.slice('tcp://'.length), { allowEmptyHost: false, allowPortZero: true });
    if (typeof hp === 'string') throw new ConfigError(`${label}: ${hp} in "${url}"`);
    return { kind: 'tcp', host: hp.host, port: hp.port, url };
  }
  throw new ConfigError(`${label}: must be unix:///PATH or tcp://HOST:PORT, got "${url}"`);
}

/** Parses IP[:PORT] for a resolver; IPv6 as a bare address or [ADDR]:PORT. */
export function parseDnsUpstream(text: string, label: string): DnsUpstream {
  if (isIP(text) !== 0) return { host: text, port: 53 };
  const hp = parseHostPort(text, { allowEmptyHost: false });
  if (typeof hp === 'string') throw new ConfigError(`${label}: ${hp}`);
  if (isIP(hp.host) === 0) throw new ConfigError(`${label}: must be an IP address (not a name), got "${text}"`);
  return hp;
}

/** The `nameserver` lines of a resolv.conf (resolv.conf(5)), in order; zone ids ("%eth0") are kept. */
export function nameserversFromResolvConf(text: string): DnsUpstream[] {
  const out: DnsUpstream[] = [];
  for (const line of text.split('\n')) {
    const m = /^\s*nameserver\s+(\S+)/.exec(line);
    if (m === null) continue;
    const host = m[1]!;
    if (isIP(host.split('%')[0]!) === 0) continue;
    out.push({ host, port: 53 });
  }
  return out;
}

/** ServeConfig as plain JSON-able text, for the start-up log line. */
export function describeConfig(c: ServeConfig): Record<string, unknown> {
  return {
    listen: c.listen.map((l) => l.url),
    ...(c.tapFd === undefined ? {} : { tapFd: c.tapFd, tapVnetHdr: c.tapVnetHdr, tapOffload: c.tapOffload }),
    ...(c.icmpFd === undefined ? {} : { icmpFd: c.icmpFd }),
    mtu: c.mtu,
    subnet: `${formatIPv4(c.network)}/${c.prefix}`,
    gatewayIp: formatIPv4(c.gatewayIp),
    gatewayMac: formatMac(c.gatewayMac),
    guestIp: formatIPv4(c.guestIp),
    hostIp: formatIPv4(c.hostIp),
    ipv6: c.ipv6 === undefined ? 'off' : { prefix: `${formatIPv6(c.ipv6.prefix)}/64`, gatewayIp: formatIPv6(c.ipv6.gatewayIp), hostIp: formatIPv6(c.ipv6.hostIp) },
    api: c.apiSocket,
    forwards: c.forwards.map((f) => `${f.local}=${f.remote}/${f.protocol}`),
    pcap: c.pcapFile,
    ...(c.notification === undefined ? {} : { notification: c.notification }),
    allowLinkLocal: c.allowLinkLocal,
    dnsUpstreams: c.dnsUpstreams.map(formatUpstream),
    ...(c.limits === undefined ? {} : { limits: { ...c.limits } }),
    ...(c.logLimits === undefined ? {} : { logLimits: { ...c.logLimits } }),
    ...(c.traffic?.rateEgress === undefined ? {} : { rateEgress: c.traffic.rateEgress }),
    ...(c.traffic?.rateIngress === undefined ? {} : { rateIngress: c.traffic.rateIngress }),
    ...(c.allow.length === 0
      ? {}
      : {
          allow: c.allow.map((r) => r.text),
          resolvers: c.resolvers.map(formatUpstream),
          sinkhole: c.sinkhole,
          admitResolved: c.admitResolved,
          peekTimeoutMs: c.peekTimeoutMs,
          decisionLog: c.decisionLog,
          allowHostAlias: c.allowHostAlias,
          refuseEch: c.refuseEch,
          mode: c.mode,
          refusalDetails: c.refusalDetails ?? false,
          // Reloaded with the rules (SIGHUP): budget; budgetDirection needs a restart.
          ...(c.traffic === undefined || c.traffic.budgets.length === 0
            ? {}
            : { budget: c.traffic.budgets.map((b) => `${b.rule}=${b.bytes}B${b.periodMs === undefined ? '' : `/${b.periodMs / 1000}s`}`), budgetDirection: c.traffic.budgetDirection }),
          ...(c.ask === undefined ? {} : { onUnlisted: 'ask', askTimeoutMs: c.ask.timeoutMs }),
        }),
  };
}

/** IP:PORT, IPv6 as [ADDR]:PORT (what --dns-upstream and --resolver accept, and node:dns setServers). */
export function formatUpstream(u: DnsUpstream): string {
  return u.host.includes(':') ? `[${u.host}]:${u.port}` : `${u.host}:${u.port}`;
}

// ---------------------------------------------------------------- help text

const QEMU_EXAMPLE = `  moat serve --listen-qemu unix:///tmp/moat.sock
  qemu-system-x86_64 ... \\
    -netdev stream,id=n0,server=off,addr.type=unix,addr.path=/tmp/moat.sock \\
    -device virtio-net-pci,netdev=n0`;

const SHIM_EXAMPLE = `  moat serve --listen-qemu unix:///tmp/moat.sock
  moat-shim tap --dev tap0 --netns guest --connect unix:///tmp/moat.sock
  # creates TAP device tap0 inside network namespace "guest" and bridges it to Moat

  moat-shim tap --dev tap0 --netns guest --vnet-hdr --exec moat serve --tap-fd 3 --tap-vnet-hdr
  # the same TAP, handed to Moat itself (no relay process: lower latency;
  # with the virtio-net header, 64 KiB TCP segments to the guest at any MTU;
  # add moat-shim --offload and --tap-offload for 64 KiB segments from the guest too)`;

export function flagLines(flags: readonly FlagDoc[]): string[] {
  const lines: string[] = [];
  for (const f of flags) {
    const head = `  --${f.name}${f.value !== undefined ? ` ${f.value}` : ''}${f.name === 'help' ? ', -h' : ''}`;
    lines.push(head);
    lines.push(`      ${f.help}`);
    if (f.default !== undefined) lines.push(`      Default: ${f.default}.`);
    if (f.example !== undefined) lines.push(`      Example: --${f.name} ${f.example}`);
  }
  return lines;
}

export function serveHelp(): string {
  const lines: string[] = [
    'Usage: moat serve (--listen-qemu URL | --tap-fd N) [flags]',
    '',
    'Runs the user-space network for one guest: DHCP, DNS, NAT to the host and port forwards.',
    '',
    'Flags:',
    ...flagLines(SERVE_FLAGS),
  ];
  lines.push(
    '',
    'Attach a QEMU guest (QEMU 7.2+):',
    QEMU_EXAMPLE,
    '',
    'Attach a TAP device with moat-shim:',
    SHIM_EXAMPLE,
    '',
    'Signals: SIGTERM/SIGINT stop taking guests and flows, close every flow and exit (within 5 s). SIGHUP re-reads --config:',
    'the allowlist is reloaded (fail closed: an invalid or unresolvable one leaves the running one in place); other changed',
    'settings are logged as "restart needed".',
    '',
    'Exit status: 0 after a clean shutdown (SIGINT/SIGTERM), 2 for a usage or configuration error, 1 for a runtime error.',
    '',
  );
  return lines.join('\n');
}

export function zonesHelp(): string {
  return [
    'Usage: moat zones --allow RULE... [--resolver IP[:PORT]] [--sinkhole zero|nxdomain]',
    '',
    'Resolves the allowed hosts as `moat serve --allow` would at start-up and prints the DNS zone table',
    'in match order (built-in names, then the longest suffix first, then the root sinkhole) with its records.',
    '',
    'Flags:',
    ...flagLines(ZONES_FLAGS),
    '',
    'Example:',
    '  moat zones --allow github.com --allow \'*.githubusercontent.com\' --resolver 1.1.1.1',
    '',
    'Exit status: 0 with the table printed, 2 for a usage error or an invalid rule, 1 when an allowed host cannot be resolved (every such host is named).',
    '',
  ].join('\n');
}

export function mainHelp(): string {
  return [
    'Usage: moat <command> [flags]',
    '',
    'Moat: a user-space network stack and egress allowlist for micro-VM guests.',
    '',
    'Commands:',
    '  serve    Serve the network to a guest over a QEMU stream socket (moat serve --help).',
    '  zones    Print the DNS zone table an allowlist gives, resolving its hosts (moat zones --help).',
    '  explain  Say which rule matches a host or IP, what DNS answers and what a connection gets (moat explain --help).',
    '  learn    Print the smallest allowlist that lets what a decision log recorded pass (moat learn --help).',
    '  proxy    An HTTP (CONNECT and plain) and SOCKS5 proxy with the same allowlist, for processes (moat proxy --help).',
    '  host     A daemon serving many guests, one network each, created over its API (moat host --help).',
    '  ca       Print the CA certificate guests trust for --inject, creating it if needed (moat ca [--state-dir DIR]).',
    '  gvproxy  A drop-in for gvproxy: its command line and API paths, served by Moat (moat gvproxy -h, docs/gvproxy.md).',
    '  help     Show this help, or a command\'s help (moat help serve, moat help zones).',
    '',
    'Example:',
    QEMU_EXAMPLE,
    '',
    serveHelp(),
    zonesHelp(),
    explainHelp(),
  ].join('\n');
}

/**
 * --ipv6 on|off and --ipv6-prefix. Default on, unless the MTU cannot carry
 * IPv6 (an explicit --ipv6 on with such an MTU is an error). The prefix must
 * be a unicast /64: SLAAC forms addresses from 64-bit interface identifiers.
 */
export function parseIpv6Flags(
  mode: { text: string; label: string } | undefined,
  prefixRaw: { text: string; label: string } | undefined,
  mtu: number,
): Ipv6Settings | undefined {
  if (mode !== undefined && mode.text !== 'on' && mode.text !== 'off') throw new ConfigError(`${mode.label}: must be on or off, got "${mode.text}"`);
  if (mode?.text === 'off') return undefined;
  if (mtu < IPV6_MIN_LINK_MTU) {
    if (mode?.text === 'on') throw new ConfigError(`${mode.label}: IPv6 needs --mtu ${IPV6_MIN_LINK_MTU} or more (RFC 8200), got ${mtu}`);
    return undefined;
  }
  const p = prefixRaw ?? { text: DEFAULT_IPV6_PREFIX, label: '--ipv6-prefix' };
  const slash = p.text.indexOf('/');
  const addr = slash < 0 ? undefined : parseIPv6(p.text.slice(0, slash));
  if (addr === undefined || p.text.slice(slash + 1) !== '64') {
    throw new ConfigError(`${p.label}: must be an IPv6 /64 like ${DEFAULT_IPV6_PREFIX}, got "${p.text}"`);
  }
  if (isLinkLocal6(addr) || isMulticast6(addr) || addr.charCodeAt(0) === 0) {
    throw new ConfigError(`${p.label}: must be a unicast prefix (not link-local, multicast, loopback or IPv4-mapped), got "${p.text}"`);
  }
  const prefix = withInterfaceId(addr, ipv6(0, 0, 0, 0, 0, 0, 0, 0));
  return { prefix, gatewayIp: withInterfaceId(prefix, ipv6(0, 0, 0, 0, 0, 0, 0, 1)), hostIp: withInterfaceId(prefix, ipv6(0, 0, 0, 0, 0, 0, 0, 0xfe)) };
}
