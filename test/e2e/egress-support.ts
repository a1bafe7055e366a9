/**
 * Servers, guest-side probes and a certificate for the egress-policy
 * end-to-end test (serve-egress.test.ts).
 *
 * Servers run in the "remote" namespace as `node -e SCRIPT args` (started by
 * the fixture's startNodeServer); probes run in the guest namespace as
 * `python3 -c SCRIPT args` so that they can do what curl/openssl cannot
 * (a ClientHello one byte per segment, a connection that says nothing, a
 * timed connect, a UDP datagram that waits for a reply). Every script prints
 * one machine-readable line per event so the test can assert on it.
 */
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';

export interface TestCert {
  certFile: string;
  keyFile: string;
}

/**
 * A self-signed certificate (EC P-256, valid one day) whose subject is
 * `names[0]` and whose subjectAltName lists every name; made with the openssl
 * command line in `dir` at test time.
 */
export function makeSelfSignedCert(dir: string, names: readonly string[]): TestCert {
  const certFile = join(dir, 'cert.pem');
  const keyFile = join(dir, 'key.pem');
  execFileSync(
    'openssl',
    [
      'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
      '-keyout', keyFile, '-out', certFile, '-days', '1',
      '-subj', `/CN=${names[0]}`,
      '-addext', `subjectAltName=${names.map((n) => `DNS:${n}`).join(',')}`,
    ],
    { stdio: 'pipe', timeout: 20_000 },
  );
  return { certFile, keyFile };
}

/**
 * A "website" on ADDR: HTTPS on HTTPS_PORT and HTTP on HTTP_PORT, answering
 * every request with "NAME PROTO HOST URL\n". It logs, on stdout:
 *   "conn https|http REMOTE"  for every TCP connection (before any TLS/HTTP byte),
 *   "request https|http HOST URL" for every request.
 * Prints "ready" once both listen.
 * Args: ADDR NAME CERT KEY HTTP_PORT HTTPS_PORT
 */
export const SITE_SERVER_JS = `
const http = require('node:http');
const https = require('node:https');
const fs = require('node:fs');
const [addr, name, cert, key, httpPort, httpsPort] = process.argv.slice(1);
const handler = (proto) => (req, res) => {
  console.log('request ' + proto + ' ' + req.headers.host + ' ' + req.url);
  res.setHeader('connection', 'close');
  res.end(name + ' ' + proto + ' ' + req.headers.host + ' ' + req.url + '\\n');
};
const plain = http.createServer(handler('http'));
const tls = https.createServer({ cert: fs.readFileSync(cert), key: fs.readFileSync(key) }, handler('https'));
plain.on('connection', (s) => console.log('conn http ' + s.remoteAddress));
tls.on('connection', (s) => console.log('conn https ' + s.remoteAddress));
tls.on('tlsClientError', (e) => console.log('tls-error ' + e.code));
let up = 0;
const ready = () => { if (++up === 2) console.log('ready'); };
plain.listen(Number(httpPort), addr, ready);
tls.listen(Number(httpsPort), addr, ready);
`;

/**
 * A TCP listener and a UDP echo on ADDR (ports TCP_PORT, UDP_PORT) that log
 * "tcp-conn REMOTE" and "udp-datagram REMOTE" for everything that reaches
 * them. Prints "ready" once both are bound.
 * Args: ADDR TCP_PORT UDP_PORT
 */
export const LISTENER_JS = `
const net = require('node:net');
const dgram = require('node:dgram');
const [addr, tcpPort, udpPort] = process.argv.slice(1);
const tcp = net.createServer((s) => { console.log('tcp-conn ' + s.remoteAddress); s.end('hello from listener\\n'); s.on('error', () => {}); });
const udp = dgram.createSocket('udp4');
udp.on('message', (m, r) => { console.log('udp-datagram ' + r.address); udp.send(m, r.port, r.address); });
let up = 0;
const ready = () => { if (++up === 2) console.log('ready'); };
tcp.listen(Number(tcpPort), addr, ready);
udp.bind(Number(udpPort), addr, ready);
`;

/**
 * Guest probe: TLS to ADDR:443 with SNI NAME whose ClientHello leaves one
 * byte per send() (TCP_NODELAY, SLEEP_MS between bytes), then the rest of the
 * handshake and "GET /onebyte" through the same socket, verifying the
 * server certificate against CAFILE.
 * Prints "local-port N", "hello-bytes N", "hello-sends N", "hello-ms N" (time
 * to send the hello), then "body <...>"
 * lines, then "done"; exits 1 with "error <...>" on any failure.
 * Args: ADDR NAME CAFILE SLEEP_MS
 */
export const ONE_BYTE_HELLO_PY = `
import socket, ssl, sys, time
addr, name, cafile, sleep_ms = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
try:
    ctx = ssl.create_default_context(cafile=cafile)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname=name)
    sock = socket.create_connection((addr, 443), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    print('local-port', sock.getsockname()[1], flush=True)
    def pump_in():
        data = sock.recv(65536)
        if not data:
            incoming.write_eof()
            return False
        incoming.write(data)
        return True
    # The first handshake step only produces the ClientHello.
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    hello = outgoing.read()
    print('hello-bytes', len(hello), flush=True)
    sends = 0
    t0 = time.monotonic()
    for i in range(len(hello)):
        sock.send(hello[i:i + 1])
        sends += 1
        time.sleep(sleep_ms / 1000.0)
    print('hello-sends', sends, flush=True)
    print('hello-ms', int((time.monotonic() - t0) * 1000), flush=True)
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            out = outgoing.read()
            if out:
                sock.sendall(out)
            if not pump_in():
                raise Exception('connection closed during the handshake')
    out = outgoing.read()
    if out:
        sock.sendall(out)
    tls.write(('GET /onebyte HTTP/1.1\\r\\nHost: ' + name + '\\r\\nConnection: close\\r\\n\\r\\n').encode())
    sock.sendall(outgoing.read())
    body = b''
    while True:
        try:
            chunk = tls.read(65536)
            if not chunk:
                break
            body += chunk
        except ssl.SSLWantReadError:
            if not pump_in():
                break
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            break
    for line in body.decode(errors='replace').split('\\r\\n'):
        print('body', line, flush=True)
    print('done', flush=True)
except Exception as e:
    print('error', type(e).__name__, e, flush=True)
    sys.exit(1)
`;

/**
 * Guest probe: connect to ADDR:PORT, send nothing, and report how the
 * connection ended: "connected", then "closed eof MS" / "closed reset MS"
 * (MS = milliseconds from connect to the end) or "still-open MS" after
 * MAX_MS. Exits 0 in every case (the test judges).
 * Args: ADDR PORT MAX_MS
 */
export const SILENT_CONNECTION_PY = `
import socket, sys, time
addr, port, max_ms = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
sock = socket.create_connection((addr, port), timeout=5)
t0 = time.monotonic()
print('connected', flush=True)
sock.settimeout(max_ms / 1000.0)
try:
    data = sock.recv(4096)
    ms = (time.monotonic() - t0) * 1000
    if data:
        # A TLS alert or a 403 is an answer too: report it, then wait for the close.
        print('data', data.hex(), flush=True)
        while sock.recv(4096):
            pass
        ms = (time.monotonic() - t0) * 1000
    print('closed eof %d' % ms, flush=True)
except ConnectionResetError:
    print('closed reset %d' % ((time.monotonic() - t0) * 1000), flush=True)
except socket.timeout:
    print('still-open %d' % ((time.monotonic() - t0) * 1000), flush=True)
`;

/**
 * Guest probe: a TCP connect to ADDR:PORT with a TIMEOUT_MS bound; prints
 * "connected MS", "refused MS", "timeout MS" or "error NAME MS". Exits 0.
 * Args: ADDR PORT TIMEOUT_MS
 */
export const TCP_CONNECT_PY = `
import socket, sys, time
addr, port, timeout_ms = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
t0 = time.monotonic()
ms = lambda: (time.monotonic() - t0) * 1000
try:
    s = socket.create_connection((addr, port), timeout=timeout_ms / 1000.0)
    print('connected %d' % ms(), flush=True)
    s.close()
except ConnectionRefusedError:
    print('refused %d' % ms(), flush=True)
except socket.timeout:
    print('timeout %d' % ms(), flush=True)
except OSError as e:
    print('error %s %d' % (type(e).__name__, ms()), flush=True)
`;

/**
 * Guest probe: send one UDP datagram PAYLOAD to ADDR:PORT and wait WAIT_MS
 * for a reply; prints "reply <text>" or "no-reply". Exits 0.
 * Args: ADDR PORT PAYLOAD WAIT_MS
 */
export const UDP_PROBE_PY = `
import socket, sys
addr, port, payload, wait_ms = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(wait_ms / 1000.0)
s.sendto(payload.encode(), (addr, port))
try:
    data, _ = s.recvfrom(4096)
    print('reply', data.decode(errors='replace'), flush=True)
except socket.timeout:
    print('no-reply', flush=True)
except OSError as e:
    print('no-reply', type(e).__name__, flush=True)
`;

/** Lines of a tracked server's stdout that start with `prefix` (e.g. "conn https"). */
export function linesStartingWith(stdout: string, prefix: string): string[] {
  return stdout.split('\n').filter((l) => l.startsWith(prefix));
}

/**
 * A UDP logger on port PORT of every ADDR given: logs
 * "udp-datagram LOCAL REMOTE LEN HEX8" (HEX8: the first 8 bytes) for every
 * datagram that reaches it, answers nothing. Prints "ready" once all are bound.
 * Args: PORT ADDR...
 */
export const UDP_LOGGER_JS = `
const dgram = require('node:dgram');
const [port, ...addrs] = process.argv.slice(1);
let up = 0;
for (const addr of addrs) {
  const s = dgram.createSocket('udp4');
  s.on('message', (m, r) => console.log('udp-datagram ' + addr + ' ' + r.address + ' ' + m.length + ' ' + m.subarray(0, 8).toString('hex')));
  s.bind(Number(port), addr, () => { if (++up === addrs.length) console.log('ready'); });
}
`;

/**
 * Guest probe: sends each HEX argument as one UDP datagram to ADDR:PORT from
 * one socket (one four-tuple), GAP_MS apart; prints "local-port N" then "sent N".
 * Args: ADDR PORT GAP_MS HEX...
 */
export const UDP_REPLAY_PY = `
import socket, sys, time
addr, port, gap = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(('0.0.0.0', 0))
print('local-port', s.getsockname()[1], flush=True)
n = 0
for h in sys.argv[4:]:
    s.sendto(bytes.fromhex(h), (addr, port))
    n += 1
    time.sleep(gap / 1000.0)
print('sent', n, flush=True)
`;
