/**
 * bench:compare's two passt links (root: namespaces, TAP): pasta on the
 * guest's TAP, and passt's QEMU socket behind moat-shim (passt-qemu). Both
 * carry TCP each way, and they can be up together: this passt forwards DNS
 * only to 127.0.0.1:53, so both share one DNS server, which must outlive
 * the first link to stop and die with the last.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { existsSync, readFileSync } from 'node:fs';
import { e2eGate } from '../e2e/harness.js';
import { passtDnsState, startLink, type GuestLink } from '../../bench/compare/backends.js';
import { dnsRate, iperf, startServers, type Servers } from '../../bench/compare/measure.js';

const gate = e2eGate(['ip', 'iperf3', 'python3', 'passt', 'pasta', 'cc']);

describe.skipIf(gate.skip)('bench:compare passt links', () => {
  const up: Array<{ link: GuestLink; servers: Servers }> = [];

  beforeAll(async () => {
    for (const name of ['passt', 'passt-qemu'] as const) {
      const link = await startLink(name, { prefix: 'mk7t-', mtu: 65520 });
      up.push({ link, servers: await startServers(link) });
    }
  }, 60_000);

  afterAll(async () => {
    for (const { link, servers } of up) {
      await servers.stop();
      await link.stop();
    }
  });

  it('passt-qemu carries TCP both ways through moat-shim and passt (shim and passt are its cost processes)', async () => {
    const { link, servers } = up[1]!;
    expect(link.backend).toBe('passt-qemu');
    expect(link.costPids.map((p) => p.role)).toEqual(['passt', 'shim']);
    for (const direction of ['guest->host', 'host->guest'] as const) {
      const s = await iperf(link, servers, { direction, streams: 1, seconds: 1 });
      expect(s.bps, direction).toBeGreaterThan(0);
      expect(s.retransmits, direction).toBeDefined();
    }
  }, 60_000);

  it('both passt links answer DNS through one shared server, which outlives the first link and dies with the last', async () => {
    const state = passtDnsState();
    expect(state?.users).toBe(2);
    expect(state?.pids).toHaveLength(1);
    const pid = state!.pids[0]!;
    for (const { link } of up) {
      const r = await dnsRate(link, 1);
      expect(r.perSec, link.backend).toBeGreaterThan(0);
      expect(r.failed, link.backend).toBe(0);
    }
    // Stop pasta: the DNS server stays for passt-qemu.
    const first = up.shift()!;
    await first.servers.stop();
    await first.link.stop();
    expect(passtDnsState()?.users).toBe(1);
    expect(existsSync(`/proc/${pid}`)).toBe(true);
    const r = await dnsRate(up[0]!.link, 1);
    expect(r.perSec).toBeGreaterThan(0);
    expect(r.failed).toBe(0);
    // Stop the last: the server is gone.
    const last = up.shift()!;
    await last.servers.stop();
    await last.link.stop();
    expect(passtDnsState()).toBeUndefined();
    const gone = await waitGone(pid);
    expect(gone).toBe(true);
  }, 60_000);
});

/** Whether PID has exited (or is a zombie) within a few seconds. */
async function waitGone(pid: number): Promise<boolean> {
  for (let i = 0; i < 50; i++) {
    if (!existsSync(`/proc/${pid}`)) return true;
    try {
      if (/^State:\s+Z/m.test(readFileSync(`/proc/${pid}/status`, 'utf8'))) return true;
    } catch {
      return true;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return false;
}
