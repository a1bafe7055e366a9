/*
 * churn-tool: opens TCP connections at a fixed rate and reads each to EOF
 * (issue 16: "1,000 server-closed connections per second for 120 s from a
 * guest: zero refused"). Compiled at test time with cc, as flood-tool.c is;
 * run inside the guest namespace the test or bench created, towards Moat's
 * host alias (the caller checks the address routes via the guest's TAP).
 *
 *   churn-tool ADDR PORT RATE SECONDS [MAX_IN_FLIGHT] [TIMEOUT_MS]
 *
 * Connection i is started at i/RATE seconds after the start (absolute
 * schedule: a late loop catches up, so the rate achieved is the rate asked
 * unless connections pile up past MAX_IN_FLIGHT, default 4096). Non-blocking
 * connect, epoll, one thread: a Python loop tops out near 1,000/s on a
 * loaded 2-core machine, this does not. Each connection reads until the
 * server's FIN and is then closed (the server closes first; the guest is the
 * passive closer and keeps no TIME-WAIT).
 *
 * Outcome of every connection, counted apart:
 *   ok        connected, read >= 1 byte, then EOF
 *   refused   ECONNREFUSED (an RST answering the SYN: what the target forbids)
 *   reset     ECONNRESET after connecting
 *   timeout   not finished within TIMEOUT_MS (default 10000)
 *   empty     EOF before any byte
 *   local     socket()/connect() failed locally (e.g. EADDRNOTAVAIL: no port)
 *   other     any other error
 * Prints one JSON line per second ({"t":...}) and a final summary line
 * ({"done":true,...}) with connect latency percentiles (connect() to
 * writable) and the worst lag behind the schedule.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_FDS 65536

struct conn {
  int64_t started_ns; /* 0: slot free */
  int64_t connected_ns;
  int got;
};

static struct conn conns[MAX_FDS];
static long n_started, n_ok, n_refused, n_reset, n_timeout, n_empty, n_local, n_other, in_flight;
static char first_error[160];
/* Connect latencies in microseconds, one per connection that connected (bounded by the schedule). */
static uint32_t *lat;
static long n_lat, lat_cap;

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void note_error(const char *what, int err) {
  if (first_error[0] == 0) snprintf(first_error, sizeof first_error, "%s: %s", what, strerror(err));
}

static void finish(int ep, int fd) {
  epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
  close(fd);
  conns[fd].started_ns = 0;
  in_flight--;
}

static void count_error(int err, const char *what) {
  if (err == ECONNREFUSED) n_refused++;
  else if (err == ECONNRESET) n_reset++;
  else if (err == ETIMEDOUT) n_timeout++;
  else n_other++;
  note_error(what, err);
}

static int cmp_u32(const void *a, const void *b) {
  uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
  return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
  if (argc < 5) {
    fprintf(stderr, "usage: churn-tool ADDR PORT RATE SECONDS [MAX_IN_FLIGHT] [TIMEOUT_MS]\n");
    return 2;
  }
  struct sockaddr_in dst = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[2]))};
  if (inet_pton(AF_INET, argv[1], &dst.sin_addr) != 1) {
    fprintf(stderr, "churn-tool: bad address %s\n", argv[1]);
    return 2;
  }
  double rate = atof(argv[3]);
  double seconds = atof(argv[4]);
  long max_in_flight = argc > 5 ? atol(argv[5]) : 4096;
  int64_t timeout_ns = (argc > 6 ? atol(argv[6]) : 10000) * 1000000LL;
  if (rate <= 0 || seconds <= 0 || max_in_flight < 1 || max_in_flight > MAX_FDS - 64) {
    fprintf(stderr, "churn-tool: bad rate, seconds or in-flight bound\n");
    return 2;
  }
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
    rl.rlim_cur = rl.rlim_max < MAX_FDS ? rl.rlim_max : MAX_FDS;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  long total = (long)(rate * seconds);
  lat_cap = total;
  lat = malloc(sizeof *lat * (size_t)(lat_cap > 0 ? lat_cap : 1));
  int ep = epoll_create1(0);
  if (ep < 0 || lat == NULL) {
    perror("churn-tool: setup");
    return 2;
  }
  struct epoll_event evs[256];
  int64_t t0 = now_ns(), last_report = t0, last_sweep = t0, max_lag_ns = 0, max_in_flight_seen = 0;
  long blocked_by_in_flight = 0;
  int64_t last_start_ns = t0;
  while (n_started < total || in_flight > 0) {
    int64_t now = now_ns();
    /* Start every connection that is due. */
    long due = (long)((double)(now - t0) * rate / 1e9) + 1;
    if (due > total) due = total;
    while (n_started < due) {
      if (in_flight >= max_in_flight) {
        blocked_by_in_flight++;
        break;
      }
      int64_t sched = t0 + (int64_t)((double)n_started * 1e9 / rate);
      if (now - sched > max_lag_ns) max_lag_ns = now - sched;
      n_started++;
      last_start_ns = now;
      int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
      if (fd < 0 || fd >= MAX_FDS) {
        n_local++;
        note_error("socket", errno);
        if (fd >= 0) close(fd);
        continue;
      }
      int r = connect(fd, (struct sockaddr *)&dst, sizeof dst);
      if (r < 0 && errno != EINPROGRESS) {
        int e = errno;
        if (e == ECONNREFUSED) count_error(e, "connect");
        else {
          n_local++;
          note_error("connect", e);
        }
        close(fd);
        continue;
      }
      conns[fd] = (struct conn){.started_ns = now, .connected_ns = 0, .got = 0};
      struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP, .data.fd = fd};
      epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
      in_flight++;
      if (in_flight > max_in_flight_seen) max_in_flight_seen = in_flight;
    }
    /* Wait at most until the next connection is due (1 ms granularity). */
    int wait_ms = 1;
    if (n_started >= total) wait_ms = 20;
    int n = epoll_wait(ep, evs, 256, wait_ms);
    for (int i = 0; i < n; i++) {
      int fd = evs[i].data.fd;
      struct conn *c = &conns[fd];
      if (c->started_ns == 0) continue;
      if (c->connected_ns == 0) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err != 0) {
          count_error(err, "connect");
          finish(ep, fd);
          continue;
        }
        if (!(evs[i].events & (EPOLLOUT | EPOLLIN))) continue;
        c->connected_ns = now_ns();
        if (n_lat < lat_cap) lat[n_lat++] = (uint32_t)((c->connected_ns - c->started_ns) / 1000);
        struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.fd = fd};
        epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
      }
      if (evs[i].events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
        char buf[256];
        for (;;) {
          ssize_t got = read(fd, buf, sizeof buf);
          if (got > 0) {
            c->got += (int)got;
            continue;
          }
          if (got == 0) {
            if (c->got > 0) n_ok++;
            else {
              n_empty++;
              note_error("read", ENODATA);
            }
            finish(ep, fd);
          } else if (errno != EAGAIN) {
            count_error(errno, "read");
            finish(ep, fd);
          }
          break;
        }
      }
    }
    now = now_ns();
    /* Time out stragglers (a sweep every 100 ms; the table is indexed by fd). */
    if (now - last_sweep > 100000000LL) {
      last_sweep = now;
      for (int fd = 0; fd < MAX_FDS; fd++) {
        if (conns[fd].started_ns != 0 && now - conns[fd].started_ns > timeout_ns) {
          n_timeout++;
          note_error("timeout", ETIMEDOUT);
          finish(ep, fd);
        }
      }
    }
    if (now - last_report >= 1000000000LL) {
      last_report = now;
      printf("{\"t\":%.3f,\"started\":%ld,\"ok\":%ld,\"refused\":%ld,\"reset\":%ld,\"timeout\":%ld,\"empty\":%ld,\"local\":%ld,\"other\":%ld,\"inFlight\":%ld}\n",
             (double)(now - t0) / 1e9, n_started, n_ok, n_refused, n_reset, n_timeout, n_empty, n_local, n_other, in_flight);
      fflush(stdout);
    }
  }
  double elapsed = (double)(now_ns() - t0) / 1e9;
  qsort(lat, (size_t)n_lat, sizeof *lat, cmp_u32);
#define PCT(q) (n_lat ? lat[(long)((q) * (double)(n_lat - 1))] : 0)
  printf("{\"done\":true,\"rate\":%.1f,\"seconds\":%.1f,\"started\":%ld,\"ok\":%ld,\"refused\":%ld,\"reset\":%ld,\"timeout\":%ld,\"empty\":%ld,\"local\":%ld,\"other\":%ld,"
         "\"elapsedS\":%.3f,\"startedPerSec\":%.1f,\"maxLagMs\":%.1f,\"maxInFlight\":%ld,\"blockedByInFlight\":%ld,"
         "\"connectUs\":{\"p50\":%u,\"p99\":%u,\"max\":%u},\"firstError\":\"%s\"}\n",
         rate, seconds, n_started, n_ok, n_refused, n_reset, n_timeout, n_empty, n_local, n_other, elapsed, n_started > 1 ? (double)(n_started - 1) * 1e9 / (double)(last_start_ns - t0 > 0 ? last_start_ns - t0 : 1) : 0.0,
         (double)max_lag_ns / 1e6, (long)max_in_flight_seen, blocked_by_in_flight, PCT(0.5), PCT(0.99), PCT(1.0), first_error);
  return 0;
}
