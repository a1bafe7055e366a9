/**
 * `--icmp-fd N`: the unprivileged ICMP socket (socket(AF_INET, SOCK_DGRAM,
 * IPPROTO_ICMP)) moat-shim opened and left on descriptor N. Node cannot
 * create one, but libuv takes any SOCK_DGRAM AF_INET descriptor as a UDP
 * handle (dgram's bind({ fd })), and the kernel's ping socket speaks through
 * the same sendmsg/recvmsg: a datagram is one ICMP message without the IP
 * header, the address is the peer, the port is ignored on send (the
 * kernel's identifier is the socket's "port").
 *
 * A wrong number must not be used: a UDP socket on N would be accepted by
 * libuv too. The descriptor must be a socket listed in /proc/net/icmp (the
 * kernel's table of bound ping sockets; moat-shim binds before handing it
 * over), found by its inode.
 */
import { createSocket, type Socket } from 'node:dgram';
import { readFileSync, readlinkSync } from 'node:fs';
import type { PingSocket } from '../nat/icmp-echo.js';

/** The port dgram needs on every send; a ping socket ignores it. */
const IGNORED_PORT = 1;

/** Why descriptor FD is not a bound ICMP ping socket, or undefined when it is. */
export function pingSocketProblem(fd: number, procNetIcmp = '/proc/net/icmp'): string | undefined {
  let target: string;
  try {
    target = readlinkSync(`/proc/self/fd/${fd}`);
  } catch (e) {
    return `descriptor ${fd} is not open (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`;
  }
  const m = /^socket:\[(\d+)\]$/.exec(target);
  if (m === null) return `descriptor ${fd} is not a socket (${target})`;
  let table: string;
  try {
    table = readFileSync(procNetIcmp, 'utf8');
  } catch (e) {
    return `cannot read ${procNetIcmp} (${(e as Error).message})`;
  }
  // Columns: sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...
  const inodes = table
    .split('\n')
    .slice(1)
    .map((line) => line.trim().split(/\s+/)[9]);
  if (!inodes.includes(m[1])) return `descriptor ${fd} is not a bound ICMP ping socket (not in ${procNetIcmp})`;
  return undefined;
}

/** Opens the ping socket on FD; throws naming --icmp-fd when it is not one. */
export function openPingSocket(fd: number): Promise<PingSocket> {
  const problem = pingSocketProblem(fd);
  const hint = 'start Moat through moat-shim tap --icmp --exec, which puts an ICMP ping socket on descriptor 4';
  if (problem !== undefined) return Promise.reject(new Error(`--icmp-fd ${fd}: ${problem}; ${hint}`));
  const socket: Socket = createSocket('udp4');
  return new Promise((resolve, reject) => {
    socket.once('error', (e) => reject(new Error(`--icmp-fd ${fd}: ${e.message}`)));
    socket.bind({ fd }, () => {
      socket.removeAllListeners('error');
      let onError: (e: Error) => void = () => {};
      socket.on('error', (e) => onError(e));
      resolve({
        send(icmp, address) {
          socket.send(icmp, IGNORED_PORT, address, (e) => {
            if (e) onError(e);
          });
        },
        onError(handler) {
          onError = handler;
        },
        onMessage(handler) {
          socket.on('message', (msg, rinfo) => handler(msg, rinfo.address));
        },
        close() {
          try {
            socket.close();
          } catch {
            // already closed
          }
        },
      });
    });
  });
}
