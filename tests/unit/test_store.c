/*
 * store: send, fetch, ack, duplicates, replies, expiry, durability, sealing.
 * Group commit, failures and refused files are in test_store_commit.c.
 */
#include "store_test_util.h"

#include <openssl/evp.h>

/* The writer's connection has secure_delete at ON, as every job but a
 * payload's delete must (store_jobs.c's set_final_state). */
static void assert_secure_delete_on(struct store *s)
{
	int64_t v = -1;
	assert_int_equal(store_test_query_int(s, "SELECT * FROM pragma_secure_delete", &v), 0);
	assert_int_equal(v, 1);
}

static void test_round_trip(void **state)
{
	struct fx *f = *state;
	struct store *s = fx_open(f);
	const char payload[] = "record 1: nhs_number=9434765919; record 2: pnc=2008/0056560Z";
	struct store_message m = fx_msg("police-a", "msg-0001", "nhs-b", payload);
	m.record_count = 2;
	struct store_receipt r;
	int64_t before = time_now_ms();
	assert_int_equal(send_sync(s, &m, &r), 0);
	assert_true(r.gateway_id > 0);
	assert_int_equal(r.audit_index, 1);
	assert_int_equal(r.record_count, 2);
	assert_false(r.duplicate);
	assert_true(r.accepted_at_ms >= before && r.accepted_at_ms <= time_now_ms());

	/* Nothing for the sender or anyone else. */
	assert_int_equal(fetch_count(s, "police-a"), 0);
	assert_int_equal(fetch_count(s, "council-c"), 0);

	struct store_fetch_result *res = NULL;
	assert_int_equal(fetch_sync(s, "nhs-b", 0, 10, &res), 0);
	assert_int_equal(res->n, 1);
	struct store_delivery *d = &res->items[0];
	assert_int_equal(d->gateway_id, r.gateway_id);
	assert_string_equal(d->message_id, "msg-0001");
	assert_string_equal(d->sender, "police-a");
	assert_string_equal(d->agreement_id, "police-to-nhs-safeguarding");
	assert_int_equal(d->agreement_version, 3);
	assert_string_equal(d->purpose, "safeguarding");
	assert_string_equal(d->dataset, "referral");
	assert_int_equal(d->reply_to, 0);
	assert_int_equal(d->accepted_at_ms, r.accepted_at_ms);
	assert_int_equal(d->expires_at_ms, r.accepted_at_ms + m.ttl_ms);
	assert_int_equal(d->payload_len, strlen(payload));
	assert_memory_equal(d->payload, payload, strlen(payload));
	store_fetch_result_free(res);

	/* Delivered but not acknowledged: handed out again. */
	assert_int_equal(fetch_count(s, "nhs-b"), 1);
	assert_int_equal(
	    db_int(f, "SELECT state FROM messages WHERE id = ?1", (int64_t)r.gateway_id), 1);

	uint32_t acked = 0;
	size_t n_unknown = 9;
	assert_int_equal(ack_sync(s, "nhs-b", &r.gateway_id, 1, &acked, NULL, &n_unknown), 0);
	assert_int_equal(acked, 1);
	assert_int_equal(n_unknown, 0);
	assert_int_equal(fetch_count(s, "nhs-b"), 0);

	/* The row stays for idempotency; its payload and nonce are gone. */
	assert_int_equal(
	    db_int(f, "SELECT state FROM messages WHERE id = ?1", (int64_t)r.gateway_id), 2);
	assert_int_equal(
	    db_int(f, "SELECT payload FROM messages WHERE id = ?1", (int64_t)r.gateway_id), -2);
	assert_int_equal(
	    db_int(f, "SELECT nonce FROM messages WHERE id = ?1", (int64_t)r.gateway_id), -2);
	/* One delivered entry although fetched twice. */
	char kinds[256];
	db_audit_kinds(f, kinds, sizeof(kinds));
	assert_string_equal(kinds, "message.accepted,message.delivered,message.acknowledged");
	/* Acknowledging again: unknown. */
	uint64_t unknown[4];
	assert_int_equal(ack_sync(s, "nhs-b", &r.gateway_id, 1, &acked, unknown, &n_unknown), 0);
	assert_int_equal(acked, 0);
	assert_int_equal(n_unknown, 1);
	assert_int_equal(unknown[0], r.gateway_id);
}

static void test_audit_entries_written(void **state)
{
	struct fx *f = *state;
	struct store *s = fx_open(f);
	struct store_message m = fx_msg("police-a", "m\"1\\", "nhs-b", "x");
	m.audit_entry = "{\"event\":\"message.accepted\",\"n\":1}";
	m.audit_len = strlen(m.audit_entry);
	struct store_receipt r;
	assert_int_equal(send_sync(s, &m, &r), 0);
	assert_int_equal(fetch_count(s, "nhs-b"), 1);
	/* The caller's entry is the leaf's "entry", byte for byte. */
	assert_int_equal(db_int(f,
	                        "SELECT substr(entry, -44) = "
	                        "CAST(',\"entry\":{\"event\":\"message.accepted\",\"n\":1}}'"
	                        " AS BLOB) FROM audit WHERE seq = 1",
	                        0),
	                 1);
	/* The store's own entry is JSON naming the message, strings escaped. */
	sqlite3 *db = db_ro(f);
	sqlite3_stmt *st = NULL;
	assert_int_equal(sqlite3_prepare_v2(db,
	                                    "SELECT json_valid(entry), json_extract(entry, "
	                                    "'$.entry.message_id'), json_extract(entry, "
	                                    "'$.entry.gateway_id'),"
	                                    " json_extract(entry, '$.entry.accepted_index'), kind"
	                                    " FROM audit WHERE seq = 2",
	                                    -1, &st, NULL),
	                 SQLITE_OK);
	assert_int_equal(sqlite3_step(st), SQLITE_ROW);
	assert_int_equal(sqlite3_column_int(st, 0), 1);
	assert_string_equal((const char *)sqlite3_column_text(st, 1), "m\"1\\");
	assert_int_equal(sqlite3_column_int64(st, 2), (int64_t)r.gateway_id);
	assert_int_equal(sqlite3_column_int64(st, 3), (int64_t)r.audit_index);
	assert_string_equal((const char *)sqlite3_column_text(st, 4), "message.delivered");
	sqlite3_finalize(st);
	sqlite3_close(db);

	uint64_t seq = 0;
	assert_int_equal(audit_sync(s, "message.refused",
	                            "{\"event\":\"message.refused\",\"rule\":\"no-agreement\"}",
	                            &seq),
	                 0);
	assert_int_equal(seq, 3);
	/* cb may be NULL. */
	const char *reloaded = "{\"event\":\"policy.reloaded\"}";
	assert_int_equal(store_audit(s, "policy.reloaded", reloaded, strlen(reloaded), NULL, NULL),
	                 0);
	assert_int_equal(audit_sync(s, "message.refused", "{\"event\":\"message.refused\"}", &seq),
	                 0);
	assert_int_equal(seq, 5);
	char kinds[256];
	db_audit_kinds(f, kinds, sizeof(kinds));
	assert_string_equal(kinds, "message.accepted,message.delivered,message.refused,"
	                           "policy.reloaded,message.refused");
}

static void test_payload_sealed_on_disk(void **state)
{
	struct fx *f = *state;
	struct store *s = fx_open(f);
	const char *marker = "PLAINTEXT-MARKER-9434765919-Jane-Doe";
	char payload[8192];
	/* Long and repetitive, so any plaintext page would be easy to find. */
	size_t used = 0;
	while (used + strlen(marker) + 1 < sizeof(payload))
		used += (size_t)snprintf(payload + used, sizeof(payload) - used, "%s;", marker);
	struct store_message m = fx_msg("sender-in-clear-x7", "msg-1", "nhs-b", payload);
	assert_int_equal(send_sync(s, &m, NULL), 0);
	struct store_message small = fx_msg("sender-in-clear-x7", "msg-2", "nhs-b", marker);
	assert_int_equal(send_sync(s, &small, NULL), 0);

	char wal[160];
	fx_path(f, wal, sizeof(wal), "-wal");
	/* The search works: the sender's name is stored in clear. */
	assert_true(file_contains(f->path, "sender-in-clear-x7") ||
	            file_contains(wal, "sender-in-clear-x7"));
	assert_false(file_contains(f->path, marker));
	assert_false(file_contains(wal, marker));
	assert_false(file_contains(wal, "PLAINTEXT-MARKER"));

	/* And it opens again. */
	assert_int_equal(fetch_count(s, "nhs-b"), 2);
	fx_close(f);
	assert_true(file_contains(f->path, "sender-in-clear-x7"));
	assert_false(file_contains(f->path, "PLAINTEXT-MARKER"));
	assert_false(file_contains(wal, "PLAINTEXT-MARKER"));

	struct stat st;
	assert_int_equal(stat(f->path, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
}

static void test_duplicate_send(void **state)
{
	struct fx *f = *state;
	struct store *s = fx_open(f);
	struct store_message m = fx_msg("police-a", "msg-dup", "nhs-b", "payload one");
	struct store_receipt r1, r2, r3;
	assert_int_equal(send_sync(s, &m, &r1), 0);
	assert_false(r1.duplicate);
	sleep_ms(5);
	assert_int_equal(send_sync(s, &m, &r2), 0);
	assert_true(r2.duplicate);
	assert_int_equal(r2.gateway_id, r1.gateway_id);
	assert_int_equal(r2.audit_index, r1.audit_index);
	assert_int_equal(r2.accepted_at_ms, r1.accepted_at_ms);
	assert_int_equal(r2.record_count, r1.record_count);
	/* No second audit entry, no second delivery. */
	assert_int_equal(db_int(f, "SELECT count(*) FROM audit", 0), 1);
	assert_int_equal(db_int(f, "SELECT count(*) FROM messages", 0), 1);
	assert_int_equal(fetch_count(s, "nhs-b"), 1);

	/* Still a duplicate after the message was acknowledged and its payload deleted. */
	uint32_t acked;
	size_t n_unknown;
	assert_int_equal(ack_sync(s, "nhs-b", &r1.gateway_id, 1, &acked, NULL, &n_unknown), 0);
	assert_int_equal(acked, 1);
	assert_int_equal(send_sync(s, &m, &r3), 0);
	assert_true(r3.duplicate);
	assert_int_equal(r3.gateway_id, r1.gateway_id);
	assert_int_equal(fetch_count(s, "nhs-b"), 0);

	/* The same message id from another sender is another message. */
	struct store_message other = fx_msg("council-c", "msg-dup", "nhs-b", "payload one");
	assert_int_equal(send_sync(s, &other, &r3), 0);
	assert_false(r3.duplicate);
	assert_int_not_equal(r3.gateway_id, r1.gateway_id);
}

/*
 * An admission callback for tests, a daily limit of `limit` messages:
 * counts what it admits, what is given back and the stamps it was given.
 */
struct admit_count {
	int limit, admitted, calls, undos;
	int64_t at_ms;
};

static int test_admit(void *ctx, int64_t accepted_at_ms)
{
	struct admit_count *a = ctx;
	a->calls++;
	a->at_ms = accepted_at_ms;
	if (a->admitted >= a->limit)
		return ISG_ERR_LIMIT;
	a->admitted++;
	return 0;
}

static void test_admit_undo(void *ctx)
{
	struct admit_count *a = ctx;
	a->undos++;
	a->admitted--;
}

static char *test_refusal_entry(void *ctx, int err, size_t *len);
static int refusal_calls;

static void admit_with(struct store_message *m, struct admit_count *a)
{
	m->admit = test_admit;
	m->admit_undo = test_admit_undo;
	m->admit_ctx = a;
}

/*
 * Admission (the daily limits) is asked only of a new send, with the stamp
 * it is stored under: a resend gets its receipt and is never asked, nor is
 * a conflicting resend or a reply to no message. A send refused has its
 * refusal entry written by the same job, so the refusal needs no second
 * job after the store may have closed; without refusal_entry nothing is.
 */
static void test_send_admission(void **state)
{
	struct fx *f = *state;
	struct store *s = fx_open(f);
	struct admit_count a = {.limit = 1};
	struct store_message m = fx_msg("police-a", "msg-lim", "nhs-b", "payload one");
	admit_with(&m, &a);
	m.refusal_entry = test_refusal_entry;
	struct store_receipt r1, r2, r3;
	assert_int_equal(send_sync(s, &m, &r1), 0);
	assert_int_equal(a.calls, 1);
	assert_int_equal(a.at_ms, r1.accepted_at_ms);
	assert_int_equal(send_sync(s, &m, &r2), 0);
	assert_true(r2.duplicate);
	assert_int_equal(r2.gateway_id, r1.gateway_id);
	struct store_message changed = fx_msg("police-a", "msg-lim", "nhs-b", "payload other");
	admit_with(&changed, &a);
	changed.refusal_entry = test_refusal_entry;
	assert_int_equal(send_sync(s, &changed, &r2), ISG_ERR_CONFLICT);
	struct store_message reply = fx_msg("police-a", "msg-reply", "nhs-b", "a reply");
	reply.reply_to = 99999;
	admit_with(&reply, &a);
	reply.refusal_entry = test_refusal_entry;
	assert_int_equal(send_sync(s, &reply, &r2), ISG_ERR_NOT_FOUND);
	assert_int_equal(a.calls, 1);
	/* New, over the limit: refused, and its refusal on record. */
	struct store_message n = fx_msg("police-a", "msg-new", "nhs-b", "payload two");
	admit_with(&n, &a);
	n.refusal_entry = test_refusal_entry;
	refusal_calls = 0;
	assert_int_equal(send_sync(s, &n, &r3), ISG_ERR_LIMIT);
	assert_int_equal(refusal_calls, 1);
	assert_int_equal(a.calls, 2);
	assert_int_equal(r3.audit_index, 4);
	assert_int_equal(r3.gateway_id, 0);
	assert_int_equal(db_int(f, "SELECT count(*) FROM messages", 0), 1);
	assert_int_equal(db_int(f, "SELECT count(*) FROM audit WHERE kind = 'message.refused'", 0),
	                 3);
	/* Without refusal_entry: refused, nothing written. */
	n.refusal_entry = NULL;
	assert_int_equal(send_sync(s, &n, NULL), ISG_ERR_LIMIT);
	assert_int_equal(db_int(f, "SELECT count(*) FROM audit", 0), 4);
	assert_int_equal(a.undos, 0);
	assert_int_equal(a.admitted, 1);
	/* An admission that could never be given back is refused up front, and
	 * a refusal's entry is no message.accepted. */
	n.admit_undo = NULL;
	assert_int_equal(store_send(s, &n, on_send, NULL), ISG_ERR_INVALID);
	const char refused[] = "{\"event\":\"message.refused\",\"rule\":\"limit\"}";
	m.audit_entry = refused;
	m.audit_len = strlen(refused);
	assert_int_equal(store_send(s, &m, on_send, NULL), ISG_ERR_INVALID);
}

/*
 * Admitted, then rolled back with its batch (a failed COMMIT): the
 * admission is given back, once, and nothing is counted; after a full disk
 * the sends run again alone are admitted again, and each counts once.
 */
static void test_admission_given_back_with_its_batch(void **state)
{
	struct fx *f = *state;
	struct store *s = fx_open(f);
	struct admit_count a = {.limit = 2};
	struct store_message m[2] = {fx_msg("police-a", "m-1", "nhs-b", "first"),
	                             fx_msg("police-a", "m-2", "nhs-b", "second")};
	struct wait w[2];
	for (int round = 0; round < 2; round++) {
		store_test_pause(s, true);
		for (int i = 0; i < 2; i++) {
			admit_with(&m[i], &a);
			m[i].refusal_entry = test_refusal_entry;
			wait_init(&w[i]);
			assert_int_equal(store_send(s, &m[i], on_send, &w[i]), 0);
		}
		if (round == 0)
			store_test_fail_next_commit(s);
		else
			store_test_full_commits(s, 1); /* the batch's; each alone then commits */
		store_test_pause(s, false);
		for (int i = 0; i < 2; i++)
			assert_int_equal(wait_for(&w[i]), round == 0 ? ISG_ERR_STORE : 0);
		if (round == 0) {
			assert_int_equal(a.calls, 2);
			assert_int_equal(a.undos, 2);
			assert_int_equal(a.admitted, 0);
			assert_int_equal(db_int(f, "SELECT count(*) FROM audit", 0), 0);
		}
	}
	/* Admitted in the batch, given back, admitted again alone: no share twice. */
	assert_int_equal(a.calls, 6);
	assert_int_equal(a.undos, 4);
	assert_int_equal(a.admitted, 2);
	assert_false(w[0].receipt.duplicate || w[1].receipt.duplicate);
	assert_int_equal(db_int(f, "SELECT count(*) FROM messages", 0), 2);
	assert_int_equal(db_int(f, "SELECT count(*) FROM audit WHERE kind = 'message.refused'", 0),
	                 0);
}

/*
 * A send refused before it would be stored: a resend of a stored message
 * (same sender, id and content) gets its receipt and writes nothing; a new
 * id, the id with other content, or the id from another sender has its
 * refusal written.
 */
static void test_refuse_send(void **state)
{
	struct fx *f = *state;
	struct store *s = fx_open(f);
	struct store_message m = fx_msg("police-a", "msg-r", "nhs-b", "payload one");
	struct store_receipt r1, r;
	assert_int_equal(send_sync(s, &m, &r1), 0);
	const char refused[] = "{\"event\":\"message.refused\",\"rule\":\"agreement.validity\"}";
	struct store_refusal rf = {.sender = "police-a",
	                           .message_id = "msg-r",
	                           .audit_entry = "{\"event\":\"message.accepted\"}",
	                           .audit_len = strlen("{\"event\":\"message.accepted\"}")};
	memcpy(rf.request_hash, m.request_hash, sizeof(rf.request_hash));
	/* Only a refusal's entry is taken: refused up front, with a callback and
	 * context as the handler gives (so nothing but the entry is wrong), and
	 * nothing written. */
	assert_int_equal(refuse_sync(s, &rf, &r), ISG_ERR_INVALID);
	assert_int_equal(db_int(f, "SELECT count(*) FROM audit", 0), 1);
	rf.audit_entry = refused;
	rf.audit_len = strlen(refused);

	assert_int_equal(refuse_sync(s, &rf, &r), 0);
	assert_true(r.duplicate);
	assert_int_equal(r.gateway_id, r1.gateway_id);
	assert_int_equal(r.audit_index, r1.audit_index);
	assert_int_equal(r.accepted_at_ms, r1.accepted_at_ms);
	assert_int_equal(r.record_count, r1.record_count);
	assert_int_equal(db_int(f, "SELECT count(*) FROM audit", 0), 1);

	/* Other content under the id: the refusal stands, not a conflict. */
	struct store_refusal other = rf;
	other.request_hash[0] ^= 1;
	assert_int_equal(refuse_sync(s, &other, &r), 0);
	assert_false(r.duplicate);
	assert_int_equal(r.gateway_id, 0);
	assert_int_equal(r.audit_index, 2);
	/* A new id, and the same id from another sender. */
	other = rf;
	other.message_id = "msg-new";
	assert_int_equal(refuse_sync(s, &other, &r), 0);
	assert_false(r.duplicate);
	assert_int_equal(r.audit_index, 3);
	other = rf;
	other.sender = "council-c";
	assert_int_equal(refuse_sync(s, &other, &r), 0);
	assert_false(r.duplicate);
	assert_int_equal(r.audit_index, 4);

	assert_int_equal(db_int(f, "SELECT count(*) FROM messages", 0), 1);
	assert_int_equal(db_int(f, "SELECT count(*) FROM audit WHERE kind = 'message.refused'", 0),
	                 3);
	assert_int_equal(fetch_count(s, "nhs-b"), 1);
}

static void test_conflicting_send(void **state)
{
	struct fx *f = *state;
	struct store *s = fx_open(f);
	struct store_message m = fx_msg("police-a", "msg-x", "nhs-b", "first content");
	struct store_receipt r;
	assert_int_equal(send_sync(s, &m, &r), 0);
	struct store_message changed = fx_msg("police-a", "msg-x", "nhs-b", "other content");
	assert_int_equal(send_sync(s, &changed, NULL), ISG_ERR_CONFLICT);
	assert_int_equal(db_int(f, "SELECT count(*) FROM audit", 0), 1);
	struct store_fetch_result *res = NULL;
	assert_int_equal(fetch_sync(s, "nhs-b", 0, 10, &res), 0);
	assert_int_equal(res->n, 1);
	assert_memory_equal(res->items[0].payload, "first content", 13);
	store_fetch_result_free(res);
}

static void test_reply_to_rules(void **state)
{
	struct fx *f = *state;
	struct store *s = fx_open(f);
	struct store_receipt orig, reply;
	struct store_message m = fx_msg("police-a", "q-1", "nhs-b", "question");
	assert_int_equal(send_sync(s, &m, &orig), 0);

	/* The recipient answers the sender: fine. */
	struct store_message ok = fx_msg("nhs-b", "a-1", "police-a", "answer");
	ok.reply_to = orig.gateway_id;
	assert_int_equal(send_sync(s, &ok, &reply), 0);
	struct store_fetch_result *res = NULL;
	assert_int_equal(fetch_sync(s, "police-a", 0, 10, &res), 0);
	assert_int_equal(res->n, 1);
	assert_int_equal(res->items[0].reply_to, orig.gateway_id);
	store_fetch_result_free(res);

	int64_t audits = db_int(f, "SELECT count(*) FROM audit", 0);
	/* The sender cannot reply to its own message to nhs-b. */
	struct store_message own = fx_msg("police-a", "q-2", "nhs-b", "again");
	own.reply_to = orig.gateway_id;
	assert_int_equal(send_sync(s, &own, NULL), ISG_ERR_NOT_FOUND);
	/* A third party cannot reply to it. */
	struct store_message third = fx_msg("council-c", "c-1", "police-a", "me too");
	third.reply_to = orig.gateway_id;
	assert_int_equal(send_sync(s, &third, NULL), ISG_ERR_NOT_FOUND);
	/* The recipient cannot send the reply to someone else. */
	struct store_message elsewhere = fx_msg("nhs-b", "a-2", "council-c", "fwd");
	elsewhere.reply_to = orig.gateway_id;
	assert_int_equal(send_sync(s, &elsewhere, NULL), ISG_ERR_NOT_FOUND);
	/* No such message. */
	struct store_message none = fx_msg("nhs-b", "a-3", "police-a", "?");
	none.reply_to = 99999;
	assert_int_equal(send_sync(s, &none, NULL), ISG_ERR_NOT_FOUND);
	none.reply_to = UINT64_MAX;
	assert_int_equal(send_sync(s, &none, NULL), ISG_ERR_NOT_FOUND);
	assert_int_equal(db_int(f, "SELECT count(*) FROM audit", 0), audits);
	assert_int_equal(fetch_count(s, "council-c"), 0);
}

/*
 * A store put back from a copy hands out no gateway id twice: the ids
 * given out after the copy was taken are past, whatever the copy holds,
 * so a recipient that de-duplicates on them loses nothing. A new store
 * still starts at 1.
 */
static void test_no_id_twice_after_a_restore(void **state)
{
	struct fx *f = *state;
	struct store *s = fx_open(f);
	struct store_receipt r;
	struct store_message m = fx_msg("police-a", "before", "nhs-b", "one");
	assert_int_equal(send_sync(s, &m, &r), 0);
	assert_int_equal(r.gateway_id, 1);
	fx_close(f);
	char wal[160];
	fx_path(f, wal, sizeof(wal), "-wal");
	assert_int_equal(access(wal, F_OK), -1); /* stopped cleanly: the file is all */
	char copy[160];
	fx_path(f, copy, sizeof(copy), ".copy");
	file_copy(f->path, copy, -1);

	s = fx_open(f);
	uint64_t highest = 0;
	for (int i = 0; i < 3; i++) {
		char id[16];
		snprintf(id, sizeof(id), "after-%d", i);
		struct store_message n = fx_msg("police-a", id, "nhs-b", "later");
		assert_int_equal(send_sync(s, &n, &r), 0);
		assert_true(r.gateway_id > highest);
		highest = r.gateway_id;
	}
	fx_close(f);

	file_copy(copy, f->path, -1); /* the restore */
	s = fx_open(f);
	struct store_message again = fx_msg("nhs-b", "other", "police-a", "new");
	assert_int_equal(send_sync(s, &again, &r), 0);
	assert_true(r.gateway_id > highest);
	assert_true(r.gateway_id < (UINT64_C(1) << 53));
}

/*
 * Opening again and again without writing an entry (a start that fails
 * after the store opens, in a restart loop) does not skip ids again for
 * time already skipped: the ids a store moves on by stay within 1,000 a
 * millisecond of the time since, or a restored copy's one skip could fall
 * short of them.
 */
static void test_id_skips_do_not_add_up(void **state)
{
	struct fx *f = *state;
	struct store *s = fx_open(f);
	struct store_receipt r;
	int64_t before = time_now_ms();
	struct store_message m = fx_msg("police-a", "first", "nhs-b", "one");
	assert_int_equal(send_sync(s, &m, &r), 0);
	fx_close(f);
	for (int i = 0; i < 6; i++) {
		sleep_ms(50);
		fx_open(f);
		fx_close(f);
	}
	s = fx_open(f);
	struct store_message n = fx_msg("police-a", "second", "nhs-b", "two");
	assert_int_equal(send_sync(s, &n, &r), 0);
	int64_t elapsed = time_now_ms() - before;
	assert_true(r.gateway_id > 2);
	assert_true(r.gateway_id <= (uint64_t)(2 + 1000 * elapsed));
}

/* A refusal_entry for tests: the refusal's code in the entry, or NULL (out of memory). */
static char *test_refusal_entry(void *ctx, int err, size_t *len)
{
	refusal_calls++;
	if (ctx)
		return NULL;
	char *e = malloc(64);
	snprintf(e, 64, "{\"event\":\"message.refused\",\"err\":%d}", err);
	*len = strlen(e);
	return e;
}

/*
 * With refusal_entry, a conflicting resend and a reply to no message put
 * their refusal on record in the send's own job (the answer comes with its
 * index, and no second job is needed once the store may have closed);
 * without it, or when it cannot be built, nothing is written.
 */
static void test_refusals_found_are_recorded(void **state)
{
	struct fx *f = *state;
	struct store *s = fx_open(f);
	struct store_receipt r, refused;
	struct store_message m = fx_msg("police-a", "m-1", "nhs-b", "first");
	assert_int_equal(send_sync(s, &m, &r), 0);
	struct store_message changed = fx_msg("police-a", "m-1", "nhs-b", "other");
	changed.refusal_entry = test_refusal_entry;
	struct store_message none = fx_msg("nhs-b", "a-1", "police-a", "?");
	none.reply_to = 99999;
	none.refusal_entry = test_refusal_entry;
	refusal_calls = 0;
	assert_int_equal(send_sync(s, &changed, &refused), ISG_ERR_CONFLICT);
	assert_int_equal(refused.audit_index, r.audit_index + 1);
	assert_int_equal(send_sync(s, &none, &refused), ISG_ERR_NOT_FOUND);
	assert_int_equal(refused.audit_index, r.audit_index + 2);
	assert_int_equal(refusal_calls, 2);
	assert_int_equal(db_int(f, "SELECT count(*) FROM audit WHERE kind = 'message.refused'", 0),
	                 2);
	/* Nothing else was stored, and the resend of the first is still a duplicate. */
	assert_int_equal(fetch_count(s, "police-a"), 0);
	m.refusal_entry = test_refusal_entry;
	assert_int_equal(send_sync(s, &m, &refused), 0);
	assert_true(refused.duplicate);
	assert_int_equal(refusal_calls, 2);
	/* An entry that cannot be built: the job fails, nothing is written. */
	changed.refusal_ctx = &refusal_calls;
	assert_int_equal(send_sync(s, &changed, NULL), ISG_ERR_NOMEM);
	assert_int_equal(db_int(f, "SELECT count(*) FROM audit", 0), 3);
}

/*
 * A found refusal's entry can be rolled back with its batch: run alone
 * after the batch's commit failed, the same send is over a limit instead
 * (the message it conflicted with was in that batch and failed too). The
 * answer is the limit's, with the limit's entry, and the builder's entry
 * is nowhere: the builder must change nothing the answer depends on.
 */
/*
 * store_test_pause returns once the writer is held between batches, and
 * nothing commits until it is released: a sweep under way ends first (a
 * transaction, as every sweep is, even one with nothing to expire). The
 * tests that pause, queue jobs and then make the next COMMITs fail rely on
 * it: a sweep committing after that would take a failure meant for their
 * batch. Here the start-up sweeps expire 3000 messages, 1000 at a time,
 * so one is still running when the pause is asked for.
 */
static void test_pause_holds_the_writer_between_batches(void **state)
{
	enum { N = 3000 };
	struct fx *f = *state;
	struct store *s = fx_open_with(f, 3600 * 1000, 0);
	static struct wait w[N];
	char ids[N][16];
	store_test_pause(s, true);
	for (int i = 0; i < N; i++) {
		snprintf(ids[i], sizeof(ids[i]), "m-%d", i);
		struct store_message m = fx_msg("police-a", ids[i], "nhs-b", "soon gone");
		m.ttl_ms = 1;
		wait_init(&w[i]);
		assert_int_equal(store_send(s, &m, on_send, &w[i]), 0);
	}
	store_test_pause(s, false);
	for (int i = 0; i < N; i++)
		assert_int_equal(wait_for(&w[i]), 0);
	fx_close(f);
	sleep_ms(5);
	s = fx_open_with(f, 3600 * 1000, 0);
	sleep_ms(5); /* into the start-up sweep */
	store_test_pause(s, true);
	uint64_t held = store_test_commits(s);
	sleep_ms(100);
	assert_int_equal(store_test_commits(s), held);
	store_test_pause(s, false);
	int64_t expired = 0;
	for (int i = 0; i < 500 && expired < N; i++) {
		sleep_ms(10);
		expired = db_int(f, "SELECT count(*) FROM audit WHERE kind = 'message.expired'", 0);
	}
	assert_int_equal(expired, N);
	assert_true(store_test_commits(s) > held);
}

static void test_found_refusal_rolled_back_with_its_batch(void **state)
{
	struct fx *f = *state;
	struct store *s = fx_open(f);
	struct admit_count none = {.limit = 0};
	struct store_message a = fx_msg("police-a", "m-1", "nhs-b", "first");
	struct store_message b = fx_msg("police-a", "m-1", "nhs-b", "other");
	admit_with(&b, &none);
	b.refusal_entry = test_refusal_entry;
	refusal_calls = 0;
	struct wait w[2];
	store_test_pause(s, true);
	wait_init(&w[0]);
	wait_init(&w[1]);
	assert_int_equal(store_send(s, &a, on_send, &w[0]), 0);
	assert_int_equal(store_send(s, &b, on_send, &w[1]), 0);
	store_test_full_commits(s, 2); /* the batch's, then a's alone */
	store_test_pause(s, false);
	assert_int_equal(wait_for(&w[0]), ISG_ERR_FULL);
	assert_int_equal(wait_for(&w[1]), ISG_ERR_LIMIT);
	assert_false(w[0].bad || w[1].bad);
	/* The conflict's entry built in the batch and rolled back, then the limit's. */
	assert_int_equal(refusal_calls, 2);
	assert_int_equal(none.calls, 1);
	assert_int_equal(db_int(f, "SELECT count(*) FROM audit", 0), 1);
	assert_int_equal(w[1].receipt.audit_index, 1);
	assert_int_equal(db_int(f, "SELECT count(*) FROM messages", 0), 0);
}

static void test_ack_rules(void **state)
{
	struct fx *f = *state;
	struct store *s = fx_open(f);
	struct store_receipt r;
	struct store_message m = fx_msg("police-a", "m-1", "nhs-b", "for nhs-b only");
	assert_int_equal(send_sync(s, &m, &r), 0);
	int64_t audits = db_int(f, "SELECT count(*) FROM audit", 0);

	/* Someone else's message, a missing id, id 0 and a huge id: unknown, nothing changes. */
	uint64_t ids[] = {r.gateway_id, 424242, 0, UINT64_MAX};
	uint64_t unknown[8];
	uint32_t acked = 7;
	size_t n_unknown = 0;
	assert_int_equal(ack_sync(s, "council-c", ids, 4, &acked, unknown, &n_unknown), 0);
	assert_int_equal(acked, 0);
	assert_int_equal(n_unknown, 4);
	assert_memory_equal(unknown, ids, sizeof(ids));
	assert_int_equal(
	    db_int(f, "SELECT state FROM messages WHERE id = ?1", (int64_t)r.gateway_id), 0);
	assert_int_equal(db_int(f, "SELECT count(*) FROM audit", 0), audits);
	/* The sender cannot acknowledge its own message either. */
	assert_int_equal(ack_sync(s, "police-a", ids, 1, &acked, unknown, &n_unknown), 0);
	assert_int_equal(acked, 0);
	assert_int_equal(n_unknown, 1);
	assert_int_equal(fetch_count(s, "nhs-b"), 1);

	/* Pending (never fetched) messages can be acknowledged; a repeated id is unknown. */
	uint64_t twice[] = {r.gateway_id, r.gateway_id};
	assert_int_equal(ack_sync(s, "nhs-b", twice, 2, &acked, unknown, &n_unknown), 0);
	assert_int_equal(acked, 1);
	assert_int_equal(n_unknown, 1);
	assert_int_equal(unknown[0], r.gateway_id);

	/* An empty ack is fine; a huge one is refused up front. */
	assert_int_equal(ack_sync(s, "nhs-b", NULL, 0, &acked, unknown, &n_unknown), 0);
	assert_int_equal(acked, 0);
	uint64_t *many = calloc(10001, sizeof(*many));
	assert_non_null(many);
	assert_int_equal(ack_sync(s, "nhs-b", many, 10001, &acked, unknown, &n_unknown),
	                 ISG_ERR_LIMIT);
	free(many);
}

static void test_fetch_cursor(void **state)
{
	struct fx *f = *state;
	struct store *s = fx_open(f);
	uint64_t ids[5];
	for (int i = 0; i < 5; i++) {
		char mid[32], body[32];
		snprintf(mid, sizeof(mid), "m-%d", i);
		snprintf(body, sizeof(body), "body-%d", i);
		struct store_message m = fx_msg("police-a", mid, "nhs-b", body);
		struct store_receipt r;
		assert_int_equal(send_sync(s, &m, &r), 0);
		ids[i] = r.gateway_id;
		/* Interleave messages for someone else. */
		snprintf(mid, sizeof(mid), "o-%d", i);
		struct store_message o = fx_msg("police-a", mid, "council-c", body);
		assert_int_equal(send_sync(s, &o, NULL), 0);
	}
	uint64_t after = 0;
	size_t seen = 0;
	const size_t want_batches[] = {2, 2, 1, 0};
	for (size_t b = 0; b < ARRAY_LEN(want_batches); b++) {
		struct store_fetch_result *res = NULL;
		assert_int_equal(fetch_sync(s, "nhs-b", after, 2, &res), 0);
		assert_int_equal(res->n, want_batches[b]);
		for (size_t i = 0; i < res->n; i++) {
			char body[32];
			snprintf(body, sizeof(body), "body-%zu", seen);
			assert_int_equal(res->items[i].gateway_id, ids[seen]);
			assert_memory_equal(res->items[i].payload, body, strlen(body));
			assert_true(res->items[i].gateway_id > after);
			after = res->items[i].gateway_id;
			seen++;
		}
		store_fetch_result_free(res);
	}
	assert_int_equal(seen, 5);
	/* Cursor in the middle, and a cursor beyond every id. */
	struct store_fetch_result *res = NULL;
	assert_int_equal(fetch_sync(s, "nhs-b", ids[2], 100, &res), 0);
	assert_int_equal(res->n, 2);
	assert_int_equal(res->items[0].gateway_id, ids[3]);
	store_fetch_result_free(res);
	assert_int_equal(fetch_sync(s, "nhs-b", UINT64_MAX, 100, &res), 0);
	assert_int_equal(res->n, 0);
	store_fetch_result_free(res);
	/* max 0 is a caller's bug. */
	assert_int_equal(fetch_sync(s, "nhs-b", 0, 0, &res), ISG_ERR_INVALID);
	/* Each message delivered once in the audit log although fetched several times. */
	assert_int_equal(
	    db_int(f, "SELECT count(*) FROM audit WHERE kind = 'message.delivered'", 0), 5);
}

static void test_fetch_many(void **state)
{
	struct fx *f = *state;
	struct store *s = fx_open(f);
	store_test_pause(s, true);
	struct wait w[50];
	for (int i = 0; i < 50; i++) {
		char mid[32], body[32];
		snprintf(mid, sizeof(mid), "m-%d", i);
		snprintf(body, sizeof(body), "body-%d", i);
		struct store_message m = fx_msg("police-a", mid, "nhs-b", body);
		wait_init(&w[i]);
		assert_int_equal(store_send(s, &m, on_send, &w[i]), 0);
	}
	store_test_pause(s, false);
	for (int i = 0; i < 50; i++)
		assert_int_equal(wait_for(&w[i]), 0);
	/* More than any small first allocation, fewer than max. */
	struct store_fetch_result *res = NULL;
	assert_int_equal(fetch_sync(s, "nhs-b", 0, 60000, &res), 0);
	assert_int_equal(res->n, 50);
	for (size_t i = 0; i < res->n; i++) {
		char body[32];
		snprintf(body, sizeof(body), "body-%zu", i);
		assert_int_equal(res->items[i].gateway_id, w[i].receipt.gateway_id);
		assert_int_equal(res->items[i].payload_len, strlen(body));
		assert_memory_equal(res->items[i].payload, body, strlen(body));
	}
	store_fetch_result_free(res);
	assert_int_equal(fetch_sync(s, "nhs-b", 0, 33, &res), 0);
	assert_int_equal(res->n, 33);
	store_fetch_result_free(res);
}

static int fetch_sink_sync(struct store *s, uint32_t max, size_t max_bytes,
                           const struct store_fetch_sink *sink, struct store_fetch_result **res)
{
	struct wait w;
	wait_init(&w);
	int rc = store_fetch_within(s, "nhs-b", 0, max, max_bytes, sink, on_fetch, &w);
	assert_int_equal(rc, 0);
	rc = wait_for(&w);
	assert_false(w.bad);
	*res = w.res;
	return rc;
}

static int fetch_within_sync(struct store *s, uint32_t max, size_t max_bytes,
                             struct store_fetch_result **res)
{
	return fetch_sink_sync(s, max, max_bytes, NULL, res);
}

/*
 * store_fetch_within adds a message only while the payloads stay within
 * max_bytes, and says more may wait; the first always comes, so a caller
 * with little room still moves on.
 */
static void test_fetch_within_bytes(void **state)
{
	struct fx *f = *state;
	struct store *s = fx_open(f);
	static const char payload[100] = "";
	for (int i = 0; i < 3; i++) {
		char id[16];
		snprintf(id, sizeof(id), "m-%d", i);
		struct store_message m = fx_msg("police-a", id, "nhs-b", "");
		m.payload = (const uint8_t *)payload;
		m.payload_len = sizeof(payload);
		assert_int_equal(send_sync(s, &m, NULL), 0);
	}
	static const struct {
		size_t max_bytes;
		size_t n;
		bool more;
	} cases[] = {{SIZE_MAX, 3, true}, /* at max: more may wait */
	             {299, 2, true},      /* the third payload of 100 bytes would pass it */
	             {300, 3, true},      {199, 1, true}, {1, 1, true}, {0, 1, true}};
	for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
		struct store_fetch_result *res = NULL;
		assert_int_equal(fetch_within_sync(s, 3, cases[i].max_bytes, &res), 0);
		if (res->n != cases[i].n || res->more != cases[i].more)
			fail_msg("max_bytes %zu: %zu messages, more %d", cases[i].max_bytes, res->n,
			         res->more);
		assert_int_equal(res->scanned_to, res->items[res->n - 1].gateway_id);
		store_fetch_result_free(res);
	}
	struct store_fetch_result *res = NULL;
	assert_int_equal(fetch_within_sync(s, 10, SIZE_MAX, &res), 0);
	assert_int_equal(res->n, 3);
	assert_false(res->more);
	store_fetch_result_free(res);
	assert_int_equal(fetch_within_sync(s, 10, 300, &res), 0);
	assert_int_equal(res->n, 3);
	assert_false(res->more); /* all three fill it exactly */
	store_fetch_result_free(res);
}

/* A caller's measure: what the payload takes in its answer, with metadata. */
static size_t sink_size(const struct store_delivery *d)
{
	assert_null(d->payload); /* measured before it is opened */
	return d->payload_len + strlen(d->message_id) + strlen(d->sender) + 50;
}

/* A caller that cannot send a payload starting with '!'. */
static bool sink_sendable(const uint8_t *payload, size_t len)
{
	return len == 0 || payload[0] != '!';
}

/*
 * With a sink, the store takes only what the caller will send, as the
 * caller measures it, and audits only that as delivered: what it leaves
 * (too large for what is left, or not sendable) stays pending and
 * unaudited. A delivery audited but then left out of the answer would say
 * a recipient had what it never got.
 */
static void test_fetch_within_sink(void **state)
{
	struct fx *f = *state;
	struct store *s = fx_open(f);
	static const char *bodies[] = {"0123456789", "!not records", "abcdefghij", "ABCDEFGHIJ"};
	for (size_t i = 0; i < ARRAY_LEN(bodies); i++) {
		char id[16];
		snprintf(id, sizeof(id), "m-%zu", i);
		struct store_message m = fx_msg("police-a", id, "nhs-b", bodies[i]);
		assert_int_equal(send_sync(s, &m, NULL), 0);
	}
	/* Each takes 10 + 3 + 8 + 50 = 71 bytes as measured; the one that does
	 * not open as records 73. Room for three: the first, the second (not
	 * sendable, so left out once opened) and the third; not the fourth. */
	const struct store_fetch_sink sink = {sink_size, sink_sendable};
	struct store_fetch_result *res = NULL;
	assert_int_equal(fetch_sink_sync(s, 10, 71 + 73 + 71, &sink, &res), 0);
	assert_int_equal(res->n, 2);
	assert_true(res->more);
	assert_memory_equal(res->items[0].payload, "0123456789", 10);
	assert_memory_equal(res->items[1].payload, "abcdefghij", 10);
	uint64_t third = res->items[1].gateway_id;
	assert_int_equal(res->scanned_to, third);
	store_fetch_result_free(res);
	assert_int_equal(
	    db_int(f, "SELECT count(*) FROM audit WHERE kind = 'message.delivered'", 0), 2);
	/* One byte short of the third: the first two are read, one sent. */
	assert_int_equal(fetch_sink_sync(s, 10, 71 + 73 + 70, &sink, &res), 0);
	assert_int_equal(res->n, 1);
	assert_true(res->more);
	assert_int_equal(res->scanned_to, third - 1);
	store_fetch_result_free(res);
	/* Room for all: the fourth comes, and is audited; the second never is. */
	assert_int_equal(fetch_sink_sync(s, 10, SIZE_MAX, &sink, &res), 0);
	assert_int_equal(res->n, 3);
	assert_false(res->more);
	store_fetch_result_free(res);
	assert_int_equal(
	    db_int(f, "SELECT count(*) FROM audit WHERE kind = 'message.delivered'", 0), 3);
	assert_int_equal(db_int(f, "SELECT count(*) FROM messages WHERE state = 0", 0), 1);
}

/*
 * A store whose file was deleted, or replaced at its path, writes to a file
 * that goes when it closes: it fails (store_watch, and the writer after a
 * commit), and a send committed after the removal gets no receipt.
 */
static void test_watch_deleted(void **state)
{
	struct fx *f = *state;
	struct store *s = fx_open(f);
	struct store_message m = fx_msg("police-a", "kept", "nhs-b", "x");
	assert_int_equal(send_sync(s, &m, NULL), 0);
	assert_true(store_watch(s));
	assert_int_equal(unlink(f->path), 0);
	/* Not looked at yet: the commit finds it, and answers as not stored. */
	m = fx_msg("police-a", "lost", "nhs-b", "y");
	assert_int_equal(send_sync(s, &m, NULL), ISG_ERR_CLOSED);
	assert_true(store_failed(s));
	assert_false(store_watch(s));
	m = fx_msg("police-a", "later", "nhs-b", "z");
	assert_int_equal(send_sync(s, &m, NULL), ISG_ERR_CLOSED);
}

static void test_watch_replaced(void **state)
{
	struct fx *f = *state;
	struct store *s = fx_open(f);
	char other[160];
	fx_path(f, other, sizeof(other), ".other");
	FILE *o = fopen(other, "w");
	assert_non_null(o);
	fclose(o);
	assert_true(store_watch(s));
	assert_int_equal(rename(other, f->path), 0);
	assert_false(store_watch(s)); /* looked at by its owner: failed at once */
	assert_true(store_failed(s));
	struct store_message m = fx_msg("police-a", "lost", "nhs-b", "y");
	assert_int_equal(send_sync(s, &m, NULL), ISG_ERR_CLOSED);
}

static void test_expiry(void **state)
{
	struct fx *f = *state;
	struct store *s = fx_open_with(f, 20, 0);
	/* Large enough to be kept apart, so the sweep deletes it under FAST. */
	static uint8_t big[4000];
	struct store_message m = fx_msg("police-a", "short", "nhs-b", "");
	m.payload = big;
	m.payload_len = sizeof(big);
	/* Long enough that both sends and the fetch below finish first, on a disk
	 * busy with the other tests' commits (50 ms was not, once in CI). */
	m.ttl_ms = 1000;
	struct store_receipt r;
	assert_int_equal(send_sync(s, &m, &r), 0);
	struct store_message keep = fx_msg("police-a", "long", "nhs-b", "stays");
	struct store_receipt rk;
	assert_int_equal(send_sync(s, &keep, &rk), 0);
	/* Fetched (delivered) but never acknowledged: it still expires. */
	assert_int_equal(fetch_count(s, "nhs-b"), 2);

	int64_t state_now = 0;
	for (int i = 0; i < 500; i++) {
		state_now =
		    db_int(f, "SELECT state FROM messages WHERE id = ?1", (int64_t)r.gateway_id);
		if (state_now == 3)
			break;
		sleep_ms(10);
	}
	assert_int_equal(state_now, 3);
	assert_int_equal(db_int(f,
	                        "SELECT payload IS NULL AND nonce IS NULL FROM messages"
	                        " WHERE id = ?1",
	                        (int64_t)r.gateway_id),
	                 1);
	assert_int_equal(db_int(f, "SELECT count(*) FROM payloads", 0), 0);
	assert_secure_delete_on(s);
	assert_int_equal(db_int(f,
	                        "SELECT count(*) FROM audit WHERE kind = 'message.expired'"
	                        " AND json_extract(entry, '$.entry.gateway_id') = ?1",
	                        (int64_t)r.gateway_id),
	                 1);
	assert_int_equal(db_int(f, "SELECT count(*) FROM audit WHERE kind = 'message.expired'", 0),
	                 1);
	struct store_fetch_result *res = NULL;
	assert_int_equal(fetch_sync(s, "nhs-b", 0, 10, &res), 0);
	assert_int_equal(res->n, 1);
	assert_int_equal(res->items[0].gateway_id, rk.gateway_id);
	store_fetch_result_free(res);
	uint32_t acked;
	size_t n_unknown;
	assert_int_equal(ack_sync(s, "nhs-b", &r.gateway_id, 1, &acked, NULL, &n_unknown), 0);
	assert_int_equal(acked, 0);
	assert_int_equal(n_unknown, 1);
	/* Sweeping again does not expire it twice. */
	sleep_ms(60);
	assert_int_equal(db_int(f, "SELECT count(*) FROM audit WHERE kind = 'message.expired'", 0),
	                 1);
}

static void test_expired_not_fetchable_before_sweep(void **state)
{
	struct fx *f = *state;
	struct store *s = fx_open_with(f, 3600 * 1000, 0);
	struct store_message m = fx_msg("police-a", "short", "nhs-b", "soon gone");
	m.ttl_ms = 30;
	assert_int_equal(send_sync(s, &m, NULL), 0);
	sleep_ms(60);
	assert_int_equal(fetch_count(s, "nhs-b"), 0);
	/* No sweep yet: still pending in the table, no expiry entry. */
	assert_int_equal(db_int(f, "SELECT state FROM messages", 0), 0);
	assert_int_equal(db_int(f, "SELECT count(*) FROM audit WHERE kind = 'message.expired'", 0),
	                 0);
	/* The writer sweeps once when it starts, then every interval. */
	fx_close(f);
	s = fx_open_with(f, 3600 * 1000, 0);
	int64_t st = 0;
	for (int i = 0; i < 500 && st != 3; i++) {
		st = db_int(f, "SELECT state FROM messages", 0);
		if (st != 3)
			sleep_ms(10);
	}
	assert_int_equal(st, 3);
	assert_int_equal(db_int(f, "SELECT count(*) FROM audit WHERE kind = 'message.expired'", 0),
	                 1);
}

static void count_send(void *ctx, int err, const struct store_receipt *r)
{
	(void)r;
	if (err == 0)
		(*(int *)ctx)++; /* on the writer only */
}

/*
 * A sweep whose batch fails at its commit (the WAL cannot grow on a full
 * disk) is tried again at the next interval, even when it stopped at its
 * limit: tried again at once, it would fail again at once, over and over,
 * each time expiring, logging and rolling back a thousand messages.
 */
static void test_failed_sweep_waits_for_its_interval(void **state)
{
	struct fx *f = *state;
	struct store *s = fx_open_with(f, 3600 * 1000, 0); /* swept at open, then in an hour */
	enum { N = 1001 };                                 /* more than one sweep takes */
	int stored = 0;
	store_test_pause(s, true);
	for (int i = 0; i < N; i++) {
		char id[16];
		snprintf(id, sizeof(id), "m-%d", i);
		struct store_message m = fx_msg("police-a", id, "nhs-b", "x");
		m.ttl_ms = 1;
		assert_int_equal(store_send(s, &m, count_send, &stored), 0);
	}
	store_test_pause(s, false);
	uint64_t seq = 0;
	assert_int_equal(audit_sync(s, "test.event", "{\"event\":\"test.event\"}", &seq), 0);
	assert_int_equal(stored, N);
	fx_close(f);
	/* The next open's first write is the sweep's (its ids need no skip). */
	sqlite3 *db = NULL;
	assert_int_equal(sqlite3_open(f->path, &db), SQLITE_OK);
	assert_int_equal(sqlite3_exec(db,
	                              "INSERT OR REPLACE INTO meta(key, value)"
	                              " VALUES ('ids_skipped_at', 1 << 60)",
	                              NULL, NULL, NULL),
	                 SQLITE_OK);
	assert_int_equal(sqlite3_close(db), SQLITE_OK);

	store_test_fail_wal_writes(1);
	s = fx_open_with(f, 3600 * 1000, 0);
	/* Once the writer has gone round again (the entry may share the
	 * failed batch, and fail with it): */
	int rc;
	while ((rc = audit_sync(s, "test.event", "{\"event\":\"test.event\"}", &seq)) ==
	       ISG_ERR_FULL)
		;
	assert_int_equal(rc, 0);
	store_test_fail_wal_writes(0);
	assert_int_equal(db_int(f, "SELECT count(*) FROM messages WHERE state = 3", 0), 0);
	assert_int_equal(db_int(f, "SELECT count(*) FROM audit WHERE kind = 'message.expired'", 0),
	                 0);
}

/* SQLite reports a write cut short by a full disk as SQLITE_FULL with no
 * errno (as the test's failing writes do): the start's error still says
 * the disk is full, not SQLite's "database or disk is full". */
static void test_full_disk_at_open_says_so(void **state)
{
	struct fx *f = *state;
	struct store *s = fx_open(f);
	uint64_t seq = 0;
	assert_int_equal(audit_sync(s, "test.event", "{\"event\":\"test.event\"}", &seq), 0);
	fx_close(f);
	sleep_ms(5); /* the next open moves the gateway ids on: a write */

	store_test_fail_wal_writes(1000);
	char err[512] = "";
	struct store_options opt = {.path = f->path, .storage_key = f->key};
	int rc = store_open(&opt, &f->s, err, sizeof(err));
	store_test_fail_wal_writes(0);
	assert_int_equal(rc, ISG_ERR_FULL);
	assert_non_null(strstr(err, "disk full (no space left on the store's file system)"));
	assert_null(strstr(err, "database or disk is full"));
	fx_open(f);
}

/* A sweep interval too long to add to a clock is taken as a day: the
 * writer sweeps at open, then waits, instead of sweeping without end. */
static void test_long_sweep_interval(void **state)
{
	struct fx *f = *state;
	struct store *s = fx_open_with(f, INT64_MAX, 0);
	uint64_t seq = 0;
	assert_int_equal(audit_sync(s, "test.event", "{\"event\":\"test.event\"}", &seq), 0);
	uint64_t commits = store_test_commits(s);
	sleep_ms(200);
	assert_int_equal(store_test_commits(s), commits);
}

/*
 * Once the writer runs it owns the audit log: what store_open logs of it
 * (its size, its checkpoint) is read before the writer starts. Here the
 * writer's first sweep appends an expiry entry while this thread waits
 * without touching the store, so nothing orders a read of store_open's made
 * after the start before that append: ThreadSanitizer reports it.
 */
static void test_open_reads_the_log_before_the_writer_starts(void **state)
{
	struct fx *f = *state;
	struct store *s = fx_open_with(f, 3600 * 1000, 0);
	struct store_message m = fx_msg("police-a", "short", "nhs-b", "soon gone");
	m.ttl_ms = 1;
	assert_int_equal(send_sync(s, &m, NULL), 0);
	fx_close(f);
	sleep_ms(5);
	fx_open_with(f, 3600 * 1000, 0);
	sleep_ms(200); /* the sweep at start, with no lock taken here meanwhile */
	fx_close(f);
	assert_int_equal(db_int(f, "SELECT count(*) FROM audit WHERE kind = 'message.expired'", 0),
	                 1);
}

static void test_durable_across_reopen(void **state)
{
	struct fx *f = *state;
	struct store *s = fx_open(f);
	struct store_message m = fx_msg("police-a", "durable", "nhs-b", "still here");
	struct store_receipt r;
	assert_int_equal(send_sync(s, &m, &r), 0);
	struct store_message gone = fx_msg("police-a", "acked", "nhs-b", "gone");
	struct store_receipt rg;
	assert_int_equal(send_sync(s, &gone, &rg), 0);
	uint32_t acked;
	size_t n_unknown;
	assert_int_equal(ack_sync(s, "nhs-b", &rg.gateway_id, 1, &acked, NULL, &n_unknown), 0);
	fx_close(f);

	s = fx_open(f);
	struct store_fetch_result *res = NULL;
	assert_int_equal(fetch_sync(s, "nhs-b", 0, 10, &res), 0);
	assert_int_equal(res->n, 1);
	assert_int_equal(res->items[0].gateway_id, r.gateway_id);
	assert_memory_equal(res->items[0].payload, "still here", 10);
	store_fetch_result_free(res);
	/* Duplicate detection and audit numbering carry on. */
	struct store_receipt r2;
	assert_int_equal(send_sync(s, &m, &r2), 0);
	assert_true(r2.duplicate);
	assert_int_equal(r2.gateway_id, r.gateway_id);
	uint64_t seq = 0;
	assert_int_equal(audit_sync(s, "test.event", "{\"event\":\"test.event\"}", &seq), 0);
	assert_int_equal(seq, (uint64_t)db_int(f, "SELECT count(*) FROM audit", 0));
	fx_close(f);

	/* A store opened with another key cannot open the payload, and does not crash. */
	f->key[0] ^= 1;
	s = fx_open(f);
	assert_int_equal(fetch_count(s, "nhs-b"), 0);
}

/*
 * A payload kept apart is deleted under secure_delete=FAST, one kept in
 * its row under ON. If ON cannot be set back after such a delete,
 * nothing else runs under FAST: the whole batch fails and is rolled back
 * (here an acknowledgement and a send queued behind it), and the next
 * batch sets ON before it begins.
 */
static void test_secure_delete_not_left_fast(void **state)
{
	struct fx *f = *state;
	struct store *s = fx_open(f);
	static uint8_t page[4096]; /* sealed, 16 bytes more: kept apart */
	struct store_message small = fx_msg("police-a", "m-1", "nhs-b", "one");
	struct store_message large = fx_msg("police-a", "m-2", "nhs-b", "");
	struct store_message behind = fx_msg("police-a", "m-3", "nhs-b", "three");
	large.payload = page;
	large.payload_len = sizeof(page);
	struct store_receipt rs, rl;
	assert_int_equal(send_sync(s, &small, &rs), 0);
	assert_int_equal(send_sync(s, &large, &rl), 0);
	store_test_fail_secure_delete_on(s, 1);
	/* The small one's delete does not switch, so does not meet the failure. */
	uint32_t acked = 0;
	size_t n_unknown = 0;
	assert_int_equal(ack_sync(s, "nhs-b", &rs.gateway_id, 1, &acked, NULL, &n_unknown), 0);
	assert_int_equal(acked, 1);
	store_test_pause(s, true);
	struct wait wa, ws;
	wait_init(&wa);
	assert_int_equal(store_ack(s, "nhs-b", &rl.gateway_id, 1, on_ack, &wa), 0);
	wait_init(&ws);
	assert_int_equal(store_send(s, &behind, on_send, &ws), 0);
	store_test_pause(s, false);
	assert_int_equal(wait_for(&wa), ISG_ERR_STORE);
	assert_int_equal(wait_for(&ws), ISG_ERR_STORE);
	assert_int_equal(db_int(f, "SELECT count(*) FROM payloads", 0), 1);
	assert_int_equal(db_int(f, "SELECT id FROM payloads", 0), (int64_t)rl.gateway_id);
	assert_int_equal(db_int(f, "SELECT count(*) FROM messages", 0), 2);
	assert_secure_delete_on(s);
	assert_int_equal(ack_sync(s, "nhs-b", &rl.gateway_id, 1, &acked, NULL, &n_unknown), 0);
	assert_int_equal(acked, 1);
	assert_int_equal(db_int(f, "SELECT count(*) FROM payloads", 0), 0);
	assert_secure_delete_on(s);
}

static void test_moved_payload_does_not_open(void **state)
{
	struct fx *f = *state;
	struct store *s = fx_open(f);
	struct store_receipt r1, r2;
	struct store_message m1 = fx_msg("police-a", "m-1", "nhs-b", "for message one");
	struct store_message m2 = fx_msg("police-a", "m-2", "nhs-b", "for message two");
	assert_int_equal(send_sync(s, &m1, &r1), 0);
	assert_int_equal(send_sync(s, &m2, &r2), 0);
	/* Someone with write access to the file copies message two's sealed payload over one. */
	char sql[256];
	snprintf(sql, sizeof(sql),
	         "UPDATE messages SET (nonce, payload) = (SELECT nonce, payload FROM messages"
	         " WHERE id = %" PRIu64 ") WHERE id = %" PRIu64,
	         r2.gateway_id, r1.gateway_id);
	assert_int_equal(store_test_exec(s, sql), 0);
	struct store_fetch_result *res = NULL;
	assert_int_equal(fetch_sync(s, "nhs-b", 0, 10, &res), 0);
	assert_int_equal(res->n, 1);
	assert_int_equal(res->items[0].gateway_id, r2.gateway_id);
	assert_memory_equal(res->items[0].payload, "for message two", 15);
	store_fetch_result_free(res);
	/* Changing the recipient column breaks the seal as well. */
	snprintf(sql, sizeof(sql),
	         "UPDATE messages SET recipient = 'council-c' WHERE id = %" PRIu64, r2.gateway_id);
	assert_int_equal(store_test_exec(s, sql), 0);
	assert_int_equal(fetch_count(s, "council-c"), 0);
}

/*
 * Every field a delivery hands out beside its payload is bound to it, not
 * only sender, message id and recipient: a row whose agreement id or
 * version, purpose, dataset or reply_to was changed in the file does not
 * open (the fetch skips it), and opens again once put back.
 */
static void test_changed_fields_do_not_open(void **state)
{
	struct fx *f = *state;
	struct store *s = fx_open(f);
	static const char *const changes[] = {
	    "agreement_id = 'council-to-police-housing'",
	    "agreement_version = 4",
	    "purpose = 'direct care'",
	    "dataset = 'case-note'",
	    "reply_to = 1",
	};
	enum { N = ARRAY_LEN(changes) };
	struct store_receipt r[N + 1];
	for (size_t i = 0; i <= N; i++) {
		char mid[16];
		snprintf(mid, sizeof(mid), "m-%zu", i);
		struct store_message m = fx_msg("police-a", mid, "nhs-b", "a referral");
		assert_int_equal(send_sync(s, &m, &r[i]), 0);
	}
	fx_close(f);
	char sql[256];
	for (size_t i = 0; i < N; i++) {
		snprintf(sql, sizeof(sql), "UPDATE messages SET %s WHERE id = %" PRIu64, changes[i],
		         r[i].gateway_id);
		db_exec(f, sql);
	}
	s = fx_open(f);
	struct store_fetch_result *res = NULL;
	assert_int_equal(fetch_sync(s, "nhs-b", 0, 10, &res), 0);
	assert_int_equal(res->n, 1);
	assert_int_equal(res->items[0].gateway_id, r[N].gateway_id);
	store_fetch_result_free(res);
	fx_close(f);
	db_exec(f, "UPDATE messages SET agreement_id = 'police-to-nhs-safeguarding',"
	           " agreement_version = 3, purpose = 'safeguarding', dataset = 'referral',"
	           " reply_to = 0");
	s = fx_open(f);
	assert_int_equal(fetch_count(s, "nhs-b"), N + 1);
}

/* Set row id's messages.ad, through the writer. */
static void set_ad(struct store *s, uint64_t id, int ad)
{
	char sql[128];
	snprintf(sql, sizeof(sql), "UPDATE messages SET ad = %d WHERE id = %" PRIu64, ad, id);
	assert_int_equal(store_test_exec(s, sql), 0);
}

/*
 * messages.ad names the associated data a row's payload opens under. A
 * row sealed since schema version 5 (ad = 2) does not open when its ad
 * says 1, the associated data of rows sealed before, which begins with
 * another context string; a row sealed before does not open as ad = 2;
 * neither opens under any other value. Each opens again with its own.
 */
static void test_ad_column_names_the_associated_data(void **state)
{
	struct fx *f = *state;
	struct store *s = fx_open(f);
	struct store_receipt r1, r2;
	struct store_message m1 = fx_msg("police-a", "m-1", "nhs-b", "new");
	struct store_message m2 = fx_msg("police-a", "m-2", "nhs-b", "");
	assert_int_equal(send_sync(s, &m1, &r1), 0);
	assert_int_equal(send_sync(s, &m2, &r2), 0);
	assert_int_equal(db_int(f, "SELECT count(*) FROM messages WHERE ad = 2", 0), 2);
	fx_close(f);
	store_write_v4_row(f, r2.gateway_id, "police-a", "m-2", "nhs-b", (const uint8_t *)"old", 3);
	db_exec(f, "UPDATE messages SET ad = 1 WHERE message_id = 'm-2'");
	s = fx_open(f);
	struct store_fetch_result *res = NULL;
	assert_int_equal(fetch_sync(s, "nhs-b", 0, 10, &res), 0);
	assert_int_equal(res->n, 2);
	assert_memory_equal(res->items[0].payload, "new", 3);
	assert_memory_equal(res->items[1].payload, "old", 3);
	store_fetch_result_free(res);

	static const int others[] = {1, 0, 3, -1};
	for (size_t i = 0; i < ARRAY_LEN(others); i++) {
		set_ad(s, r1.gateway_id, others[i]);
		assert_int_equal(fetch_sync(s, "nhs-b", 0, 10, &res), 0);
		assert_int_equal(res->n, 1);
		assert_int_equal(res->items[0].gateway_id, r2.gateway_id);
		store_fetch_result_free(res);
	}
	set_ad(s, r1.gateway_id, 2);
	assert_int_equal(fetch_count(s, "nhs-b"), 2);
	static const int others_old[] = {2, 0, 3};
	for (size_t i = 0; i < ARRAY_LEN(others_old); i++) {
		set_ad(s, r2.gateway_id, others_old[i]);
		assert_int_equal(fetch_sync(s, "nhs-b", 0, 10, &res), 0);
		assert_int_equal(res->n, 1);
		assert_int_equal(res->items[0].gateway_id, r1.gateway_id);
		store_fetch_result_free(res);
	}
	set_ad(s, r2.gateway_id, 1);
	assert_int_equal(fetch_count(s, "nhs-b"), 2);
}

/* sql with ?1 = id, stepped to its row. */
static sqlite3_stmt *row_query(sqlite3 *db, const char *sql, uint64_t id)
{
	sqlite3_stmt *st = NULL;
	assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
	sqlite3_bind_int64(st, 1, (int64_t)id);
	assert_int_equal(sqlite3_step(st), SQLITE_ROW);
	return st;
}

/* Open row id's payload with OpenSSL, from docs/store.md's description of
 * a row sealed since schema version 5 alone, as message m; true when it
 * opens to m's payload. */
static bool opens_as_documented(const struct fx *f, uint64_t id, const struct store_message *m)
{
	sqlite3 *db = db_ro(f);
	sqlite3_stmt *st =
	    row_query(db, "SELECT nonce, payload, ad FROM messages WHERE id = ?1", id);
	const uint8_t *header = sqlite3_column_blob(st, 0), *sealed = sqlite3_column_blob(st, 1);
	int header_len = sqlite3_column_bytes(st, 0), sealed_len = sqlite3_column_bytes(st, 1);
	assert_int_equal(header_len, 72 + 12);
	assert_int_equal(sqlite3_column_int(st, 2), 2);
	assert_true(sealed_len >= 16 && sealed_len - 16 < 256);
	uint8_t data_key[32], ad[512], out[256], tag[16];
	assert_int_equal(store_key_unwrap(f->key, header, data_key), 0);
	size_t ad_len = store_doc_ad(ad, m);
	int len = sealed_len - 16, n = 0, fin = 0;
	memcpy(tag, sealed + len, sizeof(tag));
	EVP_CIPHER_CTX *x = EVP_CIPHER_CTX_new();
	bool ok = x && EVP_DecryptInit_ex2(x, EVP_aes_256_gcm(), data_key, header + 72, NULL) &&
	          EVP_DecryptUpdate(x, NULL, &n, ad, (int)ad_len) &&
	          EVP_DecryptUpdate(x, out, &n, sealed, len) &&
	          EVP_CIPHER_CTX_ctrl(x, EVP_CTRL_AEAD_SET_TAG, sizeof(tag), tag) &&
	          EVP_DecryptFinal_ex(x, out + n, &fin) == 1;
	EVP_CIPHER_CTX_free(x);
	sqlite3_finalize(st);
	sqlite3_close(db);
	return ok && (size_t)len == m->payload_len && memcmp(out, m->payload, (size_t)len) == 0;
}

/* Flip one bit of row id's sealed payload, through the writer. */
static void flip_payload_bit(struct fx *f, uint64_t id)
{
	sqlite3 *db = db_ro(f);
	sqlite3_stmt *st = row_query(db, "SELECT hex(payload) FROM messages WHERE id = ?1", id);
	char hex[600];
	str_copy(hex, (const char *)sqlite3_column_text(st, 0), sizeof(hex));
	sqlite3_finalize(st);
	sqlite3_close(db);
	assert_true(strlen(hex) >= 2);
	static const char digits[] = "0123456789ABCDEF";
	hex[1] = digits[(strchr(digits, hex[1]) - digits) ^ 1]; /* the first byte's low bit */
	char update[800];
	snprintf(update, sizeof(update), "UPDATE messages SET payload = X'%s' WHERE id = %" PRIu64,
	         hex, id);
	assert_int_equal(store_test_exec(f->s, update), 0);
}

/*
 * Payloads are sealed with AES-256-GCM under a data key of their own, as
 * docs/store.md describes: the test opens one with OpenSSL from that
 * description. Rows sealed by older versions still open: XChaCha20-Poly1305
 * under a data key (a 96-byte header), or under the storage key itself (the
 * 24-byte nonce alone). A seal header moved to another row does not open
 * there (the wrong data key; the associated data's part is
 * test_moved_payload_does_not_open), nor does a payload with a bit changed,
 * nor a header of any other length.
 */
static void test_seal_headers(void **state)
{
	struct fx *f = *state;
	struct store *s = fx_open(f);
	struct store_receipt r1, r2, r3;
	struct store_message m1 = fx_msg("police-a", "m-1", "nhs-b", "one");
	struct store_message m2 = fx_msg("police-a", "m-2", "nhs-b", "two");
	struct store_message m3 = fx_msg("police-a", "m-3", "nhs-b", "three");
	assert_int_equal(send_sync(s, &m1, &r1), 0);
	assert_int_equal(send_sync(s, &m2, &r2), 0);
	assert_int_equal(send_sync(s, &m3, &r3), 0);
	assert_int_equal(db_int(f, "SELECT length(nonce) FROM messages WHERE id = 1", 0), 84);
	/* Each its own data key and nonce. */
	assert_int_equal(db_int(f, "SELECT count(DISTINCT substr(nonce, 73)) FROM messages", 0), 3);
	assert_int_equal(db_int(f, "SELECT length(payload) FROM messages WHERE id = 2", 0), 3 + 16);
	assert_true(opens_as_documented(f, r2.gateway_id, &m2));
	struct store_message other = m2;
	other.recipient = "nhs-c";
	assert_false(opens_as_documented(f, r2.gateway_id, &other));
	other = m2;
	other.purpose = "direct care";
	assert_false(opens_as_documented(f, r2.gateway_id, &other));

	/* Message one as the store sealed it before envelopes, three as version 2 did. */
	store_write_v1_row(s, f->key, r1.gateway_id, "police-a", "m-1", "nhs-b", "old style");
	store_write_v2_row(s, f->key, r3.gateway_id, "police-a", "m-3", "nhs-b", "version two");
	assert_int_equal(db_int(f, "SELECT length(nonce) FROM messages WHERE id = 3", 0), 96);
	struct store_fetch_result *res = NULL;
	assert_int_equal(fetch_sync(s, "nhs-b", 0, 10, &res), 0);
	assert_int_equal(res->n, 3);
	assert_int_equal(res->items[0].payload_len, 9);
	assert_memory_equal(res->items[0].payload, "old style", 9);
	assert_int_equal(res->items[1].payload_len, 3);
	assert_memory_equal(res->items[1].payload, "two", 3);
	assert_int_equal(res->items[2].payload_len, 11);
	assert_memory_equal(res->items[2].payload, "version two", 11);
	store_fetch_result_free(res);

	/* Message two's seal header over one's: one no longer opens, two does. */
	char sql[256];
	snprintf(sql, sizeof(sql),
	         "UPDATE messages SET nonce = (SELECT nonce FROM messages WHERE id = %" PRIu64
	         ") WHERE id = %" PRIu64,
	         r2.gateway_id, r1.gateway_id);
	assert_int_equal(store_test_exec(s, sql), 0);
	assert_int_equal(fetch_sync(s, "nhs-b", 0, 10, &res), 0);
	assert_int_equal(res->n, 2);
	assert_int_equal(res->items[0].gateway_id, r2.gateway_id);
	assert_int_equal(res->items[1].gateway_id, r3.gateway_id);
	store_fetch_result_free(res);
	/* One bit of two's payload, then of three's, changed. */
	flip_payload_bit(f, r2.gateway_id);
	assert_int_equal(fetch_sync(s, "nhs-b", 0, 10, &res), 0);
	assert_int_equal(res->n, 1);
	assert_int_equal(res->items[0].gateway_id, r3.gateway_id);
	store_fetch_result_free(res);
	flip_payload_bit(f, r3.gateway_id);
	assert_int_equal(fetch_count(s, "nhs-b"), 0);
	/* Restored, three opens again; with a header of any other length it does not. */
	flip_payload_bit(f, r3.gateway_id);
	assert_int_equal(fetch_count(s, "nhs-b"), 1);
	snprintf(sql, sizeof(sql), "UPDATE messages SET nonce = X'00' WHERE id = %" PRIu64,
	         r3.gateway_id);
	assert_int_equal(store_test_exec(s, sql), 0);
	assert_int_equal(fetch_count(s, "nhs-b"), 0);
}

/* A holder of the storage key that can be made to fail, as a key process
 * that is gone would. */
struct flaky {
	const uint8_t *key;
	bool fail;
	unsigned new_calls, unwrap_calls;
	size_t unwrapped; /* keys asked for */
};

static int flaky_new_keys(void *ctx, size_t n, uint8_t *keys, uint8_t *wrapped)
{
	struct flaky *fl = ctx;
	fl->new_calls++;
	if (fl->fail)
		return ISG_ERR_IO;
	for (size_t i = 0; i < n; i++) {
		randombytes_buf(keys + i * STORE_SEAL_KEY_LEN, STORE_SEAL_KEY_LEN);
		store_key_wrap(fl->key, keys + i * STORE_SEAL_KEY_LEN,
		               wrapped + i * STORE_WRAPPED_KEY_LEN);
	}
	return 0;
}

static int flaky_unwrap(void *ctx, size_t n, const uint8_t *wrapped, uint8_t *keys, uint8_t *ok)
{
	struct flaky *fl = ctx;
	fl->unwrap_calls++;
	fl->unwrapped += n;
	if (fl->fail)
		return ISG_ERR_IO;
	for (size_t i = 0; i < n; i++)
		ok[i] = store_key_unwrap(fl->key, wrapped + i * STORE_WRAPPED_KEY_LEN,
		                         keys + i * STORE_SEAL_KEY_LEN) == 0;
	return 0;
}

static int flaky_open(void *ctx, const uint8_t *ad, size_t ad_len,
                      const uint8_t nonce[static STORE_SEAL_NONCE_LEN], const uint8_t *sealed,
                      size_t sealed_len, uint8_t *out)
{
	struct flaky *fl = ctx;
	return fl->fail ? ISG_ERR_IO
	                : store_aead_open(fl->key, ad, ad_len, nonce, sealed, sealed_len, out);
}

static struct store *flaky_store(struct fx *f, struct flaky *fl)
{
	struct store_sealer sealer = {
	    .ctx = fl, .new_keys = flaky_new_keys, .unwrap = flaky_unwrap, .open = flaky_open};
	struct store_options opt = {.path = f->path, .sealer = &sealer};
	char err[256];
	assert_int_equal(store_open(&opt, &f->s, err, sizeof(err)), 0);
	return f->s;
}

/* When the key's holder fails, a send is refused and a fetch fails; nothing
 * is lost or skipped, and both work once it answers again. A fetch unwraps
 * all its keys in one call. */
static void test_sealer_failures(void **state)
{
	struct fx *f = *state;
	struct flaky fl = {.key = f->key, .fail = true};
	struct store *s = flaky_store(f, &fl);
	struct store_message m = fx_msg("police-a", "m-0", "nhs-b", "refused");
	assert_int_equal(send_sync(s, &m, NULL), ISG_ERR_IO);
	assert_int_equal(db_int(f, "SELECT count(*) FROM messages", 0), 0);
	fl.fail = false;
	for (int i = 0; i < 3; i++) {
		char id[8];
		snprintf(id, sizeof(id), "m-%d", i);
		m = fx_msg("police-a", id, "nhs-b", "kept");
		assert_int_equal(send_sync(s, &m, NULL), 0);
	}
	assert_int_equal(fl.new_calls, 2); /* the failed refill, then one pool */
	/* Reopened, the store has no data keys kept from sealing: it must ask. */
	fx_close(f);
	s = flaky_store(f, &fl);
	fl.fail = true;
	struct store_fetch_result *res = NULL;
	assert_int_not_equal(fetch_sync(s, "nhs-b", 0, 10, &res), 0);
	store_fetch_result_free(res);
	assert_int_equal(db_int(f, "SELECT count(*) FROM messages WHERE state = 0", 0), 3);
	fl.fail = false;
	fl.unwrap_calls = 0;
	assert_int_equal(fetch_sync(s, "nhs-b", 0, 10, &res), 0);
	assert_int_equal(res->n, 3);
	assert_int_equal(fl.unwrap_calls, 1);
	for (size_t i = 0; i < res->n; i++)
		assert_memory_equal(res->items[i].payload, "kept", 4);
	store_fetch_result_free(res);
}

/* n messages "m-<i>" from police-a to nhs-b, each "payload <i>", one after another. */
static void send_numbered(struct store *s, int n)
{
	for (int i = 0; i < n; i++) {
		char id[16], body[32];
		snprintf(id, sizeof(id), "m-%d", i);
		snprintf(body, sizeof(body), "payload %d", i);
		struct store_message m = fx_msg("police-a", id, "nhs-b", body);
		assert_int_equal(send_sync(s, &m, NULL), 0);
	}
}

/* One fetch hands out all n of send_numbered's messages, each opened. */
static void fetch_numbered(struct store *s, int n)
{
	struct store_fetch_result *res = NULL;
	assert_int_equal(fetch_sync(s, "nhs-b", 0, (uint32_t)n, &res), 0);
	assert_int_equal(res->n, n);
	for (int i = 0; i < n; i++) {
		char body[32];
		int len = snprintf(body, sizeof(body), "payload %d", i);
		assert_int_equal(res->items[i].payload_len, (size_t)len);
		assert_memory_equal(res->items[i].payload, body, (size_t)len);
	}
	store_fetch_result_free(res);
}

/* The slot store_seal.c keeps a data key in: its wrapping's first 8 bytes. */
static size_t kept_slot_of(const uint8_t *wrapped)
{
	uint64_t h;
	memcpy(&h, wrapped, sizeof(h));
	return (size_t)(h % STORE_KEYS_KEPT);
}

/*
 * A data key is kept from sealing until its message's first fetch, which
 * then asks the holder only for keys a later message's took the slot of;
 * a second delivery asks again, and a reopened store has none kept.
 */
static void test_data_keys_kept_for_first_fetch(void **state)
{
	struct fx *f = *state;
	struct flaky fl = {.key = f->key};
	struct store *s = flaky_store(f, &fl);
	enum { N = 300 };
	send_numbered(s, N);
	/* Sent one at a time, so sealed in id order: a key is gone when a later
	 * message's hashed to its slot. */
	size_t slot_last[STORE_KEYS_KEPT], slots[N], evicted = 0;
	memset(slot_last, 0xff, sizeof(slot_last));
	sqlite3 *db = db_ro(f);
	sqlite3_stmt *st = NULL;
	assert_int_equal(
	    sqlite3_prepare_v2(db, "SELECT nonce FROM messages ORDER BY id", -1, &st, NULL),
	    SQLITE_OK);
	for (size_t i = 0; i < N; i++) {
		assert_int_equal(sqlite3_step(st), SQLITE_ROW);
		assert_true(sqlite3_column_bytes(st, 0) >= STORE_WRAPPED_KEY_LEN);
		slots[i] = kept_slot_of(sqlite3_column_blob(st, 0));
		slot_last[slots[i]] = i;
	}
	sqlite3_finalize(st);
	sqlite3_close(db);
	for (size_t i = 0; i < N; i++)
		evicted += slot_last[slots[i]] != i;
	fl.unwrap_calls = 0;
	fl.unwrapped = 0;
	fetch_numbered(s, N);
	assert_int_equal(fl.unwrapped, evicted);
	assert_int_equal(fl.unwrap_calls, evicted ? 1 : 0);
	/* Handed out again: every key was wiped at its first fetch. */
	fl.unwrap_calls = 0;
	fl.unwrapped = 0;
	assert_int_equal(fetch_count(s, "nhs-b"), N);
	assert_int_equal(fl.unwrap_calls, 1);
	assert_int_equal(fl.unwrapped, N);
}

/* Replace row id's seal: header = 72 zero bytes || nonce, payload = plain
 * sealed as docs/store.md describes under key, for message m. */
static void forge_row(struct store *s, uint64_t id, const uint8_t key[32],
                      const struct store_message *m, const char *plain)
{
	uint8_t header[72 + 12] = {0}, ad[512], sealed[256];
	randombytes_buf(header + 72, 12);
	size_t ad_len = store_doc_ad(ad, m);
	size_t len = strlen(plain);
	assert_true(len + 16 <= sizeof(sealed));
	store_doc_gcm_seal(key, header + 72, ad, ad_len, (const uint8_t *)plain, len, sealed);
	store_set_sealed(s, id, header, sizeof(header), sealed, len + 16, 2);
}

/* A send that stores nothing (a resend, a refusal) keeps no data key. */
static void test_refused_sends_keep_no_key(void **state)
{
	struct fx *f = *state;
	struct store *s = fx_open(f);
	struct store_message m = fx_msg("police-a", "m-1", "nhs-b", "first");
	assert_int_equal(send_sync(s, &m, NULL), 0);
	assert_int_equal(store_test_keys_kept(s), 1);
	assert_int_equal(send_sync(s, &m, NULL), 0); /* the same again: a duplicate */
	assert_int_equal(store_test_keys_kept(s), 1);
	m = fx_msg("police-a", "m-1", "nhs-b", "other");
	assert_int_equal(send_sync(s, &m, NULL), ISG_ERR_CONFLICT);
	assert_int_equal(store_test_keys_kept(s), 1);
	assert_int_equal(fetch_count(s, "nhs-b"), 1);
	assert_int_equal(store_test_keys_kept(s), 0);
}

/* The slot of message id's data key, from its stored wrapping. */
static size_t kept_slot_of_message(struct fx *f, uint64_t id)
{
	sqlite3 *db = db_ro(f);
	sqlite3_stmt *st = NULL;
	assert_int_equal(
	    sqlite3_prepare_v2(db, "SELECT nonce FROM messages WHERE id = ?1", -1, &st, NULL),
	    SQLITE_OK);
	sqlite3_bind_int64(st, 1, (int64_t)id);
	assert_int_equal(sqlite3_step(st), SQLITE_ROW);
	assert_true(sqlite3_column_bytes(st, 0) >= STORE_WRAPPED_KEY_LEN);
	size_t slot = kept_slot_of(sqlite3_column_blob(st, 0));
	sqlite3_finalize(st);
	sqlite3_close(db);
	return slot;
}

/* A message that expires unfetched has its kept data key wiped by the sweep. */
static void test_expired_messages_keep_no_key(void **state)
{
	struct fx *f = *state;
	struct store *s = fx_open_with(f, 20, 0);
	struct store_message m = fx_msg("police-a", "short", "nhs-b", "goes");
	m.ttl_ms = 1000; /* as in test_expiry: both sends finish first */
	struct store_receipt r;
	assert_int_equal(send_sync(s, &m, &r), 0);
	struct store_message keep = fx_msg("police-a", "long", "nhs-b", "stays");
	struct store_receipt rk;
	assert_int_equal(send_sync(s, &keep, &rk), 0);
	/* One in 2,048 times the second key takes the first's slot. */
	bool apart =
	    kept_slot_of_message(f, r.gateway_id) != kept_slot_of_message(f, rk.gateway_id);
	assert_int_equal(store_test_keys_kept(s), apart ? 2 : 1);
	int64_t st = 0;
	for (int i = 0; i < 1000 && st != 3; i++) {
		sleep_ms(10);
		st = db_int(f, "SELECT state FROM messages WHERE id = ?1", (int64_t)r.gateway_id);
	}
	assert_int_equal(st, 3);
	assert_int_equal(store_test_keys_kept(s), 1);
	assert_int_equal(fetch_count(s, "nhs-b"), 1);
	assert_int_equal(store_test_keys_kept(s), 0);
}

/* A message acknowledged without a fetch has its kept data key wiped. */
static void test_acked_unfetched_keeps_no_key(void **state)
{
	struct fx *f = *state;
	struct store *s = fx_open(f);
	struct store_message m = fx_msg("police-a", "m-1", "nhs-b", "never fetched");
	struct store_receipt r;
	assert_int_equal(send_sync(s, &m, &r), 0);
	assert_int_equal(store_test_keys_kept(s), 1);
	uint32_t acked = 0;
	size_t n_unknown = 0;
	assert_int_equal(ack_sync(s, "nhs-b", &r.gateway_id, 1, &acked, NULL, &n_unknown), 0);
	assert_int_equal(acked, 1);
	assert_int_equal(store_test_keys_kept(s), 0);
}

/*
 * An acknowledgement after a message's expiry, before the sweep marks it,
 * finds it expired, as a fetch would: it stays for the sweep to record.
 */
static void test_ack_after_expiry_is_unknown(void **state)
{
	struct fx *f = *state;
	struct store *s = fx_open_with(f, 3600 * 1000, 0); /* no sweep during the test */
	struct store_message m = fx_msg("police-a", "m-1", "nhs-b", "expires");
	m.ttl_ms = 1000; /* the send finishes first, on a busy disk */
	struct store_receipt r;
	assert_int_equal(send_sync(s, &m, &r), 0);
	sleep_ms(1100);
	assert_int_equal(fetch_count(s, "nhs-b"), 0);
	uint32_t acked = 7;
	uint64_t unknown[1];
	size_t n_unknown = 0;
	assert_int_equal(ack_sync(s, "nhs-b", &r.gateway_id, 1, &acked, unknown, &n_unknown), 0);
	assert_int_equal(acked, 0);
	assert_int_equal(n_unknown, 1);
	assert_int_equal(unknown[0], r.gateway_id);
	assert_int_equal(
	    db_int(f, "SELECT state FROM messages WHERE id = ?1", (int64_t)r.gateway_id), 0);
	assert_int_equal(
	    db_int(f, "SELECT count(*) FROM audit WHERE kind = 'message.acknowledged'", 0), 0);
}

/*
 * A wrapping of zeros, which d29569b took for an empty slot of kept keys,
 * opens nothing: not under a key of zeros (a slot's after its key was
 * taken), nor under libsodium's fill of fresh guarded memory (one never used).
 */
static void test_zero_wrapping_opens_nothing(void **state)
{
	struct fx *f = *state;
	struct store *s = fx_open(f);
	struct store_message m = fx_msg("police-a", "m-1", "nhs-b", "real");
	struct store_receipt r;
	assert_int_equal(send_sync(s, &m, &r), 0);
	uint8_t key[32];
	memset(key, 0xdb, sizeof(key)); /* first: a fetch that took the slot's key wipes it */
	forge_row(s, r.gateway_id, key, &m, "forged");
	assert_int_equal(fetch_count(s, "nhs-b"), 0);
	memset(key, 0, sizeof(key));
	forge_row(s, r.gateway_id, key, &m, "forged");
	assert_int_equal(fetch_count(s, "nhs-b"), 0);
	assert_int_equal(db_int(f, "SELECT state FROM messages", 0), 0);
}

/* More messages than one batch of data keys: each has its own, all open. */
static void test_data_keys_per_message(void **state)
{
	struct fx *f = *state;
	struct store *s = fx_open(f);
	enum { N = 150 };
	send_numbered(s, N);
	assert_int_equal(db_int(f, "SELECT count(DISTINCT substr(nonce, 1, 72)) FROM messages", 0),
	                 N);
	fetch_numbered(s, N);
}

/* Acknowledge n messages of nhs-b, the only ones in the store: every
 * payload, in its row or apart, is gone, and secure_delete is back at ON. */
static void ack_all_gone(struct fx *f, const uint64_t *ids, size_t n)
{
	uint32_t acked = 0;
	size_t n_unknown = 0;
	assert_int_equal(ack_sync(f->s, "nhs-b", ids, n, &acked, NULL, &n_unknown), 0);
	assert_int_equal(acked, n);
	assert_int_equal(db_int(f, "SELECT count(*) FROM payloads", 0), 0);
	assert_int_equal(db_int(f, "SELECT count(payload) FROM messages", 0), 0);
	assert_secure_delete_on(f->s);
}

static void test_empty_and_large_payloads(void **state)
{
	struct fx *f = *state;
	struct store *s = fx_open(f);
	struct store_message empty = fx_msg("police-a", "empty", "nhs-b", "");
	empty.payload = NULL;
	assert_int_equal(send_sync(s, &empty, NULL), 0);
	size_t big_len = 3 * 1024 * 1024;
	uint8_t *big = malloc(big_len);
	assert_non_null(big);
	randombytes_buf(big, big_len);
	struct store_message large = fx_msg("police-a", "large", "nhs-b", "");
	large.payload = big;
	large.payload_len = big_len;
	assert_int_equal(send_sync(s, &large, NULL), 0);
	/* The large one is kept apart, in payloads; the empty one in its row. */
	assert_int_equal(db_int(f,
	                        "SELECT count(*) FROM payloads JOIN messages USING (id)"
	                        " WHERE message_id = 'large' AND payload IS NULL",
	                        0),
	                 1);
	assert_int_equal(
	    db_int(f, "SELECT length(payload) FROM messages WHERE message_id = 'empty'", 0), 16);
	struct store_fetch_result *res = NULL;
	assert_int_equal(fetch_sync(s, "nhs-b", 0, 10, &res), 0);
	assert_int_equal(res->n, 2);
	assert_int_equal(res->items[0].payload_len, 0);
	assert_int_equal(res->items[1].payload_len, big_len);
	assert_memory_equal(res->items[1].payload, big, big_len);
	uint64_t ids[2] = {res->items[0].gateway_id, res->items[1].gateway_id};
	store_fetch_result_free(res);
	free(big);
	ack_all_gone(f, ids, 2);
}

/* A sealed payload of 3584 bytes or more (3568 of plaintext) is kept
 * apart, in payloads; one a byte shorter in its message's row. Both open,
 * and both go when acknowledged. */
static void test_where_payloads_are_kept(void **state)
{
	struct fx *f = *state;
	struct store *s = fx_open(f);
	static uint8_t plain[3568];
	randombytes_buf(plain, sizeof(plain));
	struct store_message row = fx_msg("police-a", "row", "nhs-b", "");
	struct store_message apart = fx_msg("police-a", "apart", "nhs-b", "");
	row.payload = plain;
	row.payload_len = sizeof(plain) - 1;
	apart.payload = plain;
	apart.payload_len = sizeof(plain);
	struct store_receipt rr, ra;
	assert_int_equal(send_sync(s, &row, &rr), 0);
	assert_int_equal(send_sync(s, &apart, &ra), 0);
	assert_int_equal(
	    db_int(f, "SELECT length(payload) FROM messages WHERE id = ?1", (int64_t)rr.gateway_id),
	    3583);
	assert_int_equal(
	    db_int(f, "SELECT payload FROM messages WHERE id = ?1", (int64_t)ra.gateway_id), -2);
	assert_int_equal(
	    db_int(f, "SELECT length(data) FROM payloads WHERE id = ?1", (int64_t)ra.gateway_id),
	    3584);
	assert_int_equal(db_int(f, "SELECT count(*) FROM payloads", 0), 1);
	struct store_fetch_result *res = NULL;
	assert_int_equal(fetch_sync(s, "nhs-b", 0, 10, &res), 0);
	assert_int_equal(res->n, 2);
	assert_int_equal(res->items[0].payload_len, sizeof(plain) - 1);
	assert_memory_equal(res->items[0].payload, plain, sizeof(plain) - 1);
	assert_int_equal(res->items[1].payload_len, sizeof(plain));
	assert_memory_equal(res->items[1].payload, plain, sizeof(plain));
	store_fetch_result_free(res);
	uint64_t ids[2] = {rr.gateway_id, ra.gateway_id};
	ack_all_gone(f, ids, 2);
}

static void noop_send(void *ctx, int err, const struct store_receipt *r)
{
	(void)ctx;
	(void)err;
	(void)r;
}

static void test_submit_validation(void **state)
{
	struct fx *f = *state;
	struct store *s = fx_open(f);
	struct store_message m = fx_msg("police-a", "v", "nhs-b", "x");
	struct store_message bad = m;
	bad.sender = NULL;
	assert_int_equal(store_send(s, &bad, noop_send, NULL), ISG_ERR_INVALID);
	bad = m;
	bad.message_id = "";
	assert_int_equal(store_send(s, &bad, noop_send, NULL), ISG_ERR_INVALID);
	bad = m;
	bad.ttl_ms = 0;
	assert_int_equal(store_send(s, &bad, noop_send, NULL), ISG_ERR_INVALID);
	bad = m;
	bad.audit_entry = NULL;
	assert_int_equal(store_send(s, &bad, noop_send, NULL), ISG_ERR_INVALID);
	bad = m;
	bad.payload_len = 64u * 1024 * 1024 + 1; /* refused before it is read */
	assert_int_equal(store_send(s, &bad, noop_send, NULL), ISG_ERR_TOO_BIG);
	char long_id[2048];
	memset(long_id, 'x', sizeof(long_id) - 1);
	long_id[sizeof(long_id) - 1] = '\0';
	bad = m;
	bad.recipient = long_id;
	assert_int_equal(store_send(s, &bad, noop_send, NULL), ISG_ERR_INVALID);
	assert_int_equal(store_send(s, &m, NULL, NULL), ISG_ERR_INVALID);
	assert_int_equal(store_audit(s, "", "{}", 2, NULL, NULL), ISG_ERR_INVALID);
	/* Entry bodies: one JSON object starting with its event, nothing around it. */
	static const char *const bad_bodies[] = {
	    "",
	    "{}",
	    "{\"event\":\"other.kind\"}",
	    "{\"event\":\"test.kind.more\"}",
	    "{\"rule\":\"x\",\"event\":\"test.kind\"}",
	    "{\"event\": \"test.kind\"}",
	    "{\"event\":\"test.kind\",\"a\":1} ",
	    "{\"event\":\"test.kind\"}{\"b\":2}",
	    "{\"event\":\"test.kind\",\"a\":[1}",
	    "{\"event\":\"test.kind\",\"a\":\"unterminated}",
	    "{\"event\":\"test.kind\",\"a\":\"tab\there\"}",
	    "{\"event\":\"test.kind\",\"a\":\"\xff\"}",
	    "{\"event\":\"test.kind\",\n\"a\":1}",
	};
	for (size_t i = 0; i < ARRAY_LEN(bad_bodies); i++)
		if (store_audit(s, "test.kind", bad_bodies[i], strlen(bad_bodies[i]), NULL, NULL) !=
		    ISG_ERR_INVALID)
			fail_msg("body %zu accepted", i);
	static const char *const good_bodies[] = {
	    "{\"event\":\"test.kind\"}",
	    "{\"event\":\"test.kind\",\"s\":\"a b\\\"}{ "
	    "\\\\\",\"n\":[1,{\"x\":[]}],\"u\":\"\xc3\xa9\"}",
	};
	uint64_t seq = 0;
	for (size_t i = 0; i < ARRAY_LEN(good_bodies); i++)
		assert_int_equal(audit_sync(s, "test.kind", good_bodies[i], &seq), 0);
	/* Long strings are checked eight bytes at a time: what matters in them
	 * (a control byte, a quote, a backslash) counts at every offset. */
	for (size_t at = 0; at < 24; at++) {
		static const struct {
			const char *insert;
			bool ok;
		} cases[] = {{"\t", false},  {"\x01", false},    {"\\\"", true},  {"\\\\", true},
		             {"\"", false},  {"\xc3\xa9", true}, {"\x1f", false}, {" ", true},
		             {"\x7f", true}, {"\\", true}};
		for (size_t k = 0; k < ARRAY_LEN(cases); k++) {
			char body[128];
			snprintf(body, sizeof(body),
			         "{\"event\":\"test.kind\",\"s\":\"%.*s%s%.*s\"}", (int)at,
			         "abcdefghijklmnopqrstuvwxyz", cases[k].insert, (int)(23 - at),
			         "ABCDEFGHIJKLMNOPQRSTUVWXYZ");
			/* A lone backslash escapes what follows: the closing quote at 23. */
			bool ok = cases[k].ok && !(k == ARRAY_LEN(cases) - 1 && at == 23);
			int rc = ok ? audit_sync(s, "test.kind", body, &seq)
			            : store_audit(s, "test.kind", body, strlen(body), NULL, NULL);
			if ((rc == 0) != ok)
				fail_msg("insert %zu at %zu: %d", k, at, rc);
		}
	}
	/* A kind that would need escaping, and a send whose entry is not message.accepted. */
	const char *quoted = "{\"event\":\"a\\\"b\"}";
	assert_int_equal(store_audit(s, "a\"b", quoted, strlen(quoted), NULL, NULL),
	                 ISG_ERR_INVALID);
	bad = m;
	bad.audit_entry = "{\"event\":\"message.refused\"}";
	bad.audit_len = strlen(bad.audit_entry);
	assert_int_equal(store_send(s, &bad, noop_send, NULL), ISG_ERR_INVALID);
	/* Optional strings may be NULL. */
	struct store_message minimal = m;
	minimal.agreement_id = NULL;
	minimal.purpose = NULL;
	minimal.dataset = NULL;
	assert_int_equal(send_sync(s, &minimal, NULL), 0);
	struct store_fetch_result *res = NULL;
	assert_int_equal(fetch_sync(s, "nhs-b", 0, 10, &res), 0);
	assert_int_equal(res->n, 1);
	assert_string_equal(res->items[0].purpose, "");
	store_fetch_result_free(res);
	assert_int_equal(db_int(f, "SELECT count(*) FROM audit", 0), 4 + 24 * 5 + 23);
}

int main(void)
{
	if (sodium_init() < 0)
		return 1;
	log_set_level(LOG_WARN);
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_round_trip, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(test_audit_entries_written, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(test_payload_sealed_on_disk, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(test_seal_headers, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(test_data_keys_per_message, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(test_sealer_failures, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(test_data_keys_kept_for_first_fetch, fx_setup,
	                                    fx_teardown),
	    cmocka_unit_test_setup_teardown(test_refused_sends_keep_no_key, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(test_acked_unfetched_keeps_no_key, fx_setup,
	                                    fx_teardown),
	    cmocka_unit_test_setup_teardown(test_ack_after_expiry_is_unknown, fx_setup,
	                                    fx_teardown),
	    cmocka_unit_test_setup_teardown(test_expired_messages_keep_no_key, fx_setup,
	                                    fx_teardown),
	    cmocka_unit_test_setup_teardown(test_zero_wrapping_opens_nothing, fx_setup,
	                                    fx_teardown),
	    cmocka_unit_test_setup_teardown(test_duplicate_send, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(test_send_admission, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(test_admission_given_back_with_its_batch, fx_setup,
	                                    fx_teardown),
	    cmocka_unit_test_setup_teardown(test_refuse_send, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(test_conflicting_send, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(test_reply_to_rules, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(test_refusals_found_are_recorded, fx_setup,
	                                    fx_teardown),
	    cmocka_unit_test_setup_teardown(test_no_id_twice_after_a_restore, fx_setup,
	                                    fx_teardown),
	    cmocka_unit_test_setup_teardown(test_id_skips_do_not_add_up, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(test_pause_holds_the_writer_between_batches, fx_setup,
	                                    fx_teardown),
	    cmocka_unit_test_setup_teardown(test_found_refusal_rolled_back_with_its_batch, fx_setup,
	                                    fx_teardown),
	    cmocka_unit_test_setup_teardown(test_ack_rules, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(test_fetch_cursor, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(test_fetch_many, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(test_fetch_within_bytes, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(test_fetch_within_sink, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(test_watch_deleted, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(test_watch_replaced, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(test_expiry, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(test_expired_not_fetchable_before_sweep, fx_setup,
	                                    fx_teardown),
	    cmocka_unit_test_setup_teardown(test_failed_sweep_waits_for_its_interval, fx_setup,
	                                    fx_teardown),
	    cmocka_unit_test_setup_teardown(test_long_sweep_interval, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(test_full_disk_at_open_says_so, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(test_open_reads_the_log_before_the_writer_starts,
	                                    fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(test_durable_across_reopen, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(test_secure_delete_not_left_fast, fx_setup,
	                                    fx_teardown),
	    cmocka_unit_test_setup_teardown(test_changed_fields_do_not_open, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(test_ad_column_names_the_associated_data, fx_setup,
	                                    fx_teardown),
	    cmocka_unit_test_setup_teardown(test_moved_payload_does_not_open, fx_setup,
	                                    fx_teardown),
	    cmocka_unit_test_setup_teardown(test_empty_and_large_payloads, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(test_where_payloads_are_kept, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(test_submit_validation, fx_setup, fx_teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
