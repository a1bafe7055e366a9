/**
 * The control API: HTTP/1.1 on a unix socket (node:http), with gvproxy's
 * paths so that tools written for gvproxy (podman machine, scripts with
 * `curl --unix-socket`) work unchanged:
 *
 *   POST /services/forwarder/expose    {"local":"127.0.0.1:8080","remote":"192.168.127.2:80","protocol":"tcp"}
 *   POST /services/forwarder/unexpose  {"local":"127.0.0.1:8080","protocol":"tcp"}
 *   GET  /services/forwarder/all       [{"local","remote","protocol"}, ...]
 *   GET  /services/dhcp/leases         {"192.168.127.2": "5a:94:ef:00:00:01"}  (IP -> MAC, as gvproxy)
 *   GET  /leases                       the same (gvproxy's second path for it)
 *   GET  /services/dns/all             [{"Name":"containers.internal.","Records":[{"Name":"host","IP":"..."}],"DefaultIP":""}]
 *   POST /services/dns/add             one zone in that shape: its A records are answered by the gateway
 *                                      from now on (merged into a zone of the same name); 200, empty body
 *                                      (src/local-zones.ts; a record grants no flow under an allowlist)
 *   GET  /stats                        frames, bytes, drops by reason, flows
 *   GET  /healthz                      {"status":"ok","guestConnected":bool}
 *   GET  /metrics                      Prometheus text format 0.0.4 (docs/metrics.md)
 *   GET  /allowlist                    {"allow":[rules],"zones":[...],"budgets":[{rule,limit,used,...}]}  (with --allow)
 *   PUT  /allowlist[?drop=1]           {"allow":[rules],"budgets"?:["RULE=SIZE[/PERIOD]"]}: resolve, then swap DNS zones and egress
 *                                      policy at once; 400 invalid rule, 502 a host did not resolve
 *                                      (nothing changes on error); drop=1 also resets the flows the
 *                                      new rules refuse (otherwise existing flows go on)
 *   GET  /decisions/pending            ask mode (--on-unlisted ask): [{id,name,proto,port,dst,via,since,waiters}]
 *   GET  /decisions/events             text/event-stream: `pending` and `decided` events (503 past the subscriber bound)
 *   POST /decisions/{id}               {"verdict":"allow-once|allow-name|deny|deny-name"}: 404 unknown or
 *                                      expired id, 400 bad verdict, 502 allow-name whose host did not resolve
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
import { LocalZonesError, parseZoneJson, type LocalZones } from './local-zones.js';
import { ForwardError, parseForwardKey, parseForwardSpec, type PortForwards } from './port-forwards.js';
import { closeServer, listenOn } from './transport/listen.js';
import { CONTENT_TYPE as METRICS_CONTENT_TYPE } from './metrics.js';
import type { AnswerResult, EventSink } from './egress/ask-gate.js';
import { ASK_VERDICTS, type AskVerdict, type PendingView } from './egress/ask-table.js';

export const MAX_BODY_BYTES = 64 * 1024;

/** A decision id as the gate makes them (hex); anything else is not a route. */
const DECISION_ID = /^[0-9A-Za-z_-]{1,64}$/;

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
  /** DNS records added at run time (/services/dns/*); without it those paths are 404. */
  dnsZones?: LocalZones;
  /** GET /metrics in the Prometheus text format; without it /metrics answers 404. */
  metrics?(): string;
  /** Ask mode's gate (--on-unlisted ask); without it /decisions/* answer 409. */
  ask?: AskControl;
  /** Credential injection (--inject): GET /secrets (placeholders, never values) and GET /ca.pem; without it both answer 404. */
  inject?: InjectControl;
}

/** Ask mode as the API sees it (src/egress/ask-gate.ts AskGate). */
export interface AskControl {
  pending(): PendingView[];
  answer(id: string, verdict: AskVerdict, by: 'api'): Promise<AnswerResult>;
  subscribe(sink: EventSink): (() => void) | null;
}

/**
 * A handler's answer that is not JSON but a server-sent event stream
 * (GET /decisions/events): the server attaches the response as the sink.
 * `attach` returns the unsubscribe, or null when the stream is refused (503).
 */
export class EventStreamAnswer {
  constructor(readonly attach: (sink: EventSink) => (() => void) | null) {}
}

export interface InjectControl {
  /** Each secret's name, placeholder and rules, without its value. */
  secrets(): unknown;
  /** The CA certificate guests must trust, PEM. */
  caPem(): string;
}

/** A body that is not JSON (GET /ca.pem). A plain object, so it crosses a worker thread (structured clone) as it is. */
export interface RawBody {
  rawBody: { contentType: string; text: string };
}

export function rawBody(contentType: string, text: string): RawBody {
  return { rawBody: { contentType, text } };
}

function isRawBody(body: unknown): body is RawBody {
  return typeof body === 'object' && body !== null && 'rawBody' in body && typeof (body as RawBody).rawBody?.text === 'string';
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

/** A handler's answer: a JSON `body`, or a RawBody (rawBody()) sent as it is. */
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
    return this.listenAt({ kind: 'unix', path, url: `unix://${path}` });
  }

  /** Listens on a unix socket or (`moat gvproxy -listen tcp://127.0.0.1:PORT`, loopback only) a TCP address. */
  async listenAt(addr: ListenAddress): Promise<string> {
    this.addr = addr;
    return listenOn(this.server, addr);
  }

  /** The underlying server, for tests that listen on a TCP port instead. */
  get httpServer(): Server {
    return this.server;
  }

  private stream(a: EventStreamAnswer, req: IncomingMessage, res: ServerResponse): void {
    streamEvents(a, req, res);
  }

  async close(): Promise<void> {
    this.server.closeAllConnections();
    if (this.addr !== undefined) await closeServer(this.server, this.addr);
    else if (this.server.listening) await new Promise<void>((r) => this.server.close(() => r()));
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const answer = await dispatch(this.routes, req, this.log);
    if (answer.body instanceof EventStreamAnswer) {
      this.stream(answer.body, req, res);
      return;
    }
    const { status, body, allow } = answer;
    if (allow !== undefined) res.setHeader('Allow', allow);
    // The rest of an oversized body is not read: close the connection rather than drain the upload.
    if (status === 413) res.setHeader('Connection', 'close');
    const raw = isRawBody(body) ? body.rawBody : undefined;
    const text = raw !== undefined ? raw.text : body === undefined ? '' : JSON.stringify(body);
    res.writeHead(status, { 'Content-Type': raw?.contentType ?? 'application/json', 'Content-Length': Buffer.byteLength(text) });
    res.end(text);
  }
}

/** Turns the response into an event stream; 503 when the gate has its maximum of subscribers. */
function streamEvents(a: EventStreamAnswer, req: IncomingMessage, res: ServerResponse): void {
  const sink: EventSink = {
    write: (chunk) => res.write(chunk),
    get writableLength() {
      return res.writableLength;
    },
    close: () => res.destroy(), // a dropped subscriber's unread backlog is discarded with its socket
  };
  const unsubscribe = a.attach(sink);
  if (unsubscribe === null) {
    const text = JSON.stringify({ error: 'too many event-stream subscribers; close one and retry' });
    res.writeHead(503, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text) });
    res.end(text);
    return;
  }
  // A stream is long-lived: the API's request timeout is for requests.
  req.socket.setTimeout(0);
  res.writeHead(200, { 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-cache', Connection: 'keep-alive' });
  res.write(': moat decision events\n\n');
  res.once('close', unsubscribe);
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
      ['/leases', new Map([['GET', async () => ({ status: 200, body: this.leases() })]])],
      ['/stats', new Map([['GET', async () => ({ status: 200, body: this.backend.stats() })]])],
      [
        '/allowlist',
        new Map<string, Handler>([
          ['GET', async () => ({ status: 200, body: { allow: this.allowlist().rules(), zones: this.allowlist().zones(), budgets: this.allowlist().budgets() } })],
          ['PUT', counted((req) => this.putAllowlist(req))],
        ]),
      ],
      ['/secrets', new Map([['GET', async () => this.injectAnswer((c) => ({ status: 200, body: { secrets: c.secrets() } }))]])],
      ['/ca.pem', new Map([['GET', async () => this.injectAnswer((c) => ({ status: 200, body: rawBody('application/x-pem-file', c.caPem()) }))]])],
      [
        '/healthz',
        new Map([['GET', async () => ({ status: 200, body: { status: 'ok', guestConnected: this.backend.guestConnected() } })]]),
      ],
      ['/decisions/pending', new Map([['GET', async () => ({ status: 200, body: this.ask().pending() })]])],
      ['/decisions/events', new Map([['GET', async () => ({ status: 200, body: new EventStreamAnswer((sink) => this.ask().subscribe(sink)) })]])],
      ...(backend.dnsZones === undefined ? [] : this.dnsRoutes(backend.dnsZones, counted)),
    ]);
    const metrics = this.backend.metrics?.bind(this.backend);
    if (metrics !== undefined) this.routes.set('/metrics', new Map([['GET', async () => ({ status: 200, body: rawBody(METRICS_CONTENT_TYPE, metrics()) })]]));
    this.decisionRoute = new Map([['POST', counted((req) => this.postDecision(req))]]);
  }

  /** POST /decisions/{id}: one route for every id. */
  private readonly decisionRoute: ReadonlyMap<string, Handler>;

  match(path: string): ReadonlyMap<string, Handler> | undefined {
    const exact = this.routes.get(path);
    if (exact !== undefined) return exact;
    if (path.startsWith('/decisions/') && DECISION_ID.test(path.slice('/decisions/'.length))) return this.decisionRoute;
    return undefined;
  }

  private ask(): AskControl {
    const a = this.backend.ask;
    if (a === undefined) throw new HttpError(409, 'ask mode is off: start with --allow rules and --on-unlisted ask to use /decisions');
    return a;
  }

  private async postDecision(req: IncomingMessage): Promise<{ status: number; body: unknown }> {
    const control = this.ask();
    // The id is the path's last segment: under `moat host` the path is /networks/{name}/decisions/{id}.
    const path = new URL(req.url ?? '/', 'http://moat').pathname;
    const id = path.slice(path.lastIndexOf('/decisions/') + '/decisions/'.length);
    const body = await readJsonBody(req, this.maxBodyBytes);
    const verdict = (body as { verdict?: unknown } | null)?.verdict;
    if (!ASK_VERDICTS.includes(verdict as AskVerdict)) throw new HttpError(400, `expected {"verdict": one of ${ASK_VERDICTS.map((v) => `"${v}"`).join(', ')}}`);
    let r: AnswerResult;
    try {
      r = await control.answer(id, verdict as AskVerdict, 'api');
    } catch (e) {
      if (e instanceof RuleSetError || e instanceof EmptyAllowlistError) throw new HttpError(400, e.message);
      if (e instanceof PreresolveError) throw new HttpError(502, `allow-name failed, the requests were refused: ${e.message}`);
      throw e;
    }
    if (!r.found) throw new HttpError(404, `no pending decision ${id.slice(0, 64)} (unknown, already answered or expired)`);
    this.log.info('api: decision answered', { id: r.id, name: r.name, verdict: r.verdict, waiters: r.waiters });
    return { status: 200, body: { id: r.id, name: r.name, verdict: r.verdict, waiters: r.waiters } };
  }

  private dnsRoutes(zones: LocalZones, counted: (h: Handler) => Handler): [string, Map<string, Handler>][] {
    return [
      ['/services/dns/all', new Map([['GET', async () => ({ status: 200, body: zones.toJson() })]])],
      [
        '/services/dns/add',
        new Map([
          [
            'POST',
            counted(async (req) => {
              const zone = parseZoneJson(await readJsonBody(req, this.maxBodyBytes));
              zones.add(zone);
              this.log.info('api: dns zone added', { zone: zone.name, records: zone.records?.length ?? 0, defaultIp: zone.defaultIp || undefined });
              // gvproxy answers 200 with no body.
              return { status: 200, body: undefined };
            }),
          ],
        ]),
      ],
    ];
  }

  private injectAnswer(f: (c: InjectControl) => { status: number; body: unknown }): { status: number; body: unknown } {
    const c = this.backend.inject;
    return c === undefined ? { status: 404, body: { error: 'no credential injection configured (--secret, --inject)' } } : f(c);
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
  if (e instanceof LocalZonesError) return { status: e.kind === 'invalid' ? 400 : 409, body: { error: e.message } };
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
