/*
 * isg-bench-handshake: mutual-TLS 1.3 handshakes per second against a server
 * (isgd, or `openssl s_server -Verify 1` as the baseline), full or resumed.
 *
 *   isg-bench-handshake --connect HOST:PORT --cert F --key F --ca F
 *                       [--threads T] [--seconds S] [--runs N] [--resume]
 *                       [--label TEXT]
 *
 * T threads each connect, handshake (presenting the client certificate and
 * verifying the server's against the CA), wait for the server's first
 * session ticket, which a TLS 1.3 server sends only once it has checked the
 * client's certificate and Finished, then send close_notify and reset the
 * connection (so no TIME_WAIT piles up). With --resume every handshake after
 * a thread's first offers the newest ticket it holds; a handshake that was
 * not resumed is counted as a failure. Prints handshakes per second, the
 * median of N runs of S seconds, with --pid the server's CPU time per
 * handshake (utime + stime from /proc/PID/stat), and "RESULT label ..." last.
 */
#include <arpa/inet.h>
#include <errno.h>
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
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "bench.h"

#define MAX_RUNS 100

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
	double deadline;
	unsigned long done, not_resumed, failed;
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
	if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
		close(fd);
		return -1;
	}
	return fd;
}

/* One handshake; 0 when it completed and a ticket arrived. */
static int handshake(struct worker *w)
{
	int fd = tcp_connect(w->o);
	if (fd < 0)
		return -1;
	SSL *ssl = SSL_new(w->ctx);
	int rc = -1;
	if (!ssl)
		goto out;
	SSL_set_ex_data(ssl, ex_index, w);
	SSL_set_fd(ssl, fd);
	X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), w->o->host);
	if (w->session)
		SSL_set_session(ssl, w->session);
	w->got_ticket = false;
	if (SSL_connect(ssl) != 1)
		goto out;
	if (w->session && !SSL_session_reused(ssl))
		w->not_resumed++;
	/* The ticket comes after the server has checked our certificate and Finished. */
	struct pollfd p = {.fd = fd, .events = POLLIN};
	double until = bench_now_s() + 5;
	while (!w->got_ticket && bench_now_s() < until) {
		char c;
		int r = SSL_read(ssl, &c, 1);
		if (r > 0)
			continue;
		int e = SSL_get_error(ssl, r);
		if (e != SSL_ERROR_WANT_READ || w->got_ticket)
			break;
		if (poll(&p, 1, 1000) < 0 && errno != EINTR)
			break;
	}
	if (w->got_ticket) {
		rc = 0;
		SSL_shutdown(ssl);
	}
out:
	ERR_clear_error();
	SSL_free(ssl);
	struct linger l = {.l_onoff = 1, .l_linger = 0};
	setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
	close(fd);
	return rc;
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	while (bench_now_s() < w->deadline) {
		if (handshake(w) == 0)
			w->done++;
		else if (++w->failed > 1000)
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
	printf("%s: %s handshakes, %u threads, %u runs of %u s\n", o.label,
	       o.resume ? "resumed" : "full", o.threads, o.runs, o.seconds);
	for (unsigned r = 0; r < o.runs; r++) {
		struct worker *ws = calloc(o.threads, sizeof(*ws));
		pthread_t *th = calloc(o.threads, sizeof(*th));
		if (!ws || !th)
			return 1;
		double t0 = bench_now_s(), cpu0 = o.pid ? proc_cpu_s(o.pid) : 0;
		for (unsigned i = 0; i < o.threads; i++) {
			ws[i] = (struct worker){.o = &o, .ctx = ctx, .deadline = t0 + o.seconds};
			pthread_create(&th[i], NULL, worker_main, &ws[i]);
		}
		unsigned long done = 0, not_resumed = 0, failed = 0;
		for (unsigned i = 0; i < o.threads; i++) {
			pthread_join(th[i], NULL);
			done += ws[i].done;
			not_resumed += ws[i].not_resumed;
			failed += ws[i].failed;
			SSL_SESSION_free(ws[i].session);
		}
		double secs = bench_now_s() - t0;
		rates[r] = (double)done / secs;
		cpu_ms[r] = o.pid && done ? (proc_cpu_s(o.pid) - cpu0) * 1000 / (double)done : 0;
		printf("  run %u: %8.0f handshakes/s (%lu failed, %lu not resumed)", r + 1,
		       rates[r], failed, o.resume ? not_resumed : 0);
		if (o.pid)
			printf(", server %.2f CPU-ms each", cpu_ms[r]);
		printf("\n");
		free(ws);
		free(th);
		if (done == 0 || (o.resume && not_resumed > o.threads)) {
			fprintf(stderr, "isg-bench-handshake: %s\n",
			        done ? "the server did not resume sessions"
			             : "no handshake completed");
			return 1;
		}
	}
	double med = bench_median(rates, o.runs), cpu = bench_median(cpu_ms, o.runs);
	printf("  median: %8.0f handshakes/s", med);
	if (o.pid)
		printf(", server %.2f CPU-ms each", cpu);
	printf("\nRESULT %s resume=%d hs_s=%.1f server_cpu_ms=%.3f\n", o.label, o.resume ? 1 : 0,
	       med, cpu);
	SSL_CTX_free(ctx);
	return 0;
}
