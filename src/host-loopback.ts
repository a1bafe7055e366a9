/**
 * Where the IPv6 host alias leads on this host (src/network.ts wires it into
 * the NAT; src/explain.ts shows it). A module of its own so that `moat
 * explain` need not load the whole guest network to ask.
 */
import { networkInterfaces } from 'node:os';

/**
 * Where the IPv6 host alias leads: the host's ::1, or 127.0.0.1 when the
 * host has no IPv6 loopback (IPv6 disabled in the kernel, or lo without ::1):
 * the alias then still reaches the host, over IPv4.
 */
export function ipv6HostLoopback(interfaces: ReturnType<typeof networkInterfaces> = networkInterfaces()): '::1' | '127.0.0.1' {
  for (const addrs of Object.values(interfaces)) {
    for (const a of addrs ?? []) if (a.internal && a.family === 'IPv6' && a.address === '::1') return '::1';
  }
  return '127.0.0.1';
}
