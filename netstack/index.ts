/**
 * netstack/: the user-space TCP/IP stack as a pure library (no I/O, no
 * `node:` imports, injected clock). The package's `moat/netstack` entry.
 *
 * Drive it like this: createStack(config, events, clock, defer) → feed guest
 * Ethernet frames to input(), send what onOutput() hands you to the guest,
 * call advance() at nextDeadline(), and answer onTcpSyn / onUdp (the NAT's
 * job in src/). api.ts is the contract; stack.ts implements it.
 */
export type {
  FourTuple,
  Ipv6StackConfig,
  NetStack,
  OutputBatch,
  PendingTcp,
  StackConfig,
  StackEvents,
  StackStats,
  SynInfo,
  TcpCloseReason,
  TcpHandlers,
  TcpSocket,
  UdpDatagram,
} from './api.js';
export { MAX_GSO_FRAME, RX_GSO_TCP, RX_L4_CHECKSUM_OK } from './rx-marks.js';
export { createStack, DEFAULT_STACK_CONFIG, MAX_MTU, MIN_MTU, Stack, type StackOptions } from './stack.js';
export {
  formatIp,
  formatIPv4,
  formatIPv6,
  formatMac,
  isIPv6,
  ipv6,
  parseIp,
  parseIPv6,
  type IpAddress,
  type IPv6,
  inSubnet,
  ipv4,
  IPV4_ANY,
  IPV4_BROADCAST,
  MAC_BROADCAST,
  parseCidr,
  parseIPv4,
  parseMac,
  prefixMask,
  type IPv4,
  type Mac,
} from './addr.js';
export { isParseError, ParseError, type DropReason } from './errors.js';
export { ManualClock, type Clock } from './clock.js';
export { Timer, TimerWheel } from './timer-wheel.js';
export { checksum, finishChecksum, sumBytes, sumPseudoHeader, sumPseudoHeader6 } from './checksum.js';
export { LINKTYPE_ETHERNET, pcapFileHeader, pcapRecordHeader, readPcap, readPcapFile, type PcapFile, type PcapRecord } from './pcap.js';
