/**
 * "Is this request for the host the value belongs to?" Inside an intercepted
 * connection (SNI = HOST) every request's Host (HTTP/1.1) or :authority
 * (HTTP/2), and an absolute-form target's authority, must name HOST, and the
 * connection's port if it names one. Anything else is refused with 421
 * Misdirected Request and never forwarded: a client cannot borrow the
 * connection to send the value to another virtual host of the same server
 * (or a server that routes by Host to somewhere else).
 */
import { canonicalHostname } from '../../dns/rules.js';

export function sameAuthority(authority: string | undefined, host: string, port: number): boolean {
  if (authority === undefined || authority.length === 0 || authority.length > 300) return false;
  let name = authority;
  const colon = authority.lastIndexOf(':');
  if (colon >= 0) {
    const p = authority.slice(colon + 1);
    if (!/^\d{1,5}$/.test(p) || Number(p) !== port) return false;
    name = authority.slice(0, colon);
  }
  if (name.includes('@') || name.startsWith('[')) return false;
  return canonicalHostname(name) === host;
}

/** An HTTP/1.1 request target: origin-form passes; absolute-form must name the same authority; anything else (authority-form, *) is refused. */
export function targetAllowed(target: string, method: string, host: string, port: number): boolean {
  if (target.startsWith('/')) return true;
  if (target === '*' && method === 'OPTIONS') return true;
  const m = /^https?:\/\/([^/?#]*)/i.exec(target);
  return m !== null && sameAuthority(m[1], host, port);
}
