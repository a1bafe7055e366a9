/**
 * Helpers shared by the limit, fault and soak e2e tests: small node scripts
 * run in the guest or remote namespace, and readers for Moat's /stats.limits
 * and its resident memory.
 */
import { readFileSync } from 'node:fs';
import type { MoatFixture, MoatStats } from './moat-fixture.js';

/** Moat's resident set size in KiB (VmRSS of /proc/PID/status). */
export function rssKiB(pid: number): number {
  const m = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!m) throw new Error(`no VmRSS for ${pid}`);
  return Number(m[1]);
}

export function moatPid(fx: MoatFixture): number {
  const pid = fx.moat.child.pid;
  if (pid === undefined) throw new Error('moat has no pid');
  return pid;
}

export interface LimitCounter {
  max: number;
  current: number;
  refused: number;
  [k: string]: number;
}

/** /stats.limits, typed loosely. */
export async function limits(fx: MoatFixture): Promise<Record<string, LimitCounter>> {
  const s: MoatStats = await fx.stats();
  return s['limits'] as Record<string, LimitCounter>;
}

/** The NAT's table sizes from /stats. */
export async function natTables(fx: MoatFixture): Promise<{ tcpFlows: number; udpFlows: number; held: number }> {
  const n = (await fx.stats())['nat'] as { tcpFlows: number; udpFlows: number; held: number };
  return { tcpFlows: n.tcpFlows, udpFlows: n.udpFlows, held: n.held };
}

/** The port a node server script printed in its "ready PORT" line. */
export function readyPort(stdout: string): number {
  const m = /^ready (\d+)/m.exec(stdout);
  if (!m) throw new Error(`no "ready PORT" line in: ${stdout}`);
  return Number(m[1]);
}

/**
 * TCP echo server on ADDR:PORT. Prints "ready PORT", then "open N" / "close N"
 * as connections come and go (N = connections open now).
 */
export const TCP_ECHO_JS = `
const net = require('node:net');
const [addr, port] = process.argv.slice(1);
let open = 0;
const server = net.createServer((s) => {
  open++; console.log('open ' + open);
  s.on('data', (d) => s.write(d));
  s.on('error', () => {});
  s.on('close', () => { open--; console.log('close ' + open); });
});
server.listen(Number(port), addr, () => console.log('ready ' + server.address().port));
`;

/**
 * TCP server that streams data to every connection as fast as the peer takes
 * it, and logs "open N" / "close N". With a third argument "reset-after=K" it
 * sends K bytes and then resets the connection (an upstream that vanishes).
 */
export const TCP_STREAM_JS = `
const net = require('node:net');
const [addr, port, mode] = process.argv.slice(1);
const resetAfter = mode && mode.startsWith('reset-after=') ? Number(mode.slice(12)) : 0;
const chunk = Buffer.alloc(64 * 1024, 120);
let open = 0;
const server = net.createServer((s) => {
  open++; console.log('open ' + open);
  s.on('error', () => {});
  s.on('close', () => { open--; console.log('close ' + open); });
  if (resetAfter > 0) {
    s.write(Buffer.alloc(resetAfter, 121), () => setTimeout(() => s.resetAndDestroy(), 200));
    return;
  }
  const pump = () => { while (!s.destroyed && s.write(chunk)) {} };
  s.on('drain', pump);
  pump();
});
server.listen(Number(port), addr, () => console.log('ready ' + server.address().port));
`;

/**
 * Guest: opens COUNT TCP connections to ADDR:PORT at once, each given
 * TIMEOUT_MS to connect; then sends "ping-i" on every connected one and
 * waits for its echo. Prints one line "result {connected, refused, timedOut,
 * echoed, errors}" and keeps the connections open until killed (or exits
 * after the line if HOLD is "exit").
 */
export const GUEST_TCP_FLOOD_JS = `
const net = require('node:net');
const [addr, port, count, timeoutMs, hold] = process.argv.slice(1);
const r = { connected: 0, refused: 0, timedOut: 0, echoed: 0, errors: {} };
const sockets = [];
let settled = 0;
const done = () => {
  if (++settled < Number(count)) return;
  let pending = sockets.length;
  if (pending === 0) return finish();
  for (const [i, s] of sockets.entries()) {
    let got = '';
    s.on('data', (d) => { got += d; if (got === 'ping-' + i) { r.echoed++; if (--pending === 0) finish(); } });
    s.write('ping-' + i);
  }
  setTimeout(finish, 5000);
};
let finished = false;
function finish() {
  if (finished) return; finished = true;
  console.log('result ' + JSON.stringify(r));
  if (hold === 'exit') process.exit(0);
}
for (let i = 0; i < Number(count); i++) {
  const s = net.connect({ host: addr, port: Number(port) });
  let known = false;
  const settle = (kind) => {
    if (known) return;
    known = true;
    clearTimeout(t);
    if (kind === 'connected') { r.connected++; sockets.push(s); }
    else if (kind === 'timedOut') { r.timedOut++; s.destroy(); }
    else if (kind === 'ECONNREFUSED' || kind === 'ECONNRESET') r.refused++;
    else r.errors[kind] = (r.errors[kind] || 0) + 1;
    done();
  };
  const t = setTimeout(() => settle('timedOut'), Number(timeoutMs));
  s.once('connect', () => settle('connected'));
  s.on('error', (e) => settle(e.code));
}
`;

/**
 * Guest: one UDP socket first checks an echo (the "established" flow), then
 * COUNT new sockets (new flows) each send one datagram; then the first socket
 * checks its echo again. Prints "result {first, firstAgain, newReplies}".
 */
export const GUEST_UDP_FLOWS_JS = `
const dgram = require('node:dgram');
const [addr, port, count] = process.argv.slice(1);
const r = { first: false, firstAgain: false, newReplies: 0 };
const first = dgram.createSocket('udp4');
const echo = (s, text) => new Promise((resolve) => {
  const t = setTimeout(() => resolve(false), 1500);
  s.once('message', (m) => { clearTimeout(t); resolve(m.toString() === text); });
  s.send(text, Number(port), addr);
});
(async () => {
  await new Promise((res) => first.bind(0, res));
  r.first = await echo(first, 'first');
  const others = [];
  for (let i = 0; i < Number(count); i++) {
    const s = dgram.createSocket('udp4');
    others.push(s);
    s.on('message', () => r.newReplies++);
    s.send('new-' + i, Number(port), addr);
  }
  await new Promise((res) => setTimeout(res, 1500));
  r.firstAgain = await echo(first, 'again');
  console.log('result ' + JSON.stringify(r));
  process.exit(0);
})();
`;

/**
 * Guest: sends COUNT DNS queries (A, distinct names NAME-i.SUFFIX) at once to
 * SERVER:53 from one socket and waits up to WAIT_MS. Prints "result {answers,
 * rcodes: {rcode: n}, maxMs}".
 */
export const GUEST_DNS_BURST_JS = `
const dgram = require('node:dgram');
const [server, count, suffix, waitMs] = process.argv.slice(1);
const s = dgram.createSocket('udp4');
const sent = new Map();
const r = { answers: 0, rcodes: {}, maxMs: 0 };
function query(id, name) {
  const labels = name.split('.').map((l) => Buffer.concat([Buffer.from([l.length]), Buffer.from(l)]));
  const head = Buffer.alloc(12); head.writeUInt16BE(id, 0); head.writeUInt16BE(0x0100, 2); head.writeUInt16BE(1, 4);
  return Buffer.concat([head, ...labels, Buffer.from([0, 0, 1, 0, 1])]);
}
s.on('message', (m) => {
  const id = m.readUInt16BE(0);
  if (!sent.has(id)) return;
  const ms = Date.now() - sent.get(id); sent.delete(id);
  r.answers++; r.maxMs = Math.max(r.maxMs, ms);
  const rcode = m[3] & 15; r.rcodes[rcode] = (r.rcodes[rcode] || 0) + 1;
  if (sent.size === 0) end();
});
function end() { console.log('result ' + JSON.stringify(r)); process.exit(0); }
s.bind(0, () => {
  for (let i = 0; i < Number(count); i++) { const id = 1000 + i; sent.set(id, Date.now()); s.send(query(id, 'q' + i + '.' + suffix), 53, server); }
  setTimeout(end, Number(waitMs));
});
`;

/**
 * Guest: opens COUNT connections to ADDR:PORT that never read (paused right
 * after connecting), so that bytes pile up towards the guest. Prints "ready
 * N" once all are connected and holds them until killed.
 */
export const GUEST_STALLED_READERS_JS = `
const net = require('node:net');
const [addr, port, count] = process.argv.slice(1);
let n = 0;
const keep = [];
// A paused socket is not an active handle: without this the process would exit (and reset them all).
setInterval(() => {}, 1000);
for (let i = 0; i < Number(count); i++) {
  const s = net.connect({ host: addr, port: Number(port) }, () => { s.pause(); if (++n === Number(count)) console.log('ready ' + n); });
  s.setNoDelay(true);
  s.on('error', (e) => console.log('error ' + e.code));
  keep.push(s);
}
`;

/** Guest: reads a stream from ADDR:PORT; prints "got N" then how it ended ("end", "error CODE"). */
export const GUEST_READ_ALL_JS = `
const net = require('node:net');
const [addr, port, timeoutMs] = process.argv.slice(1);
let n = 0;
const s = net.connect({ host: addr, port: Number(port) });
s.on('data', (d) => { n += d.length; });
const out = (how) => { console.log('got ' + n); console.log(how); process.exit(0); };
s.on('end', () => out('end'));
s.on('error', (e) => out('error ' + e.code));
setTimeout(() => out('timeout'), Number(timeoutMs));
`;

/** Lines "open N"/"close N" of a server script: the last N (connections open now). */
export function openConnections(stdout: string): number {
  const all = [...stdout.matchAll(/^(?:open|close) (\d+)$/gm)];
  return all.length === 0 ? 0 : Number(all[all.length - 1]![1]);
}

export function resultOf<T>(stdout: string): T {
  const m = /^result (.*)$/m.exec(stdout);
  if (!m) throw new Error(`no result line in: ${stdout.slice(-2000)}`);
  return JSON.parse(m[1]!) as T;
}
