/**
 * A broad CIDR opens neither cloud metadata nor the host alias (issue 14
 * finding 5, Acceptance): the real Linux kernel as the guest behind
 * moat-shim, `moat serve --allow 0.0.0.0/0:80 --allow 192.168.0.0/16:P`.
 *
 *   METADATA (169.254.77.N)   a listener in remote on :80 — link-local space
 *                             that only a rule inside 169.254/16 opens
 *   192.168.127.254:P         the host alias -> a listener on the host's
 *                             127.0.0.1:P; 192.168.0.0/16:P contains it
 *   192.168.127.254:Q         the same alias named by an exact rule: the
 *                             positive control (the path works at all)
 *
 * Network safety — Moat runs in the ROOT namespace and dials from there: had
 * it dialed the metadata address, a wrong build would send it out of the
 * machine's real interface. So before Moat starts, the metadata address is
 * put on remote's lo with a /32 route to it via the topology's veth, and
 * assertRoutesInto proves the route goes there; the route is removed on
 * every exit path. Each topology claims its own 198.18.2k.0/23, so N = k+1
 * gives parallel runs distinct metadata addresses (169.254.169.254 itself is
 * what serve-egress.test.ts case 9 routes; two runs must not share a route).
 * The alias listeners are on the host's loopback.
 *
 * The negative results are backed by a positive control each: after `PUT
 * /allowlist` adds a rule naming the metadata address, the same probe
 * connects and the listener logs it; the exact alias rule reaches its port.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { e2eGate, hostRun, killTracked, nsRun, onCleanup, spawnTracked, waitFor, waitForOutput, type TrackedProcess } from './harness.js';
import { FIXTURE_TOOLS, HOST_IP, startMoatFixture, type MoatFixture } from './moat-fixture.js';
import { LISTENER_JS, TCP_CONNECT_PY, linesStartingWith } from './egress-support.js';

const gate = e2eGate([...FIXTURE_TOOLS, 'curl', 'python3']);

/** Two TCP listeners on the host's 127.0.0.1 (ports chosen by the kernel); prints "ready P Q", then "conn PORT" per connection. */
const HOST_LISTENERS_JS = `
const net = require('node:net');
const ports = [];
const listen = () => new Promise((r) => {
  const srv = net.createServer((s) => { console.log('conn ' + srv.address().port); s.on('error', () => {}); s.end('hello from the host\\n'); });
  srv.listen(0, '127.0.0.1', () => r(srv.address().port));
});
(async () => { ports.push(await listen(), await listen()); console.log('ready ' + ports.join(' ')); })();
`;

/** How long to wait before asserting that something did NOT reach a server. */
const SETTLE_MS = 400;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

interface DecisionLine {
  decision: string;
  reason: string;
  rule: string | null;
  dst: string;
  [key: string]: unknown;
}

describe.skipIf(gate.skip)('moat serve e2e: --allow 0.0.0.0/0:80 reaches neither metadata nor the host alias', () => {
  let fx: MoatFixture;
  let hostListeners: TrackedProcess;
  let meta: TrackedProcess | undefined;
  let broadPort: number;
  let exactPort: number;
  let metadataIp: string;
  let routeAdded = false;
  let routeArgs: string[] = [];

  const removeRoute = (): void => {
    if (!routeAdded) return;
    routeAdded = false;
    hostRun('ip', ['route', 'del', ...routeArgs]);
  };

  beforeAll(async () => {
    hostListeners = spawnTracked(process.execPath, ['-e', HOST_LISTENERS_JS]);
    await waitForOutput(hostListeners, /^ready \d+ \d+$/m, { stream: 'stdout', timeoutMs: 10_000 });
    [broadPort, exactPort] = /^ready (\d+) (\d+)$/m.exec(hostListeners.stdout())!.slice(1).map(Number) as [number, number];

    fx = await startMoatFixture({
      prefix: 'mz14m-',
      extraMoatArgs: (topo) => {
        // Before Moat exists: the metadata address lives in remote, and the root namespace routes it there.
        const k = Number(topo.hostAddr.split('.')[2]) / 2;
        metadataIp = `169.254.77.${k + 1}`;
        routeArgs = [`${metadataIp}/32`, 'via', topo.remoteAddr, 'dev', topo.hostVeth];
        const added = hostRun('ip', ['route', 'add', ...routeArgs]);
        if (added.status !== 0) throw new Error(`ip route add ${routeArgs.join(' ')}: ${added.stderr}`);
        routeAdded = true;
        onCleanup(removeRoute);
        const addr = nsRun(topo.remoteNs, 'ip', ['addr', 'add', `${metadataIp}/32`, 'dev', 'lo']);
        if (addr.status !== 0) throw new Error(`ip addr add ${metadataIp}: ${addr.stderr}`);
        topo.assertRoutes([metadataIp]);
        return ['--allow', '0.0.0.0/0:80', '--allow', `192.168.0.0/16:${broadPort}`, '--allow', `${HOST_IP}:${exactPort}`];
      },
    });
    fx.allowAddresses([metadataIp]);
    meta = await fx.startNodeServer(fx.remoteNs, LISTENER_JS, [metadataIp, '80', '9054']);
  }, 90_000);

  afterAll(async () => {
    if (meta) await killTracked(meta).catch(() => {});
    await killTracked(hostListeners).catch(() => {});
    removeRoute();
    await fx?.stop();
  }, 30_000);

  const evidence = (): string => `\nmoat log tail:\n${fx.moatLog().slice(-3000)}`;
  const connect = async (addr: string, port: number): Promise<string> => {
    const r = await fx.guestRun('python3', ['-c', TCP_CONNECT_PY, addr, String(port), '3000'], { timeoutMs: 15_000 });
    return r.stdout.trim().split(' ')[0] ?? '';
  };
  const hostConns = (port: number): number => linesStartingWith(hostListeners.stdout(), `conn ${port}`).length;
  const blockedDecisions = (): DecisionLine[] =>
    fx
      .moatLogEntries()
      .filter((e) => e['msg'] === 'egress decision' && e['decision'] === 'blocked')
      .map((e) => e as unknown as DecisionLine);

  it('start-up warns about each rule that contains the alias or link-local space without opening it', () => {
    const warned = fx
      .moatLogEntries()
      .filter((e) => e['msg'] === 'allow rule contains a range it does not open')
      .map((e) => `${String(e['rule'])} ${String(e['contains'])}`);
    expect(warned.sort()).toEqual(['0.0.0.0/0:80 host-alias', '0.0.0.0/0:80 link-local', `192.168.0.0/16:${broadPort} host-alias`].sort());
  });

  it('metadata on :80 is refused (RST), the listener sees nothing, and the decision says link-local', async () => {
    expect(await connect(metadataIp, 80), evidence()).toBe('refused');
    const c = await fx.guestRun('curl', ['-sS', '--max-time', '5', `http://${metadataIp}/latest/meta-data/`], { timeoutMs: 10_000 });
    expect(c.status).not.toBe(0);
    expect(c.stdout).toBe('');
    await sleep(SETTLE_MS);
    expect(linesStartingWith(meta!.stdout(), 'tcp-conn'), meta!.stdout()).toEqual([]);
    expect(blockedDecisions().some((d) => d.dst === `${metadataIp}:80` && d.reason === 'link-local'), evidence()).toBe(true);
  }, 30_000);

  it('the host alias through a containing CIDR (and through 0.0.0.0/0:80) is refused; the host listener sees nothing', async () => {
    expect(await connect(HOST_IP, broadPort), evidence()).toBe('refused');
    expect(await connect(HOST_IP, 80), evidence()).toBe('refused');
    await sleep(SETTLE_MS);
    expect(hostConns(broadPort), hostListeners.stdout()).toBe(0);
    const refused = blockedDecisions().filter((d) => d.reason === 'host-alias').map((d) => d.dst);
    expect(refused).toEqual(expect.arrayContaining([`${HOST_IP}:${broadPort}`, `${HOST_IP}:80`]));
  }, 30_000);

  it('positive controls: an exact alias rule reaches the host; a rule naming the metadata address reaches it', async () => {
    expect(await connect(HOST_IP, exactPort), evidence()).toBe('connected');
    await waitFor('the host listener to log the alias connection', async () => hostConns(exactPort) === 1, { timeoutMs: 5_000, intervalMs: 50 });

    const put = await fx.api('PUT', '/allowlist', { allow: ['0.0.0.0/0:80', `${metadataIp}:80`] });
    expect(put.status, put.text).toBe(200);
    expect(await connect(metadataIp, 80), evidence()).toBe('connected');
    await waitFor('the metadata listener to log the connection', async () => linesStartingWith(meta!.stdout(), 'tcp-conn').length === 1, { timeoutMs: 5_000, intervalMs: 50 });
  }, 30_000);
});
