/*
 * The floor under any fan-out server on this machine: accept COUNT TCP connections, then send
 * MESSAGES messages, one every INTERVAL_MS, to every connection with plain write() calls on
 * non-blocking sockets, from WRITERS processes that each own a share of the connections (as
 * cluster workers do). No HTTP parsing, no database, no event loop: what is left is the kernel's
 * cost of a loopback write. A frame is what rowcast sends over chunked HTTP, each message's
 * content being its insert time (µs, CLOCK_MONOTONIC), so bench/floor/sink.c reads both alike
 * and measures insert -> receipt, queueing included.
 *
 *   source PORT COUNT MESSAGES INTERVAL_MS TICK_MS WRITERS FIRST_ID
 *
 * TICK_MS > 0 adds a poller: messages wait for the next tick, and their insert times fall at
 * evenly spread points of the tick, as rows inserted at random moments would.
 *
 * Prints "listening", then per writer "accepted N" and, when done, "sent WRITE_ERRORS MEAN_MS
 * MAX_MS BATCHES" (how long writing one batch to the writer's connections took).
 * Bounded: 60 s to accept COUNT connections.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define ACCEPT_DEADLINE_S 60

static double now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static void sleep_until(double when_us) {
  double left = when_us - now_us();
  if (left <= 0) return;
  time_t seconds = (time_t)(left / 1e6);
  struct timespec ts = {.tv_sec = seconds, .tv_nsec = (long)((left - seconds * 1e6) * 1e3)};
  nanosleep(&ts, NULL);
}

/* When message m is "inserted": every INTERVAL_MS; under a poll, at evenly spread tick phases. */
static double inserted_at(int m, int messages, int interval_ms, int tick_ms, double start_us) {
  double phase_us = tick_ms > 0 ? (m + 0.5) * tick_ms * 1e3 / messages : 0;
  return start_us + m * interval_ms * 1e3 + phase_us;
}

/*
 * Writes every message to every connection, as soon as it is due (TICK_MS 0) or at the first
 * tick after it (ticks at a fixed rate, the next at once when a batch ran late). Messages due at
 * the same wake-up go out as one frame, one write() per connection, as rowcast sends a batch.
 */
static void write_all(const int *fds, int count, int messages, int interval_ms, int tick_ms,
                      double start_us, long first_id) {
  char body[4096], frame[4200];
  long errors = 0;
  int batches = 0;
  double took_sum_us = 0, took_max_us = 0, tick_at = start_us;
  for (int next = 0; next < messages;) {
    sleep_until(tick_ms > 0 ? tick_at : inserted_at(next, messages, interval_ms, 0, start_us));
    double now = now_us();
    int body_len = 0;
    for (; next < messages && inserted_at(next, messages, interval_ms, tick_ms, start_us) <= now;
         next++) {
      body_len += snprintf(body + body_len, sizeof body - (size_t)body_len,
                           "<div class=\"msg\" data-id=\"%ld\">%lld</div>\n", first_id + next,
                           (long long)inserted_at(next, messages, interval_ms, tick_ms, start_us));
    }
    if (body_len > 0) {
      int len = snprintf(frame, sizeof frame, "%x\r\n%s\r\n", body_len, body);
      for (int i = 0; i < count; i++)
        if (write(fds[i], frame, (size_t)len) != len) errors++;
      double took = now_us() - now;
      took_sum_us += took;
      if (took > took_max_us) took_max_us = took;
      batches++;
    }
    tick_at += tick_ms * 1e3;
    if (tick_at < now_us()) tick_at = now_us();
  }
  printf("sent %ld %.1f %.1f %d\n", errors, took_sum_us / batches / 1e3, took_max_us / 1e3,
         batches);
  fflush(stdout);
}

int main(int argc, char **argv) {
  if (argc != 8) {
    fprintf(stderr, "usage: source PORT COUNT MESSAGES INTERVAL_MS TICK_MS WRITERS FIRST_ID\n");
    return 2;
  }
  int port = atoi(argv[1]), count = atoi(argv[2]), messages = atoi(argv[3]);
  int interval_ms = atoi(argv[4]), tick_ms = atoi(argv[5]), writers = atoi(argv[6]);
  long first_id = atol(argv[7]);
  signal(SIGPIPE, SIG_IGN);

  int listener = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
  int one = 1;
  setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
  if (bind(listener, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(listener, 4096) < 0) {
    perror("listen");
    return 2;
  }
  printf("listening\n");
  fflush(stdout);

  /* Each writer accepts its own share: one process may not hold more than ~20,000 files here. */
  int ready[2], go[2];
  if (pipe(ready) < 0 || pipe(go) < 0) return 2;
  int share = count / writers;
  for (int w = 0; w < writers; w++) {
    if (fork() != 0) continue;
    int mine = w == writers - 1 ? count - share * (writers - 1) : share;
    int *fds = calloc((size_t)mine, sizeof *fds);
    int accepted = 0;
    double deadline = now_us() + ACCEPT_DEADLINE_S * 1e6;
    struct pollfd pfd = {.fd = listener, .events = POLLIN};
    while (accepted < mine && now_us() < deadline) {
      if (poll(&pfd, 1, 200) <= 0) continue;
      for (int fd; accepted < mine && (fd = accept4(listener, NULL, NULL, SOCK_NONBLOCK)) >= 0;)
        fds[accepted++] = fd;
    }
    close(listener);
    printf("accepted %d\n", accepted);
    fflush(stdout);
    double start_us;
    if (write(ready[1], "", 1) != 1 || read(go[0], &start_us, sizeof start_us) != sizeof start_us)
      _exit(2);
    write_all(fds, accepted, messages, interval_ms, tick_ms, start_us, first_id);
    _exit(0);
  }
  char byte;
  for (int w = 0; w < writers; w++)
    if (read(ready[0], &byte, 1) != 1) return 2;
  double start_us = now_us() + 1e6; /* a second for the sinks to settle */
  for (int w = 0; w < writers; w++)
    if (write(go[1], &start_us, sizeof start_us) != sizeof start_us) return 2;
  while (wait(NULL) > 0) {
  }
  return 0;
}
