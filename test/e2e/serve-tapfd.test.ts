/**
 * `moat serve --tap-fd 3` end to end, with the real Linux kernel as the guest:
 * Moat is started through `moat-shim tap --dev moat0 --netns GUEST --exec
 * node bin/moat.mjs serve --tap-fd 3 ...`, so the shim opens the TAP inside
 * the guest namespace, returns to the root namespace and becomes Moat; no
 * relay process sits between the guest's TAP and Moat (moat-fixture.ts,
 * link "exec").
 *
 * Every address the guest names is Moat's own (192.168.127.1/.254), the
 * guest's, or one of the remote namespace's addresses that the fixture's
 * route guard checked before any traffic; the host side is 127.0.0.1 only.
 * Namespaces are prefixed "tf-" and removed by the fixture's stop().
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { cleanupAll, e2eGate, hostRunAsync, killTracked, netnsExists, nsRunAsync, withTimeout } from './harness.js';
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

const PREFIX = 'tf-';

/** The port a node server script printed in its "ready PORT" line. */
function readyPort(stdout: string): number {
  const m = /^ready (\d+)/m.exec(stdout);
  if (!m) throw new Error(`no "ready PORT" line in: ${stdout}`);
  return Number(m[1]);
}

/**
 * The "host" service, in this process, on 127.0.0.1 (the guest reaches it as
 * 192.168.127.254): GET /blob sends `body`; any other request answers
 * "LENGTH SHA256" of what it received (an upload's proof).
 */
async function startHostServer(body: Buffer): Promise<{ server: Server; port: number }> {
  const server = createServer((req, res) => {
    if (req.url === '/blob') {
      res.writeHead(200, { 'content-length': body.length });
      res.end(body);
      return;
    }
    if (req.method !== 'POST') {
      res.end(`host ${req.url} from ${req.socket.remoteAddress}\n`);
      return;
    }
    const h = createHash('sha256');
    let n = 0;
    req.on('data', (c: Buffer) => {
      h.update(c);
      n += c.length;
    });
    req.on('end', () => res.end(`${n} ${h.digest('hex')}`));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { server, port: (server.address() as AddressInfo).port };
}

/** The TapFdLink counters under /stats "link". */
interface LinkCounters {
  guestConnected: boolean;
  connections: number;
  framesIn: number;
  framesOut: number;
  bytesIn: number;
  bytesOut: number;
  framingErrors: number;
  /** Wake-ups that read the TAP (each reads one frame or a batch). */
  chunksIn: number;
}

async function linkStats(fx: MoatFixture): Promise<LinkCounters> {
  return (await fx.stats())['link'] as LinkCounters;
}

/** Moat's drops, its process state and log tail: attached to failing assertions. */
async function evidence(fx: MoatFixture): Promise<string> {
  let drops = '';
  try {
    drops = JSON.stringify((await fx.stats()).drops);
  } catch (e) {
    drops = `(stats failed: ${(e as Error).message})`;
  }
  const state = fx.moat.child.exitCode === null ? 'running' : `exited ${fx.moat.child.exitCode}`;
  return `drops=${drops}\nmoat: ${state}\nmoat log tail:\n${fx.moatLog().slice(-3000)}`;
}

// ------------------------------------------------------------------ pcap, read by hand

interface PcapFrame {
  data: Buffer;
}

/** Records of a classic libpcap file (either byte order); throws on a bad header. */
function readPcap(file: string): { linktype: number; frames: PcapFrame[] } {
  const b = readFileSync(file);
  if (b.length < 24) throw new Error(`${file}: ${b.length} bytes, shorter than a pcap header`);
  let le: boolean;
  if (b.readUInt32LE(0) === 0xa1b2c3d4) le = true;
  else if (b.readUInt32BE(0) === 0xa1b2c3d4) le = false;
  else throw new Error(`${file}: bad pcap magic ${b.subarray(0, 4).toString('hex')}`);
  const u32 = (o: number): number => (le ? b.readUInt32LE(o) : b.readUInt32BE(o));
  const frames: PcapFrame[] = [];
  let off = 24;
  // A record may still be half-written while Moat runs: stop at the last whole one.
  while (off + 16 <= b.length) {
    const incl = u32(off + 8);
    if (off + 16 + incl > b.length) break;
    frames.push({ data: b.subarray(off + 16, off + 16 + incl) });
    off += 16 + incl;
  }
  return { linktype: u32(20), frames };
}

function macOf(b: Buffer, offset: number): string {
  return [...b.subarray(offset, offset + 6)].map((x) => x.toString(16).padStart(2, '0')).join(':');
}

function ipv4At(b: Buffer, offset: number): string {
  return [...b.subarray(offset, offset + 4)].join('.');
}

/** ICMP echo (type 8) or reply (type 0) in an Ethernet frame: [type, src, dst], or undefined. */
function icmpEcho(f: Buffer): { type: number; src: string; dst: string } | undefined {
  if (f.length < 14 + 20 + 8 || f.readUInt16BE(12) !== 0x0800) return undefined;
  const ihl = (f[14]! & 0x0f) * 4;
  if (f[14 + 9] !== 1) return undefined;
  const type = f[14 + ihl]!;
  if (type !== 0 && type !== 8) return undefined;
  return { type, src: ipv4At(f, 14 + 12), dst: ipv4At(f, 14 + 16) };
}

// ------------------------------------------------------------------ the data path

describe.skipIf(gate.skip)('moat serve --tap-fd e2e (moat-shim tap --exec): the guest link without a relay', () => {
  let fx: MoatFixture;
  let hostServer: Server;
  let hostPort = 0;
  /** A few MiB of random bytes the host server sends; the guest's copy must hash the same. */
  const body = randomBytes(3 * 1024 * 1024 + 4321);
  const bodySha = createHash('sha256').update(body).digest('hex');

  beforeAll(async () => {
    // The "host" service, in this process, on loopback: the guest reaches it as 192.168.127.254.
    ({ server: hostServer, port: hostPort } = await startHostServer(body));
    fx = await startMoatFixture({ link: 'exec', prefix: PREFIX, pcap: true });
  }, 60_000);

  afterAll(async () => {
    await fx?.stop();
    await new Promise<void>((r) => (hostServer ? hostServer.close(() => r()) : r()));
    cleanupAll();
  }, 30_000);

  it('Moat is the shim process itself, serving tap-fd://3', () => {
    expect(fx.link).toBe('exec');
    expect(fx.shim).toBe(fx.moat);
    // The shim logged its hand-over, then the same PID became node running Moat.
    expect(fx.moat.stderr()).toMatch(/moat-shim: ready: tap moat0 \(netns tf-[0-9a-f]+-guest, mtu unchanged\) on fd 3; exec /);
    const ready = fx.moatLogEntries().find((e) => e['msg'] === 'moat ready');
    expect(ready?.['listen']).toEqual(['tap-fd://3']);
    const cmdline = readFileSync(`/proc/${fx.moat.child.pid}/cmdline`, 'utf8').split('\0');
    expect(cmdline).toContain('--tap-fd');
    expect(cmdline.some((a) => a.endsWith('moat.mjs'))).toBe(true);
  });

  it('DHCP: udhcpc on the TAP gets 192.168.127.2/24 with router and DNS 192.168.127.1', async () => {
    const lease = fx.lease!;
    expect(lease, 'udhcpc recorded no lease').toBeDefined();
    expect(lease.ip).toBe(GUEST_IP);
    expect(lease.prefix).toBe(GUEST_PREFIX);
    expect(lease.router).toBe(GATEWAY_IP);
    expect(lease.dns).toEqual([GATEWAY_IP]);
    const addr = await fx.guestRun('ip', ['-o', '-4', 'addr', 'show', 'dev', fx.tap]);
    expect(addr.stdout).toContain(`inet ${GUEST_IP}/${GUEST_PREFIX}`);
    // Moat's lease table names the TAP's MAC.
    const leases = await fx.api('GET', '/services/dhcp/leases');
    expect(leases.body).toEqual({ [GUEST_IP]: await fx.tapMac() });
  });

  it('the gateway answers ping', async () => {
    const r = await fx.guestRun('busybox', ['ping', '-c', '3', '-W', '2', GATEWAY_IP], { timeoutMs: 10_000 });
    expect(r.status, `ping: ${r.stdout}${r.stderr}\n${await evidence(fx)}`).toBe(0);
    expect(r.stdout).toMatch(/3 packets received/);
  });

  it('DNS through the gateway: answers come from the remote DNS server', async () => {
    const dig = async (args: string[]): Promise<string> => {
      const r = await fx.guestRun('dig', [`@${GATEWAY_IP}`, '+time=2', '+tries=1', ...args], { timeoutMs: 10_000 });
      expect(r.status, `dig ${args.join(' ')}: ${r.stdout}${r.stderr}\n${await evidence(fx)}`).toBe(0);
      return r.stdout;
    };
    expect((await dig(['+short', 'www.me8.test', 'A'])).trim()).toBe(fx.topo.internetAddrs[0]);
    expect((await dig(['+short', 'www.me8.test', 'TXT'])).trim()).toBe('"moat e2e says hello"');
    expect((await dig(['+tcp', '+short', 'mail.me8.test', 'A'])).trim()).toBe(fx.topo.internetAddrs[1]);
    expect(await dig(['nope.me8.test', 'A'])).toMatch(/status: NXDOMAIN/);
    const log = fx.dnsServer!.stdout();
    expect(log).toContain('query www.me8.test A udp');
    expect(log).toContain('query nope.me8.test A udp');
  });

  it('HTTP download of a few MiB from the host (127.0.0.1 as 192.168.127.254): sha256 matches', async () => {
    const out = join(fx.dir, 'blob.bin');
    const before = await linkStats(fx);
    const r = await fx.guestRun(
      'curl',
      ['-sS', '--max-time', '20', '-o', out, '-w', '%{http_code} %{size_download}', `http://${HOST_IP}:${hostPort}/blob`],
      { timeoutMs: 25_000 },
    );
    expect(r.status, `curl: ${r.stderr}\n${await evidence(fx)}`).toBe(0);
    expect(r.stdout).toBe(`200 ${body.length}`);
    expect(createHash('sha256').update(readFileSync(out)).digest('hex')).toBe(bodySha);
    rmSync(out, { force: true });
    // The bytes went to the guest through the TAP link: at least the body's worth.
    const after = await linkStats(fx);
    expect(after.bytesOut - before.bytesOut).toBeGreaterThan(body.length);
    // With the virtio-net header (the fixture's default), TCP to the guest
    // leaves in GSO super-segments: frames average well beyond the 1514-byte MTU frame.
    expect((after.bytesOut - before.bytesOut) / (after.framesOut - before.framesOut)).toBeGreaterThan(4 * 1514);
  });

  it('HTTP upload of a few MiB from the guest: the host gets every byte, and queued frames are read in batches', async () => {
    const file = join(fx.dir, 'up.bin');
    writeFileSync(file, body);
    const before = await linkStats(fx);
    const r = await fx.guestRun(
      'curl',
      ['-sS', '--max-time', '20', '--data-binary', `@${file}`, '-H', 'content-type: application/octet-stream', `http://${HOST_IP}:${hostPort}/upload`],
      { timeoutMs: 25_000 },
    );
    rmSync(file, { force: true });
    expect(r.status, `curl: ${r.stderr}\n${await evidence(fx)}`).toBe(0);
    expect(r.stdout).toBe(`${body.length} ${bodySha}`);
    // A bulk sender queues frames faster than one per wake-up: the link drains
    // them together (one ACK and one host write per batch). chunksIn counts wake-ups.
    const after = await linkStats(fx);
    const frames = after.framesIn - before.framesIn;
    const wakeups = after.chunksIn - before.chunksIn;
    expect(frames).toBeGreaterThan(body.length / 1500);
    expect(frames / wakeups).toBeGreaterThan(1.5);
  });

  it('HTTP by IP to a remote server (NAT dials from the root namespace)', async () => {
    const addr = fx.topo.internetAddrs[0]!;
    const server = await fx.startNodeServer(fx.remoteNs, HTTP_SERVER_JS, [addr, '0', 'remote']);
    try {
      const port = readyPort(server.stdout());
      const r = await fx.guestRun('curl', ['-sS', '--max-time', '5', `http://${addr}:${port}/tf`], { timeoutMs: 10_000 });
      expect(r.status, `curl: ${r.stderr}\n${await evidence(fx)}`).toBe(0);
      // The dial left from the root namespace (the shim went back there before exec): remote sees the host's veth address.
      expect(r.stdout).toBe(`remote /tf from ${fx.topo.hostAddr}\n`);
    } finally {
      await killTracked(server);
    }
  });

  it('UDP echo round trip with a remote server', async () => {
    const addr = fx.topo.internetAddrs[1]!;
    const server = await fx.startNodeServer(fx.remoteNs, UDP_ECHO_JS, [addr, '0']);
    try {
      const port = readyPort(server.stdout());
      const r = await fx.guestRun(process.execPath, ['-e', UDP_CLIENT_JS, addr, String(port), 'tf', '5', '5000'], { timeoutMs: 10_000 });
      expect(r.status, `udp client: ${r.stdout}${r.stderr}\n${await evidence(fx)}`).toBe(0);
      for (let i = 0; i < 5; i++) expect(r.stdout).toContain(`reply tf-${i} from ${addr}:${port}`);
    } finally {
      await killTracked(server);
    }
  });

  it('/stats: the link counters grow with traffic and link.guestConnected is true', async () => {
    const before = await fx.stats();
    const linkBefore = before['link'] as LinkCounters;
    expect(linkBefore.guestConnected).toBe(true);
    expect(linkBefore.connections).toBe(1);
    const r = await fx.guestRun('busybox', ['ping', '-c', '4', '-i', '0.2', '-W', '2', GATEWAY_IP], { timeoutMs: 10_000 });
    expect(r.status, `ping: ${r.stdout}${r.stderr}`).toBe(0);
    const after = await fx.stats();
    const linkAfter = after['link'] as LinkCounters;
    expect(linkAfter.guestConnected).toBe(true);
    // Four requests in, four replies out (ARP may add a few either way).
    expect(linkAfter.framesIn - linkBefore.framesIn).toBeGreaterThanOrEqual(4);
    expect(linkAfter.framesOut - linkBefore.framesOut).toBeGreaterThanOrEqual(4);
    expect(linkAfter.bytesIn).toBeGreaterThan(linkBefore.bytesIn);
    expect(linkAfter.bytesOut).toBeGreaterThan(linkBefore.bytesOut);
    expect(linkAfter.framingErrors).toBe(0);
    // The stack's own totals agree that frames went both ways.
    expect(after.frames.in - before.frames.in).toBeGreaterThanOrEqual(4);
    expect(after.frames.out - before.frames.out).toBeGreaterThanOrEqual(4);
    const health = await fx.api('GET', '/healthz');
    expect(health.body).toEqual({ status: 'ok', guestConnected: true });
  });

  it('--pcap captures the TAP link both ways (the guest\'s echo requests and Moat\'s replies)', async () => {
    const mac = await fx.tapMac();
    const r = await fx.guestRun('busybox', ['ping', '-c', '2', '-W', '2', GATEWAY_IP], { timeoutMs: 10_000 });
    expect(r.status, `ping: ${r.stdout}${r.stderr}`).toBe(0);
    const file = fx.pcapFile!;
    expect(existsSync(file), `${file} missing`).toBe(true);
    // Moat writes the capture once per event-loop turn: wait (bounded) for the replies to land.
    let frames: PcapFrame[] = [];
    const deadline = Date.now() + 3_000;
    for (;;) {
      const pcap = readPcap(file);
      expect(pcap.linktype).toBe(1); // LINKTYPE_ETHERNET
      frames = pcap.frames;
      const replies = frames.filter((f) => icmpEcho(f.data)?.type === 0);
      if (replies.length >= 2 || Date.now() > deadline) break;
      await new Promise((res) => setTimeout(res, 100));
    }
    const fromGuest = frames.filter((f) => macOf(f.data, 6) === mac);
    const toGuest = frames.filter((f) => macOf(f.data, 0) === mac);
    expect(fromGuest.length, `${frames.length} frames`).toBeGreaterThan(0);
    expect(toGuest.length, `${frames.length} frames`).toBeGreaterThan(0);
    const requests = fromGuest.map((f) => icmpEcho(f.data)).filter((e) => e?.type === 8 && e.src === GUEST_IP && e.dst === GATEWAY_IP);
    const replies = toGuest.map((f) => icmpEcho(f.data)).filter((e) => e?.type === 0 && e.src === GATEWAY_IP && e.dst === GUEST_IP);
    expect(requests.length).toBeGreaterThanOrEqual(2);
    expect(replies.length).toBeGreaterThanOrEqual(2);
    // DHCP was captured too: the guest's broadcast DISCOVER/REQUEST (UDP 68 -> 67).
    const dhcp = fromGuest.filter((f) => f.data.readUInt16BE(12) === 0x0800 && f.data[14 + 9] === 17 && f.data.readUInt16BE(14 + 20 + 2) === 67);
    expect(dhcp.length).toBeGreaterThan(0);
  });

  it('no internal errors and no error lines in the log', async () => {
    const stats = await fx.stats();
    expect(stats.drops['stack:internal-error'] ?? 0, JSON.stringify(stats.drops)).toBe(0);
    const errors = fx.moatLogEntries().filter((e) => e['level'] === 'error');
    expect(errors, JSON.stringify(errors)).toEqual([]);
    expect(fx.moat.child.exitCode).toBeNull();
  });
});

// ------------------------------------------------------------------ allowlist over the TAP link

describe.skipIf(gate.skip)('moat serve --tap-fd e2e: --allow behaves as on the stream link', () => {
  const ALLOWED = 'www.tf.test';
  const BLOCKED = 'evil.tf.test';
  let fx: MoatFixture;

  beforeAll(async () => {
    fx = await startMoatFixture({
      link: 'exec',
      prefix: PREFIX,
      extraMoatArgs: (topo) => ['--allow', ALLOWED, '--resolver', `${topo.remoteAddr}:53`, '--admit-resolved', topo.internetSubnet],
      dnsZone: (topo) => ({
        [ALLOWED]: [{ type: 'A', data: topo.internetAddrs[0]! }],
        [BLOCKED]: [{ type: 'A', data: topo.internetAddrs[1]! }],
      }),
    });
  }, 60_000);

  afterAll(async () => {
    await fx?.stop();
    cleanupAll();
  }, 30_000);

  it('the allowed name resolves and is reachable; the blocked one gets 0.0.0.0 and its Host is refused with 403', async () => {
    const wwwIp = fx.topo.internetAddrs[0]!;
    const server = await fx.startNodeServer(fx.remoteNs, HTTP_SERVER_JS, [wwwIp, '80', 'www']);
    try {
      const dig = async (name: string): Promise<string> => {
        const r = await fx.guestRun('dig', [`@${GATEWAY_IP}`, '+time=2', '+tries=1', '+short', name, 'A'], { timeoutMs: 10_000 });
        expect(r.status, `dig ${name}: ${r.stdout}${r.stderr}\n${await evidence(fx)}`).toBe(0);
        return r.stdout.trim();
      };
      expect(await dig(ALLOWED)).toBe(wwwIp);
      expect(await dig(BLOCKED)).toBe('0.0.0.0');
      // The blocked name never reached the remote DNS server.
      expect(fx.dnsServer!.stdout()).not.toContain(`query ${BLOCKED}`);

      const ok = await fx.guestRun('curl', ['-sS', '--max-time', '5', '-H', `Host: ${ALLOWED}`, `http://${wwwIp}/ok`], { timeoutMs: 10_000 });
      expect(ok.status, `curl: ${ok.stderr}\n${await evidence(fx)}`).toBe(0);
      expect(ok.stdout).toBe(`www /ok from ${fx.topo.hostAddr}\n`);

      const refused = await fx.guestRun('curl', ['-sS', '-i', '--max-time', '5', '-H', `Host: ${BLOCKED}`, `http://${wwwIp}/no`], {
        timeoutMs: 10_000,
      });
      expect(refused.status, `curl: ${refused.stderr}`).toBe(0);
      expect(refused.stdout).toMatch(/^HTTP\/1\.[01] 403/);
      expect(refused.stdout.toLowerCase()).toContain('x-moat-reason: name-not-allowed');
      // Moat answered, not the server behind the address.
      expect(refused.stdout).not.toContain('www /no');
      const decisions = fx.moatLogEntries().filter((e) => e['msg'] === 'egress decision');
      expect(decisions.find((d) => d['decision'] === 'blocked' && d['name'] === BLOCKED && d['reason'] === 'name-not-allowed'), JSON.stringify(decisions.slice(-10))).toBeDefined();
    } finally {
      await killTracked(server);
    }
  });
});

// ------------------------------------------------------------------ losing the TAP

/**
 * What a supervisor relies on: when the TAP is gone, Moat says so and exits 1
 * (it can never get that device back), rather than idling with no guest.
 */
async function expectTapLost(fx: MoatFixture, t0: number): Promise<void> {
  const exit = await withTimeout(fx.moat.exited, 5_000, 'Moat to exit after the TAP was lost').catch(async (e: Error) => {
    throw new Error(`${e.message}\n${await evidence(fx)}`);
  });
  const elapsed = Date.now() - t0;
  expect(exit.code, fx.moatLog().slice(-3000)).toBe(1);
  expect(elapsed).toBeLessThan(5_000);
  const lost = fx.moatLogEntries().find((e) => e['level'] === 'error' && typeof e['msg'] === 'string' && e['msg'].startsWith('TAP device lost'));
  expect(lost, fx.moatLog().slice(-3000)).toBeDefined();
  expect(lost!['tapFd']).toBe(3);
  // The device went away under Moat's read (tun answers EBADFD), not a shutdown of Moat's own making.
  expect(String(lost!["why"])).toMatch(/^read failed: EBADFD \(the TAP device was deleted\)/);
}

describe.skipIf(gate.skip)('moat serve --tap-fd e2e: losing the TAP ends Moat with exit code 1', () => {
  afterAll(() => cleanupAll());

  it('`ip link del` of the TAP inside the guest namespace: "TAP device lost", exit 1 within a few seconds; stop() still cleans up', async () => {
    const fx = await startMoatFixture({ link: 'exec', prefix: PREFIX });
    try {
      const ping = await fx.guestRun('busybox', ['ping', '-c', '1', '-W', '2', GATEWAY_IP], { timeoutMs: 10_000 });
      expect(ping.status, 'the link worked before the TAP was deleted').toBe(0);
      const t0 = Date.now();
      const del = await nsRunAsync(fx.guestNs, 'ip', ['link', 'del', 'dev', fx.tap]);
      expect(del.status, del.stderr).toBe(0);
      await expectTapLost(fx, t0);
    } finally {
      await fx.stop();
    }
    expect(netnsExists(fx.guestNs)).toBe(false);
    expect(netnsExists(fx.remoteNs)).toBe(false);
    expect(existsSync(fx.dir)).toBe(false);
  }, 60_000);

  it('deleting the guest namespace does not lose the TAP: Moat\'s descriptor keeps the namespace (and the device) alive, so Moat stays up until stopped', async () => {
    // The kernel's TAP file holds a reference on the namespace it was opened
    // in (drivers/net/tun.c allocates its socket there), so `ip netns del`
    // only removes the name: the namespace, and moat0 in it, live on as long
    // as Moat holds descriptor 3. Only deleting the device itself (the case
    // above) ends the link.
    const fx = await startMoatFixture({ link: 'exec', prefix: PREFIX });
    try {
      const pid = fx.moat.child.pid!;
      const del = await hostRunAsync('ip', ['netns', 'del', fx.guestNs]);
      expect(del.status, del.stderr).toBe(0);
      expect(netnsExists(fx.guestNs)).toBe(false);
      await new Promise((r) => setTimeout(r, 1_500));
      expect(fx.moat.child.exitCode, fx.moatLog().slice(-2000)).toBeNull();
      // Descriptor 3 is still attached to moat0 (tun's fdinfo names the device while it exists).
      expect(readFileSync(`/proc/${pid}/fdinfo/3`, 'utf8')).toMatch(/^iff:\s+moat0$/m);
      expect((await linkStats(fx)).guestConnected).toBe(true);
      expect(fx.moatLogEntries().filter((e) => e['level'] === 'error')).toEqual([]);
      // SIGTERM (stop()) still ends it cleanly, with exit code 0: nothing was lost.
      const exited = fx.moat.exited;
      await fx.stop();
      expect((await exited).code, fx.moatLog().slice(-2000)).toBe(0);
    } finally {
      await fx.stop();
    }
    expect(netnsExists(fx.remoteNs)).toBe(false);
    expect(existsSync(fx.dir)).toBe(false);
  }, 60_000);
});

// ------------------------------------------------------------------ a plain TAP (no virtio-net header)

describe.skipIf(gate.skip)('moat serve --tap-fd e2e: a TAP without the virtio-net header (no --vnet-hdr / --tap-vnet-hdr)', () => {
  let fx: MoatFixture;
  let hostServer: Server;
  let hostPort = 0;
  const body = randomBytes(2 * 1024 * 1024 + 77);
  const bodySha = createHash('sha256').update(body).digest('hex');

  beforeAll(async () => {
    ({ server: hostServer, port: hostPort } = await startHostServer(body));
    fx = await startMoatFixture({ link: 'exec', vnetHdr: false, prefix: `${PREFIX}p` });
  }, 60_000);

  afterAll(async () => {
    await fx?.stop();
    await new Promise<void>((r) => (hostServer ? hostServer.close(() => r()) : r()));
    cleanupAll();
  }, 30_000);

  it('downloads and uploads byte-exact, and no frame to the guest exceeds the MTU', async () => {
    const argv = fx.moat.child.spawnargs;
    expect(argv).not.toContain('--vnet-hdr');
    expect(argv).not.toContain('--tap-vnet-hdr');
    const before = await linkStats(fx);
    const out = join(fx.dir, 'blob.bin');
    const down = await fx.guestRun('curl', ['-sS', '--max-time', '20', '-o', out, `http://${HOST_IP}:${hostPort}/blob`], { timeoutMs: 25_000 });
    expect(down.status, `curl: ${down.stderr}\n${await evidence(fx)}`).toBe(0);
    expect(createHash('sha256').update(readFileSync(out)).digest('hex')).toBe(bodySha);
    const up = await fx.guestRun('curl', ['-sS', '--max-time', '20', '--data-binary', `@${out}`, `http://${HOST_IP}:${hostPort}/upload`], { timeoutMs: 25_000 });
    expect(up.status, `curl: ${up.stderr}`).toBe(0);
    expect(up.stdout).toBe(`${body.length} ${bodySha}`);
    rmSync(out, { force: true });
    const after = await linkStats(fx);
    const frames = after.framesOut - before.framesOut;
    // No offload: every TCP segment fits the 1500-byte MTU, so the frames average at most a full frame.
    expect(frames).toBeGreaterThan(body.length / 1514);
    expect((after.bytesOut - before.bytesOut) / frames).toBeLessThanOrEqual(1514);
  }, 60_000);
});

/** One of the guest's TCP counters (its namespace's /proc/net/snmp): RetransSegs, InCsumErrors. */
async function guestTcpCounter(fx: MoatFixture, name: string): Promise<number> {
  const r = await fx.guestRun('cat', ['/proc/net/snmp']);
  const lines = r.stdout.split('\n').filter((l) => l.startsWith('Tcp:'));
  const names = lines[0]!.split(/\s+/);
  const values = lines[1]!.split(/\s+/);
  if (!names.includes(name)) throw new Error(`no Tcp ${name} in the guest's /proc/net/snmp`);
  return Number(values[names.indexOf(name)]);
}
const guestRetransSegs = (fx: MoatFixture) => guestTcpCounter(fx, 'RetransSegs');

describe.skipIf(gate.skip)('moat serve --tap-fd e2e: receive offload (moat-shim --offload, --tap-offload) on and off', () => {
  let hostServer: Server;
  let hostPort = 0;
  const body = randomBytes(8 * 1024 * 1024 + 13);
  const bodySha = createHash('sha256').update(body).digest('hex');
  const retrans: Record<string, number> = {};

  beforeAll(async () => {
    ({ server: hostServer, port: hostPort } = await startHostServer(body));
  }, 60_000);

  afterAll(async () => {
    await new Promise<void>((r) => (hostServer ? hostServer.close(() => r()) : r()));
    cleanupAll();
  }, 30_000);

  for (const offload of [false, true]) {
    it(`offload ${offload ? 'on' : 'off'}: 8 MiB each way byte-exact at MTU 1500${offload ? ', the guest\'s TCP arrives in GSO segments, nothing dropped for its header or checksum, Moat\'s checksums completed by the TAP' : ''}`, async () => {
      const fx = await startMoatFixture({ link: 'exec', offload, prefix: `${PREFIX}${offload ? 'o' : 'n'}` });
      try {
        const argv = fx.moat.child.spawnargs;
        expect(argv.includes('--tap-offload')).toBe(offload);
        const before = await guestRetransSegs(fx);
        const csumErrorsBefore = await guestTcpCounter(fx, 'InCsumErrors');
        const out = join(fx.dir, 'blob.bin');
        const down = await fx.guestRun('curl', ['-sS', '--max-time', '40', '-o', out, `http://${HOST_IP}:${hostPort}/blob`], { timeoutMs: 45_000 });
        expect(down.status, `curl: ${down.stderr}\n${await evidence(fx)}`).toBe(0);
        expect(createHash('sha256').update(readFileSync(out)).digest('hex')).toBe(bodySha);
        const up = await fx.guestRun('curl', ['-sS', '--max-time', '40', '--data-binary', `@${out}`, `http://${HOST_IP}:${hostPort}/upload`], { timeoutMs: 45_000 });
        expect(up.status, `curl: ${up.stderr}\n${await evidence(fx)}`).toBe(0);
        expect(up.stdout).toBe(`${body.length} ${bodySha}`);
        rmSync(out, { force: true });
        retrans[offload ? 'on' : 'off'] = (await guestRetransSegs(fx)) - before;
        // With offload Moat's TCP leaves with the checksum for the TAP to complete (NEEDS_CSUM): the guest found none bad.
        expect(await guestTcpCounter(fx, 'InCsumErrors')).toBe(csumErrorsBefore);
        const stats = await fx.stats();
        const link = stats['link'] as LinkCounters & { gsoFramesIn?: number };
        const drops = stats.drops as Record<string, number>;
        const bad = Object.keys(drops).filter((r) => r.startsWith('vnet:') || r.startsWith('offload:') || r.endsWith(':bad-checksum') || r === 'eth:oversized' || r === 'stack:internal-error');
        expect(bad, await evidence(fx)).toEqual([]);
        if (offload) {
          // The upload's 8 MiB came in far fewer frames than 1500-byte segments would need.
          expect(link.gsoFramesIn, await evidence(fx)).toBeGreaterThan(0);
          expect(link.bytesIn / link.framesIn).toBeGreaterThan(1514);
        } else {
          expect(link.gsoFramesIn).toBeUndefined();
          expect(link.bytesIn / link.framesIn).toBeLessThanOrEqual(1514);
        }
        console.log(`offload ${offload ? 'on' : 'off'}: guest RetransSegs +${retrans[offload ? 'on' : 'off']}, frames in ${link.framesIn} (${Math.round(link.bytesIn / link.framesIn)} B avg), GSO frames in ${link.gsoFramesIn ?? '-'}`);
      } finally {
        await fx.stop();
      }
    }, 120_000);
  }

  it('the guest retransmits no more with offload than without (generous slack: the machine is shared)', () => {
    expect(retrans['on']).toBeDefined();
    expect(retrans['off']).toBeDefined();
    expect(retrans['on']!).toBeLessThanOrEqual(retrans['off']! + 20);
  });
});

describe.skipIf(gate.skip)('moat serve --tap-fd e2e: send offload to a guest that clamps its MSS (a GSO size per connection)', () => {
  let hostServer: Server;
  let hostPort = 0;
  const body = randomBytes(8 * 1024 * 1024 + 29);
  const bodySha = createHash('sha256').update(body).digest('hex');

  beforeAll(async () => {
    ({ server: hostServer, port: hostPort } = await startHostServer(body));
  }, 60_000);

  afterAll(async () => {
    await new Promise<void>((r) => (hostServer ? hostServer.close(() => r()) : r()));
    cleanupAll();
  }, 30_000);

  // 1000: a clamped MSS; 48: the smallest Moat sends to (the GSO size is then 36, which the TAP must accept too).
  for (const advmss of [1000, 48]) {
    it(`a guest advertising MSS ${advmss} (ip route ... advmss ${advmss}) on an MTU 1500 TAP downloads 8 MiB byte-exact, sent as super-segments`, async () => {
      const fx = await startMoatFixture({ link: 'exec', offload: true, prefix: `${PREFIX}m${advmss}` });
      try {
        // Only connections to the host alias advertise the small MSS (its own route, the rest of the subnet keeps 1460).
        const route = await fx.guestRun('ip', ['route', 'add', `${HOST_IP}/32`, 'dev', 'moat0', 'advmss', String(advmss)]);
        expect(route.status, route.stderr).toBe(0);
        const retransBefore = await guestRetransSegs(fx);
        const csumErrorsBefore = await guestTcpCounter(fx, 'InCsumErrors');
        const before = await linkStats(fx);
        const out = join(fx.dir, 'blob.bin');
        const down = await fx.guestRun('curl', ['-sS', '--max-time', '40', '-o', out, `http://${HOST_IP}:${hostPort}/blob`], { timeoutMs: 45_000 });
        expect(down.status, `curl: ${down.stderr}\n${await evidence(fx)}`).toBe(0);
        expect(createHash('sha256').update(readFileSync(out)).digest('hex')).toBe(bodySha);
        rmSync(out, { force: true });
        const after = await linkStats(fx);
        const frames = after.framesOut - before.framesOut;
        // Without a GSO size of its own the connection got no send offload (one frame per 1000-byte segment).
        expect((after.bytesOut - before.bytesOut) / frames, await evidence(fx)).toBeGreaterThan(4 * 1514);
        expect(await guestTcpCounter(fx, 'InCsumErrors')).toBe(csumErrorsBefore);
        const drops = (await fx.stats()).drops as Record<string, number>;
        expect(Object.keys(drops).filter((r) => r.startsWith('vnet:') || r.startsWith('offload:') || r.endsWith(':bad-checksum') || r === 'stack:internal-error')).toEqual([]);
        expect(((await linkStats(fx)) as LinkCounters & { outputRejected?: number }).outputRejected ?? 0).toBe(0); // the TAP took every virtio-net header
        console.log(`advmss ${advmss}: ${frames} frames out (${Math.round((after.bytesOut - before.bytesOut) / frames)} B avg), guest RetransSegs +${(await guestRetransSegs(fx)) - retransBefore}`);
      } finally {
        await fx.stop();
      }
    }, 120_000);
  }
});
