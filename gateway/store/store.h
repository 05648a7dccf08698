/*
 * store: durable store-and-forward of messages and the audit entries that
 * describe them, in one SQLite database (WAL, synchronous=FULL).
 *
 * One writer thread owns the database. Callers submit jobs from any thread;
 * the writer takes every queued job, runs them in one transaction (each in
 * its own savepoint, so one failure does not undo the others), commits once
 * (group commit), then calls each job's callback on the writer thread.
 * A callback therefore runs only after the data is on disk. Callbacks must
 * be short: hand the result to the caller's own thread.
 *
 * Payloads are sealed at rest (AES-256-GCM, associated data binding
 * sender, message id and recipient) under a data key of their own, which
 * is kept beside them wrapped under the storage key (envelope encryption,
 * XChaCha20-Poly1305).
 * Sealing happens in the submitting thread so the writer only writes.
 * Whoever holds the storage key makes and unwraps data keys, in batches:
 * the store itself, or (in isgd) the key process, through a sealer.
 *
 * The interface is narrow so that another backend (PostgreSQL) can follow.
 */
#ifndef ISG_STORE_H
#define ISG_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct store;
struct audit_signer;

/*
 * XChaCha20-Poly1305, which wraps data keys under the storage key (and
 * sealed payloads before schema version 3): seal writes plain_len +
 * STORE_SEAL_OVERHEAD bytes to out and picks a random nonce; open writes
 * sealed_len - STORE_SEAL_OVERHEAD bytes, or refuses with ISG_ERR_CRYPTO.
 * The store builds the associated data.
 */
#define STORE_SEAL_KEY_LEN 32
#define STORE_SEAL_NONCE_LEN 24
#define STORE_SEAL_OVERHEAD 16
/* A data key wrapped under the storage key: nonce || sealed key. */
#define STORE_WRAPPED_KEY_LEN (STORE_SEAL_NONCE_LEN + STORE_SEAL_KEY_LEN + STORE_SEAL_OVERHEAD)
void store_aead_seal(const uint8_t key[static STORE_SEAL_KEY_LEN], const uint8_t *ad, size_t ad_len,
                     const uint8_t *plain, size_t plain_len,
                     uint8_t nonce[static STORE_SEAL_NONCE_LEN], uint8_t *out);
int store_aead_open(const uint8_t key[static STORE_SEAL_KEY_LEN], const uint8_t *ad, size_t ad_len,
                    const uint8_t nonce[static STORE_SEAL_NONCE_LEN], const uint8_t *sealed,
                    size_t sealed_len, uint8_t *out) __attribute__((warn_unused_result));

/* For the storage key's holder: wrap a data key, or unwrap it (ISG_ERR_CRYPTO). */
void store_key_wrap(const uint8_t storage_key[static STORE_SEAL_KEY_LEN],
                    const uint8_t data_key[static STORE_SEAL_KEY_LEN],
                    uint8_t wrapped[static STORE_WRAPPED_KEY_LEN]);
int store_key_unwrap(const uint8_t storage_key[static STORE_SEAL_KEY_LEN],
                     const uint8_t wrapped[static STORE_WRAPPED_KEY_LEN],
                     uint8_t data_key[static STORE_SEAL_KEY_LEN])
    __attribute__((warn_unused_result));

/* Data keys the store asks its sealer for at a time. */
#define STORE_KEY_POOL 64
/* Data keys of sealed payloads the store keeps for their first fetch, at most. */
#define STORE_KEYS_KEPT 2048

/* The storage key's holder, when it is not the store (any thread may call). */
struct store_sealer {
	void *ctx;
	/* n fresh random data keys (n x 32 bytes) and each one wrapped (n x 72). */
	int (*new_keys)(void *ctx, size_t n, uint8_t *keys, uint8_t *wrapped);
	/* Unwrap n keys (n x 72 bytes in, n x 32 out); ok[i] is 0 for one that
	 * does not unwrap (its key is zeros). Fails only when the holder does. */
	int (*unwrap)(void *ctx, size_t n, const uint8_t *wrapped, uint8_t *keys, uint8_t *ok);
	/* Open a payload sealed directly under the storage key, as the store
	 * did before envelopes (a row whose seal header is just the nonce). */
	int (*open)(void *ctx, const uint8_t *ad, size_t ad_len,
	            const uint8_t nonce[static STORE_SEAL_NONCE_LEN], const uint8_t *sealed,
	            size_t sealed_len, uint8_t *out);
};

/*
 * A witness of the audit log's growth (in isgd, the key process, which
 * holds the signing key and signs only checkpoints of the tree it has
 * seen). The store gives it the tree it loaded at open, checked against
 * the latest checkpoint, before the writer starts, then, before it signs
 * each checkpoint, the leaf hashes of every entry committed since it last
 * gave some, in order. Called on the writer thread (start in store_open).
 */
#define STORE_WITNESS_APPEND_MAX 65536 /* leaf hashes in one append */
struct store_witness {
	void *ctx;
	/* The tree as audit_tree_encode writes it. */
	int (*start)(void *ctx, const uint8_t *tree, size_t len);
	/* n (1 to STORE_WITNESS_APPEND_MAX) leaf hashes of 32 bytes, following
	 * the size entries given so far (the tree's size before them). */
	int (*append)(void *ctx, uint64_t size, const uint8_t *leaf_hashes, size_t n);
};

/*
 * Whether store_open may make the file at path. A store is made only when
 * asked for, as initdb makes a database: a missing store is far more
 * often a lost disk or a data volume that did not mount than a new
 * gateway, and a new empty store would give out gateway ids and audit
 * indexes already given out, and start a second audit log under the same
 * signing key.
 */
enum store_create {
	STORE_CREATE_IF_ABSENT = 0, /* make it if absent (unit tests, benchmarks) */
	STORE_CREATE_NEVER,         /* an existing store only (isgd) */
	STORE_CREATE_ONLY,          /* a new store only, none there yet (isgd --new-store) */
};

struct store_options {
	const char *path;
	enum store_create create;
	/* Exactly one of: */
	const uint8_t *storage_key;        /* 32 bytes; the store keeps its own guarded copy */
	const struct store_sealer *sealer; /* copied; its ctx must outlive the store */
	int64_t sweep_interval_ms;         /* expiry sweep interval; default 60s, at most 1d */
	uint32_t max_batch;                /* most jobs per commit; default 512 */
	/*
	 * Signs the audit log's checkpoints (key name = checkpoint origin). NULL:
	 * no checkpoints are written and the latest one's signature is not
	 * checked at open. Not copied: it must outlive the store.
	 */
	const struct audit_signer *signer;
	/* Needs a signer; copied, its ctx must outlive the store. NULL: none. */
	const struct store_witness *witness;
	uint32_t checkpoint_every;      /* a checkpoint after this many entries; default 1000 */
	int64_t checkpoint_interval_ms; /* ... or this long, if the log grew; default 10s, max 1d */
	uint32_t wal_pages; /* copy the WAL into the file, off the commit path, at this many
	                       pages; default 4000 */
	/*
	 * While sends are coming (one in the last hold_us), a batch with none
	 * in it (fetches, acks, audit entries) is committed without its own
	 * sync: its callbacks wait for the next sync, a send's commit's, or
	 * hold_us at the latest. 0: every commit syncs at once. Either way no
	 * callback is called before its writes are on disk.
	 */
	int64_t hold_us;
};

/*
 * The SQLite URI that opens path read-only (path escaped as a file: URI),
 * immutable when asked: SQLite then reads the file alone, creating no -wal
 * or -shm beside it and taking no lock, for a store no one writes. A
 * malloc'd string, NULL when out of memory. isgd's own check of a store at
 * open and isgctl's readers use it.
 */
char *store_read_uri(const char *path, bool immutable);

/*
 * Whether the file at path is as opt->create wants it, looking only: a
 * store there for STORE_CREATE_NEVER, none for STORE_CREATE_ONLY, and for
 * any store to be made, no WAL file left beside the missing one (SQLite
 * would read it into the new store). 0, ISG_ERR_NOT_FOUND (no store, for
 * STORE_CREATE_NEVER), ISG_ERR_CONFLICT (a store, or a WAL file, in the
 * way) or ISG_ERR_IO; err says why and, worded for isgd's admin, what to
 * do. store_open checks the same; isgd --check-config asks it beforehand.
 */
int store_check_file(const char *path, enum store_create create, char *err, size_t errlen)
    __attribute__((warn_unused_result));

/*
 * Open (creating if absent and opt->create allows) and start the writer
 * thread. A store opt->create does not allow, or a missing one with a WAL
 * file beside it, is refused as store_check_file says. A file that is not
 * an ISG store, or fails SQLite's integrity check, is refused with
 * ISG_ERR_CORRUPT and left untouched; err says why. So is a store whose
 * audit log has a gap, an entry whose leaf names another index, or a tree
 * that does not match its latest checkpoint (or a checkpoint whose
 * signature does not verify with opt->signer): err names the first bad seq
 * or the checkpoint's size. A store another process has open (another isgd)
 * is refused with ISG_ERR_CONFLICT.
 */
int store_open(const struct store_options *opt, struct store **out, char *err, size_t errlen)
    __attribute__((warn_unused_result));
/*
 * Run every queued job, stop the writer thread, close. NULL ok. No other
 * thread may still be submitting (isgd stops its workers first); a job's
 * callback, which runs on the writer, may, and is refused with
 * ISG_ERR_CLOSED. Never call it from a callback: it joins the writer.
 * True when the store had failed (store_failed), before or as it closed.
 */
bool store_close(struct store *s);

/*
 * True once a commit failed in a way that may have left it on disk (an
 * I/O error other than a full disk, an fsync's above all): the jobs of
 * that commit were answered ISG_ERR_UNKNOWN, every later one is refused
 * with ISG_ERR_CLOSED, and nothing more is written, not even at close.
 * The store's owner should close it and stop: the next store_open's WAL
 * recovery makes the file consistent. Logged as store.failed. Any thread.
 */
bool store_failed(struct store *s);
/*
 * Whether the store's file is still the one it opened: not deleted, nor
 * replaced by another file at its path. When it is not, what the store
 * writes would be lost with the file: it fails as store_failed says,
 * logged as store.unlinked, and false is returned (also once it failed
 * otherwise). The writer looks after each commit and answers that commit's
 * requests as not stored (ISG_ERR_CLOSED); its owner should look every
 * second or so while idle. Any thread.
 */
bool store_watch(struct store *s);

/* --- send --------------------------------------------------------------- */

struct store_message {
	const char *sender, *message_id, *recipient;
	const char *agreement_id;
	uint32_t agreement_version;
	const char *purpose, *dataset;
	uint64_t reply_to;        /* 0 = none */
	uint8_t request_hash[32]; /* identifies the content for idempotency */
	uint32_t record_count;
	const uint8_t *payload; /* plaintext; sealed before it is queued */
	size_t payload_len;
	int64_t ttl_ms; /* undelivered data expires after this */
	/* "message.accepted" entry body, same transaction (see store_audit). */
	const char *audit_entry;
	size_t audit_len;
	/*
	 * The "message.refused" entry for a refusal the store itself finds
	 * (ISG_ERR_CONFLICT, ISG_ERR_NOT_FOUND, or ISG_ERR_LIMIT from admit),
	 * built on the writer when it does and written in the same
	 * transaction, so the refusal is on record before it is answered, with
	 * no second job that could come after the store closed. A malloc'd
	 * body and its *len, or NULL when out of memory. With refusal_entry
	 * NULL such a refusal is not audited. It may be called and its entry
	 * rolled back with a failed batch, the send then answered otherwise
	 * (run alone, it may be refused for another reason): it must change
	 * nothing the answer depends on.
	 */
	char *(*refusal_entry)(void *ctx, int err, size_t *len);
	void *refusal_ctx;
	/*
	 * Admission (isgd's daily limits), on the writer, where sends are
	 * serialised: called for a send that is new (no message with its
	 * sender and message_id, its reply_to found) just before it is
	 * stored, with the batch's time stamp, its accepted_at_ms. 0 admits
	 * it. ISG_ERR_LIMIT refuses it: its refusal_entry(ISG_ERR_LIMIT) is
	 * written in its place and cb hears ISG_ERR_LIMIT with the entry's
	 * index. Any other error fails the job. A resend answered with its
	 * receipt, or a refusal found before, is never admitted. An admitted
	 * send whose job or batch is then rolled back (its savepoint, a failed
	 * COMMIT, a full disk before it is run alone) is handed to admit_undo,
	 * once for each admission, before it is admitted again or answered:
	 * only a send answered as newly stored keeps one. NULL: every new
	 * send is admitted. admit_undo is required with admit.
	 */
	int (*admit)(void *ctx, int64_t accepted_at_ms);
	void (*admit_undo)(void *ctx);
	void *admit_ctx;
};

struct store_receipt {
	uint64_t gateway_id;
	uint64_t audit_index;
	int64_t accepted_at_ms;
	uint32_t record_count;
	bool duplicate; /* (sender, message_id) was accepted before */
};

/*
 * err: 0; ISG_ERR_LIMIT when admit refused the send (the refusal's audit
 * entry is then on disk, r->audit_index its index: the refusal needs no
 * second job, which could come after the store closed); ISG_ERR_CONFLICT
 * when (sender, message_id) exists with another request_hash;
 * ISG_ERR_NOT_FOUND when reply_to names no message sent by the recipient
 * to the sender (for these three, with refusal_entry, the refusal is on
 * disk as for ISG_ERR_LIMIT; without it, nothing is written and r is
 * NULL); ISG_ERR_FULL when the disk is full (nothing stored);
 * ISG_ERR_UNKNOWN when its commit failed and may or may not be on disk
 * (store_failed: repeat the send with the same message_id once the store
 * is open again; every callback of the store may hear it); ISG_ERR_STORE
 * otherwise. r is NULL unless err is 0 or a refusal on disk.
 */
typedef void (*store_send_cb)(void *ctx, int err, const struct store_receipt *r);
#define STORE_MAX_AUDIT_ENTRY (1024u * 1024) /* bytes of one audit entry */
/* Copies what it needs from m. Returns 0, or an error without calling cb:
 * ISG_ERR_INVALID or ISG_ERR_TOO_BIG for a message the store never takes
 * (an audit entry over STORE_MAX_AUDIT_ENTRY, say), which a retry cannot
 * mend. */
int store_send(struct store *s, const struct store_message *m, store_send_cb cb, void *ctx);

/*
 * A send the gateway refuses before it would store it (its agreement, a
 * limit, a key failure), unless it is a resend of a message accepted
 * earlier, under whatever agreement was in force then: the sender whose
 * receipt was lost must get it, not a refusal of what will be delivered.
 */
struct store_refusal {
	const char *sender, *message_id;
	uint8_t request_hash[32]; /* as store_message's */
	const char *audit_entry;  /* the "message.refused" entry body (see store_audit) */
	size_t audit_len;
};

/*
 * One job on the writer, in place of store_audit's: when (sender,
 * message_id) is stored with this request_hash, cb gets that message's
 * receipt (duplicate true) and nothing is written; otherwise (not stored,
 * or stored with other content) the refusal's entry is, and cb gets a
 * receipt with duplicate false and only audit_index set, its index. r is
 * NULL unless err is 0. Copies what it needs from f. Returns 0, or an
 * error without calling cb.
 */
int store_refuse_send(struct store *s, const struct store_refusal *f, store_send_cb cb, void *ctx);

/* --- fetch -------------------------------------------------------------- */

struct store_delivery {
	uint64_t gateway_id;
	char *message_id, *sender, *agreement_id, *purpose, *dataset;
	uint32_t agreement_version;
	uint64_t reply_to;
	int64_t accepted_at_ms;
	/* Unix ms from which it is no longer pending: no fetch hands it out and
	 * an ack finds it unknown, swept or not. */
	int64_t expires_at_ms;
	uint8_t *payload; /* opened (plaintext) */
	size_t payload_len;
};

struct store_fetch_result {
	size_t n;
	struct store_delivery *items;
	/* The last message read, opened or not: a payload that does not open
	 * is logged and left out of items, and a fetch after scanned_to goes
	 * on past it. 0 when none was read. */
	uint64_t scanned_to;
	bool more; /* stopped at max or the byte bound: more may wait */
};

/*
 * The recipient's unacknowledged, unexpired messages with gateway_id >
 * after_id, oldest first, at most max. The first time a message is handed
 * out, its "message.delivered" audit entry is written. res belongs to the
 * callback, which frees it with store_fetch_result_free (also on error; it
 * is then empty: no items, scanned_to 0, more false).
 */
typedef void (*store_fetch_cb)(void *ctx, int err, struct store_fetch_result *res);
int store_fetch(struct store *s, const char *recipient, uint64_t after_id, uint32_t max,
                store_fetch_cb cb, void *ctx);
/*
 * How the caller sends what a fetch hands out, so that the store hands out,
 * and audits as delivered, only what the caller then sends (docs/audit.md).
 * Both are called on the store's writer thread, and must not block.
 *   size: the bytes d takes as sent, at most, from its metadata and
 *     payload_len (its payload is not opened yet: d->payload is NULL);
 *   sendable: whether an opened payload can be sent at all. One that
 *     cannot is logged (store.bad_payload) and left out, its row as it was.
 */
struct store_fetch_sink {
	size_t (*size)(const struct store_delivery *d);
	bool (*sendable)(const uint8_t *payload, size_t len);
};
/*
 * store_fetch that adds a message only while the messages' sizes (the
 * sink's, or their payload lengths when sink is NULL) stay within
 * max_bytes; the first always comes, even with max_bytes 0. A fetch asks
 * for what one answer holds, a subscriber for what its connection can
 * take, so every message handed out and audited as delivered is sent.
 */
int store_fetch_within(struct store *s, const char *recipient, uint64_t after_id, uint32_t max,
                       size_t max_bytes, const struct store_fetch_sink *sink, store_fetch_cb cb,
                       void *ctx);
void store_fetch_result_free(struct store_fetch_result *res);

/* --- ack ---------------------------------------------------------------- */

/*
 * Acknowledge messages of this recipient: each one's payload is deleted and
 * a "message.acknowledged" entry written. Ids that are not pending for this
 * recipient are returned in unknown and change nothing; unknown is the
 * store's, valid only during the callback (NULL, with 0 and 0, on error).
 */
typedef void (*store_ack_cb)(void *ctx, int err, uint32_t acknowledged, const uint64_t *unknown,
                             size_t n_unknown);
int store_ack(struct store *s, const char *recipient, const uint64_t *ids, size_t n,
              store_ack_cb cb, void *ctx);

/* --- audit -------------------------------------------------------------- */

/*
 * Append one audit entry: kind such as "message.refused", entry its body,
 * one JSON object that starts with {"event":"<kind>" and has no white space
 * outside strings (ISG_ERR_INVALID otherwise, without calling cb). The
 * store wraps it into the leaf {"index":SEQ,"at":"<time>","entry":BODY}
 * (docs/audit-format.md). cb may be NULL. The callback gets the entry's
 * index (its seq).
 */
typedef void (*store_audit_cb)(void *ctx, int err, uint64_t audit_index);
int store_audit(struct store *s, const char *kind, const char *entry, size_t len, store_audit_cb cb,
                void *ctx);
/*
 * store_audit, then wait for the entry's commit: *committed is 0 once it is
 * on disk, else why not. Returns store_audit's result (not 0: nothing was
 * handed over, and *committed is that error too).
 */
int store_audit_wait(struct store *s, const char *kind, const char *entry, size_t len,
                     int *committed);

/*
 * The newest audit entry whose leaf holds an event of `kind` (of any kind
 * when NULL), read through a read-only connection of its own, like
 * store_usage_since; meant for looking back at start. *seq gets its audit
 * index and, when body is not NULL, *body its body as store_audit was
 * given it (malloc'd, NUL-terminated, *len bytes). Returns 0;
 * ISG_ERR_NOT_FOUND when there is none; ISG_ERR_CORRUPT, *seq set, when a
 * row on the way back cannot be judged: a leaf not in store_audit's form,
 * or a kind column that disagrees with its leaf where either is `kind`
 * (the column is not signed and the file may have been edited: an older
 * entry must not pass for the newest); ISG_ERR_STORE or ISG_ERR_NOMEM. It
 * reads every row back from the newest, so its time grows with the entries
 * written since the last one of `kind`.
 */
int store_audit_newest(struct store *s, const char *kind, uint64_t *seq, char **body, size_t *len)
    __attribute__((warn_unused_result));

/*
 * Copy the latest signed checkpoint note (NUL-terminated) into note.
 * ISG_ERR_NOT_FOUND when there is none yet, ISG_ERR_TOO_BIG when size is
 * too small (1024 bytes always suffice).
 */
int store_latest_checkpoint(struct store *s, char *note, size_t size);

/*
 * Have the writer sign a checkpoint of every entry written so far as soon
 * as it can, not audit.checkpoint_interval after the last one (when every
 * entry is covered already, with the next entry); returns at once. isgd
 * asks when the wall clock stepped forward: the entries written before the
 * step would otherwise look older than they are, and older than the grace
 * of `isgctl audit verify`, until the interval is over.
 */
void store_checkpoint_soon(struct store *s);

/* --- usage --------------------------------------------------------------- */

/* Accepted messages and records per (sender, agreement) since a time. */
struct store_usage {
	const char *sender, *agreement_id;
	uint64_t messages, records;
};

/*
 * Report usage since since_ms (Unix ms), one call of cb per (sender,
 * agreement), on the calling thread; u's strings live only for the call.
 * Reads through its own read-only connection, so it does not wait for the
 * writer; meant for rebuilding daily counters at start. ISG_ERR_STORE
 * (logged) when the store cannot be read, maybe after some calls of cb.
 */
int store_usage_since(struct store *s, int64_t since_ms,
                      void (*cb)(void *ctx, const struct store_usage *u), void *ctx);

/* --- notification ------------------------------------------------------- */

/*
 * Called on the writer thread, after a batch of jobs has committed, once
 * for each recipient the batch added messages for; until store_close
 * returns. A new fn (or NULL) takes effect from the next batch.
 */
typedef void (*store_notify_fn)(void *ctx, const char *recipient);
void store_set_notify(struct store *s, store_notify_fn fn, void *ctx);

#endif
