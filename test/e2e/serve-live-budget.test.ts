/**
 * Issue 14, finding 1 and 7 (DNS half), end to end with a real kernel guest:
 *
 *  - A DNS tunnel through live wildcard lookups: the guest asks the gateway
 *    for unique names of 4 labels x 63 base32 characters below an allowed
 *    `*.domain`, 16 and then 100 queries in flight. The remote DNS server
 *    (the domain's "authoritative" server, here the upstream itself) counts
 *    the unique name bytes it receives; they must stay within the live-lookup
 *    budget's burst + rate x elapsed (a bound, not a timing claim).
 *  - An HTTPS (type 65) query for an allowed name comes back without `ech`
 *    although the upstream's record carries one.
 *
 * The remote DNS server is this file's own (wildcard names, HTTPS records as
 * raw RDATA, unique-name counting into a file); every address is in the
 * test's namespaces (the fixture's route guard) or loopback.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { e2eGate } from './harness.js';
import { DNS_PACKET_PATH, FIXTURE_TOOLS, GATEWAY_IP, startMoatFixture, type MoatFixture } from './moat-fixture.js';
import { DEFAULT_LIVE_BUDGET } from '../../dns/live-budget.js';

const gate = e2eGate([...FIXTURE_TOOLS, 'dig']);

const WILD = 'wild.mlb.test';
const ALLOWED = 'www.mlb.test';
/** How long each tunnel run lasts; the report's figures use MOAT_TUNNEL_MS=30000. */
const RUN_MS = Number(process.env['MOAT_TUNNEL_MS'] ?? 8_000);

/**
 * The remote DNS server: answers from a JSON zone ("*.x" matches any name
 * below x; {type:'HTTPS', hex} is raw RDATA), prints "query NAME TYPE PROTO"
 * for short names, and keeps the count of unique names below the wildcard
 * and their bytes in STATS_FILE (JSON, rewritten every 100 ms when it changed).
 */
function countingDnsServer(statsFile: string): string {
  return `
const dgram = require('node:dgram');
const fs = require('node:fs');
const dnsPacket = require(${JSON.stringify(DNS_PACKET_PATH)});
const [addr, port, zoneJson] = process.argv.slice(1);
const zone = JSON.parse(zoneJson);
const seen = new Set();
let uniqueBytes = 0, queries = 0, dirty = true;
function recordsFor(name) {
  if (zone[name]) return zone[name];
  for (const k of Object.keys(zone)) if (k.startsWith('*.') && name.endsWith(k.slice(1))) return zone[k];
  return undefined;
}
function answer(buf) {
  let q;
  try { q = dnsPacket.decode(buf); } catch (e) { return undefined; }
  const answers = [];
  let rcode = 0;
  for (const question of q.questions || []) {
    const name = String(question.name).toLowerCase().replace(/\\.$/, '');
    queries++; dirty = true;
    if (name.endsWith(${JSON.stringify('.' + WILD)}) && !seen.has(name)) { seen.add(name); uniqueBytes += name.length; }
    if (name.length < 100) console.log('query ' + name + ' ' + question.type);
    const records = recordsFor(name);
    if (!records) { rcode = 3; continue; }
    for (const r of records) {
      if (r.type === 'HTTPS' && question.type === 'UNKNOWN_65') answers.push({ name: question.name, type: 'UNKNOWN_65', class: 'IN', ttl: 60, data: Buffer.from(r.hex, 'hex') });
      else if (r.type === question.type) answers.push({ name: question.name, type: r.type, class: 'IN', ttl: r.ttl ?? 60, data: r.data });
    }
  }
  return dnsPacket.encode({ type: 'response', id: q.id,
    flags: dnsPacket.AUTHORITATIVE_ANSWER | (q.flags & dnsPacket.RECURSION_DESIRED) | dnsPacket.RECURSION_AVAILABLE | rcode,
    questions: q.questions, answers });
}
setInterval(() => {
  if (!dirty) return;
  dirty = false;
  fs.writeFileSync(${JSON.stringify(statsFile)} + '.tmp', JSON.stringify({ uniqueNames: seen.size, uniqueBytes, queries }));
  fs.renameSync(${JSON.stringify(statsFile)} + '.tmp', ${JSON.stringify(statsFile)});
}, 100);
const udp = dgram.createSocket('udp4');
udp.on('message', (msg, rinfo) => { const r = answer(msg); if (r) udp.send(r, rinfo.port, rinfo.address); });
udp.bind(Number(port), addr, () => console.log('ready'));
`;
}

/**
 * The hostile guest: unique names of 4 labels of base32 (63, 63, 63 and what
 * is left of 253 characters) below DOMAIN,
 * INFLIGHT queries outstanding at all times (a reply or a 1 s timeout frees a
 * slot), for MS milliseconds. Prints {sent, replies, rcodes, budgetEde} as
 * JSON (budgetEde: replies whose Extended DNS Error names the budget).
 */
const TUNNEL_JS = `
const dgram = require('node:dgram');
const crypto = require('node:crypto');
const [server, domain, inflightText, msText] = process.argv.slice(1);
const inflight = Number(inflightText), end = Date.now() + Number(msText);
const B32 = 'abcdefghijklmnopqrstuvwxyz234567';
const label = () => Array.from(crypto.randomBytes(63), (b) => B32[b & 31]).join('');
const sock = dgram.createSocket('udp4');
const pending = new Map();
let id = 0, sent = 0, replies = 0, budgetEde = 0;
const rcodes = {};
function query(name, qid) {
  const parts = name.split('.');
  const q = Buffer.alloc(12 + name.length + 2 + 4 + 11);
  q.writeUInt16BE(qid, 0); q.writeUInt16BE(0x0100, 2); q.writeUInt16BE(1, 4); q.writeUInt16BE(1, 10);
  let off = 12;
  for (const p of parts) { q[off++] = p.length; off += q.write(p, off, 'ascii'); }
  q[off++] = 0; q.writeUInt16BE(1, off); q.writeUInt16BE(1, off + 2);
  // EDNS0 OPT (RFC 6891): root name, type 41, payload 1232, no options.
  off += 4; q[off] = 0; q.writeUInt16BE(41, off + 1); q.writeUInt16BE(1232, off + 3);
  return q;
}
function next() {
  if (Date.now() >= end) { if (pending.size === 0) done(); return; }
  id = (id + 1) & 0xffff;
  const qid = id;
  // 4 labels of up to 63 characters, the last cut so that the name is 253 characters, the most DNS allows.
  const name = [label(), label(), label(), label().slice(0, 253 - domain.length - 4 - 3 * 63), domain].join('.');
  pending.set(qid, setTimeout(() => { pending.delete(qid); next(); }, 1000));
  sent++;
  sock.send(query(name, qid), 53, server);
}
sock.on('message', (m) => {
  const qid = m.readUInt16BE(0);
  const t = pending.get(qid);
  if (t === undefined) return;
  clearTimeout(t); pending.delete(qid);
  replies++;
  const rc = m[3] & 15; rcodes[rc] = (rcodes[rc] || 0) + 1;
  if (m.includes('live lookup budget')) budgetEde++;
  next();
});
let finished = false;
function done() { if (finished) return; finished = true; console.log(JSON.stringify({ sent, replies, rcodes, budgetEde })); sock.close(); }
sock.bind(0, () => { for (let i = 0; i < inflight; i++) next(); });
`;

/** SVCB RDATA (RFC 9460 2.2): priority 1, target ".", the given params (keys ascending). */
function svcbHex(params: [number, Buffer][]): string {
  const parts: Buffer[] = [Buffer.from([0, 1, 0])];
  for (const [key, value] of params) {
    const head = Buffer.alloc(4);
    head.writeUInt16BE(key, 0);
    head.writeUInt16BE(value.length, 2);
    parts.push(head, value);
  }
  return Buffer.concat(parts).toString('hex');
}

const ipv4 = (text: string): Buffer => Buffer.from(text.split('.').map(Number));

describe.skipIf(gate.skip)('moat serve --allow e2e: live lookups have a budget; HTTPS answers carry no ech', () => {
  let fx: MoatFixture;
  let startedAt = 0;
  const dir = mkdtempSync(join(tmpdir(), 'mlb-'));
  const statsFile = join(dir, 'upstream-stats.json');

  beforeAll(async () => {
    startedAt = Date.now();
    fx = await startMoatFixture({
      prefix: 'mlb-',
      dnsServerJs: countingDnsServer(statsFile),
      extraMoatArgs: (topo) => ['--resolver', `${topo.remoteAddr}:53`, '--allow', ALLOWED, '--allow', `*.${WILD}`],
      dnsZone: (topo) => ({
        [ALLOWED]: [
          { type: 'A', data: topo.internetAddrs[0]! },
          {
            type: 'HTTPS',
            hex: svcbHex([
              [1, Buffer.from([2, 0x68, 0x32])], // alpn=h2
              [4, Buffer.concat([ipv4(topo.internetAddrs[0]!), ipv4(topo.internetAddrs[3]!)])], // ipv4hint: pinned + not pinned
              [5, Buffer.from('00080102030405060708', 'hex')], // ech
              [6, Buffer.from('20010db8000000000000000000000001', 'hex')], // ipv6hint
            ]),
          },
        ] as never,
        [`*.${WILD}`]: [{ type: 'A', data: topo.internetAddrs[1]! }],
      }),
    });
  }, 60_000);

  afterAll(async () => {
    await fx?.stop();
    rmSync(dir, { recursive: true, force: true });
  }, 30_000);

  const upstreamStats = (): { uniqueNames: number; uniqueBytes: number; queries: number } =>
    existsSync(statsFile) ? JSON.parse(readFileSync(statsFile, 'utf8')) : { uniqueNames: 0, uniqueBytes: 0, queries: 0 };

  const tunnel = async (inflight: number, ms = RUN_MS): Promise<{ sent: number; replies: number; rcodes: Record<string, number>; budgetEde: number }> => {
    const r = await fx.guestRun(process.execPath, ['-e', TUNNEL_JS, GATEWAY_IP, WILD, String(inflight), String(ms)], { timeoutMs: ms + 20_000 });
    expect(r.status, r.stderr).toBe(0);
    return JSON.parse(r.stdout.trim().split('\n').pop()!);
  };

  it('a package manager touching 50 names below the wildcard at once, then again within their TTL, is never refused', async () => {
    const names = Array.from({ length: 50 }, (_, i) => `pkg-${i}.files.${WILD}`);
    const args = ['+short', '+time=2', '+tries=1', ...names.flatMap((n) => [n, 'A'])];
    for (const round of ['first', 'repeat']) {
      const t0 = Date.now();
      const r = await fx.guestRun('dig', [`@${GATEWAY_IP}`, ...args], { timeoutMs: 30_000 });
      const lines = r.stdout.trim().split('\n');
      process.stderr.write(`live-budget workload: ${round} 50 names in ${Date.now() - t0} ms\n`);
      expect(lines, r.stdout).toEqual(names.map(() => fx.topo.internetAddrs[1]));
    }
    const all = (await fx.stats()) as unknown as { nat: { dns: { liveBudget: Record<string, number> } } };
    expect(all.nat.dns.liveBudget).toMatchObject({ spent: 50, free: 50, overBudget: 0 });
  });

  it(`a tunnel of unique 4x63-character names, 16 then 100 in flight, pushes no more than burst + rate x elapsed name bytes upstream`, async () => {
    const runs = [];
    for (const inflight of [16, 100]) {
      const t0 = Date.now();
      const before = upstreamStats();
      const result = await tunnel(inflight);
      await new Promise((r) => setTimeout(r, 300)); // the server's stats file is rewritten every 100 ms
      const after = upstreamStats();
      const seconds = (Date.now() - t0) / 1000;
      runs.push({ inflight, seconds, ...result, uniqueNames: after.uniqueNames - before.uniqueNames, uniqueBytes: after.uniqueBytes - before.uniqueBytes, bytesPerSecond: Math.round((after.uniqueBytes - before.uniqueBytes) / seconds) });
    }
    const total = upstreamStats();
    const elapsed = (Date.now() - startedAt) / 1000;
    const bound = DEFAULT_LIVE_BUDGET.byteBurst + DEFAULT_LIVE_BUDGET.bytesPerSecond * elapsed;
    process.stderr.write(`live-budget tunnel: ${JSON.stringify({ runs, total, elapsed, bound })}\n`);
    expect(runs[0]!.sent).toBeGreaterThan(0);
    expect(total.uniqueBytes, JSON.stringify(runs)).toBeLessThanOrEqual(bound);
    // Over budget the gateway answers SERVFAIL (rcode 2) at once, each with the EDE naming the budget.
    expect(runs[1]!.rcodes['2'] ?? 0).toBeGreaterThan(0);
    expect(runs[1]!.budgetEde).toBe(runs[1]!.rcodes['2']);
  }, 4 * RUN_MS + 60_000);

  it('refusals over budget are counted in /stats and logged once per interval, not per query', async () => {
    const all = (await fx.stats()) as unknown as { nat: { dns: { liveOverBudget: number; liveBudget: { overBudget: number } } } };
    const stats = { dns: all.nat.dns };
    expect(stats.dns.liveBudget.overBudget).toBeGreaterThan(0);
    expect(stats.dns.liveOverBudget).toBeGreaterThan(0);
    const lines = fx.moatLogEntries().filter((e) => e['msg'] === 'live lookup budget exhausted');
    expect(lines.length).toBeGreaterThan(0);
    expect(lines.length).toBeLessThan(stats.dns.liveBudget.overBudget);
    const perQuery = fx.moatLogEntries().filter((e) => e['msg'] === 'dns decision' && e['outcome'] === 'live-budget');
    expect(perQuery).toEqual([]);
  });

  it('over budget, dig shows SERVFAIL with Extended DNS Error 15 naming the budget', async () => {
    // A tunnel keeps the bucket empty meanwhile (it takes every token as it refills).
    const flood = tunnel(16, 3_000);
    await new Promise((r) => setTimeout(r, 1_000));
    const outputs: string[] = [];
    for (let i = 0; i < 3; i++) {
      // 253 characters, like the tunnel's: the bucket refills by less than that between the tunnel's takes.
      const head = `over-${Date.now()}-${i}-`;
      const name = `${(head + 'x'.repeat(63)).slice(0, 63)}.${'y'.repeat(63)}.${'z'.repeat(63)}.${'w'.repeat(253 - WILD.length - 4 - 3 * 63)}.${WILD}`;
      const r = await fx.guestRun('dig', [`@${GATEWAY_IP}`, '+time=2', '+tries=1', name, 'A'], { timeoutMs: 10_000 });
      outputs.push(r.stdout);
      if (/status: SERVFAIL/.test(r.stdout)) break;
    }
    await flood;
    const out = outputs.at(-1)!;
    expect(out, outputs.join('\n')).toMatch(/status: SERVFAIL/);
    expect(out).toMatch(/EDE: 15 \(Blocked\).*live lookup budget/);
  });

  it('an HTTPS query for an allowed name comes back without ech, ipv6hint, or hints Moat did not pin', async () => {
    const r = await fx.guestRun('dig', [`@${GATEWAY_IP}`, '+time=2', '+tries=1', ALLOWED, 'HTTPS'], { timeoutMs: 10_000 });
    expect(r.status, r.stdout + r.stderr).toBe(0);
    expect(r.stdout).toMatch(/status: NOERROR/);
    const answer = r.stdout.split('\n').filter((l) => /\tHTTPS\t/.test(l) || /\sHTTPS\s/.test(l)).filter((l) => !l.startsWith(';'));
    expect(answer.length, r.stdout).toBe(1);
    expect(answer[0]).toContain('alpn="h2"');
    expect(answer[0]).toContain(`ipv4hint=${fx.topo.internetAddrs[0]}`);
    expect(answer[0]).not.toContain(fx.topo.internetAddrs[3]!);
    expect(answer[0]).not.toContain('ech=');
    expect(answer[0]).not.toContain('ipv6hint');
    expect(fx.dnsServer!.stdout()).toContain(`query ${ALLOWED} UNKNOWN_65`);
  });
});
