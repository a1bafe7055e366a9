/**
 * Who can reach `moat proxy`'s listeners. A proxy port is the allowlist
 * itself: whoever can connect to it egresses as the sandbox does. So a
 * listener on anything but a loopback address needs --listen-public (the
 * configuration refuses to start otherwise, naming the flag), and start-up
 * warns when such a listener has no --auth-file.
 */
import { isIP } from 'node:net';
import type { ProxyConfig } from './config.js';

/** 127.0.0.0/8, ::1, ::ffff:127.x.x.x and the name localhost (which Node binds on loopback). */
export function isLoopbackHost(host: string): boolean {
  if (host === 'localhost') return true;
  const h = host.toLowerCase();
  if (isIP(h) === 4) return h.startsWith('127.');
  if (isIP(h) === 6) {
    if (h === '::1' || /^(0{1,4}:){7}0{0,3}1$/.test(h)) return true;
    const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/.exec(h);
    return mapped !== null && mapped[1]!.startsWith('127.');
  }
  return false;
}

/** The warnings start-up logs (and puts in the ready line) for public listeners. */
export function exposureWarnings(c: Pick<ProxyConfig, 'listen' | 'socks' | 'auth'>): string[] {
  if (c.auth !== undefined) return [];
  const out: string[] = [];
  for (const [what, l] of [['HTTP proxy', c.listen], ['SOCKS5', c.socks]] as const) {
    if (l !== undefined && !isLoopbackHost(l.host)) {
      const shown = l.host.includes(':') ? `[${l.host}]:${l.port}` : `${l.host}:${l.port}`;
      out.push(`${what} on ${shown} is reachable beyond this host without authentication: anyone who reaches it uses this allowlist (set --auth-file)`);
    }
  }
  return out;
}
