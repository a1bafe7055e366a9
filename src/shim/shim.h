/* moat-shim: shared declarations.
 *
 * The shim moves Ethernet frames between a "guest side" (a TAP device, a unix
 * datagram socket, or an AF_VSOCK stream) and Moat's unix stream socket, which
 * speaks QEMU's stream framing: every frame is preceded by its length as a
 * 4-byte big-endian u32.
 *
 * Files: moat-shim.c (arguments, modes), net.c (sockets, netns, TAP set-up),
 * pump.c (bounded buffers, framing, the poll loop).
 */
#ifndef MOAT_SHIM_H
#define MOAT_SHIM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Largest frame accepted on any side: the largest MTU Linux allows on a TAP
 * (ETH_MAX_MTU, 65535) plus the Ethernet header (14). The same limit as Moat's
 * frame decoder (src/transport/frame-decoder.ts MAX_FRAME_LEN). */
#define SHIM_MAX_FRAME (65535 + 14)
/* Smallest: a frame must at least hold its Ethernet header. */
#define SHIM_MIN_FRAME 14
/* Length prefix of QEMU's stream framing. */
#define SHIM_LEN_PREFIX 4

/* Process exit codes (also documented in --help). */
#define EXIT_CLEAN 0 /* clean EOF from either side, or SIGINT/SIGTERM */
#define EXIT_ERR 1   /* I/O or protocol error */
#define EXIT_USAGE 2 /* bad command line */

/* ---- logging (stderr, every line prefixed "moat-shim: ") ---- */
void shim_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Print "moat-shim: <msg>: strerror(errno)". */
void shim_log_errno(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
_Noreturn void shim_die(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- net.c ---- */

/* Connect to "unix:///path" or "tcp://HOST:PORT" (blocking connect), then
 * return a non-blocking, close-on-exec stream socket. Exits on failure. */
int net_connect_url(const char *url);

/* setns() into a network namespace: NAME means /run/netns/NAME, anything with
 * a '/' is a path (e.g. /proc/PID/ns/net). Exits on failure. */
void net_enter_netns(const char *name_or_path);

/* Create or attach TAP device NAME (IFF_TAP|IFF_NO_PI, plus IFF_VNET_HDR when
 * vnet_hdr: every read and write then starts with a 10-byte struct
 * virtio_net_hdr) in the current network namespace, set its MTU when mtu > 0
 * and bring it up. Returns a non-blocking fd. Exits on failure. */
int net_open_tap(const char *name, int mtu, bool vnet_hdr, bool offload);

/* Bind a non-blocking unix datagram socket at PATH (a stale file is unlinked
 * first). Exits on failure. */
int net_bind_unixgram(const char *path);

/* Open an unprivileged ICMP echo socket (AF_INET, SOCK_DGRAM, IPPROTO_ICMP)
 * in the current network namespace and bind it (the kernel picks its echo
 * identifier), close-on-exec. Exits with a message naming
 * net.ipv4.ping_group_range when the kernel refuses it. */
int net_open_ping(void);

/* Listen on AF_VSOCK port PORT (any CID). Exits with a clear message when the
 * kernel has no vsock support. */
int net_listen_vsock(unsigned port);

/* ---- pump.c ---- */

/* A bounded byte buffer: bytes live in data[start, end). */
struct buf {
    uint8_t *data;
    size_t cap, start, end;
};

enum port_kind { PORT_STREAM, PORT_PACKET };

/* Result of one packet-port operation. */
enum pkt_result {
    PKT_OK,        /* one frame received or sent */
    PKT_NONE,      /* receive: nothing (or something discarded) this time */
    PKT_AGAIN,     /* the kernel would block: wait for poll */
    PKT_DROPPED,   /* send: frame dropped (peer unknown or refused it) */
    PKT_EOF,       /* the device / peer is gone for good */
};

struct port;

/* Operations of a frame-per-read device (TAP, unix datagram socket). */
struct packet_ops {
    /* Receive one frame into buf (capacity cap); set *len. */
    enum pkt_result (*recv)(struct port *p, uint8_t *buf, size_t cap, size_t *len);
    /* Send one frame. */
    enum pkt_result (*send)(struct port *p, const uint8_t *frame, size_t len);
};

struct port {
    const char *name; /* for messages: "moat socket", "tap device", ... */
    int fd;
    enum port_kind kind;
    /* PORT_STREAM: framed bytes read but not yet forwarded / waiting to be written. */
    struct buf in, out;
    bool eof;       /* stream: read() returned 0 */
    bool hup;       /* poll reported POLLHUP */
    bool reset;     /* stream: ECONNRESET / EPIPE (data was lost) */
    /* PORT_PACKET */
    const struct packet_ops *ops;
    bool readable;     /* worth calling recv (poll said POLLIN or not asked yet) */
    bool send_blocked; /* last send returned PKT_AGAIN: wait for POLLOUT */
    /* unixgram peer state */
    bool peer_known;
    unsigned long dropped;
};

void port_init_stream(struct port *p, const char *name, int fd);
void port_init_packet(struct port *p, const char *name, int fd, const struct packet_ops *ops);
void port_free(struct port *p);

/* Why pump_run returned. */
enum pump_end {
    END_MOAT_EOF,   /* Moat's socket closed cleanly */
    END_GUEST_EOF,  /* the guest side closed cleanly (vsock peer, TAP gone) */
    END_SIGNAL,     /* SIGINT / SIGTERM */
};

/* Move frames both ways until one side closes. Exits the process on errors
 * (with a message). */
enum pump_end pump_run(struct port *guest, struct port *moat);

/* vsock mode, between two guest connections: drain and drop Moat's frames
 * (the link is down) until a guest connects on listen_fd (true) or Moat
 * closes / a signal arrives (false). */
bool pump_wait_for_guest(struct port *moat, int listen_fd);

/* Ask pump_run to stop (set from signal handlers). */
extern volatile int shim_stop_signal;

extern const struct packet_ops tap_ops;
extern const struct packet_ops unixgram_ops;

#endif
