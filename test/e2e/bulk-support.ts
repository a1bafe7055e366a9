/**
 * Helpers for serve-bulk.test.ts (heavy `moat serve` end-to-end cases):
 * node scripts (run with `node -e`) that move deterministic byte streams and
 * hash both ends, a 200-connection client, a writer that shows whether its
 * sends block, and small readers for /proc and `ss`.
 *
 * Byte streams: AES-128-CTR keystream under a key derived from a seed. It is
 * fast, never repeats within a run, and both ends can regenerate it, so a
 * lost, duplicated or reordered segment changes the receiver's sha256.
 */
import { createCipheriv, createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import {
  createNetns,
  deleteNetns,
  nsExec,
  nsRun,
  uniqueName,
} from './harness.js';

// ------------------------------------------------------------------ node scripts

/** Shared by the scripts below: keystream generator and a backpressured pump. */
const STREAM_LIB = `
const crypto = require('node:crypto');
const CHUNK = 64 * 1024;
const ZEROS = Buffer.alloc(CHUNK);
function keystream(seed) {
  const key = crypto.createHash('sha256').update('moat-bulk-' + seed).digest().subarray(0, 16);
  const c = crypto.createCipheriv('aes-128-ctr', key, Buffer.alloc(16));
  return (n) => c.update(ZEROS.subarray(0, n));
}
// Writes 'total' bytes of keystream(seed) to sock, respecting write()'s
// backpressure, then ends the socket; calls done(sha256hex) once flushed.
function pump(sock, total, seed, done) {
  const next = keystream(seed);
  const hash = crypto.createHash('sha256');
  let left = total;
  const step = () => {
    while (left > 0) {
      const buf = next(Math.min(CHUNK, left));
      hash.update(buf);
      left -= buf.length;
      if (!sock.write(buf)) { sock.once('drain', step); return; }
    }
    sock.end(() => done(hash.digest('hex')));
  };
  step();
}
`;

/**
 * TCP server on ADDR:PORT (prints "ready PORT"). Two kinds of connection,
 * told apart by the first line the client sends:
 *  - "bulk TAG DOWN SEED\\n": the server streams DOWN bytes of keystream(SEED)
 *    and then FIN, while hashing everything the client sends after the header
 *    until the client's FIN; then prints one JSON line
 *    {"tag","sentBytes","sentSha","recvBytes","recvSha"}.
 *  - "ping I\\n": answered "pong I ACTIVE\\n" (ACTIVE = connections open right
 *    now); the connection stays open until the client closes it. The server
 *    prints "max N" whenever the number of open connections reaches a new high.
 */
export const BULK_SERVER_JS = `${STREAM_LIB}
const net = require('node:net');
const [addr, port] = process.argv.slice(1);
let active = 0, max = 0;
const server = net.createServer({ allowHalfOpen: true }, (sock) => {
  active++;
  if (active > max) { max = active; console.log('max ' + max); }
  sock.on('close', () => { active--; });
  sock.on('error', (e) => console.log('error ' + e.message));
  let head = Buffer.alloc(0);
  let mode = 'header';
  let recvBytes = 0;
  const recvHash = crypto.createHash('sha256');
  let tag = '', sent, readDone = false;
  const report = () => {
    if (sent === undefined || !readDone) return;
    console.log(JSON.stringify({ tag, sentBytes: sent.bytes, sentSha: sent.sha, recvBytes, recvSha: recvHash.digest('hex') }));
  };
  const body = (b) => { recvBytes += b.length; recvHash.update(b); };
  sock.on('data', (d) => {
    if (mode === 'bulk') { body(d); return; }
    if (mode === 'ping') { return; }
    head = Buffer.concat([head, d]);
    const nl = head.indexOf(10);
    if (nl < 0) { if (head.length > 200) sock.destroy(); return; }
    const words = head.subarray(0, nl).toString().split(' ');
    const rest = head.subarray(nl + 1);
    if (words[0] === 'ping') {
      mode = 'ping';
      sock.write('pong ' + words[1] + ' ' + active + '\\n');
      return;
    }
    if (words[0] !== 'bulk' || words.length !== 4) { sock.destroy(); return; }
    mode = 'bulk';
    tag = words[1];
    const down = Number(words[2]);
    if (rest.length > 0) body(rest);
    pump(sock, down, words[3], (sha) => { sent = { bytes: down, sha }; report(); });
  });
  sock.on('end', () => {
    if (mode === 'ping') { sock.end(); return; }
    readDone = true; report();
  });
});
server.listen(Number(port), addr, () => console.log('ready ' + server.address().port));
`;

/**
 * Bulk client: ADDR PORT TAG DOWN UP DOWN_SEED UP_SEED TIMEOUT_MS. Asks the
 * server for DOWN bytes, sends UP bytes of keystream(UP_SEED) at the same time
 * and then FIN, hashes what arrives until the server's FIN, and prints one
 * JSON line {"tag","sentBytes","sentSha","recvBytes","recvSha","ms"}. Exit 0
 * on success, 2 on error or timeout.
 */
export const BULK_CLIENT_JS = `${STREAM_LIB}
const net = require('node:net');
const [addr, port, tag, down, up, downSeed, upSeed, timeoutMs] = process.argv.slice(1);
const t0 = Date.now();
const recvHash = crypto.createHash('sha256');
let recvBytes = 0, sent, readDone = false;
const fail = (why) => { console.log(JSON.stringify({ tag, error: why, recvBytes, ms: Date.now() - t0 })); process.exit(2); };
setTimeout(() => fail('timeout after ' + timeoutMs + ' ms'), Number(timeoutMs)).unref();
const sock = net.connect({ host: addr, port: Number(port), allowHalfOpen: true }, () => {
  sock.write('bulk ' + tag + ' ' + down + ' ' + downSeed + '\\n');
  pump(sock, Number(up), upSeed, (sha) => { sent = { bytes: Number(up), sha }; finish(); });
});
sock.on('data', (d) => { recvBytes += d.length; recvHash.update(d); });
sock.on('end', () => { readDone = true; finish(); });
sock.on('error', (e) => fail(e.message));
function finish() {
  if (sent === undefined || !readDone) return;
  console.log(JSON.stringify({ tag, sentBytes: sent.bytes, sentSha: sent.sha, recvBytes, recvSha: recvHash.digest('hex'), ms: Date.now() - t0 }));
  process.exit(0);
}
`;

/**
 * ADDR PORT N TIMEOUT_MS: opens N connections at once, waits until every one
 * is connected, then sends "ping I\\n" on each and reads "pong I ACTIVE\\n".
 * Prints one JSON line {"connected","answered","maxActive","errors"}; exit 0
 * only when all N answered.
 */
export const MANY_CONNECTIONS_CLIENT_JS = `
const net = require('node:net');
const [addr, port, nStr, timeoutMs] = process.argv.slice(1);
const n = Number(nStr);
const socks = [];
let connected = 0, answered = 0, maxActive = 0;
const errors = [];
const report = (code) => {
  console.log(JSON.stringify({ connected, answered, maxActive, errors: errors.slice(0, 20), errorCount: errors.length }));
  for (const s of socks) s.destroy();
  process.exit(code);
};
setTimeout(() => { errors.push('timeout after ' + timeoutMs + ' ms'); report(2); }, Number(timeoutMs)).unref();
for (let i = 0; i < n; i++) {
  const s = net.connect({ host: addr, port: Number(port) });
  socks.push(s);
  let buf = '';
  s.on('connect', () => { if (++connected === n) for (let j = 0; j < n; j++) socks[j].write('ping ' + j + '\\n'); });
  s.on('data', (d) => {
    buf += d.toString();
    const m = /^pong (\\d+) (\\d+)\\n/.exec(buf);
    if (!m) return;
    if (Number(m[1]) !== i) { errors.push('socket ' + i + ' got ' + JSON.stringify(buf)); return; }
    maxActive = Math.max(maxActive, Number(m[2]));
    if (++answered === n) report(errors.length === 0 ? 0 : 2);
  });
  s.on('error', (e) => errors.push('socket ' + i + ': ' + e.message));
}
`;

/**
 * ADDR PORT TOTAL: connects and writes up to TOTAL bytes in 64 KiB chunks,
 * each write waiting until the previous one was handed to the kernel. Prints
 * "connected", then "progress BYTES" every 200 ms (bytes the kernel has
 * accepted), "done" if everything was accepted, "error MSG" on an error.
 * When sends block (nobody drains the other end), progress stops growing.
 */
export const BLOCKING_WRITER_JS = `
const net = require('node:net');
const [addr, port, total] = process.argv.slice(1);
const chunk = Buffer.alloc(64 * 1024, 0x5a);
let accepted = 0;
const sock = net.connect({ host: addr, port: Number(port) }, () => {
  console.log('connected');
  const next = () => {
    if (accepted >= Number(total)) { console.log('progress ' + accepted); console.log('done'); sock.end(); return; }
    sock.write(chunk, (err) => { if (err) return; accepted += chunk.length; next(); });
  };
  next();
});
setInterval(() => console.log('progress ' + accepted), 200);
sock.on('error', (e) => { console.log('progress ' + accepted); console.log('error ' + e.message); process.exit(3); });
sock.on('close', () => process.exit(0));
`;

// ------------------------------------------------------------------ parsing

export interface BulkResult {
  tag: string;
  sentBytes: number;
  sentSha: string;
  recvBytes: number;
  recvSha: string;
  /** Client only: wall time of the connection. */
  ms?: number;
  error?: string;
}

/** The JSON lines a bulk server or client printed, by tag. */
export function bulkResults(stdout: string): Map<string, BulkResult> {
  const out = new Map<string, BulkResult>();
  for (const line of stdout.split('\n')) {
    if (!line.startsWith('{')) continue;
    try {
      const r = JSON.parse(line) as BulkResult;
      if (typeof r.tag === 'string') out.set(r.tag, r);
    } catch {
      /* not ours */
    }
  }
  return out;
}

/** The last "progress N" a BLOCKING_WRITER_JS printed (0 before the first). */
export function lastProgress(stdout: string): number {
  const all = [...stdout.matchAll(/^progress (\d+)$/gm)];
  return all.length === 0 ? 0 : Number(all[all.length - 1]![1]);
}

/** Highest "max N" line of BULK_SERVER_JS. */
export function serverMaxActive(stdout: string): number {
  let max = 0;
  for (const m of stdout.matchAll(/^max (\d+)$/gm)) max = Math.max(max, Number(m[1]));
  return max;
}

/** Resident set size of PID in bytes (VmRSS in /proc/PID/status). */
export function rssBytes(pid: number): number {
  const m = /^VmRSS:\s+(\d+)\s+kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!m) throw new Error(`no VmRSS for pid ${pid}`);
  return Number(m[1]) * 1024;
}

export const MiB = 1024 * 1024;

/** One socket line of `ss -tniH`: queues and (with -i) the tcp_info fields we use. */
export interface SsSocket {
  recvQ: number;
  sendQ: number;
  local: string;
  peer: string;
  /** tcp_info text (second line), may be empty. */
  info: string;
  bytesAcked: number | undefined;
  bytesSent: number | undefined;
}

/**
 * Bytes sent and not yet acknowledged (SND.NXT - SND.UNA): Send-Q
 * (write_seq - snd_una) less `notsent` (write_seq - snd_nxt). Not
 * bytes_sent - bytes_acked: tcpi_bytes_sent counts every transmission,
 * retransmissions (TLP, RTO) and sends the device refused included, so it
 * stays above bytes_acked for good once anything was sent twice.
 */
export function inFlightBytes(s: SsSocket): number {
  return s.sendQ - Number(/\bnotsent:(\d+)/.exec(s.info)?.[1] ?? 0);
}

/** Parse `ss -tniH ...` output (each socket: a line, then an indented info line). */
export function parseSs(text: string): SsSocket[] {
  const out: SsSocket[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const m = /^(?:\S+\s+)?(\d+)\s+(\d+)\s+(\S+)\s+(\S+)/.exec(lines[i]!.trim());
    if (!m || /^\s/.test(lines[i]!)) continue;
    const info = i + 1 < lines.length && /^\s/.test(lines[i + 1]!) ? lines[i + 1]!.trim() : '';
    const num = (k: string): number | undefined => {
      const f = new RegExp(`\\b${k}:(\\d+)`).exec(info);
      return f ? Number(f[1]) : undefined;
    };
    out.push({ recvQ: Number(m[1]), sendQ: Number(m[2]), local: m[3]!, peer: m[4]!, info, bytesAcked: num('bytes_acked'), bytesSent: num('bytes_sent') });
  }
  return out;
}

// ------------------------------------------------------------------ iperf3

export interface IperfFigures {
  /** Receiver-side throughput in bits per second (end.sum_received). */
  receivedBps: number;
  sentBps: number;
  bytes: number;
  retransmits: number | undefined;
}

/** Figures from `iperf3 -J` output (throws with the text when it is not a finished run). */
export function parseIperfJson(text: string): IperfFigures {
  let j: {
    error?: string;
    end?: { sum_received?: { bits_per_second: number; bytes: number }; sum_sent?: { bits_per_second: number; retransmits?: number } };
  };
  try {
    j = JSON.parse(text) as typeof j;
  } catch {
    throw new Error(`iperf3 printed no JSON: ${text.slice(0, 2000)}`);
  }
  if (j.error) throw new Error(`iperf3 error: ${j.error}`);
  const rec = j.end?.sum_received;
  const snt = j.end?.sum_sent;
  if (!rec || !snt) throw new Error(`iperf3 JSON without end.sum_received/sum_sent: ${text.slice(0, 2000)}`);
  return { receivedBps: rec.bits_per_second, sentBps: snt.bits_per_second, bytes: rec.bytes, retransmits: snt.retransmits };
}

export const gbps = (bps: number): string => (bps / 1e9).toFixed(2);

// ------------------------------------------------------------------ veth baseline (no Moat)

export interface VethPair {
  readonly nsA: string;
  readonly nsB: string;
  readonly addrA: string;
  readonly addrB: string;
  destroy(): void;
}

/**
 * Two fresh namespaces joined only by a veth pair (created inside them, so
 * deleting the namespaces removes it), addresses 198.19.254.1/.2 /30 (RFC 2544
 * range, outside the harness's 198.18.0.0/16 claims). Nothing in them routes
 * anywhere else: the function checks that each side reaches the other via the
 * veth and that no default route exists.
 */
export function createVethPair(prefix: string, mtu: number): VethPair {
  const nsA = uniqueName(`${prefix}va-`);
  const nsB = uniqueName(`${prefix}vb-`);
  const addrA = '198.19.254.1';
  const addrB = '198.19.254.2';
  const destroy = (): void => {
    deleteNetns(nsA);
    deleteNetns(nsB);
  };
  try {
    createNetns(nsA);
    createNetns(nsB);
    nsExec(nsA, 'ip', ['link', 'add', 'vb0', 'mtu', String(mtu), 'type', 'veth', 'peer', 'name', 'vb1', 'mtu', String(mtu), 'netns', nsB]);
    nsExec(nsA, 'ip', ['addr', 'add', `${addrA}/30`, 'dev', 'vb0']);
    nsExec(nsA, 'ip', ['link', 'set', 'vb0', 'up']);
    nsExec(nsB, 'ip', ['addr', 'add', `${addrB}/30`, 'dev', 'vb1']);
    nsExec(nsB, 'ip', ['link', 'set', 'vb1', 'up']);
    for (const [ns, peer, dev] of [
      [nsA, addrB, 'vb0'],
      [nsB, addrA, 'vb1'],
    ] as const) {
      const r = nsRun(ns, 'ip', ['route', 'get', peer]);
      const via = /\bdev (\S+)/.exec(r.stdout)?.[1];
      if (r.status !== 0 || via !== dev) throw new Error(`veth baseline: ${peer} in ${ns} routes via ${via ?? '?'}: ${r.stdout}${r.stderr}`);
      const def = nsRun(ns, 'ip', ['-4', 'route', 'show', 'default']).stdout.trim();
      if (def !== '') throw new Error(`veth baseline: ${ns} has a default route: ${def}`);
    }
    return { nsA, nsB, addrA, addrB, destroy };
  } catch (e) {
    destroy();
    throw e;
  }
}

// ------------------------------------------------------------------ expected hashes

/**
 * sha256 of the first `n` bytes of keystream(seed), computed here (in the test
 * process) the same way the scripts generate it: the independent expectation
 * both ends' hashes are compared with.
 */
export function expectedSha(seed: string, n: number): string {
  const key = createHash('sha256').update(`moat-bulk-${seed}`).digest().subarray(0, 16);
  const cipher = createCipheriv('aes-128-ctr', key, Buffer.alloc(16));
  const hash = createHash('sha256');
  const zeros = Buffer.alloc(1024 * 1024);
  for (let left = n; left > 0; left -= zeros.length) hash.update(cipher.update(zeros.subarray(0, Math.min(zeros.length, left))));
  return hash.digest('hex');
}

// ------------------------------------------------------------------ waiting

/**
 * Poll `probe` until it returns true; throw after timeoutMs naming `what`.
 * Unlike the harness's waitFor, an exception from `probe` ends the wait at
 * once (used to stop waiting when the guest's link is known to be gone).
 */
export async function pollUntil(what: string, probe: () => boolean, opts: { timeoutMs: number; intervalMs?: number }): Promise<void> {
  const deadline = Date.now() + opts.timeoutMs;
  while (!probe()) {
    if (Date.now() >= deadline) throw new Error(`timed out after ${opts.timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, opts.intervalMs ?? 100));
  }
}
