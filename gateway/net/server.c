/*
 * Workers, listeners and connections. Each worker owns an epoll loop, a
 * SO_REUSEPORT listener, an eventfd for work posted by other threads, and its
 * connections: each goes, as soon as it is accepted, to the worker with the
 * fewest, and is only ever touched by that worker.
 *
 * OpenSSL is driven directly, as nginx and HAProxy do: read until
 * WANT_READ, keep going while OpenSSL still holds decrypted bytes, wait for
 * writability when a read says WANT_WRITE, treat EOF without close_notify
 * as a dirty close, and always send close_notify on a clean one. A peer's
 * close_notify is a half-close: nothing more is read, but the requests
 * already read are answered before ours goes.
 *
 * A connection is idle when nothing moves either way: no byte read, and no
 * byte of what it is owed written out. One that reads nothing is so cut at
 * idle_timeout whatever it is owed; a slow reader is not while its answer
 * flows. A clean close sends every answer owed, then close_notify (waiting
 * for room for it if need be), and shuts our half of the TCP connection,
 * then reads and drops what the peer still sends until it closes its half
 * or has acknowledged everything (conn_finish): closing with bytes unread
 * makes the kernel reset the connection, and a reset throws away what is
 * still on its way to the peer.
 */
#include "net/net.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <malloc.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/sockios.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>

#include "util/util.h"

#define READ_CHUNK 16384
#define IN_INITIAL 4096
/* A larger input buffer is given back once empty and quiet this long (conn_in_shrink). */
#define IN_KEEP 65536
#define IN_QUIET_MS 500
#define TICK_MS 1000
/* Under load, look for timed-out connections at most this often. */
#define IDLE_SCAN_MS 100
#define LINGER_MS 2000
/* Out of descriptors: the listener rests this long (it stays readable, so
 * epoll would otherwise spin), and the failure is logged at most this often. */
#define ACCEPT_PAUSE_MS 100
#define ACCEPT_LOG_MS 1000
/* conn.refused lines a worker writes in a second; the rest are counted (net_refusal_log). */
#define REFUSED_LOG_PER_S 10
#define REFUSED_LOG_MS 1000
/* Bytes a worker takes in frames (or frees in buffers) before its next idle moment
 * gives memory back (worker_idle). */
#define TRIM_AFTER_BYTES (16u << 20)
#define TRIM_QUIET_MS 500

/*
 * CONN_SHUTDOWN: a clean close whose close_notify waits for room in the
 * socket. CONN_LINGER: a refused handshake's alert, or a clean close's
 * close_notify, is sent and our side shut down; we read and discard until
 * the peer closes or has acknowledged all we sent, so the kernel does not
 * answer the peer's unread bytes with a reset that would hide what it has
 * yet to receive. In both the handler is done with the connection.
 */
enum conn_state { CONN_HANDSHAKE, CONN_OPEN, CONN_CLOSING, CONN_SHUTDOWN, CONN_LINGER };

struct net_conn {
	struct net_worker *w;
	uint64_t id;
	uint32_t slot;
	int fd;
	SSL *ssl;
	enum conn_state state;
	bool opened;           /* on_open was called: on_close is owed */
	bool read_wants_write; /* SSL_read said WANT_WRITE */
	bool interest_out;     /* EPOLLOUT registered */
	bool interest_in;      /* EPOLLIN registered */
	bool drain_wanted;     /* net_conn_output_full said yes: on_drained is owed */
	bool peer_closed;      /* its close_notify came: answers owed, then ours */
	char peer[64];

	uint8_t *in;
	size_t in_len, in_cap;
	uint8_t *out;
	size_t out_off, out_len, out_cap;

	uint32_t inflight;
	bool held_back;      /* its next frame waits for room (room_take): not read */
	size_t frame_held;   /* bytes the frame in on_frame took from the room */
	size_t room_granted; /* room given while held back, for the frame at the head of in */
	/* Guarded by the server's room_mu: in its queue of held-back connections. */
	bool room_queued;
	size_t room_need;
	struct net_conn *room_prev, *room_next;
	uint64_t bad_frames;   /* answered with BAD_FRAME; only the first is logged */
	int64_t deadline;      /* handshake or idle deadline, monotonic ms */
	int unacked;           /* bytes the kernel held for the peer at the last look;
	                          -1: not looked since our last write (conn_watch_acks) */
	int64_t wait_deadline; /* long-poll deadline while waiting, 0 = none */
	bool waiting;
	struct net_conn *wait_prev, *wait_next;
	struct net_conn *prev, *next;
	void *data;
	char verify_error[160];   /* first certificate verification failure */
	char verify_subject[256]; /* the certificate it was about */
};

struct post {
	struct post *next;
	uint64_t id; /* 0: a broadcast to every connection */
	void (*fn)(struct net_conn *c, void *arg);
	void *arg;
	struct shared_arg *shared; /* broadcast argument, freed by its last worker */
	bool waiters_only;         /* a broadcast to waiting connections only */
	char *wake_key;            /* a wake-up, not a call */
	size_t room;               /* room given to held-back connection id (room_grant) */
	struct adopt *adopt;       /* a connection accepted by another worker */
};

struct adopt {
	int fd;
	struct sockaddr_storage ss;
};

struct shared_arg {
	atomic_int refs;
	void *arg;
	void (*free_arg)(void *arg);
};

struct net_worker {
	struct net_server *s;
	uint32_t index;
	pthread_t thread;
	int epfd, listen_fd, event_fd;
	pthread_mutex_t mu; /* guards posts */
	struct post *posts, *posts_tail;
	struct net_conn **slots;
	uint32_t n_slots;
	uint32_t next_gen;
	struct net_conn *conns;   /* every connection */
	struct net_conn *waiters; /* connections in net_conn_wait */
	atomic_uint n_waiters;    /* how many: read by net_server_wake */
	atomic_uint n_conns;      /* connections given to this worker, adopted or not yet */
	bool stopping;
	int64_t stop_deadline;
	int64_t idle_scan_at;      /* worker_sweep's next pass over every connection */
	int64_t accept_resume_at;  /* the listener rests until then; 0 = listening */
	int64_t accept_log_at;     /* the next net.accept_failed may be logged then */
	uint64_t accept_unlogged;  /* failures since the last one logged */
	int64_t refused_window;    /* when this second of conn.refused lines ends */
	uint32_t refused_logged;   /* lines written in it */
	uint64_t refused_unlogged; /* refusals not written since conn.refused_unlogged */
	uint64_t trim_due;         /* bytes of frames taken, and of buffers freed, since
	                              worker_idle last gave memory back */
	int64_t quiet_since;       /* the first of this run of idle wake-ups; 0 = busy */
};

struct net_server {
	struct net_options opt;
	struct net_handler h;
	pthread_mutex_t tls_mu;
	SSL_CTX *tls;
	uint16_t port;
	atomic_uint conn_count;
	atomic_bool stopping;
	/*
	 * limits.inflight_buffer: bytes of requests handed to the handler and
	 * not yet answered, over every connection. Connections whose next frame
	 * did not fit wait in a queue, first come first served, and are handed
	 * room as answers give it back (room_give), each on its own worker.
	 */
	atomic_size_t room_held;
	atomic_uint room_waiting; /* queued, or about to be: room_give looks only then */
	pthread_mutex_t room_mu;
	struct net_conn *room_head, *room_tail;
	int64_t room_log_at; /* under room_mu: net.inflight_full may be logged then */
	int64_t grace_ms;
	uint32_t n_workers;
	struct net_worker *workers;
};

/*
 * epoll user data: a connection's id, never its address. One batch of
 * events may hold several for a connection that an earlier event of the
 * same batch freed (a post that cut it, a wake-up whose write failed); its
 * id then finds nothing, where its address would be used after the free.
 * The listener and the eventfd are tagged by values no id can be: an id's
 * upper half, its generation, is never 0.
 */
#define TAG_LISTEN 1
#define TAG_EVENT 2

static void conn_free(struct net_conn *c);
static void conn_on_readable(struct net_conn *c);
static void conn_flush(struct net_conn *c);
static bool conn_write(struct net_conn *c);

/* Open and serving: the handler may use it (not yet closing, or closing with answers owed). */
static bool conn_serving(const struct net_conn *c)
{
	return c->state == CONN_OPEN || c->state == CONN_CLOSING;
}

/* ------------------------------------------------------------------------ */
/* Slots map a connection id to the connection for posted work. */

static int slot_take(struct net_worker *w, struct net_conn *c)
{
	for (uint32_t i = 0; i < w->n_slots; i++) {
		if (!w->slots[i]) {
			c->slot = i;
			goto found;
		}
	}
	uint32_t n = w->n_slots ? w->n_slots * 2 : 64;
	struct net_conn **grown = realloc(w->slots, n * sizeof(*grown));
	if (!grown)
		return ISG_ERR_NOMEM;
	memset(grown + w->n_slots, 0, (n - w->n_slots) * sizeof(*grown));
	c->slot = w->n_slots;
	w->slots = grown;
	w->n_slots = n;
found:
	w->slots[c->slot] = c;
	if (++w->next_gen == 0)
		w->next_gen = 1; /* id 0 means "no connection"; see TAG_LISTEN too */
	c->id = ((uint64_t)w->next_gen << 32) | c->slot;
	return 0;
}

static struct net_conn *slot_find(struct net_worker *w, uint64_t id)
{
	uint32_t slot = (uint32_t)id;
	if (slot >= w->n_slots || !w->slots[slot] || w->slots[slot]->id != id)
		return NULL;
	return w->slots[slot];
}

/* ------------------------------------------------------------------------ */
/*
 * Room for requests in flight (limits.inflight_buffer). A frame is taken
 * only if its bytes fit beside what the requests of every connection hold,
 * or if nothing is held at all (so a frame as big as the bound still goes).
 * Otherwise its connection is held back: it reads no more, and what the
 * partner sends after waits in the kernel's buffers, so TCP slows it down.
 * Held-back connections queue in order; as answers give room back, the
 * first ones that fit are handed their frame's room and woken on their own
 * worker, and no other connection is: no polling, no herd. While nobody
 * waits, taking and giving back cost an atomic operation each.
 */

static void worker_push(struct net_worker *w, struct post *p);

static bool room_fits(const struct net_server *s, size_t held, size_t n)
{
	size_t bound = s->opt.inflight_buffer;
	return held == 0 || bound == 0 || (held <= bound && n <= bound - held);
}

/* Take n bytes of room if they fit. */
static bool room_try(struct net_server *s, size_t n)
{
	size_t held = atomic_load(&s->room_held);
	do {
		if (!room_fits(s, held, n))
			return false;
	} while (!atomic_compare_exchange_weak(&s->room_held, &held, held + n));
	return true;
}

/* Out of the queue (room_mu held). */
static void room_unlink(struct net_server *s, struct net_conn *c)
{
	if (c->room_prev)
		c->room_prev->room_next = c->room_next;
	else
		s->room_head = c->room_next;
	if (c->room_next)
		c->room_next->room_prev = c->room_prev;
	else
		s->room_tail = c->room_prev;
	c->room_prev = c->room_next = NULL;
	c->room_queued = false;
	atomic_fetch_sub(&s->room_waiting, 1);
}

/* Hand room to the first queued connections while it fits (room_mu held). */
static void room_grant(struct net_server *s)
{
	struct net_conn *c;
	while ((c = s->room_head) != NULL && room_try(s, c->room_need)) {
		room_unlink(s, c);
		struct post *p = calloc(1, sizeof(*p));
		if (!p)
			fatal("out of memory handing room to a connection");
		p->id = c->id;
		p->room = c->room_need;
		worker_push(c->w, p); /* conn_room_granted */
	}
}

/* Held back: said in the log at most once a second, with how many wait. */
static void room_log_full(struct net_server *s)
{
	int64_t now = time_mono_ms();
	if (now < s->room_log_at)
		return;
	s->room_log_at = now + 1000;
	log_event(LOG_WARN, "net.inflight_full", "held=%zu limit=%zu waiting=%u",
	          atomic_load(&s->room_held), s->opt.inflight_buffer,
	          atomic_load(&s->room_waiting));
}

/* Room for the next frame, n bytes; false: the connection is held back, queued for it. */
static bool room_take(struct net_conn *c, size_t n)
{
	struct net_server *s = c->w->s;
	if (atomic_load(&s->room_waiting) == 0 && room_try(s, n))
		return true;
	pthread_mutex_lock(&s->room_mu);
	/* Counted before room_try looks: a room_give whose bytes it missed sees the count. */
	atomic_fetch_add(&s->room_waiting, 1);
	bool taken = !s->room_head && room_try(s, n);
	if (taken) {
		atomic_fetch_sub(&s->room_waiting, 1);
	} else {
		c->held_back = true;
		c->room_queued = true;
		c->room_need = n;
		c->room_prev = s->room_tail;
		c->room_next = NULL;
		if (s->room_tail)
			s->room_tail->room_next = c;
		else
			s->room_head = c;
		s->room_tail = c;
		room_log_full(s);
	}
	pthread_mutex_unlock(&s->room_mu);
	return taken;
}

/* n bytes are no longer held: connections waiting for them get them. */
static void room_give(struct net_server *s, size_t n)
{
	if (n == 0)
		return;
	atomic_fetch_sub(&s->room_held, n);
	if (atomic_load(&s->room_waiting) == 0)
		return;
	pthread_mutex_lock(&s->room_mu);
	room_grant(s);
	pthread_mutex_unlock(&s->room_mu);
}

/* The connection takes no more frames: out of the queue, and what it was given back. */
static void room_leave(struct net_conn *c)
{
	struct net_server *s = c->w->s;
	if (c->held_back) {
		pthread_mutex_lock(&s->room_mu);
		if (c->room_queued) {
			room_unlink(s, c);
			room_grant(s); /* those behind it may fit */
		}
		pthread_mutex_unlock(&s->room_mu);
		c->held_back = false; /* room on its way comes back (conn_room_granted) */
	}
	room_give(s, c->room_granted);
	c->room_granted = 0;
}

/*
 * Room came for a held-back connection's next frame: it reads on. It was
 * not idle while held back; its idle time starts again now, as after
 * net_conn_unwait.
 */
static void conn_room_granted(struct net_worker *w, struct net_conn *c, size_t room)
{
	if (!c || c->state != CONN_OPEN || !c->held_back || w->stopping) {
		room_give(w->s, room);
		return;
	}
	c->held_back = false;
	c->room_granted = room;
	c->deadline = time_mono_ms() + w->s->opt.idle_timeout_ms;
	conn_on_readable(c); /* takes the frame, reads on, flushes */
}

/* ------------------------------------------------------------------------ */
/* Epoll interest follows what the connection needs. */

static bool out_over_bound(const struct net_conn *c)
{
	return c->out_len - c->out_off > c->w->s->opt.conn_buffer_bytes;
}

static void conn_update_interest(struct net_conn *c)
{
	struct net_server *s = c->w->s;
	bool backlogged = out_over_bound(c) || c->inflight >= s->opt.max_inflight || c->held_back;
	bool want_in = c->state != CONN_CLOSING && !c->w->stopping &&
	               (c->state == CONN_HANDSHAKE || !backlogged);
	bool want_out = c->out_len > c->out_off || c->read_wants_write;
	if (!conn_serving(c))
		return; /* the others set their own interest */
	if (want_in == c->interest_in && want_out == c->interest_out)
		return;
	struct epoll_event ev = {.events = (want_in ? EPOLLIN : 0) | (want_out ? EPOLLOUT : 0),
	                         .data.u64 = c->id};
	epoll_ctl(c->w->epfd, EPOLL_CTL_MOD, c->fd, &ev);
	bool resumed = want_in && !c->interest_in && c->state == CONN_OPEN;
	c->interest_in = want_in;
	c->interest_out = want_out;
	/* OpenSSL may hold decrypted bytes epoll cannot see: drain them now. */
	if (resumed && (SSL_has_pending(c->ssl) || c->in_len > 0))
		conn_on_readable(c);
}

static void log_tls_close(const struct net_conn *c, const char *event, const char *reason)
{
	char q[256];
	log_event(LOG_INFO, event, "peer=%s reason=%s", c->peer, log_quote(q, sizeof(q), reason));
}

/* The handler is done with the connection: on_close, once. */
static void conn_release(struct net_conn *c)
{
	struct net_worker *w = c->w;
	if (c->bad_frames > 1)
		log_event(LOG_WARN, "conn.bad_frames", "peer=%s count=%" PRIu64, c->peer,
		          c->bad_frames);
	c->bad_frames = 0;
	room_leave(c);
	if (c->opened && w->s->h.on_close)
		w->s->h.on_close(w->s->h.ctx, c);
	c->opened = false;
	c->data = NULL;
	net_conn_unwait(c);
}

/* Free it now; a connection that failed, or whose clean close is over or ran out of time. */
static void conn_free(struct net_conn *c)
{
	struct net_worker *w = c->w;
	conn_release(c);
	if (c->prev)
		c->prev->next = c->next;
	else
		w->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	w->slots[c->slot] = NULL;
	epoll_ctl(w->epfd, EPOLL_CTL_DEL, c->fd, NULL);
	close(c->fd);
	SSL_free(c->ssl);
	free(c->in);
	free(c->out);
	atomic_fetch_sub(&w->s->conn_count, 1);
	atomic_fetch_sub(&w->n_conns, 1);
	free(c);
}

/* Our side shut, read and drop the peer's bytes until it closes (conn_linger_read). */
static void conn_linger(struct net_conn *c)
{
	shutdown(c->fd, SHUT_WR);
	c->state = CONN_LINGER;
	c->deadline = time_mono_ms() + LINGER_MS;
	struct epoll_event ev = {.events = EPOLLIN, .data.u64 = c->id};
	epoll_ctl(c->w->epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

/*
 * Read and drop what the peer sent. The linger is over when it closes, or
 * when its kernel has acknowledged all we sent (our FIN included) and
 * nothing is left unread: a close then resets nothing that is still on
 * its way. Not in a pass that dropped bytes: the peer is still sending
 * (the rest of a frame over max_frame, sends pipelined after it), and a
 * close would answer its next bytes with a reset, which some systems let
 * discard the answers it has not read yet. A peer that neither closes nor
 * falls quiet is closed at the deadline (worker_sweep).
 */
static bool linger_over(int fd)
{
	char scratch[4096];
	bool dropped = false;
	for (int i = 0; i < 16; i++) {
		ssize_t n = recv(fd, scratch, sizeof(scratch), 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n > 0) {
			dropped = true;
			continue;
		}
		if (n == 0 || errno != EAGAIN)
			return true; /* EOF or error: the peer has seen what we sent */
		int unacked = 0;
		return !dropped && ioctl(fd, SIOCOUTQ, &unacked) == 0 && unacked == 0;
	}
	return false; /* more to drop: the next event, or the deadline */
}

static void conn_linger_read(struct net_conn *c)
{
	if (linger_over(c->fd))
		conn_free(c);
}

/*
 * A clean close, once nothing is owed: close_notify, and when the socket
 * has no room for it, wait for room (CONN_SHUTDOWN, conn_event) as an
 * answer would, idle_timeout at most (a half-closed connection keeps the
 * bound its close_notify set); then linger.
 */
static void conn_finish(struct net_conn *c)
{
	conn_release(c);
	ERR_clear_error();
	int r = SSL_shutdown(c->ssl);
	int e = r < 0 ? SSL_get_error(c->ssl, r) : SSL_ERROR_NONE;
	ERR_clear_error();
	if (e == SSL_ERROR_NONE) {
		conn_linger(c);
		return;
	}
	if (e != SSL_ERROR_WANT_WRITE) {
		conn_free(c); /* the peer is gone */
		return;
	}
	if (c->state == CONN_SHUTDOWN)
		return; /* still no room */
	c->state = CONN_SHUTDOWN;
	if (!c->peer_closed)
		c->deadline = time_mono_ms() + c->w->s->opt.idle_timeout_ms;
	struct epoll_event ev = {.events = EPOLLOUT, .data.u64 = c->id};
	epoll_ctl(c->w->epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

/* ------------------------------------------------------------------------ */
/* Handshake. */

/* The context new connections use now, referenced: SSL_CTX_free it. */
static SSL_CTX *server_tls(struct net_server *s)
{
	pthread_mutex_lock(&s->tls_mu);
	SSL_CTX *tls = s->tls;
	SSL_CTX_up_ref(tls);
	pthread_mutex_unlock(&s->tls_mu);
	return tls;
}

/*
 * Against the server's current context: 0 when c's certificate chain still
 * verifies, else an error with why in reason. A handshake begun before a
 * reload verified against the context it started with; this catches one
 * that ends after the reload's recheck of open connections has passed.
 */
static int conn_verify_current(struct net_conn *c, bool only_if_replaced, char *reason, size_t len)
{
	SSL_CTX *tls = server_tls(c->w->s);
	int rc = 0;
	if (!only_if_replaced || SSL_get_SSL_CTX(c->ssl) != tls)
		rc = net_tls_verify_peer(tls, c->ssl, reason, len);
	SSL_CTX_free(tls);
	return rc;
}

static int verify_cb(int ok, X509_STORE_CTX *store)
{
	if (ok)
		return ok;
	SSL *ssl = X509_STORE_CTX_get_ex_data(store, SSL_get_ex_data_X509_STORE_CTX_idx());
	struct net_conn *c = ssl ? SSL_get_app_data(ssl) : NULL;
	if (c && !c->verify_error[0]) {
		int e = X509_STORE_CTX_get_error(store);
		str_copy(c->verify_error, X509_verify_cert_error_string(e),
		         sizeof(c->verify_error));
		/* The partner's own certificate, not the one the error is about
		 * (for a chain from an unknown CA, the CA's). */
		X509 *cert = X509_STORE_CTX_get0_cert(store);
		if (!cert)
			cert = X509_STORE_CTX_get_current_cert(store);
		if (cert) {
			struct cert_identity id;
			net_cert_identity(cert, &id);
			str_copy(c->verify_subject, id.subject, sizeof(c->verify_subject));
		}
	}
	return ok;
}

/*
 * A refused connection gets its conn.refused line only while its worker
 * has written fewer than REFUSED_LOG_PER_S in the current second, so that
 * a scanner or a client reconnecting in a loop cannot fill the disk with
 * the log. The others are counted, and their number is written when the
 * second is over (conn.refused_unlogged). The audit log counts every
 * refusal on its own (refusals.c).
 */
static void worker_refused_flush(struct net_worker *w)
{
	if (w->refused_unlogged)
		log_event(LOG_WARN, "conn.refused_unlogged", "count=%llu",
		          (unsigned long long)w->refused_unlogged);
	w->refused_unlogged = 0;
}

static void worker_refused_roll(struct net_worker *w, int64_t now)
{
	if (now < w->refused_window)
		return;
	worker_refused_flush(w);
	w->refused_logged = 0;
	w->refused_window = now + REFUSED_LOG_MS;
}

static bool worker_refusal_log(struct net_worker *w)
{
	worker_refused_roll(w, time_mono_ms());
	if (w->refused_logged < REFUSED_LOG_PER_S) {
		w->refused_logged++;
		return true;
	}
	w->refused_unlogged++;
	return false;
}

bool net_refusal_log(struct net_conn *c)
{
	return worker_refusal_log(c->w);
}

static void conn_refuse(struct net_conn *c, const char *reason)
{
	struct net_server *s = c->w->s;
	char q1[256], q2[320];
	if (worker_refusal_log(c->w))
		log_event(LOG_WARN, "conn.refused", "peer=%s subject=%s reason=%s", c->peer,
		          log_quote(q1, sizeof(q1), c->verify_subject),
		          log_quote(q2, sizeof(q2), reason));
	if (s->h.on_refused)
		s->h.on_refused(s->h.ctx, c->peer, c->verify_subject, reason);
	conn_linger(c);
}

static void conn_handshake(struct net_conn *c)
{
	ERR_clear_error();
	int r = SSL_do_handshake(c->ssl);
	if (r != 1) {
		int e = SSL_get_error(c->ssl, r);
		if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
			c->interest_out = e == SSL_ERROR_WANT_WRITE;
			struct epoll_event ev = {.events =
			                             EPOLLIN | (c->interest_out ? EPOLLOUT : 0),
			                         .data.u64 = c->id};
			epoll_ctl(c->w->epfd, EPOLL_CTL_MOD, c->fd, &ev);
			return;
		}
		char reason[320];
		if (c->verify_error[0]) {
			snprintf(reason, sizeof(reason), "certificate verify failed: %s",
			         c->verify_error);
		} else {
			unsigned long err = ERR_peek_last_error();
			/* OpenSSL 3 reports a peer gone without a word (a port scan,
			 * a load balancer's health check) as an "unexpected eof":
			 * said in the words the audit guide uses. */
			bool eof = ERR_GET_LIB(err) == ERR_LIB_SSL &&
			           ERR_GET_REASON(err) == SSL_R_UNEXPECTED_EOF_WHILE_READING;
			if (err && !eof)
				ERR_error_string_n(err, reason, sizeof(reason));
			else
				str_copy(reason,
				         e == SSL_ERROR_SYSCALL || eof
				             ? "connection closed during handshake"
				             : "handshake failed",
				         sizeof(reason));
		}
		ERR_clear_error();
		conn_refuse(c, reason);
		return;
	}
	X509 *cert = SSL_get0_peer_certificate(c->ssl);
	if (!cert) { /* cannot happen with FAIL_IF_NO_PEER_CERT, but never serve anonymously */
		conn_refuse(c, "no client certificate");
		return;
	}
	char why[160];
	if (conn_verify_current(c, true, why, sizeof(why)) != 0) {
		char reason[200];
		snprintf(reason, sizeof(reason), "certificate verify failed: %s", why);
		struct cert_identity cid;
		net_cert_identity(cert, &cid);
		str_copy(c->verify_subject, cid.subject, sizeof(c->verify_subject));
		conn_refuse(c, reason);
		return;
	}
	struct cert_identity id;
	net_cert_identity(cert, &id);
	c->state = CONN_OPEN;
	c->opened = true;
	c->deadline = time_mono_ms() + c->w->s->opt.idle_timeout_ms;
	c->interest_out = false;
	c->interest_in = false; /* force the update below to register */
	struct net_server *s = c->w->s;
	char q[600];
	log_event(LOG_INFO, "conn.established", "peer=%s subject=%s tls=%s resumed=%d", c->peer,
	          log_quote(q, sizeof(q), id.subject), SSL_get_version(c->ssl),
	          SSL_session_reused(c->ssl));
	if (s->h.on_open(s->h.ctx, c, &id) != 0)
		net_conn_close(c);
	struct net_worker *w = c->w;
	uint64_t cid = c->id;
	conn_flush(c); /* may close and free c */
	c = slot_find(w, cid);
	if (c && c->state == CONN_OPEN)
		conn_on_readable(c); /* the client may have sent requests with its Finished */
}

/* ------------------------------------------------------------------------ */
/* Reading and framing. */

/* Decode every whole frame in the input buffer and hand it to the handler. */
/*
 * Nothing more is read from c: it closes once its answers are out, and the
 * handler ends a subscription and answers a waiting fetch (on_peer_closed).
 * After the peer's close_notify, or a frame the stream cannot survive.
 */
static void conn_stop_reading(struct net_conn *c)
{
	struct net_server *s = c->w->s;
	net_conn_close(c);
	if (s->h.on_peer_closed)
		s->h.on_peer_closed(s->h.ctx, c);
}

static void conn_take_frames(struct net_conn *c)
{
	struct net_server *s = c->w->s;
	size_t off = 0;
	/* Not once stopping: on_stop has answered what waits, and a frame taken
	 * after it (a read that wanted a write can still come) would wait on.
	 * Not past the output bound: one read holds thousands of tiny frames,
	 * and answering them all (an Error each) would pass it by a megabyte. */
	while (c->state == CONN_OPEN && !c->w->stopping && c->inflight < s->opt.max_inflight &&
	       !c->held_back && !out_over_bound(c)) {
		size_t hdr, body;
		int r =
		    wire_frame_peek(c->in + off, c->in_len - off, s->opt.max_frame, &hdr, &body);
		if (r == 0 || (r == 1 && hdr + body > c->in_len - off))
			break;
		if (r < 0) {
			c->bad_frames++;
			log_event(LOG_WARN, "conn.bad_frame", "peer=%s reason=\"%s\"", c->peer,
			          r == ISG_ERR_TOO_BIG ? "frame over max_frame"
			                               : "bad length prefix");
			Isg__Error e = ISG__ERROR__INIT;
			e.code = ISG__ERROR_CODE__BAD_FRAME;
			e.record_index = -1;
			char msg[128];
			snprintf(msg, sizeof(msg),
			         r == ISG_ERR_TOO_BIG
			             ? "frame longer than the gateway's limit of %zu bytes"
			             : "invalid frame length prefix",
			         s->opt.max_frame);
			e.message = msg;
			Isg__Frame f = ISG__FRAME__INIT;
			f.body_case = ISG__FRAME__BODY_ERROR;
			f.error = &e;
			net_conn_send(c, &f);
			conn_stop_reading(c); /* the stream cannot be resynchronised */
			break;
		}
		/* Room for it first; room handed to a held-back connection was for this frame. */
		if (c->room_granted)
			c->frame_held = c->room_granted;
		else if (room_take(c, hdr + body))
			c->frame_held = hdr + body;
		else
			break; /* held back: conn_room_granted resumes it */
		c->room_granted = 0;
		c->w->trim_due += hdr + body;
		Isg__Frame *frame;
		int bad = wire_frame_decode_checked(c->in + off + hdr, body, &frame);
		off += hdr + body;
		if (bad) {
			/* One line a connection, the rest counted at its close: a frame
			 * of 3 bytes must not buy a partner a line of isgd's log. */
			if (c->bad_frames++ == 0)
				log_event(LOG_WARN, "conn.bad_frame", "peer=%s reason=\"%s\"",
				          c->peer, frame ? "invalid string" : "undecodable frame");
			Isg__Error e = ISG__ERROR__INIT;
			e.code = ISG__ERROR_CODE__BAD_FRAME;
			e.record_index = -1;
			e.message = frame ? "a string in the frame is not valid UTF-8 or holds a "
			                    "NUL character"
			                  : "the frame is not a valid isg.Frame";
			Isg__Frame f = ISG__FRAME__INIT;
			f.request_id = frame ? frame->request_id : 0;
			f.body_case = ISG__FRAME__BODY_ERROR;
			f.error = &e;
			net_conn_send(c, &f);
			wire_frame_free(frame);
			room_give(s, c->frame_held);
			c->frame_held = 0;
			continue; /* framing is intact: keep serving */
		}
		s->h.on_frame(s->h.ctx, c, frame);
		/* Answered already, or kept by net_conn_begin_async until answered. */
		room_give(s, c->frame_held);
		c->frame_held = 0;
	}
	if (off) {
		memmove(c->in, c->in + off, c->in_len - off);
		c->in_len -= off;
	}
}

/* Make room for at least one chunk, within the frame limit. */
static int conn_in_reserve(struct net_conn *c)
{
	size_t limit = c->w->s->opt.max_frame + WIRE_VARINT_MAX;
	if (c->in_cap - c->in_len >= 512 || c->in_cap >= limit + READ_CHUNK)
		return 0;
	size_t cap = c->in_cap ? c->in_cap * 2 : IN_INITIAL;
	if (cap > limit + READ_CHUNK)
		cap = limit + READ_CHUNK;
	uint8_t *p = realloc(c->in, cap);
	if (!p)
		return ISG_ERR_NOMEM;
	c->in = p;
	c->in_cap = cap;
	return 0;
}

/*
 * Give back an input buffer a large frame grew, once it is empty and the
 * connection has been quiet for IN_QUIET_MS (its deadline was set at its
 * last activity): 1,000 connections that each sent one 4 MiB frame would
 * otherwise keep 4 GiB. Not at once when it empties: a partner sending
 * large frames one after another would grow it again for each.
 */
static void conn_in_shrink(struct net_conn *c, int64_t now)
{
	if (c->in_len != 0 || c->in_cap <= IN_KEEP || c->state == CONN_HANDSHAKE ||
	    c->deadline - c->w->s->opt.idle_timeout_ms + IN_QUIET_MS > now)
		return;
	c->w->trim_due += c->in_cap;
	free(c->in);
	c->in = NULL;
	c->in_cap = 0;
}

/* The worker is quiet: every empty input buffer goes, whatever its connection's last read. */
static void worker_in_shrink(struct net_worker *w)
{
	for (struct net_conn *c = w->conns; c; c = c->next)
		conn_in_shrink(c, INT64_MAX);
}

/*
 * The peer's close_notify: a TLS half-close (Go's CloseWrite, Java's
 * shutdownOutput), after which it still reads. No frame follows it, so the
 * connection closes as one the server closes: the requests already taken
 * are answered, then our close_notify goes (conn_flush). The bytes of a
 * frame it cut short answer no request and are dropped. It may wait for
 * those answers idle_timeout at most, from now, store included
 * (worker_sweep): a half-close cannot pin a connection.
 */
static void conn_peer_closed(struct net_conn *c)
{
	c->peer_closed = true;
	c->in_len = 0;
	c->deadline = time_mono_ms() + c->w->s->opt.idle_timeout_ms;
	conn_stop_reading(c);
}

static void conn_on_readable(struct net_conn *c)
{
	struct net_server *s = c->w->s;
	c->read_wants_write = false;
	for (;;) {
		/* Frames already buffered first: they may free room or hit backpressure. */
		conn_take_frames(c); /* handlers never free c; only closing here does */
		/* Frames left behind the output bound wait for it to drain, and no
		 * event comes for bytes already read: if the socket takes it all
		 * now, take them now. */
		if (c->state == CONN_OPEN && out_over_bound(c)) {
			if (!conn_write(c))
				return;
			if (!out_over_bound(c))
				continue;
		}
		if (c->state != CONN_OPEN || c->w->stopping || c->inflight >= s->opt.max_inflight ||
		    c->held_back || out_over_bound(c))
			break;
		if (conn_in_reserve(c) != 0) {
			log_event(LOG_ERROR, "conn.nomem", "peer=%s", c->peer);
			conn_free(c);
			return;
		}
		size_t got = 0;
		ERR_clear_error();
		int r = SSL_read_ex(c->ssl, c->in + c->in_len, c->in_cap - c->in_len, &got);
		if (r == 1) {
			c->in_len += got;
			c->deadline = time_mono_ms() + s->opt.idle_timeout_ms;
			continue;
		}
		int e = SSL_get_error(c->ssl, r);
		if (e == SSL_ERROR_WANT_READ)
			break;
		if (e == SSL_ERROR_WANT_WRITE) {
			c->read_wants_write = true;
			break;
		}
		if (e == SSL_ERROR_ZERO_RETURN) {
			conn_peer_closed(c);
			break; /* conn_flush closes it once nothing is owed */
		}
		/* EOF without close_notify, reset, or a TLS error: a dirty close. */
		unsigned long err = ERR_peek_last_error();
		char reason[256];
		if (err)
			ERR_error_string_n(err, reason, sizeof(reason));
		else
			str_copy(reason, "connection closed without close_notify", sizeof(reason));
		ERR_clear_error();
		log_tls_close(c, "conn.dirty_close", reason);
		conn_free(c);
		return;
	}
	conn_flush(c);
}

/* ------------------------------------------------------------------------ */
/* Writing. */

/*
 * Write what is queued; false when the connection was closed (and freed).
 * Bytes written out are activity, as bytes read are: a slow reader is not
 * idle while its answer flows (and while the kernel still holds some of it
 * for the peer, conn_watch_acks). Not after the peer's close_notify, whose
 * bound holds however it reads (conn_peer_closed).
 */
static bool conn_write(struct net_conn *c)
{
	size_t was = c->out_off;
	while (c->out_len > c->out_off && c->state != CONN_HANDSHAKE) {
		size_t wrote = 0;
		ERR_clear_error();
		int r = SSL_write_ex(c->ssl, c->out + c->out_off, c->out_len - c->out_off, &wrote);
		if (r == 1) {
			c->out_off += wrote;
			continue;
		}
		int e = SSL_get_error(c->ssl, r);
		if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ)
			break;
		ERR_clear_error();
		log_tls_close(c, "conn.write_failed", "peer closed the connection");
		conn_free(c);
		return false;
	}
	if (c->out_off != was && !c->peer_closed) {
		c->deadline = time_mono_ms() + c->w->s->opt.idle_timeout_ms;
		c->unacked = -1;
	}
	return true;
}

/* Write what is queued; may close and free c, so callers must not touch it after. */
static void conn_flush(struct net_conn *c)
{
	if (!conn_serving(c))
		return; /* closed cleanly: nothing more goes out */
	if (!conn_write(c))
		return;
	/* Within its bound again: the handler may queue what it held back, and
	 * that is written now (the handler never frees c). */
	while (c->drain_wanted && c->w->s->h.on_drained && !out_over_bound(c) &&
	       c->state == CONN_OPEN && !c->w->stopping) {
		c->drain_wanted = false;
		c->w->s->h.on_drained(c->w->s->h.ctx, c);
		if (!conn_write(c))
			return;
	}
	if (c->out_off == c->out_len) {
		c->out_off = c->out_len = 0;
		/* Give back a buffer a large answer grew, so idle connections stay small. */
		if (c->out_cap > 65536) {
			free(c->out);
			c->out = NULL;
			c->out_cap = 0;
		}
		if (c->state == CONN_CLOSING && c->inflight == 0) {
			log_event(LOG_INFO, "conn.closed", "peer=%s reason=%s", c->peer,
			          c->peer_closed ? "close_notify" : "server");
			conn_finish(c);
			return;
		}
	}
	conn_update_interest(c);
}

/* Room for size more bytes of output at c->out + c->out_len; false when out of memory. */
static bool out_reserve(struct net_conn *c, size_t size)
{
	if (c->out_off > 0 && c->out_off == c->out_len)
		c->out_off = c->out_len = 0;
	if (c->out_cap - c->out_len >= size)
		return true;
	if (c->out_off > 0) { /* compact before growing */
		memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
		c->out_len -= c->out_off;
		c->out_off = 0;
	}
	if (c->out_cap - c->out_len < size) {
		size_t cap = c->out_cap ? c->out_cap : 4096;
		while (cap - c->out_len < size)
			cap *= 2;
		uint8_t *p = realloc(c->out, cap);
		if (!p)
			return false;
		c->out = p;
		c->out_cap = cap;
	}
	return true;
}

int net_conn_peer_identity(struct net_conn *c, struct cert_identity *id)
{
	X509 *cert = c->ssl ? SSL_get0_peer_certificate(c->ssl) : NULL;
	if (!cert)
		return ISG_ERR_NOT_FOUND;
	net_cert_identity(cert, id);
	return 0;
}

int net_conn_verify_again(struct net_conn *c, char *reason, size_t len)
{
	return conn_verify_current(c, false, reason, len);
}

bool net_conn_output_full(struct net_conn *c)
{
	if (!out_over_bound(c))
		return false;
	c->drain_wanted = true;
	return true;
}

size_t net_conn_output_room(const struct net_conn *c)
{
	size_t queued = c->out_len - c->out_off, bound = c->w->s->opt.conn_buffer_bytes;
	return queued < bound ? bound - queued : 0;
}

int net_conn_send(struct net_conn *c, const Isg__Frame *frame)
{
	if (!out_reserve(c, wire_frame_size(frame)))
		return ISG_ERR_NOMEM;
	c->out_len += wire_frame_encode(frame, c->out + c->out_len);
	return 0;
}

int net_conn_send_deliveries(struct net_conn *c, uint64_t request_id, bool push,
                             const struct wire_delivery *d, size_t n)
{
	if (!out_reserve(c, wire_deliveries_size(request_id, push, d, n)))
		return ISG_ERR_NOMEM;
	c->out_len += wire_deliveries_encode(request_id, push, d, n, c->out + c->out_len);
	return 0;
}

/* ------------------------------------------------------------------------ */
/* Public connection API (connection's thread). */

void net_conn_close(struct net_conn *c)
{
	if (c->state == CONN_CLOSING)
		return;
	c->state = CONN_CLOSING;
	net_conn_unwait(c);
	room_leave(c);
}

void net_conn_set_data(struct net_conn *c, void *data)
{
	c->data = data;
}

void *net_conn_data(const struct net_conn *c)
{
	return c->data;
}

const char *net_conn_peer(const struct net_conn *c)
{
	return c->peer;
}

struct net_conn_ref net_conn_ref(struct net_conn *c)
{
	return (struct net_conn_ref){.server = c->w->s, .worker = c->w->index, .id = c->id};
}

struct net_hold net_conn_begin_async(struct net_conn *c, size_t bytes)
{
	struct net_server *s = c->w->s;
	/* The request keeps its frame's room until it is answered. */
	struct net_hold hold = {.server = s, .bytes = c->frame_held};
	c->frame_held = 0;
	c->inflight++;
	if (bytes > hold.bytes) {
		/* Read already: counted, so the next frames wait, but not refused. */
		atomic_fetch_add(&s->room_held, bytes - hold.bytes);
		hold.bytes = bytes;
	}
	return hold;
}

void net_conn_end_async(struct net_conn *c, struct net_hold *hold)
{
	if (c && c->inflight > 0)
		c->inflight--;
	if (hold->server)
		room_give(hold->server, hold->bytes);
	hold->bytes = 0;
}

void net_conn_wait(struct net_conn *c, int64_t deadline_ms)
{
	if (c->state == CONN_CLOSING)
		return; /* closing waits for nothing, and stays under the idle timeout */
	c->wait_deadline = deadline_ms;
	if (c->waiting)
		return;
	c->waiting = true;
	atomic_fetch_add(&c->w->n_waiters, 1);
	c->wait_prev = NULL;
	c->wait_next = c->w->waiters;
	if (c->w->waiters)
		c->w->waiters->wait_prev = c;
	c->w->waiters = c;
}

void net_conn_unwait(struct net_conn *c)
{
	if (!c->waiting)
		return;
	if (c->wait_prev)
		c->wait_prev->wait_next = c->wait_next;
	else
		c->w->waiters = c->wait_next;
	if (c->wait_next)
		c->wait_next->wait_prev = c->wait_prev;
	c->waiting = false;
	atomic_fetch_sub(&c->w->n_waiters, 1);
	c->wait_deadline = 0;
	c->deadline = time_mono_ms() + c->w->s->opt.idle_timeout_ms;
}

/* ------------------------------------------------------------------------ */
/* Posting work to a worker from any thread. */

/*
 * Only a post to an empty queue writes the eventfd: the worker reads the
 * eventfd before it takes the queue, so a post that finds the queue not
 * empty is taken by a drain that has yet to happen.
 */
static void worker_push(struct net_worker *w, struct post *p)
{
	pthread_mutex_lock(&w->mu);
	bool was_empty = !w->posts;
	if (w->posts_tail)
		w->posts_tail->next = p;
	else
		w->posts = p;
	w->posts_tail = p;
	pthread_mutex_unlock(&w->mu);
	if (!was_empty)
		return;
	uint64_t one = 1;
	ssize_t n = write(w->event_fd, &one, sizeof(one));
	(void)n; /* a full eventfd counter still wakes the worker */
}

void net_post(struct net_conn_ref ref, void (*fn)(struct net_conn *c, void *arg), void *arg)
{
	struct post *p = calloc(1, sizeof(*p));
	if (!p)
		fatal("out of memory posting to a connection");
	p->id = ref.id;
	p->fn = fn;
	p->arg = arg;
	worker_push(&ref.server->workers[ref.worker], p);
}

/*
 * A worker with no waiting connection is not woken. One that starts to wait
 * after the count was read asks the store afterwards, so it finds what the
 * commit behind this wake-up wrote (handler.c waits before it fetches).
 */
void net_server_wake(struct net_server *s, const char *key)
{
	for (uint32_t i = 0; i < s->n_workers; i++) {
		if (atomic_load(&s->workers[i].n_waiters) == 0)
			continue;
		struct post *p = calloc(1, sizeof(*p));
		char *k = strdup(key);
		if (!p || !k)
			fatal("out of memory waking connections");
		p->wake_key = k;
		worker_push(&s->workers[i], p);
	}
}

static void shared_release(struct shared_arg *sh)
{
	if (atomic_fetch_sub(&sh->refs, 1) != 1)
		return;
	if (sh->free_arg)
		sh->free_arg(sh->arg);
	free(sh);
}

/*
 * Workers with no waiting connection are skipped, as by net_server_wake: a
 * connection waits before it asks the store for what fn is about.
 */
void net_server_each_waiting(struct net_server *s, void (*fn)(struct net_conn *c, void *arg),
                             void *arg, void (*free_arg)(void *arg))
{
	struct shared_arg *sh = calloc(1, sizeof(*sh));
	if (!sh)
		fatal("out of memory");
	atomic_init(&sh->refs, 1); /* this call's own, until every post is queued */
	sh->arg = arg;
	sh->free_arg = free_arg;
	for (uint32_t i = 0; i < s->n_workers; i++) {
		if (atomic_load(&s->workers[i].n_waiters) == 0)
			continue;
		struct post *p = calloc(1, sizeof(*p));
		if (!p)
			fatal("out of memory");
		p->fn = fn;
		p->shared = sh;
		p->waiters_only = true;
		atomic_fetch_add(&sh->refs, 1);
		worker_push(&s->workers[i], p);
	}
	shared_release(sh);
}

void net_server_each(struct net_server *s, void (*fn)(struct net_conn *c, void *arg), void *arg,
                     void (*free_arg)(void *arg))
{
	struct shared_arg *sh = calloc(1, sizeof(*sh));
	if (!sh)
		fatal("out of memory");
	atomic_init(&sh->refs, (int)s->n_workers);
	sh->arg = arg;
	sh->free_arg = free_arg;
	for (uint32_t i = 0; i < s->n_workers; i++) {
		struct post *p = calloc(1, sizeof(*p));
		if (!p)
			fatal("out of memory");
		p->fn = fn;
		p->shared = sh;
		worker_push(&s->workers[i], p);
	}
}

static void worker_accept_one(struct net_worker *w, int fd, const struct sockaddr_storage *ss);

static void run_post(struct net_worker *w, struct post *p)
{
	if (p->adopt) {
		if (w->stopping || atomic_load(&w->s->stopping)) {
			close(p->adopt->fd);
			atomic_fetch_sub(&w->n_conns, 1);
		} else {
			worker_accept_one(w, p->adopt->fd, &p->adopt->ss);
		}
		free(p->adopt);
	} else if (p->room) {
		conn_room_granted(w, slot_find(w, p->id), p->room);
	} else if (p->wake_key) {
		for (struct net_conn *c = w->waiters, *next; c; c = next) {
			next = c->wait_next;
			uint64_t id = c->id;
			w->s->h.on_wake(w->s->h.ctx, c, p->wake_key);
			if (slot_find(w, id))
				conn_flush(c);
		}
		free(p->wake_key);
	} else if (p->shared) {
		struct net_conn *c = p->waiters_only ? w->waiters : w->conns;
		for (struct net_conn *next; c; c = next) {
			next = p->waiters_only ? c->wait_next : c->next;
			uint64_t id = c->id;
			if (c->state == CONN_OPEN)
				p->fn(c, p->shared->arg);
			if (slot_find(w, id))
				conn_flush(c);
		}
		shared_release(p->shared);
	} else {
		struct net_conn *c = slot_find(w, p->id);
		if (c && !conn_serving(c))
			c = NULL; /* closed as far as the handler knows */
		p->fn(c, p->arg);
		if (c && slot_find(w, p->id))
			conn_flush(c);
	}
	free(p);
}

static void worker_run_posts(struct net_worker *w)
{
	uint64_t count;
	ssize_t n = read(w->event_fd, &count, sizeof(count));
	(void)n;
	pthread_mutex_lock(&w->mu);
	struct post *p = w->posts;
	w->posts = w->posts_tail = NULL;
	pthread_mutex_unlock(&w->mu);
	while (p) {
		struct post *next = p->next;
		run_post(w, p);
		p = next;
	}
}

/* ------------------------------------------------------------------------ */
/* Accepting. */

static void format_peer(const struct sockaddr_storage *ss, char *buf, size_t size)
{
	char host[INET6_ADDRSTRLEN] = "?";
	uint16_t port = 0;
	if (ss->ss_family == AF_INET) {
		const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
		inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
		port = ntohs(a->sin_port);
		snprintf(buf, size, "%s:%u", host, port);
	} else if (ss->ss_family == AF_INET6) {
		const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
		inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
		port = ntohs(a->sin6_port);
		snprintf(buf, size, "[%s]:%u", host, port);
	} else {
		str_copy(buf, "unknown", size);
	}
}

static SSL *server_new_ssl(struct net_server *s)
{
	pthread_mutex_lock(&s->tls_mu);
	SSL *ssl = SSL_new(s->tls);
	pthread_mutex_unlock(&s->tls_mu);
	return ssl;
}

static void worker_accept_one(struct net_worker *w, int fd, const struct sockaddr_storage *ss)
{
	struct net_server *s = w->s;
	char peer[64];
	format_peer(ss, peer, sizeof(peer));
	if (atomic_fetch_add(&s->conn_count, 1) >= s->opt.max_connections) {
		atomic_fetch_sub(&s->conn_count, 1);
		if (worker_refusal_log(w))
			log_event(LOG_WARN, "conn.refused",
			          "peer=%s reason=max_connections limit=%u", peer,
			          s->opt.max_connections);
		close(fd);
		atomic_fetch_sub(&w->n_conns, 1);
		return;
	}
	struct net_conn *c = calloc(1, sizeof(*c));
	SSL *ssl = server_new_ssl(s);
	if (!c || !ssl || slot_take(w, c) != 0) {
		log_event(LOG_ERROR, "conn.nomem", "peer=%s", peer);
		SSL_free(ssl);
		free(c);
		close(fd);
		atomic_fetch_sub(&s->conn_count, 1);
		atomic_fetch_sub(&w->n_conns, 1);
		return;
	}
	sock_tcp_options(fd);
	c->w = w;
	c->fd = fd;
	c->ssl = ssl;
	c->state = CONN_HANDSHAKE;
	c->interest_in = true;
	c->deadline = time_mono_ms() + s->opt.handshake_timeout_ms;
	str_copy(c->peer, peer, sizeof(c->peer));
	SSL_set_fd(ssl, fd);
	SSL_set_app_data(ssl, c);
	SSL_set_verify(ssl, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, verify_cb);
	SSL_set_accept_state(ssl);
	c->next = w->conns;
	if (w->conns)
		w->conns->prev = c;
	w->conns = c;
	struct epoll_event ev = {.events = EPOLLIN, .data.u64 = c->id};
	if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
		conn_free(c);
		return;
	}
	log_event(LOG_DEBUG, "conn.accepted", "peer=%s worker=%u", peer, w->index);
}

/*
 * The kernel spreads connections over the workers' SO_REUSEPORT listeners
 * by a hash of their addresses, so eight partners could land six on one
 * worker and two on the other, and the busier worker's queue sets the pace.
 * A connection goes to the worker with the fewest, counted when given; it
 * has not started its handshake yet, so any worker can take it. One over
 * max_connections, or arriving while isgd stops, stays where it is, to be
 * refused or closed there at no cost to another worker.
 */
static struct net_worker *least_loaded(struct net_worker *w)
{
	struct net_server *s = w->s;
	struct net_worker *best = w;
	unsigned least = atomic_load(&w->n_conns);
	bool stay =
	    atomic_load(&s->stopping) || atomic_load(&s->conn_count) >= s->opt.max_connections;
	for (uint32_t i = 0; i < s->n_workers && !stay; i++) {
		unsigned n = atomic_load(&s->workers[i].n_conns);
		if (n < least) {
			least = n;
			best = &s->workers[i];
		}
	}
	atomic_fetch_add(&best->n_conns, 1);
	return best;
}

static void worker_hand_over(struct net_worker *to, int fd, const struct sockaddr_storage *ss)
{
	struct post *p = calloc(1, sizeof(*p));
	struct adopt *a = malloc(sizeof(*a));
	if (!p || !a) {
		char peer[64];
		format_peer(ss, peer, sizeof(peer));
		log_event(LOG_ERROR, "conn.nomem", "peer=%s", peer);
		free(p);
		free(a);
		close(fd);
		atomic_fetch_sub(&to->n_conns, 1);
		return;
	}
	a->fd = fd;
	a->ss = *ss;
	p->adopt = a;
	worker_push(to, p);
}

/*
 * The pending connection stays queued and the listener readable: without
 * a pause an epoll loop would spin on it. Out of descriptors (or memory),
 * the listener rests ACCEPT_PAUSE_MS (worker_sweep re-arms it); any other
 * failure is as likely gone by the next wake-up.
 */
static void worker_accept_failed(struct net_worker *w, int err)
{
	int64_t now = time_mono_ms();
	bool pause = err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM;
	if (pause) {
		struct epoll_event ev = {.events = 0, .data.u64 = TAG_LISTEN};
		epoll_ctl(w->epfd, EPOLL_CTL_MOD, w->listen_fd, &ev);
		w->accept_resume_at = now + ACCEPT_PAUSE_MS;
	}
	w->accept_unlogged++;
	if (now < w->accept_log_at)
		return;
	log_event(LOG_WARN, "net.accept_failed", "errno=%d failures=%llu paused_ms=%d", err,
	          (unsigned long long)w->accept_unlogged, pause ? ACCEPT_PAUSE_MS : 0);
	w->accept_unlogged = 0;
	w->accept_log_at = now + ACCEPT_LOG_MS;
}

/* The listener's rest is over: listen again (not while stopping: it is gone then). */
static int64_t worker_accept_resume(struct net_worker *w, int64_t now, int64_t next)
{
	if (!w->accept_resume_at || w->stopping)
		return next;
	if (now < w->accept_resume_at)
		return w->accept_resume_at < next ? w->accept_resume_at : next;
	w->accept_resume_at = 0;
	struct epoll_event ev = {.events = EPOLLIN, .data.u64 = TAG_LISTEN};
	epoll_ctl(w->epfd, EPOLL_CTL_MOD, w->listen_fd, &ev);
	return next;
}

static void worker_accept(struct net_worker *w)
{
	for (int i = 0; i < 64; i++) {
		struct sockaddr_storage ss;
		socklen_t len = sizeof(ss);
		int fd = accept4(w->listen_fd, (struct sockaddr *)&ss, &len,
		                 SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
				worker_accept_failed(w, errno);
			return;
		}
		struct net_worker *to = least_loaded(w);
		if (to == w)
			worker_accept_one(w, fd, &ss);
		else
			worker_hand_over(to, fd, &ss);
	}
}

/* ------------------------------------------------------------------------ */
/* Timeouts and the loop. */

/*
 * The end of an answer flows out of the kernel's buffers, not out of ours:
 * the peer taking those bytes (the kernel holds fewer for it than at the
 * last look) is activity too, or a slow reader would be cut just before
 * the request that follows its answer. One whose window stays shut is not.
 */
static void conn_watch_acks(struct net_conn *c, int64_t now)
{
	int unacked;
	if (ioctl(c->fd, SIOCOUTQ, &unacked) != 0)
		return;
	if (c->unacked > 0 && unacked < c->unacked)
		c->deadline = now + c->w->s->opt.idle_timeout_ms;
	c->unacked = unacked;
}

static int64_t worker_sweep(struct net_worker *w)
{
	int64_t now = time_mono_ms(), next = now + TICK_MS;
	next = worker_accept_resume(w, now, next);
	if (w->refused_unlogged) {
		worker_refused_roll(w, now);
		if (w->refused_unlogged && w->refused_window < next)
			next = w->refused_window;
	}
	for (struct net_conn *c = w->waiters, *nx; c; c = nx) {
		nx = c->wait_next;
		if (c->wait_deadline && c->wait_deadline <= now) {
			uint64_t id = c->id;
			c->wait_deadline = 0;
			w->s->h.on_wake(w->s->h.ctx, c, NULL);
			if (slot_find(w, id))
				conn_flush(c);
		} else if (c->wait_deadline && c->wait_deadline < next) {
			next = c->wait_deadline;
		}
	}
	/* Every connection, but not after every wake-up: with 1,000 idle
	 * connections a pass per epoll_wait cost more than the traffic. */
	if (now < w->idle_scan_at && !w->stopping)
		return next - now;
	w->idle_scan_at = now + IDLE_SCAN_MS;
	for (struct net_conn *c = w->conns, *nx; c; c = nx) {
		nx = c->next;
		if (c->state == CONN_LINGER) {
			if (c->deadline <= now)
				conn_free(c);
			else
				conn_linger_read(c); /* over once the peer has all we sent */
			continue;
		}
		if (c->unacked != 0 && !c->peer_closed)
			conn_watch_acks(c, now);
		conn_in_shrink(c, now);
		/* A half-closed connection's bound holds even while the store
		 * keeps a request: its answer then finds the connection gone.
		 * Waiting for messages exempts a connection only while nothing
		 * it is owed stands still: a subscriber that stopped reading,
		 * its window shut on pushes, is idle like any other. */
		bool unsent = c->out_len > c->out_off;
		bool stuck = unsent || c->unacked > 0;
		if (c->deadline > now || (!c->peer_closed && ((c->waiting && !stuck) ||
		                                              c->inflight > 0 || c->held_back)))
			continue;
		bool hs = c->state == CONN_HANDSHAKE;
		bool owed = c->state == CONN_SHUTDOWN || unsent;
		log_event(LOG_INFO,
		          hs               ? "conn.handshake_timeout"
		          : c->peer_closed ? "conn.half_close_timeout"
		                           : "conn.idle_timeout",
		          "peer=%s", c->peer);
		/* With answers (or our close_notify) still owed, or half-closed
		 * with answers owed, no close_notify may say all went out. */
		if (hs || owed || c->peer_closed)
			conn_free(c);
		else
			conn_finish(c);
	}
	return next - now;
}

static void conn_event(struct net_conn *c, uint32_t events)
{
	uint64_t id = c->id;
	struct net_worker *w = c->w;
	if (c->state == CONN_HANDSHAKE) {
		conn_handshake(c);
		return;
	}
	if (c->state == CONN_LINGER) {
		conn_linger_read(c);
		return;
	}
	if (c->state == CONN_SHUTDOWN) {
		conn_finish(c); /* room for the close_notify, or an error */
		return;
	}
	if ((events & (EPOLLERR | EPOLLHUP)) && !(events & EPOLLIN)) {
		log_tls_close(c, "conn.dirty_close", "socket error or hang-up");
		conn_free(c);
		return;
	}
	if (events & EPOLLOUT) {
		conn_flush(c);
		if (!slot_find(w, id))
			return;
		if (c->read_wants_write)
			conn_on_readable(c);
	}
	if (slot_find(w, id) && (events & EPOLLIN))
		conn_on_readable(c);
}

/*
 * isgd stops: nothing more is read, and the handler answers what waits for
 * messages rather than leave it to find the close (on_stop).
 */
static void worker_stop(struct net_worker *w)
{
	struct net_server *s = w->s;
	w->stopping = true;
	w->stop_deadline = time_mono_ms() + s->grace_ms;
	epoll_ctl(w->epfd, EPOLL_CTL_DEL, w->listen_fd, NULL);
	for (struct net_conn *c = w->conns, *nx; c; c = nx) {
		nx = c->next;
		uint64_t id = c->id;
		if (c->opened && conn_serving(c) && s->h.on_stop)
			s->h.on_stop(s->h.ctx, c);
		if (slot_find(w, id))
			conn_flush(c); /* sets the interest: no more reading */
	}
}

/* Connections closing cleanly (CONN_SHUTDOWN, CONN_LINGER) end on their own bounds. */
static bool worker_drained(struct net_worker *w)
{
	for (struct net_conn *c = w->conns, *nx; c; c = nx) {
		nx = c->next;
		if (c->state == CONN_HANDSHAKE) {
			conn_free(c);
			continue;
		}
		if (conn_serving(c) && c->inflight == 0 && c->out_len == c->out_off) {
			if (c->opened)
				log_event(LOG_INFO, "conn.closed", "peer=%s reason=shutdown",
				          c->peer);
			conn_finish(c);
		}
	}
	return w->conns == NULL || time_mono_ms() >= w->stop_deadline;
}

/*
 * glibc keeps what a burst of large frames took in its arenas once they are
 * freed (their decoded forms and payloads, freed on other threads, are
 * scattered through them), and the process stays that big. A worker that
 * took many bytes since it last looked, and has found nothing to do for
 * TRIM_QUIET_MS (so the store has freed what its last answers held too),
 * hands the free pages back while the gateway holds no request: never on
 * the busy path, at most once a burst.
 */
static void worker_idle(struct net_worker *w)
{
	if (w->trim_due < TRIM_AFTER_BYTES || atomic_load(&w->s->room_held) != 0)
		return;
	int64_t now = time_mono_ms();
	if (!w->quiet_since)
		w->quiet_since = now;
	if (now - w->quiet_since < TRIM_QUIET_MS)
		return;
	worker_in_shrink(w);
	w->trim_due = 0;
#ifdef __GLIBC__
	malloc_trim(0);
#endif
}

static void *worker_main(void *arg)
{
	struct net_worker *w = arg;
	struct epoll_event events[64];
	int64_t timeout = TICK_MS;
	char name[16];
	snprintf(name, sizeof(name), "isg-worker-%u", (unsigned)w->index % 1000);
	pthread_setname_np(pthread_self(), name); /* for top -H and perf; best effort */
	for (;;) {
		int n = epoll_wait(w->epfd, events, 64, (int)(timeout > 0 ? timeout : 0));
		for (int i = 0; i < n; i++) {
			uint64_t tag = events[i].data.u64;
			struct net_conn *c;
			if (tag == TAG_LISTEN)
				worker_accept(w);
			else if (tag == TAG_EVENT)
				worker_run_posts(w);
			else if ((c = slot_find(w, tag)) != NULL) /* NULL: freed this batch */
				conn_event(c, events[i].events);
		}
		if (atomic_load(&w->s->stopping) && !w->stopping)
			worker_stop(w);
		if (w->stopping && worker_drained(w))
			break;
		timeout = worker_sweep(w);
		if (n > 0)
			w->quiet_since = 0;
		else
			worker_idle(w); /* after the sweep, which may free buffers */
		if (w->stopping && timeout > 100)
			timeout = 100;
	}
	/* Past the grace: what is left still owed answers, or its close_notify. */
	while (w->conns)
		conn_free(w->conns);
	worker_run_posts(w);     /* give late completions their cleanup */
	worker_refused_flush(w); /* a count not written yet */
	return NULL;
}

/* ------------------------------------------------------------------------ */
/* Start and stop. */

/*
 * SO_REUSEPORT lets the workers' listeners share a port, but it would as
 * well let another process's (a second isgd started by mistake, on its own
 * store or on ours until it found it locked) join them, and the kernel
 * would hand that one some of the partners' connections. A socket without
 * it cannot bind a port anything listens on: the first listener tries one
 * first. Another process could still bind in the moment between the two.
 */
static bool port_in_use(const struct addrinfo *ai)
{
	int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return false; /* the real bind will say why */
	int one = 1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)); /* past TIME_WAIT */
	bool in_use = bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 && errno == EADDRINUSE;
	close(fd);
	return in_use;
}

/*
 * The address listen names: an address, never a name looked up, so a
 * start does not wait on DNS nor bind where a name happens to point.
 * --check-config asks the same through net_listen_check.
 */
static int listen_address(const char *host, uint16_t port, struct addrinfo **ai, char *err,
                          size_t errlen)
{
	struct addrinfo hints = {.ai_family = AF_UNSPEC,
	                         .ai_socktype = SOCK_STREAM,
	                         .ai_flags = AI_PASSIVE | AI_NUMERICHOST | AI_NUMERICSERV};
	char service[8];
	snprintf(service, sizeof(service), "%u", port);
	int r = getaddrinfo(host, service, &hints, ai);
	if (r == 0)
		return 0;
	/* with AI_NUMERICHOST, EAI_NONAME says the host is not an address */
	snprintf(err, errlen, "invalid address '%s' for listen: %s", host,
	         r == EAI_NONAME ? "not an IP address (isgd does not look host names up)"
	                         : gai_strerror(r));
	return ISG_ERR_INVALID;
}

int net_listen_check(const char *host, uint16_t port, char *err, size_t errlen)
{
	struct addrinfo *ai;
	int r = listen_address(host, port, &ai, err, errlen);
	if (r == 0)
		freeaddrinfo(ai);
	return r;
}

static int listen_socket(const struct net_options *opt, uint16_t port, bool first, int *out,
                         char *err, size_t errlen)
{
	struct addrinfo *ai;
	int r = listen_address(opt->host, port, &ai, err, errlen);
	if (r != 0)
		return r;
	/* host:port as listen: takes it, an IPv6 address in brackets */
	bool v6 = strchr(opt->host, ':') != NULL;
	const char *open_b = v6 ? "[" : "", *close_b = v6 ? "]" : "";
	if (first && port != 0 && port_in_use(ai)) {
		snprintf(err, errlen,
		         "cannot listen on %s%s%s:%u: another process is listening on it (is isgd "
		         "already running?)",
		         open_b, opt->host, close_b, port);
		freeaddrinfo(ai);
		return ISG_ERR_CONFLICT;
	}
	int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	int one = 1;
	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
	    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0 ||
	    bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, 1024) != 0) {
		snprintf(err, errlen, "cannot listen on %s%s%s:%u: %s", open_b, opt->host, close_b,
		         port, strerror(errno));
		if (fd >= 0)
			close(fd);
		freeaddrinfo(ai);
		return ISG_ERR_IO;
	}
	freeaddrinfo(ai);
	*out = fd;
	return 0;
}

static uint16_t bound_port(int fd)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0)
		return 0;
	if (ss.ss_family == AF_INET)
		return ntohs(((struct sockaddr_in *)&ss)->sin_port);
	return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
}

static int worker_init(struct net_worker *w, struct net_server *s, uint32_t index, char *err,
                       size_t errlen)
{
	w->s = s;
	w->index = index;
	w->listen_fd = w->epfd = w->event_fd = -1;
	atomic_init(&w->n_waiters, 0);
	atomic_init(&w->n_conns, 0);
	pthread_mutex_init(&w->mu, NULL);
	/* The first listener may have picked the port (port 0); the rest share it. */
	int r = listen_socket(&s->opt, index == 0 ? s->opt.port : s->port, index == 0,
	                      &w->listen_fd, err, errlen);
	if (r != 0)
		return r;
	if (index == 0)
		s->port = bound_port(w->listen_fd);
	w->epfd = epoll_create1(EPOLL_CLOEXEC);
	w->event_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (w->epfd < 0 || w->event_fd < 0) {
		snprintf(err, errlen, "cannot create epoll or eventfd: %s", strerror(errno));
		return ISG_ERR_IO;
	}
	struct epoll_event lev = {.events = EPOLLIN, .data.u64 = TAG_LISTEN};
	struct epoll_event eev = {.events = EPOLLIN, .data.u64 = TAG_EVENT};
	epoll_ctl(w->epfd, EPOLL_CTL_ADD, w->listen_fd, &lev);
	epoll_ctl(w->epfd, EPOLL_CTL_ADD, w->event_fd, &eev);
	return 0;
}

static void worker_release(struct net_worker *w)
{
	/* Work posted after the worker stopped (the store's last commits wake
	 * connections that are gone): run it now, with no connections left, so
	 * each post frees what it carries. */
	if (w->event_fd >= 0)
		worker_run_posts(w);
	if (w->listen_fd >= 0)
		close(w->listen_fd);
	if (w->epfd >= 0)
		close(w->epfd);
	if (w->event_fd >= 0)
		close(w->event_fd);
	free(w->slots);
	pthread_mutex_destroy(&w->mu);
}

/*
 * Each connection costs a descriptor, and the usual soft limit (1024) is
 * far below what max_connections allows: take what the hard limit gives.
 */
static void raise_nofile_limit(void)
{
	struct rlimit rl;
	if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= rl.rlim_max)
		return;
	rlim_t was = rl.rlim_cur;
	rl.rlim_cur = rl.rlim_max;
	if (setrlimit(RLIMIT_NOFILE, &rl) != 0) {
		log_event(LOG_WARN, "net.nofile_limit", "soft=%llu error=%d",
		          (unsigned long long)was, errno);
		return;
	}
	log_event(LOG_INFO, "net.nofile_limit", "soft=%llu was=%llu",
	          (unsigned long long)rl.rlim_cur, (unsigned long long)was);
}

int net_server_new(const struct net_options *opt, SSL_CTX *tls, const struct net_handler *h,
                   struct net_server **out, char *err, size_t errlen)
{
	raise_nofile_limit();
	struct net_server *s = calloc(1, sizeof(*s));
	if (!s)
		return ISG_ERR_NOMEM;
	s->opt = *opt;
	s->h = *h;
	s->n_workers = opt->threads ? opt->threads : 1;
	pthread_mutex_init(&s->tls_mu, NULL);
	pthread_mutex_init(&s->room_mu, NULL);
	atomic_init(&s->room_held, 0);
	atomic_init(&s->room_waiting, 0);
	SSL_CTX_up_ref(tls);
	s->tls = tls;
	s->workers = calloc(s->n_workers, sizeof(*s->workers));
	if (!s->workers) {
		net_server_free(s);
		return ISG_ERR_NOMEM;
	}
	for (uint32_t i = 0; i < s->n_workers; i++) {
		int r = worker_init(&s->workers[i], s, i, err, errlen);
		if (r != 0) {
			s->n_workers = i + 1;
			net_server_free(s);
			return r;
		}
	}
	*out = s;
	return 0;
}

void net_server_run(struct net_server *s)
{
	for (uint32_t i = 0; i < s->n_workers; i++) {
		if (pthread_create(&s->workers[i].thread, NULL, worker_main, &s->workers[i]) != 0)
			fatal("cannot start worker thread");
	}
}

int net_server_start(const struct net_options *opt, SSL_CTX *tls, const struct net_handler *h,
                     struct net_server **out, char *err, size_t errlen)
{
	int r = net_server_new(opt, tls, h, out, err, errlen);
	if (r == 0)
		net_server_run(*out);
	return r;
}

uint16_t net_server_port(const struct net_server *s)
{
	return s->port;
}

void net_server_set_tls(struct net_server *s, SSL_CTX *tls)
{
	SSL_CTX_up_ref(tls);
	pthread_mutex_lock(&s->tls_mu);
	SSL_CTX *old = s->tls;
	s->tls = tls;
	pthread_mutex_unlock(&s->tls_mu);
	SSL_CTX_free(old);
}

void net_server_stop(struct net_server *s, int64_t grace_ms)
{
	s->grace_ms = grace_ms;
	atomic_store(&s->stopping, true);
	for (uint32_t i = 0; i < s->n_workers; i++) {
		uint64_t one = 1;
		ssize_t n = write(s->workers[i].event_fd, &one, sizeof(one));
		(void)n;
	}
	for (uint32_t i = 0; i < s->n_workers; i++)
		pthread_join(s->workers[i].thread, NULL);
}

void net_server_free(struct net_server *s)
{
	if (!s)
		return;
	for (uint32_t i = 0; s->workers && i < s->n_workers; i++)
		worker_release(&s->workers[i]);
	free(s->workers);
	SSL_CTX_free(s->tls);
	pthread_mutex_destroy(&s->tls_mu);
	pthread_mutex_destroy(&s->room_mu);
	free(s);
}
