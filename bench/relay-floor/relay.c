/*
 * relay LISTEN_ADDR LISTEN_PORT TARGET_ADDR TARGET_PORT: a plain epoll TCP
 * relay in C (level-triggered, one 64 KiB buffer, Nagle off both ways):
 * what one process costs on this path without a language runtime. A short
 * write is finished with blocking poll() (request/response never has one).
 * Prints "ready". One of the relays bench/relay-floor.ts measures.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>
#include <fcntl.h>

#define MAXFD 4096
static int peer[MAXFD];
static char buf[65536];

static void addr(struct sockaddr_in *a, const char *ip, const char *port) {
  memset(a, 0, sizeof *a);
  a->sin_family = AF_INET;
  a->sin_port = htons((unsigned short)atoi(port));
  if (inet_pton(AF_INET, ip, &a->sin_addr) != 1) { fprintf(stderr, "bad address %s\n", ip); exit(2); }
}

static void nodelay(int fd) { int one = 1; setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); }

static int writeall(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) { struct pollfd q = { fd, POLLOUT, 0 }; poll(&q, 1, -1); continue; }
    if (w <= 0) return -1;
    p += w; n -= (size_t)w;
  }
  return 0;
}

int main(int argc, char **argv) {
  if (argc != 5) { fprintf(stderr, "usage: relay LADDR LPORT TADDR TPORT\n"); return 2; }
  struct sockaddr_in la, ta;
  addr(&la, argv[1], argv[2]);
  addr(&ta, argv[3], argv[4]);
  int ls = socket(AF_INET, SOCK_STREAM, 0), one = 1;
  setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (bind(ls, (struct sockaddr *)&la, sizeof la) < 0 || listen(ls, 128) < 0) { perror("listen"); return 1; }
  int ep = epoll_create1(0);
  struct epoll_event ev = { .events = EPOLLIN, .data.fd = ls };
  epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
  printf("ready\n");
  fflush(stdout);
  struct epoll_event evs[64];
  for (;;) {
    int n = epoll_wait(ep, evs, 64, -1);
    if (n < 0) { if (errno == EINTR) continue; perror("epoll_wait"); return 1; }
    for (int i = 0; i < n; i++) {
      int fd = evs[i].data.fd;
      if (fd == ls) {
        int g = accept(ls, NULL, NULL);
        if (g < 0) continue;
        int h = socket(AF_INET, SOCK_STREAM, 0);
        if (h < 0 || g >= MAXFD || h >= MAXFD || connect(h, (struct sockaddr *)&ta, sizeof ta) < 0) { close(g); if (h >= 0) close(h); continue; }
        nodelay(g); nodelay(h);
        fcntl(g, F_SETFL, O_NONBLOCK); fcntl(h, F_SETFL, O_NONBLOCK);
        peer[g] = h; peer[h] = g;
        struct epoll_event e1 = { .events = EPOLLIN, .data.fd = g }, e2 = { .events = EPOLLIN, .data.fd = h };
        epoll_ctl(ep, EPOLL_CTL_ADD, g, &e1);
        epoll_ctl(ep, EPOLL_CTL_ADD, h, &e2);
        continue;
      }
      ssize_t r = read(fd, buf, sizeof buf);
      if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) continue;
      if (r <= 0 || writeall(peer[fd], buf, (size_t)r) < 0) {
        int p = peer[fd];
        close(fd); close(p);  /* close() removes both from the epoll set */
      }
    }
  }
}
