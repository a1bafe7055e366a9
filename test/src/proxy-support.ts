/**
 * Servers for the `moat proxy` tests, all on loopback addresses of their
 * own (127.66.N.0/24, N per test file so files can run in parallel; :443
 * and :80 are free there; bench/proxy.ts uses 127.66.1.0/24), with names from a test DNS
 * server (allowlist-upstream.ts) the proxy is pointed at with --resolver:
 *
 *   secure.test   127.66.N.10:443  HTTPS (self-signed cert made by openssl now), also serves git smart HTTP
 *   plain.test    127.66.N.11:80   HTTP
 *   blocked.test  127.66.N.13:443  HTTPS, never allowed: counts connections to prove none arrive
 *   blocked.test  127.66.N.13:80   HTTP, likewise
 *   echo.test     127.66.N.14:7000 TCP echo (a port a rule names; the 1,000-tunnel test)
 */
import { execFile, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer as createHttpServer, type IncomingMessage, type Server as HttpServer, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { createServer as createNetServer, type Server as NetServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { startTestUpstream, type TestUpstream } from './allowlist-upstream.js';

export const run = promisify(execFile);

export function addressesIn(block: number) {
  return {
    secure: `127.66.${block}.10`,
    plain: `127.66.${block}.11`,
    blocked: `127.66.${block}.13`,
    echo: `127.66.${block}.14`,
  } as const;
}
export const ECHO_PORT = 7000;

export interface ProxyWorld {
  dir: string;
  certFile: string;
  dns: TestUpstream;
  addr: ReturnType<typeof addressesIn>;
  /** TCP connections each server accepted. */
  accepted: { secure: number; plain: number; blocked: number; echo: number };
  /** Request paths each HTTP(S) server answered, "host path". */
  requests: string[];
  close(): Promise<void>;
}

export async function startProxyWorld(block: number): Promise<ProxyWorld> {
  const ADDR = addressesIn(block);
  const dir = mkdtempSync(join(tmpdir(), 'mz6p-'));
  const certFile = join(dir, 'cert.pem');
  const keyFile = join(dir, 'key.pem');
  await run('openssl', [
    'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1', '-subj', '/CN=secure.test',
    '-addext', 'subjectAltName=DNS:secure.test,DNS:blocked.test,DNS:other.test',
    '-keyout', keyFile, '-out', certFile,
  ]);
  const tls = { cert: readFileSync(certFile), key: readFileSync(keyFile) };
  const repoRoot = await makeGitRepo(dir);

  const accepted = { secure: 0, plain: 0, blocked: 0, echo: 0 };
  const requests: string[] = [];
  const closers: (() => Promise<void>)[] = [];
  const answer = (label: string) => (req: IncomingMessage, res: ServerResponse) => {
    requests.push(`${label} ${req.url}`);
    if (label === 'secure' && req.url?.startsWith('/repo.git')) return gitBackend(repoRoot, req, res);
    const body = `hello from ${label} ${req.url} host=${req.headers.host} via=${req.headers.via ?? ''} pc=${req.headers['proxy-connection'] ?? ''}\n`;
    res.writeHead(200, { 'content-type': 'text/plain', 'content-length': Buffer.byteLength(body) });
    res.end(body);
  };

  const secure = createHttpsServer(tls, answer('secure'));
  secure.on('connection', () => accepted.secure++);
  const plain = createHttpServer(answer('plain'));
  plain.on('connection', () => accepted.plain++);
  const blockedTls = createHttpsServer(tls, answer('blocked'));
  blockedTls.on('connection', () => accepted.blocked++);
  const blockedHttp = createHttpServer(answer('blocked'));
  blockedHttp.on('connection', () => accepted.blocked++);
  const echo = createNetServer((s: Socket) => {
    accepted.echo++;
    s.on('error', () => s.destroy());
    s.pipe(s);
  });
  await listen(secure, ADDR.secure, 443, closers);
  await listen(plain, ADDR.plain, 80, closers);
  await listen(blockedTls, ADDR.blocked, 443, closers);
  await listen(blockedHttp, ADDR.blocked, 80, closers);
  await listen(echo, ADDR.echo, ECHO_PORT, closers);

  const dns = await startTestUpstream({
    'secure.test': { a: [ADDR.secure] },
    'plain.test': { a: [ADDR.plain] },
    'blocked.test': { a: [ADDR.blocked] },
    'echo.test': { a: [ADDR.echo] },
    'other.test': { a: [ADDR.secure] },
  });
  closers.push(() => dns.close());

  return {
    dir,
    certFile,
    dns,
    addr: ADDR,
    accepted,
    requests,
    close: async () => {
      for (const c of closers.reverse()) await c();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

function listen(server: HttpServer | NetServer, host: string, port: number, closers: (() => Promise<void>)[]): Promise<void> {
  const sockets = new Set<Socket>();
  server.on('connection', (s: Socket) => {
    sockets.add(s);
    s.once('close', () => sockets.delete(s));
  });
  closers.push(
    () =>
      new Promise<void>((r) => {
        server.close(() => r());
        for (const s of sockets) s.destroy();
      }),
  );
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve());
  });
}

/** A bare repository with one commit, for git clone over HTTPS. */
async function makeGitRepo(dir: string): Promise<string> {
  const root = join(dir, 'git');
  const work = join(dir, 'work');
  const env = { ...process.env, GIT_CONFIG_NOSYSTEM: '1', HOME: dir, GIT_AUTHOR_NAME: 't', GIT_AUTHOR_EMAIL: 't@t', GIT_COMMITTER_NAME: 't', GIT_COMMITTER_EMAIL: 't@t' };
  await run('git', ['init', '-q', '-b', 'main', work], { env });
  writeFileSync(join(work, 'README'), 'cloned through moat proxy\n');
  await run('git', ['-C', work, 'add', 'README'], { env });
  await run('git', ['-C', work, 'commit', '-q', '-m', 'first'], { env });
  await run('git', ['clone', '-q', '--bare', work, join(root, 'repo.git')], { env });
  return root;
}

/** git http-backend as CGI (RFC 3875): request metadata in the environment, body on stdin, headers then body on stdout. */
function gitBackend(root: string, req: IncomingMessage, res: ServerResponse): void {
  const url = new URL(req.url ?? '/', 'https://secure.test');
  const child = spawn('git', ['http-backend'], {
    env: {
      PATH: process.env['PATH'] ?? '/usr/bin:/bin',
      GIT_PROJECT_ROOT: root,
      GIT_HTTP_EXPORT_ALL: '1',
      REQUEST_METHOD: req.method ?? 'GET',
      PATH_INFO: decodeURIComponent(url.pathname),
      QUERY_STRING: url.search.slice(1),
      CONTENT_TYPE: req.headers['content-type'] ?? '',
      ...(req.headers['content-length'] ? { CONTENT_LENGTH: req.headers['content-length'] } : {}),
      ...(req.headers['content-encoding'] ? { HTTP_CONTENT_ENCODING: req.headers['content-encoding'] } : {}),
      ...(req.headers['git-protocol'] ? { GIT_PROTOCOL: String(req.headers['git-protocol']) } : {}),
      REMOTE_ADDR: '127.0.0.1',
    },
  });
  req.pipe(child.stdin);
  let head = Buffer.alloc(0);
  let headerDone = false;
  child.stdout.on('data', (chunk: Buffer) => {
    if (headerDone) {
      res.write(chunk);
      return;
    }
    head = Buffer.concat([head, chunk]);
    let end = head.indexOf('\r\n\r\n');
    let sepLen = 4;
    if (end < 0) {
      end = head.indexOf('\n\n');
      sepLen = 2;
    }
    if (end < 0) return;
    headerDone = true;
    let status = 200;
    const headers: Record<string, string> = {};
    for (const line of head.subarray(0, end).toString('latin1').split(/\r?\n/)) {
      const colon = line.indexOf(':');
      const name = line.slice(0, colon).trim();
      const value = line.slice(colon + 1).trim();
      if (name.toLowerCase() === 'status') status = Number(value.split(' ')[0]);
      else headers[name] = value;
    }
    res.writeHead(status, headers);
    res.write(head.subarray(end + sepLen));
  });
  child.stdout.on('end', () => res.end());
  child.on('error', () => res.destroy());
}
