/**
 * Per-frame marks a link may hand input() beside a frame: what the link has
 * already checked for the stack (receive offload). A link without offloads
 * passes none, and every frame is checked in full as on any wire.
 *
 * The link must only set a mark after checking what it says against the
 * frame (src/transport/vnet-header.ts does, for a TAP's virtio-net header);
 * the stack still parses and bounds every byte, so a mark saves work and
 * never widens what a frame can do.
 */

/**
 * The TCP or UDP checksum need not be checked: the frame never crossed a wire
 * (the guest's kernel left it to be completed, NEEDS_CSUM, or had checked it,
 * DATA_VALID). Ignored on IP fragments: it describes one frame, not a datagram.
 */
export const RX_L4_CHECKSUM_OK = 1;

/**
 * An unsegmented TCP segment (GSO): it may be larger than the link MTU, up
 * to one whole IPv4 packet (65535 bytes). Any other protocol, or a fragment,
 * carrying it is dropped ('offload:gso-not-tcp').
 */
export const RX_GSO_TCP = 2;

/** The largest frame a GSO mark admits: Ethernet header + the largest IPv4 packet. */
export const MAX_GSO_FRAME = 14 + 65535;
