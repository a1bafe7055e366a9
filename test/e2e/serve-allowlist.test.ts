/**
 * `moat serve --allow` end to end: the guest (a network namespace bridged by
 * moat-shim) asks the gateway's DNS with dig; allowed names get the
 * addresses the test DNS server in the "remote" namespace holds, every other
 * name gets 0.0.0.0 and the DNS server never hears of it.
 *
 * Moat pre-resolves the allowed hosts at that same DNS server: its address
 * (remote's veth, random per run) is known only once the topology exists,
 * so the fixture's dnsZone hook writes it into a --config file that Moat
 * reads when it starts. Every address involved is in the test's own
 * namespaces (checked by the fixture's route guard) or loopback.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { e2eGate, spawnTracked } from './harness.js';
import { FIXTURE_TOOLS, GATEWAY_IP, MOAT_BIN, startMoatFixture, type MoatFixture } from './moat-fixture.js';

const gate = e2eGate([...FIXTURE_TOOLS, 'dig']);

describe.skipIf(gate.skip)('moat serve --allow e2e: the guest\'s DNS is the allowlist', () => {
  let fx: MoatFixture;
  const dir = mkdtempSync(join(tmpdir(), 'mz4-allow-'));
  const configFile = join(dir, 'moat.json');

  beforeAll(async () => {
    fx = await startMoatFixture({
      prefix: 'mz4-',
      extraMoatArgs: ['--config', configFile, '--allow', 'www.mz4.test', '--allow', 'API.mz4.test.', '--allow', '*.cdn.mz4.test'],
      dnsZone: (topo) => {
        writeFileSync(configFile, JSON.stringify({ resolver: [`${topo.remoteAddr}:53`] }));
        return {
          'www.mz4.test': [{ type: 'A', data: topo.internetAddrs[0]! }],
          'api.mz4.test': [
            { type: 'A', data: topo.internetAddrs[1]! },
            { type: 'A', data: topo.internetAddrs[2]! },
          ],
          'img.cdn.mz4.test': [{ type: 'A', data: topo.internetAddrs[3]! }],
          // In the upstream zone but not allowed: must be sinkholed and never asked for.
          'evil.mz4.test': [{ type: 'A', data: topo.internetAddrs[0]! }, { type: 'TXT', data: 'secret' }],
        };
      },
    });
  }, 60_000);

  afterAll(async () => {
    await fx?.stop();
    rmSync(dir, { recursive: true, force: true });
  }, 30_000);

  const dig = async (args: string[]): Promise<string> => {
    const r = await fx.guestRun('dig', [`@${GATEWAY_IP}`, '+time=2', '+tries=1', ...args], { timeoutMs: 10_000 });
    expect(r.status, `dig ${args.join(' ')}: ${r.stdout}${r.stderr}\nmoat log:\n${fx.moatLog().slice(-3000)}`).toBe(0);
    return r.stdout;
  };
  /** Questions the remote DNS server received ("name TYPE proto"). */
  const upstreamQueries = (): string[] =>
    fx
      .dnsServer!.stdout()
      .split('\n')
      .filter((l) => l.startsWith('query '))
      .map((l) => l.slice('query '.length));

  it('pre-resolved the exact hosts at start-up, and nothing else', () => {
    // A and AAAA: IPv6 is on by default, so the zones answer AAAA from pre-resolution too (issue 19).
    expect(upstreamQueries().sort()).toEqual(['api.mz4.test A udp', 'api.mz4.test AAAA udp', 'www.mz4.test A udp', 'www.mz4.test AAAA udp']);
    const ready = fx.moatLogEntries().find((e) => e['msg'] === 'allowlist zones ready');
    expect(ready?.['zones']).toEqual(['gateway.containers.internal.', 'host.containers.internal.', 'api.mz4.test.', 'cdn.mz4.test.', 'www.mz4.test.', '.']);
  });

  it('allowed names get the addresses the remote DNS server holds (UDP and TCP)', async () => {
    expect((await dig(['+short', 'www.mz4.test', 'A'])).trim()).toBe(fx.topo.internetAddrs[0]);
    expect((await dig(['+short', 'api.mz4.test', 'A'])).trim().split('\n').sort()).toEqual([fx.topo.internetAddrs[1], fx.topo.internetAddrs[2]].sort());
    expect((await dig(['+tcp', '+short', 'WWW.MZ4.TEST', 'A'])).trim()).toBe(fx.topo.internetAddrs[0]);
    // Below *.cdn.mz4.test: resolved live, when asked.
    expect((await dig(['+short', 'img.cdn.mz4.test', 'A'])).trim()).toBe(fx.topo.internetAddrs[3]);
    expect(upstreamQueries()).toContain('img.cdn.mz4.test A udp');
    expect((await dig(['gateway.containers.internal', 'A', '+short'])).trim()).toBe(GATEWAY_IP);
  });

  it('every other name gets 0.0.0.0 (or no records), over UDP and TCP, and the remote DNS server logs no query for it', async () => {
    const sinkholed = ['evil.mz4.test', 'mz4.test', 'cdn.mz4.test', 'exfil-c2VjcmV0.attacker.example', 'notwww.mz4.test'];
    for (const name of sinkholed) {
      expect((await dig(['+short', name, 'A'])).trim(), name).toBe('0.0.0.0');
      expect((await dig(['+tcp', '+short', name, 'A'])).trim(), name).toBe('0.0.0.0');
      const txt = await dig([name, 'TXT']);
      expect(txt).toMatch(/status: NOERROR/);
      expect(txt).toMatch(/ANSWER: 0,/);
    }
    const asked = upstreamQueries().map((q) => q.split(' ')[0]);
    for (const name of sinkholed) expect(asked, name).not.toContain(name);

    const decisions = fx.moatLogEntries().filter((e) => e['msg'] === 'dns decision');
    expect(decisions.find((d) => d['name'] === 'evil.mz4.test' && d['via'] === 'tcp')).toMatchObject({ decision: 'sinkholed', type: 'A', zone: '.' });
    expect(decisions.find((d) => d['name'] === 'www.mz4.test')).toMatchObject({ decision: 'allowed', zone: 'www.mz4.test.' });
  });

  it('several queries on one TCP connection are answered in order', async () => {
    const out = await dig(['+tcp', '+keepopen', '+short', 'www.mz4.test', 'A', 'evil.mz4.test', 'A', 'api.mz4.test', 'A']);
    const lines = out.trim().split('\n');
    expect(lines[0]).toBe(fx.topo.internetAddrs[0]);
    expect(lines[1]).toBe('0.0.0.0');
    expect(lines.slice(2).sort()).toEqual([fx.topo.internetAddrs[1], fx.topo.internetAddrs[2]].sort());
  });

  it('a Moat whose allowed host the resolver does not know exits non-zero naming it, before it is ready', async () => {
    const p = spawnTracked(process.execPath, [
      MOAT_BIN,
      'serve',
      '--listen-qemu',
      `unix://${join(dir, 'failing.sock')}`,
      '--log-format',
      'json',
      '--dns-upstream',
      `${fx.dnsServerAddr}:53`,
      '--resolver',
      `${fx.dnsServerAddr}:53`,
      '--allow',
      'www.mz4.test',
      '--allow',
      'missing.mz4.test',
      '--allow',
      'also-missing.mz4.test',
    ]);
    const exit = await Promise.race([p.exited, new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), 15_000))]);
    if (exit === 'timeout') {
      p.child.kill('SIGKILL');
      throw new Error(`moat did not exit: ${p.stderr()}`);
    }
    expect(exit.code).toBe(1);
    expect(p.stderr()).toContain('cannot resolve allowed hosts: also-missing.mz4.test (NXDOMAIN); missing.mz4.test (NXDOMAIN)');
    expect(p.stderr()).not.toContain('moat ready');
    expect(upstreamQueries()).toContain('missing.mz4.test A udp');
  }, 20_000);
});
