/**
 * sni/: the allowlist's flow wall as a pure library (no I/O, injected
 * clock). Read a connection's first bytes with NamePeeker (TLS ClientHello
 * SNI or HTTP/1 Host, incremental and bounded), then ask EgressPolicy what
 * the flow gets; PinTable holds the addresses Moat itself resolved per name.
 * Hostnames are canonicalised by dns/'s canonicalHostname, re-exported here,
 * so both walls read a name the same way. After the flow is allowed,
 * HttpRequestStream and TlsHandshakeWatcher keep one connection to one name.
 */
export { canonicalHostname } from '../dns/rules.js';
export { ClientHelloReader, MAX_CLIENT_HELLO_BYTES, type ClientHelloResult } from './clienthello.js';
export { DEFAULT_MAX_HEAD_BYTES, HttpHeadReader, type HttpHostResult, type RequestFraming } from './http-host.js';
export { DEFAULT_MAX_PARKED_BYTES, HttpRequestStream, type HttpStreamVerdict } from './http-stream.js';
export { TlsHandshakeWatcher, type HelloFacts, type TlsWatchVerdict } from './tls-watch.js';
export { sameName } from './same-name.js';
export { NamePeeker, type PeekResult } from './peek.js';
export { DEFAULT_MAX_PIN_ENTRIES, PinTable } from './pins.js';
export {
  EgressPolicy,
  type AllowReason,
  type BlockReason,
  type Decision,
  type FlowInput,
  type NameVia,
  type PinView,
  type PolicyOptions,
} from './policy.js';
export { specialRangeOf, type SpecialRange } from './ranges.js';
export { embeddedIpv4, formatIpv6, parseIp, parseIpv6, specialRangeOfAddress, type EmbeddedIpv4 } from './ranges6.js';
