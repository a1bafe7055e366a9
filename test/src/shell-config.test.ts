import { generateKeyPairSync } from 'node:crypto';
import { issue, toPem } from '../../src/inject/x509.js';
import { LIMIT_SPECS } from '../../src/limits.js';
import { LOG_FLAG_SPECS } from '../../src/log-flags.js';
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { ipv4 } from '../../netstack/addr.js';
import {
  ConfigError,
  nameserversFromResolvConf,
  parseServeArgs,
  SERVE_FLAGS,
  type ConfigIo,
  type ServeConfig,
} from '../../src/config.js';

const LISTEN = ['--listen-qemu', 'unix:///tmp/moat.sock'];

function io(files: Record<string, string> = {}, resolv: string | undefined = 'nameserver 10.0.0.53\n'): ConfigIo {
  return {
    readFile: (p) => {
      const f = files[p];
      if (f === undefined) throw Object.assign(new Error(`ENOENT: no such file, open '${p}'`), { code: 'ENOENT' });
      return f;
    },
    readResolvConf: () => resolv,
  };
}

function parse(args: string[], files?: Record<string, string>, resolv?: string): ServeConfig {
  const r = parseServeArgs(args, io(files, resolv));
  if (r.kind !== 'config') throw new Error('expected a config');
  return r.config;
}

function errorOf(args: string[], files?: Record<string, string>): string {
  try {
    parseServeArgs(args, io(files));
  } catch (e) {
    expect(e).toBeInstanceOf(ConfigError);
    return (e as Error).message;
  }
  throw new Error(`expected a ConfigError for ${args.join(' ')}`);
}

describe('parseServeArgs defaults', () => {
  it('gives gvproxy defaults with only a listen address', () => {
    const c = parse(LISTEN);
    expect(c.listen).toEqual([{ kind: 'unix', path: '/tmp/moat.sock', url: 'unix:///tmp/moat.sock' }]);
    expect(c.mtu).toBe(1500);
    expect(c.network).toBe(ipv4(192, 168, 127, 0));
    expect(c.prefix).toBe(24);
    expect(c.gatewayIp).toBe(ipv4(192, 168, 127, 1));
    expect(c.guestIp).toBe(ipv4(192, 168, 127, 2));
    expect(c.hostIp).toBe(ipv4(192, 168, 127, 254));
    expect(c.gatewayMac).toBe(0x5a94efe40cdd);
    expect(c.apiSocket).toBeUndefined();
    expect(c.forwards).toEqual([]);
    expect(c.pcapFile).toBeUndefined();
    expect(c.logLevel).toBe('info');
    expect(c.logFormat).toBe('pretty');
    expect(c.allowLinkLocal).toBe(false);
    expect(c.dnsUpstreams).toEqual([{ host: '10.0.0.53', port: 53 }]);
  });

  it('requires a listen address (or a TAP descriptor)', () => {
    expect(errorOf([])).toMatch(/^--listen-qemu: at least one.*or --tap-fd N/);
  });

  it('--tap-fd N serves a TAP descriptor instead of listening; never with --listen-qemu, never stdio', () => {
    const c = parse(['--tap-fd', '3']);
    expect(c.tapFd).toBe(3);
    expect(c.listen).toEqual([]);
    expect(parse(LISTEN).tapFd).toBeUndefined();
    expect(errorOf(['--tap-fd', '3', ...LISTEN])).toMatch(/^--tap-fd: .*cannot be combined with --listen-qemu/);
    for (const bad of ['0', '2', '-1', 'three', '3.5', '']) {
      expect(errorOf([`--tap-fd=${bad}`])).toMatch(/^--tap-fd: must be an open descriptor number >= 3/);
    }
    // A descriptor is the starting process's to hand over, not a config file's.
    expect(errorOf(['--config', '/c.json'], { '/c.json': '{"tap-fd": 3}' })).toMatch(/unknown key "tap-fd"/);
    // --tap-vnet-hdr describes the --tap-fd device.
    expect(parse(['--tap-fd', '3', '--tap-vnet-hdr']).tapVnetHdr).toBe(true);
    expect(parse(['--tap-fd', '3']).tapVnetHdr).toBe(false);
    expect(errorOf([...LISTEN, '--tap-vnet-hdr'])).toMatch(/^--tap-vnet-hdr: .*give --tap-fd N too/);
    // --tap-offload describes a --tap-vnet-hdr device.
    expect(parse(['--tap-fd', '3', '--tap-vnet-hdr', '--tap-offload']).tapOffload).toBe(true);
    expect(parse(['--tap-fd', '3', '--tap-vnet-hdr']).tapOffload).toBe(false);
    expect(errorOf(['--tap-fd', '3', '--tap-offload'])).toMatch(/^--tap-offload: .*give --tap-vnet-hdr/);
  });

  it('returns help for --help and -h', () => {
    expect(parseServeArgs(['--help'], io()).kind).toBe('help');
    expect(parseServeArgs(['-h'], io()).kind).toBe('help');
  });
});

describe('parseServeArgs: every flag', () => {
  it('reads every flag', () => {
    const c = parse([
      '--listen-qemu', 'unix:///tmp/a.sock',
      '--listen-qemu', 'tcp://127.0.0.1:5555',
      '--mtu', '9000',
      '--subnet', '10.20.0.0/16',
      '--gateway-ip', '10.20.0.10',
      '--guest-ip', '10.20.1.2',
      '--host-ip', '10.20.255.1',
      '--gateway-mac', '02:00:00:00:00:01',
      '--api', 'unix:///tmp/api.sock',
      '--forward', '127.0.0.1:2222=10.20.1.2:22',
      '--forward', ':5353=10.20.1.2:53/udp',
      '--pcap', '/tmp/x.pcap',
      '--log-level', 'debug',
      '--log-format', 'json',
      '--allow-link-local',
      '--dns-upstream', '1.1.1.1',
      '--dns-upstream', '9.9.9.9:5353',
      '--dns-upstream', '[2606:4700::1111]:53',
    ]);
    expect(c.listen.map((l) => l.url)).toEqual(['unix:///tmp/a.sock', 'tcp://127.0.0.1:5555']);
    expect(c.listen[1]).toMatchObject({ kind: 'tcp', host: '127.0.0.1', port: 5555 });
    expect(c.mtu).toBe(9000);
    expect([c.network, c.prefix]).toEqual([ipv4(10, 20, 0, 0), 16]);
    expect(c.gatewayIp).toBe(ipv4(10, 20, 0, 10));
    expect(c.guestIp).toBe(ipv4(10, 20, 1, 2));
    expect(c.hostIp).toBe(ipv4(10, 20, 255, 1));
    expect(c.gatewayMac).toBe(0x020000000001);
    expect(c.apiSocket).toBe('/tmp/api.sock');
    expect(c.forwards).toEqual([
      { local: '127.0.0.1:2222', remote: '10.20.1.2:22', protocol: 'tcp' },
      { local: ':5353', remote: '10.20.1.2:53', protocol: 'udp' },
    ]);
    expect(c.pcapFile).toBe('/tmp/x.pcap');
    expect(c.logLevel).toBe('debug');
    expect(c.logFormat).toBe('json');
    expect(c.allowLinkLocal).toBe(true);
    expect(c.dnsUpstreams).toEqual([
      { host: '1.1.1.1', port: 53 },
      { host: '9.9.9.9', port: 5353 },
      { host: '2606:4700::1111', port: 53 },
    ]);
  });

  it('derives gateway, guest and host addresses from --subnet when not given', () => {
    const c = parse([...LISTEN, '--subnet', '10.0.2.0/24']);
    expect([c.gatewayIp, c.guestIp, c.hostIp]).toEqual([ipv4(10, 0, 2, 1), ipv4(10, 0, 2, 2), ipv4(10, 0, 2, 254)]);
  });

  it('accepts MTU bounds and refuses beyond them', () => {
    expect(parse([...LISTEN, '--mtu', '576']).mtu).toBe(576);
    expect(parse([...LISTEN, '--mtu', '65520']).mtu).toBe(65520);
    expect(errorOf([...LISTEN, '--mtu', '70000'])).toBe('--mtu: must be an integer 576..65520, got 70000');
    expect(errorOf([...LISTEN, '--mtu', '575'])).toBe('--mtu: must be an integer 576..65520, got 575');
    expect(errorOf([...LISTEN, '--mtu', '1500.5'])).toBe('--mtu: must be an integer 576..65520, got 1500.5');
    expect(errorOf([...LISTEN, '--mtu', 'big'])).toBe('--mtu: must be an integer 576..65520, got big');
  });
});

describe('parseServeArgs: errors name the flag and the value', () => {
  const cases: [string[], RegExp][] = [
    [['--listen-qemu', 'udp://x:1'], /^--listen-qemu: .*"udp:\/\/x:1"/],
    [['--listen-qemu', 'unix://relative.sock'], /^--listen-qemu: .*absolute.*"unix:\/\/relative.sock"/],
    [['--listen-qemu', `unix:///${'x'.repeat(120)}`], /^--listen-qemu: .*longer than 107/],
    [['--listen-qemu', 'tcp://127.0.0.1:99999'], /^--listen-qemu: .*99999/],
    [['--listen-qemu', 'tcp://:80'], /^--listen-qemu: .*host is required/],
    [[...LISTEN, '--listen-qemu', 'unix:///tmp/moat.sock'], /^--listen-qemu: .*given twice/],
    [[...LISTEN, '--subnet', '10.0.0.0'], /^--subnet: .*"10.0.0.0"/],
    [[...LISTEN, '--subnet', '10.0.0.0/31'], /^--subnet: .*\/30 or shorter.*"10.0.0.0\/31"/],
    [[...LISTEN, '--gateway-ip', '10.0.0.1'], /^--gateway-ip: 10.0.0.1 is outside --subnet 192.168.127.0\/24/],
    [[...LISTEN, '--guest-ip', '192.168.127.0'], /^--guest-ip: 192.168.127.0 is the network address/],
    [[...LISTEN, '--host-ip', '192.168.127.255'], /^--host-ip: 192.168.127.255 is the broadcast address/],
    [[...LISTEN, '--host-ip', 'nope'], /^--host-ip: must be an IPv4 address, got "nope"/],
    [[...LISTEN, '--guest-ip', '192.168.127.1'], /^--gateway-ip and --guest-ip: must be distinct, both are 192.168.127.1/],
    [[...LISTEN, '--host-ip', '192.168.127.2'], /^--guest-ip and --host-ip: must be distinct/],
    [[...LISTEN, '--gateway-mac', 'zz:00:00:00:00:00'], /^--gateway-mac: .*"zz:00:00:00:00:00"/],
    [[...LISTEN, '--gateway-mac', '01:00:5e:00:00:01'], /^--gateway-mac: must be a unicast MAC/],
    [[...LISTEN, '--api', 'tcp://127.0.0.1:80'], /^--api: .*unix socket only.*"tcp:\/\/127.0.0.1:80"/],
    [[...LISTEN, '--api', 'unix:///tmp/moat.sock'], /^--api: .*also a --listen-qemu address/],
    [[...LISTEN, '--forward', '127.0.0.1:2222'], /^--forward: expected LOCAL=GUEST_IP:PORT.*"127.0.0.1:2222"/],
    [[...LISTEN, '--forward', '127.0.0.1:2222=192.168.127.2:22/sctp'], /^--forward: protocol must be tcp or udp, got "sctp"/],
    [[...LISTEN, '--forward', '127.0.0.1:2222=10.0.0.2:22'], /^--forward: guest address 10.0.0.2 is outside --subnet/],
    [[...LISTEN, '--forward', '127.0.0.1:0=192.168.127.2:22'], /^--forward: "local": port must be an integer 1..65535, got "0"/],
    [[...LISTEN, '--forward', '127.0.0.1:1=example.com:22'], /^--forward: "remote": the guest address must be an IP address, got "example.com"/],
    [
      [...LISTEN, '--forward', '127.0.0.1:1=192.168.127.2:22', '--forward', '127.0.0.1:1=192.168.127.2:23'],
      /^--forward: 127.0.0.1:1\/tcp is forwarded twice/,
    ],
    [[...LISTEN, '--pcap', ''], /^--pcap: needs a file name/],
    [[...LISTEN, '--log-level', 'verbose'], /^--log-level: .*got "verbose"/],
    [[...LISTEN, '--log-format', 'xml'], /^--log-format: must be json or pretty, got "xml"/],
    [[...LISTEN, '--dns-upstream', 'dns.google'], /^--dns-upstream: .*"dns.google"/],
    [[...LISTEN, '--dns-upstream', '1.1.1.1:0'], /^--dns-upstream: port must be/],
    [[...LISTEN, '--bogus'], /^unknown flag --bogus/],
    [[...LISTEN, 'extra'], /unexpected argument "extra"/],
    [[...LISTEN, '--mtu'], /--mtu/],
    [[...LISTEN, '--config', '/nope.json'], /^--config: cannot read "\/nope.json"/],
  ];
  for (const [args, re] of cases) {
    it(`${args.slice(2).join(' ') || args.join(' ')} -> ${re.source}`, () => {
      expect(errorOf(args)).toMatch(re);
    });
  }
});

describe('config file and flag precedence', () => {
  const file = JSON.stringify({
    'listen-qemu': 'unix:///tmp/file.sock',
    mtu: 9000,
    subnet: '10.1.0.0/24',
    forward: ['127.0.0.1:2222=10.1.0.2:22', { local: ':8080', remote: '10.1.0.2:80' }],
    'allow-link-local': true,
    'log-format': 'json',
    'dns-upstream': ['8.8.8.8'],
  });

  it('reads the file', () => {
    const c = parse(['--config', '/etc/moat.json'], { '/etc/moat.json': file });
    expect(c.listen.map((l) => l.url)).toEqual(['unix:///tmp/file.sock']);
    expect(c.mtu).toBe(9000);
    expect(c.network).toBe(ipv4(10, 1, 0, 0));
    expect(c.forwards).toEqual([
      { local: '127.0.0.1:2222', remote: '10.1.0.2:22', protocol: 'tcp' },
      { local: ':8080', remote: '10.1.0.2:80', protocol: 'tcp' },
    ]);
    expect(c.allowLinkLocal).toBe(true);
    expect(c.logFormat).toBe('json');
    expect(c.dnsUpstreams).toEqual([{ host: '8.8.8.8', port: 53 }]);
  });

  it('lets flags override the file, and a repeated flag replace the file list', () => {
    const c = parse(
      ['--config', '/etc/moat.json', '--mtu', '1400', '--listen-qemu', 'tcp://127.0.0.1:1', '--forward', ':1=10.1.0.2:1/udp'],
      { '/etc/moat.json': file },
    );
    expect(c.mtu).toBe(1400);
    expect(c.listen.map((l) => l.url)).toEqual(['tcp://127.0.0.1:1']);
    expect(c.forwards).toEqual([{ local: ':1', remote: '10.1.0.2:1', protocol: 'udp' }]);
    expect(c.network).toBe(ipv4(10, 1, 0, 0)); // not overridden: from the file
  });

  it('names the file and the key in errors', () => {
    expect(errorOf(['--config', '/c.json'], { '/c.json': '{"mtu": 70000, "listen-qemu": "unix:///tmp/x"}' })).toBe(
      '/c.json: "mtu": must be an integer 576..65520, got 70000',
    );
    expect(errorOf(['--config', '/c.json'], { '/c.json': '{"mtu": 1500, "listen-qemu": "unix:///tmp/x", "tunnel": 1}' })).toMatch(
      /^\/c.json: unknown key "tunnel"/,
    );
    expect(errorOf(['--config', '/c.json'], { '/c.json': '{"listen-qemu": "unix:///tmp/x", "allow-link-local": "yes"}' })).toBe(
      '/c.json: "allow-link-local": must be true or false, got "yes"',
    );
    expect(errorOf(['--config', '/c.json'], { '/c.json': '{"listen-qemu": ' })).toMatch(/^--config: "\/c.json" is not valid JSON/);
    expect(errorOf(['--config', '/c.json'], { '/c.json': '[1]' })).toMatch(/^--config: "\/c.json" must hold a JSON object/);
    expect(errorOf(['--config', '/c.json'], { '/c.json': '{"listen-qemu": "unix:///tmp/x", "mtu": null}' })).toBe(
      '/c.json: "mtu": must be a string or number, got null',
    );
    expect(errorOf(['--config', '/c.json'], { '/c.json': '{"listen-qemu": "unix:///tmp/x", "forward": [{"local": ":1"}]}' })).toMatch(
      /^\/c.json: "forward": "remote" must be/,
    );
  });

  it('accepts every flag (except help/config) as a file key', () => {
    // ask-timeout-ms needs --on-unlisted ask, which the audit mode below excludes: ask-config.test.ts reads both from a file.
    const keys = SERVE_FLAGS.map((f) => f.name).filter((n) => !['help', 'config', 'tap-fd', 'tap-vnet-hdr', 'tap-offload', 'icmp-fd', 'ask-timeout-ms'].includes(n));
    // A key the file does not know is an error, so reading each known key with a valid value proves acceptance.
    const values: Record<string, unknown> = {
      'listen-qemu': ['unix:///tmp/q'],
      mtu: 1500,
      subnet: '192.168.127.0/24',
      'gateway-ip': '192.168.127.1',
      'gateway-mac': '5a:94:ef:e4:0c:dd',
      'guest-ip': '192.168.127.2',
      'host-ip': '192.168.127.254',
      ipv6: 'on',
      'ipv6-prefix': 'fd12:3456:789a:1::/64',
      api: 'unix:///tmp/api',
      forward: [],
      pcap: '/tmp/p.pcap',
      notification: 'unix:///tmp/events.sock',
      'log-level': 'warn',
      'log-format': 'pretty',
      'allow-link-local': false,
      'dns-upstream': '1.0.0.1:53',
      allow: ['github.com', '*.github.com'],
      resolver: ['1.1.1.1:53'],
      sinkhole: 'nxdomain',
      'admit-resolved': ['10.20.0.0/16'],
      'peek-timeout-ms': 2500,
      'decision-log': '/tmp/decisions.jsonl',
      'allow-host-alias': true,
      'refuse-ech': true,
      mode: 'audit',
      'refusal-details': true,
      // The limit flags (src/limits.ts), each at a value inside its bounds.
      ...Object.fromEntries(LIMIT_SPECS.map((l) => [l.flag, l.min])),
      // The live-lookup budget (src/allowlist/live-lookup-flags.ts).
      'live-lookup-rate': 5,
      'live-lookup-burst': 32,
      'live-lookup-bytes': 512,
      'live-lookup-burst-bytes': 4096,
      'no-live-lookups': false,
      // Ask mode (src/egress/ask-flags.ts).
      'on-unlisted': 'refuse',
      // The logs' budget and rotation flags (src/log-flags.ts), likewise.
      ...Object.fromEntries(LOG_FLAG_SPECS.map((l) => [l.flag, l.min])),
      // Rate limits and byte budgets (src/traffic/flags.ts).
      'rate-egress': '50Mbit',
      'rate-egress-burst': '1MiB',
      'rate-ingress': '10MiB/s',
      'rate-ingress-burst': '256KiB',
      budget: ['github.com=50MiB/1h'],
      'budget-direction': 'both',
      // Credential injection (src/inject/flags.ts).
      secret: ['gh=file:/gh.key'],
      inject: ['github.com Authorization: Bearer ${gh}'],
      'upstream-ca': '/up-ca.pem',
      'state-dir': '/tmp/moat-state',
    };
    expect(Object.keys(values).sort()).toEqual([...keys].sort());
    const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const upCa = toPem(issue({ commonName: 'test', publicKey, signingKey: privateKey, notBefore: new Date(), notAfter: new Date(Date.now() + 86400_000), kind: { ca: true } }).der);
    const c = parse(['--config', '/all.json'], { '/all.json': JSON.stringify(values), '/gh.key': 'ghp_x', '/up-ca.pem': upCa });
    expect(c.inject?.rules.size).toBe(1);
    expect(c.inject?.stateDir).toBe('/tmp/moat-state');
    expect(c.logLevel).toBe('warn');
    expect(c.apiSocket).toBe('/tmp/api');
    expect(c.dnsUpstreams).toEqual([{ host: '1.0.0.1', port: 53 }]);
    expect(c.allow.map((r) => r.text)).toEqual(['github.com', '*.github.com']);
    expect(c.resolvers).toEqual([{ host: '1.1.1.1', port: 53 }]);
    expect(c.sinkhole).toBe('nxdomain');
    expect(c.admitResolved).toEqual(['10.20.0.0/16']);
    expect(c.peekTimeoutMs).toBe(2500);
    expect(c.decisionLog).toBe('/tmp/decisions.jsonl');
    expect(c.allowHostAlias).toBe(true);
    expect(c.mode).toBe('audit');
    expect(c.refusalDetails).toBe(true);
  });

  it('egress flags: defaults, and bad values named', () => {
    const d = parse(['--listen-qemu', 'unix:///tmp/q']);
    expect(d).toMatchObject({ admitResolved: [], peekTimeoutMs: 10_000, decisionLog: undefined, allowHostAlias: false });
    const bad = (args: string[]): string => {
      try {
        parse(['--listen-qemu', 'unix:///tmp/q', ...args]);
      } catch (e) {
        return (e as Error).message;
      }
      return 'accepted';
    };
    expect(bad(['--admit-resolved', '10.0.0.1/8'])).toMatch(/^--admit-resolved: .*host bits.*"10.0.0.1\/8"/);
    expect(bad(['--admit-resolved', 'example.com'])).toMatch(/^--admit-resolved: /);
    expect(bad(['--peek-timeout-ms', '5'])).toMatch(/^--peek-timeout-ms: .*got 5/);
    expect(bad(['--peek-timeout-ms', '1s'])).toMatch(/^--peek-timeout-ms: /);
    expect(bad(['--decision-log', ''])).toMatch(/^--decision-log: needs a file name/);
    expect(bad(['--mode', 'learn'])).toMatch(/^--mode: must be enforce or audit, got "learn"/);
    expect(d.mode).toBe('enforce');
  });
});

describe('resolv.conf nameservers', () => {
  it('takes nameserver lines in order, skipping comments and junk', () => {
    expect(
      nameserversFromResolvConf('# generated\nsearch lan\nnameserver 127.0.0.53\n  nameserver fe80::1%eth0\nnameserver bogus\n;nameserver 1.2.3.4\n'),
    ).toEqual([
      { host: '127.0.0.53', port: 53 },
      { host: 'fe80::1%eth0', port: 53 },
    ]);
  });

  it('leaves the list empty when there is no resolv.conf', () => {
    const r = parseServeArgs(LISTEN, { readFile: () => '', readResolvConf: () => undefined });
    expect(r.kind === 'config' && r.config.dnsUpstreams).toEqual([]);
  });
});

describe('property: any in-range MTU is accepted, anything else is refused naming it', () => {
  it('holds for random integers', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 200_000 }), (n) => {
        const ok = n >= 576 && n <= 65520;
        if (ok) expect(parse([...LISTEN, '--mtu', String(n)]).mtu).toBe(n);
        else expect(errorOf([...LISTEN, '--mtu', String(n)])).toBe(`--mtu: must be an integer 576..65520, got ${n}`);
      }),
      { numRuns: 200 },
    );
  });
});
