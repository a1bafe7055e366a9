/**
 * Port forwarding as the service shell sees it: the spec (gvproxy's JSON
 * shape, so existing clients of `/services/forwarder/*` keep working), its
 * validation, and the interface the forwarder implements (src/forwarder.ts).
 * The config (`--forward`) and the API server both go through parseForwardSpec,
 * so a spec is accepted or refused the same way wherever it comes from.
 */
import { isIP } from 'node:net';

export type ForwardProtocol = 'tcp' | 'udp';

/**
 * One forward: connections (or datagrams) to `local` on the host are relayed
 * to `remote` in the guest. Addresses are text exactly as gvproxy takes them:
 * `local` is "host:port" where an empty host (":8080") means every interface;
 * `remote` is "a.b.c.d:port", an address inside the virtual subnet, or
 * "[v6]:port", the guest's address in the IPv6 prefix.
 */
export interface ForwardSpec {
  local: string;
  remote: string;
  protocol: ForwardProtocol;
}

/** Identifies a forward to remove: gvproxy's unexpose takes local + protocol. */
export interface ForwardKey {
  local: string;
  protocol: ForwardProtocol;
}

/**
 * What the forwarder offers the shell. expose() resolves once the host
 * socket listens; it rejects with a ForwardError for a request that cannot be
 * honoured (duplicate, unknown forward), or with a Node system error
 * (EADDRINUSE, EACCES...) from the listen itself.
 */
export interface PortForwards {
  expose(spec: ForwardSpec): Promise<void>;
  unexpose(key: ForwardKey): Promise<void>;
  list(): ForwardSpec[];
  /** Stops every forward (service shutdown). */
  close(): Promise<void>;
}

/** Why a forward request was refused; `kind` maps to the HTTP status the API answers. */
export type ForwardErrorKind = 'invalid' | 'conflict' | 'not-found';

export class ForwardError extends Error {
  constructor(
    readonly kind: ForwardErrorKind,
    message: string,
  ) {
    super(message);
    this.name = 'ForwardError';
  }
}

/** A "host:port" split into its parts; IPv6 hosts in brackets ("[::1]:80"). */
export interface HostPort {
  host: string;
  port: number;
}

/**
 * Parses "host:port", "[v6]:port" or ":port" (host ''). Returns an error
 * message (naming the bad text) instead of throwing.
 */
export function parseHostPort(text: string, opts: { allowEmptyHost: boolean; allowPortZero?: boolean }): HostPort | string {
  let host: string;
  let portText: string;
  if (text.startsWith('[')) {
    const close = text.indexOf(']');
    if (close < 0 || text[close + 1] !== ':') return `expected [IPv6]:PORT, got "${text}"`;
    host = text.slice(1, close);
    portText = text.slice(close + 2);
    if (isIP(host) !== 6) return `"${host}" is not an IPv6 address`;
  } else {
    const colon = text.lastIndexOf(':');
    if (colon < 0) return `expected HOST:PORT, got "${text}"`;
    host = text.slice(0, colon);
    portText = text.slice(colon + 1);
    if (host.includes(':')) return `IPv6 addresses need brackets ([::1]:PORT), got "${text}"`;
    if (host === '' && !opts.allowEmptyHost) return `a host is required, got "${text}"`;
    if (host !== '' && !/^[A-Za-z0-9.-]+$/.test(host)) return `"${host}" is not a host name or address`;
  }
  const port = parsePort(portText, opts.allowPortZero ?? false);
  if (typeof port === 'string') return port;
  return { host, port };
}

export function parsePort(text: string, allowZero: boolean): number | string {
  if (!/^\d{1,5}$/.test(text)) return `port must be an integer ${allowZero ? 0 : 1}..65535, got "${text}"`;
  const port = Number(text);
  if (port > 65535 || (port === 0 && !allowZero)) return `port must be an integer ${allowZero ? 0 : 1}..65535, got "${text}"`;
  return port;
}

export function isForwardProtocol(x: unknown): x is ForwardProtocol {
  return x === 'tcp' || x === 'udp';
}

/**
 * Validates an untrusted object (an API body or a config file entry) as a
 * ForwardSpec. `protocol` defaults to tcp, as in gvproxy. Returns the spec or
 * a message naming the field and the bad value.
 */
export function parseForwardSpec(body: unknown): ForwardSpec | string {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) return 'expected a JSON object {"local","remote","protocol"}';
  const o = body as Record<string, unknown>;
  for (const key of Object.keys(o)) {
    if (key !== 'local' && key !== 'remote' && key !== 'protocol') return `unknown field "${key}"`;
  }
  if (typeof o.local !== 'string') return `"local" must be a string HOST:PORT, got ${JSON.stringify(o.local) ?? 'nothing'}`;
  if (typeof o.remote !== 'string') return `"remote" must be a string IP:PORT, got ${JSON.stringify(o.remote) ?? 'nothing'}`;
  const protocol = o.protocol ?? 'tcp';
  if (!isForwardProtocol(protocol)) return `"protocol" must be "tcp" or "udp", got ${JSON.stringify(protocol)}`;
  const local = parseHostPort(o.local, { allowEmptyHost: true });
  if (typeof local === 'string') return `"local": ${local}`;
  const remote = parseHostPort(o.remote, { allowEmptyHost: false });
  if (typeof remote === 'string') return `"remote": ${remote}`;
  // An IPv6 guest address comes in brackets ([fd6d:6f61:7400::2]:22): the guest's address in --ipv6-prefix.
  if (isIP(remote.host) === 0) return `"remote": the guest address must be an IP address, got "${remote.host}"`;
  return { local: o.local, remote: o.remote, protocol };
}

/** Validates an untrusted object as a ForwardKey (unexpose). */
export function parseForwardKey(body: unknown): ForwardKey | string {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) return 'expected a JSON object {"local","protocol"}';
  const o = body as Record<string, unknown>;
  for (const key of Object.keys(o)) {
    // gvproxy clients sometimes send the whole spec back; "remote" is accepted and ignored.
    if (key !== 'local' && key !== 'remote' && key !== 'protocol') return `unknown field "${key}"`;
  }
  if (typeof o.local !== 'string') return `"local" must be a string HOST:PORT, got ${JSON.stringify(o.local) ?? 'nothing'}`;
  const protocol = o.protocol ?? 'tcp';
  if (!isForwardProtocol(protocol)) return `"protocol" must be "tcp" or "udp", got ${JSON.stringify(protocol)}`;
  const local = parseHostPort(o.local, { allowEmptyHost: true });
  if (typeof local === 'string') return `"local": ${local}`;
  return { local: o.local, protocol };
}

/**
 * Parses the `--forward LOCAL=GUEST_IP:PORT[/tcp|/udp]` text form,
 * e.g. "127.0.0.1:2222=192.168.127.2:22" or ":5353=192.168.127.2:53/udp".
 */
export function parseForwardFlag(text: string): ForwardSpec | string {
  const eq = text.indexOf('=');
  if (eq < 0) return `expected LOCAL=GUEST_IP:PORT[/tcp|/udp], got "${text}"`;
  let remote = text.slice(eq + 1);
  let protocol: ForwardProtocol = 'tcp';
  const slash = remote.lastIndexOf('/');
  if (slash >= 0) {
    const p = remote.slice(slash + 1);
    if (!isForwardProtocol(p)) return `protocol must be tcp or udp, got "${p}" in "${text}"`;
    protocol = p;
    remote = remote.slice(0, slash);
  }
  const spec = parseForwardSpec({ local: text.slice(0, eq), remote, protocol });
  return typeof spec === 'string' ? `${spec} in "${text}"` : spec;
}
