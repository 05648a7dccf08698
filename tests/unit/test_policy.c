/*
 * Policy: loading a directory (valid and broken files, with positions), the
 * version hash, recognising partners by certificate, and every refusal rule
 * of policy_apply through real Isg__SendRequest structs.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ftw.h>
#include <limits.h>
#include <math.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>
#include <sodium.h>

#include "policy/internal.h" /* policy_load_at */
#include "policy/policy.h"
#include "util/util.h"
#include "ydoc/ydoc.h"

static char data_dir[4096];

static int setup(void **state)
{
	/* The build's copy of tests/data/policy: the checkout's may be group-writable. */
	const char *d = getenv("ISG_TEST_POLICY");
	if (!d) {
		fprintf(stderr, "ISG_TEST_POLICY is not set (run through ctest)\n");
		return -1;
	}
	snprintf(data_dir, sizeof(data_dir), "%s", d);
	return 0;
}

static char *fixture(const char *rel)
{
	static char path[4][4400];
	static int next;
	char *p = path[next++ % 4];
	snprintf(p, sizeof(path[0]), "%s/%s", data_dir, rel);
	return p;
}

static int64_t day_ms(const char *date, int hour)
{
	int64_t days;
	assert_int_equal(date_parse_days(date, &days), 0);
	return days * 86400000 + (int64_t)hour * 3600000;
}

/* ---- temporary policy directories ---- */

static void copy_file(const char *from, const char *to)
{
	FILE *in = fopen(from, "rb");
	assert_non_null(in);
	FILE *out = fopen(to, "wb");
	assert_non_null(out);
	char buf[4096];
	size_t n;
	while ((n = fread(buf, 1, sizeof(buf), in)) > 0)
		assert_int_equal(fwrite(buf, 1, n, out), n);
	fclose(in);
	fclose(out);
}

static char *temp_policy_dir(void)
{
	static char dir[64];
	snprintf(dir, sizeof(dir), "/tmp/test_policy_XXXXXX");
	assert_non_null(mkdtemp(dir));
	char sub[128];
	snprintf(sub, sizeof(sub), "%s/agreements", dir);
	assert_int_equal(mkdir(sub, 0700), 0);
	return dir;
}

/* Put a fixture into dir under rel ("partners.yaml", "agreements/x.yaml"). */
static void install(const char *dir, const char *fixture_rel, const char *rel)
{
	char to[4400];
	snprintf(to, sizeof(to), "%s/%s", dir, rel);
	copy_file(fixture(fixture_rel), to);
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	return remove(path);
}

static void remove_dir(const char *dir)
{
	nftw(dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
}

/* ---- the valid set ---- */

static struct policy_set *load_valid(void)
{
	struct ydoc_diags d;
	ydoc_diags_init(&d);
	struct policy_set *set = NULL;
	/* A day it is in force, so that no expiry warning comes with the years. */
	int err = policy_load_at(fixture("valid"), day_ms("2026-06-01", 0) / 86400000, &set, &d);
	ydoc_diags_print(&d, stderr);
	assert_int_equal(err, 0);
	assert_int_equal(d.errors, 0);
	assert_int_equal(d.warnings, 0);
	ydoc_diags_release(&d);
	return set;
}

static void test_valid_set_loads(void **state)
{
	struct policy_set *set = load_valid();
	assert_int_equal(strlen(set->version), 64);
	assert_int_equal(strspn(set->version, "0123456789abcdef"), 64);
	assert_int_equal(set->n_partners, 4);
	/* README.txt and an editor's lock file (.#x.yaml) are not agreements. */
	assert_int_equal(set->n_agreements, 3);

	const struct policy_partner *met = policy_partner_by_id(set, "met-police");
	assert_non_null(met);
	assert_string_equal(met->name, "Metropolitan Police Service");
	assert_int_equal(met->kind, PARTNER_POLICE);
	assert_string_equal(met->contact, "dpo@met-police.test");
	assert_int_equal(met->n_match, 2);
	assert_int_equal(met->match[0].kind, MATCH_SUBJECT_CN);
	assert_int_equal(met->match[1].kind, MATCH_SAN_URI);
	const struct policy_partner *nhs = policy_partner_by_id(set, "nhs-trust");
	assert_null(nhs->contact);
	assert_string_equal(nhs->match[0].value, "nhs-trust.isg.test"); /* folded */
	const struct policy_partner *council = policy_partner_by_id(set, "city-council");
	assert_int_equal(council->match[0].kind, MATCH_SPKI_SHA256);
	assert_string_equal(council->match[0].value,
	                    "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff");
	assert_int_equal(council->match[0].spki[10], 0xaa);
	assert_int_equal(policy_partner_by_id(set, "other-org")->n_match, 2);
	assert_null(policy_partner_by_id(set, "nobody"));

	/* Agreements come in file-name order. */
	assert_string_equal(set->agreements[0].id, "council-planning");
	assert_string_equal(set->agreements[1].id, "nhs-police-reply");
	const struct policy_agreement *a = policy_agreement_by_id(set, "police-nhs-safeguarding");
	assert_ptr_equal(a, &set->agreements[2]);
	assert_non_null(strstr(a->file, "valid/agreements/police-nhs-safeguarding.yaml"));
	assert_int_equal(a->version, 3);
	assert_string_equal(a->title, "Adult safeguarding concerns from police to health");
	assert_int_equal(a->n_controllers, 2);
	assert_string_equal(a->controllers[1], "nhs-trust");
	assert_int_equal(a->n_senders, 1);
	assert_string_equal(a->senders[0], "met-police");
	assert_string_equal(a->recipients[0], "nhs-trust");
	assert_string_equal(a->purpose_code, "adult-safeguarding");
	assert_int_equal(a->n_lawful_basis, 3);
	assert_string_equal(a->lawful_basis[2], "DPA 2018 Sch. 1 Pt 2 para 18");
	assert_string_equal(a->dpia, "DPIA-2025-014");
	int64_t from, until;
	date_parse_days("2025-01-01", &from);
	date_parse_days("2027-12-31", &until);
	assert_int_equal(a->valid_from_days, from);
	assert_int_equal(a->valid_until_days, until);
	assert_int_equal(a->undelivered_ttl_ms, 14LL * 86400000);
	assert_false(a->allow_reply);
	assert_int_equal(a->max_records_per_message, 3);
	assert_int_equal(a->n_datasets, 2);
	const struct policy_dataset *ds = &a->datasets[0];
	assert_string_equal(ds->name, "safeguarding-concern");
	assert_false(ds->unknown_drop);
	assert_true(a->datasets[1].unknown_drop);
	assert_int_equal(ds->n_fields, 8);
	assert_string_equal(ds->fields[0].name, "nhs_number");
	assert_int_equal(ds->fields[0].type, FIELD_NHS_NUMBER);
	assert_int_equal(ds->fields[0].action, ACTION_PASS);
	assert_true(ds->fields[0].required);
	assert_int_equal(ds->fields[0].line, 26);
	assert_int_equal(ds->fields[0].col, 11);
	assert_int_equal(ds->fields[4].action, ACTION_DROP);
	assert_false(ds->fields[4].required);

	const struct policy_agreement *reply = policy_agreement_by_id(set, "nhs-police-reply");
	assert_true(reply->allow_reply);
	assert_int_equal(reply->valid_until_days, INT64_MAX);
	assert_int_equal(reply->max_records_per_message, 0);
	assert_int_equal(reply->undelivered_ttl_ms, 0);
	assert_int_equal(reply->n_controllers, 0);
	assert_null(reply->dpia);
	assert_null(policy_agreement_by_id(set, "nope"));

	assert_string_equal(policy_field_type_name(FIELD_PNC_ID), "pnc_id");
	assert_string_equal(policy_field_action_name(ACTION_PSEUDONYMISE), "pseudonymise");
	assert_string_equal(policy_partner_kind_name(PARTNER_NHS), "nhs");
	policy_set_unref(set);
}

static void test_refcount(void **state)
{
	struct policy_set *set = load_valid();
	assert_ptr_equal(policy_set_ref(set), set);
	assert_int_equal(atomic_load(&set->refs), 2);
	policy_set_unref(set);
	assert_int_equal(atomic_load(&set->refs), 1);
	policy_set_unref(set); /* frees: ASan reports a leak or a double free otherwise */
	policy_set_unref(NULL);
	assert_null(policy_set_ref(NULL));
}

/* The documented construction, computed independently of the loader. */
static void expected_version(const char *dir, const char *const *rels, size_t n, char out[65])
{
	crypto_hash_sha256_state h;
	crypto_hash_sha256_init(&h);
	for (size_t i = 0; i < n; i++) {
		char path[4400];
		snprintf(path, sizeof(path), "%s/%s", dir, rels[i]);
		FILE *f = fopen(path, "rb");
		assert_non_null(f);
		static char content[1 << 16];
		size_t len = fread(content, 1, sizeof(content), f);
		fclose(f);
		uint8_t be[8];
		uint64_t lens[2] = {strlen(rels[i]), len};
		const void *parts[2] = {rels[i], content};
		for (int p = 0; p < 2; p++) {
			for (int k = 0; k < 8; k++)
				be[k] = (uint8_t)(lens[p] >> (56 - 8 * k));
			crypto_hash_sha256_update(&h, be, 8);
			crypto_hash_sha256_update(&h, parts[p], lens[p]);
		}
	}
	uint8_t digest[32];
	crypto_hash_sha256_final(&h, digest);
	hex_encode(out, digest, 32);
}

static void load_version(const char *dir, char out[65])
{
	struct ydoc_diags d;
	ydoc_diags_init(&d);
	struct policy_set *set = NULL;
	assert_int_equal(policy_load(dir, &set, &d), 0);
	memcpy(out, set->version, 65);
	policy_set_unref(set);
	ydoc_diags_release(&d);
}

static void test_version_hash(void **state)
{
	char *dir = temp_policy_dir();
	install(dir, "valid/partners.yaml", "partners.yaml");
	install(dir, "valid/agreements/police-nhs-safeguarding.yaml",
	        "agreements/police-nhs-safeguarding.yaml");
	install(dir, "valid/agreements/council-planning.yaml", "agreements/council-planning.yaml");
	char v1[65], again[65], want[65];
	load_version(dir, v1);
	load_version(dir, again);
	assert_string_equal(v1, again);
	/* Sorted by relative path: agreements/ before partners.yaml. */
	static const char *const rels[] = {"agreements/council-planning.yaml",
	                                   "agreements/police-nhs-safeguarding.yaml",
	                                   "partners.yaml"};
	expected_version(dir, rels, 3, want);
	assert_string_equal(v1, want);
	/* The trailing slash does not matter. */
	char slash[128];
	snprintf(slash, sizeof(slash), "%s/", dir);
	load_version(slash, again);
	assert_string_equal(v1, again);

	/* One more byte, even in a comment, is a new version. */
	char path[4400];
	snprintf(path, sizeof(path), "%s/agreements/council-planning.yaml", dir);
	FILE *f = fopen(path, "a");
	fputs("# reviewed\n", f);
	fclose(f);
	char v2[65];
	load_version(dir, v2);
	assert_string_not_equal(v1, v2);
	expected_version(dir, rels, 3, want);
	assert_string_equal(v2, want);

	/* So is a renamed file with the same content. */
	char to[4400];
	snprintf(to, sizeof(to), "%s/agreements/council-planning2.yaml", dir);
	assert_int_equal(rename(path, to), 0);
	struct ydoc_diags d;
	ydoc_diags_init(&d);
	struct policy_set *set = NULL;
	assert_int_equal(policy_load(dir, &set, &d), 0);
	assert_int_equal(d.warnings, 1); /* id differs from the file name */
	assert_non_null(strstr(d.items[0].message, "differs from its file name"));
	assert_string_not_equal(set->version, v2);
	policy_set_unref(set);
	ydoc_diags_release(&d);
	remove_dir(dir);
}

/* ---- broken files ---- */

struct broken {
	const char *partners;  /* fixture, or NULL for valid/partners.yaml */
	const char *agreement; /* fixture installed in agreements/, or NULL */
	int err;
	size_t errors;
	const char *file; /* the file the first error is about */
	int line, col;
	const char *msg;
};

static void check_broken(const struct broken *b)
{
	char *dir = temp_policy_dir();
	install(dir, b->partners ? b->partners : "valid/partners.yaml", "partners.yaml");
	if (b->agreement) {
		char rel[256];
		snprintf(rel, sizeof(rel), "agreements/%s", strrchr(b->agreement, '/') + 1);
		install(dir, b->agreement, rel);
	}
	/* A valid agreement alongside, so duplicate ids can be tested. */
	install(dir, "valid/agreements/police-nhs-safeguarding.yaml",
	        "agreements/police-nhs-safeguarding.yaml");
	struct ydoc_diags d;
	ydoc_diags_init(&d);
	struct policy_set *set = (struct policy_set *)1;
	int err = policy_load(dir, &set, &d);
	char want_file[4400];
	snprintf(want_file, sizeof(want_file), "%s/%s", dir, b->file);
	/* The first error; warnings (such as an id that differs from its file name) may come first.
	 */
	const struct ydoc_diag *g = NULL;
	for (size_t i = 0; i < d.n && !g; i++)
		if (!d.items[i].warning)
			g = &d.items[i];
	bool match = g && g->line == b->line && g->col == b->col && strstr(g->message, b->msg) &&
	             !strcmp(g->file, want_file) && d.errors == b->errors;
	if (!match) {
		fprintf(stderr, "case %s:\n", b->agreement ? b->agreement : b->partners);
		ydoc_diags_print(&d, stderr);
	}
	assert_int_equal(err, b->err);
	assert_null(set);
	assert_int_equal(d.errors, b->errors);
	assert_non_null(g);
	assert_string_equal(g->file, want_file);
	assert_int_equal(g->line, b->line);
	assert_int_equal(g->col, b->col);
	assert_non_null(strstr(g->message, b->msg));
	ydoc_diags_release(&d);
	remove_dir(dir);
}

#define BROKEN(name) "broken/agreement-" name ".yaml"
#define AFILE(name) "agreements/agreement-" name ".yaml"

static void test_broken_agreements(void **state)
{
	const int INV = ISG_ERR_INVALID;
	const struct broken cases[] = {
	    {NULL, BROKEN("unknown-action"), INV, 1, AFILE("unknown-action"), 13, 41,
	     "unknown action 'mask' (use pass, drop, generalise or pseudonymise)"},
	    {NULL, BROKEN("unknown-type"), INV, 1, AFILE("unknown-type"), 13, 27,
	     "unknown field type 'string' (use text, integer, number, boolean, date, "
	     "nhs_number, pnc_id, postcode, name, email or identifier)"},
	    /* The misspelt key, then the key it should have been. */
	    {NULL, BROKEN("unknown-key"), INV, 2, AFILE("unknown-key"), 6, 3,
	     "unknown key 'recipents' in agreement (did you mean 'recipients'?)"},
	    /* No hint: the one near miss, met-police, is listed already. */
	    {NULL, BROKEN("unknown-partner"), INV, 1, AFILE("unknown-partner"), 5, 25,
	     "unknown partner 'met-polise' in senders (not in partners.yaml)"},
	    /* No partner id is a near miss of this one: no hint. */
	    {NULL, BROKEN("unknown-partner-far"), INV, 1, AFILE("unknown-partner-far"), 6, 27,
	     "unknown partner 'fire-service' in recipients (not in partners.yaml)"},
	    {NULL, BROKEN("dates"), INV, 1, AFILE("dates"), 9, 15,
	     "valid_from 2026-01-01 is after valid_until 2025-12-31"},
	    {NULL, BROKEN("bad-date"), INV, 1, AFILE("bad-date"), 9, 15,
	     "invalid date '2025-02-30' for valid_from (no such day in the calendar)"},
	    {NULL, BROKEN("date-form"), INV, 1, AFILE("date-form"), 9, 15,
	     "invalid date '01/04/2025' for valid_from (use YYYY-MM-DD)"},
	    {NULL, BROKEN("duplicate-field"), INV, 1, AFILE("duplicate-field"), 15, 18,
	     "duplicate field 'a' in dataset 'things' (also at line 13)"},
	    {NULL, BROKEN("duplicate-dataset"), INV, 1, AFILE("duplicate-dataset"), 14, 13,
	     "duplicate dataset 'things' (also at line 11)"},
	    {NULL, BROKEN("bad-id"), INV, 1, AFILE("bad-id"), 2, 7,
	     "invalid agreement id 'Police_NHS' (use lowercase letters, digits and '-'"},
	    {NULL, BROKEN("empty-senders"), INV, 1, AFILE("empty-senders"), 5, 12,
	     "senders must list 1 to 256 partners"},
	    {NULL, BROKEN("wrong-kind"), INV, 1, AFILE("wrong-kind"), 11, 5,
	     "datasets must be a list, not a mapping"},
	    {NULL, BROKEN("missing-purpose"), INV, 1, AFILE("missing-purpose"), 2, 3,
	     "missing required key 'purpose' in agreement"},
	    {NULL, BROKEN("bad-bool"), INV, 1, AFILE("bad-bool"), 14, 16,
	     "'allow_reply' must be true or false (unquoted), not 'yes'"},
	    {NULL, BROKEN("version-zero"), INV, 1, AFILE("version-zero"), 3, 12,
	     "invalid version '0' (use a whole number from 1 to 4294967295)"},
	    {NULL, BROKEN("anchor"), ISG_ERR_PARSE, 1, AFILE("anchor"), 5, 12,
	     "anchors are not supported"},
	    {NULL, BROKEN("syntax"), ISG_ERR_PARSE, 1, AFILE("syntax"), 4, 16,
	     "YAML syntax error: mapping values are not allowed in this context"},
	    /* Generalise and pseudonymise: each option with its action, each to its types. */
	    {NULL, BROKEN("pseudonymise"), INV, 1, AFILE("pseudonymise"), 13, 11,
	     "field 'a' is pseudonymised but names no linkage domain (add domain: NAME)"},
	    {NULL, BROKEN("pseudonymise-text"), INV, 1, AFILE("pseudonymise-text"), 13, 48,
	     "field 'case_ref' of type text cannot be pseudonymised (pseudonymise applies to "
	     "nhs_number, pnc_id, postcode, date, name, email and identifier)"},
	    {NULL, BROKEN("bad-domain"), INV, 1, AFILE("bad-domain"), 13, 78,
	     "invalid linkage domain 'Safeguarding_Link' (use lowercase letters, digits and '-'"},
	    /* The audit log's own domain: a recipient of it could link the log's subjects. */
	    {NULL, BROKEN("audit-domain"), INV, 1, AFILE("audit-domain"), 13, 78,
	     "linkage domain 'audit' of field 'nhs_number' is reserved for the audit log's own "
	     "pseudonyms, which no partner may receive (choose another name)"},
	    {NULL, BROKEN("domain-on-pass"), INV, 1, AFILE("domain-on-pass"), 13, 70,
	     "'domain' applies only to action pseudonymise, not to pass (field 'nhs_number')"},
	    {NULL, BROKEN("generalise-no-to"), INV, 1, AFILE("generalise-no-to"), 13, 11,
	     "field 'date_of_birth' is generalised but has no 'to' (use year, age_band or month)"},
	    {NULL, BROKEN("generalise-wrong-to"), INV, 1, AFILE("generalise-wrong-to"), 13, 68,
	     "cannot generalise field 'postcode' of type postcode to 'age_band' (use "
	     "postcode_area, postcode_district or postcode_sector)"},
	    {NULL, BROKEN("generalise-unknown-to"), INV, 1, AFILE("generalise-unknown-to"), 13, 69,
	     "unknown generalisation 'decade' (use year, age_band, month, postcode_area, "
	     "postcode_district, postcode_sector or number_band)"},
	    {NULL, BROKEN("generalise-text"), INV, 1, AFILE("generalise-text"), 13, 45,
	     "field 'notes' of type text cannot be generalised (generalise applies to date, "
	     "postcode, integer and number)"},
	    {NULL, BROKEN("age-band-width"), INV, 1, AFILE("age-band-width"), 13, 86,
	     "invalid width '51' (use a whole number from 1 to 50)"},
	    {NULL, BROKEN("number-band-no-width"), INV, 1, AFILE("number-band-no-width"), 13, 11,
	     "field 'income': number_band needs a width (1 to 1000000000)"},
	    {NULL, BROKEN("width-on-year"), INV, 1, AFILE("width-on-year"), 13, 82,
	     "width applies only to age_band and number_band, not to 'year'"},
	    {NULL, BROKEN("to-on-drop"), INV, 1, AFILE("to-on-drop"), 13, 63,
	     "'to' applies only to action generalise, not to drop (field 'date_of_birth')"},
	    /* Review dates and daily limits. */
	    {NULL, BROKEN("review-before-from"), INV, 1, AFILE("review-before-from"), 10, 16,
	     "review_date 2024-12-31 is before valid_from 2025-01-01"},
	    {NULL, BROKEN("bad-review-date"), INV, 1, AFILE("bad-review-date"), 10, 16,
	     "invalid date '2026-13-01' for review_date (no such day in the calendar)"},
	    {NULL, BROKEN("records-per-day-zero"), INV, 1, AFILE("records-per-day-zero"), 11, 22,
	     "invalid records_per_day '0' (use a whole number from 1 to 100000000)"},
	    {NULL, BROKEN("messages-per-day-big"), INV, 1, AFILE("messages-per-day-big"), 12, 23,
	     "invalid messages_per_day '10000001' (use a whole number from 1 to 10000000)"},
	    {NULL, BROKEN("limits-unknown-key"), INV, 1, AFILE("limits-unknown-key"), 11, 5,
	     "unknown key 'records_per_days' in limits (did you mean 'records_per_day'?)"},
	    {NULL, BROKEN("limits-not-map"), INV, 1, AFILE("limits-not-map"), 10, 11,
	     "limits must be a mapping, not a single value"},
	    /* Reported against the later file in name order. */
	    {NULL, BROKEN("duplicate-id"), INV, 1, "agreements/police-nhs-safeguarding.yaml", 2, 7,
	     "duplicate agreement id 'police-nhs-safeguarding' (also in "},
	};
	for (size_t i = 0; i < ARRAY_LEN(cases); i++)
		check_broken(&cases[i]);
}

/* Every problem of a file of broken transformations, in order, with its position. */
static void test_broken_transforms(void **state)
{
	char *dir = temp_policy_dir();
	install(dir, "valid/partners.yaml", "partners.yaml");
	install(dir, BROKEN("transform-errors"), "agreements/transform-errors.yaml");
	struct ydoc_diags d;
	ydoc_diags_init(&d);
	struct policy_set *set = (struct policy_set *)1;
	assert_int_equal(policy_load(dir, &set, &d), ISG_ERR_INVALID);
	assert_null(set);
	static const struct {
		int line, col;
		const char *msg;
	} want[] = {
	    {13, 69, "invalid linkage domain '-link'"},
	    {14, 44, "field 'b' of type boolean cannot be pseudonymised"},
	    {15, 54, "'width' applies only to action generalise, not to pass (field 'c')"},
	    {16, 60, "cannot generalise field 'd' of type integer to 'month' (use number_band)"},
	    {17, 79, "invalid width '0' (use a whole number from 1 to 1000000000)"},
	    {18, 80, "invalid width '1000000001' (use a whole number from 1 to 1000000000)"},
	    {22, 15, "generalisation must be a single value, not a list"},
	    {23, 75, "'to' applies only to action generalise, not to pseudonymise (field 'h')"},
	    {24, 11, "field 'i' is pseudonymised but names no linkage domain"},
	};
	bool ok = d.errors == ARRAY_LEN(want) && d.warnings == 0;
	for (size_t i = 0; ok && i < ARRAY_LEN(want); i++)
		ok = d.items[i].line == want[i].line && d.items[i].col == want[i].col &&
		     strstr(d.items[i].message, want[i].msg);
	if (!ok)
		ydoc_diags_print(&d, stderr);
	assert_int_equal(d.errors, ARRAY_LEN(want));
	assert_int_equal(d.warnings, 0);
	for (size_t i = 0; i < ARRAY_LEN(want); i++) {
		assert_non_null(strstr(d.items[i].file, "agreements/transform-errors.yaml"));
		assert_int_equal(d.items[i].line, want[i].line);
		assert_int_equal(d.items[i].col, want[i].col);
		assert_non_null(strstr(d.items[i].message, want[i].msg));
	}
	ydoc_diags_release(&d);
	remove_dir(dir);
}

static void test_broken_partners(void **state)
{
	const int INV = ISG_ERR_INVALID;
	const struct broken cases[] = {
	    {"broken/partners-duplicate-id.yaml", NULL, INV, 1, "partners.yaml", 10, 9,
	     "duplicate partner id 'met-police' (also at line 2)"},
	    {"broken/partners-shared-matcher.yaml", NULL, INV, 1, "partners.yaml", 12, 16,
	     "san_dns 'gateway-client.shared.test' of partner 'nhs-trust' is already used by "
	     "partner 'met-police'"},
	    {"broken/partners-bad-values.yaml", NULL, INV, 7, "partners.yaml", 2, 9,
	     "invalid partner id 'Met_Police'"},
	    /* issuer_cn: a CA that one partner claims whole cannot be shared. */
	    {"broken/partners-issuer-alone-shared.yaml", NULL, INV, 1, "partners.yaml", 13, 18,
	     "issuer_cn 'Shared Partner CA' of partner 'nhs-trust' is also used by partner "
	     "'met-police', and partner 'nhs-trust' has no other matcher: every certificate from "
	     "that CA would be claimed by both (add subject_cn, san_uri, san_dns or spki_sha256)"},
	    /* One CN under two partners whose issuers overlap (Shared CA). */
	    {"broken/partners-shared-cn-same-issuer.yaml", NULL, INV, 1, "partners.yaml", 12, 19,
	     "subject_cn 'gateway-client.test' of partner 'nhs-trust' is already used by partner "
	     "'met-police'"},
	    {"broken/partners-bad-issuer.yaml", NULL, INV, 3, "partners.yaml", 7, 18,
	     "invalid issuer_cn: it must be 1 to 255 bytes long, and is empty"},
	};
	for (size_t i = 0; i < ARRAY_LEN(cases); i++)
		check_broken(&cases[i]);

	/* Every problem of the bad-values file, in order, with its position. */
	char *dir = temp_policy_dir();
	install(dir, "broken/partners-bad-values.yaml", "partners.yaml");
	struct ydoc_diags d;
	ydoc_diags_init(&d);
	struct policy_set *set;
	assert_int_equal(policy_load(dir, &set, &d), ISG_ERR_INVALID);
	static const struct {
		int line, col;
		const char *msg;
	} want[] = {
	    {2, 9, "invalid partner id 'Met_Police'"},
	    {4, 11, "unknown partner kind 'constabulary' (use police, nhs, council or other)"},
	    {7, 7, "unknown key 'subjectcn' in certificate (did you mean 'subject_cn'?)"},
	    {6, 20, "invalid spki_sha256 '0011' (use 64 hex digits)"},
	    {8, 5, "missing required key 'name' in partner"},
	    {10, 18, "certificate must name at least one of subject_cn, san_uri, san_dns"},
	    {11, 5, "each partner must be a mapping, not a single value"},
	};
	/* And a warning: no agreements at all. */
	assert_int_equal(d.warnings, 1);
	assert_int_equal(d.errors, ARRAY_LEN(want));
	for (size_t i = 0; i < ARRAY_LEN(want); i++) {
		if (d.items[i].line != want[i].line || !strstr(d.items[i].message, want[i].msg))
			ydoc_diags_print(&d, stderr);
		assert_int_equal(d.items[i].line, want[i].line);
		assert_int_equal(d.items[i].col, want[i].col);
		assert_non_null(strstr(d.items[i].message, want[i].msg));
	}
	ydoc_diags_release(&d);
	remove_dir(dir);

	/* Missing partners.yaml, missing agreements/: IO errors naming the path. */
	char empty[] = "/tmp/test_policy_empty_XXXXXX";
	assert_non_null(mkdtemp(empty));
	ydoc_diags_init(&d);
	assert_int_equal(policy_load(empty, &set, &d), ISG_ERR_IO);
	assert_null(set);
	assert_true(d.errors >= 1);
	assert_non_null(strstr(d.items[0].message, "cannot open"));
	assert_int_equal(d.errors, 2);
	ydoc_diags_release(&d);

	/* partners.yaml alone: its problems are still reported, with the missing directory. */
	char path[200];
	snprintf(path, sizeof(path), "%s/partners.yaml", empty);
	copy_file(fixture("broken/partners-duplicate-id.yaml"), path);
	ydoc_diags_init(&d);
	assert_int_equal(policy_load(empty, &set, &d), ISG_ERR_IO);
	assert_int_equal(d.errors, 2);
	assert_int_equal(d.warnings, 0);
	char adir[200];
	snprintf(adir, sizeof(adir), "%s/agreements", empty);
	assert_string_equal(d.items[0].file, adir);
	assert_non_null(strstr(d.items[0].message, "cannot open directory"));
	assert_string_equal(d.items[1].file, path);
	assert_non_null(strstr(d.items[1].message, "duplicate partner id 'met-police'"));
	ydoc_diags_release(&d);
	unlink(path);
	rmdir(empty);
}

/* Every problem of a broken partners.yaml, in order, with its position. */
static void test_broken_issuers(void **state)
{
	char *dir = temp_policy_dir();
	install(dir, "broken/partners-bad-issuer.yaml", "partners.yaml");
	struct ydoc_diags d;
	ydoc_diags_init(&d);
	struct policy_set *set;
	assert_int_equal(policy_load(dir, &set, &d), ISG_ERR_INVALID);
	static const struct {
		int line, col;
		const char *msg;
	} want[] = {
	    {7, 18, "invalid issuer_cn: it must be 1 to 255 bytes long, and is empty"},
	    {13, 27, "issuer_cn 'NHS CA' is listed twice"},
	    {18, 18, "issuer_cn must list at least one value"},
	};
	if (d.errors != ARRAY_LEN(want))
		ydoc_diags_print(&d, stderr);
	assert_int_equal(d.errors, ARRAY_LEN(want));
	for (size_t i = 0; i < ARRAY_LEN(want); i++) {
		assert_int_equal(d.items[i].line, want[i].line);
		assert_int_equal(d.items[i].col, want[i].col);
		assert_non_null(strstr(d.items[i].message, want[i].msg));
	}
	ydoc_diags_release(&d);
	remove_dir(dir);
}

static void put_file(const char *dir, const char *rel, const char *text)
{
	char path[4400];
	snprintf(path, sizeof(path), "%s/%s", dir, rel);
	FILE *f = fopen(path, "wb");
	assert_non_null(f);
	assert_int_equal(fputs(text, f) >= 0, 1);
	assert_int_equal(fclose(f), 0);
}

static const struct policy_partner *who(const struct policy_set *set, const char *cn,
                                        const char *issuer, const char *dns)
{
	struct cert_identity id;
	memset(&id, 0, sizeof(id));
	str_copy(id.subject_cn, cn, sizeof(id.subject_cn));
	str_copy(id.issuer_cn, issuer, sizeof(id.issuer_cn));
	if (dns) {
		id.n_san_dns = 1;
		str_copy(id.san_dns[0], dns, sizeof(id.san_dns[0]));
	}
	return policy_partner_by_cert(set, &id);
}

/*
 * A matcher written as null, ~ or nothing is absent, like any other key: it
 * must not match a certificate that literally says "null" or "~".
 */
static void test_null_matchers(void **state)
{
	char *dir = temp_policy_dir();
	put_file(dir, "partners.yaml",
	         "partners:\n"
	         "  - id: met-police\n"
	         "    name: Met\n"
	         "    kind: police\n"
	         "    certificate:\n"
	         "      subject_cn: met.test\n"
	         "      san_dns: null\n"
	         "      san_uri:\n"
	         "      spki_sha256: Null\n"
	         "  - id: nhs-trust\n"
	         "    name: Trust\n"
	         "    kind: nhs\n"
	         "    certificate:\n"
	         "      subject_cn: trust.test\n"
	         "      issuer_cn: ~\n"
	         "      san_dns: NULL\n");
	struct ydoc_diags d;
	ydoc_diags_init(&d);
	struct policy_set *set = NULL;
	assert_int_equal(policy_load(dir, &set, &d), 0);
	assert_int_equal(d.errors, 0);
	assert_int_equal(policy_partner_by_id(set, "met-police")->n_match, 1);
	assert_int_equal(policy_partner_by_id(set, "nhs-trust")->n_match, 1);
	/* No literal "null" DNS name (whatever its case: YAML 1.2's nulls), no literal "~" CA. */
	assert_null(who(set, "someone.test", "Any CA", "null"));
	assert_null(who(set, "someone.test", "~", NULL));
	/* And the partners are still recognised by what they do name, from any CA. */
	assert_string_equal(who(set, "met.test", "Any CA", NULL)->id, "met-police");
	assert_string_equal(who(set, "trust.test", "Any CA", NULL)->id, "nhs-trust");
	policy_set_unref(set);
	ydoc_diags_release(&d);

	/* Nothing but nulls: no matcher at all; a null inside a list: refused. */
	put_file(dir, "partners.yaml",
	         "partners:\n"
	         "  - id: met-police\n"
	         "    name: Met\n"
	         "    kind: police\n"
	         "    certificate:\n"
	         "      san_dns: null\n"
	         "      issuer_cn: ~\n"
	         "  - id: nhs-trust\n"
	         "    name: Trust\n"
	         "    kind: nhs\n"
	         "    certificate:\n"
	         "      san_dns: [trust.test, null]\n");
	ydoc_diags_init(&d);
	assert_int_equal(policy_load(dir, &set, &d), ISG_ERR_INVALID);
	if (d.errors != 2)
		ydoc_diags_print(&d, stderr);
	assert_int_equal(d.errors, 2);
	size_t k = d.items[0].warning ? 1 : 0;
	assert_int_equal(d.items[k].line, 6);
	assert_non_null(strstr(d.items[k].message, "certificate must name at least one"));
	assert_int_equal(d.items[k + 1].line, 12);
	assert_int_equal(d.items[k + 1].col, 29);
	assert_non_null(strstr(d.items[k + 1].message, "san_dns lists an empty value"));
	ydoc_diags_release(&d);
	remove_dir(dir);
}

/*
 * A partners.yaml that is a FIFO is refused at once: opening it must not
 * wait for a writer, since isgd reloads in its signal loop (alarm: fail).
 * A FIFO named like an agreement is not an agreement.
 */
static void test_fifo_refused(void **state)
{
	char *dir = temp_policy_dir();
	char path[4400];
	snprintf(path, sizeof(path), "%s/partners.yaml", dir);
	assert_int_equal(mkfifo(path, 0600), 0);
	snprintf(path, sizeof(path), "%s/agreements/a.yaml", dir);
	assert_int_equal(mkfifo(path, 0600), 0);
	struct ydoc_diags d;
	ydoc_diags_init(&d);
	struct policy_set *set = (struct policy_set *)1;
	alarm(10);
	assert_int_equal(policy_load(dir, &set, &d), ISG_ERR_IO);
	alarm(0);
	assert_null(set);
	if (d.errors != 1)
		ydoc_diags_print(&d, stderr);
	assert_int_equal(d.errors, 1);
	size_t k = d.items[0].warning ? 1 : 0;
	snprintf(path, sizeof(path), "%s/partners.yaml", dir);
	assert_string_equal(d.items[k].file, path);
	assert_non_null(strstr(d.items[k].message, "not a regular file"));
	ydoc_diags_release(&d);
	remove_dir(dir);
}

/* A file of `size` bytes that takes no disk space: reading it gives NULs. */
static void sparse_file(const char *dir, const char *rel, off_t size)
{
	char path[4400];
	snprintf(path, sizeof(path), "%s/%s", dir, rel);
	FILE *f = fopen(path, "wb");
	assert_non_null(f);
	assert_int_equal(ftruncate(fileno(f), size), 0);
	fclose(f);
}

/* The diagnostic about the file at dir/rel; fails when there is none. */
static const struct ydoc_diag *diag_of(const struct ydoc_diags *d, const char *dir, const char *rel)
{
	char path[4400];
	snprintf(path, sizeof(path), "%s/%s", dir, rel);
	for (size_t i = 0; i < d->n; i++)
		if (strcmp(d->items[i].file, path) == 0)
			return &d->items[i];
	fail_msg("no diagnostic about %s", path);
	return NULL;
}

/*
 * One file over its limit is told it is too big; a small file that takes
 * the set over the limit of all files together is told that, not that it
 * is too big itself. The files are read in path order, agreements/ first.
 */
static void test_size_limits(void **state)
{
	char *dir = temp_policy_dir();
	install(dir, "valid/partners.yaml", "partners.yaml");
	sparse_file(dir, "agreements/big.yaml", 1024 * 1024 + 1);
	struct ydoc_diags d;
	ydoc_diags_init(&d);
	struct policy_set *set = NULL;
	assert_int_equal(policy_load(dir, &set, &d), ISG_ERR_INVALID);
	assert_null(set);
	assert_non_null(strstr(diag_of(&d, dir, "agreements/big.yaml")->message,
	                       "file too big (a policy file may have 1048576 bytes)"));
	ydoc_diags_release(&d);
	remove_dir(dir);

	/* 64 files of 1 MiB each are the most a set may have: partners.yaml is one too many. */
	dir = temp_policy_dir();
	install(dir, "valid/partners.yaml", "partners.yaml");
	for (int i = 0; i < 64; i++) {
		char rel[64];
		snprintf(rel, sizeof(rel), "agreements/a%02d.yaml", i);
		sparse_file(dir, rel, 1024 * 1024);
	}
	ydoc_diags_init(&d);
	assert_int_equal(policy_load(dir, &set, &d), ISG_ERR_PARSE); /* NULs are no YAML */
	assert_null(set);
	const char *msg = diag_of(&d, dir, "partners.yaml")->message;
	assert_non_null(strstr(msg, "the policy files together have more than 67108864 bytes"));
	assert_null(strstr(msg, "too big"));
	ydoc_diags_release(&d);
	remove_dir(dir);
}

/* policy_list_files's callback: each listed path relative to the directory, sorted. */
struct listed {
	char rel[8][300];
	size_t n;
};

static int note_listed(void *ctx, const char *rel, const char *path, int errnum)
{
	struct listed *l = ctx;
	assert_int_equal(errnum, 0);
	assert_true(l->n < 8);
	assert_non_null(strstr(path, rel));
	snprintf(l->rel[l->n++], sizeof(l->rel[0]), "%s", rel);
	return 0;
}

static int rel_order(const void *a, const void *b)
{
	return strcmp(a, b);
}

/*
 * What policy_list_files lists is what policy_load loads, and isgd checks
 * the user can read: partners.yaml and the agreements that are files or
 * links to one, never a directory, a FIFO, a hidden file or a link to
 * nothing named like an agreement.
 */
static void test_listed_files_are_the_loaded_ones(void **state)
{
	char *dir = temp_policy_dir();
	char path[4400], to[4400];
	install(dir, "valid/partners.yaml", "partners.yaml");
	install(dir, "valid/agreements/police-nhs-safeguarding.yaml",
	        "agreements/police-nhs-safeguarding.yaml");
	install(dir, "valid/agreements/nhs-police-reply.yaml", "nhs-police-reply.yaml");
	snprintf(path, sizeof(path), "%s/agreements/nhs-police-reply.yaml", dir);
	snprintf(to, sizeof(to), "%s/nhs-police-reply.yaml", dir);
	assert_int_equal(symlink(to, path), 0);
	snprintf(path, sizeof(path), "%s/agreements/a-directory.yaml", dir);
	assert_int_equal(mkdir(path, 0700), 0);
	snprintf(path, sizeof(path), "%s/agreements/a-fifo.yaml", dir);
	assert_int_equal(mkfifo(path, 0600), 0);
	snprintf(path, sizeof(path), "%s/agreements/gone.yaml", dir);
	assert_int_equal(symlink("/nonexistent/isg/gone.yaml", path), 0);
	install(dir, "valid/agreements/council-planning.yaml", "agreements/.council.yaml");
	/* Misnamed: no agreements either, but warned about; others are plainly not meant. */
	install(dir, "valid/agreements/council-planning.yaml", "agreements/new.yml");
	install(dir, "valid/agreements/council-planning.yaml", "agreements/NEW.YAML");
	install(dir, "valid/agreements/council-planning.yaml", "agreements/old.yaml~");
	install(dir, "valid/agreements/council-planning.yaml", "agreements/.#lock.yaml");
	install(dir, "valid/agreements/council-planning.yaml", "agreements/README");

	struct listed l = {.n = 0};
	assert_int_equal(policy_list_files(dir, note_listed, &l), 0);
	qsort(l.rel, l.n, sizeof(l.rel[0]), rel_order);
	assert_int_equal(l.n, 3);
	assert_string_equal(l.rel[0], "agreements/nhs-police-reply.yaml");
	assert_string_equal(l.rel[1], "agreements/police-nhs-safeguarding.yaml");
	assert_string_equal(l.rel[2], "partners.yaml");

	struct ydoc_diags d;
	ydoc_diags_init(&d);
	struct policy_set *set = NULL;
	assert_int_equal(policy_load(dir, &set, &d), 0);
	assert_int_equal(set->n_agreements, 2);
	assert_int_equal(d.errors, 0);
	/* Each one an admin may have meant as an agreement, by name, in no set order. */
	static const char *const want[] = {
	    ".council.yaml: ignored: the name starts with '.' (hidden)",
	    "NEW.YAML: ignored: the name must end in .yaml",
	    "a-directory.yaml: ignored: not a regular *.yaml file",
	    "a-fifo.yaml: ignored: not a regular *.yaml file",
	    "gone.yaml: ignored: a link that leads to no file",
	    "new.yml: ignored: the name must end in .yaml",
	};
	char got[ARRAY_LEN(want)][200];
	assert_int_equal(d.warnings, ARRAY_LEN(want));
	for (size_t i = 0; i < ARRAY_LEN(want); i++) {
		assert_int_equal(d.items[i].line, 0);
		snprintf(got[i], sizeof(got[i]), "%s: %s", strrchr(d.items[i].file, '/') + 1,
		         d.items[i].message);
	}
	qsort(got, ARRAY_LEN(got), sizeof(got[0]), rel_order);
	for (size_t i = 0; i < ARRAY_LEN(want); i++)
		assert_string_equal(got[i], want[i]);
	policy_set_unref(set);
	ydoc_diags_release(&d);
	remove_dir(dir);
}

/* policy_load on dir: its return code, and what it printed in out. */
static int load_printed(const char *dir, char *out, size_t size)
{
	struct ydoc_diags d;
	ydoc_diags_init(&d);
	struct policy_set *set = NULL;
	int err = policy_load(dir, &set, &d);
	FILE *f = fmemopen(out, size, "w");
	assert_non_null(f);
	ydoc_diags_print(&d, f);
	fclose(f);
	policy_set_unref(set);
	ydoc_diags_release(&d);
	return err;
}

/*
 * Whoever may write a policy file, or a directory that names one, may turn
 * a pseudonymise into a pass: such a directory or file is refused, named
 * with its mode and the fix; write bits alone count, not read bits or owner.
 */
static void test_writable_policy_refused(void **state)
{
	char *dir = temp_policy_dir();
	char adir[4400], file[4400], want[9000], out[8192];
	install(dir, "valid/partners.yaml", "partners.yaml");
	install(dir, "valid/agreements/police-nhs-safeguarding.yaml",
	        "agreements/police-nhs-safeguarding.yaml");
	snprintf(adir, sizeof(adir), "%s/agreements", dir);
	snprintf(file, sizeof(file), "%s/agreements/police-nhs-safeguarding.yaml", dir);
	assert_int_equal(chmod(file, 0644), 0);
	assert_int_equal(chmod(adir, 0755), 0);
	assert_int_equal(chmod(dir, 0755), 0);
	assert_int_equal(load_printed(dir, out, sizeof(out)), 0);

	static const struct {
		int which; /* 0 the directory, 1 agreements/, 2 the file */
		mode_t mode;
		const char *what;
	} cases[] = {
	    {2, 0666, "policy file"},          {2, 0646, "policy file"},
	    {2, 0664, "policy file"},          {1, 0777, "agreements directory"},
	    {1, 0775, "agreements directory"}, {0, 0757, "policy directory"},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const char *path = cases[i].which == 0 ? dir : cases[i].which == 1 ? adir : file;
		mode_t good = cases[i].which == 2 ? 0644 : 0755;
		assert_int_equal(chmod(path, cases[i].mode), 0);
		assert_int_not_equal(load_printed(dir, out, sizeof(out)), 0);
		snprintf(want, sizeof(want),
		         "%s: error: %s is writable by group or others (mode %04o), so anyone who "
		         "can write it can change the policy; chmod go-w it\n",
		         path, cases[i].what, (unsigned)cases[i].mode);
		if (!strstr(out, want))
			fail_msg("wanted\n%sgot\n%s", want, out);
		assert_int_equal(chmod(path, good), 0);
	}
	/* Read bits for all are no risk: a policy is no secret. */
	assert_int_equal(chmod(file, 0444), 0);
	assert_int_equal(load_printed(dir, out, sizeof(out)), 0);
	remove_dir(dir);
}

/* Whether load_printed(dir) refuses, and out has want (NULL: loads, no error printed). */
static void assert_link_verdict(const char *dir, const char *want)
{
	char out[8192];
	int err = load_printed(dir, out, sizeof(out));
	if (!want) {
		if (err != 0)
			fail_msg("wanted the policy to load, got\n%s", out);
		return;
	}
	assert_int_not_equal(err, 0);
	if (!strstr(out, want))
		fail_msg("wanted\n%s\ngot\n%s", want, out);
}

/*
 * A link's target may be replaced by whoever may write the directory that
 * holds it, whatever the target's own mode: a link into such a directory,
 * or through one on the way, is refused, sticky bit or not; a link into a
 * 0755 directory loads.
 */
static void test_link_into_writable_dir_refused(void **state)
{
	char *dir = temp_policy_dir();
	char real[PATH_MAX], shared[512], safe[512], path[1024], want[4096];
	assert_non_null(realpath(dir, real));
	snprintf(shared, sizeof(shared), "%.300s/shared", real);
	snprintf(safe, sizeof(safe), "%.300s/safe", real);
	assert_int_equal(mkdir(shared, 0755), 0);
	assert_int_equal(mkdir(safe, 0755), 0);
	install(dir, "valid/partners.yaml", "partners.yaml");
	install(dir, "valid/agreements/police-nhs-safeguarding.yaml",
	        "shared/police-nhs-safeguarding.yaml");
	snprintf(path, sizeof(path), "%.300s/agreements/police-nhs-safeguarding.yaml", dir);
	assert_int_equal(symlink("../shared/police-nhs-safeguarding.yaml", path), 0);
	assert_link_verdict(dir, NULL);

	static const mode_t unsafe[] = {0777, 01777, 0775, 0757};
	for (size_t i = 0; i < sizeof(unsafe) / sizeof(unsafe[0]); i++) {
		assert_int_equal(chmod(shared, unsafe[i]), 0);
		snprintf(
		    want, sizeof(want),
		    "%s: error: policy file is a link into directory '%s', which is writable "
		    "by group or others (mode %04o), so anyone who can write there can replace "
		    "it and change the policy; chmod go-w that directory, or move the file "
		    "out of it\n",
		    path, shared, (unsigned)unsafe[i]);
		assert_link_verdict(dir, want);
	}

	/* A link on the way in a writable directory, then the file in a safe one. */
	snprintf(path, sizeof(path), "%.400s/police-nhs-safeguarding.yaml", shared);
	snprintf(want, sizeof(want), "%.400s/police-nhs-safeguarding.yaml", safe);
	assert_int_equal(rename(path, want), 0);
	assert_int_equal(chmod(shared, 0777), 0);
	snprintf(path, sizeof(path), "%.400s/hop.yaml", shared);
	assert_int_equal(symlink("../safe/police-nhs-safeguarding.yaml", path), 0);
	snprintf(path, sizeof(path), "%.300s/agreements/police-nhs-safeguarding.yaml", dir);
	assert_int_equal(unlink(path), 0);
	assert_int_equal(symlink("../shared/hop.yaml", path), 0);
	snprintf(want, sizeof(want), "%s: error: policy file is a link into directory '%s'", path,
	         shared);
	assert_link_verdict(dir, want);
	/* And the other way round: the writable directory holds the file, reached last. */
	assert_int_equal(unlink(path), 0);
	assert_int_equal(symlink("../safe/hop.yaml", path), 0);
	snprintf(path, sizeof(path), "%.400s/hop.yaml", safe);
	assert_int_equal(symlink("../shared/police-nhs-safeguarding.yaml", path), 0);
	snprintf(path, sizeof(path), "%.400s/police-nhs-safeguarding.yaml", safe);
	snprintf(want, sizeof(want), "%.400s/police-nhs-safeguarding.yaml", shared);
	assert_int_equal(rename(path, want), 0);
	snprintf(path, sizeof(path), "%.300s/agreements/police-nhs-safeguarding.yaml", dir);
	snprintf(want, sizeof(want), "%s: error: policy file is a link into directory '%s'", path,
	         shared);
	assert_link_verdict(dir, want);
	assert_int_equal(chmod(shared, 0755), 0);
	assert_link_verdict(dir, NULL);

	/* partners.yaml and agreements/ alike. */
	assert_int_equal(chmod(shared, 0777), 0);
	snprintf(path, sizeof(path), "%.300s/partners.yaml", dir);
	snprintf(want, sizeof(want), "%.400s/partners.yaml", shared);
	assert_int_equal(rename(path, want), 0);
	assert_int_equal(symlink(want, path), 0);
	snprintf(want, sizeof(want), "%s: error: policy file is a link into directory '%s'", path,
	         shared);
	assert_link_verdict(dir, want);
	snprintf(want, sizeof(want), "%.400s/partners.yaml", shared);
	assert_int_equal(rename(want, path), 0);
	snprintf(path, sizeof(path), "%.300s/agreements", dir);
	snprintf(want, sizeof(want), "%.400s/agreements", shared);
	assert_int_equal(rename(path, want), 0);
	assert_int_equal(symlink(want, path), 0);
	snprintf(want, sizeof(want),
	         "%s: error: agreements directory is a link into directory '%s'", path, shared);
	assert_link_verdict(dir, want);
	assert_int_equal(chmod(shared, 0755), 0);
	assert_link_verdict(dir, NULL);
	remove_dir(dir);
}

static struct policy_set *load_features(int64_t today, struct ydoc_diags *d)
{
	struct policy_set *set = NULL;
	int err = policy_load_at(fixture("features"), today, &set, d);
	if (err)
		ydoc_diags_print(d, stderr);
	assert_int_equal(err, 0);
	return set;
}

static int64_t day(const char *date)
{
	int64_t days;
	assert_int_equal(date_parse_days(date, &days), 0);
	return days;
}

/* issuer_cn constrains the partner's other matchers; alone, it recognises the whole CA. */
static void test_issuer_cn(void **state)
{
	struct ydoc_diags d;
	ydoc_diags_init(&d);
	struct policy_set *set = load_features(day("2026-01-01"), &d);
	assert_int_equal(d.errors, 0);
	/* The council claims its CA whole; the charity's certificate may come from any CA. */
	assert_int_equal(d.warnings, 1);
	assert_int_equal(d.items[0].line, 28);
	assert_string_equal(d.items[0].message,
	                    "partner 'city-council' is recognised by issuer_cn alone and partner "
	                    "'charity' has no issuer_cn: a certificate of 'charity' from that CA "
	                    "would be claimed by both, and refused (give 'charity' an issuer_cn)");
	const struct policy_partner *met = policy_partner_by_id(set, "met-police");
	assert_int_equal(met->n_match, 2);
	assert_int_equal(met->match[1].kind, MATCH_ISSUER_CN);
	assert_string_equal(met->match[1].value, "Police Issuing CA 1");
	assert_int_equal(policy_partner_by_id(set, "nhs-trust")->n_match, 3);

	static const struct {
		const char *cn, *issuer, *dns;
		const char *partner; /* NULL: nobody */
	} cases[] = {
	    {"gateway-client.test", "Police Issuing CA 1", NULL, "met-police"},
	    {"gateway-client.test", "NHS Issuing CA 1", NULL, "nhs-trust"},
	    {"gateway-client.test", "NHS Issuing CA 2", NULL, "nhs-trust"},
	    /* Both must hold: the right CN from another CA, the right CA with another CN. */
	    {"gateway-client.test", "Some Other CA", NULL, NULL},
	    {"gateway-client.test", "", NULL, NULL},
	    {"someone-else.test", "Police Issuing CA 1", NULL, NULL},
	    /* CA names compare exactly. */
	    {"gateway-client.test", "police issuing ca 1", NULL, NULL},
	    {"gateway-client.test", "Police Issuing CA 1 ", NULL, NULL},
	    /* issuer_cn alone: every certificate of that CA, whatever its names. */
	    {"anything.test", "City Council Devices CA", NULL, "city-council"},
	    {"gateway-client.test", "City Council Devices CA", NULL, "city-council"},
	    {"", "City Council Devices CA", NULL, "city-council"},
	    /* No issuer_cn: any CA the TLS layer trusts. */
	    {"x", "Police Issuing CA 1", "charity.test", "charity"},
	    {"x", "Anything", "CHARITY.test", "charity"},
	    /* Recognised twice (charity's DNS name, met-police's CN and CA): neither. */
	    {"gateway-client.test", "Police Issuing CA 1", "charity.test", NULL},
	    /* The charity's certificate from the council's CA: both, so neither (the warning). */
	    {"x", "City Council Devices CA", "charity.test", NULL},
	};
	for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
		struct cert_identity id;
		memset(&id, 0, sizeof(id));
		str_copy(id.subject_cn, cases[i].cn, sizeof(id.subject_cn));
		str_copy(id.issuer_cn, cases[i].issuer, sizeof(id.issuer_cn));
		if (cases[i].dns) {
			id.n_san_dns = 1;
			str_copy(id.san_dns[0], cases[i].dns, sizeof(id.san_dns[0]));
		}
		const struct policy_partner *p = policy_partner_by_cert(set, &id);
		bool ok = p ? cases[i].partner && strcmp(p->id, cases[i].partner) == 0
		            : !cases[i].partner;
		if (!ok)
			fail_msg("case %zu: cn '%s' issuer '%s': got %s, want %s", i, cases[i].cn,
			         cases[i].issuer, p ? p->id : "nobody",
			         cases[i].partner ? cases[i].partner : "nobody");
	}
	/* Claimed twice: the two claimants, in registry order, for the refusal to name. */
	struct cert_identity both = {.n_san_dns = 1};
	str_copy(both.issuer_cn, "City Council Devices CA", sizeof(both.issuer_cn));
	str_copy(both.san_dns[0], "charity.test", sizeof(both.san_dns[0]));
	const struct policy_partner *claimants[2];
	assert_int_equal(policy_partner_claimants(set, &both, claimants), 2);
	assert_string_equal(claimants[0]->id, "city-council");
	assert_string_equal(claimants[1]->id, "charity");
	str_copy(both.issuer_cn, "Anything", sizeof(both.issuer_cn));
	assert_int_equal(policy_partner_claimants(set, &both, claimants), 1);
	assert_string_equal(claimants[0]->id, "charity");
	/* An issuer_cn the TLS layer left unterminated matches nothing. */
	struct cert_identity id;
	memset(&id, 0, sizeof(id));
	str_copy(id.subject_cn, "gateway-client.test", sizeof(id.subject_cn));
	memset(id.issuer_cn, 'A', sizeof(id.issuer_cn));
	assert_null(policy_partner_by_cert(set, &id));
	policy_set_unref(set);
	ydoc_diags_release(&d);
}

/* review_date: parsed, and a warning once today (UTC) is past it. */
static void test_review_dates(void **state)
{
	struct ydoc_diags d;
	ydoc_diags_init(&d);
	/* The review day itself is not overdue (the one warning is the partners'). */
	struct policy_set *set = load_features(day("2026-06-30"), &d);
	assert_int_equal(d.warnings, 1);
	assert_non_null(strstr(d.items[0].file, "features/partners.yaml"));
	assert_int_equal(policy_agreement_by_id(set, "nhs-police-reply")->review_days,
	                 day("2026-06-30"));
	assert_int_equal(policy_agreement_by_id(set, "police-nhs-safeguarding")->review_days,
	                 day("2098-03-31"));
	assert_int_equal(policy_agreement_by_id(set, "council-planning")->review_days, INT64_MAX);
	policy_set_unref(set);
	ydoc_diags_release(&d);

	ydoc_diags_init(&d);
	set = load_features(day("2026-07-01"), &d);
	assert_int_equal(d.errors, 0);
	assert_int_equal(d.warnings, 2);
	assert_true(d.items[1].warning);
	assert_non_null(strstr(d.items[1].file, "features/agreements/nhs-police-reply.yaml"));
	assert_int_equal(d.items[1].line, 12);
	assert_int_equal(d.items[1].col, 16);
	assert_string_equal(d.items[1].message,
	                    "agreement 'nhs-police-reply' was due for review on 2026-06-30 "
	                    "(review_date); today (UTC) is 2026-07-01");
	policy_set_unref(set);
	ydoc_diags_release(&d);

	/* Without a review date, nothing to warn about; the valid set has none. */
	set = load_valid();
	for (size_t i = 0; i < set->n_agreements; i++)
		assert_int_equal(set->agreements[i].review_days, INT64_MAX);
	policy_set_unref(set);
}

static void write_text(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	fputs(text, f);
	fclose(f);
}

/* records_per_day and messages_per_day: parsed per agreement; 0 when absent. */
static void test_daily_limits(void **state)
{
	struct ydoc_diags d;
	ydoc_diags_init(&d);
	struct policy_set *set = load_features(day("2026-01-01"), &d);
	const struct policy_agreement *a = policy_agreement_by_id(set, "police-nhs-safeguarding");
	assert_int_equal(a->max_records_per_message, 500);
	assert_int_equal(a->records_per_day, 10000);
	assert_int_equal(a->messages_per_day, 200);
	a = policy_agreement_by_id(set, "council-planning");
	assert_int_equal(a->max_records_per_message, 0);
	assert_int_equal(a->records_per_day, 0);
	assert_int_equal(a->messages_per_day, 24);
	a = policy_agreement_by_id(set, "nhs-police-reply");
	assert_int_equal(a->records_per_day, 1000);
	assert_int_equal(a->messages_per_day, 0);
	policy_set_unref(set);
	ydoc_diags_release(&d);

	set = load_valid();
	for (size_t i = 0; i < set->n_agreements; i++) {
		assert_int_equal(set->agreements[i].records_per_day, 0);
		assert_int_equal(set->agreements[i].messages_per_day, 0);
	}
	policy_set_unref(set);

	/* The bounds load; a daily limit below the per-message one loads with a warning. */
	char *dir = temp_policy_dir();
	install(dir, "valid/partners.yaml", "partners.yaml");
	char path[200];
	snprintf(path, sizeof(path), "%s/agreements/limits.yaml", dir);
	write_text(path, "agreement:\n"
	                 "  id: limits\n"
	                 "  version: 1\n"
	                 "  title: Limits\n"
	                 "  senders: [met-police]\n"
	                 "  recipients: [nhs-trust]\n"
	                 "  purpose: {code: testing, text: Testing}\n"
	                 "  lawful_basis: [\"UK GDPR Art. 6(1)(e)\"]\n"
	                 "  valid_from: 2025-01-01\n"
	                 "  limits:\n"
	                 "    max_records_per_message: 1000\n"
	                 "    records_per_day: 100000000\n"
	                 "    messages_per_day: 10000000\n"
	                 "  datasets:\n"
	                 "    - {name: things, fields: [{name: a, type: text, action: pass}]}\n");
	ydoc_diags_init(&d);
	assert_int_equal(policy_load(dir, &set, &d), 0);
	assert_int_equal(d.warnings, 0);
	a = policy_agreement_by_id(set, "limits");
	assert_int_equal(a->records_per_day, 100000000);
	assert_int_equal(a->messages_per_day, 10000000);
	policy_set_unref(set);
	ydoc_diags_release(&d);

	write_text(path, "agreement:\n"
	                 "  id: limits\n"
	                 "  version: 1\n"
	                 "  title: Limits\n"
	                 "  senders: [met-police]\n"
	                 "  recipients: [nhs-trust]\n"
	                 "  purpose: {code: testing, text: Testing}\n"
	                 "  lawful_basis: [\"UK GDPR Art. 6(1)(e)\"]\n"
	                 "  valid_from: 2025-01-01\n"
	                 "  limits: {max_records_per_message: 500, records_per_day: 100}\n"
	                 "  datasets:\n"
	                 "    - {name: things, fields: [{name: a, type: text, action: pass}]}\n");
	ydoc_diags_init(&d);
	assert_int_equal(policy_load(dir, &set, &d), 0);
	assert_int_equal(d.errors, 0);
	assert_int_equal(d.warnings, 1);
	assert_int_equal(d.items[0].line, 10);
	assert_int_equal(d.items[0].col, 59);
	assert_string_equal(d.items[0].message,
	                    "records_per_day 100 is less than max_records_per_message 500: no "
	                    "message can carry more than 100 records");
	policy_set_unref(set);
	ydoc_diags_release(&d);
	remove_dir(dir);
}

/* A key probe that knows the domains listed in ctx (a NULL-terminated list). */
static const char *probe_keys(void *ctx, const char *domain)
{
	for (const char *const *k = ctx; *k; k++)
		if (strcmp(*k, domain) == 0)
			return NULL;
	return "no key file";
}

static void test_check_domains(void **state)
{
	struct ydoc_diags d;
	ydoc_diags_init(&d);
	struct policy_set *set = load_features(day("2026-01-01"), &d);
	ydoc_diags_release(&d);

	static const char *const all[] = {"planning", "planning-police", NULL};
	ydoc_diags_init(&d);
	assert_int_equal(policy_check_domains(set, probe_keys, (void *)all, &d), 0);
	assert_int_equal(d.n, 0);
	ydoc_diags_release(&d);

	/* One error per field whose domain has no key, at its domain: value. */
	static const char *const some[] = {"planning-police", "unused", NULL};
	ydoc_diags_init(&d);
	assert_int_equal(policy_check_domains(set, probe_keys, (void *)some, &d), 2);
	assert_int_equal(d.errors, 2);
	static const struct {
		int line, col;
		const char *msg;
	} want[] = {
	    {18, 78, "linkage domain 'planning' of field 'nhs_number' has no key: no key file"},
	    {20, 73, "linkage domain 'planning' of field 'family_name' has no key: no key file"},
	};
	for (size_t i = 0; i < ARRAY_LEN(want); i++) {
		assert_non_null(
		    strstr(d.items[i].file, "features/agreements/council-planning.yaml"));
		assert_int_equal(d.items[i].line, want[i].line);
		assert_int_equal(d.items[i].col, want[i].col);
		assert_string_equal(d.items[i].message, want[i].msg);
	}
	ydoc_diags_release(&d);

	static const char *const none[] = {NULL};
	ydoc_diags_init(&d);
	assert_int_equal(policy_check_domains(set, probe_keys, (void *)none, &d), 3);
	assert_int_equal(d.items[1].line, 19);
	assert_int_equal(d.items[1].col, 70);
	ydoc_diags_release(&d);
	policy_set_unref(set);
}

/* The errors of one load, in order, each with its file, line, column and message. */
struct want_diag {
	const char *file; /* ends the diagnostic's path */
	int line, col;
	const char *msg;
};

static void expect_errors(const char *dir, const struct want_diag *want, size_t n)
{
	struct ydoc_diags d;
	ydoc_diags_init(&d);
	struct policy_set *set = (struct policy_set *)1;
	assert_int_equal(policy_load(dir, &set, &d), ISG_ERR_INVALID);
	assert_null(set);
	size_t k = 0;
	bool ok = d.errors == n;
	for (size_t i = 0; ok && i < d.n; i++) {
		if (d.items[i].warning)
			continue;
		const struct ydoc_diag *g = &d.items[i];
		size_t fl = strlen(g->file), wl = strlen(want[k].file);
		ok = fl >= wl && !strcmp(g->file + fl - wl, want[k].file) &&
		     g->line == want[k].line && g->col == want[k].col &&
		     strstr(g->message, want[k].msg);
		k++;
	}
	if (!ok)
		ydoc_diags_print(&d, stderr);
	assert_true(ok);
	ydoc_diags_release(&d);
}

#define AGREEMENT_HEAD(id)                                                                         \
	"agreement:\n"                                                                             \
	"  id: " id "\n"                                                                           \
	"  version: 1\n"                                                                           \
	"  title: Duplicates\n"                                                                    \
	"  senders: [met-police]\n"                                                                \
	"  recipients: [nhs-trust]\n"                                                              \
	"  purpose: {code: testing, text: Testing}\n"                                              \
	"  lawful_basis: [\"UK GDPR Art. 6(1)(e)\"]\n"                                             \
	"  valid_from: 2025-01-01\n"

/*
 * A name given twice is reported even when the first of the two has an error
 * of its own: the admin sees every problem in one check, not one more after
 * each fix.
 */
static void test_duplicates_behind_errors(void **state)
{
	char *dir = temp_policy_dir();
	install(dir, "valid/partners.yaml", "partners.yaml");
	put_file(dir, "agreements/dups.yaml",
	         AGREEMENT_HEAD("dups") "  datasets:\n"
	                                "    - name: things\n"
	                                "      fields:\n"
	                                "        - {name: a, type: txt, action: pass}\n"
	                                "        - {name: a, type: text, action: pass}\n"
	                                "    - name: things\n"
	                                "      fields:\n"
	                                "        - {name: b, type: text, action: pass}\n");
	/* Its id is the one a later file's has. */
	put_file(dir, "agreements/one.yaml", AGREEMENT_HEAD("same") "  datasets: {}\n");
	put_file(dir, "agreements/two.yaml",
	         AGREEMENT_HEAD("same") "  datasets:\n"
	                                "    - name: things\n"
	                                "      fields:\n"
	                                "        - {name: b, type: text, action: pass}\n");
	const struct want_diag agreements[] = {
	    {"agreements/dups.yaml", 13, 27, "unknown field type 'txt'"},
	    {"agreements/dups.yaml", 14, 18,
	     "duplicate field 'a' in dataset 'things' (also at line 13)"},
	    {"agreements/dups.yaml", 15, 13, "duplicate dataset 'things' (also at line 11)"},
	    {"agreements/one.yaml", 10, 13, "datasets must be a list, not a mapping"},
	    {"agreements/two.yaml", 2, 7, "duplicate agreement id 'same' (also in "},
	};
	expect_errors(dir, agreements, ARRAY_LEN(agreements));

	remove_dir(dir);

	/* A partner registry of its own: agreements are not checked against a broken one. */
	dir = temp_policy_dir();
	put_file(dir, "partners.yaml",
	         "partners:\n"
	         "  - id: met-police\n"
	         "    name: Met\n"
	         "    kind: polize\n"
	         "    certificate: {subject_cn: met.test}\n"
	         "  - id: met-police\n"
	         "    name: Met again\n"
	         "    kind: police\n"
	         "    certificate: {subject_cn: met2.test}\n");
	const struct want_diag partners[] = {
	    {"partners.yaml", 4, 11, "unknown partner kind 'polize'"},
	    {"partners.yaml", 6, 9, "duplicate partner id 'met-police' (also at line 2)"},
	};
	expect_errors(dir, partners, ARRAY_LEN(partners));
	remove_dir(dir);
}

/*
 * An unknown partner id's hint names the nearest id of the registry, not
 * the first near one, and never one the list already gives.
 */
static void test_unknown_partner_hint_is_the_nearest(void **state)
{
	char *dir = temp_policy_dir();
	put_file(dir, "partners.yaml",
	         "partners:\n"
	         "  - id: nhs-trusts\n"
	         "    name: Trusts\n"
	         "    kind: nhs\n"
	         "    certificate: {subject_cn: trusts.test}\n"
	         "  - id: nhs-trust\n"
	         "    name: Trust\n"
	         "    kind: nhs\n"
	         "    certificate: {subject_cn: trust.test}\n"
	         "  - id: met-police\n"
	         "    name: Met\n"
	         "    kind: police\n"
	         "    certificate: {subject_cn: met.test}\n");
	put_file(dir, "agreements/a.yaml",
	         "agreement:\n"
	         "  id: a\n"
	         "  version: 1\n"
	         "  title: Hints\n"
	         "  senders: [met-police, nhs-trus]\n"
	         "  recipients: [nhs-trust, nhs-trusx]\n"
	         "  purpose: {code: testing, text: Testing}\n"
	         "  lawful_basis: [\"UK GDPR Art. 6(1)(e)\"]\n"
	         "  valid_from: 2025-01-01\n"
	         "  datasets:\n"
	         "    - name: things\n"
	         "      fields:\n"
	         "        - {name: a, type: text, action: pass}\n");
	const struct want_diag want[] = {
	    /* nhs-trusts is 2 away and first in the registry; nhs-trust is 1 away */
	    {"agreements/a.yaml", 5, 25,
	     "unknown partner 'nhs-trus' in senders (not in partners.yaml; did you mean "
	     "'nhs-trust'?)"},
	    /* nhs-trust is 1 away but listed already; nhs-trusts is 1 away too */
	    {"agreements/a.yaml", 6, 27,
	     "unknown partner 'nhs-trusx' in recipients (not in partners.yaml; did you mean "
	     "'nhs-trusts'?)"},
	};
	expect_errors(dir, want, ARRAY_LEN(want));
	remove_dir(dir);
}

/*
 * In a list, as anywhere, an unquoted ~ or null is YAML's null, not the text
 * "~" or "null": a lawful basis so written is refused, not taken literally.
 */
static void test_null_in_lawful_basis(void **state)
{
	char *dir = temp_policy_dir();
	install(dir, "valid/partners.yaml", "partners.yaml");
	put_file(dir, "agreements/nulls.yaml",
	         "agreement:\n"
	         "  id: nulls\n"
	         "  version: 1\n"
	         "  title: Nulls\n"
	         "  senders: [met-police]\n"
	         "  recipients: [nhs-trust]\n"
	         "  purpose: {code: testing, text: Testing}\n"
	         "  lawful_basis: [~, null, \"null\", \"UK GDPR Art. 6(1)(e)\", Null, NULL, "
	         "'NULL']\n"
	         "  valid_from: 2025-01-01\n"
	         "  datasets:\n"
	         "    - name: things\n"
	         "      fields:\n"
	         "        - {name: a, type: text, action: pass}\n");
	const struct want_diag want[] = {
	    {"agreements/nulls.yaml", 8, 18, "lawful_basis lists an empty value"},
	    {"agreements/nulls.yaml", 8, 21, "lawful_basis lists an empty value"},
	    {"agreements/nulls.yaml", 8, 59, "lawful_basis lists an empty value"},
	    {"agreements/nulls.yaml", 8, 65, "lawful_basis lists an empty value"},
	};
	expect_errors(dir, want, ARRAY_LEN(want));

	/* A key whose value is Null or NULL is absent; quoted, it is the text. */
	put_file(dir, "agreements/nulls.yaml",
	         "agreement:\n"
	         "  id: nulls\n"
	         "  version: 1\n"
	         "  title: \"NULL\"\n"
	         "  dpia: Null\n"
	         "  valid_until: NULL\n"
	         "  senders: [met-police]\n"
	         "  recipients: [nhs-trust]\n"
	         "  purpose: {code: testing, text: Testing}\n"
	         "  lawful_basis: [\"UK GDPR Art. 6(1)(e)\"]\n"
	         "  valid_from: 2025-01-01\n"
	         "  datasets:\n"
	         "    - name: things\n"
	         "      fields:\n"
	         "        - {name: a, type: text, action: pass}\n");
	struct ydoc_diags d;
	ydoc_diags_init(&d);
	struct policy_set *set = NULL;
	assert_int_equal(policy_load(dir, &set, &d), 0);
	const struct policy_agreement *a = policy_agreement_by_id(set, "nulls");
	assert_null(a->dpia);
	assert_int_equal(a->valid_until_days, INT64_MAX);
	assert_string_equal(a->title, "NULL");
	policy_set_unref(set);
	ydoc_diags_release(&d);
	remove_dir(dir);
}

/* A matcher refused says what would do: a URI's scheme, the length in bytes. */
static void test_matcher_hints(void **state)
{
	char *dir = temp_policy_dir();
	char cn[257], text[1024];
	memset(cn, 'a', 256);
	cn[256] = '\0';
	snprintf(text, sizeof(text),
	         "partners:\n"
	         "  - id: met-police\n"
	         "    name: Met\n"
	         "    kind: police\n"
	         "    certificate:\n"
	         "      san_uri: nhs-trust\n"
	         "      subject_cn: %s\n"
	         "      issuer_cn: \"Bell\\a CA\"\n",
	         cn);
	put_file(dir, "partners.yaml", text);
	const struct want_diag want[] = {
	    {"partners.yaml", 7, 19,
	     "invalid subject_cn: it must be 1 to 255 bytes long, and is "
	     "over 255 bytes"},
	    {"partners.yaml", 6, 16,
	     "invalid san_uri 'nhs-trust' (use a URI with a scheme and no spaces, e.g. "
	     "'https://...', 'spiffe://...' or 'urn:...')"},
	    {"partners.yaml", 8, 18, "invalid issuer_cn: control characters are not allowed"},
	};
	expect_errors(dir, want, ARRAY_LEN(want));
	remove_dir(dir);
}

/* An agreement valid from `from` (and until `until`, reviewed on `review`, each "" for none). */
static void put_dates(const char *dir, const char *from, const char *until, const char *review)
{
	char text[1024];
	snprintf(text, sizeof(text),
	         "agreement:\n  id: dates\n  version: 1\n  title: Dates\n"
	         "  senders: [met-police]\n  recipients: [nhs-trust]\n"
	         "  purpose: {code: testing, text: Testing}\n"
	         "  lawful_basis: [\"UK GDPR Art. 6(1)(e)\"]\n"
	         "  valid_from: %s\n  valid_until: %s\n  review_date: %s\n"
	         "  datasets:\n    - {name: d, fields: [{name: f, type: text, action: pass}]}\n",
	         from, until, review);
	put_file(dir, "agreements/dates.yaml", text);
}

/* The warnings of loading dir as if today were `today`, as "line:col: message" lines. */
static void expect_warnings(const char *dir, const char *today, const char *want)
{
	struct ydoc_diags d;
	ydoc_diags_init(&d);
	struct policy_set *set = NULL;
	assert_int_equal(policy_load_at(dir, day(today), &set, &d), 0);
	char got[2048] = "";
	for (size_t i = 0, used = 0; i < d.n; i++)
		used += (size_t)snprintf(got + used, sizeof(got) - used, "%d:%d: %s\n",
		                         d.items[i].line, d.items[i].col, d.items[i].message);
	assert_string_equal(got, want);
	policy_set_unref(set);
	ydoc_diags_release(&d);
}

/*
 * Dates an admin would want to hear of at check time: an agreement expired
 * or not yet in force (every send refused today), a review after the end;
 * and a year before 1970, a slip, refused.
 */
static void test_validity_warnings(void **state)
{
	char *dir = temp_policy_dir();
	install(dir, "valid/partners.yaml", "partners.yaml");
	put_dates(dir, "2025-01-01", "2025-12-31", "2026-03-31");
	expect_warnings(dir, "2026-06-01",
	                "10:16: agreement 'dates' expired on 2025-12-31 (valid_until): every send "
	                "under it is refused; today (UTC) is 2026-06-01\n"
	                "11:16: review_date 2026-03-31 is after valid_until 2025-12-31: the "
	                "agreement ends before it is reviewed\n");
	expect_warnings(dir, "2024-06-01",
	                "9:15: agreement 'dates' is not in force until 2025-01-01 (valid_from): "
	                "sends under it are refused until then; today (UTC) is 2024-06-01\n"
	                "11:16: review_date 2026-03-31 is after valid_until 2025-12-31: the "
	                "agreement ends before it is reviewed\n");
	/* The first and the last day in force: nothing to say. */
	put_dates(dir, "2025-01-01", "2025-12-31", "2025-06-30");
	expect_warnings(dir, "2025-01-01", "");
	expect_warnings(dir, "2025-06-30", "");
	put_dates(dir, "1970-01-01", "9999-12-31", "");
	expect_warnings(dir, "2025-06-30", "");

	put_dates(dir, "0000-01-01", "1969-12-31", "");
	const struct want_diag want[] = {
	    {"agreements/dates.yaml", 9, 15,
	     "invalid date '0000-01-01' for valid_from (the year must be from 1970 to 9999)"},
	    {"agreements/dates.yaml", 10, 16,
	     "invalid date '1969-12-31' for valid_until (the year must be from 1970 to 9999)"},
	};
	expect_errors(dir, want, ARRAY_LEN(want));
	remove_dir(dir);
}

/*
 * An agreement whose one sender is its one recipient allows no exchange (a
 * partner never sends to itself): it loads, with a warning at recipients.
 * One with another partner on either side has a flow, and no warning.
 */
static void test_self_only_agreement_warns(void **state)
{
	char *dir = temp_policy_dir();
	install(dir, "valid/partners.yaml", "partners.yaml");
	static const char body[] = "  purpose: {code: testing, text: Testing}\n"
	                           "  lawful_basis: [\"UK GDPR Art. 6(1)(e)\"]\n"
	                           "  valid_from: 2025-01-01\n"
	                           "  datasets:\n"
	                           "    - name: things\n"
	                           "      fields:\n"
	                           "        - {name: a, type: text, action: pass}\n";
	char text[1024];
	snprintf(text, sizeof(text),
	         "agreement:\n  id: self\n  version: 1\n  title: Self\n"
	         "  senders: [met-police]\n  recipients: [met-police]\n%s",
	         body);
	put_file(dir, "agreements/self.yaml", text);
	struct ydoc_diags d;
	ydoc_diags_init(&d);
	struct policy_set *set = NULL;
	assert_int_equal(policy_load(dir, &set, &d), 0);
	assert_int_equal(d.errors, 0);
	assert_int_equal(d.warnings, 1);
	assert_true(d.items[0].warning);
	assert_int_equal(d.items[0].line, 6);
	assert_int_equal(d.items[0].col, 15);
	assert_string_equal(d.items[0].message,
	                    "agreement 'self' allows no exchange: partner 'met-police' is its only "
	                    "sender and its only recipient, and a partner never sends to itself "
	                    "(name the other partner in senders or recipients)");
	policy_set_unref(set);
	ydoc_diags_release(&d);

	snprintf(text, sizeof(text),
	         "agreement:\n  id: self\n  version: 1\n  title: Self\n"
	         "  senders: [met-police]\n  recipients: [met-police, nhs-trust]\n%s",
	         body);
	put_file(dir, "agreements/self.yaml", text);
	ydoc_diags_init(&d);
	assert_int_equal(policy_load(dir, &set, &d), 0);
	assert_int_equal(d.n, 0);
	policy_set_unref(set);
	ydoc_diags_release(&d);
	remove_dir(dir);
}

/* An agreement with these senders, recipients and dataset d (fields a and notes). */
static void put_overlap(const char *dir, const char *id, const char *senders,
                        const char *recipients, const char *dataset, const char *notes_action)
{
	char text[1024], rel[128];
	snprintf(text, sizeof(text),
	         "agreement:\n  id: %s\n  version: 1\n  title: Overlap\n"
	         "  senders: [%s]\n  recipients: [%s]\n"
	         "  purpose: {code: testing, text: Testing}\n"
	         "  lawful_basis: [\"UK GDPR Art. 6(1)(e)\"]\n"
	         "  valid_from: 2025-01-01\n"
	         "  datasets:\n"
	         "    - name: %s\n"
	         "      fields:\n"
	         "        - {name: a, type: text, action: pass}\n"
	         "        - {name: notes, type: text, action: %s}\n",
	         id, senders, recipients, dataset, notes_action);
	snprintf(rel, sizeof(rel), "agreements/%s.yaml", id);
	put_file(dir, rel, text);
}

/*
 * Two agreements that let one sender send one dataset to one recipient,
 * with different actions for a field: the sender names the agreement, so it
 * can always take the weaker. A warning naming both, the field and both
 * actions, at the later agreement's field; none when the flows or the
 * datasets differ, or the actions are the same.
 */
static void test_overlapping_agreements_warn(void **state)
{
	char *dir = temp_policy_dir();
	install(dir, "valid/partners.yaml", "partners.yaml");
	put_overlap(dir, "a-strict", "met-police", "nhs-trust", "d", "drop");
	put_overlap(dir, "b-copy", "met-police, city-council", "nhs-trust", "d", "drop");
	expect_warnings(dir, "2026-01-01", "");
	put_overlap(dir, "b-copy", "city-council, met-police", "other-org, nhs-trust", "d", "pass");
	expect_warnings(dir, "2026-01-01",
	                "14:11: agreements 'a-strict' and 'b-copy' both let partner 'met-police' "
	                "send dataset 'd' to partner 'nhs-trust', but field 'notes' is drop under "
	                "'a-strict' and pass under 'b-copy': the sender names the agreement, so "
	                "it can always choose the weaker one\n");
	/* Another dataset, another recipient, or another sender: no choice to make. */
	put_overlap(dir, "b-copy", "met-police", "nhs-trust", "e", "pass");
	expect_warnings(dir, "2026-01-01", "");
	put_overlap(dir, "b-copy", "met-police", "city-council", "d", "pass");
	expect_warnings(dir, "2026-01-01", "");
	put_overlap(dir, "b-copy", "city-council", "nhs-trust", "d", "pass");
	expect_warnings(dir, "2026-01-01", "");
	/* A partner both sender and recipient of each never sends to itself. */
	put_overlap(dir, "a-strict", "met-police, nhs-trust", "met-police", "d", "drop");
	put_overlap(dir, "b-copy", "met-police", "met-police, nhs-trust", "d", "pass");
	expect_warnings(dir, "2026-01-01", "");
	remove_dir(dir);
}

/*
 * Numbers and booleans are plain scalars, in YAML 1.2's core spellings (the
 * editor schema's): a quoted "1" or "true" is text there, and refused here;
 * True, FALSE and +1 are a boolean and a number there, and accepted here.
 */
static void test_scalar_types(void **state)
{
	char *dir = temp_policy_dir();
	install(dir, "valid/partners.yaml", "partners.yaml");
	put_file(dir, "agreements/types.yaml",
	         "agreement:\n"
	         "  id: types\n"
	         "  version: \"1\"\n"
	         "  title: Types\n"
	         "  senders: [met-police]\n"
	         "  recipients: [nhs-trust]\n"
	         "  purpose: {code: testing, text: Testing}\n"
	         "  lawful_basis: [\"UK GDPR Art. 6(1)(e)\"]\n"
	         "  valid_from: 2025-01-01\n"
	         "  allow_reply: 'true'\n"
	         "  limits: {records_per_day: '10'}\n"
	         "  datasets:\n"
	         "    - name: things\n"
	         "      fields:\n"
	         "        - {name: a, type: text, action: pass, required: \"false\"}\n"
	         "        - {name: b, type: text, action: pass, required: yes}\n");
	const struct want_diag want[] = {
	    {"agreements/types.yaml", 3, 12,
	     "'version' must be a whole number from 1 to 4294967295 (unquoted), not the text "
	     "'1'"},
	    {"agreements/types.yaml", 10, 16,
	     "'allow_reply' must be true or false (unquoted), not the text 'true'"},
	    {"agreements/types.yaml", 11, 29, "'records_per_day' must be a whole number"},
	    {"agreements/types.yaml", 15, 57,
	     "'required' must be true or false (unquoted), not the text 'false'"},
	    {"agreements/types.yaml", 16, 57,
	     "'required' must be true or false (unquoted), not 'yes'"},
	};
	expect_errors(dir, want, ARRAY_LEN(want));

	/* YAML 1.2's other spellings; text fields take the characters as written. */
	put_file(dir, "agreements/types.yaml",
	         "agreement:\n"
	         "  id: types\n"
	         "  version: +2\n"
	         "  title: 12345\n"
	         "  senders: [met-police]\n"
	         "  recipients: [nhs-trust]\n"
	         "  purpose: {code: 2025, text: true}\n"
	         "  lawful_basis: [\"UK GDPR Art. 6(1)(e)\"]\n"
	         "  valid_from: 2025-01-01\n"
	         "  allow_reply: True\n"
	         "  datasets:\n"
	         "    - name: things\n"
	         "      fields:\n"
	         "        - {name: a, type: text, action: pass, required: TRUE}\n"
	         "        - {name: b, type: text, action: pass, required: False}\n");
	struct ydoc_diags d;
	ydoc_diags_init(&d);
	struct policy_set *set = NULL;
	assert_int_equal(policy_load(dir, &set, &d), 0);
	const struct policy_agreement *a = policy_agreement_by_id(set, "types");
	assert_int_equal(a->version, 2);
	assert_true(a->allow_reply);
	assert_string_equal(a->title, "12345");
	assert_string_equal(a->purpose_code, "2025");
	assert_string_equal(a->purpose_text, "true");
	assert_true(a->datasets[0].fields[0].required);
	assert_false(a->datasets[0].fields[1].required);
	policy_set_unref(set);
	ydoc_diags_release(&d);
	remove_dir(dir);
}

/*
 * An agreement (file agreements/ID.yaml) pseudonymising one field into each
 * of domains dFIRST .. dFIRST+n-1. Returns the column of the last domain
 * value; its line is 12 + n.
 */
static int put_domains(const char *dir, const char *id, int first, int n)
{
	size_t size = 512 + (size_t)n * 96;
	char *text = malloc(size), rel[128];
	assert_non_null(text);
	int used = snprintf(text, size,
	                    "agreement:\n  id: %s\n  version: 1\n  title: Domains\n"
	                    "  senders: [met-police]\n  recipients: [nhs-trust]\n"
	                    "  purpose: {code: testing, text: Testing}\n"
	                    "  lawful_basis: [\"UK GDPR Art. 6(1)(e)\"]\n"
	                    "  valid_from: 2025-01-01\n"
	                    "  datasets:\n    - name: things\n      fields:\n",
	                    id);
	int col = 0;
	for (int i = first; i < first + n; i++) {
		char head[96];
		snprintf(
		    head, sizeof(head),
		    "        - {name: f%d, type: identifier, action: pseudonymise, domain: ", i);
		col = (int)strlen(head) + 1;
		used += snprintf(text + used, size - (size_t)used, "%sd%d}\n", head, i);
	}
	snprintf(rel, sizeof(rel), "agreements/%s.yaml", id);
	put_file(dir, rel, text);
	free(text);
	return col;
}

/*
 * isgd supports at most POLICY_MAX_DOMAINS linkage domains over all the
 * agreements: the loader refuses the one past it, at its domain: value, so
 * policy check refuses what a start would.
 */
static void test_domain_limit(void **state)
{
	char *dir = temp_policy_dir();
	install(dir, "valid/partners.yaml", "partners.yaml");
	put_domains(dir, "a", 0, 200);
	put_domains(dir, "b", 200, POLICY_MAX_DOMAINS - 200);
	struct ydoc_diags d;
	ydoc_diags_init(&d);
	struct policy_set *set = NULL;
	assert_int_equal(policy_load(dir, &set, &d), 0);
	assert_int_equal(policy_domains(set, NULL, 0), POLICY_MAX_DOMAINS);
	policy_set_unref(set);
	ydoc_diags_release(&d);

	/* One more, in a third file: refused there. A domain named again does not count. */
	put_domains(dir, "c", 100, 1);
	int col = put_domains(dir, "d", 190, 70);
	const struct want_diag want[] = {
	    {"agreements/d.yaml", 12 + 67, col,
	     "linkage domain 'd256' is one more than the gateway supports: the agreements may "
	     "name at most 256 linkage domains"},
	    {"agreements/d.yaml", 12 + 68, col, "linkage domain 'd257'"},
	    {"agreements/d.yaml", 12 + 69, col, "linkage domain 'd258'"},
	    {"agreements/d.yaml", 12 + 70, col, "linkage domain 'd259'"},
	};
	expect_errors(dir, want, ARRAY_LEN(want));
	remove_dir(dir);
}

/* n copies of the UTF-8 character ch into out, NUL-terminated. */
static char *repeat(char *out, const char *ch, size_t n)
{
	size_t len = strlen(ch);
	for (size_t i = 0; i < n; i++)
		memcpy(out + i * len, ch, len);
	out[n * len] = '\0';
	return out;
}

/* An agreement with this title, lawful basis and purpose text. */
static void put_texts(const char *dir, const char *title, const char *basis, const char *purpose)
{
	size_t size = strlen(title) + strlen(basis) + strlen(purpose) + 512;
	char *text = malloc(size);
	assert_non_null(text);
	snprintf(text, size,
	         "agreement:\n"
	         "  id: texts\n"
	         "  version: 1\n"
	         "  title: %s\n"
	         "  senders: [met-police]\n"
	         "  recipients: [nhs-trust]\n"
	         "  purpose: {code: testing, text: %s}\n"
	         "  lawful_basis: [\"%s\"]\n"
	         "  valid_from: 2025-01-01\n"
	         "  datasets:\n"
	         "    - name: things\n"
	         "      fields:\n"
	         "        - {name: a, type: text, action: pass}\n",
	         title, purpose, basis);
	put_file(dir, "agreements/texts.yaml", text);
	free(text);
}

/*
 * Text lengths count characters (code points), as docs/policy.md and the
 * schema's maxLength do, not bytes: 200 two-byte or four-byte characters make
 * a title, 201 do not; the same for a lawful basis (512) and a purpose (4096).
 */
static void test_text_lengths_in_characters(void **state)
{
	static char title[4 * 201 + 1], basis[4 * 513 + 1], purpose[3 * 4097 + 1];
	const char *chars[] = {"\xc3\xa9", "\xf0\x9f\x98\x80"}; /* U+00E9, U+1F600 */
	for (size_t i = 0; i < ARRAY_LEN(chars); i++) {
		char *dir = temp_policy_dir();
		install(dir, "valid/partners.yaml", "partners.yaml");
		put_texts(dir, repeat(title, chars[i], 200), repeat(basis, chars[i], 512),
		          repeat(purpose, "\xe2\x82\xac", 4096)); /* U+20AC */
		struct ydoc_diags d;
		ydoc_diags_init(&d);
		struct policy_set *set = NULL;
		if (policy_load(dir, &set, &d) != 0)
			ydoc_diags_print(&d, stderr);
		assert_non_null(set);
		const struct policy_agreement *a = policy_agreement_by_id(set, "texts");
		assert_non_null(a);
		assert_string_equal(a->title, title);
		assert_string_equal(a->lawful_basis[0], basis);
		policy_set_unref(set);
		ydoc_diags_release(&d);

		put_texts(dir, repeat(title, chars[i], 201), repeat(basis, chars[i], 513),
		          repeat(purpose, "\xe2\x82\xac", 4097));
		const struct want_diag want[] = {
		    {"agreements/texts.yaml", 4, 10, "title must be 1 to 200 characters long"},
		    {"agreements/texts.yaml", 7, 34, "text must be 1 to 4096 characters long"},
		    {"agreements/texts.yaml", 8, 18,
		     "lawful_basis must be 1 to 512 characters long"},
		};
		expect_errors(dir, want, ARRAY_LEN(want));
		remove_dir(dir);
	}
}

/* Errors in several files are all reported, each against its own file. */
static void test_errors_collected_across_files(void **state)
{
	char *dir = temp_policy_dir();
	install(dir, "valid/partners.yaml", "partners.yaml");
	install(dir, BROKEN("bad-date"), AFILE("bad-date"));
	install(dir, BROKEN("unknown-type"), AFILE("unknown-type"));
	install(dir, BROKEN("syntax"), AFILE("syntax"));
	struct ydoc_diags d;
	ydoc_diags_init(&d);
	struct policy_set *set;
	assert_int_equal(policy_load(dir, &set, &d), ISG_ERR_PARSE);
	assert_int_equal(d.errors, 3);
	static const char *const files[] = {"agreement-bad-date.yaml", "agreement-syntax.yaml",
	                                    "agreement-unknown-type.yaml"};
	size_t seen = 0;
	for (size_t i = 0; i < d.n; i++) {
		if (d.items[i].warning) /* ids differ from these file names */
			continue;
		assert_true(seen < ARRAY_LEN(files));
		assert_non_null(strstr(d.items[i].file, files[seen++]));
	}
	assert_int_equal(seen, 3);
	ydoc_diags_release(&d);
	remove_dir(dir);
}

/* The example policies the demo runs load without a single complaint. */
static void test_shipped_policies_load(void **state)
{
	char dir[4400];
	snprintf(dir, sizeof(dir), "%s/../../../policies", data_dir);
	struct ydoc_diags d;
	ydoc_diags_init(&d);
	struct policy_set *set = NULL;
	int err = policy_load(dir, &set, &d);
	ydoc_diags_print(&d, stderr);
	assert_int_equal(err, 0);
	assert_int_equal(d.errors, 0);
	/* One warning, intended: the trust gets NHS numbers in clear for safeguarding and
	 * pseudonymised for the street triage evaluation (see the agreement's comment). */
	assert_int_equal(d.warnings, 1);
	assert_non_null(strstr(d.items[0].file, "agreements/police-nhs-mh-triage-analytics.yaml"));
	assert_non_null(strstr(d.items[0].message,
	                       "partner 'nhs-trust' receives nhs_number in clear under agreement "
	                       "'police-nhs-adult-safeguarding' (field 'nhs_number') and "
	                       "pseudonymised under agreement 'police-nhs-mh-triage-analytics'"));
	assert_int_equal(set->n_partners, 3);
	assert_int_equal(set->n_agreements, 4);
	assert_true(policy_agreement_by_id(set, "nhs-police-mh-crisis-reply")->allow_reply);
	const char *domains[4];
	assert_int_equal(policy_domains(set, domains, 4), 2);
	assert_string_equal(domains[0], "council-planning");
	assert_string_equal(domains[1], "mh-triage");
	struct cert_identity id = {0};
	str_copy(id.subject_cn, "nhs-trust.partners.isg.example", sizeof(id.subject_cn));
	assert_string_equal(policy_partner_by_cert(set, &id)->id, "nhs-trust");
	policy_set_unref(set);
	ydoc_diags_release(&d);
}

/* ---- partners by certificate ---- */

static void test_partner_by_cert(void **state)
{
	struct policy_set *set = load_valid();
	struct cert_identity id;

	memset(&id, 0, sizeof(id));
	str_copy(id.subject_cn, "met-police.test", sizeof(id.subject_cn));
	assert_string_equal(policy_partner_by_cert(set, &id)->id, "met-police");
	str_copy(id.subject_cn, "MET-POLICE.test", sizeof(id.subject_cn)); /* CN: exact */
	assert_null(policy_partner_by_cert(set, &id));

	memset(&id, 0, sizeof(id));
	id.n_san_uri = 2;
	str_copy(id.san_uri[0], "spiffe://isg.test/partner/other", sizeof(id.san_uri[0]));
	str_copy(id.san_uri[1], "spiffe://isg.test/partner/met-police", sizeof(id.san_uri[1]));
	assert_string_equal(policy_partner_by_cert(set, &id)->id, "met-police");
	id.n_san_uri = 1; /* only the first counts */
	assert_null(policy_partner_by_cert(set, &id));

	memset(&id, 0, sizeof(id));
	id.n_san_dns = 1;
	str_copy(id.san_dns[0], "nhs-trust.ISG.test", sizeof(id.san_dns[0])); /* DNS: any case */
	assert_string_equal(policy_partner_by_cert(set, &id)->id, "nhs-trust");
	str_copy(id.san_dns[0], "nhs-trust.isg.test.evil", sizeof(id.san_dns[0]));
	assert_null(policy_partner_by_cert(set, &id));

	memset(&id, 0, sizeof(id));
	static const uint8_t spki[32] = {0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77,
	                                 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff,
	                                 0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77,
	                                 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff};
	memcpy(id.spki_sha256, spki, 32);
	assert_string_equal(policy_partner_by_cert(set, &id)->id, "city-council");
	id.spki_sha256[31] ^= 1;
	assert_null(policy_partner_by_cert(set, &id));

	/* A second subject_cn of the same partner (certificate rotation). */
	memset(&id, 0, sizeof(id));
	str_copy(id.subject_cn, "other-org-2026.test", sizeof(id.subject_cn));
	assert_string_equal(policy_partner_by_cert(set, &id)->id, "other-org");

	/* One certificate that two partners' matchers recognise: neither. */
	memset(&id, 0, sizeof(id));
	str_copy(id.subject_cn, "met-police.test", sizeof(id.subject_cn));
	id.n_san_dns = 1;
	str_copy(id.san_dns[0], "nhs-trust.isg.test", sizeof(id.san_dns[0]));
	assert_null(policy_partner_by_cert(set, &id));

	/* Nothing, or an unterminated field, matches nobody. */
	memset(&id, 0, sizeof(id));
	assert_null(policy_partner_by_cert(set, &id));
	memset(id.subject_cn, 'a', sizeof(id.subject_cn));
	assert_null(policy_partner_by_cert(set, &id));
	id.n_san_dns = 1000; /* a count past the array is bounded */
	assert_null(policy_partner_by_cert(set, &id));
	policy_set_unref(set);
}

/* ---- policy_apply ---- */

#define MAX_RECS 64
#define MAX_FIELDS 20

struct req {
	Isg__SendRequest req;
	Isg__Record recs[MAX_RECS];
	Isg__Record *rec_ptrs[MAX_RECS];
	Isg__Field fields[MAX_RECS][MAX_FIELDS];
	Isg__Field *field_ptrs[MAX_RECS][MAX_FIELDS];
	Isg__Value values[MAX_RECS][MAX_FIELDS];
};

static void req_init(struct req *r, const char *agreement, const char *recipient,
                     const char *dataset)
{
	memset(r, 0, sizeof(*r));
	isg__send_request__init(&r->req);
	r->req.message_id = "msg-1";
	r->req.agreement_id = (char *)agreement;
	r->req.recipient = (char *)recipient;
	r->req.dataset = (char *)dataset;
	r->req.records = r->rec_ptrs;
}

static size_t req_record(struct req *r)
{
	size_t i = r->req.n_records++;
	assert_true(i < MAX_RECS);
	isg__record__init(&r->recs[i]);
	r->recs[i].fields = r->field_ptrs[i];
	r->rec_ptrs[i] = &r->recs[i];
	return i;
}

static Isg__Value *req_field(struct req *r, size_t rec, const char *name)
{
	size_t k = r->recs[rec].n_fields++;
	assert_true(k < MAX_FIELDS);
	Isg__Field *f = &r->fields[rec][k];
	isg__field__init(f);
	f->name = (char *)name;
	isg__value__init(&r->values[rec][k]);
	f->value = &r->values[rec][k];
	r->field_ptrs[rec][k] = f;
	return f->value;
}

static void req_text(struct req *r, size_t rec, const char *name, const char *text)
{
	Isg__Value *v = req_field(r, rec, name);
	v->kind_case = ISG__VALUE__KIND_TEXT;
	v->text = (char *)text;
}

static void req_int(struct req *r, size_t rec, const char *name, int64_t i)
{
	Isg__Value *v = req_field(r, rec, name);
	v->kind_case = ISG__VALUE__KIND_INTEGER;
	v->integer = i;
}

static void req_real(struct req *r, size_t rec, const char *name, double d)
{
	Isg__Value *v = req_field(r, rec, name);
	v->kind_case = ISG__VALUE__KIND_REAL;
	v->real = d;
}

static void req_bool(struct req *r, size_t rec, const char *name, bool b)
{
	Isg__Value *v = req_field(r, rec, name);
	v->kind_case = ISG__VALUE__KIND_BOOLEAN;
	v->boolean = b;
}

/* The smallest record the safeguarding dataset accepts. */
static size_t req_concern(struct req *r)
{
	size_t i = req_record(r);
	req_text(r, i, "nhs_number", "9434765919");
	req_text(r, i, "concern", "SECRET-CONCERN-TEXT");
	return i;
}

static int64_t now_ok(void)
{
	return day_ms("2026-06-01", 12);
}

struct expect {
	int err;
	Isg__ErrorCode code;
	const char *rule;
	int64_t record;
	const char *field;
	const char *msg;
};

/* value: one the request holds, that the message must not quote (NULL: none). */
static void apply_refused_with(const struct policy_set *set, const char *sender,
                               const struct req *r, int64_t now, const struct pseudo_service *ps,
                               const char *value, const struct expect *e)
{
	struct policy_outcome out;
	struct policy_refusal why;
	int err = policy_apply(set, sender, &r->req, now, ps, &out, &why);
	if (err != e->err || strcmp(why.rule, e->rule) || !strstr(why.message, e->msg))
		fprintf(stderr, "rule=%s code=%d record=%lld field=%s: %s\n", why.rule,
		        (int)why.code, (long long)why.record_index, why.field, why.message);
	assert_int_equal(err, e->err);
	assert_int_equal(why.code, e->code);
	assert_string_equal(why.rule, e->rule);
	assert_int_equal(why.record_index, e->record);
	assert_string_equal(why.field, e->field);
	assert_non_null(strstr(why.message, e->msg));
	/* A refusal never quotes a value. */
	assert_null(strstr(why.message, "SECRET"));
	assert_null(strstr(why.message, "9434765919"));
	if (value)
		assert_null(strstr(why.message, value));
	assert_null(out.payload);
	policy_outcome_release(&out);
}

static void apply_refused(const struct policy_set *set, const char *sender, const struct req *r,
                          int64_t now, const struct expect *e)
{
	apply_refused_with(set, sender, r, now, NULL, NULL, e);
}

static void test_apply_agreement_rules(void **state)
{
	struct policy_set *set = load_valid();
	const int DENIED = ISG_ERR_DENIED, INVALID = ISG_ERR_INVALID;
	struct req r;

	req_init(&r, "no-such-agreement", "nhs-trust", "safeguarding-concern");
	req_concern(&r);
	apply_refused(set, "met-police", &r, now_ok(),
	              &(struct expect){DENIED, ISG__ERROR_CODE__NOT_PERMITTED, "agreement.unknown",
	                               -1, "", "no agreement 'no-such-agreement'"});
	r.req.agreement_id = "";
	apply_refused(set, "met-police", &r, now_ok(),
	              &(struct expect){DENIED, ISG__ERROR_CODE__NOT_PERMITTED, "agreement.unknown",
	                               -1, "", "the request names no agreement"});

	r.req.agreement_id = "police-nhs-safeguarding";
	apply_refused(set, "nhs-trust", &r, now_ok(),
	              &(struct expect){DENIED, ISG__ERROR_CODE__NOT_PERMITTED, "agreement.sender",
	                               -1, "",
	                               "partner 'nhs-trust' is not a sender under agreement "
	                               "'police-nhs-safeguarding'"});

	r.req.recipient = "city-council";
	apply_refused(set, "met-police", &r, now_ok(),
	              &(struct expect){DENIED, ISG__ERROR_CODE__NOT_PERMITTED,
	                               "agreement.recipient", -1, "",
	                               "partner 'city-council' is not a recipient under agreement "
	                               "'police-nhs-safeguarding'"});
	r.req.recipient = "ghost\n";
	apply_refused(set, "met-police", &r, now_ok(),
	              &(struct expect){DENIED, ISG__ERROR_CODE__NOT_PERMITTED,
	                               "agreement.recipient", -1, "",
	                               "unknown recipient 'ghost?' (no such partner)"});

	r.req.recipient = "nhs-trust";
	r.req.dataset = "answer";
	apply_refused(set, "met-police", &r, now_ok(),
	              &(struct expect){DENIED, ISG__ERROR_CODE__NOT_PERMITTED, "agreement.dataset",
	                               -1, "",
	                               "dataset 'answer' is not declared by agreement "
	                               "'police-nhs-safeguarding'"});

	r.req.dataset = "safeguarding-concern";
	apply_refused(
	    set, "met-police", &r, day_ms("2024-12-31", 0) + 86399999,
	    &(struct expect){DENIED, ISG__ERROR_CODE__NOT_PERMITTED, "agreement.validity", -1, "",
	                     "agreement 'police-nhs-safeguarding' is valid from 2025-01-01 "
	                     "until 2027-12-31; today (UTC) is 2024-12-31"});
	apply_refused(set, "met-police", &r, day_ms("2028-01-01", 0),
	              &(struct expect){DENIED, ISG__ERROR_CODE__NOT_PERMITTED, "agreement.validity",
	                               -1, "", "today (UTC) is 2028-01-01"});

	r.req.reply_to = 42;
	apply_refused(
	    set, "met-police", &r, now_ok(),
	    &(struct expect){DENIED, ISG__ERROR_CODE__NOT_PERMITTED, "agreement.reply", -1, "",
	                     "agreement 'police-nhs-safeguarding' does not allow replies"});
	r.req.reply_to = 0;

	for (int i = 0; i < 3; i++)
		req_concern(&r);
	apply_refused(set, "met-police", &r, now_ok(),
	              &(struct expect){DENIED, ISG__ERROR_CODE__LIMIT_EXCEEDED,
	                               "agreement.max_records", -1, "",
	                               "4 records exceed the limit of 3 records per message under "
	                               "agreement 'police-nhs-safeguarding'"});
	r.req.n_records = 0;
	apply_refused(set, "met-police", &r, now_ok(),
	              &(struct expect){INVALID, ISG__ERROR_CODE__BAD_REQUEST, "request.records", -1,
	                               "", "the request has no records"});

	/* The first and last valid days are inside; the limit itself is allowed. */
	r.req.n_records = 3;
	struct policy_outcome out;
	struct policy_refusal why;
	assert_int_equal(
	    policy_apply(set, "met-police", &r.req, day_ms("2025-01-01", 0), NULL, &out, &why), 0);
	assert_int_equal(out.record_count, 3);
	policy_outcome_release(&out);
	assert_int_equal(
	    policy_apply(set, "met-police", &r.req, day_ms("2027-12-31", 23), NULL, &out, &why), 0);
	policy_outcome_release(&out);

	/* The reply agreement allows reply_to, and has no end date. */
	req_init(&r, "nhs-police-reply", "met-police", "answer");
	size_t i = req_record(&r);
	req_bool(&r, i, "known_to_services", true);
	r.req.reply_to = 42;
	assert_int_equal(
	    policy_apply(set, "nhs-trust", &r.req, day_ms("2999-01-01", 0), NULL, &out, &why), 0);
	assert_string_equal(out.agreement->id, "nhs-police-reply");
	policy_outcome_release(&out);
	policy_set_unref(set);
}

static void test_apply_record_rules(void **state)
{
	struct policy_set *set = load_valid();
	const int INVALID = ISG_ERR_INVALID;
	struct req r;

	req_init(&r, "police-nhs-safeguarding", "nhs-trust", "safeguarding-concern");
	req_concern(&r);
	size_t i = req_concern(&r);
	req_text(&r, i, "shoe_size", "SECRET-9");
	apply_refused(
	    set, "met-police", &r, now_ok(),
	    &(struct expect){INVALID, ISG__ERROR_CODE__UNKNOWN_FIELD, "dataset.unknown_field", 1,
	                     "shoe_size",
	                     "record 1: its field at position 2 is not in dataset "
	                     "'safeguarding-concern' of agreement 'police-nhs-safeguarding'"});

	/* A record whose names are data (a CSV read without its header row):
	 * a name without a field name's shape is not told back, and none is
	 * in the message, which goes to the logs. */
	static const char *const undeclared[][2] = {
	    {"9434765919", ""}, {"SW1A 1AA", ""}, {"1980-02-29", ""}, {"Okafor", "Okafor"}};
	for (size_t k = 0; k < ARRAY_LEN(undeclared); k++) {
		req_init(&r, "police-nhs-safeguarding", "nhs-trust", "safeguarding-concern");
		i = req_record(&r);
		req_text(&r, i, "concern", "SECRET-CONCERN-TEXT");
		req_text(&r, i, undeclared[k][0], "SECRET-9");
		apply_refused_with(set, "met-police", &r, now_ok(), NULL, undeclared[k][0],
		                   &(struct expect){INVALID, ISG__ERROR_CODE__UNKNOWN_FIELD,
		                                    "dataset.unknown_field", 0, undeclared[k][1],
		                                    "record 0: its field at position 1 is not in"});
		struct policy_outcome out;
		struct policy_refusal why;
		policy_apply(set, "met-police", &r.req, now_ok(), NULL, &out, &why);
		assert_true(why.field_undeclared);
		policy_outcome_release(&out);
	}

	req_init(&r, "police-nhs-safeguarding", "nhs-trust", "safeguarding-concern");
	i = req_concern(&r);
	req_text(&r, i, "concern", "SECRET-again");
	apply_refused(set, "met-police", &r, now_ok(),
	              &(struct expect){INVALID, ISG__ERROR_CODE__BAD_VALUE,
	                               "dataset.duplicate_field", 0, "concern",
	                               "record 0: field 'concern' appears more than once"});

	req_init(&r, "police-nhs-safeguarding", "nhs-trust", "safeguarding-concern");
	req_concern(&r);
	req_concern(&r);
	i = req_record(&r);
	req_text(&r, i, "nhs_number", "9434765919");
	apply_refused(set, "met-police", &r, now_ok(),
	              &(struct expect){INVALID, ISG__ERROR_CODE__MISSING_FIELD,
	                               "dataset.required_field", 2, "concern",
	                               "record 2: required field 'concern' is missing (dataset "
	                               "'safeguarding-concern' of agreement "
	                               "'police-nhs-safeguarding')"});
	/* A value of no kind, or a field without a value, is absent. */
	req_field(&r, i, "concern");
	apply_refused(set, "met-police", &r, now_ok(),
	              &(struct expect){INVALID, ISG__ERROR_CODE__MISSING_FIELD,
	                               "dataset.required_field", 2, "concern", "is missing"});
	r.fields[i][1].value = NULL;
	apply_refused(set, "met-police", &r, now_ok(),
	              &(struct expect){INVALID, ISG__ERROR_CODE__MISSING_FIELD,
	                               "dataset.required_field", 2, "concern", "is missing"});

	/* Values of the wrong kind, one per type rule. */
	static const struct {
		const char *field;
		int kind; /* 0 text, 1 integer, 2 real, 3 boolean */
		const char *text;
		double num;
		const char *expect;
	} bad[] = {
	    {"nhs_number", 1, NULL, 9434765919.0,
	     "field 'nhs_number' (type nhs_number) must be text"},
	    {"family_name", 3, NULL, 1, "(type name) must be text"},
	    {"date_of_birth", 0, "SECRET-1970-02-30", 0, "is not a valid date"},
	    {"date_of_birth", 0, "1970-02-30", 0, "is not a valid date"},
	    {"date_of_birth", 1, NULL, 19700101, "must be a date"},
	    {"nhs_number", 0, "9434765918", 0, "is not a valid nhs_number: "},
	    {"family_name", 0, "Smith\x01", 0, "is not a valid name: "},
	    {"age", 0, "42 years", 0, "(type integer) must be an integer (or its decimal text)"},
	    {"age", 0, "+42", 0, "must be an integer"},
	    {"age", 0, "99999999999999999999", 0, "must be an integer"},
	    {"age", 2, NULL, 42.0, "must be an integer"},
	    {"score", 0, "nan", 0, "must be a finite number"},
	    {"score", 0, "0x10", 0, "must be a finite number"},
	    {"score", 0, "1e999", 0, "must be a finite number"},
	    {"score", 0, "12345678901234567890123", 0, "integer text within 64 bits"},
	    {"score", 0, "-9223372036854775809", 0, "must be a finite number"},
	    {"score", 2, NULL, INFINITY, "must be a finite number"},
	    {"score", 3, NULL, 1, "must be a finite number"},
	    {"urgent", 0, "yes", 0, "must be a boolean (or the text true or false)"},
	    {"urgent", 1, NULL, 1, "must be a boolean"},
	    /* A dropped field is still checked against its type. */
	    {"officer_notes", 1, NULL, 5, "field 'officer_notes' (type text) must be text"},
	};
	for (size_t b = 0; b < ARRAY_LEN(bad); b++) {
		req_init(&r, "police-nhs-safeguarding", "nhs-trust", "safeguarding-concern");
		req_concern(&r);
		i = req_record(&r);
		req_text(&r, i, "concern", "SECRET-CONCERN-TEXT");
		if (strcmp(bad[b].field, "nhs_number") != 0)
			req_text(&r, i, "nhs_number", "9434765919");
		switch (bad[b].kind) {
		case 0:
			req_text(&r, i, bad[b].field, bad[b].text);
			break;
		case 1:
			req_int(&r, i, bad[b].field, (int64_t)bad[b].num);
			break;
		case 2:
			req_real(&r, i, bad[b].field, bad[b].num);
			break;
		default:
			req_bool(&r, i, bad[b].field, bad[b].num != 0);
			break;
		}
		/* A value of the right kind that fails validation is a field_value refusal. */
		bool invalid = strstr(bad[b].expect, "is not a valid") != NULL;
		apply_refused(
		    set, "met-police", &r, now_ok(),
		    &(struct expect){INVALID, ISG__ERROR_CODE__BAD_VALUE,
		                     invalid ? "dataset.field_value" : "dataset.field_type", 1,
		                     bad[b].field, bad[b].expect});
	}

	/* Empty text is a value: it is a required text field's, but no identifier's. */
	req_init(&r, "police-nhs-safeguarding", "nhs-trust", "safeguarding-concern");
	i = req_record(&r);
	req_text(&r, i, "nhs_number", "9434765919");
	req_text(&r, i, "concern", "");
	struct policy_outcome out;
	struct policy_refusal why;
	assert_int_equal(policy_apply(set, "met-police", &r.req, now_ok(), NULL, &out, &why), 0);
	policy_outcome_release(&out);
	req_text(&r, i, "family_name", "");
	apply_refused(set, "met-police", &r, now_ok(),
	              &(struct expect){INVALID, ISG__ERROR_CODE__BAD_VALUE, "dataset.field_value",
	                               0, "family_name",
	                               "field 'family_name' is not a valid name: value is empty"});
	policy_set_unref(set);
}

static const Isg__Field *find_out(const Isg__Record *rec, const char *name)
{
	for (size_t i = 0; i < rec->n_fields; i++)
		if (strcmp(rec->fields[i]->name, name) == 0)
			return rec->fields[i];
	return NULL;
}

static void test_apply_transforms(void **state)
{
	struct policy_set *set = load_valid();
	struct req r;
	req_init(&r, "police-nhs-safeguarding", "nhs-trust", "safeguarding-concern");
	size_t i = req_record(&r);
	/* Out of declared order on purpose. */
	req_text(&r, i, "urgent", "true");
	req_text(&r, i, "score", "3.5");
	req_text(&r, i, "officer_notes", "SECRET-NOTES");
	req_text(&r, i, "age", "-42");
	req_text(&r, i, "concern", "Neighbour reports neglect");
	req_text(&r, i, "date_of_birth", "1970-01-31");
	req_text(&r, i, "nhs_number", "9434765919");
	i = req_concern(&r);
	req_int(&r, i, "age", 7);
	req_text(&r, i, "score", "12");
	req_bool(&r, i, "urgent", false);
	i = req_concern(&r);
	req_real(&r, i, "score", 2.0);
	req_field(&r, i, "family_name"); /* of no kind: absent, not output */

	/* Through the wire and back, as the gateway receives it. */
	size_t len = isg__send_request__get_packed_size(&r.req);
	uint8_t *buf = malloc(len);
	isg__send_request__pack(&r.req, buf);
	Isg__SendRequest *req = isg__send_request__unpack(NULL, len, buf);
	assert_non_null(req);
	free(buf);

	struct policy_outcome out;
	struct policy_refusal why;
	int err = policy_apply(set, "met-police", req, now_ok(), NULL, &out, &why);
	if (err)
		fprintf(stderr, "%s: %s\n", why.rule, why.message);
	assert_int_equal(err, 0);
	assert_string_equal(out.agreement->id, "police-nhs-safeguarding");
	assert_string_equal(out.dataset->name, "safeguarding-concern");
	assert_int_equal(out.record_count, 3);
	isg__send_request__free_unpacked(req, NULL);

	/* The payload is a Delivery holding only the records. */
	Isg__Delivery *del = isg__delivery__unpack(NULL, out.payload_len, out.payload);
	assert_non_null(del);
	assert_int_equal(del->n_records, 3);
	assert_int_equal(del->gateway_id, 0);
	assert_string_equal(del->sender, "");
	assert_string_equal(del->agreement_id, "");

	const Isg__Record *r0 = del->records[0];
	static const char *const order[] = {"nhs_number", "date_of_birth", "concern",
	                                    "age",        "score",         "urgent"};
	assert_int_equal(r0->n_fields, ARRAY_LEN(order));
	for (size_t k = 0; k < ARRAY_LEN(order); k++)
		assert_string_equal(r0->fields[k]->name, order[k]);
	assert_null(find_out(r0, "officer_notes")); /* dropped */
	assert_null(memmem(out.payload, out.payload_len, "SECRET-NOTES", 12));
	assert_int_equal(find_out(r0, "nhs_number")->value->kind_case, ISG__VALUE__KIND_TEXT);
	assert_string_equal(find_out(r0, "nhs_number")->value->text, "9434765919");
	assert_string_equal(find_out(r0, "date_of_birth")->value->text, "1970-01-31");
	const Isg__Value *age = find_out(r0, "age")->value;
	assert_int_equal(age->kind_case, ISG__VALUE__KIND_INTEGER); /* text -> integer */
	assert_int_equal(age->integer, -42);
	const Isg__Value *score = find_out(r0, "score")->value;
	assert_int_equal(score->kind_case, ISG__VALUE__KIND_REAL);
	assert_true(score->real == 3.5);
	const Isg__Value *urgent = find_out(r0, "urgent")->value;
	assert_int_equal(urgent->kind_case, ISG__VALUE__KIND_BOOLEAN);
	assert_true(urgent->boolean);

	const Isg__Record *r1 = del->records[1];
	assert_int_equal(find_out(r1, "age")->value->integer, 7);
	assert_int_equal(find_out(r1, "score")->value->kind_case, ISG__VALUE__KIND_INTEGER);
	assert_int_equal(find_out(r1, "score")->value->integer, 12);
	assert_int_equal(find_out(r1, "urgent")->value->kind_case, ISG__VALUE__KIND_BOOLEAN);
	assert_false(find_out(r1, "urgent")->value->boolean);

	const Isg__Record *r2 = del->records[2];
	assert_int_equal(r2->n_fields, 3);
	assert_null(find_out(r2, "family_name"));
	assert_int_equal(find_out(r2, "score")->value->kind_case, ISG__VALUE__KIND_REAL);
	isg__delivery__free_unpacked(del, NULL);

	/* The fields' order in a record changes nothing: each rotation of the
	 * first record's seven fields puts some, or none, where the dataset has
	 * them, and the payload stays the same bytes. */
	uint8_t *first = malloc(out.payload_len);
	size_t first_len = out.payload_len;
	memcpy(first, out.payload, first_len);
	policy_outcome_release(&out);
	Isg__Field **f0 = r.recs[0].fields;
	for (size_t turn = 1; turn < r.recs[0].n_fields; turn++) {
		Isg__Field *head = f0[0];
		memmove(f0, f0 + 1, (r.recs[0].n_fields - 1) * sizeof(*f0));
		f0[r.recs[0].n_fields - 1] = head;
		assert_int_equal(
		    policy_apply(set, "met-police", &r.req, now_ok(), NULL, &out, &why), 0);
		assert_int_equal(out.payload_len, first_len);
		assert_memory_equal(out.payload, first, first_len);
		policy_outcome_release(&out);
	}
	free(first);
	assert_null(out.payload);

	/* unknown_fields: drop: the unknown field goes, the record stays. */
	req_init(&r, "police-nhs-safeguarding", "nhs-trust", "referral-outcome");
	i = req_record(&r);
	req_text(&r, i, "reference", "REF-1");
	req_text(&r, i, "free_text", "SECRET-UNKNOWN");
	req_text(&r, i, "free_text", "SECRET-UNKNOWN-2");
	assert_int_equal(policy_apply(set, "met-police", &r.req, now_ok(), NULL, &out, &why), 0);
	del = isg__delivery__unpack(NULL, out.payload_len, out.payload);
	assert_int_equal(del->records[0]->n_fields, 1);
	assert_string_equal(del->records[0]->fields[0]->name, "reference");
	assert_null(memmem(out.payload, out.payload_len, "SECRET", 6));
	isg__delivery__free_unpacked(del, NULL);
	policy_outcome_release(&out);

	/* Text to integer in the council's counts. */
	req_init(&r, "council-planning", "city-council", "counts");
	i = req_record(&r);
	req_text(&r, i, "ward", "Riverside");
	req_text(&r, i, "count", "0012");
	assert_int_equal(policy_apply(set, "nhs-trust", &r.req, now_ok(), NULL, &out, &why), 0);
	del = isg__delivery__unpack(NULL, out.payload_len, out.payload);
	assert_int_equal(del->records[0]->fields[1]->value->kind_case, ISG__VALUE__KIND_INTEGER);
	assert_int_equal(del->records[0]->fields[1]->value->integer, 12);
	isg__delivery__free_unpacked(del, NULL);
	policy_outcome_release(&out);
	policy_set_unref(set);
}

/* ---- generalise and pseudonymise ---- */

/* valid/partners.yaml and the transform agreement, optionally with the safeguarding one. */
static struct policy_set *load_transform(bool with_safeguarding, struct ydoc_diags *d)
{
	char *dir = temp_policy_dir();
	install(dir, "valid/partners.yaml", "partners.yaml");
	install(dir, "transform/linkage-research.yaml", "agreements/linkage-research.yaml");
	if (with_safeguarding)
		install(dir, "valid/agreements/police-nhs-safeguarding.yaml",
		        "agreements/police-nhs-safeguarding.yaml");
	struct policy_set *set = NULL;
	int err = policy_load(dir, &set, d);
	if (err || d->errors)
		ydoc_diags_print(d, stderr);
	assert_int_equal(err, 0);
	assert_int_equal(d->errors, 0);
	remove_dir(dir);
	return set;
}

static void test_transform_loads(void **state)
{
	struct ydoc_diags d;
	ydoc_diags_init(&d);
	struct policy_set *set = load_transform(false, &d);
	assert_int_equal(d.warnings, 0);
	ydoc_diags_release(&d);
	const struct policy_dataset *ds =
	    &policy_agreement_by_id(set, "linkage-research")->datasets[0];
	assert_int_equal(ds->n_fields, 14);
	const struct policy_field *f = ds->fields;
	assert_int_equal(f[0].action, ACTION_PSEUDONYMISE);
	assert_string_equal(f[0].domain, "research");
	assert_int_equal(f[0].to, GEN_NONE);
	assert_string_equal(f[1].domain, "research-police");
	assert_int_equal(f[3].action, ACTION_GENERALISE);
	assert_int_equal(f[3].to, GEN_AGE_BAND);
	assert_int_equal(f[3].width, 5); /* the default */
	assert_null(f[3].domain);
	assert_int_equal(f[4].width, 10);
	assert_int_equal(f[5].to, GEN_YEAR);
	assert_int_equal(f[5].width, 0);
	assert_int_equal(f[6].to, GEN_MONTH);
	assert_int_equal(f[7].to, GEN_POSTCODE_AREA);
	assert_int_equal(f[8].to, GEN_POSTCODE_DISTRICT);
	assert_int_equal(f[9].to, GEN_POSTCODE_SECTOR);
	assert_int_equal(f[10].to, GEN_NUMBER_BAND);
	assert_int_equal(f[10].width, 10);
	assert_int_equal(f[11].width, 100);
	assert_int_equal(f[12].action, ACTION_PASS);
	assert_null(f[12].domain);
	assert_int_equal(f[12].to, GEN_NONE);

	/* Distinct, sorted; the count is of all of them, whatever max is. */
	const char *dom[3] = {"x", "x", "sentinel"};
	assert_int_equal(policy_domains(set, dom, 2), 3);
	assert_string_equal(dom[0], "alpha");
	assert_string_equal(dom[1], "research");
	assert_string_equal(dom[2], "sentinel");
	assert_int_equal(policy_domains(set, dom, 3), 3);
	assert_string_equal(dom[2], "research-police");
	assert_int_equal(policy_domains(set, NULL, 0), 3);
	assert_int_equal(policy_domains(NULL, dom, 3), 0);
	policy_set_unref(set);

	set = load_valid();
	assert_int_equal(policy_domains(set, dom, 3), 0);
	policy_set_unref(set);
}

/* A recipient given an identifier type in clear and pseudonymised: a warning per type. */
static void test_clear_and_pseudonymised_warning(void **state)
{
	struct ydoc_diags d;
	ydoc_diags_init(&d);
	struct policy_set *set = load_transform(true, &d);
	static const struct {
		int line;
		const char *msg;
	} want[] = {
	    {16, "partner 'nhs-trust' receives nhs_number in clear under agreement "
	         "'police-nhs-safeguarding' (field 'nhs_number') and pseudonymised under "
	         "agreement 'linkage-research' (field 'nhs_number', domain 'research'): it may be "
	         "able to link the pseudonyms to the people"},
	    {18, "partner 'nhs-trust' receives name in clear under agreement "
	         "'police-nhs-safeguarding' (field 'family_name') and pseudonymised under "
	         "agreement 'linkage-research' (field 'family_name', domain 'research')"},
	    {34, "partner 'nhs-trust' receives identifier in clear under agreement "
	         "'police-nhs-safeguarding' (field 'reference') and pseudonymised under "
	         "agreement 'linkage-research' (field 'ref', domain 'research')"},
	};
	if (d.warnings != ARRAY_LEN(want))
		ydoc_diags_print(&d, stderr);
	assert_int_equal(d.warnings, ARRAY_LEN(want));
	for (size_t i = 0; i < ARRAY_LEN(want); i++) {
		assert_true(d.items[i].warning);
		assert_non_null(strstr(d.items[i].file, "agreements/linkage-research.yaml"));
		assert_int_equal(d.items[i].line, want[i].line);
		assert_int_equal(d.items[i].col, 11);
		assert_non_null(strstr(d.items[i].message, want[i].msg));
	}
	ydoc_diags_release(&d);
	policy_set_unref(set);
}

/* A pseudonymisation service that answers "fake:<domain>:<type>:<norm>" and remembers. */
#define FAKE_SEEN 16
struct fake {
	int calls;
	size_t n;
	int64_t today;
	int fail;     /* an error to return, or 0 */
	bool garbage; /* answer without a terminating NUL */
	struct {
		char domain[64];
		int type;
		char norm[PSEUDO_VALUE_MAX + 1];
	} seen[FAKE_SEEN];
};

static int fake_pseudonymise(void *ctx, struct pseudo_request *reqs, size_t n, int64_t today)
{
	struct fake *f = ctx;
	f->calls++;
	f->n = n;
	f->today = today;
	for (size_t i = 0; i < n && i < FAKE_SEEN; i++) {
		assert_int_equal(reqs[i].len, strlen(reqs[i].norm));
		str_copy(f->seen[i].domain, reqs[i].domain, sizeof(f->seen[i].domain));
		f->seen[i].type = (int)reqs[i].type;
		str_copy(f->seen[i].norm, reqs[i].norm, sizeof(f->seen[i].norm));
	}
	if (f->fail)
		return f->fail;
	for (size_t i = 0; i < n; i++) {
		snprintf(reqs[i].out, PSEUDO_TEXT_MAX, "fake:%s:%d:%s", reqs[i].domain,
		         (int)reqs[i].type, reqs[i].norm);
		reqs[i].previous[0] = '\0';
		/* This domain's key was rotated: the previous key's pseudonym comes too. */
		if (strcmp(reqs[i].domain, "research-police") == 0)
			snprintf(reqs[i].previous, PSEUDO_TEXT_MAX, "prev:%s", reqs[i].norm);
	}
	if (f->garbage)
		memset(reqs[n - 1].out, 'x', PSEUDO_TEXT_MAX);
	return 0;
}

static struct pseudo_service fake_service(struct fake *f)
{
	memset(f, 0, sizeof(*f));
	return (struct pseudo_service){.ctx = f, .pseudonymise = fake_pseudonymise};
}

static Isg__Delivery *apply_ok(const struct policy_set *set, const char *sender,
                               const struct req *r, const struct pseudo_service *ps,
                               struct policy_outcome *out)
{
	struct policy_refusal why;
	int err = policy_apply(set, sender, &r->req, now_ok(), ps, out, &why);
	if (err)
		fprintf(stderr, "%s: %s\n", why.rule, why.message);
	assert_int_equal(err, 0);
	Isg__Delivery *del = isg__delivery__unpack(NULL, out->payload_len, out->payload);
	assert_non_null(del);
	return del;
}

/* The record's fields, by name, in order, each with its text value. */
static void assert_record(const Isg__Record *rec, const char *const *want, size_t n)
{
	bool ok = rec->n_fields == n;
	for (size_t k = 0; ok && k < n; k++)
		ok = !strcmp(rec->fields[k]->name, want[2 * k]) &&
		     rec->fields[k]->value->kind_case == ISG__VALUE__KIND_TEXT &&
		     !strcmp(rec->fields[k]->value->text, want[2 * k + 1]);
	if (!ok)
		for (size_t k = 0; k < rec->n_fields; k++)
			fprintf(stderr, "  %s = %s\n", rec->fields[k]->name,
			        rec->fields[k]->value->kind_case == ISG__VALUE__KIND_TEXT
			            ? rec->fields[k]->value->text
			            : "(not text)");
	assert_true(ok);
}

static void test_apply_generalise(void **state)
{
	struct ydoc_diags d;
	ydoc_diags_init(&d);
	struct policy_set *set = load_transform(false, &d);
	ydoc_diags_release(&d);
	struct fake fk;
	struct pseudo_service ps = fake_service(&fk);
	struct req r;
	req_init(&r, "linkage-research", "city-council", "cases");
	/* now_ok() is 2026-06-01: this person turns 65 tomorrow. */
	size_t i = req_record(&r);
	req_text(&r, i, "notes", "SECRET-NOTES");
	req_text(&r, i, "outcome", "admitted");
	req_real(&r, i, "cost", 1234.5);
	req_int(&r, i, "age", 37);
	req_text(&r, i, "sector", "NE35 7XY");
	req_text(&r, i, "district", "NE3 4AB");
	req_text(&r, i, "area", "ne3 4ab");
	req_text(&r, i, "event_date", "20/11/2025");
	req_text(&r, i, "birth_year", "01/02/1958");
	req_text(&r, i, "dob_decade", "1961-06-02");
	req_text(&r, i, "date_of_birth", "1961-06-02");
	req_text(&r, i, "nhs_number", "9434765919");
	/* ... and this one is 65 today. */
	i = req_record(&r);
	req_text(&r, i, "nhs_number", "9434765919");
	req_text(&r, i, "date_of_birth", "1961-06-01");
	req_text(&r, i, "district", "NE35 7XY");
	req_text(&r, i, "sector", "NE3 4AB");
	req_text(&r, i, "area", "GIR 0AA");
	req_text(&r, i, "age", "-1");
	req_text(&r, i, "cost", "99");
	/* Born today, and a cost with a fraction below zero. */
	i = req_record(&r);
	req_text(&r, i, "nhs_number", "9434765919");
	req_text(&r, i, "date_of_birth", "2026-06-01");
	req_text(&r, i, "cost", "-0.5");

	struct policy_outcome out;
	Isg__Delivery *del = apply_ok(set, "nhs-trust", &r, &ps, &out);
	assert_int_equal(del->n_records, 3);
	const char *nhs = "fake:research:1:9434765919";
	static const char *r0[] = {
	    "nhs_number", NULL,        "date_of_birth", "60-64",   "dob_decade", "60-69",
	    "birth_year", "1958",      "event_date",    "2025-11", "area",       "NE",
	    "district",   "NE3",       "sector",        "NE35 7",  "age",        "30-39",
	    "cost",       "1200-1299", "outcome",       "admitted"};
	const char *want0[ARRAY_LEN(r0)];
	memcpy(want0, r0, sizeof(r0));
	want0[1] = nhs;
	assert_record(del->records[0], want0, ARRAY_LEN(want0) / 2);
	const char *want1[] = {"nhs_number", nhs,        "date_of_birth", "65-69",  "area",
	                       "GIR",        "district", "NE35",          "sector", "NE3 4",
	                       "age",        "-10--1",   "cost",          "0-99"};
	assert_record(del->records[1], want1, ARRAY_LEN(want1) / 2);
	const char *want2[] = {"nhs_number", nhs, "date_of_birth", "0-4", "cost", "-100--1"};
	assert_record(del->records[2], want2, ARRAY_LEN(want2) / 2);
	/* Neither the dropped notes nor the exact values reach the recipient. */
	static const char *const gone[] = {"SECRET", "1961-06", "4AB", "7XY", "1234", "20/11"};
	for (size_t k = 0; k < ARRAY_LEN(gone); k++)
		assert_null(memmem(out.payload, out.payload_len, gone[k], strlen(gone[k])));
	isg__delivery__free_unpacked(del, NULL);
	policy_outcome_release(&out);
	assert_int_equal(fk.calls, 1);
	int64_t today;
	date_parse_days("2026-06-01", &today);
	assert_int_equal(fk.today, today);

	/* Values that cannot be generalised: refused, naming field and reason, never the value. */
	static const struct {
		const char *field;
		int kind; /* 0 text, 1 integer, 2 real */
		const char *text;
		double num;
		const char *msg;
	} bad[] = {
	    {"date_of_birth", 0, "1890-01-01", 0,
	     "record 0: field 'date_of_birth' cannot be generalised to age_band: age is over 120 "
	     "years (dataset 'cases' of agreement 'linkage-research')"},
	    {"dob_decade", 0, "2026-06-02", 0,
	     "field 'dob_decade' cannot be generalised to age_band: date of birth is after the "
	     "exchange date"},
	    {"age", 1, NULL, (double)INT64_MAX,
	     "cannot be generalised to number_band: band does "
	     "not fit in a 64-bit integer"},
	    {"cost", 2, NULL, 1e300, "field 'cost' cannot be generalised to number_band"},
	    {"district", 0, "NE3 4CB", 0, "field 'district' is not a valid postcode"},
	};
	for (size_t b = 0; b < ARRAY_LEN(bad); b++) {
		req_init(&r, "linkage-research", "city-council", "cases");
		i = req_record(&r);
		req_text(&r, i, "nhs_number", "9434765919");
		if (bad[b].kind == 0)
			req_text(&r, i, bad[b].field, bad[b].text);
		else if (bad[b].kind == 1)
			req_int(&r, i, bad[b].field, INT64_MAX);
		else
			req_real(&r, i, bad[b].field, bad[b].num);
		ps = fake_service(&fk);
		apply_refused_with(set, "nhs-trust", &r, now_ok(), &ps, bad[b].text,
		                   &(struct expect){ISG_ERR_INVALID, ISG__ERROR_CODE__BAD_VALUE,
		                                    "dataset.field_value", 0, bad[b].field,
		                                    bad[b].msg});
		assert_int_equal(fk.calls, 0); /* a refused message asks for no pseudonym */
	}
	policy_set_unref(set);
}

static void test_apply_pseudonymise(void **state)
{
	struct ydoc_diags d;
	ydoc_diags_init(&d);
	struct policy_set *set = load_transform(false, &d);
	ydoc_diags_release(&d);
	struct fake fk;
	struct pseudo_service ps = fake_service(&fk);
	struct req r;
	req_init(&r, "linkage-research", "nhs-trust", "cases");
	size_t i = req_record(&r);
	req_text(&r, i, "family_name",
	         "Siobh\xc3\xa1n O\xe2\x80\x99"
	         "Brien-Murphy");
	req_text(&r, i, "pnc_id", "79/163001b");
	req_text(&r, i, "nhs_number", "943 476 5919");
	i = req_record(&r);
	req_text(&r, i, "outcome", "discharged");
	req_text(&r, i, "nhs_number", "9434765919");
	i = req_record(&r);
	req_text(&r, i, "nhs_number", "943-476-5919");
	req_text(&r, i, "pnc_id", "2008/0056560Z");

	struct policy_outcome out;
	Isg__Delivery *del = apply_ok(set, "met-police", &r, &ps, &out);
	/* One call for the whole message, in record order then dataset order. */
	assert_int_equal(fk.calls, 1);
	assert_int_equal(fk.n, 6);
	static const struct {
		const char *domain;
		int type;
		const char *norm;
	} want[] = {
	    {"research", PSEUDO_NHS_NUMBER, "9434765919"},
	    {"research-police", PSEUDO_PNC_ID, "1979/0163001B"},
	    {"research", PSEUDO_NAME, "siobhan obrien murphy"},
	    {"research", PSEUDO_NHS_NUMBER, "9434765919"},
	    {"research", PSEUDO_NHS_NUMBER, "9434765919"},
	    {"research-police", PSEUDO_PNC_ID, "2008/0056560Z"},
	};
	for (size_t k = 0; k < ARRAY_LEN(want); k++) {
		assert_string_equal(fk.seen[k].domain, want[k].domain);
		assert_int_equal(fk.seen[k].type, want[k].type);
		assert_string_equal(fk.seen[k].norm, want[k].norm);
	}
	/* Each pseudonym in its field's place; a previous one right after it. */
	const char *want0[] = {"nhs_number",      "fake:research:1:9434765919",
	                       "pnc_id",          "fake:research-police:2:1979/0163001B",
	                       "pnc_id.previous", "prev:1979/0163001B",
	                       "family_name",     "fake:research:5:siobhan obrien murphy"};
	assert_record(del->records[0], want0, ARRAY_LEN(want0) / 2);
	const char *want1[] = {"nhs_number", "fake:research:1:9434765919", "outcome", "discharged"};
	assert_record(del->records[1], want1, ARRAY_LEN(want1) / 2);
	const char *want2[] = {"nhs_number",      "fake:research:1:9434765919",
	                       "pnc_id",          "fake:research-police:2:2008/0056560Z",
	                       "pnc_id.previous", "prev:2008/0056560Z"};
	assert_record(del->records[2], want2, ARRAY_LEN(want2) / 2);
	/* The values as sent are gone. */
	assert_null(memmem(out.payload, out.payload_len, "943 476", 7));
	assert_null(memmem(out.payload, out.payload_len, "Siobh", 5));
	isg__delivery__free_unpacked(del, NULL);
	policy_outcome_release(&out);

	/* Emails, identifiers, postcodes and dates, unknown fields dropped. */
	req_init(&r, "linkage-research", "city-council", "links");
	i = req_record(&r);
	req_text(&r, i, "seen", "01/02/1958");
	req_text(&r, i, "postcode", "sw1a1aa");
	req_text(&r, i, "ref", "  AB  12 cd ");
	req_text(&r, i, "email", " Jane.Doe@Example.NHS.uk ");
	req_text(&r, i, "other", "SECRET-OTHER");
	ps = fake_service(&fk);
	del = apply_ok(set, "met-police", &r, &ps, &out);
	const char *want3[] = {"email",    "fake:alpha:6:jane.doe@example.nhs.uk",
	                       "ref",      "fake:research:7:ab 12 cd",
	                       "postcode", "fake:alpha:3:SW1A 1AA",
	                       "seen",     "fake:alpha:4:1958-02-01"};
	assert_record(del->records[0], want3, ARRAY_LEN(want3) / 2);
	assert_int_equal(fk.calls, 1);
	assert_int_equal(fk.n, 4);
	isg__delivery__free_unpacked(del, NULL);
	policy_outcome_release(&out);

	/* Nothing to pseudonymise: no call, and no service needed. */
	req_init(&r, "linkage-research", "city-council", "links");
	i = req_record(&r);
	req_text(&r, i, "other", "SECRET-OTHER");
	del = apply_ok(set, "met-police", &r, NULL, &out);
	assert_int_equal(del->records[0]->n_fields, 0);
	isg__delivery__free_unpacked(del, NULL);
	policy_outcome_release(&out);
	policy_set_unref(set);
}

/* What pseudo_service.checked was told, one line per value ("type:norm"),
 * beside the fake service that answers the pseudonyms. */
struct checked {
	char text[512];
	int fail; /* an error to return, or 0 */
	struct fake fk;
};

static int log_checked(void *ctx, enum pseudo_type type, const char *norm, size_t len)
{
	struct checked *c = ctx;
	assert_int_equal(len, strlen(norm));
	size_t used = strlen(c->text);
	snprintf(c->text + used, sizeof(c->text) - used, "%d:%s\n", (int)type, norm);
	return c->fail;
}

static int checked_pseudonymise(void *ctx, struct pseudo_request *reqs, size_t n, int64_t today)
{
	return fake_pseudonymise(&((struct checked *)ctx)->fk, reqs, n, today);
}

/*
 * Every identifier and date policy_apply checks reaches pseudo_service.checked
 * as normalised, whatever its field's action (dropped ones too), record by
 * record in the dataset's order: isgd's audit subjects are made of them.
 * Text, numbers and unknown fields dropped unread do not; an error from it
 * is policy_apply's.
 */
static void test_apply_checked(void **state)
{
	char *dir = temp_policy_dir();
	install(dir, "valid/partners.yaml", "partners.yaml");
	install(dir, "transform/checked.yaml", "agreements/checked.yaml");
	struct ydoc_diags d;
	ydoc_diags_init(&d);
	struct policy_set *set = NULL;
	assert_int_equal(policy_load(dir, &set, &d), 0);
	assert_int_equal(d.errors, 0);
	ydoc_diags_release(&d);
	remove_dir(dir);

	struct req r;
	req_init(&r, "checked", "nhs-trust", "people");
	size_t i = req_record(&r); /* in another order than the dataset's */
	req_text(&r, i, "notes", "SECRET-NOTES");
	req_text(&r, i, "dob", "01/02/1958");
	req_text(&r, i, "other", "SECRET-OTHER");
	req_text(&r, i, "name", " Jane  DOE ");
	req_text(&r, i, "age", "67");
	req_text(&r, i, "postcode", "sw1a1aa");
	req_text(&r, i, "old_nhs", "401 023 2137");
	req_text(&r, i, "nhs_number", "943 476 5919");
	i = req_record(&r);
	req_text(&r, i, "nhs_number", "9434765919");

	struct checked c = {0};
	struct pseudo_service ps = {
	    .ctx = &c, .pseudonymise = checked_pseudonymise, .checked = log_checked};
	struct policy_outcome out;
	Isg__Delivery *del = apply_ok(set, "met-police", &r, &ps, &out);
	assert_string_equal(c.text, "1:9434765919\n"
	                            "1:4010232137\n"
	                            "3:SW1A 1AA\n"
	                            "5:jane doe\n"
	                            "4:1958-02-01\n"
	                            "1:9434765919\n");
	assert_int_equal(c.fk.calls, 1); /* the pseudonyms, asked after every check */
	assert_int_equal(c.fk.n, 2);
	isg__delivery__free_unpacked(del, NULL);
	policy_outcome_release(&out);

	/* An error from it stops the message before anything is pseudonymised. */
	c = (struct checked){.fail = ISG_ERR_LIMIT};
	struct policy_refusal why;
	assert_int_equal(policy_apply(set, "met-police", &r.req, now_ok(), &ps, &out, &why),
	                 ISG_ERR_LIMIT);
	assert_string_equal(c.text, "1:9434765919\n");
	assert_int_equal(c.fk.calls, 0);
	assert_null(out.payload);
	policy_set_unref(set);
}

/* 64 records: the texts copied for the output (normalised values, pseudonyms,
 * bands) fill several of the builder's chunks, each kept until the end. */
static void test_apply_many_records(void **state)
{
	(void)state;
	struct ydoc_diags d;
	ydoc_diags_init(&d);
	struct policy_set *set = load_transform(false, &d);
	ydoc_diags_release(&d);
	struct fake fk;
	struct pseudo_service ps = fake_service(&fk);
	static struct req r;
	static char names[MAX_RECS][32];
	req_init(&r, "linkage-research", "nhs-trust", "cases");
	for (size_t i = 0; i < MAX_RECS; i++) {
		snprintf(names[i], sizeof(names[i]), "Family Name %c%c", 'A' + (int)(i % 26),
		         'a' + (int)(i / 26));
		size_t k = req_record(&r);
		req_text(&r, k, "nhs_number", "943 476 5919");
		req_text(&r, k, "pnc_id", "79/163001b");
		req_text(&r, k, "family_name", names[i]);
		req_text(&r, k, "district", "sw1a 1aa");
	}
	struct policy_outcome out;
	Isg__Delivery *del = apply_ok(set, "met-police", &r, &ps, &out);
	assert_int_equal(del->n_records, MAX_RECS);
	assert_int_equal(fk.n, 3 * MAX_RECS);
	for (size_t i = 0; i < MAX_RECS; i++) {
		char family[96];
		snprintf(family, sizeof(family), "fake:research:5:family name %c%c",
		         'a' + (int)(i % 26), 'a' + (int)(i / 26));
		const char *want[] = {"nhs_number",      "fake:research:1:9434765919",
		                      "pnc_id",          "fake:research-police:2:1979/0163001B",
		                      "pnc_id.previous", "prev:1979/0163001B",
		                      "family_name",     family,
		                      "district",        "SW1A"};
		assert_record(del->records[i], want, ARRAY_LEN(want) / 2);
	}
	isg__delivery__free_unpacked(del, NULL);
	policy_outcome_release(&out);
	policy_set_unref(set);
}

/*
 * A two-way agreement lists each partner as sender and recipient, but no
 * partner may send to itself: it would get back the pseudonyms of whatever
 * identifiers it chose, an oracle that undoes the pseudonymisation of its
 * domain. Refused before any value reaches the keys.
 */
static void test_apply_no_send_to_self(void **state)
{
	char *dir = temp_policy_dir();
	install(dir, "valid/partners.yaml", "partners.yaml");
	put_file(dir, "agreements/two-way.yaml",
	         "agreement:\n"
	         "  id: two-way\n"
	         "  version: 1\n"
	         "  title: Both ways\n"
	         "  senders: [met-police, nhs-trust]\n"
	         "  recipients: [met-police, nhs-trust]\n"
	         "  purpose: {code: testing, text: Testing}\n"
	         "  lawful_basis: [\"UK GDPR Art. 6(1)(e)\"]\n"
	         "  valid_from: 2025-01-01\n"
	         "  datasets:\n"
	         "    - name: cases\n"
	         "      fields:\n"
	         "        - {name: nhs_number, type: nhs_number, action: pseudonymise, "
	         "domain: two-way}\n");
	struct ydoc_diags d;
	ydoc_diags_init(&d);
	struct policy_set *set = NULL;
	assert_int_equal(policy_load(dir, &set, &d), 0);
	ydoc_diags_release(&d);

	struct fake fk;
	struct pseudo_service ps = fake_service(&fk);
	struct req r;
	req_init(&r, "two-way", "met-police", "cases");
	size_t i = req_record(&r);
	req_text(&r, i, "nhs_number", "9434765919");
	apply_refused_with(set, "met-police", &r, now_ok(), &ps, NULL,
	                   &(struct expect){ISG_ERR_DENIED, ISG__ERROR_CODE__NOT_PERMITTED,
	                                    "agreement.recipient", -1, "",
	                                    "partner 'met-police' cannot send to itself "
	                                    "(agreement 'two-way')"});
	assert_int_equal(fk.calls, 0);
	/* Each way between the two partners is fine. */
	struct policy_outcome out;
	Isg__Delivery *del = apply_ok(set, "nhs-trust", &r, &ps, &out);
	isg__delivery__free_unpacked(del, NULL);
	policy_outcome_release(&out);
	r.req.recipient = "nhs-trust";
	del = apply_ok(set, "met-police", &r, &ps, &out);
	isg__delivery__free_unpacked(del, NULL);
	policy_outcome_release(&out);
	assert_int_equal(fk.calls, 2);
	policy_set_unref(set);
	remove_dir(dir);
}

static void test_apply_pseudonymise_refusals(void **state)
{
	struct ydoc_diags d;
	ydoc_diags_init(&d);
	struct policy_set *set = load_transform(false, &d);
	ydoc_diags_release(&d);
	struct fake fk;
	struct pseudo_service ps;
	struct req r;
	req_init(&r, "linkage-research", "nhs-trust", "cases");
	size_t i = req_record(&r);
	req_text(&r, i, "nhs_number", "9434765919");
	req_text(&r, i, "family_name", "SECRET Name");

	/* No service at all: the gateway lacks the key, and says which. */
	apply_refused_with(set, "met-police", &r, now_ok(), NULL, NULL,
	                   &(struct expect){ISG_ERR_INVALID, ISG__ERROR_CODE__INTERNAL,
	                                    "keys.domain", -1, "",
	                                    "the gateway has no key for linkage domain 'research' "
	                                    "(agreement 'linkage-research')"});
	/* The service knows no key for one of them. */
	i = req_record(&r);
	req_text(&r, i, "nhs_number", "9434765919");
	req_text(&r, i, "pnc_id", "2008/0056560Z");
	ps = fake_service(&fk);
	fk.fail = ISG_ERR_NOT_FOUND;
	apply_refused_with(set, "met-police", &r, now_ok(), &ps, NULL,
	                   &(struct expect){ISG_ERR_INVALID, ISG__ERROR_CODE__INTERNAL,
	                                    "keys.domain", -1, "",
	                                    "the gateway has no key for linkage domains "
	                                    "'research', 'research-police' (agreement "
	                                    "'linkage-research')"});
	assert_int_equal(fk.calls, 1);
	assert_int_equal(fk.n, 4);
	/* Other failures, and answers that are not text. */
	ps = fake_service(&fk);
	fk.fail = ISG_ERR_CLOSED;
	apply_refused_with(set, "met-police", &r, now_ok(), &ps, NULL,
	                   &(struct expect){ISG_ERR_INVALID, ISG__ERROR_CODE__INTERNAL,
	                                    "keys.domain", -1, "",
	                                    "pseudonymisation failed for linkage domains"});
	ps = fake_service(&fk);
	fk.garbage = true;
	apply_refused_with(set, "met-police", &r, now_ok(), &ps, NULL,
	                   &(struct expect){ISG_ERR_INVALID, ISG__ERROR_CODE__INTERNAL,
	                                    "keys.domain", -1, "",
	                                    "pseudonymisation failed for linkage domains"});

	/* An invalid identifier is refused before anything is pseudonymised. */
	static const struct {
		const char *field, *value, *msg;
	} bad[] = {
	    {"nhs_number", "9434765918",
	     "record 2: field 'nhs_number' is not a valid nhs_number: "},
	    {"pnc_id", "2008/0056560A", "record 2: field 'pnc_id' is not a valid pnc_id: "},
	    {"family_name", "SECRET 42", "record 2: field 'family_name' is not a valid name: "},
	};
	for (size_t b = 0; b < ARRAY_LEN(bad); b++) {
		i = req_record(&r);
		if (strcmp(bad[b].field, "nhs_number") != 0)
			req_text(&r, i, "nhs_number", "9434765919");
		req_text(&r, i, bad[b].field, bad[b].value);
		ps = fake_service(&fk);
		apply_refused_with(set, "met-police", &r, now_ok(), &ps, bad[b].value,
		                   &(struct expect){ISG_ERR_INVALID, ISG__ERROR_CODE__BAD_VALUE,
		                                    "dataset.field_value", 2, bad[b].field,
		                                    bad[b].msg});
		assert_int_equal(fk.calls, 0);
		r.req.n_records--;
	}
	policy_set_unref(set);
}

/* The pseudonym service with the test key of docs/pseudonyms.md, key version 1. */
static int testkey_pseudonymise(void *ctx, struct pseudo_request *reqs, size_t n, int64_t today)
{
	uint8_t key[PSEUDO_KEY_LEN], hash[PSEUDO_HASH_LEN];
	for (size_t i = 0; i < sizeof(key); i++)
		key[i] = (uint8_t)i;
	for (size_t i = 0; i < n; i++) {
		pseudo_hash(key, reqs[i].type, reqs[i].norm, reqs[i].len, hash);
		pseudo_format(hash, 1, reqs[i].out);
		reqs[i].previous[0] = '\0';
	}
	return 0;
}

/* The worked examples of docs/policy.md, through the shipped agreements. */
static void test_shipped_examples(void **state)
{
	char dir[4400];
	snprintf(dir, sizeof(dir), "%s/../../../policies", data_dir);
	struct ydoc_diags d;
	ydoc_diags_init(&d);
	struct policy_set *set = NULL;
	assert_int_equal(policy_load(dir, &set, &d), 0);
	ydoc_diags_release(&d);
	struct pseudo_service ps = {.pseudonymise = testkey_pseudonymise};
	const char *p1 = "p1_3OclCLKM5wMlaCmiStTYz8SUpPKTbA4OyifUBQE5d_w";

	struct req r;
	req_init(&r, "police-nhs-mh-triage-analytics", "nhs-trust", "triage-incident");
	size_t i = req_record(&r);
	req_text(&r, i, "nhs_number", "943 476 5919");
	req_text(&r, i, "date_of_birth", "14/03/1958");
	req_text(&r, i, "postcode", "ne3 4rt");
	req_text(&r, i, "incident_date", "2026-11-20");
	req_text(&r, i, "outcome", "conveyed to place of safety");
	req_text(&r, i, "officer_notes", "brother called it in");
	struct policy_outcome out;
	struct policy_refusal why;
	assert_int_equal(
	    policy_apply(set, "met-police", &r.req, day_ms("2026-11-23", 9), &ps, &out, &why), 0);
	Isg__Delivery *del = isg__delivery__unpack(NULL, out.payload_len, out.payload);
	const char *want[] = {"nhs_number",    p1,
	                      "date_of_birth", "65-69",
	                      "postcode",      "NE3",
	                      "incident_date", "2026-11",
	                      "outcome",       "conveyed to place of safety"};
	assert_record(del->records[0], want, ARRAY_LEN(want) / 2);
	isg__delivery__free_unpacked(del, NULL);
	policy_outcome_release(&out);

	r.fields[0][1].value->text = "1900-01-01";
	apply_refused_with(set, "met-police", &r, day_ms("2026-11-23", 9), &ps, "1900",
	                   &(struct expect){ISG_ERR_INVALID, ISG__ERROR_CODE__BAD_VALUE,
	                                    "dataset.field_value", 0, "date_of_birth",
	                                    "record 0: field 'date_of_birth' cannot be generalised "
	                                    "to age_band: age is over 120 years (dataset "
	                                    "'triage-incident' of agreement "
	                                    "'police-nhs-mh-triage-analytics')"});

	/* policy.md's worked example: a DD/MM/YYYY date is normalised, an impossible one refused.
	 */
	req_init(&r, "police-nhs-adult-safeguarding", "nhs-trust", "safeguarding-concern");
	i = req_record(&r);
	req_text(&r, i, "nhs_number", "9434765919");
	req_text(&r, i, "concern_category", "self-neglect");
	req_text(&r, i, "officer_notes", "neighbour at no. 12 called it in");
	req_text(&r, i, "incident_date", "20/11/2026");
	assert_int_equal(
	    policy_apply(set, "met-police", &r.req, day_ms("2026-11-23", 9), &ps, &out, &why), 0);
	del = isg__delivery__unpack(NULL, out.payload_len, out.payload);
	const char *want_safe[] = {"nhs_number",   "9434765919",    "concern_category",
	                           "self-neglect", "incident_date", "2026-11-20"};
	assert_record(del->records[0], want_safe, ARRAY_LEN(want_safe) / 2);
	isg__delivery__free_unpacked(del, NULL);
	policy_outcome_release(&out);
	r.fields[0][3].value->text = "2026-11-31";
	apply_refused_with(set, "met-police", &r, day_ms("2026-11-23", 9), &ps, "31",
	                   &(struct expect){ISG_ERR_INVALID, ISG__ERROR_CODE__BAD_VALUE,
	                                    "dataset.field_value", 0, "incident_date",
	                                    "record 0: field 'incident_date' is not a valid date: "
	                                    "date is not a real calendar date (dataset "
	                                    "'safeguarding-concern' of agreement "
	                                    "'police-nhs-adult-safeguarding')"});

	req_init(&r, "police-nhs-adult-safeguarding", "nhs-trust", "safeguarding-concern");
	i = req_record(&r);
	req_text(&r, i, "nhs_number", "9434765919");
	req_text(&r, i, "concern_category", "self-neglect");
	req_int(&r, i, "incident_date", 20261120);
	apply_refused_with(set, "met-police", &r, day_ms("2026-11-23", 9), &ps, "20261120",
	                   &(struct expect){ISG_ERR_INVALID, ISG__ERROR_CODE__BAD_VALUE,
	                                    "dataset.field_type", 0, "incident_date",
	                                    "must be a date"});

	/* The council's referrals, from health; the demo's figures still pass. */
	req_init(&r, "council-service-planning", "city-council", "referral-planning");
	i = req_record(&r);
	req_text(&r, i, "notes", "SECRET-NOTES");
	req_text(&r, i, "category", "self-neglect");
	req_text(&r, i, "referral_date", "2026-11-02");
	req_text(&r, i, "postcode", "NE35 7XY");
	req_text(&r, i, "date_of_birth", "1941-07-02");
	req_text(&r, i, "nhs_number", "9434765919");
	assert_int_equal(
	    policy_apply(set, "nhs-trust", &r.req, day_ms("2026-11-23", 9), &ps, &out, &why), 0);
	del = isg__delivery__unpack(NULL, out.payload_len, out.payload);
	const char *want2[] = {
	    "nhs_number",    p1,        "date_of_birth", "85-89",       "postcode", "NE35",
	    "referral_date", "2026-11", "category",      "self-neglect"};
	assert_record(del->records[0], want2, ARRAY_LEN(want2) / 2);
	isg__delivery__free_unpacked(del, NULL);
	policy_outcome_release(&out);
	req_init(&r, "council-service-planning", "city-council", "service-planning");
	i = req_record(&r);
	req_text(&r, i, "ward", "Riverside");
	req_text(&r, i, "age_band", "65-74");
	req_text(&r, i, "category", "self-neglect");
	req_int(&r, i, "count", 3);
	assert_int_equal(
	    policy_apply(set, "met-police", &r.req, day_ms("2026-11-23", 9), NULL, &out, &why), 0);
	policy_outcome_release(&out);
	policy_set_unref(set);
}

int main(void)
{
	/*
	 * The loader refuses policy files that group or others may write: the
	 * temporary ones the tests write are made as an admin would make them,
	 * whatever the caller's umask (002 on Debian with user-private groups).
	 */
	umask(022);
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_valid_set_loads),
	    cmocka_unit_test(test_writable_policy_refused),
	    cmocka_unit_test(test_link_into_writable_dir_refused),
	    cmocka_unit_test(test_refcount),
	    cmocka_unit_test(test_version_hash),
	    cmocka_unit_test(test_broken_agreements),
	    cmocka_unit_test(test_broken_transforms),
	    cmocka_unit_test(test_broken_partners),
	    cmocka_unit_test(test_broken_issuers),
	    cmocka_unit_test(test_errors_collected_across_files),
	    cmocka_unit_test(test_issuer_cn),
	    cmocka_unit_test(test_null_matchers),
	    cmocka_unit_test(test_duplicates_behind_errors),
	    cmocka_unit_test(test_unknown_partner_hint_is_the_nearest),
	    cmocka_unit_test(test_null_in_lawful_basis),
	    cmocka_unit_test(test_text_lengths_in_characters),
	    cmocka_unit_test(test_fifo_refused),
	    cmocka_unit_test(test_size_limits),
	    cmocka_unit_test(test_listed_files_are_the_loaded_ones),
	    cmocka_unit_test(test_review_dates),
	    cmocka_unit_test(test_daily_limits),
	    cmocka_unit_test(test_check_domains),
	    cmocka_unit_test(test_shipped_policies_load),
	    cmocka_unit_test(test_partner_by_cert),
	    cmocka_unit_test(test_apply_agreement_rules),
	    cmocka_unit_test(test_apply_record_rules),
	    cmocka_unit_test(test_apply_transforms),
	    cmocka_unit_test(test_transform_loads),
	    cmocka_unit_test(test_clear_and_pseudonymised_warning),
	    cmocka_unit_test(test_overlapping_agreements_warn),
	    cmocka_unit_test(test_apply_generalise),
	    cmocka_unit_test(test_apply_pseudonymise),
	    cmocka_unit_test(test_apply_checked),
	    cmocka_unit_test(test_apply_many_records),
	    cmocka_unit_test(test_apply_pseudonymise_refusals),
	    cmocka_unit_test(test_apply_no_send_to_self),
	    cmocka_unit_test(test_shipped_examples),
	    cmocka_unit_test(test_domain_limit),
	    cmocka_unit_test(test_scalar_types),
	    cmocka_unit_test(test_self_only_agreement_warns),
	    cmocka_unit_test(test_validity_warnings),
	    cmocka_unit_test(test_matcher_hints),
	};
	return cmocka_run_group_tests(tests, setup, NULL);
}
