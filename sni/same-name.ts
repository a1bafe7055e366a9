/**
 * "Is this the same name?" for the checks that keep one connection to one
 * name (http-stream.ts, tls-watch.ts): equal canonical hostnames (case,
 * trailing dot and IDN spelling aside), or, for what is not a hostname
 * (an IP literal), equal as sent ignoring ASCII case. Two absent names are
 * the same (an HTTP/1.0 request without Host after another one).
 */
import { canonicalHostname } from '../dns/rules.js';

export function sameName(a: string | null, b: string | null): boolean {
  if (a === null || b === null) return a === b;
  const ca = canonicalHostname(a);
  const cb = canonicalHostname(b);
  if (typeof ca === 'string' && typeof cb === 'string') return ca === cb;
  return a.toLowerCase() === b.toLowerCase();
}
