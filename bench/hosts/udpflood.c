// UDP packet-rate load for `npm run bench`: a sender that saturates (sendmmsg
// bursts, iperf3's sender is slower than the paths it measures) and a receiver
// that counts what arrives (recvmmsg).
//
//   udpflood send HOST PORT SECONDS [PAYLOAD [FLOWS]]  -> {"sent":N,"seconds":S}
//   udpflood recv PORT SECONDS                         -> {"received":N,"seconds":S,"pps":R}
//
// The receiver counts for SECONDS from the first datagram, so start it first.
// PAYLOAD defaults to 18 bytes (a 64-byte Ethernet frame); FLOWS source ports
// are used round robin (default 1: one NAT mapping, one flow).
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

#define BURST 64
#define MAX_FLOWS 64

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int send_flood(const char* host, int port, double seconds, int payload, int flows) {
  struct sockaddr_in dst = {.sin_family = AF_INET, .sin_port = htons(port)};
  if (inet_pton(AF_INET, host, &dst.sin_addr) != 1) return fprintf(stderr, "bad host %s\n", host), 2;
  if (flows < 1 || flows > MAX_FLOWS) return fprintf(stderr, "flows must be 1..%d\n", MAX_FLOWS), 2;
  int fds[MAX_FLOWS];
  for (int f = 0; f < flows; f++) {
    fds[f] = socket(AF_INET, SOCK_DGRAM, 0);
    if (fds[f] < 0 || connect(fds[f], (struct sockaddr*)&dst, sizeof(dst)) < 0) return perror("socket/connect"), 1;
  }
  static char buf[65536];
  memset(buf, 'x', sizeof(buf));
  struct iovec iov = {.iov_base = buf, .iov_len = (size_t)payload};
  struct mmsghdr msgs[BURST];
  memset(msgs, 0, sizeof(msgs));
  for (int i = 0; i < BURST; i++) {
    msgs[i].msg_hdr.msg_iov = &iov;
    msgs[i].msg_hdr.msg_iovlen = 1;
  }
  unsigned long long sent = 0;
  double start = now_s(), end = start + seconds;
  for (int f = 0; now_s() < end; f = (f + 1) % flows) {
    int n = sendmmsg(fds[f], msgs, BURST, 0);
    if (n > 0) sent += n;
    else if (errno != ENOBUFS && errno != EAGAIN && errno != ECONNREFUSED && errno != EINTR) return perror("sendmmsg"), 1;
  }
  printf("{\"sent\":%llu,\"seconds\":%.3f}\n", sent, now_s() - start);
  return 0;
}

static int recv_count(int port, double seconds) {
  int fd = socket(AF_INET, SOCK_DGRAM, 0);
  int big = 8 << 20;
  setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &big, sizeof(big));
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = INADDR_ANY};
  if (bind(fd, (struct sockaddr*)&a, sizeof(a)) < 0) return perror("bind"), 1;
  fprintf(stderr, "ready\n");
  static char bufs[BURST][2048];
  struct iovec iov[BURST];
  struct mmsghdr msgs[BURST];
  memset(msgs, 0, sizeof(msgs));
  for (int i = 0; i < BURST; i++) {
    iov[i].iov_base = bufs[i];
    iov[i].iov_len = sizeof(bufs[i]);
    msgs[i].msg_hdr.msg_iov = &iov[i];
    msgs[i].msg_hdr.msg_iovlen = 1;
  }
  unsigned long long received = 0;
  double start = 0, end = 0;
  struct pollfd p = {.fd = fd, .events = POLLIN};
  for (;;) {
    double t = now_s();
    if (start > 0 && t >= end) break;
    int wait = start > 0 ? (int)((end - t) * 1000) + 1 : 60000;
    if (poll(&p, 1, wait) <= 0) {
      if (start == 0) return fprintf(stderr, "no datagram within 60 s\n"), 1;
      continue;
    }
    int n = recvmmsg(fd, msgs, BURST, MSG_DONTWAIT, NULL);
    if (n <= 0) continue;
    if (start == 0) {
      start = now_s();
      end = start + seconds;
    }
    received += n;
  }
  double took = now_s() - start;
  printf("{\"received\":%llu,\"seconds\":%.3f,\"pps\":%.0f}\n", received, took, received / took);
  return 0;
}

int main(int argc, char** argv) {
  if (argc >= 5 && strcmp(argv[1], "send") == 0) {
    return send_flood(argv[2], atoi(argv[3]), atof(argv[4]), argc > 5 ? atoi(argv[5]) : 18, argc > 6 ? atoi(argv[6]) : 1);
  }
  if (argc == 4 && strcmp(argv[1], "recv") == 0) return recv_count(atoi(argv[2]), atof(argv[3]));
  fprintf(stderr, "usage: udpflood send HOST PORT SECONDS [PAYLOAD [FLOWS]] | recv PORT SECONDS\n");
  return 2;
}
