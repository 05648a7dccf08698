/*
 * Serving partners: one session per connection, on the connection's worker
 * thread. Requests that touch the disk go to the store; its answers come
 * back to the worker through net_post, so a worker never waits on the disk.
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/gateway.h"
#include "util/util.h"
#include "wire/wire.h"

#define MESSAGE_ID_MAX 128
#define ACK_MAX 10000

/* A message pushed to a subscriber, pending until acked or expired. */
struct push {
	uint64_t gateway_id;
	int64_t expires_at_ms; /* Unix ms */
};

struct session {
	struct gateway *g;
	char partner[64];
	char subject[512];
	uint64_t cursor; /* last gateway_id handed out on this connection */
	/* A fetch or subscription in progress. */
	bool fetching; /* a FetchRequest is unanswered */
	bool subscribed;
	uint64_t fetch_rid; /* request_id of the fetch or subscribe */
	uint32_t fetch_max;
	bool store_busy;     /* a store_fetch is in flight */
	struct push *pushed; /* pushed and still pending, in id order */
	uint32_t unacked;    /* how many: the window holds max_fetch_messages */
	bool dirty;          /* a wake-up came while it was */
	bool expired;        /* the long-poll deadline passed while it was */
	uint32_t retry_ms;   /* a subscriber's wait before it fetches again after a failure */
	bool hello_logged;   /* partner.hello is written once a connection */
};

/* A subscriber's fetch that failed is tried again after 100 ms, doubling to 5 s. */
#define SUBSCRIBE_RETRY_FIRST_MS 100
#define SUBSCRIBE_RETRY_MAX_MS 5000

/* ------------------------------------------------------------------------ */
/* Answers. */

static void send_error(struct net_conn *c, uint64_t rid, Isg__ErrorCode code, const char *rule,
                       const char *message, int64_t record, const char *field, uint64_t audit)
{
	Isg__Error e = ISG__ERROR__INIT;
	e.code = code;
	e.message = (char *)message;
	e.rule = (char *)(rule ? rule : "");
	e.record_index = record;
	e.field = (char *)(field ? field : "");
	e.audit_index = audit;
	Isg__Frame f = ISG__FRAME__INIT;
	f.request_id = rid;
	f.body_case = ISG__FRAME__BODY_ERROR;
	f.error = &e;
	net_conn_send(c, &f);
}

static void send_simple_error(struct net_conn *c, uint64_t rid, Isg__ErrorCode code,
                              const char *message)
{
	send_error(c, rid, code, NULL, message, -1, NULL, 0);
}

/*
 * A commit that may or may not be on disk: the gateway stops (the store
 * failed), and the partner repeats the request once it is back. Sends are
 * idempotent under their message_id, acks under their ids, and a fetch only
 * hands out again what it may have handed out.
 */
#define RULE_OUTCOME_UNKNOWN "store.outcome_unknown"
#define OUTCOME_UNKNOWN_SEND                                                                       \
	"the gateway could not make the request durable and is stopping; it may or may not be "    \
	"stored: send it again with the same message_id (a stored message gets its receipt)"
#define OUTCOME_UNKNOWN_ACK                                                                        \
	"the gateway could not make the ack durable and is stopping; it may or may not be "        \
	"recorded: acknowledge again (ids already acknowledged come back unknown)"
#define OUTCOME_UNKNOWN_FETCH                                                                      \
	"the gateway could not record the fetch and is stopping; fetch again (messages may be "    \
	"delivered again: de-duplicate on gateway_id)"

static void send_outcome_unknown(struct net_conn *c, uint64_t rid, const char *message)
{
	send_error(c, rid, ISG__ERROR_CODE__UNAVAILABLE, RULE_OUTCOME_UNKNOWN, message, -1, NULL,
	           0);
}

/* The store's error, as a partner should see it (a send's, unless said otherwise). */
static void send_store_error(struct net_conn *c, uint64_t rid, int err)
{
	if (err == ISG_ERR_UNKNOWN)
		send_outcome_unknown(c, rid, OUTCOME_UNKNOWN_SEND);
	else if (err == ISG_ERR_FULL)
		send_simple_error(c, rid, ISG__ERROR_CODE__UNAVAILABLE,
		                  "the gateway's disk is full; nothing was stored, retry later");
	else if (err == ISG_ERR_CLOSED)
		send_simple_error(c, rid, ISG__ERROR_CODE__UNAVAILABLE,
		                  "the gateway is shutting down; nothing was stored, retry");
	else if (err == ISG_ERR_INVALID || err == ISG_ERR_TOO_BIG) {
		/* The store never takes it: a retry would loop, so not UNAVAILABLE. */
		log_event(LOG_ERROR, "store.request_refused", "request_id=%" PRIu64 " error=%d",
		          rid, err);
		send_simple_error(c, rid, ISG__ERROR_CODE__INTERNAL,
		                  "the gateway cannot store this request; a retry will not help");
	} else
		send_simple_error(c, rid, ISG__ERROR_CODE__UNAVAILABLE,
		                  "the gateway could not store the request; retry later");
}

/* ------------------------------------------------------------------------ */
/* Hello. */

static void on_hello(struct net_conn *c, struct session *s, const Isg__Frame *f)
{
	if (f->hello->protocol_version != WIRE_PROTOCOL_VERSION) {
		char msg[96];
		snprintf(msg, sizeof(msg),
		         "protocol version %u is not supported; this gateway speaks %d",
		         f->hello->protocol_version, WIRE_PROTOCOL_VERSION);
		send_simple_error(c, f->request_id, ISG__ERROR_CODE__UNSUPPORTED, msg);
		return;
	}
	/* Which software the partner runs, for the admin who helps it: the
	 * name the partner chose (never a record's value), quoted and cut
	 * short, once a connection: a Hello is a few bytes, and a partner
	 * repeating it must not buy a line of the log with each. */
	if (!s->hello_logged) {
		char q[100];
		s->hello_logged = true;
		log_event(
		    LOG_INFO, "partner.hello", "peer=%s partner=%s client=%s", net_conn_peer(c),
		    s->partner,
		    log_quote(q, sizeof(q), f->hello->client_name ? f->hello->client_name : ""));
	}
	struct regime *rg = gateway_regime(s->g);
	const struct policy_set *set = rg->policy;
	const struct policy_partner *p = policy_partner_by_id(set, s->partner);
	Isg__Welcome w = ISG__WELCOME__INIT;
	w.protocol_version = WIRE_PROTOCOL_VERSION;
	w.partner_id = s->partner;
	w.partner_name = p ? p->name : "";
	w.gateway_version = "isgd/" ISG_VERSION;
	w.policy_version = (char *)set->version;
	Isg__Frame out = ISG__FRAME__INIT;
	out.request_id = f->request_id;
	out.body_case = ISG__FRAME__BODY_WELCOME;
	out.welcome = &w;
	net_conn_send(c, &out);
	regime_unref(rg);
}

/* ------------------------------------------------------------------------ */
/* Send. */

struct send_job {
	struct net_conn_ref ref;
	struct net_hold hold; /* what it holds while the store has it */
	uint64_t rid;
	int err;
	struct store_receipt receipt;
	char policy_version[65];
	char message_id[MESSAGE_ID_MAX + 1];
	/* A refusal, answered once its audit entry is stored. */
	bool refused; /* on arrival in send_reply: by refuse_send, logged as it is answered */
	struct policy_refusal why;
	uint64_t audit_index;
	/* The daily limits, judged on the writer as the store comes to store
	 * it (send_admit): its admission, given back if that is rolled back,
	 * and whether the last judgement refused it (why then says why). */
	struct quota *quota;
	struct quota_ask ask;
	struct quota_claim claim;
	bool limit_refused;
	/* For a refusal the store finds (a conflicting resend, a reply to no
	 * message, a daily limit): its audit entry is built on the writer,
	 * once the request is gone (found_refusal_entry). */
	char sender[ENTRY_STR_MAX + 1];
	char recipient[ENTRY_STR_MAX + 1];
	char agreement_id[ENTRY_STR_MAX + 1];
	char dataset[ENTRY_STR_MAX + 1];
	size_t records;
};

/* A refusal of a send, without values: the field only when the agreement declares it. */
static void log_refused(const char *partner, const struct policy_refusal *why, uint64_t audit_index)
{
	char q[96];
	log_event(LOG_INFO, "message.refused",
	          "partner=%s rule=%s record=%lld field=%s audit_index=%llu", partner, why->rule,
	          (long long)why->record_index,
	          log_quote(q, sizeof(q), why->field_undeclared ? "" : why->field),
	          (unsigned long long)audit_index);
}

/* A refusal that the store did not record: the log must say so. */
static void log_refusal_unrecorded(const struct send_job *j, int err)
{
	char q[64];
	log_event(LOG_ERROR, "audit.failed", "kind=message.refused rule=%s error=%s", j->why.rule,
	          log_quote(q, sizeof(q), isg_strerror(err)));
}

/* Why the store refused it: a conflicting resend, or a reply to no message. */
static void found_refusal(int err, struct policy_refusal *why)
{
	*why = (struct policy_refusal){.record_index = -1};
	if (err == ISG_ERR_CONFLICT) {
		why->code = ISG__ERROR_CODE__CONFLICT;
		str_copy(why->rule, "message.id", sizeof(why->rule));
		str_copy(why->message,
		         "message_id was already used for a message with different content",
		         sizeof(why->message));
	} else {
		why->code = ISG__ERROR_CODE__NOT_FOUND;
		str_copy(why->rule, "message.reply_to", sizeof(why->rule));
		str_copy(why->message, "reply_to names no message that the recipient sent to you",
		         sizeof(why->message));
	}
}

/*
 * store_message.admit, on the writer while the worker waits for the send's
 * answer: the daily limits on the day the store stamps the message. A
 * refusal's reason stays in j for found_refusal_entry and send_reply; a
 * later judgement (the send run again alone) replaces it.
 */
static int send_admit(void *ctx, int64_t accepted_at_ms)
{
	struct send_job *j = ctx;
	int err = quota_admit(j->quota, j->sender, &j->ask, accepted_at_ms, &j->claim, &j->why);
	j->limit_refused = err == ISG_ERR_LIMIT;
	return err;
}

/* store_message.admit_undo: the admitted send was rolled back, not stored. */
static void send_admit_undo(void *ctx)
{
	struct send_job *j = ctx;
	quota_release(j->quota, &j->claim);
	j->claim = (struct quota_claim){0};
}

/*
 * store_message.refusal_entry, run on the writer while the worker waits for
 * the send's answer. It only reads j: the store may build an entry and then
 * roll it back with its batch, and answer the send otherwise (send_reply
 * works out the refusal again from what the store reports). A daily
 * limit's reason is the one send_admit just gave.
 */
static char *found_refusal_entry(void *ctx, int err, size_t *len)
{
	const struct send_job *j = ctx;
	struct policy_refusal why;
	if (err == ISG_ERR_LIMIT)
		why = j->why;
	else
		found_refusal(err, &why);
	Isg__SendRequest req = ISG__SEND_REQUEST__INIT;
	req.recipient = (char *)j->recipient;
	req.message_id = (char *)j->message_id;
	req.agreement_id = (char *)j->agreement_id;
	req.dataset = (char *)j->dataset;
	req.n_records = j->records;
	return entry_refused(j->policy_version, j->sender, &req, &why, len);
}

static void send_reply(struct net_conn *c, void *arg)
{
	struct send_job *j = arg;
	bool refused_here = j->refused; /* the store's refusals are found below */
	if (!refused_here && j->err == ISG_ERR_LIMIT) {
		/* Over a daily limit, judged by the store: on record in its own job. */
		log_refused(j->sender, &j->why, j->receipt.audit_index);
		j->refused = true;
		j->err = 0;
		j->audit_index = j->receipt.audit_index;
	} else if (j->limit_refused && j->err != 0 && j->err != ISG_ERR_CONFLICT &&
	           j->err != ISG_ERR_NOT_FOUND) {
		/* Refused for a limit, then the store failed the job: nothing stored
		 * and no refusal on record. The partner (if still there) is told to
		 * retry; the log says so. limit_refused is the last judgement's: a
		 * batch rolled back and run again alone may end otherwise (a
		 * conflict or a reply to no message, found before the limits and
		 * answered below; or a failure before the limits were judged again,
		 * which this line then still names by the earlier refusal). */
		log_refusal_unrecorded(j, j->err);
	}
	if (j->err == ISG_ERR_CONFLICT || j->err == ISG_ERR_NOT_FOUND) {
		/* On record in the send's own transaction. */
		found_refusal(j->err, &j->why);
		log_refused(j->sender, &j->why, j->receipt.audit_index);
		j->refused = true;
		j->audit_index = j->receipt.audit_index;
		j->err = 0;
	}
	if (refused_here && j->err == 0)
		log_refused(j->sender, &j->why, j->audit_index);
	else if (refused_here)
		log_refusal_unrecorded(j, j->err);
	net_conn_end_async(c, &j->hold);
	if (!c)
		goto out;
	if (j->refused) {
		if (j->err != 0) {
			send_store_error(c, j->rid, j->err); /* no audit, no answer but retry */
			goto out;
		}
		send_error(c, j->rid, j->why.code, j->why.rule, j->why.message, j->why.record_index,
		           j->why.field, j->audit_index);
		goto out;
	}
	if (j->err != 0) {
		send_store_error(c, j->rid, j->err);
	} else {
		Isg__Receipt r = ISG__RECEIPT__INIT;
		r.message_id = j->message_id;
		r.gateway_id = j->receipt.gateway_id;
		r.audit_index = j->receipt.audit_index;
		r.accepted_at_ms = j->receipt.accepted_at_ms;
		r.duplicate = j->receipt.duplicate;
		r.policy_version = j->policy_version;
		r.record_count = j->receipt.record_count;
		Isg__SendResult sr = ISG__SEND_RESULT__INIT;
		sr.receipt = &r;
		Isg__Frame f = ISG__FRAME__INIT;
		f.request_id = j->rid;
		f.body_case = ISG__FRAME__BODY_SEND_RESULT;
		f.send_result = &sr;
		net_conn_send(c, &f);
	}
out:
	free(j);
}

static void send_stored(void *ctx, int err, const struct store_receipt *r)
{
	struct send_job *j = ctx;
	j->err = err;
	if (r)
		j->receipt = *r;
	net_post(j->ref, send_reply, j);
}

static void refusal_stored(void *ctx, int err, uint64_t audit_index)
{
	struct send_job *j = ctx;
	j->err = err;
	j->audit_index = audit_index;
	net_post(j->ref, send_reply, j);
}

/* store_refuse_send's answer: the refusal on record, or a resend's receipt. */
static void refusal_answered(void *ctx, int err, const struct store_receipt *r)
{
	struct send_job *j = ctx;
	j->err = err;
	if (r && r->duplicate) {
		j->refused = false;
		j->receipt = *r;
	} else if (r) {
		j->audit_index = r->audit_index;
	}
	net_post(j->ref, send_reply, j);
}

static struct send_job *send_job_new(struct net_conn *c, uint64_t rid, const char *message_id,
                                     const struct policy_set *set)
{
	struct send_job *j = calloc(1, sizeof(*j));
	if (!j)
		return NULL;
	j->ref = net_conn_ref(c);
	j->rid = rid;
	str_copy(j->message_id, message_id, sizeof(j->message_id));
	str_copy(j->policy_version, set->version, sizeof(j->policy_version));
	return j;
}

/*
 * Refused: audit first, answer when the refusal is on disk. With the
 * request's hash (its sender and message_id are sound), the store answers
 * a resend of a message it accepted with that message's receipt instead,
 * whatever the agreement says now: the message will be delivered, and a
 * partner whose receipt was lost must not be told it was refused.
 */
static void refuse_send(struct net_conn *c, struct session *s, uint64_t rid,
                        const struct policy_set *set, const Isg__SendRequest *req,
                        const struct policy_refusal *why, const uint8_t *request_hash)
{
	struct send_job *j = send_job_new(c, rid, req->message_id, set);
	size_t len;
	char *entry = entry_refused(set->version, s->partner, req, why, &len);
	if (!j || !entry) {
		free(j);
		free(entry);
		send_simple_error(c, rid, ISG__ERROR_CODE__INTERNAL, "out of memory");
		return;
	}
	str_copy(j->sender, s->partner, sizeof(j->sender));
	j->refused = true;
	j->why = *why;
	j->hold = net_conn_begin_async(c, len);
	int err;
	if (request_hash) {
		struct store_refusal f = {.sender = s->partner,
		                          .message_id = req->message_id,
		                          .audit_entry = entry,
		                          .audit_len = len};
		memcpy(f.request_hash, request_hash, sizeof(f.request_hash));
		err = store_refuse_send(s->g->store, &f, refusal_answered, j);
	} else {
		err = store_audit(s->g->store, "message.refused", entry, len, refusal_stored, j);
	}
	free(entry);
	if (err != 0) {
		log_refusal_unrecorded(j, err);
		net_conn_end_async(c, &j->hold);
		send_store_error(c, rid, err);
		free(j);
	}
}

static bool message_id_refused(const Isg__SendRequest *req, struct policy_refusal *why)
{
	*why = (struct policy_refusal){.code = ISG__ERROR_CODE__BAD_REQUEST, .record_index = -1};
	size_t id_len = strlen(req->message_id);
	if (id_len > 0 && id_len <= MESSAGE_ID_MAX)
		return false;
	str_copy(why->rule, "request.message_id", sizeof(why->rule));
	snprintf(why->message, sizeof(why->message), "message_id must be 1 to %d bytes of UTF-8",
	         MESSAGE_ID_MAX);
	return true;
}

static bool records_refused(const Isg__SendRequest *req, const struct gateway *g,
                            struct policy_refusal *why)
{
	if (req->n_records <= g->cfg.max_records_per_message)
		return false;
	*why = (struct policy_refusal){.code = ISG__ERROR_CODE__LIMIT_EXCEEDED, .record_index = -1};
	str_copy(why->rule, "gateway.max_records_per_message", sizeof(why->rule));
	snprintf(why->message, sizeof(why->message),
	         "%zu records is more than the gateway's limit of %u per message", req->n_records,
	         g->cfg.max_records_per_message);
	return true;
}

/*
 * The request's own bytes identify its content for idempotent resends: as
 * protobuf-c packs it, which is how nearly every client sent it, so the
 * bytes as they came usually do without packing it again. 0 or
 * ISG_ERR_NOMEM.
 */
static int send_request_hash(const Isg__Frame *f, uint8_t hash[static SHA256_LEN])
{
	const uint8_t *bytes;
	size_t len = 0;
	uint8_t *packed = NULL;
	if (!wire_frame_send_bytes(f, &bytes, &len))
		bytes = packed = wire_pack_send_request(f->send, &len);
	if (!bytes)
		return ISG_ERR_NOMEM;
	sha256_digest(bytes, len, hash);
	free(packed);
	return 0;
}

/*
 * One round trip to the key process per message, not two: the agreement's
 * pseudonyms and the audit subjects, collected as policy_apply checks each
 * record (joint_checked), go in one batch once every record is checked.
 */
struct joint_pseudo {
	const struct pseudo_service *inner;
	struct subjects *subj;
};

static int joint_checked(void *ctx, enum pseudo_type type, const char *norm, size_t len)
{
	struct joint_pseudo *jp = ctx;
	return subjects_add(jp->subj, type, norm, len);
}

static int joint_pseudonymise(void *ctx, struct pseudo_request *reqs, size_t n, int64_t today)
{
	struct joint_pseudo *jp = ctx;
	struct subjects *sj = jp->subj;
	if (sj->n == 0 || sj->answered)
		return jp->inner->pseudonymise(jp->inner->ctx, reqs, n, today);
	const struct pseudo_batch parts[] = {{reqs, n}, {sj->reqs, sj->n}};
	int err = jp->inner->pseudonymise_parts(jp->inner->ctx, parts, 2, today);
	sj->answered = err == 0;
	return err;
}

/*
 * Whether the message, as the agreement made it, fits in one fetch answer:
 * accepted otherwise, it would reach its recipient in a frame over
 * limits.max_frame, which a client that keeps to that limit (Go's
 * protodelim does by default) cannot read, and stay undelivered.
 */
static bool delivery_fits(const struct session *s, const Isg__SendRequest *req,
                          const struct policy_outcome *o, struct policy_refusal *why)
{
	Isg__Delivery meta = ISG__DELIVERY__INIT;
	meta.gateway_id = UINT64_MAX; /* the largest each number could be */
	meta.message_id = req->message_id;
	meta.sender = (char *)s->partner;
	meta.agreement_id = o->agreement->id;
	meta.agreement_version = o->agreement->version;
	meta.purpose = o->agreement->purpose_code;
	meta.dataset = o->dataset->name;
	meta.reply_to = req->reply_to;
	meta.accepted_at_ms = INT64_MAX;
	struct wire_delivery d;
	wire_delivery_init(&d, &meta, o->payload, o->payload_len);
	/* As the store will measure it for a fetch (fetch_issue): generous, so
	 * an answer so counted never passes limits.max_frame. */
	size_t bytes = WIRE_ANSWER_BYTES + wire_delivery_bound(&d, false);
	uint64_t max = s->g->cfg.max_frame_bytes;
	if (bytes <= max)
		return true;
	*why = (struct policy_refusal){.code = ISG__ERROR_CODE__LIMIT_EXCEEDED, .record_index = -1};
	str_copy(why->rule, "gateway.max_frame", sizeof(why->rule));
	snprintf(why->message, sizeof(why->message),
	         "as the agreement makes it for its recipient, the message is %zu bytes, more "
	         "than the gateway's frame limit of %llu: send fewer records in each message",
	         bytes, (unsigned long long)max);
	return false;
}

/* The audit entry that would record the message is larger than the store
 * takes: its subjects, one pseudonym for each identifier, make it so. */
static void entry_too_big(const struct subjects *subj, size_t len, struct policy_refusal *why)
{
	*why = (struct policy_refusal){.code = ISG__ERROR_CODE__LIMIT_EXCEEDED, .record_index = -1};
	str_copy(why->rule, "gateway.audit_entry", sizeof(why->rule));
	snprintf(why->message, sizeof(why->message),
	         "the message holds %zu identifiers, and the audit entry naming them would be "
	         "%zu bytes, more than the gateway's limit of %u: send fewer records in each "
	         "message",
	         subj->n, len, STORE_MAX_AUDIT_ENTRY);
}

static void on_send(struct net_conn *c, struct session *s, const Isg__Frame *f)
{
	const Isg__SendRequest *req = f->send;
	struct regime *rg = gateway_regime(s->g);
	const struct policy_set *set = rg->policy;
	struct policy_outcome o = {0};
	struct policy_refusal why;
	struct subjects subj = {0};
	uint8_t hash[SHA256_LEN];
	/* Without a sound message_id it cannot be a resend of a stored message. */
	if (message_id_refused(req, &why)) {
		refuse_send(c, s, f->request_id, set, req, &why, NULL);
		goto out;
	}
	if (send_request_hash(f, hash) != 0) {
		send_simple_error(c, f->request_id, ISG__ERROR_CODE__INTERNAL, "out of memory");
		goto out;
	}
	/* Every refusal from here on answers a resend with its receipt (refuse_send). */
	if (records_refused(req, s->g, &why)) {
		refuse_send(c, s, f->request_id, set, req, &why, hash);
		goto out;
	}
	int64_t now = gateway_today_ms(s->g);
	/* The audit entry's subjects come from policy_apply as it checks the
	 * records, and go to the key process with the message's pseudonyms. */
	struct joint_pseudo jp = {.inner = &rg->pseudo, .subj = &subj};
	struct pseudo_service joint = {
	    .ctx = &jp, .pseudonymise = joint_pseudonymise, .checked = joint_checked};
	subjects_init(&subj, req);
	int err = policy_apply(set, s->partner, req, now, &joint, &o, &why);
	if (err == ISG_ERR_DENIED || err == ISG_ERR_INVALID) {
		refuse_send(c, s, f->request_id, set, req, &why, hash);
		goto out;
	}
	if (err != 0) {
		send_simple_error(c, f->request_id, ISG__ERROR_CODE__INTERNAL,
		                  "the gateway could not apply the agreement");
		goto out;
	}
	if (!delivery_fits(s, req, &o, &why)) {
		policy_outcome_release(&o);
		refuse_send(c, s, f->request_id, set, req, &why, hash);
		goto out;
	}

	struct store_message m = {
	    .sender = s->partner,
	    .message_id = req->message_id,
	    .recipient = req->recipient,
	    .agreement_id = o.agreement->id,
	    .agreement_version = o.agreement->version,
	    .purpose = o.agreement->purpose_code,
	    .dataset = o.dataset->name,
	    .reply_to = req->reply_to,
	    .record_count = o.record_count,
	    .payload = o.payload,
	    .payload_len = o.payload_len,
	    .ttl_ms = o.agreement->undelivered_ttl_ms ? o.agreement->undelivered_ttl_ms
	                                              : s->g->cfg.undelivered_ttl_ms,
	};
	memcpy(m.request_hash, hash, sizeof(m.request_hash));
	char *subjects = NULL, *entry = NULL;
	err = entry_subjects(rg, &subj, now, &subjects);
	if (err != 0 && err != ISG_ERR_NOMEM) {
		/* The key process could not name the subjects: a key failure, refused
		 * and audited as policy_apply's are, not an out-of-memory. */
		subjects_refusal(err, o.agreement->id, &why);
		refuse_send(c, s, f->request_id, set, req, &why, hash);
		goto done;
	}
	if (subjects)
		entry = entry_accepted(set, &o, s->partner, req, subjects, &m.audit_len);
	free(subjects);
	if (entry && m.audit_len > STORE_MAX_AUDIT_ENTRY) {
		entry_too_big(&subj, m.audit_len, &why);
		refuse_send(c, s, f->request_id, set, req, &why, hash);
		goto done;
	}
	struct send_job *j = send_job_new(c, f->request_id, req->message_id, set);
	if (!entry || !j) {
		send_simple_error(c, f->request_id, ISG__ERROR_CODE__INTERNAL, "out of memory");
		free(j);
		goto done;
	}
	str_copy(j->sender, s->partner, sizeof(j->sender));
	str_copy(j->recipient, req->recipient, sizeof(j->recipient));
	str_copy(j->agreement_id, req->agreement_id, sizeof(j->agreement_id));
	str_copy(j->dataset, req->dataset, sizeof(j->dataset));
	j->records = req->n_records;
	j->quota = s->g->quota;
	if (quota_ask_init(&j->ask, o.agreement, o.record_count) != 0) {
		send_simple_error(c, f->request_id, ISG__ERROR_CODE__INTERNAL,
		                  "the gateway could not apply the agreement");
		free(j);
		goto done;
	}
	m.audit_entry = entry;
	m.refusal_entry = found_refusal_entry;
	m.refusal_ctx = j;
	/* The daily limits are judged by the store, after it has looked the
	 * message up: a resend, answered with its receipt, never counts, even
	 * in flight beside new messages, and a message counts on the day it is
	 * stamped. Over a limit, its refusal is written in its place. */
	m.admit = send_admit;
	m.admit_undo = send_admit_undo;
	m.admit_ctx = j;
	/* The store keeps the sealed payload and the audit entry until it answers. */
	j->hold = net_conn_begin_async(c, m.payload_len + m.audit_len);
	err = store_send(s->g->store, &m, send_stored, j);
	if (err != 0) {
		net_conn_end_async(c, &j->hold);
		send_store_error(c, f->request_id, err);
		free(j);
	}
done:
	free(entry);
	policy_outcome_release(&o);
out:
	subjects_release(&subj);
	regime_unref(rg);
}

/* ------------------------------------------------------------------------ */
/* Fetch and subscribe share one path: ask the store for what is pending
 * after the cursor, answer or push it, and otherwise wait for a wake-up. */

struct fetch_job {
	struct net_conn_ref ref;
	struct net_hold hold;
	int err;
	struct store_fetch_result *res;
};

static void fetch_issue(struct net_conn *c, struct session *s);
static void subscription_pump(struct net_conn *c, struct session *s);

/*
 * A subscriber's fetch failed (the store refused or failed it, or memory
 * ran out): nothing else would fetch again before the next message for
 * this partner, so the connection's deadline does (handler_wake).
 */
static void subscription_retry(struct net_conn *c, struct session *s)
{
	s->dirty = true;
	s->retry_ms = s->retry_ms ? s->retry_ms * 2 : SUBSCRIBE_RETRY_FIRST_MS;
	if (s->retry_ms > SUBSCRIBE_RETRY_MAX_MS)
		s->retry_ms = SUBSCRIBE_RETRY_MAX_MS;
	net_conn_wait(c, time_mono_ms() + s->retry_ms);
}

static void fetch_answer(struct net_conn *c, struct session *s, const struct wire_delivery *items,
                         size_t n)
{
	net_conn_send_deliveries(c, s->fetch_rid, false, items, n);
	s->fetching = false;
	net_conn_unwait(c);
}

/*
 * A stored message's metadata as a Delivery, borrowing sd's strings; its
 * records go out as stored (wire_deliveries_encode). The payload was
 * written by policy_apply and has opened under the storage key, so it is
 * not decoded again here, only checked to be records and nothing else.
 */
static void delivery_meta(const struct store_delivery *sd, Isg__Delivery *d)
{
	isg__delivery__init(d);
	d->gateway_id = sd->gateway_id;
	d->message_id = sd->message_id;
	d->sender = sd->sender;
	d->agreement_id = sd->agreement_id;
	d->agreement_version = sd->agreement_version;
	d->purpose = sd->purpose;
	d->dataset = sd->dataset;
	d->reply_to = sd->reply_to;
	d->accepted_at_ms = sd->accepted_at_ms;
}

/* A stored delivery's bytes at most, in a fetch answer or pushed, before its payload is opened. */
static size_t delivery_size(const struct store_delivery *sd, bool push)
{
	Isg__Delivery meta;
	delivery_meta(sd, &meta);
	struct wire_delivery d;
	wire_delivery_init(&d, &meta, NULL, sd->payload_len);
	return wire_delivery_bound(&d, push);
}

static size_t answer_size(const struct store_delivery *sd)
{
	return delivery_size(sd, false);
}

static size_t push_size(const struct store_delivery *sd)
{
	return delivery_size(sd, true);
}

/*
 * How fetch_deliver sends, for the store to take only what it will send
 * (store_fetch_within): a payload that is not records and nothing else
 * would only make the recipient's frame fail, and is left out.
 */
static const struct store_fetch_sink answer_sink = {answer_size, wire_records_well_formed};
static const struct store_fetch_sink push_sink = {push_size, wire_records_well_formed};

/*
 * Hand out results, every one: the store took only what one answer holds,
 * or what the connection had room for (fetch_issue), and has audited each
 * as delivered. Returns how many were used, fewer only when memory ran out
 * (the rest wait for the next round).
 */
static size_t fetch_deliver(struct net_conn *c, struct session *s, struct store_fetch_result *res)
{
	size_t cap = res->n ? res->n : 1;
	Isg__Delivery *metas = calloc(cap, sizeof(*metas));
	struct wire_delivery *items = calloc(cap, sizeof(*items));
	if (!metas || !items) {
		free(metas);
		free(items);
		return 0;
	}
	size_t n = 0;
	for (; n < res->n; n++) {
		const struct store_delivery *sd = &res->items[n];
		delivery_meta(sd, &metas[n]);
		wire_delivery_init(&items[n], &metas[n], sd->payload, sd->payload_len);
		/* Pushed even past the connection's output bound, should answers
		 * sent since the store was asked have taken some of its room:
		 * held back, they would be audited as delivered and not sent. The
		 * window cannot be full: the fetch asked for what it had left. */
		if (s->subscribed) {
			if (s->unacked == s->g->cfg.max_fetch_messages ||
			    net_conn_send_deliveries(c, s->fetch_rid, true, &items[n], 1) != 0)
				break; /* out of memory: it waits for the next round */
			s->pushed[s->unacked++] = (struct push){sd->gateway_id, sd->expires_at_ms};
		}
		s->cursor = sd->gateway_id;
	}
	if (!s->subscribed && n > 0)
		fetch_answer(c, s, items, n);
	free(metas);
	free(items);
	return n;
}

static void fetch_done(struct net_conn *c, void *arg)
{
	struct fetch_job *j = arg;
	net_conn_end_async(c, &j->hold);
	if (!c)
		goto out;
	struct session *s = net_conn_data(c);
	s->store_busy = false;
	if (!s->fetching && !s->subscribed)
		goto out;
	if (j->err != 0) {
		if (s->fetching && j->err == ISG_ERR_UNKNOWN) {
			send_outcome_unknown(c, s->fetch_rid, OUTCOME_UNKNOWN_FETCH);
			s->fetching = false;
			net_conn_unwait(c);
		} else if (s->fetching) {
			send_store_error(c, s->fetch_rid, j->err);
			s->fetching = false;
			net_conn_unwait(c);
		} else {
			subscription_retry(c, s);
		}
		goto out;
	}
	s->retry_ms = 0;
	size_t used = fetch_deliver(c, s, j->res);
	/* With every result used, go on after the last message read, past any
	 * whose payload did not open (the store logged and left them out): a
	 * batch of them must not hold up the messages behind it. */
	bool all_used = used == j->res->n, more = all_used && j->res->more;
	if (all_used && j->res->scanned_to > s->cursor)
		s->cursor = j->res->scanned_to;
	if (s->subscribed && !all_used && net_conn_output_full(c)) {
		s->dirty = true; /* handler_drained goes on once the partner reads */
	} else if (s->subscribed && !all_used) {
		subscription_retry(c, s); /* a push found no memory */
	} else if (s->fetching && more) {
		fetch_issue(c, s); /* nothing answered yet: the next batch */
	} else if (s->fetching && s->expired) {
		fetch_answer(c, s, NULL, 0);
	} else if (s->subscribed && (s->dirty || more)) {
		s->dirty = true;
		subscription_pump(c, s);
	} else if (s->fetching && s->dirty) {
		fetch_issue(c, s);
	}
out:
	if (j->res)
		store_fetch_result_free(j->res);
	free(j);
}

static void fetch_stored(void *ctx, int err, struct store_fetch_result *res)
{
	struct fetch_job *j = ctx;
	j->err = err;
	j->res = res;
	net_post(j->ref, fetch_done, j);
}

static void fetch_issue(struct net_conn *c, struct session *s)
{
	struct fetch_job *j = calloc(1, sizeof(*j));
	if (!j) {
		if (s->fetching) {
			send_simple_error(c, s->fetch_rid, ISG__ERROR_CODE__INTERNAL,
			                  "out of memory");
			s->fetching = false;
			net_conn_unwait(c); /* back under the idle timeout */
		} else if (s->subscribed) {
			subscription_retry(c, s);
		}
		return;
	}
	j->ref = net_conn_ref(c);
	s->store_busy = true;
	s->dirty = false;
	j->hold = net_conn_begin_async(c, 0);
	/* A subscriber takes what its connection can, a fetch what one answer
	 * can hold (limits.max_frame), measured as they will be sent: the
	 * store audits as delivered only what fetch_deliver then sends; the
	 * rest stays in the store, not read, opened or recorded. */
	size_t max_frame = s->g->cfg.max_frame_bytes;
	size_t bytes = s->subscribed                   ? net_conn_output_room(c)
	               : max_frame > WIRE_ANSWER_BYTES ? max_frame - WIRE_ANSWER_BYTES
	                                               : 0;
	int err = store_fetch_within(s->g->store, s->partner, s->cursor, s->fetch_max, bytes,
	                             s->subscribed ? &push_sink : &answer_sink, fetch_stored, j);
	if (err != 0) {
		net_conn_end_async(c, &j->hold);
		s->store_busy = false;
		free(j);
		if (s->fetching) {
			send_store_error(c, s->fetch_rid, err);
			s->fetching = false;
			net_conn_unwait(c);
		} else if (s->subscribed) {
			subscription_retry(c, s);
		}
	}
}

/*
 * A push that expired unacknowledged is no longer pending either (an ack
 * finds it unknown): it leaves the window, or a partner that never acks
 * some pushes would see its subscription stop for good once they filled
 * it. While the window stays full the connection waits for its first
 * push to expire (handler_wake pumps again then).
 */
static void window_expire(struct net_conn *c, struct session *s, uint32_t window)
{
	int64_t now = time_now_ms(), first = INT64_MAX;
	uint32_t kept = 0;
	for (uint32_t i = 0; i < s->unacked; i++) {
		if (s->pushed[i].expires_at_ms <= now)
			continue;
		if (s->pushed[i].expires_at_ms < first)
			first = s->pushed[i].expires_at_ms;
		s->pushed[kept++] = s->pushed[i];
	}
	s->unacked = kept;
	if (kept >= window)
		net_conn_wait(c, time_mono_ms() + (first - now));
}

/*
 * A subscriber gets at most one window of unacknowledged pushes (the
 * gateway's max_fetch_messages); acks open the window again. Without it an
 * idle subscriber would make the gateway queue every pending message.
 */
static void subscription_pump(struct net_conn *c, struct session *s)
{
	uint32_t window = s->g->cfg.max_fetch_messages;
	if (!s->subscribed || !s->dirty || s->store_busy || net_conn_output_full(c))
		return;
	if (s->unacked >= window)
		window_expire(c, s, window);
	if (s->unacked >= window)
		return;
	/* No more than the window has room for: a full fetch on top of what is
	 * still unacknowledged would push up to twice the window. */
	s->fetch_max = window - s->unacked;
	fetch_issue(c, s);
}

static bool fetch_busy_refused(struct net_conn *c, struct session *s, uint64_t rid)
{
	if (s->subscribed) {
		send_simple_error(c, rid, ISG__ERROR_CODE__BAD_REQUEST,
		                  "this connection is subscribed; deliveries are pushed");
		return true;
	}
	if (s->fetching) {
		send_simple_error(c, rid, ISG__ERROR_CODE__BAD_REQUEST,
		                  "a fetch is already waiting on this connection");
		return true;
	}
	return false;
}

static uint32_t fetch_limit(const struct gateway *g, uint32_t asked)
{
	uint32_t max = g->cfg.max_fetch_messages;
	return asked == 0 || asked > max ? max : asked;
}

static void on_fetch(struct net_conn *c, struct session *s, const Isg__Frame *f)
{
	if (fetch_busy_refused(c, s, f->request_id))
		return;
	int64_t wait = f->fetch->wait_ms;
	if (wait > s->g->cfg.max_wait_ms)
		wait = s->g->cfg.max_wait_ms;
	s->fetching = true;
	s->fetch_rid = f->request_id;
	s->fetch_max = fetch_limit(s->g, f->fetch->max_messages);
	s->expired = wait == 0; /* no wait: answer with whatever there is */
	net_conn_wait(c, wait ? time_mono_ms() + wait : 0);
	fetch_issue(c, s);
}

static void on_subscribe(struct net_conn *c, struct session *s, const Isg__Frame *f)
{
	if (fetch_busy_refused(c, s, f->request_id))
		return;
	s->pushed = calloc(s->g->cfg.max_fetch_messages, sizeof(*s->pushed));
	if (!s->pushed) {
		send_simple_error(c, f->request_id, ISG__ERROR_CODE__INTERNAL, "out of memory");
		return;
	}
	s->subscribed = true;
	s->fetch_rid = f->request_id;
	s->fetch_max = s->g->cfg.max_fetch_messages;
	net_conn_wait(c, 0);
	fetch_issue(c, s);
}

/* ------------------------------------------------------------------------ */
/* Ack. */

static int id_cmp(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return (x > y) - (x < y);
}

/* Drop the repeats from n ascending ids; how many are left. */
static size_t ids_unique(uint64_t *ids, size_t n)
{
	size_t kept = n ? 1 : 0;
	for (size_t i = 1; i < n; i++)
		if (ids[i] != ids[kept - 1])
			ids[kept++] = ids[i];
	return kept;
}

/* Take the ids (ascending) out of a subscriber's window. */
static void window_remove(struct session *s, const uint64_t *ids, size_t n)
{
	size_t k = 0;
	uint32_t kept = 0;
	for (uint32_t i = 0; i < s->unacked; i++) {
		while (k < n && ids[k] < s->pushed[i].gateway_id)
			k++;
		if (k == n || ids[k] != s->pushed[i].gateway_id)
			s->pushed[kept++] = s->pushed[i];
	}
	s->unacked = kept;
}

/*
 * The ids of an Ack the store wrote, for the windows of every subscriber
 * of its partner, on whichever connection the Ack came: a partner may
 * subscribe on one connection and ack on another (a pool, or isgctl).
 * Every id leaves, acknowledged or not: one that comes back unknown
 * (acked before, or expired) is no more the partner's to ack, and counted
 * it would shut the window for good. Ids of another partner's messages
 * are never in a window, and its acks are not even looked at: they would
 * come back unknown, and let a subscriber past its window.
 */
struct acked {
	char partner[64];
	size_t n;
	uint64_t ids[]; /* ascending */
};

static void window_acked(struct net_conn *c, void *arg)
{
	struct session *s = net_conn_data(c);
	const struct acked *a = arg;
	if (!s || !s->subscribed || strcmp(s->partner, a->partner) != 0)
		return;
	window_remove(s, a->ids, a->n);
	subscription_pump(c, s);
}

struct ack_job {
	struct net_conn_ref ref;
	struct net_hold hold;
	struct gateway *g;
	uint64_t rid;
	int err;
	uint32_t acknowledged;
	struct acked *acked; /* handed to the windows once the store wrote the Ack */
	size_t n_unknown;
	uint64_t unknown[];
};

static void ack_reply(struct net_conn *c, void *arg)
{
	struct ack_job *j = arg;
	net_conn_end_async(c, &j->hold);
	if (!c)
		goto out;
	if (j->err == ISG_ERR_UNKNOWN) {
		send_outcome_unknown(c, j->rid, OUTCOME_UNKNOWN_ACK);
		goto out;
	}
	if (j->err != 0) {
		send_store_error(c, j->rid, j->err);
		goto out;
	}
	Isg__AckResult ar = ISG__ACK_RESULT__INIT;
	ar.acknowledged = j->acknowledged;
	ar.unknown_ids = j->unknown;
	ar.n_unknown_ids = j->n_unknown;
	Isg__Frame f = ISG__FRAME__INIT;
	f.request_id = j->rid;
	f.body_case = ISG__FRAME__BODY_ACK_RESULT;
	f.ack_result = &ar;
	net_conn_send(c, &f);
out:
	free(j);
}

static void ack_stored(void *ctx, int err, uint32_t acknowledged, const uint64_t *unknown,
                       size_t n_unknown)
{
	struct ack_job *j = ctx;
	j->err = err;
	j->acknowledged = acknowledged;
	/*
	 * Only an Ack the store wrote opens windows: ids that failed to be
	 * acknowledged are still outstanding. Queued before the answer, so a
	 * subscriber that acked on its own connection has its window open
	 * when the AckResult goes out.
	 */
	if (err == 0)
		net_server_each_waiting(j->g->net, window_acked, j->acked, free);
	else
		free(j->acked);
	j->acked = NULL;
	/* The job was sized for every id, so the unknown ones always fit. */
	j->n_unknown = n_unknown;
	if (n_unknown)
		memcpy(j->unknown, unknown, n_unknown * sizeof(*unknown));
	net_post(j->ref, ack_reply, j);
}

static void on_ack(struct net_conn *c, struct session *s, const Isg__Frame *f)
{
	size_t n = f->ack->n_gateway_ids;
	if (n == 0 || n > ACK_MAX) {
		char msg[96];
		snprintf(msg, sizeof(msg), "an ack names 1 to %d messages, not %zu", ACK_MAX, n);
		send_simple_error(c, f->request_id, ISG__ERROR_CODE__BAD_REQUEST, msg);
		return;
	}
	struct ack_job *j = calloc(1, sizeof(*j) + n * sizeof(uint64_t));
	struct acked *a = malloc(sizeof(*a) + n * sizeof(uint64_t));
	if (!j || !a) {
		free(j);
		free(a);
		send_simple_error(c, f->request_id, ISG__ERROR_CODE__INTERNAL, "out of memory");
		return;
	}
	str_copy(a->partner, s->partner, sizeof(a->partner));
	memcpy(a->ids, f->ack->gateway_ids, n * sizeof(uint64_t));
	qsort(a->ids, n, sizeof(*a->ids), id_cmp); /* here, not on the store's writer */
	/* An id given twice is one acknowledgement: asked again, the store would
	 * find it no longer pending and answer it unknown as well as acknowledged. */
	a->n = ids_unique(a->ids, n);
	j->ref = net_conn_ref(c);
	j->g = s->g;
	j->rid = f->request_id;
	j->acked = a;
	j->hold = net_conn_begin_async(c, 2 * n * sizeof(uint64_t));
	int err = store_ack(s->g->store, s->partner, a->ids, a->n, ack_stored, j);
	if (err != 0) {
		net_conn_end_async(c, &j->hold);
		send_store_error(c, f->request_id, err);
		free(a);
		free(j);
		return;
	}
}

/* ------------------------------------------------------------------------ */
/* Ping. */

static void on_ping(struct net_conn *c, const Isg__Frame *f)
{
	Isg__Pong p = ISG__PONG__INIT;
	p.nonce = f->ping->nonce;
	Isg__Frame out = ISG__FRAME__INIT;
	out.request_id = f->request_id;
	out.body_case = ISG__FRAME__BODY_PONG;
	out.pong = &p;
	net_conn_send(c, &out);
}

/* ------------------------------------------------------------------------ */
/* Net callbacks. */

static void audit_accepted(struct gateway *g, const char *peer, const char *subject,
                           const char *partner)
{
	size_t len;
	char *entry = entry_connection(peer, subject, partner, NULL, &len);
	if (!entry || store_audit(g->store, "connection.accepted", entry, len, gateway_audit_done,
	                          (void *)"connection.accepted") != 0)
		log_event(LOG_ERROR, "audit.failed", "kind=connection.accepted");
	free(entry);
}

/* Written at once, or counted with others like it (refusals.c). */
static void audit_refused(struct gateway *g, const char *peer, const char *subject, bool verified,
                          const char *reason)
{
	refusals_note(g->refusals, peer, subject, verified, reason, time_mono_ms(), time_now_ms());
}

void gateway_audit_done(void *kind, int err, uint64_t audit_index)
{
	(void)audit_index;
	/* A commit of unknown outcome may have kept it (store_fail): said so. */
	if (err != 0)
		log_event(LOG_ERROR, "audit.failed", "kind=%s error=\"%s\"%s", (const char *)kind,
		          isg_strerror(err),
		          err == ISG_ERR_UNKNOWN ? " note=\"may be on record after the restart\""
		                                 : "");
}

/* A connection.refused entry handed to the store, and what it stood for. */
struct refusal_job {
	struct gateway *g;
	struct refusal_record rec;
	char strings[]; /* peer, subject and reason */
};

/* The store's answer: a batch that failed takes the entry with it, so its
 * refusals are counted again, for the next flush (refusals_restore). Not a
 * commit of unknown outcome: its entry may be on record, and counted
 * again it could be twice. */
static void refusal_written(void *ctx, int err, uint64_t audit_index)
{
	struct refusal_job *j = ctx;
	char q[64];
	(void)audit_index;
	if (err == ISG_ERR_UNKNOWN)
		log_event(LOG_ERROR, "audit.failed",
		          "kind=connection.refused repeated=%llu error=%s "
		          "note=\"may be on record after the restart\"",
		          (unsigned long long)j->rec.repeated,
		          log_quote(q, sizeof(q), isg_strerror(err)));
	else if (err != 0) {
		log_event(LOG_WARN, "audit.deferred",
		          "kind=connection.refused repeated=%llu error=%s",
		          (unsigned long long)j->rec.repeated,
		          log_quote(q, sizeof(q), isg_strerror(err)));
		refusals_restore(j->g->refusals, &j->rec, time_mono_ms());
	}
	free(j);
}

static struct refusal_job *refusal_job_new(struct gateway *g, const struct refusal_record *rec)
{
	const char *src[3] = {rec->peer ? rec->peer : "", rec->subject ? rec->subject : "",
	                      rec->reason ? rec->reason : ""};
	size_t lens[3], total = 0;
	for (size_t i = 0; i < 3; i++)
		total += (lens[i] = strlen(src[i])) + 1;
	struct refusal_job *j = malloc(sizeof(*j) + total);
	if (!j)
		return NULL;
	j->g = g;
	j->rec = *rec;
	const char **dst[3] = {&j->rec.peer, &j->rec.subject, &j->rec.reason};
	char *p = j->strings;
	for (size_t i = 0; i < 3; i++) {
		memcpy(p, src[i], lens[i] + 1);
		*dst[i] = p;
		p += lens[i] + 1;
	}
	return j;
}

int handler_write_refusal(void *ctx, const struct refusal_record *rec)
{
	struct gateway *g = ctx;
	size_t len;
	char *entry = rec->repeated
	                  ? entry_connection_repeated(rec, &len)
	                  : entry_connection(rec->peer, rec->subject, NULL, rec->reason, &len);
	struct refusal_job *j = entry ? refusal_job_new(g, rec) : NULL;
	int err = !j ? ISG_ERR_NOMEM
	             : store_audit(g->store, "connection.refused", entry, len, refusal_written, j);
	if (err != 0)
		free(j);
	free(entry);
	/* Not lost: the table counts it, or keeps the count for its next flush. */
	char q[64];
	if (err != 0)
		log_event(
		    LOG_WARN, "audit.deferred", "kind=connection.refused repeated=%llu error=%s",
		    (unsigned long long)rec->repeated, log_quote(q, sizeof(q), isg_strerror(err)));
	return err;
}

/*
 * A reload cut this connection. Queued to the store before the close, and
 * whatever becomes of the connection: the job holds copies of everything
 * it writes, so the entry lands even once the connection is gone. The close
 * never waits for it: cutting a compromised key's access comes first.
 */
static void audit_closed(struct gateway *g, const struct policy_set *set, struct net_conn *c,
                         const char *rule, const char *reason)
{
	const struct session *s = net_conn_data(c);
	size_t len;
	char *entry = entry_connection_closed(set, net_conn_peer(c), s->subject, s->partner, rule,
	                                      reason, &len);
	if (!entry || store_audit(g->store, "connection.closed", entry, len, gateway_audit_done,
	                          (void *)"connection.closed") != 0)
		log_event(LOG_ERROR, "audit.failed", "kind=connection.closed partner=%s",
		          s->partner);
	free(entry);
}

static int handler_open(void *ctx, struct net_conn *c, const struct cert_identity *id)
{
	struct gateway *g = ctx;
	struct regime *rg = gateway_regime(g);
	const struct policy_partner *claimants[2];
	size_t n_claimants = policy_partner_claimants(rg->policy, id, claimants);
	const struct policy_partner *p = n_claimants == 1 ? claimants[0] : NULL;
	char q[600];
	if (!p) {
		/* Two partners recognising one certificate is a registry mistake
		 * the admin must see as such, not as a stranger at the door. */
		char both[160] = "", ids[160] = "";
		if (n_claimants == 2) {
			snprintf(both, sizeof(both), "'%s' and '%s'", claimants[0]->id,
			         claimants[1]->id);
			snprintf(ids, sizeof(ids), " claimed_by=%s,%s", claimants[0]->id,
			         claimants[1]->id);
		}
		if (net_refusal_log(c))
			log_event(LOG_WARN, "conn.refused",
			          "peer=%s subject=%s reason=partner.unknown%s", net_conn_peer(c),
			          log_quote(q, sizeof(q), id->subject), ids);
		char reason[sizeof(both) + 64] = "certificate matches no partner";
		if (*both)
			snprintf(reason, sizeof(reason),
			         "certificate matches more than one partner (%s)", both);
		audit_refused(g, net_conn_peer(c), id->subject, true, reason);
		char msg[sizeof(id->subject) + sizeof(both) + 160];
		if (*both)
			snprintf(msg, sizeof(msg),
			         "the client certificate (subject \"%s\") matches more than one "
			         "partner in the gateway's registry (%s), so it is recognised as "
			         "neither",
			         id->subject, both);
		else
			snprintf(
			    msg, sizeof(msg),
			    "the client certificate (subject \"%s\") matches no partner in the "
			    "gateway's registry",
			    id->subject);
		send_error(c, 0, ISG__ERROR_CODE__NOT_PERMITTED, "partner.unknown", msg, -1, NULL,
		           0);
		regime_unref(rg);
		return -1;
	}
	struct session *s = calloc(1, sizeof(*s));
	if (!s) {
		regime_unref(rg);
		return -1;
	}
	s->g = g;
	str_copy(s->partner, p->id, sizeof(s->partner));
	str_copy(s->subject, id->subject, sizeof(s->subject));
	net_conn_set_data(c, s);
	log_event(LOG_INFO, "partner.connected", "peer=%s partner=%s", net_conn_peer(c), p->id);
	audit_accepted(g, net_conn_peer(c), id->subject, p->id);
	regime_unref(rg);
	return 0;
}

static void handler_frame(void *ctx, struct net_conn *c, Isg__Frame *f)
{
	struct session *s = net_conn_data(c);
	switch (f->body_case) {
	case ISG__FRAME__BODY_HELLO:
		on_hello(c, s, f);
		break;
	case ISG__FRAME__BODY_SEND:
		on_send(c, s, f);
		break;
	case ISG__FRAME__BODY_FETCH:
		on_fetch(c, s, f);
		break;
	case ISG__FRAME__BODY_SUBSCRIBE:
		on_subscribe(c, s, f);
		break;
	case ISG__FRAME__BODY_ACK:
		on_ack(c, s, f);
		break;
	case ISG__FRAME__BODY_PING:
		on_ping(c, f);
		break;
	default: {
		char msg[128];
		if (f->body_case == ISG__FRAME__BODY__NOT_SET)
			/* No body the gateway knows: an empty frame, or a request
			 * type from a newer protocol, skipped as an unknown field.
			 * Naming it "'none'" told the integrator nothing. */
			snprintf(msg, sizeof(msg),
			         "the frame holds no request this gateway knows "
			         "(none, or one newer than protocol version 1)");
		else
			snprintf(msg, sizeof(msg), "'%s' is not a request a partner can send",
			         wire_body_name(f->body_case));
		send_simple_error(c, f->request_id, ISG__ERROR_CODE__UNSUPPORTED, msg);
		break;
	}
	}
	wire_frame_free(f);
}

static void handler_wake(void *ctx, struct net_conn *c, const char *key)
{
	struct session *s = net_conn_data(c);
	if (!s || (!s->fetching && !s->subscribed))
		return;
	if (!key && s->subscribed) { /* a retry after a failed fetch, or a push expired */
		net_conn_wait(c, 0);
		subscription_pump(c, s);
		return;
	}
	if (!key) { /* the long-poll's deadline */
		if (s->store_busy)
			s->expired = true;
		else
			fetch_answer(c, s, NULL, 0);
		return;
	}
	if (strcmp(key, s->partner) != 0)
		return;
	if (s->subscribed) {
		s->dirty = true;
		subscription_pump(c, s);
	} else if (s->store_busy) {
		s->dirty = true;
	} else {
		fetch_issue(c, s);
	}
}

static void handler_drained(void *ctx, struct net_conn *c)
{
	struct session *s = net_conn_data(c);
	if (s)
		subscription_pump(c, s);
}

/*
 * The partner half-closed (close_notify) and reads until we close: nothing
 * it could still ask for is worth waiting for. A long-poll fetch is
 * answered now with what is pending (one more look at the store, so a
 * message whose wake-up is still on its way is not missed), not at its
 * deadline. A subscription ends: no more pushes, and a fetch for it in
 * flight is dropped; what was pushed and not acked stays pending, for the
 * partner's next connection.
 */
static void handler_peer_closed(void *ctx, struct net_conn *c)
{
	struct session *s = net_conn_data(c);
	if (!s)
		return;
	s->subscribed = false;
	if (!s->fetching)
		return;
	s->expired = true; /* fetch_done answers with what the store gives */
	if (!s->store_busy)
		fetch_issue(c, s);
}

/*
 * The gateway ends the connection (a reload cut it, or isgd stops): a
 * fetch waiting for messages is answered, and a subscription ended, with
 * an Error naming why, under its own request_id, rather than left to find
 * the close. Other requests are answered as ever. A fetch the store is
 * reading for is answered now too, and what the store hands back is
 * dropped: it stays pending for the partner's next connection.
 */
static void session_end(struct net_conn *c, struct session *s, Isg__ErrorCode code,
                        const char *rule, const char *message)
{
	if (!s || (!s->fetching && !s->subscribed))
		return;
	send_error(c, s->fetch_rid, code, rule, message, -1, NULL, 0);
	s->fetching = false;
	s->subscribed = false;
	net_conn_unwait(c);
}

static void handler_stop(void *ctx, struct net_conn *c)
{
	session_end(c, net_conn_data(c), ISG__ERROR_CODE__UNAVAILABLE, NULL,
	            "the gateway is shutting down; nothing more is delivered on this "
	            "connection: reconnect later");
}

static void handler_close(void *ctx, struct net_conn *c)
{
	struct session *s = net_conn_data(c);
	if (!s)
		return;
	log_event(LOG_INFO, "partner.disconnected", "peer=%s partner=%s", net_conn_peer(c),
	          s->partner);
	free(s->pushed);
	free(s);
}

/* The handshake failed: the subject, if any, is of a certificate that did not verify. */
static void handler_refused(void *ctx, const char *peer, const char *subject, const char *reason)
{
	audit_refused(ctx, peer, subject, false, reason);
}

struct net_handler handler_new(struct gateway *g)
{
	return (struct net_handler){
	    .ctx = g,
	    .on_open = handler_open,
	    .on_frame = handler_frame,
	    .on_close = handler_close,
	    .on_wake = handler_wake,
	    .on_drained = handler_drained,
	    .on_peer_closed = handler_peer_closed,
	    .on_stop = handler_stop,
	    .on_refused = handler_refused,
	};
}

void handler_notify(void *ctx, const char *recipient)
{
	struct gateway *g = ctx;
	if (g->net)
		net_server_wake(g->net, recipient);
}

/*
 * After a reload: the partner must still exist, and the connection's
 * certificate must still be recognised as that partner by the new registry
 * (a pin, subject or SAN taken away for a compromised key cuts its open
 * connections, not only new ones).
 */
static void close_if_unrecognised(struct net_conn *c, void *arg)
{
	struct session *s = net_conn_data(c);
	const struct regime *rg = arg;
	if (!s)
		return;
	const char *rule = NULL, *message = NULL, *reason = NULL;
	struct cert_identity id;
	const struct policy_partner *p = NULL;
	if (!policy_partner_by_id(rg->policy, s->partner)) {
		rule = "partner.removed";
		message = "this partner was removed from the gateway's registry";
		reason = "partner removed from the registry";
	} else if (net_conn_peer_identity(c, &id) != 0 ||
	           !(p = policy_partner_by_cert(rg->policy, &id)) ||
	           strcmp(p->id, s->partner) != 0) {
		rule = "partner.unrecognised";
		message = "the gateway's registry no longer recognises this client certificate as "
		          "this partner";
		reason = "certificate no longer recognised as this partner";
	} else {
		return;
	}
	log_event(LOG_WARN, rule, "peer=%s partner=%s", net_conn_peer(c), s->partner);
	audit_closed(s->g, rg->policy, c, rule, reason);
	send_error(c, 0, ISG__ERROR_CODE__NOT_PERMITTED, rule, message, -1, NULL, 0);
	session_end(c, s, ISG__ERROR_CODE__NOT_PERMITTED, rule, message);
	net_conn_close(c);
}

static void unref_regime(void *arg)
{
	regime_unref(arg);
}

void handler_recheck_partners(struct gateway *g)
{
	net_server_each(g->net, close_if_unrecognised, gateway_regime(g), unref_regime);
}

/* One recheck of the open connections' certificates, shared by the workers. */
struct cert_recheck {
	struct regime *rg; /* for the policy set version of the audit entries */
	atomic_size_t closed;
};

/*
 * After a reload brought in new CAs or CRLs: a connection whose certificate
 * chain no longer verifies (revoked, its CA taken out of the bundle) is cut
 * as a removed partner's is, so that revoking a certificate ends the access
 * it gives, not only its next connection.
 */
static void close_if_unverified(struct net_conn *c, void *arg)
{
	struct session *s = net_conn_data(c);
	struct cert_recheck *rc = arg;
	char why[160], reason[200], message[320], q[200];
	if (!s || net_conn_verify_again(c, why, sizeof(why)) == 0)
		return;
	snprintf(reason, sizeof(reason), "certificate no longer verifies: %s", why);
	snprintf(message, sizeof(message),
	         "the gateway's reloaded partner CAs and CRLs no longer accept this "
	         "connection's client certificate (%s)",
	         why);
	log_event(LOG_WARN, "certificate.rejected", "peer=%s partner=%s reason=%s",
	          net_conn_peer(c), s->partner, log_quote(q, sizeof(q), why));
	audit_closed(s->g, rc->rg->policy, c, "certificate.rejected", reason);
	send_error(c, 0, ISG__ERROR_CODE__NOT_PERMITTED, "certificate.rejected", message, -1, NULL,
	           0);
	session_end(c, s, ISG__ERROR_CODE__NOT_PERMITTED, "certificate.rejected", message);
	net_conn_close(c);
	atomic_fetch_add(&rc->closed, 1);
}

/* After the last worker: how many the recheck cut, one line for the reload. */
static void cert_recheck_done(void *arg)
{
	struct cert_recheck *rc = arg;
	log_event(LOG_INFO, "tls.rechecked", "connections_closed=%zu", atomic_load(&rc->closed));
	regime_unref(rc->rg);
	free(rc);
}

void handler_recheck_certificates(struct gateway *g)
{
	struct cert_recheck *rc = calloc(1, sizeof(*rc));
	if (!rc)
		fatal("out of memory");
	rc->rg = gateway_regime(g);
	atomic_init(&rc->closed, 0);
	net_server_each(g->net, close_if_unverified, rc, cert_recheck_done);
}

/*
 * A full window waits on the monotonic clock for its first push to expire,
 * reckoned from the wall clock when it filled (window_expire): after a step
 * forward that wait is too long, so each subscriber judges its pushes again.
 */
static void window_rejudge(struct net_conn *c, void *arg)
{
	struct session *s = net_conn_data(c);
	if (s && s->subscribed)
		subscription_pump(c, s);
}

void handler_clock_stepped(struct gateway *g)
{
	net_server_each_waiting(g->net, window_rejudge, NULL, NULL);
}
