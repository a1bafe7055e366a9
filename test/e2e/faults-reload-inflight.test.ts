/**
 * An allowlist reload covers connections still dialing (issue 14 finding 4),
 * from a real kernel guest behind moat-shim. The finding: `PUT
 * /allowlist?drop=1` answered `dropped: 0` while a connection approved under
 * the old rules was still dialing; it completed after the reload and carried
 * a request.
 *
 * To hold Moat's dial in flight without netem or iptables (not installed),
 * the upstream in remote is a listening socket whose accept queue is full
 * (listen(0), one connection from remote itself parked in it, never
 * accepted): Linux drops the SYNs of further connects, so Moat's connect
 * waits in SYN-SENT and retries. When the test writes "accept" to the
 * server, it drains the queue; Moat's next SYN retransmission (Linux: 1 s,
 * then 2 s, ...) completes the dial. Every address is in the topology's
 * 198.18.x.x (checked by the fixture); the server prints one line per
 * connection with the peer, and the bytes it received.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { e2eGate, killTracked, nsSpawn, waitFor, waitForOutput, type TrackedProcess } from './harness.js';
import { FIXTURE_TOOLS, startMoatFixture, type MoatFixture } from './moat-fixture.js';
import { TCP_CONNECT_PY, linesStartingWith } from './egress-support.js';

const gate = e2eGate([...FIXTURE_TOOLS, 'curl', 'python3']);

const WWW = 'www.mz14r.test';
const OTHER = 'other.mz14r.test';
/** The IP-rule flow's port; the name flow uses 80, where Moat holds the connection to read its Host. */
const PORT = 8080;

/**
 * Upstream with a full accept queue until told "accept" on stdin. Args: ADDR PORT.
 * Prints "ready", then per accepted connection "conn PEER", per read "data PEER N FIRSTLINE";
 * answers an HTTP head with 200.
 */
const STALLED_SERVER_PY = `
import socket, sys, threading
addr, port = sys.argv[1], int(sys.argv[2])
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((addr, port))
srv.listen(0)
filler = socket.create_connection((addr, port), timeout=5)  # parked in the accept queue: it is now full
print('ready', flush=True)
sys.stdin.readline()
def serve(c, peer):
    buf = b''
    while True:
        try:
            d = c.recv(65536)
        except OSError:
            break
        if not d:
            break
        buf += d
        print('data %s %d %s' % (peer, len(d), buf.split(b'\\r\\n')[0].decode('latin1')), flush=True)
        if b'\\r\\n\\r\\n' in buf:
            c.sendall(b'HTTP/1.1 200 OK\\r\\ncontent-length: 3\\r\\nconnection: close\\r\\n\\r\\nok\\n')
            break
    c.close()
while True:
    c, p = srv.accept()
    print('conn %s' % p[0], flush=True)
    threading.Thread(target=serve, args=(c, p[0]), daemon=True).start()
`;

/** Upstream that reads and never answers: a flow stays established until something closes it. Args: ADDR PORT. */
const SILENT_SERVER_PY = `
import socket, sys, threading
addr, port = sys.argv[1], int(sys.argv[2])
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((addr, port))
srv.listen(8)
print('ready', flush=True)
def serve(c, peer):
    while True:
        try:
            d = c.recv(65536)
        except OSError:
            break
        if not d:
            break
        print('data %s %d' % (peer, len(d)), flush=True)
    print('closed %s' % peer, flush=True)
    c.close()
while True:
    c, p = srv.accept()
    print('conn %s' % p[0], flush=True)
    threading.Thread(target=serve, args=(c, p[0]), daemon=True).start()
`;

interface DecisionLine {
  decision: string;
  reason: string;
  dst: string;
  name: string | null;
  detail?: string;
  [key: string]: unknown;
}

describe.skipIf(gate.skip)('moat serve e2e: a reload covers connections still dialing', () => {
  let fx: MoatFixture;
  let dir: string;
  let decisionLog: string;
  let ipTarget: string;
  let nameTarget: string;
  const servers: TrackedProcess[] = [];

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'mz14r-'));
    decisionLog = join(dir, 'decisions.jsonl');
    fx = await startMoatFixture({
      prefix: 'mz14r-',
      extraMoatArgs: (topo) => [
        '--allow', `${topo.internetAddrs[0]}:${PORT}`,
        '--allow', WWW,
        '--allow', OTHER,
        '--resolver', `${topo.remoteAddr}:53`,
        '--admit-resolved', topo.internetSubnet,
        '--decision-log', decisionLog,
      ],
      dnsZone: (topo) => ({
        [WWW]: [{ type: 'A', data: topo.internetAddrs[1]! }],
        [OTHER]: [{ type: 'A', data: topo.internetAddrs[2]! }],
      }),
    });
    ipTarget = fx.topo.internetAddrs[0]!;
    nameTarget = fx.topo.internetAddrs[1]!;
  }, 90_000);

  afterAll(async () => {
    for (const s of servers) await killTracked(s).catch(() => {});
    await fx?.stop();
    rmSync(dir, { recursive: true, force: true });
  }, 30_000);

  const evidence = (): string => `\nmoat log tail:\n${fx.moatLog().slice(-3000)}`;

  async function stalledServer(addr: string, port: number): Promise<TrackedProcess> {
    const s = nsSpawn(fx.remoteNs, 'python3', ['-c', STALLED_SERVER_PY, addr, String(port)]);
    servers.push(s);
    await waitForOutput(s, /^ready$/m, { stream: 'stdout', timeoutMs: 10_000 });
    return s;
  }
  const release = (s: TrackedProcess): void => void s.child.stdin?.write('accept\n');
  /** What the server received from Moat (the root namespace's veth address), not from its own filler. */
  const fromMoat = (s: TrackedProcess, kind: 'conn' | 'data'): string[] => linesStartingWith(s.stdout(), `${kind} ${fx.topo.hostAddr}`);
  const decisions = (): DecisionLine[] =>
    existsSync(decisionLog)
      ? readFileSync(decisionLog, 'utf8')
          .split('\n')
          .filter((l) => l.trim() !== '')
          .map((l) => JSON.parse(l) as DecisionLine)
      : [];
  const nat = async (): Promise<{ tcp: { dialing: number }; held: number }> => (await fx.stats())['nat'] as { tcp: { dialing: number }; held: number };

  it('?drop=1 counts and refuses an IP-rule connection still dialing; it never reaches the server', async () => {
    const server = await stalledServer(ipTarget, PORT);
    const probe = fx.guestRun('python3', ['-c', TCP_CONNECT_PY, ipTarget, String(PORT), '15000'], { timeoutMs: 20_000 });
    await waitFor('Moat to be dialing', async () => (await nat()).tcp.dialing === 1, { timeoutMs: 5_000, intervalMs: 50 });

    const put = await fx.api('PUT', '/allowlist?drop=1', { allow: [WWW, OTHER] });
    expect(put.status, put.text).toBe(200);
    expect((put.body as { dropped: number }).dropped, put.text + evidence()).toBe(1);
    const r = await probe;
    expect(r.stdout.trim().split(' ')[0], r.stdout + r.stderr + evidence()).toBe('refused');

    release(server);
    await new Promise((res) => setTimeout(res, 3_500)); // past the next SYN retransmissions a live dial would make
    expect(fromMoat(server, 'conn'), server.stdout()).toEqual([]);
    expect(decisions().some((d) => d.decision === 'blocked' && d.dst === `${ipTarget}:${PORT}` && /allowlist changed/.test(d.detail ?? '')), evidence()).toBe(true);
  }, 40_000);

  it('without drop, a held connection whose dial completes after its name was removed is reset; the request never reaches the server', async () => {
    const server = await stalledServer(nameTarget, 80);
    const curl = fx.guestRun('curl', ['-sS', '--max-time', '15', '--resolve', `${WWW}:80:${nameTarget}`, `http://${WWW}/late`], { timeoutMs: 20_000 });
    await waitFor('the Host to be allowed and dialed', () => decisions().some((d) => d.decision === 'allowed' && d.name === WWW && d.via === 'host'), { timeoutMs: 5_000, intervalMs: 50 });
    expect((await nat()).held, JSON.stringify(decisions()) + evidence()).toBe(1);

    const put = await fx.api('PUT', '/allowlist', { allow: [OTHER] });
    expect(put.status, put.text).toBe(200);
    release(server);
    const r = await curl;
    expect(r.status, r.stdout + r.stderr + evidence()).not.toBe(0);
    expect(r.stdout).toBe('');
    await new Promise((res) => setTimeout(res, 500));
    expect(fromMoat(server, 'data'), server.stdout()).toEqual([]);
    await waitFor(
      'the re-decision to be recorded',
      () => decisions().some((d) => d.decision === 'blocked' && d.name === WWW && d.reason === 'name-not-allowed' && /allowlist changed while dialing/.test(d.detail ?? '')),
      { timeoutMs: 5_000, intervalMs: 50 },
    );
  }, 40_000);

  it('?drop=1 resets an established flow Moat dialed by the name it peeked, counts it, and records it once', async () => {
    const other = fx.topo.internetAddrs[2]!;
    const server = nsSpawn(fx.remoteNs, 'python3', ['-c', SILENT_SERVER_PY, other, '80']);
    servers.push(server);
    await waitForOutput(server, /^ready$/m, { stream: 'stdout', timeoutMs: 10_000 });
    const restore = await fx.api('PUT', '/allowlist', { allow: [WWW, OTHER] });
    expect(restore.status, restore.text).toBe(200);
    const curl = fx.guestRun('curl', ['-sS', '--max-time', '15', '--resolve', `${OTHER}:80:${other}`, `http://${OTHER}/open`], { timeoutMs: 20_000 });
    await waitFor('the request to reach the server', () => fromMoat(server, 'data').length > 0, { timeoutMs: 10_000, intervalMs: 50 });

    const put = await fx.api('PUT', '/allowlist?drop=1', { allow: [WWW] });
    expect(put.status, put.text).toBe(200);
    expect((put.body as { dropped: number }).dropped, put.text + evidence()).toBe(1);
    const r = await curl;
    expect(r.status, r.stdout + r.stderr + evidence()).not.toBe(0);
    await waitFor('the upstream side to be closed', () => linesStartingWith(server.stdout(), `closed ${fx.topo.hostAddr}`).length === 1, { timeoutMs: 5_000, intervalMs: 50 });
    const dropped = decisions().filter((d) => d.name === OTHER && /allowlist changed while open/.test(d.detail ?? ''));
    expect(dropped, JSON.stringify(decisions()) + evidence()).toMatchObject([{ decision: 'blocked', reason: 'name-not-allowed', via: 'host' }]);
  }, 40_000);
});
