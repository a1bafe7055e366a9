/**
 * `moat proxy` and IPv6 literals end to end (issue 19: no family may become
 * the bypass). The real CLI (dist/) runs in a namespace of this test's own,
 * curl is the client, and a fake internet in a second namespace logs every
 * connection it accepts. A refused IPv6 literal, the IPv4-mapped and NAT64
 * forms of a refused IPv4 address, and the IPv6 metadata address (also
 * under --mode audit) are refused and reach nobody: the fake servers log
 * nothing for them. Allowed targets show that the same proxy does reach
 * IPv6 (CONNECT, absolute-form and SOCKS5 ATYP 4) and dials the mapped and
 * NAT64 forms of an allowed IPv4 address at that IPv4 address.
 *
 *   ns <p>proxy: moat proxy on 127.0.0.1:3128 (HTTP) / :1080 (SOCKS5),
 *                the audit proxy on :3129, curl; veth 198.18.19.1/24,
 *                2001:db8:19::1/64
 *   ns <p>world: veth 198.18.19.2/24, 2001:db8:19::2/64; on lo the
 *                targets below; one node server on [::]:8080 and [::]:80
 *
 * Network safety: nothing is added to the root namespace. Moat and curl run
 * inside the proxy namespace, whose only links are lo and the veth into the
 * world namespace; every target address is checked with `ip route get` /
 * `ip -6 route get` in that namespace to route via that veth before any
 * traffic. Cleanup by PID and namespace name (the harness registry).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { createNetns, deleteNetns, e2eGate, killTracked, nsExec, nsRun, nsRunAsync, nsSpawn, REPO_ROOT, waitFor, waitForOutput, type TrackedProcess } from './harness.js';

const gate = e2eGate(['ip', 'curl']);
const MOAT = join(REPO_ROOT, 'bin', 'moat.mjs');

const ALLOWED6 = '2001:4860:19::10';
const REFUSED6 = '2001:4860:19::20';
const ALLOWED4 = '198.51.100.19';
const REFUSED4 = '10.19.0.20';
const NAT64_REFUSED4 = '64:ff9b::a13:14'; // 10.19.0.20
const NAT64_ALLOWED4 = '64:ff9b::c633:6413'; // 198.51.100.19
const METADATA6 = 'fd00:ec2::254';

/** Accepts on every address of its namespace, logs "conn <local address>" per connection, answers HTTP with it. */
const SERVER_JS = `
const net = require('node:net');
let listening = 0;
for (const port of [8080, 80]) {
  net.createServer((s) => {
    const local = s.localAddress;
    console.log('conn ' + local + ' ' + port);
    s.on('error', () => {});
    s.once('data', () => {
      const body = 'hello from ' + local;
      s.end('HTTP/1.1 200 OK\\r\\nContent-Length: ' + body.length + '\\r\\nConnection: close\\r\\n\\r\\n' + body);
    });
  }).listen({ port, host: '::', ipv6Only: false }, () => { if (++listening === 2) console.log('ready'); });
}
`;

describe.skipIf(gate.skip)('moat proxy: IPv6 literals from a namespace', () => {
  const id = randomBytes(3).toString('hex');
  const proxyNs = `mz19p-${id}-proxy`;
  const worldNs = `mz19p-${id}-world`;
  const veth = `mz19${id}p`;
  let server: TrackedProcess;
  let proxy: TrackedProcess;
  let audit: TrackedProcess;
  let broad: TrackedProcess;

  beforeAll(async () => {
    createNetns(proxyNs, { disableIpv6: false });
    createNetns(worldNs, { disableIpv6: false });
    nsExec(proxyNs, 'ip', ['link', 'add', veth, 'type', 'veth', 'peer', 'name', `mz19${id}w`, 'netns', worldNs]);
    nsExec(proxyNs, 'ip', ['addr', 'add', '198.18.19.1/24', 'dev', veth]);
    nsExec(proxyNs, 'ip', ['-6', 'addr', 'add', '2001:db8:19::1/64', 'dev', veth, 'nodad']);
    nsExec(proxyNs, 'ip', ['link', 'set', veth, 'up']);
    nsExec(worldNs, 'ip', ['addr', 'add', '198.18.19.2/24', 'dev', `mz19${id}w`]);
    nsExec(worldNs, 'ip', ['-6', 'addr', 'add', '2001:db8:19::2/64', 'dev', `mz19${id}w`, 'nodad']);
    nsExec(worldNs, 'ip', ['link', 'set', `mz19${id}w`, 'up']);
    for (const a of [REFUSED4, ALLOWED4]) nsExec(worldNs, 'ip', ['addr', 'add', `${a}/32`, 'dev', 'lo']);
    for (const a of [ALLOWED6, REFUSED6, NAT64_REFUSED4, NAT64_ALLOWED4, METADATA6]) nsExec(worldNs, 'ip', ['-6', 'addr', 'add', `${a}/128`, 'dev', 'lo']);
    for (const a of [REFUSED4, ALLOWED4]) nsExec(proxyNs, 'ip', ['route', 'add', `${a}/32`, 'via', '198.18.19.2']);
    for (const n of ['2001:4860:19::/64', '64:ff9b::/96', 'fd00:ec2::/32']) nsExec(proxyNs, 'ip', ['-6', 'route', 'add', n, 'via', '2001:db8:19::2']);

    // Every address this test names routes into the world namespace, from where Moat runs.
    for (const a of [REFUSED4, ALLOWED4, ALLOWED6, REFUSED6, NAT64_REFUSED4, NAT64_ALLOWED4, METADATA6]) {
      const r = nsRun(proxyNs, 'ip', [a.includes(':') ? '-6' : '-4', 'route', 'get', a]);
      expect({ a, status: r.status, dev: /\bdev (\S+)/.exec(r.stdout)?.[1] }).toEqual({ a, status: 0, dev: veth });
    }

    server = nsSpawn(worldNs, process.execPath, ['-e', SERVER_JS]);
    await waitForOutput(server, /ready/, { stream: 'stdout', timeoutMs: 10_000 });
    const common = ['--resolver', '127.0.0.1:9', '--log-level', 'warn'];
    proxy = nsSpawn(proxyNs, process.execPath, [MOAT, 'proxy', '--listen', '127.0.0.1:3128', '--socks', '127.0.0.1:1080', '--allow', `[${ALLOWED6}]:8080`, '--allow', `${ALLOWED4}:8080`, ...common]);
    audit = nsSpawn(proxyNs, process.execPath, [MOAT, 'proxy', '--listen', '127.0.0.1:3129', '--allow', `[${ALLOWED6}]:8080`, '--mode', 'audit', ...common]);
    // Every IPv6 address allowed: what a rule matching IPv6 text naively would open.
    broad = nsSpawn(proxyNs, process.execPath, [MOAT, 'proxy', '--listen', '127.0.0.1:3130', '--allow', '::/0', ...common]);
    for (const p of [proxy, audit, broad]) await waitForOutput(p, /HTTPS_PROXY/, { stream: 'stdout', timeoutMs: 20_000 });
  }, 60_000);

  afterAll(async () => {
    for (const p of [proxy, audit, broad, server]) if (p !== undefined) await killTracked(p);
    deleteNetns(proxyNs);
    deleteNetns(worldNs);
  });

  /** curl from the proxy namespace; `how`: CONNECT tunnel, absolute-form request, or SOCKS5 (curl sends ATYP 4 for an IPv6 literal). */
  async function fetch(url: string, how: 'connect' | 'absolute' | 'socks', port = 3128): Promise<{ code: string; body: string }> {
    const via = how === 'socks' ? ['--socks5', '127.0.0.1:1080'] : ['-x', `http://127.0.0.1:${port}`, ...(how === 'connect' ? ['-p'] : [])];
    const r = await nsRunAsync(proxyNs, 'curl', ['-sS', '-g', '--max-time', '8', ...via, '-w', '\n%{http_connect} %{http_code}', url], { timeoutMs: 15_000 });
    const lines = r.stdout.split('\n');
    return { code: lines.at(-1)!.trim(), body: lines.slice(0, -1).join('\n') };
  }
  const conns = (): string[] => server.stdout().split('\n').filter((l) => l.startsWith('conn '));

  it('refused: an IPv6 literal without a rule, the mapped and NAT64 forms of a refused IPv4 address, the metadata address; nothing reaches a server', async () => {
    const before = conns().length;
    const refused: [string, 'connect' | 'absolute' | 'socks'][] = [
      [`http://[${REFUSED6}]:8080/`, 'connect'],
      [`http://[${REFUSED6}]:8080/`, 'socks'],
      [`http://[::ffff:${REFUSED4}]:8080/`, 'connect'],
      [`http://[::FFFF:A13:14]:8080/`, 'connect'],
      [`http://[::ffff:${REFUSED4}]:8080/`, 'absolute'],
      [`http://[::ffff:${REFUSED4}]:8080/`, 'socks'],
      [`http://[${NAT64_REFUSED4}]:8080/`, 'connect'],
      [`http://[64:ff9b::${REFUSED4}]:8080/`, 'socks'],
      [`http://[${METADATA6}]/`, 'connect'],
      [`http://[FD00:0EC2:0000::0254]/`, 'absolute'],
      [`http://[${METADATA6}]/`, 'socks'],
      [`http://${REFUSED4}:8080/`, 'connect'], // the IPv4 address itself, for reference
    ];
    for (const [url, how] of refused) {
      const r = await fetch(url, how);
      // HTTP proxy: 403 on the CONNECT or the request; SOCKS: curl reports the refusal, no HTTP status.
      const want = how === 'connect' ? /^403 000$/ : how === 'absolute' ? /^000 403$/ : /^000 000$/;
      expect({ url, how, code: r.code }).toEqual({ url, how, code: expect.stringMatching(want) });
    }
    await new Promise((r) => setTimeout(r, 300));
    expect(conns().slice(before)).toEqual([]);
  });

  it('--allow ::/0 opens every IPv6 address but none of the IPv4 ones in IPv6 clothing, nor the metadata address', async () => {
    const before = conns().length;
    for (const url of [`http://[::ffff:${REFUSED4}]:8080/`, `http://[${NAT64_REFUSED4}]:8080/`, `http://[::${REFUSED4}]:8080/`, `http://[${METADATA6}]/`, `http://[${METADATA6}]:8080/`]) {
      const r = await fetch(url, 'connect', 3130);
      expect({ url, code: r.code }).toEqual({ url, code: '403 000' });
    }
    await new Promise((r) => setTimeout(r, 300));
    expect(conns().slice(before)).toEqual([]);
    // ... while a plain IPv6 address is open to it.
    expect(await fetch(`http://[${REFUSED6}]:8080/`, 'connect', 3130)).toEqual({ code: '200 200', body: `hello from ${REFUSED6}` });
  });

  it('audit mode: the metadata address in its IPv6 and IPv4-in-IPv6 forms stays refused and reaches nobody', async () => {
    const before = conns().length;
    for (const url of [`http://[${METADATA6}]/`, 'http://[::ffff:169.254.169.254]/', 'http://[64:ff9b::a9fe:a9fe]/', `http://[${METADATA6}]:8080/`]) {
      const r = await fetch(url, 'connect', 3129);
      expect({ url, code: r.code }).toEqual({ url, code: '403 000' });
    }
    await new Promise((r) => setTimeout(r, 300));
    expect(conns().slice(before)).toEqual([]);
  });

  it('allowed: the IPv6 rule over CONNECT, absolute-form and SOCKS5; the IPv4 rule through its mapped and NAT64 forms, dialed at IPv4', async () => {
    const before = conns().length;
    expect(await fetch(`http://[${ALLOWED6}]:8080/`, 'connect')).toEqual({ code: '200 200', body: `hello from ${ALLOWED6}` });
    expect(await fetch(`http://[${ALLOWED6}]:8080/`, 'absolute')).toEqual({ code: '000 200', body: `hello from ${ALLOWED6}` });
    expect(await fetch(`http://[2001:4860:19:0:0:0:0:10]:8080/`, 'socks')).toEqual({ code: '000 200', body: `hello from ${ALLOWED6}` });
    expect(await fetch(`http://[::ffff:${ALLOWED4}]:8080/`, 'connect')).toEqual({ code: '200 200', body: `hello from ::ffff:${ALLOWED4}` });
    expect(await fetch(`http://[${NAT64_ALLOWED4}]:8080/`, 'connect')).toEqual({ code: '200 200', body: `hello from ::ffff:${ALLOWED4}` });
    expect(conns().slice(before)).toEqual([
      `conn ${ALLOWED6} 8080`,
      `conn ${ALLOWED6} 8080`,
      `conn ${ALLOWED6} 8080`,
      `conn ::ffff:${ALLOWED4} 8080`,
      `conn ::ffff:${ALLOWED4} 8080`,
    ]);
  });
});
