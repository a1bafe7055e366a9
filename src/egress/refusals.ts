/**
 * What a client sees when the egress policy refuses a connection it has
 * already been allowed to open (the SNI/Host peek happens after the TCP
 * handshake): never a silent hang.
 *
 *  - HTTP: a 403 whose body names the host, the reason and the decision
 *    id, with the same reason and id in headers a program can read
 *    (x-moat-reason, x-moat-decision). Not the rules: a guest that reads
 *    them learns which wildcards are resolved live (a DNS channel, issue
 *    14) and what else it may reach. The operator finds the rest under the
 *    decision id in the log; --refusal-details adds the rules for debugging.
 *  - TLS: a fatal access_denied alert (RFC 8446 6.2; RFC 5246 7.2.2), sent
 *    in the clear as every alert before the handshake is, then the close.
 *    Clients print "tlsv1 alert access denied" or similar.
 */

/** TLS record: type 21 (alert), legacy version 3.3, length 2, level 2 (fatal), description 49 (access_denied). */
export const TLS_ACCESS_DENIED_ALERT: Uint8Array = Uint8Array.from([0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x31]);

export interface ForbiddenInfo {
  /** The host the request named (as sent), or null when it named none. */
  host: string | null;
  reason: string;
  id: string;
  /** The allow rules as written, to list for debugging (--refusal-details), or null: the default names none. */
  rules: readonly string[] | null;
}

/** Rules listed in a 403 body at most; the rest is summarised (the body must stay small). */
const MAX_RULES_LISTED = 50;

export function forbiddenResponse(info: ForbiddenInfo): Uint8Array {
  const who = info.host === null ? 'this request (it names no host)' : `host ${sanitize(info.host)}`;
  let body = `Blocked by Moat's egress allowlist: ${who} is not allowed (reason: ${info.reason}, decision ${info.id}).\n`;
  if (info.rules !== null) {
    const listed = info.rules.slice(0, MAX_RULES_LISTED).join(', ');
    const more = info.rules.length > MAX_RULES_LISTED ? `, and ${info.rules.length - MAX_RULES_LISTED} more` : '';
    body += `Allowed: ${listed.length > 0 ? listed + more : '(nothing)'}\n`;
  }
  const bodyBytes = new TextEncoder().encode(body);
  const head =
    'HTTP/1.1 403 Forbidden\r\n' +
    'content-type: text/plain; charset=utf-8\r\n' +
    `content-length: ${bodyBytes.length}\r\n` +
    `x-moat-reason: ${info.reason}\r\n` +
    `x-moat-decision: ${info.id}\r\n` +
    'connection: close\r\n\r\n';
  const headBytes = new TextEncoder().encode(head);
  const out = new Uint8Array(headBytes.length + bodyBytes.length);
  out.set(headBytes, 0);
  out.set(bodyBytes, headBytes.length);
  return out;
}

/** The host comes from the guest: keep it printable and short in our body. */
function sanitize(host: string): string {
  const clean = host.replace(/[^\x21-\x7e]/g, '?');
  return clean.length > 255 ? `${clean.slice(0, 255)}...` : clean;
}
