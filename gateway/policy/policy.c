/*
 * The loaded policy set: names, reference counting, lookups and recognising
 * a partner from its client certificate.
 */
#include "policy/internal.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

const struct policy_name policy_field_types[] = {
    {"text", FIELD_TEXT},
    {"integer", FIELD_INTEGER},
    {"number", FIELD_NUMBER},
    {"boolean", FIELD_BOOLEAN},
    {"date", FIELD_DATE},
    {"nhs_number", FIELD_NHS_NUMBER},
    {"pnc_id", FIELD_PNC_ID},
    {"postcode", FIELD_POSTCODE},
    {"name", FIELD_NAME},
    {"email", FIELD_EMAIL},
    {"identifier", FIELD_IDENTIFIER},
};
const size_t policy_n_field_types = ARRAY_LEN(policy_field_types);

const struct policy_name policy_field_actions[] = {
    {"pass", ACTION_PASS},
    {"drop", ACTION_DROP},
    {"generalise", ACTION_GENERALISE},
    {"pseudonymise", ACTION_PSEUDONYMISE},
};
const size_t policy_n_field_actions = ARRAY_LEN(policy_field_actions);

const struct policy_name policy_generalise_tos[] = {
    {"year", GEN_YEAR},
    {"age_band", GEN_AGE_BAND},
    {"month", GEN_MONTH},
    {"postcode_area", GEN_POSTCODE_AREA},
    {"postcode_district", GEN_POSTCODE_DISTRICT},
    {"postcode_sector", GEN_POSTCODE_SECTOR},
    {"number_band", GEN_NUMBER_BAND},
};
const size_t policy_n_generalise_tos = ARRAY_LEN(policy_generalise_tos);

static const char *name_of(const struct policy_name *names, size_t n, int value)
{
	for (size_t i = 0; i < n; i++)
		if (names[i].value == value)
			return names[i].name;
	return "unknown";
}

const char *policy_field_type_name(enum field_type type)
{
	return name_of(policy_field_types, policy_n_field_types, (int)type);
}

const char *policy_field_action_name(enum field_action action)
{
	return name_of(policy_field_actions, policy_n_field_actions, (int)action);
}

const char *policy_generalise_to_name(enum generalise_to to)
{
	return name_of(policy_generalise_tos, policy_n_generalise_tos, (int)to);
}

const char *policy_partner_kind_name(enum partner_kind kind)
{
	switch (kind) {
	case PARTNER_POLICE:
		return "police";
	case PARTNER_NHS:
		return "nhs";
	case PARTNER_COUNCIL:
		return "council";
	case PARTNER_OTHER:
		return "other";
	}
	return "unknown";
}

const char *policy_format_day(char buf[48], int64_t days)
{
	int64_t y;
	unsigned m, d;
	date_civil_of_days(days, &y, &m, &d);
	snprintf(buf, 48, "%04lld-%02u-%02u", (long long)y, m, d);
	return buf;
}

static void free_strings(char **s, size_t n)
{
	for (size_t i = 0; s && i < n; i++)
		free(s[i]);
	free(s);
}

void policy_partner_release(struct policy_partner *p)
{
	free(p->id);
	free(p->name);
	free(p->contact);
	for (size_t i = 0; i < p->n_match; i++)
		free(p->match[i].value);
	free(p->match);
}

void policy_dataset_release(struct policy_dataset *ds)
{
	free(ds->name);
	for (size_t i = 0; i < ds->n_fields; i++) {
		free(ds->fields[i].name);
		free(ds->fields[i].domain);
	}
	free(ds->fields);
}

void policy_agreement_release(struct policy_agreement *a)
{
	free(a->id);
	free(a->title);
	free(a->file);
	free_strings(a->senders, a->n_senders);
	free_strings(a->recipients, a->n_recipients);
	free_strings(a->controllers, a->n_controllers);
	free_strings(a->lawful_basis, a->n_lawful_basis);
	free(a->purpose_code);
	free(a->purpose_text);
	free(a->dpia);
	for (size_t i = 0; i < a->n_datasets; i++)
		policy_dataset_release(&a->datasets[i]);
	free(a->datasets);
}

void policy_set_free(struct policy_set *set)
{
	if (!set)
		return;
	for (size_t i = 0; i < set->n_partners; i++)
		policy_partner_release(&set->partners[i]);
	free(set->partners);
	for (size_t i = 0; i < set->n_agreements; i++)
		policy_agreement_release(&set->agreements[i]);
	free(set->agreements);
	free(set);
}

struct policy_set *policy_set_ref(struct policy_set *set)
{
	if (set)
		atomic_fetch_add_explicit(&set->refs, 1, memory_order_relaxed);
	return set;
}

void policy_set_unref(struct policy_set *set)
{
	if (!set)
		return;
	/* acq_rel: every reader's last use happens before the free. */
	if (atomic_fetch_sub_explicit(&set->refs, 1, memory_order_acq_rel) == 1)
		policy_set_free(set);
}

const struct policy_partner *policy_partner_by_id(const struct policy_set *set, const char *id)
{
	if (!set || !id)
		return NULL;
	for (size_t i = 0; i < set->n_partners; i++)
		if (strcmp(set->partners[i].id, id) == 0)
			return &set->partners[i];
	return NULL;
}

const struct policy_agreement *policy_agreement_by_id(const struct policy_set *set, const char *id)
{
	if (!set || !id)
		return NULL;
	for (size_t i = 0; i < set->n_agreements; i++)
		if (strcmp(set->agreements[i].id, id) == 0)
			return &set->agreements[i];
	return NULL;
}

/*
 * The smallest domain name after `last` (NULL: the smallest of all). A
 * selection rather than a sort, so no memory is needed; the set holds few
 * distinct domains.
 */
static const char *next_domain(const struct policy_set *set, const char *last)
{
	const char *next = NULL;
	for (size_t i = 0; i < set->n_agreements; i++) {
		const struct policy_agreement *a = &set->agreements[i];
		for (size_t k = 0; k < a->n_datasets; k++) {
			const struct policy_dataset *ds = &a->datasets[k];
			for (size_t j = 0; j < ds->n_fields; j++) {
				const char *d = ds->fields[j].domain;
				if (!d || (last && strcmp(d, last) <= 0))
					continue;
				if (!next || strcmp(d, next) < 0)
					next = d;
			}
		}
	}
	return next;
}

/* Writes at most max names, sorted and distinct; returns how many there are in all. */
size_t policy_domains(const struct policy_set *set, const char **out, size_t max)
{
	size_t n = 0;
	if (!set)
		return 0;
	for (const char *d = next_domain(set, NULL); d; d = next_domain(set, d)) {
		if (out && n < max)
			out[n] = d;
		n++;
	}
	return n;
}

bool policy_domain_named_at(const struct policy_set *set, const char *domain, const char **file,
                            int *line, int *col, const char **field)
{
	for (size_t i = 0; set && i < set->n_agreements; i++) {
		const struct policy_agreement *a = &set->agreements[i];
		for (size_t k = 0; k < a->n_datasets; k++)
			for (size_t j = 0; j < a->datasets[k].n_fields; j++) {
				const struct policy_field *f = &a->datasets[k].fields[j];
				if (!f->domain || strcmp(f->domain, domain) != 0)
					continue;
				*file = a->file;
				*line = f->domain_line;
				*col = f->domain_col;
				*field = f->name;
				return true;
			}
	}
	return false;
}

bool policy_agreement_has_flow(const struct policy_agreement *a)
{
	for (size_t i = 0; i < a->n_senders; i++)
		for (size_t k = 0; k < a->n_recipients; k++)
			if (strcmp(a->senders[i], a->recipients[k]) != 0)
				return true;
	return false;
}

bool policy_partner_has_matcher(const struct policy_partner *p, const struct cert_match *m)
{
	for (size_t k = 0; k < p->n_match; k++)
		if (p->match[k].kind == m->kind && strcmp(p->match[k].value, m->value) == 0)
			return true;
	return false;
}

size_t policy_partner_issuers(const struct policy_partner *p)
{
	size_t n = 0;
	for (size_t k = 0; k < p->n_match; k++)
		n += p->match[k].kind == MATCH_ISSUER_CN;
	return n;
}

/* A certificate field (a fixed array the TLS layer filled) equals want; never past cap. */
static bool cert_text_eq(const char *field, size_t cap, const char *want, bool fold_case)
{
	size_t len = strnlen(field, cap);
	if (len == cap || len == 0 || len != strlen(want))
		return false;
	return fold_case ? strncasecmp(field, want, len) == 0 : memcmp(field, want, len) == 0;
}

static bool matcher_matches(const struct cert_match *m, const struct cert_identity *id)
{
	size_t n;
	switch (m->kind) {
	case MATCH_SUBJECT_CN:
		return cert_text_eq(id->subject_cn, sizeof(id->subject_cn), m->value, false);
	case MATCH_SAN_URI:
		n = id->n_san_uri < CERT_MAX_SANS ? id->n_san_uri : CERT_MAX_SANS;
		for (size_t i = 0; i < n; i++)
			if (cert_text_eq(id->san_uri[i], sizeof(id->san_uri[i]), m->value, false))
				return true;
		return false;
	case MATCH_SAN_DNS:
		n = id->n_san_dns < CERT_MAX_SANS ? id->n_san_dns : CERT_MAX_SANS;
		for (size_t i = 0; i < n; i++)
			if (cert_text_eq(id->san_dns[i], sizeof(id->san_dns[i]), m->value, true))
				return true;
		return false;
	case MATCH_SPKI_SHA256:
		return sodium_memcmp(m->spki, id->spki_sha256, sizeof(m->spki)) == 0;
	case MATCH_ISSUER_CN:
		return cert_text_eq(id->issuer_cn, sizeof(id->issuer_cn), m->value, false);
	}
	return false;
}

/*
 * Any one of the partner's other matchers recognises the certificate, and
 * when it lists issuer_cn, one of those must match as well: the issuer
 * constrains. A partner with only issuer_cn is recognised by the CA alone.
 */
static bool partner_matches(const struct policy_partner *p, const struct cert_identity *id)
{
	size_t n_subject = 0, n_issuer = 0;
	bool subject_hit = false, issuer_hit = false;
	for (size_t k = 0; k < p->n_match; k++) {
		bool hit = matcher_matches(&p->match[k], id);
		if (p->match[k].kind == MATCH_ISSUER_CN) {
			n_issuer++;
			issuer_hit |= hit;
		} else {
			n_subject++;
			subject_hit |= hit;
		}
	}
	if (n_subject + n_issuer == 0)
		return false;
	return (n_subject == 0 || subject_hit) && (n_issuer == 0 || issuer_hit);
}

size_t policy_partner_claimants(const struct policy_set *set, const struct cert_identity *id,
                                const struct policy_partner *out[2])
{
	size_t n = 0;
	for (size_t i = 0; set && id && i < set->n_partners && n < 2; i++)
		if (partner_matches(&set->partners[i], id))
			out[n++] = &set->partners[i];
	return n;
}

const struct policy_partner *policy_partner_by_cert(const struct policy_set *set,
                                                    const struct cert_identity *id)
{
	/* Look at every partner: a certificate two partners claim is recognised as neither. */
	const struct policy_partner *found[2];
	return policy_partner_claimants(set, id, found) == 1 ? found[0] : NULL;
}

void policy_missing_key_message(char *buf, size_t size, const char *domain, const char *field,
                                const char *why)
{
	snprintf(buf, size, "linkage domain '%s' of field '%s' has no key: %s", domain, field, why);
}

size_t policy_check_domains(const struct policy_set *set,
                            const char *(*missing)(void *ctx, const char *domain), void *ctx,
                            struct ydoc_diags *diags)
{
	size_t n = 0;
	for (size_t i = 0; set && i < set->n_agreements; i++) {
		const struct policy_agreement *a = &set->agreements[i];
		for (size_t k = 0; k < a->n_datasets; k++) {
			const struct policy_dataset *ds = &a->datasets[k];
			for (size_t j = 0; j < ds->n_fields; j++) {
				const struct policy_field *f = &ds->fields[j];
				const char *why = f->domain ? missing(ctx, f->domain) : NULL;
				if (!why)
					continue;
				struct ydoc_node at = {.line = f->domain_line,
				                       .col = f->domain_col};
				char msg[8192];
				policy_missing_key_message(msg, sizeof(msg), f->domain, f->name,
				                           why);
				ydoc_error(diags, a->file, &at, "%s", msg);
				n++;
			}
		}
	}
	return n;
}
