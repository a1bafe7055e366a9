/**
 * `moat host --workers N`: networks placed on N worker threads (each a
 * NetworkHost in src/host-worker.ts), so that guests use every core. The
 * API thread only routes: it owns the table of names (409 for a name in
 * use, 503 beyond --max-networks, hence no race between workers), places a
 * new network on the worker holding the fewest, and hands every request for
 * a network to its worker whole (method, url, body), which answers through
 * the same routes as a single-threaded host.
 *
 * A worker that dies (an exception outside every network, or out of
 * memory) takes its networks with it: they are listed as failed, with why,
 * until deleted; the other workers and the API go on.
 */
import { CONTENT_TYPE as METRICS_CONTENT_TYPE, hostMetrics } from './metrics.js';
import type { IncomingMessage } from 'node:http';
import { Worker } from 'node:worker_threads';
import { HttpError, readBody, readJsonBody, MAX_BODY_BYTES, rawBody, type Answer, type Handler, type RouteTable } from './api-server.js';
import { NODE_CONFIG_IO, type ConfigIo } from './config.js';
import { parseNetworkRequest } from './host-config.js';
import { HostFullError, hostHttpError, NetworkExistsError, type NetworkSummary } from './host.js';
import type { WorkerReply, WorkerRequest, WorkerSetup } from './host-worker.js';
import type { LogFormat, Logger, LogLevel } from './log.js';

/** Largest request body handed to a worker (the network's own --api-max-body-bytes applies there). */
const FORWARD_MAX_BODY_BYTES = 1024 * 1024;
/** How long a worker may take to answer one message before the request fails. */
const WORKER_ANSWER_MS = 30_000;

/** A message before its id is given (distributes over the union). */
type WithoutId<T> = T extends unknown ? Omit<T, 'id'> : never;

interface WorkerSlot {
  readonly index: number;
  readonly worker: Worker;
  readonly pending: Map<number, { resolve(r: WorkerReply): void; reject(e: Error): void }>;
  nextId: number;
  /** Why the worker is gone, once it is. */
  dead: string | undefined;
}

interface Placement {
  worker: number;
  state: 'starting' | 'placed';
  /** Set when the worker holding it died. */
  failure?: string;
}

export interface WorkerPoolOptions {
  workers: number;
  maxNetworks: number;
  logLevel: LogLevel;
  logFormat: LogFormat;
  configIo?: ConfigIo;
  /** The worker's script (tests: a stand-in speaking the same messages); default host-worker.js. */
  workerUrl?: URL;
}

export class WorkerPool implements RouteTable {
  private readonly slots: WorkerSlot[] = [];
  private readonly names = new Map<string, Placement>();
  private closed = false;
  tooLarge = 0;

  private constructor(
    private readonly log: Logger,
    private readonly options: WorkerPoolOptions,
  ) {}

  /** Starts the workers; resolves once every one is ready. */
  static async start(log: Logger, options: WorkerPoolOptions): Promise<WorkerPool> {
    const pool = new WorkerPool(log, options);
    try {
      await Promise.all(Array.from({ length: options.workers }, (_, i) => pool.spawn(i)));
    } catch (e) {
      await pool.close();
      throw e;
    }
    return pool;
  }

  get size(): number {
    return this.names.size;
  }

  private spawn(index: number): Promise<void> {
    const setup: WorkerSetup = { index, logLevel: this.options.logLevel, logFormat: this.options.logFormat };
    const worker = new Worker(this.options.workerUrl ?? new URL('./host-worker.js', import.meta.url), { workerData: setup });
    const slot: WorkerSlot = { index, worker, pending: new Map(), nextId: 1, dead: undefined };
    this.slots[index] = slot;
    return new Promise<void>((resolve, reject) => {
      worker.on('message', (r: WorkerReply) => {
        if (r.id === 0) return resolve();
        const p = slot.pending.get(r.id);
        slot.pending.delete(r.id);
        p?.resolve(r);
      });
      const gone = (why: string): void => {
        if (slot.dead !== undefined) return;
        slot.dead = why;
        reject(new Error(`worker ${index}: ${why}`));
        for (const p of slot.pending.values()) p.reject(new HttpError(503, `worker ${index} is gone: ${why}`));
        slot.pending.clear();
        if (this.closed) return;
        let lost = 0;
        for (const placement of this.names.values()) {
          if (placement.worker === index && placement.failure === undefined) {
            placement.failure = `worker ${index} ended: ${why}`;
            lost++;
          }
        }
        this.log.error('worker ended; its networks are failed until deleted', { worker: index, why, networks: lost });
      };
      worker.on('error', (e) => gone(e.message));
      worker.on('exit', (code) => gone(`exit code ${code}`));
    });
  }

  private ask(index: number, m: WithoutId<WorkerRequest>): Promise<WorkerReply> {
    const slot = this.slots[index]!;
    if (slot.dead !== undefined) return Promise.reject(new HttpError(503, `worker ${index} is gone: ${slot.dead}`));
    const id = slot.nextId++;
    return new Promise<WorkerReply>((resolve, reject) => {
      const timer = setTimeout(() => {
        slot.pending.delete(id);
        reject(new HttpError(504, `worker ${index} did not answer in ${WORKER_ANSWER_MS} ms`));
      }, WORKER_ANSWER_MS);
      slot.pending.set(id, {
        resolve: (r) => {
          clearTimeout(timer);
          resolve(r);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      });
      slot.worker.postMessage({ ...m, id } as WorkerRequest);
    });
  }

  /** The live worker holding the fewest networks. */
  private place(): number {
    const counts = this.slots.map((s) => (s.dead === undefined ? 0 : Infinity));
    for (const p of this.names.values()) counts[p.worker]! += 1;
    let best = 0;
    for (let i = 1; i < counts.length; i++) if (counts[i]! < counts[best]!) best = i;
    if (counts[best] === Infinity) throw new HttpError(503, 'no worker is running');
    return best;
  }

  // ------------------------------------------------------------ routes

  match(path: string): ReadonlyMap<string, Handler> | undefined {
    if (path === '/networks') {
      return new Map<string, Handler>([
        ['GET', async () => ({ status: 200, body: await this.list() })],
        ['POST', (req) => this.create(req)],
      ]);
    }
    if (path === '/healthz') {
      return new Map<string, Handler>([
        ['GET', async () => ({ status: 200, body: { status: 'ok', networks: this.names.size, workers: this.slots.filter((s) => s.dead === undefined).length } })],
      ]);
    }
    if (path === '/metrics') {
      return new Map<string, Handler>([['GET', async () => ({ status: 200, body: rawBody(METRICS_CONTENT_TYPE, hostMetrics(this.names.size, process.memoryUsage.rss())) })]]);
    }
    const m = /^\/networks\/([^/]+)(\/.*)?$/.exec(path);
    if (m === null) return undefined;
    const name = decodeURIComponent(m[1]!);
    const whole = m[2] === undefined || m[2] === '/';
    const h: Handler = (req) => this.forward(name, whole, req);
    return new Map(['GET', 'POST', 'PUT', 'DELETE'].map((method) => [method, h]));
  }

  private async create(req: IncomingMessage): Promise<Answer> {
    let body: unknown;
    try {
      body = await readJsonBody(req, MAX_BODY_BYTES);
    } catch (e) {
      if (e instanceof HttpError && e.status === 413) this.tooLarge++;
      throw e;
    }
    if (this.closed) throw new HttpError(503, 'the host is closing');
    // Checked here too, so that a bad body never reaches a worker and the name is known.
    let name: string;
    try {
      ({ name } = parseNetworkRequest(body, this.options.configIo ?? NODE_CONFIG_IO));
      if (this.names.has(name)) throw new NetworkExistsError(name);
      if (this.names.size >= this.options.maxNetworks) throw new HostFullError(this.options.maxNetworks);
    } catch (e) {
      throw hostHttpError(e);
    }
    const worker = this.place();
    this.names.set(name, { worker, state: 'starting' });
    let reply: WorkerReply;
    try {
      reply = await this.ask(worker, { op: 'request', method: 'POST', url: '/networks', body: Buffer.from(JSON.stringify(body)) });
    } catch (e) {
      this.names.delete(name);
      throw e;
    }
    if (reply.status === 201) this.names.get(name)!.state = 'placed';
    else this.names.delete(name);
    return { status: reply.status, body: reply.status === 201 ? { ...(reply.body as object), worker } : reply.body };
  }

  private async forward(name: string, whole: boolean, req: IncomingMessage): Promise<Answer> {
    const placement = this.names.get(name);
    if (placement === undefined || placement.state === 'starting') throw new HttpError(404, `no network named "${name}"`);
    if (placement.failure !== undefined) {
      // Its worker is gone: say so, and let it be deleted.
      if (whole && req.method === 'DELETE') {
        this.names.delete(name);
        return { status: 200, body: { name, removed: true } };
      }
      if (whole && req.method === 'GET') {
        return { status: 200, body: { name, state: 'failed', listen: [], guestConnected: false, failure: placement.failure, worker: placement.worker } };
      }
      throw new HttpError(409, `network "${name}" failed: ${placement.failure}`);
    }
    const body = await readBody(req, FORWARD_MAX_BODY_BYTES);
    const reply = await this.ask(placement.worker, { op: 'request', method: req.method ?? 'GET', url: req.url ?? '/', body });
    if (whole && req.method === 'DELETE' && reply.status === 200) this.names.delete(name);
    const answer: Answer = { status: reply.status, body: reply.body };
    if (reply.allow !== undefined) answer.allow = reply.allow;
    if (whole && req.method === 'GET' && reply.status === 200) answer.body = { ...(reply.body as object), worker: placement.worker };
    return answer;
  }

  /** Every network, in the order they were created, from the workers that hold them. */
  private async list(): Promise<(NetworkSummary & { worker: number })[]> {
    const byName = new Map<string, NetworkSummary & { worker: number }>();
    await Promise.all(
      this.slots.map(async (slot) => {
        if (slot.dead !== undefined) return;
        const reply = await this.ask(slot.index, { op: 'list' });
        for (const s of reply.body as NetworkSummary[]) byName.set(s.name, { ...s, worker: slot.index });
      }),
    );
    const out: (NetworkSummary & { worker: number })[] = [];
    for (const [name, p] of this.names) {
      if (p.failure !== undefined) out.push({ name, state: 'failed', listen: [], guestConnected: false, failure: p.failure, worker: p.worker });
      else if (byName.has(name)) out.push(byName.get(name)!);
    }
    return out;
  }

  /** Closes every network in every worker, then the workers. */
  async close(): Promise<void> {
    this.closed = true;
    await Promise.all(
      this.slots.map(async (slot) => {
        if (slot === undefined) return;
        if (slot.dead === undefined) await this.ask(slot.index, { op: 'close' }).catch(() => {});
        await slot.worker.terminate();
      }),
    );
    this.names.clear();
  }
}
