/* vsock-probe: the "guest" on the far side of `moat-shim vsock`, for
 * test/vm/vm-vsock.test.ts. Connects to AF_VSOCK CID:PORT, sends one ARP
 * request for GATEWAY (from 02:00:00:00:00:0N, sender GUEST) in QEMU stream
 * framing (u32 big-endian length, then the frame), and reads framed frames
 * until the ARP reply from GATEWAY arrives. Prints
 *   "VSOCK-ARP-REPLY aa:bb:cc:dd:ee:ff"
 * and exits 0, or prints "VSOCK-FAIL <why>" and exits 1 (10 s bound).
 * Built static by the test (cc -static) and run inside the VM.
 *
 * usage: vsock-probe CID PORT N */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/vm_sockets.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int fail(const char *why)
{
    printf("VSOCK-FAIL %s (%s)\n", why, strerror(errno));
    return 1;
}

int main(int argc, char **argv)
{
    if (argc != 4)
        return fprintf(stderr, "usage: vsock-probe CID PORT N\n"), 2;
    int fd = socket(AF_VSOCK, SOCK_STREAM, 0);
    if (fd < 0)
        return fail("socket(AF_VSOCK)");
    struct sockaddr_vm sa = {.svm_family = AF_VSOCK, .svm_cid = (unsigned)atoi(argv[1]), .svm_port = (unsigned)atoi(argv[2])};
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0)
        return fail("connect");

    uint8_t mac[6] = {0x02, 0, 0, 0, 0, (uint8_t)atoi(argv[3])};
    uint8_t out[4 + 42] = {0};
    uint8_t *f = out + 4;
    out[3] = 42; /* length prefix */
    memset(f, 0xff, 6);                 /* broadcast */
    memcpy(f + 6, mac, 6);
    f[12] = 0x08, f[13] = 0x06;         /* ARP */
    f[14] = 0, f[15] = 1;               /* Ethernet */
    f[16] = 0x08, f[17] = 0;            /* IPv4 */
    f[18] = 6, f[19] = 4, f[20] = 0, f[21] = 1; /* request */
    memcpy(f + 22, mac, 6);
    uint8_t guest[4] = {192, 168, 127, 2}, gateway[4] = {192, 168, 127, 1};
    memcpy(f + 28, guest, 4);
    memcpy(f + 38, gateway, 4);
    if (write(fd, out, sizeof out) != (ssize_t)sizeof out)
        return fail("write");

    static uint8_t buf[1 << 17];
    size_t have = 0;
    time_t end = time(NULL) + 10;
    while (time(NULL) < end) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, 500) <= 0)
            continue;
        ssize_t n = read(fd, buf + have, sizeof buf - have);
        if (n <= 0)
            return fail(n == 0 ? "EOF before the ARP reply" : "read");
        have += (size_t)n;
        for (;;) {
            if (have < 4)
                break;
            uint32_t len = (uint32_t)buf[0] << 24 | (uint32_t)buf[1] << 16 | (uint32_t)buf[2] << 8 | buf[3];
            if (len > sizeof buf - 4)
                return fail("frame length out of range");
            if (have < 4 + len)
                break;
            const uint8_t *r = buf + 4;
            if (len >= 42 && r[12] == 0x08 && r[13] == 0x06 && r[21] == 2 && memcmp(r + 28, gateway, 4) == 0 &&
                memcmp(r + 32, mac, 6) == 0) {
                printf("VSOCK-ARP-REPLY %02x:%02x:%02x:%02x:%02x:%02x\n", r[22], r[23], r[24], r[25], r[26], r[27]);
                close(fd);
                return 0;
            }
            memmove(buf, buf + 4 + len, have - 4 - len);
            have -= 4 + len;
        }
    }
    errno = ETIMEDOUT;
    return fail("no ARP reply within 10 s");
}
