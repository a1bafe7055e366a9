/**
 * The contract between netstack/ and whoever drives it (src/ in the service,
 * test links and benchmarks elsewhere). Types only: implementations live in
 * stack.ts and tcp/.
 *
 * Addresses are numbers (see addr.ts). Byte views handed to callbacks are only
 * valid during the call: copy what you keep.
 */
import type { IPv4, IPv6, IpAddress, Mac } from './addr.js';

/**
 * A TCP or UDP flow as seen from the guest: `src` is the guest side. Both
 * addresses are of one family: numbers (IPv4) or packed IPv6 strings
 * (addr.ts); `typeof tuple.src === 'number'` says which.
 */
export interface FourTuple {
  readonly src: IpAddress;
  readonly srcPort: number;
  readonly dst: IpAddress;
  readonly dstPort: number;
}

/** What a guest's SYN asked for, raised before anything is answered. */
export interface SynInfo extends FourTuple {
  /** Maximum segment size the guest announced (536 if it sent none). */
  readonly mss: number;
  /** Window scale shift the guest offered, or null if it sent no option. */
  readonly windowScale: number | null;
  readonly sackPermitted: boolean;
  readonly timestamps: boolean;
}

/** Why a TCP connection ended. */
export type TcpCloseReason =
  | 'closed' // both sides finished (FIN exchanged)
  | 'reset' // the peer sent an acceptable RST
  | 'refused' // an active open was answered with RST
  | 'timeout' // retransmissions or keepalives exhausted, or a connect timed out
  | 'aborted'; // this side called abort() or the stack was shut down

/** Callbacks a TCP connection's owner supplies. All are called synchronously from stack input or timers. */
export interface TcpHandlers {
  /**
   * In-order bytes from the peer. The view is only valid during the call.
   * Not called while the socket is paused: bytes wait in the receive buffer
   * and the advertised window shrinks instead.
   */
  onData(data: Uint8Array): void;
  /** The peer sent FIN: no more data will come (it may still read ours). */
  onEnd(): void;
  /** The send buffer has room again after write() took less than it was given. */
  onDrain(): void;
  /** The connection is gone; no callback follows. */
  onClose(reason: TcpCloseReason): void;
  /** An active open (Stack.connectTcp) completed its handshake. */
  onConnect?(): void;
  /**
   * Receive-window autotuning wants to grow this connection's window by
   * `bytes` (the peer fills it and the owner keeps up). True grants it: the
   * owner answers for that much more memory (a shared budget counts it) for
   * the connection's life. False keeps the window as it is (it is asked again
   * after another window of data). Absent: growth is always granted.
   */
  mayGrowWindow?(bytes: number): boolean;
}

/** A TCP connection, as its owner uses it. */
export interface TcpSocket {
  readonly tuple: FourTuple;
  /** RFC 9293 state name, e.g. 'ESTABLISHED', 'CLOSE-WAIT'. For logs and tests. */
  readonly state: string;
  /**
   * Copies as much of `data` into the send buffer as fits and returns how many
   * bytes it took. Less than `data.length` means "full": keep the rest, stop
   * reading your source, and wait for onDrain.
   */
  write(data: Uint8Array): number;
  /**
   * Optional: the writer stops before a write could come up short (it reads
   * in fixed-size chunks and would otherwise have to copy the rest it could
   * not write); onDrain follows as after a short write. Returns false, and
   * no onDrain follows, when the send buffer is half free or more already.
   */
  waitForRoom?(): boolean;
  /** Bytes written but not yet acknowledged by the peer. */
  readonly bufferedAmount: number;
  /** Bytes received but not yet handed to onData: in-order bytes waiting while paused, and out-of-order bytes. */
  readonly recvBufferedAmount: number;
  /** Room left in the send buffer. */
  readonly writableSpace: number;
  /** Half-close: send FIN once everything written has been sent. */
  end(): void;
  /** Send RST and drop everything now. onClose('aborted') follows. */
  abort(): void;
  /** Stop onData delivery; incoming bytes fill the receive buffer and the window closes. */
  pause(): void;
  /** Resume onData delivery (buffered bytes are delivered first) and reopen the window. */
  resume(): void;
}

/**
 * A guest SYN waiting for its owner's decision. Call exactly one of accept()
 * or refuse(), now or later; until then the guest's retransmitted SYNs for the
 * same four-tuple are absorbed. A SYN held longer than the stack's
 * `synHoldTimeoutMs` is dropped silently and `onExpire` is not needed: the
 * guest sees what it would see on a lossy path.
 */
export interface PendingTcp {
  readonly syn: SynInfo;
  /** Answer SYN-ACK and return the socket. */
  accept(handlers: TcpHandlers): TcpSocket;
  /** Answer RST: "connection refused", at once. */
  refuse(): void;
  /** Drop the SYN without an answer (the guest will time out). */
  ignore(): void;
}

/** A UDP datagram from the guest that the stack did not consume itself. */
export interface UdpDatagram extends FourTuple {
  /** Payload view, valid during the callback. */
  readonly payload: Uint8Array;
}

/** Frames the stack wants sent, batched so that a transport writes them with one syscall. */
export interface OutputBatch {
  /**
   * The frames as QEMU stream framing (each preceded by its length as a u32
   * big-endian), ready to write as-is. Usually one chunk; more when a batch
   * outgrows the arena. The chunks are not reused by the stack afterwards.
   */
  readonly framed: readonly Uint8Array[];
  /** Number of frames. */
  readonly frameCount: number;
  /** Calls fn once per frame (Ethernet header first, no length prefix). */
  forEachFrame(fn: (frame: Uint8Array) => void): void;
  /**
   * Calls fn once per frame with where it lies (no view is made): buf[offset, offset + length).
   * segmentSize is 0, or for a TCP super-segment (more payload than one
   * segment of its connection: StackConfig tcp.segmentOffloadBytes) the
   * payload bytes per segment its connection sends, which a link with
   * segmentation offload passes on (a TAP's virtio-net gso_size).
   */
  forEachFrameAt(fn: (buf: Uint8Array, offset: number, length: number, segmentSize: number) => void): void;
  /**
   * Optional, for a link that writes a frame from pieces (writev): calls fn
   * once per frame with its head buf[offset, offset + headLength) followed
   * by payload and payload2 (null: none), slices of a connection's send
   * ring that are valid only during the call (StackOptions.gatherPayload).
   * A frame without them is whole in its head. forEachFrameAt/framed give
   * the same frames whole (copied).
   */
  forEachFramePart?(
    fn: (buf: Uint8Array, offset: number, headLength: number, payload: Uint8Array | null, payload2: Uint8Array | null, segmentSize: number) => void,
  ): void;
  /**
   * Optional: "these bytes are written, reuse their memory". Reusing staging
   * buffers spares the page faults a fresh buffer costs on first touch (a
   * third of the CPU at MTU 65520). Call it only once nothing refers to the
   * chunks any more (e.g. from the socket write callback); never calling it
   * is safe, the buffers are then garbage-collected.
   */
  release(): void;
}

/** How netstack/ tells its owner about things it did not handle itself. */
export interface StackEvents {
  /** A guest SYN for a new four-tuple, not to the gateway's own services. */
  onTcpSyn(pending: PendingTcp): void;
  /** A UDP datagram from the guest not consumed by the stack (DHCP is). */
  onUdp(datagram: UdpDatagram): void;
  /**
   * An ICMP message from the guest that the stack does not answer itself
   * (echo to an address that is not virtual, errors, ...). Raw ICMP bytes.
   */
  onIcmp?(src: IPv4, dst: IPv4, icmp: Uint8Array): void;
  /** Frames to send to the guest. Called at the end of input(), advance() and deferred flushes. */
  onOutput(batch: OutputBatch): void;
  /** A frame was dropped; reason as counted in stats. Optional, for logs. */
  onDrop?(reason: string): void;
  /**
   * A frame's processing threw (a bug in the stack or in an owner callback).
   * The frame is dropped and counted as 'stack:internal-error'; the stack goes on.
   */
  onError?(err: unknown): void;
}

/** Counters the stack keeps; the service exposes them on GET /stats. */
export interface StackStats {
  framesIn: number;
  bytesIn: number;
  framesOut: number;
  bytesOut: number;
  /** Frames dropped, by DropReason ("ipv4:bad-checksum": 3). */
  drops: Record<string, number>;
  tcpConnections: number;
  tcpHeldSyns: number;
  /** Four-tuples in TIME-WAIT (outside tcpConnections and its limit). */
  tcpTimeWait?: number;
  /** TIME-WAIT records dropped early because maxTimeWait were held (oldest first). */
  tcpTimeWaitRecycled?: number;
}

/** The stack as its owner drives it. Implemented by `Stack` in stack.ts. */
export interface NetStack {
  /**
   * Processes a batch of Ethernet frames from the guest (no length prefix).
   * Never throws on bad input: malformed frames are dropped and counted.
   * ACKs are coalesced over the batch; output leaves in one onOutput call.
   * marks (optional, one per frame): what the link checked (rx-marks.ts:
   * RX_L4_CHECKSUM_OK, RX_GSO_TCP); absent or 0, the stack checks everything.
   */
  input(frames: readonly Uint8Array[], marks?: ArrayLike<number>): void;
  /** Fires due timers (retransmissions, TIME-WAIT, reassembly...) and flushes output. */
  advance(now?: number): void;
  /** When advance() should next be called, or undefined if no timer is armed. */
  nextDeadline(): number | undefined;
  /**
   * Opens a connection into the guest (port forwarding): Moat plays `from`,
   * the guest is `to`. Handlers get onConnect, or onClose('refused'/'timeout').
   */
  connectTcp(
    endpoints: { from: IpAddress; fromPort: number; to: IpAddress; toPort: number },
    handlers: TcpHandlers,
  ): TcpSocket;
  /** Sends a UDP datagram to the guest from any address (fragmented if larger than the MTU). */
  sendUdp(from: IpAddress, fromPort: number, to: IpAddress, toPort: number, payload: Uint8Array): void;
  /** Sends raw ICMP bytes (checksum filled in by the stack) from `from` to the guest. */
  sendIcmp(from: IPv4, to: IPv4, icmp: Uint8Array): void;
  /**
   * The guest went away (VM reboot, shim restart): abort every connection,
   * forget its MAC and its DHCP lease, so that the next guest, whatever its
   * MAC, gets the configured guest address.
   */
  resetGuest(): void;
  /** Current DHCP leases, for GET /services/dhcp/leases. */
  dhcpLeases(): { mac: Mac; ip: IPv4; expiresAt: number }[];
  readonly config: Readonly<StackConfig>;
  readonly stats: StackStats;
}

/** Everything a Stack is configured with. Defaults (stack.ts DEFAULT_STACK_CONFIG) are gvproxy's. */
export interface StackConfig {
  /** Link MTU, 576..65520 (1500 default). Sets our MSS and the DHCP MTU option. */
  mtu: number;
  /** The virtual subnet (192.168.127.0/24). */
  network: IPv4;
  prefix: number;
  /** The gateway: answers ARP, ICMP echo, DHCP, and is the guest's router (192.168.127.1, 5a:94:ef:e4:0c:dd). */
  gatewayIp: IPv4;
  gatewayMac: Mac;
  /** The address DHCP gives the first guest (192.168.127.2). */
  guestIp: IPv4;
  /** The host alias (192.168.127.254): a virtual IP the service maps to the host's loopback. */
  hostIp: IPv4;
  /** More virtual IPs the stack answers ARP and ICMP echo for. */
  extraVirtualIps: IPv4[];
  /** DNS servers handed out by DHCP (default: the gateway). */
  dnsServers: IPv4[];
  domainName: string | undefined;
  searchDomains: string[];
  staticLeases: { mac: Mac; ip: IPv4 }[];
  dhcpLeaseTimeSec: number;
  tcp: {
    sendBufferBytes: number;
    /** The receive window's maximum per connection (the receive ring's capacity). */
    recvBufferBytes: number;
    /** The receive window a connection starts with; it grows up to recvBufferBytes for a sender it limits. Default: recvBufferBytes. */
    recvWindowInitialBytes?: number;
    /** Bound on out-of-order bytes queued per connection. */
    oooBytes: number;
    /** How long a guest SYN may wait for its owner's decision. */
    synHoldTimeoutMs: number;
    /** Concurrent connections (established or closing); SYNs beyond it are refused with RST. */
    maxConnections: number;
    /** SYNs waiting for a decision; beyond it new SYNs are dropped. */
    maxHeldSyns: number;
    /**
     * Four-tuples held in TIME-WAIT (small records, not counted in
     * maxConnections); beyond it the oldest is dropped early. Default 65536.
     */
    maxTimeWait?: number;
    /**
     * How long the ACK for a small in-order segment may wait for the answer
     * to carry it, on connections that answer (request/response); default 4,
     * 0 = always ACK at the end of the input batch. See tcp/connection.ts.
     */
    delayedAckMs?: number;
    /**
     * Segmentation offload: new data may leave in TCP segments of up to this
     * many payload bytes (whole multiples of the MSS), larger than the MTU,
     * because the link hands them to a receiver that takes them whole (a TAP
     * with a virtio-net header marks them GSO with the MSS as segment size,
     * as a virtio NIC does for a guest). 0 or absent: segments fit the MTU.
     * Only for links that do that: on a wire such frames are oversize.
     */
    segmentOffloadBytes?: number;
    /**
     * Checksum offload on output: every TCP segment leaves with only the
     * pseudo-header sum in its checksum field (as Linux leaves a
     * CHECKSUM_PARTIAL packet), for a link that marks it to be completed (a
     * TAP with a virtio-net header: NEEDS_CSUM) and so saves a pass over
     * every byte to the guest. Only for such links: on a wire these frames
     * carry a wrong checksum.
     */
    checksumOffload?: boolean;
  };
  fragments: { maxBytes: number; maxDatagrams: number; timeoutMs: number };
  /** IPv6 on the link; absent: every IPv6 frame is dropped and counted ('ipv6:unsupported'). */
  ipv6?: Ipv6StackConfig;
}

/**
 * The IPv6 side of the link: one /64 the guest configures itself in by
 * SLAAC from the gateway's router advertisements. The gateway also answers
 * at fe80:: plus its MAC's EUI-64 (its link-local address, the guest's
 * default router).
 */
export interface Ipv6StackConfig {
  /** The /64 announced for SLAAC (a ULA by default: fd6d:6f61:7400::/64). Only the first 64 bits count. */
  prefix: IPv6;
  /** The gateway's address in the prefix (::1): DNS, DHCPv6 and ping answer there. */
  gatewayIp: IPv6;
  /** The host alias's address in the prefix (::fe): mapped to the host's loopback by the owner. */
  hostIp: IPv6;
  /** DNS servers announced by RA (RDNSS) and DHCPv6 (default: the gateway's address). */
  dnsServers: IPv6[];
  /** IPv6 neighbours (guest addresses) remembered at once; beyond it the oldest is forgotten. Default 256. */
  maxNeighbors?: number;
}
