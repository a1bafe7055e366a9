/**
 * Resolving allowed names upstream: the retry policy shared by start-up
 * pre-resolution and live wildcard lookups, and the fail-closed pre-resolver.
 *
 * Why this shape: allowed hosts that "intermittently resolved to 0.0.0.0" in
 * systems before Moat came from one silent, untimed lookup at start-up and a
 * half-built table accepted anyway. Here every lookup has a deadline and
 * retries, all hosts run concurrently (N dead hosts cost about as much time
 * as one), and the result is either a record for EVERY host or one error
 * naming every host that failed and why.
 *
 * No I/O and no real timers: the upstream is an injected Resolver and time is
 * an injected Timers. p-retry drives the attempts; its own backoff sleep uses
 * real setTimeout, so it is given minTimeout 0 and the backoff is slept in
 * onFailedAttempt through the injected Timers instead (p-retry awaits that
 * hook before the next attempt, and rejects with whatever it throws, which is
 * how an abort during backoff ends the run at once).
 */
import pRetry, { AbortError as StopRetrying } from 'p-retry';
import { Address4, Address6 } from 'ip-address';
import type { HostRecords } from './zones.js';

/** An upstream answer: addresses of one family and their TTL in seconds. */
export interface ResolvedAddresses {
  readonly addresses: readonly string[];
  readonly ttl: number;
}

/**
 * The upstream, injected. An answer without records (NODATA) resolves with
 * no addresses; a name that does not exist rejects with an error whose
 * `code` is NXDOMAIN_CODE (what node:dns uses); any other rejection is a
 * failure worth retrying. Implementations should stop work when `signal`
 * aborts, but a hanging one is cut at the attempt deadline regardless.
 */
export interface Resolver {
  resolve4(name: string, signal: AbortSignal): Promise<ResolvedAddresses>;
  resolve6(name: string, signal: AbortSignal): Promise<ResolvedAddresses>;
  /**
   * SVCB/HTTPS records of `name` as raw RDATA (RFC 9460), same NXDOMAIN and
   * NODATA conventions. Optional: without it the responder answers those
   * types with no records.
   */
  resolveService?(name: string, type: ServiceType, signal: AbortSignal): Promise<ServiceRecords>;
}

export type ServiceType = 'SVCB' | 'HTTPS';

/** An upstream SVCB/HTTPS answer: each record's RDATA, undecoded, and the TTL in seconds. */
export interface ServiceRecords {
  readonly records: readonly Uint8Array[];
  readonly ttl: number;
}

export const NXDOMAIN_CODE = 'ENOTFOUND';

export function isNxdomain(err: unknown): boolean {
  return typeof err === 'object' && err !== null && (err as { code?: unknown }).code === NXDOMAIN_CODE;
}

/** Injected time. `sleep` rejects with `signal.reason` as soon as `signal` aborts. */
export interface Timers {
  now(): number;
  sleep(ms: number, signal: AbortSignal): Promise<void>;
}

export interface RetryPolicy {
  /** Attempts in all, the first included. */
  readonly attempts: number;
  /** Backoff before the 2nd attempt; each later one is `factor` times longer. */
  readonly firstBackoffMs: number;
  readonly factor: number;
  /** Deadline of one attempt; a lookup still running then is aborted. */
  readonly attemptTimeoutMs: number;
}

/** 4 attempts, backoff 100/300/900 ms, 2 s per attempt: at most 9.3 s per lookup. */
export const DEFAULT_RETRY_POLICY: RetryPolicy = Object.freeze({
  attempts: 4,
  firstBackoffMs: 100,
  factor: 3,
  attemptTimeoutMs: 2_000,
});

/** TTLs (seconds) handed to the guest are clamped to this range. */
export interface TtlClamp {
  readonly min: number;
  readonly max: number;
}

export const DEFAULT_TTL_CLAMP: TtlClamp = Object.freeze({ min: 5, max: 300 });

export function clampTtl(ttl: number, clamp: TtlClamp): number {
  if (!Number.isFinite(ttl)) return clamp.min;
  return Math.min(clamp.max, Math.max(clamp.min, Math.floor(ttl)));
}

export class AttemptTimeoutError extends Error {
  readonly code = 'ETIMEOUT';
  constructor(readonly ms: number) {
    super(`timed out after ${ms} ms`);
    this.name = 'AttemptTimeoutError';
  }
}

export function backoffMs(policy: RetryPolicy, failedAttempt: number): number {
  return policy.firstBackoffMs * policy.factor ** (failedAttempt - 1);
}

export interface RetryContext {
  readonly timers: Timers;
  readonly policy?: RetryPolicy;
  readonly signal?: AbortSignal;
}

/**
 * Run `op` under the retry policy: each attempt gets its own AbortSignal that
 * fires at the attempt deadline or when the caller's signal aborts. NXDOMAIN
 * is an answer, not a failure: it ends the retries at once.
 */
export async function withRetry<T>(op: (signal: AbortSignal) => Promise<T>, ctx: RetryContext): Promise<T> {
  const policy = ctx.policy ?? DEFAULT_RETRY_POLICY;
  const outer = ctx.signal ?? new AbortController().signal;
  return pRetry(
    async () => {
      try {
        return await runAttempt(op, policy.attemptTimeoutMs, ctx.timers, outer);
      } catch (err) {
        // p-retry unwraps this and rejects with `err` itself, untouched.
        if (isNxdomain(err)) throw new StopRetrying(err as Error);
        // p-retry never retries a plain TypeError (it assumes a programming
        // error); a resolver's failure is a failure like any other here.
        if (err instanceof TypeError) throw new Error(err.message, { cause: err });
        throw err;
      }
    },
    {
      retries: policy.attempts - 1,
      minTimeout: 0,
      factor: 1,
      signal: outer,
      shouldRetry: () => !outer.aborted,
      onFailedAttempt: async ({ attemptNumber, retriesLeft }) => {
        if (retriesLeft > 0 && !outer.aborted) await ctx.timers.sleep(backoffMs(policy, attemptNumber), outer);
      },
    },
  );
}

async function runAttempt<T>(
  op: (signal: AbortSignal) => Promise<T>,
  timeoutMs: number,
  timers: Timers,
  outer: AbortSignal,
): Promise<T> {
  outer.throwIfAborted();
  const attempt = new AbortController();
  const onOuterAbort = (): void => attempt.abort(outer.reason);
  outer.addEventListener('abort', onOuterAbort, { once: true });
  try {
    return await new Promise<T>((resolve, reject) => {
      attempt.signal.addEventListener('abort', () => reject(attempt.signal.reason), { once: true });
      timers.sleep(timeoutMs, attempt.signal).then(
        () => attempt.abort(new AttemptTimeoutError(timeoutMs)),
        () => {}, // the attempt ended first; its abort cancelled this timer
      );
      op(attempt.signal).then(resolve, reject);
    });
  } finally {
    outer.removeEventListener('abort', onOuterAbort);
    attempt.abort(); // releases the deadline timer and tells the resolver to stop
  }
}

export type RecordFamily = 'A' | 'AAAA';

/**
 * One lookup of one family under the retry policy. Addresses of the wrong
 * family or unspecified (0.0.0.0, ::; an upstream's own sinkhole) are
 * dropped, duplicates removed, order kept.
 */
export async function lookup(
  resolver: Resolver,
  family: RecordFamily,
  name: string,
  ctx: RetryContext,
): Promise<ResolvedAddresses> {
  const answer = await withRetry(
    (signal) => (family === 'A' ? resolver.resolve4(name, signal) : resolver.resolve6(name, signal)),
    ctx,
  );
  return { addresses: usableAddresses(family, answer.addresses), ttl: answer.ttl };
}

function usableAddresses(family: RecordFamily, addresses: readonly string[]): string[] {
  const out = new Set<string>();
  for (const a of addresses) {
    if (family === 'A') {
      if (Address4.isValid(a) && !a.includes('/')) {
        const c = new Address4(a).correctForm();
        if (c !== '0.0.0.0') out.add(c);
      }
    } else if (Address6.isValid(a) && !a.includes('/') && !a.includes('%')) {
      const c = new Address6(a).correctForm();
      if (c !== '::') out.add(c);
    }
  }
  return [...out];
}

export interface HostFailure {
  readonly host: string;
  readonly reason: string;
}

/** Fail-closed result of pre-resolution: every host that failed, and why. */
export class PreresolveError extends Error {
  constructor(readonly failures: readonly HostFailure[]) {
    super(
      `cannot resolve allowed host${failures.length === 1 ? '' : 's'}: ${failures
        .map((f) => `${f.host} (${f.reason})`)
        .join('; ')}`,
    );
    this.name = 'PreresolveError';
  }
}

export interface PreresolveOptions extends RetryContext {
  readonly resolver: Resolver;
  /** Does the guest network carry IPv6? If not, a host needs an A record. */
  readonly ipv6: boolean;
  readonly ttlClamp?: TtlClamp;
}

/**
 * Resolve every host concurrently. Resolves with records for ALL hosts, or
 * rejects with one PreresolveError naming every failed host; rejects with
 * the abort reason if `signal` aborts first.
 */
export async function preresolve(hosts: readonly string[], opts: PreresolveOptions): Promise<Map<string, HostRecords>> {
  const results = await Promise.all(
    hosts.map(async (host) => [host, await resolveHost(host, opts)] as const),
  );
  opts.signal?.throwIfAborted();
  const failures: HostFailure[] = [];
  const table = new Map<string, HostRecords>();
  for (const [host, r] of results) {
    if (typeof r === 'string') failures.push({ host, reason: r });
    else table.set(host, r);
  }
  if (failures.length > 0) throw new PreresolveError(failures);
  return table;
}

type Outcome = ResolvedAddresses | { failed: string };

async function settle(host: string, family: RecordFamily, opts: PreresolveOptions): Promise<Outcome> {
  try {
    return await lookup(opts.resolver, family, host, opts);
  } catch (err) {
    // An abort is the caller's decision, not this host's failure.
    if (opts.signal?.aborted) throw opts.signal.reason;
    if (isNxdomain(err)) return { failed: 'NXDOMAIN' };
    const attempts = (opts.policy ?? DEFAULT_RETRY_POLICY).attempts;
    return { failed: `${family} lookup failed after ${attempts} attempts: ${describe(err)}` };
  }
}

/** Records for one host, or the reason it has no usable address. */
async function resolveHost(host: string, opts: PreresolveOptions): Promise<HostRecords | string> {
  const clamp = opts.ttlClamp ?? DEFAULT_TTL_CLAMP;
  if (opts.ipv6) {
    const [a, aaaa] = await Promise.all([settle(host, 'A', opts), settle(host, 'AAAA', opts)]);
    if ('failed' in a) return a.failed;
    if ('failed' in aaaa) return aaaa.failed;
    if (a.addresses.length === 0 && aaaa.addresses.length === 0) return 'no A or AAAA address';
    return records(a, aaaa, clamp);
  }
  const a = await settle(host, 'A', opts);
  if ('failed' in a) return a.failed;
  if (a.addresses.length > 0) return records(a, null, clamp);
  // Say why precisely: an IPv6-only host is a different fix from a dead one.
  const aaaa = await settle(host, 'AAAA', opts);
  if (!('failed' in aaaa) && aaaa.addresses.length > 0) return 'only AAAA records, and the guest network is IPv4-only';
  return 'no A address';
}

function records(a: ResolvedAddresses, aaaa: ResolvedAddresses | null, clamp: TtlClamp): HostRecords {
  const ttls = [a, aaaa].filter((x): x is ResolvedAddresses => x !== null && x.addresses.length > 0).map((x) => x.ttl);
  return Object.freeze({
    a: Object.freeze([...a.addresses]),
    aaaa: Object.freeze(aaaa === null ? [] : [...aaaa.addresses]),
    ttl: clampTtl(Math.min(...ttls), clamp),
  });
}

function describe(err: unknown): string {
  if (err instanceof Error) {
    const code = (err as { code?: unknown }).code;
    return typeof code === 'string' && !err.message.includes(code) ? `${code} ${err.message}` : err.message;
  }
  return String(err);
}
