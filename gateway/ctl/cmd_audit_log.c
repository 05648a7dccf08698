/*
 * Where the audit log is and how the audit commands read it: the store
 * named by isgd's config (store.path, keys_dir, audit.origin) or by --store
 * and --keys, opened read-only (SQLITE_OPEN_READONLY: these commands never
 * write) in one read transaction, so each command sees one snapshot even
 * while isgd keeps writing. How it is opened is store_read.c's, shared with
 * store backup.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

#include "config/config.h"
#include "ctl/cmd_audit.h"
#include "ctl/ctl.h"
#include "ctl/store_read.h"
#include "keys/keys.h"

#define PUBKEY_FILE_MAX 4096

int audit_where_option(struct audit_where *w, int opt, const char *arg)
{
	switch (opt) {
	case AUDIT_OPT_CONFIG:
		w->config = arg;
		return 1;
	case AUDIT_OPT_STORE:
		w->store = arg;
		return 1;
	case AUDIT_OPT_KEYS:
		w->keys = arg;
		return 1;
	case AUDIT_OPT_ORIGIN:
		w->origin = arg;
		return 1;
	case AUDIT_OPT_PUBKEY:
		w->pubkey = arg;
		return 1;
	case AUDIT_OPT_PUBKEY_FILE:
		w->pubkey_file = arg;
		return 1;
	case AUDIT_OPT_HELP:
		w->help = true;
		return 1;
	default:
		return 0;
	}
}

static char *dup_or_null(const char *s)
{
	return s ? strdup(s) : NULL;
}

/* Take store.path, keys_dir and audit.origin from isgd's config file. */
static int read_config(struct audit_log *l, const char *path)
{
	struct isgd_config cfg;
	int status = ctl_isgd_config_load(path, &cfg);
	if (status == CTL_EXIT_OK) {
		l->store_path = dup_or_null(cfg.store_path);
		l->keys_dir = dup_or_null(cfg.keys_dir);
		l->origin = dup_or_null(cfg.audit_origin);
		l->checkpoint_interval_ms = cfg.checkpoint_interval_ms;
		if ((cfg.store_path && !l->store_path) || (cfg.keys_dir && !l->keys_dir) ||
		    (cfg.audit_origin && !l->origin)) {
			ctl_warn("out of memory");
			status = CTL_EXIT_LOCAL;
		}
	}
	config_release(&cfg);
	return status;
}

/* Replace *slot by a copy of s (when s is given). */
static int override(char **slot, const char *s)
{
	if (!s)
		return CTL_EXIT_OK;
	char *copy = strdup(s);
	if (!copy) {
		ctl_warn("out of memory");
		return CTL_EXIT_LOCAL;
	}
	free(*slot);
	*slot = copy;
	return CTL_EXIT_OK;
}

/* The query's single integer, or -1. */
static int64_t query_int(sqlite3 *db, const char *sql)
{
	sqlite3_stmt *st = NULL;
	int64_t v = -1;
	if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK &&
	    sqlite3_step(st) == SQLITE_ROW)
		v = sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	return v;
}

/* The store, and a check that it holds an audit log (ctl_store_open says the rest). */
static int open_store(struct audit_log *l)
{
	int status = ctl_store_open(l->store_path, true, &l->db, &l->real_path);
	if (status != CTL_EXIT_OK)
		return status;
	l->in_txn = true;
	int64_t tables = query_int(l->db, "SELECT count(*) FROM sqlite_master WHERE type = 'table'"
	                                  " AND name IN ('audit', 'checkpoints')");
	if (tables < 0) {
		ctl_warn("cannot read store '%s': %s", l->store_path, sqlite3_errmsg(l->db));
		return CTL_EXIT_LOCAL;
	}
	if (tables != 2) {
		ctl_warn("'%s' is not an isgd store with an audit log (no tables 'audit' and "
		         "'checkpoints')",
		         l->store_path);
		return CTL_EXIT_LOCAL;
	}
	return CTL_EXIT_OK;
}

/* The first line of a file, without its line end. */
static int read_key_file(const char *path, char out[static AUDIT_VERIFIER_KEY_MAX])
{
	char *buf = NULL;
	size_t len = 0;
	int status = audit_ctl_read_file(path, PUBKEY_FILE_MAX, &buf, &len);
	if (status != CTL_EXIT_OK)
		return status;
	size_t n = 0;
	while (n < len && buf[n] != '\n' && buf[n] != '\r')
		n++;
	if (n >= AUDIT_VERIFIER_KEY_MAX) {
		ctl_warn("'%s' does not hold a verifier key (its first line is too long)", path);
		status = CTL_EXIT_LOCAL;
	} else {
		memcpy(out, buf, n);
		out[n] = '\0';
	}
	free(buf);
	return status;
}

/*
 * A verifier key given is checked before anything is read or written, so
 * that a mistyped one never becomes a report that says only "not verified":
 * a bad --pubkey is a bad command line, a bad --pubkey-file a bad input file.
 * Its text is kept in l->given_key for audit_log_verifier.
 */
static int given_key_check(struct audit_log *l, const struct audit_where *w, const char *usage)
{
	char *text = l->given_key;
	struct audit_verifier v;
	const char *reason = NULL;
	if (w->pubkey) {
		if (str_copy(text, w->pubkey, AUDIT_VERIFIER_KEY_MAX) >= AUDIT_VERIFIER_KEY_MAX)
			return ctl_usage_error(usage,
			                       "--pubkey is not a valid verifier key: too long");
		if (audit_verifier_parse(text, strlen(text), &v, &reason) != 0)
			return ctl_usage_error(usage, "--pubkey is not a valid verifier key: %s",
			                       reason ? reason : "malformed");
		return CTL_EXIT_OK;
	}
	if (!w->pubkey_file)
		return CTL_EXIT_OK;
	int status = read_key_file(w->pubkey_file, text);
	if (status == CTL_EXIT_OK && audit_verifier_parse(text, strlen(text), &v, &reason) != 0) {
		ctl_warn("--pubkey-file '%s' is not a valid verifier key: %s", w->pubkey_file,
		         reason ? reason : "malformed");
		status = CTL_EXIT_LOCAL;
	}
	return status;
}

int audit_log_open(struct audit_log *l, const struct audit_where *w, const char *usage,
                   bool need_store)
{
	memset(l, 0, sizeof(*l));
	int status = CTL_EXIT_OK;
	/* one key to trust: neither may silently win over the other */
	if (w->pubkey && w->pubkey_file)
		return ctl_usage_error(usage, "give one verifier key: --pubkey or --pubkey-file, "
		                              "not both");
	if ((w->pubkey || w->pubkey_file) && w->keys && !w->keys_read)
		return ctl_usage_error(usage,
		                       "give --keys or %s, not both: the key given is the one "
		                       "trusted, and the keys directory would not be read",
		                       w->pubkey ? "--pubkey" : "--pubkey-file");
	if (!w->config && !w->store && !w->keys)
		return ctl_usage_error(usage, "say where the log is: --config ISGD_YAML, or %s",
		                       !(w->takes & AUDIT_TAKES_KEYS)    ? "--store DB"
		                       : !(w->takes & AUDIT_TAKES_STORE) ? "--keys KEYS_DIR"
		                                                         : "--store DB (and --keys "
		                                                           "KEYS_DIR)");
	status = given_key_check(l, w, usage);
	if (status == CTL_EXIT_OK && w->config)
		status = read_config(l, w->config);
	if (status == CTL_EXIT_OK)
		status = override(&l->store_path, w->store);
	if (status == CTL_EXIT_OK)
		status = override(&l->keys_dir, w->keys);
	if (status == CTL_EXIT_OK)
		status = override(&l->origin, w->origin   ? w->origin
		                              : l->origin ? NULL
		                                          : AUDIT_ORIGIN_DEFAULT);
	if (status == CTL_EXIT_OK && need_store && !l->store_path)
		return ctl_usage_error(usage, "no store: give --store DB or --config ISGD_YAML");
	if (status == CTL_EXIT_OK && need_store)
		status = open_store(l);
	return status;
}

void audit_log_release(struct audit_log *l)
{
	if (l->db) {
		if (l->in_txn)
			sqlite3_exec(l->db, "COMMIT", NULL, NULL, NULL);
		sqlite3_close(l->db);
	}
	free(l->store_path);
	free(l->real_path);
	free(l->keys_dir);
	free(l->origin);
	memset(l, 0, sizeof(*l));
}

sqlite3_stmt *audit_log_prepare(struct audit_log *l, const char *sql)
{
	sqlite3_stmt *st = NULL;
	if (sqlite3_prepare_v2(l->db, sql, -1, &st, NULL) != SQLITE_OK) {
		ctl_warn("cannot read store '%s': %s", l->store_path, sqlite3_errmsg(l->db));
		sqlite3_finalize(st);
		return NULL;
	}
	return st;
}

/* Why there is no verifier key: said now, and kept for report's page (l->key_error). */
static void __attribute__((format(printf, 2, 3)))
key_error(struct audit_log *l, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(l->key_error, sizeof(l->key_error), fmt, ap);
	va_end(ap);
	if (!l->key_error_quiet)
		ctl_warn("%s", l->key_error);
}

bool audit_key_file_unreadable(const char *keys_dir, const char *file)
{
	char path[PATH_MAX];
	int n = snprintf(path, sizeof(path), "%s/%s", keys_dir, file);
	if (n < 0 || (size_t)n >= sizeof(path))
		return false;
	return faccessat(AT_FDCWD, path, R_OK, AT_EACCESS) != 0 && errno == EACCES;
}

/* hint: what to do when this user cannot read the key, which depends on the command. */
static int signer_key(struct audit_log *l, char out[static AUDIT_VERIFIER_KEY_MAX],
                      const char *hint, bool pubkey_serves)
{
	if (!l->keys_dir) {
		key_error(l, "no keys directory: give --keys KEYS_DIR or --config ISGD_YAML%s",
		          pubkey_serves ? ", or the recorded verifier key with --pubkey KEY or "
		                          "--pubkey-file FILE"
		                        : "");
		return CTL_EXIT_LOCAL;
	}
	const char *origin = l->origin ? l->origin : AUDIT_ORIGIN_DEFAULT;
	char err[512] = "";
	uint8_t *seed = NULL;
	int rc = keys_load_audit_signing(l->keys_dir, &seed, err, sizeof(err));
	if (rc != 0) {
		if (rc == ISG_ERR_DENIED &&
		    audit_key_file_unreadable(l->keys_dir, KEYS_AUDIT_SIGNING_FILE))
			key_error(l, "%s (%s)", err[0] ? err : isg_strerror(rc), hint);
		else
			key_error(l, "%s", err[0] ? err : isg_strerror(rc));
		return CTL_EXIT_LOCAL;
	}
	struct audit_signer *s = NULL;
	rc = audit_signer_new(origin, seed, &s);
	keys_free(seed);
	if (rc != 0) {
		if (rc == ISG_ERR_INVALID)
			key_error(
			    l,
			    "origin '%s' is not a valid key name (1 to %d bytes, no spaces, no "
			    "'+')",
			    origin, AUDIT_NAME_MAX);
		else
			key_error(l, "%s", isg_strerror(rc));
		return CTL_EXIT_LOCAL;
	}
	audit_signer_verifier_key(s, out);
	audit_signer_free(s);
	return CTL_EXIT_OK;
}

int audit_log_signer_key(struct audit_log *l, char out[static AUDIT_VERIFIER_KEY_MAX])
{
	return signer_key(l, out, "run it as the keys' owner", false);
}

int audit_log_verifier(struct audit_log *l, const struct audit_where *w, struct audit_verifier *v,
                       char text[static AUDIT_VERIFIER_KEY_MAX], const char **from)
{
	int status = CTL_EXIT_OK;
	l->key_error[0] = '\0';
	if (w->pubkey || w->pubkey_file) { /* read and checked by audit_log_open */
		str_copy(text, l->given_key, AUDIT_VERIFIER_KEY_MAX);
		*from = w->pubkey ? "--pubkey" : w->pubkey_file;
	} else {
		status = signer_key(l, text,
		                    "run it as the keys' owner, or give the recorded verifier key "
		                    "with --pubkey-file",
		                    true);
		*from = "the gateway's signing key";
	}
	if (status != CTL_EXIT_OK)
		return status;
	const char *reason = NULL;
	if (audit_verifier_parse(text, strlen(text), v, &reason) != 0) {
		key_error(l, "%s is not a valid verifier key: %s", *from,
		          reason ? reason : "malformed");
		return CTL_EXIT_LOCAL;
	}
	/* A key given names its log's origin; an --origin that says otherwise is a mix-up. */
	if (w->origin && (w->pubkey || w->pubkey_file) && strcmp(w->origin, v->name) != 0) {
		key_error(l, "%s is the key of origin '%s', not of --origin '%s'", *from, v->name,
		          w->origin);
		return CTL_EXIT_LOCAL;
	}
	return CTL_EXIT_OK;
}

void audit_stored_cps_free(struct audit_stored_cp *cps, size_t n)
{
	for (size_t i = 0; cps && i < n; i++)
		free(cps[i].note);
	free(cps);
}

int audit_log_checkpoints(struct audit_log *l, struct audit_stored_cp **out, size_t *n)
{
	*out = NULL;
	*n = 0;
	sqlite3_stmt *st =
	    audit_log_prepare(l, "SELECT size, at, note FROM checkpoints ORDER BY size");
	if (!st)
		return CTL_EXIT_LOCAL;
	struct audit_stored_cp *cps = NULL;
	size_t count = 0, cap = 0;
	int rc, status = CTL_EXIT_OK;
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		if (count == cap) {
			size_t ncap = cap ? cap * 2 : 16;
			struct audit_stored_cp *p = realloc(cps, ncap * sizeof(*p));
			if (!p) {
				status = CTL_EXIT_LOCAL;
				break;
			}
			cps = p;
			cap = ncap;
		}
		struct audit_stored_cp *c = &cps[count];
		int64_t size = sqlite3_column_int64(st, 0);
		c->size = size < 0 ? UINT64_MAX : (uint64_t)size;
		c->at = sqlite3_column_int64(st, 1);
		const void *note = sqlite3_column_blob(st, 2);
		c->note_len = (size_t)sqlite3_column_bytes(st, 2);
		c->note = malloc(c->note_len + 1);
		if (!c->note) {
			status = CTL_EXIT_LOCAL;
			break;
		}
		if (c->note_len)
			memcpy(c->note, note, c->note_len);
		c->note[c->note_len] = '\0';
		count++;
	}
	if (status == CTL_EXIT_OK && rc != SQLITE_DONE) {
		ctl_warn("cannot read the checkpoints of '%s': %s", l->store_path,
		         sqlite3_errmsg(l->db));
		status = CTL_EXIT_LOCAL;
	} else if (status != CTL_EXIT_OK) {
		ctl_warn("out of memory");
	}
	sqlite3_finalize(st);
	if (status != CTL_EXIT_OK) {
		audit_stored_cps_free(cps, count);
		return status;
	}
	*out = cps;
	*n = count;
	return CTL_EXIT_OK;
}

int audit_log_count(struct audit_log *l, uint64_t *count, uint64_t *max_seq)
{
	sqlite3_stmt *st =
	    audit_log_prepare(l, "SELECT count(*), coalesce(max(seq), 0) FROM audit");
	if (!st)
		return CTL_EXIT_LOCAL;
	int status = CTL_EXIT_LOCAL;
	if (sqlite3_step(st) == SQLITE_ROW) {
		int64_t c = sqlite3_column_int64(st, 0), m = sqlite3_column_int64(st, 1);
		*count = c < 0 ? 0 : (uint64_t)c;
		*max_seq = m < 0 ? 0 : (uint64_t)m;
		status = CTL_EXIT_OK;
	} else {
		ctl_warn("cannot read the audit log of '%s': %s", l->store_path,
		         sqlite3_errmsg(l->db));
	}
	sqlite3_finalize(st);
	return status;
}

void audit_ctl_printable(char *out, size_t size, const char *s, size_t max)
{
	size_t o = 0, n = strlen(s);
	if (n > max)
		n = max;
	for (size_t i = 0; i < n && o + 5 < size;) {
		size_t len = str_utf8_char(s + i, n - i);
		if (len == 0 || str_utf8_control(s + i, len)) {
			out[o++] = '?';
			i++;
			continue;
		}
		memcpy(out + o, s + i, len);
		o += len;
		i += len;
	}
	if (size)
		out[o < size ? o : size - 1] = '\0';
}

int audit_ctl_read_file(const char *path, size_t max, char **buf, size_t *len)
{
	char err[512] = "";
	int rc = ctl_slurp(path, max, buf, len, err, sizeof(err));
	if (rc != 0) {
		ctl_warn("%s", err[0] ? err : isg_strerror(rc));
		return CTL_EXIT_LOCAL;
	}
	return CTL_EXIT_OK;
}
