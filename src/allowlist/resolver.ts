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
 */
import { promises as dnsPromises } from 'node:dns';
import type { ResolvedAddresses, Resolver, Timers } from '../../dns/preresolve.js';
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
