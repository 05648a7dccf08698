/*
 * isgctl audit: private to the cmd_audit*.c files. The IG officer's tools
 * over the audit log in the isgd store (docs/audit.md): the log is read
 * through a read-only SQLite connection, in one read transaction, so a
 * running isgd is never disturbed and every command sees one snapshot.
 *
 * cmd_audit_json.c and cmd_audit_tree.c use nothing but util and audit, so
 * the unit tests (tests/unit/test_ctl_audit.c) compile them in.
 */
#ifndef ISG_CMD_AUDIT_H
#define ISG_CMD_AUDIT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <sqlite3.h>

#include "audit/audit.h"
#include "util/util.h"

#define AUDIT_ORIGIN_DEFAULT "isg-gateway"
/* Leaves longer than this are hashed but never parsed (a leaf isgd writes is far smaller). */
#define AUDIT_LEAF_PARSE_MAX (64u * 1024 * 1024)
/* Nesting deeper than this is refused (isgd's entries nest three levels). */
#define AJ_DEPTH_MAX 32

/* ---- cmd_audit_json.c: a bounded JSON reader for audit entries ---- */

enum aj_type { AJ_NULL, AJ_FALSE, AJ_TRUE, AJ_NUMBER, AJ_STRING, AJ_ARRAY, AJ_OBJECT };

/*
 * One value. Nodes live in one array and refer to each other by position;
 * 0 means "none" for child and next, since node 0 is the root and is never
 * anyone's child. Strings are decoded (NUL-terminated, never holding NUL);
 * numbers keep their literal text.
 */
struct aj_node {
	enum aj_type type;
	size_t child, next;
	const char *key; /* member name when the node is an object member */
	const char *str; /* string value, or a number's literal */
	size_t len;
};

struct aj_doc {
	struct aj_node *nodes;
	size_t n, cap;
	char *strings; /* decoded strings, each NUL-terminated */
	size_t used, size;
};

void aj_doc_init(struct aj_doc *d);
void aj_doc_release(struct aj_doc *d);
/*
 * Parse one JSON text (RFC 8259; UTF-8; no U+0000 in strings; at most
 * AJ_DEPTH_MAX levels). 0, ISG_ERR_PARSE with *reason (a static string that
 * never quotes the input), or ISG_ERR_NOMEM. The doc may be reused.
 */
int aj_parse(struct aj_doc *d, const char *text, size_t len, const char **reason);
const struct aj_node *aj_root(const struct aj_doc *d);
/* The first member of object o called key; NULL when there is none or o is no object. */
const struct aj_node *aj_member(const struct aj_doc *d, const struct aj_node *o, const char *key);
/* The member's string, or NULL when absent or not a string. */
const char *aj_string(const struct aj_doc *d, const struct aj_node *o, const char *key);
/* First child / next sibling; NULL at the end. */
const struct aj_node *aj_first(const struct aj_doc *d, const struct aj_node *n);
const struct aj_node *aj_next(const struct aj_doc *d, const struct aj_node *n);
/* A non-negative integer literal without sign, fraction, exponent or leading zeros. */
bool aj_uint(const struct aj_node *n, uint64_t *out);

/*
 * A leaf as the store writes it (docs/audit.md):
 *   {"index":SEQ,"at":"YYYY-MM-DDTHH:MM:SS.mmmZ","entry":{"event":KIND,...}}
 * with exactly these three members in this order.
 */
struct audit_leaf {
	uint64_t index;
	const char *at;             /* 24 characters */
	const struct aj_node *body; /* the entry object */
	const char *event;          /* body's "event" */
};
int audit_leaf_parse(struct aj_doc *d, const char *leaf, size_t len, struct audit_leaf *out,
                     const char **reason);

/* ---- cmd_audit_tree.c: proofs from what a streaming verifier keeps ---- */

/*
 * The consistency proof PROOF(n1, D[0:n2]) of RFC 9162 section 2.1.4.1,
 * built from the compact tree of the first n1 leaves (t1, t1->size == n1)
 * and the leaf hashes of entries n1 .. n2-1 (later[0 .. n2-n1)), so a
 * verifier that streams the log never holds more than the leaves since the
 * last checkpoint. Every hash in the proof is either a subtree of the first
 * n1 leaves on t1's frontier or a subtree of later leaves. ISG_ERR_INVALID
 * unless 0 < n1 <= n2 (n1 == n2: an empty proof); ISG_ERR_NOMEM.
 */
int audit_ctl_consistency_proof(const struct audit_tree *t1, const uint8_t (*later)[AUDIT_HASH_LEN],
                                uint64_t n2, uint8_t proof[static AUDIT_PROOF_MAX][AUDIT_HASH_LEN],
                                size_t *proof_len);

/* Base64 of len bytes into out (NUL-terminated; sodium_base64_ENCODED_LEN(len) bytes). */
void audit_ctl_b64(char *out, size_t size, const uint8_t *in, size_t len);

/* ---- cmd_audit_log.c: where the log is, and reading it ---- */

/*
 * Options that say where the log is (docs/isgctl.md). Each command takes
 * those it reads, and no other: an option a command would ignore is an
 * unknown option there, not a silent no-op ("audit checkpoint --keys K").
 */
enum {
	AUDIT_OPT_CONFIG = 2000,
	AUDIT_OPT_STORE,
	AUDIT_OPT_KEYS,
	AUDIT_OPT_ORIGIN,
	AUDIT_OPT_PUBKEY,
	AUDIT_OPT_PUBKEY_FILE,
	AUDIT_OPT_HELP,
	AUDIT_OPT_FIRST_OWN, /* a command's own options start here */
};

/* clang-format off */
#define AUDIT_LONGOPT_CONFIG {"config", required_argument, NULL, AUDIT_OPT_CONFIG}
#define AUDIT_LONGOPT_STORE {"store", required_argument, NULL, AUDIT_OPT_STORE}
#define AUDIT_LONGOPT_KEYS {"keys", required_argument, NULL, AUDIT_OPT_KEYS}
#define AUDIT_LONGOPT_ORIGIN {"origin", required_argument, NULL, AUDIT_OPT_ORIGIN}
#define AUDIT_LONGOPT_HELP {"help", no_argument, NULL, AUDIT_OPT_HELP}
/* The store and the signing key: what verify, prove, export and report read. */
#define AUDIT_LOG_LONGOPTS \
	AUDIT_LONGOPT_CONFIG, AUDIT_LONGOPT_STORE, AUDIT_LONGOPT_KEYS, AUDIT_LONGOPT_ORIGIN, \
	AUDIT_LONGOPT_HELP
#define AUDIT_KEY_LONGOPTS \
	{"pubkey", required_argument, NULL, AUDIT_OPT_PUBKEY}, \
	{"pubkey-file", required_argument, NULL, AUDIT_OPT_PUBKEY_FILE}
/* clang-format on */

/* Which of --store, --keys and --origin a command takes (--config it always takes). */
enum {
	AUDIT_TAKES_STORE = 1,
	AUDIT_TAKES_KEYS = 2,
	AUDIT_TAKES_ORIGIN = 4,
	AUDIT_TAKES_ALL = 7,
};

/* What --config and those of --store, --keys and --origin it takes mean, for --help. */
void audit_where_help(FILE *out, unsigned takes);

struct audit_where {
	const char *config, *store, *keys, *origin;
	const char *pubkey, *pubkey_file;
	bool help;
	unsigned takes; /* AUDIT_TAKES_*: the command's, for "say where the log is" */
	bool keys_read; /* KEYS_DIR is read even beside --pubkey (subject: the audit domain) */
};

/* A getopt result: 1 when it was one of the options above (or --help), 0 when not. */
int audit_where_option(struct audit_where *w, int opt, const char *arg);

#define AUDIT_KEY_ERROR_MAX 512

struct audit_log {
	sqlite3 *db;
	char *store_path, *keys_dir, *origin; /* keys_dir NULL when not known */
	char *real_path;                      /* store_path resolved, once opened */
	int64_t checkpoint_interval_ms; /* the config's audit.checkpoint_interval; 0: unknown */
	bool in_txn;
	char key_error[AUDIT_KEY_ERROR_MAX]; /* why audit_log_verifier failed; "" when unknown */
	bool key_error_quiet; /* keep key_error unsaid: the caller says it in its own line */
	char given_key[AUDIT_VERIFIER_KEY_MAX]; /* --pubkey or --pubkey-file's text, checked */
};

/*
 * Resolve --config / --store / --keys / --origin and, with need_store, open
 * the store read-only in a read transaction. A --pubkey that is no verifier
 * key is a usage error, a --pubkey-file that holds none an error, before
 * anything is read. Returns an exit status; prints why on failure. `usage`
 * is printed on a usage error. Release l always.
 */
int audit_log_open(struct audit_log *l, const struct audit_where *w, const char *usage,
                   bool need_store);
void audit_log_release(struct audit_log *l);
/* True when this user cannot read KEYS_DIR/file at all (the directory or the file is another
 * user's, EACCES), rather than the key in it being wrong. */
bool audit_key_file_unreadable(const char *keys_dir, const char *file);
/* Prepare a statement; prints the SQLite error and returns NULL on failure. */
sqlite3_stmt *audit_log_prepare(struct audit_log *l, const char *sql);

/* The verifier key text for the configured signing key (keys_dir/audit-signing.key). */
int audit_log_signer_key(struct audit_log *l, char out[static AUDIT_VERIFIER_KEY_MAX]);
/*
 * The verifier the commands check against: --pubkey, --pubkey-file, or the
 * configured signing key. *from says where it came from. Exit status; on
 * failure l->key_error holds what it said (for the report's page).
 * audit_log_open has already refused a malformed --pubkey or --pubkey-file.
 */
int audit_log_verifier(struct audit_log *l, const struct audit_where *w, struct audit_verifier *v,
                       char text[static AUDIT_VERIFIER_KEY_MAX], const char **from);

/* One stored checkpoint. */
struct audit_stored_cp {
	uint64_t size;
	int64_t at; /* when isgd wrote it (Unix ms): the row's column, not signed */
	char *note;
	size_t note_len;
};
/* Every stored checkpoint, smallest size first. Exit status. */
int audit_log_checkpoints(struct audit_log *l, struct audit_stored_cp **out, size_t *n);
void audit_stored_cps_free(struct audit_stored_cp *cps, size_t n);
/* Number of entries and the largest seq (0, 0 for an empty log). */
int audit_log_count(struct audit_log *l, uint64_t *count, uint64_t *max_seq);

/* Text safe to print: control characters and invalid UTF-8 become '?', at most max bytes. */
void audit_ctl_printable(char *out, size_t size, const char *s, size_t max);
/* Read a small text file (a saved checkpoint, a key) of at most max bytes. Exit status. */
int audit_ctl_read_file(const char *path, size_t max, char **buf, size_t *len);

/* ---- cmd_audit_read.c: every entry, judged by its signed bytes (list, subject, report) ---- */

/*
 * YYYY-MM-DD (the whole day: its start, or with end set its last
 * millisecond) or YYYY-MM-DDTHH:MM:SS[.mmm]Z, into Unix ms; with end set, a
 * time without milliseconds is the last millisecond of its second. A
 * signed entry's at reads the same way. 0 or ISG_ERR_PARSE.
 */
int audit_time_parse(const char *s, bool end, int64_t *ms);

/* The events isgd writes (docs/audit.md, "What is logged"). */
extern const char *const audit_events[];
extern const size_t audit_events_n;
/*
 * Whether s is one of those events. Only then is a kind column's text
 * shown: an edited column may hold anything, a person's data included, and
 * text shaped like a kind ("okafor.9434765919") is no safer.
 */
bool audit_event_known(const char *s);
/*
 * Whether a kind column (len bytes: a NUL inside makes it longer than its
 * text) differs from the signed entry's event, by length too, so that
 * 'message.accepted' || x'00' || '...' is an edit like any other;
 * *nameable when both may be shown (see audit_event_known).
 */
bool audit_kind_differs(const char *kind, size_t len, const char *event, bool *nameable);

/* Entries named by index in a warning; the rest are counted. */
#define AUDIT_READ_SHOWN 10

/*
 * A read of the whole log for list, subject and report. Every row is read,
 * whatever its unsigned at, kind and seq columns say, and judged by its
 * leaf: the signed time places it in the period [from_ms, to_ms], and the
 * signed entry is what is printed or counted. A leaf that cannot be read
 * (or whose time is no time) cannot be placed: it is `unread`, and may
 * belong to any period. A row whose columns disagree with its leaf was
 * edited: it is `edited`, and still judged by its leaf alone. The first of
 * each is warned about on standard error, by index (and for an edited kind
 * by the two kind names, never another value), and the edited ones counted
 * at the end; a quiet reader counts them without a word.
 */
struct audit_reader {
	int64_t from_ms, to_ms;
	bool quiet; /* a second read of the log: the first one warned */
	struct aj_doc doc;
	uint64_t unread, edited;
	int64_t unread_seq[AUDIT_READ_SHOWN], edited_index[AUDIT_READ_SHOWN];
};

/*
 * One entry of the period: its parsed leaf (in d), its signed time and its
 * exact bytes. Returns an exit status; anything but CTL_EXIT_OK stops the
 * read (the callback has said why).
 */
typedef int (*audit_entry_fn)(void *ctx, const struct aj_doc *d, const struct audit_leaf *lf,
                              int64_t at_ms, const char *leaf, size_t len);

/* The period, both ends included: INT64_MIN and INT64_MAX for the whole log. */
void audit_reader_init(struct audit_reader *r, int64_t from_ms, int64_t to_ms);
void audit_reader_release(struct audit_reader *r);
/* Read every entry of the open log, in the table's order. Exit status. */
int audit_read_entries(struct audit_log *l, struct audit_reader *r, audit_entry_fn fn, void *ctx);
/* Append the indexes of the entries that could not be read: "3, 9 and 4 more". */
void audit_reader_unread_text(const struct audit_reader *r, struct strbuf *b);
/*
 * Say that an answer left out entries it could not read (r->unread > 0):
 * "ANSWER is INCOMPLETE: N entries (SEQ, ...) could not be read and WHY".
 */
void audit_reader_incomplete(const struct audit_reader *r, const char *answer, const char *why);

/* ---- cmd_audit_output.c: where export and report write ---- */

/*
 * Standard output when path is NULL. Otherwise a new file of mode 0600
 * beside path (".NAME.XXXXXX"), renamed over path by audit_output_close
 * only once written whole: the output holds what the log holds, so an
 * existing file's wider mode must not carry over, and a failure must leave
 * an earlier file as it was. What is at path already and is not a plain
 * file (a FIFO, a device such as /dev/stdout, a symbolic link) is written
 * through instead, and a plain file reached through a link is cut to 0600.
 */
struct audit_output {
	FILE *f;
	const char *path; /* NULL: standard output */
	const char *what; /* standard output in messages: "the export" */
	char *tmp;        /* renamed over path; NULL when there is none */
};
/* Exit status; says why on failure. */
int audit_output_open(struct audit_output *o, const char *path, const char *what);
/*
 * Flush, sync and close, then rename the temporary file over path. When
 * write_failed (the caller's writes failed) or anything here fails, say so;
 * when abandoned (the caller failed and said why), silently. Either way the
 * temporary file is removed, never path. Exit status.
 */
int audit_output_close(struct audit_output *o, bool write_failed, bool abandoned);
/*
 * Whether two output paths name one file, so that writing both would leave
 * one: the same file when both exist (stat's device and inode, through any
 * link), else the same name in the same directory once the directories are
 * resolved ("r.html", "./r.html", "/abs/r.html").
 */
bool audit_output_same(const char *a, const char *b);

/* ---- cmd_audit_verify.c: the checks of audit verify, for the report ---- */

/*
 * How long entries may stay covered by no signed checkpoint before verify
 * calls it a problem. isgd signs within audit.checkpoint_interval (10 s by
 * default, at most a day) of an entry and when it stops: ten minutes is 60
 * default intervals, room for a slow disk or a retried signature, and short
 * enough that deleted checkpoints show the same day.
 */
#define AUDIT_GRACE_DEFAULT_MS (600 * 1000LL)
/* The --grace option's bound, in seconds (about 100 years). */
#define AUDIT_GRACE_MAX_S (3153600000LL)
/* The default grace: ten minutes, or twice the configured interval when longer. */
int64_t audit_grace_default_ms(const struct audit_log *l);
/*
 * Parse --grace SECONDS (verify's and report's) into *ms: CTL_EXIT_OK, or
 * CTL_EXIT_USAGE after saying why and printing usage.
 */
int audit_grace_option(const char *arg, const char *usage, int64_t *ms);

struct audit_verify_result {
	unsigned problems;
	uint64_t entries;
	size_t checkpoints;   /* stored checkpoints whose signature verified */
	uint64_t latest_size; /* of the latest verified checkpoint; 0 when none */
	uint8_t latest_root[AUDIT_HASH_LEN];
	uint64_t uncovered; /* entries after the latest checkpoint */
	uint64_t stale;     /* of those, written longer than the grace ago (a problem) */
	/* entries with an earlier time than the entry before them (isgd's clock set back;
	 * not a problem): how many, the first, and the largest step back */
	uint64_t times_back;
	int64_t times_back_seq, times_back_max_ms;
	size_t saved, saved_matched; /* --against checkpoints given, and those the log holds */
	unsigned saved_unreadable;   /* of them, files that hold no checkpoint (each a problem) */
};
/*
 * Run every check of `isgctl audit verify` on an open log, with the
 * checkpoints saved elsewhere in the files against[0 .. n_against) as its
 * --against, writing each problem to out as a line "problem: ...". Entries
 * covered by no checkpoint and older than grace_ms are a problem.
 * CTL_EXIT_OK when the log and those files could be read (res->problems
 * says whether it verified).
 */
int audit_verify_log(struct audit_log *l, const struct audit_verifier *v, int64_t grace_ms,
                     char **against, size_t n_against, FILE *out, struct audit_verify_result *res);

/* ---- cmd_audit_integrity.c: what list and subject say of the log they answered from ---- */

/*
 * list and subject answer from the entries as they are now: an entry
 * edited in the table (a pseudonym shortened by one character) is read as
 * edited. Only the signed checkpoints tell, so they run the checks of
 * verify too, in the same read transaction, and end by saying the result.
 */
struct audit_integrity {
	bool checked; /* a verifier key could be used, and the checks ran */
	char key_error[AUDIT_KEY_ERROR_MAX];
	struct audit_verify_result vr;
};
/*
 * The checks of verify (with --against files, the default grace). Problems
 * are counted, not printed: verify names them. Exit status: only a log or
 * an --against file that cannot be read fails it; a verifier key that
 * cannot be had leaves in->checked false.
 */
int audit_integrity_check(struct audit_log *l, const struct audit_where *w, char **against,
                          size_t n_against, struct audit_integrity *in);
/*
 * The result, on standard error, naming what it vouches for ("answer",
 * "list"): CTL_EXIT_OK when the log verified, CTL_EXIT_LOCAL when it failed
 * or could not be checked (the answer may then be incomplete or wrong).
 */
int audit_integrity_say(const struct audit_integrity *in, const char *answer);

/* ---- the subcommands ---- */

int audit_pubkey_cmd(int argc, char **argv);
int audit_checkpoint_cmd(int argc, char **argv);
int audit_verify_cmd(int argc, char **argv);
int audit_prove_cmd(int argc, char **argv);
int audit_list_cmd(int argc, char **argv);
int audit_subject_cmd(int argc, char **argv);
int audit_export_cmd(int argc, char **argv);
int audit_report_cmd(int argc, char **argv);

#endif
