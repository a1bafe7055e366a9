import { describe, expect, it } from 'vitest';
import { EXIT_USAGE, runCli, type CliIo } from '../../src/cli.js';
import { ConfigError, mainHelp, parseServeArgs, parseZonesArgs, serveHelp, zonesHelp, type ConfigIo } from '../../src/config.js';

const LISTEN = ['--listen-qemu', 'unix:///tmp/mz4-x.sock'];

/** `resolvConf` null: there is no /etc/resolv.conf. */
function io(files: Record<string, string> = {}, resolvConf: string | null = 'nameserver 10.9.8.7\n'): ConfigIo {
  return {
    readFile: (p) => {
      const t = files[p];
      if (t === undefined) throw new Error('ENOENT');
      return t;
    },
    readResolvConf: () => resolvConf ?? undefined,
  };
}

function parse(args: string[], cio = io()) {
  const r = parseServeArgs(args, cio);
  if (r.kind !== 'config') throw new Error('expected a config');
  return r.config;
}

function errorOf(f: () => unknown): string {
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(ConfigError);
    return (e as Error).message;
  }
  throw new Error('no error thrown');
}

describe('--allow, --resolver, --sinkhole', () => {
  it('defaults: no allowlist, resolvers from resolv.conf, sinkhole zero', () => {
    const c = parse(LISTEN);
    expect(c.allow).toEqual([]);
    expect(c.resolvers).toEqual([{ host: '10.9.8.7', port: 53 }]);
    expect(c.sinkhole).toBe('zero');
  });

  it('parses repeatable --allow rules in order, with one parser for hosts, wildcards, IPs and CIDRs', () => {
    const c = parse([...LISTEN, '--allow', 'GitHub.com.', '--allow', '*.githubusercontent.com', '--allow', '10.0.0.0/8:443', '--allow', 'api.github.com:443']);
    expect(c.allow.map((r) => r.kind)).toEqual(['host', 'wildcard', 'cidr', 'host']);
    expect(c.allow[0]).toMatchObject({ kind: 'host', host: 'github.com', port: null });
    expect(c.allow[1]).toMatchObject({ kind: 'wildcard', domain: 'githubusercontent.com' });
    expect(c.allow[3]).toMatchObject({ host: 'api.github.com', port: 443 });
  });

  it('an invalid rule is an error naming every invalid rule, never skipped', () => {
    const msg = errorOf(() => parse([...LISTEN, '--allow', 'good.example', '--allow', 'bad_rule!', '--allow', '1.2.3', '--allow', 'ok.test']));
    expect(msg).toMatch(/^--allow: invalid allow rules: /);
    expect(msg).toContain('"bad_rule!"');
    expect(msg).toContain('"1.2.3"');
    expect(msg).not.toContain('good.example');
  });

  it('--resolver replaces resolv.conf, takes IP[:PORT] and [IPv6]:PORT, refuses names', () => {
    const c = parse([...LISTEN, '--allow', 'a.test', '--resolver', '127.0.0.1:5353', '--resolver', '[::1]:53', '--resolver', '1.1.1.1']);
    expect(c.resolvers).toEqual([
      { host: '127.0.0.1', port: 5353 },
      { host: '::1', port: 53 },
      { host: '1.1.1.1', port: 53 },
    ]);
    expect(errorOf(() => parse([...LISTEN, '--resolver', 'dns.example:53']))).toMatch(/^--resolver: must be an IP address/);
    expect(errorOf(() => parse([...LISTEN, '--resolver', '127.0.0.1:99999']))).toMatch(/^--resolver: /);
  });

  it('an allowlist with no resolver at all (none given, none in resolv.conf) is refused', () => {
    expect(errorOf(() => parse([...LISTEN, '--allow', 'a.test'], io({}, null)))).toMatch(/^--resolver: none given/);
    // Without --allow nothing needs resolving: no error.
    expect(parse(LISTEN, io({}, null)).resolvers).toEqual([]);
  });

  it('--sinkhole takes zero or nxdomain only', () => {
    expect(parse([...LISTEN, '--sinkhole', 'nxdomain']).sinkhole).toBe('nxdomain');
    expect(parse([...LISTEN, '--sinkhole', 'zero']).sinkhole).toBe('zero');
    expect(errorOf(() => parse([...LISTEN, '--sinkhole', 'refused']))).toBe('--sinkhole: must be zero or nxdomain, got "refused"');
  });

  it('reads allow/resolver/sinkhole from the config file; the command line replaces the file list', () => {
    const files = { '/m.json': JSON.stringify({ allow: ['a.test', '*.b.test'], resolver: '127.0.0.2', sinkhole: 'nxdomain' }) };
    const c = parse([...LISTEN, '--config', '/m.json'], io(files));
    expect(c.allow.map((r) => r.text)).toEqual(['a.test', '*.b.test']);
    expect(c.resolvers).toEqual([{ host: '127.0.0.2', port: 53 }]);
    expect(c.sinkhole).toBe('nxdomain');
    const d = parse([...LISTEN, '--config', '/m.json', '--allow', 'c.test'], io(files));
    expect(d.allow.map((r) => r.text)).toEqual(['c.test']);
    const bad = { '/b.json': JSON.stringify({ allow: ['x..y'] }) };
    expect(errorOf(() => parse([...LISTEN, '--config', '/b.json'], io(bad)))).toMatch(/^\/b\.json: "allow": invalid allow rule: "x\.\.y"/);
  });
});

describe('moat zones arguments', () => {
  it('needs at least one --allow, accepts only its own flags, reads the built-in addresses from --subnet', () => {
    expect(errorOf(() => parseZonesArgs([], io()))).toMatch(/^--allow: at least one rule is required/);
    expect(errorOf(() => parseZonesArgs(['--allow', 'a.test', '--mtu', '9000'], io()))).toMatch(/unknown flag --mtu \(see moat zones --help\)/);
    const r = parseZonesArgs(['--allow', 'a.test', '--subnet', '10.0.2.0/24'], io());
    expect(r.kind === 'config' && r.config).toMatchObject({ gatewayIp: 0x0a000201, hostIp: 0x0a0002fe, sinkhole: 'zero' });
    expect(parseZonesArgs(['--help'], io())).toEqual({ kind: 'help' });
  });

  it('ignores serve-only keys of a shared config file', () => {
    const files = { '/s.json': JSON.stringify({ 'listen-qemu': 'unix:///tmp/q', mtu: 9000, allow: ['a.test'] }) };
    const r = parseZonesArgs(['--config', '/s.json'], io(files));
    expect(r.kind === 'config' && r.config.allow.map((x) => x.text)).toEqual(['a.test']);
  });
});

describe('help and exit codes', () => {
  it('serve help documents the new flags; main help lists the zones command and its flags', () => {
    for (const flag of ['--allow RULE', '--resolver IP[:PORT]', '--sinkhole MODE']) {
      expect(serveHelp()).toContain(flag);
      expect(zonesHelp()).toContain(flag);
    }
    expect(mainHelp()).toContain('  zones    ');
    expect(mainHelp()).toContain(zonesHelp());
  });

  it('moat serve with an invalid rule exits 2 naming it, before anything starts', async () => {
    const err: string[] = [];
    const cli: CliIo = {
      stdout: { write: () => {} },
      stderr: { write: (s: string) => err.push(s) },
      config: io(),
      stopSignal: () => new Promise(() => {}),
    };
    expect(await runCli(['serve', ...LISTEN, '--allow', 'exa mple.com'], cli)).toBe(EXIT_USAGE);
    expect(err.join('')).toBe('moat serve: --allow: invalid allow rule: "exa mple.com" (bad-character)\n');
  });
});
