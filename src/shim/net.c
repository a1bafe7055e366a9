/* net.c: opening things — Moat's socket, network namespaces, the TAP device,
 * the unix datagram socket and the vsock listener. Every failure is fatal and
 * says what was being opened. */
#define _GNU_SOURCE
#include "shim.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <linux/vm_sockets.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

static void set_nonblocking(int fd, const char *what)
{
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) {
        shim_log_errno("%s: cannot make non-blocking", what);
        exit(EXIT_ERR);
    }
}

static int fill_unix_addr(struct sockaddr_un *sa, const char *path)
{
    size_t n = strlen(path);
    memset(sa, 0, sizeof(*sa));
    sa->sun_family = AF_UNIX;
    if (n == 0 || n >= sizeof(sa->sun_path))
        return -1;
    memcpy(sa->sun_path, path, n + 1);
    return 0;
}

static int connect_unix(const char *path, const char *url)
{
    struct sockaddr_un sa;
    if (fill_unix_addr(&sa, path) < 0)
        shim_die(EXIT_USAGE, "--connect %s: socket path must be 1..%zu bytes", url,
                 sizeof(sa.sun_path) - 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        shim_log_errno("socket(AF_UNIX)");
        exit(EXIT_ERR);
    }
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        shim_log_errno("cannot connect to %s", url);
        exit(EXIT_ERR);
    }
    return fd;
}

static int connect_tcp(const char *hostport, const char *url)
{
    /* HOST:PORT, HOST may be [v6]. Copy into a bounded buffer to split it. */
    char host[256];
    const char *colon = strrchr(hostport, ':');
    if (!colon || colon == hostport || colon[1] == '\0')
        shim_die(EXIT_USAGE, "--connect %s: expected tcp://HOST:PORT", url);
    size_t hlen = (size_t)(colon - hostport);
    const char *h = hostport;
    if (hlen >= 2 && h[0] == '[' && h[hlen - 1] == ']') {
        h++;
        hlen -= 2;
    }
    if (hlen == 0 || hlen >= sizeof(host))
        shim_die(EXIT_USAGE, "--connect %s: bad host", url);
    memcpy(host, h, hlen);
    host[hlen] = '\0';

    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    int rc = getaddrinfo(host, colon + 1, &hints, &res);
    if (rc != 0)
        shim_die(EXIT_ERR, "--connect %s: %s", url, gai_strerror(rc));
    int fd = -1, last_errno = 0;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            last_errno = errno;
            continue;
        }
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
            break;
        last_errno = errno;
        if (close(fd) < 0)
            shim_log_errno("close");
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0) {
        errno = last_errno;
        shim_log_errno("cannot connect to %s", url);
        exit(EXIT_ERR);
    }
    int one = 1;
    if (setsockopt(fd, IPPROTO_TCP, 1 /* TCP_NODELAY */, &one, sizeof(one)) < 0)
        shim_log_errno("warning: TCP_NODELAY");
    return fd;
}

int net_connect_url(const char *url)
{
    int fd;
    if (strncmp(url, "unix://", 7) == 0)
        fd = connect_unix(url + 7, url);
    else if (strncmp(url, "tcp://", 6) == 0)
        fd = connect_tcp(url + 6, url);
    else
        shim_die(EXIT_USAGE, "--connect %s: expected unix:///path or tcp://HOST:PORT", url);
    set_nonblocking(fd, "moat socket");
    return fd;
}

void net_enter_netns(const char *name_or_path)
{
    char path[PATH_MAX];
    int n;
    if (strchr(name_or_path, '/'))
        n = snprintf(path, sizeof(path), "%s", name_or_path);
    else
        n = snprintf(path, sizeof(path), "/run/netns/%s", name_or_path);
    if (n < 0 || (size_t)n >= sizeof(path))
        shim_die(EXIT_USAGE, "--netns %s: path too long", name_or_path);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        shim_log_errno("--netns: cannot open %s", path);
        exit(EXIT_ERR);
    }
    if (setns(fd, CLONE_NEWNET) < 0) {
        shim_log_errno("--netns: setns(%s)", path);
        exit(EXIT_ERR);
    }
    if (close(fd) < 0)
        shim_log_errno("close(%s)", path);
}

int net_open_tap(const char *name, int mtu, bool vnet_hdr, bool offload)
{
    struct ifreq ifr;
    if (strlen(name) == 0 || strlen(name) >= IFNAMSIZ)
        shim_die(EXIT_USAGE, "--dev %s: name must be 1..%d bytes", name, IFNAMSIZ - 1);

    int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) {
        shim_log_errno("cannot open /dev/net/tun");
        exit(EXIT_ERR);
    }
    memset(&ifr, 0, sizeof(ifr));
    ifr.ifr_flags = IFF_TAP | IFF_NO_PI | (vnet_hdr ? IFF_VNET_HDR : 0);
    memcpy(ifr.ifr_name, name, strlen(name) + 1);
    if (ioctl(fd, TUNSETIFF, &ifr) < 0) {
        shim_log_errno("TUNSETIFF %s (create or attach TAP)", name);
        exit(EXIT_ERR);
    }
    /* The device's features are what the guest's kernel may hand us: with
     * checksum offload and TSO4 its TCP leaves unsegmented (up to 64 KiB) with
     * the checksum left to complete (VIRTIO_NET_HDR_F_NEEDS_CSUM). Without
     * this ioctl it segments and checksums every frame itself. */
    if (offload && ioctl(fd, TUNSETOFFLOAD, (unsigned long)(TUN_F_CSUM | TUN_F_TSO4)) < 0) {
        shim_log_errno("TUNSETOFFLOAD %s (checksum + TSO4)", name);
        exit(EXIT_ERR);
    }

    /* Interface ioctls need a socket of the current (possibly new) namespace. */
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) {
        shim_log_errno("socket(AF_INET) for interface ioctls");
        exit(EXIT_ERR);
    }
    if (mtu > 0) {
        struct ifreq m;
        memset(&m, 0, sizeof(m));
        memcpy(m.ifr_name, ifr.ifr_name, IFNAMSIZ);
        m.ifr_mtu = mtu;
        if (ioctl(s, SIOCSIFMTU, &m) < 0) {
            shim_log_errno("SIOCSIFMTU %s mtu %d", name, mtu);
            exit(EXIT_ERR);
        }
    }
    struct ifreq f;
    memset(&f, 0, sizeof(f));
    memcpy(f.ifr_name, ifr.ifr_name, IFNAMSIZ);
    if (ioctl(s, SIOCGIFFLAGS, &f) < 0) {
        shim_log_errno("SIOCGIFFLAGS %s", name);
        exit(EXIT_ERR);
    }
    f.ifr_flags |= IFF_UP;
    if (ioctl(s, SIOCSIFFLAGS, &f) < 0) {
        shim_log_errno("SIOCSIFFLAGS %s up", name);
        exit(EXIT_ERR);
    }
    if (close(s) < 0)
        shim_log_errno("close");
    return fd;
}

int net_bind_unixgram(const char *path)
{
    struct sockaddr_un sa;
    if (fill_unix_addr(&sa, path) < 0)
        shim_die(EXIT_USAGE, "--listen %s: socket path must be 1..%zu bytes", path,
                 sizeof(sa.sun_path) - 1);
    /* Remove a stale socket from an earlier run, but never a regular file or
     * directory that happens to have that name. */
    struct stat st;
    if (lstat(path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode))
            shim_die(EXIT_ERR, "--listen %s: exists and is not a socket", path);
        if (unlink(path) < 0) {
            shim_log_errno("--listen: cannot remove stale %s", path);
            exit(EXIT_ERR);
        }
    } else if (errno != ENOENT) {
        shim_log_errno("--listen: lstat %s", path);
        exit(EXIT_ERR);
    }
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        shim_log_errno("socket(AF_UNIX, SOCK_DGRAM)");
        exit(EXIT_ERR);
    }
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        shim_log_errno("--listen: bind %s", path);
        exit(EXIT_ERR);
    }
    /* Room for a few large frames in each direction. */
    int sz = 4 * SHIM_MAX_FRAME;
    if (setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz)) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof(sz)) < 0)
        shim_log_errno("warning: cannot size unixgram socket buffers");
    return fd;
}

int net_listen_vsock(unsigned port)
{
    int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        shim_log_errno("socket(AF_VSOCK) failed (no vsock support in this kernel or VM?)");
        exit(EXIT_ERR);
    }
    struct sockaddr_vm sa;
    memset(&sa, 0, sizeof(sa));
    sa.svm_family = AF_VSOCK;
    sa.svm_cid = VMADDR_CID_ANY;
    sa.svm_port = port;
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        shim_log_errno("vsock: bind port %u", port);
        exit(EXIT_ERR);
    }
    if (listen(fd, 1) < 0) {
        shim_log_errno("vsock: listen port %u", port);
        exit(EXIT_ERR);
    }
    return fd;
}

int net_open_ping(void)
{
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, IPPROTO_ICMP);
    if (fd < 0) {
        int err = errno;
        char range[64] = "?";
        FILE *f = fopen("/proc/sys/net/ipv4/ping_group_range", "r");
        if (f) {
            if (!fgets(range, sizeof range, f))
                strcpy(range, "?");
            fclose(f);
            range[strcspn(range, "\n")] = '\0';
        }
        for (char *c = range; *c; c++)
            if (*c == '\t')
                *c = ' ';
        if (err == EACCES || err == EPERM)
            shim_die(EXIT_ERR,
                     "icmp socket: the kernel refused an ICMP ping socket (%s): group %u is outside "
                     "net.ipv4.ping_group_range (%s); allow it (sysctl -w net.ipv4.ping_group_range=\"%u %u\") "
                     "or run without ICMP echo (ping beyond the gateway is then dropped and counted)",
                     strerror(err), (unsigned)getegid(), range, (unsigned)getegid(), (unsigned)getegid());
        shim_die(EXIT_ERR, "icmp socket: socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP): %s", strerror(err));
    }
    /* Bound now, so that the kernel lists it in /proc/net/icmp (Moat checks
     * --icmp-fd there) and its identifier is fixed. */
    struct sockaddr_in any = {.sin_family = AF_INET, .sin_port = 0, .sin_addr = {.s_addr = htonl(INADDR_ANY)}};
    if (bind(fd, (struct sockaddr *)&any, sizeof any) < 0)
        shim_die(EXIT_ERR, "icmp socket: bind: %s", strerror(errno));
    return fd;
}
