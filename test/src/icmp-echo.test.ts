/**
 * ICMP echo beyond the gateway (src/nat/icmp-echo.ts, Nat.onIcmp) against a
 * fake ping socket that behaves as the kernel's: it overwrites the
 * identifier on send and delivers replies with it. Plus the policy rows
 * (sni/policy.ts, proto 'icmp') and the --icmp-fd descriptor check. The
 * real kernel path is test/e2e/serve-icmp.test.ts.
 */
import { describe, expect, it } from 'vitest';
import { openSync, closeSync } from 'node:fs';
import { ipv4 } from '../../netstack/addr.js';
import { parseRules } from '../../dns/rules.js';
import { EgressPolicy } from '../../sni/policy.js';
import { IcmpEcho, type PingSocket } from '../../src/nat/icmp-echo.js';
import { pingSocketProblem } from '../../src/transport/ping-socket.js';
import { parseServeArgs } from '../../src/config.js';
import { parseNetworkRequest } from '../../src/host-config.js';
import { Nat } from '../../src/nat/index.js';
import { NULL_LOGGER } from '../../src/log.js';
import { FakeStack } from './nat-fake-stack.js';
import { decisions, startEgressNat } from './egress-nat-support.js';

const KERNEL_ID = 0xb703;
const GUEST = ipv4(192, 168, 127, 2);
const DST = ipv4(198, 51, 100, 7);

/** A ping socket as the kernel runs one: the id is its own on the way out. */
class FakePing implements PingSocket {
  sent: { icmp: Buffer; address: string }[] = [];
  private handler: (icmp: Uint8Array, from: string) => void = () => {};
  send(icmp: Uint8Array, address: string): void {
    const b = Buffer.from(icmp);
    b.writeUInt16BE(KERNEL_ID, 4);
    this.sent.push({ icmp: b, address });
  }
  onMessage(h: (icmp: Uint8Array, from: string) => void): void {
    this.handler = h;
  }
  onError(): void {}
  close(): void {}
  /** The remote answers request `i` (optionally from another address). */
  answer(i: number, from = this.sent[i]!.address): void {
    const r = Buffer.from(this.sent[i]!.icmp);
    r[0] = 0;
    this.handler(r, from);
  }
  inject(icmp: Buffer, from: string): void {
    this.handler(icmp, from);
  }
}

function request(id: number, seq: number, payload = 'abcd'): Buffer {
  const b = Buffer.alloc(8 + payload.length);
  b[0] = 8;
  b.writeUInt16BE(id, 4);
  b.writeUInt16BE(seq, 6);
  b.write(payload, 8);
  return b;
}

function echo(options: Partial<{ maxOutstanding: number; perSecond: number; timeoutMs: number }> = {}, socket: FakePing | undefined = new FakePing()) {
  let now = 0;
  const delivered: { from: number; to: number; icmp: Buffer }[] = [];
  const e = new IcmpEcho(
    socket,
    { maxOutstanding: 4, perSecond: 100, timeoutMs: 10_000, now: () => now, ...options },
    (from, to, icmp) => delivered.push({ from, to, icmp: Buffer.from(icmp) }),
  );
  return { e, socket: socket!, delivered, advance: (ms: number) => (now += ms) };
}

describe('IcmpEcho: forwarding and translation', () => {
  it("a reply goes back with the guest's id and sequence number, from the destination, with the payload", () => {
    const { e, socket, delivered } = echo();
    expect(e.request(GUEST, DST, '198.51.100.7', request(0x1234, 7, 'hello'))).toBeUndefined();
    expect(socket.sent[0]!.address).toBe('198.51.100.7');
    socket.answer(0);
    expect(delivered).toHaveLength(1);
    const r = delivered[0]!;
    expect([r.from, r.to]).toEqual([DST, GUEST]);
    expect(r.icmp[0]).toBe(0);
    expect(r.icmp.readUInt16BE(4)).toBe(0x1234);
    expect(r.icmp.readUInt16BE(6)).toBe(7);
    expect(r.icmp.subarray(8).toString()).toBe('hello');
    expect(e.stats()).toMatchObject({ forwarded: 1, replied: 1, current: 0 });
  });

  it('two requests with the same guest id and sequence number leave with distinct sequence numbers, and each reply is returned once', () => {
    const { e, socket, delivered } = echo();
    e.request(GUEST, DST, '198.51.100.7', request(1, 1));
    e.request(GUEST, DST, '198.51.100.7', request(1, 1));
    expect(socket.sent[0]!.icmp.readUInt16BE(6)).not.toBe(socket.sent[1]!.icmp.readUInt16BE(6));
    socket.answer(1);
    socket.answer(1); // a duplicate reply
    socket.answer(0);
    expect(delivered).toHaveLength(2);
    expect(e.stats().unmatched).toBe(1);
  });

  it('a reply from another address than the request went to is dropped (no injection by a third host)', () => {
    const { e, socket, delivered } = echo();
    e.request(GUEST, DST, '198.51.100.7', request(1, 1));
    socket.answer(0, '203.0.113.66');
    expect(delivered).toHaveLength(0);
    expect(e.stats()).toMatchObject({ unmatched: 1, current: 1 });
    socket.answer(0);
    expect(delivered).toHaveLength(1);
  });

  it('replies for sequence numbers never sent, and non-reply messages, are dropped and counted', () => {
    const { e, socket, delivered } = echo();
    const forged = request(KERNEL_ID, 999);
    forged[0] = 0;
    socket.inject(forged, '198.51.100.7');
    socket.inject(request(KERNEL_ID, 1), '198.51.100.7'); // a request, not a reply
    socket.inject(Buffer.alloc(3), '198.51.100.7');
    expect(delivered).toHaveLength(0);
    expect(e.stats().unmatched).toBe(3);
  });

  it('without a ping socket every request is dropped as unavailable', () => {
    const fresh = new IcmpEcho(undefined, { maxOutstanding: 4, perSecond: 10, timeoutMs: 1000, now: () => 0 }, () => {});
    expect(fresh.request(GUEST, DST, '198.51.100.7', request(1, 1))).toBe('unavailable');
    expect(fresh.stats().unavailable).toBe(1);
  });
});

describe('IcmpEcho: bounds', () => {
  it('outstanding requests are bounded; past the bound the newest is refused; old ones expire to make room', () => {
    const { e, socket, advance } = echo({ maxOutstanding: 4, timeoutMs: 5_000 });
    for (let i = 0; i < 4; i++) expect(e.request(GUEST, DST, '198.51.100.7', request(1, i))).toBeUndefined();
    expect(e.request(GUEST, DST, '198.51.100.7', request(1, 9))).toBe('outstanding-full');
    expect(e.stats()).toMatchObject({ current: 4, max: 4, outstandingFull: 1 });
    advance(5_000);
    expect(e.request(GUEST, DST, '198.51.100.7', request(1, 10))).toBeUndefined();
    expect(e.stats().current).toBe(1);
    expect(socket.sent).toHaveLength(5);
  });

  it('a flood is held to perSecond (burst the same): the excess is counted, never sent', () => {
    const { e, socket, advance } = echo({ maxOutstanding: 4096, perSecond: 20 });
    for (let i = 0; i < 1000; i++) e.request(GUEST, DST, '198.51.100.7', request(1, i));
    expect(socket.sent).toHaveLength(20);
    expect(e.stats().rateLimited).toBe(980);
    advance(1_000);
    for (let i = 0; i < 1000; i++) e.request(GUEST, DST, '198.51.100.7', request(1, i));
    expect(socket.sent).toHaveLength(40);
  });

  it('sequence numbers wrap without reusing one still outstanding', () => {
    const { e, socket } = echo({ maxOutstanding: 2, perSecond: 1_000_000 });
    e.request(GUEST, DST, '198.51.100.7', request(1, 0)); // stays outstanding
    for (let i = 0; i < 70_000; i++) {
      e.request(GUEST, DST, '198.51.100.7', request(1, i & 0xffff));
      socket.answer(socket.sent.length - 1);
    }
    const first = socket.sent[0]!.icmp.readUInt16BE(6);
    expect(socket.sent.slice(1).every((s) => s.icmp.readUInt16BE(6) !== first)).toBe(true);
    expect(e.stats().current).toBe(1);
  });
});

describe("policy for echo (sni/policy.ts proto 'icmp'): as UDP, by an IP rule without a port", () => {
  const p = (rules: string[]) => EgressPolicy.compile({ rules: parseRules(rules), guestSubnet: { network: '192.168.127.0', prefix: 24 }, hostAlias: '192.168.127.254' });
  const decide = (rules: string[], dst: string) => p(rules).decide({ proto: 'icmp', dst, port: 0 }, { namesFor: () => [] });

  it('an IP or CIDR rule without a port allows it', () => {
    expect(decide(['198.51.100.7'], '198.51.100.7')).toMatchObject({ verdict: 'allow', reason: 'ip-rule', rule: '198.51.100.7' });
    expect(decide(['198.51.100.0/24'], '198.51.100.7')).toMatchObject({ verdict: 'allow', reason: 'ip-rule' });
  });
  it('a rule with a port does not; neither does a hostname rule', () => {
    expect(decide(['198.51.100.7:443'], '198.51.100.7')).toMatchObject({ verdict: 'block', reason: 'icmp-needs-ip-rule' });
    expect(decide(['example.com'], '198.51.100.7')).toMatchObject({ verdict: 'block', reason: 'icmp-needs-ip-rule' });
  });
  it('link-local only by a rule inside 169.254/16 (a containing CIDR does not open it); the host alias only by its exact rule', () => {
    expect(decide(['0.0.0.0/0'], '169.254.169.254')).toMatchObject({ verdict: 'block', reason: 'link-local' });
    expect(decide(['169.254.169.254'], '169.254.169.254')).toMatchObject({ verdict: 'allow' });
    expect(decide(['192.168.0.0/16'], '192.168.127.254')).toMatchObject({ verdict: 'block', reason: 'host-alias' });
  });
});

describe('--icmp-fd', () => {
  const IO = { readFile: () => '', readResolvConf: () => undefined };
  it('a descriptor that is not a ping socket is refused, naming why', () => {
    const fd = openSync('/dev/null', 'r');
    try {
      expect(pingSocketProblem(fd)).toMatch(/is not a socket/);
    } finally {
      closeSync(fd);
    }
    expect(pingSocketProblem(987_654)).toMatch(/is not open/);
  });
  it('flag validation names the flag; the same descriptor as --tap-fd is refused', () => {
    expect(() => parseServeArgs(['--listen-qemu', 'unix:///tmp/x.sock', '--icmp-fd', '1'], IO)).toThrow(/--icmp-fd: must be an open descriptor number >= 3/);
    expect(() => parseServeArgs(['--tap-fd', '3', '--icmp-fd', '3'], IO)).toThrow(/--icmp-fd: descriptor 3 is the --tap-fd device/);
  });
  it('moat host refuses icmp-fd from an API client (it would name the daemon\'s descriptors)', () => {
    expect(() => parseNetworkRequest({ name: 'a', 'listen-qemu': 'unix:///tmp/a.sock', 'icmp-fd': '4' }, IO)).toThrow(/icmp-fd/);
  });
});

describe('Nat.onIcmp: echo decided like UDP, every drop counted', () => {
  const natWith = (socket?: FakePing) => {
    const nat = new Nat({ dnsUpstreams: [{ host: '127.0.0.1', port: 9 }], ...(socket ? { pingSocket: socket } : {}) }, NULL_LOGGER);
    const stack = new FakeStack();
    nat.attach(stack);
    return { nat, stack };
  };

  it('without an allowlist: a host address is forwarded and the reply reaches the guest; refused ranges and non-echo ICMP are not', async () => {
    const socket = new FakePing();
    const { nat, stack } = natWith(socket);
    nat.onIcmp(GUEST, DST, request(0x77, 3));
    expect(socket.sent.map((x) => x.address)).toEqual(['198.51.100.7']);
    socket.answer(0);
    expect(stack.icmpSent).toHaveLength(1);
    expect(stack.icmpSent[0]!.icmp.readUInt16BE(4)).toBe(0x77);
    for (const dst of [ipv4(127, 0, 0, 1), ipv4(224, 0, 0, 1), ipv4(169, 254, 169, 254), ipv4(192, 168, 127, 77), ipv4(0, 1, 2, 3)]) nat.onIcmp(GUEST, dst, request(1, 1));
    const unreachable = request(1, 1);
    unreachable[0] = 3; // destination unreachable: never forwarded
    nat.onIcmp(GUEST, DST, unreachable);
    expect(socket.sent).toHaveLength(1);
    expect(nat.stats().icmpEcho).toMatchObject({ forwarded: 1, replied: 1, refused: 5 });
    expect(nat.stats().icmpDropped).toBe(6);
    await nat.close();
  });

  it('without a ping socket: counted unavailable, nothing faked', async () => {
    const { nat, stack } = natWith();
    nat.onIcmp(GUEST, DST, request(1, 1));
    expect(stack.icmpSent).toHaveLength(0);
    expect(nat.stats().icmpEcho).toMatchObject({ unavailable: 1, forwarded: 0 });
    await nat.close();
  });

  it('with an allowlist: only an IP rule without a port lets it out; each decision recorded with proto icmp', async () => {
    const socket = new FakePing();
    const s = await startEgressNat(['198.51.100.0/24', '203.0.113.5:443'], { nat: { pingSocket: socket } });
    try {
      s.nat.onIcmp(GUEST, DST, request(1, 1));
      s.nat.onIcmp(GUEST, ipv4(203, 0, 113, 5), request(1, 2));
      s.nat.onIcmp(GUEST, ipv4(203, 0, 113, 6), request(1, 3));
      expect(socket.sent.map((x) => x.address)).toEqual(['198.51.100.7']);
      expect(s.nat.stats().icmpEcho).toMatchObject({ forwarded: 1, refused: 2 });
      const d = decisions(s).filter((r) => r['proto'] === 'icmp');
      expect(d.map((r) => [r['decision'], r['reason'], r['dst']])).toEqual([
        ['allowed', 'ip-rule', '198.51.100.7:0'],
        ['blocked', 'icmp-needs-ip-rule', '203.0.113.5:0'],
        ['blocked', 'icmp-needs-ip-rule', '203.0.113.6:0'],
      ]);
    } finally {
      await s.close();
    }
  });

  it('audit mode: a refused echo goes out (recorded would-block), but never to link-local', async () => {
    const socket = new FakePing();
    const s = await startEgressNat(['203.0.113.5:443'], { nat: { pingSocket: socket }, egress: { mode: 'audit' } });
    try {
      s.nat.onIcmp(GUEST, DST, request(1, 1));
      s.nat.onIcmp(GUEST, ipv4(169, 254, 169, 254), request(1, 2));
      expect(socket.sent.map((x) => x.address)).toEqual(['198.51.100.7']);
      // (Audit records every refusal as would-block, link-local too, as for TCP; it is still not sent.)
      expect(decisions(s).filter((r) => r['proto'] === 'icmp').map((r) => r['reason'])).toEqual(['icmp-needs-ip-rule', 'link-local']);
    } finally {
      await s.close();
    }
  });
});
