/**
 * TIME-WAIT reuse end to end (issue 9): a guest that reuses a source port
 * while Moat still holds that four-tuple in TIME-WAIT gets its new connection
 * at once (RFC 9293 3.10.7.4, RFC 6191), never a silently dropped SYN, which
 * Linux would retransmit only after 1 s (a peer stack measured in issue 9
 * stalls 5 s each).
 *
 * Who holds TIME-WAIT: the side that sends the first FIN. The server in the
 * remote namespace answers and closes at once, so Moat's NAT ends its guest
 * connection first: Moat's stack goes FIN-WAIT-1 -> FIN-WAIT-2 -> TIME-WAIT
 * (60 s), while the guest, the passive closer, goes LAST-ACK -> CLOSED and may
 * bind the same port again straight away (SO_REUSEADDR).
 *
 * CI runs 2,000 connections; MOAT_TIMEWAIT_CONNECTIONS=20000 runs the full
 * count of the issue. Timings are printed. MOAT_TIMEWAIT_MOAT_BIN runs another
 * Moat launcher (a differential: a build with the reuse disabled must fail
 * here).
 *
 * Timing alone cannot tell a reopened TIME-WAIT from a refused one with a
 * Linux guest: a Moat that answers the reused SYN with an ACK of its old
 * connection makes Linux send RST and retransmit its SYN after only ~10 ms
 * (tcp_rcv_synsent_state_process, TCP_TIMEOUT_MIN), and a Moat that stays
 * silent costs 1 s. So besides "no connect over 1 s", the guest's own TCP
 * counters (/proc/net/snmp in its namespace) must show no RST sent and no
 * segment retransmitted: every reused SYN got its SYN-ACK the first time.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { e2eGate, killTracked, type TrackedProcess } from './harness.js';
import { FIXTURE_TOOLS, startMoatFixture, type MoatFixture } from './moat-fixture.js';

const gate = e2eGate([...FIXTURE_TOOLS, 'python3']);
const CONNECTIONS = Number(process.env.MOAT_TIMEWAIT_CONNECTIONS ?? 2_000);
/** Source ports the guest cycles through: each is reused every PORTS connections, well inside Moat's 60 s TIME-WAIT. */
const PORTS = 8;
const BASE_PORT = 41_000;

/** Server: writes "hi\n" and closes first, so that Moat's side of the guest connection sends the first FIN. */
const CLOSE_FIRST_SERVER_JS = `
const net = require('node:net');
const [addr, port] = process.argv.slice(1);
let served = 0;
const server = net.createServer((s) => { served++; s.on('error', () => {}); s.end('hi\\n'); });
server.listen(Number(port), addr, () => console.log('ready ' + server.address().port));
setInterval(() => console.log('served ' + served), 5000).unref();
`;

/**
 * Guest client: N sequential connections from fixed source ports (bind with
 * SO_REUSEADDR), each reads to EOF and closes. A connection's time runs from
 * the first bind attempt to connect() returning (a local EADDRNOTAVAIL while
 * the guest's own previous socket finishes LAST-ACK is retried and counted in
 * that time). Prints one JSON line.
 */
const CLIENT_PY = `
import errno, json, socket, sys, time
addr, port, n, base, nports = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
times, stalls, fails, busy = [], [], [], 0
start = time.monotonic()
for i in range(n):
    sport = base + (i % nports)
    t0 = time.monotonic()
    s = None
    while True:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.settimeout(15)
        try:
            s.bind(('', sport))
            s.connect((addr, port))
            break
        except OSError as e:
            s.close()
            s = None
            if e.errno in (errno.EADDRNOTAVAIL, errno.EADDRINUSE) and time.monotonic() - t0 < 5:
                busy += 1
                time.sleep(0.0002)
                continue
            fails.append('%d:%d:%s' % (i, sport, e))
            break
    dt = time.monotonic() - t0
    if s is None:
        if len(fails) > 20: break
        continue
    data = b''
    try:
        while True:
            c = s.recv(64)
            if not c: break
            data += c
    except OSError as e:
        fails.append('%d:%d: recv %s' % (i, sport, e))
    s.close()
    times.append(dt)
    if dt > 1.0: stalls.append([i, sport, round(dt, 3)])
    if data != b'hi\\n': fails.append('%d:%d: got %r' % (i, sport, data))
times.sort()
pct = lambda p: round(1000 * times[min(len(times) - 1, int(p * len(times)))], 3) if times else None
print(json.dumps({'n': n, 'ok': len(times), 'stalls': len(stalls), 'firstStalls': stalls[:20], 'fails': fails[:20], 'nfails': len(fails),
  'localBusyRetries': busy, 'p50ms': pct(0.5), 'p99ms': pct(0.99), 'maxms': round(1000 * times[-1], 3) if times else None,
  'elapsedS': round(time.monotonic() - start, 2)}))
`;

/** The guest namespace's TCP counters (RFC 4022 names, from /proc/net/snmp). */
async function guestTcpCounters(fx: MoatFixture): Promise<Record<string, number>> {
  const r = await fx.guestRun('cat', ['/proc/net/snmp']);
  const lines = r.stdout.split('\n').filter((l) => l.startsWith('Tcp:'));
  const names = lines[0]!.split(/\s+/).slice(1);
  const values = lines[1]!.split(/\s+/).slice(1).map(Number);
  return Object.fromEntries(names.map((n, i) => [n, values[i]!]));
}

interface ClientReport {
  n: number;
  ok: number;
  stalls: number;
  firstStalls: [number, number, number][];
  fails: string[];
  nfails: number;
  localBusyRetries: number;
  p50ms: number;
  p99ms: number;
  maxms: number;
  elapsedS: number;
}

describe.skipIf(gate.skip)('moat serve e2e: a guest reusing a four-tuple Moat holds in TIME-WAIT', () => {
  let fx: MoatFixture;
  let server: TrackedProcess;
  let addr: string;
  let port: number;

  beforeAll(async () => {
    fx = await startMoatFixture({ prefix: 'mz9f-tw-', moatBin: process.env.MOAT_TIMEWAIT_MOAT_BIN });
    addr = fx.topo.internetAddrs[0]!;
    fx.allowAddresses([addr]);
    server = await fx.startNodeServer(fx.remoteNs, CLOSE_FIRST_SERVER_JS, [addr, '0']);
    port = Number(/^ready (\d+)/m.exec(server.stdout())![1]);
  }, 60_000);

  afterAll(async () => {
    if (server) await killTracked(server).catch(() => {});
    await fx?.stop();
  }, 30_000);

  const runClient = async (n: number, timeoutMs: number): Promise<ClientReport> => {
    const r = await fx.guestRun('python3', ['-c', CLIENT_PY, addr, String(port), String(n), String(BASE_PORT), String(PORTS)], { timeoutMs });
    expect(r.status, `client: ${r.stderr}`).toBe(0);
    return JSON.parse(r.stdout.trim().split('\n').at(-1)!) as ClientReport;
  };

  it('after one connection per source port, Moat holds each four-tuple in TIME-WAIT', async () => {
    const before = await fx.stats();
    const r = await runClient(PORTS, 30_000);
    expect(r.ok, JSON.stringify(r)).toBe(PORTS);
    const after = await fx.stats();
    // The guest's sockets are gone (it closed second); Moat's stack still has the four-tuples (TIME-WAIT lasts 60 s),
    // as small TIME-WAIT records outside the connection table (issue 16).
    expect(after.flows['tcpTimeWait']! - (before.flows['tcpTimeWait'] ?? 0)).toBeGreaterThanOrEqual(PORTS);
    expect(after.flows['tcpConnections']!).toBeLessThanOrEqual(4);
    const guestSockets = await fx.guestRun('ss', ['-tanH', 'state', 'all', `( sport >= :${BASE_PORT} and sport < :${BASE_PORT + PORTS} )`]);
    expect(guestSockets.stdout.match(/TIME-WAIT/g) ?? [], `guest sockets:\n${guestSockets.stdout}`).toEqual([]);
  }, 60_000);

  it(`${CONNECTIONS} sequential connections reusing ${PORTS} source ports complete with zero stalls (no connect over 1 s, no guest RST or SYN retransmission)`, async () => {
    const before = await fx.stats();
    const tcpBefore = await guestTcpCounters(fx);
    const r = await runClient(CONNECTIONS, 60_000 + CONNECTIONS * 20);
    const tcpAfter = await guestTcpCounters(fx);
    const after = await fx.stats();
    const guestRsts = tcpAfter['OutRsts']! - tcpBefore['OutRsts']!;
    const guestRetrans = tcpAfter['RetransSegs']! - tcpBefore['RetransSegs']!;
    const heldDrops = (after.drops['tcp:syn-held'] ?? 0) - (before.drops['tcp:syn-held'] ?? 0);
    console.log(
      `TIME-WAIT reuse: ${r.ok}/${r.n} connections over ${PORTS} ports in ${r.elapsedS} s; connect p50 ${r.p50ms} ms, p99 ${r.p99ms} ms, max ${r.maxms} ms; ` +
        `stalls ${r.stalls}; guest RSTs sent ${guestRsts}, segments retransmitted ${guestRetrans}; local busy retries ${r.localBusyRetries}; Moat tcpConnections now ${after.flows['tcpConnections']}, tcpTimeWait ${after.flows['tcpTimeWait']}; ` +
        `retransmitted SYNs absorbed ${heldDrops}; drops ${JSON.stringify(after.drops)}`,
    );
    expect(r.fails, JSON.stringify(r)).toEqual([]);
    expect(r.ok).toBe(CONNECTIONS);
    expect(r.stalls, JSON.stringify(r.firstStalls)).toBe(0);
    expect(r.maxms).toBeLessThan(1_000);
    // Each reused SYN was answered with a SYN-ACK at once: no RST/retransmit dance in the guest.
    expect({ guestRsts, guestRetrans }).toEqual({ guestRsts: 0, guestRetrans: 0 });
    // No connection left behind, and no TIME-WAIT but one per four-tuple.
    expect(after.flows['tcpConnections']!).toBeLessThanOrEqual(4);
    expect(after.flows['tcpTimeWait']!).toBeLessThanOrEqual(PORTS);
    expect(after.drops['stack:internal-error'] ?? 0).toBe(0);
  }, 120_000 + CONNECTIONS * 25);
});
