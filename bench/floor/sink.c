/*
 * A load generator as cheap as one can be: COUNT TCP connections from LOCAL_ADDR, one epoll loop,
 * no allocation per read. It reads `data-id="ID">SENT_US<` (or `data-id="ID" data-seq="SEQ">SENT_US<`)
 * out of whatever arrives (rowcast's HTML frames, or the floor source's, which look the same) and records one (id, latency) pair per
 * fragment, latency = now - SENT_US on CLOCK_MONOTONIC, which every process shares.
 *
 *   sink HOST PORT LOCAL_ADDR COUNT SEND_REQUEST(0|1) OUTFILE
 *
 * With SEND_REQUEST 1 each connection asks for GET /stream and counts as established once the
 * answer starts with "HTTP/1.1 200 " (a 503 counts as failed).
 * Prints "ready ESTABLISHED FAILED" once every connection is up or has failed, then reads until
 * SIGTERM, writes the pairs to OUTFILE (uint32 id, float32 ms, little-endian) and prints
 * "done FRAGMENTS CLOSED REPEATS" (REPEATS: ids not above the last one on their connection).
 * Bounded: at most 300 connections in flight, 120 s to connect them all (the cluster primary
 * hands over ~500 connections a second).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_FDS 65536
#define CARRY 128 /* longest fragment head we parse: `data-id="` + 20 digits + `" data-seq="` + 20
                    digits + `">` + 20 digits */
#define IN_FLIGHT 300
#define CONNECT_DEADLINE_S 120

static const char MARK[] = "data-id=\"";
static const char REQUEST[] = "GET /stream HTTP/1.1\r\nHost: bench\r\n\r\n";
static const char STATUS_OK[] = "HTTP/1.1 200 ";

static volatile sig_atomic_t stopping = 0;
static char carry[MAX_FDS][CARRY];
static unsigned char carry_len[MAX_FDS];
/* per connection: 0 connecting, AWAITING_HEAD (request sent), STREAMING */
enum { AWAITING_HEAD = 1, STREAMING = 2 };
static unsigned char state[MAX_FDS];
static uint32_t last_id[MAX_FDS];
/* ids not above the last one on their connection: duplicated or out of order */
static long repeats;
static uint32_t *ids;
static float *latencies;
static size_t recorded, capacity;

static void on_term(int sig) {
  (void)sig;
  stopping = 1;
}

static double now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static void record(uint32_t id, float ms) {
  if (recorded == capacity) {
    capacity = capacity ? capacity * 2 : 1 << 20;
    ids = realloc(ids, capacity * sizeof *ids);
    latencies = realloc(latencies, capacity * sizeof *latencies);
    if (!ids || !latencies) {
      perror("realloc");
      exit(2);
    }
  }
  ids[recorded] = id;
  latencies[recorded] = ms;
  recorded++;
}

/* Parses every whole fragment head in buf; returns where an unfinished one starts (or len). */
static size_t scan(int fd, const char *buf, size_t len, double now) {
  size_t at = 0;
  for (;;) {
    const char *mark = memmem(buf + at, len - at, MARK, sizeof MARK - 1);
    if (!mark) {
      /* keep a tail that may be the start of a mark cut by the read */
      size_t keep = len - at < sizeof MARK - 1 ? len - at : sizeof MARK - 2;
      return len - keep;
    }
    size_t p = (size_t)(mark - buf) + sizeof MARK - 1;
    uint64_t id = 0, sent = 0;
    while (p < len && buf[p] >= '0' && buf[p] <= '9') id = id * 10 + (uint64_t)(buf[p++] - '0');
    /* rowcast's fragments carry the seq after the id: skip it */
    static const char SEQ[] = "\" data-seq=\"";
    size_t avail = len - p < sizeof SEQ - 1 ? len - p : sizeof SEQ - 1;
    if (avail < sizeof SEQ - 1 && memcmp(buf + p, SEQ, avail) == 0)
      return (size_t)(mark - buf); /* the seq is cut by the read */
    if (avail == sizeof SEQ - 1 && memcmp(buf + p, SEQ, avail) == 0) {
      p += sizeof SEQ - 1;
      while (p < len && buf[p] >= '0' && buf[p] <= '9') p++;
    }
    if (p + 2 > len) return (size_t)(mark - buf);
    if (buf[p] != '"' || buf[p + 1] != '>') {
      at = p;
      continue;
    }
    p += 2;
    while (p < len && buf[p] >= '0' && buf[p] <= '9') sent = sent * 10 + (uint64_t)(buf[p++] - '0');
    if (p == len) return (size_t)(mark - buf);
    record((uint32_t)id, (float)((now - (double)sent) / 1000.0));
    if ((uint32_t)id <= last_id[fd]) repeats++;
    else last_id[fd] = (uint32_t)id;
    at = p;
  }
}

int main(int argc, char **argv) {
  if (argc != 7) {
    fprintf(stderr, "usage: sink HOST PORT LOCAL_ADDR COUNT SEND_REQUEST OUTFILE\n");
    return 2;
  }
  struct sockaddr_in server = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[2]))};
  struct sockaddr_in local = {.sin_family = AF_INET};
  inet_pton(AF_INET, argv[1], &server.sin_addr);
  inet_pton(AF_INET, argv[3], &local.sin_addr);
  int count = atoi(argv[4]);
  int send_request = atoi(argv[5]);
  const char *outfile = argv[6];
  signal(SIGTERM, on_term);
  signal(SIGPIPE, SIG_IGN);

  int ep = epoll_create1(0);
  struct epoll_event events[1024];
  static char buf[65536 + CARRY];
  int started = 0, established = 0, failed = 0, pending = 0, closed = 0;
  double deadline = now_us() + CONNECT_DEADLINE_S * 1e6;
  int ready_said = 0;

  while (!stopping) {
    while (!ready_said && started < count && pending < IN_FLIGHT && now_us() < deadline) {
      int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
      int one = 1;
      /* the port is picked at connect(): bind() alone would take it from half the range only */
      setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
      if (fd < 0 || fd >= MAX_FDS || bind(fd, (struct sockaddr *)&local, sizeof local) < 0 ||
          (connect(fd, (struct sockaddr *)&server, sizeof server) < 0 && errno != EINPROGRESS)) {
        if (fd >= 0) close(fd);
        failed++;
        started++;
        continue;
      }
      struct epoll_event ev = {.events = EPOLLOUT | EPOLLIN, .data.fd = fd};
      epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
      started++;
      pending++;
    }
    if (!ready_said && (established + failed == count || (now_us() > deadline && pending == 0) ||
                        (now_us() > deadline + 5e6))) {
      printf("ready %d %d\n", established, count - established);
      fflush(stdout);
      ready_said = 1;
    }
    int n = epoll_wait(ep, events, 1024, 100);
    double now = now_us();
    for (int i = 0; i < n; i++) {
      int fd = events[i].data.fd;
      if (state[fd] == 0) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err || (send_request && write(fd, REQUEST, sizeof REQUEST - 1) < 0)) {
          close(fd);
          pending--;
          failed++;
          continue;
        }
        last_id[fd] = 0;
        carry_len[fd] = 0;
        state[fd] = send_request ? AWAITING_HEAD : STREAMING;
        if (!send_request) {
          pending--;
          established++;
        }
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = fd};
        epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
        continue;
      }
      for (;;) {
        size_t kept = carry_len[fd];
        memcpy(buf, carry[fd], kept);
        ssize_t got = read(fd, buf + kept, sizeof buf - kept);
        if (got < 0 && (errno == EAGAIN || errno == EINTR)) break;
        /* a stream counts once its status line says 200 (the head comes in one write) */
        int refused = got > 0 && state[fd] == AWAITING_HEAD &&
                      strncmp(buf, STATUS_OK, sizeof STATUS_OK - 1) != 0;
        if (got <= 0 || refused) {
          close(fd);
          if (state[fd] == STREAMING) closed++;
          else {
            pending--;
            failed++;
          }
          state[fd] = 0;
          break;
        }
        if (state[fd] == AWAITING_HEAD) {
          state[fd] = STREAMING;
          pending--;
          established++;
        }
        size_t len = kept + (size_t)got;
        size_t rest = scan(fd, buf, len, now);
        size_t tail = len - rest;
        if (tail > CARRY) tail = 0; /* not a fragment head we know: drop it */
        memcpy(carry[fd], buf + rest, tail);
        carry_len[fd] = (unsigned char)tail;
      }
    }
  }

  FILE *out = fopen(outfile, "wb");
  if (!out) {
    perror(outfile);
    return 2;
  }
  for (size_t i = 0; i < recorded; i++) {
    fwrite(&ids[i], sizeof ids[i], 1, out);
    fwrite(&latencies[i], sizeof latencies[i], 1, out);
  }
  fclose(out);
  printf("done %zu %d %ld\n", recorded, closed, repeats);
  fflush(stdout);
  return 0;
}
