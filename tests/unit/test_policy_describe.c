/*
 * What admins and IG officers read: policy_describe (isgctl policy show)
 * against golden text for the shipped and the test agreements, and
 * policy_diff (isgctl policy diff) for each kind of change, weakened,
 * strengthened or neither. Run with ISG_UPDATE_GOLDEN=1 to rewrite the
 * golden files after a deliberate change, then review them.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <ftw.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include "policy/internal.h" /* policy_load_at */
#include "policy/policy.h"
#include "util/util.h"
#include "ydoc/ydoc.h"

/*
 * data_dir: the build's copy of tests/data/policy, which the tests load (the
 * checkout's may be group-writable); golden_dir: the checkout's show/, which
 * ISG_UPDATE_GOLDEN rewrites.
 */
static char data_dir[4096], golden_dir[4096];

static int setup(void **state)
{
	const char *d = getenv("ISG_TEST_POLICY"), *src = getenv("ISG_TEST_DATA");
	if (!d || !src) {
		fprintf(stderr,
		        "ISG_TEST_POLICY or ISG_TEST_DATA is not set (run through ctest)\n");
		return -1;
	}
	snprintf(data_dir, sizeof(data_dir), "%s", d);
	snprintf(golden_dir, sizeof(golden_dir), "%s/policy/show", src);
	return 0;
}

static int64_t day(const char *date)
{
	int64_t days;
	assert_int_equal(date_parse_days(date, &days), 0);
	return days;
}

static char *read_all(const char *path)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return NULL;
	static const size_t cap = 1 << 20;
	char *buf = malloc(cap);
	assert_non_null(buf);
	size_t n = fread(buf, 1, cap - 1, f);
	buf[n] = '\0';
	fclose(f);
	return buf;
}

static void write_all(const char *path, const char *text)
{
	FILE *f = fopen(path, "wb");
	assert_non_null(f);
	assert_int_equal(fwrite(text, 1, strlen(text), f), strlen(text));
	fclose(f);
}

static struct policy_set *load(const char *dir, int64_t today)
{
	struct ydoc_diags d;
	ydoc_diags_init(&d);
	struct policy_set *set = NULL;
	int err = policy_load_at(dir, today, &set, &d);
	if (err)
		ydoc_diags_print(&d, stderr);
	assert_int_equal(err, 0);
	ydoc_diags_release(&d);
	return set;
}

/* ---- show ---- */

/* Compare with tests/data/policy/show/NAME.txt, or write it under ISG_UPDATE_GOLDEN. */
static void assert_golden(const char *name, const char *got)
{
	char path[4400];
	snprintf(path, sizeof(path), "%s/%s.txt", golden_dir, name);
	if (getenv("ISG_UPDATE_GOLDEN")) {
		write_all(path, got);
		return;
	}
	char *want = read_all(path);
	if (!want)
		fail_msg("no golden file %s (run with ISG_UPDATE_GOLDEN=1)", path);
	if (strcmp(want, got) != 0)
		fprintf(stderr, "--- want %s\n%s--- got\n%s", path, want, got);
	assert_string_equal(got, want);
	free(want);
}

static char *describe(const struct policy_set *set, const char *id, int64_t today)
{
	const struct policy_agreement *a = policy_agreement_by_id(set, id);
	assert_non_null(a);
	struct strbuf out;
	strbuf_init(&out);
	assert_int_equal(policy_describe(set, a, today, &out), 0);
	return strbuf_take(&out, NULL);
}

static void test_show_golden(void **state)
{
	static const struct {
		const char *dir, *id;
	} cases[] = {
	    {"../../../policies", "police-nhs-adult-safeguarding"},
	    {"../../../policies", "police-nhs-mh-triage-analytics"},
	    {"../../../policies", "nhs-police-mh-crisis-reply"},
	    {"../../../policies", "council-service-planning"},
	    {"features", "police-nhs-safeguarding"},
	    {"features", "council-planning"},
	    {"features", "nhs-police-reply"},
	};
	for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
		char dir[4400];
		snprintf(dir, sizeof(dir), "%s/%s", data_dir, cases[i].dir);
		struct policy_set *set = load(dir, day("2026-11-23"));
		char *text = describe(set, cases[i].id, day("2026-11-23"));
		assert_golden(cases[i].id, text);
		/* Every line fits a terminal, unless one word is longer. */
		for (const char *l = text; *l;) {
			size_t len = strcspn(l, "\n");
			if (len > 80 && memchr(l + 2, ' ', len - 2))
				assert_true(strncmp(l, "Agreement ", 10) == 0);
			l += len + (l[len] == '\n');
		}
		free(text);
		policy_set_unref(set);
	}
}

/* Today decides the remarks on review and validity; INT64_MIN leaves them out. */
static void test_show_dates(void **state)
{
	char dir[4400];
	snprintf(dir, sizeof(dir), "%s/features", data_dir);
	struct policy_set *set = load(dir, day("2026-01-01"));
	char *t = describe(set, "nhs-police-reply", INT64_MIN);
	assert_non_null(strstr(t, "Valid 2025-01-01 to 2099-12-31 (UTC); review by 2026-06-30.\n"));
	free(t);
	t = describe(set, "nhs-police-reply", day("2026-06-30"));
	assert_non_null(strstr(t, "review by 2026-06-30.\n\n"));
	free(t);
	t = describe(set, "nhs-police-reply", day("2026-07-01"));
	assert_non_null(strstr(t, "review by 2026-06-30 (overdue).\n\n"));
	free(t);
	t = describe(set, "nhs-police-reply", day("2024-12-31"));
	assert_null(strstr(t, "(overdue)"));
	assert_non_null(strstr(t, "\nNot yet in force: today (UTC) is 2024-12-31.\n"));
	free(t);
	t = describe(set, "police-nhs-safeguarding", day("2099-04-01"));
	assert_non_null(strstr(t, "review by 2098-03-31 (overdue).\nExpired: today (UTC) is "
	                          "2099-04-01.\n"));
	free(t);
	t = describe(set, "council-planning", day("2999-01-01"));
	assert_non_null(
	    strstr(t, "\nValid from 2026-01-01 (UTC), with no end date; no review date.\n\n"));
	free(t);
	policy_set_unref(set);
}

/* dir (a mkdtemp template) made into a policy set of one partners file and agreements/x.yaml. */
static void one_agreement_dir(char *dir, const char *partners, const char *agreement)
{
	char path[200];
	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/agreements", dir);
	assert_int_equal(mkdir(path, 0700), 0);
	snprintf(path, sizeof(path), "%s/partners.yaml", dir);
	write_all(path, partners);
	snprintf(path, sizeof(path), "%s/agreements/x.yaml", dir);
	write_all(path, agreement);
}

static void one_agreement_dir_remove(const char *dir)
{
	char path[200];
	snprintf(path, sizeof(path), "%s/agreements/x.yaml", dir);
	unlink(path);
	snprintf(path, sizeof(path), "%s/partners.yaml", dir);
	unlink(path);
	snprintf(path, sizeof(path), "%s/agreements", dir);
	rmdir(path);
	rmdir(dir);
}

/* An agreement whose one sender is its one recipient: show says nothing can pass. */
static void test_show_no_flow(void **state)
{
	char dir[] = "/tmp/test_policy_describe_XXXXXX";
	one_agreement_dir(dir,
	                  "partners:\n"
	                  "  - {id: a, name: Org A, kind: other, certificate: {subject_cn: a}}\n",
	                  "agreement:\n"
	                  "  id: x\n"
	                  "  version: 1\n"
	                  "  title: To itself\n"
	                  "  senders: [a]\n"
	                  "  recipients: [a]\n"
	                  "  purpose: {code: p, text: Testing}\n"
	                  "  lawful_basis: [\"UK GDPR Art. 6(1)(e)\"]\n"
	                  "  valid_from: 2025-01-01\n"
	                  "  datasets:\n"
	                  "    - {name: d, fields: [{name: f, type: text, action: pass}]}\n");
	struct policy_set *set = load(dir, day("2026-01-01"));
	char *t = describe(set, "x", day("2026-01-01"));
	assert_non_null(strstr(t, "Agreement x, version 1: To itself\n"
	                          "Org A (a) is its only sender and its only recipient, and a "
	                          "partner never sends\n  to itself: nothing can be sent under "
	                          "this agreement.\n"));
	assert_null(strstr(t, "sends to Org A"));
	free(t);
	policy_set_unref(set);
	one_agreement_dir_remove(dir);
}

/* Text from the files is shown without control characters, reflowed. */
static void test_show_cleans_text(void **state)
{
	char dir[] = "/tmp/test_policy_describe_XXXXXX";
	one_agreement_dir(
	    dir,
	    "partners:\n"
	    "  - {id: a, name: \"Org \\e[31mA\", kind: other, certificate: {subject_cn: a}}\n"
	    "  - {id: b, name: Org B, kind: other, certificate: {subject_cn: b}}\n",
	    "agreement:\n"
	    "  id: x\n"
	    "  version: 1\n"
	    "  title: \"Bell\\a and\\ttab, CSI \\u009b31m, NEL \\x85, caf\\u00e9 \\u2603\"\n"
	    "  senders: [a]\n"
	    "  recipients: [b]\n"
	    "  purpose:\n"
	    "    code: p\n"
	    "    text: |\n"
	    "      One line.\n"
	    "      Another line.\n"
	    "  lawful_basis: [\"x\\x7f\"]\n"
	    "  valid_from: 2025-01-01\n"
	    "  datasets:\n"
	    "    - {name: d, fields: [{name: f, type: text, action: pass}]}\n");
	struct policy_set *set = load(dir, day("2026-01-01"));
	char *t = describe(set, "x", INT64_MIN);
	for (const char *p = t; *p; p++)
		assert_true(*p == '\n' || ((unsigned char)*p >= 0x20 && *p != 0x7f));
	/* C1 controls too (U+009B is CSI); other non-ASCII text is kept. */
	assert_non_null(strstr(t, "Agreement x, version 1: Bell? and tab, CSI ?31m, NEL ?, "
	                          "caf\xc3\xa9 \xe2\x98\x83\n"));
	assert_null(strstr(t, "\xc2\x9b"));
	assert_null(strstr(t, "\xc2\x85"));
	assert_non_null(strstr(t, "Org ?[31mA (a) sends to Org B (b).\n"));
	assert_non_null(strstr(t, "Purpose (p): One line. Another line.\n"));
	assert_non_null(strstr(t, "  - x?\n"));
	free(t);
	policy_set_unref(set);
	one_agreement_dir_remove(dir);
}

/* ---- diff ---- */

/* A change to a copy of features/: in file, replace from (once) by to; from NULL: the
 * whole file becomes to; both NULL: the file is removed. */
struct edit {
	const char *file, *from, *to;
};

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	return remove(path);
}

static struct policy_set *variant(const struct edit *edits)
{
	static const char *const files[] = {
	    "partners.yaml", "agreements/police-nhs-safeguarding.yaml",
	    "agreements/council-planning.yaml", "agreements/nhs-police-reply.yaml"};
	char dir[] = "/tmp/test_policy_diff_XXXXXX";
	assert_non_null(mkdtemp(dir));
	char path[4400];
	snprintf(path, sizeof(path), "%s/agreements", dir);
	assert_int_equal(mkdir(path, 0700), 0);
	for (size_t i = 0; i < ARRAY_LEN(files); i++) {
		snprintf(path, sizeof(path), "%s/features/%s", data_dir, files[i]);
		char *text = read_all(path);
		assert_non_null(text);
		snprintf(path, sizeof(path), "%s/%s", dir, files[i]);
		write_all(path, text);
		free(text);
	}
	for (const struct edit *e = edits; e && e->file; e++) {
		snprintf(path, sizeof(path), "%s/%s", dir, e->file);
		if (!e->from && !e->to) {
			assert_int_equal(unlink(path), 0);
			continue;
		}
		if (!e->from) {
			write_all(path, e->to);
			continue;
		}
		char *text = read_all(path);
		char *at = strstr(text, e->from);
		if (!at || strstr(at + 1, e->from))
			fail_msg("'%s' is not in %s exactly once", e->from, e->file);
		size_t pre = (size_t)(at - text), from = strlen(e->from), to = strlen(e->to);
		char *out = malloc(strlen(text) - from + to + 1);
		memcpy(out, text, pre);
		memcpy(out + pre, e->to, to);
		memcpy(out + pre + to, at + from, strlen(at + from) + 1);
		write_all(path, out);
		free(out);
		free(text);
	}
	struct policy_set *set = load(dir, day("2026-01-01"));
	nftw(dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
	return set;
}

struct diff_case {
	const char *name;
	struct edit old_edits[8], new_edits[8]; /* ended by an empty edit */
	const char *want;
	size_t weakened, strengthened, other;
};

static void check_diff(const struct diff_case *c)
{
	struct policy_set *o = variant(c->old_edits), *n = variant(c->new_edits);
	struct strbuf out;
	strbuf_init(&out);
	struct policy_diff_stats st;
	assert_int_equal(policy_diff(o, n, &out, &st), 0);
	const char *got = out.p ? out.p : "";
	bool ok = strcmp(got, c->want) == 0 && st.weakened == c->weakened &&
	          st.strengthened == c->strengthened &&
	          st.changes == c->weakened + c->strengthened + c->other;
	if (!ok)
		fail_msg("case %s:\n--- want (%zu/%zu/%zu)\n%s--- got (%zu/%zu/%zu)\n%s", c->name,
		         c->weakened, c->strengthened, c->other, c->want, st.weakened,
		         st.strengthened, st.changes - st.weakened - st.strengthened, got);
	/* Weakened lines, and only they, start with "!". */
	size_t bangs = 0;
	for (const char *l = got; *l; l = strchr(l, '\n') + 1)
		bangs += strncmp(l, "! WEAKENED ", 11) == 0 && l[0] == '!';
	assert_int_equal(bangs, st.weakened);
	strbuf_release(&out);
	policy_set_unref(o);
	policy_set_unref(n);
}

#define SAFE "agreements/police-nhs-safeguarding.yaml"
#define PLAN "agreements/council-planning.yaml"
#define REPLY "agreements/nhs-police-reply.yaml"
#define PARTNERS "partners.yaml"
#define FLOW_SAFE                                                                                  \
	"Flow met-police -> nhs-trust, agreement police-nhs-safeguarding, dataset "                \
	"safeguarding-concern:\n"
#define FLOW_PLAN(s) "Flow " s " -> city-council, agreement council-planning, dataset referrals:\n"
#define W "! WEAKENED      "
#define S "  strengthened  "
#define C "  changed       "

static void test_diff_same(void **state)
{
	struct diff_case same = {"same", .want = ""};
	check_diff(&same);
	/* Comments, layout and order are not differences. */
	struct diff_case layout = {
	    "layout",
	    .new_edits = {{SAFE, "# Every agreement-level", "# Changed comment. Every"},
	                  {SAFE, "  controllers: [met-police, nhs-trust]",
	                   "  controllers:\n    - nhs-trust\n    - met-police"}},
	    .want = ""};
	check_diff(&layout);
}

static void test_diff_fields(void **state)
{
	const struct diff_case cases[] = {
	    {"pass to pseudonymise",
	     .new_edits = {{SAFE, "family_name, type: name, action: pass}",
	                    "family_name, type: name, action: pseudonymise, domain: planning}"}},
	     .want = FLOW_SAFE S "field 'family_name': in clear -> pseudonymised in linkage "
	                         "domain planning\n",
	     .strengthened = 1},
	    {"generalise to pass",
	     .new_edits = {{SAFE, "action: generalise, to: age_band, width: 5}", "action: pass}"}},
	     .want = FLOW_SAFE W "field 'date_of_birth': generalised as a 5-year age band -> "
	                         "in clear\n",
	     .weakened = 1},
	    {"drop to pass",
	     .new_edits = {{SAFE, "officer_notes, type: text, action: drop",
	                    "officer_notes, type: text, action: pass"}},
	     .want = FLOW_SAFE W "field 'officer_notes': dropped -> in clear\n", .weakened = 1},
	    {"drop to generalise",
	     .old_edits = {{PLAN, "date_of_birth, type: date, action: generalise, to: year",
	                    "date_of_birth, type: date, action: drop"}},
	     .want = FLOW_PLAN("met-police") W "field 'date_of_birth': dropped -> generalised as "
	                                       "its year\n\n" FLOW_PLAN("nhs-trust") W
	     "field 'date_of_birth': dropped "
	     "-> generalised as its year\n",
	     .weakened = 2},
	    {"pseudonymise to drop",
	     .new_edits = {{PLAN,
	                    "pnc_id, type: pnc_id, action: pseudonymise, domain: "
	                    "planning-police}",
	                    "pnc_id, type: pnc_id, action: drop}"}},
	     .want = FLOW_PLAN("met-police") S
	     "field 'pnc_id': pseudonymised in linkage domain planning-police -> "
	     "dropped\n\n" FLOW_PLAN("nhs-trust") S "field 'pnc_id': pseudonymised in linkage "
	                                            "domain planning-police -> dropped\n",
	     .strengthened = 2},
	    {"coarser and finer generalisations",
	     .new_edits = {{SAFE, "to: age_band, width: 5", "to: age_band, width: 10"},
	                   {SAFE, "to: postcode_district", "to: postcode_sector"}},
	     .want = FLOW_SAFE S "field 'date_of_birth': generalised as a 5-year age band -> "
	                         "generalised as a 10-year age band (coarser)\n" W
	                         "field 'postcode': generalised as its postcode district -> "
	                         "generalised as its postcode sector (finer)\n",
	     .weakened = 1, .strengthened = 1},
	    {"year to month, number band",
	     .new_edits = {{PLAN, "to: year", "to: month"},
	                   {PLAN, "number_band, width: 5", "number_band, width: 10"}},
	     .want = FLOW_PLAN("met-police") W
	     "field 'date_of_birth': generalised as its year -> generalised as its month "
	     "(finer)\n" S "field 'household_size': generalised as a band of 5 -> generalised "
	     "as a band of 10 (coarser)\n\n" FLOW_PLAN("nhs-trust") W
	     "field 'date_of_birth': generalised as its year -> generalised as its month "
	     "(finer)\n" S "field 'household_size': generalised as a band of 5 -> generalised "
	     "as a band of 10 (coarser)\n",
	     .weakened = 2, .strengthened = 2},
	    {"year to a one-year age band: neither",
	     .new_edits = {{PLAN, "to: year", "to: age_band, width: 1"}},
	     .want = FLOW_PLAN("met-police") C "field 'date_of_birth': generalised as its year -> "
	                                       "generalised as a 1-year age band\n"
	                                       "\n" FLOW_PLAN("nhs-trust") C
	     "field 'date_of_birth': "
	     "generalised as its year -> "
	     "generalised as a 1-year age "
	     "band\n",
	     .other = 2},
	    /* A domain other agreements use: the pseudonyms can be joined with theirs. */
	    {"generalise to pseudonymise in a shared domain",
	     .new_edits = {{SAFE, "action: generalise, to: age_band, width: 5",
	                    "action: pseudonymise, domain: planning"}},
	     .want = FLOW_SAFE W "field 'date_of_birth': generalised as a 5-year age band -> "
	                         "pseudonymised in linkage domain planning, which agreements "
	                         "'council-planning' also use: the pseudonyms can now be linked "
	                         "with theirs\n",
	     .weakened = 1},
	    {"drop to pseudonymise in a shared domain",
	     .old_edits = {{SAFE, "officer_notes, type: text, action: drop",
	                    "officer_notes, type: identifier, action: drop"}},
	     .new_edits =
	         {{SAFE, "officer_notes, type: text, action: drop",
	           "officer_notes, type: identifier, action: pseudonymise, domain: planning"}},
	     .want = FLOW_SAFE W "field 'officer_notes': dropped -> pseudonymised in linkage "
	                         "domain planning, which agreements 'council-planning' also use: "
	                         "the pseudonyms can be linked with theirs\n",
	     .weakened = 1},
	    {"generalise to pseudonymise: neither",
	     .new_edits = {{SAFE, "action: generalise, to: age_band, width: 5",
	                    "action: pseudonymise, domain: dob"}},
	     .want = FLOW_SAFE C "field 'date_of_birth': generalised as a 5-year age band -> "
	                         "pseudonymised in linkage domain dob\n",
	     .other = 1},
	};
	for (size_t i = 0; i < ARRAY_LEN(cases); i++)
		check_diff(&cases[i]);
}

static void test_diff_fields_added_removed(void **state)
{
	const struct diff_case cases[] = {
	    {"field added and removed",
	     .new_edits = {{SAFE, "        - {name: officer_notes",
	                    "        - {name: ethnicity, type: text, action: pass}\n"
	                    "        - {name: notes2, type: text, action: drop}\n"
	                    "        - {name: officer_notes"},
	                   {SAFE, "        - {name: family_name, type: name, action: pass}\n", ""}},
	     .want = FLOW_SAFE W "field 'ethnicity': newly shared, in clear\n" C
	                         "field 'notes2': newly declared, dropped\n" S
	                         "field 'family_name': no longer shared (was in clear; now "
	                         "refused as unknown)\n",
	     .weakened = 1, .strengthened = 1, .other = 1},
	    {"dropped field no longer declared, unknown fields dropped",
	     .new_edits = {{SAFE, "        - {name: officer_notes, type: text, action: drop}\n",
	                    ""},
	                   {SAFE, "    - name: safeguarding-concern\n",
	                    "    - name: safeguarding-concern\n      unknown_fields: drop\n"}},
	     .want = FLOW_SAFE C "unknown fields: refused -> dropped\n" C
	                         "field 'officer_notes': no longer declared (was dropped; now "
	                         "dropped as unknown)\n",
	     .other = 2},
	    {"type and required",
	     .new_edits = {{SAFE, "concern_category, type: text, action: pass, required: true",
	                    "concern_category, type: identifier, action: pass"}},
	     .want = FLOW_SAFE C "field 'concern_category': type text -> identifier\n" C
	                         "field 'concern_category': no longer required\n",
	     .other = 2},
	};
	for (size_t i = 0; i < ARRAY_LEN(cases); i++)
		check_diff(&cases[i]);
}

/* A new linkage domain that another agreement uses lets the pseudonyms be joined. */
static void test_diff_domains(void **state)
{
	const struct edit base = {SAFE, "family_name, type: name, action: pass}",
	                          "family_name, type: name, action: pseudonymise, domain: "
	                          "safeguarding}"};
	const struct diff_case cases[] = {
	    {"domain shared with another agreement", .old_edits = {base},
	     .new_edits = {base, {PLAN, "domain: planning-police", "domain: safeguarding"}},
	     .want = FLOW_PLAN("met-police") W
	     "field 'pnc_id': pseudonymised in linkage domain planning-police -> pseudonymised "
	     "in linkage domain safeguarding, which agreements 'police-nhs-safeguarding' also "
	     "use: the pseudonyms can now be linked with theirs\n\n" FLOW_PLAN("nhs-trust") W
	     "field 'pnc_id': pseudonymised in linkage domain planning-police -> pseudonymised "
	     "in linkage domain safeguarding, which agreements 'police-nhs-safeguarding' also "
	     "use: the pseudonyms can now be linked with theirs\n",
	     .weakened = 2},
	    {"domain of its own", .old_edits = {base},
	     .new_edits = {base, {PLAN, "domain: planning-police", "domain: planning-pnc"}},
	     .want = FLOW_PLAN("met-police") C
	     "field 'pnc_id': pseudonymised in linkage domain planning-police -> pseudonymised "
	     "in linkage domain planning-pnc\n\n" FLOW_PLAN("nhs-trust") C
	     "field 'pnc_id': pseudonymised in linkage domain planning-police -> pseudonymised "
	     "in linkage domain planning-pnc\n",
	     .other = 2},
	};
	for (size_t i = 0; i < ARRAY_LEN(cases); i++)
		check_diff(&cases[i]);
}

static void test_diff_terms(void **state)
{
	const struct diff_case cases[] = {
	    {"dates",
	     .new_edits = {{SAFE, "valid_from: 2025-04-01", "valid_from: 2025-01-01"},
	                   {SAFE, "valid_until: 2099-03-31", "valid_until: 2099-12-31"},
	                   {REPLY, "valid_until: 2099-12-31", "valid_until: 2030-12-31"},
	                   {PLAN, "valid_from: 2026-01-01",
	                    "valid_from: 2026-01-01\n"
	                    "  valid_until: 2027-01-01"}},
	     .want = "Agreement council-planning:\n" S "valid_until none -> 2027-01-01 (ends "
	             "earlier)\n\nAgreement nhs-police-reply:\n" S "valid_until 2099-12-31 -> "
	             "2030-12-31 (ends earlier)\n\nAgreement police-nhs-safeguarding:\n" W
	             "valid_from 2025-04-01 -> 2025-01-01 (in force earlier)\n" W
	             "valid_until 2099-03-31 -> 2099-12-31 (in force longer)\n",
	     .weakened = 2, .strengthened = 2},
	    {"no end date, later start, review",
	     .new_edits = {{SAFE, "  valid_until: 2099-03-31\n", ""},
	                   {SAFE, "review_date: 2098-03-31", "review_date: 2097-03-31"},
	                   {REPLY, "valid_from: 2025-01-01", "valid_from: 2025-02-01"},
	                   {REPLY, "  review_date: 2026-06-30\n", ""}},
	     .want = "Agreement nhs-police-reply:\n" S "valid_from 2025-01-01 -> 2025-02-01 (in "
	             "force later)\n" C "review_date 2026-06-30 -> none\n\nAgreement "
	             "police-nhs-safeguarding:\n" W "valid_until 2099-03-31 -> none (no end "
	             "date)\n" C "review_date 2098-03-31 -> 2097-03-31\n",
	     .weakened = 1, .strengthened = 1, .other = 2},
	    {"limits",
	     .new_edits = {{SAFE, "max_records_per_message: 500", "max_records_per_message: 600"},
	                   {SAFE, "    records_per_day: 10000\n", ""},
	                   {SAFE, "messages_per_day: 200", "messages_per_day: 100"},
	                   {REPLY, "  limits:\n", "  limits:\n    messages_per_day: 5\n"}},
	     .want = "Agreement nhs-police-reply:\n" S "messages_per_day none -> 5\n\nAgreement "
	             "police-nhs-safeguarding:\n" W "max_records_per_message 500 -> 600\n" W
	             "records_per_day 10000 -> none\n" S "messages_per_day 200 -> 100\n",
	     .weakened = 2, .strengthened = 2},
	    {"per-message limit to the gateway's",
	     .new_edits = {{SAFE, "    max_records_per_message: 500\n", ""},
	                   {PLAN, "messages_per_day: 24",
	                    "messages_per_day: 24\n    max_records_per_message: 50"}},
	     .want = "Agreement council-planning:\n" S "max_records_per_message the gateway's "
	             "limit -> 50\n\nAgreement police-nhs-safeguarding:\n" W
	             "max_records_per_message 500 -> the gateway's limit\n",
	     .weakened = 1, .strengthened = 1},
	    {"undelivered data and replies",
	     .new_edits = {{SAFE, "undelivered_ttl: 14d",
	                    "undelivered_ttl: 30d\n  allow_reply: "
	                    "true"},
	                   {PLAN, "undelivered_ttl: 36h", "undelivered_ttl: 90m"},
	                   {REPLY, "allow_reply: true",
	                    "allow_reply: false\n  undelivered_ttl: "
	                    "2d"}},
	     .want = "Agreement council-planning:\n" S "undelivered_ttl 36h -> 90m (undelivered "
	             "data is deleted sooner)\n\nAgreement nhs-police-reply:\n" C "undelivered_ttl "
	             "the gateway's default -> 2d\n" S "replies: allowed -> not allowed\n\n"
	             "Agreement police-nhs-safeguarding:\n" W "undelivered_ttl 14d -> 30d "
	             "(undelivered data may wait longer)\n" W "replies: not allowed -> allowed\n",
	     .weakened = 2, .strengthened = 2, .other = 1},
	    {"words",
	     .new_edits = {{SAFE, "version: 2", "version: 3"},
	                   {SAFE, "title: Adult", "title: Adults'"},
	                   {SAFE, "code: adult-safeguarding", "code: safeguarding"},
	                   {SAFE, "    - \"UK GDPR Art. 9(2)(g): substantial public interest\"\n",
	                    "    - \"UK GDPR Art. 9(2)(b): employment\"\n"}},
	     .want = "Agreement police-nhs-safeguarding:\n" C "version 2 -> 3\n" C
	             "title 'Adult safeguarding concerns from police to health' -> 'Adults' "
	             "safeguarding concerns from police to health'\n" C
	             "purpose code 'adult-safeguarding' -> 'safeguarding'\n" C
	             "lawful basis 'UK GDPR Art. 9(2)(b): employment' added\n" C
	             "lawful basis 'UK GDPR Art. 9(2)(g): substantial public interest' removed\n",
	     .other = 5},
	    {"purpose text, dpia, controllers",
	     .new_edits = {{PLAN, "text: Plan services where they are needed",
	                    "text: Plan services"},
	                   {PLAN, "  valid_from:",
	                    "  dpia: DPIA-1\n  controllers: [city-council]\n"
	                    "  valid_from:"},
	                   {SAFE, "  dpia: DPIA-2025-014\n", ""}},
	     .want = "Agreement council-planning:\n" C "controller 'city-council' added\n" C
	             "purpose text 'Plan services where they are needed' -> 'Plan services'\n" C
	             "dpia 'none' -> 'DPIA-1'\n\nAgreement police-nhs-safeguarding:\n" C
	             "dpia 'DPIA-2025-014' -> 'none'\n",
	     .other = 4},
	};
	for (size_t i = 0; i < ARRAY_LEN(cases); i++)
		check_diff(&cases[i]);
}

static const char new_agreement[] =
    "agreement:\n"
    "  id: charity-referrals\n"
    "  version: 1\n"
    "  title: Referrals to a charity\n"
    "  senders: [city-council]\n"
    "  recipients: [charity]\n"
    "  purpose: {code: support, text: Offer support}\n"
    "  lawful_basis: [\"UK GDPR Art. 6(1)(a): consent\"]\n"
    "  valid_from: 2026-01-01\n"
    "  datasets:\n"
    "    - name: referral\n"
    "      fields:\n"
    "        - {name: email, type: email, action: pass, required: true}\n"
    "        - {name: postcode, type: postcode, action: generalise, to: postcode_area}\n"
    "        - {name: nhs_number, type: nhs_number, action: pseudonymise, domain: charity}\n"
    "        - {name: notes, type: text, action: drop}\n";

static void test_diff_flows(void **state)
{
	const struct diff_case cases[] = {
	    {"recipient added",
	     .new_edits = {{SAFE, "recipients: [nhs-trust]", "recipients: [nhs-trust, charity]"}},
	     .want = "Agreement police-nhs-safeguarding:\n" W "recipient 'charity' added\n\n"
	             "Flow met-police -> charity, agreement police-nhs-safeguarding, dataset "
	             "safeguarding-concern:\n" W "new flow: in clear: nhs_number, family_name, "
	             "concern_category; generalised: date_of_birth as a 5-year age band, postcode "
	             "as its postcode district; dropped: officer_notes\n",
	     .weakened = 2},
	    {"sender removed",
	     .new_edits = {{PLAN, "senders: [met-police, nhs-trust]", "senders: [met-police]"}},
	     .want = "Agreement council-planning:\n" S "sender 'nhs-trust' removed\n\n" FLOW_PLAN(
	         "nhs-trust") S "flow removed: nothing is shared on it any more\n",
	     .strengthened = 2},
	    {"dataset added",
	     .new_edits = {{REPLY, "  datasets:\n",
	                    "  datasets:\n    - {name: more, fields: [{name: pnc_id, type: pnc_id, "
	                    "action: pseudonymise, domain: crisis}]}\n"}},
	     .want = "Flow nhs-trust -> met-police, agreement nhs-police-reply, dataset more:\n" W
	             "new flow: pseudonymised: pnc_id (linkage domain crisis)\n",
	     .weakened = 1},
	    {"agreement added and removed",
	     .new_edits = {{"agreements/charity-referrals.yaml", NULL, new_agreement},
	                   {REPLY, NULL, NULL}},
	     .want = "Agreement charity-referrals:\n" W "agreement added (version 1): Referrals "
	             "to a charity\n\nFlow city-council -> charity, agreement "
	             "charity-referrals, dataset referral:\n" W "new flow: in clear: email; "
	             "generalised: postcode as its postcode area; pseudonymised: nhs_number "
	             "(linkage domain charity); dropped: notes\n\nAgreement nhs-police-reply:\n" S
	             "agreement removed (was version 1): Mental health crisis answers from health "
	             "to police\n\nFlow nhs-trust -> met-police, agreement nhs-police-reply, "
	             "dataset answer:\n" S "flow removed: nothing is shared on it any more\n",
	     .weakened = 2, .strengthened = 2},
	};
	for (size_t i = 0; i < ARRAY_LEN(cases); i++)
		check_diff(&cases[i]);
}

#define TWO_WAY                                                                                    \
	{                                                                                          \
		REPLY, "senders: [nhs-trust]\n  recipients: [met-police]",                         \
		    "senders: [nhs-trust, met-police]\n  recipients: [met-police, nhs-trust]"      \
	}
#define FLOW_REPLY(s, r, ds) "Flow " s " -> " r ", agreement nhs-police-reply, dataset " ds ":\n"

/*
 * A partner both sender and recipient of an agreement never sends to itself (the
 * gateway refuses it), so the diff lists and counts no flow from it to itself.
 */
static void test_diff_two_way_no_self_flow(void **state)
{
	const struct diff_case cases[] = {
	    {"made two-way", .new_edits = {TWO_WAY},
	     .want =
	         "Agreement nhs-police-reply:\n" W "sender 'met-police' added\n" W
	         "recipient 'nhs-trust' added\n\n" FLOW_REPLY("met-police", "nhs-trust", "answer") W
	     "new flow: in clear: known_to_services, care_coordinator; dropped: "
	     "clinical_notes\n",
	     .weakened = 3},
	    {"made one-way", .old_edits = {TWO_WAY},
	     .want =
	         "Agreement nhs-police-reply:\n" S "sender 'met-police' removed\n" S
	         "recipient 'nhs-trust' removed\n\n" FLOW_REPLY("met-police", "nhs-trust", "answer")
	             S "flow removed: nothing is shared on it any more\n",
	     .strengthened = 3},
	    {"two-way, dataset added", .old_edits = {TWO_WAY},
	     .new_edits = {TWO_WAY,
	                   {REPLY, "  datasets:\n",
	                    "  datasets:\n    - {name: more, fields: [{name: pnc_id, type: "
	                    "pnc_id, action: pseudonymise, domain: crisis}]}\n"}},
	     .want = FLOW_REPLY("nhs-trust", "met-police", "more") W
	     "new flow: pseudonymised: pnc_id (linkage domain crisis)\n\n" FLOW_REPLY(
	         "met-police", "nhs-trust", "more") W "new flow: pseudonymised: pnc_id (linkage "
	                                              "domain crisis)\n",
	     .weakened = 2},
	};
	for (size_t i = 0; i < ARRAY_LEN(cases); i++)
		check_diff(&cases[i]);
}

static void test_diff_partners(void **state)
{
	const struct diff_case cases[] = {
	    {"registry entries",
	     .new_edits = {{PARTNERS,
	                    "  - id: charity\n    name: Some Charity\n    kind: other\n"
	                    "    certificate:\n      san_dns: charity.test\n",
	                    "  - id: hospice\n    name: The Hospice\n    kind: other\n"
	                    "    certificate:\n      san_dns: hospice.test\n"},
	                   {PARTNERS, "name: City Council", "name: City Council (Social Care)"},
	                   {PARTNERS, "kind: nhs", "kind: other"},
	                   {PARTNERS, "contact: dpo@met-police.test",
	                    "contact: ig@met-police.test"}},
	     .want =
	         "Partner registry:\n" C "partner 'met-police': contact 'dpo@met-police.test' -> "
	         "'ig@met-police.test'\n" C "partner 'nhs-trust': kind nhs -> other\n" C
	         "partner 'city-council': name 'City Council' -> 'City Council (Social "
	         "Care)'\n" C "partner 'hospice' added to the registry: The Hospice, kind "
	         "other\n" C "partner 'charity' removed from the registry\n",
	     .other = 5},
	    {"certificates recognised",
	     .new_edits = {{PARTNERS, "subject_cn: gateway-client.test\n      issuer_cn: Police",
	                    "subject_cn: gateway-client.test\n      san_dns: met.test\n"
	                    "      issuer_cn: Police"},
	                   {PARTNERS, "[NHS Issuing CA 1, NHS Issuing CA 2]",
	                    "[NHS Issuing CA 2, NHS Issuing CA 3]"},
	                   {PARTNERS, "issuer_cn: City Council Devices CA",
	                    "issuer_cn: [City Council Devices CA, City Council Devices CA 2]"},
	                   {PARTNERS, "san_dns: charity.test",
	                    "san_dns: charity.test\n      issuer_cn: Charity CA"}},
	     .want = "Partner registry:\n" W "partner 'met-police': now also recognised by san_dns "
	             "'met.test'\n" W "partner 'nhs-trust': now also recognised with a "
	             "certificate issued by 'NHS Issuing CA 3'\n" C "partner 'nhs-trust': no "
	             "longer recognised with a certificate issued by 'NHS Issuing CA 1'\n" W
	             "partner 'city-council': now also recognised with a certificate issued by "
	             "'City Council Devices CA 2'\n" S "partner 'charity': now recognised only "
	             "with a certificate issued by 'Charity CA'\n",
	     .weakened = 3, .strengthened = 1, .other = 1},
	    {"issuer constraint removed, subject removed",
	     .old_edits = {{PARTNERS, "san_dns: charity.test",
	                    "san_dns: charity.test\n      issuer_cn: Charity CA"},
	                   {PARTNERS, "subject_cn: gateway-client.test\n      issuer_cn: Police",
	                    "subject_cn: gateway-client.test\n      san_dns: met.test\n"
	                    "      issuer_cn: Police"}},
	     .new_edits = {{PARTNERS, "subject_cn: gateway-client.test\n      issuer_cn: Police",
	                    "san_dns: met.test\n      issuer_cn: Police"}},
	     .want = "Partner registry:\n" C "partner 'met-police': no longer recognised by "
	             "subject_cn 'gateway-client.test'\n" W "partner 'charity': no longer limited "
	             "to certificates issued by 'Charity CA'\n",
	     .weakened = 1, .other = 1},
	};
	for (size_t i = 0; i < ARRAY_LEN(cases); i++)
		check_diff(&cases[i]);

	/* A partner left with issuer_cn alone: every certificate of the CA. */
	const struct diff_case alone = {
	    "issuer alone",
	    .new_edits = {{PARTNERS,
	                   "      subject_cn: gateway-client.test\n      issuer_cn: Police",
	                   "      issuer_cn: Police"}},
	    .want =
	        "Partner registry:\n" C "partner 'met-police': no longer recognised by subject_cn "
	        "'gateway-client.test'\n" W "partner 'met-police': now recognised by every "
	        "certificate its issuer_cn CA issues\n",
	    .weakened = 1, .other = 1};
	check_diff(&alone);
}

/* ---- versions ---- */

static void note_issue(void *ctx, const struct policy_agreement *a0,
                       const struct policy_agreement *a1)
{
	struct strbuf *b = ctx;
	strbuf_printf(b, "%s %u->%u;", a1->id, a0->version, a1->version);
}

/* The agreements policy_version_issues reports for old_edits -> new_edits, as "id v0->v1;". */
static void expect_issues(const char *name, const struct edit *old_edits,
                          const struct edit *new_edits, const char *want)
{
	struct policy_set *o = variant(old_edits), *n = variant(new_edits);
	struct strbuf got;
	strbuf_init(&got);
	size_t count = policy_version_issues(o, n, note_issue, &got);
	const char *g = got.p ? got.p : "";
	size_t semis = 0;
	for (const char *c = g; *c; c++)
		semis += *c == ';';
	if (strcmp(g, want) != 0 || count != semis)
		fail_msg("case %s: want '%s', got '%s' (%zu)", name, want, g, count);
	strbuf_release(&got);
	policy_set_unref(o);
	policy_set_unref(n);
}

/*
 * A change of terms under the same version is reported, whatever the term;
 * the title, the review date, comments, layout and order are no terms; a
 * raised version is fine, and a lowered one is reported even with the same terms.
 */
static void test_version_issues(void **state)
{
	static const struct {
		const char *name;
		struct edit edit;
	} terms[] = {
	    {"field action",
	     {SAFE, "name: officer_notes, type: text, action: drop",
	      "name: officer_notes, type: text, action: pass"}},
	    {"field type",
	     {SAFE, "name: family_name, type: name", "name: family_name, type: text"}},
	    {"required",
	     {SAFE, "name: family_name, type: name, action: pass",
	      "name: family_name, type: name, action: pass, required: true"}},
	    {"field added",
	     {SAFE, "        - {name: officer_notes",
	      "        - {name: notes2, type: text, action: drop}\n"
	      "        - {name: officer_notes"}},
	    {"band width", {SAFE, "to: age_band, width: 5", "to: age_band, width: 10"}},
	    {"generalise to", {SAFE, "to: postcode_district", "to: postcode_sector"}},
	    {"domain", {PLAN, "domain: planning-police", "domain: planning-pol"}},
	    {"unknown fields", {PLAN, "unknown_fields: drop", "unknown_fields: reject"}},
	    {"dataset name", {SAFE, "name: safeguarding-concern", "name: concern"}},
	    {"sender", {PLAN, "senders: [met-police, nhs-trust]", "senders: [met-police]"}},
	    {"recipient", {SAFE, "recipients: [nhs-trust]", "recipients: [nhs-trust, charity]"}},
	    {"controller",
	     {SAFE, "controllers: [met-police, nhs-trust]", "controllers: [met-police]"}},
	    {"purpose code", {PLAN, "code: service-planning", "code: planning"}},
	    {"purpose text",
	     {PLAN, "text: Plan services where", "text: Plan services there where"}},
	    {"lawful basis", {PLAN, "6(1)(e): public task", "6(1)(c): legal obligation"}},
	    {"dpia", {SAFE, "dpia: DPIA-2025-014", "dpia: DPIA-2025-015"}},
	    {"valid_from", {SAFE, "valid_from: 2025-04-01", "valid_from: 2025-04-02"}},
	    {"valid_until", {SAFE, "valid_until: 2099-03-31", "valid_until: 2098-12-31"}},
	    {"per message", {SAFE, "max_records_per_message: 500", "max_records_per_message: 50"}},
	    {"records per day", {SAFE, "records_per_day: 10000", "records_per_day: 1000"}},
	    {"messages per day", {PLAN, "messages_per_day: 24", "messages_per_day: 25"}},
	    {"ttl", {PLAN, "undelivered_ttl: 36h", "undelivered_ttl: 2d"}},
	    {"replies",
	     {SAFE, "undelivered_ttl: 14d", "undelivered_ttl: 14d\n  allow_reply: true"}},
	};
	for (size_t i = 0; i < ARRAY_LEN(terms); i++) {
		const struct edit e[] = {terms[i].edit, {0}};
		expect_issues(terms[i].name, NULL, e,
		              strcmp(terms[i].edit.file, PLAN) == 0
		                  ? "council-planning 1->1;"
		                  : "police-nhs-safeguarding 2->2;");
	}
	const struct edit none[] = {{0}};
	expect_issues("same", none, none, "");
	const struct edit cosmetic[] = {
	    {SAFE, "title: Adult", "title: Adults'"},
	    {SAFE, "review_date: 2098-03-31", "review_date: 2097-03-31"},
	    {PLAN, "senders: [met-police, nhs-trust]", "senders: [nhs-trust, met-police]"},
	    {PLAN, "        - {name: category, type: text, action: pass, required: true}\n", ""},
	    {PLAN, "      fields:\n",
	     "      fields:\n        - {name: category, type: text, action: pass, required: "
	     "true}\n"},
	    {0}};
	expect_issues("title, review date and order", NULL, cosmetic, "");
	const struct edit raised[] = {
	    {SAFE, "version: 2", "version: 3"}, {SAFE, "action: drop", "action: pass"}, {0}};
	expect_issues("raised", NULL, raised, "");
	const struct edit lowered[] = {{SAFE, "version: 2", "version: 1"}, {0}};
	expect_issues("lowered, same terms", NULL, lowered, "police-nhs-safeguarding 2->1;");
	/* Added and removed agreements have no earlier version to compare. */
	const struct edit removed[] = {{REPLY, NULL, NULL}, {0}};
	expect_issues("removed", NULL, removed, "");
	expect_issues("added", removed, NULL, "");
	/* Two at once, in the new set's order (by file name). */
	const struct edit both[] = {{SAFE, "action: drop", "action: pass"},
	                            {PLAN, "messages_per_day: 24", "messages_per_day: 25"},
	                            {0}};
	expect_issues("two", NULL, both, "council-planning 1->1;police-nhs-safeguarding 2->2;");
}

int main(void)
{
	/* The loader refuses group-writable files: the tests' own are 0644 whatever the umask. */
	umask(022);
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_show_golden),
	    cmocka_unit_test(test_show_dates),
	    cmocka_unit_test(test_show_cleans_text),
	    cmocka_unit_test(test_show_no_flow),
	    cmocka_unit_test(test_diff_same),
	    cmocka_unit_test(test_diff_fields),
	    cmocka_unit_test(test_diff_fields_added_removed),
	    cmocka_unit_test(test_diff_domains),
	    cmocka_unit_test(test_diff_terms),
	    cmocka_unit_test(test_diff_flows),
	    cmocka_unit_test(test_diff_two_way_no_self_flow),
	    cmocka_unit_test(test_diff_partners),
	    cmocka_unit_test(test_version_issues),
	};
	return cmocka_run_group_tests(tests, setup, NULL);
}
