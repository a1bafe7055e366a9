/**
 * gvproxy's command line, read as gvproxy reads it: its flag names and
 * defaults (gvisor-tap-vsock cmd/gvproxy/config.go `GvproxyArgParse`, and
 * `-version` from pkg/types/version.go), parsed by the rules of Go's `flag`
 * package, which gvproxy uses:
 *
 * - `-name` and `--name` are the same flag; `-name=value` and `-name value`;
 * - a bool flag takes no separate value: `-debug`, `-debug=false`
 *   (`-debug false` leaves "false" as the first non-flag argument);
 * - a non-bool flag takes the next argument whatever it looks like
 *   (`-pid-file -x` sets "-x");
 * - integers as strconv.ParseInt(s, 0, 64): decimal, 0x.., 0o.., 0b.., 0..;
 * - the last value of a plain flag wins; the repeatable ones (`-listen`,
 *   `-forward-*`) collect every value in order;
 * - parsing stops at `--` or the first argument that is not a flag.
 *
 * gvproxy ignores arguments after the flags; Moat refuses them (a mistyped
 * command line must not start a different network), except after `--`,
 * where `moat serve` flags may follow (`moat gvproxy -listen-qemu ... --
 * --allow github.com`): gvproxy's own launchers never put anything there.
 */

export type GvproxyFlagType = 'string' | 'bool' | 'int' | 'list';

export interface GvproxyFlagDoc {
  name: string;
  type: GvproxyFlagType;
  /** gvproxy's own usage text. */
  usage: string;
}

/** Every flag gvproxy defines, in its order (cmd/gvproxy/config.go, containers/gvisor-tap-vsock 3405fe5). */
export const GVPROXY_FLAGS: readonly GvproxyFlagDoc[] = [
  { name: 'config', type: 'string', usage: 'Use configuration file with command line override' },
  { name: 'listen', type: 'list', usage: 'control endpoint' },
  { name: 'debug', type: 'bool', usage: 'Print debug info' },
  { name: 'pcap', type: 'string', usage: 'Capture network traffic to a pcap file' },
  { name: 'mtu', type: 'int', usage: 'Set the MTU (default: 1500)' },
  { name: 'ssh-port', type: 'int', usage: 'Port to access the guest virtual machine. Must be between 1024 and 65535' },
  { name: 'subnet', type: 'string', usage: 'Subnet address in CIDR format, e.g. 192.168.127.0/24' },
  { name: 'gatewayIP', type: 'string', usage: 'Gateway IP address, default is first usable address of subnet' },
  { name: 'deviceIP', type: 'string', usage: 'Device IP address, default is second usable address of subnet' },
  { name: 'hostIP', type: 'string', usage: 'Host IP address, default is last usable address of subnet' },
  { name: 'listen-vpnkit', type: 'string', usage: 'VPNKit socket to be used by Hyperkit' },
  { name: 'listen-qemu', type: 'string', usage: 'Socket to be used by Qemu' },
  { name: 'listen-bess', type: 'string', usage: 'unixpacket socket to be used by Bess-compatible applications' },
  { name: 'listen-stdio', type: 'string', usage: 'accept stdio pipe' },
  { name: 'listen-vfkit', type: 'string', usage: 'unixgram socket to be used by vfkit-compatible applications' },
  { name: 'forward-sock', type: 'list', usage: 'Forwards a unix socket to the guest virtual machine over SSH' },
  { name: 'forward-dest', type: 'list', usage: 'Forwards a unix socket to the guest virtual machine over SSH' },
  { name: 'forward-user', type: 'list', usage: 'SSH user to use for unix socket forward' },
  { name: 'forward-identity', type: 'list', usage: 'Path to SSH identity key for forwarding' },
  { name: 'pid-file', type: 'string', usage: 'Generate a file with the PID in it' },
  { name: 'log-file', type: 'string', usage: 'Output log messages (logrus) to a given file path' },
  { name: 'services', type: 'string', usage: 'Exposes the same HTTP API as the --listen flag, without the /connect endpoint' },
  { name: 'ec2-metadata-access', type: 'bool', usage: 'Permits access to EC2 Metadata Service and Amazon Time Sync Service' },
  { name: 'notification', type: 'string', usage: 'Socket to be used to send network-ready notifications' },
  { name: 'version', type: 'bool', usage: 'Print version information' },
];

/** gvproxy's defaults for the flags that have one besides "" / false / none. */
export const GVPROXY_DEFAULT_SSH_PORT = 2222;
export const GVPROXY_DEFAULT_SUBNET = '192.168.127.0/24';

/** What the command line said: flag name → value (lists in order), and which flags were given at all. */
export interface GvproxyArgs {
  strings: Map<string, string>;
  bools: Map<string, boolean>;
  ints: Map<string, number>;
  lists: Map<string, string[]>;
  /** Every flag name given, in order of first appearance (for "unsupported flag" errors). */
  given: string[];
  /** What followed `--`: `moat serve` flags. */
  moatArgs: string[];
}

/** A command-line mistake, worded as Go's flag package words it. */
export class GvproxyFlagError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'GvproxyFlagError';
  }
}

export type ParsedGvproxyFlags = { kind: 'help' } | { kind: 'args'; args: GvproxyArgs };

/** Parses gvproxy's argv (without the program name). Throws GvproxyFlagError. */
export function parseGvproxyFlags(argv: readonly string[]): ParsedGvproxyFlags {
  const out: GvproxyArgs = { strings: new Map(), bools: new Map(), ints: new Map(), lists: new Map(), given: [], moatArgs: [] };
  let i = 0;
  let terminated = false;
  while (i < argv.length) {
    const s = argv[i]!;
    if (s.length < 2 || s[0] !== '-') break; // the first non-flag argument ends the flags
    let minuses = 1;
    if (s[1] === '-') {
      minuses = 2;
      if (s.length === 2) {
        i++; // "--" ends the flags and is consumed
        terminated = true;
        break;
      }
    }
    const body = s.slice(minuses);
    if (body.length === 0 || body[0] === '-' || body[0] === '=') throw new GvproxyFlagError(`bad flag syntax: ${s}`);
    i++;
    const eq = body.indexOf('=');
    const name = eq < 0 ? body : body.slice(0, eq);
    const inline = eq < 0 ? undefined : body.slice(eq + 1);
    const doc = GVPROXY_FLAGS.find((f) => f.name === name);
    if (doc === undefined) {
      if (name === 'help' || name === 'h') return { kind: 'help' };
      throw new GvproxyFlagError(`flag provided but not defined: -${name}`);
    }
    if (!out.given.includes(name)) out.given.push(name);
    if (doc.type === 'bool') {
      if (inline === undefined) out.bools.set(name, true);
      else {
        const b = parseGoBool(inline);
        if (b === undefined) throw new GvproxyFlagError(`invalid boolean value "${inline}" for -${name}: parse error`);
        out.bools.set(name, b);
      }
      continue;
    }
    let value = inline;
    if (value === undefined) {
      if (i >= argv.length) throw new GvproxyFlagError(`flag needs an argument: -${name}`);
      value = argv[i++]!;
    }
    if (doc.type === 'int') {
      const n = parseGoInt(value);
      if (n === undefined) throw new GvproxyFlagError(`invalid value "${value}" for flag -${name}: parse error`);
      out.ints.set(name, n);
    } else if (doc.type === 'list') {
      out.lists.set(name, [...(out.lists.get(name) ?? []), value]);
    } else {
      out.strings.set(name, value);
    }
  }
  if (terminated) out.moatArgs = argv.slice(i);
  else if (i < argv.length) {
    throw new GvproxyFlagError(`unexpected argument "${argv[i]}": gvproxy takes flags only (a bool flag takes its value as -flag=false)`);
  }
  return { kind: 'args', args: out };
}

/** strconv.ParseBool. */
export function parseGoBool(s: string): boolean | undefined {
  if (['1', 't', 'T', 'TRUE', 'true', 'True'].includes(s)) return true;
  if (['0', 'f', 'F', 'FALSE', 'false', 'False'].includes(s)) return false;
  return undefined;
}

/** strconv.ParseInt(s, 0, 64) for the range a port or MTU needs: sign, then 0x/0o/0b/0 prefixes or decimal; "_" only after a prefix. */
export function parseGoInt(s: string): number | undefined {
  const m = /^([+-]?)(0[xX][0-9a-fA-F_]+|0[oO][0-7_]+|0[bB][01_]+|0[0-7_]*|[1-9][0-9]*)$/.exec(s);
  if (m === null) return undefined;
  let digits = m[2]!;
  let base = 10;
  if (/^0[xX]/.test(digits)) [base, digits] = [16, digits.slice(2)];
  else if (/^0[oO]/.test(digits)) [base, digits] = [8, digits.slice(2)];
  else if (/^0[bB]/.test(digits)) [base, digits] = [2, digits.slice(2)];
  else if (digits.length > 1 && digits[0] === '0') [base, digits] = [8, digits.slice(1)];
  // Go allows "_" only with a base prefix (the decimal pattern has none), between digits or right after the prefix.
  if (digits.endsWith('_') || digits.includes('__')) return undefined;
  digits = digits.replace(/_/g, '');
  if (digits === '') return base === 8 ? 0 : undefined;
  const n = parseInt(digits, base);
  if (!Number.isSafeInteger(n)) return undefined;
  return m[1] === '-' ? -n : n;
}

/** gvproxy's usage text (flag package format), for -h. */
export function gvproxyUsage(): string {
  const lines = ['Usage of moat gvproxy (gvproxy\'s flags; Moat serves the network: see docs/gvproxy.md):'];
  for (const f of GVPROXY_FLAGS) {
    const arg = f.type === 'bool' ? '' : f.type === 'int' ? ' int' : ' string';
    lines.push(`  -${f.name}${arg}`, `    \t${f.usage}`);
  }
  lines.push(
    '',
    'After "--", moat serve flags may follow (moat gvproxy -listen-qemu unix:///q.sock -- --allow github.com).',
    '',
    'Not supported (start-up stops naming the flag): -config (gvproxy YAML), -listen-vpnkit, -listen-bess,',
    '-listen-stdio, -listen-vfkit (use moat-shim unixgram), -ec2-metadata-access, -listen vsock://.',
    '',
  );
  return lines.join('\n');
}
