/*
 * isg-bench-relay: the transport baselines of scripts/bench. The same frames
 * as isgd, relayed with no policy and no storage:
 *
 *   isg-bench-relay tls CONFIG     mutual TLS through isgd's own net module
 *                                  (net_tls_new, net_server_start) with the
 *                                  listener, threads, TLS files and limits of
 *                                  the isgd configuration file CONFIG
 *   isg-bench-relay tls CONFIG --sync FILE
 *                                  the same, but each Send's receipt waits for
 *                                  one 4 KiB block of FILE overwritten and
 *                                  made durable (pwrite + fdatasync): the
 *                                  floor of any durable send over this
 *                                  transport on this disk
 *   isg-bench-relay plain PORT     plain TCP on 127.0.0.1:PORT, a thread per
 *                                  connection (stunnel's backend)
 *
 * Hello gets a Welcome; Send gets a receipt at once, and its records go to a
 * subscribed connection of the recipient as a Delivery; Ack gets an
 * AckResult; Ping a Pong. A partner is the first label of its certificate's
 * common name (in plain mode every connection is "relay": the recipient
 * is whichever connection subscribed most recently, round robin).
 * Runs until SIGINT or SIGTERM.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "config/config.h"
#include "net/net.h"
#include "util/util.h"
#include "wire/wire.h"

#define MAX_SUBSCRIBERS 64

static atomic_uint_fast64_t next_gateway_id = 1;

/* --sync: the file whose blocks each receipt waits for, written ahead. */
#define SYNC_BLOCK 4096
#define SYNC_BLOCKS 4096 /* 16 MiB, overwritten in turn */
static int sync_fd = -1;
static atomic_uint_fast64_t sync_next;

static int sync_open(const char *path)
{
	static uint8_t zeros[SYNC_BLOCK];
	sync_fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (sync_fd < 0)
		return -1;
	for (off_t i = 0; i < SYNC_BLOCKS; i++)
		if (pwrite(sync_fd, zeros, sizeof(zeros), i * SYNC_BLOCK) != SYNC_BLOCK)
			return -1;
	return fdatasync(sync_fd);
}

/* One block overwritten and made durable, as a store's commit would be at least. */
static void sync_block(const Isg__Frame *f)
{
	uint8_t block[SYNC_BLOCK] = {0};
	memcpy(block, &f->request_id, sizeof(f->request_id));
	off_t at = (off_t)(atomic_fetch_add(&sync_next, 1) % SYNC_BLOCKS) * SYNC_BLOCK;
	if (pwrite(sync_fd, block, sizeof(block), at) != SYNC_BLOCK || fdatasync(sync_fd) != 0) {
		perror("isg-bench-relay: --sync");
		exit(1);
	}
}

static int64_t wall_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* --- answers shared by both modes --------------------------------------- */

/* The answer to f, or false when f is a Send/Subscribe handled by the caller. */
static void answer_simple(const Isg__Frame *f, Isg__Frame *out, Isg__Welcome *w, Isg__Pong *p,
                          Isg__AckResult *ar, const char *partner)
{
	*out = (Isg__Frame)ISG__FRAME__INIT;
	out->request_id = f->request_id;
	switch (f->body_case) {
	case ISG__FRAME__BODY_HELLO:
		*w = (Isg__Welcome)ISG__WELCOME__INIT;
		w->protocol_version = WIRE_PROTOCOL_VERSION;
		w->partner_id = (char *)partner;
		w->partner_name = (char *)partner;
		w->gateway_version = "isg-bench-relay";
		w->policy_version = "none";
		out->body_case = ISG__FRAME__BODY_WELCOME;
		out->welcome = w;
		break;
	case ISG__FRAME__BODY_ACK:
		*ar = (Isg__AckResult)ISG__ACK_RESULT__INIT;
		ar->acknowledged = (uint32_t)f->ack->n_gateway_ids;
		out->body_case = ISG__FRAME__BODY_ACK_RESULT;
		out->ack_result = ar;
		break;
	case ISG__FRAME__BODY_PING:
		*p = (Isg__Pong)ISG__PONG__INIT;
		p->nonce = f->ping->nonce;
		out->body_case = ISG__FRAME__BODY_PONG;
		out->pong = p;
		break;
	default:
		out->body_case = ISG__FRAME__BODY__NOT_SET;
		break;
	}
}

/* A receipt for a Send, written into the caller's structs. */
static void receipt_of(const Isg__Frame *f, uint64_t gateway_id, Isg__Frame *out,
                       Isg__SendResult *sr, Isg__Receipt *r)
{
	*r = (Isg__Receipt)ISG__RECEIPT__INIT;
	r->message_id = f->send->message_id;
	r->gateway_id = gateway_id;
	r->accepted_at_ms = wall_ms();
	r->record_count = (uint32_t)f->send->n_records;
	r->policy_version = "none";
	*sr = (Isg__SendResult)ISG__SEND_RESULT__INIT;
	sr->receipt = r;
	*out = (Isg__Frame)ISG__FRAME__INIT;
	out->request_id = f->request_id;
	out->body_case = ISG__FRAME__BODY_SEND_RESULT;
	out->send_result = sr;
}

/* The Delivery of a Send (records borrowed from f). */
static void delivery_of(const Isg__Frame *f, const char *sender, uint64_t gateway_id,
                        uint64_t subscribe_rid, Isg__Frame *out, Isg__Delivery *d)
{
	*d = (Isg__Delivery)ISG__DELIVERY__INIT;
	d->gateway_id = gateway_id;
	d->message_id = f->send->message_id;
	d->sender = (char *)sender;
	d->agreement_id = f->send->agreement_id;
	d->agreement_version = 1;
	d->purpose = "relay";
	d->dataset = f->send->dataset;
	d->records = f->send->records;
	d->n_records = f->send->n_records;
	d->accepted_at_ms = wall_ms();
	*out = (Isg__Frame)ISG__FRAME__INIT;
	out->request_id = subscribe_rid;
	out->body_case = ISG__FRAME__BODY_DELIVERY;
	out->delivery = d;
}

/* --- TLS mode: isgd's net module ---------------------------------------- */

struct tls_session {
	char partner[64];
	uint64_t subscribe_rid;
	bool subscribed;
	struct net_conn_ref ref;
};

static pthread_mutex_t subs_lock = PTHREAD_MUTEX_INITIALIZER;
static struct tls_session *subs[MAX_SUBSCRIBERS];
static size_t n_subs, next_sub;

struct relay_job {
	Isg__Frame *send; /* owned */
	char sender[64];
	uint64_t gateway_id, subscribe_rid;
};

static int tls_open(void *ctx, struct net_conn *c, const struct cert_identity *id)
{
	struct tls_session *s = calloc(1, sizeof(*s));
	if (!s)
		return -1;
	size_t n = strcspn(id->subject_cn, ".");
	if (n >= sizeof(s->partner))
		n = sizeof(s->partner) - 1;
	memcpy(s->partner, id->subject_cn, n);
	s->ref = net_conn_ref(c);
	net_conn_set_data(c, s);
	return 0;
}

static void tls_close(void *ctx, struct net_conn *c)
{
	struct tls_session *s = net_conn_data(c);
	pthread_mutex_lock(&subs_lock);
	for (size_t i = 0; i < n_subs; i++)
		if (subs[i] == s) {
			subs[i] = subs[--n_subs];
			break;
		}
	pthread_mutex_unlock(&subs_lock);
	free(s);
}

static void tls_deliver(struct net_conn *c, void *arg)
{
	struct relay_job *j = arg;
	if (c) {
		Isg__Frame out;
		Isg__Delivery d;
		delivery_of(j->send, j->sender, j->gateway_id, j->subscribe_rid, &out, &d);
		net_conn_send(c, &out);
	}
	wire_frame_free(j->send);
	free(j);
}

/* Hand the Send to a subscriber of its recipient; takes f when it returns true. */
static bool tls_relay(struct tls_session *s, Isg__Frame *f, uint64_t gateway_id)
{
	struct net_conn_ref ref;
	uint64_t rid = 0;
	bool found = false;
	pthread_mutex_lock(&subs_lock);
	for (size_t k = 0; k < n_subs && !found; k++) {
		size_t i = (next_sub + k) % n_subs;
		if (strcmp(subs[i]->partner, f->send->recipient) == 0) {
			ref = subs[i]->ref;
			rid = subs[i]->subscribe_rid;
			next_sub = i + 1;
			found = true;
		}
	}
	pthread_mutex_unlock(&subs_lock);
	if (!found)
		return false;
	struct relay_job *j = calloc(1, sizeof(*j));
	if (!j)
		return false;
	j->send = f;
	str_copy(j->sender, s->partner, sizeof(j->sender));
	j->gateway_id = gateway_id;
	j->subscribe_rid = rid;
	net_post(ref, tls_deliver, j);
	return true;
}

static void tls_frame(void *ctx, struct net_conn *c, Isg__Frame *f)
{
	struct tls_session *s = net_conn_data(c);
	Isg__Frame out;
	if (f->body_case == ISG__FRAME__BODY_SEND) {
		Isg__SendResult sr;
		Isg__Receipt r;
		uint64_t id = atomic_fetch_add(&next_gateway_id, 1);
		if (sync_fd >= 0)
			sync_block(f);
		receipt_of(f, id, &out, &sr, &r);
		net_conn_send(c, &out);
		if (!tls_relay(s, f, id))
			wire_frame_free(f);
		return;
	}
	if (f->body_case == ISG__FRAME__BODY_SUBSCRIBE) {
		s->subscribe_rid = f->request_id;
		pthread_mutex_lock(&subs_lock);
		if (!s->subscribed && n_subs < MAX_SUBSCRIBERS) {
			subs[n_subs++] = s;
			s->subscribed = true;
		}
		pthread_mutex_unlock(&subs_lock);
		net_conn_wait(c, 0);
		wire_frame_free(f);
		return;
	}
	Isg__Welcome w;
	Isg__Pong p;
	Isg__AckResult ar;
	answer_simple(f, &out, &w, &p, &ar, s->partner);
	if (out.body_case != ISG__FRAME__BODY__NOT_SET)
		net_conn_send(c, &out);
	wire_frame_free(f);
}

static void tls_wake(void *ctx, struct net_conn *c, const char *key)
{
}

static void tls_refused(void *ctx, const char *peer, const char *subject, const char *reason)
{
	fprintf(stderr, "isg-bench-relay: refused %s: %s\n", peer, reason);
}

static int run_tls(const char *config_path, const sigset_t *sigs)
{
	struct isgd_config cfg;
	struct ydoc_diags diags;
	config_init(&cfg);
	ydoc_diags_init(&diags);
	if (config_load(config_path, &cfg, &diags) != 0) {
		ydoc_diags_print(&diags, stderr);
		return 1;
	}
	ydoc_diags_release(&diags);
	log_set_level(cfg.log_level);
	char err[512];
	SSL_CTX *tls;
	if (net_tls_new(&cfg, -1, &tls, err, sizeof(err)) != 0) {
		fprintf(stderr, "isg-bench-relay: %s\n", err);
		return 1;
	}
	struct net_options no = {
	    .host = cfg.listen_host,
	    .port = cfg.listen_port,
	    .threads = cfg.threads,
	    .max_frame = cfg.max_frame_bytes,
	    .max_connections = cfg.max_connections,
	    .handshake_timeout_ms = cfg.handshake_timeout_ms,
	    .idle_timeout_ms = cfg.idle_timeout_ms,
	    .conn_buffer_bytes = cfg.conn_buffer_bytes,
	    .max_inflight = cfg.max_inflight,
	    .inflight_buffer = cfg.inflight_buffer_bytes,
	};
	struct net_handler h = {.on_open = tls_open,
	                        .on_frame = tls_frame,
	                        .on_close = tls_close,
	                        .on_wake = tls_wake,
	                        .on_refused = tls_refused};
	struct net_server *srv;
	if (net_server_start(&no, tls, &h, &srv, err, sizeof(err)) != 0) {
		fprintf(stderr, "isg-bench-relay: %s\n", err);
		return 1;
	}
	SSL_CTX_free(tls);
	fprintf(stderr, "isg-bench-relay: tls on %s:%u, %u threads\n", cfg.listen_host,
	        net_server_port(srv), cfg.threads);
	int sig;
	sigwait(sigs, &sig);
	net_server_stop(srv, 1000);
	net_server_free(srv);
	config_release(&cfg);
	return 0;
}

/* --- plain mode: a thread per TCP connection ----------------------------- */

struct plain_conn {
	int fd;
	pthread_mutex_t write_lock;
	atomic_int refs;
	uint64_t subscribe_rid;
};

static struct plain_conn *plain_subs[MAX_SUBSCRIBERS];

static void plain_unref(struct plain_conn *pc)
{
	if (atomic_fetch_sub(&pc->refs, 1) == 1) {
		close(pc->fd);
		pthread_mutex_destroy(&pc->write_lock);
		free(pc);
	}
}

static int write_all(int fd, const uint8_t *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, p, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

static int plain_send(struct plain_conn *pc, const Isg__Frame *f)
{
	size_t n = wire_frame_size(f);
	uint8_t *buf = malloc(n);
	if (!buf)
		return -1;
	wire_frame_encode(f, buf);
	pthread_mutex_lock(&pc->write_lock);
	int rc = write_all(pc->fd, buf, n);
	pthread_mutex_unlock(&pc->write_lock);
	free(buf);
	return rc;
}

static void plain_handle(struct plain_conn *pc, Isg__Frame *f)
{
	Isg__Frame out;
	if (f->body_case == ISG__FRAME__BODY_SEND) {
		Isg__SendResult sr;
		Isg__Receipt r;
		uint64_t id = atomic_fetch_add(&next_gateway_id, 1);
		receipt_of(f, id, &out, &sr, &r);
		plain_send(pc, &out);
		struct plain_conn *to = NULL;
		pthread_mutex_lock(&subs_lock);
		if (n_subs) {
			to = plain_subs[next_sub++ % n_subs];
			atomic_fetch_add(&to->refs, 1);
		}
		pthread_mutex_unlock(&subs_lock);
		if (to) {
			Isg__Delivery d;
			delivery_of(f, "relay", id, to->subscribe_rid, &out, &d);
			plain_send(to, &out);
			plain_unref(to);
		}
		return;
	}
	if (f->body_case == ISG__FRAME__BODY_SUBSCRIBE) {
		pc->subscribe_rid = f->request_id;
		pthread_mutex_lock(&subs_lock);
		if (n_subs < MAX_SUBSCRIBERS) {
			plain_subs[n_subs++] = pc;
			atomic_fetch_add(&pc->refs, 1);
		}
		pthread_mutex_unlock(&subs_lock);
		return;
	}
	Isg__Welcome w;
	Isg__Pong p;
	Isg__AckResult ar;
	answer_simple(f, &out, &w, &p, &ar, "relay");
	if (out.body_case != ISG__FRAME__BODY__NOT_SET)
		plain_send(pc, &out);
}

static void *plain_main(void *arg)
{
	struct plain_conn *pc = arg;
	size_t cap = 1 << 16, len = 0;
	uint8_t *buf = malloc(cap);
	while (buf) {
		size_t hdr, body;
		int rc = wire_frame_peek(buf, len, WIRE_DEFAULT_MAX_FRAME, &hdr, &body);
		if (rc < 0)
			break;
		if (rc == 1 && hdr + body <= len) {
			Isg__Frame *f = wire_frame_decode(buf + hdr, body);
			if (!f)
				break;
			plain_handle(pc, f);
			wire_frame_free(f);
			memmove(buf, buf + hdr + body, len - hdr - body);
			len -= hdr + body;
			continue;
		}
		if (rc == 1 && hdr + body > cap) {
			uint8_t *nb = realloc(buf, hdr + body);
			if (!nb)
				break;
			buf = nb;
			cap = hdr + body;
		}
		ssize_t r = read(pc->fd, buf + len, cap - len);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		len += (size_t)r;
	}
	free(buf);
	pthread_mutex_lock(&subs_lock);
	for (size_t i = 0; i < n_subs; i++)
		if (plain_subs[i] == pc) {
			plain_subs[i] = plain_subs[--n_subs];
			plain_unref(pc);
			break;
		}
	pthread_mutex_unlock(&subs_lock);
	shutdown(pc->fd, SHUT_RDWR);
	plain_unref(pc);
	return NULL;
}

static void *plain_accept(void *arg)
{
	int lfd = *(int *)arg;
	for (;;) {
		int fd = accept(lfd, NULL, NULL);
		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED || errno == EMFILE)
				continue;
			return NULL;
		}
		int one = 1;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		struct plain_conn *pc = calloc(1, sizeof(*pc));
		if (!pc) {
			close(fd);
			continue;
		}
		pc->fd = fd;
		pthread_mutex_init(&pc->write_lock, NULL);
		atomic_init(&pc->refs, 1);
		pthread_t t;
		if (pthread_create(&t, NULL, plain_main, pc) != 0) {
			plain_unref(pc);
			continue;
		}
		pthread_detach(t);
	}
}

static int run_plain(const char *port_text, const sigset_t *sigs)
{
	int64_t port;
	if (str_to_i64(port_text, 1, 65535, &port) != 0) {
		fprintf(stderr, "isg-bench-relay: bad port '%s'\n", port_text);
		return 2;
	}
	int lfd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (lfd < 0 || bind(lfd, (struct sockaddr *)&a, sizeof(a)) != 0 || listen(lfd, 1024) != 0) {
		fprintf(stderr, "isg-bench-relay: cannot listen on port %lld: %s\n",
		        (long long)port, strerror(errno));
		return 1;
	}
	pthread_t t;
	if (pthread_create(&t, NULL, plain_accept, &lfd) != 0)
		return 1;
	fprintf(stderr, "isg-bench-relay: plain on 127.0.0.1:%lld\n", (long long)port);
	int sig;
	sigwait(sigs, &sig);
	return 0; /* exit closes everything */
}

int main(int argc, char **argv)
{
	bool durable = argc == 5 && strcmp(argv[1], "tls") == 0 && strcmp(argv[3], "--sync") == 0;
	if ((argc != 3 && !durable) ||
	    (strcmp(argv[1], "tls") != 0 && strcmp(argv[1], "plain") != 0)) {
		fputs("usage: isg-bench-relay tls ISGD-CONFIG [--sync FILE] | plain PORT\n",
		      stderr);
		return 2;
	}
	if (durable && sync_open(argv[4]) != 0) {
		fprintf(stderr, "isg-bench-relay: %s: %s\n", argv[4], strerror(errno));
		return 1;
	}
	signal(SIGPIPE, SIG_IGN);
	sigset_t sigs;
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL); /* before any thread starts */
	return strcmp(argv[1], "tls") == 0 ? run_tls(argv[2], &sigs) : run_plain(argv[2], &sigs);
}
