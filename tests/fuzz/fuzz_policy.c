/*
 * libFuzzer harness for the policy loader: one input is parsed as YAML, then
 * as partners.yaml and as an agreement file against a fixed partner
 * registry, and a parsed agreement is described and diffed. Oracles: the
 * sanitizers, a summary without control characters, and a set that differs
 * from itself in nothing. Seeds: tests/fuzz/corpus/policy/.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "policy/internal.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char registry_yaml[] = "partners:\n"
                                    "  - {id: met-police, name: Police, kind: police,\n"
                                    "     certificate: {subject_cn: a, issuer_cn: CA}}\n"
                                    "  - {id: nhs-trust, name: Trust, kind: nhs,\n"
                                    "     certificate: {san_dns: b.test}}\n"
                                    "  - {id: city-council, name: Council, kind: council,\n"
                                    "     certificate: {issuer_cn: Council CA}}\n";

#define TODAY 20500 /* 2026-02-16 */

static FILE *devnull;
static struct policy_set registry;

static void init(void)
{
	devnull = fopen("/dev/null", "w");
	struct ydoc_diags d;
	ydoc_diags_init(&d);
	struct ydoc *doc = NULL;
	struct policy_parser p = {.set = &registry, .d = &d, .today = TODAY};
	if (ydoc_load_buffer("partners.yaml", registry_yaml, strlen(registry_yaml), &doc, &d) != 0)
		abort();
	policy_parse_partners(&p, doc);
	if (d.errors || registry.n_partners != 3)
		abort();
	ydoc_free(doc);
	ydoc_diags_release(&d);
}

/* A set that borrows the registry's partners and owns at most one agreement. */
struct borrowed {
	struct policy_set set;
	struct policy_parser p;
};

static void borrowed_release(struct borrowed *b)
{
	for (size_t i = 0; i < b->set.n_agreements; i++)
		policy_agreement_release(&b->set.agreements[i]);
	free(b->set.agreements);
	policy_parser_release(&b->p);
}

static const char *every_key_missing(void *ctx, const char *domain)
{
	return "fuzz";
}

static void use_agreement(const struct policy_set *set, struct ydoc_diags *d)
{
	const struct policy_agreement *a = &set->agreements[0];
	struct strbuf out;
	strbuf_init(&out);
	if (policy_describe(set, a, TODAY, &out) == 0)
		for (size_t i = 0; i < out.len; i++)
			if (((unsigned char)out.p[i] < 0x20 && out.p[i] != '\n') ||
			    out.p[i] == 0x7f)
				abort();
	strbuf_release(&out);

	struct policy_diff_stats st;
	strbuf_init(&out);
	if (policy_diff(set, set, &out, &st) == 0 && (st.changes || out.len))
		abort(); /* a set differs from itself in nothing */
	strbuf_release(&out);
	struct policy_set empty = {0};
	strbuf_init(&out);
	policy_diff(&empty, set, &out, &st);
	policy_diff(set, &empty, &out, &st);
	strbuf_release(&out);
	policy_check_domains(set, every_key_missing, NULL, d);
}

static void as_partners(const struct ydoc *doc, struct ydoc_diags *d)
{
	struct policy_set *set = calloc(1, sizeof(*set));
	if (!set)
		return;
	struct policy_parser p = {.set = set, .d = d, .today = TODAY};
	policy_parse_partners(&p, doc);
	struct cert_identity id = {0};
	memcpy(id.subject_cn, "a", 2);
	memcpy(id.issuer_cn, "CA", 3);
	policy_partner_by_cert(set, &id);
	struct policy_diff_stats st;
	struct strbuf out;
	strbuf_init(&out);
	if (policy_diff(set, set, &out, &st) == 0 && st.changes)
		abort();
	strbuf_release(&out);
	policy_set_free(set);
}

static void as_agreement(const struct ydoc *doc, struct ydoc_diags *d)
{
	struct borrowed b = {.set = registry};
	b.set.n_agreements = 0;
	b.set.agreements = calloc(1, sizeof(*b.set.agreements));
	b.p = (struct policy_parser){.set = &b.set, .d = d, .partners_ok = true, .today = TODAY};
	b.p.ids_seen = calloc(1, sizeof(*b.p.ids_seen));
	if (b.set.agreements && b.p.ids_seen) {
		policy_parse_agreement(&b.p, doc, "fuzz.yaml");
		if (b.set.n_agreements == 1 && policy_check_set(&b.p) == 0)
			use_agreement(&b.set, d);
	}
	borrowed_release(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (!devnull)
		init();
	struct ydoc_diags d;
	ydoc_diags_init(&d);
	struct ydoc *doc = NULL;
	if (ydoc_load_buffer("agreements/fuzz.yaml", (const char *)data, size, &doc, &d) == 0) {
		as_partners(doc, &d);
		as_agreement(doc, &d);
	}
	ydoc_diags_print(&d, devnull);
	ydoc_free(doc);
	ydoc_diags_release(&d);
	return 0;
}
