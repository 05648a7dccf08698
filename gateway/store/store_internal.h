/*
 * store internals shared by the files of gateway/store/. Not an interface:
 * other modules include only store/store.h.
 */
#ifndef ISG_STORE_INTERNAL_H
#define ISG_STORE_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <sodium.h>
#include <sqlite3.h>

#include "audit/audit.h"
#include "store/store.h"

/* "ISG1": PRAGMA application_id of every ISG store. */
#define STORE_APPLICATION_ID 0x49534731
#define STORE_FORMAT "isg-store"
/* 5: new payloads sealed with associated data binding the fields a
 * delivery hands out beside them (STORE_AD_V2), and messages.ad saying
 * which associated data a row has. 4: large sealed payloads in a table of their own, payloads, so
 * they can be deleted with secure_delete=FAST (store_jobs.c). 3: payloads sealed with AES-256-GCM
 * under data keys (84-byte seal headers), beside rows of version 2 (XChaCha20-Poly1305 under data
 * keys, 96-byte headers) and version 1 (24-byte headers), which still open; see store_db.c's
 * upgrade and store_seal.c. */
#define STORE_SCHEMA_VERSION 5

#define STORE_KEY_LEN crypto_aead_xchacha20poly1305_ietf_KEYBYTES
#define STORE_NONCE_LEN crypto_aead_xchacha20poly1305_ietf_NPUBBYTES
#define STORE_TAG_LEN crypto_aead_xchacha20poly1305_ietf_ABYTES
/* messages.ad: which associated data a row's payload was sealed with
 * (store_seal.c). Each begins with a context string of its own, so the
 * two can never be the same bytes. */
#define STORE_AD_V1 1 /* sender, message id, recipient: rows before version 5 */
#define STORE_AD_V2 2 /* and agreement, version, purpose, dataset, reply_to */
#define STORE_SEAL_CONTEXT "isg-msg-v1"
#define STORE_SEAL_CONTEXT_V2 "isg-msg-v2"
#define STORE_KEY_CONTEXT "isg-key-v1"
/* messages.nonce, the seal header: the wrapped data key and the payload's
 * AES-256-GCM nonce; in older rows the wrapped key and an XChaCha20 nonce,
 * or, sealed before envelopes, the XChaCha20 nonce alone. */
#define STORE_GCM_NONCE_LEN 12
#define STORE_HEADER_LEN (STORE_WRAPPED_KEY_LEN + STORE_GCM_NONCE_LEN)
#define STORE_HEADER_V2_LEN (STORE_WRAPPED_KEY_LEN + STORE_NONCE_LEN)
#define STORE_HEADER_V1_LEN STORE_NONCE_LEN
#define STORE_HEADER_MAX STORE_HEADER_V2_LEN
_Static_assert(STORE_KEY_LEN == 32 && STORE_TAG_LEN == 16,
               "AES-256-GCM's key and tag are the sizes of XChaCha20-Poly1305's");
_Static_assert(STORE_HEADER_LEN <= STORE_HEADER_MAX && STORE_HEADER_V1_LEN <= STORE_HEADER_MAX,
               "every seal header fits STORE_HEADER_MAX");

/* Bounds on what callers may submit; see docs/store.md. */
#define STORE_MAX_STRING 1024                 /* ids, names, purposes */
#define STORE_MAX_PAYLOAD (64u * 1024 * 1024) /* plaintext bytes of one message */
#define STORE_MAX_KIND 128                    /* bytes of an audit kind */
#define STORE_MAX_ACK 10000                   /* ids in one ack */
#define STORE_MAX_FETCH 10000                 /* messages in one fetch */
#define STORE_FETCH_BYTES (64u * 1024 * 1024) /* payload bytes a fetch stops adding at */
#define STORE_MAX_TTL_MS (100LL * 365 * 86400 * 1000)
#define STORE_QUEUE_MAX 65536  /* queued jobs before ISG_ERR_AGAIN */
#define STORE_SWEEP_LIMIT 1000 /* messages expired per sweep */
#define STORE_DEFAULT_SWEEP_MS 60000
#define STORE_MAX_SWEEP_MS (86400LL * 1000) /* longer intervals are taken as a day */
#define STORE_DEFAULT_MAX_BATCH 512
#define STORE_BUSY_TIMEOUT_MS 5000
/* Sealed payloads of this many bytes or more are kept in the table
 * payloads and deleted under secure_delete=FAST (store_jobs.c's
 * set_final_state). A smaller one leaves room for its row's other columns
 * within the 4061 bytes a row may keep in a 4096-byte leaf page, so unless
 * the row's ids and names are unusually long it has no overflow page for
 * ON to zero. */
#define STORE_PAYLOAD_APART 3584
#define STORE_DEFAULT_CHECKPOINT_EVERY 1000
#define STORE_DEFAULT_CHECKPOINT_MS 10000
#define STORE_DEFAULT_WAL_PAGES 4000             /* 16 MB: docs/performance.md */
#define STORE_MAX_CHECKPOINT_MS (86400LL * 1000) /* longer intervals are taken as a day */
#define STORE_MAX_HOLD_US (3600LL * 1000000)     /* a longer hold_us is taken as an hour */
/* After a checkpoint could not be written, wait this long before trying again. */
#define STORE_CHECKPOINT_RETRY_MS 1000
/* A signed checkpoint note: body, blank line, one signature line. */
#define STORE_NOTE_MAX (AUDIT_CHECKPOINT_MAX + 1 + AUDIT_NAME_MAX + 128)

/* sqlite3_errmsg, but "disk full" when the cause was ENOSPC: SQLite calls a
 * full disk met while it maps its WAL index an I/O error. */
const char *store_db_errmsg(sqlite3 *db);
/* Format an error message for a caller's err buffer (NULL or empty: nothing). */
void store_seterr(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* The columns of a message that an acknowledgement or the sweep finishes
 * (ST_ACK_SELECT, ST_EXPIRED_SELECT), as store_jobs.c's msg_ref_read
 * reads them. */
#define STORE_MSG_REF_COLUMNS                                                                      \
	"id, sender, recipient, message_id, agreement_id, agreement_version, audit_index,"         \
	" payload IS NULL, nonce"

enum store_stmt {
	ST_MSG_BY_SENDER_ID,
	ST_REPLY_CHECK,
	ST_AUDIT_INSERT,
	ST_MSG_INSERT,
	ST_FETCH,
	ST_MARK_DELIVERED,
	ST_ACK_SELECT,
	ST_SET_FINAL_STATE,
	ST_EXPIRED_SELECT,
	ST_CHECKPOINT_INSERT,
	ST_PAYLOAD_INSERT,
	ST_PAYLOAD_DELETE,
	/* The writer's transaction control, run for every batch and job. */
	ST_BEGIN,
	ST_COMMIT,
	ST_SAVEPOINT,
	ST_RELEASE,
	ST_COUNT
};

enum store_job_kind { JOB_SEND, JOB_REFUSE, JOB_FETCH, JOB_ACK, JOB_AUDIT, JOB_EXEC };

struct job_send {
	char *strings; /* one allocation holding the six strings below */
	const char *sender, *message_id, *recipient, *agreement_id, *purpose, *dataset;
	uint32_t agreement_version;
	uint64_t reply_to;
	uint8_t request_hash[32];
	uint32_t record_count;
	int64_t ttl_ms;
	uint8_t header[STORE_HEADER_LEN];
	uint8_t *sealed;
	size_t sealed_len;
	char *audit_entry;
	size_t audit_len;
	char *(*refusal_entry)(void *ctx, int err, size_t *len);
	void *refusal_ctx;
	int (*admit)(void *ctx, int64_t accepted_at_ms);
	void (*admit_undo)(void *ctx);
	void *admit_ctx;
	store_send_cb cb;
	void *ctx;
	/* result */
	struct store_receipt receipt;
	bool added;    /* a new message row, not a duplicate */
	bool admitted; /* admit said 0, and admit_undo is owed if it is rolled back */
	/* A refusal whose entry was written (ISG_ERR_LIMIT, _CONFLICT, _NOT_FOUND); 0: none. */
	int refused;
};

struct job_refuse {
	char *strings; /* one allocation holding sender and message_id */
	const char *sender, *message_id;
	uint8_t request_hash[32];
	char *audit_entry;
	size_t audit_len;
	store_send_cb cb;
	void *ctx;
	struct store_receipt receipt; /* result */
};

struct job_fetch {
	char *recipient;
	uint64_t after_id;
	uint32_t max;
	size_t max_bytes; /* bytes, as sink measures, it adds within (1 to STORE_FETCH_BYTES) */
	struct store_fetch_sink sink; /* filled in: never a NULL function */
	store_fetch_cb cb;
	void *ctx;
	struct store_fetch_result *res; /* always allocated; handed to cb */
};

struct job_ack {
	char *recipient;
	uint64_t *ids;
	size_t n;
	store_ack_cb cb;
	void *ctx;
	/* result */
	uint32_t acknowledged;
	uint64_t *unknown; /* room for n */
	size_t n_unknown;
};

struct job_audit {
	char *kind;
	char *entry;
	size_t len;
	store_audit_cb cb;
	void *ctx;
	uint64_t seq;
};

struct job_exec {
	char *sql;        /* NULL: copy the audit tree to tree_out instead */
	int64_t *int_out; /* not NULL: sql's first column of its first row, or 0 */
	struct audit_tree *tree_out;
	void (*cb)(void *ctx, int err);
	void *ctx;
};

struct store_job {
	struct store_job *next;
	enum store_job_kind kind;
	int err;
	union {
		struct job_send send;
		struct job_refuse refuse;
		struct job_fetch fetch;
		struct job_ack ack;
		struct job_audit audit;
		struct job_exec exec;
	} u;
};

/*
 * The audit log as the writer sees it: the Merkle tree of every entry in
 * the table, the seq the next entry gets, and how many of the leaf hashes
 * in store->witness_leaves the witness has not had yet. Plain data, so a
 * copy taken before a job or a batch restores it when that job or batch is
 * rolled back: the rolled-back leaves drop out of the witness's too.
 */
struct store_log {
	struct audit_tree tree;
	uint64_t next_seq;
	size_t witness_pending;
	int64_t latest_at; /* the latest time this isgd stamped on an entry; 0: none yet */
};

/* Where a kept data key is, by its wrapping (store_seal.c). */
struct kept_slot {
	bool set; /* it holds one */
	uint8_t wrapped[STORE_WRAPPED_KEY_LEN];
};

struct store {
	char *path;
	int lock_fd; /* the file, flock'ed: one isgd per store (store_db.c) */
	sqlite3 *db;
	sqlite3_stmt *stmt[ST_COUNT];
	uint8_t *key; /* sodium_malloc'd, read-only; NULL when another holds it */
	struct store_sealer sealer;
	/* Data keys made but not used yet, and their wrappings. */
	pthread_mutex_t pool_mu;
	uint8_t *pool_keys; /* sodium_malloc'd, STORE_KEY_POOL keys */
	uint8_t pool_wrapped[STORE_KEY_POOL][STORE_WRAPPED_KEY_LEN];
	size_t pool_n;
	/* Data keys used since, each kept by its wrapping until its message's
	 * first fetch, so that fetch need not ask the holder to unwrap it
	 * (store_seal.c). A slot holds the latest key hashed to it. */
	pthread_mutex_t kept_mu;
	uint8_t *kept_keys;        /* sodium_malloc'd, STORE_KEYS_KEPT keys */
	struct kept_slot *kept;    /* STORE_KEYS_KEPT of them */
	struct evp_cipher_st *gcm; /* OpenSSL's AES-256-GCM, fetched by store_keys_init */
	int64_t sweep_interval_ms;
	uint32_t max_batch;
	/* Writer thread only: secure_delete is at FAST, set for a payload's
	 * delete and not yet back at ON (store_jobs.c). */
	bool secure_fast;

	pthread_t writer;
	bool writer_started;
	pthread_mutex_t mu;
	pthread_cond_t cv; /* CLOCK_MONOTONIC */
	/* under mu */
	struct store_job *head, *tail;
	size_t queued;
	bool closing;
	bool paused; /* tests only */
	bool parked; /* tests only: the writer waits, paused, between batches */
	store_notify_fn notify;
	void *notify_ctx;

	/* A commit's outcome is unknown (store_fail): every job from then on is
	 * refused and nothing more is written. Set by the writer. */
	atomic_bool failed;
	atomic_uint_fast64_t commits;
	atomic_bool fail_next_commit; /* tests only */
	atomic_int full_commits;      /* tests only: COMMITs to fail as on a full disk */
	atomic_int fail_secure_on;    /* tests only: settings of secure_delete ON to fail */
	atomic_int fail_rollback;     /* tests only: ROLLBACKs of a failed batch to fail */
	bool commit_full;             /* tests only: the last COMMIT failed so */

	/* The audit log; writer thread only (and store_open before it starts). */
	struct store_log log;
	uint8_t *leaf; /* buffer the leaf bytes are built in, grown as needed */
	size_t leaf_cap;
	const struct audit_signer *signer; /* NULL: no checkpoints */
	/* The witness (store.h), when has_witness; the leaf hashes it has not had
	 * yet are the first log.witness_pending of witness_leaves (grown as
	 * needed, witness_cap hashes). Outside struct store_log: a rollback
	 * restores the count, never a pointer realloc may have freed. */
	struct store_witness witness;
	bool has_witness;
	uint8_t (*witness_leaves)[AUDIT_HASH_LEN];
	size_t witness_cap;
	uint32_t checkpoint_every;
	int64_t checkpoint_interval_ms;
	uint64_t checkpoint_size;      /* size of the latest checkpoint; 0 when none */
	int64_t checkpoint_mono;       /* when it was written (or the store opened) */
	int64_t checkpoint_retry_mono; /* no attempt before this after a failure */
	atomic_bool checkpoint_soon;   /* store_checkpoint_soon: due now, if the log grew */
	/* under mu: the latest checkpoint note, for store_latest_checkpoint */
	char *checkpoint_note;

	/* WAL checkpoints in the background (store_wal.c). */
	sqlite3 *wal_db;
	uint32_t wal_pages;
	pthread_t wal_thread;
	bool wal_started, wal_sync;
	pthread_mutex_t wal_mu;
	pthread_cond_t wal_cv;
	bool wal_wanted, wal_closing;         /* under wal_mu */
	bool wal_running, wal_writer;         /* under wal_mu: whose checkpoint runs */
	atomic_uint_fast32_t wal_copied;      /* WAL frames the last checkpoint had copied */
	uint32_t wal_last_total;              /* frames in the WAL at the last commit (writer) */
	atomic_uint_fast64_t wal_checkpoints; /* the checkpointer's, that copied pages (tests) */
	uint64_t wal_commits;                 /* commits that wrote frames (writer) */
	int wal_fd;                           /* the WAL, for held_sync; -1: none */

	/* Writer thread only: batches committed without a sync (store_options'
	 * hold_us), answered once a later sync has covered them. */
	int64_t hold_us;
	struct store_job *held, **held_end;
	int64_t held_until_us; /* synced by then at the latest (time_mono_us) */
	int64_t sender_us;     /* when the last batch with a send or a refusal ended */
	bool sync_normal;      /* PRAGMA synchronous is NORMAL, for a held batch */
};

/* Tests only: true, and one fewer to come, while failures are armed. */
static inline bool store_take_failure(atomic_int *left)
{
	int n = atomic_load(left);
	while (n > 0 && !atomic_compare_exchange_weak(left, &n, n - 1))
		;
	return n > 0;
}

/* store_db.c: the database file, schema, pragmas and statements. */
int store_db_open(struct store *s, const char *path, enum store_create create, char *err,
                  size_t errlen);
void store_db_close(struct store *s);
/* Log an SQLite failure of op and map it to ISG_ERR_FULL or ISG_ERR_STORE. */
int store_db_fail(struct store *s, int rc, const char *op);
/* Step a COMMIT (or a statement that commits by itself); a failure is
 * logged and is ISG_ERR_FULL (nothing stored), ISG_ERR_STORE (the commit
 * hook refused) or ISG_ERR_UNKNOWN (it may be on disk: see store_fail). */
int store_db_commit(struct store *s, sqlite3_stmt *st, const char *op);
int store_db_exec(struct store *s, const char *sql, const char *op);
/* Step a bound statement that returns no rows, then reset it. */
int store_db_step_done(struct store *s, sqlite3_stmt *st, const char *op);
/* Run a query returning one integer; *found is false when it returns no row.
 * SQLITE_OK or SQLite's error, not an ISG_ERR_ code (nothing is logged). */
int store_db_query_int(sqlite3 *db, const char *sql, int64_t *v, bool *found);
/*
 * A read-only connection of its own to the store's file, for reads that
 * need not wait for the writer (which owns s->db); SQLITE_OK or SQLite's
 * error, *db then NULL or holding the error. Close with sqlite3_close.
 */
int store_db_reader(const struct store *s, sqlite3 **db);

/* The VFS of the writer's connection: the default one, but a commit's WAL
 * frames go to the file in one write (store_vfs.c). 0 or an SQLite code. */
#define STORE_VFS "isg-store"
int store_vfs_register(void);
/* fdatasync(fd) of a WAL opened apart: 0, or -1 and errno, as a WAL sync
 * fails when store_test_fail_wal_syncs says so. */
int store_vfs_datasync(int fd);

/*
 * store_wal.c: copy the WAL into the database file on a thread of its own
 * once it holds wal_pages pages (0: the default), instead of on the commit
 * path. Start after store_db_open, stop before store_db_close.
 */
int store_wal_start(struct store *s, uint32_t wal_pages, char *err, size_t errlen);
void store_wal_stop(struct store *s);

/* store_log.c: the audit log's leaves, Merkle tree and checkpoints. */
/*
 * Check an entry body a caller submits: one JSON object starting with
 * {"event":"<kind>", no white space or control bytes outside strings,
 * valid UTF-8. Cheap, and keeps the leaf bytes in the documented form.
 */
int store_log_check_body(const char *kind, const char *body, size_t len);
/* Append an entry (kind, body) at seq s->log.next_seq: row and tree. */
int store_log_append(struct store *s, int64_t now, const char *kind, const char *body, size_t len,
                     uint64_t *seq);
/*
 * At open, through the read-only connection db: rebuild s->log from every
 * entry, and check it against the latest checkpoint (its signature with
 * s->signer when set). ISG_ERR_CORRUPT with the first bad seq in err.
 */
int store_log_load(struct store *s, sqlite3 *db, const char *path, char *err, size_t errlen);
/* Give the witness, if there is one, the tree store_log_load loaded. */
int store_log_witness_start(struct store *s, char *err, size_t errlen);
/* Monotonic time a checkpoint falls due without further entries; INT64_MAX: none pending. */
int64_t store_log_checkpoint_deadline(const struct store *s);
/* True when a checkpoint is due now (mono_now) per the cadence. */
bool store_log_checkpoint_due(const struct store *s, int64_t mono_now);
/* Sign and insert a checkpoint of the committed tree, in its own transaction. */
int store_log_checkpoint(struct store *s);

/* store_seal.c: sealing payloads under data keys from the storage key's holder. */
struct store_sealer store_sealer_own(uint8_t *key);
int store_keys_init(struct store *s);
void store_keys_release(struct store *s);
/* Wipe the data key kept for a payload sealed under header that will never be fetched. */
void store_seal_forget(struct store *s, const uint8_t header[static STORE_WRAPPED_KEY_LEN]);
/* The fields of a message that its sealed payload is bound to. */
struct store_bound {
	const char *sender, *message_id, *recipient, *agreement_id, *purpose, *dataset;
	uint32_t agreement_version;
	uint64_t reply_to;
};
/* Seal plain for the message b with STORE_AD_V2, the row's messages.ad. */
int store_seal(struct store *s, const struct store_bound *b, const uint8_t *plain, size_t plain_len,
               uint8_t header[STORE_HEADER_LEN], uint8_t **sealed, size_t *sealed_len);
/* A sealed payload as read from its row, and what opening it gave. */
struct store_sealed {
	struct store_bound bound; /* the row's fields, pointing into its delivery */
	int64_t ad;               /* the row's messages.ad */
	uint8_t header[STORE_HEADER_MAX];
	size_t header_len;
	uint8_t *sealed; /* malloc'd copy */
	size_t sealed_len;
	uint8_t *plain; /* malloc'd; NULL when it did not open */
	size_t plain_len;
};
/* Open n payloads, unwrapping their data keys in one batch.
 * A payload that does not open is left with plain NULL; an error is the
 * holder's failure (or no memory), not a payload's. Each item's sealed
 * copy is freed (and set NULL) once it is tried; after an error, those not
 * yet tried keep theirs for the caller to free. */
int store_unseal_all(struct store *s, struct store_sealed *items, size_t n);

/*
 * store.c: a commit failed with ISG_ERR_UNKNOWN (why: SQLite's message).
 * Logs store.failed; the writer refuses every later job with
 * ISG_ERR_CLOSED, writes nothing more, and store_failed says so.
 */
void store_fail(struct store *s, const char *why);

/* store_jobs.c: what each job does inside the writer's transaction. */
int store_job_run(struct store *s, struct store_job *j, int64_t now);
/* Expire due messages; *more when the sweep stopped at its limit. */
int store_sweep(struct store *s, int64_t now, bool *more);
/* Set secure_delete back to ON if a payload's delete left it at FAST; 0 when it is ON. */
int store_secure_delete_on(struct store *s);
/* Forget a job's results after its writes were rolled back. */
void store_job_discard(struct store_job *j);
/* Call the job's callback with its result. */
void store_job_finish(struct store_job *j);
void store_job_free(struct store_job *j);

#endif
