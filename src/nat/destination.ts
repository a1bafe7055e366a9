/**
 * Where a guest flow's destination address leads on the host, or why it leads
 * nowhere. One function so that TCP and UDP refuse exactly the same things.
 */
import { formatIPv4, inSubnet, prefixMask, type IPv4 } from '../../netstack/addr.js';

export type DestinationRefusal =
  | 'unspecified' // 0.0.0.0/8: "this network" (RFC 1122 3.2.1.3), never a destination
  | 'loopback' // 127.0.0.0/8: the guest's own loopback; the host is reached via the host alias
  | 'link-local' // 169.254.0.0/16 (RFC 3927): cloud metadata endpoints live here
  | 'multicast' // 224.0.0.0/4 (RFC 5771): no multicast routing through the NAT
  | 'reserved' // 240.0.0.0/4 (RFC 1112 4)
  | 'broadcast' // 255.255.255.255 or the virtual subnet's broadcast address
  | 'network-address' // the virtual subnet's network address
  | 'virtual-network'; // another address inside the virtual subnet: no host-side counterpart

export type Destination =
  | { readonly kind: 'gateway' }
  | { readonly kind: 'host'; readonly address: string }
  | { readonly kind: 'refused'; readonly reason: DestinationRefusal };

export interface DestinationRules {
  gatewayIp: IPv4;
  hostIp: IPv4;
  network: IPv4;
  prefix: number;
  allowLinkLocal: boolean;
}

const GATEWAY: Destination = { kind: 'gateway' };
const HOST_LOOPBACK: Destination = { kind: 'host', address: '127.0.0.1' };
const refusals = new Map<DestinationRefusal, Destination>();
function refused(reason: DestinationRefusal): Destination {
  let d = refusals.get(reason);
  if (d === undefined) {
    d = { kind: 'refused', reason };
    refusals.set(reason, d);
  }
  return d;
}

export function classifyDestination(dst: IPv4, rules: DestinationRules): Destination {
  if (dst === rules.gatewayIp) return GATEWAY;
  if (dst === rules.hostIp) return HOST_LOOPBACK;
  const top = dst >>> 24;
  if (top === 0) return refused('unspecified');
  if (top === 127) return refused('loopback');
  if (dst === 0xffffffff) return refused('broadcast');
  if (top >= 224 && top <= 239) return refused('multicast');
  if (top >= 240) return refused('reserved');
  if (dst >>> 16 === 0xa9fe && !rules.allowLinkLocal) return refused('link-local');
  if (inSubnet(dst, rules.network, rules.prefix)) {
    const hostBits = ~prefixMask(rules.prefix) >>> 0;
    // A /31 or /32 has no network or broadcast address (RFC 3021).
    if (rules.prefix <= 30) {
      if ((dst & hostBits) >>> 0 === hostBits) return refused('broadcast');
      if ((dst & hostBits) >>> 0 === 0) return refused('network-address');
    }
    return refused('virtual-network');
  }
  return { kind: 'host', address: formatIPv4(dst) };
}
