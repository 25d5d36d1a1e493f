// New TCP connections per second for `npm run bench`: THREADS clients each
// connect, and close with a reset (SO_LINGER 0, so no TIME_WAIT on the
// client), as fast as the path allows; the server accepts and closes.
//
//   tcpcrr server PORT
//   tcpcrr client HOST PORT SECONDS THREADS  -> {"connections":N,"failed":F,"seconds":S,"perSecond":R}
//
// A connect that fails or takes over 1 s counts as failed.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static struct sockaddr_in dst;
static double deadline;
static atomic_ullong done, failed;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int server(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = INADDR_ANY};
  if (bind(fd, (struct sockaddr*)&a, sizeof(a)) < 0 || listen(fd, 4096) < 0) return perror("bind/listen"), 1;
  fprintf(stderr, "ready\n");
  for (;;) {
    int c = accept(fd, NULL, NULL);
    if (c >= 0) close(c);
  }
}

static void* worker(void* arg) {
  (void)arg;
  struct linger lg = {.l_onoff = 1, .l_linger = 0};
  while (now_s() < deadline) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    int ok = 0;
    if (connect(fd, (struct sockaddr*)&dst, sizeof(dst)) == 0) {
      ok = 1;
    } else if (errno == EINPROGRESS) {
      struct pollfd p = {.fd = fd, .events = POLLOUT};
      int err = 0;
      socklen_t el = sizeof(err);
      if (poll(&p, 1, 1000) == 1 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) == 0 && err == 0) ok = 1;
    }
    close(fd);
    if (ok) atomic_fetch_add(&done, 1);
    else atomic_fetch_add(&failed, 1);
  }
  return NULL;
}

static int client(const char* host, int port, double seconds, int threads) {
  dst.sin_family = AF_INET;
  dst.sin_port = htons(port);
  if (inet_pton(AF_INET, host, &dst.sin_addr) != 1) return fprintf(stderr, "bad host %s\n", host), 2;
  double start = now_s();
  deadline = start + seconds;
  pthread_t t[256];
  if (threads < 1 || threads > 256) return fprintf(stderr, "threads must be 1..256\n"), 2;
  for (int i = 0; i < threads; i++) pthread_create(&t[i], NULL, worker, NULL);
  for (int i = 0; i < threads; i++) pthread_join(t[i], NULL);
  double took = now_s() - start;
  printf("{\"connections\":%llu,\"failed\":%llu,\"seconds\":%.3f,\"perSecond\":%.0f}\n",
         (unsigned long long)done, (unsigned long long)failed, took, done / took);
  return 0;
}

int main(int argc, char** argv) {
  if (argc == 3 && strcmp(argv[1], "server") == 0) return server(atoi(argv[2]));
  if (argc == 6 && strcmp(argv[1], "client") == 0) return client(argv[2], atoi(argv[3]), atof(argv[4]), atoi(argv[5]));
  fprintf(stderr, "usage: tcpcrr server PORT | client HOST PORT SECONDS THREADS\n");
  return 2;
}
