/*
 * isgctl audit export: the whole log as JSON Lines that anyone can verify
 * without ISG's code (docs/audit.md, "The export format"):
 *
 *   {"type":"header","format":"isg-audit-export-v1","origin":"...","verifier_key":"..."}
 *   {"type":"entry","seq":1,"leaf":"<base64 of the exact leaf bytes>"}
 *   ...
 *   {"type":"checkpoint","note":"<the signed note, as stored>"}
 *
 * Entries come in seq order; each stored checkpoint follows the entry its
 * size ends at (one of size 0 follows the header, and any that cover more
 * entries than the log holds come last, where a verifier will find them).
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "ctl/cmd_audit.h"
#include "ctl/ctl.h"

#define EXPORT_FORMAT "isg-audit-export-v1"

static const char export_usage[] =
    "usage: isgctl audit export (--config ISGD_YAML | --store DB [--keys KEYS_DIR])\n"
    "                           [--origin NAME] [--pubkey KEY | --pubkey-file FILE]\n"
    "                           [--output FILE]\n";

struct exporter {
	FILE *out;
	struct audit_stored_cp *cps;
	size_t n_cps, next_cp;
	bool failed;
};

static void put_checkpoint(struct exporter *ex, const struct audit_stored_cp *c)
{
	struct strbuf b;
	strbuf_init(&b);
	strbuf_puts(&b, "{\"type\":\"checkpoint\",\"note\":");
	/* A stored note is text; a tampered one with a NUL is cut there (verify reports it). */
	strbuf_json_string(&b, c->note);
	strbuf_puts(&b, "}\n");
	size_t len = 0;
	char *text = strbuf_take(&b, &len);
	if (!text || fwrite(text, 1, len, ex->out) != len)
		ex->failed = true;
	free(text);
}

/* Checkpoints whose size is at most n (and not written yet). */
static void put_checkpoints_upto(struct exporter *ex, uint64_t n)
{
	while (ex->next_cp < ex->n_cps && ex->cps[ex->next_cp].size <= n)
		put_checkpoint(ex, &ex->cps[ex->next_cp++]);
}

static void put_entry(struct exporter *ex, int64_t seq, const uint8_t *leaf, size_t len)
{
	size_t elen = sodium_base64_ENCODED_LEN(len, sodium_base64_VARIANT_ORIGINAL);
	char *enc = malloc(elen);
	if (!enc) {
		ex->failed = true;
		return;
	}
	audit_ctl_b64(enc, elen, leaf, len);
	if (fprintf(ex->out, "{\"type\":\"entry\",\"seq\":%" PRId64 ",\"leaf\":\"%s\"}\n", seq,
	            enc) < 0)
		ex->failed = true;
	free(enc);
}

/* The log's origin: the latest checkpoint's first line, else the configured one. */
static void put_header(struct exporter *ex, const struct audit_log *l, const char *vkey)
{
	char origin[AUDIT_NAME_MAX + 1];
	str_copy(origin, l->origin ? l->origin : AUDIT_ORIGIN_DEFAULT, sizeof(origin));
	if (ex->n_cps) {
		const struct audit_stored_cp *c = &ex->cps[ex->n_cps - 1];
		const char *nl = memchr(c->note, '\n', c->note_len);
		size_t n = nl ? (size_t)(nl - c->note) : 0;
		if (n > 0 && n <= AUDIT_NAME_MAX) {
			memcpy(origin, c->note, n);
			origin[n] = '\0';
		}
	}
	struct strbuf b;
	strbuf_init(&b);
	strbuf_puts(&b, "{\"type\":\"header\",\"format\":\"" EXPORT_FORMAT "\",\"origin\":");
	strbuf_json_string(&b, origin);
	strbuf_puts(&b, ",\"verifier_key\":");
	if (vkey)
		strbuf_json_string(&b, vkey);
	else
		strbuf_puts(&b, "null");
	strbuf_puts(&b, "}\n");
	size_t len = 0;
	char *text = strbuf_take(&b, &len);
	if (!text || fwrite(text, 1, len, ex->out) != len)
		ex->failed = true;
	free(text);
}

static int export_entries(struct exporter *ex, struct audit_log *l)
{
	sqlite3_stmt *st = audit_log_prepare(l, "SELECT seq, entry FROM audit ORDER BY seq");
	if (!st)
		return CTL_EXIT_LOCAL;
	int rc;
	uint64_t rows = 0;
	put_checkpoints_upto(ex, 0);
	while (!ex->failed && (rc = sqlite3_step(st)) == SQLITE_ROW) {
		const void *leaf = sqlite3_column_blob(st, 1);
		size_t len = (size_t)sqlite3_column_bytes(st, 1);
		put_entry(ex, sqlite3_column_int64(st, 0), leaf ? leaf : (const void *)"", len);
		put_checkpoints_upto(ex, ++rows);
	}
	put_checkpoints_upto(ex, UINT64_MAX);
	int status = CTL_EXIT_OK;
	if (!ex->failed && rc != SQLITE_DONE) {
		ctl_warn("cannot read the audit log of '%s': %s", l->store_path,
		         sqlite3_errmsg(l->db));
		status = CTL_EXIT_LOCAL;
	}
	sqlite3_finalize(st);
	return status;
}

/*
 * The verifier key for the header: --pubkey or --pubkey-file (which must be
 * good), else the signing key's if it can be read; NULL when there is none.
 */
static const char *header_key(struct audit_log *l, const struct audit_where *w,
                              char key[static AUDIT_VERIFIER_KEY_MAX], int *status)
{
	struct audit_verifier v;
	const char *from = NULL;
	bool given = w->pubkey || w->pubkey_file;
	*status = given || l->keys_dir ? audit_log_verifier(l, w, &v, key, &from) : CTL_EXIT_LOCAL;
	if (*status == CTL_EXIT_OK)
		return key;
	if (given)
		return NULL;
	ctl_warn("note: no verifier key in the header (give --pubkey); a verifier must get "
	         "the key elsewhere anyway");
	*status = CTL_EXIT_OK;
	return NULL;
}

int audit_export_cmd(int argc, char **argv)
{
	static const struct option opts[] = {
	    AUDIT_LOG_LONGOPTS,
	    AUDIT_KEY_LONGOPTS,
	    {"output", required_argument, NULL, AUDIT_OPT_FIRST_OWN},
	    {NULL, 0, NULL, 0},
	};
	struct audit_where w = {.takes = AUDIT_TAKES_ALL};
	const char *output = NULL;
	struct ctl_opts parse;
	ctl_opts_init(&parse, argc, argv, ":", opts, export_usage);
	int opt;
	while ((opt = ctl_opts_next(&parse)) != CTL_OPTS_END) {
		if (opt == CTL_OPTS_ERROR)
			return CTL_EXIT_USAGE;
		if (opt == AUDIT_OPT_FIRST_OWN)
			output = optarg;
		else
			audit_where_option(&w, opt, optarg);
	}
	if (w.help) {
		printf(
		    "%s\nWrites the whole log as JSON Lines: a header (format, origin, verifier\n"
		    "key), then every entry with its exact leaf bytes in base64, and every\n"
		    "signed checkpoint after the entry its size ends at. Anyone can verify it\n"
		    "without ISG's code (docs/audit.md). --output FILE writes FILE (mode 0600)\n"
		    "instead of standard output: a new file, renamed over FILE once written\n"
		    "whole, so a failure leaves an earlier FILE as it was (a FIFO, device or\n"
		    "symbolic link there is written through instead).\n\n",
		    export_usage);
		audit_where_help(stdout, w.takes);
		return CTL_EXIT_OK;
	}
	if (optind != argc)
		return ctl_usage_error(export_usage, "audit export takes no arguments");
	struct audit_log l;
	struct exporter ex = {0};
	char key[AUDIT_VERIFIER_KEY_MAX];
	const char *vkey = NULL;
	struct audit_output o;
	int status = audit_log_open(&l, &w, export_usage, true);
	if (status == CTL_EXIT_OK)
		status = audit_log_checkpoints(&l, &ex.cps, &ex.n_cps);
	if (status == CTL_EXIT_OK)
		vkey = header_key(&l, &w, key, &status);
	if (status == CTL_EXIT_OK)
		status = audit_output_open(&o, output, "the export");
	if (status == CTL_EXIT_OK) {
		ex.out = o.f;
		put_header(&ex, &l, vkey);
		status = export_entries(&ex, &l);
		int cs = audit_output_close(&o, ex.failed, status != CTL_EXIT_OK);
		if (status == CTL_EXIT_OK)
			status = cs;
	}
	audit_stored_cps_free(ex.cps, ex.n_cps);
	audit_log_release(&l);
	return status;
}
