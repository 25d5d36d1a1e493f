// UDP request/response latency for `npm run bench`: one datagram in flight at
// a time, as a user's DNS lookup or game packet sees the path.
//
//   udprr server PORT                       echoes every datagram back
//   udprr client HOST PORT COUNT [PAYLOAD]  -> {"count":N,"lost":L,"p50us":..,"p99us":..,"meanus":..}
//
// The first tenth of COUNT is a warm-up and not recorded. A reply not back
// within 200 ms counts as lost and the next request goes out.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now_us(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static int cmp(const void* a, const void* b) {
  double x = *(const double*)a, y = *(const double*)b;
  return x < y ? -1 : x > y;
}

static int server(int port) {
  int fd = socket(AF_INET, SOCK_DGRAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = INADDR_ANY};
  if (bind(fd, (struct sockaddr*)&a, sizeof(a)) < 0) return perror("bind"), 1;
  fprintf(stderr, "ready\n");
  char buf[2048];
  for (;;) {
    struct sockaddr_in from;
    socklen_t fl = sizeof(from);
    ssize_t n = recvfrom(fd, buf, sizeof(buf), 0, (struct sockaddr*)&from, &fl);
    if (n >= 0) sendto(fd, buf, n, 0, (struct sockaddr*)&from, fl);
  }
}

static int client(const char* host, int port, int count, int payload) {
  struct sockaddr_in dst = {.sin_family = AF_INET, .sin_port = htons(port)};
  if (inet_pton(AF_INET, host, &dst.sin_addr) != 1) return fprintf(stderr, "bad host %s\n", host), 2;
  int fd = socket(AF_INET, SOCK_DGRAM, 0);
  if (connect(fd, (struct sockaddr*)&dst, sizeof(dst)) < 0) return perror("connect"), 1;
  int warm = count / 10;
  double* rtt = calloc(count, sizeof(double));
  char buf[2048] = {0};
  int got = 0, lost = 0;
  struct pollfd p = {.fd = fd, .events = POLLIN};
  for (int i = 0; i < warm + count; i++) {
    memcpy(buf, &i, sizeof(i));
    double t0 = now_us();
    if (send(fd, buf, payload, 0) < 0 && errno != ECONNREFUSED) return perror("send"), 1;
    for (;;) {
      int left = 200 - (int)((now_us() - t0) / 1000);
      if (left <= 0 || poll(&p, 1, left) <= 0) {
        if (i >= warm) lost++;
        break;
      }
      int seq;
      if (recv(fd, buf, sizeof(buf), 0) < (ssize_t)sizeof(seq)) continue;
      memcpy(&seq, buf, sizeof(seq));
      if (seq != i) continue;  // a late reply to an earlier request
      if (i >= warm) rtt[got++] = now_us() - t0;
      break;
    }
  }
  if (got == 0) return fprintf(stderr, "no replies\n"), 1;
  qsort(rtt, got, sizeof(double), cmp);
  double sum = 0;
  for (int i = 0; i < got; i++) sum += rtt[i];
  printf("{\"count\":%d,\"lost\":%d,\"p50us\":%.1f,\"p99us\":%.1f,\"meanus\":%.1f}\n", got, lost, rtt[got / 2],
         rtt[(int)(got * 0.99)], sum / got);
  return 0;
}

int main(int argc, char** argv) {
  if (argc == 3 && strcmp(argv[1], "server") == 0) return server(atoi(argv[2]));
  if (argc >= 5 && strcmp(argv[1], "client") == 0) {
    return client(argv[2], atoi(argv[3]), atoi(argv[4]), argc > 5 ? atoi(argv[5]) : 32);
  }
  fprintf(stderr, "usage: udprr server PORT | client HOST PORT COUNT [PAYLOAD]\n");
  return 2;
}
