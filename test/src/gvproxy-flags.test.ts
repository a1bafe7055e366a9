import { describe, expect, it } from 'vitest';
import { formatIPv4 } from '../../netstack/addr.js';
import { ConfigError } from '../../src/config.js';
import { parseGvproxyArgs, type GvproxyConfig } from '../../src/gvproxy/config.js';
import { GVPROXY_FLAGS, parseGoInt, parseGvproxyFlags } from '../../src/gvproxy/flags.js';

const IO = { readFile: () => '', readResolvConf: () => 'nameserver 127.0.0.1\n' };
const QEMU = ['-listen-qemu', 'unix:///tmp/gv.sock'];

function config(argv: string[], exists: (p: string) => boolean = () => true): GvproxyConfig {
  const r = parseGvproxyArgs(argv, IO, exists);
  if (r.kind !== 'config') throw new Error(`config expected, got ${r.kind}`);
  return r.config;
}

function error(argv: string[], exists: (p: string) => boolean = () => true): string {
  try {
    parseGvproxyArgs(argv, IO, exists);
  } catch (e) {
    expect(e).toBeInstanceOf(ConfigError);
    return (e as Error).message;
  }
  throw new Error('expected a ConfigError');
}

describe("gvproxy's flags, parsed by Go's flag rules", () => {
  it('knows every flag gvproxy defines (cmd/gvproxy/config.go at 3405fe5, plus -version)', () => {
    expect(GVPROXY_FLAGS.map((f) => f.name).sort()).toEqual(
      [
        'config', 'listen', 'debug', 'pcap', 'mtu', 'ssh-port', 'subnet', 'gatewayIP', 'deviceIP', 'hostIP', 'listen-vpnkit', 'listen-qemu',
        'listen-bess', 'listen-stdio', 'listen-vfkit', 'forward-sock', 'forward-dest', 'forward-user', 'forward-identity', 'pid-file',
        'log-file', 'services', 'ec2-metadata-access', 'notification', 'version',
      ].sort(),
    );
  });

  it('takes -flag value, -flag=value, --flag value and --flag=value alike', () => {
    for (const argv of [['-mtu', '9000'], ['-mtu=9000'], ['--mtu', '9000'], ['--mtu=9000']]) {
      const r = parseGvproxyFlags(argv);
      if (r.kind !== 'args') throw new Error('args expected');
      expect(r.args.ints.get('mtu')).toBe(9000);
    }
  });

  it('bool flags: -debug, -debug=false, -debug=0; "-debug false" leaves "false" as an argument (refused)', () => {
    const on = parseGvproxyFlags(['-debug']);
    const off = parseGvproxyFlags(['-debug=false']);
    const zero = parseGvproxyFlags(['--debug=0']);
    expect(on.kind === 'args' && on.args.bools.get('debug')).toBe(true);
    expect(off.kind === 'args' && off.args.bools.get('debug')).toBe(false);
    expect(zero.kind === 'args' && zero.args.bools.get('debug')).toBe(false);
    expect(() => parseGvproxyFlags(['-debug', 'false'])).toThrow(/unexpected argument "false"/);
    expect(() => parseGvproxyFlags(['-debug=maybe'])).toThrow('invalid boolean value "maybe" for -debug: parse error');
  });

  it('a string flag takes the next argument even when it starts with "-"; a missing one is an error', () => {
    const r = parseGvproxyFlags(['-pid-file', '-odd-name']);
    expect(r.kind === 'args' && r.args.strings.get('pid-file')).toBe('-odd-name');
    expect(() => parseGvproxyFlags(['-pid-file'])).toThrow('flag needs an argument: -pid-file');
  });

  it('repeatable flags collect in order; plain flags keep the last value', () => {
    const r = parseGvproxyFlags(['-listen', 'unix:///a', '-mtu', '1400', '-listen', 'unix:///b', '-mtu', '1500']);
    if (r.kind !== 'args') throw new Error('args expected');
    expect(r.args.lists.get('listen')).toEqual(['unix:///a', 'unix:///b']);
    expect(r.args.ints.get('mtu')).toBe(1500);
  });

  it('unknown flags, bad syntax and -h are as Go says them; "--" ends the flags', () => {
    expect(() => parseGvproxyFlags(['-nope'])).toThrow('flag provided but not defined: -nope');
    expect(() => parseGvproxyFlags(['---mtu', '1'])).toThrow('bad flag syntax: ---mtu');
    expect(() => parseGvproxyFlags(['-=x'])).toThrow('bad flag syntax: -=x');
    expect(parseGvproxyFlags(['-h']).kind).toBe('help');
    expect(parseGvproxyFlags(['--help']).kind).toBe('help');
    expect(parseGvproxyFlags(['-debug', '--']).kind).toBe('args');
    expect(() => parseGvproxyFlags(['-debug', 'extra'])).toThrow(/unexpected argument "extra"/);
    const r = parseGvproxyFlags(['-debug', '--', '--allow', 'x.test']);
    expect(r.kind === 'args' && r.args.moatArgs).toEqual(['--allow', 'x.test']);
  });

  it('integers as strconv.ParseInt(s, 0, 64)', () => {
    expect(parseGoInt('1500')).toBe(1500);
    expect(parseGoInt('-1')).toBe(-1);
    expect(parseGoInt('0x5dc')).toBe(1500);
    expect(parseGoInt('02734')).toBe(1500);
    expect(parseGoInt('0o2734')).toBe(1500);
    expect(parseGoInt('0b101')).toBe(5);
    expect(parseGoInt('0x_5dc')).toBe(1500);
    expect(parseGoInt('1_500')).toBeUndefined();
    expect(parseGoInt('15OO')).toBeUndefined();
    expect(parseGoInt('')).toBeUndefined();
    expect(parseGoInt('09')).toBeUndefined();
  });
});

describe('gvproxy flags onto moat serve', () => {
  it("podman machine's command line maps onto serve's config", () => {
    const c = config([
      '-mtu', '1500', '-ssh-port', '41234', '-listen-qemu', 'unix:///run/user/1000/podman/podman-machine-default-gvproxy.sock',
      '-forward-sock', '/run/user/1000/podman/podman-machine-default-api.sock', '-forward-dest', '/run/user/1000/podman/podman.sock',
      '-forward-user', 'core', '-forward-identity', '/home/u/.local/share/containers/podman/machine/machine',
      '-pid-file', '/run/user/1000/podman/gvproxy.pid', '-log-file', '/run/user/1000/podman/gvproxy.log',
    ]);
    expect(c.serve.listen.map((l) => l.url)).toEqual(['unix:///run/user/1000/podman/podman-machine-default-gvproxy.sock']);
    expect(c.serve.mtu).toBe(1500);
    expect(formatIPv4(c.serve.network)).toBe('192.168.127.0');
    expect([c.serve.gatewayIp, c.serve.guestIp, c.serve.hostIp].map(formatIPv4)).toEqual(['192.168.127.1', '192.168.127.2', '192.168.127.254']);
    expect(c.serve.forwards).toEqual([{ local: '127.0.0.1:41234', remote: '192.168.127.2:22', protocol: 'tcp' }]);
    expect(c.pidFile).toBe('/run/user/1000/podman/gvproxy.pid');
    expect(c.logFile).toBe('/run/user/1000/podman/gvproxy.log');
    expect(c.sshPort).toBe(41234);
    expect(c.sshForwards).toEqual([
      {
        socket: '/run/user/1000/podman/podman-machine-default-api.sock',
        dest: '/run/user/1000/podman/podman.sock',
        user: 'core',
        identity: '/home/u/.local/share/containers/podman/machine/machine',
      },
    ]);
    expect(c.api).toEqual([]);
    expect(c.serve.logLevel).toBe('info');
  });

  it('gvproxy defaults: ssh-port 2222, -ssh-port -1 forwards nothing, -mtu 0 is 1500, -debug is log level debug', () => {
    expect(config(QEMU).serve.forwards).toEqual([{ local: '127.0.0.1:2222', remote: '192.168.127.2:22', protocol: 'tcp' }]);
    expect(config([...QEMU, '-ssh-port', '-1']).serve.forwards).toEqual([]);
    expect(config([...QEMU, '-mtu', '0']).serve.mtu).toBe(1500);
    expect(config([...QEMU, '-debug']).serve.logLevel).toBe('debug');
  });

  it('addresses: -subnet, -gatewayIP, -deviceIP, -hostIP; the ssh forward follows -deviceIP', () => {
    const c = config([...QEMU, '-subnet', '10.5.0.0/24', '-gatewayIP', '10.5.0.9', '-deviceIP', '10.5.0.7', '-hostIP', '10.5.0.200']);
    expect([c.serve.gatewayIp, c.serve.guestIp, c.serve.hostIp].map(formatIPv4)).toEqual(['10.5.0.9', '10.5.0.7', '10.5.0.200']);
    expect(c.serve.forwards[0]!.remote).toBe('10.5.0.7:22');
  });

  it("serve's validation errors come back in gvproxy's flag names", () => {
    expect(error([...QEMU, '-deviceIP', '10.0.0.1'])).toBe('-deviceIP: 10.0.0.1 is outside -subnet 192.168.127.0/24');
    expect(error([...QEMU, '-mtu', '100'])).toMatch(/^-mtu: must be an integer 576\.\.65520/);
    expect(error([...QEMU, '-gatewayIP', '192.168.127.2'])).toMatch(/^-gatewayIP and -deviceIP: must be distinct/);
    expect(error(['-listen-qemu', 'http://x'])).toMatch(/^-listen-qemu: must be unix/);
    expect(error([...QEMU, '-ssh-port', '80'])).toBe('-ssh-port: ssh-port value must be between 1024 and 65535, got 80');
    expect(error([...QEMU, '-ssh-port', '70000'])).toMatch(/^-ssh-port: /);
    expect(error([])).toMatch(/^-listen-qemu: /);
  });

  it('every flag Moat cannot honour stops start-up naming it', () => {
    const cases: [string[], string][] = [
      [['-config', 'gvproxy.yaml'], '-config: not supported'],
      [['-listen-vpnkit', 'unix:///tmp/v'], '-listen-vpnkit: not supported'],
      [['-listen-bess', 'unixpacket:///tmp/b'], '-listen-bess: not supported'],
      [['-listen-stdio', 'x'], '-listen-stdio: not supported'],
      [['-listen-vfkit', 'unixgram:///tmp/vf'], '-listen-vfkit: not supported'],
      [['-ec2-metadata-access'], '-ec2-metadata-access: not supported'],
      [['-listen', 'vsock://:1024'], '-listen: "vsock://:1024": vsock is not supported'],
      [['-notification', 'tcp://127.0.0.1:9'], '-notification: notification listen address must be unix:// address'],
    ];
    for (const [extra, message] of cases) expect(error([...QEMU, ...extra])).toContain(message);
    // A bool given as false asks for nothing.
    expect(config([...QEMU, '-ec2-metadata-access=false']).serve.allowLinkLocal).toBe(false);
  });

  it('the API listens on unix sockets and loopback TCP only; never on an address beyond the host', () => {
    const c = config([...QEMU, '-listen', 'unix:///tmp/a.sock', '-listen', 'tcp://127.0.0.1:7777', '-services', 'unix:///tmp/s.sock']);
    expect(c.api.map((a) => a.url)).toEqual(['unix:///tmp/a.sock', 'tcp://127.0.0.1:7777', 'unix:///tmp/s.sock']);
    expect(error([...QEMU, '-listen', 'tcp://0.0.0.0:7777'])).toMatch(/^-listen: "tcp:\/\/0\.0\.0\.0:7777": the API would be reachable beyond this host/);
    expect(error([...QEMU, '-services', 'tcp://192.168.1.5:7777'])).toMatch(/^-services: /);
    expect(error([...QEMU, '-listen', 'unix:///tmp/gv.sock'])).toContain('is given twice');
  });

  it('-forward-*: together or not at all (gvproxy\'s words), an identity that exists, -ssh-port kept, no ":" in paths', () => {
    const fwd = (sock: string, dest = '/run/podman/podman.sock', user = 'core'): string[] => [
      '-forward-sock', sock, '-forward-dest', dest, '-forward-user', user, '-forward-identity', '/k',
    ];
    expect(error([...QEMU, '-forward-sock', '/a'])).toContain('must all be specified together');
    expect(error([...QEMU, ...fwd('/tmp/p.sock')], () => false)).toBe('-forward-identity: identity file "/k" can\'t be loaded: no such file');
    expect(error([...QEMU, '-ssh-port', '-1', ...fwd('/tmp/p.sock')])).toMatch(/^-forward-sock: needs the -ssh-port forward/);
    expect(error([...QEMU, ...fwd('/tmp/a:b.sock')])).toMatch(/^-forward-sock: .*":"/);
    expect(error([...QEMU, ...fwd('/tmp/p.sock', '/x:y')])).toMatch(/^-forward-dest: /);
    expect(error([...QEMU, ...fwd('/tmp/p.sock', '/x', '-oProxyCommand=sh')])).toMatch(/^-forward-user: /);
    expect(config([...QEMU, ...fwd('unix:///tmp/p.sock')]).sshForwards[0]!.socket).toBe('/tmp/p.sock');
  });

  it('after "--", moat serve flags: an allowlist and a DNS upstream; none a gvproxy flag sets', () => {
    const c = config([...QEMU, '--', '--allow', 'example.test', '--resolver', '127.0.0.1', '--dns-upstream', '127.0.0.1:5353']);
    expect(c.serve.allow.map((r) => r.text)).toEqual(['example.test']);
    expect(c.serve.dnsUpstreams).toEqual([{ host: '127.0.0.1', port: 5353 }]);
    expect(error([...QEMU, '--', '--mtu', '9000'])).toBe("--mtu (after --): set by gvproxy's flags in moat gvproxy (-mtu); give it there");
    expect(error([...QEMU, '--', '--api=unix:///tmp/x'])).toMatch(/^--api \(after --\)/);
    expect(error([...QEMU, '--', 'stray'])).toMatch(/unexpected argument "stray"/);
    expect(error([...QEMU, '--', '--allow', 'bad rule!'])).toMatch(/^--allow: /);
  });

  it('-version and -h', () => {
    expect(parseGvproxyArgs(['-version'], IO).kind).toBe('version');
    expect(parseGvproxyArgs(['-h'], IO).kind).toBe('help');
  });
});
