/*
 * Requests and answers. Each request gets a fresh request_id and waits for
 * the frame echoing it. Deliveries pushed on a subscription meanwhile are
 * queued in order for isg_client_next_delivery, and answers to started sends
 * are kept with them for isg_client_send_finish.
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/rand.h>

#include "client_impl.h"
#include "util/util.h"

static int check_usable(struct isg_client *c, struct isg_error *err)
{
	client_error_clear(err);
	if (!c) {
		client_error(err, ISG_CLIENT_E_USAGE, "no client");
		return -1;
	}
	if (client_check_owner(c, err) < 0)
		return -1;
	if (c->broken) {
		client_error(err, ISG_CLIENT_E_CLOSED,
		             "the connection is unusable after an earlier failure (%s)",
		             c->broken_why);
		return -1;
	}
	return 0;
}

/* The gateway's reason for ending the connection: err, and every later call's CLOSED. */
static void gateway_said(struct isg_client *c, const Isg__Error *e, const char *what,
                         struct isg_error *err)
{
	client_error_from_wire(err, e);
	c->broken = true;
	snprintf(c->broken_why, sizeof(c->broken_why), "the gateway %s: %s", what,
	         e->message ? e->message : "");
}

/*
 * The gateway's error that ends the connection: it closes after sending it.
 * err gets the gateway's own error; every later call, ISG_CLIENT_E_CLOSED.
 */
static int gateway_ended(struct isg_client *c, Isg__Frame *f, const char *what,
                         struct isg_error *err)
{
	gateway_said(c, f->error, what, err);
	wire_frame_free(f);
	return -1;
}

static struct started_send *started_find(struct isg_client *c, uint64_t id)
{
	for (size_t i = 0; i < c->n_started; i++)
		if (c->started[i].id == id)
			return &c->started[i];
	return NULL;
}

/*
 * An answer to a started send, kept for isg_client_send_finish. A receipt or
 * an error is a few hundred bytes; a larger one is not kept.
 */
static bool keep_send_answer(struct isg_client *c, Isg__Frame *f, size_t size)
{
	struct started_send *st = started_find(c, f->request_id);
	if (!st || st->answer || size > CLIENT_MAX_ANSWER_BYTES ||
	    (f->body_case != ISG__FRAME__BODY_SEND_RESULT &&
	     f->body_case != ISG__FRAME__BODY_ERROR))
		return false;
	st->answer = f;
	return true;
}

/* Does a started send, or the request `waiting` (0: none) without *answer, wait still? */
static bool answers_owed(const struct isg_client *c, uint64_t waiting, const Isg__Frame *answer)
{
	if (waiting && !answer)
		return true;
	for (size_t i = 0; i < c->n_started; i++)
		if (!c->started[i].answer)
			return true;
	return false;
}

/*
 * The connection is ending, and the gateway answers the requests it read
 * before it closes (after an oversized frame, its BAD_FRAME comes first and
 * the receipts of the sends before it follow). Read on until the gateway
 * has closed, or the deadline, or its reason has come (`said`) and nothing
 * is owed: answers to started sends are kept for isg_client_send_finish,
 * the one to `waiting` (0: none) goes to *answer, the rest is dropped (the
 * handle is closed). The gateway's first other error is its reason: err,
 * and the handle's. A TLS alert is one too, when no error came.
 */
static void read_last_answers(struct isg_client *c, uint64_t waiting, int64_t deadline, bool said,
                              Isg__Frame **answer, struct isg_error *err)
{
	struct isg_error ignored;
	client_error_clear(&ignored);
	bool dead = c->tls_dead;
	c->tls_dead = false;
	while (!said || answers_owed(c, waiting, *answer)) {
		Isg__Frame *f = NULL;
		size_t size = 0;
		enum read_result r = client_read_frame(c, deadline, false, &f, &size, &ignored);
		if (r == READ_ERROR && !said && ignored.code == ISG_CLIENT_E_TLS) {
			if (err)
				*err = ignored; /* e.g. the client certificate was refused */
			str_copy(c->broken_why, ignored.message, sizeof(c->broken_why));
		}
		if (r != READ_FRAME)
			break;
		if (waiting && f->request_id == waiting && !*answer) {
			*answer = f;
			continue;
		}
		if (keep_send_answer(c, f, size))
			continue;
		if (!said && f->body_case == ISG__FRAME__BODY_ERROR) {
			gateway_said(c, f->error, "ended the connection", err);
			said = true;
		}
		wire_frame_free(f);
	}
	c->tls_dead = c->tls_dead || dead;
}

/*
 * The gateway's error about the connection itself (request_id 0): it
 * closes once it has answered what it read before; those answers are
 * read and kept (read_last_answers), the one to `waiting` in *answer.
 */
static int connection_error(struct isg_client *c, Isg__Frame *f, uint64_t waiting, int64_t deadline,
                            Isg__Frame **answer, struct isg_error *err)
{
	gateway_ended(c, f, "ended the connection", err);
	read_last_answers(c, waiting, deadline, true, answer, err);
	return -1;
}

/* A frame that answers no request we are waiting for. */
static int side_frame(struct isg_client *c, Isg__Frame *f, size_t size, struct isg_error *err)
{
	Isg__Frame *none = NULL;
	if (f->request_id == 0 && f->body_case == ISG__FRAME__BODY_ERROR)
		return connection_error(c, f, 0, client_deadline(c->timeout_ms), &none, err);
	if (keep_send_answer(c, f, size))
		return 0;
	if (c->subscribed && f->request_id == c->subscribe_id &&
	    (f->body_case == ISG__FRAME__BODY_DELIVERY || f->body_case == ISG__FRAME__BODY_ERROR)) {
		int rc = queue_push(&c->pushed, f, size);
		if (rc == 0)
			return 0;
		wire_frame_free(f);
		if (rc == ISG_ERR_NOMEM)
			return client_fail(c, err, ISG_CLIENT_E_NOMEM,
			                   "out of memory keeping pushed deliveries");
		return client_fail(c, err, ISG_CLIENT_E_PROTOCOL,
		                   "more than %u bytes of pushed deliveries are waiting to be read",
		                   CLIENT_MAX_QUEUED_BYTES);
	}
	uint64_t id = f->request_id;
	const char *name = wire_body_name(f->body_case);
	wire_frame_free(f);
	return client_fail(c, err, ISG_CLIENT_E_PROTOCOL,
	                   "the gateway sent an unexpected '%s' frame for request %" PRIu64, name,
	                   id);
}

/*
 * A write failed: the gateway may have said why before closing (for example
 * a certificate it does not know, or a frame over its limit). Surface that
 * error instead of ours, and keep the answers to started sends that it
 * sent before closing (read_last_answers).
 */
static void salvage_error(struct isg_client *c, struct isg_error *err)
{
	Isg__Frame *none = NULL;
	read_last_answers(c, 0, client_deadline(250), false, &none, err);
}

/* The answer to the request we wait for: what was wanted, or its error. */
static int take_answer(struct isg_client *c, Isg__Frame *f, Isg__Frame__BodyCase want,
                       Isg__Frame **out, struct isg_error *err)
{
	if (f->body_case == ISG__FRAME__BODY_ERROR) {
		client_error_from_wire(err, f->error);
		wire_frame_free(f);
		return -1;
	}
	if (f->body_case != want) {
		const char *got = wire_body_name(f->body_case);
		wire_frame_free(f);
		return client_fail(c, err, ISG_CLIENT_E_PROTOCOL,
		                   "the gateway answered '%s' where '%s' was expected", got,
		                   wire_body_name(want));
	}
	*out = f;
	return 0;
}

/*
 * The connection ended while a request waited for its answer. If the
 * gateway had ended the subscription first, saying why (it is stopping:
 * UNAVAILABLE), that is the reason the request got no answer, and the one
 * to act on (retry later), not the close that followed it.
 */
static int ended_waiting(struct isg_client *c, struct isg_error *err)
{
	const Isg__Frame *last = queue_last(&c->pushed);
	if (err && !err->from_gateway &&
	    (err->code == ISG_CLIENT_E_CLOSED || err->code == ISG_CLIENT_E_IO) && last &&
	    last->body_case == ISG__FRAME__BODY_ERROR)
		client_error_from_wire(err, last->error);
	return -1;
}

static int wait_answer(struct isg_client *c, uint64_t id, Isg__Frame__BodyCase want,
                       int64_t deadline, Isg__Frame **out, struct isg_error *err)
{
	for (;;) {
		Isg__Frame *f = NULL;
		size_t size = 0;
		enum read_result r = client_read_frame(c, deadline, false, &f, &size, err);
		if (r == READ_TIMEOUT)
			return client_fail(c, err, ISG_CLIENT_E_TIMEOUT,
			                   "no answer from the gateway within %d ms",
			                   c->timeout_ms);
		if (r != READ_FRAME)
			return r == READ_ERROR ? ended_waiting(c, err) : -1;
		if (f->request_id == id)
			return take_answer(c, f, want, out, err);
		if (f->request_id == 0 && f->body_case == ISG__FRAME__BODY_ERROR) {
			/* The gateway ends the connection; it may have read this request. */
			Isg__Frame *answer = NULL;
			connection_error(c, f, id, deadline, &answer, err);
			return answer ? take_answer(c, answer, want, out, err) : -1;
		}
		if (side_frame(c, f, size, err) < 0)
			return -1;
	}
}

/* The deadline of c's next request; a NULL c is refused by what it calls. */
static int64_t request_deadline(const struct isg_client *c)
{
	return client_deadline(c ? c->timeout_ms : 0);
}

int client_call(struct isg_client *c, Isg__Frame *req, Isg__Frame__BodyCase want, int64_t deadline,
                Isg__Frame **out, struct isg_error *err)
{
	if (c->broken)
		return check_usable(c, err);
	req->request_id = ++c->last_request_id;
	if (client_write_frame(c, req, deadline, err) < 0) {
		if (c->broken)
			salvage_error(c, err);
		return -1;
	}
	return wait_answer(c, req->request_id, want, deadline, out, err);
}

static int random_id(char out[33], struct isg_error *err)
{
	uint8_t raw[16];
	if (RAND_bytes(raw, sizeof(raw)) != 1) {
		client_error(err, ISG_CLIENT_E_NOMEM, "cannot generate a random message id");
		return -1;
	}
	hex_encode(out, raw, sizeof(raw));
	return 0;
}

static int check_message_id(const char *id, struct isg_error *err)
{
	size_t len = strlen(id);
	if (len == 0 || len > ISG_CLIENT_MAX_ID) {
		client_error(err, ISG_CLIENT_E_USAGE,
		             "message_id must be 1 to %d bytes of UTF-8 (got %zu bytes)",
		             ISG_CLIENT_MAX_ID, len);
		return -1;
	}
	if (!str_utf8_valid(id, len)) { /* its bytes are not quoted: they may be anything */
		client_error(err, ISG_CLIENT_E_USAGE, "message_id is not valid UTF-8");
		return -1;
	}
	return 0;
}

static int fill_receipt(struct isg_client *c, const Isg__Frame *f, struct isg_receipt *out,
                        struct isg_error *err)
{
	const Isg__Receipt *r = f->send_result->receipt;
	if (!r)
		return client_fail(c, err, ISG_CLIENT_E_PROTOCOL,
		                   "the gateway's send result has no receipt");
	if (!out)
		return 0;
	memset(out, 0, sizeof(*out));
	str_copy(out->message_id, r->message_id ? r->message_id : "", sizeof(out->message_id));
	out->gateway_id = r->gateway_id;
	out->audit_index = r->audit_index;
	out->accepted_at_ms = r->accepted_at_ms;
	out->duplicate = r->duplicate;
	out->record_count = r->record_count;
	str_copy(out->policy_version, r->policy_version ? r->policy_version : "",
	         sizeof(out->policy_version));
	return 0;
}

static int send_start(struct isg_client *c, const struct isg_message *msg, int64_t deadline,
                      uint64_t *ticket, struct isg_error *err)
{
	if (check_usable(c, err) < 0)
		return -1;
	if (!msg || !ticket) {
		client_error(err, ISG_CLIENT_E_USAGE,
		             msg ? "no place for the ticket" : "no message");
		return -1;
	}
	if (c->n_started == ISG_CLIENT_MAX_STARTED) {
		client_error(err, ISG_CLIENT_E_USAGE,
		             "%d sends are started and not finished; finish one first",
		             ISG_CLIENT_MAX_STARTED);
		return -1;
	}
	char generated[33];
	const char *id = msg->message_id;
	if (!id) {
		if (random_id(generated, err) < 0)
			return -1;
		id = generated;
	} else if (check_message_id(id, err) < 0) {
		return -1;
	}
	struct send_build b;
	if (send_build_init(&b, msg, id, err) < 0)
		return -1;
	Isg__Frame req = ISG__FRAME__INIT;
	req.body_case = ISG__FRAME__BODY_SEND;
	req.send = &b.req;
	req.request_id = ++c->last_request_id;
	int rc = client_write_frame(c, &req, deadline, err);
	send_build_release(&b);
	if (rc < 0) {
		if (c->broken)
			salvage_error(c, err);
		return -1;
	}
	c->started[c->n_started++] = (struct started_send){.id = req.request_id};
	*ticket = req.request_id;
	return 0;
}

static int send_finish(struct isg_client *c, uint64_t ticket, int64_t deadline,
                       struct isg_receipt *receipt, struct isg_error *err)
{
	if (!c || client_check_owner(c, err) < 0)
		return check_usable(c, err);
	client_error_clear(err);
	struct started_send *st = started_find(c, ticket);
	if (!st) {
		client_error(err, ISG_CLIENT_E_USAGE, "no started send has ticket %" PRIu64,
		             ticket);
		return -1;
	}
	Isg__Frame *parked = st->answer, *answer = NULL;
	*st = c->started[--c->n_started]; /* finished now, whatever the answer */
	int rc;
	if (parked)
		rc = take_answer(c, parked, ISG__FRAME__BODY_SEND_RESULT, &answer, err);
	else if (check_usable(c, err) < 0)
		return -1;
	else
		rc = wait_answer(c, ticket, ISG__FRAME__BODY_SEND_RESULT, deadline, &answer, err);
	if (rc == 0)
		rc = fill_receipt(c, answer, receipt, err);
	wire_frame_free(answer);
	return rc;
}

ISG_CLIENT_API int isg_client_send_start(struct isg_client *c, const struct isg_message *msg,
                                         uint64_t *ticket, struct isg_error *err)
{
	return send_start(c, msg, request_deadline(c), ticket, err);
}

ISG_CLIENT_API int isg_client_send_finish(struct isg_client *c, uint64_t ticket,
                                          struct isg_receipt *receipt, struct isg_error *err)
{
	return send_finish(c, ticket, request_deadline(c), receipt, err);
}

/* Start and finish within one timeout, as any other request. */
ISG_CLIENT_API int isg_client_send(struct isg_client *c, const struct isg_message *msg,
                                   struct isg_receipt *receipt, struct isg_error *err)
{
	int64_t deadline = request_deadline(c);
	uint64_t ticket;
	if (send_start(c, msg, deadline, &ticket, err) < 0)
		return -1;
	return send_finish(c, ticket, deadline, receipt, err);
}

/*
 * Deliveries the gateway handed out but the library could not hand over
 * (no memory to build them): the gateway offers them again only on another
 * connection, so this one must end, or they would wait, unacknowledged and
 * never seen, for as long as a long-running service keeps it.
 */
static int deliveries_lost(struct isg_client *c, struct isg_error *err)
{
	return client_fail(c, err, ISG_CLIENT_E_NOMEM,
	                   "out of memory for the deliveries received; the gateway delivers them "
	                   "again on the next connection");
}

ISG_CLIENT_API int isg_client_fetch(struct isg_client *c, unsigned max, unsigned wait_ms,
                                    struct isg_delivery_list **out, struct isg_error *err)
{
	if (check_usable(c, err) < 0)
		return -1;
	if (!out) {
		client_error(err, ISG_CLIENT_E_USAGE, "no place for the deliveries");
		return -1;
	}
	*out = NULL;
	Isg__FetchRequest fetch = ISG__FETCH_REQUEST__INIT;
	fetch.max_messages = max;
	fetch.wait_ms = wait_ms;
	Isg__Frame req = ISG__FRAME__INIT;
	req.body_case = ISG__FRAME__BODY_FETCH;
	req.fetch = &fetch;
	Isg__Frame *resp = NULL;
	if (client_call(c, &req, ISG__FRAME__BODY_FETCH_RESULT,
	                client_deadline((int64_t)c->timeout_ms + wait_ms), &resp, err) < 0)
		return -1;
	if (client_deliveries_from_fetch(resp, out, err) < 0)
		return deliveries_lost(c, err);
	return 0;
}

ISG_CLIENT_API int isg_client_ack(struct isg_client *c, const uint64_t *ids, size_t n,
                                  unsigned *acknowledged, struct isg_error *err)
{
	if (check_usable(c, err) < 0)
		return -1;
	if (acknowledged)
		*acknowledged = 0;
	if (n == 0)
		return 0;
	if (!ids) {
		client_error(err, ISG_CLIENT_E_USAGE, "no ids to acknowledge");
		return -1;
	}
	Isg__Ack ack = ISG__ACK__INIT;
	ack.n_gateway_ids = n;
	ack.gateway_ids = (uint64_t *)ids;
	Isg__Frame req = ISG__FRAME__INIT;
	req.body_case = ISG__FRAME__BODY_ACK;
	req.ack = &ack;
	Isg__Frame *resp = NULL;
	if (client_call(c, &req, ISG__FRAME__BODY_ACK_RESULT, request_deadline(c), &resp, err) < 0)
		return -1;
	if (acknowledged)
		*acknowledged = resp->ack_result->acknowledged;
	wire_frame_free(resp);
	return 0;
}

ISG_CLIENT_API int isg_client_subscribe(struct isg_client *c, struct isg_error *err)
{
	if (check_usable(c, err) < 0)
		return -1;
	if (c->subscribed) {
		client_error(err, ISG_CLIENT_E_USAGE, "already subscribed");
		return -1;
	}
	Isg__Subscribe sub = ISG__SUBSCRIBE__INIT;
	Isg__Frame req = ISG__FRAME__INIT;
	req.body_case = ISG__FRAME__BODY_SUBSCRIBE;
	req.subscribe = &sub;
	req.request_id = ++c->last_request_id;
	if (client_write_frame(c, &req, client_deadline(c->timeout_ms), err) < 0) {
		if (c->broken)
			salvage_error(c, err);
		return -1;
	}
	c->subscribed = true;
	c->subscribe_id = req.request_id;
	return 0;
}

/*
 * A frame on the subscription: a delivery, or the gateway ending it with an
 * error, which it does only as it ends the connection (isgd stopping, a
 * reload that no longer knows the partner): the next call is
 * ISG_CLIENT_E_CLOSED, as the error's words say, not "not subscribed".
 */
static int pushed_frame(struct isg_client *c, Isg__Frame *f, struct isg_delivery **out,
                        struct isg_error *err)
{
	if (f->body_case == ISG__FRAME__BODY_ERROR) {
		c->subscribed = false;
		return gateway_ended(c, f, "ended the subscription", err);
	}
	if (client_delivery_from_push(f, out, err) < 0)
		return deliveries_lost(c, err);
	return 0;
}

ISG_CLIENT_API int isg_client_next_delivery(struct isg_client *c, int timeout_ms,
                                            struct isg_delivery **out, struct isg_error *err)
{
	if (check_usable(c, err) < 0)
		return -1;
	if (!out) {
		client_error(err, ISG_CLIENT_E_USAGE, "no place for the delivery");
		return -1;
	}
	*out = NULL;
	if (timeout_ms < -1) { /* as the options' timeout_ms: a negative figure is a mistake */
		client_error(err, ISG_CLIENT_E_USAGE,
		             "timeout_ms %d is below -1 (-1: forever, 0: do not wait)", timeout_ms);
		return -1;
	}
	Isg__Frame *f = queue_pop(&c->pushed);
	if (f)
		return pushed_frame(c, f, out, err);
	if (!c->subscribed) {
		client_error(err, ISG_CLIENT_E_USAGE, "not subscribed");
		return -1;
	}
	int64_t deadline = client_deadline(timeout_ms);
	for (;;) {
		size_t size = 0;
		enum read_result r = client_read_frame(c, deadline, true, &f, &size, err);
		if (r == READ_TIMEOUT)
			return 0;
		if (r == READ_INTERRUPTED) {
			client_error(err, ISG_CLIENT_E_INTERRUPTED, "interrupted by a signal");
			return -1;
		}
		if (r != READ_FRAME)
			return -1;
		if (f->request_id == c->subscribe_id &&
		    (f->body_case == ISG__FRAME__BODY_DELIVERY ||
		     f->body_case == ISG__FRAME__BODY_ERROR))
			return pushed_frame(c, f, out, err);
		if (side_frame(c, f, size, err) < 0)
			return -1;
	}
}

static int64_t mono_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

ISG_CLIENT_API int isg_client_ping(struct isg_client *c, int64_t *rtt_us, struct isg_error *err)
{
	if (check_usable(c, err) < 0)
		return -1;
	Isg__Ping ping = ISG__PING__INIT;
	if (RAND_bytes((unsigned char *)&ping.nonce, sizeof(ping.nonce)) != 1)
		ping.nonce = (uint64_t)mono_us();
	Isg__Frame req = ISG__FRAME__INIT;
	req.body_case = ISG__FRAME__BODY_PING;
	req.ping = &ping;
	Isg__Frame *resp = NULL;
	int64_t start = mono_us();
	if (client_call(c, &req, ISG__FRAME__BODY_PONG, request_deadline(c), &resp, err) < 0)
		return -1;
	int64_t took = mono_us() - start;
	uint64_t nonce = resp->pong->nonce;
	wire_frame_free(resp);
	if (nonce != ping.nonce)
		return client_fail(c, err, ISG_CLIENT_E_PROTOCOL,
		                   "the gateway's pong does not echo the ping's nonce");
	if (rtt_us)
		*rtt_us = took;
	return 0;
}
