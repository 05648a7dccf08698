/*
 * store: group commit from many threads, one job's failure not sinking the
 * batch, failed commits and a full disk, close draining the queue, and files
 * that are not ISG stores refused without being touched.
 */
#include "store_test_util.h"

#include <fcntl.h>

#define THREADS 4
#define PER_THREAD 125
#define TOTAL (THREADS * PER_THREAD)

/* --- group commit ---------------------------------------------------------------- */

struct gc_shared {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int calls[TOTAL];
	int errs[TOTAL];
	uint64_t ids[TOTAL];
	uint64_t audit[TOTAL];
	int done;
	int notify_calls;
	char notified[4][16];
};

struct gc_slot {
	struct gc_shared *sh;
	int index;
};

struct gc_thread {
	struct store *s;
	struct gc_shared *sh;
	struct gc_slot *slots;
	int first;
	int submit_errors;
};

static void gc_cb(void *ctx, int err, const struct store_receipt *r)
{
	struct gc_slot *slot = ctx;
	struct gc_shared *sh = slot->sh;
	pthread_mutex_lock(&sh->mu);
	sh->calls[slot->index]++;
	sh->errs[slot->index] = err;
	if (r) {
		sh->ids[slot->index] = r->gateway_id;
		sh->audit[slot->index] = r->audit_index;
	}
	sh->done++;
	pthread_cond_broadcast(&sh->cv);
	pthread_mutex_unlock(&sh->mu);
}

static void gc_notify(void *ctx, const char *recipient)
{
	struct gc_shared *sh = ctx;
	pthread_mutex_lock(&sh->mu);
	if (sh->notify_calls < 4)
		str_copy(sh->notified[sh->notify_calls], recipient, sizeof(sh->notified[0]));
	sh->notify_calls++;
	pthread_mutex_unlock(&sh->mu);
}

static void *gc_sender(void *arg)
{
	struct gc_thread *t = arg;
	for (int i = t->first; i < t->first + PER_THREAD; i++) {
		char mid[32], body[32];
		snprintf(mid, sizeof(mid), "msg-%05d", i);
		snprintf(body, sizeof(body), "body %d", i);
		/* Two recipients, so notify must fire once per recipient. */
		struct store_message m =
		    fx_msg("police-a", mid, i % 2 ? "nhs-b" : "council-c", body);
		t->slots[i].sh = t->sh;
		t->slots[i].index = i;
		if (store_send(t->s, &m, gc_cb, &t->slots[i]) != 0)
			t->submit_errors++;
	}
	return NULL;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

/* Submit TOTAL sends from THREADS threads; returns commits taken. */
static uint64_t gc_run(struct fx *f, struct store *s, bool paused, struct gc_shared *sh)
{
	static struct gc_slot slots[TOTAL];
	struct gc_thread t[THREADS];
	pthread_t th[THREADS];
	uint64_t commits_before = store_test_commits(s);
	store_set_notify(s, gc_notify, sh);
	if (paused)
		store_test_pause(s, true);
	for (int i = 0; i < THREADS; i++) {
		t[i] =
		    (struct gc_thread){.s = s, .sh = sh, .slots = slots, .first = i * PER_THREAD};
		assert_int_equal(pthread_create(&th[i], NULL, gc_sender, &t[i]), 0);
	}
	for (int i = 0; i < THREADS; i++) {
		pthread_join(th[i], NULL);
		assert_int_equal(t[i].submit_errors, 0);
	}
	if (paused)
		store_test_pause(s, false);
	pthread_mutex_lock(&sh->mu);
	while (sh->done < TOTAL)
		pthread_cond_wait(&sh->cv, &sh->mu);
	pthread_mutex_unlock(&sh->mu);
	uint64_t commits = store_test_commits(s) - commits_before;

	/* Every callback exactly once, each with its own id. */
	uint64_t sorted[TOTAL];
	for (int i = 0; i < TOTAL; i++) {
		assert_int_equal(sh->calls[i], 1);
		assert_int_equal(sh->errs[i], 0);
		sorted[i] = sh->ids[i];
	}
	qsort(sorted, TOTAL, sizeof(sorted[0]), cmp_u64);
	for (int i = 1; i < TOTAL; i++)
		assert_true(sorted[i] > sorted[i - 1]);
	/* Audit indexes distinct too, and the log has no gaps. */
	for (int i = 0; i < TOTAL; i++)
		sorted[i] = sh->audit[i];
	qsort(sorted, TOTAL, sizeof(sorted[0]), cmp_u64);
	assert_int_equal(sorted[0], 1);
	assert_int_equal(sorted[TOTAL - 1], TOTAL);
	char kinds[TOTAL * 20];
	db_audit_kinds(f, kinds, sizeof(kinds));
	assert_int_equal(db_int(f, "SELECT count(*) FROM messages", 0), TOTAL);
	return commits;
}

static struct gc_shared *gc_shared_new(void)
{
	struct gc_shared *sh = calloc(1, sizeof(*sh));
	assert_non_null(sh);
	pthread_mutex_init(&sh->mu, NULL);
	pthread_cond_init(&sh->cv, NULL);
	return sh;
}

static void gc_shared_free(struct gc_shared *sh)
{
	pthread_cond_destroy(&sh->cv);
	pthread_mutex_destroy(&sh->mu);
	free(sh);
}

static void test_group_commit_batches(void **state)
{
	struct fx *f = *state;
	struct store *s = fx_open(f);
	struct gc_shared *sh = gc_shared_new();
	/* Held writer: everything queued lands in one transaction (max_batch 512). */
	uint64_t commits = gc_run(f, s, true, sh);
	assert_true(commits < TOTAL);
	assert_true(commits <= 2);
	/* One notification per recipient for the batch. */
	fx_close(f); /* the writer is joined: notify_calls is final */
	assert_int_equal(sh->notify_calls, 2);
	assert_true(
	    (strcmp(sh->notified[0], "nhs-b") == 0 && strcmp(sh->notified[1], "council-c") == 0) ||
	    (strcmp(sh->notified[0], "council-c") == 0 && strcmp(sh->notified[1], "nhs-b") == 0));
	gc_shared_free(sh);
}

static void test_group_commit_small_batches(void **state)
{
	struct fx *f = *state;
	struct store *s = fx_open_with(f, 0, 64);
	struct gc_shared *sh = gc_shared_new();
	uint64_t commits = gc_run(f, s, true, sh);
	/* 500 jobs, at most 64 per commit. */
	assert_true(commits >= (TOTAL + 63) / 64);
	assert_true(commits <= (TOTAL + 63) / 64 + 1);
	fx_close(f);
	gc_shared_free(sh);
}

static void test_group_commit_live(void **state)
{
	struct fx *f = *state;
	struct store *s = fx_open(f);
	struct gc_shared *sh = gc_shared_new();
	/* The writer runs while four threads submit: exactly-once still holds. */
	uint64_t commits = gc_run(f, s, false, sh);
	assert_true(commits >= 1 && commits <= TOTAL);
	print_message("live: %d sends in %" PRIu64 " commits\n", TOTAL, commits);
	fx_close(f);
	gc_shared_free(sh);
}

/* --- one job's failure, commit failure, full disk ---------------------------------------- */

static void test_failed_job_does_not_sink_batch(void **state)
{
	struct fx *f = *state;
	struct store *s = fx_open(f);
	struct store_message first = fx_msg("police-a", "m-1", "nhs-b", "one");
	assert_int_equal(send_sync(s, &first, NULL), 0);

	struct wait w[4];
	struct store_message ok1 = fx_msg("police-a", "m-2", "nhs-b", "two");
	struct store_message conflict = fx_msg("police-a", "m-1", "nhs-b", "changed");
	struct store_message bad_reply = fx_msg("nhs-b", "r-1", "police-a", "re");
	bad_reply.reply_to = 777;
	struct store_message ok2 = fx_msg("police-a", "m-3", "nhs-b", "three");
	const struct store_message *ms[4] = {&ok1, &conflict, &bad_reply, &ok2};
	uint64_t commits = store_test_commits(s);
	store_test_pause(s, true);
	for (int i = 0; i < 4; i++) {
		wait_init(&w[i]);
		assert_int_equal(store_send(s, ms[i], on_send, &w[i]), 0);
	}
	store_test_pause(s, false);
	assert_int_equal(wait_for(&w[0]), 0);
	assert_int_equal(wait_for(&w[1]), ISG_ERR_CONFLICT);
	assert_int_equal(wait_for(&w[2]), ISG_ERR_NOT_FOUND);
	assert_int_equal(wait_for(&w[3]), 0);
	for (int i = 0; i < 4; i++)
		assert_false(w[i].bad);
	assert_int_equal(store_test_commits(s) - commits, 1);
	assert_int_equal(fetch_count(s, "nhs-b"), 3);
	/* The audit log has no hole where the failed jobs' savepoints were rolled back. */
	char kinds[512];
	db_audit_kinds(f, kinds, sizeof(kinds));
	assert_int_equal(w[3].receipt.audit_index, w[0].receipt.audit_index + 1);
}

static void test_commit_failure_reports_nothing_stored(void **state)
{
	struct fx *f = *state;
	struct store *s = fx_open(f);
	struct store_message before = fx_msg("police-a", "m-0", "nhs-b", "zero");
	assert_int_equal(send_sync(s, &before, NULL), 0);

	/* Two sends and an audit entry in one batch whose COMMIT fails. */
	struct wait w[3];
	struct store_message a = fx_msg("police-a", "m-1", "nhs-b", "one");
	struct store_message b = fx_msg("council-c", "m-1", "nhs-b", "two");
	store_test_pause(s, true);
	store_test_fail_next_commit(s);
	wait_init(&w[0]);
	wait_init(&w[1]);
	wait_init(&w[2]);
	assert_int_equal(store_send(s, &a, on_send, &w[0]), 0);
	assert_int_equal(store_send(s, &b, on_send, &w[1]), 0);
	const char *refused = "{\"event\":\"message.refused\"}";
	assert_int_equal(
	    store_audit(s, "message.refused", refused, strlen(refused), on_audit, &w[2]), 0);
	store_test_pause(s, false);
	assert_int_equal(wait_for(&w[0]), ISG_ERR_STORE);
	assert_int_equal(wait_for(&w[1]), ISG_ERR_STORE);
	assert_int_equal(wait_for(&w[2]), ISG_ERR_STORE);
	assert_false(w[0].bad);
	assert_false(w[1].bad);
	assert_int_equal(w[2].seq, 0);
	assert_int_equal(db_int(f, "SELECT count(*) FROM messages", 0), 1);
	assert_int_equal(db_int(f, "SELECT count(*) FROM audit", 0), 1);

	/* The store carries on: the same sends now succeed, as new messages. */
	struct store_receipt r;
	assert_int_equal(send_sync(s, &a, &r), 0);
	assert_false(r.duplicate);
	assert_int_equal(r.audit_index, 2);
	assert_int_equal(send_sync(s, &b, &r), 0);
	assert_false(r.duplicate);
	assert_int_equal(fetch_count(s, "nhs-b"), 3);
	char kinds[512];
	db_audit_kinds(f, kinds, sizeof(kinds));
}

/*
 * A COMMIT whose WAL sync fails after its frames were written may be on
 * disk: WAL recovery at the next open replays them. Its jobs hear
 * ISG_ERR_UNKNOWN, the jobs behind it ISG_ERR_CLOSED, and the store takes
 * no more; reopened, it has the batch, and a resend is a duplicate.
 */
static void test_commit_of_unknown_outcome_stops_the_store(void **state)
{
	struct fx *f = *state;
	struct store *s = fx_open_with(f, 0, 2);
	struct store_message before = fx_msg("police-a", "m-0", "nhs-b", "zero");
	assert_int_equal(send_sync(s, &before, NULL), 0);
	assert_false(store_failed(s));

	/* A send and an audit entry in the batch whose sync fails, a send behind them. */
	struct wait w[3];
	struct store_message a = fx_msg("police-a", "m-1", "nhs-b", "one");
	struct store_message b = fx_msg("police-a", "m-2", "nhs-b", "two");
	const char *refused = "{\"event\":\"message.refused\"}";
	store_test_pause(s, true);
	for (int i = 0; i < 3; i++)
		wait_init(&w[i]);
	assert_int_equal(store_send(s, &a, on_send, &w[0]), 0);
	assert_int_equal(
	    store_audit(s, "message.refused", refused, strlen(refused), on_audit, &w[1]), 0);
	assert_int_equal(store_send(s, &b, on_send, &w[2]), 0);
	store_test_fail_wal_syncs(1);
	store_test_pause(s, false);
	assert_int_equal(wait_for(&w[0]), ISG_ERR_UNKNOWN);
	assert_int_equal(wait_for(&w[1]), ISG_ERR_UNKNOWN);
	assert_int_equal(wait_for(&w[2]), ISG_ERR_CLOSED);
	store_test_fail_wal_syncs(0);
	assert_true(store_failed(s));
	/* No more work, and nothing written for it. */
	assert_int_equal(store_send(s, &b, on_send, &w[2]), ISG_ERR_CLOSED);
	assert_int_equal(store_audit(s, "message.refused", refused, strlen(refused), NULL, NULL),
	                 ISG_ERR_CLOSED);

	/* Closed without a checkpoint, then opened: recovery replays the batch. */
	fx_close(f);
	s = fx_open(f);
	assert_false(store_failed(s));
	assert_int_equal(db_int(f, "SELECT count(*) FROM messages", 0), 2);
	assert_int_equal(db_int(f, "SELECT count(*) FROM audit", 0), 3);
	struct store_receipt r;
	assert_int_equal(send_sync(s, &a, &r), 0);
	assert_true(r.duplicate);
	assert_int_equal(r.audit_index, 2);
	assert_int_equal(send_sync(s, &b, &r), 0);
	assert_false(r.duplicate);
	assert_int_equal(fetch_count(s, "nhs-b"), 3);
}

/*
 * A full disk fails a batch and its jobs run alone; when the first lone
 * commit's sync fails, the store has failed and the next job must not be
 * committed over it and reported stored.
 */
static void test_no_lone_commit_after_the_store_failed(void **state)
{
	struct fx *f = *state;
	struct store *s = fx_open_with(f, 0, 2);
	struct store_message a = fx_msg("police-a", "m-1", "nhs-b", "one");
	struct store_message b = fx_msg("police-a", "m-2", "nhs-b", "two");
	struct wait w[2];
	wait_init(&w[0]);
	wait_init(&w[1]);
	store_test_pause(s, true);
	assert_int_equal(store_send(s, &a, on_send, &w[0]), 0);
	assert_int_equal(store_send(s, &b, on_send, &w[1]), 0);
	store_test_full_commits(s, 1); /* the batch's */
	store_test_fail_wal_syncs(1);  /* then a's, alone */
	store_test_pause(s, false);
	assert_int_equal(wait_for(&w[0]), ISG_ERR_UNKNOWN);
	assert_int_equal(wait_for(&w[1]), ISG_ERR_CLOSED);
	store_test_fail_wal_syncs(0);
	assert_true(store_failed(s));
	fx_close(f);
	s = fx_open(f);
	assert_int_equal(db_int(f, "SELECT count(*) FROM messages WHERE message_id = 'm-2'", 0), 0);
}

/*
 * A failed batch whose ROLLBACK fails too leaves its transaction open.
 * The next batch rolls it back before it begins (BEGIN inside it would
 * fail, and the next batch with it); nothing of the failed batch is kept.
 */
static void test_failed_rollback_does_not_fail_the_next_batch(void **state)
{
	struct fx *f = *state;
	struct store *s = fx_open(f);
	/* The ack's batch fails (secure_delete stays FAST), then its ROLLBACK. */
	fx_fail_ack_of_kept_apart(s, 1, true);
	struct store_message next = fx_msg("police-a", "m-2", "nhs-b", "two");
	assert_int_equal(send_sync(s, &next, NULL), 0);
	assert_int_equal(db_int(f, "SELECT count(*) FROM payloads", 0), 1);
	assert_int_equal(db_int(f, "SELECT max(state) FROM messages", 0), 0);
	assert_int_equal(fetch_count(s, "nhs-b"), 2);
}

static void test_fetch_in_failed_commit_is_not_delivered(void **state)
{
	struct fx *f = *state;
	struct store *s = fx_open(f);
	struct store_message m = fx_msg("police-a", "m-1", "nhs-b", "one");
	assert_int_equal(send_sync(s, &m, NULL), 0);
	store_test_fail_next_commit(s);
	struct store_fetch_result *res = NULL;
	assert_int_equal(fetch_sync(s, "nhs-b", 0, 10, &res), ISG_ERR_STORE);
	/* No result: nothing handed out, nothing read to go on after. */
	assert_int_equal(res->n, 0);
	assert_int_equal(res->scanned_to, 0);
	store_fetch_result_free(res);
	/* Likewise when the fetch stopped at its max. */
	struct store_message m2 = fx_msg("police-a", "m-2", "nhs-b", "two");
	assert_int_equal(send_sync(s, &m2, NULL), 0);
	store_test_fail_next_commit(s);
	assert_int_equal(fetch_sync(s, "nhs-b", 0, 1, &res), ISG_ERR_STORE);
	assert_int_equal(res->n, 0);
	assert_int_equal(res->scanned_to, 0);
	assert_false(res->more);
	store_fetch_result_free(res);
	assert_int_equal(db_int(f, "SELECT max(state) FROM messages", 0), 0);
	assert_int_equal(db_int(f, "SELECT count(*) FROM audit", 0), 2);
	assert_int_equal(fetch_count(s, "nhs-b"), 2);
	assert_int_equal(db_int(f, "SELECT min(state) FROM messages", 0), 1);
}

static void test_disk_full_then_recovers(void **state)
{
	struct fx *f = *state;
	struct store *s = fx_open(f);
	struct store_message small = fx_msg("police-a", "m-0", "nhs-b", "zero");
	assert_int_equal(send_sync(s, &small, NULL), 0);
	/* No page may be added to the file any more: the next large message does not fit. */
	assert_int_equal(store_test_exec(s, "PRAGMA max_page_count = 1"), 0);
	size_t big_len = 256 * 1024;
	uint8_t *big = calloc(1, big_len);
	assert_non_null(big);
	struct store_message m = fx_msg("police-a", "m-big", "nhs-b", "");
	m.payload = big;
	m.payload_len = big_len;
	assert_int_equal(send_sync(s, &m, NULL), ISG_ERR_FULL);
	assert_int_equal(db_int(f, "SELECT count(*) FROM messages", 0), 1);
	assert_int_equal(db_int(f, "SELECT count(*) FROM audit", 0), 1);
	/* Space comes back. */
	assert_int_equal(store_test_exec(s, "PRAGMA max_page_count = 1073741823"), 0);
	struct store_receipt r;
	assert_int_equal(send_sync(s, &m, &r), 0);
	assert_false(r.duplicate);
	assert_int_equal(r.audit_index, 2);
	assert_int_equal(fetch_count(s, "nhs-b"), 2);
	free(big);
}

/*
 * A full disk fails a batch at its COMMIT, and each job runs again alone. A
 * fetch that read the batch's new message then reads nothing alone, the
 * send failing again: it must not report that message's id as read, for
 * the next message takes the same id and would be passed over.
 */
static void test_fetch_run_alone_forgets_the_failed_batch(void **state)
{
	struct fx *f = *state;
	struct store *s = fx_open(f);
	struct store_message m = fx_msg("police-a", "m-1", "nhs-b", "one");
	struct wait w[2];
	wait_init(&w[0]);
	wait_init(&w[1]);
	store_test_pause(s, true);
	assert_int_equal(store_send(s, &m, on_send, &w[0]), 0);
	assert_int_equal(store_fetch(s, "nhs-b", 0, 10, on_fetch, &w[1]), 0);
	store_test_full_commits(s, 2); /* the batch's, then the send's alone */
	store_test_pause(s, false);
	assert_int_equal(wait_for(&w[0]), ISG_ERR_FULL);
	assert_int_equal(wait_for(&w[1]), 0);
	assert_false(w[0].bad || w[1].bad);
	assert_int_equal(w[1].res->n, 0);
	assert_int_equal(w[1].res->scanned_to, 0);
	assert_false(w[1].res->more);
	uint64_t cursor = w[1].res->scanned_to;
	store_fetch_result_free(w[1].res);

	/* Space again: the message, sent anew, is found after that cursor. */
	struct store_receipt r;
	assert_int_equal(send_sync(s, &m, &r), 0);
	assert_false(r.duplicate);
	struct store_fetch_result *res = NULL;
	assert_int_equal(fetch_sync(s, "nhs-b", cursor, 10, &res), 0);
	assert_int_equal(res->n, 1);
	assert_int_equal(res->items[0].gateway_id, r.gateway_id);
	store_fetch_result_free(res);
}

/*
 * A full disk fails a batch of one job and the sweep that fell due with it:
 * the job, a resend that writes nothing, runs again alone and gets its
 * receipt, rather than an UNAVAILABLE the sweep's writes caused.
 */
static void test_one_job_beside_a_sweep_runs_alone(void **state)
{
	struct fx *f = *state;
	struct store *s = fx_open_with(f, 50, 0);
	struct store_message m = fx_msg("police-a", "m-1", "nhs-b", "one");
	struct store_receipt first, again = {0};
	assert_int_equal(send_sync(s, &m, &first), 0);
	store_test_pause(s, true);
	sleep_ms(120); /* the sweep is due when the writer goes on */
	struct wait w;
	wait_init(&w);
	int rc = store_send(s, &m, on_send, &w);
	store_test_full_commits(s, 1); /* the batch's: the resend and the sweep */
	store_test_pause(s, false);
	assert_int_equal(wait_receipt(&w, rc, &again), 0);
	assert_true(again.duplicate);
	assert_int_equal(again.gateway_id, first.gateway_id);
}

/* --- WAL checkpoints ------------------------------------------------------------------- */

static off_t file_size(const char *path)
{
	struct stat st;
	return stat(path, &st) == 0 ? st.st_size : -1;
}

/* Sends of 8 KiB, one after another; the store opened with wal_pages. */
static void wal_sends(struct fx *f, uint32_t wal_pages, int sends)
{
	char err[512] = "";
	struct store_options opt = {.path = f->path, .storage_key = f->key, .wal_pages = wal_pages};
	assert_int_equal(store_open(&opt, &f->s, err, sizeof(err)), 0);
	static uint8_t payload[8192];
	for (int i = 0; i < sends; i++) {
		char id[32];
		snprintf(id, sizeof(id), "m-%d", i);
		struct store_message m = fx_msg("police-a", id, "nhs-b", "");
		m.payload = payload;
		m.payload_len = sizeof(payload);
		assert_int_equal(send_sync(f->s, &m, NULL), 0);
	}
	assert_int_equal(db_int(f, "SELECT count(*) FROM messages", 0), sends);
}

/*
 * The checkpointer thread copies the WAL into the file while the store is
 * open: the file grows, and not because the writer did it (it copies only
 * once the WAL holds 2 x wal_pages, and waits for a checkpoint otherwise).
 */
static void test_wal_checkpointed_in_background(void **state)
{
	struct fx *f = *state;
	off_t before = file_size(f->path);
	wal_sends(f, 128, 100);
	for (int i = 0; i < 500 && store_test_wal_checkpoints(f->s) == 0; i++)
		usleep(10 * 1000);
	assert_true(store_test_wal_checkpoints(f->s) >= 1);
	assert_true(file_size(f->path) >= before + 50 * 8192);
}

/*
 * The WAL starts over instead of growing with every commit: 300 sends pass
 * some 2.4 MB through it, but with wal_pages 4 it starts over at 8 pages
 * once little is left to copy, and at 16 pages whatever is left.
 */
static void test_wal_stays_bounded(void **state)
{
	struct fx *f = *state;
	char wal[160];
	fx_path(f, wal, sizeof(wal), "-wal");
	wal_sends(f, 4, 300);
	/* Its header, and frames of a page and 24 bytes: at most the 16 of the
	 * bound and one commit's (some ten for these sends), never a second's. */
	assert_true(file_size(wal) <= 32 + (16 + 14) * (4096 + 24));
}

static uint32_t be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Where a WAL's frames end: at the first whose page is 0 or whose salts are not the header's. */
static off_t wal_frames_end(const char *wal)
{
	FILE *in = fopen(wal, "rb");
	assert_non_null(in);
	uint8_t hdr[32], fh[24];
	assert_int_equal(fread(hdr, 1, sizeof(hdr), in), sizeof(hdr));
	off_t frame = 24 + (off_t)be32(hdr + 8), at = 32;
	while (fseeko(in, at, SEEK_SET) == 0 && fread(fh, 1, sizeof(fh), in) == sizeof(fh) &&
	       be32(fh) != 0 && memcmp(fh + 8, hdr + 16, 8) == 0)
		at += frame;
	fclose(in);
	return at;
}

/* Open a copy of f's store made of its file and the first `keep` bytes of its WAL. */
static struct fx *crash_copy(const struct fx *f, const char *wal, off_t keep, uint32_t wal_pages)
{
	void *state = NULL;
	assert_int_equal(fx_setup(&state), 0);
	struct fx *g = state;
	char gwal[160];
	fx_path(g, gwal, sizeof(gwal), "-wal");
	file_copy(f->path, g->path, -1);
	file_copy(wal, gwal, keep);
	memcpy(g->key, f->key, sizeof(g->key));
	char err[512] = "";
	struct store_options opt = {.path = g->path, .storage_key = g->key, .wal_pages = wal_pages};
	int rc = store_open(&opt, &g->s, err, sizeof(err));
	if (rc)
		fail_msg("store_open: %d %s", rc, err);
	return g;
}

/*
 * The WAL is written ahead as zeros when the store opens, and only past its
 * end. What a crash leaves, committed frames not yet copied into the file,
 * opens with every message (here copies taken while the store is open):
 * cut right after its last frame, when the next open writes its zeros after
 * them; and as a crash of a running isgd leaves it, its frames and then
 * the zeros written ahead.
 */
static void test_wal_written_ahead(void **state)
{
	struct fx *f = *state;
	char wal[160];
	fx_path(f, wal, sizeof(wal), "-wal");
	wal_sends(f, 256, 12); /* 122 frames: no checkpoint */
	off_t ahead = file_size(wal), frames = wal_frames_end(wal);
	assert_true(ahead >= 32 + 256 * 2 * (4096 + 24));
	assert_true(frames > 32 + 12 * (4096 + 24) && frames < ahead);

	struct fx *cut = crash_copy(f, wal, frames, 1024);
	char cut_wal[160];
	fx_path(cut, cut_wal, sizeof(cut_wal), "-wal");
	off_t cut_size = file_size(cut_wal);
	int64_t cut_msgs = db_int(cut, "SELECT count(*) FROM messages", 0);
	void *st = cut;
	fx_teardown(&st);

	struct fx *whole = crash_copy(f, wal, -1, 256);
	int64_t msgs = db_int(whole, "SELECT count(*) FROM messages", 0);
	int64_t accepted =
	    db_int(whole, "SELECT count(*) FROM audit WHERE kind = 'message.accepted'", 0);
	st = whole;
	fx_teardown(&st);

	assert_true(cut_size >= 32 + 1024 * 2 * (4096 + 24));
	assert_int_equal(cut_msgs, 12);
	assert_int_equal(msgs, 12);
	assert_int_equal(accepted, 12);
}

struct preallocation {
	struct store *s;
	uint32_t wal_pages;
};

static void *preallocate(void *arg)
{
	struct preallocation *p = arg;
	store_test_wal_preallocate(p->s, p->wal_pages);
	return NULL;
}

/*
 * The zeros go in under the WAL's write lock: while another connection (say
 * a second isgd on the same store) holds it, nothing is written, and once
 * it lets go the WAL is written ahead.
 */
static void test_wal_written_ahead_under_the_write_lock(void **state)
{
	struct fx *f = *state;
	char wal[160];
	fx_path(f, wal, sizeof(wal), "-wal");
	wal_sends(f, 64, 1);
	store_test_pause(f->s, true);
	sqlite3 *other = NULL;
	assert_int_equal(sqlite3_open_v2(f->path, &other, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
	assert_int_equal(sqlite3_exec(other, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
	off_t before = file_size(wal);
	struct preallocation p = {.s = f->s, .wal_pages = 256};
	pthread_t th;
	assert_int_equal(pthread_create(&th, NULL, preallocate, &p), 0);
	usleep(300 * 1000);
	off_t held = file_size(wal);
	assert_int_equal(sqlite3_exec(other, "COMMIT", NULL, NULL, NULL), SQLITE_OK);
	pthread_join(th, NULL);
	sqlite3_close(other);
	store_test_pause(f->s, false);
	assert_true(before >= 32 + 64 * 2 * (4096 + 24));
	assert_int_equal(held, before);
	assert_true(file_size(wal) >= 32 + 256 * 2 * (4096 + 24));
}

/*
 * Without twice the room it would write, the WAL is not written ahead, and
 * the warning says that, with the figures: strerror(ENOSPC), "No space left
 * on device", was what an admin read with tens of MB free on the volume.
 */
static void test_wal_not_written_ahead_without_room_says_why(void **state)
{
	struct fx *f = *state;
	char wal[160], logpath[] = "/tmp/isg-test-wal-log-XXXXXX";
	fx_path(f, wal, sizeof(wal), "-wal");
	wal_sends(f, 64, 1);
	off_t before = file_size(wal);
	int logfd = mkstemp(logpath);
	assert_true(logfd >= 0);
	fflush(stderr);
	int saved = dup(2);
	assert_true(saved >= 0);
	assert_true(dup2(logfd, 2) == 2);
	/* About 35 TB of WAL: more than half of any test machine's disk. */
	store_test_wal_preallocate(f->s, UINT32_MAX);
	fflush(stderr);
	assert_true(dup2(saved, 2) == 2);
	close(saved);
	char line[1024] = "";
	ssize_t n = pread(logfd, line, sizeof(line) - 1, 0);
	close(logfd);
	unlink(logpath);
	assert_true(n > 0);
	line[n] = '\0';
	assert_non_null(strstr(line, "event=store.wal_not_preallocated"));
	assert_non_null(strstr(line, "error=\"too little free space: writing the WAL ahead needs "
	                             "twice what it writes\" needed="));
	assert_non_null(strstr(line, " free="));
	assert_null(strstr(line, "No space left on device"));
	assert_int_equal(file_size(wal), before);
}

/* A second store_open of the same file (say, a second isgd) is refused until the first closes. */
static void test_one_store_open_at_a_time(void **state)
{
	struct fx *f = *state;
	wal_sends(f, 64, 1);
	char err[512] = "";
	struct store *second = NULL;
	struct store_options opt = {.path = f->path, .storage_key = f->key};
	assert_int_equal(store_open(&opt, &second, err, sizeof(err)), ISG_ERR_CONFLICT);
	assert_null(second);
	assert_non_null(strstr(err, "is in use by another process"));
	/* The first still stores. (The refusal closed descriptors of the file,
	 * which drops this process's SQLite locks on it: one store per process
	 * in isgd, so only a test meets that.) */
	struct store_message m = fx_msg("police-a", "after", "nhs-b", "");
	assert_int_equal(send_sync(f->s, &m, NULL), 0);
	store_close(f->s);
	f->s = NULL;
	assert_int_equal(store_open(&opt, &second, err, sizeof(err)), 0);
	f->s = second;
	assert_int_equal(db_int(f, "SELECT count(*) FROM messages", 0), 2);
}

/* --- close ----------------------------------------------------------------------------- */

struct close_ctx {
	struct store *s;
	int calls;
	int errs;
	int resubmit_rc;
};

static void close_cb(void *ctx, int err, const struct store_receipt *r)
{
	struct close_ctx *c = ctx;
	c->calls++;
	if (err)
		c->errs++;
	/* Submitting once close has begun is refused. */
	struct store_message m = fx_msg("police-a", "late", "nhs-b", "late");
	c->resubmit_rc = store_send(c->s, &m, close_cb, c);
}

static void test_close_drains_queue(void **state)
{
	struct fx *f = *state;
	struct store *s = fx_open(f);
	struct close_ctx c = {.s = s};
	store_test_pause(s, true);
	for (int i = 0; i < 20; i++) {
		char mid[32];
		snprintf(mid, sizeof(mid), "q-%d", i);
		struct store_message m = fx_msg("police-a", mid, "nhs-b", "queued");
		assert_int_equal(store_send(s, &m, close_cb, &c), 0);
	}
	fx_close(f); /* releases the pause, runs all 20, then joins */
	assert_int_equal(c.calls, 20);
	assert_int_equal(c.errs, 0);
	assert_int_equal(c.resubmit_rc, ISG_ERR_CLOSED);
	s = fx_open(f);
	assert_int_equal(fetch_count(s, "nhs-b"), 20);
	store_close(NULL);
}

static void test_queue_bound(void **state)
{
	struct fx *f = *state;
	struct store *s = fx_open_with(f, 0, 100000); /* drains in one commit */
	/* A writer that cannot keep up makes submitters back off instead of growing. */
	store_test_pause(s, true);
	int accepted = 0, rc = 0;
	for (int i = 0; i < 70000 && rc == 0; i++) {
		rc = store_audit(s, "test.event", "{\"event\":\"test.event\"}", 22, NULL, NULL);
		if (rc == 0)
			accepted++;
	}
	assert_int_equal(rc, ISG_ERR_AGAIN);
	assert_int_equal(accepted, 65536);
	store_test_pause(s, false);
	/* Once the writer catches up, submitting works again. */
	uint64_t seq = 0;
	int tries = 0;
	while ((rc = audit_sync(s, "test.last", "{\"event\":\"test.last\"}", &seq)) ==
	           ISG_ERR_AGAIN &&
	       tries++ < 5000)
		usleep(1000);
	assert_int_equal(rc, 0);
	assert_int_equal(seq, 65537);
}

/* --- batches held for the next sync ---------------------------------------------- */

static struct store *fx_open_held(struct fx *f, int64_t hold_us)
{
	char err[512] = "";
	struct store_options opt = {.path = f->path, .storage_key = f->key, .hold_us = hold_us};
	int rc = store_open(&opt, &f->s, err, sizeof(err));
	if (rc)
		fail_msg("store_open: %d %s", rc, err);
	return f->s;
}

static bool answered(struct wait *w)
{
	pthread_mutex_lock(&w->mu);
	bool done = w->done > 0;
	pthread_mutex_unlock(&w->mu);
	return done;
}

static bool answered_within(struct wait *w, int ms)
{
	for (int i = 0; i < ms && !answered(w); i++)
		sleep_ms(1);
	return answered(w);
}

/* Until the writer has committed n batches in all. */
static void wait_commits(struct store *s, uint64_t n)
{
	for (int i = 0; store_test_commits(s) < n; i++) {
		assert_true(i < 10000);
		sleep_ms(1);
	}
}

/* A message sent, then a fetch of it whose commit is held (not yet answered). */
static void send_then_held_fetch(struct store *s, const char *message_id, struct wait *wf)
{
	struct store_message m = fx_msg("police-a", message_id, "nhs-b", "one");
	assert_int_equal(send_sync(s, &m, NULL), 0);
	uint64_t commits = store_test_commits(s);
	wait_init(wf);
	assert_int_equal(store_fetch(s, "nhs-b", 0, 10, on_fetch, wf), 0);
	wait_commits(s, commits + 1);
	sleep_ms(50);
	assert_false(answered(wf)); /* committed, not yet synced */
}

/* A send of message_id behind a held batch, its sync failing when asked: its answer. */
static int send_behind(struct store *s, const char *message_id, const char *payload, bool fail_sync)
{
	struct store_message m = fx_msg("police-a", message_id, "nhs-b", payload);
	struct wait ws;
	wait_init(&ws);
	store_test_fail_wal_syncs(fail_sync ? 1 : 0);
	assert_int_equal(store_send(s, &m, on_send, &ws), 0);
	int err = wait_for(&ws);
	store_test_fail_wal_syncs(0);
	return err;
}

/* While sends come, a fetch's commit waits for the next send's sync, and is
 * answered before it. */
static void test_held_batch_answered_with_the_next_send(void **state)
{
	struct fx *f = *state;
	struct store *s = fx_open_held(f, 60 * 1000000LL); /* only a send answers it */
	struct wait wf;
	send_then_held_fetch(s, "m-1", &wf);
	assert_int_equal(send_behind(s, "m-2", "two", false), 0);
	assert_true(answered(&wf));
	assert_int_equal(wait_for(&wf), 0);
	assert_false(wf.bad);
	assert_int_equal(wf.res->n, 1);
	store_fetch_result_free(wf.res);
}

/* The sync that would have covered a held batch fails: its outcome is
 * unknown too. */
static void test_held_batch_unknown_when_the_next_sync_fails(void **state)
{
	struct fx *f = *state;
	struct store *s = fx_open_held(f, 60 * 1000000LL);
	struct wait wf;
	send_then_held_fetch(s, "m-1", &wf);
	assert_int_equal(send_behind(s, "m-2", "two", true), ISG_ERR_UNKNOWN);
	assert_int_equal(wait_for(&wf), ISG_ERR_UNKNOWN);
	assert_true(store_failed(s));
	store_fetch_result_free(wf.res);
}

/* With no send to ride on, the writer syncs a held batch itself once
 * hold_us has passed; when that sync fails, the store has failed. */
static void test_held_batch_synced_when_its_time_is_up(void **state)
{
	struct fx *f = *state;
	struct store *s = fx_open_held(f, 1000 * 1000); /* past send_then_held_fetch's 50 ms */
	struct wait wf;
	send_then_held_fetch(s, "m-1", &wf);
	assert_int_equal(wait_for(&wf), 0);
	assert_int_equal(wf.res->n, 1);
	store_fetch_result_free(wf.res);

	send_then_held_fetch(s, "m-2", &wf);
	store_test_fail_wal_syncs(1);
	assert_int_equal(wait_for(&wf), ISG_ERR_UNKNOWN);
	store_test_fail_wal_syncs(0);
	assert_true(store_failed(s));
	store_fetch_result_free(wf.res);
}

/*
 * A send that writes nothing (a resend, answered from the first copy) makes
 * no sync of its own: the writer syncs the held batch itself. When that
 * fails, the resend's answer, read after the held batch, is unknown too.
 */
static void test_held_batch_synced_after_a_send_that_wrote_nothing(void **state)
{
	struct fx *f = *state;
	struct store *s = fx_open_held(f, 60 * 1000000LL);
	struct wait wf;
	send_then_held_fetch(s, "m-1", &wf);
	assert_int_equal(send_behind(s, "m-1", "one", true), ISG_ERR_UNKNOWN); /* a resend */
	assert_int_equal(wait_for(&wf), ISG_ERR_UNKNOWN);
	assert_true(store_failed(s));
	store_fetch_result_free(wf.res);
}

/* No send lately: a batch is synced and answered at once. */
static void test_nothing_held_without_sends(void **state)
{
	struct fx *f = *state;
	struct store *s = fx_open_held(f, 60 * 1000000LL);
	struct wait w;
	wait_init(&w);
	const char *entry = "{\"event\":\"test.event\"}";
	assert_int_equal(store_audit(s, "test.event", entry, strlen(entry), on_audit, &w), 0);
	assert_true(answered_within(&w, 10000));
	assert_int_equal(wait_for(&w), 0);
}

/* Closing syncs and answers what is held; the next open finds it done. */
static void test_close_answers_held_batches(void **state)
{
	struct fx *f = *state;
	struct store *s = fx_open_held(f, 60 * 1000000LL);
	struct store_message a = fx_msg("police-a", "m-1", "nhs-b", "one");
	struct store_receipt r;
	assert_int_equal(send_sync(s, &a, &r), 0);
	uint64_t commits = store_test_commits(s);
	struct wait wa;
	wait_init(&wa);
	assert_int_equal(store_ack(s, "nhs-b", &r.gateway_id, 1, on_ack, &wa), 0);
	wait_commits(s, commits + 1);
	assert_false(answered(&wa));
	fx_close(f);
	assert_int_equal(wait_for(&wa), 0);
	assert_int_equal(wa.acked, 1);
	s = fx_open(f);
	assert_int_equal(fetch_count(s, "nhs-b"), 0);
}

/* --- files that are not ISG stores ------------------------------------------------------- */

static void expect_refused_unchanged(struct fx *f, const char *why)
{
	size_t before_len = 0, after_len = 0;
	uint8_t *before = file_slurp(f->path, &before_len);
	assert_non_null(before);
	struct stat st_before, st_after;
	assert_int_equal(stat(f->path, &st_before), 0);
	char err[512] = "";
	struct store *s = NULL;
	struct store_options opt = {.path = f->path, .storage_key = f->key};
	assert_int_equal(store_open(&opt, &s, err, sizeof(err)), ISG_ERR_CORRUPT);
	assert_null(s);
	assert_non_null(strstr(err, f->path));
	if (!strstr(err, why))
		fail_msg("error '%s' does not say '%s'", err, why);
	uint8_t *after = file_slurp(f->path, &after_len);
	assert_int_equal(after_len, before_len);
	assert_memory_equal(after, before, before_len);
	assert_int_equal(stat(f->path, &st_after), 0);
	assert_int_equal(st_after.st_mtim.tv_sec, st_before.st_mtim.tv_sec);
	assert_int_equal(st_after.st_mtim.tv_nsec, st_before.st_mtim.tv_nsec);
	free(before);
	free(after);
}

static void write_bytes(const char *path, const void *buf, size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, buf, len), (ssize_t)len);
	close(fd);
}

static void test_refuses_random_bytes(void **state)
{
	struct fx *f = *state;
	uint8_t junk[65536];
	randombytes_buf(junk, sizeof(junk));
	write_bytes(f->path, junk, sizeof(junk));
	expect_refused_unchanged(f, "not an SQLite database");
	/* SQLite's magic followed by garbage. */
	memcpy(junk, "SQLite format 3", 16);
	write_bytes(f->path, junk, sizeof(junk));
	expect_refused_unchanged(f, "");
	/* An empty file is not a store either. */
	write_bytes(f->path, "", 0);
	expect_refused_unchanged(f, "is an empty file, not a store");
}

/* A FIFO in place of the store is refused at once; opening it blocking would hang. */
static void test_refuses_a_fifo(void **state)
{
	struct fx *f = *state;
	assert_int_equal(mkfifo(f->path, 0600), 0);
	char err[512] = "";
	struct store *s = NULL;
	struct store_options opt = {.path = f->path, .storage_key = f->key};
	alarm(10); /* a hang ends the test (SIGALRM) rather than the suite's timeout */
	assert_int_equal(store_open(&opt, &s, err, sizeof(err)), ISG_ERR_CORRUPT);
	alarm(0);
	assert_null(s);
	char want[300];
	snprintf(want, sizeof(want), "store '%s' is not a regular file", f->path);
	assert_non_null(strstr(err, want));
}

static void test_refuses_foreign_database(void **state)
{
	struct fx *f = *state;
	db_exec(f, "CREATE TABLE patients(nhs_number TEXT, name TEXT);"
	           "INSERT INTO patients VALUES ('9434765919', 'Jane');");
	expect_refused_unchanged(f, "not an ISG store");
	unlink(f->path);
	/* Our application id but no meta table. */
	db_exec(f, "PRAGMA application_id = 1230194481; CREATE TABLE t(x);");
	expect_refused_unchanged(f, "not an ISG store");
	unlink(f->path);
	/* A store from a newer isgd. */
	db_exec(f, "PRAGMA application_id = 1230194481;"
	           "CREATE TABLE meta(key TEXT PRIMARY KEY, value);"
	           "INSERT INTO meta VALUES ('format', 'isg-store'), ('schema_version', 99);");
	expect_refused_unchanged(f, "schema version 99");
	unlink(f->path);
	/* The next version, as this isgd refuses it. */
	db_exec(f, "PRAGMA application_id = 1230194481;"
	           "CREATE TABLE meta(key TEXT PRIMARY KEY, value);"
	           "INSERT INTO meta VALUES ('format', 'isg-store'), ('schema_version', 6);");
	expect_refused_unchanged(f, "has schema version 6; this isgd understands up to 5");
}

static void test_refuses_damaged_store(void **state)
{
	struct fx *f = *state;
	struct store *s = fx_open(f);
	for (int i = 0; i < 50; i++) {
		char mid[32];
		snprintf(mid, sizeof(mid), "m-%d", i);
		struct store_message m = fx_msg("police-a", mid, "nhs-b", "some payload bytes");
		assert_int_equal(send_sync(s, &m, NULL), 0);
	}
	fx_close(f);
	/* Scribble over the last page (table or index b-tree) of a clean store. */
	size_t len = 0;
	uint8_t *buf = file_slurp(f->path, &len);
	assert_true(len >= 4 * 4096);
	memset(buf + len - 4096 + 8, 0xff, 2048);
	write_bytes(f->path, buf, len);
	free(buf);
	expect_refused_unchanged(f, "integrity check");
}

/* Give a closed store the layout of schema version v (1 to 4): no column
 * messages.ad, and before version 4 every sealed payload in its message's
 * row. Its rows must have been sealed as then (ad = 1). */
static void make_old_layout(struct fx *f, int v)
{
	char sql[512];
	snprintf(sql, sizeof(sql),
	         "ALTER TABLE messages DROP COLUMN ad;"
	         "UPDATE meta SET value = %d WHERE key = 'schema_version';",
	         v);
	db_exec(f, sql);
	if (v < 4)
		db_exec(f, "UPDATE messages SET payload ="
		           " (SELECT data FROM payloads WHERE payloads.id = messages.id)"
		           " WHERE payload IS NULL AND state IN (0, 1);"
		           "DROP TABLE payloads;");
}

static int64_t payloads_table(struct fx *f)
{
	return db_int(f, "SELECT count(*) FROM sqlite_schema WHERE name = 'payloads'", 0);
}

static int64_t ad_column(struct fx *f)
{
	return db_int(f, "SELECT count(*) FROM pragma_table_info('messages') WHERE name = 'ad'", 0);
}

static int64_t schema_version(struct fx *f)
{
	return db_int(f, "SELECT value FROM meta WHERE key = 'schema_version'", 0);
}

/* A store of schema version 1 (payloads sealed under the storage key
 * itself), 2 (XChaCha20-Poly1305 under data keys), 3 (AES-256-GCM) or 4
 * (large payloads in the table payloads), every payload sealed with the
 * associated data of sender, message id and recipient, is brought to
 * version 5 when opened. It gains the column messages.ad, 1 for every row
 * it holds, so they all still open; before version 4 it gains the table
 * payloads too, and its messages stay in their rows, a large one finished
 * there. An older isgd then refuses it rather than open new rows wrongly
 * or miss the payloads kept apart. Messages sent since have ad = 2. */
static void test_upgrades_older_versions(void **state)
{
	struct fx *f = *state;
	struct store *s = fx_open(f);
	static uint8_t page[8192];
	struct store_message m1 = fx_msg("police-a", "m-1", "nhs-b", "kept");
	struct store_message m2 = fx_msg("police-a", "m-2", "nhs-b", "acknowledged");
	struct store_message m3 = fx_msg("police-a", "m-3", "nhs-b", "");
	m3.payload = page;
	m3.payload_len = sizeof(page);
	struct store_receipt r1, r2, r3;
	assert_int_equal(send_sync(s, &m1, &r1), 0);
	assert_int_equal(send_sync(s, &m2, &r2), 0);
	assert_int_equal(send_sync(s, &m3, &r3), 0);
	uint32_t acked = 0;
	size_t n_unknown = 0;
	assert_int_equal(ack_sync(s, "nhs-b", &r2.gateway_id, 1, &acked, NULL, &n_unknown), 0);
	assert_int_equal(acked, 1);
	store_write_v2_row(s, f->key, r1.gateway_id, "police-a", "m-1", "nhs-b", "sealed by v2");
	fx_close(f);
	store_write_v4_row(f, r3.gateway_id, "police-a", "m-3", "nhs-b", page, sizeof(page));
	for (int v = 4; v >= 1; v--) {
		make_old_layout(f, v);
		assert_int_equal(schema_version(f), v);
		assert_int_equal(ad_column(f), 0);
		assert_int_equal(payloads_table(f), v == 4);
		assert_int_equal(db_int(f, "SELECT count(payload) FROM messages", 0),
		                 v == 4 ? 1 : 2);
		s = fx_open(f);
		assert_int_equal(schema_version(f), 5);
		assert_int_equal(ad_column(f), 1);
		assert_int_equal(db_int(f, "SELECT count(*) FROM messages WHERE ad = 1", 0), 3);
		assert_int_equal(payloads_table(f), 1);
		assert_int_equal(db_int(f, "SELECT count(payload) FROM messages", 0),
		                 v == 4 ? 1 : 2);
		struct store_fetch_result *res = NULL;
		assert_int_equal(fetch_sync(s, "nhs-b", 0, 10, &res), 0);
		assert_int_equal(res->n, 2);
		assert_int_equal(res->items[0].payload_len, 12);
		assert_memory_equal(res->items[0].payload, "sealed by v2", 12);
		assert_int_equal(res->items[1].payload_len, sizeof(page));
		store_fetch_result_free(res);
		fx_close(f);
	}
	s = fx_open(f);
	/* Finished after the upgrade, in their rows. */
	uint64_t ids[2] = {r1.gateway_id, r3.gateway_id};
	assert_int_equal(ack_sync(s, "nhs-b", ids, 2, &acked, NULL, &n_unknown), 0);
	assert_int_equal(acked, 2);
	assert_int_equal(db_int(f, "SELECT count(payload) + count(nonce) FROM messages", 0), 0);
	/* A large payload sent since is kept apart, and sealed with ad = 2. */
	struct store_message m4 = fx_msg("police-a", "m-4", "nhs-b", "");
	m4.payload = page;
	m4.payload_len = sizeof(page);
	struct store_receipt r4;
	assert_int_equal(send_sync(s, &m4, &r4), 0);
	assert_int_equal(db_int(f, "SELECT id FROM payloads", 0), (int64_t)r4.gateway_id);
	assert_int_equal(db_int(f, "SELECT ad FROM messages WHERE id = ?1", (int64_t)r4.gateway_id),
	                 2);
	struct store_fetch_result *res = NULL;
	assert_int_equal(fetch_sync(s, "nhs-b", 0, 10, &res), 0);
	assert_int_equal(res->n, 1);
	assert_int_equal(res->items[0].gateway_id, r4.gateway_id);
	assert_int_equal(res->items[0].payload_len, sizeof(page));
	store_fetch_result_free(res);
}

/* An upgrade that cannot finish leaves the store as it was, and is tried
 * again at the next start: here a trigger refuses the new schema version,
 * after the table or column was added. */
static void test_failed_upgrade_changes_nothing(void **state)
{
	struct fx *f = *state;
	struct store *s = fx_open(f);
	struct store_message m = fx_msg("police-a", "m-1", "nhs-b", "kept");
	struct store_receipt r;
	assert_int_equal(send_sync(s, &m, &r), 0);
	fx_close(f);
	store_write_v4_row(f, r.gateway_id, "police-a", "m-1", "nhs-b", m.payload, m.payload_len);
	for (int v = 3; v <= 4; v++) {
		make_old_layout(f, v);
		db_exec(f, "CREATE TRIGGER refuse BEFORE UPDATE ON meta"
		           " BEGIN SELECT RAISE(ABORT, 'refused'); END;");
		char err[512] = "";
		struct store_options opt = {.path = f->path, .storage_key = f->key};
		assert_int_equal(store_open(&opt, &s, err, sizeof(err)), ISG_ERR_STORE);
		assert_null(s);
		if (!strstr(err, "cannot upgrade to schema version 5"))
			fail_msg("error '%s' does not say it cannot upgrade", err);
		assert_int_equal(schema_version(f), v);
		assert_int_equal(payloads_table(f), v == 4);
		assert_int_equal(ad_column(f), 0);
		/* Without the trigger, the next start upgrades it. */
		db_exec(f, "DROP TRIGGER refuse;");
		s = fx_open(f);
		assert_int_equal(schema_version(f), 5);
		assert_int_equal(payloads_table(f), 1);
		assert_int_equal(ad_column(f), 1);
		assert_int_equal(fetch_count(s, "nhs-b"), 1);
		fx_close(f);
	}
}

static void test_creates_new_store(void **state)
{
	struct fx *f = *state;
	struct store *s = fx_open(f);
	assert_int_equal(db_int(f, "PRAGMA application_id", 0), 0x49534731);
	assert_int_equal(schema_version(f), 5);
	assert_int_equal(ad_column(f), 1);
	sqlite3 *db = db_ro(f);
	sqlite3_stmt *st = NULL;
	assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &st, NULL), SQLITE_OK);
	assert_int_equal(sqlite3_step(st), SQLITE_ROW);
	assert_string_equal((const char *)sqlite3_column_text(st, 0), "wal");
	sqlite3_finalize(st);
	/* Fetch and expiry use the partial indexes. */
	assert_int_equal(sqlite3_prepare_v2(db,
	                                    "EXPLAIN QUERY PLAN SELECT id FROM messages"
	                                    " WHERE recipient = 'b' AND id > 0 AND state IN (0, 1)"
	                                    " AND expires_at > 0 ORDER BY id LIMIT 10",
	                                    -1, &st, NULL),
	                 SQLITE_OK);
	bool pending_index = false;
	while (sqlite3_step(st) == SQLITE_ROW)
		pending_index |=
		    strstr((const char *)sqlite3_column_text(st, 3), "messages_pending") != NULL;
	sqlite3_finalize(st);
	assert_true(pending_index);
	sqlite3_close(db);
	/* No temporary file left next to it. */
	DIR *d = opendir(f->dir);
	struct dirent *e;
	while ((e = readdir(d)))
		assert_null(strstr(e->d_name, ".new-"));
	closedir(d);
	(void)s;
}

static int open_as(struct fx *f, enum store_create create, char *err, size_t errlen)
{
	struct store_options opt = {.path = f->path, .storage_key = f->key, .create = create};
	return store_open(&opt, &f->s, err, errlen);
}

static size_t dir_entries(const struct fx *f)
{
	size_t n = 0;
	DIR *d = opendir(f->dir);
	assert_non_null(d);
	for (struct dirent *e; (e = readdir(d));)
		n += strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0;
	closedir(d);
	return n;
}

/* A store is made only where asked for: never for an existing-only open, never over one. */
static void test_create_modes(void **state)
{
	struct fx *f = *state;
	char err[1024] = "", wal[160];
	assert_int_equal(open_as(f, STORE_CREATE_NEVER, err, sizeof(err)), ISG_ERR_NOT_FOUND);
	assert_non_null(strstr(err, "does not exist"));
	assert_non_null(strstr(err, "--new-store"));
	assert_int_equal(dir_entries(f), 0);
	assert_int_equal(open_as(f, STORE_CREATE_ONLY, err, sizeof(err)), 0);
	fx_close(f);
	assert_int_equal(dir_entries(f), 1);
	assert_int_equal(open_as(f, STORE_CREATE_ONLY, err, sizeof(err)), ISG_ERR_CONFLICT);
	assert_non_null(strstr(err, "already exists"));
	assert_int_equal(open_as(f, STORE_CREATE_NEVER, err, sizeof(err)), 0);
	fx_close(f);
	/* The store gone but a WAL file left: no new store reads it in. */
	fx_path(f, wal, sizeof(wal), "-wal");
	assert_int_equal(rename(f->path, wal), 0);
	for (int c = STORE_CREATE_IF_ABSENT; c <= STORE_CREATE_ONLY; c++) {
		int rc = open_as(f, (enum store_create)c, err, sizeof(err));
		assert_int_equal(rc,
		                 c == STORE_CREATE_NEVER ? ISG_ERR_NOT_FOUND : ISG_ERR_CONFLICT);
		assert_int_equal(dir_entries(f), 1);
	}
	assert_non_null(strstr(err, "but its WAL file"));
}

int main(void)
{
	if (sodium_init() < 0)
		return 1;
	log_set_level(LOG_WARN);
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_group_commit_batches, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(test_group_commit_small_batches, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(test_group_commit_live, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(test_failed_job_does_not_sink_batch, fx_setup,
	                                    fx_teardown),
	    cmocka_unit_test_setup_teardown(test_commit_failure_reports_nothing_stored, fx_setup,
	                                    fx_teardown),
	    cmocka_unit_test_setup_teardown(test_commit_of_unknown_outcome_stops_the_store,
	                                    fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(test_held_batch_answered_with_the_next_send, fx_setup,
	                                    fx_teardown),
	    cmocka_unit_test_setup_teardown(test_held_batch_unknown_when_the_next_sync_fails,
	                                    fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(test_held_batch_synced_when_its_time_is_up, fx_setup,
	                                    fx_teardown),
	    cmocka_unit_test_setup_teardown(test_held_batch_synced_after_a_send_that_wrote_nothing,
	                                    fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(test_nothing_held_without_sends, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(test_close_answers_held_batches, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(test_no_lone_commit_after_the_store_failed, fx_setup,
	                                    fx_teardown),
	    cmocka_unit_test_setup_teardown(test_failed_rollback_does_not_fail_the_next_batch,
	                                    fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(test_fetch_in_failed_commit_is_not_delivered, fx_setup,
	                                    fx_teardown),
	    cmocka_unit_test_setup_teardown(test_disk_full_then_recovers, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(test_one_job_beside_a_sweep_runs_alone, fx_setup,
	                                    fx_teardown),
	    cmocka_unit_test_setup_teardown(test_fetch_run_alone_forgets_the_failed_batch, fx_setup,
	                                    fx_teardown),
	    cmocka_unit_test_setup_teardown(test_wal_checkpointed_in_background, fx_setup,
	                                    fx_teardown),
	    cmocka_unit_test_setup_teardown(test_wal_stays_bounded, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(test_wal_written_ahead, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(test_one_store_open_at_a_time, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(test_wal_written_ahead_under_the_write_lock, fx_setup,
	                                    fx_teardown),
	    cmocka_unit_test_setup_teardown(test_wal_not_written_ahead_without_room_says_why,
	                                    fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(test_close_drains_queue, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(test_queue_bound, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(test_refuses_random_bytes, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(test_refuses_a_fifo, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(test_refuses_foreign_database, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(test_refuses_damaged_store, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(test_creates_new_store, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(test_create_modes, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(test_upgrades_older_versions, fx_setup, fx_teardown),
	    cmocka_unit_test_setup_teardown(test_failed_upgrade_changes_nothing, fx_setup,
	                                    fx_teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
