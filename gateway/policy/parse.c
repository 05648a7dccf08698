/*
 * From parsed YAML to partners and agreements. Each key is read by a small
 * typed reader that reports a positioned error and carries on, so one pass
 * over a file finds every problem in it. A new key is a new row of a key
 * list (docs/policy.schema.json must follow: a test compares them) and a
 * new reader. A last pass over the whole set (policy_check_set) warns
 * about combinations of agreements.
 */
#include "policy/internal.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "util/util.h"

struct pctx {
	struct policy_parser *p;
	struct ydoc_diags *d;
	const char *file;
};

#define PERR(c, at, ...) ydoc_error((c)->d, (c)->file, (at), __VA_ARGS__)

/* What the readers below return. */
enum got { GOT_ERROR = -1, GOT_NONE = 0, GOT_VALUE = 1 };

static const char *kind_name(enum ydoc_kind k)
{
	return k == YDOC_MAP ? "a mapping" : k == YDOC_SEQ ? "a list" : "a single value";
}

/*
 * A key written without a value counts as absent: a plain scalar that YAML
 * 1.2's core schema (the schema's and editors') reads as null, that is
 * empty, "~", "null", "Null" or "NULL". Quoted, each is text.
 */
static bool is_null(const struct ydoc_node *n)
{
	static const char *const nulls[] = {"", "~", "null", "Null", "NULL"};
	if (n->kind != YDOC_SCALAR || n->quoted)
		return false;
	for (size_t i = 0; i < ARRAY_LEN(nulls); i++)
		if (strcmp(n->scalar, nulls[i]) == 0)
			return true;
	return false;
}

static bool want_kind(struct pctx *c, const struct ydoc_node *n, enum ydoc_kind kind,
                      const char *what)
{
	if (n->kind == kind)
		return true;
	PERR(c, n, "%s must be %s, not %s", what, kind_name(kind), kind_name(n->kind));
	return false;
}

/* The value of map[key]; reports a missing required key at the map. */
static const struct ydoc_node *lookup(struct pctx *c, const struct ydoc_node *map, const char *key,
                                      const char *where, bool required, enum got *got)
{
	const struct ydoc_node *n = ydoc_get(map, key);
	if (!n || is_null(n)) {
		if (required)
			PERR(c, n ? n : map, "missing required key '%s' in %s", key, where);
		*got = required ? GOT_ERROR : GOT_NONE;
		return NULL;
	}
	*got = GOT_VALUE;
	return n;
}

/* The name node an item of a list gives itself under key; NULL when it gives none. */
static const struct ydoc_node *item_name(const struct ydoc_node *item, const char *key)
{
	const struct ydoc_node *n = item->kind == YDOC_MAP ? ydoc_get(item, key) : NULL;
	return n && n->kind == YDOC_SCALAR && !is_null(n) ? n : NULL;
}

/*
 * The name node of the first item before list->items[i] that gives itself
 * this name, for a duplicate's error to say where that one is; NULL if none.
 * Judged on what the file says, not on what loaded, so that a name given
 * twice is reported even when the first of the two has an error of its own.
 */
static const struct ydoc_node *named_before(const struct ydoc_node *list, size_t i, const char *key,
                                            const char *name)
{
	for (size_t k = 0; k < i; k++) {
		const struct ydoc_node *other = item_name(list->items[k], key);
		if (other && strcmp(other->scalar, name) == 0)
			return other;
	}
	return NULL;
}

static bool printable(const char *s)
{
	for (; *s; s++)
		if ((unsigned char)*s < 0x20 || *s == 0x7f)
			return false;
	return true;
}

/*
 * Characters (Unicode code points) in s, as docs/policy.md and the schema's
 * maxLength count them, not bytes: a title in Welsh or Polish must not be cut
 * to half. Scalars are valid UTF-8 without NUL (libyaml refuses other input and
 * invalid escapes, ydoc a NUL), so counting the bytes that start a character
 * is exact; a text of max characters holds at most 4 * max bytes.
 */
static size_t utf8_chars(const char *s)
{
	size_t n = 0;
	for (; *s; s++)
		n += ((unsigned char)*s & 0xc0) != 0x80;
	return n;
}

static enum got dup_text(struct pctx *c, const struct ydoc_node *n, const char *what, size_t max,
                         char **out)
{
	if (!want_kind(c, n, YDOC_SCALAR, what))
		return GOT_ERROR;
	size_t len = utf8_chars(n->scalar);
	if (len == 0 || len > max) {
		PERR(c, n, "%s must be 1 to %zu characters long", what, max);
		return GOT_ERROR;
	}
	if (!(*out = strdup(n->scalar))) {
		PERR(c, n, "out of memory");
		return GOT_ERROR;
	}
	return GOT_VALUE;
}

/* Free text such as a title or a purpose (newlines allowed). */
static enum got text_at(struct pctx *c, const struct ydoc_node *map, const char *key,
                        const char *where, bool required, size_t max, char **out)
{
	enum got got;
	const struct ydoc_node *n = lookup(c, map, key, where, required, &got);
	return n ? dup_text(c, n, key, max, out) : got;
}

/* [a-z0-9][a-z0-9-]{0,62}: partner and agreement ids, dataset names, purpose codes. */
static bool valid_id(const char *s)
{
	size_t len = strlen(s);
	if (len == 0 || len > POLICY_ID_MAX || s[0] == '-')
		return false;
	for (size_t i = 0; i < len; i++)
		if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '-'))
			return false;
	return true;
}

static enum got id_value(struct pctx *c, const struct ydoc_node *n, const char *what, char **out)
{
	if (!want_kind(c, n, YDOC_SCALAR, what))
		return GOT_ERROR;
	if (!valid_id(n->scalar)) {
		PERR(c, n,
		     "invalid %s '%s' (use lowercase letters, digits and '-', starting with a "
		     "letter or digit, at most 63 characters)",
		     what, n->scalar);
		return GOT_ERROR;
	}
	return dup_text(c, n, what, POLICY_ID_MAX, out);
}

static enum got id_at(struct pctx *c, const struct ydoc_node *map, const char *key,
                      const char *where, const char *what, char **out, const struct ydoc_node **at)
{
	enum got got;
	const struct ydoc_node *n = lookup(c, map, key, where, true, &got);
	if (at)
		*at = n;
	return n ? id_value(c, n, what, out) : got;
}

/*
 * Booleans and numbers are what YAML 1.2's core schema (the editor schema's)
 * reads as such: plain scalars. A quoted "true" or "1" is text there, so it
 * is refused here too rather than read two ways.
 */
static bool is_core_bool(const char *s, bool *value)
{
	static const char *const t[] = {"true", "True", "TRUE"};
	static const char *const f[] = {"false", "False", "FALSE"};
	for (size_t i = 0; i < ARRAY_LEN(t); i++) {
		if (strcmp(s, t[i]) == 0 || strcmp(s, f[i]) == 0) {
			*value = strcmp(s, t[i]) == 0;
			return true;
		}
	}
	return false;
}

static enum got bool_at(struct pctx *c, const struct ydoc_node *map, const char *key,
                        const char *where, bool *out)
{
	enum got got;
	const struct ydoc_node *n = lookup(c, map, key, where, false, &got);
	if (!n)
		return got;
	if (!want_kind(c, n, YDOC_SCALAR, key))
		return GOT_ERROR;
	if (n->quoted || !is_core_bool(n->scalar, out)) {
		PERR(c, n, "'%s' must be true or false (unquoted), not %s'%s'", key,
		     n->quoted ? "the text " : "", n->scalar);
		return GOT_ERROR;
	}
	return GOT_VALUE;
}

static enum got int_at(struct pctx *c, const struct ydoc_node *map, const char *key,
                       const char *where, bool required, int64_t min, int64_t max, int64_t *out)
{
	enum got got;
	const struct ydoc_node *n = lookup(c, map, key, where, required, &got);
	if (!n)
		return got;
	if (!want_kind(c, n, YDOC_SCALAR, key))
		return GOT_ERROR;
	/* YAML 1.2 allows a plus sign; str_to_i64 does not. */
	const char *digits = n->scalar[0] == '+' && n->scalar[1] != '-' ? n->scalar + 1 : n->scalar;
	if (n->quoted) {
		PERR(c, n,
		     "'%s' must be a whole number from %lld to %lld (unquoted), not the text '%s'",
		     key, (long long)min, (long long)max, n->scalar);
		return GOT_ERROR;
	}
	if (str_to_i64(digits, min, max, out) != 0) {
		PERR(c, n, "invalid %s '%s' (use a whole number from %lld to %lld)", key, n->scalar,
		     (long long)min, (long long)max);
		return GOT_ERROR;
	}
	return GOT_VALUE;
}

/* Whether s is written YYYY-MM-DD, so that a refusal is of the day, not the form. */
static bool date_shaped(const char *s)
{
	for (int i = 0; i < 10; i++)
		if (i == 4 || i == 7 ? s[i] != '-' : (s[i] < '0' || s[i] > '9'))
			return false;
	return s[10] == '\0';
}

static enum got date_at(struct pctx *c, const struct ydoc_node *map, const char *key,
                        const char *where, bool required, int64_t *days,
                        const struct ydoc_node **at)
{
	enum got got;
	const struct ydoc_node *n = lookup(c, map, key, where, required, &got);
	*at = n;
	if (!n)
		return got;
	if (!want_kind(c, n, YDOC_SCALAR, key))
		return GOT_ERROR;
	if (date_parse_days(n->scalar, days) != 0) {
		if (date_shaped(n->scalar))
			PERR(c, n, "invalid date '%s' for %s (no such day in the calendar)",
			     n->scalar, key);
		else
			PERR(c, n, "invalid date '%s' for %s (use YYYY-MM-DD)", n->scalar, key);
		return GOT_ERROR;
	}
	/* Before 1970 no exchange was ever made: a year 0000 is a typing slip. */
	if (*days < 0) {
		PERR(c, n, "invalid date '%s' for %s (the year must be from 1970 to 9999)",
		     n->scalar, key);
		return GOT_ERROR;
	}
	return GOT_VALUE;
}

static enum got duration_at(struct pctx *c, const struct ydoc_node *map, const char *key,
                            const char *where, int64_t *ms)
{
	enum got got;
	const struct ydoc_node *n = lookup(c, map, key, where, false, &got);
	if (!n)
		return got;
	if (!want_kind(c, n, YDOC_SCALAR, key))
		return GOT_ERROR;
	if (str_to_duration_ms(n->scalar, ms) != 0) {
		PERR(c, n, "invalid duration '%s' for %s (use e.g. 12h, 14d)", n->scalar, key);
		return GOT_ERROR;
	}
	if (*ms < 1000 || *ms > POLICY_TTL_MAX_MS) {
		PERR(c, n, "duration '%s' for %s is out of range (1s to 365d)", n->scalar, key);
		return GOT_ERROR;
	}
	return GOT_VALUE;
}

/* One of a fixed set of words, by name; `what` names the key in messages. */
static int word_value(struct pctx *c, const struct ydoc_node *n, const struct policy_name *names,
                      size_t count, const char *what)
{
	if (!want_kind(c, n, YDOC_SCALAR, what))
		return -1;
	char choices[256] = "";
	size_t used = 0;
	for (size_t i = 0; i < count; i++) {
		if (strcmp(n->scalar, names[i].name) == 0)
			return names[i].value;
		if (used >= sizeof(choices))
			continue;
		const char *sep = i == 0 ? "" : i + 1 == count ? " or " : ", ";
		int w =
		    snprintf(choices + used, sizeof(choices) - used, "%s%s", sep, names[i].name);
		used += w > 0 ? (size_t)w : 0;
	}
	PERR(c, n, "unknown %s '%s' (use %s)", what, n->scalar, choices);
	return -1;
}

/*
 * The registry's partner id nearest to `id`, for a "did you mean" hint,
 * leaving out those the list already gave (listed[0..n)); NULL if none.
 */
static const char *partner_near_miss(const struct policy_set *set, const char *id,
                                     char *const *listed, size_t n)
{
	const char *best = NULL;
	size_t best_d = SIZE_MAX;
	for (size_t i = 0; i < set->n_partners; i++) {
		const char *p = set->partners[i].id;
		size_t d = ydoc_near_miss(id, p);
		bool given = false;
		for (size_t k = 0; k < n; k++)
			given |= strcmp(listed[k], p) == 0;
		if (d > 0 && d < best_d && !given) {
			best = p;
			best_d = d;
		}
	}
	return best;
}

/*
 * A list of partner ids. Each must name a partner of partners.yaml (when
 * that file loaded) and appear once.
 */
static enum got partner_list_at(struct pctx *c, const struct ydoc_node *map, const char *key,
                                const char *where, bool required, char ***out, size_t *n_out)
{
	enum got got;
	const struct ydoc_node *n = lookup(c, map, key, where, required, &got);
	if (!n)
		return got;
	if (!want_kind(c, n, YDOC_SEQ, key))
		return GOT_ERROR;
	if (n->n == 0 || n->n > POLICY_MAX_LIST) {
		PERR(c, n, "%s must list 1 to %d partners", key, POLICY_MAX_LIST);
		return GOT_ERROR;
	}
	if (!(*out = calloc(n->n, sizeof(**out)))) {
		PERR(c, n, "out of memory");
		return GOT_ERROR;
	}
	got = GOT_VALUE;
	for (size_t i = 0; i < n->n; i++) {
		const struct ydoc_node *item = n->items[i];
		char *id = NULL;
		if (id_value(c, item, "partner id", &id) != GOT_VALUE) {
			got = GOT_ERROR;
			continue;
		}
		bool twice = false;
		for (size_t k = 0; k < *n_out; k++)
			twice |= strcmp((*out)[k], id) == 0;
		if (twice) {
			PERR(c, item, "partner '%s' is listed twice in %s", id, key);
			got = GOT_ERROR;
		} else if (c->p->partners_ok && !policy_partner_by_id(c->p->set, id)) {
			const char *hint = partner_near_miss(c->p->set, id, *out, *n_out);
			if (hint)
				PERR(c, item,
				     "unknown partner '%s' in %s (not in %s; did you mean '%s'?)",
				     id, key, POLICY_PARTNERS_FILE, hint);
			else
				PERR(c, item, "unknown partner '%s' in %s (not in %s)", id, key,
				     POLICY_PARTNERS_FILE);
			got = GOT_ERROR;
		}
		(*out)[(*n_out)++] = id;
	}
	return got;
}

static enum got text_list_at(struct pctx *c, const struct ydoc_node *map, const char *key,
                             const char *where, size_t max_items, size_t max_len, char ***out,
                             size_t *n_out)
{
	enum got got;
	const struct ydoc_node *n = lookup(c, map, key, where, true, &got);
	if (!n)
		return got;
	if (!want_kind(c, n, YDOC_SEQ, key))
		return GOT_ERROR;
	if (n->n == 0 || n->n > max_items) {
		PERR(c, n, "%s must list 1 to %zu entries", key, max_items);
		return GOT_ERROR;
	}
	if (!(*out = calloc(n->n, sizeof(**out)))) {
		PERR(c, n, "out of memory");
		return GOT_ERROR;
	}
	got = GOT_VALUE;
	for (size_t i = 0; i < n->n; i++) {
		char *s = NULL;
		/* YAML reads an unquoted ~ or null as nothing, never as that text. */
		if (is_null(n->items[i])) {
			PERR(c, n->items[i],
			     "%s lists an empty value (quote it if it is meant literally)", key);
			got = GOT_ERROR;
		} else if (dup_text(c, n->items[i], key, max_len, &s) != GOT_VALUE) {
			got = GOT_ERROR;
		} else {
			(*out)[(*n_out)++] = s;
		}
	}
	return got;
}

/* ---- partners.yaml ---- */

const char *const policy_matcher_keys[] = {"subject_cn",  "san_uri",   "san_dns",
                                           "spki_sha256", "issuer_cn", NULL};

static int hex_digit(char ch)
{
	if (ch >= '0' && ch <= '9')
		return ch - '0';
	ch = (char)tolower((unsigned char)ch);
	return ch >= 'a' && ch <= 'f' ? ch - 'a' + 10 : -1;
}

static bool matcher_value_ok(struct pctx *c, const struct ydoc_node *n, enum cert_match_kind kind,
                             struct cert_match *m)
{
	const char *s = n->scalar;
	size_t len = strlen(s);
	const char *key = policy_matcher_keys[kind];
	switch (kind) {
	case MATCH_SUBJECT_CN:
	case MATCH_ISSUER_CN:
	case MATCH_SAN_URI:
		if (len == 0 || len > 255) {
			PERR(c, n, "invalid %s: it must be 1 to 255 bytes long, and is %s", key,
			     len ? "over 255 bytes" : "empty");
			return false;
		}
		if (!printable(s)) {
			PERR(c, n, "invalid %s: control characters are not allowed", key);
			return false;
		}
		if (kind == MATCH_SAN_URI && (!strchr(s, ':') || strpbrk(s, " \t"))) {
			PERR(c, n,
			     "invalid san_uri '%s' (use a URI with a scheme and no spaces, e.g. "
			     "'https://...', 'spiffe://...' or 'urn:...')",
			     s);
			return false;
		}
		break;
	case MATCH_SAN_DNS:
		for (size_t i = 0; i < len; i++) {
			char ch = s[i];
			if (!isalnum((unsigned char)ch) && ch != '-' && ch != '.')
				len = 0;
		}
		if (len == 0 || len > 253 || s[0] == '.' || s[0] == '-') {
			PERR(c, n, "invalid %s '%s' (use a DNS name such as partner.example)", key,
			     s);
			return false;
		}
		break;
	case MATCH_SPKI_SHA256:
		for (size_t i = 0; i < len && len == 64; i++)
			if (hex_digit(s[i]) < 0)
				len = 0;
		if (len != 64) {
			PERR(c, n, "invalid %s '%s' (use 64 hex digits)", key, s);
			return false;
		}
		for (size_t i = 0; i < 32; i++)
			m->spki[i] = (uint8_t)(hex_digit(s[2 * i]) << 4 | hex_digit(s[2 * i + 1]));
		break;
	}
	m->kind = kind;
	if (!(m->value = strdup(s))) {
		PERR(c, n, "out of memory");
		return false;
	}
	/* DNS names and hex compare without regard to case: store them folded. */
	if (kind == MATCH_SAN_DNS || kind == MATCH_SPKI_SHA256)
		for (char *q = m->value; *q; q++)
			*q = (char)tolower((unsigned char)*q);
	return true;
}

/* Whether one CA could have issued certificates both partners accept. */
static bool issuers_overlap(const struct policy_partner *a, const struct policy_partner *b)
{
	if (policy_partner_issuers(a) == 0 || policy_partner_issuers(b) == 0)
		return true;
	for (size_t k = 0; k < a->n_match; k++)
		if (a->match[k].kind == MATCH_ISSUER_CN &&
		    policy_partner_has_matcher(b, &a->match[k]))
			return true;
	return false;
}

/*
 * Two partners that would recognise one certificate by the same matcher
 * would be ambiguous: refuse it here. A shared subject matcher is fine when
 * both partners are constrained to different issuing CAs; a shared
 * issuer_cn is fine when both partners also have other matchers.
 */
static void check_matchers_unique(struct pctx *c, const struct policy_partner *self,
                                  const struct ydoc_node *const *at)
{
	const struct policy_set *set = c->p->set;
	size_t own_issuers = policy_partner_issuers(self);
	for (size_t k = 0; k < self->n_match; k++) {
		const struct cert_match *m = &self->match[k];
		for (size_t i = 0; i < set->n_partners; i++) {
			const struct policy_partner *q = &set->partners[i];
			if (!policy_partner_has_matcher(q, m))
				continue;
			if (m->kind != MATCH_ISSUER_CN && issuers_overlap(self, q)) {
				PERR(c, at[k],
				     "%s '%s' of partner '%s' is already used by partner '%s'",
				     policy_matcher_keys[m->kind], m->value,
				     self->id ? self->id : "?", q->id);
			} else if (m->kind == MATCH_ISSUER_CN &&
			           (own_issuers == self->n_match ||
			            policy_partner_issuers(q) == q->n_match)) {
				const char *alone = own_issuers == self->n_match
				                        ? (self->id ? self->id : "?")
				                        : q->id;
				PERR(
				    c, at[k],
				    "issuer_cn '%s' of partner '%s' is also used by partner '%s', "
				    "and "
				    "partner '%s' has no other matcher: every certificate from "
				    "that CA "
				    "would be claimed by both (add subject_cn, san_uri, san_dns or "
				    "spki_sha256)",
				    m->value, self->id ? self->id : "?", q->id, alone);
			}
		}
	}
}

/*
 * A partner recognised by issuer_cn alone claims every certificate of its
 * CA, and a partner with no issuer_cn accepts its own from any CA: if that
 * CA issued the second one's certificate, both recognise it, so neither
 * does, and the second partner is locked out (policy.md, "Matchers are
 * never ambiguous"). Whether it did is the CA's business, so this warns.
 */
static void warn_issuer_alone(struct pctx *c, const struct policy_partner *self,
                              const struct ydoc_node *at)
{
	const struct policy_set *set = c->p->set;
	bool self_alone = policy_partner_issuers(self) == self->n_match;
	for (size_t i = 0; i < set->n_partners; i++) {
		const struct policy_partner *q = &set->partners[i];
		bool q_alone = policy_partner_issuers(q) == q->n_match;
		const struct policy_partner *alone = self_alone ? self : q_alone ? q : NULL;
		const struct policy_partner *open = alone == self ? q : self;
		if (!alone || policy_partner_issuers(open) != 0)
			continue;
		ydoc_warning(c->d, c->file, at,
		             "partner '%s' is recognised by issuer_cn alone and partner '%s' has "
		             "no issuer_cn: a certificate of '%s' from that CA would be claimed "
		             "by both, and refused (give '%s' an issuer_cn)",
		             alone->id ? alone->id : "?", open->id ? open->id : "?",
		             open->id ? open->id : "?", open->id ? open->id : "?");
	}
}

static bool add_matcher(struct pctx *c, const struct ydoc_node *n, enum cert_match_kind kind,
                        struct policy_partner *pt, const struct ydoc_node **at)
{
	if (!want_kind(c, n, YDOC_SCALAR, policy_matcher_keys[kind]))
		return false;
	/* A matcher is security-relevant: an unquoted null in a list is a mistake, never "null". */
	if (is_null(n)) {
		PERR(c, n, "%s lists an empty value (quote it if it is meant literally)",
		     policy_matcher_keys[kind]);
		return false;
	}
	if (pt->n_match == POLICY_MAX_MATCHERS) {
		PERR(c, n, "a partner may have at most %d certificate matchers",
		     POLICY_MAX_MATCHERS);
		return false;
	}
	struct cert_match m = {0};
	if (!matcher_value_ok(c, n, kind, &m))
		return false;
	if (policy_partner_has_matcher(pt, &m)) {
		PERR(c, n, "%s '%s' is listed twice", policy_matcher_keys[m.kind], m.value);
		free(m.value);
		return false;
	}
	at[pt->n_match] = n;
	pt->match[pt->n_match++] = m;
	return true;
}

static bool parse_certificate(struct pctx *c, const struct ydoc_node *map,
                              struct policy_partner *pt)
{
	enum got got;
	const struct ydoc_node *cert = lookup(c, map, "certificate", "partner", true, &got);
	if (!cert || !want_kind(c, cert, YDOC_MAP, "certificate"))
		return false;
	bool ok = ydoc_check_keys(c->d, c->file, cert, "certificate", policy_matcher_keys) == 0;
	if (!(pt->match = calloc(POLICY_MAX_MATCHERS, sizeof(*pt->match)))) {
		PERR(c, cert, "out of memory");
		return false;
	}
	const struct ydoc_node *at[POLICY_MAX_MATCHERS];
	for (int kind = MATCH_SUBJECT_CN; kind <= MATCH_ISSUER_CN; kind++) {
		/* Null means absent, as for every key: never the literal text "null" or "~". */
		const struct ydoc_node *v = ydoc_get(cert, policy_matcher_keys[kind]);
		if (!v || is_null(v))
			continue;
		if (v->kind == YDOC_SEQ && v->n == 0) {
			PERR(c, v, "%s must list at least one value", policy_matcher_keys[kind]);
			ok = false;
		}
		for (size_t i = 0; v->kind == YDOC_SEQ && i < v->n; i++)
			ok &= add_matcher(c, v->items[i], (enum cert_match_kind)kind, pt, at);
		if (v->kind != YDOC_SEQ)
			ok &= add_matcher(c, v, (enum cert_match_kind)kind, pt, at);
	}
	if (ok && pt->n_match == 0) {
		PERR(c, cert,
		     "certificate must name at least one of subject_cn, san_uri, san_dns, "
		     "spki_sha256 or issuer_cn");
		ok = false;
	}
	if (ok) {
		check_matchers_unique(c, pt, at);
		warn_issuer_alone(c, pt, cert);
	}
	return ok;
}

/* Partner i of the registry's list. */
static bool parse_partner(struct pctx *c, const struct ydoc_node *list, size_t i,
                          struct policy_partner *pt)
{
	const struct ydoc_node *n = list->items[i];
	static const char *const keys[] = {"id", "name", "kind", "contact", "certificate", NULL};
	static const struct policy_name kinds[] = {
	    {"police", PARTNER_POLICE},
	    {"nhs", PARTNER_NHS},
	    {"council", PARTNER_COUNCIL},
	    {"other", PARTNER_OTHER},
	};
	if (!want_kind(c, n, YDOC_MAP, "each partner"))
		return false;
	size_t before = c->d->errors;
	ydoc_check_keys(c->d, c->file, n, "partner", keys);
	const struct ydoc_node *id_node = NULL;
	const struct ydoc_node *first = NULL;
	if (id_at(c, n, "id", "partner", "partner id", &pt->id, &id_node) == GOT_VALUE &&
	    (first = named_before(list, i, "id", pt->id)))
		PERR(c, id_node, "duplicate partner id '%s' (also at line %d)", pt->id,
		     first->line);
	text_at(c, n, "name", "partner", true, 200, &pt->name);
	enum got got;
	const struct ydoc_node *kind = lookup(c, n, "kind", "partner", true, &got);
	int k = kind ? word_value(c, kind, kinds, ARRAY_LEN(kinds), "partner kind") : -1;
	pt->kind = k >= 0 ? (enum partner_kind)k : PARTNER_OTHER;
	text_at(c, n, "contact", "partner", false, 254, &pt->contact);
	parse_certificate(c, n, pt);
	return c->d->errors == before;
}

void policy_parse_partners(struct policy_parser *p, const struct ydoc *doc)
{
	struct pctx c = {.p = p, .d = p->d, .file = doc->file};
	static const char *const top[] = {"partners", NULL};
	size_t before = p->d->errors;
	const struct ydoc_node *root = doc->root;
	if (!root || !want_kind(&c, root, YDOC_MAP, "partners.yaml")) {
		if (!root)
			PERR(&c, NULL, "empty file: expected 'partners:' and a list of partners");
		return;
	}
	ydoc_check_keys(p->d, c.file, root, "partners.yaml", top);
	enum got got;
	const struct ydoc_node *list = lookup(&c, root, "partners", "partners.yaml", true, &got);
	if (!list || !want_kind(&c, list, YDOC_SEQ, "partners"))
		return;
	if (list->n == 0 || list->n > POLICY_MAX_PARTNERS) {
		PERR(&c, list, "partners must list 1 to %d partners", POLICY_MAX_PARTNERS);
		return;
	}
	if (!(p->set->partners = calloc(list->n, sizeof(*p->set->partners)))) {
		PERR(&c, list, "out of memory");
		return;
	}
	for (size_t i = 0; i < list->n; i++) {
		struct policy_partner *pt = &p->set->partners[p->set->n_partners];
		if (parse_partner(&c, list, i, pt)) {
			p->set->n_partners++;
		} else {
			policy_partner_release(pt);
			memset(pt, 0, sizeof(*pt));
		}
	}
	/* Agreements are checked against the registry only when all of it loaded. */
	p->partners_ok = p->d->errors == before;
}

/* ---- agreements/<name>.yaml ---- */

/* Dates and the identifier types: what pseudo_normalise has a rule for. */
static bool pseudonymisable(enum field_type t)
{
	return t == FIELD_DATE || t >= FIELD_NHS_NUMBER;
}

/* Whether a field of type t can be generalised to `to`. */
static bool generalise_fits(enum field_type t, enum generalise_to to)
{
	switch (to) {
	case GEN_YEAR:
	case GEN_AGE_BAND:
	case GEN_MONTH:
		return t == FIELD_DATE;
	case GEN_POSTCODE_AREA:
	case GEN_POSTCODE_DISTRICT:
	case GEN_POSTCODE_SECTOR:
		return t == FIELD_POSTCODE;
	case GEN_NUMBER_BAND:
		return t == FIELD_INTEGER || t == FIELD_NUMBER;
	case GEN_NONE:
		break;
	}
	return false;
}

/* "year, age_band or month": what a field of type t can be generalised to; "" if nothing. */
static const char *generalise_choices(enum field_type t, char *buf, size_t size)
{
	size_t n = 0, used = 0;
	for (size_t i = 0; i < policy_n_generalise_tos; i++)
		n += generalise_fits(t, (enum generalise_to)policy_generalise_tos[i].value);
	buf[0] = '\0';
	for (size_t i = 0, k = 0; i < policy_n_generalise_tos && used < size; i++) {
		if (!generalise_fits(t, (enum generalise_to)policy_generalise_tos[i].value))
			continue;
		k++;
		const char *sep = k == 1 ? "" : k == n ? " or " : ", ";
		int w =
		    snprintf(buf + used, size - used, "%s%s", sep, policy_generalise_tos[i].name);
		used += w > 0 ? (size_t)w : 0;
	}
	return buf;
}

/*
 * isgd loads a key for each linkage domain and supports at most
 * POLICY_MAX_DOMAINS of them: the first domain past that is refused here,
 * where it is written, so that policy check says what a start would.
 */
static void count_domain(struct pctx *c, const struct ydoc_node *at, const char *domain)
{
	struct policy_parser *p = c->p;
	for (size_t i = 0; i < p->n_domains; i++)
		if (strcmp(p->domains[i], domain) == 0)
			return;
	if (p->n_domains == POLICY_MAX_DOMAINS) {
		PERR(c, at,
		     "linkage domain '%s' is one more than the gateway supports: the agreements "
		     "may name at most %d linkage domains in all (reuse a domain, or merge "
		     "agreements' domains)",
		     domain, POLICY_MAX_DOMAINS);
		return;
	}
	if (!p->domains && !(p->domains = calloc(POLICY_MAX_DOMAINS, sizeof(*p->domains)))) {
		PERR(c, at, "out of memory");
		return;
	}
	if (!(p->domains[p->n_domains] = strdup(domain))) {
		PERR(c, at, "out of memory");
		return;
	}
	p->n_domains++;
}

static void parse_pseudonymise(struct pctx *c, const struct ydoc_node *n, const char *fname,
                               const struct ydoc_node *action, const struct ydoc_node *domain,
                               struct policy_field *f)
{
	if (!pseudonymisable(f->type)) {
		PERR(c, action,
		     "field '%s' of type %s cannot be pseudonymised (pseudonymise applies to "
		     "nhs_number, pnc_id, postcode, date, name, email and identifier)",
		     fname, policy_field_type_name(f->type));
		return;
	}
	if (!domain) {
		PERR(c, n,
		     "field '%s' is pseudonymised but names no linkage domain (add domain: NAME)",
		     fname);
		return;
	}
	if (id_value(c, domain, "linkage domain", &f->domain) != GOT_VALUE)
		return;
	/* Its pseudonyms are the audit log's subjects: a recipient could link them to the log. */
	if (strcmp(f->domain, PSEUDO_AUDIT_DOMAIN) == 0) {
		PERR(c, domain,
		     "linkage domain '%s' of field '%s' is reserved for the audit log's own "
		     "pseudonyms, which no partner may receive (choose another name)",
		     f->domain, fname);
		return;
	}
	f->domain_line = domain->line;
	f->domain_col = domain->col;
	count_domain(c, domain, f->domain);
}

static void parse_generalise(struct pctx *c, const struct ydoc_node *n, const char *fname,
                             const struct ydoc_node *action, const struct ydoc_node *to,
                             const struct ydoc_node *width, struct policy_field *f)
{
	char choices[128];
	if (!*generalise_choices(f->type, choices, sizeof(choices))) {
		PERR(c, action,
		     "field '%s' of type %s cannot be generalised (generalise applies to date, "
		     "postcode, integer and number)",
		     fname, policy_field_type_name(f->type));
		return;
	}
	if (!to) {
		PERR(c, n, "field '%s' is generalised but has no 'to' (use %s)", fname, choices);
		return;
	}
	int g = word_value(c, to, policy_generalise_tos, policy_n_generalise_tos, "generalisation");
	if (g < 0)
		return;
	if (!generalise_fits(f->type, (enum generalise_to)g)) {
		PERR(c, to, "cannot generalise field '%s' of type %s to '%s' (use %s)", fname,
		     policy_field_type_name(f->type), to->scalar, choices);
		return;
	}
	f->to = (enum generalise_to)g;
	if (f->to == GEN_AGE_BAND) {
		f->width = POLICY_AGE_BAND_DEFAULT;
		int_at(c, n, "width", "field", false, 1, POLICY_AGE_BAND_MAX, &f->width);
	} else if (f->to == GEN_NUMBER_BAND) {
		if (!width)
			PERR(c, n, "field '%s': number_band needs a width (1 to %d)", fname,
			     POLICY_NUMBER_BAND_MAX);
		else
			int_at(c, n, "width", "field", false, 1, POLICY_NUMBER_BAND_MAX, &f->width);
	} else if (width) {
		PERR(c, width, "width applies only to age_band and number_band, not to '%s'",
		     to->scalar);
	}
}

/* domain, to and width: each belongs to one action, and is refused with the others. */
static void parse_action_options(struct pctx *c, const struct ydoc_node *n, const char *fname,
                                 const struct ydoc_node *action, struct policy_field *f)
{
	static const struct {
		const char *key;
		enum field_action action;
	} owner[] = {
	    {"domain", ACTION_PSEUDONYMISE},
	    {"to", ACTION_GENERALISE},
	    {"width", ACTION_GENERALISE},
	};
	const struct ydoc_node *opt[ARRAY_LEN(owner)];
	for (size_t i = 0; i < ARRAY_LEN(owner); i++) {
		enum got got;
		opt[i] = lookup(c, n, owner[i].key, "field", false, &got);
		if (opt[i] && owner[i].action != f->action)
			PERR(c, opt[i], "'%s' applies only to action %s, not to %s (field '%s')",
			     owner[i].key, policy_field_action_name(owner[i].action),
			     policy_field_action_name(f->action), fname);
	}
	if (f->action == ACTION_PSEUDONYMISE)
		parse_pseudonymise(c, n, fname, action, opt[0], f);
	else if (f->action == ACTION_GENERALISE)
		parse_generalise(c, n, fname, action, opt[1], opt[2], f);
}

/* Field i of the dataset's list of fields. */
static bool parse_field(struct pctx *c, const struct ydoc_node *list, size_t i,
                        struct policy_dataset *ds)
{
	const struct ydoc_node *n = list->items[i];
	static const char *const keys[] = {"name",   "type", "action", "required",
	                                   "domain", "to",   "width",  NULL};
	if (!want_kind(c, n, YDOC_MAP, "each field"))
		return false;
	size_t before = c->d->errors;
	ydoc_check_keys(c->d, c->file, n, "field", keys);
	struct policy_field f = {.line = n->line, .col = n->col};
	enum got got;
	const char *fname = "?";
	const struct ydoc_node *name = lookup(c, n, "name", "field", true, &got);
	if (name && want_kind(c, name, YDOC_SCALAR, "field name")) {
		fname = name->scalar;
		if (!str_field_name(name->scalar, strlen(name->scalar)))
			PERR(c, name,
			     "invalid field name '%s' (use letters, digits, '_' and '-', starting "
			     "with a letter or '_', at most 64 characters)",
			     name->scalar);
		const struct ydoc_node *first = named_before(list, i, "name", name->scalar);
		if (first)
			PERR(c, name, "duplicate field '%s' in dataset '%s' (also at line %d)",
			     name->scalar, ds->name ? ds->name : "?", first->line);
	}
	const struct ydoc_node *type = lookup(c, n, "type", "field", true, &got);
	int t =
	    type ? word_value(c, type, policy_field_types, policy_n_field_types, "field type") : -1;
	const struct ydoc_node *action = lookup(c, n, "action", "field", true, &got);
	int a = action
	            ? word_value(c, action, policy_field_actions, policy_n_field_actions, "action")
	            : -1;
	bool_at(c, n, "required", "field", &f.required);
	if (t >= 0 && a >= 0) {
		f.type = (enum field_type)t;
		f.action = (enum field_action)a;
		parse_action_options(c, n, fname, action, &f);
	}
	if (c->d->errors != before || t < 0 || a < 0) {
		free(f.domain);
		return false;
	}
	if (!(f.name = strdup(name->scalar))) {
		PERR(c, n, "out of memory");
		free(f.domain);
		return false;
	}
	ds->fields[ds->n_fields++] = f;
	return true;
}

static bool parse_fields(struct pctx *c, const struct ydoc_node *map, struct policy_dataset *ds)
{
	enum got got;
	const struct ydoc_node *list = lookup(c, map, "fields", "dataset", true, &got);
	if (!list || !want_kind(c, list, YDOC_SEQ, "fields"))
		return false;
	if (list->n == 0 || list->n > POLICY_MAX_FIELDS) {
		PERR(c, list, "fields must list 1 to %d fields", POLICY_MAX_FIELDS);
		return false;
	}
	if (!(ds->fields = calloc(list->n, sizeof(*ds->fields)))) {
		PERR(c, list, "out of memory");
		return false;
	}
	bool ok = true;
	for (size_t i = 0; i < list->n; i++)
		ok &= parse_field(c, list, i, ds);
	return ok;
}

/* Dataset i of the agreement's list of datasets. */
static bool parse_dataset(struct pctx *c, const struct ydoc_node *list, size_t i,
                          struct policy_agreement *a)
{
	const struct ydoc_node *n = list->items[i];
	static const char *const keys[] = {"name", "unknown_fields", "fields", NULL};
	static const struct policy_name unknown[] = {{"reject", 0}, {"drop", 1}};
	if (!want_kind(c, n, YDOC_MAP, "each dataset"))
		return false;
	size_t before = c->d->errors;
	ydoc_check_keys(c->d, c->file, n, "dataset", keys);
	struct policy_dataset *ds = &a->datasets[a->n_datasets];
	const struct ydoc_node *name = NULL;
	const struct ydoc_node *first = NULL;
	if (id_at(c, n, "name", "dataset", "dataset name", &ds->name, &name) == GOT_VALUE &&
	    (first = named_before(list, i, "name", ds->name)))
		PERR(c, name, "duplicate dataset '%s' (also at line %d)", ds->name, first->line);
	enum got got;
	const struct ydoc_node *uf = lookup(c, n, "unknown_fields", "dataset", false, &got);
	if (uf)
		ds->unknown_drop =
		    word_value(c, uf, unknown, ARRAY_LEN(unknown), "unknown_fields setting") == 1;
	parse_fields(c, n, ds);
	if (c->d->errors != before) {
		policy_dataset_release(ds);
		memset(ds, 0, sizeof(*ds));
		return false;
	}
	a->n_datasets++;
	return true;
}

static void parse_datasets(struct pctx *c, const struct ydoc_node *map, struct policy_agreement *a)
{
	enum got got;
	const struct ydoc_node *list = lookup(c, map, "datasets", "agreement", true, &got);
	if (!list || !want_kind(c, list, YDOC_SEQ, "datasets"))
		return;
	if (list->n == 0 || list->n > POLICY_MAX_DATASETS) {
		PERR(c, list, "datasets must list 1 to %d datasets", POLICY_MAX_DATASETS);
		return;
	}
	if (!(a->datasets = calloc(list->n, sizeof(*a->datasets)))) {
		PERR(c, list, "out of memory");
		return;
	}
	for (size_t i = 0; i < list->n; i++)
		parse_dataset(c, list, i, a);
}

static void parse_purpose(struct pctx *c, const struct ydoc_node *map, struct policy_agreement *a)
{
	static const char *const keys[] = {"code", "text", NULL};
	enum got got;
	const struct ydoc_node *n = lookup(c, map, "purpose", "agreement", true, &got);
	if (!n || !want_kind(c, n, YDOC_MAP, "purpose"))
		return;
	ydoc_check_keys(c->d, c->file, n, "purpose", keys);
	id_at(c, n, "code", "purpose", "purpose code", &a->purpose_code, NULL);
	text_at(c, n, "text", "purpose", true, 4096, &a->purpose_text);
}

/* review_date: a past one warns (the agreement still applies), an impossible one is refused. */
static void parse_review(struct pctx *c, const struct ydoc_node *map, struct policy_agreement *a,
                         const struct ydoc_node *from)
{
	const struct ydoc_node *at = NULL;
	a->review_days = INT64_MAX;
	if (date_at(c, map, "review_date", "agreement", false, &a->review_days, &at) != GOT_VALUE)
		return;
	char today[48];
	const struct ydoc_node *until = ydoc_get(map, "valid_until");
	if (from && a->review_days < a->valid_from_days)
		PERR(c, at, "review_date %s is before valid_from %s", at->scalar, from->scalar);
	else if (a->valid_until_days != INT64_MAX && a->review_days > a->valid_until_days)
		ydoc_warning(c->d, c->file, at,
		             "review_date %s is after valid_until %s: the agreement ends before "
		             "it is reviewed",
		             at->scalar, until->scalar);
	else if (a->review_days < c->p->today)
		ydoc_warning(c->d, c->file, at,
		             "agreement '%s' was due for review on %s (review_date); today (UTC) "
		             "is %s",
		             a->id ? a->id : "?", at->scalar,
		             policy_format_day(today, c->p->today));
}

/* Legal, but the gateway refuses every send under it today: the admin should know. */
static void warn_not_in_force(struct pctx *c, const struct policy_agreement *a,
                              const struct ydoc_node *from, const struct ydoc_node *until)
{
	char today[48];
	policy_format_day(today, c->p->today);
	if (until && a->valid_until_days < c->p->today)
		ydoc_warning(c->d, c->file, until,
		             "agreement '%s' expired on %s (valid_until): every send under it is "
		             "refused; today (UTC) is %s",
		             a->id ? a->id : "?", until->scalar, today);
	else if (from && a->valid_from_days > c->p->today)
		ydoc_warning(c->d, c->file, from,
		             "agreement '%s' is not in force until %s (valid_from): sends under it "
		             "are refused until then; today (UTC) is %s",
		             a->id ? a->id : "?", from->scalar, today);
}

static void parse_validity(struct pctx *c, const struct ydoc_node *map, struct policy_agreement *a)
{
	const struct ydoc_node *from = NULL, *until = NULL;
	enum got f = date_at(c, map, "valid_from", "agreement", true, &a->valid_from_days, &from);
	a->valid_until_days = INT64_MAX;
	enum got u =
	    date_at(c, map, "valid_until", "agreement", false, &a->valid_until_days, &until);
	if (f == GOT_VALUE && u == GOT_VALUE && a->valid_from_days > a->valid_until_days)
		PERR(c, from, "valid_from %s is after valid_until %s", from->scalar, until->scalar);
	else
		warn_not_in_force(c, a, f == GOT_VALUE ? from : NULL,
		                  u == GOT_VALUE ? until : NULL);
	parse_review(c, map, a, f == GOT_VALUE ? from : NULL);
}

static uint32_t limit_at(struct pctx *c, const struct ydoc_node *map, const char *key, int64_t max)
{
	int64_t v;
	return int_at(c, map, key, "limits", false, 1, max, &v) == GOT_VALUE ? (uint32_t)v : 0;
}

static void parse_limits(struct pctx *c, const struct ydoc_node *map, struct policy_agreement *a)
{
	static const char *const keys[] = {"max_records_per_message", "records_per_day",
	                                   "messages_per_day", NULL};
	enum got got;
	const struct ydoc_node *n = lookup(c, map, "limits", "agreement", false, &got);
	if (!n || !want_kind(c, n, YDOC_MAP, "limits"))
		return;
	ydoc_check_keys(c->d, c->file, n, "limits", keys);
	a->max_records_per_message =
	    limit_at(c, n, "max_records_per_message", POLICY_MAX_RECORDS_LIMIT);
	a->records_per_day = limit_at(c, n, "records_per_day", POLICY_MAX_RECORDS_PER_DAY);
	a->messages_per_day = limit_at(c, n, "messages_per_day", POLICY_MAX_MESSAGES_PER_DAY);
	if (a->records_per_day && a->max_records_per_message > a->records_per_day)
		ydoc_warning(c->d, c->file, ydoc_get(n, "records_per_day"),
		             "records_per_day %u is less than max_records_per_message %u: no "
		             "message can carry more than %u records",
		             a->records_per_day, a->max_records_per_message, a->records_per_day);
}

static void parse_agreement_body(struct pctx *c, const struct ydoc_node *n,
                                 struct policy_agreement *a, const struct ydoc_node **id_node)
{
	static const char *const keys[] = {
	    "id",          "version",     "title",           "controllers", "senders",
	    "recipients",  "purpose",     "lawful_basis",    "dpia",        "valid_from",
	    "valid_until", "review_date", "undelivered_ttl", "allow_reply", "limits",
	    "datasets",    NULL,
	};
	ydoc_check_keys(c->d, c->file, n, "agreement", keys);
	id_at(c, n, "id", "agreement", "agreement id", &a->id, id_node);
	int64_t version;
	if (int_at(c, n, "version", "agreement", true, 1, UINT32_MAX, &version) == GOT_VALUE)
		a->version = (uint32_t)version;
	text_at(c, n, "title", "agreement", true, 200, &a->title);
	partner_list_at(c, n, "controllers", "agreement", false, &a->controllers,
	                &a->n_controllers);
	enum got s =
	    partner_list_at(c, n, "senders", "agreement", true, &a->senders, &a->n_senders);
	enum got r = partner_list_at(c, n, "recipients", "agreement", true, &a->recipients,
	                             &a->n_recipients);
	/* Legal, but the gateway refuses every send under it: likely a mistake. */
	if (s == GOT_VALUE && r == GOT_VALUE && !policy_agreement_has_flow(a))
		ydoc_warning(c->d, c->file, ydoc_get(n, "recipients"),
		             "agreement '%s' allows no exchange: partner '%s' is its only sender "
		             "and its only recipient, and a partner never sends to itself (name "
		             "the other partner in senders or recipients)",
		             a->id ? a->id : "?", a->senders[0]);
	parse_purpose(c, n, a);
	text_list_at(c, n, "lawful_basis", "agreement", 32, 512, &a->lawful_basis,
	             &a->n_lawful_basis);
	text_at(c, n, "dpia", "agreement", false, 200, &a->dpia);
	parse_validity(c, n, a);
	duration_at(c, n, "undelivered_ttl", "agreement", &a->undelivered_ttl_ms);
	bool_at(c, n, "allow_reply", "agreement", &a->allow_reply);
	parse_limits(c, n, a);
	parse_datasets(c, n, a);
}

/* An agreement whose id differs from its file name is legal but confusing. */
static void check_file_name(struct pctx *c, const struct ydoc_node *id_node, const char *id,
                            const char *rel_name)
{
	size_t len = strlen(rel_name);
	const char *ext = ".yaml";
	size_t stem = len > strlen(ext) ? len - strlen(ext) : len;
	if (strlen(id) != stem || strncmp(id, rel_name, stem) != 0)
		ydoc_warning(c->d, c->file, id_node,
		             "agreement id '%s' differs from its file name '%s'", id, rel_name);
}

/* Against every id read before, so that one in a file with other errors still counts. */
static void check_unique_id(struct pctx *c, const struct ydoc_node *id_node, const char *id)
{
	struct policy_parser *p = c->p;
	for (size_t i = 0; i < p->n_ids_seen; i++) {
		const struct policy_id_seen *s = &p->ids_seen[i];
		if (strcmp(s->id, id) == 0)
			PERR(c, id_node, "duplicate agreement id '%s' (also in %s:%d:%d)", id,
			     s->file, s->line, s->col);
	}
	struct policy_id_seen *s = &p->ids_seen[p->n_ids_seen];
	if (!(s->id = strdup(id)) || !(s->file = strdup(c->file))) {
		free(s->id);
		s->id = NULL;
		PERR(c, id_node, "out of memory");
		return;
	}
	s->line = id_node->line;
	s->col = id_node->col;
	p->n_ids_seen++;
}

void policy_parser_release(struct policy_parser *p)
{
	if (!p)
		return;
	for (size_t i = 0; i < p->n_ids_seen; i++) {
		free(p->ids_seen[i].id);
		free(p->ids_seen[i].file);
	}
	free(p->ids_seen);
	p->ids_seen = NULL;
	p->n_ids_seen = 0;
	for (size_t i = 0; i < p->n_domains; i++)
		free(p->domains[i]);
	free(p->domains);
	p->domains = NULL;
	p->n_domains = 0;
}

void policy_parse_agreement(struct policy_parser *p, const struct ydoc *doc, const char *rel_name)
{
	struct pctx c = {.p = p, .d = p->d, .file = doc->file};
	static const char *const top[] = {"agreement", NULL};
	size_t before = p->d->errors;
	const struct ydoc_node *root = doc->root;
	if (!root) {
		PERR(&c, NULL, "empty file: expected 'agreement:' and its keys");
		return;
	}
	if (!want_kind(&c, root, YDOC_MAP, "an agreement file"))
		return;
	ydoc_check_keys(p->d, c.file, root, "the agreement file", top);
	enum got got;
	const struct ydoc_node *n = lookup(&c, root, "agreement", "the agreement file", true, &got);
	if (!n || !want_kind(&c, n, YDOC_MAP, "agreement"))
		return;
	struct policy_agreement a = {0};
	const struct ydoc_node *id_node = NULL;
	parse_agreement_body(&c, n, &a, &id_node);
	if (a.id) {
		check_unique_id(&c, id_node, a.id);
		check_file_name(&c, id_node, a.id, rel_name);
	}
	if (p->d->errors == before && !(a.file = strdup(doc->file)))
		PERR(&c, n, "out of memory");
	if (p->d->errors != before) {
		policy_agreement_release(&a);
		return;
	}
	p->set->agreements[p->set->n_agreements++] = a;
}

/* ---- the set as a whole ---- */

/* Where an identifier type first reaches a recipient in clear, or pseudonymised. */
struct first_use {
	const struct policy_agreement *a;
	const struct policy_field *f;
};

static void note_use(struct first_use *use, const struct policy_agreement *a,
                     const struct policy_field *f)
{
	if (!use->a) {
		use->a = a;
		use->f = f;
	}
}

/* Index of each of the agreement's recipients in the registry, or -1. */
static void recipient_indexes(const struct policy_set *set, const struct policy_agreement *a,
                              ptrdiff_t *idx)
{
	for (size_t r = 0; r < a->n_recipients; r++) {
		const struct policy_partner *pt = policy_partner_by_id(set, a->recipients[r]);
		idx[r] = pt ? pt - set->partners : -1;
	}
}

/*
 * A recipient that receives an identifier type in clear under one agreement
 * and pseudonymised under another can link the pseudonyms back to people,
 * which defeats the pseudonymisation. It may be intended (functional
 * separation inside the recipient, recorded in the DPIA), so it is a warning,
 * once per recipient and type, at the pseudonymised field.
 */
static void check_clear_and_pseudonymised(struct policy_parser *p, struct first_use *clear,
                                          struct first_use *pseudo)
{
	const struct policy_set *set = p->set;
	const size_t n_types = FIELD_IDENTIFIER + 1;
	ptrdiff_t idx[POLICY_MAX_LIST];
	for (size_t i = 0; i < set->n_agreements; i++) {
		const struct policy_agreement *a = &set->agreements[i];
		recipient_indexes(set, a, idx);
		for (size_t k = 0; k < a->n_datasets; k++) {
			const struct policy_dataset *ds = &a->datasets[k];
			for (size_t j = 0; j < ds->n_fields; j++) {
				const struct policy_field *f = &ds->fields[j];
				if (f->type < FIELD_NHS_NUMBER ||
				    (f->action != ACTION_PASS && f->action != ACTION_PSEUDONYMISE))
					continue;
				for (size_t r = 0; r < a->n_recipients; r++) {
					if (idx[r] < 0)
						continue;
					size_t slot = (size_t)idx[r] * n_types + f->type;
					note_use(f->action == ACTION_PASS ? &clear[slot]
					                                  : &pseudo[slot],
					         a, f);
				}
			}
		}
	}
	for (size_t pt = 0; pt < set->n_partners; pt++) {
		for (size_t t = FIELD_NHS_NUMBER; t < n_types; t++) {
			const struct first_use *c = &clear[pt * n_types + t];
			const struct first_use *u = &pseudo[pt * n_types + t];
			if (!c->a || !u->a)
				continue;
			struct ydoc_node at = {.line = u->f->line, .col = u->f->col};
			ydoc_warning(
			    p->d, u->a->file, &at,
			    "partner '%s' receives %s in clear under agreement '%s' (field "
			    "'%s') and pseudonymised under agreement '%s' (field '%s', "
			    "domain '%s'): it may be able to link the pseudonyms to the people",
			    set->partners[pt].id, policy_field_type_name((enum field_type)t),
			    c->a->id, c->f->name, u->a->id, u->f->name, u->f->domain);
		}
	}
}

static bool in_list(char *const *list, size_t n, const char *s)
{
	for (size_t i = 0; i < n; i++)
		if (strcmp(list[i], s) == 0)
			return true;
	return false;
}

/* The first sender -> recipient (not itself) that both agreements allow; false if none. */
static bool shared_flow(const struct policy_agreement *a, const struct policy_agreement *b,
                        const char **sender, const char **recipient)
{
	for (size_t i = 0; i < a->n_senders; i++) {
		if (!in_list(b->senders, b->n_senders, a->senders[i]))
			continue;
		for (size_t k = 0; k < a->n_recipients; k++)
			if (strcmp(a->senders[i], a->recipients[k]) != 0 &&
			    in_list(b->recipients, b->n_recipients, a->recipients[k])) {
				*sender = a->senders[i];
				*recipient = a->recipients[k];
				return true;
			}
	}
	return false;
}

static void check_overlap_dataset(struct policy_parser *p, const struct policy_agreement *a,
                                  const struct policy_dataset *da, const struct policy_agreement *b,
                                  const struct policy_dataset *db, const char *sender,
                                  const char *recipient)
{
	for (size_t j = 0; j < db->n_fields; j++) {
		const struct policy_field *fb = &db->fields[j];
		for (size_t i = 0; i < da->n_fields; i++) {
			const struct policy_field *fa = &da->fields[i];
			if (strcmp(fa->name, fb->name) != 0 || fa->action == fb->action)
				continue;
			struct ydoc_node at = {.line = fb->line, .col = fb->col};
			ydoc_warning(
			    p->d, b->file, &at,
			    "agreements '%s' and '%s' both let partner '%s' send dataset '%s' "
			    "to partner '%s', but field '%s' is %s under '%s' and %s under "
			    "'%s': the sender names the agreement, so it can always choose "
			    "the weaker one",
			    a->id, b->id, sender, db->name, recipient, fb->name,
			    policy_field_action_name(fa->action), a->id,
			    policy_field_action_name(fb->action), b->id);
		}
	}
}

/*
 * Two agreements that let the same sender send the same dataset to the same
 * recipient, with different actions for a field: the sender picks the
 * agreement_id, so the stricter one protects nothing. It may be intended
 * (agreements being replaced), so a warning, once per pair of agreements,
 * dataset and field, at the field of the later agreement.
 */
static void check_overlapping_agreements(struct policy_parser *p)
{
	const struct policy_set *set = p->set;
	for (size_t x = 0; x < set->n_agreements; x++) {
		const struct policy_agreement *a = &set->agreements[x];
		for (size_t y = x + 1; y < set->n_agreements; y++) {
			const struct policy_agreement *b = &set->agreements[y];
			const char *sender, *recipient;
			if (!shared_flow(a, b, &sender, &recipient))
				continue;
			for (size_t k = 0; k < b->n_datasets; k++)
				for (size_t i = 0; i < a->n_datasets; i++)
					if (strcmp(a->datasets[i].name, b->datasets[k].name) == 0)
						check_overlap_dataset(p, a, &a->datasets[i], b,
						                      &b->datasets[k], sender,
						                      recipient);
		}
	}
}

int policy_check_set(struct policy_parser *p)
{
	const size_t n = p->set->n_partners * (FIELD_IDENTIFIER + 1);
	struct first_use *clear = calloc(n ? n : 1, sizeof(*clear));
	struct first_use *pseudo = calloc(n ? n : 1, sizeof(*pseudo));
	int err = clear && pseudo ? 0 : ISG_ERR_NOMEM;
	if (!err) {
		check_clear_and_pseudonymised(p, clear, pseudo);
		check_overlapping_agreements(p);
	}
	free(clear);
	free(pseudo);
	return err;
}
