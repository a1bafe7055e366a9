/**
 * The control API: HTTP/1.1 on a unix socket (node:http), with gvproxy's
 * paths so that tools written for gvproxy (podman machine, scripts with
 * `curl --unix-socket`) work unchanged:
 *
 *   POST /services/forwarder/expose    {"local":"127.0.0.1:8080","remote":"192.168.127.2:80","protocol":"tcp"}
 *   POST /services/forwarder/unexpose  {"local":"127.0.0.1:8080","protocol":"tcp"}
 *   GET  /services/forwarder/all       [{"local","remote","protocol"}, ...]
 *   GET  /services/dhcp/leases         {"192.168.127.2": "5a:94:ef:00:00:01"}  (IP -> MAC, as gvproxy)
 *   GET  /stats                        frames, bytes, drops by reason, flows
 *   GET  /healthz                      {"status":"ok","guestConnected":bool}
 *   GET  /allowlist                    {"allow":[rules],"zones":[...],"budgets":[{rule,limit,used,...}]}  (with --allow)
 *   PUT  /allowlist[?drop=1]           {"allow":[rules],"budgets"?:["RULE=SIZE[/PERIOD]"]}: resolve, then swap DNS zones and egress
 *                                      policy at once; 400 invalid rule, 502 a host did not resolve
 *                                      (nothing changes on error); drop=1 also resets the flows the
 *                                      new rules refuse (otherwise existing flows go on)
 *
 * Errors are JSON {"error": "..."} naming the problem: 400 malformed request,
 * 404 unknown path (or unknown forward), 405 wrong method, 409 conflict
 * (duplicate forward, address in use), 413 body over MAX_BODY_BYTES, 500
 * anything unexpected.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { RuleSetError } from '../dns/rules.js';
import { PreresolveError } from '../dns/preresolve.js';
import { BudgetRuleError, EmptyAllowlistError } from './egress/allowlist-runtime.js';
import type { BudgetSpec, BudgetStats } from './traffic/byte-budgets.js';
import { parseBudgetList } from './traffic/flags.js';
import type { ListenAddress } from './config.js';
import type { Logger } from './log.js';
import { ForwardError, parseForwardKey, parseForwardSpec, type PortForwards } from './port-forwards.js';
import { closeServer, listenOn } from './transport/listen.js';

export const MAX_BODY_BYTES = 64 * 1024;

export interface ApiServerOptions {
  /** Largest request body (--api-max-body-bytes); default MAX_BODY_BYTES. */
  maxBodyBytes: number;
  /** A request refused 413 (for the limits' rate-limited log). */
  onTooLarge?: (fields: Record<string, unknown>) => void;
}

/** What the API reads and drives; serve.ts supplies the real parts, tests fakes. */
export interface ApiBackend {
  forwards: PortForwards;
  /** DHCP leases as text addresses. */
  leases(): { ip: string; mac: string }[];
  /** Everything /stats reports (a JSON-able object). */
  stats(): Record<string, unknown>;
  guestConnected(): boolean;
  /** The running allowlist; without it /allowlist answers 409. */
  allowlist?: AllowlistControl;
}

/** The allowlist as the API sees it. */
export interface AllowlistControl {
  rules(): string[];
  zones(): string[];
  /**
   * Throws RuleSetError (400), EmptyAllowlistError (400), BudgetRuleError
   * (400) or PreresolveError (502); nothing changes then. `budgets` absent:
   * the current ones are kept.
   */
  reload(rules: readonly string[], drop: boolean, budgets?: readonly BudgetSpec[]): Promise<{ rules: string[]; zones: string[]; dropped: number; budgets: BudgetSpec[] }>;
  /** The byte budgets and their use (--budget). */
  budgets(): BudgetStats[];
}

export class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    /** More of the answer's JSON next to "error" (a list of every bad field). */
    readonly extra: Record<string, unknown> = {},
  ) {
    super(message);
  }
}

export type Handler = (req: IncomingMessage) => Promise<{ status: number; body: unknown }>;

/** Methods by path: what a server answers. One network's routes, or `moat host`'s router over many. */
export interface RouteTable {
  /** The handlers for `path` by method, or undefined for an unknown path. */
  match(path: string): ReadonlyMap<string, Handler> | undefined;
  /** Requests refused 413, when the table counts them. */
  readonly tooLarge?: number;
}

/**
 * The HTTP server: a unix socket, a route table, JSON in and out. It knows
 * nothing of networks; `moat serve` gives it one network's routes, `moat
 * host` its router.
 */
export class ApiServer {
  private readonly server: Server;
  private readonly routes: RouteTable;
  private addr: ListenAddress | undefined;
  private readonly log: Logger;

  constructor(backend: ApiBackend | RouteTable, log: Logger, options: Partial<ApiServerOptions> = {}) {
    this.log = log.child({ component: 'api' });
    this.routes = isRouteTable(backend) ? backend : new NetworkRoutes(backend, log, options);
    this.server = createServer((req, res) => void this.handle(req, res));
    // A client that opens a connection and sends nothing must not hold it forever.
    this.server.requestTimeout = 10_000;
    this.server.headersTimeout = 10_000;
  }

  /** Requests answered 413 (body over the limit). */
  get tooLarge(): number {
    return this.routes.tooLarge ?? 0;
  }

  /** Listens on a unix socket (stale files removed, live servers left alone). */
  async listen(path: string): Promise<string> {
    this.addr = { kind: 'unix', path, url: `unix://${path}` };
    return listenOn(this.server, this.addr);
  }

  /** The underlying server, for tests that listen on a TCP port instead. */
  get httpServer(): Server {
    return this.server;
  }

  async close(): Promise<void> {
    this.server.closeAllConnections();
    if (this.addr !== undefined) await closeServer(this.server, this.addr);
    else if (this.server.listening) await new Promise<void>((r) => this.server.close(() => r()));
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const { status, body, allow } = await dispatch(this.routes, req, this.log);
    if (allow !== undefined) res.setHeader('Allow', allow);
    // The rest of an oversized body is not read: close the connection rather than drain the upload.
    if (status === 413) res.setHeader('Connection', 'close');
    const text = body === undefined ? '' : JSON.stringify(body);
    res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text) });
    res.end(text);
  }
}

/** What a request gets: status, JSON body, and the Allow header of a 405. */
export interface Answer {
  status: number;
  body: unknown;
  allow?: string;
}

/**
 * Routes one request through a table and turns every error into its JSON
 * answer. The HTTP server uses it, and so does a `moat host` worker thread
 * for the requests the API thread hands it.
 */
export async function dispatch(routes: RouteTable, req: IncomingMessage, log: Logger): Promise<Answer> {
  let allow: string | undefined;
  try {
    const path = new URL(req.url ?? '/', 'http://moat').pathname;
    const methods = routes.match(path);
    if (methods === undefined) throw new HttpError(404, `no such path: ${path}`);
    const handler = methods.get(req.method ?? '');
    if (handler === undefined) {
      allow = [...methods.keys()].join(', ');
      throw new HttpError(405, `${req.method} not allowed on ${path}; use ${allow}`);
    }
    return await handler(req);
  } catch (e) {
    const { status, body } = errorResponse(e);
    if (status >= 500) log.error('api request failed', { method: req.method, url: req.url, error: e });
    else log.debug('api request refused', { method: req.method, url: req.url, status, error: body.error });
    return { status, body, ...(allow !== undefined ? { allow } : {}) };
  }
}

function isRouteTable(x: ApiBackend | RouteTable): x is RouteTable {
  return typeof (x as Partial<RouteTable>).match === 'function';
}

/**
 * Counts a handler's 413 refusals (and reports them for the limits' log):
 * each route table owns its own count, so one network's /stats.limits.apiBody
 * is its own.
 */
export function countingTooLarge(handler: Handler, owner: { tooLarge: number }, onTooLarge?: (fields: Record<string, unknown>) => void, max?: number): Handler {
  return async (req) => {
    try {
      return await handler(req);
    } catch (e) {
      if (e instanceof HttpError && e.status === 413) {
        owner.tooLarge++;
        onTooLarge?.({ method: req.method, url: req.url, max });
      }
      throw e;
    }
  };
}

/** One guest network's routes: gvproxy's paths, /stats, /healthz, /allowlist. */
export class NetworkRoutes implements RouteTable {
  private readonly routes: Map<string, Map<string, Handler>>;
  private readonly log: Logger;
  private readonly maxBodyBytes: number;
  /** Requests answered 413 (body over maxBodyBytes). */
  tooLarge = 0;

  constructor(
    private readonly backend: ApiBackend,
    log: Logger,
    options: Partial<ApiServerOptions> = {},
  ) {
    this.maxBodyBytes = options.maxBodyBytes ?? MAX_BODY_BYTES;
    this.log = log.child({ component: 'api' });
    const counted = (h: Handler): Handler => countingTooLarge(h, this, options.onTooLarge, this.maxBodyBytes);
    this.routes = new Map([
      ['/services/forwarder/expose', new Map([['POST', counted((req) => this.expose(req))]])],
      ['/services/forwarder/unexpose', new Map([['POST', counted((req) => this.unexpose(req))]])],
      ['/services/forwarder/all', new Map([['GET', async () => ({ status: 200, body: this.backend.forwards.list() })]])],
      ['/services/dhcp/leases', new Map([['GET', async () => ({ status: 200, body: this.leases() })]])],
      ['/stats', new Map([['GET', async () => ({ status: 200, body: this.backend.stats() })]])],
      [
        '/allowlist',
        new Map<string, Handler>([
          ['GET', async () => ({ status: 200, body: { allow: this.allowlist().rules(), zones: this.allowlist().zones(), budgets: this.allowlist().budgets() } })],
          ['PUT', counted((req) => this.putAllowlist(req))],
        ]),
      ],
      [
        '/healthz',
        new Map([['GET', async () => ({ status: 200, body: { status: 'ok', guestConnected: this.backend.guestConnected() } })]]),
      ],
    ]);
  }

  match(path: string): ReadonlyMap<string, Handler> | undefined {
    return this.routes.get(path);
  }

  private async expose(req: IncomingMessage): Promise<{ status: number; body: unknown }> {
    const spec = parseForwardSpec(await readJsonBody(req, this.maxBodyBytes));
    if (typeof spec === 'string') throw new HttpError(400, spec);
    await this.backend.forwards.expose(spec);
    this.log.debug('api: forward exposed', { ...spec });
    return { status: 200, body: spec };
  }

  private async unexpose(req: IncomingMessage): Promise<{ status: number; body: unknown }> {
    const key = parseForwardKey(await readJsonBody(req, this.maxBodyBytes));
    if (typeof key === 'string') throw new HttpError(400, key);
    await this.backend.forwards.unexpose(key);
    this.log.debug('api: forward removed', { ...key });
    return { status: 200, body: key };
  }

  private allowlist(): AllowlistControl {
    const a = this.backend.allowlist;
    if (a === undefined) throw new HttpError(409, 'no allowlist is running: start moat serve with --allow to use /allowlist');
    return a;
  }

  private async putAllowlist(req: IncomingMessage): Promise<{ status: number; body: unknown }> {
    const control = this.allowlist();
    const body = await readJsonBody(req, this.maxBodyBytes);
    const allow = (body as { allow?: unknown } | null)?.allow;
    if (!Array.isArray(allow) || !allow.every((r) => typeof r === 'string')) {
      throw new HttpError(400, 'expected {"allow": ["rule", ...]}');
    }
    const drop = ['1', 'true'].includes(new URL(req.url ?? '/', 'http://moat').searchParams.get('drop') ?? '');
    const budgetTexts = (body as { budgets?: unknown }).budgets;
    let budgets: BudgetSpec[] | undefined;
    if (budgetTexts !== undefined) {
      if (!Array.isArray(budgetTexts) || !budgetTexts.every((r) => typeof r === 'string')) throw new HttpError(400, 'expected "budgets": ["RULE=SIZE[/PERIOD]", ...]');
      const parsed = parseBudgetList(budgetTexts as string[], 'budgets');
      if (typeof parsed === 'string') throw new HttpError(400, parsed);
      budgets = parsed;
    }
    try {
      const result = await control.reload(allow as string[], drop, budgets);
      return { status: 200, body: { ok: true, allow: result.rules, zones: result.zones, budgets: result.budgets, dropped: result.dropped } };
    } catch (e) {
      if (e instanceof RuleSetError || e instanceof EmptyAllowlistError || e instanceof BudgetRuleError) throw new HttpError(400, e.message);
      if (e instanceof PreresolveError) throw new HttpError(502, `allowlist not changed: ${e.message}`);
      throw e;
    }
  }

  private leases(): Record<string, string> {
    const out: Record<string, string> = {};
    for (const l of this.backend.leases()) out[l.ip] = l.mac;
    return out;
  }
}

export function errorResponse(e: unknown): { status: number; body: { error: string } } {
  if (e instanceof HttpError) return { status: e.status, body: { error: e.message, ...e.extra } };
  if (e instanceof ForwardError) {
    const status = e.kind === 'invalid' ? 400 : e.kind === 'not-found' ? 404 : 409;
    return { status, body: { error: e.message } };
  }
  const code = (e as NodeJS.ErrnoException | undefined)?.code;
  const message = e instanceof Error ? e.message : String(e);
  if (code === 'EADDRINUSE') return { status: 409, body: { error: `address in use: ${message}` } };
  if (code === 'EACCES' || code === 'EADDRNOTAVAIL') return { status: 400, body: { error: message } };
  return { status: 500, body: { error: `internal error: ${message}` } };
}

/** Reads a JSON body of at most `max` bytes. */
export async function readJsonBody(req: IncomingMessage, max: number): Promise<unknown> {
  const text = (await readBody(req, max)).toString('utf8');
  if (text.trim() === '') throw new HttpError(400, 'request body is empty; expected JSON');
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new HttpError(400, `request body is not valid JSON: ${(e as Error).message}`);
  }
}

/** Reads a body of at most `max` bytes (413 beyond, the connection left for the answer). */
export async function readBody(req: IncomingMessage, max: number): Promise<Buffer> {
  const declared = Number(req.headers['content-length']);
  if (Number.isFinite(declared) && declared > max) {
    throw new HttpError(413, `request body of ${declared} bytes exceeds ${max} bytes`);
  }
  // Read with listeners rather than `for await`: leaving an async iterator early destroys the
  // request, and with it the socket the 413 answer must go out on.
  const chunks = await new Promise<Buffer[]>((resolve, reject) => {
    const parts: Buffer[] = [];
    let size = 0;
    const onData = (chunk: Buffer): void => {
      size += chunk.length;
      if (size > max) {
        req.off('data', onData);
        req.off('end', onEnd);
        req.resume(); // discard the rest; the response closes the connection
        reject(new HttpError(413, `request body exceeds ${max} bytes`));
        return;
      }
      parts.push(chunk);
    };
    const onEnd = (): void => resolve(parts);
    req.on('data', onData);
    req.once('end', onEnd);
    req.once('error', reject);
  });
  return Buffer.concat(chunks);
}
