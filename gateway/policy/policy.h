/*
 * policy: the partner registry and the sharing agreements, loaded from YAML
 * files in a policy directory, and applied to each message. Deny by default:
 * a message passes only when an agreement names its sender, recipient and
 * dataset and every field of every record obeys the dataset's schema.
 *
 * A loaded struct policy_set is immutable and reference-counted, so a reload
 * can swap in a new set while requests in flight finish on the old one.
 * See docs/policy.md for the file format.
 */
#ifndef ISG_POLICY_H
#define ISG_POLICY_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pseudo/pseudo.h"
#include "util/util.h"
#include "wire/wire.h"
#include "ydoc/ydoc.h"

#define POLICY_PARTNERS_FILE "partners.yaml"
#define POLICY_AGREEMENTS_DIR "agreements"
/* The most distinct linkage domains a policy set may name: isgd loads a key for each. */
#define POLICY_MAX_DOMAINS 256

enum partner_kind { PARTNER_POLICE, PARTNER_NHS, PARTNER_COUNCIL, PARTNER_OTHER };

/* What the TLS layer extracted from a verified client certificate. */
#define CERT_MAX_SANS 16
struct cert_identity {
	char subject[512]; /* one-line RFC 2253 subject, for logs and audit */
	char subject_cn[256];
	char issuer_cn[256];
	size_t n_san_uri, n_san_dns;
	char san_uri[CERT_MAX_SANS][256];
	char san_dns[CERT_MAX_SANS][256];
	uint8_t spki_sha256[32]; /* SHA-256 of the DER SubjectPublicKeyInfo */
};

/* How a partner's certificate is recognised; a partner lists one or more. */
/* MATCH_ISSUER_CN (the CN of the CA that issued the certificate) constrains: a partner
 * that lists it and other matchers is recognised only when one of its issuer_cn values
 * and one of its other matchers both match. */
enum cert_match_kind {
	MATCH_SUBJECT_CN,
	MATCH_SAN_URI,
	MATCH_SAN_DNS,
	MATCH_SPKI_SHA256,
	MATCH_ISSUER_CN
};
struct cert_match {
	enum cert_match_kind kind;
	char *value; /* text; for SPKI: lowercase hex */
	uint8_t spki[32];
};

struct policy_partner {
	char *id;   /* e.g. "met-police" */
	char *name; /* display name */
	enum partner_kind kind;
	size_t n_match;
	struct cert_match *match;
	char *contact; /* may be NULL */
};

enum field_type {
	FIELD_TEXT, /* any UTF-8 text */
	FIELD_INTEGER,
	FIELD_NUMBER, /* integer or real */
	FIELD_BOOLEAN,
	FIELD_DATE, /* text YYYY-MM-DD */
	/* identifier types; validated and normalised by the pseudo module */
	FIELD_NHS_NUMBER,
	FIELD_PNC_ID,
	FIELD_POSTCODE,
	FIELD_NAME,
	FIELD_EMAIL,
	FIELD_IDENTIFIER,
};

enum field_action { ACTION_PASS, ACTION_DROP, ACTION_GENERALISE, ACTION_PSEUDONYMISE };

/* What a generalise action turns a value into. */
enum generalise_to {
	GEN_NONE,
	GEN_YEAR,              /* date -> "1958" */
	GEN_AGE_BAND,          /* date of birth -> "65-69" (width years) at the exchange date */
	GEN_MONTH,             /* date -> "2026-11" */
	GEN_POSTCODE_AREA,     /* postcode -> "NE" */
	GEN_POSTCODE_DISTRICT, /* postcode -> "NE3" */
	GEN_POSTCODE_SECTOR,   /* postcode -> "NE3 4" */
	GEN_NUMBER_BAND,       /* integer or number -> "30-39" (width) */
};

struct policy_field {
	char *name;
	enum field_type type;
	enum field_action action;
	bool required;
	char *domain;                /* ACTION_PSEUDONYMISE: the linkage domain */
	enum generalise_to to;       /* ACTION_GENERALISE: into what */
	int64_t width;               /* GEN_AGE_BAND, GEN_NUMBER_BAND */
	int line, col;               /* where it was declared */
	int domain_line, domain_col; /* ACTION_PSEUDONYMISE: where the domain was named */
};

struct policy_dataset {
	char *name;
	size_t n_fields;
	struct policy_field *fields;
	bool unknown_drop; /* false: a record with an unknown field is refused */
};

struct policy_agreement {
	char *id;
	char *title;
	uint32_t version;
	char *file; /* source file, for messages */
	size_t n_senders, n_recipients;
	char **senders, **recipients; /* partner ids */
	char *purpose_code, *purpose_text;
	size_t n_lawful_basis;
	char **lawful_basis;
	int64_t valid_from_days;  /* days since 1970-01-01, UTC; inclusive */
	int64_t valid_until_days; /* inclusive; INT64_MAX when open-ended */
	size_t n_datasets;
	struct policy_dataset *datasets;
	uint32_t max_records_per_message; /* 0 = only the gateway's limit */
	int64_t undelivered_ttl_ms;       /* 0 = the gateway's default */
	bool allow_reply;     /* a message under it may name an earlier one in reply_to */
	size_t n_controllers; /* controllers: partner ids, may be empty */
	char **controllers;
	char *dpia; /* DPIA reference; NULL when absent */
	/* Daily limits per sending partner under this agreement, per UTC day; isgd
	 * enforces them (rules agreement.records_per_day, agreement.messages_per_day). */
	uint32_t records_per_day, messages_per_day; /* 0 = unlimited */
	int64_t review_days; /* review_date, days since 1970-01-01; INT64_MAX when absent */
};

struct policy_set {
	char version[65]; /* hex SHA-256 over every file's name and content */
	size_t n_partners, n_agreements;
	struct policy_partner *partners;
	struct policy_agreement *agreements;
	atomic_int refs; /* private: policy_set_ref and policy_set_unref only */
};

/*
 * Load every file of a policy directory: partners.yaml and every agreements/NAME.yaml.
 * All problems are collected in diags with file:line:column before failing.
 * Returns 0 (set has one reference; free with policy_set_unref), or the most
 * basic failure: ISG_ERR_IO, ISG_ERR_NOMEM, ISG_ERR_PARSE, then ISG_ERR_INVALID;
 * ISG_ERR_CRYPTO when libsodium cannot start. *out is NULL on failure.
 */
int policy_load(const char *dir, struct policy_set **out, struct ydoc_diags *diags);
/*
 * The files policy_load reads in dir, listed by the code that lists them
 * for it, so that a check of them (isgd's, as the user who reloads) judges
 * exactly those: partners.yaml, then each agreements/NAME.yaml whose name
 * does not start with '.' and that is a regular file or a link to one.
 * Directories, FIFOs and links that lead to no file are no agreements. fn
 * gets each one's path relative to dir and dir/rel, with errnum 0; or,
 * with the errno, the agreements directory when it cannot be listed, or an
 * entry whose type cannot be learnt (a link into a directory this process
 * may not enter), which policy_load reports rather than skips. The
 * listing stops at fn's first nonzero return, which it returns; otherwise
 * 0 or ISG_ERR_NOMEM. Not in any order.
 */
typedef int (*policy_file_fn)(void *ctx, const char *rel, const char *path, int errnum);
int policy_list_files(const char *dir, policy_file_fn fn, void *ctx);
struct policy_set *policy_set_ref(struct policy_set *set); /* thread-safe */
void policy_set_unref(struct policy_set *set);             /* NULL ok; frees at zero */

const struct policy_partner *policy_partner_by_id(const struct policy_set *set, const char *id);
/* The partner whose matchers recognise this certificate; NULL when none
 * does, or when more than one does (neither is recognised). */
const struct policy_partner *policy_partner_by_cert(const struct policy_set *set,
                                                    const struct cert_identity *id);
/* The first two partners whose matchers recognise it, in registry order;
 * how many there are (0, 1 or 2: two means two or more). */
size_t policy_partner_claimants(const struct policy_set *set, const struct cert_identity *id,
                                const struct policy_partner *out[2]);
const struct policy_agreement *policy_agreement_by_id(const struct policy_set *set, const char *id);
const char *policy_partner_kind_name(enum partner_kind kind);
const char *policy_field_type_name(enum field_type type);
const char *policy_field_action_name(enum field_action action);

/* Why a message was refused. The message never quotes a field's value. */
struct policy_refusal {
	Isg__ErrorCode code;
	char rule[64]; /* e.g. "agreement.sender", "dataset.unknown_field" */
	char message[512];
	int64_t record_index; /* -1 when not about one record */
	char field[128];      /* "" when not about one field */
	/* field is the sender's name for a field the dataset does not declare:
	 * for the sender's answer only, never for a log or the audit log. */
	bool field_undeclared;
};

/* What an accepted message becomes. */
struct policy_outcome {
	const struct policy_agreement *agreement; /* valid while the set is referenced */
	const struct policy_dataset *dataset;
	uint32_t record_count;
	uint8_t *payload; /* packed isg.Delivery holding only the transformed records */
	size_t payload_len;
};

/*
 * Apply the policy to a send request from `sender` at time `now_ms`:
 * find the agreement (request's agreement_id, sender and recipient named,
 * dataset declared, valid today in UTC, record limit), then check and
 * transform each record field by field. Returns 0 and fills `out` (free
 * with policy_outcome_release), or ISG_ERR_DENIED / ISG_ERR_INVALID and
 * fills `why`, or ISG_ERR_NOMEM, or what pseudo->checked returned.
 */
int policy_apply(const struct policy_set *set, const char *sender, const Isg__SendRequest *req,
                 int64_t now_ms, const struct pseudo_service *pseudo, struct policy_outcome *out,
                 struct policy_refusal *why);
/* The linkage domains the set's agreements name, sorted, each once: fills at most
 * max and returns how many there are (which may be more than max). */
size_t policy_domains(const struct policy_set *set, const char **out, size_t max);
/* Where an agreement first names linkage domain `domain` (its `domain:`), and for which
 * field; false if none does. */
bool policy_domain_named_at(const struct policy_set *set, const char *domain, const char **file,
                            int *line, int *col, const char **field);
void policy_outcome_release(struct policy_outcome *out);

/* ---- for admins and IG officers: isgctl policy check --keys, show and diff ---- */

/*
 * Report, as an error in diags at the field's `domain:`, every pseudonymised
 * field whose linkage domain has no key. missing(ctx, domain) returns NULL
 * when the domain has a key, or a short text saying what is missing (it ends
 * the message). Returns the number of errors added.
 */
/* The message of that error, which isgd's keys.missing_domain gives too. */
void policy_missing_key_message(char *buf, size_t size, const char *domain, const char *field,
                                const char *why);
size_t policy_check_domains(const struct policy_set *set,
                            const char *(*missing)(void *ctx, const char *domain), void *ctx,
                            struct ydoc_diags *diags);

/*
 * A plain-language summary of one agreement of the set for an IG officer:
 * who sends what to whom, why, on what basis, until when, and which fields
 * arrive in clear, generalised, pseudonymised or not at all. today_days
 * (UTC) marks an overdue review or an agreement not in force; INT64_MIN
 * leaves such remarks out. Appends to out; 0 or ISG_ERR_NOMEM.
 */
int policy_describe(const struct policy_set *set, const struct policy_agreement *a,
                    int64_t today_days, struct strbuf *out);

struct policy_diff_stats {
	size_t changes;  /* lines of change, each kind below included */
	size_t weakened; /* lines starting "! WEAKENED" */
	size_t strengthened;
};

/*
 * The privacy effect of replacing policy set old_set by new_set, one line
 * per change, grouped under the partner registry, each agreement and each
 * data flow (sender -> recipient, agreement, dataset). A change that shares
 * more, with less protection, for longer or with more partners starts with
 * "! WEAKENED"; see docs/policy.md. Appends nothing when the two sets share
 * the same. Appends to out; 0 or ISG_ERR_NOMEM.
 */
int policy_diff(const struct policy_set *old_set, const struct policy_set *new_set,
                struct strbuf *out, struct policy_diff_stats *stats);

/*
 * Whether two versions of an agreement have the same terms: everything
 * senders, recipients and the audit log take as its meaning (senders,
 * recipients, controllers, purpose, lawful basis, DPIA, validity, limits,
 * undelivered_ttl, allow_reply, datasets and their fields). Only the title,
 * review_date and the version itself are not terms; nor are comments,
 * layout and the order of list items. See docs/policy.md.
 */
bool policy_agreement_same_terms(const struct policy_agreement *a0,
                                 const struct policy_agreement *a1);
/*
 * For each agreement of new_set that old_set has too (by id) and whose
 * version went down, or stayed while its terms changed, fn(ctx, old, new)
 * (fn may be NULL), in new_set's order. Returns how many there are. A
 * recipient knows an agreement's terms by its id and version (each delivery
 * carries both, and so does each audit entry), so a change of terms must
 * raise the version.
 */
typedef void (*policy_version_issue_fn)(void *ctx, const struct policy_agreement *a0,
                                        const struct policy_agreement *a1);
size_t policy_version_issues(const struct policy_set *old_set, const struct policy_set *new_set,
                             policy_version_issue_fn fn, void *ctx);

#endif
