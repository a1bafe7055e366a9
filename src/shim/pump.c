/* pump.c: bounded buffers, QEMU stream framing and the poll() loop that moves
 * frames between the guest side and Moat's socket.
 *
 * Memory is fixed at start-up: each stream port owns one input and one output
 * buffer of STREAM_BUF_CAP bytes. When the output buffer towards Moat cannot
 * take another maximum-size frame, the guest side is simply not read
 * (backpressure) — nothing grows. Frames are read from the guest straight into
 * the output buffer (after a 4-byte gap for the length) and many frames leave
 * in one send(); frames from Moat are written to the guest straight from the
 * input buffer. */
#define _GNU_SOURCE
#include "shim.h"

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define FRAMED_MAX (SHIM_LEN_PREFIX + SHIM_MAX_FRAME)
/* Four maximum-size frames, or a few hundred MTU-1500 frames, per buffer. */
#define STREAM_BUF_CAP (4 * FRAMED_MAX)
/* Frames read from a packet device before the loop flushes and polls again,
 * so that one busy direction cannot starve the other. */
#define RX_BATCH 64
/* Warn about the first few drops, then only every DROP_LOG_EVERY-th one. */
#define DROP_LOG_FIRST 5
#define DROP_LOG_EVERY 10000

volatile int shim_stop_signal;

/* ---------------------------------------------------------------- buffers */

static size_t buf_len(const struct buf *b) { return b->end - b->start; }

/* Return a pointer to `need` contiguous free bytes at the tail, moving the
 * buffered bytes to the front first if that makes room; NULL when full. */
static uint8_t *buf_reserve(struct buf *b, size_t need)
{
    if (b->cap - b->end < need && b->start > 0) {
        size_t len = buf_len(b);
        memmove(b->data, b->data + b->start, len);
        b->start = 0;
        b->end = len;
    }
    if (b->cap - b->end < need)
        return NULL;
    return b->data + b->end;
}

static void buf_consume(struct buf *b, size_t n)
{
    b->start += n;
    if (b->start == b->end)
        b->start = b->end = 0;
}

static void buf_alloc(struct buf *b, const char *what)
{
    b->data = malloc(STREAM_BUF_CAP);
    if (!b->data)
        shim_die(EXIT_ERR, "out of memory allocating the %s buffer", what);
    b->cap = STREAM_BUF_CAP;
    b->start = b->end = 0;
}

void port_init_stream(struct port *p, const char *name, int fd)
{
    memset(p, 0, sizeof(*p));
    p->name = name;
    p->fd = fd;
    p->kind = PORT_STREAM;
    buf_alloc(&p->in, name);
    buf_alloc(&p->out, name);
}

void port_init_packet(struct port *p, const char *name, int fd, const struct packet_ops *ops)
{
    memset(p, 0, sizeof(*p));
    p->name = name;
    p->fd = fd;
    p->kind = PORT_PACKET;
    p->ops = ops;
    p->readable = true;
}

void port_free(struct port *p)
{
    free(p->in.data);
    free(p->out.data);
    p->in.data = p->out.data = NULL;
}

static void note_drop(struct port *p, const char *why, size_t len)
{
    p->dropped++;
    if (p->dropped <= DROP_LOG_FIRST || p->dropped % DROP_LOG_EVERY == 0)
        shim_log("%s: dropped a %zu-byte frame: %s (%lu dropped so far)", p->name, len, why,
                 p->dropped);
}

/* ---------------------------------------------------------------- framing */

static void put_be32(uint8_t *d, uint32_t v)
{
    d[0] = (uint8_t)(v >> 24);
    d[1] = (uint8_t)(v >> 16);
    d[2] = (uint8_t)(v >> 8);
    d[3] = (uint8_t)v;
}

/* Is a whole frame buffered in p->in? Returns 1 and sets *frame / *len when it
 * is, 0 when more bytes are needed. A length outside SHIM_MIN_FRAME ..
 * SHIM_MAX_FRAME means the two sides disagree about framing: there is no way
 * to resynchronise a byte stream, so it is fatal. */
static int next_frame(const struct port *p, const uint8_t **frame, size_t *len)
{
    size_t have = buf_len(&p->in);
    if (have < SHIM_LEN_PREFIX)
        return 0;
    const uint8_t *h = p->in.data + p->in.start;
    uint32_t n = ((uint32_t)h[0] << 24) | ((uint32_t)h[1] << 16) | ((uint32_t)h[2] << 8) | h[3];
    if (n < SHIM_MIN_FRAME || n > SHIM_MAX_FRAME)
        shim_die(EXIT_ERR, "%s: protocol error: frame length %lu is outside %d..%d", p->name,
                 (unsigned long)n, SHIM_MIN_FRAME, SHIM_MAX_FRAME);
    if (have < SHIM_LEN_PREFIX + (size_t)n)
        return 0;
    *frame = h + SHIM_LEN_PREFIX;
    *len = n;
    return 1;
}

/* ---------------------------------------------------------------- stream I/O */

static void stream_read(struct port *p)
{
    /* Compact only when less than one maximum frame fits at the tail. */
    if (!buf_reserve(&p->in, FRAMED_MAX) && !buf_reserve(&p->in, 1))
        return;
    for (;;) {
        ssize_t n = recv(p->fd, p->in.data + p->in.end, p->in.cap - p->in.end, MSG_DONTWAIT);
        if (n > 0) {
            p->in.end += (size_t)n;
            return;
        }
        if (n == 0) {
            p->eof = true;
            return;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return;
        if (errno == ECONNRESET) {
            shim_log("%s: connection reset by peer", p->name);
            p->eof = true;
            p->reset = true;
            return;
        }
        shim_log_errno("%s: read", p->name);
        exit(EXIT_ERR);
    }
}

/* Write as much of p->out as the socket takes now. */
static void stream_flush(struct port *p)
{
    while (buf_len(&p->out) > 0) {
        ssize_t n = send(p->fd, p->out.data + p->out.start, buf_len(&p->out),
                         MSG_DONTWAIT | MSG_NOSIGNAL);
        if (n > 0) {
            buf_consume(&p->out, (size_t)n);
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (n < 0 && (errno == EPIPE || errno == ECONNRESET)) {
            shim_log("%s: peer closed the connection while %zu bytes were waiting to be sent",
                     p->name, buf_len(&p->out));
            p->eof = true;
            p->reset = true;
            p->out.start = p->out.end = 0;
            return;
        }
        shim_log_errno("%s: write", p->name);
        exit(EXIT_ERR);
    }
}

/* ---------------------------------------------------------------- moving frames */

static void move_packets_to_stream(struct port *src, struct port *dst)
{
    for (int i = 0; i < RX_BATCH && src->readable && !src->eof; i++) {
        uint8_t *slot = buf_reserve(&dst->out, FRAMED_MAX);
        if (!slot)
            return; /* backpressure: Moat is not reading fast enough */
        size_t len = 0;
        switch (src->ops->recv(src, slot + SHIM_LEN_PREFIX, SHIM_MAX_FRAME, &len)) {
        case PKT_OK:
            put_be32(slot, (uint32_t)len);
            dst->out.end += SHIM_LEN_PREFIX + len;
            break;
        case PKT_NONE:
        case PKT_DROPPED:
            break;
        case PKT_AGAIN:
            src->readable = false;
            return;
        case PKT_EOF:
            src->eof = true;
            return;
        }
    }
}

static void move_stream_to_packets(struct port *src, struct port *dst)
{
    const uint8_t *frame;
    size_t len;
    while (!dst->send_blocked && !dst->eof && next_frame(src, &frame, &len)) {
        switch (dst->ops->send(dst, frame, len)) {
        case PKT_AGAIN:
            dst->send_blocked = true;
            return;
        case PKT_EOF:
            dst->eof = true;
            return;
        case PKT_OK:
        case PKT_NONE:
        case PKT_DROPPED:
            buf_consume(&src->in, SHIM_LEN_PREFIX + len);
            break;
        }
    }
}

static void move_stream_to_stream(struct port *src, struct port *dst)
{
    const uint8_t *frame;
    size_t len;
    while (next_frame(src, &frame, &len)) {
        uint8_t *slot = buf_reserve(&dst->out, SHIM_LEN_PREFIX + len);
        if (!slot)
            return;
        /* frame - 4 is the length prefix, already validated: copy it as is. */
        memcpy(slot, frame - SHIM_LEN_PREFIX, SHIM_LEN_PREFIX + len);
        dst->out.end += SHIM_LEN_PREFIX + len;
        buf_consume(&src->in, SHIM_LEN_PREFIX + len);
    }
}

static void move(struct port *src, struct port *dst)
{
    if (src->kind == PORT_PACKET)
        move_packets_to_stream(src, dst); /* dst is always Moat's stream */
    else if (dst->kind == PORT_PACKET)
        move_stream_to_packets(src, dst);
    else
        move_stream_to_stream(src, dst);
}

/* ---------------------------------------------------------------- poll loop */

static short stream_events(const struct port *p)
{
    short ev = 0;
    if (!p->eof && buf_len(&p->in) < p->in.cap)
        ev |= POLLIN;
    if (buf_len(&p->out) > 0)
        ev |= POLLOUT;
    return ev;
}

/* A hung-up stream keeps reporting POLLHUP; when there is nothing left we can
 * do for it, leave it out of poll() so the loop does not spin. */
static int poll_fd(const struct port *p, short ev)
{
    return (p->hup && ev == 0) ? -1 : p->fd;
}

static void check_revents(const struct port *p, short rev)
{
    if (rev & POLLNVAL)
        shim_die(EXIT_ERR, "%s: file descriptor is not open (POLLNVAL)", p->name);
}

static bool guest_can_read_now(const struct port *guest, const struct port *moat)
{
    return guest->kind == PORT_PACKET && guest->readable && !guest->eof &&
           moat->out.cap - buf_len(&moat->out) >= FRAMED_MAX;
}

enum pump_end pump_run(struct port *guest, struct port *moat)
{
    for (;;) {
        if (shim_stop_signal)
            return END_SIGNAL;

        move(guest, moat);
        move(moat, guest);
        stream_flush(moat);
        if (guest->kind == PORT_STREAM)
            stream_flush(guest);

        if (moat->eof) {
            size_t left = buf_len(&moat->in);
            if (moat->reset)
                shim_die(EXIT_ERR, "moat socket: connection lost (reset or broken pipe)");
            if (left > 0)
                shim_die(EXIT_ERR,
                         "moat socket closed with %zu bytes of undelivered or incomplete frames",
                         left);
            return END_MOAT_EOF;
        }
        if (guest->eof)
            return END_GUEST_EOF;

        struct pollfd pfd[2];
        short gev, mev = stream_events(moat);
        if (guest->kind == PORT_STREAM) {
            gev = stream_events(guest);
        } else {
            gev = 0;
            if (moat->out.cap - buf_len(&moat->out) >= FRAMED_MAX)
                gev |= POLLIN;
            if (guest->send_blocked)
                gev |= POLLOUT;
        }
        pfd[0] = (struct pollfd){.fd = poll_fd(guest, gev), .events = gev};
        pfd[1] = (struct pollfd){.fd = poll_fd(moat, mev), .events = mev};
        /* Frames may still be waiting in the device after a full batch: do not
         * sleep then. */
        int timeout = guest_can_read_now(guest, moat) ? 0 : -1;
        int n = poll(pfd, 2, timeout);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            shim_log_errno("poll");
            exit(EXIT_ERR);
        }
        check_revents(guest, pfd[0].revents);
        check_revents(moat, pfd[1].revents);

        if (guest->kind == PORT_PACKET) {
            if (pfd[0].revents & (POLLIN | POLLERR | POLLHUP))
                guest->readable = true;
            if (pfd[0].revents & (POLLOUT | POLLERR))
                guest->send_blocked = false;
        } else {
            if (pfd[0].revents & POLLHUP)
                guest->hup = true;
            if (pfd[0].revents & (POLLIN | POLLERR | POLLHUP))
                stream_read(guest);
        }
        if (pfd[1].revents & POLLHUP)
            moat->hup = true; /* EOF itself is learnt from read() below */
        if (pfd[1].revents & (POLLIN | POLLERR | POLLHUP))
            stream_read(moat);
    }
}

/* Between two vsock connections: keep reading Moat's socket so that a closed
 * Moat is noticed, and drop its frames (the link is down); return true when a
 * guest is waiting on listen_fd, false when Moat closed. */
bool pump_wait_for_guest(struct port *moat, int listen_fd)
{
    for (;;) {
        if (shim_stop_signal)
            return false;
        const uint8_t *frame;
        size_t len;
        while (next_frame(moat, &frame, &len))
            buf_consume(&moat->in, SHIM_LEN_PREFIX + len);
        if (moat->eof)
            return false;
        struct pollfd pfd[2] = {
            {.fd = listen_fd, .events = POLLIN},
            {.fd = moat->fd, .events = POLLIN},
        };
        if (poll(pfd, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            shim_log_errno("poll");
            exit(EXIT_ERR);
        }
        check_revents(moat, pfd[1].revents);
        if (pfd[1].revents & (POLLIN | POLLERR | POLLHUP))
            stream_read(moat);
        if (pfd[0].revents & POLLIN)
            return true;
        if (pfd[0].revents & (POLLERR | POLLNVAL))
            shim_die(EXIT_ERR, "vsock listener failed");
    }
}

/* ---------------------------------------------------------------- TAP device */

static enum pkt_result tap_recv(struct port *p, uint8_t *buf, size_t cap, size_t *len)
{
    ssize_t n = read(p->fd, buf, cap);
    if (n > 0) {
        if ((size_t)n < SHIM_MIN_FRAME) {
            note_drop(p, "shorter than an Ethernet header", (size_t)n);
            return PKT_NONE;
        }
        *len = (size_t)n;
        return PKT_OK;
    }
    if (n == 0)
        return PKT_EOF;
    if (errno == EAGAIN || errno == EWOULDBLOCK)
        return PKT_AGAIN;
    if (errno == EINTR)
        return PKT_NONE;
    shim_log_errno("%s: read", p->name);
    exit(EXIT_ERR);
}

static enum pkt_result tap_send(struct port *p, const uint8_t *frame, size_t len)
{
    ssize_t n = write(p->fd, frame, len);
    if (n == (ssize_t)len)
        return PKT_OK;
    if (n >= 0) {
        note_drop(p, "short write to the device", len);
        return PKT_DROPPED;
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
        return PKT_AGAIN;
    /* The kernel refused this one frame (link down, bad frame): a NIC drops it
     * and carries on, so do we. */
    if (errno == EIO || errno == EINVAL || errno == EMSGSIZE || errno == ENOBUFS ||
        errno == ENOMEM) {
        note_drop(p, strerror(errno), len);
        return PKT_DROPPED;
    }
    shim_log_errno("%s: write", p->name);
    exit(EXIT_ERR);
}

const struct packet_ops tap_ops = {.recv = tap_recv, .send = tap_send};

/* ---------------------------------------------------------------- unix datagram */

static void forget_peer(struct port *p)
{
    struct sockaddr sa = {.sa_family = AF_UNSPEC};
    p->peer_known = false;
    /* Dissolve the association so that a new peer may send to us. */
    if (connect(p->fd, &sa, sizeof(sa)) < 0)
        shim_log_errno("%s: disconnect", p->name);
}

static enum pkt_result ug_recv(struct port *p, uint8_t *buf, size_t cap, size_t *len)
{
    struct sockaddr_un from;
    socklen_t flen = sizeof(from);
    memset(&from, 0, sizeof(from));
    ssize_t n = recvfrom(p->fd, buf, cap, MSG_TRUNC | MSG_DONTWAIT, (struct sockaddr *)&from,
                         &flen);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return PKT_AGAIN;
        if (errno == EINTR || errno == ECONNREFUSED)
            return PKT_NONE;
        shim_log_errno("%s: recv", p->name);
        exit(EXIT_ERR);
    }
    if (!p->peer_known) {
        size_t path_len = flen > offsetof(struct sockaddr_un, sun_path)
                              ? flen - offsetof(struct sockaddr_un, sun_path)
                              : 0;
        if (path_len == 0) {
            note_drop(p, "sender has no address (unbound socket), replies impossible",
                      (size_t)n);
            return PKT_NONE;
        }
        /* Connecting makes poll(POLLOUT) wait for room in the peer's queue
         * and filters out datagrams from anyone else. */
        if (connect(p->fd, (struct sockaddr *)&from, flen) < 0) {
            shim_log_errno("%s: cannot associate with the first sender", p->name);
            return PKT_NONE;
        }
        p->peer_known = true;
        const char *path = from.sun_path;
        const char *at = "";
        if (path[0] == '\0') { /* abstract address */
            path++;
            path_len--;
            at = "@";
        }
        shim_log("%s: peer is %s%.*s", p->name, at, (int)path_len, path);
    }
    if ((size_t)n > cap) {
        note_drop(p, "datagram larger than the maximum frame", (size_t)n);
        return PKT_NONE;
    }
    if (n == 4 && memcmp(buf, "VFKT", 4) == 0)
        return PKT_NONE; /* vfkit's hello: not a frame */
    if ((size_t)n < SHIM_MIN_FRAME) {
        note_drop(p, "shorter than an Ethernet header", (size_t)n);
        return PKT_NONE;
    }
    *len = (size_t)n;
    return PKT_OK;
}

static enum pkt_result ug_send(struct port *p, const uint8_t *frame, size_t len)
{
    if (!p->peer_known) {
        note_drop(p, "no peer yet (nothing received on the datagram socket)", len);
        return PKT_DROPPED;
    }
    ssize_t n = send(p->fd, frame, len, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n == (ssize_t)len)
        return PKT_OK;
    if (n >= 0) {
        note_drop(p, "short datagram write", len);
        return PKT_DROPPED;
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
        return PKT_AGAIN;
    if (errno == ECONNREFUSED || errno == ENOTCONN || errno == ECONNRESET || errno == ENOENT ||
        errno == EPIPE) {
        shim_log("%s: peer went away (%s); waiting for a new one", p->name, strerror(errno));
        forget_peer(p);
        return PKT_DROPPED;
    }
    if (errno == EMSGSIZE || errno == ENOBUFS || errno == ENOMEM) {
        note_drop(p, strerror(errno), len);
        return PKT_DROPPED;
    }
    shim_log_errno("%s: send", p->name);
    exit(EXIT_ERR);
}

const struct packet_ops unixgram_ops = {.recv = ug_recv, .send = ug_send};
