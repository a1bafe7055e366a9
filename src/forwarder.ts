/**
 * Port forwarding host -> guest: `expose({local, remote, protocol})` listens
 * on the host and relays to an address in the guest, played by the gateway.
 *
 *  - TCP: each accepted host connection becomes stack.connectTcp() from
 *    gatewayIp:<port from a bounded allocator> to the guest, joined by the
 *    same TcpPipe the NAT uses (backpressure and half-close both ways). The
 *    host connection is held paused until the guest's handshake completes;
 *    if the guest refuses (RST) or never answers, the host connection is
 *    reset.
 *  - UDP: each host peer (address:port) gets its own gateway port, so the
 *    guest's replies (which the NAT sees as guest -> gatewayIp:port and hands
 *    over through claimGatewayUdp) go back to the right peer. Peers expire
 *    after udpIdleTimeoutMs and are bounded per forward (LRU eviction).
 */
import { createServer, type Server, type Socket } from 'node:net';
import { createSocket, type RemoteInfo, type Socket as UdpSocket } from 'node:dgram';
import { isIP } from 'node:net';
import { ipv4, parseIp, type IpAddress, type IPv4, type IPv6 } from '../netstack/addr.js';
import type { NetStack, UdpDatagram } from '../netstack/api.js';
import type { Logger } from './log.js';
import type { GatewayUdpClaims } from './nat/index.js';
import { PortAllocator } from './nat/port-allocator.js';
import { TcpPipe } from './nat/tcp-pipe.js';
import {
  ForwardError,
  parseForwardSpec,
  parseHostPort,
  type ForwardKey,
  type ForwardSpec,
  type PortForwards,
} from './port-forwards.js';

export interface PortForwarderOptions {
  /** The address the guest sees forwarded connections come from. */
  gatewayIp: IPv4;
  /** The same for a forward to the guest's IPv6 address; absent, IPv6 forwards are refused. */
  gatewayIp6?: IPv6 | undefined;
  /** Gateway-side source ports for forwarded TCP connections and UDP peers. */
  firstPort: number;
  lastPort: number;
  /** Live TCP connections per forward; beyond it new host connections are closed at once. */
  maxConnectionsPerForward: number;
  /** UDP peers per forward; a new one beyond it evicts the least recently used. */
  maxUdpPeersPerForward: number;
  udpIdleTimeoutMs: number;
}

export const DEFAULT_PORT_FORWARDER_OPTIONS: Readonly<PortForwarderOptions> = Object.freeze({
  gatewayIp: ipv4(192, 168, 127, 1),
  firstPort: 32768,
  lastPort: 60999,
  maxConnectionsPerForward: 1024,
  maxUdpPeersPerForward: 256,
  udpIdleTimeoutMs: 90_000,
});

interface TcpForward {
  readonly spec: ForwardSpec;
  readonly server: Server;
  readonly pipes: Set<TcpPipe>;
}

interface UdpPeer {
  readonly key: string;
  readonly gatewayPort: number;
  readonly release: () => void;
  readonly idleTimer: NodeJS.Timeout;
}

interface UdpForward {
  readonly spec: ForwardSpec;
  readonly socket: UdpSocket;
  /** Insertion order = recency order. */
  readonly peers: Map<string, UdpPeer>;
}

type Forward = ({ kind: 'tcp' } & TcpForward) | ({ kind: 'udp' } & UdpForward);

export class PortForwarder implements PortForwards {
  readonly opts: PortForwarderOptions;
  private stack: NetStack | undefined;
  private readonly forwards = new Map<string, Forward>();
  private readonly tcpPorts: PortAllocator;
  private readonly udpPorts: PortAllocator;

  constructor(
    opts: Partial<PortForwarderOptions>,
    private readonly log: Logger,
    /** Where guest UDP replies to the gateway are claimed (the Nat). Without it UDP forwards are one-way. */
    private readonly udpClaims?: GatewayUdpClaims,
  ) {
    this.opts = { ...DEFAULT_PORT_FORWARDER_OPTIONS, ...opts };
    this.tcpPorts = new PortAllocator(this.opts.firstPort, this.opts.lastPort);
    this.udpPorts = new PortAllocator(this.opts.firstPort, this.opts.lastPort);
  }

  attach(stack: NetStack): void {
    this.stack = stack;
  }

  list(): ForwardSpec[] {
    return this.live().map((f) => ({ ...f.spec }));
  }

  /** The gateway address of the guest address's family: forwarded flows come from it. */
  private fromFor(guest: IpAddress): IpAddress {
    return typeof guest === 'number' ? this.opts.gatewayIp : this.opts.gatewayIp6!;
  }

  async expose(input: ForwardSpec): Promise<void> {
    const spec = parseForwardSpec(input);
    if (typeof spec === 'string') throw new ForwardError('invalid', spec);
    const key = forwardKey(spec);
    if (this.forwards.has(key)) throw new ForwardError('conflict', `${spec.protocol} ${spec.local} is already forwarded`);
    const local = parseHostPort(spec.local, { allowEmptyHost: true }) as { host: string; port: number };
    const remoteHp = parseHostPort(spec.remote, { allowEmptyHost: false }) as { host: string; port: number };
    const remote = { ip: parseIp(remoteHp.host)!, port: remoteHp.port };
    if (typeof remote.ip !== 'number' && this.opts.gatewayIp6 === undefined) {
      throw new ForwardError('invalid', `"remote": ${remoteHp.host} is an IPv6 address and IPv6 is off (--ipv6 off)`);
    }
    // Reserve the key before awaiting, so two concurrent exposes cannot both listen.
    const placeholder = { kind: 'pending' } as unknown as Forward;
    this.forwards.set(key, placeholder);
    try {
      const fwd =
        spec.protocol === 'tcp' ? await this.listenTcp(spec, local, remote) : await this.bindUdp(spec, local, remote);
      this.forwards.set(key, fwd);
      this.log.info('forward exposed', { local: spec.local, remote: spec.remote, protocol: spec.protocol });
    } catch (err) {
      this.forwards.delete(key);
      throw err;
    }
  }

  async unexpose(input: ForwardKey): Promise<void> {
    const key = forwardKey(input);
    const fwd = this.forwards.get(key);
    if (fwd === undefined || (fwd as { kind: string }).kind === 'pending') {
      throw new ForwardError('not-found', `${input.protocol} ${input.local} is not forwarded`);
    }
    this.forwards.delete(key);
    await this.stop(fwd);
    this.log.info('forward removed', { local: fwd.spec.local, remote: fwd.spec.remote, protocol: fwd.spec.protocol });
  }

  async close(): Promise<void> {
    const all = this.live();
    this.forwards.clear();
    await Promise.all(all.map((f) => this.stop(f)));
  }

  /** Live forwarded TCP connections and UDP peers, for stats. */
  stats(): { forwards: number; tcpConnections: number; udpPeers: number } {
    let tcp = 0;
    let udp = 0;
    for (const f of this.live()) {
      if (f.kind === 'tcp') tcp += f.pipes.size;
      else if (f.kind === 'udp') udp += f.peers.size;
    }
    return { forwards: this.live().length, tcpConnections: tcp, udpPeers: udp };
  }

  /** Forwards that finished listening (not the ones still being set up). */
  private live(): Forward[] {
    return [...this.forwards.values()].filter((f) => (f as { kind: string }).kind !== 'pending');
  }

  private async stop(fwd: Forward): Promise<void> {
    if (fwd.kind === 'tcp') {
      const closed = new Promise<void>((resolve) => fwd.server.close(() => resolve()));
      for (const pipe of [...fwd.pipes]) pipe.destroy();
      await closed;
    } else {
      for (const peer of [...fwd.peers.values()]) this.dropPeer(fwd, peer);
      await new Promise<void>((resolve) => fwd.socket.close(() => resolve()));
    }
  }

  // --- TCP -----------------------------------------------------------------

  private listenTcp(
    spec: ForwardSpec,
    local: { host: string; port: number },
    remote: { ip: IpAddress; port: number },
  ): Promise<Forward> {
    const pipes = new Set<TcpPipe>();
    const server = createServer({ allowHalfOpen: true, pauseOnConnect: true, noDelay: true });
    const fwd: Forward = { kind: 'tcp', spec, server, pipes };
    server.on('connection', (sock) => this.acceptTcp(fwd as TcpForward, sock, remote));
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen({ port: local.port, host: local.host === '' ? undefined : local.host }, () => {
        server.off('error', reject);
        server.on('error', (err) => this.log.warn('forward listener error', { local: spec.local, error: err.message }));
        resolve(fwd);
      });
    });
  }

  private acceptTcp(fwd: TcpForward, sock: Socket, remote: { ip: IpAddress; port: number }): void {
    const stack = this.stack;
    const fromPort = stack === undefined ? undefined : this.tcpPorts.allocate();
    if (stack === undefined || fromPort === undefined || fwd.pipes.size >= this.opts.maxConnectionsPerForward) {
      if (fromPort !== undefined) this.tcpPorts.release(fromPort);
      this.log.info('forward connection refused', {
        local: fwd.spec.local,
        reason: stack === undefined ? 'no-guest' : fromPort === undefined ? 'no-free-port' : 'too-many-connections',
      });
      sock.destroy();
      return;
    }
    const peer = `${sock.remoteAddress}:${sock.remotePort}`;
    const pipe = new TcpPipe(sock, {
      waitForConnect: true,
      onConnected: () => this.log.debug('forward connection open', { local: fwd.spec.local, remote: fwd.spec.remote, peer, fromPort }),
      onFinished: (p, reason) => {
        fwd.pipes.delete(p);
        this.tcpPorts.release(fromPort);
        const level = reason === 'refused' || reason === 'timeout' ? 'info' : 'debug';
        this.log[level]('forward connection close', {
          local: fwd.spec.local,
          remote: fwd.spec.remote,
          peer,
          reason,
          bytesToGuest: p.bytesToGuest,
          bytesToHost: p.bytesToHost,
        });
      },
    });
    fwd.pipes.add(pipe);
    let tcp;
    try {
      tcp = stack.connectTcp({ from: this.fromFor(remote.ip), fromPort, to: remote.ip, toPort: remote.port }, pipe.handlers);
    } catch (err) {
      this.log.info('forward connection refused', { local: fwd.spec.local, reason: 'connect-failed', error: String(err) });
      sock.destroy();
      return; // the pipe finishes (and releases the port) when the host socket closes
    }
    pipe.bind(tcp);
  }

  // --- UDP -----------------------------------------------------------------

  private bindUdp(
    spec: ForwardSpec,
    local: { host: string; port: number },
    remote: { ip: IpAddress; port: number },
  ): Promise<Forward> {
    const v6 = isIP(local.host) === 6;
    const socket = createSocket(v6 ? 'udp6' : 'udp4');
    const fwd: Forward = { kind: 'udp', spec, socket, peers: new Map() };
    socket.on('message', (msg, rinfo) => this.udpFromHost(fwd as UdpForward, msg, rinfo, remote));
    return new Promise((resolve, reject) => {
      socket.once('error', reject);
      socket.bind(local.port, local.host === '' ? undefined : local.host, () => {
        socket.off('error', reject);
        socket.on('error', (err) => this.log.warn('forward udp socket error', { local: spec.local, error: err.message }));
        resolve(fwd);
      });
    });
  }

  private udpFromHost(fwd: UdpForward, msg: Buffer, rinfo: RemoteInfo, remote: { ip: IpAddress; port: number }): void {
    const stack = this.stack;
    if (stack === undefined) return;
    const key = `${rinfo.address}|${rinfo.port}`;
    let peer = fwd.peers.get(key);
    if (peer !== undefined) {
      fwd.peers.delete(key);
      fwd.peers.set(key, peer);
      peer.idleTimer.refresh();
    } else {
      peer = this.newPeer(fwd, key, rinfo, remote);
      if (peer === undefined) return;
    }
    stack.sendUdp(this.fromFor(remote.ip), peer.gatewayPort, remote.ip, remote.port, msg);
  }

  private newPeer(fwd: UdpForward, key: string, rinfo: RemoteInfo, remote: { ip: IpAddress; port: number }): UdpPeer | undefined {
    while (fwd.peers.size >= this.opts.maxUdpPeersPerForward) {
      this.dropPeer(fwd, fwd.peers.values().next().value as UdpPeer);
    }
    const gatewayPort = this.udpPorts.allocate();
    if (gatewayPort === undefined) {
      this.log.info('forward datagram dropped', { local: fwd.spec.local, reason: 'no-free-port' });
      return undefined;
    }
    const replyTo = { address: rinfo.address, port: rinfo.port };
    const onReply = (d: UdpDatagram): void => {
      // Only the forwarded guest endpoint may answer through this mapping.
      if (d.src !== remote.ip || d.srcPort !== remote.port) return;
      const current = fwd.peers.get(key);
      current?.idleTimer.refresh();
      fwd.socket.send(Buffer.from(d.payload), replyTo.port, replyTo.address);
    };
    let release: () => void = () => {};
    if (this.udpClaims !== undefined) {
      try {
        release = this.udpClaims.claimGatewayUdp(gatewayPort, onReply);
      } catch (err) {
        this.udpPorts.release(gatewayPort);
        this.log.info('forward datagram dropped', { local: fwd.spec.local, reason: 'port-claimed', error: String(err) });
        return undefined;
      }
    }
    const peer: UdpPeer = {
      key,
      gatewayPort,
      release,
      idleTimer: setTimeout(() => this.dropPeer(fwd, peer), this.opts.udpIdleTimeoutMs),
    };
    peer.idleTimer.unref();
    fwd.peers.set(key, peer);
    this.log.debug('forward udp peer open', { local: fwd.spec.local, peer: `${rinfo.address}:${rinfo.port}`, gatewayPort });
    return peer;
  }

  private dropPeer(fwd: UdpForward, peer: UdpPeer): void {
    if (fwd.peers.get(peer.key) !== peer) return;
    fwd.peers.delete(peer.key);
    clearTimeout(peer.idleTimer);
    peer.release();
    this.udpPorts.release(peer.gatewayPort);
  }
}

function forwardKey(k: { local: string; protocol: string }): string {
  return `${k.protocol} ${k.local}`;
}
