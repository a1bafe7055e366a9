/**
 * The namespace harness guards the machine: it must refuse addresses that
 * would leave the test's namespaces, and leave nothing behind.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { existsSync, writeFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import {
  assertRoutesInto,
  cleanupAll,
  createNetns,
  createTopology,
  e2eGate,
  hostLinkExists,
  hostRunAsync,
  listNetns,
  netnsExists,
  nsExec,
  nsSpawn,
  reapStale,
  spawnTracked,
  uniqueName,
  waitFor,
  waitForOutput,
  withTimeout,
} from './harness.js';

const gate = e2eGate(['ip', 'busybox']);

describe('harness: prerequisite gate and bounded waits', () => {
  it('fails (throws) in CI when a tool is missing, skips loudly outside CI', () => {
    const saved = process.env.CI;
    try {
      process.env.CI = 'true';
      expect(() => e2eGate(['ms5-no-such-tool'])).toThrow(/missing tool: ms5-no-such-tool.*CI is set/s);
      delete process.env.CI;
      const g = e2eGate(['ms5-no-such-tool']);
      expect(g.skip).toBe(true);
      expect(g.reason).toContain('ms5-no-such-tool');
    } finally {
      if (saved === undefined) delete process.env.CI;
      else process.env.CI = saved;
    }
  });

  it('waitForOutput fails at once when the process has exited, not at its deadline', async () => {
    const p = spawnTracked(process.execPath, ['-e', 'process.stderr.write("bye\\n")']);
    await p.exited;
    const t0 = Date.now();
    await expect(waitForOutput(p, /never printed/, { timeoutMs: 10_000 })).rejects.toThrow(/process exited \(0\).*bye/s);
    expect(Date.now() - t0).toBeLessThan(2_000);
  });

  it('waitFor gives up after its deadline and names what it waited for', async () => {
    const t0 = Date.now();
    await expect(waitFor('the impossible', () => false, { timeoutMs: 150 })).rejects.toThrow(
      /timed out after 150 ms waiting for the impossible/,
    );
    expect(Date.now() - t0).toBeLessThan(2_000);
    await expect(waitFor('a value', () => 42)).resolves.toBe(42);
    await expect(withTimeout(new Promise(() => {}), 50, 'never')).rejects.toThrow(/never/);
  });
});

describe.skipIf(gate.skip)('harness: namespaces, routes and cleanup (as root)', () => {
  afterAll(() => cleanupAll());

  it('assertRoutesInto refuses TEST-NET-1 (192.0.2.1): route lookup only, nothing sent', () => {
    const topo = createTopology({ prefix: 'ms5-' });
    try {
      expect(() => topo.assertRoutes(['192.0.2.1'])).toThrow(/refusing to run.*192\.0\.2\.1/s);
      // One bad address among good ones still aborts.
      expect(() => topo.assertRoutes([topo.internetAddrs[0]!, '192.0.2.1'])).toThrow(/192\.0\.2\.1/);
      expect(() => assertRoutesInto(['192.0.2.1'], ['ms5-not-a-dev'])).toThrow(/refusing/);
      // The test's own addresses and loopback pass.
      expect(() => topo.assertRoutes([topo.remoteAddr, ...topo.internetAddrs, '127.0.0.1'])).not.toThrow();
      // Loopback is always allowed, but another test's veth is not.
      expect(() => assertRoutesInto([topo.remoteAddr], [])).toThrow(new RegExp(topo.hostVeth));
    } finally {
      topo.destroy();
    }
  });

  it('builds guest + remote namespaces; the "internet" addresses answer from the root namespace', async () => {
    const topo = createTopology({ prefix: 'ms5-', internetAddresses: 2 });
    try {
      expect(topo.guestNs).toMatch(/^ms5-[0-9a-f]{6}-guest$/);
      expect(netnsExists(topo.guestNs)).toBe(true);
      expect(netnsExists(topo.remoteNs)).toBe(true);
      expect(hostLinkExists(topo.hostVeth)).toBe(true);
      expect(nsExec(topo.remoteNs, 'ip', ['-4', 'addr', 'show', 'dev', 'lo'])).toContain(`${topo.internetAddrs[1]}/32`);
      topo.assertRoutes(topo.internetAddrs);
      const ping = await hostRunAsync('busybox', ['ping', '-c1', '-W2', topo.internetAddrs[1]!]);
      expect(ping.stdout).toMatch(/1 packets received/);
    } finally {
      topo.destroy();
    }
    expect(netnsExists(topo.guestNs)).toBe(false);
    expect(netnsExists(topo.remoteNs)).toBe(false);
    expect(hostLinkExists(topo.hostVeth)).toBe(false);
    topo.destroy(); // idempotent
  });

  it('cleanupAll kills spawned processes by PID and deletes every namespace and veth', async () => {
    const topo = createTopology({ prefix: 'ms5-' });
    const sleeper = nsSpawn(topo.guestNs, 'busybox', ['sleep', '60']);
    await waitFor('sleeper to start', () => sleeper.child.pid !== undefined && existsSync(`/proc/${sleeper.child.pid}`));
    cleanupAll();
    const { signal } = await withTimeout(sleeper.exited, 5_000, 'sleeper to be killed');
    expect(signal).toBe('SIGKILL');
    expect(netnsExists(topo.guestNs)).toBe(false);
    expect(netnsExists(topo.remoteNs)).toBe(false);
    expect(hostLinkExists(topo.hostVeth)).toBe(false);
    // Other test files may create namespaces meanwhile: look only at ours.
    expect(listNetns().filter((n) => n.startsWith(topo.prefix))).toEqual([]);
    cleanupAll(); // idempotent
  });

  it('reaps namespaces recorded by a run that crashed (owner PID dead)', () => {
    // A PID that is certainly dead: a child that has already exited.
    const dead = spawnSync('true').pid!;
    const stale = `${uniqueName('ms5-')}-stale`;
    createNetns(stale); // recorded under our own registry...
    cleanupAll(); // ...then forgotten by us,
    spawnSync('ip', ['netns', 'add', stale]); // recreated as if left by the dead run.
    writeFileSync(
      `/tmp/moat-e2e-registry/owner-${dead}.json`,
      JSON.stringify({ pid: dead, netns: [stale], links: [], pids: [], subnets: [] }),
    );
    expect(netnsExists(stale)).toBe(true);
    const reaped = reapStale();
    expect(reaped).toContain(stale);
    expect(netnsExists(stale)).toBe(false);
    expect(existsSync(`/tmp/moat-e2e-registry/owner-${dead}.json`)).toBe(false);
  });
});
