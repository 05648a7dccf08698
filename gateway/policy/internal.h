/*
 * Private to the policy module: what its files share. Other modules include
 * only policy.h.
 */
#ifndef ISG_POLICY_INTERNAL_H
#define ISG_POLICY_INTERNAL_H

#include <stdbool.h>

#include "policy/policy.h"
#include "util/util.h"
#include "ydoc/ydoc.h"

/* Bounds on what a policy may declare; see docs/policy.md. */
#define POLICY_MAX_FILE_BYTES (1024 * 1024)
/* The longest undelivered_ttl, in an agreement or as the gateway's store.undelivered_ttl. */
#define POLICY_TTL_MAX_MS (365LL * 86400000)
#define POLICY_MAX_TOTAL_BYTES (64 * 1024 * 1024)
#define POLICY_MAX_FILES 10000
#define POLICY_MAX_PARTNERS 1000
#define POLICY_MAX_MATCHERS 16
#define POLICY_MAX_LIST 256
#define POLICY_MAX_DATASETS 64
#define POLICY_MAX_FIELDS 256
#define POLICY_MAX_RECORDS_LIMIT 1000000
#define POLICY_MAX_RECORDS_PER_DAY 100000000
#define POLICY_MAX_MESSAGES_PER_DAY 10000000
#define POLICY_ID_MAX 63
#define POLICY_AGE_BAND_MAX 50
#define POLICY_AGE_BAND_DEFAULT 5
#define POLICY_NUMBER_BAND_MAX 1000000000

/* Names of field types, actions and generalisations. */
struct policy_name {
	const char *name;
	int value;
};
extern const struct policy_name policy_field_types[];
extern const size_t policy_n_field_types;
extern const struct policy_name policy_field_actions[];
extern const size_t policy_n_field_actions;
extern const struct policy_name policy_generalise_tos[];
extern const size_t policy_n_generalise_tos;
const char *policy_generalise_to_name(enum generalise_to to);
/* The pseudo module's type for a field type (identifiers and dates); 0 for others. */
enum pseudo_type policy_field_pseudo_type(enum field_type type);
/* YYYY-MM-DD of a day number (days since 1970-01-01). */
const char *policy_format_day(char buf[48], int64_t days);

/* policy_load as if today (UTC) were today_days: review dates are judged against it. */
int policy_load_at(const char *dir, int64_t today_days, struct policy_set **out,
                   struct ydoc_diags *diags);

/* Each matcher's key in partners.yaml, indexed by enum cert_match_kind; NULL-terminated
 * (parse.c, with the other key lists). */
extern const char *const policy_matcher_keys[];
/* Whether p lists matcher m (the same kind and value). */
bool policy_partner_has_matcher(const struct policy_partner *p, const struct cert_match *m);
/* How many of p's matchers are issuer_cn. */
size_t policy_partner_issuers(const struct policy_partner *p);

/* Whether some sender of a may send to some recipient: a partner never sends to itself. */
bool policy_agreement_has_flow(const struct policy_agreement *a);

/* Plain-language pieces shared by describe.c and diff.c. */
const char *policy_type_label(enum field_type t); /* "NHS number" */
const char *policy_generalise_label(const struct policy_field *f, char *buf,
                                    size_t size); /* "a 5-year age band" */
const char *policy_field_how(const struct policy_field *f, char *buf, size_t size);
const char *policy_partner_label(const struct policy_set *set, const char *id, char *buf,
                                 size_t size); /* "Name (id)" */
/* Append s with control characters replaced: text from files never drives a terminal. */
void policy_put_clean(struct strbuf *b, const char *s, size_t len);

void policy_set_free(struct policy_set *set);
/* Free what a partner, dataset or agreement holds (not the struct itself). */
void policy_partner_release(struct policy_partner *p);
void policy_dataset_release(struct policy_dataset *ds);
void policy_agreement_release(struct policy_agreement *a);

/* Partners and agreements from their parsed files (parse.c). */
struct policy_parser {
	struct policy_set *set;
	struct ydoc_diags *d;
	bool partners_ok; /* partners.yaml loaded: check references to it */
	int64_t today;    /* UTC days, for review dates */
	/* Every valid agreement id read so far, whether its agreement loaded or
	 * not, and where it was written: a duplicate is reported even behind
	 * another error. Room for one per agreement file; the parser owns id
	 * and file (policy_parser_release). */
	struct policy_id_seen {
		char *id, *file;
		int line, col;
	} * ids_seen;
	size_t n_ids_seen;
	/* The distinct linkage domains named so far, to refuse the one past
	 * POLICY_MAX_DOMAINS where it is written (owned; NULL until the first). */
	char **domains;
	size_t n_domains;
};

/* Free what the parser holds of its own (not the set). */
void policy_parser_release(struct policy_parser *p);

void policy_parse_partners(struct policy_parser *p, const struct ydoc *doc);
/* rel_name: the file's name inside agreements/, for the id-vs-file-name warning. */
void policy_parse_agreement(struct policy_parser *p, const struct ydoc *doc, const char *rel_name);
/* After every file loaded cleanly: warnings about the set as a whole; 0 or ISG_ERR_NOMEM. */
int policy_check_set(struct policy_parser *p);

#endif
