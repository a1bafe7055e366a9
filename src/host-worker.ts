/**
 * A `moat host --workers N` worker thread: a NetworkHost of its own (the
 * networks placed here, their guest sockets, stacks, NATs and host sockets)
 * that answers the API thread's messages. Every request for one of its
 * networks arrives whole (method, url, body) and is answered through the
 * same route table and dispatch as in a single-threaded host, so a network
 * behaves the same wherever it is placed.
 */
import { Readable } from 'node:stream';
import type { IncomingMessage } from 'node:http';
import { parentPort, workerData } from 'node:worker_threads';
import { dispatch, EventStreamAnswer } from './api-server.js';
import { installFaultRouter } from './fault-scope.js';
import { mainLogBudget } from './log-flags.js';
import { createLogger, type LogFormat, type LogLevel } from './log.js';
import { NetworkHost } from './host.js';

/** What the API thread tells a worker at start. */
export interface WorkerSetup {
  index: number;
  logLevel: LogLevel;
  logFormat: LogFormat;
}

/** API thread -> worker. */
export type WorkerRequest =
  | { id: number; op: 'request'; method: string; url: string; body: Uint8Array }
  | { id: number; op: 'list' }
  | { id: number; op: 'close' };

/** Worker -> API thread. */
export type WorkerReply = { id: number; status: number; body: unknown; allow?: string };

const setup = workerData as WorkerSetup;
const port = parentPort!;
const log = createLogger({ level: setup.logLevel, format: setup.logFormat, stream: process.stderr }).child({ worker: setup.index });
const host = new NetworkHost(log, {
  // The API thread counts networks and names; a worker holds what it is given.
  maxNetworks: Number.MAX_SAFE_INTEGER,
  // The whole body arrived already; the network's own limit still applies on its paths.
  maxBodyBytes: 1024 * 1024,
  faultScope: true,
  networkLogger: (name, c) =>
    createLogger({ level: setup.logLevel, format: setup.logFormat, stream: process.stderr, budget: mainLogBudget(c) }).child({ network: name, worker: setup.index }),
});
// An exception outside every network ends this worker (the API thread marks its networks failed).
installFaultRouter(log, (code) => process.exit(code));

/** The request as the route handlers read it: a stream of the body, with its method, url and length. */
function requestOf(m: { method: string; url: string; body: Uint8Array }): IncomingMessage {
  const req = Readable.from(m.body.length > 0 ? [Buffer.from(m.body)] : []) as unknown as IncomingMessage;
  Object.assign(req, { method: m.method, url: m.url, headers: { 'content-length': String(m.body.length) } });
  return req;
}

port.on('message', (m: WorkerRequest) => {
  void (async () => {
    let reply: WorkerReply;
    if (m.op === 'request') {
      const answer = await dispatch(host, requestOf(m), log);
      // An event stream cannot cross threads (each request is answered whole): say so instead of failing to clone it.
      reply = answer.body instanceof EventStreamAnswer ? { id: m.id, status: 501, body: { error: 'GET /decisions/events is not available for a network on a worker thread (--workers); poll GET /decisions/pending' } } : { id: m.id, ...answer };
    } else if (m.op === 'list') {
      reply = { id: m.id, status: 200, body: host.list() };
    } else {
      await host.close();
      reply = { id: m.id, status: 200, body: null };
    }
    port.postMessage(reply);
  })();
});
port.postMessage({ id: 0, status: 200, body: 'ready' } satisfies WorkerReply);
