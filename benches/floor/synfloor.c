/* The floor of a raw SYN scan on this machine: a minimal sender and receiver, no rate limit,
 * no retries, no bookkeeping beyond a counter. Sends one SYN to every (host, port) of
 * 127.X.Y.1-254 x ports 1..P from a raw IPPROTO_RAW socket, and counts SYN-ACK/RST replies on
 * a raw IPPROTO_TCP socket from a second thread until all came back or 1 s of silence.
 *
 *   cc -O2 -pthread -o synfloor synfloor.c && ./synfloor 127.110.102 1024   (as root)
 *
 * Loopback only: the first argument must start with "127.". Used by benches/portscan.sh. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static volatile long replies;
static long expected;
static int rx;
static unsigned short sport = 47123;

static unsigned short csum(const unsigned short *p, int n, unsigned long s) {
  for (; n > 1; n -= 2) s += *p++;
  if (n) s += *(const unsigned char *)p;
  while (s >> 16) s = (s & 0xffff) + (s >> 16);
  return (unsigned short)~s;
}

static void *reader(void *arg) {
  (void)arg;
  unsigned char b[128];
  struct pollfd pf = {rx, POLLIN, 0};
  while (replies < expected && poll(&pf, 1, 1000) > 0) {
    while (1) {
      ssize_t n = recv(rx, b, sizeof b, MSG_DONTWAIT);
      if (n <= 0) break;
      int ihl = (b[0] & 15) * 4;
      if (n < ihl + 14) continue;
      unsigned short dport = (unsigned short)(b[ihl + 2] << 8 | b[ihl + 3]);
      unsigned char fl = b[ihl + 13];
      if (dport == sport && (fl & 0x10) && (fl & 0x06)) replies++;
    }
  }
  return NULL;
}

int main(int argc, char **argv) {
  if (argc != 3 || strncmp(argv[1], "127.", 4) != 0) {
    fprintf(stderr, "usage: synfloor 127.X.Y PORTS\n");
    return 2;
  }
  int ports = atoi(argv[2]);
  expected = 254L * ports;
  int tx = socket(AF_INET, SOCK_RAW, IPPROTO_RAW);
  rx = socket(AF_INET, SOCK_RAW, IPPROTO_TCP);
  if (tx < 0 || rx < 0) { perror("socket (run as root)"); return 1; }
  int big = 64 << 20;
  setsockopt(rx, SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
  setsockopt(tx, SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  pthread_t th;
  pthread_create(&th, NULL, reader, NULL);
  unsigned char pkt[40];
  for (int port = 1; port <= ports; port++) {
    for (int h = 1; h <= 254; h++) {
      char dst[32];
      snprintf(dst, sizeof dst, "%s.%d", argv[1], h);
      struct sockaddr_in to = {.sin_family = AF_INET};
      inet_pton(AF_INET, dst, &to.sin_addr);
      memset(pkt, 0, sizeof pkt);
      pkt[0] = 0x45; pkt[3] = 40; pkt[8] = 64; pkt[9] = IPPROTO_TCP;
      inet_pton(AF_INET, "127.0.0.1", pkt + 12);
      memcpy(pkt + 16, &to.sin_addr, 4);
      unsigned char *t = pkt + 20;
      t[0] = sport >> 8; t[1] = sport & 255; t[2] = port >> 8; t[3] = port & 255;
      t[4] = 0x12; t[5] = 0x34; t[12] = 0x50; t[13] = 0x02; t[14] = 0x04;
      unsigned char ph[12];
      memcpy(ph, pkt + 12, 8); ph[8] = 0; ph[9] = IPPROTO_TCP; ph[10] = 0; ph[11] = 20;
      unsigned long s = 0;
      for (int i = 0; i < 12; i += 2) s += (unsigned short)(ph[i] | ph[i + 1] << 8);
      unsigned short c = csum((unsigned short *)t, 20, s);
      memcpy(t + 16, &c, 2);
      unsigned short ic = csum((unsigned short *)pkt, 20, 0);
      memcpy(pkt + 10, &ic, 2);
      while (sendto(tx, pkt, 40, 0, (struct sockaddr *)&to, sizeof to) < 0) usleep(50);
    }
  }
  pthread_join(th, NULL);
  clock_gettime(CLOCK_MONOTONIC, &t1);
  double s = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
  if (replies < expected) s -= 1.0; /* the reader's final second of silence */
  printf("%ld SYNs, %ld replies, %.3f s\n", expected, (long)replies, s);
  return 0;
}
