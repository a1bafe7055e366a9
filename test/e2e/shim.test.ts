/**
 * moat-shim against a real Linux kernel, without Moat: the test itself plays
 * Moat with a tiny responder on a unix stream socket (QEMU framing) that
 * answers ARP and ICMP echo by hand, while the kernel in a network namespace
 * pings through a TAP device created by the shim.
 *
 * Addresses: 10.55.0.0/24 exists only inside the test's guest namespace (the
 * TAP), so every packet stays between that namespace and this process.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  cleanupAll,
  createNetns,
  deleteNetns,
  e2eGate,
  ensureShimBuilt,
  hasTool,
  hostRun,
  hostRunAsync,
  killTracked,
  nsExec,
  nsRun,
  nsRunAsync,
  onCleanup,
  spawnTracked,
  startShim,
  uniqueName,
  waitFor,
  waitForOutput,
  withTimeout,
  type TrackedProcess,
} from './harness.js';

const gate = e2eGate(['ip', 'busybox', 'cc']);

const GUEST_ADDR = '10.55.0.2';
const PEER_ADDR = '10.55.0.1'; // answered by the in-test responder
const PEER_MAC = Buffer.from([0x02, 0x00, 0x5e, 0x00, 0x55, 0x01]);

// ------------------------------------------------------------------ framing

/** Split a QEMU stream (u32 BE length + frame) into frames; records protocol errors. */
class FrameReader {
  private pending = Buffer.alloc(0);
  push(chunk: Buffer): Buffer[] {
    this.pending = Buffer.concat([this.pending, chunk]);
    const frames: Buffer[] = [];
    while (this.pending.length >= 4) {
      const len = this.pending.readUInt32BE(0);
      if (len === 0 || len > 65535 + 14) throw new Error(`shim sent a bad frame length ${len}`);
      if (this.pending.length < 4 + len) break;
      frames.push(Buffer.from(this.pending.subarray(4, 4 + len)));
      this.pending = this.pending.subarray(4 + len);
    }
    return frames;
  }
}

function framed(frame: Buffer): Buffer {
  const head = Buffer.alloc(4);
  head.writeUInt32BE(frame.length, 0);
  return Buffer.concat([head, frame]);
}

// ------------------------------------------------------------------ wire formats, by hand

function ipv4(s: string): Buffer {
  return Buffer.from(s.split('.').map(Number));
}

/** RFC 1071 Internet checksum. */
function inetChecksum(b: Buffer): number {
  let sum = 0;
  for (let i = 0; i + 1 < b.length; i += 2) sum += b.readUInt16BE(i);
  if (b.length % 2 === 1) sum += b[b.length - 1]! << 8;
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

interface ArpRequest {
  senderMac: Buffer;
  senderIp: Buffer;
  targetIp: Buffer;
}

/** Parse an Ethernet + ARP request (RFC 826), or undefined. */
function parseArpRequest(f: Buffer): ArpRequest | undefined {
  if (f.length < 14 + 28 || f.readUInt16BE(12) !== 0x0806) return undefined;
  const a = f.subarray(14);
  if (a.readUInt16BE(0) !== 1 || a.readUInt16BE(2) !== 0x0800 || a[4] !== 6 || a[5] !== 4) return undefined;
  if (a.readUInt16BE(6) !== 1) return undefined;
  return { senderMac: a.subarray(8, 14), senderIp: a.subarray(14, 18), targetIp: a.subarray(24, 28) };
}

function arpReply(req: ArpRequest): Buffer {
  const f = Buffer.alloc(14 + 28);
  req.senderMac.copy(f, 0);
  PEER_MAC.copy(f, 6);
  f.writeUInt16BE(0x0806, 12);
  const a = f.subarray(14);
  a.writeUInt16BE(1, 0);
  a.writeUInt16BE(0x0800, 2);
  a[4] = 6;
  a[5] = 4;
  a.writeUInt16BE(2, 6); // reply
  PEER_MAC.copy(a, 8);
  req.targetIp.copy(a, 14);
  req.senderMac.copy(a, 18);
  req.senderIp.copy(a, 24);
  return f;
}

interface EchoRequest {
  frame: Buffer;
  ihl: number;
  totalLength: number;
  dontFragment: boolean;
  fragmented: boolean;
}

/** Parse Ethernet + IPv4 + ICMP echo request addressed to PEER_ADDR, or undefined. */
function parseEchoRequest(f: Buffer): EchoRequest | undefined {
  if (f.length < 14 + 20 + 8 || f.readUInt16BE(12) !== 0x0800) return undefined;
  const ip = f.subarray(14);
  if (ip[0]! >> 4 !== 4) return undefined;
  const ihl = (ip[0]! & 0x0f) * 4;
  if (ip[9] !== 1 || !ip.subarray(16, 20).equals(ipv4(PEER_ADDR))) return undefined;
  if (inetChecksum(ip.subarray(0, ihl)) !== 0) throw new Error('kernel sent a bad IPv4 header checksum?');
  const totalLength = ip.readUInt16BE(2);
  const flagsFrag = ip.readUInt16BE(6);
  const icmp = ip.subarray(ihl, totalLength);
  if (icmp[0] !== 8) return undefined;
  return {
    frame: f,
    ihl,
    totalLength,
    dontFragment: (flagsFrag & 0x4000) !== 0,
    fragmented: (flagsFrag & 0x2000) !== 0 || (flagsFrag & 0x1fff) !== 0,
  };
}

function echoReply(req: EchoRequest): Buffer {
  const f = Buffer.from(req.frame.subarray(0, 14 + req.totalLength));
  // Ethernet: back to the sender.
  req.frame.copy(f, 0, 6, 12);
  PEER_MAC.copy(f, 6);
  const ip = f.subarray(14);
  const src = Buffer.from(ip.subarray(12, 16));
  ip.subarray(16, 20).copy(ip, 12);
  src.copy(ip, 16);
  ip[8] = 64;
  ip.writeUInt16BE(0, 10);
  ip.writeUInt16BE(inetChecksum(ip.subarray(0, req.ihl)), 10);
  const icmp = ip.subarray(req.ihl, req.totalLength);
  icmp[0] = 0; // echo reply (RFC 792)
  icmp.writeUInt16BE(0, 2);
  icmp.writeUInt16BE(inetChecksum(icmp), 2);
  return f;
}

// ------------------------------------------------------------------ the in-test "Moat"

interface Responder {
  server: Server;
  path: string;
  received: Buffer[];
  arpRequests: ArpRequest[];
  echoRequests: EchoRequest[];
  connections: Socket[];
  close(): Promise<void>;
}

function startResponder(path: string, answer: boolean): Promise<Responder> {
  const r: Responder = {
    server: createServer(),
    path,
    received: [],
    arpRequests: [],
    echoRequests: [],
    connections: [],
    close: () =>
      withTimeout(
        new Promise<void>((resolve) => {
          for (const c of r.connections) c.destroy();
          r.server.close(() => resolve());
        }),
        5_000,
        'responder to close',
      ),
  };
  r.server.on('connection', (sock) => {
    r.connections.push(sock);
    const reader = new FrameReader();
    sock.on('error', () => {});
    sock.on('data', (chunk: Buffer) => {
      const replies: Buffer[] = [];
      for (const f of reader.push(chunk)) {
        r.received.push(f);
        const arp = parseArpRequest(f);
        if (arp) {
          r.arpRequests.push(arp);
          if (answer && arp.targetIp.equals(ipv4(PEER_ADDR))) replies.push(framed(arpReply(arp)));
          continue;
        }
        const echo = parseEchoRequest(f);
        if (echo) {
          r.echoRequests.push(echo);
          if (answer) replies.push(framed(echoReply(echo)));
        }
      }
      if (replies.length > 0) sock.write(Buffer.concat(replies));
    });
  });
  return withTimeout(
    new Promise<Responder>((resolve, reject) => {
      r.server.once('error', reject);
      r.server.listen(path, () => resolve(r));
    }),
    5_000,
    `responder to listen on ${path}`,
  );
}

// ------------------------------------------------------------------ fixtures

let guestNs = '';
let dir = '';
let shimPath = '';
let tapCounter = 0;

function nextTap(): string {
  return `ms5t${tapCounter++}`;
}

describe.skipIf(gate.skip)('moat-shim against a real kernel (no Moat)', () => {
  beforeAll(() => {
    shimPath = ensureShimBuilt();
    dir = mkdtempSync(join(tmpdir(), 'ms5-shim-'));
    onCleanup(() => rmSync(dir, { recursive: true, force: true }));
    guestNs = `${uniqueName('ms5-')}-guest`;
    createNetns(guestNs);
  });
  afterAll(() => cleanupAll());

  async function startTapRig(mtu?: number): Promise<{ r: Responder; shim: TrackedProcess; dev: string }> {
    const dev = nextTap();
    const r = await startResponder(join(dir, `${dev}.sock`), true);
    const args = ['tap', '--dev', dev, '--netns', guestNs, '--connect', `unix://${r.path}`];
    if (mtu !== undefined) args.push('--mtu', String(mtu));
    const shim = await startShim(args);
    nsExec(guestNs, 'ip', ['addr', 'add', `${GUEST_ADDR}/24`, 'dev', dev]);
    return { r, shim, dev };
  }

  async function stopTapRig(rig: { r: Responder; shim: TrackedProcess }): Promise<void> {
    await killTracked(rig.shim, 'SIGTERM');
    await rig.r.close();
  }

  it('creates the TAP inside the namespace; kernel ARP + ping go through the framed socket', async () => {
    const rig = await startTapRig();
    try {
      // The device lives in the guest namespace, not in the root namespace.
      expect(nsExec(guestNs, 'ip', ['link', 'show', 'dev', rig.dev])).toMatch(/state (UP|UNKNOWN)/);
      expect(hostRun('ip', ['link', 'show', 'dev', rig.dev]).status).not.toBe(0);

      const ping = await nsRunAsync(guestNs, 'busybox', ['ping', '-c1', '-W2', PEER_ADDR], { timeoutMs: 10_000 });
      expect(ping.stdout + ping.stderr).toMatch(/1 packets received/);
      expect(ping.status).toBe(0);

      expect(rig.r.arpRequests.length).toBeGreaterThanOrEqual(1);
      const arp = rig.r.arpRequests[0]!;
      expect([...arp.senderIp].join('.')).toBe(GUEST_ADDR);
      expect([...arp.targetIp].join('.')).toBe(PEER_ADDR);
      expect(rig.r.echoRequests).toHaveLength(1);
      // The kernel learnt our MAC from the ARP reply we sent through the shim.
      const neigh = nsExec(guestNs, 'ip', ['neigh', 'show', PEER_ADDR, 'dev', rig.dev]);
      expect(neigh).toContain('02:00:5e:00:55:01');
    } finally {
      await stopTapRig(rig);
    }
  });

  it('carries 60000-byte pings unfragmented over MTU 65520 (--mtu)', async () => {
    const rig = await startTapRig(65520);
    try {
      expect(nsExec(guestNs, 'ip', ['link', 'show', 'dev', rig.dev])).toMatch(/mtu 65520/);
      const ping = await nsRunAsync(guestNs, 'busybox', ['ping', '-c1', '-W2', '-s', '60000', PEER_ADDR], {
        timeoutMs: 10_000,
      });
      expect(ping.stdout + ping.stderr).toMatch(/1 packets received/);
      const echo = rig.r.echoRequests[0]!;
      expect(echo).toBeDefined();
      // One frame: Ethernet 14 + IPv4 20 + ICMP 8 + 60000 data, neither MF nor an offset.
      expect(echo.frame.length).toBe(14 + 20 + 8 + 60000);
      expect(echo.totalLength).toBe(20 + 8 + 60000);
      expect(echo.fragmented).toBe(false);
    } finally {
      await stopTapRig(rig);
    }
  });

  it('exits with a clear message when the Moat side is killed', async () => {
    const sock = join(dir, 'killed.sock');
    const script = join(dir, 'server.cjs');
    writeFileSync(
      script,
      `const net = require('net');
       net.createServer((s) => { s.on('data', () => {}); s.on('error', () => {}); })
         .listen(${JSON.stringify(sock)}, () => console.log('listening'));`,
    );
    const server = spawnTracked(process.execPath, [script]);
    await waitForOutput(server, /listening/, { stream: 'stdout' });
    const dev = nextTap();
    const shim = await startShim(['tap', '--dev', dev, '--netns', guestNs, '--connect', `unix://${sock}`]);
    await killTracked(server, 'SIGKILL');
    const { code } = await withTimeout(shim.exited, 5_000, 'moat-shim to exit after the server died');
    expect(shim.stderr()).toMatch(/moat-shim: moat socket closed by peer/);
    expect(code).toBe(0);
    // The TAP went away with the shim.
    await waitFor(`${dev} to disappear`, () => nsRun(guestNs, 'ip', ['link', 'show', 'dev', dev]).status !== 0);
  });

  it.each([
    ['zero', 0],
    ['too large', 65535 + 14 + 1],
    ['far too large', 0x7fffffff],
  ])('exits 1 on a %s frame length from the socket', async (_label, badLen) => {
    const dev = nextTap();
    const path = join(dir, `${dev}.sock`);
    const server = createServer((s) => {
      s.on('error', () => {});
      const head = Buffer.alloc(4);
      head.writeUInt32BE(badLen, 0);
      s.write(head);
    });
    await new Promise<void>((resolve) => server.listen(path, resolve));
    try {
      const shim = spawnTracked(shimPath, ['tap', '--dev', dev, '--netns', guestNs, '--connect', `unix://${path}`]);
      const { code } = await withTimeout(shim.exited, 5_000, 'moat-shim to reject the framing');
      expect(code).toBe(1);
      expect(shim.stderr()).toContain(`moat-shim: moat socket: protocol error: frame length ${badLen}`);
    } finally {
      server.close();
    }
  });

  it('unixgram mode: one frame per datagram both ways, VFKT hello discarded', async () => {
    expect(hasTool('python3'), 'python3 plays the datagram peer (vfkit role)').toBe(true);
    const moatPath = join(dir, 'ug-moat.sock');
    const shimSock = join(dir, 'ug-shim.sock');
    const peerSock = join(dir, 'ug-peer.sock');
    const fromGuest = Buffer.alloc(60, 0xa5);
    PEER_MAC.copy(fromGuest, 0);
    const fromMoat = Buffer.alloc(42, 0x5a);

    const received: Buffer[] = [];
    const server = createServer((s) => {
      const reader = new FrameReader();
      s.on('error', () => {});
      s.on('data', (chunk: Buffer) => {
        for (const f of reader.push(chunk)) {
          received.push(f);
          s.write(framed(fromMoat)); // answer once the peer is known
        }
      });
    });
    await new Promise<void>((resolve) => server.listen(moatPath, resolve));
    try {
      const shim = await startShim(['unixgram', '--listen', shimSock, '--connect', `unix://${moatPath}`]);
      const peer = `
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(${JSON.stringify(peerSock)})
s.settimeout(5)
s.sendto(b"VFKT", ${JSON.stringify(shimSock)})
s.sendto(bytes.fromhex(${JSON.stringify(fromGuest.toString('hex'))}), ${JSON.stringify(shimSock)})
print(s.recv(70000).hex())
`;
      const out = await hostRunAsync('python3', ['-c', peer], { timeoutMs: 10_000 });
      expect(out.stderr).toBe('');
      expect(out.stdout.trim()).toBe(fromMoat.toString('hex'));
      expect(received).toHaveLength(1); // the hello did not reach Moat
      expect(received[0]!.equals(fromGuest)).toBe(true);
      expect(shim.stderr()).toContain(`peer is ${peerSock}`);
      await killTracked(shim, 'SIGTERM');
      expect(shim.child.exitCode).toBe(0);
    } finally {
      server.close();
    }
  });

  it('--help names every mode and exits 0; a bad command line exits 2', () => {
    const help = hostRun(shimPath, ['--help']);
    expect(help.status).toBe(0);
    for (const mode of ['tap', 'unixgram', 'vsock']) expect(help.stdout).toMatch(new RegExp(`moat-shim ${mode} `));
    const bad = hostRun(shimPath, ['tap', '--dev', 'x']);
    expect(bad.status).toBe(2);
    expect(bad.stderr).toMatch(/^moat-shim: tap: --connect URL is required/);
  });
});

// ------------------------------------------------------------------ tap --exec

describe.skipIf(gate.skip)('moat-shim tap --exec: the TAP handed to a command on fd 3', () => {
  let ns = '';

  beforeAll(() => {
    shimPath = ensureShimBuilt();
    ns = `${uniqueName('tf-')}-guest`;
    createNetns(ns);
  });
  afterAll(() => {
    deleteNetns(ns);
    cleanupAll();
  });

  it.each([
    ['--exec together with --connect', ['tap', '--dev', 'tfx0', '--connect', 'unix:///nonexistent.sock', '--exec', 'true'], 'tap: give either --connect URL (relay) or --exec COMMAND (hand over the TAP), not both'],
    ['--exec in unixgram mode', ['unixgram', '--listen', '/nonexistent-tf.sock', '--exec', 'true'], 'unixgram: --exec belongs to tap mode'],
    ['--exec with no command', ['tap', '--dev', 'tfx0', '--exec'], '--exec needs a command'],
    ['--vnet-hdr without --exec', ['tap', '--dev', 'tfx0', '--vnet-hdr', '--connect', 'unix:///nonexistent.sock'], '--vnet-hdr needs --exec (the relay speaks plain frames)'],
    ['--offload without --vnet-hdr', ['tap', '--dev', 'tfx0', '--offload', '--exec', 'true'], '--offload needs --vnet-hdr (offloaded frames are described by the virtio-net header)'],
  ])('usage error: %s exits 2 with a message, creating nothing', (_label, args, message) => {
    const r = hostRun(shimPath, args);
    expect(r.status, r.stderr).toBe(2);
    expect(r.stderr).toContain(`moat-shim: ${message}`);
    expect(r.stderr).toContain("run 'moat-shim --help' for usage");
    expect(r.stdout).toBe('');
    // No TAP appeared anywhere (the checks run before any device is made).
    expect(hostRun('ip', ['link', 'show', 'dev', 'tfx0']).status).not.toBe(0);
    expect(nsRun(ns, 'ip', ['link', 'show', 'dev', 'tfx0']).status).not.toBe(0);
  });

  it('runs COMMAND in its own namespace with the TAP on fd 3, while the TAP exists in --netns; the TAP goes with the command', async () => {
    const dev = 'tfexec0';
    const ownNs = readlinkSync('/proc/self/ns/net');
    const guestNsId = nsExec(ns, 'readlink', ['/proc/self/ns/net']).trim();
    expect(guestNsId).not.toBe(ownNs); // else the comparison below proves nothing
    // Each line is KEY=VALUE; the link checks run while the command (and so fd 3) is alive.
    const script = [
      'echo "fd3=$(readlink /proc/self/fd/3)"',
      'echo "netns=$(readlink /proc/self/ns/net)"',
      'echo "iff=$(sed -n "s/^iff:[[:space:]]*//p" /proc/self/fdinfo/3)"',
      `ip -o link show dev ${dev} >/dev/null 2>&1 && echo "in-own-ns=yes" || echo "in-own-ns=no"`,
      `echo "in-guest-ns=$(ip -n ${ns} -o link show dev ${dev})"`,
      'echo "args=$0 $1"',
    ].join('; ');
    const shim = spawnTracked(shimPath, ['tap', '--dev', dev, '--netns', ns, '--mtu', '9000', '--exec', 'sh', '-c', script, 'first', 'second']);
    const { code } = await withTimeout(shim.exited, 10_000, 'moat-shim --exec sh to finish');
    expect(code, shim.stderr()).toBe(0);
    const out: Record<string, string> = {};
    for (const line of shim.stdout().trim().split('\n')) {
      const eq = line.indexOf('=');
      out[line.slice(0, eq)] = line.slice(eq + 1);
    }
    // (a) fd 3 is the TAP: the tun device, attached to our interface.
    expect(out['fd3']).toBe('/dev/net/tun');
    expect(out['iff']).toBe(dev);
    // (b) the command runs in the shim's (here: the test's) namespace, not the guest's.
    expect(out['netns']).toBe(ownNs);
    expect(out['netns']).not.toBe(guestNsId);
    // (c) the TAP exists in --netns (with --mtu applied), and not in our namespace.
    expect(out['in-guest-ns']).toMatch(new RegExp(`^\\d+: ${dev}: .*\\bmtu 9000\\b`));
    expect(out['in-own-ns']).toBe('no');
    // Arguments after the command reach it unchanged.
    expect(out['args']).toBe('first second');
    // The shim logged the hand-over before it exec'd.
    expect(shim.stderr()).toContain(`moat-shim: ready: tap ${dev} (netns ${ns}, mtu 9000) on fd 3; exec sh`);
    // The command held the only descriptor: the TAP is gone now that it exited.
    await waitFor(`${dev} to disappear from ${ns}`, () => nsRun(ns, 'ip', ['link', 'show', 'dev', dev]).status !== 0);
  });

  it('the command is exec\'d (same PID, no relay process left behind) and its exit code is the shim\'s', async () => {
    const shim = spawnTracked(shimPath, ['tap', '--dev', 'tfexec1', '--netns', ns, '--exec', 'sh', '-c', 'echo "pid=$$"; exit 7']);
    const { code } = await withTimeout(shim.exited, 10_000, 'moat-shim --exec sh to finish');
    expect(code, shim.stderr()).toBe(7);
    expect(shim.stdout().trim()).toBe(`pid=${shim.child.pid}`);
  });

  it('a command that cannot be found: exit 1 with a message naming it, and no TAP left behind', async () => {
    const shim = spawnTracked(shimPath, ['tap', '--dev', 'tfexec2', '--netns', ns, '--exec', 'moat-no-such-command-tf']);
    const { code } = await withTimeout(shim.exited, 10_000, 'moat-shim --exec of a missing command to fail');
    expect(code).toBe(1);
    expect(shim.stderr()).toMatch(/moat-shim: --exec moat-no-such-command-tf: No such file or directory/);
    await waitFor('tfexec2 to disappear', () => nsRun(ns, 'ip', ['link', 'show', 'dev', 'tfexec2']).status !== 0);
  });
});
