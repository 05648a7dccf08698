/*
 * What each job does, on the writer thread, inside the batch transaction and
 * its own savepoint. A job returns 0 or an error; on error the writer rolls
 * its savepoint back and store_job_discard() forgets its results.
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "store/store_internal.h"
#include "util/util.h"

enum msg_state { MSG_PENDING = 0, MSG_DELIVERED = 1, MSG_ACKED = 2, MSG_EXPIRED = 3 };

/* --- small helpers ---------------------------------------------------------- */

static void bind_text(sqlite3_stmt *st, int i, const char *s)
{
	sqlite3_bind_text(st, i, s, -1, SQLITE_STATIC);
}

static void bind_blob(sqlite3_stmt *st, int i, const void *p, size_t len)
{
	static const uint8_t empty[1];
	/* A NULL pointer would bind SQL NULL; an empty entry is an empty blob. */
	sqlite3_bind_blob(st, i, len ? p : empty, (int)len, SQLITE_STATIC);
}

static char *dup_column(sqlite3_stmt *st, int col)
{
	const unsigned char *t = sqlite3_column_text(st, col);
	return strdup(t ? (const char *)t : "");
}

static void finish_stmt(sqlite3_stmt *st)
{
	sqlite3_reset(st);
	sqlite3_clear_bindings(st);
}

/* What the store records about one message when its state changes. */
struct msg_ref {
	uint64_t id;
	char *sender, *recipient, *message_id, *agreement_id;
	uint32_t agreement_version;
	uint64_t accepted_index;
	bool payload_apart; /* its sealed payload is in the table payloads */
};

/*
 * m from the row st is on, of STORE_MSG_REF_COLUMNS. The message is being
 * finished, so the data key still kept for its first fetch, which will not
 * come, is wiped now, even if the batch fails (a fetch would then ask the
 * key process for it). 0 or ISG_ERR_NOMEM.
 */
static int msg_ref_read(struct store *s, sqlite3_stmt *st, struct msg_ref *m)
{
	m->id = (uint64_t)sqlite3_column_int64(st, 0);
	m->sender = dup_column(st, 1);
	m->recipient = dup_column(st, 2);
	m->message_id = dup_column(st, 3);
	m->agreement_id = dup_column(st, 4);
	m->agreement_version = (uint32_t)sqlite3_column_int64(st, 5);
	m->accepted_index = (uint64_t)sqlite3_column_int64(st, 6);
	m->payload_apart = sqlite3_column_int(st, 7);
	const uint8_t *header = sqlite3_column_blob(st, 8);
	if (header && sqlite3_column_bytes(st, 8) >= STORE_WRAPPED_KEY_LEN)
		store_seal_forget(s, header);
	return m->sender && m->recipient && m->message_id && m->agreement_id ? 0 : ISG_ERR_NOMEM;
}

static void msg_ref_release(struct msg_ref *m)
{
	free(m->sender);
	free(m->recipient);
	free(m->message_id);
	free(m->agreement_id);
	memset(m, 0, sizeof(*m));
}

/*
 * {"event":"message.delivered","gateway_id":...,"sender":"...",
 *  "recipient":"...","agreement_id":"...","agreement_version":...,
 *  "message_id":"...","accepted_index":...}
 */
static int audit_message_event(struct store *s, int64_t now, const char *event,
                               const struct msg_ref *m)
{
	struct strbuf b;
	strbuf_init(&b);
	strbuf_puts(&b, "{\"event\":");
	strbuf_json_string(&b, event);
	strbuf_puts(&b, ",\"gateway_id\":");
	strbuf_u64(&b, m->id);
	strbuf_puts(&b, ",\"sender\":");
	strbuf_json_string(&b, m->sender ? m->sender : "");
	strbuf_puts(&b, ",\"recipient\":");
	strbuf_json_string(&b, m->recipient ? m->recipient : "");
	strbuf_puts(&b, ",\"agreement_id\":");
	strbuf_json_string(&b, m->agreement_id ? m->agreement_id : "");
	strbuf_puts(&b, ",\"agreement_version\":");
	strbuf_u64(&b, m->agreement_version);
	strbuf_puts(&b, ",\"message_id\":");
	strbuf_json_string(&b, m->message_id ? m->message_id : "");
	strbuf_puts(&b, ",\"accepted_index\":");
	strbuf_u64(&b, m->accepted_index);
	strbuf_puts(&b, "}");
	size_t len = 0;
	char *entry = strbuf_take(&b, &len);
	if (!entry)
		return ISG_ERR_NOMEM;
	uint64_t seq = 0;
	int rc = store_log_append(s, now, event, entry, len, &seq);
	free(entry);
	return rc;
}

/*
 * secure_delete: ON zeroes every page SQLite frees; FAST leaves freed
 * pages as they were. The pragma takes effect when it is compiled, and
 * the first step of a prepared one does nothing, so a pair prepared once
 * would not switch when first used: each is compiled afresh, with
 * sqlite3_exec.
 */
static int secure_delete(struct store *s, bool on)
{
	const char *sql = on ? "PRAGMA secure_delete = ON" : "PRAGMA secure_delete = FAST";
	if (on && store_take_failure(&s->fail_secure_on))
		sql = "SELECT isg_test_failure()"; /* tests only: fails, FAST stays */
	int err = store_db_exec(s, sql, "secure_delete");
	s->secure_fast = on ? err != 0 : true;
	return err;
}

int store_secure_delete_on(struct store *s)
{
	return s->secure_fast ? secure_delete(s, true) : 0;
}

/*
 * A message acknowledged or expired: its row loses the seal header (the
 * wrapped data key) and any payload kept in it under secure_delete=ON, so
 * a page of messages that is freed is zeroed, whichever rows' keys it
 * held. A payload kept apart, of STORE_PAYLOAD_APART bytes or more, is
 * then deleted under FAST, which spares writing its overflow pages again
 * as zeros: a freed page of payloads keeps only ciphertext, which opens
 * only under a data key wrapped in messages, zeroed as its message is
 * finished. If ON cannot be set again, the whole batch fails, and the
 * next starts by setting it (store_secure_delete_on).
 */
static int set_final_state(struct store *s, const struct msg_ref *m, enum msg_state state)
{
	sqlite3_stmt *st = s->stmt[ST_SET_FINAL_STATE];
	sqlite3_bind_int64(st, 1, (int64_t)m->id);
	sqlite3_bind_int(st, 2, state);
	int err = store_db_step_done(s, st, "message.finish");
	if (err || !m->payload_apart)
		return err;
	err = secure_delete(s, false);
	if (!err) {
		st = s->stmt[ST_PAYLOAD_DELETE];
		sqlite3_bind_int64(st, 1, (int64_t)m->id);
		err = store_db_step_done(s, st, "message.finish_payload");
	}
	int on = secure_delete(s, true);
	return err ? err : on;
}

/* --- send --------------------------------------------------------------------- */

/*
 * 1 when (sender, message_id) exists: r filled when its request_hash is
 * this one, *err ISG_ERR_CONFLICT when not; 0 when new.
 */
static int msg_find_existing(struct store *s, const char *sender, const char *message_id,
                             const uint8_t hash[static 32], struct store_receipt *r, int *err)
{
	sqlite3_stmt *st = s->stmt[ST_MSG_BY_SENDER_ID];
	bind_text(st, 1, sender);
	bind_text(st, 2, message_id);
	int rc = sqlite3_step(st);
	int found = 0;
	*err = 0;
	if (rc == SQLITE_ROW) {
		found = 1;
		const void *stored = sqlite3_column_blob(st, 1);
		int stored_len = sqlite3_column_bytes(st, 1);
		if (stored_len != 32 || !stored || memcmp(stored, hash, 32) != 0) {
			*err = ISG_ERR_CONFLICT;
		} else {
			r->gateway_id = (uint64_t)sqlite3_column_int64(st, 0);
			r->audit_index = (uint64_t)sqlite3_column_int64(st, 2);
			r->accepted_at_ms = sqlite3_column_int64(st, 3);
			r->record_count = (uint32_t)sqlite3_column_int64(st, 4);
			r->duplicate = true;
		}
	} else if (rc != SQLITE_DONE) {
		*err = store_db_fail(s, rc, "send.lookup");
	}
	finish_stmt(st);
	return found;
}

/* 1 when (sender, message_id) exists (receipt filled or conflict), 0 when new. */
static int send_find_existing(struct store *s, struct job_send *js, int *err)
{
	return msg_find_existing(s, js->sender, js->message_id, js->request_hash, &js->receipt,
	                         err);
}

/* The message replied to must have gone from this recipient to this sender. */
static int send_check_reply(struct store *s, struct job_send *js)
{
	if (js->reply_to > INT64_MAX)
		return ISG_ERR_NOT_FOUND;
	sqlite3_stmt *st = s->stmt[ST_REPLY_CHECK];
	sqlite3_bind_int64(st, 1, (int64_t)js->reply_to);
	bind_text(st, 2, js->recipient);
	bind_text(st, 3, js->sender);
	int rc = sqlite3_step(st);
	int ret = rc == SQLITE_ROW    ? 0
	          : rc == SQLITE_DONE ? ISG_ERR_NOT_FOUND
	                              : store_db_fail(s, rc, "send.reply_check");
	finish_stmt(st);
	return ret;
}

static int send_insert(struct store *s, struct job_send *js, int64_t now, uint64_t seq, int64_t *id)
{
	sqlite3_stmt *st = s->stmt[ST_MSG_INSERT];
	bind_text(st, 1, js->sender);
	bind_text(st, 2, js->message_id);
	bind_text(st, 3, js->recipient);
	bind_text(st, 4, js->agreement_id);
	sqlite3_bind_int64(st, 5, js->agreement_version);
	bind_text(st, 6, js->purpose);
	bind_text(st, 7, js->dataset);
	sqlite3_bind_int64(st, 8, (int64_t)js->reply_to);
	bind_blob(st, 9, js->request_hash, sizeof(js->request_hash));
	sqlite3_bind_int64(st, 10, js->record_count);
	sqlite3_bind_int64(st, 11, now);
	sqlite3_bind_int64(st, 12, now + js->ttl_ms);
	sqlite3_bind_int64(st, 13, (int64_t)seq);
	bind_blob(st, 14, js->header, sizeof(js->header));
	sqlite3_bind_int(st, 16, STORE_AD_V2); /* as store_seal sealed it */
	bool apart = js->sealed_len >= STORE_PAYLOAD_APART;
	if (apart)
		sqlite3_bind_null(st, 15);
	else
		bind_blob(st, 15, js->sealed, js->sealed_len);
	int err = store_db_step_done(s, st, "send.insert");
	*id = sqlite3_last_insert_rowid(s->db);
	if (err || !apart)
		return err;
	st = s->stmt[ST_PAYLOAD_INSERT];
	sqlite3_bind_int64(st, 1, *id);
	bind_blob(st, 2, js->sealed, js->sealed_len);
	return store_db_step_done(s, st, "send.insert_payload");
}

/*
 * A conflicting resend, a reply to no message or a send admit refused: its
 * refusal entry, built by the sender's refusal_entry, is written here, so
 * the job commits and cb hears `why` with the entry's index. Without
 * refusal_entry, the job fails with `why` and nothing is written.
 */
static int send_refuse_found(struct store *s, struct job_send *js, int64_t now, int why)
{
	if (!js->refusal_entry)
		return why;
	size_t len = 0;
	char *entry = js->refusal_entry(js->refusal_ctx, why, &len);
	if (!entry)
		return ISG_ERR_NOMEM;
	int err =
	    len > STORE_MAX_AUDIT_ENTRY || store_log_check_body("message.refused", entry, len) != 0
	        ? ISG_ERR_INVALID
	        : store_log_append(s, now, "message.refused", entry, len, &js->receipt.audit_index);
	free(entry);
	if (err == 0)
		js->refused = why;
	return err;
}

/*
 * The caller's admission (the daily limits) of a send about to be stored,
 * at the batch's stamp: 0 admitted, owed admit_undo should its savepoint
 * or batch be rolled back (store_job_discard); refused, as a found refusal.
 */
static int send_admit(struct store *s, struct job_send *js, int64_t now, bool *refused)
{
	*refused = false;
	if (!js->admit)
		return 0;
	int err = js->admit(js->admit_ctx, now);
	if (err == ISG_ERR_LIMIT) {
		*refused = true;
		return send_refuse_found(s, js, now, err);
	}
	js->admitted = err == 0;
	return err;
}

static int job_send_run(struct store *s, struct job_send *js, int64_t now)
{
	int err = 0;
	if (send_find_existing(s, js, &err))
		return err == ISG_ERR_CONFLICT ? send_refuse_found(s, js, now, err) : err;
	if (err)
		return err;
	if (js->reply_to != 0) {
		err = send_check_reply(s, js);
		if (err == ISG_ERR_NOT_FOUND)
			return send_refuse_found(s, js, now, err);
		if (err)
			return err;
	}
	bool refused;
	err = send_admit(s, js, now, &refused);
	if (err || refused)
		return err;
	uint64_t seq = 0;
	err = store_log_append(s, now, "message.accepted", js->audit_entry, js->audit_len, &seq);
	if (err)
		return err;
	int64_t id = 0;
	err = send_insert(s, js, now, seq, &id);
	if (err)
		return err;
	js->receipt.gateway_id = (uint64_t)id;
	js->receipt.audit_index = seq;
	js->receipt.accepted_at_ms = now;
	js->receipt.record_count = js->record_count;
	js->receipt.duplicate = false;
	js->added = true;
	return 0;
}

/* A refused send: answered from the stored message if it is a resend, else audited. */
static int job_refuse_run(struct store *s, struct job_refuse *jr, int64_t now)
{
	int err = 0;
	if (msg_find_existing(s, jr->sender, jr->message_id, jr->request_hash, &jr->receipt,
	                      &err) &&
	    err == 0)
		return 0;
	if (err != 0 && err != ISG_ERR_CONFLICT)
		return err;
	/* New, or the id with other content: the refusal stands as it was found. */
	return store_log_append(s, now, "message.refused", jr->audit_entry, jr->audit_len,
	                        &jr->receipt.audit_index);
}

/* --- fetch -------------------------------------------------------------------- */

struct fetch_mark {
	bool first_delivery;
	uint64_t accepted_index;
};

static void delivery_release(struct store_delivery *d);

/* Fill one delivery to recipient from the current row, with its payload still sealed in *sl. */
static int fetch_row(sqlite3_stmt *st, const char *recipient, struct store_delivery *d,
                     struct store_sealed *sl)
{
	d->gateway_id = (uint64_t)sqlite3_column_int64(st, 0);
	d->sender = dup_column(st, 1);
	d->message_id = dup_column(st, 2);
	d->agreement_id = dup_column(st, 3);
	d->agreement_version = (uint32_t)sqlite3_column_int64(st, 4);
	d->purpose = dup_column(st, 5);
	d->dataset = dup_column(st, 6);
	d->reply_to = (uint64_t)sqlite3_column_int64(st, 7);
	d->accepted_at_ms = sqlite3_column_int64(st, 8);
	d->expires_at_ms = sqlite3_column_int64(st, 13);
	if (!d->sender || !d->message_id || !d->agreement_id || !d->purpose || !d->dataset)
		return ISG_ERR_NOMEM;
	/* Opened under the values as delivered, so the recipient gets what was sealed. */
	*sl = (struct store_sealed){
	    .bound = {.sender = d->sender,
	              .message_id = d->message_id,
	              .recipient = recipient,
	              .agreement_id = d->agreement_id,
	              .purpose = d->purpose,
	              .dataset = d->dataset,
	              .agreement_version = d->agreement_version,
	              .reply_to = d->reply_to},
	    .ad = sqlite3_column_int64(st, 14),
	};
	const uint8_t *header = sqlite3_column_blob(st, 11);
	size_t header_len = (size_t)sqlite3_column_bytes(st, 11);
	if (header && (header_len == STORE_HEADER_LEN || header_len == STORE_HEADER_V2_LEN ||
	               header_len == STORE_HEADER_V1_LEN)) {
		memcpy(sl->header, header, header_len);
		sl->header_len = header_len; /* any other length does not open */
	}
	const uint8_t *sealed = sqlite3_column_blob(st, 12);
	sl->sealed_len = (size_t)sqlite3_column_bytes(st, 12);
	sl->sealed = malloc(sl->sealed_len ? sl->sealed_len : 1);
	if (!sl->sealed)
		return ISG_ERR_NOMEM;
	if (sl->sealed_len)
		memcpy(sl->sealed, sealed, sl->sealed_len);
	/* As it will be once opened (fetch_open), for the sink to measure. */
	d->payload_len = sl->sealed_len > STORE_TAG_LEN ? sl->sealed_len - STORE_TAG_LEN : 0;
	return 0;
}

struct fetch_acc {
	struct fetch_mark *marks;
	struct store_sealed *sealed;
	size_t cap; /* of marks, sealed and res->items */
};

/* Room for one more delivery; grows by doubling up to max, so a small fetch stays small. */
static int fetch_reserve(struct job_fetch *jf, struct fetch_acc *acc)
{
	struct store_fetch_result *res = jf->res;
	if (res->n < acc->cap)
		return 0;
	size_t cap = acc->cap ? acc->cap * 2 : 16;
	if (cap > jf->max)
		cap = jf->max;
	struct store_delivery *items = realloc(res->items, cap * sizeof(*items));
	if (!items)
		return ISG_ERR_NOMEM;
	res->items = items;
	memset(items + acc->cap, 0, (cap - acc->cap) * sizeof(*items));
	struct fetch_mark *marks = realloc(acc->marks, cap * sizeof(*marks));
	if (!marks)
		return ISG_ERR_NOMEM;
	acc->marks = marks;
	struct store_sealed *sealed = realloc(acc->sealed, cap * sizeof(*sealed));
	if (!sealed)
		return ISG_ERR_NOMEM;
	memset(sealed + acc->cap, 0, (cap - acc->cap) * sizeof(*sealed));
	acc->sealed = sealed;
	acc->cap = cap;
	return 0;
}

/* Whether one more delivery of size bytes is taken: within max_bytes, or the first. */
static bool fetch_fits(const struct job_fetch *jf, size_t taken, size_t bytes, size_t size)
{
	return taken == 0 || (bytes <= jf->max_bytes && size <= jf->max_bytes - bytes);
}

/*
 * Read the rows first: the table is not changed under a running SELECT.
 * A row is taken only while what is taken stays within max_bytes as the
 * caller's sink measures it: every row taken is marked delivered, so the
 * caller must be able to send every one (store_fetch_within).
 */
static int fetch_collect(struct store *s, struct job_fetch *jf, int64_t now, struct fetch_acc *acc)
{
	struct store_fetch_result *res = jf->res;
	sqlite3_stmt *st = s->stmt[ST_FETCH];
	size_t bytes = 0;
	bool full = false;
	int err = 0;
	bind_text(st, 1, jf->recipient);
	sqlite3_bind_int64(st, 2, jf->after_id > INT64_MAX ? INT64_MAX : (int64_t)jf->after_id);
	sqlite3_bind_int64(st, 3, now);
	sqlite3_bind_int64(st, 4, jf->max);
	while (res->n < jf->max) {
		int rc = sqlite3_step(st);
		if (rc == SQLITE_DONE)
			break;
		if (rc != SQLITE_ROW) {
			err = store_db_fail(s, rc, "fetch.select");
			break;
		}
		err = fetch_reserve(jf, acc);
		if (err)
			break;
		struct store_delivery *d = &res->items[res->n];
		struct store_sealed *sl = &acc->sealed[res->n];
		err = fetch_row(st, jf->recipient, d, sl);
		size_t size = err ? 0 : jf->sink.size(d);
		if (!err && !fetch_fits(jf, res->n, bytes, size)) {
			/* Not taken: it stays as it is, for the next fetch. */
			free(sl->sealed);
			delivery_release(d);
			*d = (struct store_delivery){0};
			full = true;
			break;
		}
		/* Count it even when half filled, so discard frees what it holds. */
		acc->marks[res->n].first_delivery = sqlite3_column_int(st, 10) == MSG_PENDING;
		acc->marks[res->n].accepted_index = (uint64_t)sqlite3_column_int64(st, 9);
		bytes += size;
		res->scanned_to = d->gateway_id;
		res->n++;
		if (err)
			break;
	}
	res->more = res->n == jf->max || full;
	finish_stmt(st);
	return err;
}

static int fetch_mark_delivered(struct store *s, struct job_fetch *jf, int64_t now,
                                const struct store_delivery *d, const struct fetch_mark *mark)
{
	sqlite3_stmt *st = s->stmt[ST_MARK_DELIVERED];
	sqlite3_bind_int64(st, 1, (int64_t)d->gateway_id);
	int err = store_db_step_done(s, st, "fetch.mark_delivered");
	if (err)
		return err;
	struct msg_ref m = {
	    .id = d->gateway_id,
	    .sender = d->sender,
	    .recipient = jf->recipient,
	    .message_id = d->message_id,
	    .agreement_id = d->agreement_id,
	    .agreement_version = d->agreement_version,
	    .accepted_index = mark->accepted_index,
	};
	return audit_message_event(s, now, "message.delivered", &m);
}

/*
 * Open what was read, in one batch; a payload that does not open (moved to
 * another row, changed, or under another key) is logged and left out, and
 * its row stays as it is.
 */
static int fetch_open(struct store *s, struct job_fetch *jf, struct fetch_acc *acc)
{
	struct store_fetch_result *res = jf->res;
	int err = store_unseal_all(s, acc->sealed, res->n);
	size_t kept = 0;
	for (size_t i = 0; i < res->n; i++) {
		struct store_sealed *sl = &acc->sealed[i];
		struct store_delivery *d = &res->items[i];
		free(sl->sealed);
		if (!err && !sl->plain)
			log_event(LOG_ERROR, "store.unseal_failed", "gateway_id=%" PRIu64,
			          d->gateway_id);
		/* Sent, it would only make the recipient's answer fail: not handed
		 * out, so not audited as delivered either. */
		if (!err && sl->plain && !jf->sink.sendable(sl->plain, sl->plain_len)) {
			log_event(LOG_ERROR, "store.bad_payload", "gateway_id=%" PRIu64,
			          d->gateway_id);
			sodium_memzero(sl->plain, sl->plain_len);
			free(sl->plain);
			sl->plain = NULL;
			delivery_release(d);
			continue;
		}
		if (err || !sl->plain) {
			if (sl->plain) {
				sodium_memzero(sl->plain, sl->plain_len);
				free(sl->plain);
			}
			delivery_release(d);
			continue;
		}
		d->payload = sl->plain;
		d->payload_len = sl->plain_len;
		res->items[kept] = *d;
		acc->marks[kept++] = acc->marks[i];
	}
	res->n = kept;
	return err;
}

static int job_fetch_run(struct store *s, struct job_fetch *jf, int64_t now)
{
	struct fetch_acc acc = {0};
	int err = fetch_collect(s, jf, now, &acc);
	if (!err)
		err = fetch_open(s, jf, &acc);
	else
		for (size_t i = 0; i < jf->res->n; i++)
			free(acc.sealed[i].sealed);
	for (size_t i = 0; !err && i < jf->res->n; i++)
		if (acc.marks[i].first_delivery)
			err = fetch_mark_delivered(s, jf, now, &jf->res->items[i], &acc.marks[i]);
	free(acc.marks);
	free(acc.sealed);
	return err;
}

/* --- ack ---------------------------------------------------------------------- */

/*
 * 1 and m filled when id is pending or delivered for recipient and not
 * expired at now (as a fetch sees it: the sweep will expire it); 0 when
 * not; <0 on error.
 */
static int ack_lookup(struct store *s, uint64_t id, const char *recipient, int64_t now,
                      struct msg_ref *m)
{
	if (id == 0 || id > INT64_MAX)
		return 0;
	sqlite3_stmt *st = s->stmt[ST_ACK_SELECT];
	sqlite3_bind_int64(st, 1, (int64_t)id);
	bind_text(st, 2, recipient);
	sqlite3_bind_int64(st, 3, now);
	int ret = 0;
	int rc = sqlite3_step(st);
	if (rc == SQLITE_ROW)
		ret = msg_ref_read(s, st, m) == 0 ? 1 : ISG_ERR_NOMEM;
	else if (rc != SQLITE_DONE)
		ret = store_db_fail(s, rc, "ack.lookup");
	finish_stmt(st);
	return ret;
}

static int job_ack_run(struct store *s, struct job_ack *ja, int64_t now)
{
	for (size_t i = 0; i < ja->n; i++) {
		struct msg_ref m = {0};
		int found = ack_lookup(s, ja->ids[i], ja->recipient, now, &m);
		int err = found < 0 ? found : 0;
		if (found == 1) {
			err = set_final_state(s, &m, MSG_ACKED);
			if (!err)
				err = audit_message_event(s, now, "message.acknowledged", &m);
			if (!err)
				ja->acknowledged++;
		} else if (found == 0) {
			ja->unknown[ja->n_unknown++] = ja->ids[i];
		}
		msg_ref_release(&m);
		if (err)
			return err;
	}
	return 0;
}

/* --- audit, exec ---------------------------------------------------------------- */

static int job_audit_run(struct store *s, struct job_audit *ja, int64_t now)
{
	return store_log_append(s, now, ja->kind, ja->entry, ja->len, &ja->seq);
}

static int job_exec_run(struct store *s, struct job_exec *je)
{
	if (!je->sql) {
		*je->tree_out = s->log.tree;
		return 0;
	}
	if (!je->int_out)
		return store_db_exec(s, je->sql, "test.exec");
	bool found = false;
	*je->int_out = 0;
	int rc = store_db_query_int(s->db, je->sql, je->int_out, &found);
	return rc == SQLITE_OK ? 0 : store_db_fail(s, rc, "test.query");
}

int store_job_run(struct store *s, struct store_job *j, int64_t now)
{
	switch (j->kind) {
	case JOB_SEND:
		return job_send_run(s, &j->u.send, now);
	case JOB_REFUSE:
		return job_refuse_run(s, &j->u.refuse, now);
	case JOB_FETCH:
		return job_fetch_run(s, &j->u.fetch, now);
	case JOB_ACK:
		return job_ack_run(s, &j->u.ack, now);
	case JOB_AUDIT:
		return job_audit_run(s, &j->u.audit, now);
	case JOB_EXEC:
		return job_exec_run(s, &j->u.exec);
	}
	fatal("store: unknown job kind %d", (int)j->kind);
}

/* --- expiry ----------------------------------------------------------------------- */

static int sweep_collect(struct store *s, int64_t now, struct msg_ref *refs, size_t *n)
{
	sqlite3_stmt *st = s->stmt[ST_EXPIRED_SELECT];
	int err = 0;
	*n = 0;
	sqlite3_bind_int64(st, 1, now);
	sqlite3_bind_int64(st, 2, STORE_SWEEP_LIMIT);
	while (*n < STORE_SWEEP_LIMIT) {
		int rc = sqlite3_step(st);
		if (rc == SQLITE_DONE)
			break;
		if (rc != SQLITE_ROW) {
			err = store_db_fail(s, rc, "sweep.select");
			break;
		}
		err = msg_ref_read(s, st, &refs[(*n)++]);
		if (err)
			break;
	}
	finish_stmt(st);
	return err;
}

int store_sweep(struct store *s, int64_t now, bool *more)
{
	size_t n = 0;
	*more = false;
	struct msg_ref *refs = calloc(STORE_SWEEP_LIMIT, sizeof(*refs));
	if (!refs)
		return ISG_ERR_NOMEM;
	int err = sweep_collect(s, now, refs, &n);
	for (size_t i = 0; !err && i < n; i++) {
		err = set_final_state(s, &refs[i], MSG_EXPIRED);
		if (!err)
			err = audit_message_event(s, now, "message.expired", &refs[i]);
	}
	for (size_t i = 0; i < n; i++)
		msg_ref_release(&refs[i]);
	free(refs);
	if (!err && n > 0)
		log_event(LOG_INFO, "store.expired", "count=%zu", n);
	*more = !err && n == STORE_SWEEP_LIMIT;
	return err;
}

/* --- results and callbacks ------------------------------------------------------------ */

static void delivery_release(struct store_delivery *d)
{
	if (d->payload) {
		sodium_memzero(d->payload, d->payload_len);
		free(d->payload);
	}
	free(d->message_id);
	free(d->sender);
	free(d->agreement_id);
	free(d->purpose);
	free(d->dataset);
	memset(d, 0, sizeof(*d));
}

void store_fetch_result_free(struct store_fetch_result *res)
{
	if (!res)
		return;
	for (size_t i = 0; i < res->n; i++)
		delivery_release(&res->items[i]);
	free(res->items);
	free(res);
}

void store_job_discard(struct store_job *j)
{
	switch (j->kind) {
	case JOB_SEND:
		memset(&j->u.send.receipt, 0, sizeof(j->u.send.receipt));
		j->u.send.added = false;
		j->u.send.refused = 0;
		/* Rolled back: its admission with it, once (discard may come twice). */
		if (j->u.send.admitted) {
			j->u.send.admitted = false;
			j->u.send.admit_undo(j->u.send.admit_ctx);
		}
		break;
	case JOB_REFUSE:
		memset(&j->u.refuse.receipt, 0, sizeof(j->u.refuse.receipt));
		break;
	case JOB_FETCH:
		/* Nothing read either: a job run again alone starts afresh, and a
		 * failed one's callback gets no cursor to go on after. */
		if (j->u.fetch.res) {
			for (size_t i = 0; i < j->u.fetch.res->n; i++)
				delivery_release(&j->u.fetch.res->items[i]);
			j->u.fetch.res->n = 0;
			j->u.fetch.res->scanned_to = 0;
			j->u.fetch.res->more = false;
		}
		break;
	case JOB_ACK:
		j->u.ack.acknowledged = 0;
		j->u.ack.n_unknown = 0;
		break;
	case JOB_AUDIT:
		j->u.audit.seq = 0;
		break;
	case JOB_EXEC:
		break;
	}
}

void store_job_finish(struct store_job *j)
{
	int err = j->err;
	switch (j->kind) {
	case JOB_SEND: {
		struct job_send *js = &j->u.send;
		if (!err && js->refused)
			js->cb(js->ctx, js->refused, &js->receipt);
		else
			js->cb(js->ctx, err, err ? NULL : &js->receipt);
		break;
	}
	case JOB_REFUSE:
		j->u.refuse.cb(j->u.refuse.ctx, err, err ? NULL : &j->u.refuse.receipt);
		break;
	case JOB_FETCH: {
		struct job_fetch *jf = &j->u.fetch;
		struct store_fetch_result *res = jf->res;
		jf->res = NULL;
		jf->cb(jf->ctx, err, res);
		break;
	}
	case JOB_ACK: {
		struct job_ack *ja = &j->u.ack;
		ja->cb(ja->ctx, err, err ? 0 : ja->acknowledged, err ? NULL : ja->unknown,
		       err ? 0 : ja->n_unknown);
		break;
	}
	case JOB_AUDIT:
		if (j->u.audit.cb)
			j->u.audit.cb(j->u.audit.ctx, err, err ? 0 : j->u.audit.seq);
		break;
	case JOB_EXEC:
		if (j->u.exec.cb)
			j->u.exec.cb(j->u.exec.ctx, err);
		break;
	}
}

void store_job_free(struct store_job *j)
{
	if (!j)
		return;
	switch (j->kind) {
	case JOB_SEND:
		free(j->u.send.strings);
		free(j->u.send.sealed);
		free(j->u.send.audit_entry);
		break;
	case JOB_REFUSE:
		free(j->u.refuse.strings);
		free(j->u.refuse.audit_entry);
		break;
	case JOB_FETCH:
		free(j->u.fetch.recipient);
		store_fetch_result_free(j->u.fetch.res);
		break;
	case JOB_ACK:
		free(j->u.ack.recipient);
		free(j->u.ack.ids);
		free(j->u.ack.unknown);
		break;
	case JOB_AUDIT:
		free(j->u.audit.kind);
		free(j->u.audit.entry);
		break;
	case JOB_EXEC:
		free(j->u.exec.sql);
		break;
	}
	free(j);
}
