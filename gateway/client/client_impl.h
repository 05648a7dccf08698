/*
 * Private to libisgclient: the handle, the TLS connection and the frame
 * reader the public calls are built on. Never installed; partners include
 * isgclient.h only.
 */
#ifndef ISG_CLIENT_IMPL_H
#define ISG_CLIENT_IMPL_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <openssl/ssl.h>

#include "isgclient.h"
#include "wire/wire.h"

#define CLIENT_DEFAULT_TIMEOUT_MS 30000
#define CLIENT_DEFAULT_MAX_FRAME (64u * 1024 * 1024)
/* Largest answer to a started send kept for isg_client_send_finish. */
#define CLIENT_MAX_ANSWER_BYTES (64u * 1024)
/* Bytes of pushed deliveries kept while another request is waiting. */
#define CLIENT_MAX_QUEUED_BYTES (256u * 1024 * 1024)

/* Frames pushed on the subscription while a request was waiting for its answer. */
struct frame_queue {
	Isg__Frame **items;
	size_t *sizes;
	size_t head, n, cap;
	size_t bytes;
};

/* A send started with isg_client_send_start and not yet finished. */
struct started_send {
	uint64_t id;
	Isg__Frame *answer; /* its SendResult or Error once read, until finished */
};

struct isg_client {
	pid_t owner; /* the process that connected: a child of fork() shares the TLS state */
	int fd;
	SSL_CTX *ctx;
	SSL *ssl;
	bool handshake_done;
	bool tls_dead; /* a fatal TLS or socket error: no close_notify possible */
	bool broken;   /* unusable after a failure; every call fails with E_CLOSED */
	int timeout_ms;
	size_t max_frame;
	char peer[300];        /* "host:port", for messages */
	char server_name[256]; /* the name the gateway's certificate must carry */
	char broken_why[200];

	uint64_t last_request_id;
	bool subscribed;
	uint64_t subscribe_id;
	struct frame_queue pushed;
	struct started_send started[ISG_CLIENT_MAX_STARTED];
	size_t n_started;

	uint8_t *in; /* bytes read but not yet decoded */
	size_t in_len, in_cap;

	char *partner_id, *partner_name, *policy_version, *gateway_version;
};

/* error.c */
void client_error(struct isg_error *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void client_error_clear(struct isg_error *err);
void client_error_from_wire(struct isg_error *err, const Isg__Error *e);
/* 0 in the process that connected; -1 and E_USAGE in a child of fork(). */
int client_check_owner(const struct isg_client *c, struct isg_error *err);
/* Mark the connection unusable and fill err. Returns -1. */
int client_fail(struct isg_client *c, struct isg_error *err, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* io.c: deadlines are time_mono_ms() values; -1 means none. */
int64_t client_deadline(int64_t timeout_ms);
struct addrinfo;
/* Name resolution, outside the connect's deadline (getaddrinfo cannot be cut short). */
int client_resolve(struct isg_client *c, const char *host, const char *port, struct addrinfo **out,
                   struct isg_error *err);
/* Each address of res in turn, all within the one deadline. */
int client_tcp_connect(struct isg_client *c, const struct addrinfo *res, int64_t deadline,
                       struct isg_error *err);
int client_tls_handshake(struct isg_client *c, int64_t deadline, struct isg_error *err);
int client_write_frame(struct isg_client *c, const Isg__Frame *f, int64_t deadline,
                       struct isg_error *err);
enum read_result { READ_FRAME = 1, READ_TIMEOUT = 0, READ_ERROR = -1, READ_INTERRUPTED = -2 };
/* Read one frame. On READ_ERROR the client is broken and err filled. */
enum read_result client_read_frame(struct isg_client *c, int64_t deadline, bool interruptible,
                                   Isg__Frame **out, size_t *size, struct isg_error *err);
void client_tls_shutdown(struct isg_client *c);

/* tls.c */
int client_tls_context(const struct isg_client_options *opt, SSL_CTX **out, struct isg_error *err);
int client_tls_new(struct isg_client *c, const char *server_name, struct isg_error *err);
/* Describe the last TLS failure into buf (OpenSSL error queue and verify result). */
void client_tls_describe(struct isg_client *c, char *buf, size_t size);

/* convert.c: a SendRequest pointing into the caller's message. */
struct send_build {
	Isg__SendRequest req;
	Isg__Record **record_ptrs;
	Isg__Record *records;
	Isg__Field **field_ptrs;
	Isg__Field *fields;
	Isg__Value *values;
};
/* Check the message (UTF-8, names, kinds) and build the request; -1 with err filled. */
int send_build_init(struct send_build *b, const struct isg_message *msg, const char *message_id,
                    struct isg_error *err);
void send_build_release(struct send_build *b);
/* These take ownership of the frame, also on failure. */
int client_deliveries_from_fetch(Isg__Frame *f, struct isg_delivery_list **out,
                                 struct isg_error *err);
int client_delivery_from_push(Isg__Frame *f, struct isg_delivery **out, struct isg_error *err);

/* requests.c: one request and its answer by deadline; 0 and *out, or -1 with err filled. */
int client_call(struct isg_client *c, Isg__Frame *req, Isg__Frame__BodyCase want, int64_t deadline,
                Isg__Frame **out, struct isg_error *err);

/* queue.c */
int queue_push(struct frame_queue *q, Isg__Frame *f, size_t size);
Isg__Frame *queue_pop(struct frame_queue *q);
const Isg__Frame *queue_last(const struct frame_queue *q);
void queue_release(struct frame_queue *q);

#endif
