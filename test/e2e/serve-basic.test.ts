/**
 * `moat serve` end to end, with the real Linux kernel as the guest:
 * a guest network namespace whose TAP is bridged by moat-shim to a Moat
 * child process, and a "remote" namespace whose servers stand in for the
 * internet (see moat-fixture.ts for the topology and the safety checks).
 *
 * Every address the guest names is either Moat's own (192.168.127.1/.254),
 * the guest's, or one of remote's addresses checked by assertRoutesInto
 * before any traffic; the host side is 127.0.0.1 only.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createServer, type Server } from 'node:http';
import { createServer as createNetServer } from 'node:net';
import type { AddressInfo } from 'node:net';
import { cleanupAll, e2eGate, hostRunAsync, killTracked } from './harness.js';
import {
  FIXTURE_TOOLS,
  GATEWAY_IP,
  GUEST_IP,
  GUEST_PREFIX,
  HOST_IP,
  HTTP_SERVER_JS,
  UDP_CLIENT_JS,
  UDP_ECHO_JS,
  startMoatFixture,
  type MoatFixture,
} from './moat-fixture.js';

const gate = e2eGate([...FIXTURE_TOOLS, 'curl', 'dig']);

/** The port a node server script printed in its "ready PORT" line. */
function readyPort(stdout: string): number {
  const m = /^ready (\d+)/m.exec(stdout);
  if (!m) throw new Error(`no "ready PORT" line in: ${stdout}`);
  return Number(m[1]);
}

/** A port on 127.0.0.1 that was free a moment ago (bind to 0, read it, close). */
async function freeLoopbackPort(): Promise<number> {
  const s = createNetServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

/** Fail with Moat's drops and log tail attached, so a failing test shows evidence. */
async function evidence(fx: MoatFixture): Promise<string> {
  let drops = '';
  try {
    drops = JSON.stringify((await fx.stats()).drops);
  } catch (e) {
    drops = `(stats failed: ${(e as Error).message})`;
  }
  const shim = fx.shim.child.exitCode === null ? 'running' : `exited ${fx.shim.child.exitCode}: ${fx.shim.stderr().trim()}`;
  return `drops=${drops}\nshim: ${shim}\nmoat log tail:\n${fx.moatLog().slice(-3000)}`;
}

async function expectNoInternalErrors(fx: MoatFixture): Promise<void> {
  const stats = await fx.stats();
  expect(stats.frames.in).toBeGreaterThan(0);
  expect(stats.frames.out).toBeGreaterThan(0);
  expect(stats.drops['stack:internal-error'] ?? 0, JSON.stringify(stats.drops)).toBe(0);
  // Moat logs an error line for anything unexpected (a throw in a handler, a failed close).
  const errors = fx.moatLogEntries().filter((e) => e['level'] === 'error');
  expect(errors, JSON.stringify(errors)).toEqual([]);
}

/**
 * Remote UDP blaster: on any datagram from a peer, sends it COUNT datagrams of
 * varying sizes (seq in the first 4 bytes, then the byte seq&0xff), a few per
 * event-loop turn so that they reach Moat as many separate small batches.
 */
const UDP_BLASTER_JS = `
const dgram = require('node:dgram');
const [addr, count] = process.argv.slice(1);
const s = dgram.createSocket('udp4');
const size = (seq) => 64 + ((seq * 37) % 1300);
s.on('message', (_m, rinfo) => {
  let seq = 0;
  const burst = () => {
    for (let i = 0; i < 8 && seq < Number(count); i++, seq++) {
      const b = Buffer.alloc(size(seq), seq & 0xff);
      b.writeUInt32BE(seq, 0);
      s.send(b, rinfo.port, rinfo.address);
    }
    if (seq < Number(count)) setImmediate(burst);
  };
  burst();
});
s.bind(0, addr, () => console.log('ready ' + s.address().port));
`;

/** Guest side: asks the blaster to start, checks every datagram, prints a JSON summary after 1.5 s of silence. */
const UDP_SINK_JS = `
const dgram = require('node:dgram');
const [addr, port] = process.argv.slice(1);
const s = dgram.createSocket('udp4');
const size = (seq) => 64 + ((seq * 37) % 1300);
const seen = new Set();
let received = 0, dupes = 0, bad = 0, idle;
const done = () => { console.log(JSON.stringify({ received, unique: seen.size, dupes, bad })); process.exit(0); };
s.on('message', (m) => {
  received++;
  const seq = m.length >= 4 ? m.readUInt32BE(0) : -1;
  let ok = seq >= 0 && m.length === size(seq);
  for (let i = 4; ok && i < m.length; i++) if (m[i] !== (seq & 0xff)) ok = false;
  if (!ok) bad++;
  else if (seen.has(seq)) dupes++;
  else seen.add(seq);
  clearTimeout(idle);
  idle = setTimeout(done, 1500);
});
s.bind(0, () => { s.send('go', Number(port), addr); idle = setTimeout(done, 5000); });
`;

// ------------------------------------------------------------------ DHCP + ICMP, per MTU

for (const mtu of [1500, 9000, 65520]) {
  describe.skipIf(gate.skip)(`moat serve e2e: DHCP and ICMP with --mtu ${mtu}`, () => {
    let fx: MoatFixture;
    beforeAll(async () => {
      fx = await startMoatFixture({ mtu });
    }, 60_000);
    afterAll(async () => {
      await fx?.stop();
    }, 30_000);

    it('udhcpc gets 192.168.127.2/24, router and DNS 192.168.127.1, and the configured MTU', async () => {
      const lease = fx.lease!;
      expect(lease, 'udhcpc recorded no lease').toBeDefined();
      expect(lease.ip).toBe(GUEST_IP);
      expect(lease.prefix).toBe(GUEST_PREFIX);
      expect(lease.router).toBe(GATEWAY_IP);
      expect(lease.dns).toEqual([GATEWAY_IP]);
      expect(lease.mtu).toBe(mtu);

      // The script applied it to the TAP (and only the TAP).
      const addr = await fx.guestRun('ip', ['-o', '-4', 'addr', 'show', 'dev', fx.tap]);
      expect(addr.stdout).toContain(`inet ${GUEST_IP}/${GUEST_PREFIX}`);
      const link = await fx.guestRun('ip', ['-o', 'link', 'show', 'dev', fx.tap]);
      expect(link.stdout).toMatch(new RegExp(`\\bmtu ${mtu}\\b`));
      const route = await fx.guestRun('ip', ['-4', 'route', 'show', 'default']);
      expect(route.stdout).toContain(`default via ${GATEWAY_IP} dev ${fx.tap}`);

      // Moat's lease table agrees (gvproxy format: IP -> MAC).
      const leases = await fx.api('GET', '/services/dhcp/leases');
      expect(leases.status).toBe(200);
      const mac = (await fx.guestRun('cat', [`/sys/class/net/${fx.tap}/address`])).stdout.trim();
      expect(leases.body).toEqual({ [GUEST_IP]: mac });
    });

    it('the gateway and the host alias answer ping', async () => {
      for (const target of [GATEWAY_IP, HOST_IP]) {
        const r = await fx.guestRun('busybox', ['ping', '-c', '2', '-W', '2', target], { timeoutMs: 10_000 });
        expect(r.status, `ping ${target}: ${r.stdout}${r.stderr}\n${await evidence(fx)}`).toBe(0);
        expect(r.stdout).toMatch(/2 packets received/);
      }
    });

    it('a ping that fills the MTU crosses in one frame and comes back', async () => {
      // ICMP payload = MTU - IPv4 header (20) - ICMP header (8); IPv4 caps a datagram at 65535.
      const size = Math.min(mtu, 65535) - 28;
      const r = await fx.guestRun('busybox', ['ping', '-c', '2', '-W', '3', '-s', String(size), GATEWAY_IP], { timeoutMs: 12_000 });
      expect(r.status, `ping -s ${size}: ${r.stdout}${r.stderr}\n${await evidence(fx)}`).toBe(0);
      expect(r.stdout).toMatch(new RegExp(`${size + 8} bytes from ${GATEWAY_IP.replace(/\./g, '\\.')}`));
    });

    it('TCP at this MTU: 1 MB over HTTP from a remote server, every byte', async () => {
      const addr = fx.topo.internetAddrs[0]!;
      const server = await fx.startNodeServer(fx.remoteNs, HTTP_SERVER_JS, [addr, '0', 'remote']);
      try {
        const port = readyPort(server.stdout());
        const n = 1024 * 1024;
        const before = await fx.stats();
        const r = await fx.guestRun(
          'curl',
          ['-sS', '--max-time', '15', '-o', '/dev/null', '-w', '%{http_code} %{size_download}', `http://${addr}:${port}/bytes/${n}`],
          { timeoutMs: 20_000 },
        );
        expect(r.status, `curl: ${r.stderr}\n${await evidence(fx)}`).toBe(0);
        expect(r.stdout).toBe(`200 ${n}`);
        // Moat's segments to the guest use the MSS this MTU allows: the average
        // frame it sent during the transfer is larger than a 1500-MTU frame could be.
        const after = await fx.stats();
        const avgOut = (after.bytes.out - before.bytes.out) / (after.frames.out - before.frames.out);
        if (mtu > 1500) expect(avgOut, `average frame to the guest: ${avgOut} bytes`).toBeGreaterThan(1514);
        else expect(avgOut).toBeLessThanOrEqual(1514);
      } finally {
        await killTracked(server);
      }
    });

    it('stats count frames and show no internal errors', async () => {
      await expectNoInternalErrors(fx);
    });
  });
}

// ------------------------------------------------------------------ TCP, UDP, DNS, forwards, shim restart

describe.skipIf(gate.skip)('moat serve e2e: NAT, DNS forwarder, port forwards, shim restart', () => {
  let fx: MoatFixture;
  let hostServer: Server;
  let hostPort = 0;
  let hostRequests = 0;

  beforeAll(async () => {
    // The "host" service, in this process, on loopback: reached by the guest as 192.168.127.254.
    hostServer = createServer((req, res) => {
      hostRequests++;
      res.end(`host ${req.url} from ${req.socket.remoteAddress}\n`);
    });
    await new Promise<void>((r) => hostServer.listen(0, '127.0.0.1', r));
    hostPort = (hostServer.address() as AddressInfo).port;
    fx = await startMoatFixture({ mtu: 1500 });
  }, 60_000);

  afterAll(async () => {
    await fx?.stop();
    await new Promise<void>((r) => (hostServer ? hostServer.close(() => r()) : r()));
    cleanupAll();
  }, 30_000);

  it('HTTP to the host loopback through 192.168.127.254', async () => {
    const before = hostRequests;
    const r = await fx.guestRun('curl', ['-sS', '--max-time', '5', `http://${HOST_IP}:${hostPort}/hello`], { timeoutMs: 10_000 });
    expect(r.status, `curl: ${r.stderr}\n${await evidence(fx)}`).toBe(0);
    expect(r.stdout).toBe('host /hello from 127.0.0.1\n');
    expect(hostRequests).toBe(before + 1);
  });

  it('HTTP to a remote server by IP, small and 2 MB bodies', async () => {
    const addr = fx.topo.internetAddrs[0]!;
    const server = await fx.startNodeServer(fx.remoteNs, HTTP_SERVER_JS, [addr, '0', 'remote']);
    try {
      const port = readyPort(server.stdout());
      const r = await fx.guestRun('curl', ['-sS', '--max-time', '5', `http://${addr}:${port}/x`], { timeoutMs: 10_000 });
      expect(r.status, `curl: ${r.stderr}\n${await evidence(fx)}`).toBe(0);
      // Moat dials from the root namespace, so remote sees the host's veth address.
      expect(r.stdout).toBe(`remote /x from ${fx.topo.hostAddr}\n`);

      const n = 2 * 1024 * 1024;
      const big = await fx.guestRun(
        'curl',
        ['-sS', '--max-time', '20', '-o', '/dev/null', '-w', '%{http_code} %{size_download}', `http://${addr}:${port}/bytes/${n}`],
        { timeoutMs: 25_000 },
      );
      expect(big.status, `curl: ${big.stderr}\n${await evidence(fx)}`).toBe(0);
      expect(big.stdout).toBe(`200 ${n}`);
    } finally {
      await killTracked(server);
    }
  });

  it('a closed remote port is refused (curl exit 7) in under 2 s', async () => {
    const addr = fx.topo.internetAddrs[2]!;
    // Nothing listens on remote port 9 (discard): remote's kernel answers the dial with RST.
    const t0 = Date.now();
    const r = await fx.guestRun('curl', ['-sS', '-v', '--max-time', '5', `http://${addr}:9/`], { timeoutMs: 10_000 });
    const elapsed = Date.now() - t0;
    expect(r.status, `curl: ${r.stderr}`).toBe(7);
    // -v shows the connect(2) error: ECONNREFUSED (an RST), not a timeout or ICMP unreachable.
    expect(r.stderr).toMatch(/Connection refused/);
    expect(elapsed).toBeLessThan(2_000);
  });

  it('UDP echo round trip with a remote server', async () => {
    const addr = fx.topo.internetAddrs[1]!;
    const server = await fx.startNodeServer(fx.remoteNs, UDP_ECHO_JS, [addr, '0']);
    try {
      const port = readyPort(server.stdout());
      const r = await fx.guestRun(process.execPath, ['-e', UDP_CLIENT_JS, addr, String(port), 'me8', '5', '5000'], { timeoutMs: 10_000 });
      expect(r.status, `udp client: ${r.stdout}${r.stderr}\n${await evidence(fx)}`).toBe(0);
      for (let i = 0; i < 5; i++) expect(r.stdout).toContain(`reply me8-${i} from ${addr}:${port}`);
    } finally {
      await killTracked(server);
    }
  });

  describe('DNS through the gateway forwarder to the remote server', () => {
    const dig = async (args: string[]): Promise<string> => {
      const r = await fx.guestRun('dig', [`@${GATEWAY_IP}`, '+time=2', '+tries=1', ...args], { timeoutMs: 10_000 });
      expect(r.status, `dig ${args.join(' ')}: ${r.stdout}${r.stderr}\n${await evidence(fx)}`).toBe(0);
      return r.stdout;
    };

    it('A, AAAA, TXT and MX over UDP', async () => {
      expect((await dig(['+short', 'www.me8.test', 'A'])).trim()).toBe(fx.topo.internetAddrs[0]);
      expect((await dig(['+short', 'www.me8.test', 'AAAA'])).trim()).toBe('2001:db8::8');
      expect((await dig(['+short', 'www.me8.test', 'TXT'])).trim()).toBe('"moat e2e says hello"');
      expect((await dig(['+short', 'www.me8.test', 'MX'])).trim()).toBe('10 mail.me8.test.');
      // The answers came from our server in remote, not from anywhere else.
      const log = fx.dnsServer!.stdout();
      for (const t of ['A', 'AAAA', 'TXT', 'MX']) expect(log).toContain(`query www.me8.test ${t} udp`);
    });

    it('A and MX over TCP (+tcp)', async () => {
      expect((await dig(['+tcp', '+short', 'www.me8.test', 'A'])).trim()).toBe(fx.topo.internetAddrs[0]);
      expect((await dig(['+tcp', '+short', 'www.me8.test', 'MX'])).trim()).toBe('10 mail.me8.test.');
      // Moat may forward a TCP query over UDP or TCP; either way our server answered it.
      expect(fx.dnsServer!.stdout().match(/query www\.me8\.test MX /g)?.length).toBeGreaterThanOrEqual(2);
    });

    it('an unknown name is NXDOMAIN, passed through unchanged', async () => {
      const out = await dig(['nope.me8.test', 'A']);
      expect(out).toMatch(/status: NXDOMAIN/);
      expect(fx.dnsServer!.stdout()).toContain('query nope.me8.test A udp');
    });
  });

  it('port forward: expose, list, reach the guest from 127.0.0.1, unexpose', async () => {
    const guestServer = await fx.startNodeServer(fx.guestNs, HTTP_SERVER_JS, ['0.0.0.0', '8080', 'guest']);
    const port = await freeLoopbackPort();
    const local = `127.0.0.1:${port}`;
    const api = (method: string, path: string, body?: object): Promise<{ status: number | null; stdout: string; stderr: string }> =>
      hostRunAsync(
        'curl',
        [
          '-sS',
          '--max-time',
          '5',
          '--unix-socket',
          fx.apiSocket,
          '-X',
          method,
          ...(body ? ['-H', 'content-type: application/json', '-d', JSON.stringify(body)] : []),
          '-w',
          '\n%{http_code}',
          `http://moat${path}`,
        ],
        { timeoutMs: 10_000 },
      );
    try {
      const exposed = await api('POST', '/services/forwarder/expose', { local, remote: `${GUEST_IP}:8080`, protocol: 'tcp' });
      expect(exposed.status, exposed.stderr).toBe(0);
      expect(exposed.stdout.trim().split('\n').pop(), exposed.stdout).toBe('200');

      const all = await api('GET', '/services/forwarder/all');
      const [allBody, allCode] = all.stdout.trim().split('\n');
      expect(allCode).toBe('200');
      expect(JSON.parse(allBody!)).toContainEqual({ local, remote: `${GUEST_IP}:8080`, protocol: 'tcp' });

      const r = await hostRunAsync('curl', ['-sS', '--max-time', '5', `http://${local}/fwd`], { timeoutMs: 10_000 });
      expect(r.status, `curl ${local}: ${r.stderr}\n${await evidence(fx)}`).toBe(0);
      // Forwarded connections reach the guest from the gateway's address.
      expect(r.stdout).toBe(`guest /fwd from ${GATEWAY_IP}\n`);

      const gone = await api('POST', '/services/forwarder/unexpose', { local, protocol: 'tcp' });
      expect(gone.stdout.trim().split('\n').pop(), gone.stdout).toBe('200');
      const after = await api('GET', '/services/forwarder/all');
      expect(JSON.parse(after.stdout.trim().split('\n')[0]!)).toEqual([]);

      const refused = await hostRunAsync('curl', ['-sS', '-v', '--max-time', '5', `http://${local}/fwd`], { timeoutMs: 10_000 });
      expect(refused.status, refused.stderr).toBe(7);
      expect(refused.stderr).toMatch(/Connection refused/);
    } finally {
      await killTracked(guestServer);
    }
  });

  it('parallel HTTP transfers through a guest that stalls (shim paused): every byte arrives, the link keeps its framing', async () => {
    // Pausing moat-shim (SIGSTOP/SIGCONT, by PID) makes Moat's writes to the
    // guest socket queue up in Node: a queued batch whose bytes were reused
    // before the socket wrote them would reach the shim as a broken length
    // prefix (the shim exits with "protocol error") and the transfers stall.
    // An earlier failure may have killed the shim: start from a working link.
    if (fx.shim.child.exitCode !== null || fx.shim.child.signalCode !== null) await fx.restartShim();
    const addr = fx.topo.internetAddrs[0]!;
    const server = await fx.startNodeServer(fx.remoteNs, HTTP_SERVER_JS, [addr, '0', 'remote']);
    const shimPid = fx.shim.child.pid!;
    /** Signal our shim by PID; false once it has exited (it is the thing under test). */
    const signalShim = (sig: NodeJS.Signals): boolean => {
      if (fx.shim.child.exitCode !== null || fx.shim.child.signalCode !== null) return false;
      try {
        process.kill(shimPid, sig);
        return true;
      } catch {
        return false;
      }
    };
    try {
      const port = readyPort(server.stdout());
      for (let round = 0; round < 3; round++) {
        const args = ['-sS', '--max-time', '15', '-Z', '--parallel-max', '30'];
        for (let i = 0; i < 30; i++) {
          args.push('-o', '/dev/null', '-w', '%{http_code} %{size_download}\\n', `http://${addr}:${port}/bytes/${300_000 + i}`);
        }
        let done = false;
        const transfer = fx.guestRun('curl', args, { timeoutMs: 20_000 }).finally(() => (done = true));
        while (!done) {
          await new Promise((r) => setTimeout(r, 30));
          if (done || fx.shim.child.exitCode !== null) break;
          if (!signalShim('SIGSTOP')) break;
          await new Promise((r) => setTimeout(r, 120));
          if (!signalShim('SIGCONT')) break;
        }
        const r = await transfer;
        const lines = r.stdout.trim().split('\n').sort();
        const want = Array.from({ length: 30 }, (_, i) => `200 ${300_000 + i}`).sort();
        const shimState = fx.shim.child.exitCode === null ? 'running' : `exited ${fx.shim.child.exitCode}: ${fx.shim.stderr().trim()}`;
        expect(shimState, `round ${round}: curl exit ${r.status}\n${await evidence(fx)}`).toBe('running');
        expect(r.status, `round ${round}: curl exit ${r.status}\n${r.stderr.slice(0, 500)}\n${await evidence(fx)}`).toBe(0);
        expect(lines).toEqual(want);
      }
    } finally {
      signalShim('SIGCONT');
      await killTracked(server);
    }
  });

  it('a UDP burst to a guest that stalls (shim paused): no datagram corrupted or delivered twice, framing intact', async () => {
    // Each datagram from the remote becomes its own small output batch. While
    // the shim is paused those batches queue in Moat's socket; a batch whose
    // bytes were reused before the socket wrote them shows up in the guest as
    // a duplicate or a malformed datagram, or breaks the stream framing.
    // An earlier failure may have killed the shim: start from a working link.
    if (fx.shim.child.exitCode !== null || fx.shim.child.signalCode !== null) await fx.restartShim();
    const addr = fx.topo.internetAddrs[3]!;
    const blaster = await fx.startNodeServer(fx.remoteNs, UDP_BLASTER_JS, [addr, '6000']);
    const shimPid = fx.shim.child.pid!;
    const signalShim = (sig: NodeJS.Signals): boolean => {
      if (fx.shim.child.exitCode !== null || fx.shim.child.signalCode !== null) return false;
      try {
        process.kill(shimPid, sig);
        return true;
      } catch {
        return false;
      }
    };
    try {
      const port = readyPort(blaster.stdout());
      let done = false;
      const sink = fx.guestRun(process.execPath, ['-e', UDP_SINK_JS, addr, String(port)], { timeoutMs: 30_000 }).finally(() => (done = true));
      await new Promise((r) => setTimeout(r, 30));
      for (let i = 0; i < 10 && !done; i++) {
        if (!signalShim('SIGSTOP')) break;
        await new Promise((r) => setTimeout(r, 100));
        if (!signalShim('SIGCONT')) break;
        await new Promise((r) => setTimeout(r, 30));
      }
      const r = await sink;
      signalShim('SIGCONT');
      const shimState = fx.shim.child.exitCode === null ? 'running' : `exited ${fx.shim.child.exitCode}: ${fx.shim.stderr().trim()}`;
      expect(shimState, await evidence(fx)).toBe('running');
      expect(r.status, r.stderr).toBe(0);
      const summary = JSON.parse(r.stdout.trim().split('\n').pop()!) as { received: number; unique: number; dupes: number; bad: number };
      // Loss is allowed (a full guest queue drops, as a real link does); corruption and duplication are not.
      expect(summary.received, JSON.stringify(summary)).toBeGreaterThan(0);
      expect({ bad: summary.bad, dupes: summary.dupes }, JSON.stringify(summary)).toEqual({ bad: 0, dupes: 0 });
    } finally {
      signalShim('SIGCONT');
      await killTracked(blaster);
    }
  });

  it('keeps the lease listed while the guest is away (as gvproxy), and the guest gets the same address back', async () => {
    const mac = await fx.tapMac();
    await fx.restartShim({ dhcp: false });
    // The old connection ended (a new one replaced it), no DHCP yet: the lease is still there.
    expect((await fx.api('GET', '/services/dhcp/leases')).body).toEqual({ [GUEST_IP]: mac });
    const lease = await fx.dhcp();
    expect(lease.ip).toBe(GUEST_IP);
  });

  it('survives a shim restart: a new shim connection, a new TAP, DHCP again, traffic again', async () => {
    const before = await fx.stats();
    const connectionsBefore = (before['link'] as { connections: number }).connections;
    await fx.restartShim();
    expect(fx.lease?.ip).toBe(GUEST_IP);
    const after = await fx.stats();
    expect((after['link'] as { connections: number }).connections).toBe(connectionsBefore + 1);

    const r = await fx.guestRun('curl', ['-sS', '--max-time', '5', `http://${HOST_IP}:${hostPort}/again`], { timeoutMs: 10_000 });
    expect(r.status, `curl after restart: ${r.stderr}\n${await evidence(fx)}`).toBe(0);
    expect(r.stdout).toBe('host /again from 127.0.0.1\n');
    const d = await fx.guestRun('dig', [`@${GATEWAY_IP}`, '+time=2', '+tries=1', '+short', 'www.me8.test', 'A'], { timeoutMs: 10_000 });
    expect(d.stdout.trim()).toBe(fx.topo.internetAddrs[0]);
  });

  it('survives a shim restart with a new TAP MAC: the new guest gets a lease and traffic flows', async () => {
    const oldMac = await fx.tapMac();
    await fx.restartShim({ keepMac: false });
    const newMac = await fx.tapMac();
    expect(newMac).not.toBe(oldMac);
    const lease = fx.lease!;
    expect(lease.ip).toMatch(/^192\.168\.127\.\d+$/);
    expect(lease.router).toBe(GATEWAY_IP);
    const leases = (await fx.api('GET', '/services/dhcp/leases')).body as Record<string, string>;
    expect(leases[lease.ip]).toBe(newMac);

    const r = await fx.guestRun('curl', ['-sS', '--max-time', '5', `http://${HOST_IP}:${hostPort}/newmac`], { timeoutMs: 10_000 });
    expect(r.status, `curl after restart with a new MAC (lease ${lease.ip}): ${r.stderr}\n${await evidence(fx)}`).toBe(0);
    expect(r.stdout).toBe('host /newmac from 127.0.0.1\n');
  });

  it('stats count frames and show no internal errors after the run', async () => {
    await expectNoInternalErrors(fx);
    const stats = await fx.stats();
    const nat = stats['nat'] as { tcp: { opened: number; refused: number }; dns: { answered: number } };
    expect(nat.tcp.opened).toBeGreaterThanOrEqual(3);
    expect(nat.tcp.refused).toBeGreaterThanOrEqual(1);
    expect(nat.dns.answered).toBeGreaterThanOrEqual(7);
  });
});
