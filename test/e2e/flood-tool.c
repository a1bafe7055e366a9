/*
 * flood-tool: a small raw-socket packet generator for test/e2e/flood.test.ts
 * (issue 9). Compiled at test time with cc; run only inside the guest network
 * namespace the test created, towards Moat's gateway address (the test checks
 * that the destination routes via the namespace's TAP before starting it).
 *
 *   flood-tool syn  DST SRC_BASE NSRC DPORTS COUNT PPS
 *       TCP SYNs to DST on the comma-separated DPORTS, random source ports and
 *       sequence numbers, source addresses SRC_BASE .. SRC_BASE+NSRC-1 (the
 *       first is the guest's own address; the others are unanswered
 *       neighbours, so Moat's SYN-ACKs to them go nowhere).
 *   flood-tool frag DST SRC COUNT PPS
 *       IPv4 fragments of UDP datagrams that never complete: random IDs,
 *       offsets and lengths, one in eight overlapping a previous one, one in
 *       eight a tiny 8-byte piece, one in sixteen ending past 65535 bytes.
 *
 * Prints "sent N" on exit. Checksums are right, so that the frames reach the
 * stack's deep layers instead of dying at the first parser.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static uint32_t rng_state = 0x9e3779b9u;
static uint32_t rnd(void) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 17;
  rng_state ^= rng_state << 5;
  return rng_state;
}

static uint16_t csum(const void *data, size_t len, uint32_t sum) {
  const uint8_t *p = data;
  while (len > 1) {
    sum += (uint32_t)(p[0] << 8 | p[1]);
    p += 2;
    len -= 2;
  }
  if (len) sum += (uint32_t)(p[0] << 8);
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  return (uint16_t)~sum;
}

static void put16(uint8_t *p, uint16_t v) { p[0] = v >> 8; p[1] = v & 0xff; }
static void put32(uint8_t *p, uint32_t v) { p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v; }

static void ip_header(uint8_t *h, uint32_t src, uint32_t dst, uint8_t proto, uint16_t total, uint16_t id, uint16_t frag) {
  memset(h, 0, 20);
  h[0] = 0x45;
  put16(h + 2, total);
  put16(h + 4, id);
  put16(h + 6, frag);
  h[8] = 64;
  h[9] = proto;
  put32(h + 12, src);
  put32(h + 16, dst);
  put16(h + 10, csum(h, 20, 0));
}

/* Paces sending at pps packets per second, in bursts of 64. */
static void pace(long sent, long pps, struct timespec *start) {
  if (pps <= 0 || sent % 64 != 0) return;
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  double elapsed = (now.tv_sec - start->tv_sec) + (now.tv_nsec - start->tv_nsec) / 1e9;
  double due = (double)sent / (double)pps;
  if (due > elapsed) usleep((useconds_t)((due - elapsed) * 1e6));
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: flood-tool syn DST SRC_BASE NSRC DPORTS COUNT PPS | frag DST SRC COUNT PPS\n");
    return 2;
  }
  int fd = socket(AF_INET, SOCK_RAW, IPPROTO_RAW); /* implies IP_HDRINCL */
  if (fd < 0) {
    perror("socket");
    return 1;
  }
  int sndbuf = 4 << 20;
  setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
  uint8_t pkt[1600];
  struct sockaddr_in to = {.sin_family = AF_INET};
  struct timespec start;
  clock_gettime(CLOCK_MONOTONIC, &start);
  long sent = 0, failed = 0;
  rng_state ^= (uint32_t)getpid();

  if (strcmp(argv[1], "syn") == 0 && argc == 8) {
    uint32_t dst = ntohl(inet_addr(argv[2]));
    uint32_t src_base = ntohl(inet_addr(argv[3]));
    int nsrc = atoi(argv[4]);
    int ports[16], nports = 0;
    for (char *tok = strtok(argv[5], ","); tok && nports < 16; tok = strtok(NULL, ",")) ports[nports++] = atoi(tok);
    long count = atol(argv[6]), pps = atol(argv[7]);
    if (nsrc < 1 || nports < 1) return 2;
    to.sin_addr.s_addr = htonl(dst);
    for (long i = 0; i < count; i++) {
      uint32_t src = src_base + (uint32_t)(rnd() % (uint32_t)nsrc);
      uint8_t *t = pkt + 20;
      memset(t, 0, 24);
      put16(t, (uint16_t)(1024 + rnd() % 60000));
      put16(t + 2, (uint16_t)ports[rnd() % (uint32_t)nports]);
      put32(t + 4, rnd());
      t[12] = 6 << 4; /* 24-byte header: one MSS option */
      t[13] = 0x02;   /* SYN */
      put16(t + 14, 64240);
      t[20] = 2; t[21] = 4; put16(t + 22, 1460);
      uint8_t pseudo[12];
      put32(pseudo, src); put32(pseudo + 4, dst); pseudo[8] = 0; pseudo[9] = 6; put16(pseudo + 10, 24);
      uint32_t s = 0;
      for (int k = 0; k < 12; k += 2) s += (uint32_t)(pseudo[k] << 8 | pseudo[k + 1]);
      put16(t + 16, csum(t, 24, s));
      ip_header(pkt, src, dst, 6, 44, (uint16_t)rnd(), 0x4000);
      if (sendto(fd, pkt, 44, 0, (struct sockaddr *)&to, sizeof to) < 0) failed++; else sent++;
      pace(i + 1, pps, &start);
    }
  } else if (strcmp(argv[1], "frag") == 0 && argc == 6) {
    uint32_t dst = ntohl(inet_addr(argv[2]));
    uint32_t src = ntohl(inet_addr(argv[3]));
    long count = atol(argv[4]), pps = atol(argv[5]);
    to.sin_addr.s_addr = htonl(dst);
    uint16_t last_id = 1;
    uint16_t last_off = 0;
    for (long i = 0; i < count; i++) {
      uint32_t r = rnd();
      uint16_t id = (uint16_t)rnd();
      uint16_t off8 = (uint16_t)(1 + rnd() % 1000); /* offset in 8-byte units, never the first piece */
      uint16_t len = (uint16_t)(8 * (1 + rnd() % 170)); /* up to 1360 bytes */
      if (r % 8 == 0) { id = last_id; off8 = last_off + 1; }      /* overlaps the previous piece */
      else if (r % 8 == 1) len = 8;                               /* tiny */
      else if (r % 16 == 2) { off8 = 8189; len = 64; }            /* ends past 65535 */
      memset(pkt + 20, (int)(r & 0xff), len);
      ip_header(pkt, src, dst, 17, (uint16_t)(20 + len), id, (uint16_t)(0x2000 | (off8 & 0x1fff)));
      if (sendto(fd, pkt, 20 + len, 0, (struct sockaddr *)&to, sizeof to) < 0) failed++; else sent++;
      last_id = id;
      last_off = off8;
      pace(i + 1, pps, &start);
    }
  } else {
    fprintf(stderr, "bad arguments\n");
    return 2;
  }
  printf("sent %ld failed %ld\n", sent, failed);
  return sent > 0 ? 0 : 1;
}
