/**
 * `moat host`: many guest networks in one process, created and removed over
 * a control API. Each network is a GuestNetwork (src/serve.ts), exactly what
 * `moat serve` runs for its one guest, so it has its own stack, NAT, limits,
 * zones, pins, policy, decision log and counters: nothing here is shared
 * between networks but the process and this table of names.
 *
 *   POST   /networks                  {"name": "vm1", "listen-qemu": "unix:///run/vm1.sock", ...}
 *   GET    /networks                  [{name, state, listen, guestConnected, failure?}]
 *   GET    /networks/{name}           one of them, with its settings
 *   DELETE /networks/{name}           close it and forget it
 *   *      /networks/{name}/<path>    that network's `moat serve` API (/stats, /services/*, /allowlist, /healthz)
 *   GET    /healthz                   {"status": "ok", "networks": N}
 *
 * A network a fault closed (an exception in its stack or NAT) stays listed,
 * state "failed" with why, until it is deleted: whoever drives the host sees
 * what happened rather than a name that vanished.
 */
import { CONTENT_TYPE as METRICS_CONTENT_TYPE, hostMetrics } from './metrics.js';
import { chmodSync } from 'node:fs';
import type { IncomingMessage } from 'node:http';
import { PreresolveError } from '../dns/preresolve.js';
import { ApiServer, countingTooLarge, HttpError, MAX_BODY_BYTES, rawBody, readJsonBody, type Handler, type RouteTable } from './api-server.js';
import { describeConfig, NODE_CONFIG_IO, type ConfigIo, type ServeConfig } from './config.js';
import type { HostConfig } from './host-config.js';
import { NetworkConfigError, parseNetworkRequest } from './host-config.js';
import type { Logger } from './log.js';
import { startGuestNetwork, type GuestNetwork, type ServeDeps } from './network.js';

/**
 * Guest bytes a network's link takes before it yields to the other links
 * (QemuStreamOptions.turnBudgetBytes): one socket read. Measured with one
 * guest running iperf3 flat out and another doing request/response on one
 * thread (bench/host-guests.ts --load): the other's p99 was 12x its p99 alone
 * at 256 KiB, 6.6x at 64 KiB, with the flood's throughput unchanged.
 */
export const HOST_LINK_TURN_BYTES = 64 * 1024;

/** A name is taken while its network starts, so that two requests for it cannot both win. */
type Slot = { kind: 'starting' } | { kind: 'running'; network: GuestNetwork; log: Logger };

/** A request naming a network that is taken (409). */
export class NetworkExistsError extends Error {
  constructor(readonly networkName: string) {
    super(`a network named "${networkName}" already exists`);
    this.name = 'NetworkExistsError';
  }
}

/** The host holds --max-networks networks already (503). */
export class HostFullError extends Error {
  constructor(max: number) {
    super(`the host holds ${max} networks already (--max-networks); delete one first`);
    this.name = 'HostFullError';
  }
}

export interface NetworkSummary {
  name: string;
  state: GuestNetwork['state'];
  listen: readonly string[];
  guestConnected: boolean;
  failure?: string;
}

export interface NetworkHostOptions {
  maxNetworks: number;
  /** Largest POST /networks body. */
  maxBodyBytes?: number;
  configIo?: ConfigIo;
  deps?: Partial<ServeDeps>;
  /** Run each network in its fault scope (the CLI, which routes uncaught exceptions with installFaultRouter). */
  faultScope?: boolean;
  /**
   * Each network's logger. The CLI gives every network a logger of its own
   * on the same stream, with its own line and byte budget (the network's
   * log-* settings), so one guest's flood of log lines cannot use up another
   * guest's budget. Default: a child of the host's logger.
   */
  networkLogger?: (name: string, config: ServeConfig) => Logger;
}

export class NetworkHost implements RouteTable {
  private readonly slots = new Map<string, Slot>();
  private readonly routes: Map<string, Map<string, Handler>>;
  private readonly maxBodyBytes: number;
  private closed = false;
  /** POST /networks bodies refused 413. */
  tooLarge = 0;

  constructor(
    private readonly log: Logger,
    private readonly options: NetworkHostOptions,
  ) {
    this.maxBodyBytes = options.maxBodyBytes ?? MAX_BODY_BYTES;
    this.routes = new Map([
      [
        '/networks',
        new Map<string, Handler>([
          ['GET', async () => ({ status: 200, body: this.list() })],
          ['POST', countingTooLarge((req) => this.postNetwork(req), this)],
        ]),
      ],
      ['/healthz', new Map<string, Handler>([['GET', async () => ({ status: 200, body: { status: 'ok', networks: this.slots.size } })]])],
      ['/metrics', new Map<string, Handler>([['GET', async () => ({ status: 200, body: rawBody(METRICS_CONTENT_TYPE, hostMetrics(this.slots.size, process.memoryUsage.rss())) })]])],
    ]);
  }

  /**
   * Creates a network from a `moat serve` configuration object plus `name`;
   * resolves once its guest socket listens. Throws NetworkConfigError (every
   * bad field), NetworkExistsError, HostFullError, or the start-up error
   * (an allowed host that does not resolve, an address in use); nothing is
   * left open then.
   */
  async add(body: unknown, signal?: AbortSignal): Promise<GuestNetwork> {
    if (this.closed) throw new Error('the host is closing');
    const { name, config } = parseNetworkRequest(body, this.options.configIo ?? NODE_CONFIG_IO);
    if (this.slots.has(name)) throw new NetworkExistsError(name);
    if (this.slots.size >= this.options.maxNetworks) throw new HostFullError(this.options.maxNetworks);
    this.slots.set(name, { kind: 'starting' });
    const log = (this.options.networkLogger ?? ((n) => this.log.child({ network: n })))(name, config);
    log.info('network starting', describeConfig(config));
    let network: GuestNetwork;
    try {
      const deps = this.options.deps ?? {};
      // A busy guest yields after its turn's bytes, so that every other network's guest is read too.
      const link = { turnBudgetBytes: HOST_LINK_TURN_BYTES, ...deps.link };
      network = await startGuestNetwork(config, log, { ...deps, link }, { name, faultScope: this.options.faultScope === true, ...(signal ? { signal } : {}) });
    } catch (e) {
      this.slots.delete(name);
      log.warn('network failed to start', { error: e });
      throw e;
    }
    if (this.closed) {
      // The host closed while this one started: it must not outlive the host.
      await network.close();
      this.slots.delete(name);
      throw new Error('the host is closing');
    }
    this.slots.set(name, { kind: 'running', network, log });
    void network.ended.then((why) => {
      if (this.slots.get(name)?.kind === 'running') log.error('network ended; it stays listed as failed until deleted', { why });
    });
    log.info('network ready', { listen: network.listen, forwards: network.forwards.list().map((f) => `${f.local}=${f.remote}/${f.protocol}`) });
    return network;
  }

  /** Closes a network (its socket, every flow, every table) and forgets it. False if there is none by that name (or it is still starting). */
  async remove(name: string): Promise<boolean> {
    const slot = this.slots.get(name);
    if (slot === undefined || slot.kind !== 'running') return false;
    this.slots.delete(name);
    await slot.network.close();
    slot.log.info('network removed');
    slot.log.flush?.(); // its log's last "log lines suppressed" summary
    return true;
  }

  get(name: string): GuestNetwork | undefined {
    const slot = this.slots.get(name);
    return slot?.kind === 'running' ? slot.network : undefined;
  }

  list(): NetworkSummary[] {
    const out: NetworkSummary[] = [];
    for (const [name, slot] of this.slots) {
      if (slot.kind === 'running') out.push(summary(name, slot.network));
    }
    return out;
  }

  get size(): number {
    return this.slots.size;
  }

  /** Closes every network; the host takes no new ones. */
  async close(): Promise<void> {
    this.closed = true;
    const running = [...this.slots.values()].flatMap((s) => (s.kind === 'running' ? [s] : []));
    this.slots.clear();
    await Promise.all(
      running.map(async (s) => {
        await s.network.close();
        s.log.flush?.();
      }),
    );
  }

  // ------------------------------------------------------------ routes

  match(path: string): ReadonlyMap<string, Handler> | undefined {
    const own = this.routes.get(path);
    if (own !== undefined) return own;
    const m = /^\/networks\/([^/]+)(\/.*)?$/.exec(path);
    if (m === null) return undefined;
    const name = decodeURIComponent(m[1]!);
    const rest = m[2];
    if (rest === undefined || rest === '/') return this.networkRoutes(name);
    const network = this.get(name);
    if (network === undefined) return notFound(name);
    return network.routes.match(rest);
  }

  private networkRoutes(name: string): ReadonlyMap<string, Handler> {
    return new Map<string, Handler>([
      [
        'GET',
        async () => {
          const n = this.get(name);
          if (n === undefined) throw new HttpError(404, `no network named "${name}"`);
          return { status: 200, body: { ...summary(name, n), allow: n.allowlist?.rules() ?? [], config: describeConfig(n.config) } };
        },
      ],
      [
        'DELETE',
        async () => {
          if (!(await this.remove(name))) throw new HttpError(404, `no network named "${name}"`);
          return { status: 200, body: { name, removed: true } };
        },
      ],
    ]);
  }

  private async postNetwork(req: IncomingMessage): Promise<{ status: number; body: unknown }> {
    const body = await readJsonBody(req, this.maxBodyBytes);
    let network: GuestNetwork;
    try {
      network = await this.add(body);
    } catch (e) {
      throw hostHttpError(e);
    }
    return { status: 201, body: summary(network.name!, network) };
  }
}

/** A POST /networks refusal as its HTTP answer (other errors unchanged). */
export function hostHttpError(e: unknown): unknown {
  if (e instanceof NetworkConfigError) return new HttpError(400, e.message, { errors: e.errors });
  if (e instanceof NetworkExistsError) return new HttpError(409, e.message);
  if (e instanceof HostFullError) return new HttpError(503, e.message);
  if (e instanceof PreresolveError) return new HttpError(502, `network not created: ${e.message}`);
  return e;
}

function summary(name: string, n: GuestNetwork): NetworkSummary {
  return {
    name,
    state: n.state,
    listen: n.listen,
    guestConnected: n.state === 'running' && n.guestConnected(),
    ...(n.failure !== undefined ? { failure: n.failure } : {}),
  };
}

/** Every method on a path below an unknown network: 404 naming the network. */
function notFound(name: string): ReadonlyMap<string, Handler> {
  const h: Handler = async () => {
    throw new HttpError(404, `no network named "${name}"`);
  };
  return new Map(['GET', 'POST', 'PUT', 'DELETE'].map((m) => [m, h]));
}

export interface RunningHost {
  readonly apiSocket: string | undefined;
  /** The networks, when they live on this thread (undefined with --workers). */
  readonly networks: NetworkHost | undefined;
  /** How many networks the host holds. */
  count(): number;
  close(): Promise<void>;
}

/** Starts the daemon: no network, the control API listening. */
export async function startHost(
  config: HostConfig,
  log: Logger,
  options: Pick<NetworkHostOptions, 'configIo' | 'deps' | 'faultScope' | 'networkLogger'> = {},
): Promise<RunningHost> {
  let networks: NetworkHost | undefined;
  let table: RouteTable & { close(): Promise<void>; readonly size: number };
  if (config.workers > 0) {
    // Loaded only for --workers: a single-threaded host never loads the worker pool.
    const { WorkerPool } = await import('./host-workers.js');
    table = await WorkerPool.start(log, {
      workers: config.workers,
      maxNetworks: config.maxNetworks,
      logLevel: config.logLevel,
      logFormat: config.logFormat,
      ...(options.configIo ? { configIo: options.configIo } : {}),
    });
  } else {
    networks = new NetworkHost(log, {
      maxNetworks: config.maxNetworks,
      faultScope: options.faultScope === true,
      ...(options.networkLogger ? { networkLogger: options.networkLogger } : {}),
      ...(options.configIo ? { configIo: options.configIo } : {}),
      ...(options.deps ? { deps: options.deps } : {}),
    });
    table = networks;
  }
  const api = config.apiSocket === undefined ? undefined : new ApiServer(table, log);
  try {
    if (api !== undefined) {
      await api.listen(config.apiSocket!);
      // Whoever can connect creates networks that listen and write files: owner only, whatever the umask.
      chmodSync(config.apiSocket!, 0o600);
    }
  } catch (e) {
    await table.close();
    throw e;
  }
  log.info('moat host ready', { api: config.apiSocket === undefined ? undefined : `unix://${config.apiSocket}`, maxNetworks: config.maxNetworks, workers: config.workers });
  let closing: Promise<void> | undefined;
  return {
    apiSocket: config.apiSocket,
    networks,
    count: () => table.size,
    close: () => {
      closing ??= (async () => {
        await api?.close();
        await table.close();
        log.info('moat host stopped');
      })();
      return closing;
    },
  };
}
