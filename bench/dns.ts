/**
 * DNS answered from the allowlist's zones: queries per second and latency.
 *
 *  responder   DnsResponder.respond() in a loop, in process: the cost of one
 *              answer (decode the query with dns-packet, match the zone
 *              table, write the answer).
 *  stack       the same answers through two netstacks joined in memory
 *              (test/support/link.ts): the "guest" stack sends each query as
 *              a UDP datagram, Moat's stack raises onUdp, AllowlistDns answers
 *              (as src/nat routes gateway:53), Moat's stack sends the reply
 *              and the guest stack receives it. Ethernet, IPv4, UDP and
 *              checksums both ways are included; host sockets are not.
 *
 * The query mix alternates allowed names (pre-resolved A records at a zone
 * apex) and sinkholed names; no query goes upstream (the resolver throws if
 * it is called at all). Latency is per query: for `stack`, one query in
 * flight at a time (send → answer delivered to the guest), while the
 * throughput runs keep BATCH queries in flight.
 *
 *   node dist/bench/dns.js            # 200000 queries per mode
 *   node dist/bench/dns.js 50000      # fewer
 */
import type { UdpDatagram } from '../netstack/api.js';
import { DnsResponder } from '../dns/responder.js';
import type { Resolver } from '../dns/preresolve.js';
import { parseRules } from '../dns/rules.js';
import { builtinHosts, ZoneTable, type HostRecords } from '../dns/zones.js';
import { AllowlistDns } from '../src/allowlist/dns.js';
import { realTimers } from '../src/allowlist/resolver.js';
import { NULL_LOGGER } from '../src/log.js';
import { GUEST_IP, HOST_ALIAS, Link } from '../test/support/link.js';
import dnsPacket from 'dns-packet';

const ALLOWED_HOSTS = 200;
const BATCH = 64;

const neverUpstream: Resolver = {
  resolve4: () => Promise.reject(new Error('bench: a zone answer went upstream')),
  resolve6: () => Promise.reject(new Error('bench: a zone answer went upstream')),
};

function buildTable(): ZoneTable {
  const hosts = Array.from({ length: ALLOWED_HOSTS }, (_, i) => `h${i}.svc${i % 17}.example.com`);
  const rules = parseRules([...hosts, '*.cdn.example.net']);
  const resolved = new Map<string, HostRecords>();
  hosts.forEach((h, i) => resolved.set(h, { a: [`198.51.100.${(i % 250) + 1}`, `203.0.113.${(i % 250) + 1}`], aaaa: [], ttl: 300 }));
  return ZoneTable.build(rules, resolved, builtinHosts({ gatewayIpv4: '192.168.127.1', hostAliasIpv4: '192.168.127.254' }), 'zero');
}

/** Half allowed hosts, half sinkholed names, as DNS query bytes (random IDs, RD set). */
function queryMix(n: number): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (let i = 0; i < n; i++) {
    const name = i % 2 === 0 ? `h${i % ALLOWED_HOSTS}.svc${i % ALLOWED_HOSTS % 17}.example.com` : `tracker${i % 500}.ads.example.org`;
    out.push(dnsPacket.encode({ type: 'query', id: i & 0xffff, flags: dnsPacket.RECURSION_DESIRED, questions: [{ name, type: 'A', class: 'IN' }] }));
  }
  return out;
}

interface Row {
  mode: string;
  queries: number;
  qps: number;
  p50us: number;
  p99us: number;
}

function percentile(sorted: Float64Array, p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]!;
}

async function benchResponder(n: number): Promise<Row> {
  const responder = new DnsResponder({ table: buildTable(), resolver: neverUpstream, timers: realTimers, ipv6: false });
  const queries = queryMix(4096);
  // Warm-up, then throughput without per-call timing, then latency per call.
  for (let i = 0; i < 20_000; i++) await responder.respond(queries[i % queries.length]!, 'udp');
  const t0 = performance.now();
  for (let i = 0; i < n; i++) {
    const r = await responder.respond(queries[i % queries.length]!, 'udp');
    if (r === null) throw new Error('bench: query dropped');
  }
  const seconds = (performance.now() - t0) / 1000;
  const lat = new Float64Array(Math.min(n, 100_000));
  for (let i = 0; i < lat.length; i++) {
    const s = performance.now();
    await responder.respond(queries[i % queries.length]!, 'udp');
    lat[i] = (performance.now() - s) * 1000;
  }
  lat.sort();
  if (responder.stats.live !== 0) throw new Error('bench: live lookups happened');
  return { mode: 'responder', queries: n, qps: n / seconds, p50us: percentile(lat, 0.5), p99us: percentile(lat, 0.99) };
}

async function benchStack(n: number): Promise<Row> {
  const dns = new AllowlistDns({ table: buildTable(), resolver: neverUpstream }, NULL_LOGGER);
  let answered = 0;
  const inFlight: Promise<void>[] = [];
  let link!: Link;
  const onMoatUdp = (d: UdpDatagram): void => {
    if (d.dstPort !== 53) return;
    const { src, srcPort, dst } = d;
    inFlight.push(
      dns.resolve(d.payload, 'udp').then((answer) => {
        if (answer !== undefined) link.moat.sendUdp(dst, 53, src, srcPort, answer);
      }),
    );
  };
  link = new Link({
    copyFrames: false,
    allocate: (size) => Buffer.allocUnsafe(size),
    moatEvents: { onTcpSyn: (p) => p.refuse(), onUdp: onMoatUdp, onIcmp: () => {}, onDrop: () => {} },
    guestEvents: { onTcpSyn: (p) => p.refuse(), onUdp: () => void answered++, onIcmp: () => {}, onDrop: () => {} },
  });
  const queries = queryMix(4096);
  const guestPort = 40_000;

  /** Sends `count` queries at once, carries them to Moat, lets AllowlistDns answer, carries the answers back. */
  const roundTrip = async (from: number, count: number): Promise<void> => {
    const want = answered + count;
    for (let i = 0; i < count; i++) link.guest.sendUdp(GUEST_IP, guestPort, HOST_ALIAS, 53, queries[(from + i) % queries.length]!);
    link.run(() => inFlight.length >= count, 10_000);
    await Promise.all(inFlight.splice(0));
    if (!link.run(() => answered >= want, 10_000)) throw new Error(`bench: ${want - answered} answers missing`);
  };

  // The guest stack knows no neighbour yet: its first datagram is dropped
  // while it ARPs for Moat (Moat learns the guest's MAC from that request).
  link.guest.sendUdp(GUEST_IP, guestPort, HOST_ALIAS, 53, queries[0]!);
  link.run(() => false, 1_000);
  await Promise.all(inFlight.splice(0));
  link.run(() => false, 1_000);
  answered = 0;
  await roundTrip(0, 1);
  for (let i = 0; i < 20_000; i += BATCH) await roundTrip(i, BATCH);
  const t0 = performance.now();
  for (let i = 0; i < n; i += BATCH) await roundTrip(i, Math.min(BATCH, n - i));
  const seconds = (performance.now() - t0) / 1000;
  const lat = new Float64Array(Math.min(n, 50_000));
  for (let i = 0; i < lat.length; i++) {
    const s = performance.now();
    await roundTrip(i, 1);
    lat[i] = (performance.now() - s) * 1000;
  }
  lat.sort();
  const st = dns.stats();
  if (st.live !== 0) throw new Error('bench: live lookups happened');
  return { mode: `stack (batch ${BATCH})`, queries: n, qps: n / seconds, p50us: percentile(lat, 0.5), p99us: percentile(lat, 0.99) };
}

async function main(): Promise<void> {
  const n = Number(process.argv[2] ?? 200_000);
  if (!(n > 0)) throw new Error('usage: node dist/bench/dns.js [QUERIES]');
  console.log(`dns bench: ${n} queries per mode, ${ALLOWED_HOSTS} allowed hosts + 1 wildcard zone, half allowed / half sinkholed, A queries`);
  const rows = [await benchResponder(n), await benchStack(n)];
  console.log('mode                 queries     queries/s    p50 µs    p99 µs');
  for (const r of rows) {
    console.log(
      `${r.mode.padEnd(20)} ${String(r.queries).padStart(8)}  ${Math.round(r.qps).toString().padStart(12)}  ${r.p50us.toFixed(1).padStart(8)}  ${r.p99us.toFixed(1).padStart(8)}`,
    );
  }
}

main().catch((e: unknown) => {
  console.error(e);
  process.exitCode = 1;
});
