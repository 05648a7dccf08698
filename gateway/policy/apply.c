/*
 * Applying the policy to one SendRequest. Deny by default: the agreement is
 * found and checked first (who, what, when, how many), then every record
 * field by field against the dataset. A refusal names its rule; its message
 * names the agreement, record index and field, never a field's value.
 *
 * What a record becomes is built in arrays sized from the request itself
 * and packed into an isg.Delivery holding only the records. Values to
 * pseudonymise are collected from every record and sent to the
 * pseudonymisation service in one batch, only once the whole message has
 * passed every check: a refused message never reaches the keys.
 */
#include "policy/internal.h"

#include <math.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pseudo/pseudo.h"
#include "wire/wire.h"
#include "util/util.h"

#define CODE(name) ISG__ERROR_CODE__##name

static void refusal_init(struct policy_refusal *why)
{
	memset(why, 0, sizeof(*why));
	why->record_index = -1;
}

/* A name the sender chose, safe to put in a message: printable ASCII, at most 64 bytes. */
static const char *clean(char *buf, size_t size, const char *s)
{
	size_t n = 0;
	for (; s && s[n] && n + 1 < size && n < 64; n++) {
		unsigned char c = (unsigned char)s[n];
		buf[n] = c >= 0x20 && c < 0x7f ? (char)c : '?';
	}
	buf[n] = '\0';
	return buf;
}

static int refuse(struct policy_refusal *why, Isg__ErrorCode code, const char *rule, int64_t record,
                  const char *field, const char *fmt, ...) __attribute__((format(printf, 6, 7)));

static int refuse(struct policy_refusal *why, Isg__ErrorCode code, const char *rule, int64_t record,
                  const char *field, const char *fmt, ...)
{
	why->code = code;
	str_copy(why->rule, rule, sizeof(why->rule));
	why->record_index = record;
	clean(why->field, sizeof(why->field), field ? field : "");
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(why->message, sizeof(why->message), fmt, ap);
	va_end(ap);
	bool denied = code == CODE(NOT_PERMITTED) || code == CODE(LIMIT_EXCEEDED);
	return denied ? ISG_ERR_DENIED : ISG_ERR_INVALID;
}

static bool names(char *const *list, size_t n, const char *id)
{
	for (size_t i = 0; i < n; i++)
		if (strcmp(list[i], id) == 0)
			return true;
	return false;
}

/* The UTC day of now_ms, clamped so that no clock, however wrong, overflows day arithmetic. */
static int64_t today_utc(int64_t now_ms)
{
	const int64_t bound = (int64_t)1 << 50;
	return date_days_of_ms(now_ms < -bound ? -bound : now_ms > bound ? bound : now_ms);
}

static int check_validity(const struct policy_agreement *a, int64_t now_ms,
                          struct policy_refusal *why)
{
	int64_t today = today_utc(now_ms);
	if (today >= a->valid_from_days && today <= a->valid_until_days)
		return 0;
	char from[48], until[48], now[48];
	policy_format_day(from, a->valid_from_days);
	policy_format_day(now, today);
	if (a->valid_until_days == INT64_MAX)
		return refuse(why, CODE(NOT_PERMITTED), "agreement.validity", -1, NULL,
		              "agreement '%s' is valid from %s; today (UTC) is %s", a->id, from,
		              now);
	policy_format_day(until, a->valid_until_days);
	return refuse(why, CODE(NOT_PERMITTED), "agreement.validity", -1, NULL,
	              "agreement '%s' is valid from %s until %s; today (UTC) is %s", a->id, from,
	              until, now);
}

/* Who, what, when and how many: everything about the message as a whole. */
static int check_agreement(const struct policy_set *set, const char *sender,
                           const Isg__SendRequest *req, int64_t now_ms,
                           const struct policy_agreement **a_out,
                           const struct policy_dataset **ds_out, struct policy_refusal *why)
{
	char q[80], q2[80];
	const char *aid = req->agreement_id ? req->agreement_id : "";
	const struct policy_agreement *a = policy_agreement_by_id(set, aid);
	if (!a)
		return *aid ? refuse(why, CODE(NOT_PERMITTED), "agreement.unknown", -1, NULL,
		                     "no agreement '%s'", clean(q, sizeof(q), aid))
		            : refuse(why, CODE(NOT_PERMITTED), "agreement.unknown", -1, NULL,
		                     "the request names no agreement");
	if (!sender || !names(a->senders, a->n_senders, sender))
		return refuse(why, CODE(NOT_PERMITTED), "agreement.sender", -1, NULL,
		              "partner '%s' is not a sender under agreement '%s'",
		              clean(q, sizeof(q), sender), a->id);
	const char *rcpt = req->recipient ? req->recipient : "";
	if (!policy_partner_by_id(set, rcpt))
		return refuse(why, CODE(NOT_PERMITTED), "agreement.recipient", -1, NULL,
		              "unknown recipient '%s' (no such partner)",
		              clean(q, sizeof(q), rcpt));
	if (!names(a->recipients, a->n_recipients, rcpt))
		return refuse(why, CODE(NOT_PERMITTED), "agreement.recipient", -1, NULL,
		              "partner '%s' is not a recipient under agreement '%s'",
		              clean(q, sizeof(q), rcpt), a->id);
	/* A two-way agreement names each partner both ways, but a partner sent its
	 * own records back would get the pseudonyms of any identifier it chose: an
	 * oracle that undoes the pseudonymisation of the whole domain. */
	if (strcmp(rcpt, sender) == 0)
		return refuse(why, CODE(NOT_PERMITTED), "agreement.recipient", -1, NULL,
		              "partner '%s' cannot send to itself (agreement '%s')",
		              clean(q, sizeof(q), rcpt), a->id);
	const struct policy_dataset *ds = NULL;
	for (size_t i = 0; req->dataset && i < a->n_datasets; i++)
		if (strcmp(a->datasets[i].name, req->dataset) == 0)
			ds = &a->datasets[i];
	if (!ds)
		return refuse(why, CODE(NOT_PERMITTED), "agreement.dataset", -1, NULL,
		              "dataset '%s' is not declared by agreement '%s'",
		              clean(q2, sizeof(q2), req->dataset), a->id);
	int err = check_validity(a, now_ms, why);
	if (err)
		return err;
	if (req->reply_to != 0 && !a->allow_reply)
		return refuse(why, CODE(NOT_PERMITTED), "agreement.reply", -1, NULL,
		              "agreement '%s' does not allow replies (reply_to is set)", a->id);
	if (req->n_records == 0)
		return refuse(why, CODE(BAD_REQUEST), "request.records", -1, NULL,
		              "the request has no records");
	if (a->max_records_per_message && req->n_records > a->max_records_per_message)
		return refuse(why, CODE(LIMIT_EXCEEDED), "agreement.max_records", -1, NULL,
		              "%zu records exceed the limit of %u records per message under "
		              "agreement '%s'",
		              req->n_records, a->max_records_per_message, a->id);
	*a_out = a;
	*ds_out = ds;
	return 0;
}

/* ---- records ---- */

/*
 * A pseudonymised field takes two output places: its pseudonym, and right
 * after it "<name>.previous", filled only when the service answers with a
 * pseudonym under the previous key (a rotation's overlap). Empty places are
 * squeezed out once the service has answered.
 */
struct builder {
	const struct pseudo_service *pseudo;
	const struct policy_agreement *a;
	const struct policy_dataset *ds;
	int64_t today;                     /* the exchange date, UTC days */
	uint16_t order[POLICY_MAX_FIELDS]; /* dataset field indexes sorted by name */
	const Isg__Value *slot[POLICY_MAX_FIELDS];
	bool seen[POLICY_MAX_FIELDS];
	bool asked[POLICY_MAX_FIELDS];      /* a value of this field was pseudonymised */
	char *prev_name[POLICY_MAX_FIELDS]; /* "<name>.previous", made on first use */
	Isg__Record *recs;
	Isg__Record **rec_ptrs;
	Isg__Field *fields;
	Isg__Field **field_ptrs; /* NULL at an unused place */
	Isg__Value *values;
	size_t n_out, cap_out;
	struct pseudo_request *reqs; /* every value of the message to pseudonymise */
	size_t *req_out;             /* their output places */
	size_t n_reqs, cap_reqs;
	/* The text output values point at (normalised, generalised, pseudonyms)
	 * and the normalised values to pseudonymise, the newest chunk first. */
	struct text_chunk *text;
};

/*
 * Texts are copied into chunks that go, wiped, with the builder: a message
 * of 100 records has some 800 of them, and a malloc and a free for each
 * cost more than the copying.
 */
struct text_chunk {
	struct text_chunk *next;
	size_t used, size;
	char data[];
};

#define TEXT_CHUNK_MIN 4096
#define TEXT_CHUNK_MAX (1024 * 1024)

static char *text_copy(struct builder *b, const char *s, size_t len)
{
	struct text_chunk *c = b->text;
	if (!c || c->size - c->used <= len) {
		size_t size = c ? 2 * c->size : TEXT_CHUNK_MIN;
		if (size > TEXT_CHUNK_MAX)
			size = TEXT_CHUNK_MAX;
		if (size <= len)
			size = len + 1;
		if (!(c = malloc(sizeof(*c) + size)))
			return NULL;
		c->next = b->text;
		c->used = 0;
		c->size = size;
		b->text = c;
	}
	char *p = c->data + c->used;
	memcpy(p, s, len);
	p[len] = '\0';
	c->used += len + 1;
	return p;
}

static void sort_fields(struct builder *b)
{
	const struct policy_field *f = b->ds->fields;
	for (size_t i = 0; i < b->ds->n_fields; i++) {
		size_t k = i;
		for (; k > 0 && strcmp(f[b->order[k - 1]].name, f[i].name) > 0; k--)
			b->order[k] = b->order[k - 1];
		b->order[k] = (uint16_t)i;
	}
}

/* Index of the dataset field with this name, or -1. Records mostly list their
 * fields in the dataset's order, so position `at` is tried first. */
static int find_field(const struct builder *b, const char *name, size_t at)
{
	if (at < b->ds->n_fields && strcmp(name, b->ds->fields[at].name) == 0)
		return (int)at;
	size_t lo = 0, hi = b->ds->n_fields;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int c = strcmp(name, b->ds->fields[b->order[mid]].name);
		if (c == 0)
			return b->order[mid];
		if (c < 0)
			hi = mid;
		else
			lo = mid + 1;
	}
	return -1;
}

/* Numeric text: digits, sign, point and exponent only (no "inf", "nan" or hex). */
static bool parse_real(const char *s, double *out)
{
	size_t len = strlen(s), digits = 0;
	if (len == 0 || len > 64)
		return false;
	for (size_t i = 0; i < len; i++) {
		if (s[i] >= '0' && s[i] <= '9')
			digits++;
		else if (!strchr("+-.eE", s[i]))
			return false;
	}
	char *end;
	double d = strtod(s, &end);
	if (!digits || *end || !isfinite(d))
		return false;
	*out = d;
	return true;
}

enum pseudo_type policy_field_pseudo_type(enum field_type type)
{
	switch (type) {
	case FIELD_DATE:
		return PSEUDO_DATE;
	case FIELD_NHS_NUMBER:
		return PSEUDO_NHS_NUMBER;
	case FIELD_PNC_ID:
		return PSEUDO_PNC_ID;
	case FIELD_POSTCODE:
		return PSEUDO_POSTCODE;
	case FIELD_NAME:
		return PSEUDO_NAME;
	case FIELD_EMAIL:
		return PSEUDO_EMAIL;
	case FIELD_IDENTIFIER:
		return PSEUDO_IDENTIFIER;
	default:
		return 0;
	}
}

/*
 * Check a value against its declared type and write its canonical form.
 * Identifiers and dates are validated and normalised into norm, which out
 * then points at; *reason says why one is invalid (never quoting it).
 */
static bool convert(enum field_type type, const Isg__Value *in, Isg__Value *out,
                    char norm[static PSEUDO_VALUE_MAX + 1], const char **reason)
{
	isg__value__init(out);
	*reason = NULL;
	bool text = in->kind_case == ISG__VALUE__KIND_TEXT && in->text;
	int64_t i;
	double d;
	switch (type) {
	case FIELD_INTEGER:
		if (in->kind_case == ISG__VALUE__KIND_INTEGER)
			i = in->integer;
		else if (!text || str_to_i64(in->text, INT64_MIN, INT64_MAX, &i) != 0)
			return false;
		out->kind_case = ISG__VALUE__KIND_INTEGER;
		out->integer = i;
		return true;
	case FIELD_NUMBER: {
		int rc = text ? str_to_i64(in->text, INT64_MIN, INT64_MAX, &i) : ISG_ERR_PARSE;
		if (in->kind_case == ISG__VALUE__KIND_INTEGER || rc == 0) {
			out->kind_case = ISG__VALUE__KIND_INTEGER;
			out->integer = text ? i : in->integer;
			return true;
		}
		if (rc == ISG_ERR_INVALID)
			return false; /* integer text past 64 bits: not rounded into a real */
		if (in->kind_case == ISG__VALUE__KIND_REAL && isfinite(in->real))
			d = in->real;
		else if (!text || !parse_real(in->text, &d))
			return false;
		out->kind_case = ISG__VALUE__KIND_REAL;
		out->real = d;
		return true;
	}
	case FIELD_BOOLEAN:
		if (in->kind_case == ISG__VALUE__KIND_BOOLEAN) {
			out->boolean = in->boolean;
		} else if (text && (!strcmp(in->text, "true") || !strcmp(in->text, "false"))) {
			out->boolean = in->text[0] == 't';
		} else {
			return false;
		}
		out->kind_case = ISG__VALUE__KIND_BOOLEAN;
		return true;
	case FIELD_TEXT:
		if (!text)
			return false;
		break;
	default:
		if (!text)
			return false;
		if (pseudo_normalise(policy_field_pseudo_type(type), in->text, strlen(in->text),
		                     norm, reason) != 0)
			return false;
		/* Formats have one canonical spelling; names and addresses are folded only
		 * for hashing, so in clear they pass as written. */
		if (type == FIELD_NAME || type == FIELD_EMAIL || type == FIELD_IDENTIFIER)
			break;
		out->kind_case = ISG__VALUE__KIND_TEXT;
		out->text = norm;
		return true;
	}
	out->kind_case = ISG__VALUE__KIND_TEXT;
	out->text = in->text;
	return true;
}

static const char *expectation(enum field_type type)
{
	switch (type) {
	case FIELD_INTEGER:
		return "an integer (or its decimal text)";
	case FIELD_NUMBER:
		return "a finite number (or its text; integer text within 64 bits)";
	case FIELD_BOOLEAN:
		return "a boolean (or the text true or false)";
	case FIELD_DATE:
		return "a date as text YYYY-MM-DD";
	default:
		return "text";
	}
}

/* Sort each field of the record into its dataset slot. */
static int collect_fields(struct builder *b, const Isg__Record *rec, int64_t ri,
                          struct policy_refusal *why)
{
	memset(b->slot, 0, b->ds->n_fields * sizeof(b->slot[0]));
	memset(b->seen, 0, b->ds->n_fields * sizeof(b->seen[0]));
	for (size_t i = 0; i < rec->n_fields; i++) {
		const Isg__Field *f = rec->fields[i];
		const char *name = f && f->name ? f->name : "";
		int k = find_field(b, name, i);
		if (k < 0) {
			if (b->ds->unknown_drop)
				continue;
			/* The sender's name for it, not one the policy declares: told
			 * back to the sender only if it has a field name's shape (a
			 * CSV without its header row would name a person's data),
			 * never kept (field_undeclared), never in the message. */
			refuse(why, CODE(UNKNOWN_FIELD), "dataset.unknown_field", ri,
			       str_field_name(name, strlen(name)) ? name : "",
			       "record %lld: its field at position %zu is not in dataset '%s' of "
			       "agreement '%s'",
			       (long long)ri, i, b->ds->name, b->a->id);
			why->field_undeclared = true;
			return ISG_ERR_INVALID;
		}
		if (b->seen[k])
			return refuse(
			    why, CODE(BAD_VALUE), "dataset.duplicate_field", ri, name,
			    "record %lld: field '%s' appears more than once (dataset '%s' "
			    "of agreement '%s')",
			    (long long)ri, b->ds->fields[k].name, b->ds->name, b->a->id);
		b->seen[k] = true;
		/* A field without a value, or a value of no kind, counts as absent. */
		if (f && f->value && f->value->kind_case != ISG__VALUE__KIND__NOT_SET)
			b->slot[k] = f->value;
	}
	return 0;
}

static int refuse_value(const struct builder *b, const struct policy_field *pf, int64_t ri,
                        const char *reason, struct policy_refusal *why)
{
	return refuse(why, CODE(BAD_VALUE), "dataset.field_value", ri, pf->name,
	              "record %lld: field '%s' is not a valid %s: %s (dataset '%s' of agreement "
	              "'%s')",
	              (long long)ri, pf->name, policy_field_type_name(pf->type), reason,
	              b->ds->name, b->a->id);
}

/* The next output place, with the field's name; NULL when the arrays are full. */
static Isg__Field *out_field(struct builder *b, const char *name)
{
	if (b->n_out == b->cap_out)
		return NULL;
	size_t o = b->n_out++;
	isg__value__init(&b->values[o]);
	isg__field__init(&b->fields[o]);
	b->fields[o].name = (char *)name;
	b->fields[o].value = &b->values[o];
	b->field_ptrs[o] = &b->fields[o];
	return &b->fields[o];
}

static int out_text(struct builder *b, size_t o, const char *text)
{
	if (!(b->values[o].text = text_copy(b, text, strlen(text))))
		return ISG_ERR_NOMEM;
	b->values[o].kind_case = ISG__VALUE__KIND_TEXT;
	return 0;
}

/* A real number rounded down, when it fits in an int64 (no libm). */
static bool floor_i64(double d, int64_t *out)
{
	if (!(d >= -9223372036854775808.0 && d < 9223372036854775808.0))
		return false;
	int64_t t = (int64_t)d; /* toward zero */
	*out = (double)t > d ? t - 1 : t;
	return true;
}

/* The value (checked and normalised into v and norm) generalised as the field says. */
static int generalise(const struct builder *b, const struct policy_field *pf, const Isg__Value *v,
                      const char *norm, char *out, size_t size, const char **reason)
{
	int64_t n;
	switch (pf->to) {
	case GEN_YEAR:
		return pseudo_gen_year(norm, out, size, reason);
	case GEN_AGE_BAND:
		return pseudo_gen_age_band(norm, b->today, (unsigned)pf->width, out, size, reason);
	case GEN_MONTH:
		return pseudo_gen_month(norm, out, size, reason);
	case GEN_POSTCODE_AREA:
		return pseudo_gen_postcode(norm, POSTCODE_AREA, out, size, reason);
	case GEN_POSTCODE_DISTRICT:
		return pseudo_gen_postcode(norm, POSTCODE_DISTRICT, out, size, reason);
	case GEN_POSTCODE_SECTOR:
		return pseudo_gen_postcode(norm, POSTCODE_SECTOR, out, size, reason);
	case GEN_NUMBER_BAND:
		if (v->kind_case == ISG__VALUE__KIND_INTEGER)
			n = v->integer;
		else if (v->kind_case != ISG__VALUE__KIND_REAL || !floor_i64(v->real, &n))
			break;
		return pseudo_gen_number_band(n, pf->width, out, size, reason);
	case GEN_NONE:
		break;
	}
	*reason = "the value cannot be banded";
	return ISG_ERR_INVALID;
}

static int add_generalised(struct builder *b, const struct policy_field *pf, const Isg__Value *v,
                           const char *norm, int64_t ri, struct policy_refusal *why)
{
	char text[64];
	const char *reason = "invalid value";
	if (generalise(b, pf, v, norm, text, sizeof(text), &reason) != 0)
		return refuse(why, CODE(BAD_VALUE), "dataset.field_value", ri, pf->name,
		              "record %lld: field '%s' cannot be generalised to %s: %s (dataset "
		              "'%s' of agreement '%s')",
		              (long long)ri, pf->name, policy_generalise_to_name(pf->to), reason,
		              b->ds->name, b->a->id);
	if (!out_field(b, pf->name))
		return ISG_ERR_LIMIT;
	return out_text(b, b->n_out - 1, text);
}

/* Two output places and a request to the service, answered once the message is checked. */
static int add_pseudonymised(struct builder *b, size_t k, const char *norm)
{
	const struct policy_field *pf = &b->ds->fields[k];
	if (b->n_reqs == b->cap_reqs || b->cap_out - b->n_out < 2)
		return ISG_ERR_LIMIT;
	if (!b->prev_name[k]) {
		size_t len = strlen(pf->name);
		if (!(b->prev_name[k] = malloc(len + sizeof(".previous"))))
			return ISG_ERR_NOMEM;
		memcpy(b->prev_name[k], pf->name, len);
		memcpy(b->prev_name[k] + len, ".previous", sizeof(".previous"));
	}
	size_t q = b->n_reqs, len = strlen(norm);
	struct pseudo_request *r = &b->reqs[q];
	memset(r, 0, sizeof(*r));
	if (!(r->norm = text_copy(b, norm, len)))
		return ISG_ERR_NOMEM;
	b->n_reqs++;
	r->domain = pf->domain;
	r->type = policy_field_pseudo_type(pf->type);
	r->len = len;
	b->req_out[q] = b->n_out;
	b->asked[k] = true;
	out_field(b, pf->name);
	out_field(b, b->prev_name[k]);
	b->field_ptrs[b->n_out - 1] = NULL; /* until there is a previous pseudonym */
	return 0;
}

/* What the field's action makes of a checked value: nothing, itself, or something else. */
static int add_output(struct builder *b, size_t k, Isg__Value v, const char *norm, int64_t ri,
                      struct policy_refusal *why)
{
	const struct policy_field *pf = &b->ds->fields[k];
	switch (pf->action) {
	case ACTION_DROP:
		return 0;
	case ACTION_GENERALISE:
		return add_generalised(b, pf, &v, norm, ri, why);
	case ACTION_PSEUDONYMISE:
		return add_pseudonymised(b, k, norm);
	case ACTION_PASS:
		break;
	}
	if (!out_field(b, pf->name))
		return ISG_ERR_LIMIT;
	size_t o = b->n_out - 1;
	if (v.kind_case == ISG__VALUE__KIND_TEXT && v.text == norm)
		return out_text(b, o, norm);
	b->values[o] = v;
	return 0;
}

/* Check the record's fields in declared order and append what the actions make of them. */
static int build_record(struct builder *b, const Isg__Record *rec, int64_t ri,
                        struct policy_refusal *why)
{
	int err = collect_fields(b, rec, ri, why);
	if (err)
		return err;
	size_t first = b->n_out;
	for (size_t k = 0; k < b->ds->n_fields; k++) {
		const struct policy_field *pf = &b->ds->fields[k];
		if (!b->slot[k]) {
			if (pf->required)
				return refuse(
				    why, CODE(MISSING_FIELD), "dataset.required_field", ri,
				    pf->name,
				    "record %lld: required field '%s' is missing (dataset "
				    "'%s' of agreement '%s')",
				    (long long)ri, pf->name, b->ds->name, b->a->id);
			continue;
		}
		Isg__Value v;
		char norm[PSEUDO_VALUE_MAX + 1];
		const char *reason;
		if (!convert(pf->type, b->slot[k], &v, norm, &reason) && reason)
			return refuse_value(b, pf, ri, reason, why);
		if (v.kind_case == ISG__VALUE__KIND__NOT_SET)
			return refuse(why, CODE(BAD_VALUE), "dataset.field_type", ri, pf->name,
			              "record %lld: field '%s' (type %s) must be %s (dataset '%s' "
			              "of agreement '%s')",
			              (long long)ri, pf->name, policy_field_type_name(pf->type),
			              expectation(pf->type), b->ds->name, b->a->id);
		enum pseudo_type t = policy_field_pseudo_type(pf->type);
		if (t && b->pseudo && b->pseudo->checked &&
		    (err = b->pseudo->checked(b->pseudo->ctx, t, norm, strlen(norm))) != 0)
			return err;
		err = add_output(b, k, v, norm, ri, why);
		if (err == ISG_ERR_LIMIT)
			return refuse(why, CODE(INTERNAL), "internal", ri, NULL,
			              "record %lld: output larger than its input", (long long)ri);
		if (err)
			return err;
	}
	Isg__Record *r = &b->recs[ri];
	isg__record__init(r);
	r->n_fields = b->n_out - first;
	r->fields = r->n_fields ? &b->field_ptrs[first] : NULL;
	b->rec_ptrs[ri] = r;
	return 0;
}

/* "linkage domain 'a'" or "linkage domains 'a', 'b'": what the message needed. */
static const char *asked_domains(const struct builder *b, char *buf, size_t size)
{
	size_t used = 0, n = 0;
	char list[200] = "";
	for (size_t k = 0; k < b->ds->n_fields && used < sizeof(list); k++) {
		if (!b->asked[k])
			continue;
		const char *d = b->ds->fields[k].domain;
		bool dup = false;
		for (size_t j = 0; j < k && !dup; j++)
			dup = b->asked[j] && strcmp(b->ds->fields[j].domain, d) == 0;
		if (dup)
			continue;
		int w = snprintf(list + used, sizeof(list) - used, "%s'%s'", n++ ? ", " : "", d);
		used += w > 0 ? (size_t)w : 0;
	}
	snprintf(buf, size, "linkage domain%s %s", n > 1 ? "s" : "", list);
	return buf;
}

static bool answered(const char *text, bool may_be_empty)
{
	size_t len = strnlen(text, PSEUDO_TEXT_MAX);
	return len < PSEUDO_TEXT_MAX && (len > 0 || may_be_empty);
}

/*
 * One call to the pseudonymisation service for the whole message, then the
 * answers into their places. A missing key is the gateway's fault, not the
 * sender's: isgd checks at start that every domain has one.
 */
static int pseudonymise_all(struct builder *b, struct policy_refusal *why)
{
	const struct pseudo_service *pseudo = b->pseudo;
	if (b->n_reqs == 0)
		return 0;
	char domains[256];
	int err = pseudo && pseudo->pseudonymise
	              ? pseudo->pseudonymise(pseudo->ctx, b->reqs, b->n_reqs, b->today)
	              : ISG_ERR_NOT_FOUND;
	if (err == ISG_ERR_NOMEM)
		return err;
	for (size_t q = 0; !err && q < b->n_reqs; q++)
		if (!answered(b->reqs[q].out, false) || !answered(b->reqs[q].previous, true))
			err = ISG_ERR_CORRUPT;
	if (err)
		return refuse(why, CODE(INTERNAL), "keys.domain", -1, NULL,
		              err == ISG_ERR_NOT_FOUND
		                  ? "the gateway has no key for %s (agreement '%s')"
		                  : "pseudonymisation failed for %s (agreement '%s')",
		              asked_domains(b, domains, sizeof(domains)), b->a->id);
	for (size_t q = 0; q < b->n_reqs; q++) {
		size_t o = b->req_out[q];
		if ((err = out_text(b, o, b->reqs[q].out)) != 0)
			return err;
		if (!b->reqs[q].previous[0])
			continue;
		if ((err = out_text(b, o + 1, b->reqs[q].previous)) != 0)
			return err;
		b->field_ptrs[o + 1] = &b->fields[o + 1];
	}
	return 0;
}

/* Squeeze the unused places out of each record's fields. */
static void compact_records(struct builder *b, size_t n_records)
{
	for (size_t i = 0; i < n_records; i++) {
		Isg__Record *r = b->rec_ptrs[i];
		size_t kept = 0;
		for (size_t k = 0; k < r->n_fields; k++)
			if (r->fields[k])
				r->fields[kept++] = r->fields[k];
		r->n_fields = kept;
		if (!kept)
			r->fields = NULL;
	}
}

static void builder_release(struct builder *b)
{
	free(b->recs);
	free(b->rec_ptrs);
	free(b->fields);
	free(b->field_ptrs);
	free(b->values);
	for (size_t i = 0; i < POLICY_MAX_FIELDS; i++)
		free(b->prev_name[i]);
	for (struct text_chunk *c = b->text, *next; c; c = next) {
		next = c->next;
		sodium_memzero(c->data, c->used); /* personal data, normalised */
		free(c);
	}
	free(b->req_out);
	free(b->reqs);
}

/*
 * Output arrays: an input field gives at most two output places (a pseudonym
 * and its previous), and a record no more than its dataset's actions make.
 */
static int builder_alloc(struct builder *b, const Isg__SendRequest *req)
{
	size_t per_record = 0, n_pseudo = 0, total = 0;
	for (size_t k = 0; k < b->ds->n_fields; k++) {
		enum field_action a = b->ds->fields[k].action;
		per_record += a == ACTION_PSEUDONYMISE ? 2 : a != ACTION_DROP;
		n_pseudo += a == ACTION_PSEUDONYMISE;
	}
	for (size_t i = 0; i < req->n_records; i++)
		total += req->records[i] ? req->records[i]->n_fields : 0;
	/* per_record <= 512 and n_records is bounded by the frame: no overflow. */
	per_record *= req->n_records;
	n_pseudo *= req->n_records;
	b->cap_out = 2 * total < per_record ? 2 * total : per_record;
	b->cap_reqs = total < n_pseudo ? total : n_pseudo;
	size_t cap = b->cap_out ? b->cap_out : 1, cap_reqs = b->cap_reqs ? b->cap_reqs : 1;
	/* Not zeroed (some 100 KB at 100 records): build_record fills each
	 * record, out_field each output place, as it takes them. */
	size_t n_recs = req->n_records ? req->n_records : 1;
	b->recs = malloc(n_recs * sizeof(*b->recs));
	b->rec_ptrs = malloc(n_recs * sizeof(*b->rec_ptrs));
	b->fields = malloc(cap * sizeof(*b->fields));
	b->field_ptrs = malloc(cap * sizeof(*b->field_ptrs));
	b->values = malloc(cap * sizeof(*b->values));
	b->reqs = malloc(cap_reqs * sizeof(*b->reqs));
	b->req_out = malloc(cap_reqs * sizeof(*b->req_out));
	if (!b->recs || !b->rec_ptrs || !b->fields || !b->field_ptrs || !b->values || !b->reqs ||
	    !b->req_out)
		return ISG_ERR_NOMEM;
	return 0;
}

static int pack_delivery(struct builder *b, size_t n_records, struct policy_outcome *out)
{
	out->payload = wire_pack_delivery_records(b->rec_ptrs, n_records, &out->payload_len);
	return out->payload ? 0 : ISG_ERR_NOMEM;
}

int policy_apply(const struct policy_set *set, const char *sender, const Isg__SendRequest *req,
                 int64_t now_ms, const struct pseudo_service *pseudo, struct policy_outcome *out,
                 struct policy_refusal *why)
{
	memset(out, 0, sizeof(*out));
	refusal_init(why);
	if (!set || !req)
		return refuse(why, CODE(BAD_REQUEST), "request.invalid", -1, NULL,
		              "no request or no policy");
	int err = ISG_ERR_NOMEM;
	struct builder *b = calloc(1, sizeof(*b));
	if (!b)
		goto out;
	err = check_agreement(set, sender, req, now_ms, &b->a, &b->ds, why);
	if (err)
		goto out;
	if (b->ds->n_fields > POLICY_MAX_FIELDS) {
		err = refuse(why, CODE(INTERNAL), "internal", -1, NULL, "dataset too large");
		goto out;
	}
	sort_fields(b);
	b->pseudo = pseudo;
	b->today = today_utc(now_ms);
	if ((err = builder_alloc(b, req)) != 0)
		goto out;
	for (size_t i = 0; i < req->n_records; i++) {
		static const Isg__Record empty = ISG__RECORD__INIT;
		const Isg__Record *rec = req->records[i] ? req->records[i] : &empty;
		if ((err = build_record(b, rec, (int64_t)i, why)) != 0)
			goto out;
	}
	if ((err = pseudonymise_all(b, why)) != 0)
		goto out;
	compact_records(b, req->n_records);
	if ((err = pack_delivery(b, req->n_records, out)) != 0)
		goto out;
	out->agreement = b->a;
	out->dataset = b->ds;
	out->record_count = (uint32_t)req->n_records;
out:
	if (b)
		builder_release(b);
	free(b);
	if (err == ISG_ERR_NOMEM) {
		policy_outcome_release(out);
		refuse(why, CODE(INTERNAL), "internal", -1, NULL, "out of memory");
	}
	return err;
}

void policy_outcome_release(struct policy_outcome *out)
{
	if (!out)
		return;
	free(out->payload);
	memset(out, 0, sizeof(*out));
}
