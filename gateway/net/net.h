/*
 * net: the listener, TLS and framing. A few worker threads, each with its
 * own epoll loop and SO_REUSEPORT listener, drive non-blocking OpenSSL
 * directly. Each connection has bounded buffers: while its output queue is
 * over the limit, or too many of its requests are waiting on the store, it
 * is not read (backpressure); nor is any connection's next frame taken while
 * the requests of all of them hold inflight_buffer bytes, until answers free
 * room (first held back, first served). Frames are decoded here and handed to the
 * handler; the handler answers with net_conn_send on the connection's thread,
 * or from any other thread through net_post.
 */
#ifndef ISG_NET_H
#define ISG_NET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <openssl/ssl.h>

#include "config/config.h"
#include "policy/policy.h"
#include "wire/wire.h"

struct net_server;
struct net_conn;

/* A handle to a connection that another thread may hold; stale handles are harmless. */
struct net_conn_ref {
	struct net_server *server;
	uint32_t worker;
	uint64_t id;
};

/* What one request holds while it waits on another thread (net_conn_begin_async). */
struct net_hold {
	struct net_server *server;
	size_t bytes;
};

struct net_handler {
	void *ctx;
	/* The handshake succeeded and the certificate verified. Return 0 to serve the
	 * connection; anything else closes it once queued output is flushed. */
	int (*on_open)(void *ctx, struct net_conn *c, const struct cert_identity *id);
	/* One decoded frame; the handler owns it (wire_frame_free). */
	void (*on_frame)(void *ctx, struct net_conn *c, Isg__Frame *frame);
	/* A connection is going away; release what on_open attached. */
	void (*on_close)(void *ctx, struct net_conn *c);
	/* A net_server_wake for `key` reached this waiting connection. */
	void (*on_wake)(void *ctx, struct net_conn *c, const char *key);
	/* The output queue, found over the connection's bound by net_conn_output_full,
	 * has drained to within it: what was held back may be queued again. */
	void (*on_drained)(void *ctx, struct net_conn *c);
	/* The peer sent close_notify (a TLS half-close), or a frame the stream
	 * cannot survive: no frame comes after those already handed to on_frame.
	 * Their answers are still sent, and the connection closes once none is
	 * owed; nothing is waited for (optional). */
	void (*on_peer_closed)(void *ctx, struct net_conn *c);
	/* isgd stops (net_server_stop): nothing more is read, and the connection
	 * closes once no answer is owed. Answer now what would wait for more
	 * than the store: a long-poll, a subscription (optional). */
	void (*on_stop)(void *ctx, struct net_conn *c);
	/* A connection was refused before on_open (TLS or certificate failure). */
	void (*on_refused)(void *ctx, const char *peer, const char *subject, const char *reason);
};

struct net_options {
	const char *host;
	uint16_t port;
	uint32_t threads;
	size_t max_frame;
	uint32_t max_connections;
	int64_t handshake_timeout_ms;
	int64_t idle_timeout_ms;
	size_t conn_buffer_bytes;
	uint32_t max_inflight;
	size_t inflight_buffer; /* bytes held by requests awaiting answers, all connections;
	                           0 = no bound */
};

/*
 * Build the server TLS context from the config (TLS 1.3, client certificates,
 * CRL). Each file is opened once, without waiting, and refused unless it is a
 * regular file. key_fd is tls.key, opened and checked by the caller, so the
 * key checked is the key read; or -1 to open tls.key here.
 */
int net_tls_new(const struct isgd_config *cfg, int key_fd, SSL_CTX **out, char *err, size_t errlen);
/*
 * With tls.crl, net_tls_new refuses a CRL that would lock partners out:
 * each CA of the partner CA bundle must have a CRL signed by it and
 * current (thisUpdate <= now < nextUpdate), or every certificate it issued
 * would be refused. Of those CRLs, the one whose nextUpdate comes first:
 */
struct net_crl_due {
	int64_t next_update; /* Unix seconds; 0 when no CRL has one */
	char when[32];       /* next_update as YYYY-MM-DDTHH:MM:SSZ */
	char ca[256];        /* the subject of the CA whose CRL it is */
};
/* For a context from net_tls_new: 0, or ISG_ERR_NOT_FOUND without tls.crl. */
int net_tls_crl_due(SSL_CTX *ctx, struct net_crl_due *due);
/*
 * Verify the peer certificate chain of ssl (its handshake over) again, as
 * the handshake did but against ctx's CAs and CRLs: after a reload, so
 * that a certificate revoked since is cut. 0, or an error with the
 * verification's reason ("certificate revoked") in reason.
 */
int net_tls_verify_peer(SSL_CTX *ctx, SSL *ssl, char *reason, size_t len);
/* Extract what policy matching needs from a certificate. */
void net_cert_identity(X509 *cert, struct cert_identity *id);

/*
 * Whether host:port is an address the listeners can be bound to, as
 * net_server_new looks it up (an IP address; no name is looked up), without
 * binding: what --check-config asks of listen. 0, or ISG_ERR_INVALID and
 * why in err, naming listen.
 */
int net_listen_check(const char *host, uint16_t port, char *err, size_t errlen);
/*
 * Bind the listeners (one per worker) without starting the workers, so a
 * daemon can bind while privileged and serve after dropping privileges.
 */
int net_server_new(const struct net_options *opt, SSL_CTX *tls, const struct net_handler *h,
                   struct net_server **out, char *err, size_t errlen);
/* Start the workers of a server from net_server_new. */
void net_server_run(struct net_server *s);
/* Bind the listeners (one per worker) and start the workers. */
int net_server_start(const struct net_options *opt, SSL_CTX *tls, const struct net_handler *h,
                     struct net_server **out, char *err, size_t errlen);
/* The port actually bound (useful with port 0). */
uint16_t net_server_port(const struct net_server *s);
/* New connections use this TLS context from now on (reload); takes a reference. */
void net_server_set_tls(struct net_server *s, SSL_CTX *tls);
/* Call on_wake(key) for every waiting connection, on each one's own thread.
 * Workers with no waiting connection are skipped, so a connection must call
 * net_conn_wait before it looks for what the wake-up would announce. */
void net_server_wake(struct net_server *s, const char *key);
/* Run fn on every open connection, each on its own thread. arg must outlive the call
 * on every worker: it is freed with free_arg after the last worker ran it. */
void net_server_each(struct net_server *s, void (*fn)(struct net_conn *c, void *arg), void *arg,
                     void (*free_arg)(void *arg));
/* net_server_each for the connections in net_conn_wait only; workers with none
 * are skipped, as by net_server_wake (arg is freed at once when no worker has one). */
void net_server_each_waiting(struct net_server *s, void (*fn)(struct net_conn *c, void *arg),
                             void *arg, void (*free_arg)(void *arg));
/*
 * Stop accepting, stop reading requests, tell the handler (on_stop), let
 * requests waiting on the store finish and their answers flush, send
 * close_notify and close, all within grace_ms; then close what is left and
 * join the workers. Then free with net_server_free.
 */
void net_server_stop(struct net_server *s, int64_t grace_ms);
void net_server_free(struct net_server *s);

/* --- on the connection's own thread --------------------------------------- */

/* Encode and queue one frame. Returns 0 or ISG_ERR_NOMEM / ISG_ERR_CLOSED. */
int net_conn_send(struct net_conn *c, const Isg__Frame *frame);
/* Queue a frame of deliveries whose records are sent as stored (wire_deliveries_encode). */
int net_conn_send_deliveries(struct net_conn *c, uint64_t request_id, bool push,
                             const struct wire_delivery *d, size_t n);
/*
 * Whether the output queue holds more than the connection's bound
 * (conn_buffer_bytes). Output the handler queues on its own initiative
 * (pushes) stops while it does; on_drained says when to go on.
 */
bool net_conn_output_full(struct net_conn *c);
/* Bytes the output queue may still take before its bound; 0 at or over it. */
size_t net_conn_output_room(const struct net_conn *c);
/* Close after queued output is flushed; no more frames are read. */
void net_conn_close(struct net_conn *c);
void net_conn_set_data(struct net_conn *c, void *data);
void *net_conn_data(const struct net_conn *c);
const char *net_conn_peer(const struct net_conn *c);
struct net_conn_ref net_conn_ref(struct net_conn *c);
/* What policy matching needs from the peer's certificate; ISG_ERR_NOT_FOUND if none. */
int net_conn_peer_identity(struct net_conn *c, struct cert_identity *id);
/*
 * Verify the peer's certificate chain again, as its handshake did, against
 * the CAs and CRLs of the server's current TLS context (net_server_set_tls):
 * 0, or an error with the reason ("certificate revoked") in reason.
 */
int net_conn_verify_again(struct net_conn *c, char *reason, size_t len);
/* Whether the handler writes a conn.refused line for c: a few a second per
 * worker; the others are counted into conn.refused_unlogged. */
bool net_refusal_log(struct net_conn *c);
/*
 * A request of this connection now waits on another thread (the store) and
 * holds about `bytes` of memory until it is answered; begun while its frame
 * is handed to on_frame, it counts at least that frame's length. While
 * max_inflight of the connection's requests are outstanding it is not read,
 * and while the requests of every connection hold inflight_buffer bytes no
 * connection's next frame is taken. Give the hold back with net_conn_end_async.
 */
struct net_hold net_conn_begin_async(struct net_conn *c, size_t bytes);
/* The request is answered (on the connection's thread): c is NULL when the
 * connection has closed, and what it held is given back all the same. */
void net_conn_end_async(struct net_conn *c, struct net_hold *hold);
/* Mark the connection as waiting for wake-ups (long-poll or subscription) until
 * deadline_ms (monotonic; 0 = no deadline). On the deadline on_wake is called
 * with key NULL. Waiting connections are exempt from the idle timeout. Call it
 * before looking for the state being waited on (net_server_wake). A closing
 * connection does not wait. */
void net_conn_wait(struct net_conn *c, int64_t deadline_ms);
void net_conn_unwait(struct net_conn *c);

/* --- from any thread ------------------------------------------------------ */

/* Run fn(c, arg) on the connection's thread; if it has closed, fn(NULL, arg). */
void net_post(struct net_conn_ref ref, void (*fn)(struct net_conn *c, void *arg), void *arg);

#endif
