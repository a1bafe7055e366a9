/**
 * A SYN flood to gateway:53 (found by test/e2e/flood.test.ts: spoofed
 * sources left thousands of accepted half-open DNS connections holding
 * stack slots): the NAT keeps at most MAX_DNS_TCP_SESSIONS, refuses the
 * newest beyond it, and frees a slot when a session closes.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { ipv4 } from '../../netstack/addr.js';
import { NULL_LOGGER } from '../../src/log.js';
import { DEFAULT_NAT_OPTIONS, MAX_DNS_TCP_SESSIONS, Nat } from '../../src/nat/index.js';
import { FakePendingTcp, FakeStack } from './nat-fake-stack.js';

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

describe('DNS over TCP to the gateway is bounded', () => {
  it('refuses the newest SYN beyond the bound and admits again once a session closes', async () => {
    const nat = new Nat({ dnsUpstreams: [{ host: '127.0.0.1', port: 9 }] }, NULL_LOGGER);
    nat.attach(new FakeStack());
    cleanups.push(() => nat.close());
    const syn = (i: number): FakePendingTcp =>
      new FakePendingTcp({ src: ipv4(192, 168, 127, 100 + (i % 100)), srcPort: 10000 + i, dst: DEFAULT_NAT_OPTIONS.gatewayIp, dstPort: 53 });
    const accepted = [];
    for (let i = 0; i < MAX_DNS_TCP_SESSIONS; i++) {
      const p = syn(i);
      nat.onTcpSyn(p);
      const o = await p.decided;
      expect(o.kind).toBe('accepted');
      if (o.kind === 'accepted') accepted.push(o.socket);
    }
    const over = syn(MAX_DNS_TCP_SESSIONS);
    nat.onTcpSyn(over);
    expect((await over.decided).kind).toBe('refused');
    expect(nat.stats().dnsTcp).toEqual({ sessions: MAX_DNS_TCP_SESSIONS, max: MAX_DNS_TCP_SESSIONS, refused: 1 });

    accepted[0]!.guestReset();
    expect(nat.stats().dnsTcp.sessions).toBe(MAX_DNS_TCP_SESSIONS - 1);
    const again = syn(MAX_DNS_TCP_SESSIONS + 1);
    nat.onTcpSyn(again);
    expect((await again.decided).kind).toBe('accepted');
  });
});
