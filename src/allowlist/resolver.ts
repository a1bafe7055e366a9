/**
 * The dns/ library's injected upstream and clock, made real for `moat serve`
 * and `moat zones`: node:dns (c-ares) sending queries to the configured
 * resolvers, and setTimeout.
 *
 * One c-ares Resolver per lookup, so an abort (attempt deadline, SIGINT)
 * cancels exactly that lookup: Resolver.cancel() fails every query of its
 * instance. c-ares is told to try once with a 2 s timeout because the retry
 * policy (4 attempts, backoff, deadline) lives in dns/preresolve.ts; two
 * retry loops stacked would multiply the time a dead host costs.
 *
 * c-ares (node:dns) has no HTTPS/SVCB queries: resolveService sends one
 * plain UDP query per server with dns-packet and reads the records' RDATA
 * raw (dns/svcb.ts parses it).
 */
import { promises as dnsPromises } from 'node:dns';
import { createSocket } from 'node:dgram';
import { randomInt } from 'node:crypto';
import { isIP } from 'node:net';
import dnsPacket from 'dns-packet';
import { NXDOMAIN_CODE, type ResolvedAddresses, type Resolver, type ServiceRecords, type ServiceType, type Timers } from '../../dns/preresolve.js';
import { formatUpstream, type DnsUpstream } from '../config.js';

/** c-ares settings of one lookup: one try, 2 s (the policy's attempt deadline). */
export const NODE_RESOLVER_OPTIONS = Object.freeze({ timeout: 2_000, tries: 1 });

type CaresResolver = InstanceType<typeof dnsPromises.Resolver>;

export class NodeDnsResolver implements Resolver {
  private readonly servers: string[];

  /**
   * `servers` in order (c-ares tries them in turn within its one try). Empty
   * means c-ares' own default, the nameservers of /etc/resolv.conf.
   * Throws if node:dns refuses a server address.
   */
  constructor(servers: readonly DnsUpstream[], private readonly options: { timeout: number; tries: number } = NODE_RESOLVER_OPTIONS) {
    this.servers = servers.map(formatUpstream);
    this.create(); // fail at start-up, not at the first lookup, on an address c-ares rejects
  }

  resolve4(name: string, signal: AbortSignal): Promise<ResolvedAddresses> {
    return this.query(signal, (r) => r.resolve4(name, { ttl: true }));
  }

  resolve6(name: string, signal: AbortSignal): Promise<ResolvedAddresses> {
    return this.query(signal, (r) => r.resolve6(name, { ttl: true }));
  }

  /**
   * HTTPS/SVCB records over UDP, servers in turn (each within the c-ares
   * timeout). NXDOMAIN rejects with ENOTFOUND; a truncated answer is a
   * failure (the guest then gets SERVFAIL, never a partial record set).
   */
  async resolveService(name: string, type: ServiceType, signal: AbortSignal): Promise<ServiceRecords> {
    signal.throwIfAborted();
    const servers = (this.servers.length > 0 ? this.servers : this.create().getServers()).map(parseServer);
    let last: unknown = new Error('no DNS server to ask');
    for (const server of servers) {
      try {
        return await udpServiceQuery(server, name, type, this.options.timeout, signal);
      } catch (err) {
        if (signal.aborted || (err as { code?: unknown }).code === NXDOMAIN_CODE) throw err;
        last = err;
      }
    }
    throw last;
  }

  private create(): CaresResolver {
    const r = new dnsPromises.Resolver(this.options);
    if (this.servers.length > 0) r.setServers(this.servers);
    return r;
  }

  private async query(
    signal: AbortSignal,
    run: (r: CaresResolver) => Promise<{ address: string; ttl: number }[]>,
  ): Promise<ResolvedAddresses> {
    signal.throwIfAborted();
    const r = this.create();
    const cancel = (): void => r.cancel();
    signal.addEventListener('abort', cancel, { once: true });
    try {
      const records = await run(r);
      return { addresses: records.map((x) => x.address), ttl: records.length > 0 ? Math.min(...records.map((x) => x.ttl)) : 0 };
    } catch (err) {
      // NOERROR with no record of this type (NODATA) is an answer, not a
      // failure; ENOTFOUND (NXDOMAIN) is passed on as is: dns/ reads it.
      if ((err as { code?: unknown }).code === dnsPromises.NODATA) return { addresses: [], ttl: 0 };
      throw err;
    } finally {
      signal.removeEventListener('abort', cancel);
    }
  }
}

/** "1.2.3.4", "1.2.3.4:53", "::1", "[::1]:53" (what formatUpstream and getServers() write). */
function parseServer(text: string): { host: string; port: number } {
  const v6 = /^\[(.+)\]:(\d+)$/.exec(text);
  if (v6) return { host: v6[1]!, port: Number(v6[2]) };
  if (isIP(text) !== 0) return { host: text, port: 53 };
  const i = text.lastIndexOf(':');
  return { host: text.slice(0, i), port: Number(text.slice(i + 1)) };
}

function udpServiceQuery(server: { host: string; port: number }, name: string, type: ServiceType, timeoutMs: number, signal: AbortSignal): Promise<ServiceRecords> {
  const code = type === 'HTTPS' ? 65 : 64;
  const id = randomInt(0x10000);
  const query = dnsPacket.encode({
    type: 'query',
    id,
    flags: dnsPacket.RECURSION_DESIRED,
    questions: [{ name, type: `UNKNOWN_${code}` as dnsPacket.RecordType, class: 'IN' }],
    additionals: [{ type: 'OPT', name: '.', udpPayloadSize: 1232 } as dnsPacket.Answer],
  });
  const sock = createSocket(isIP(server.host) === 6 ? 'udp6' : 'udp4');
  return new Promise<ServiceRecords>((resolve, reject) => {
    let finished = false;
    const done = (fn: () => void): void => {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      signal.removeEventListener('abort', onAbort);
      sock.close();
      fn();
    };
    const onAbort = (): void => done(() => reject(signal.reason));
    const timer = setTimeout(() => done(() => reject(Object.assign(new Error(`query${type} ETIMEOUT ${name}`), { code: 'ETIMEOUT' }))), timeoutMs);
    signal.addEventListener('abort', onAbort, { once: true });
    sock.on('error', (err) => done(() => reject(err)));
    sock.on('message', (msg, rinfo) => {
      if (rinfo.port !== server.port || msg.length < 2 || msg.readUInt16BE(0) !== id) return; // not our answer: keep waiting
      let p: dnsPacket.DecodedPacket & { rcode?: string };
      try {
        p = dnsPacket.decode(msg);
      } catch (err) {
        done(() => reject(err));
        return;
      }
      done(() => {
        if (p.rcode === 'NXDOMAIN') reject(Object.assign(new Error(`query${type} ENOTFOUND ${name}`), { code: NXDOMAIN_CODE }));
        else if (p.rcode !== 'NOERROR') reject(Object.assign(new Error(`query${type} E${p.rcode} ${name}`), { code: `E${p.rcode}` }));
        else if ((p.flags ?? 0) & dnsPacket.TRUNCATED_RESPONSE) reject(new Error(`query${type} ${name}: truncated answer`));
        else {
          // Records of the asked type, at the end of any CNAME chain the resolver followed.
          const records = (p.answers ?? []).filter((a) => (a.type as string) === `UNKNOWN_${code}`) as unknown as { ttl?: number; data: Buffer }[];
          resolve({ records: records.map((r) => new Uint8Array(r.data)), ttl: records.length > 0 ? Math.min(...records.map((r) => r.ttl ?? 0)) : 0 });
        }
      });
    });
    sock.send(query, server.port, server.host);
  });
}

/** Wall-clock Timers for dns/: a monotonic now(), and a sleep an abort ends at once. */
export const realTimers: Timers = {
  now: () => performance.now(),
  sleep: (ms, signal) =>
    new Promise<void>((resolve, reject) => {
      if (signal.aborted) {
        reject(signal.reason);
        return;
      }
      const onAbort = (): void => {
        clearTimeout(id);
        reject(signal.reason);
      };
      const id = setTimeout(() => {
        signal.removeEventListener('abort', onAbort);
        resolve();
      }, ms);
      signal.addEventListener('abort', onAbort, { once: true });
    }),
};
