/*
 * libisgclient: the C client library of the Information Sharing Gateway.
 *
 * This is the only header a partner system includes; link with -lisgclient
 * (or statically with libisgclient.a, plus OpenSSL and protobuf-c).
 * It depends on nothing but the C standard library. docs/client-library.md
 * has a complete example.
 *
 * The API is blocking: each call sends one request over a mutual-TLS
 * connection and waits (up to the configured timeout) for its answer. The
 * library never reconnects or resends by itself.
 *
 * Threads: different handles may be used by different threads at once (the
 * library has no global state); one handle by one thread at a time (one
 * handle per thread, or a lock of yours around every call on it).
 *
 * Ownership: nothing passed in is kept after a call returns. Strings the
 * handle returns live until isg_client_close; deliveries until
 * isg_delivery_free / isg_delivery_list_free, also after the handle is
 * closed, and any thread may free them.
 *
 * Every function that can fail returns 0 on success or -1 on failure and
 * then fills *err when err is not NULL. err->from_gateway tells a refusal
 * sent by the gateway (err->code is then the wire ErrorCode of
 * proto/isg.proto, reported exactly as the gateway gave it) from a local
 * failure (err->code is one of ISG_CLIENT_E_*, all >= 1000).
 *
 * After a refusal the connection stays usable. After a local failure other
 * than ISG_CLIENT_E_USAGE, ISG_CLIENT_E_NOMEM (unless memory ran out reading
 * an answer or building deliveries) and ISG_CLIENT_E_INTERRUPTED, or after
 * a gateway error that is not an answer to a request (rules partner.*, a
 * frame over the gateway's size limit: the gateway closes the connection
 * then), every further call fails with ISG_CLIENT_E_CLOSED: close the
 * handle and connect again. docs/client-library.md says which
 * failures are worth a retry.
 *
 * Field values never appear in error messages, neither the library's nor
 * the gateway's: errors name the record (0-based index) and the field.
 */
#ifndef ISGCLIENT_H
#define ISGCLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define ISG_CLIENT_API __attribute__((visibility("default")))
#define ISG_CLIENT_WUR __attribute__((warn_unused_result))
#else
#define ISG_CLIENT_API
#define ISG_CLIENT_WUR
#endif

#define ISG_CLIENT_VERSION "0.1.0"

/* The wire protocol's error codes (isg.ErrorCode), as the gateway sends them. */
enum isg_wire_code {
	ISG_WIRE_ERROR_UNSPECIFIED = 0,
	ISG_WIRE_BAD_FRAME = 1,      /* undecodable frame, or a frame over the size limit */
	ISG_WIRE_UNSUPPORTED = 2,    /* unknown request or protocol version */
	ISG_WIRE_NOT_PERMITTED = 3,  /* no agreement allows this exchange */
	ISG_WIRE_UNKNOWN_FIELD = 4,  /* a record has a field the agreement does not name */
	ISG_WIRE_BAD_VALUE = 5,      /* a field has the wrong type or an invalid value */
	ISG_WIRE_MISSING_FIELD = 6,  /* a required field is absent */
	ISG_WIRE_LIMIT_EXCEEDED = 7, /* over a limit of the agreement or the gateway */
	ISG_WIRE_CONFLICT = 8,       /* message_id reused with different content */
	ISG_WIRE_NOT_FOUND = 9,      /* reply_to or another reference names nothing of yours */
	ISG_WIRE_UNAVAILABLE = 10,   /* the gateway cannot accept now; retry later */
	ISG_WIRE_INTERNAL = 11,
	ISG_WIRE_BAD_REQUEST = 12, /* a request field is missing or malformed */
};

/* Local failures, detected by the library; err->from_gateway is false. */
enum isg_client_code {
	ISG_CLIENT_E_USAGE = 1000,    /* bad argument (e.g. a text value not UTF-8) */
	ISG_CLIENT_E_NOMEM = 1001,    /* out of memory */
	ISG_CLIENT_E_CONFIG = 1002,   /* certificate, key or CA file unusable */
	ISG_CLIENT_E_CONNECT = 1003,  /* name resolution or TCP connect failed */
	ISG_CLIENT_E_TLS = 1004,      /* certificate verification or TLS alert in the handshake */
	ISG_CLIENT_E_IO = 1005,       /* the connection broke (reset, EOF without close_notify),
	                                 also in the middle of the handshake */
	ISG_CLIENT_E_PROTOCOL = 1006, /* the gateway sent something unexpected or undecodable */
	ISG_CLIENT_E_TIMEOUT = 1007,  /* no answer within the timeout */
	ISG_CLIENT_E_CLOSED = 1008,   /* the gateway closed the connection, or it is unusable */
	ISG_CLIENT_E_TOO_BIG = 1009,  /* a frame from the gateway is over max_frame_bytes */
	ISG_CLIENT_E_INTERRUPTED = 1010, /* a signal interrupted isg_client_next_delivery */
};

/* A local code is never a wire code. */
#define ISG_CLIENT_IS_LOCAL(code) ((code) >= 1000)

struct isg_error {
	int code;             /* enum isg_wire_code when from_gateway, else enum isg_client_code */
	bool from_gateway;    /* the gateway sent this error (a refusal) */
	char code_name[32];   /* "NOT_PERMITTED", "BAD_VALUE", ... or "TLS", "TIMEOUT", ... */
	char message[512];    /* human-readable, valid UTF-8; never holds a field value */
	int64_t record_index; /* 0-based record the error is about; -1 when none */
	char field[128];      /* field name the error is about; "" when none */
	char rule[64];        /* policy rule that refused, e.g. "agreement.sender"; "" when none */
	uint64_t audit_index; /* the refusal's audit entry; 0 when none */
};

/*
 * Name of a wire or local code: "NOT_PERMITTED", "TLS", ...; a constant, never
 * NULL: "UNKNOWN" for a code this library does not name (an isg_error's
 * code_name shows a gateway's such code as "CODE_<n>").
 */
ISG_CLIENT_API const char *isg_client_code_name(int code);

/* Connection settings. Start from isg_client_options_init (or zero them). */
struct isg_client_options {
	const char *gateway;     /* "host:port", "192.0.2.1:4433" or "[2001:db8::1]:4433" */
	const char *cert_file;   /* PEM client certificate (chain: leaf first) */
	const char *key_file;    /* PEM private key of cert_file; not encrypted */
	const char *ca_file;     /* PEM CA certificate(s) that signed the gateway's certificate;
	                            NULL: the system's default trust store */
	const char *server_name; /* name (or IP address) the gateway's certificate must carry;
	                            NULL: the host part of `gateway` */
	int timeout_ms;          /* isg_client_connect as a whole (TCP, TLS, Hello/Welcome; not
	                            name resolution), then each request; 0: 30000;
	                            negative: refused (ISG_CLIENT_E_USAGE) */
	const char *client_name; /* UTF-8, for the gateway's log (partner.hello);
	                            NULL: "libisgclient/<version>" */
	size_t max_frame_bytes;  /* largest frame accepted from the gateway; 0: 64 MiB */
};

ISG_CLIENT_API void isg_client_options_init(struct isg_client_options *opt);

struct isg_client;

/*
 * Connect over TCP, handshake TLS 1.3 (verifying the gateway's certificate
 * against ca_file and server_name, presenting cert_file), send Hello and
 * read Welcome. The gateway may refuse the certificate: that comes back as
 * a gateway error (err->from_gateway) or ISG_CLIENT_E_TLS. On success *out
 * is the handle, yours to pass to isg_client_close (also once a call on it
 * failed); on failure *out is NULL and nothing is left open.
 */
ISG_CLIENT_API int isg_client_connect(const struct isg_client_options *opt, struct isg_client **out,
                                      struct isg_error *err) ISG_CLIENT_WUR;

/*
 * Send close_notify (best effort, bounded by the timeout) and free the handle.
 * NULL ok. A handle belongs to the process that connected it: in a child of
 * fork() every call on it fails with ISG_CLIENT_E_USAGE, and closing it there
 * frees the child's copy without sending anything, so the parent's
 * connection carries on. (The socket is close-on-exec.)
 */
ISG_CLIENT_API void isg_client_close(struct isg_client *client);

/* What the gateway said in Welcome. Valid until isg_client_close; never NULL. */
ISG_CLIENT_API const char *isg_client_partner_id(const struct isg_client *client);
ISG_CLIENT_API const char *isg_client_partner_name(const struct isg_client *client);
ISG_CLIENT_API const char *isg_client_policy_version(const struct isg_client *client);
ISG_CLIENT_API const char *isg_client_gateway_version(const struct isg_client *client);

/* Records: schema-less lists of named, typed fields. */
enum isg_value_kind {
	ISG_VALUE_NONE = 0, /* no value: only in deliveries; never sent (omit the field) */
	ISG_VALUE_TEXT,
	ISG_VALUE_INTEGER,
	ISG_VALUE_REAL,
	ISG_VALUE_BOOLEAN,
};

struct isg_value {
	enum isg_value_kind kind;
	const char *text; /* ISG_VALUE_TEXT: UTF-8, NUL-terminated */
	int64_t integer;  /* ISG_VALUE_INTEGER */
	double real;      /* ISG_VALUE_REAL: finite */
	bool boolean;     /* ISG_VALUE_BOOLEAN */
};

struct isg_field {
	const char *name; /* UTF-8, not empty */
	struct isg_value value;
};

struct isg_record {
	size_t n_fields;
	const struct isg_field *fields; /* the library never writes through it */
};

/* Longest message_id the library accepts, in bytes. */
#define ISG_CLIENT_MAX_ID 128

struct isg_message {
	const char *message_id; /* unique per sender, resending is idempotent;
	                           NULL: a random 128-bit hex id (see the receipt) */
	const char *recipient;  /* partner id */
	const char *agreement_id;
	const char *dataset;
	uint64_t reply_to; /* gateway_id of a delivery this answers; 0: none */
	size_t n_records;
	const struct isg_record *records;
};

struct isg_receipt {
	char message_id[ISG_CLIENT_MAX_ID + 1];
	uint64_t gateway_id;    /* the gateway's id for the message */
	uint64_t audit_index;   /* index of the "message accepted" audit entry */
	int64_t accepted_at_ms; /* Unix time, milliseconds */
	bool duplicate;         /* this message_id had been accepted before */
	uint32_t record_count;  /* records stored for the recipient */
	char policy_version[72];
};

/*
 * Send a message and wait for its receipt (receipt may be NULL). Values are
 * checked first (text is UTF-8, names are not empty, reals are finite): a
 * problem is ISG_CLIENT_E_USAGE naming the record and field.
 */
ISG_CLIENT_API int isg_client_send(struct isg_client *client, const struct isg_message *msg,
                                   struct isg_receipt *receipt,
                                   struct isg_error *err) ISG_CLIENT_WUR;

/*
 * Pipelining: isg_client_send_start checks and writes a message and returns
 * at once with a ticket; isg_client_send_finish waits for that message's
 * receipt or refusal and returns what isg_client_send would have. Up to
 * ISG_CLIENT_MAX_STARTED sends may be started and not yet finished; finish
 * them in any order, and make other calls in between as you like (answers
 * that arrive meanwhile are kept). The gateway works on a connection's
 * started sends together, so one connection with several in flight goes
 * about as fast as as many connections.
 *
 * Finish every send you start. If the connection fails first, finishing
 * gives the answer if it had arrived and ISG_CLIENT_E_CLOSED otherwise; the
 * message may or may not have been accepted then, so send it again with the
 * same message_id to find out (a resend of an accepted message gets its
 * receipt, marked duplicate): give pipelined messages ids of your own.
 * isg_client_send counts as one started send while it runs.
 * isg_client_close discards unfinished sends.
 */
#define ISG_CLIENT_MAX_STARTED 64
ISG_CLIENT_API int isg_client_send_start(struct isg_client *client, const struct isg_message *msg,
                                         uint64_t *ticket, struct isg_error *err) ISG_CLIENT_WUR;
ISG_CLIENT_API int isg_client_send_finish(struct isg_client *client, uint64_t ticket,
                                          struct isg_receipt *receipt,
                                          struct isg_error *err) ISG_CLIENT_WUR;

/* A message delivered to this partner. Owned by the library; strings are UTF-8. */
struct isg_delivery {
	uint64_t gateway_id;    /* pass to isg_client_ack */
	const char *message_id; /* the sender's message_id */
	const char *sender;
	const char *agreement_id;
	uint32_t agreement_version;
	const char *purpose;
	const char *dataset;
	uint64_t reply_to;
	int64_t accepted_at_ms;
	size_t n_records;
	const struct isg_record *records;
};

struct isg_delivery_list {
	size_t n;
	struct isg_delivery *items;
};

/*
 * Fetch up to max messages (0: the gateway's default), waiting up to wait_ms
 * for one when none is pending (long poll). *out is never NULL on success;
 * it may hold no items. Free it with isg_delivery_list_free.
 */
ISG_CLIENT_API int isg_client_fetch(struct isg_client *client, unsigned max, unsigned wait_ms,
                                    struct isg_delivery_list **out,
                                    struct isg_error *err) ISG_CLIENT_WUR;
ISG_CLIENT_API void isg_delivery_list_free(struct isg_delivery_list *list);

/*
 * Acknowledge deliveries by gateway_id: the gateway then deletes them.
 * *acknowledged (optional) gets how many ids were pending for this partner;
 * ids that were not (already acknowledged, never existed) are not an error.
 * n 0 succeeds without asking the gateway. At most 10,000 ids a call, the
 * gateway's limit for one Ack: more is refused whole (its BAD_REQUEST; the
 * connection stays usable), so acknowledge a larger batch in several calls.
 */
ISG_CLIENT_API int isg_client_ack(struct isg_client *client, const uint64_t *ids, size_t n,
                                  unsigned *acknowledged, struct isg_error *err) ISG_CLIENT_WUR;

/*
 * Ask the gateway to push every pending and every new delivery; read them
 * with isg_client_next_delivery and acknowledge each. Other requests may be
 * made meanwhile; deliveries pushed during them are kept in order.
 */
ISG_CLIENT_API int isg_client_subscribe(struct isg_client *client,
                                        struct isg_error *err) ISG_CLIENT_WUR;

/*
 * Wait up to timeout_ms (-1: forever, 0: do not wait; below -1:
 * ISG_CLIENT_E_USAGE) for the next pushed delivery. On success *out is the
 * delivery (free with isg_delivery_free), or NULL when the time ran out;
 * the connection stays usable either way.
 * A signal caught while waiting fails with ISG_CLIENT_E_INTERRUPTED, which
 * also leaves the connection usable. The connection sends TCP keepalive
 * probes after 60 s of silence: if the gateway or the network path to it
 * is gone, even a wait of -1 fails (ISG_CLIENT_E_IO) within about two
 * minutes; reconnect and subscribe again. The gateway ends a subscription
 * only as it closes the connection: the call returns its error, and every
 * later call ISG_CLIENT_E_CLOSED.
 */
ISG_CLIENT_API int isg_client_next_delivery(struct isg_client *client, int timeout_ms,
                                            struct isg_delivery **out,
                                            struct isg_error *err) ISG_CLIENT_WUR;
ISG_CLIENT_API void isg_delivery_free(struct isg_delivery *delivery);

/* Round trip to the gateway; *rtt_us (optional) gets the time it took in microseconds. */
ISG_CLIENT_API int isg_client_ping(struct isg_client *client, int64_t *rtt_us,
                                   struct isg_error *err) ISG_CLIENT_WUR;

#ifdef __cplusplus
}
#endif

#endif
