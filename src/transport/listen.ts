/**
 * Binding a net.Server to a ListenAddress, with the unix-socket hygiene a
 * long-running service needs: a socket file left behind by a crashed run is
 * removed, but a live server at that path is never stolen, and a path that is
 * not a socket at all is never deleted.
 */
import { lstatSync, unlinkSync } from 'node:fs';
import { connect, type AddressInfo, type Server } from 'node:net';
import type { ListenAddress } from '../config.js';

/** How long to wait for a live server to answer at an existing socket path. */
const PROBE_TIMEOUT_MS = 500;

export class ListenError extends Error {
  constructor(
    message: string,
    readonly url: string,
  ) {
    super(message);
    this.name = 'ListenError';
  }
}

/** Listens on `addr`; resolves with the address as text (tcp: the real port when 0 was asked). */
export async function listenOn(server: Server, addr: ListenAddress): Promise<string> {
  if (addr.kind === 'unix') await clearStaleUnixSocket(addr.path, addr.url);
  await new Promise<void>((resolve, reject) => {
    const onError = (e: NodeJS.ErrnoException): void => {
      server.off('listening', onListening);
      reject(new ListenError(`${addr.url}: cannot listen: ${e.code ?? e.message}`, addr.url));
    };
    const onListening = (): void => {
      server.off('error', onError);
      resolve();
    };
    server.once('error', onError);
    server.once('listening', onListening);
    if (addr.kind === 'unix') server.listen(addr.path);
    else server.listen(addr.port, addr.host);
  });
  return boundUrl(server, addr);
}

export function boundUrl(server: Server, addr: ListenAddress): string {
  if (addr.kind === 'unix') return addr.url;
  const info = server.address() as AddressInfo | null;
  if (info === null) return addr.url;
  const host = info.family === 'IPv6' ? `[${info.address}]` : info.address;
  return `tcp://${host}:${info.port}`;
}

/**
 * Removes a socket file nobody listens on. Refuses (ListenError) when a server
 * answers there, or when the path exists and is not a socket.
 */
export async function clearStaleUnixSocket(path: string, url: string): Promise<void> {
  let isSocket: boolean;
  try {
    isSocket = lstatSync(path).isSocket();
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw new ListenError(`${url}: cannot inspect ${path}: ${(e as Error).message}`, url);
  }
  if (!isSocket) throw new ListenError(`${url}: ${path} exists and is not a socket; refusing to replace it`, url);
  const probe = await probeUnixSocket(path);
  if (probe === 'alive') throw new ListenError(`${url}: another server is listening at ${path}`, url);
  if (probe !== 'stale') throw new ListenError(`${url}: cannot tell whether ${path} is in use (${probe}); refusing to replace it`, url);
  try {
    unlinkSync(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') {
      throw new ListenError(`${url}: cannot remove stale socket ${path}: ${(e as Error).message}`, url);
    }
  }
}

/**
 * 'alive' when something accepts a connection at `path` (or holds it without
 * answering in time), 'stale' when nobody listens (ECONNREFUSED), otherwise
 * the error code (EACCES...): then we cannot know, and must not delete.
 */
function probeUnixSocket(path: string): Promise<'alive' | 'stale' | string> {
  return new Promise((resolve) => {
    const sock = connect(path);
    const done = (result: string): void => {
      clearTimeout(timer);
      sock.destroy();
      resolve(result);
    };
    const timer = setTimeout(() => done('alive'), PROBE_TIMEOUT_MS);
    sock.once('connect', () => done('alive'));
    sock.once('error', (e: NodeJS.ErrnoException) =>
      done(e.code === 'ECONNREFUSED' || e.code === 'ENOENT' ? 'stale' : (e.code ?? e.message)),
    );
  });
}

/** Closes a server and, for a unix socket, removes its file. Never rejects. */
export function closeServer(server: Server, addr: ListenAddress): Promise<void> {
  return new Promise((resolve) => {
    if (!server.listening) {
      resolve();
      return;
    }
    server.close(() => {
      if (addr.kind === 'unix') {
        try {
          // Node removes the file itself on close; this covers older behaviour and leaves no litter.
          unlinkSync(addr.path);
        } catch {
          /* already gone */
        }
      }
      resolve();
    });
  });
}
