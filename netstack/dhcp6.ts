/**
 * Stateless DHCPv6 (RFC 8415 §6.1, §18.2.6): the guest's SLAAC address comes
 * from the router advertisement; an Information-request asks for the rest,
 * and the Reply carries the DNS servers (RFC 3646 option 23), the search list
 * (option 24) and a refresh time. No addresses are leased (the RA's O flag,
 * not M, sends guests here). Pure: bytes in, bytes (or a drop reason) out.
 */
import { writeIPv6, writeMac, type IPv6, type Mac } from './addr.js';
import { ParseError } from './errors.js';

export const DHCP6_CLIENT_PORT = 546;
export const DHCP6_SERVER_PORT = 547;
const MSG_SOLICIT = 1;
const MSG_REPLY = 7;
const MSG_INFORMATION_REQUEST = 11;
const OPT_CLIENTID = 1;
const OPT_SERVERID = 2;
const OPT_IA_NA = 3;
const OPT_IA_TA = 4;
const OPT_IA_PD = 25;
const OPT_DNS_SERVERS = 23;
const OPT_DOMAIN_LIST = 24;
const OPT_INFORMATION_REFRESH_TIME = 32;
/** A client DUID is at most 128 bytes (RFC 8415 §11.1); anything longer is not echoed. */
const MAX_DUID = 130;
/** RFC 8415 §21.23: refresh no sooner than 600 s; a day is the default. */
const REFRESH_SEC = 86400;

export interface Dhcp6Settings {
  /** The gateway's MAC: our DUID-LL (RFC 8415 §11.4). */
  serverMac: Mac;
  dnsServers: readonly IPv6[];
  searchDomains: readonly string[];
}

/**
 * Answers one DHCPv6 message (a UDP payload to port 547): a Reply to an
 * Information-request, or a ParseError naming why nothing is answered.
 */
export function answerDhcp6(msg: Uint8Array, s: Dhcp6Settings): Uint8Array | ParseError {
  if (msg.length < 4) return ParseError.of('dhcp6:truncated');
  const type = msg[0]!;
  if (type !== MSG_INFORMATION_REQUEST) {
    // Solicit, Request...: stateful DHCPv6 (addresses) is not served: SLAAC gives the address.
    return ParseError.of(type === MSG_SOLICIT ? 'dhcp6:stateful-unsupported' : 'dhcp6:unsupported-type');
  }
  let clientId: Uint8Array | undefined;
  const ours = serverDuid(s.serverMac);
  for (let i = 4; i < msg.length; ) {
    if (i + 4 > msg.length) return ParseError.of('dhcp6:truncated');
    const code = (msg[i]! << 8) | msg[i + 1]!;
    const len = (msg[i + 2]! << 8) | msg[i + 3]!;
    if (i + 4 + len > msg.length) return ParseError.of('dhcp6:truncated');
    const data = msg.subarray(i + 4, i + 4 + len);
    // RFC 8415 §16.12: an Information-request naming another server, or carrying IA options, is discarded.
    if (code === OPT_SERVERID && !sameBytes(data, ours)) return ParseError.of('dhcp6:not-our-server-id');
    if (code === OPT_IA_NA || code === OPT_IA_TA || code === OPT_IA_PD) return ParseError.of('dhcp6:ia-in-information-request');
    if (code === OPT_CLIENTID) {
      if (len === 0 || len > MAX_DUID) return ParseError.of('dhcp6:bad-client-id');
      clientId = data;
    }
    i += 4 + len;
  }
  const names = encodeNames(s.searchDomains);
  const size = 4 + (clientId === undefined ? 0 : 4 + clientId.length) + 4 + ours.length
    + (s.dnsServers.length > 0 ? 4 + 16 * s.dnsServers.length : 0) + (names.length > 0 ? 4 + names.length : 0) + 8;
  const out = new Uint8Array(size);
  out[0] = MSG_REPLY;
  out.set(msg.subarray(1, 4), 1); // the transaction id
  let o = 4;
  const opt = (code: number, len: number): number => {
    out[o] = code >> 8; out[o + 1] = code & 0xff; out[o + 2] = len >> 8; out[o + 3] = len & 0xff;
    o += 4;
    return o;
  };
  if (clientId !== undefined) { out.set(clientId, opt(OPT_CLIENTID, clientId.length)); o += clientId.length; }
  out.set(ours, opt(OPT_SERVERID, ours.length));
  o += ours.length;
  if (s.dnsServers.length > 0) {
    opt(OPT_DNS_SERVERS, 16 * s.dnsServers.length);
    for (const d of s.dnsServers) { writeIPv6(out, o, d); o += 16; }
  }
  if (names.length > 0) { out.set(names, opt(OPT_DOMAIN_LIST, names.length)); o += names.length; }
  opt(OPT_INFORMATION_REFRESH_TIME, 4);
  out[o] = REFRESH_SEC >>> 24; out[o + 1] = (REFRESH_SEC >>> 16) & 0xff; out[o + 2] = (REFRESH_SEC >>> 8) & 0xff; out[o + 3] = REFRESH_SEC & 0xff;
  return out;
}

/** DUID-LL (type 3), hardware type 1 (Ethernet), the MAC. */
export function serverDuid(mac: Mac): Uint8Array {
  const d = new Uint8Array(10);
  d[1] = 3;
  d[3] = 1;
  writeMac(d, 4, mac);
  return d;
}

/** Domain names in uncompressed DNS wire form (RFC 8415 §10). Search domains are validated hostnames (ASCII). */
function encodeNames(names: readonly string[]): Uint8Array {
  const bytes: number[] = [];
  for (const name of names) {
    for (const label of name.replace(/\.$/, '').split('.')) {
      if (label.length === 0 || label.length > 63) continue;
      bytes.push(label.length);
      for (let i = 0; i < label.length; i++) bytes.push(label.charCodeAt(i) & 0x7f);
    }
    bytes.push(0);
  }
  return Uint8Array.from(bytes);
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
