/**
 * The small programs a comparison run starts: servers on the "host" side
 * (node, `node -e CODE args`) and clients inside the guest namespace
 * (python3, `python3 -c CODE args`: blocking sockets, so one request costs
 * one send and one receive, with no event loop in the measured path).
 *
 * Every client prints exactly one JSON line on stdout; parse it with
 * parseClientJson.
 */

/** TCP echo on ADDR:PORT, Nagle off (request/response test). Prints "ready". */
export const ECHO_SERVER_JS = `
const net = require('node:net');
const [addr, port] = process.argv.slice(1);
net.createServer((s) => { s.setNoDelay(true); s.on('data', (d) => s.write(d)); s.on('error', () => {}); })
  .listen(Number(port), addr, () => console.log('ready'));
`;

/**
 * ADDR PORT: every accepted connection gets one byte and the server's FIN
 * (the server closes first, so the TIME-WAIT stays on the server's side and
 * the guest never runs out of ports). Prints "ready".
 */
export const ONE_BYTE_SERVER_JS = `
const net = require('node:net');
const [addr, port] = process.argv.slice(1);
net.createServer((s) => { s.on('error', () => {}); s.end('k'); })
  .listen({ port: Number(port), host: addr, backlog: 4096 }, () => console.log('ready'));
`;

/** ADDR PORT: accepts and holds connections silently; prints "ready", then "open N" every second. */
export const HOLD_SERVER_JS = `
const net = require('node:net');
const [addr, port] = process.argv.slice(1);
let open = 0;
net.createServer((s) => { open++; s.on('error', () => {}); s.on('close', () => open--); })
  .listen({ port: Number(port), host: addr, backlog: 4096 }, () => console.log('ready'));
setInterval(() => console.log('open ' + open), 1000);
`;

/**
 * ADDR PORT N: opens N connections, at most 256 connecting at a time (5 s
 * connect timeout each), and keeps them open. Prints {"connected","failed","firstError"} once all have
 * settled, then waits (idle) until killed.
 */
export const HOLD_CLIENT_JS = `
const net = require('node:net');
const [addr, port, nStr] = process.argv.slice(1);
const n = Number(nStr);
let started = 0, connected = 0, failed = 0, inFlight = 0, firstError = '';
const keep = [];
const settle = () => {
  inFlight--;
  if (connected + failed === n) console.log(JSON.stringify({ connected, failed, firstError }));
  else pump();
};
function pump() {
  while (inFlight < 256 && started < n) {
    started++; inFlight++;
    const s = net.connect({ host: addr, port: Number(port) });
    let done = false;
    s.setTimeout(5000, () => s.destroy(new Error('connect timeout (5 s)')));
    s.once('connect', () => { s.setTimeout(0); if (!done) { done = true; connected++; keep.push(s); settle(); } });
    s.on('error', (e) => { if (!done) { done = true; failed++; firstError ||= e.message; settle(); } });
  }
}
pump();
setInterval(() => {}, 60000);
`;

/**
 * HOST PORT SECONDS SIZE: one connection, SIZE-byte request echoed back,
 * as many round trips as fit in SECONDS (after 0.3 s of warm-up).
 */
export const RR_CLIENT_PY = `
import socket, sys, time, json
host, port, secs, size = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
s = socket.create_connection((host, port), timeout=5)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
msg = b'r' * size
def once():
    t = time.perf_counter_ns()
    s.sendall(msg)
    got = 0
    while got < size:
        d = s.recv(size - got)
        if not d:
            raise SystemExit('server closed')
        got += len(d)
    return time.perf_counter_ns() - t
warm = time.perf_counter() + 0.3
while time.perf_counter() < warm:
    once()
lat = []
t0 = time.perf_counter()
end = t0 + secs
while time.perf_counter() < end:
    lat.append(once())
el = time.perf_counter() - t0
lat.sort()
pick = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] / 1000.0
print(json.dumps({"count": len(lat), "seconds": el, "perSec": len(lat) / el, "p50Us": pick(0.5), "p99Us": pick(0.99)}))
`;

/**
 * HOST PORT SECONDS: connect, read until the server's FIN, close; repeat for
 * SECONDS. Counts completed connections and failures.
 */
export const CONN_CLIENT_PY = `
import socket, sys, time, json
host, port, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
ok = 0; failed = 0; first = ''
t0 = time.perf_counter(); end = t0 + secs
while time.perf_counter() < end:
    try:
        s = socket.create_connection((host, port), timeout=3)
        while s.recv(16):
            pass
        s.close()
        ok += 1
    except OSError as e:
        failed += 1
        first = first or str(e)
        if failed > 50:
            break
el = time.perf_counter() - t0
print(json.dumps({"count": ok, "failed": failed, "firstError": first, "seconds": el, "perSec": ok / el}))
`;

/**
 * SERVER PORT NAME SECONDS: one UDP A query for NAME at a time (the next is
 * sent when the answer arrives or after 1 s), for SECONDS. An answer counts
 * when its id matches, RCODE is 0 and it carries at least one answer record.
 * The socket is not connected, so an answer is taken from any source address
 * (this passt answers --dns-forward queries from its gateway address, not the
 * address queried, which a connected socket would drop); answers from
 * another address than SERVER are counted as wrongSource.
 */
export const DNS_CLIENT_PY = `
import socket, sys, time, json, struct, random
server, port, name, secs = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
qname = b''.join(bytes([len(p)]) + p.encode() for p in name.split('.')) + b'\\0'
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1.0)
ok = 0; bad = 0; lost = 0; wrong_source = 0; lat = []
t0 = time.perf_counter(); end = t0 + secs
while time.perf_counter() < end:
    qid = random.getrandbits(16)
    t = time.perf_counter_ns()
    s.sendto(struct.pack('>HHHHHH', qid, 0x0100, 1, 0, 0, 0) + qname + struct.pack('>HH', 1, 1), (server, port))
    try:
        while True:
            r, src = s.recvfrom(4096)
            if len(r) >= 12 and struct.unpack('>H', r[:2])[0] == qid:
                break
    except socket.timeout:
        lost += 1
        if lost > 20:
            break
        continue
    flags, qd, an = struct.unpack('>HHH', r[2:8])
    if src[0] != server:
        wrong_source += 1
    if (flags & 0x8000) and (flags & 0xF) == 0 and an >= 1:
        ok += 1
        lat.append(time.perf_counter_ns() - t)
    else:
        bad += 1
el = time.perf_counter() - t0
lat.sort()
p50 = lat[len(lat) // 2] / 1000.0 if lat else None
print(json.dumps({"count": ok, "bad": bad, "lost": lost, "wrongSource": wrong_source, "seconds": el, "perSec": ok / el, "p50Us": p50}))
`;

/** The last JSON object line a client printed (throws with the output if there is none). */
export function parseClientJson<T>(stdout: string, stderr: string, what: string): T {
  const lines = stdout.trim().split('\n').filter((l) => l.startsWith('{'));
  const last = lines[lines.length - 1];
  if (last === undefined) throw new Error(`${what}: no JSON result; stdout: ${stdout.slice(-500)} stderr: ${stderr.slice(-1000)}`);
  return JSON.parse(last) as T;
}
