/**
 * The egress policy end to end (issue 5, "Done means", second bullet): the
 * real Linux kernel as the guest (a namespace bridged by moat-shim to Moat),
 * real clients in it (curl, openssl s_client, dig, python3), and real servers
 * for "the internet" in the remote namespace, named by the test DNS server
 * there.
 *
 *   www.mz5.test   -> internetAddrs[0]  allowed from the start (HTTPS :443, HTTP :80)
 *   evil.mz5.test  -> internetAddrs[1]  in the upstream zone, never allowed
 *   new.mz5.test   -> internetAddrs[2]  allowed only by the live reload (PUT /allowlist)
 *   internetAddrs[3]                    no name: a TCP listener :9000 and a UDP echo :9053
 *   169.254.169.254                     a listener in remote, routed there for case 9 only
 *
 * Network safety: every address above is on remote's lo and routes from the
 * root namespace (where Moat dials) via the topology's veth, which the
 * fixture checks (assertRoutesInto) before the guest may name it. The guest
 * never resolves a name through the system resolver: names are asked of
 * Moat's gateway DNS with dig, and curl gets the answer with --resolve.
 * "The internet" lives at 198.18.x.x (private), so Moat is started with
 * --admit-resolved for that range, as EGRESS-CLI.md requires.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { e2eGate, hostRun, killTracked, nsRun, waitFor, type TrackedProcess } from './harness.js';
import { FIXTURE_TOOLS, GATEWAY_IP, startMoatFixture, type MoatFixture } from './moat-fixture.js';
import {
  LISTENER_JS,
  ONE_BYTE_HELLO_PY,
  SILENT_CONNECTION_PY,
  SITE_SERVER_JS,
  TCP_CONNECT_PY,
  UDP_PROBE_PY,
  linesStartingWith,
  makeSelfSignedCert,
  type TestCert,
} from './egress-support.js';

const gate = e2eGate([...FIXTURE_TOOLS, 'curl', 'dig', 'openssl', 'python3', 'tcpdump']);

const WWW = 'www.mz5.test';
const EVIL = 'evil.mz5.test';
const NEW = 'new.mz5.test';
const METADATA_IP = '169.254.169.254';
const PEEK_TIMEOUT_MS = 1_500;
/** How long to wait before asserting that something did NOT reach a server. */
const SETTLE_MS = 400;

/** One line of --decision-log (EGRESS-CLI.md). */
interface DecisionLine {
  id: string;
  decision: 'allowed' | 'blocked';
  reason: string;
  rule: string | null;
  proto: 'tcp' | 'udp' | 'dns';
  dst: string;
  name: string | null;
  via: string | null;
  [key: string]: unknown;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe.skipIf(gate.skip)('moat serve egress policy e2e: guest -> moat-shim -> Moat -> remote', () => {
  let fx: MoatFixture;
  const dir = mkdtempSync(join(tmpdir(), 'mz5-egress-'));
  const decisionLogFile = join(dir, 'decisions.jsonl');
  let cert: TestCert;
  let www: TrackedProcess;
  let evil: TrackedProcess;
  let fresh: TrackedProcess;
  let listener: TrackedProcess;
  let wwwIp: string;
  let evilIp: string;
  let newIp: string;
  let plainIp: string;

  beforeAll(async () => {
    cert = makeSelfSignedCert(dir, [WWW, EVIL, NEW]);
    fx = await startMoatFixture({
      prefix: 'mz5-',
      internetAddresses: 4,
      pcap: true, // case 6 counts the one-byte segments in it
      extraMoatArgs: (topo) => [
        '--allow', WWW,
        '--resolver', `${topo.remoteAddr}:53`,
        '--admit-resolved', topo.internetSubnet,
        '--peek-timeout-ms', String(PEEK_TIMEOUT_MS),
        '--decision-log', decisionLogFile,
      ],
      dnsZone: (topo) => ({
        [WWW]: [{ type: 'A', data: topo.internetAddrs[0]! }],
        [EVIL]: [{ type: 'A', data: topo.internetAddrs[1]! }],
        [NEW]: [{ type: 'A', data: topo.internetAddrs[2]! }],
      }),
    });
    [wwwIp, evilIp, newIp, plainIp] = fx.topo.internetAddrs as [string, string, string, string];
    const site = (ip: string, name: string): Promise<TrackedProcess> =>
      fx.startNodeServer(fx.remoteNs, SITE_SERVER_JS, [ip, name, cert.certFile, cert.keyFile, '80', '443']);
    www = await site(wwwIp, 'www');
    evil = await site(evilIp, 'evil');
    fresh = await site(newIp, 'new');
    listener = await fx.startNodeServer(fx.remoteNs, LISTENER_JS, [plainIp, '9000', '9053']);
  }, 90_000);

  afterAll(async () => {
    await fx?.stop();
    rmSync(dir, { recursive: true, force: true });
  }, 30_000);

  // ---------------------------------------------------------------- helpers

  const evidence = (): string => `\nmoat log tail:\n${fx.moatLog().slice(-3000)}`;

  const dig = async (args: string[]): Promise<string> => {
    const r = await fx.guestRun('dig', [`@${GATEWAY_IP}`, '+time=2', '+tries=1', ...args], { timeoutMs: 10_000 });
    expect(r.status, `dig ${args.join(' ')}: ${r.stdout}${r.stderr}${evidence()}`).toBe(0);
    return r.stdout;
  };
  /** The A record Moat's gateway DNS gives the guest for `name`. */
  const resolveA = async (name: string): Promise<string> => (await dig(['+short', name, 'A'])).trim();

  const curl = (args: string[]) => fx.guestRun('curl', ['-sS', '--max-time', '5', ...args], { timeoutMs: 10_000 });
  const opensslClient = (args: string[], input = '') =>
    fx.guestRun('openssl', ['s_client', ...args], { timeoutMs: 10_000, input });
  const python = (script: string, args: string[], timeoutMs = 15_000) => fx.guestRun('python3', ['-c', script, ...args], { timeoutMs });

  /** Count of lines starting with `prefix` a tracked server printed so far. */
  const count = (p: TrackedProcess, prefix: string): number => linesStartingWith(p.stdout(), prefix).length;

  const decisions = (): DecisionLine[] => {
    if (!existsSync(decisionLogFile)) return [];
    return readFileSync(decisionLogFile, 'utf8')
      .split('\n')
      .filter((l) => l.trim() !== '')
      .map((l) => JSON.parse(l) as DecisionLine);
  };
  /** Wait (bounded) for a decision-log line matching `pred` (the log may be written a moment later). */
  const waitForDecision = (what: string, pred: (d: DecisionLine) => boolean): Promise<DecisionLine> =>
    waitFor(`decision log line: ${what}`, () => decisions().find(pred), { timeoutMs: 3_000, intervalMs: 50 }).catch((e: Error) => {
      throw new Error(`${e.message}\ndecision log:\n${existsSync(decisionLogFile) ? readFileSync(decisionLogFile, 'utf8').slice(-3000) : '(no file)'}${evidence()}`);
    });

  /** Split a `curl -i` output into status, lower-cased headers and body. */
  const parseHttp = (out: string): { status: number; headers: Record<string, string>; body: string } => {
    const cut = out.indexOf('\r\n\r\n');
    const head = cut >= 0 ? out.slice(0, cut) : out;
    const [statusLine, ...lines] = head.split('\r\n');
    const headers: Record<string, string> = {};
    for (const l of lines) {
      const c = l.indexOf(':');
      if (c > 0) headers[l.slice(0, c).trim().toLowerCase()] = l.slice(c + 1).trim();
    }
    return { status: Number(/^HTTP\/[\d.]+ (\d{3})/.exec(statusLine ?? '')?.[1] ?? 0), headers, body: cut >= 0 ? out.slice(cut + 4) : '' };
  };

  /** openssl s_client output for a refused TLS connection: an alert (access_denied preferred) or a reset; never a finished handshake. */
  const expectTlsRefused = (r: { status: number | null; stdout: string; stderr: string }, what: string): void => {
    const out = r.stdout + r.stderr;
    expect(r.status, `${what}: openssl must fail\n${out}${evidence()}`).not.toBe(0);
    expect(out, `${what}: a TLS alert or a reset\n${out}`).toMatch(/alert access denied|alert number 49|errno=104|Connection reset/i);
    // (openssl prints "Verify return code: 0 (ok)" even when no certificate came: judge by the cipher and the certificate.)
    expect(out, `${what}: no handshake may complete\n${out}`).not.toMatch(/Cipher is (?!\(NONE\))|BEGIN CERTIFICATE/);
  };

  // ---------------------------------------------------------------- the cases

  it('1. an allowed name over HTTPS works (curl verifies the real certificate)', async () => {
    expect(await resolveA(WWW)).toBe(wwwIp);
    const before = count(www, 'conn https');
    const r = await curl(['--cacert', cert.certFile, '--resolve', `${WWW}:443:${wwwIp}`, `https://${WWW}/`]);
    expect(r.status, `curl: ${r.stderr}${evidence()}`).toBe(0);
    expect(r.stdout).toBe(`www https ${WWW} /\n`);
    expect(count(www, 'conn https')).toBe(before + 1);
  }, 30_000);

  it('2. an allowed name over HTTP works, and it is the Host header that is checked', async () => {
    const r = await curl(['--resolve', `${WWW}:80:${wwwIp}`, `http://${WWW}/plain`]);
    expect(r.status, `curl: ${r.stderr}${evidence()}`).toBe(0);
    expect(r.stdout).toBe(`www http ${WWW} /plain\n`);

    // The same address and port with another Host: refused by Moat, no server hears of it.
    const wwwBefore = count(www, 'conn http ');
    const evilBefore = count(evil, 'conn http ');
    const blocked = await curl(['-i', '-H', `Host: ${EVIL}`, `http://${wwwIp}/plain`]);
    expect(blocked.status, `curl: ${blocked.stderr}`).toBe(0);
    const res = parseHttp(blocked.stdout);
    expect(res.status, blocked.stdout + evidence()).toBe(403);
    expect(res.headers['x-moat-reason']).toBe('name-not-allowed');
    await sleep(SETTLE_MS);
    expect(count(www, 'conn http ')).toBe(wwwBefore);
    expect(count(evil, 'conn http ')).toBe(evilBefore);
  }, 30_000);

  it('3. a blocked name gets 0.0.0.0 with EDE 15 Blocked, and by IP with its own SNI/Host it is refused', async () => {
    const answer = await dig([EVIL, 'A']);
    expect(answer).toMatch(new RegExp(`^${EVIL.replace(/\./g, '\\.')}\\.\\s+\\d+\\s+IN\\s+A\\s+0\\.0\\.0\\.0$`, 'm'));
    expect(answer, answer).toMatch(/EDE: 15 \(Blocked\)/);

    const before = count(evil, 'conn ');
    const tls = await opensslClient(['-connect', `${evilIp}:443`, '-servername', EVIL]);
    expectTlsRefused(tls, `TLS to ${evilIp} with SNI ${EVIL}`);
    const http = await curl(['-i', '--resolve', `${EVIL}:80:${evilIp}`, `http://${EVIL}/`]);
    expect(parseHttp(http.stdout).status, http.stdout + http.stderr).toBe(403);
    await sleep(SETTLE_MS);
    expect(count(evil, 'conn '), evil.stdout()).toBe(before);
    await waitForDecision(`blocked TLS to ${evilIp}:443`, (d) => d.decision === 'blocked' && d.dst === `${evilIp}:443` && d.reason === 'name-not-allowed');
  }, 30_000);

  it("4. an allowed SNI sent to another server's address lands on the allowed name's real server", async () => {
    const wwwBefore = count(www, 'conn https');
    const evilBefore = count(evil, 'conn ');
    const r = await opensslClient(
      ['-connect', `${evilIp}:443`, '-servername', WWW, '-CAfile', cert.certFile, '-verify_return_error', '-verify_hostname', WWW, '-quiet'],
      `GET /fronted HTTP/1.1\r\nHost: ${WWW}\r\nConnection: close\r\n\r\n`,
    );
    expect(r.stdout, `openssl: ${r.stderr}${evidence()}`).toContain(`www https ${WWW} /fronted`);
    expect(count(www, 'conn https')).toBe(wwwBefore + 1);

    // The same by HTTP Host.
    const http = await curl(['-H', `Host: ${WWW}`, `http://${evilIp}/fronted-http`]);
    expect(http.stdout, http.stderr + evidence()).toBe(`www http ${WWW} /fronted-http\n`);
    await sleep(SETTLE_MS);
    expect(count(evil, 'conn '), evil.stdout()).toBe(evilBefore);
  }, 30_000);

  it('5. an IP-literal Host and a ClientHello without SNI are refused', async () => {
    const before = count(www, 'conn ');
    const http = await curl(['-i', `http://${wwwIp}/`]);
    const res = parseHttp(http.stdout);
    expect(res.status, http.stdout + http.stderr + evidence()).toBe(403);
    expect(res.headers['x-moat-reason']).toBe('ip-literal-name');

    const tls = await opensslClient(['-connect', `${wwwIp}:443`, '-noservername']);
    expectTlsRefused(tls, `TLS to ${wwwIp} without SNI`);
    await sleep(SETTLE_MS);
    expect(count(www, 'conn '), www.stdout()).toBe(before);
    await waitForDecision(`no-name for ${wwwIp}:443`, (d) => d.decision === 'blocked' && d.dst === `${wwwIp}:443` && d.reason === 'no-name');
  }, 30_000);

  it('6. a ClientHello sent one byte per TCP segment is recognised and the connection works', async () => {
    const allowedBySni = (): number =>
      decisions().filter((d) => d.decision === 'allowed' && d.reason === 'name-sni' && d.dst === `${wwwIp}:443` && d.name === WWW).length;
    const allowedBefore = allowedBySni();
    const t0 = Date.now();
    const r = await python(ONE_BYTE_HELLO_PY, [wwwIp, WWW, cert.certFile, '1']);
    const elapsed = Date.now() - t0;
    // (hello-ms says how long the hello took to leave: it must stay below the peek timeout.)
    expect(r.status, `python: ${r.stdout}${r.stderr}${evidence()}`).toBe(0);
    const helloBytes = Number(/^hello-bytes (\d+)$/m.exec(r.stdout)?.[1]);
    const sends = Number(/^hello-sends (\d+)$/m.exec(r.stdout)?.[1]);
    const localPort = Number(/^local-port (\d+)$/m.exec(r.stdout)?.[1]);
    expect(helloBytes).toBeGreaterThan(200);
    expect(sends).toBe(helloBytes);
    expect(r.stdout).toContain(`body www https ${WWW} /onebyte`);
    // It went through the policy by its SNI (not around it).
    await waitFor('a name-sni decision for the one-byte hello', () => allowedBySni() === allowedBefore + 1, { timeoutMs: 3_000 });

    // The guest's kernel really sent it split: count the 1-byte segments Moat received (its --pcap).
    const dump = hostRun('tcpdump', ['-nn', '-r', fx.pcapFile!, `tcp and src port ${localPort} and dst port 443`], { timeoutMs: 10_000 });
    const oneByteSegments = dump.stdout.split('\n').filter((l) => /, length 1$/.test(l)).length;
    expect(oneByteSegments, `${dump.stdout.slice(0, 2000)}${dump.stderr}\n(elapsed ${elapsed} ms)\n${r.stdout}`).toBeGreaterThanOrEqual(Math.floor(helloBytes * 0.9));
  }, 30_000);

  it('7. a connection that sends nothing is closed at the peek timeout, not before', async () => {
    const before = count(www, 'conn ');
    const r = await python(SILENT_CONNECTION_PY, [wwwIp, '443', '8000']);
    expect(r.status, `python: ${r.stdout}${r.stderr}`).toBe(0);
    const m = /^closed (eof|reset) (\d+)$/m.exec(r.stdout);
    expect(m, `the silent connection must be closed by Moat: ${r.stdout}${evidence()}`).not.toBeNull();
    const ms = Number(m![2]);
    expect(ms, r.stdout).toBeGreaterThanOrEqual(PEEK_TIMEOUT_MS - 500);
    expect(ms, r.stdout).toBeLessThanOrEqual(PEEK_TIMEOUT_MS + 2_500);
    expect(count(www, 'conn ')).toBe(before);
    await waitForDecision('peek-timeout', (d) => d.decision === 'blocked' && d.reason === 'peek-timeout' && d.dst === `${wwwIp}:443`);
  }, 30_000);

  it('8. TCP and UDP to unlisted addresses fail: RST at once, UDP dropped and counted', async () => {
    const r = await python(TCP_CONNECT_PY, [plainIp, '9000', '3000']);
    const m = /^(\w+) (?:\w+ )?(\d+)$/m.exec(r.stdout.trim());
    expect(m?.[1], `TCP to ${plainIp}:9000: ${r.stdout}${r.stderr}${evidence()}`).toBe('refused');
    expect(Number(m![2]), r.stdout).toBeLessThan(1_000);

    const statsBefore = await fx.stats();
    const u = await python(UDP_PROBE_PY, [plainIp, '9053', 'mz5-udp-probe', '1500']);
    expect(u.stdout.trim(), u.stderr).toBe('no-reply');
    await sleep(SETTLE_MS);
    expect(count(listener, 'tcp-conn'), listener.stdout()).toBe(0);
    expect(count(listener, 'udp-datagram'), listener.stdout()).toBe(0);

    await waitForDecision(`udp to ${plainIp}:9053`, (d) => d.proto === 'udp' && d.decision === 'blocked' && d.dst === `${plainIp}:9053` && d.reason === 'udp-needs-ip-rule');
    // /stats counts it: some udp drop/block counter went up.
    const statsAfter = await fx.stats();
    const before = flattenNumbers(statsBefore);
    const grew = Object.entries(flattenNumbers(statsAfter)).filter(
      ([k, v]) => /udp/i.test(k) && /drop|block|den|refus/i.test(k) && v > (before[k] ?? 0),
    );
    expect(grew, `no UDP drop counter grew in /stats: ${JSON.stringify(statsAfter)}`).not.toEqual([]);
  }, 30_000);

  it('9. 169.254.169.254 is refused before any dial', async () => {
    // Route the metadata address into remote for this case only, so that even a wrong dial
    // could not leave the machine, and a listener there would see it.
    const route = ['route', 'add', `${METADATA_IP}/32`, 'via', fx.topo.remoteAddr, 'dev', fx.topo.hostVeth];
    const added = hostRun('ip', route);
    expect(added.status, `ip ${route.join(' ')}: ${added.stderr}`).toBe(0);
    let meta: TrackedProcess | undefined;
    try {
      const addr = nsRun(fx.remoteNs, 'ip', ['addr', 'add', `${METADATA_IP}/32`, 'dev', 'lo']);
      expect(addr.status, addr.stderr).toBe(0);
      fx.allowAddresses([METADATA_IP]);
      meta = await fx.startNodeServer(fx.remoteNs, LISTENER_JS, [METADATA_IP, '80', '9054']);

      const r = await python(TCP_CONNECT_PY, [METADATA_IP, '80', '3000']);
      expect(r.stdout.trim().split(' ')[0], `TCP to ${METADATA_IP}:80: ${r.stdout}${r.stderr}${evidence()}`).toBe('refused');
      const c = await curl([`http://${METADATA_IP}/latest/meta-data/`]);
      expect(c.status, c.stdout).not.toBe(0);
      expect(c.stdout).toBe('');
      await sleep(SETTLE_MS);
      expect(count(meta, 'tcp-conn'), meta.stdout()).toBe(0);
      await waitForDecision(`link-local ${METADATA_IP}:80`, (d) => d.decision === 'blocked' && d.dst === `${METADATA_IP}:80` && d.reason === 'link-local');
    } finally {
      if (meta) await killTracked(meta).catch(() => {});
      hostRun('ip', ['route', 'del', `${METADATA_IP}/32`, 'via', fx.topo.remoteAddr, 'dev', fx.topo.hostVeth]);
    }
  }, 30_000);

  it('11. the decision log has one JSON line per decision, and the 403 and the DNS answer carry its id', async () => {
    const http = await curl(['-i', '--resolve', `${EVIL}:80:${evilIp}`, `http://${EVIL}/logged`]);
    const res = parseHttp(http.stdout);
    expect(res.status, http.stdout + http.stderr + evidence()).toBe(403);
    expect(res.headers['x-moat-reason']).toBe('name-not-allowed');
    const id = res.headers['x-moat-decision'];
    expect(id, http.stdout).toMatch(/\S/);
    expect(res.body).toContain(EVIL);
    expect(res.body).toContain('name-not-allowed');
    expect(res.body).toContain(id);
    expect(res.body).not.toContain(WWW); // the rules are not listed (issue 14)

    const line = await waitForDecision(`id ${id}`, (d) => d.id === id);
    expect(line).toMatchObject({ decision: 'blocked', reason: 'name-not-allowed', proto: 'tcp', dst: `${evilIp}:80`, name: EVIL, via: 'host' });
    // The main log carries the same blocked decision.
    expect(fx.moatLogEntries().find((e) => e['msg'] === 'egress decision' && e['id'] === id), evidence()).toMatchObject({
      decision: 'blocked',
      reason: 'name-not-allowed',
    });

    // A blocked DNS answer's EDE text carries the id of a dns line of the log.
    const answer = await dig([EVIL, 'A']);
    const ede = /EDE: 15 \(Blocked\)[^\n]*/.exec(answer)?.[0];
    expect(ede, answer).toBeDefined();
    await waitForDecision(`dns line whose id is in "${ede}"`, (d) => d.proto === 'dns' && d.decision === 'blocked' && ede!.includes(d.id));

    // Every line has the documented fields, with the documented values.
    const all = decisions();
    expect(all.length).toBeGreaterThan(0);
    for (const d of all) {
      for (const f of ['id', 'decision', 'reason', 'rule', 'proto', 'dst', 'name', 'via']) expect(d, JSON.stringify(d)).toHaveProperty(f);
      expect(['allowed', 'blocked'], JSON.stringify(d)).toContain(d.decision);
      expect(['tcp', 'udp', 'dns'], JSON.stringify(d)).toContain(d.proto);
      expect(typeof d.id, JSON.stringify(d)).toBe('string');
    }
    expect(new Set(all.map((d) => d.id)).size, 'decision ids are unique').toBe(all.length);
    // Allowed flows are logged too (case 1's HTTPS).
    expect(all.find((d) => d.decision === 'allowed' && d.proto === 'tcp' && d.dst === `${wwwIp}:443` && d.name === WWW && d.reason === 'name-sni'), JSON.stringify(all.slice(0, 20))).toBeDefined();
  }, 30_000);

  it('10. a live PUT /allowlist makes a new name resolvable and reachable without restarting the guest; a bad rule changes nothing', async () => {
    const shimPid = fx.shim.child.pid;
    expect(await resolveA(NEW)).toBe('0.0.0.0');
    const before = await curl(['-i', '--resolve', `${NEW}:80:${newIp}`, `http://${NEW}/`]);
    expect(parseHttp(before.stdout).status, before.stdout + before.stderr).toBe(403);

    const put = await fx.api('PUT', '/allowlist', { allow: [WWW, NEW] });
    expect(put.status, put.text + evidence()).toBe(200);
    expect(put.body).toMatchObject({ ok: true });
    expect(await resolveA(NEW)).toBe(newIp);
    const https = await curl(['--cacert', cert.certFile, '--resolve', `${NEW}:443:${newIp}`, `https://${NEW}/reloaded`]);
    expect(https.stdout, https.stderr + evidence()).toBe(`new https ${NEW} /reloaded\n`);
    expect(count(fresh, 'conn https')).toBe(1);

    // An invalid rule: 400 naming it, and the rules stay as they were.
    const bad = await fx.api('PUT', '/allowlist', { allow: [WWW, 'bad..rule!'] });
    expect(bad.status, bad.text).toBe(400);
    expect(bad.text).toContain('bad..rule!');
    expect(await resolveA(NEW)).toBe(newIp);
    expect(await resolveA(WWW)).toBe(wwwIp);
    const still = await curl(['--resolve', `${NEW}:80:${newIp}`, `http://${NEW}/still`]);
    expect(still.stdout, still.stderr + evidence()).toBe(`new http ${NEW} /still\n`);

    // The same guest all along.
    expect(fx.shim.child.pid).toBe(shimPid);
    expect(fx.shim.child.exitCode).toBeNull();
  }, 30_000);
});

/** {a: {b: 1}, c: 2} -> {"a.b": 1, c: 2} (numbers only). */
function flattenNumbers(o: unknown, prefix = '', out: Record<string, number> = {}): Record<string, number> {
  if (typeof o === 'number') out[prefix] = o;
  else if (o !== null && typeof o === 'object') {
    for (const [k, v] of Object.entries(o)) flattenNumbers(v, prefix === '' ? k : `${prefix}.${k}`, out);
  }
  return out;
}
