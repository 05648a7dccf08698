/*
 * isg-bench-handshake: mutual-TLS 1.3 handshakes per second against a server
 * (isgd, or `openssl s_server -Verify 1` as the baseline), full or resumed.
 *
 *   isg-bench-handshake --connect HOST:PORT --cert F --key F --ca F
 *                       [--threads T] [--seconds S] [--runs N] [--resume]
 *                       [--label TEXT]
 *
 * T threads each connect, handshake (presenting the client certificate and
 * verifying the server's against the CA), wait up to 5 s for the server's
 * first session ticket, which a TLS 1.3 server sends only once it has
 * checked the client's certificate and Finished, then send close_notify and
 * reset the connection (so no TIME_WAIT piles up). With --resume each thread
 * first makes one full handshake for a ticket, before the clock starts and
 * not counted; every handshake after it offers the newest ticket the thread
 * holds, and only those the server resumed are counted. Prints handshakes
 * per second, the median of N runs of S seconds, with --pid the server's
 * CPU time per handshake (utime + stime from /proc/PID/stat), and
 * "RESULT label ..." last, with the failed and not resumed handshakes of all
 * runs. Exits 1 when any handshake failed (no ticket within 5 s is a
 * failure) or, with --resume, was not resumed.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "bench.h"

#define MAX_RUNS 100
#define TICKET_WAIT_S 5
#define HANDSHAKE_WAIT_S 10 /* per read or write; s_server serves one connection at a time */
#define MAX_FAILED 1000     /* per thread and run: then it stops */

enum hs_result { HS_OK, HS_FAILED, HS_NO_TICKET, HS_NOT_RESUMED };

struct opts {
	const char *cert, *key, *ca, *label;
	char host[64];
	uint16_t port;
	unsigned threads, seconds, runs;
	bool resume;
	int pid; /* the server, for its CPU time per handshake; 0: none */
};

struct worker {
	const struct opts *o;
	SSL_CTX *ctx;
	pthread_barrier_t *start; /* the clock starts once every thread is here */
	/* Handshakes counted; failed (no_ticket of them without a ticket in
	 * time); not resumed though a ticket was offered. */
	unsigned long done, failed, no_ticket, not_resumed;
	SSL_SESSION *session; /* newest ticket */
	bool got_ticket;
};

static int ex_index;

/* utime + stime of a process, in seconds (/proc/PID/stat); 0 when unknown. */
static double proc_cpu_s(int pid)
{
	char path[64], buf[1024];
	snprintf(path, sizeof(path), "/proc/%d/stat", pid);
	FILE *f = fopen(path, "r");
	if (!f)
		return 0;
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	char *p = strrchr(buf, ')');
	unsigned long long ut = 0, st = 0;
	if (!p ||
	    sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
		return 0;
	return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static int new_session(SSL *ssl, SSL_SESSION *sess)
{
	struct worker *w = SSL_get_ex_data(ssl, ex_index);
	w->got_ticket = true;
	if (w->o->resume) {
		SSL_SESSION_free(w->session);
		w->session = sess;
		return 1; /* we keep the reference */
	}
	return 0;
}

static int tcp_connect(const struct opts *o)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	if (fd < 0)
		return -1;
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(o->port)};
	inet_pton(AF_INET, o->host, &a.sin_addr);
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	/* A server that accepts but never finishes the handshake fails it
	 * (SSL_connect's reads and writes time out) rather than hang the run. */
	struct timeval tv = {.tv_sec = HANDSHAKE_WAIT_S};
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
		close(fd);
		return -1;
	}
	return fd;
}

/*
 * The server's first session ticket, within TICKET_WAIT_S. The socket is
 * non-blocking from here, so the wait is bounded also when the server sends
 * none (s_server -num_tickets 0) and keeps the connection open.
 */
static enum hs_result wait_ticket(struct worker *w, SSL *ssl, int fd)
{
	int fl = fcntl(fd, F_GETFL);
	if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) != 0)
		return HS_FAILED;
	double until = bench_now_s() + TICKET_WAIT_S;
	while (!w->got_ticket) {
		char c;
		int r = SSL_read(ssl, &c, 1);
		if (w->got_ticket)
			break;
		double left = until - bench_now_s();
		if (left <= 0)
			return HS_NO_TICKET; /* also a server that sends data but no ticket */
		if (r > 0)
			continue;
		int e = SSL_get_error(ssl, r);
		if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE)
			return HS_FAILED; /* closed, or an alert: no ticket will come */
		struct pollfd p = {.fd = fd, .events = e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT};
		if (poll(&p, 1, (int)(left * 1000) + 1) < 0 && errno != EINTR)
			return HS_FAILED;
	}
	return HS_OK;
}

/* One handshake: HS_OK when it completed, a ticket arrived and, when a
 * ticket was offered, the server resumed the session. */
static enum hs_result handshake(struct worker *w)
{
	int fd = tcp_connect(w->o);
	if (fd < 0)
		return HS_FAILED;
	SSL *ssl = SSL_new(w->ctx);
	enum hs_result rc = HS_FAILED;
	if (!ssl)
		goto out;
	SSL_set_ex_data(ssl, ex_index, w);
	SSL_set_fd(ssl, fd);
	X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), w->o->host);
	bool offered = w->session != NULL;
	if (offered)
		SSL_set_session(ssl, w->session);
	w->got_ticket = false;
	if (SSL_connect(ssl) != 1)
		goto out;
	bool resumed = SSL_session_reused(ssl);
	rc = wait_ticket(w, ssl, fd);
	if (rc == HS_OK && offered && !resumed)
		rc = HS_NOT_RESUMED;
	if (rc == HS_OK || rc == HS_NOT_RESUMED)
		SSL_shutdown(ssl);
out:
	ERR_clear_error();
	SSL_free(ssl);
	struct linger l = {.l_onoff = 1, .l_linger = 0};
	setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
	close(fd);
	return rc;
}

static void count(struct worker *w, enum hs_result r)
{
	switch (r) {
	case HS_OK:
		w->done++;
		break;
	case HS_NOT_RESUMED:
		w->not_resumed++;
		break;
	case HS_NO_TICKET:
		w->no_ticket++;
		w->failed++;
		break;
	case HS_FAILED:
		w->failed++;
		break;
	}
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	/* With --resume, the full handshake that gets the first ticket is
	 * made before the clock starts and is not counted (unless it fails). */
	bool ready = true;
	if (w->o->resume) {
		enum hs_result r = handshake(w);
		if (r != HS_OK) {
			count(w, r);
			ready = false;
		}
	}
	pthread_barrier_wait(w->start);
	double deadline = bench_now_s() + w->o->seconds;
	while (ready && bench_now_s() < deadline) {
		enum hs_result r = handshake(w);
		count(w, r);
		if (r != HS_OK && w->failed + w->not_resumed > MAX_FAILED)
			break;
	}
	return NULL;
}

static SSL_CTX *client_ctx(const struct opts *o)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
	if (!ctx)
		return NULL;
	SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
	if (SSL_CTX_use_certificate_chain_file(ctx, o->cert) != 1 ||
	    SSL_CTX_use_PrivateKey_file(ctx, o->key, SSL_FILETYPE_PEM) != 1 ||
	    SSL_CTX_load_verify_locations(ctx, o->ca, NULL) != 1) {
		ERR_print_errors_fp(stderr);
		SSL_CTX_free(ctx);
		return NULL;
	}
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL);
	SSL_CTX_sess_set_new_cb(ctx, new_session);
	/* The non-blocking read after the handshake needs SSL_read to return. */
	SSL_CTX_clear_mode(ctx, SSL_MODE_AUTO_RETRY);
	return ctx;
}

struct run_totals {
	unsigned long done, failed, no_ticket, not_resumed;
	double secs, cpu_s; /* cpu_s: the server's, 0 without --pid */
};

/* One run of o->seconds: T threads, timed from when all are ready. */
static int run_once(const struct opts *o, SSL_CTX *ctx, struct run_totals *t)
{
	struct worker *ws = calloc(o->threads, sizeof(*ws));
	pthread_t *th = calloc(o->threads, sizeof(*th));
	pthread_barrier_t start;
	int rc = -1;
	if (!ws || !th || pthread_barrier_init(&start, NULL, o->threads + 1) != 0)
		goto out;
	for (unsigned i = 0; i < o->threads; i++) {
		ws[i] = (struct worker){.o = o, .ctx = ctx, .start = &start};
		if (pthread_create(&th[i], NULL, worker_main, &ws[i]) != 0) {
			fprintf(stderr, "isg-bench-handshake: cannot start thread %u\n", i + 1);
			exit(1); /* the others wait at the barrier */
		}
	}
	pthread_barrier_wait(&start);
	double t0 = bench_now_s(), cpu0 = o->pid ? proc_cpu_s(o->pid) : 0;
	*t = (struct run_totals){0};
	for (unsigned i = 0; i < o->threads; i++) {
		pthread_join(th[i], NULL);
		t->done += ws[i].done;
		t->failed += ws[i].failed;
		t->no_ticket += ws[i].no_ticket;
		t->not_resumed += ws[i].not_resumed;
		SSL_SESSION_free(ws[i].session);
	}
	t->secs = bench_now_s() - t0;
	t->cpu_s = o->pid ? proc_cpu_s(o->pid) - cpu0 : 0;
	pthread_barrier_destroy(&start);
	rc = 0;
out:
	free(ws);
	free(th);
	return rc;
}

static void usage(void)
{
	fputs("usage: isg-bench-handshake --connect HOST:PORT --cert F --key F --ca F\n"
	      "         [--threads T] [--seconds S] [--runs N] [--resume] [--label TEXT]\n"
	      "         [--pid SERVER-PID]\n",
	      stderr);
	exit(2);
}

static unsigned parse_uint(const char *s, unsigned min, unsigned max)
{
	char *end;
	errno = 0;
	unsigned long v = strtoul(s, &end, 10);
	if (errno || end == s || *end || v < min || v > max)
		usage();
	return (unsigned)v;
}

int main(int argc, char **argv)
{
	struct opts o = {.threads = 2, .seconds = 3, .runs = 5, .label = "handshakes"};
	static const struct option lopts[] = {
	    {"connect", 1, NULL, 'C'}, {"cert", 1, NULL, 'c'},    {"key", 1, NULL, 'k'},
	    {"ca", 1, NULL, 'a'},      {"threads", 1, NULL, 'T'}, {"seconds", 1, NULL, 'S'},
	    {"runs", 1, NULL, 'N'},    {"resume", 0, NULL, 'r'},  {"label", 1, NULL, 'l'},
	    {"pid", 1, NULL, 'p'},     {NULL, 0, NULL, 0},
	};
	const char *connect_to = NULL;
	int ch;
	while ((ch = getopt_long(argc, argv, "", lopts, NULL)) != -1) {
		switch (ch) {
		case 'C':
			connect_to = optarg;
			break;
		case 'c':
			o.cert = optarg;
			break;
		case 'k':
			o.key = optarg;
			break;
		case 'a':
			o.ca = optarg;
			break;
		case 'T':
			o.threads = parse_uint(optarg, 1, 256);
			break;
		case 'S':
			o.seconds = parse_uint(optarg, 1, 3600);
			break;
		case 'N':
			o.runs = parse_uint(optarg, 1, MAX_RUNS);
			break;
		case 'r':
			o.resume = true;
			break;
		case 'l':
			o.label = optarg;
			break;
		case 'p':
			o.pid = (int)parse_uint(optarg, 1, 1u << 30);
			break;
		default:
			usage();
		}
	}
	const char *colon = connect_to ? strrchr(connect_to, ':') : NULL;
	if (!colon || !o.cert || !o.key || !o.ca || (size_t)(colon - connect_to) >= sizeof(o.host))
		usage();
	memcpy(o.host, connect_to, (size_t)(colon - connect_to));
	o.port = (uint16_t)parse_uint(colon + 1, 1, 65535);
	ex_index = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
	SSL_CTX *ctx = client_ctx(&o);
	if (!ctx)
		return 1;
	double rates[MAX_RUNS], cpu_ms[MAX_RUNS];
	unsigned long failed = 0, no_ticket = 0, not_resumed = 0;
	printf("%s: %s handshakes, %u threads, %u runs of %u s\n", o.label,
	       o.resume ? "resumed" : "full", o.threads, o.runs, o.seconds);
	for (unsigned r = 0; r < o.runs; r++) {
		struct run_totals t;
		if (run_once(&o, ctx, &t) != 0)
			return 1;
		rates[r] = (double)t.done / t.secs;
		cpu_ms[r] = o.pid && t.done ? t.cpu_s * 1000 / (double)t.done : 0;
		printf("  run %u: %8.0f handshakes/s (%lu failed, %lu of them without a session "
		       "ticket within %d s; %lu not resumed)",
		       r + 1, rates[r], t.failed, t.no_ticket, TICKET_WAIT_S, t.not_resumed);
		if (o.pid)
			printf(", server %.2f CPU-ms each", cpu_ms[r]);
		printf("\n");
		failed += t.failed;
		no_ticket += t.no_ticket;
		not_resumed += t.not_resumed;
		if (t.done == 0) {
			fprintf(stderr, "isg-bench-handshake: no handshake %s in run %u\n",
			        o.resume ? "was resumed" : "completed", r + 1);
			return 1;
		}
	}
	double med = bench_median(rates, o.runs), cpu = bench_median(cpu_ms, o.runs);
	printf("  median: %8.0f handshakes/s", med);
	if (o.pid)
		printf(", server %.2f CPU-ms each", cpu);
	printf("\nRESULT %s resume=%d hs_s=%.1f server_cpu_ms=%.3f failed=%lu not_resumed=%lu\n",
	       o.label, o.resume ? 1 : 0, med, cpu, failed, not_resumed);
	SSL_CTX_free(ctx);
	if (failed)
		fprintf(stderr,
		        "isg-bench-handshake: %lu handshakes failed, %lu of them without a session "
		        "ticket within %d s\n",
		        failed, no_ticket, TICKET_WAIT_S);
	if (not_resumed)
		fprintf(stderr,
		        "isg-bench-handshake: the server did not resume %lu sessions it was "
		        "offered\n",
		        not_resumed);
	return failed || not_resumed ? 1 : 0;
}
