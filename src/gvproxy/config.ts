/**
 * gvproxy's flags (src/gvproxy/flags.ts) onto `moat serve`: the network
 * flags become serve's own command line, parsed and validated by the same
 * parser (errors are reworded with gvproxy's flag names); what serve has no
 * flag for (-listen/-services API addresses, -pid-file, -log-file,
 * -forward-*) is returned beside the config. A flag Moat cannot honour stops
 * start-up with an error naming it: never a silent ignore. The meaning of
 * each flag is gvproxy's (cmd/gvproxy/config.go `GvproxyConfigure`);
 * docs/gvproxy.md lists what remains different.
 */
import { existsSync } from 'node:fs';
import { isIP } from 'node:net';
import { formatIPv4 } from '../../netstack/addr.js';
import { ConfigError, NODE_CONFIG_IO, parseListenUrl, parseServeArgs, type ConfigIo, type ListenAddress, type ServeConfig } from '../config.js';
import { GVPROXY_DEFAULT_SSH_PORT, GVPROXY_DEFAULT_SUBNET, GvproxyFlagError, parseGvproxyFlags, type GvproxyArgs } from './flags.js';

/** One -forward-sock/-forward-dest/-forward-user/-forward-identity group. */
export interface SshSocketForward {
  /** Host unix socket path to listen on. */
  socket: string;
  /** Unix socket path inside the guest. */
  dest: string;
  user: string;
  identity: string;
}

export interface GvproxyConfig {
  serve: ServeConfig;
  /** API addresses (-listen, then -services): the same API on each. */
  api: ListenAddress[];
  pidFile: string | undefined;
  logFile: string | undefined;
  /** -ssh-port (127.0.0.1:PORT → guest:22), or undefined for -ssh-port -1. */
  sshPort: number | undefined;
  sshForwards: SshSocketForward[];
  /** The serve command line the gvproxy flags became (for the start-up log). */
  serveArgs: string[];
}

export type ParsedGvproxyArgs = { kind: 'help' } | { kind: 'version' } | { kind: 'config'; config: GvproxyConfig };

/** Flags gvproxy has and Moat refuses, and why (the error names the flag). */
const UNSUPPORTED: Readonly<Record<string, string>> = {
  config:
    "gvproxy's YAML configuration file is not read by moat gvproxy; give the settings as flags, or use moat serve --config with Moat's JSON (docs/gvproxy.md)",
  'listen-vpnkit': 'the VPNKit/HyperKit protocol is not served; use -listen-qemu',
  'listen-bess': 'the BESS (unixpacket) protocol is not served; use -listen-qemu',
  'listen-stdio': 'the stdio protocol is not served; use -listen-qemu',
  'listen-vfkit':
    'a unixgram socket is not served by Moat itself; run moat-shim unixgram --listen PATH --connect unix:///QEMU.sock (it accepts vfkit\'s "VFKT" hello) beside -listen-qemu unix:///QEMU.sock',
  'ec2-metadata-access':
    'Moat opens no single metadata address; --allow-link-local (moat serve) opens all of 169.254.0.0/16, which is more than this flag asks, so it is not mapped',
};

/** moat serve flags a gvproxy flag sets (or that make no sense under it), refused after "--". */
const RESERVED_SERVE_FLAGS: ReadonlyMap<string, string> = new Map([
  ['listen-qemu', '-listen-qemu'],
  ['tap-fd', '-listen-qemu'],
  ['tap-vnet-hdr', '-listen-qemu'],
  ['tap-offload', '-listen-qemu'],
  ['mtu', '-mtu'],
  ['subnet', '-subnet'],
  ['gateway-ip', '-gatewayIP'],
  ['guest-ip', '-deviceIP'],
  ['host-ip', '-hostIP'],
  ['pcap', '-pcap'],
  ['notification', '-notification'],
  ['api', '-listen or -services'],
  ['config', 'moat serve --config'],
]);

/** serve's flag → gvproxy's, to reword serve's errors in the words of the command line given. */
const LABELS: readonly [string, string][] = [
  ['--listen-qemu', '-listen-qemu'],
  ['--mtu', '-mtu'],
  ['--subnet', '-subnet'],
  ['--gateway-ip', '-gatewayIP'],
  ['--guest-ip', '-deviceIP'],
  ['--host-ip', '-hostIP'],
  ['--pcap', '-pcap'],
  ['--notification', '-notification'],
];

export function parseGvproxyArgs(argv: readonly string[], io: ConfigIo = NODE_CONFIG_IO, fileExists: (p: string) => boolean = existsSync): ParsedGvproxyArgs {
  let parsed;
  try {
    parsed = parseGvproxyFlags(argv);
  } catch (e) {
    if (e instanceof GvproxyFlagError) throw new ConfigError(e.message);
    throw e;
  }
  if (parsed.kind === 'help') return { kind: 'help' };
  const a = parsed.args;
  if (a.bools.get('version') === true) return { kind: 'version' };
  for (const name of a.given) {
    const why = UNSUPPORTED[name];
    // A bool given as false asks for nothing.
    if (why !== undefined && !(a.bools.has(name) && a.bools.get(name) === false)) throw new ConfigError(`-${name}: not supported: ${why}`);
  }

  const serveArgs: string[] = [];
  const qemu = a.strings.get('listen-qemu');
  if (qemu !== undefined && qemu !== '') serveArgs.push('--listen-qemu', qemu);
  else throw new ConfigError('-listen-qemu: moat gvproxy serves a guest over a QEMU stream socket; give -listen-qemu unix:///PATH (or tcp://HOST:PORT)');
  // gvproxy: -mtu 0 (its default) means 1500.
  const mtu = a.ints.get('mtu');
  if (mtu !== undefined && mtu !== 0) serveArgs.push('--mtu', String(mtu));
  serveArgs.push('--subnet', a.strings.get('subnet') ?? GVPROXY_DEFAULT_SUBNET);
  const addr = (flag: string, serveFlag: string): void => {
    const v = a.strings.get(flag);
    if (v !== undefined && v !== '') serveArgs.push(serveFlag, v);
  };
  addr('gatewayIP', '--gateway-ip');
  addr('deviceIP', '--guest-ip');
  addr('hostIP', '--host-ip');
  const pcap = a.strings.get('pcap');
  if (pcap !== undefined && pcap !== '') serveArgs.push('--pcap', pcap);
  if (a.bools.get('debug') === true) serveArgs.push('--log-level', 'debug');
  const notification = a.strings.get('notification');
  if (notification !== undefined && notification !== '') {
    // gvproxy's own check and words (config.go).
    if (!notification.startsWith('unix://')) throw new ConfigError('-notification: notification listen address must be unix:// address');
    serveArgs.push('--notification', notification);
  }

  // -ssh-port: gvproxy forwards 127.0.0.1:2222 to the guest's port 22 unless -ssh-port -1.
  const sshPort = a.ints.get('ssh-port') ?? GVPROXY_DEFAULT_SSH_PORT;
  if ((sshPort !== -1 && sshPort < 1024) || sshPort > 65535) throw new ConfigError(`-ssh-port: ssh-port value must be between 1024 and 65535, got ${sshPort}`);

  // After "--": moat serve's own flags (an allowlist, a DNS upstream...), but none that a gvproxy flag sets.
  for (const arg of a.moatArgs) {
    const name = /^--([a-z0-9-]+)/.exec(arg)?.[1];
    if (name !== undefined && RESERVED_SERVE_FLAGS.has(name)) {
      throw new ConfigError(`--${name} (after --): set by gvproxy's flags in moat gvproxy (${RESERVED_SERVE_FLAGS.get(name)}); give it there`);
    }
  }
  let serve: ServeConfig;
  try {
    const r = parseServeArgs([...serveArgs, ...a.moatArgs], io);
    if (r.kind !== 'config') throw new ConfigError('internal: serve flags asked for help');
    serve = r.config;
  } catch (e) {
    if (e instanceof ConfigError) throw new ConfigError(reword(e.message));
    throw e;
  }
  if (sshPort !== -1) {
    serve.forwards.push({ local: `127.0.0.1:${sshPort}`, remote: `${formatIPv4(serve.guestIp)}:22`, protocol: 'tcp' });
  }

  const api: ListenAddress[] = [...(a.lists.get('listen') ?? []).map((u) => apiAddress(u, '-listen'))];
  const services = a.strings.get('services');
  if (services !== undefined && services !== '') api.push(apiAddress(services, '-services'));
  const seen = new Set<string>();
  for (const l of [...api, ...serve.listen]) {
    if (seen.has(l.url)) throw new ConfigError(`-listen/-services/-listen-qemu: "${l.url}" is given twice`);
    seen.add(l.url);
  }

  return {
    kind: 'config',
    config: {
      serve,
      api,
      pidFile: nonEmpty(a.strings.get('pid-file')),
      logFile: nonEmpty(a.strings.get('log-file')),
      sshPort: sshPort === -1 ? undefined : sshPort,
      sshForwards: sshForwards(a, sshPort, fileExists),
      serveArgs,
    },
  };
}

function nonEmpty(s: string | undefined): string | undefined {
  return s === undefined || s === '' ? undefined : s;
}

function reword(message: string): string {
  let out = message;
  for (const [from, to] of LABELS) out = out.replace(new RegExp(`${from}(?![a-z-])`, 'g'), to);
  return out;
}

/**
 * An API address: unix:///PATH, or tcp://HOST:PORT on loopback only. gvproxy
 * listens wherever it is told; but whoever reaches the API can forward host
 * ports into the guest and add DNS records, so Moat keeps it on the host.
 */
function apiAddress(url: string, flag: string): ListenAddress {
  if (url.startsWith('vsock://')) throw new ConfigError(`${flag}: "${url}": vsock is not supported (Node has no AF_VSOCK); use unix:///PATH`);
  if (url.startsWith('npipe://')) throw new ConfigError(`${flag}: "${url}": named pipes are Windows only; use unix:///PATH`);
  const l = parseListenUrl(url, flag);
  if (l.kind === 'tcp' && !isLoopback(l.host)) {
    throw new ConfigError(`${flag}: "${url}": the API would be reachable beyond this host (it can forward host ports into the guest); use unix:///PATH or tcp://127.0.0.1:PORT`);
  }
  return l;
}

function isLoopback(host: string): boolean {
  if (host === 'localhost' || host === '::1') return true;
  return isIP(host) === 4 && host.startsWith('127.');
}

/** -forward-sock/-dest/-user/-identity: gvproxy's checks and words, then Moat's own need (-ssh-port). */
function sshForwards(a: GvproxyArgs, sshPort: number, fileExists: (p: string) => boolean): SshSocketForward[] {
  const socks = a.lists.get('forward-sock') ?? [];
  const dests = a.lists.get('forward-dest') ?? [];
  const users = a.lists.get('forward-user') ?? [];
  const ids = a.lists.get('forward-identity') ?? [];
  const c = socks.length;
  if (c !== dests.length || c !== users.length || c !== ids.length) {
    throw new ConfigError(
      '-forward-sock: --forward-sock, --forward-dest, --forward-user, and --forward-identity must all be specified together, the same number of times, or not at all',
    );
  }
  const out: SshSocketForward[] = [];
  for (let i = 0; i < c; i++) {
    const identity = ids[i]!;
    if (!fileExists(identity)) throw new ConfigError(`-forward-identity: identity file "${identity}" can't be loaded: no such file`);
    let socket = socks[i]!;
    if (socket.startsWith('unix://')) socket = socket.slice('unix://'.length);
    else if (socket.includes('://')) throw new ConfigError(`-forward-sock: "${socks[i]}": only unix sockets are supported`);
    if (!socket.startsWith('/')) throw new ConfigError(`-forward-sock: "${socks[i]}": needs an absolute path`);
    if (!dests[i]!.startsWith('/')) throw new ConfigError(`-forward-dest: "${dests[i]}": needs an absolute path in the guest`);
    // ssh -L reads "SOCKET:DEST": a colon in either path would split it elsewhere.
    if (socket.includes(':')) throw new ConfigError(`-forward-sock: "${socks[i]}": a path with ":" cannot be forwarded by ssh -L`);
    if (dests[i]!.includes(':')) throw new ConfigError(`-forward-dest: "${dests[i]}": a path with ":" cannot be forwarded by ssh -L`);
    if (!/^[A-Za-z0-9._][A-Za-z0-9._-]*$/.test(users[i]!)) throw new ConfigError(`-forward-user: "${users[i]}" is not a user name`);
    out.push({ socket, dest: dests[i]!, user: users[i]!, identity });
  }
  // Moat's ssh runs on the host and reaches the guest's sshd through the -ssh-port forward.
  if (out.length > 0 && sshPort === -1) throw new ConfigError('-forward-sock: needs the -ssh-port forward to reach the guest\'s sshd (Moat\'s ssh client runs on the host); -ssh-port -1 turns it off');
  return out;
}
