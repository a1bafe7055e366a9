/**
 * SIGHUP on a running `moat serve --config FILE` with an allowlist: the file
 * is read again and the allowlist reloaded, fail closed. A file that does not
 * parse, or names a host that does not resolve, leaves the running allowlist
 * in place (and the log says why); a setting that cannot change live is
 * logged as "restart needed". Checked from the guest: what it can reach.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { cleanupAll, e2eGate, waitFor } from './harness.js';
import { FIXTURE_TOOLS, HTTP_SERVER_JS, startMoatFixture, type MoatFixture } from './moat-fixture.js';
import { readyPort } from './limits-support.js';

const gate = e2eGate([...FIXTURE_TOOLS, 'curl']);

describe.skipIf(gate.skip)('moat serve e2e: SIGHUP reloads the config file, fail closed', () => {
  let fx: MoatFixture;
  let dir: string;
  let configFile: string;
  let a: string;
  let b: string;
  let port: number;
  let resolver: string;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'mz9l-reload-'));
    configFile = join(dir, 'moat.json');
    fx = await startMoatFixture({
      prefix: 'mz9l-',
      extraMoatArgs: (topo) => {
        resolver = `${topo.remoteAddr}:53`;
        writeFileSync(configFile, JSON.stringify({ allow: [topo.internetAddrs[0]], resolver: [resolver] }));
        return ['--config', configFile];
      },
    });
    a = fx.topo.internetAddrs[0]!;
    b = fx.topo.internetAddrs[1]!;
    // One server on 0.0.0.0 of remote answers on both addresses, naming the one asked.
    port = readyPort((await fx.startNodeServer(fx.remoteNs, HTTP_SERVER_JS, ['0.0.0.0', '0', 'remote'])).stdout());
  });

  afterAll(async () => {
    if (fx) await fx.stop();
    rmSync(dir, { recursive: true, force: true });
    cleanupAll();
  });

  async function reaches(addr: string): Promise<boolean> {
    const r = await fx.guestRun('curl', ['-sS', '--max-time', '5', `http://${addr}:${port}/`], { timeoutMs: 10_000 });
    return r.status === 0 && r.stdout.startsWith('remote /');
  }

  /** Sends SIGHUP and waits for the log line that says how the reload ended. */
  async function hup(): Promise<Record<string, unknown>> {
    const done = (e: Record<string, unknown>): boolean => e['msg'] === 'config reloaded' || String(e['msg']).startsWith('config reload refused');
    const before = fx.moatLogEntries().filter(done).length;
    fx.moat.child.kill('SIGHUP');
    await waitFor('the reload to finish', async () => fx.moatLogEntries().filter(done).length > before, { timeoutMs: 10_000, intervalMs: 50 });
    return fx.moatLogEntries().filter(done).at(-1)!;
  }

  it('reloads a changed allowlist; keeps it through a broken file and an unresolvable host; names restart-only changes', async () => {
    expect(await reaches(a)).toBe(true);
    expect(await reaches(b)).toBe(false);

    writeFileSync(configFile, JSON.stringify({ allow: [a, b], resolver: [resolver] }));
    expect(await hup()).toMatchObject({ msg: 'config reloaded', allowlistReloaded: true, restartNeeded: [] });
    expect(await reaches(b)).toBe(true);

    writeFileSync(configFile, '{"allow": [');
    const broken = await hup();
    expect(broken['msg']).toBe('config reload refused: the running configuration is unchanged');
    expect(String(broken['error'])).toMatch(/not valid JSON/);
    expect(await reaches(b)).toBe(true);

    writeFileSync(configFile, JSON.stringify({ allow: [a, 'nohost.me8.test'], resolver: [resolver] }));
    const unresolvable = await hup();
    expect(unresolvable['msg']).toBe('config reload refused: the running allowlist is unchanged');
    expect(String(unresolvable['error'])).toMatch(/nohost\.me8\.test/);
    expect(await reaches(b)).toBe(true);

    // (--mtu is on the fixture's command line, which wins over the file: change settings it does not name.)
    writeFileSync(configFile, JSON.stringify({ allow: [a], resolver: [resolver], sinkhole: 'nxdomain', 'max-udp-flows': 10 }));
    expect(await hup()).toMatchObject({ msg: 'config reloaded', allowlistReloaded: true, restartNeeded: ['limits', 'sinkhole'] });
    expect(fx.moatLog()).toMatch(/"msg":"config reload: these settings change only with a restart; they keep their running values","restartNeeded":\["limits","sinkhole"\]/);
    expect(await reaches(a)).toBe(true);
    expect(await reaches(b)).toBe(false);
    // Still running, still serving.
    expect(fx.moat.child.exitCode).toBeNull();
  });
});
