/* moat-shim: bridge a TAP device, a unix datagram socket or an AF_VSOCK
 * stream to Moat's unix stream socket (QEMU stream framing: u32 big-endian
 * length, then the Ethernet frame). Node cannot open those three; this can.
 *
 * What it does not do: no multiqueue, no reconnecting to Moat (Moat closing
 * ends the shim), one guest at a time; virtio-net headers (offloads) and the
 * ICMP ping socket only with tap --exec (the relay carries plain frames). */
#define _GNU_SOURCE
#include "shim.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static const char usage_text[] =
    "usage:\n"
    "  moat-shim tap --dev NAME [--netns NAME|PATH] [--mtu N] --connect URL\n"
    "  moat-shim tap --dev NAME [--netns NAME|PATH] [--mtu N] [--vnet-hdr [--offload]] [--icmp] --exec COMMAND [ARG...]\n"
    "  moat-shim unixgram --listen PATH --connect URL\n"
    "  moat-shim vsock --port N --connect URL\n"
    "  moat-shim icmp --exec COMMAND [ARG...]\n"
    "  moat-shim --help\n"
    "\n"
    "Moves Ethernet frames between a guest-side device and Moat's stream socket.\n"
    "On Moat's socket every frame is preceded by its length as a 4-byte\n"
    "big-endian integer (QEMU -netdev stream framing).\n"
    "\n"
    "modes:\n"
    "  tap       Create (or attach to) TAP device NAME via /dev/net/tun\n"
    "            (IFF_TAP|IFF_NO_PI), bring it up and pump its frames.\n"
    "              --netns NAME|PATH  create the device inside network namespace\n"
    "                                 /run/netns/NAME (or the namespace file PATH);\n"
    "                                 Moat is connected first, from the namespace\n"
    "                                 moat-shim was started in\n"
    "              --mtu N            set the device MTU (68..65535)\n"
    "              --exec COMMAND...  instead of relaying, hand the TAP to COMMAND:\n"
    "                                 the shim returns to its own namespace, puts\n"
    "                                 the device on descriptor 3 and replaces\n"
    "                                 itself with COMMAND (every argument after\n"
    "                                 --exec), e.g. --exec moat serve --tap-fd 3.\n"
    "                                 No process sits between the TAP and Moat:\n"
    "                                 one hop less per frame.\n"
    "              --vnet-hdr         with --exec: open the TAP with IFF_VNET_HDR\n"
    "                                 (a 10-byte virtio-net header before every\n"
    "                                 frame), for moat serve --tap-vnet-hdr, which\n"
    "                                 then sends TCP in segments of up to 64 KiB\n"
    "                                 (GSO) whatever the MTU.\n"
    "              --offload          with --vnet-hdr: TUNSETOFFLOAD (checksum and\n"
    "                                 TSO4), so the guest's TCP reaches Moat in\n"
    "                                 segments of up to 64 KiB with the checksum\n"
    "                                 left to complete (moat serve --tap-offload).\n"
    "              --icmp             with --exec: also open an unprivileged ICMP\n"
    "                                 echo socket (SOCK_DGRAM, IPPROTO_ICMP) in the\n"
    "                                 shim's own namespace and put it on descriptor\n"
    "                                 4, for moat serve --icmp-fd 4 (guest ping\n"
    "                                 beyond the gateway). Needs the shim's group\n"
    "                                 inside net.ipv4.ping_group_range; exits\n"
    "                                 with a message naming it otherwise.\n"
    "  unixgram  Bind a unix datagram socket at PATH (a stale socket file is\n"
    "            replaced): one frame per datagram, as vfkit, libkrun and QEMU\n"
    "            -netdev dgram use. Frames from Moat go to the first sender; a\n"
    "            4-byte \"VFKT\" hello datagram is accepted and discarded.\n"
    "  vsock     Listen on AF_VSOCK port N (any CID) and serve one connection at\n"
    "            a time with the same 4-byte framing on both sides.\n"
    "  icmp      Open an unprivileged ICMP echo socket on descriptor 4 (as\n"
    "            tap --icmp does) and replace itself with COMMAND: for Moat\n"
    "            behind any other link (the relay, QEMU -netdev stream), e.g.\n"
    "            --exec moat serve --listen-qemu unix:///tmp/moat.sock --icmp-fd 4.\n"
    "\n"
    "URL: unix:///path/to/socket or tcp://HOST:PORT\n"
    "\n"
    "Frames must be 14..65549 bytes (an Ethernet header .. MTU 65535 plus its\n"
    "header); any other length on a framed stream is a protocol error.\n"
    "\n"
    "exit status: 0 when either side closes cleanly (or on SIGINT/SIGTERM),\n"
    "             1 on an I/O or protocol error, 2 on a usage error\n";

/* ---------------------------------------------------------------- logging */

static void vlog(const char *fmt, va_list ap, const char *suffix)
{
    /* One fprintf per line keeps lines whole when stderr is shared. */
    char line[1024];
    int n = vsnprintf(line, sizeof(line), fmt, ap);
    if (n < 0)
        return;
    fprintf(stderr, "moat-shim: %s%s\n", line, suffix);
}

void shim_log(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vlog(fmt, ap, "");
    va_end(ap);
}

void shim_log_errno(const char *fmt, ...)
{
    char suffix[256];
    snprintf(suffix, sizeof(suffix), ": %s", strerror(errno));
    va_list ap;
    va_start(ap, fmt);
    vlog(fmt, ap, suffix);
    va_end(ap);
}

void shim_die(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vlog(fmt, ap, "");
    va_end(ap);
    exit(code);
}

static _Noreturn void usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vlog(fmt, ap, "");
    va_end(ap);
    fputs("run 'moat-shim --help' for usage\n", stderr);
    exit(EXIT_USAGE);
}

/* ---------------------------------------------------------------- arguments */

struct args {
    const char *mode;
    const char *dev, *netns, *connect, *listen;
    long mtu;  /* 0: leave as is */
    long port; /* -1: not given */
    char **exec_argv; /* tap --exec: the command (NULL-terminated), else NULL */
    bool vnet_hdr;    /* tap --exec --vnet-hdr: open the TAP with IFF_VNET_HDR */
    bool offload;     /* tap --exec --vnet-hdr --offload: TUNSETOFFLOAD csum + TSO4 */
    bool icmp;        /* tap --exec --icmp: an ICMP ping socket on descriptor 4 */
};

static long parse_number(const char *opt, const char *s, long lo, long hi)
{
    char *end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < lo || v > hi)
        usage_error("%s %s: expected a number in %ld..%ld", opt, s, lo, hi);
    return v;
}

static void parse_args(int argc, char **argv, struct args *a)
{
    memset(a, 0, sizeof(*a));
    a->port = -1;
    if (argc < 2)
        usage_error("missing mode (tap, unixgram or vsock)");
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        fputs(usage_text, stdout);
        exit(EXIT_CLEAN);
    }
    a->mode = argv[1];
    if (strcmp(a->mode, "tap") != 0 && strcmp(a->mode, "unixgram") != 0 &&
        strcmp(a->mode, "vsock") != 0 && strcmp(a->mode, "icmp") != 0)
        usage_error("unknown mode '%s' (expected tap, unixgram, vsock or icmp)", a->mode);

    for (int i = 2; i < argc; i++) {
        const char *opt = argv[i];
        if (strcmp(opt, "--exec") == 0) {
            /* Everything after --exec belongs to the command. */
            if (i + 1 >= argc)
                usage_error("--exec needs a command");
            a->exec_argv = &argv[i + 1];
            break;
        }
        if (strcmp(opt, "--help") == 0 || strcmp(opt, "-h") == 0) {
            fputs(usage_text, stdout);
            exit(EXIT_CLEAN);
        }
        if (strcmp(opt, "--vnet-hdr") == 0) {
            a->vnet_hdr = true;
            continue;
        }
        if (strcmp(opt, "--offload") == 0) {
            a->offload = true;
            continue;
        }
        if (strcmp(opt, "--icmp") == 0) {
            a->icmp = true;
            continue;
        }
        /* Accept both "--opt value" and "--opt=value". */
        char name[32];
        const char *val = NULL;
        const char *eq = strchr(opt, '=');
        if (eq && (size_t)(eq - opt) < sizeof(name)) {
            memcpy(name, opt, (size_t)(eq - opt));
            name[eq - opt] = '\0';
            val = eq + 1;
        } else {
            if (strlen(opt) >= sizeof(name))
                usage_error("unknown option '%s'", opt);
            memcpy(name, opt, strlen(opt) + 1);
            if (i + 1 >= argc)
                usage_error("option %s needs a value", opt);
            val = argv[++i];
        }
        if (strcmp(name, "--dev") == 0)
            a->dev = val;
        else if (strcmp(name, "--netns") == 0)
            a->netns = val;
        else if (strcmp(name, "--connect") == 0)
            a->connect = val;
        else if (strcmp(name, "--listen") == 0)
            a->listen = val;
        else if (strcmp(name, "--mtu") == 0)
            a->mtu = parse_number(name, val, 68, 65535);
        else if (strcmp(name, "--port") == 0)
            a->port = parse_number(name, val, 0, 0xFFFFFFFEL);
        else
            usage_error("unknown option '%s'", name);
    }

    bool is_tap = strcmp(a->mode, "tap") == 0;
    if (strcmp(a->mode, "icmp") == 0) {
        if (!a->exec_argv)
            usage_error("icmp: --exec COMMAND is required");
        if (a->dev || a->netns || a->mtu || a->connect || a->listen || a->port >= 0 || a->vnet_hdr || a->offload || a->icmp)
            usage_error("icmp: takes only --exec COMMAND");
        return;
    }
    if (a->exec_argv && !is_tap)
        usage_error("%s: --exec belongs to tap mode", a->mode);
    if (a->exec_argv && a->connect)
        usage_error("tap: give either --connect URL (relay) or --exec COMMAND (hand over the TAP), not both");
    if (a->vnet_hdr && !a->exec_argv)
        usage_error("--vnet-hdr needs --exec (the relay speaks plain frames)");
    if (a->icmp && !a->exec_argv)
        usage_error("--icmp needs --exec (the relay carries Ethernet frames only; for Moat behind the relay start it with moat-shim icmp --exec)");
    if (a->offload && !a->vnet_hdr)
        usage_error("--offload needs --vnet-hdr (offloaded frames are described by the virtio-net header)");
    if (!a->connect && !a->exec_argv)
        usage_error("%s: --connect URL is required%s", a->mode, is_tap ? " (or --exec COMMAND)" : "");
    bool is_ug = strcmp(a->mode, "unixgram") == 0;
    bool is_vsock = strcmp(a->mode, "vsock") == 0;
    if (is_tap && !a->dev)
        usage_error("tap: --dev NAME is required");
    if (is_ug && !a->listen)
        usage_error("unixgram: --listen PATH is required");
    if (is_vsock && a->port < 0)
        usage_error("vsock: --port N is required");
    if (!is_tap && (a->dev || a->netns || a->mtu))
        usage_error("%s: --dev, --netns and --mtu belong to tap mode", a->mode);
    if (!is_ug && a->listen)
        usage_error("%s: --listen belongs to unixgram mode", a->mode);
    if (!is_vsock && a->port >= 0)
        usage_error("%s: --port belongs to vsock mode", a->mode);
}

/* ---------------------------------------------------------------- signals */

static void on_stop(int sig) { shim_stop_signal = sig; }

static void install_signals(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = SIG_IGN;
    if (sigaction(SIGPIPE, &sa, NULL) < 0)
        shim_die(EXIT_ERR, "sigaction(SIGPIPE) failed");
    /* No SA_RESTART: poll() must return EINTR so the loop sees the flag. */
    sa.sa_handler = on_stop;
    if (sigemptyset(&sa.sa_mask) < 0 || sigaction(SIGINT, &sa, NULL) < 0 ||
        sigaction(SIGTERM, &sa, NULL) < 0)
        shim_die(EXIT_ERR, "sigaction(SIGINT/SIGTERM) failed");
}

static int report_end(enum pump_end end, const char *guest_name)
{
    switch (end) {
    case END_MOAT_EOF:
        shim_log("moat socket closed by peer (EOF); exiting");
        return EXIT_CLEAN;
    case END_GUEST_EOF:
        shim_log("%s closed (EOF); exiting", guest_name);
        return EXIT_CLEAN;
    case END_SIGNAL:
        shim_log("stopped by signal %d", (int)shim_stop_signal);
        return EXIT_CLEAN;
    }
    return EXIT_ERR;
}

/* ---------------------------------------------------------------- modes */

static int run_tap(const struct args *a)
{
    /* Connect first, from the namespace we were started in: a tcp:// URL then
     * means the host's view of the address (unix paths work either way). */
    int moat_fd = net_connect_url(a->connect);
    if (a->netns)
        net_enter_netns(a->netns);
    int tap_fd = net_open_tap(a->dev, (int)a->mtu, false, false);
    char mtu_text[24] = "unchanged";
    if (a->mtu)
        snprintf(mtu_text, sizeof mtu_text, "%ld", a->mtu);
    shim_log("ready: tap %s (netns %s, mtu %s) <-> %s", a->dev, a->netns ? a->netns : "-", mtu_text,
             a->connect);

    struct port guest, moat;
    port_init_packet(&guest, "tap device", tap_fd, &tap_ops);
    port_init_stream(&moat, "moat socket", moat_fd);
    int code = report_end(pump_run(&guest, &moat), guest.name);
    port_free(&moat);
    return code;
}

/* The descriptor the TAP has in the --exec command. 0..2 are stdio. */
#define EXEC_TAP_FD 3
/* The descriptor the --icmp ping socket has in the --exec command. */
#define EXEC_ICMP_FD 4

/* Put FD on descriptor TARGET for the exec'd command (close-on-exec cleared). */
static void hand_over(int fd, int target, const char *what)
{
    if (fd != target) {
        if (dup2(fd, target) < 0)
            shim_die(EXIT_ERR, "dup2(%s, %d): %s", what, target, strerror(errno));
        close(fd);
    } else if (fcntl(fd, F_SETFD, 0) < 0) {
        shim_die(EXIT_ERR, "fcntl(%s, F_SETFD): %s", what, strerror(errno));
    }
}

/* tap --exec: create the TAP (inside --netns if given), go back to our own
 * namespace so that COMMAND's sockets are the host's, put the TAP on fd 3 and
 * exec. Never returns. */
static _Noreturn void exec_with_tap(const struct args *a)
{
    int own_ns = -1;
    if (a->netns) {
        own_ns = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
        if (own_ns < 0)
            shim_die(EXIT_ERR, "cannot open /proc/self/ns/net: %s", strerror(errno));
        net_enter_netns(a->netns);
    }
    int tap_fd = net_open_tap(a->dev, (int)a->mtu, a->vnet_hdr, a->offload);
    if (own_ns >= 0) {
        if (setns(own_ns, CLONE_NEWNET) < 0)
            shim_die(EXIT_ERR, "setns back to the shim's own namespace: %s", strerror(errno));
        close(own_ns);
    }
    /* dup2 onto 3 (clears close-on-exec); when it already is 3, clear it by hand. */
    hand_over(tap_fd, EXEC_TAP_FD, "tap");
    /* The ping socket is opened in the shim's own namespace (Moat's): echo
     * leaves from the host like every other flow. Descriptor 4 may be free
     * or anything inherited; dup2 replaces it either way. */
    if (a->icmp)
        hand_over(net_open_ping(), EXEC_ICMP_FD, "icmp socket");
    char mtu_text[24] = "unchanged";
    if (a->mtu)
        snprintf(mtu_text, sizeof mtu_text, "%ld", a->mtu);
    shim_log("ready: tap %s (netns %s, mtu %s) on fd %d%s; exec %s", a->dev, a->netns ? a->netns : "-",
             mtu_text, EXEC_TAP_FD, a->icmp ? ", icmp socket on fd 4" : "", a->exec_argv[0]);
    execvp(a->exec_argv[0], a->exec_argv);
    shim_die(EXIT_ERR, "--exec %s: %s", a->exec_argv[0], strerror(errno));
}

/* icmp --exec: the ping socket on descriptor 4, then exec. Never returns. */
static _Noreturn void exec_with_ping(const struct args *a)
{
    hand_over(net_open_ping(), EXEC_ICMP_FD, "icmp socket");
    shim_log("ready: icmp socket on fd %d; exec %s", EXEC_ICMP_FD, a->exec_argv[0]);
    execvp(a->exec_argv[0], a->exec_argv);
    shim_die(EXIT_ERR, "--exec %s: %s", a->exec_argv[0], strerror(errno));
}

static int run_unixgram(const struct args *a)
{
    int moat_fd = net_connect_url(a->connect);
    int dg_fd = net_bind_unixgram(a->listen);
    shim_log("ready: unixgram %s <-> %s", a->listen, a->connect);

    struct port guest, moat;
    port_init_packet(&guest, "unixgram socket", dg_fd, &unixgram_ops);
    port_init_stream(&moat, "moat socket", moat_fd);
    int code = report_end(pump_run(&guest, &moat), guest.name);
    port_free(&moat);
    /* Leave no socket file behind on a clean exit. */
    if (unlink(a->listen) < 0 && errno != ENOENT)
        shim_log_errno("cannot remove %s", a->listen);
    return code;
}

static int run_vsock(const struct args *a)
{
    int moat_fd = net_connect_url(a->connect);
    int listen_fd = net_listen_vsock((unsigned)a->port);
    shim_log("ready: vsock port %ld <-> %s", a->port, a->connect);

    struct port moat;
    port_init_stream(&moat, "moat socket", moat_fd);
    for (;;) {
        if (!pump_wait_for_guest(&moat, listen_fd)) {
            enum pump_end end = shim_stop_signal ? END_SIGNAL : END_MOAT_EOF;
            port_free(&moat);
            return report_end(end, "vsock peer");
        }
        int cfd = accept4(listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (cfd < 0) {
            if (errno == EINTR || errno == EAGAIN || errno == ECONNABORTED)
                continue;
            shim_log_errno("vsock: accept");
            return EXIT_ERR;
        }
        shim_log("vsock: guest connected");
        struct port guest;
        port_init_stream(&guest, "vsock peer", cfd);
        enum pump_end end = pump_run(&guest, &moat);
        port_free(&guest);
        if (close(cfd) < 0)
            shim_log_errno("close vsock connection");
        if (end != END_GUEST_EOF) {
            port_free(&moat);
            return report_end(end, "vsock peer");
        }
        /* The guest went away; a partial frame it left is gone with it, and
         * Moat's stream stays in step because only whole frames were moved. */
        shim_log("vsock: guest disconnected; waiting for the next connection");
    }
}

int main(int argc, char **argv)
{
    struct args a;
    parse_args(argc, argv, &a);
    install_signals();
    if (strcmp(a.mode, "tap") == 0 && a.exec_argv)
        exec_with_tap(&a);
    if (strcmp(a.mode, "icmp") == 0)
        exec_with_ping(&a);
    if (strcmp(a.mode, "tap") == 0)
        return run_tap(&a);
    if (strcmp(a.mode, "unixgram") == 0)
        return run_unixgram(&a);
    return run_vsock(&a);
}
