/**
 * `moat zones` and `moat serve --allow` through runCli, against a DNS server
 * the test runs on 127.0.0.1 (--resolver 127.0.0.1:PORT).
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { EXIT_OK, EXIT_RUNTIME_ERROR, EXIT_USAGE, runCli, type CliIo } from '../../src/cli.js';
import { startTestUpstream, type TestUpstream } from './allowlist-upstream.js';

let dir: string;
let upstream: TestUpstream;
beforeEach(async () => {
  dir = mkdtempSync(join(tmpdir(), 'mz4-zones-'));
  upstream = await startTestUpstream({
    'github.com': { a: ['192.0.2.10'], ttl: 120 },
    'api.github.com': { a: ['192.0.2.11', '192.0.2.12'], ttl: 30 },
    'iapi.merck.com': { a: ['192.0.2.13'], ttl: 1 },
    'broken.test': 'servfail',
    'inside6.test': { a: ['192.0.2.14'], aaaa: ['fd6d:6f61:7400::5'], ttl: 60 },
    'dual6.test': { a: ['192.0.2.15'], aaaa: ['2606:4700::15'], ttl: 60 },
  });
});
afterEach(async () => {
  await upstream.close();
  rmSync(dir, { recursive: true, force: true });
});

function cliIo(stop: Promise<string> = new Promise(() => {})): CliIo & { out: string[]; err: string[] } {
  const out: string[] = [];
  const err: string[] = [];
  return {
    out,
    err,
    stdout: { write: (s: string) => out.push(s) },
    stderr: { write: (s: string) => err.push(s) },
    // Never the machine's resolver: a resolv.conf naming a closed loopback port.
    config: { readFile: () => '{}', readResolvConf: () => 'nameserver 127.0.0.1\n' },
    stopSignal: () => stop,
  };
}

const resolverArgs = (): string[] => ['--resolver', `127.0.0.1:${upstream.port}`];

describe('moat zones', () => {
  it('prints the zone table in match order with its records and exits 0', async () => {
    const io = cliIo();
    const code = await runCli(['zones', '--allow', 'github.com', '--allow', 'API.github.com.', '--allow', '*.merck.com', '--allow', 'iapi.merck.com', '--allow', '10.0.0.0/8', ...resolverArgs()], io);
    expect(io.err.join('')).toBe('');
    expect(code).toBe(EXIT_OK);
    expect(io.out.join('')).toBe(
      [
        'gateway.containers.internal.  builtin  ttl 60  A 192.168.127.1',
        'host.containers.internal.  builtin  ttl 60  A 192.168.127.254',
        'api.github.com.  allowed  ttl 30  A 192.0.2.11, A 192.0.2.12',
        // Below *.merck.com: its subdomains are the wildcard's (any depth below merck.com).
        'iapi.merck.com.  allowed  ttl 5  A 192.0.2.13  subdomains resolved live',
        'github.com.  allowed  ttl 120  A 192.0.2.10',
        'merck.com.  allowed  apex sinkholed  subdomains resolved live',
        '.  root  sinkhole A 0.0.0.0, other types NODATA',
        '',
      ].join('\n'),
    );
  });

  it('--sinkhole nxdomain and --subnet show in the table', async () => {
    const io = cliIo();
    expect(await runCli(['zones', '--allow', 'github.com', '--sinkhole', 'nxdomain', '--subnet', '10.0.2.0/24', ...resolverArgs()], io)).toBe(EXIT_OK);
    const lines = io.out.join('').trim().split('\n');
    expect(lines[0]).toBe('gateway.containers.internal.  builtin  ttl 60  A 10.0.2.1');
    expect(lines.at(-1)).toBe('.  root  sinkhole NXDOMAIN');
  });

  it('fails closed: exit 1 with one error naming every host that cannot be resolved, and no table', async () => {
    const io = cliIo();
    const code = await runCli(['zones', '--allow', 'github.com', '--allow', 'missing.test', '--allow', 'gone.test', ...resolverArgs()], io);
    expect(code).toBe(EXIT_RUNTIME_ERROR);
    expect(io.out.join('')).toBe('');
    expect(io.err.join('')).toBe('moat zones: cannot resolve allowed hosts: gone.test (NXDOMAIN); missing.test (NXDOMAIN)\n');
  });

  it('exit 2 for an invalid rule or no rule, naming the rule', async () => {
    const a = cliIo();
    expect(await runCli(['zones', '--allow', 'github.com', '--allow', '*github.com', ...resolverArgs()], a)).toBe(EXIT_USAGE);
    expect(a.err.join('')).toMatch(/^moat zones: --allow: invalid allow rule: "\*github\.com"/);
    const b = cliIo();
    expect(await runCli(['zones', ...resolverArgs()], b)).toBe(EXIT_USAGE);
    expect(upstream.queries).toEqual([]);
  });

  it('a stop signal during pre-resolution ends it at once with exit 1', async () => {
    let stop!: (s: string) => void;
    const io = cliIo(new Promise((r) => (stop = r)));
    // SERVFAIL is retried with backoff (100/300/900 ms): stop in the middle.
    const running = runCli(['zones', '--allow', 'broken.test', ...resolverArgs()], io);
    await new Promise((r) => setTimeout(r, 150));
    const t0 = performance.now();
    stop('SIGINT');
    expect(await running).toBe(EXIT_RUNTIME_ERROR);
    expect(performance.now() - t0).toBeLessThan(100);
    expect(io.err.join('')).toBe('moat zones: cancelled: stopped by SIGINT\n');
  });

  it('help: moat zones --help and moat help zones', async () => {
    const a = cliIo();
    expect(await runCli(['zones', '--help'], a)).toBe(EXIT_OK);
    expect(a.out.join('')).toMatch(/^Usage: moat zones --allow RULE/);
    const b = cliIo();
    expect(await runCli(['help', 'zones'], b)).toBe(EXIT_OK);
    expect(b.out.join('')).toBe(a.out.join(''));
  });
});

describe('moat serve --allow start-up', () => {
  it('an unresolvable allowed host stops start-up with exit 1 naming it; nothing was listening', async () => {
    const io = cliIo();
    const sock = join(dir, 'q.sock');
    const code = await runCli(['serve', '--listen-qemu', `unix://${sock}`, '--log-format', 'json', '--allow', 'github.com', '--allow', 'missing.test', ...resolverArgs()], io);
    expect(code).toBe(EXIT_RUNTIME_ERROR);
    const lines = io.err.join('').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(lines.at(-1)).toMatchObject({ level: 'error', msg: 'moat failed to start', error: { message: 'cannot resolve allowed host: missing.test (NXDOMAIN)' } });
    expect(lines.some((l) => l.msg === 'moat ready')).toBe(false);
    expect(existsSync(sock)).toBe(false);
  });

  it('resolves the allowed hosts before it is ready, logs the zones, and stops cleanly', async () => {
    let stop!: (s: string) => void;
    const io = cliIo(new Promise((r) => (stop = r)));
    const sock = join(dir, 'ok.sock');
    const done = runCli(['serve', '--listen-qemu', `unix://${sock}`, '--log-format', 'json', '--allow', 'github.com', '--allow', '*.merck.com', ...resolverArgs()], io);
    const start = Date.now();
    while (!io.err.join('').includes('"moat ready"')) {
      if (Date.now() - start > 5000) throw new Error(`no ready line: ${io.err.join('')}`);
      await new Promise((r) => setTimeout(r, 10));
    }
    const lines = io.err.join('').trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    const zones = lines.find((l) => l.msg === 'allowlist zones ready');
    expect(zones?.zones).toEqual(['gateway.containers.internal.', 'host.containers.internal.', 'github.com.', 'merck.com.', '.']);
    expect(lines.findIndex((l) => l.msg === 'allowlist zones ready')).toBeLessThan(lines.findIndex((l) => l.msg === 'moat ready'));
    // IPv6 is on by default (issue 19): the guest gets AAAA from the zones too, so both are pre-resolved.
    expect([...upstream.queries].sort()).toEqual(['github.com A', 'github.com AAAA']);
    stop('SIGTERM');
    expect(await done).toBe(EXIT_OK);
  });
});

describe('moat explain', () => {
  const run = async (args: string[]): Promise<{ code: number; out: string; err: string }> => {
    const io = cliIo();
    const code = await runCli(['explain', '--allow', 'github.com', '--allow', '*.merck.com:8443', '--allow', '10.0.0.0/8:22', ...resolverArgs(), ...args], io);
    return { code, out: io.out.join(''), err: io.err.join('') };
  };

  it('an allowed host: the rule, its DNS answer, the SNI hold and the addresses it would be dialed to', async () => {
    const r = await run(['github.com']);
    expect(r.err).toBe('');
    expect(r.code).toBe(EXIT_OK);
    expect(r.out).toContain('dns          A 192.0.2.10');
    expect(r.out).toContain('held: Moat reads the TLS SNI');
    expect(r.out).toContain('allowed: name-sni (rule github.com), dialed by name github.com');
    expect(r.out).toContain('dial         192.0.2.10 (resolved by Moat)');
    expect(r.out).toMatch(/result {7}allowed\n$/);
  });

  it('an unlisted host is sinkholed and refused, exit 3', async () => {
    const r = await run(['evil.test:443']);
    expect(r.code).toBe(3);
    expect(r.out).toContain('A 0.0.0.0 (sinkholed)');
    expect(r.out).toContain('blocked: name-not-allowed');
    expect(r.out).toMatch(/result {7}blocked\n$/);
  });

  it('addresses: metadata refused, an IP rule allows only its port', async () => {
    const meta = await run(['169.254.169.254:80']);
    expect(meta.code).toBe(3);
    expect(meta.out).toContain('blocked: link-local');
    const ssh = await run(['10.1.2.3:22']);
    expect(ssh.code).toBe(EXIT_OK);
    expect(ssh.out).toContain('allowed: ip-rule (rule 10.0.0.0/8:22), dialed to 10.1.2.3');
    const other = await run(['10.1.2.3:23']);
    expect(other.code).toBe(3);
  });

  it('an address on 443: UDP is held for its QUIC name (issue 17), on 53 it needs an IP rule', async () => {
    const quic = await run(['198.51.100.7:443']);
    expect(quic.out).toContain('udp          QUIC only: held for the SNI in its Initial (github.com)');
    const dns = await run(['198.51.100.7:53']);
    expect(dns.out).toContain('udp          blocked (udp-needs-ip-rule)');
  });

  it('the host alias: says Moat dials the host loopback, and that a containing CIDR does not open it (issue 14 finding 5)', async () => {
    const exact = cliIo();
    expect(await runCli(['explain', '--allow', '192.168.127.254:18080', ...resolverArgs(), '192.168.127.254:18080'], exact)).toBe(EXIT_OK);
    const out = exact.out.join('');
    expect(out).toContain('allowed: ip-rule (rule 192.168.127.254:18080), dialed to 127.0.0.1 (the host\'s loopback: 192.168.127.254 is the host alias)');
    expect(out).not.toContain('dialed to 192.168.127.254');
    const broad = cliIo();
    expect(await runCli(['explain', '--allow', '192.168.0.0/16:18080', '--allow', '0.0.0.0/0:80', ...resolverArgs(), '192.168.127.254:18080'], broad)).toBe(3);
    const b = broad.out.join('');
    expect(b).toContain('blocked: host-alias');
    expect(b).toContain('warning      rule 192.168.0.0/16:18080 contains the host alias 192.168.127.254 but does not open it');
    expect(b).toContain('warning      rule 0.0.0.0/0:80 contains 169.254.0.0/16 (cloud metadata) but does not open it');
  });

  it('IPv6 addresses (issue 19): metadata and mapped forms refused like IPv4, an IPv6 rule allows its port, NAT64 dialed at IPv4', async () => {
    const v6 = async (target: string): Promise<{ code: number; out: string; err: string }> => {
      const io = cliIo();
      const code = await runCli(['explain', '--allow', '[2606:4700::/32]:22', '--allow', '10.0.0.0/8:22', '--allow', 'github.com', ...resolverArgs(), target], io);
      return { code, out: io.out.join(''), err: io.err.join('') };
    };
    const meta = await v6('[fd00:ec2::254]:80');
    expect(meta.err).toBe('');
    expect(meta.code).toBe(3);
    expect(meta.out).toContain('destination  [fd00:ec2::254]:80 (an address: no DNS involved)');
    expect(meta.out).toContain('blocked: link-local');
    expect((await v6('[::ffff:169.254.169.254]:80')).out).toContain('blocked: link-local');
    const rule = await v6('[2606:4700:0:0::1]:22');
    expect(rule.code).toBe(EXIT_OK);
    expect(rule.out).toContain('allowed: ip-rule (rule [2606:4700::/32]:22), dialed to 2606:4700::1');
    expect((await v6('[2606:4700::1]:23')).code).toBe(3);
    const nat64 = await v6('[64:ff9b::10.1.2.3]:22');
    expect(nat64.code).toBe(EXIT_OK);
    expect(nat64.out).toContain('allowed: ip-rule (rule 10.0.0.0/8:22), dialed to 10.1.2.3');
    const bare = await v6('2606:4700::1');
    expect(bare.out).toContain('destination  [2606:4700::1]:443');
    expect(bare.out).toContain('needs a name: hostname rules for this port: github.com');
    const broad = cliIo();
    expect(await runCli(['explain', '--allow', '::/0', ...resolverArgs(), '[fe80::1]:80'], broad)).toBe(3);
    expect(broad.out.join('')).toContain('warning      rule ::/0 contains fd00:ec2::/32 (cloud metadata) but does not open it');
  });

  it("IPv6 host alias and guest prefix (issue 19): explain runs the policy with serve's IPv6 side, and --ipv6 off drops it", async () => {
    const ex = async (args: string[]): Promise<{ code: number; out: string; err: string }> => {
      const io = cliIo();
      const code = await runCli(['explain', ...resolverArgs(), ...args], io);
      return { code, out: io.out.join(''), err: io.err.join('') };
    };
    // The IPv6 host alias, allowed exactly: Moat dials the host's loopback (::1, or 127.0.0.1 on a host without one), never the alias.
    const exact = await ex(['--allow', '[fd6d:6f61:7400::fe]:18080', '[fd6d:6f61:7400::fe]:18080']);
    expect(exact.err).toBe('');
    expect(exact.code).toBe(EXIT_OK);
    expect(exact.out).toMatch(/allowed: ip-rule \(rule \[fd6d:6f61:7400::fe\]:18080\), dialed to (::1|127\.0\.0\.1) \(the host's loopback: fd6d:6f61:7400::fe is the host alias\)/);
    // A containing CIDR does not open it, and the start-up warning says so.
    const broad = await ex(['--allow', '[fd6d::/16]:18080', '[fd6d:6f61:7400::fe]:18080']);
    expect(broad.code).toBe(3);
    expect(broad.out).toContain('blocked: host-alias');
    expect(broad.out).toContain('warning      rule [fd6d::/16]:18080 contains the IPv6 host alias fd6d:6f61:7400::fe but does not open it');
    // Another address in the guest's /64 leads nowhere on the host: an IP rule passes the policy but not the NAT
    // (no host-side counterpart), and a name resolving into it is refused as the guest's own prefix (rebinding).
    const guest = await ex(['--allow', '[fd6d:6f61:7400::/64]:80', '[fd6d:6f61:7400::5]:80']);
    expect(guest.code).toBe(3);
    expect(guest.out).toContain('but the NAT refuses it (virtual-network): nothing is dialed');
    const named = await ex(['--allow', 'inside6.test', 'inside6.test']);
    expect(named.out, named.out).toContain('refused      fd6d:6f61:7400::5 (guest-subnet; --admit-resolved to allow)');
    // --ipv6-prefix moves both; the old alias is then an ordinary ULA that an exact rule allows.
    const moved = await ex(['--ipv6-prefix', 'fd00:1:2:3::/64', '--allow', '[fd00:1:2:3::/64]:80', '[fd00:1:2:3::fe]:80']);
    expect(moved.code).toBe(3);
    expect(moved.out).toContain('blocked: host-alias');
    const off = await ex(['--ipv6', 'off', '--allow', '[fd6d:6f61:7400::/64]:80', '[fd6d:6f61:7400::5]:80']);
    expect(off.code).toBe(3);
    expect(off.out).toContain('refuses it (ipv6-off)');
    const bad = await ex(['--ipv6-prefix', 'fd00::/48', '--allow', 'github.com', 'github.com']);
    expect(bad.code).toBe(EXIT_USAGE);
    expect(bad.err).toContain('--ipv6-prefix: must be an IPv6 /64');
  });

  it('a name (issue 19): the AAAA answer beside the A one, both dialed; the sinkhole answers ::; --ipv6 off asks A only', async () => {
    const ex = async (args: string[]): Promise<{ code: number; out: string }> => {
      const io = cliIo();
      const code = await runCli(['explain', ...resolverArgs(), ...args], io);
      return { code, out: io.out.join('') };
    };
    const dual = await ex(['--allow', 'dual6.test', 'dual6.test']);
    expect(dual.code).toBe(EXIT_OK);
    expect(dual.out).toContain('dns          A 192.0.2.15  [zone dual6.test., allowed]');
    expect(dual.out).toContain('dns          AAAA 2606:4700::15  [zone dual6.test., allowed]');
    expect(dual.out).toMatch(/dial {9}(192\.0\.2\.15, 2606:4700::15|2606:4700::15, 192\.0\.2\.15) \(resolved by Moat\)/);
    const sink = await ex(['--allow', 'dual6.test', 'evil.test']);
    expect(sink.out).toContain('dns          AAAA :: (sinkholed)');
    const off = await ex(['--ipv6', 'off', '--allow', 'dual6.test', 'dual6.test']);
    expect(off.out).not.toContain('AAAA');
  });

  it('IPv6 usage errors: a zone id, a bad bracket, a port without brackets', async () => {
    for (const bad of ['[fe80::1%eth0]:80', 'fe80::1%eth0', '[github.com]:443', '[::1]:0', '2001:db8::1:99999x']) {
      const r = await run([bad]);
      expect({ bad, code: r.code }).toEqual({ bad, code: EXIT_USAGE });
      expect(r.err).toContain(`destination "${bad}"`);
    }
    const admit = cliIo();
    expect(await runCli(['explain', '--allow', 'github.com', '--admit-resolved', 'fd00::1/8', ...resolverArgs(), 'github.com'], admit)).toBe(EXIT_USAGE);
    expect(admit.err.join('')).toContain('--admit-resolved: must be an IPv4 or IPv6 CIDR with no host bits set');
    const ok = cliIo();
    expect(await runCli(['explain', '--allow', 'github.com', '--admit-resolved', 'fd00::/8', '--admit-resolved', '::1', ...resolverArgs(), 'github.com'], ok)).toBe(EXIT_OK);
  });

  it('usage errors exit 2 and name the problem', async () => {
    const none = await run([]);
    expect(none.code).toBe(EXIT_USAGE);
    expect(none.err).toContain('expected one destination');
    const badPort = await run(['github.com:99999']);
    expect(badPort.code).toBe(EXIT_USAGE);
  });
});
