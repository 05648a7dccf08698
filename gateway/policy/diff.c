/*
 * The privacy effect of a policy change, for `isgctl policy diff`: what the
 * partner registry, each agreement and each data flow (sender -> recipient,
 * agreement, dataset) gain or lose. A change that shares more, with less
 * protection, for longer or with more partners is marked "! WEAKENED" so a
 * reviewer cannot miss it; docs/policy.md lists every rule.
 */
#include "policy/internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/util.h"

enum mark { CHANGED, WEAKENED, STRENGTHENED };

struct dctx {
	struct strbuf *out;
	struct policy_diff_stats *st;
	const struct policy_set *old, *new;
	char header[600]; /* printed before the section's first line; "" once printed */
};

static void section(struct dctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void section(struct dctx *c, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(c->header, sizeof(c->header), fmt, ap);
	va_end(ap);
}

static void line(struct dctx *c, enum mark m, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void line(struct dctx *c, enum mark m, const char *fmt, ...)
{
	static const char *const marks[] = {"  changed       ", "! WEAKENED      ",
	                                    "  strengthened  "};
	if (c->header[0]) {
		if (c->out->len)
			strbuf_puts(c->out, "\n");
		policy_put_clean(c->out, c->header, strlen(c->header));
		strbuf_puts(c->out, "\n");
		c->header[0] = '\0';
	}
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	char *text = n >= 0 ? malloc((size_t)n + 1) : NULL;
	if (!text) {
		c->out->failed = true;
		return;
	}
	va_start(ap, fmt);
	vsnprintf(text, (size_t)n + 1, fmt, ap);
	va_end(ap);
	strbuf_puts(c->out, marks[m]);
	policy_put_clean(c->out, text, (size_t)n);
	strbuf_puts(c->out, "\n");
	free(text);
	c->st->changes++;
	c->st->weakened += m == WEAKENED;
	c->st->strengthened += m == STRENGTHENED;
}

static bool listed(char *const *list, size_t n, const char *s)
{
	for (size_t i = 0; i < n; i++)
		if (strcmp(list[i], s) == 0)
			return true;
	return false;
}

static bool same_text(const char *a, const char *b)
{
	return (!a && !b) || (a && b && strcmp(a, b) == 0);
}

/* ---- the partner registry ---- */

/* Matchers recognise the partner; issuer_cn values constrain the others (see policy.h). */
static void diff_matchers(struct dctx *c, const struct policy_partner *p0,
                          const struct policy_partner *p1)
{
	size_t iss0 = policy_partner_issuers(p0), iss1 = policy_partner_issuers(p1);
	size_t sub0 = p0->n_match - iss0, sub1 = p1->n_match - iss1;
	for (size_t k = 0; k < p1->n_match; k++) {
		const struct cert_match *m = &p1->match[k];
		if (policy_partner_has_matcher(p0, m))
			continue;
		if (m->kind != MATCH_ISSUER_CN)
			line(c, WEAKENED, "partner '%s': now also recognised by %s '%s'", p1->id,
			     policy_matcher_keys[m->kind], m->value);
		else if (iss0 == 0 && sub1 > 0)
			line(c, STRENGTHENED,
			     "partner '%s': now recognised only with a certificate issued by '%s'",
			     p1->id, m->value);
		else
			line(c, WEAKENED,
			     "partner '%s': now also recognised with a certificate issued by '%s'",
			     p1->id, m->value);
	}
	for (size_t k = 0; k < p0->n_match; k++) {
		const struct cert_match *m = &p0->match[k];
		if (policy_partner_has_matcher(p1, m))
			continue;
		if (m->kind != MATCH_ISSUER_CN)
			line(c, CHANGED, "partner '%s': no longer recognised by %s '%s'", p1->id,
			     policy_matcher_keys[m->kind], m->value);
		else if (iss1 == 0 && sub1 > 0)
			line(c, WEAKENED,
			     "partner '%s': no longer limited to certificates issued by '%s'",
			     p1->id, m->value);
		else
			line(c, CHANGED,
			     "partner '%s': no longer recognised with a certificate issued by '%s'",
			     p1->id, m->value);
	}
	if (sub0 > 0 && sub1 == 0)
		line(c, WEAKENED,
		     "partner '%s': now recognised by every certificate its issuer_cn CA issues",
		     p1->id);
}

static void diff_partner(struct dctx *c, const struct policy_partner *p0,
                         const struct policy_partner *p1)
{
	if (strcmp(p0->name, p1->name) != 0)
		line(c, CHANGED, "partner '%s': name '%s' -> '%s'", p1->id, p0->name, p1->name);
	if (p0->kind != p1->kind)
		line(c, CHANGED, "partner '%s': kind %s -> %s", p1->id,
		     policy_partner_kind_name(p0->kind), policy_partner_kind_name(p1->kind));
	if (!same_text(p0->contact, p1->contact))
		line(c, CHANGED, "partner '%s': contact '%s' -> '%s'", p1->id,
		     p0->contact ? p0->contact : "none", p1->contact ? p1->contact : "none");
	diff_matchers(c, p0, p1);
}

static void diff_partners(struct dctx *c)
{
	section(c, "Partner registry:");
	for (size_t i = 0; i < c->new->n_partners; i++) {
		const struct policy_partner *p1 = &c->new->partners[i];
		const struct policy_partner *p0 = policy_partner_by_id(c->old, p1->id);
		if (p0)
			diff_partner(c, p0, p1);
		else
			line(c, CHANGED, "partner '%s' added to the registry: %s, kind %s", p1->id,
			     p1->name, policy_partner_kind_name(p1->kind));
	}
	for (size_t i = 0; i < c->old->n_partners; i++)
		if (!policy_partner_by_id(c->new, c->old->partners[i].id))
			line(c, CHANGED, "partner '%s' removed from the registry",
			     c->old->partners[i].id);
}

/* ---- an agreement's terms ---- */

static void diff_list(struct dctx *c, const char *what, char *const *l0, size_t n0, char *const *l1,
                      size_t n1, enum mark added, enum mark removed)
{
	for (size_t i = 0; i < n1; i++)
		if (!listed(l0, n0, l1[i]))
			line(c, added, "%s '%s' added", what, l1[i]);
	for (size_t i = 0; i < n0; i++)
		if (!listed(l1, n1, l0[i]))
			line(c, removed, "%s '%s' removed", what, l0[i]);
}

static const char *day_or_none(char buf[48], int64_t days)
{
	return days == INT64_MAX ? "none" : policy_format_day(buf, days);
}

static void diff_dates(struct dctx *c, const struct policy_agreement *a0,
                       const struct policy_agreement *a1)
{
	char d0[48], d1[48];
	int64_t f0 = a0->valid_from_days, f1 = a1->valid_from_days;
	if (f0 != f1)
		line(c, f1 < f0 ? WEAKENED : STRENGTHENED, "valid_from %s -> %s (in force %s)",
		     policy_format_day(d0, f0), policy_format_day(d1, f1),
		     f1 < f0 ? "earlier" : "later");
	int64_t u0 = a0->valid_until_days, u1 = a1->valid_until_days;
	if (u0 != u1)
		line(c, u1 > u0 ? WEAKENED : STRENGTHENED, "valid_until %s -> %s (%s)",
		     day_or_none(d0, u0), day_or_none(d1, u1),
		     u1 == INT64_MAX ? "no end date"
		     : u1 > u0       ? "in force longer"
		                     : "ends earlier");
	if (a0->review_days != a1->review_days)
		line(c, CHANGED, "review_date %s -> %s", day_or_none(d0, a0->review_days),
		     day_or_none(d1, a1->review_days));
}

/* A limit; 0 is none (for max_records_per_message: only the gateway's). */
static void diff_limit(struct dctx *c, const char *what, uint32_t v0, uint32_t v1, const char *none)
{
	if (v0 == v1)
		return;
	char s0[32], s1[32];
	snprintf(s0, sizeof(s0), "%u", v0);
	snprintf(s1, sizeof(s1), "%u", v1);
	bool weaker = v1 == 0 || (v0 != 0 && v1 > v0);
	line(c, weaker ? WEAKENED : STRENGTHENED, "%s %s -> %s", what, v0 ? s0 : none,
	     v1 ? s1 : none);
}

static const char *duration(char buf[32], int64_t ms)
{
	static const struct {
		int64_t ms;
		const char *unit;
	} units[] = {{86400000, "d"}, {3600000, "h"}, {60000, "m"}, {1000, "s"}, {1, "ms"}};
	if (ms == 0)
		return "the gateway's default";
	for (size_t i = 0; i < ARRAY_LEN(units); i++)
		if (ms % units[i].ms == 0) {
			snprintf(buf, 32, "%lld%s", (long long)(ms / units[i].ms), units[i].unit);
			break;
		}
	return buf;
}

/*
 * A fixed undelivered_ttl removed hands retention to the gateway's
 * store.undelivered_ttl, which an admin may set up to the longest a policy
 * allows: weakened, unless the fixed one was that longest already. A fixed
 * one added may be shorter or longer than the gateway's: changed.
 */
static void diff_ttl(struct dctx *c, int64_t t0, int64_t t1)
{
	char s0[32], s1[32];
	if (t0 == t1)
		return;
	if (!t1 && t0 < POLICY_TTL_MAX_MS)
		line(c, WEAKENED,
		     "undelivered_ttl %s -> the gateway's default (its store.undelivered_ttl, "
		     "which may be up to %s: undelivered data may wait longer)",
		     duration(s0, t0), duration(s1, POLICY_TTL_MAX_MS));
	else
		line(c,
		     !t0 || !t1 ? CHANGED
		     : t1 > t0  ? WEAKENED
		                : STRENGTHENED,
		     "undelivered_ttl %s -> %s%s", duration(s0, t0), duration(s1, t1),
		     !t0 || !t1 ? ""
		     : t1 > t0  ? " (undelivered data may wait longer)"
		                : " (undelivered data is deleted sooner)");
}

static void diff_limits(struct dctx *c, const struct policy_agreement *a0,
                        const struct policy_agreement *a1)
{
	diff_limit(c, "max_records_per_message", a0->max_records_per_message,
	           a1->max_records_per_message, "the gateway's limit");
	diff_limit(c, "records_per_day", a0->records_per_day, a1->records_per_day, "none");
	diff_limit(c, "messages_per_day", a0->messages_per_day, a1->messages_per_day, "none");
	diff_ttl(c, a0->undelivered_ttl_ms, a1->undelivered_ttl_ms);
	if (a0->allow_reply != a1->allow_reply)
		line(c, a1->allow_reply ? WEAKENED : STRENGTHENED, "replies: %s -> %s",
		     a0->allow_reply ? "allowed" : "not allowed",
		     a1->allow_reply ? "allowed" : "not allowed");
}

static void diff_terms(struct dctx *c, const struct policy_agreement *a0,
                       const struct policy_agreement *a1)
{
	if (a0->version != a1->version)
		line(c, CHANGED, "version %u -> %u", a0->version, a1->version);
	if (strcmp(a0->title, a1->title) != 0)
		line(c, CHANGED, "title '%s' -> '%s'", a0->title, a1->title);
	diff_list(c, "controller", a0->controllers, a0->n_controllers, a1->controllers,
	          a1->n_controllers, CHANGED, CHANGED);
	diff_list(c, "sender", a0->senders, a0->n_senders, a1->senders, a1->n_senders, WEAKENED,
	          STRENGTHENED);
	diff_list(c, "recipient", a0->recipients, a0->n_recipients, a1->recipients,
	          a1->n_recipients, WEAKENED, STRENGTHENED);
	if (strcmp(a0->purpose_code, a1->purpose_code) != 0)
		line(c, CHANGED, "purpose code '%s' -> '%s'", a0->purpose_code, a1->purpose_code);
	if (strcmp(a0->purpose_text, a1->purpose_text) != 0)
		line(c, CHANGED, "purpose text '%s' -> '%s'", a0->purpose_text, a1->purpose_text);
	diff_list(c, "lawful basis", a0->lawful_basis, a0->n_lawful_basis, a1->lawful_basis,
	          a1->n_lawful_basis, CHANGED, CHANGED);
	if (!same_text(a0->dpia, a1->dpia))
		line(c, CHANGED, "dpia '%s' -> '%s'", a0->dpia ? a0->dpia : "none",
		     a1->dpia ? a1->dpia : "none");
	diff_dates(c, a0, a1);
	diff_limits(c, a0, a1);
}

/* ---- fields ---- */

/* 0: never leaves the sender; 1: leaves generalised or pseudonymised; 2: in clear. */
static int exposure(const struct policy_field *f)
{
	return f->action == ACTION_DROP ? 0 : f->action == ACTION_PASS ? 2 : 1;
}

/* Generalisations of one family compare by how much they reveal: larger is coarser. */
static int64_t grain(const struct policy_field *f, int *family)
{
	switch (f->to) {
	case GEN_MONTH:
		return *family = 1, 30;
	case GEN_YEAR:
		return *family = 1, 365;
	case GEN_AGE_BAND:
		return *family = 1, 365 * f->width;
	case GEN_POSTCODE_SECTOR:
		return *family = 2, 1;
	case GEN_POSTCODE_DISTRICT:
		return *family = 2, 2;
	case GEN_POSTCODE_AREA:
		return *family = 2, 3;
	case GEN_NUMBER_BAND:
		return *family = 3, f->width;
	case GEN_NONE:
		break;
	}
	return *family = 0, 0;
}

/* The agreements other than `self` that pseudonymise into `domain`, as "'a', 'b'". */
static void domain_users(const struct policy_set *set, const char *self, const char *domain,
                         struct strbuf *out)
{
	for (size_t i = 0; i < set->n_agreements; i++) {
		const struct policy_agreement *a = &set->agreements[i];
		bool uses = false;
		for (size_t k = 0; k < a->n_datasets && !uses; k++)
			for (size_t j = 0; j < a->datasets[k].n_fields && !uses; j++) {
				const char *d = a->datasets[k].fields[j].domain;
				uses = d && strcmp(d, domain) == 0;
			}
		if (uses && strcmp(a->id, self) != 0)
			strbuf_printf(out, "%s'%s'", out->len ? ", " : "", a->id);
	}
}

static void diff_same_exposure(struct dctx *c, const struct policy_agreement *a1,
                               const struct policy_field *f0, const struct policy_field *f1)
{
	char b0[160], b1[160];
	const char *h0 = policy_field_how(f0, b0, sizeof(b0));
	const char *h1 = policy_field_how(f1, b1, sizeof(b1));
	if (strcmp(h0, h1) == 0)
		return;
	if (f0->action == ACTION_GENERALISE && f1->action == ACTION_GENERALISE) {
		int fam0, fam1;
		int64_t g0 = grain(f0, &fam0), g1 = grain(f1, &fam1);
		enum mark m = fam0 != fam1 || g0 == g1 ? CHANGED
		              : g1 < g0                ? WEAKENED
		                                       : STRENGTHENED;
		line(c, m, "field '%s': %s -> %s%s", f1->name, h0, h1,
		     m == WEAKENED       ? " (finer)"
		     : m == STRENGTHENED ? " (coarser)"
		                         : "");
		return;
	}
	/*
	 * Into pseudonyms, from other pseudonyms or from a generalisation: a
	 * domain other agreements use lets the values be joined with theirs.
	 */
	if (f1->action == ACTION_PSEUDONYMISE) {
		struct strbuf users;
		strbuf_init(&users);
		domain_users(c->new, a1->id, f1->domain, &users);
		if (users.len)
			line(c, WEAKENED,
			     "field '%s': %s -> %s, which agreements %s also use: the pseudonyms "
			     "can now be linked with theirs",
			     f1->name, h0, h1, users.p);
		else
			line(c, CHANGED, "field '%s': %s -> %s", f1->name, h0, h1);
		c->out->failed |= users.failed;
		strbuf_release(&users);
		return;
	}
	line(c, CHANGED, "field '%s': %s -> %s", f1->name, h0, h1);
}

static void diff_field(struct dctx *c, const struct policy_agreement *a1,
                       const struct policy_dataset *ds1, const struct policy_field *f0,
                       const struct policy_field *f1)
{
	char how[160], how0[160];
	if (!f0) {
		if (f1->action == ACTION_DROP)
			line(c, CHANGED, "field '%s': newly declared, dropped", f1->name);
		else
			line(c, WEAKENED, "field '%s': newly shared, %s", f1->name,
			     policy_field_how(f1, how, sizeof(how)));
		return;
	}
	if (!f1) {
		const char *now = ds1->unknown_drop ? "dropped" : "refused";
		if (f0->action == ACTION_DROP)
			line(c, CHANGED,
			     "field '%s': no longer declared (was dropped; now %s as unknown)",
			     f0->name, now);
		else
			line(c, STRENGTHENED,
			     "field '%s': no longer shared (was %s; now %s as unknown)", f0->name,
			     policy_field_how(f0, how0, sizeof(how0)), now);
		return;
	}
	if (f0->type != f1->type)
		line(c, CHANGED, "field '%s': type %s -> %s", f1->name,
		     policy_field_type_name(f0->type), policy_field_type_name(f1->type));
	if (f0->required != f1->required)
		line(c, CHANGED, "field '%s': %s", f1->name,
		     f1->required ? "now required" : "no longer required");
	int e0 = exposure(f0), e1 = exposure(f1);
	if (e0 == e1) {
		diff_same_exposure(c, a1, f0, f1);
		return;
	}
	/* Dropped to pseudonymised is weakened anyway; say when the pseudonyms can be joined. */
	struct strbuf users;
	strbuf_init(&users);
	if (e1 > e0 && f1->action == ACTION_PSEUDONYMISE)
		domain_users(c->new, a1->id, f1->domain, &users);
	line(c, e1 > e0 ? WEAKENED : STRENGTHENED, "field '%s': %s -> %s%s%s%s", f1->name,
	     policy_field_how(f0, how0, sizeof(how0)), policy_field_how(f1, how, sizeof(how)),
	     users.len ? ", which agreements " : "", users.len ? users.p : "",
	     users.len ? " also use: the pseudonyms can be linked with theirs" : "");
	c->out->failed |= users.failed;
	strbuf_release(&users);
}

static const struct policy_field *field_by_name(const struct policy_dataset *ds, const char *name)
{
	for (size_t i = 0; ds && i < ds->n_fields; i++)
		if (strcmp(ds->fields[i].name, name) == 0)
			return &ds->fields[i];
	return NULL;
}

static const struct policy_dataset *dataset_by_name(const struct policy_agreement *a,
                                                    const char *name)
{
	for (size_t i = 0; a && i < a->n_datasets; i++)
		if (strcmp(a->datasets[i].name, name) == 0)
			return &a->datasets[i];
	return NULL;
}

static void diff_dataset(struct dctx *c, const struct policy_agreement *a1,
                         const struct policy_dataset *ds0, const struct policy_dataset *ds1)
{
	if (ds0->unknown_drop != ds1->unknown_drop)
		line(c, CHANGED, "unknown fields: %s -> %s",
		     ds0->unknown_drop ? "dropped" : "refused",
		     ds1->unknown_drop ? "dropped" : "refused");
	for (size_t i = 0; i < ds1->n_fields; i++)
		diff_field(c, a1, ds1, field_by_name(ds0, ds1->fields[i].name), &ds1->fields[i]);
	for (size_t i = 0; i < ds0->n_fields; i++)
		if (!field_by_name(ds1, ds0->fields[i].name))
			diff_field(c, a1, ds1, &ds0->fields[i], NULL);
}

/* "in clear: a, b; generalised: c as its year; ..." */
static void shares(const struct policy_dataset *ds, struct strbuf *out)
{
	static const struct {
		enum field_action action;
		const char *head;
	} groups[] = {{ACTION_PASS, "in clear"},
	              {ACTION_GENERALISE, "generalised"},
	              {ACTION_PSEUDONYMISE, "pseudonymised"},
	              {ACTION_DROP, "dropped"}};
	char buf[64];
	for (size_t g = 0; g < ARRAY_LEN(groups); g++) {
		size_t n = 0;
		for (size_t i = 0; i < ds->n_fields; i++) {
			const struct policy_field *f = &ds->fields[i];
			if (f->action != groups[g].action)
				continue;
			if (n++ == 0)
				strbuf_printf(out, "%s%s: ", out->len ? "; " : "", groups[g].head);
			else
				strbuf_puts(out, ", ");
			strbuf_puts(out, f->name);
			if (f->action == ACTION_GENERALISE)
				strbuf_printf(out, " as %s",
				              policy_generalise_label(f, buf, sizeof(buf)));
			else if (f->action == ACTION_PSEUDONYMISE)
				strbuf_printf(out, " (linkage domain %s)", f->domain);
		}
	}
}

static bool flow_in(const struct policy_agreement *a, const struct policy_dataset *ds,
                    const char *sender, const char *recipient)
{
	return a && ds && listed(a->senders, a->n_senders, sender) &&
	       listed(a->recipients, a->n_recipients, recipient);
}

static void diff_flow(struct dctx *c, const char *id, const struct policy_agreement *a0,
                      const struct policy_agreement *a1, const char *dsname, const char *s,
                      const char *r)
{
	const struct policy_dataset *ds0 = dataset_by_name(a0, dsname);
	const struct policy_dataset *ds1 = dataset_by_name(a1, dsname);
	bool in0 = flow_in(a0, ds0, s, r), in1 = flow_in(a1, ds1, s, r);
	section(c, "Flow %s -> %s, agreement %s, dataset %s:", s, r, id, dsname);
	if (in0 && in1) {
		diff_dataset(c, a1, ds0, ds1);
	} else if (in1) {
		struct strbuf what;
		strbuf_init(&what);
		shares(ds1, &what);
		line(c, WEAKENED, "new flow: %s", what.p ? what.p : "");
		c->out->failed |= what.failed;
		strbuf_release(&what);
	} else if (in0) {
		line(c, STRENGTHENED, "flow removed: nothing is shared on it any more");
	}
}

/*
 * Every (sender, recipient) pair of either version, for one dataset; a partner
 * both sender and recipient has no flow to itself, since the gateway refuses
 * that send (rule agreement.recipient).
 */
static void diff_flows_of(struct dctx *c, const char *id, const struct policy_agreement *a0,
                          const struct policy_agreement *a1, const char *dsname)
{
	const struct policy_agreement *v[2] = {a1, a0};
	for (int si = 0; si < 2; si++) {
		for (size_t s = 0; v[si] && s < v[si]->n_senders; s++) {
			const char *snd = v[si]->senders[s];
			if (si == 1 && a1 && listed(a1->senders, a1->n_senders, snd))
				continue;
			for (int ri = 0; ri < 2; ri++) {
				for (size_t r = 0; v[ri] && r < v[ri]->n_recipients; r++) {
					const char *rcp = v[ri]->recipients[r];
					if (ri == 1 && a1 &&
					    listed(a1->recipients, a1->n_recipients, rcp))
						continue;
					if (strcmp(snd, rcp) == 0)
						continue;
					diff_flow(c, id, a0, a1, dsname, snd, rcp);
				}
			}
		}
	}
}

static void diff_agreement(struct dctx *c, const char *id)
{
	const struct policy_agreement *a0 = policy_agreement_by_id(c->old, id);
	const struct policy_agreement *a1 = policy_agreement_by_id(c->new, id);
	section(c, "Agreement %s:", id);
	if (a0 && a1)
		diff_terms(c, a0, a1);
	else if (a1)
		line(c, WEAKENED, "agreement added (version %u): %s", a1->version, a1->title);
	else
		line(c, STRENGTHENED, "agreement removed (was version %u): %s", a0->version,
		     a0->title);
	for (size_t i = 0; a1 && i < a1->n_datasets; i++)
		diff_flows_of(c, id, a0, a1, a1->datasets[i].name);
	for (size_t i = 0; a0 && i < a0->n_datasets; i++)
		if (!dataset_by_name(a1, a0->datasets[i].name))
			diff_flows_of(c, id, a0, a1, a0->datasets[i].name);
}

static int by_text(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

int policy_diff(const struct policy_set *old_set, const struct policy_set *new_set,
                struct strbuf *out, struct policy_diff_stats *stats)
{
	memset(stats, 0, sizeof(*stats));
	struct dctx c = {.out = out, .st = stats, .old = old_set, .new = new_set};
	diff_partners(&c);
	/* Agreements of either set, each once, by id. */
	size_t n = 0, cap = old_set->n_agreements + new_set->n_agreements;
	const char **ids = malloc((cap ? cap : 1) * sizeof(*ids));
	if (!ids)
		return ISG_ERR_NOMEM;
	for (size_t i = 0; i < new_set->n_agreements; i++)
		ids[n++] = new_set->agreements[i].id;
	for (size_t i = 0; i < old_set->n_agreements; i++)
		if (!policy_agreement_by_id(new_set, old_set->agreements[i].id))
			ids[n++] = old_set->agreements[i].id;
	qsort(ids, n, sizeof(*ids), by_text);
	for (size_t i = 0; i < n; i++)
		diff_agreement(&c, ids[i]);
	free(ids);
	return out->failed ? ISG_ERR_NOMEM : 0;
}

/* ---- versions ---- */

/* The same partner ids, in any order. */
static bool same_list(char *const *l0, size_t n0, char *const *l1, size_t n1)
{
	for (size_t i = 0; i < n1; i++)
		if (!listed(l0, n0, l1[i]))
			return false;
	for (size_t i = 0; i < n0; i++)
		if (!listed(l1, n1, l0[i]))
			return false;
	return true;
}

static bool same_field(const struct policy_field *f0, const struct policy_field *f1)
{
	return f0->type == f1->type && f0->action == f1->action && f0->required == f1->required &&
	       same_text(f0->domain, f1->domain) && f0->to == f1->to && f0->width == f1->width;
}

/* The same fields by name, in any order, each with the same type and action. */
static bool same_dataset(const struct policy_dataset *ds0, const struct policy_dataset *ds1)
{
	if (ds0->unknown_drop != ds1->unknown_drop || ds0->n_fields != ds1->n_fields)
		return false;
	for (size_t i = 0; i < ds1->n_fields; i++) {
		const struct policy_field *f0 = field_by_name(ds0, ds1->fields[i].name);
		if (!f0 || !same_field(f0, &ds1->fields[i]))
			return false;
	}
	return true;
}

/* Names are unique in each agreement, so equal counts and a match for each suffice. */
static bool same_datasets(const struct policy_agreement *a0, const struct policy_agreement *a1)
{
	if (a0->n_datasets != a1->n_datasets)
		return false;
	for (size_t i = 0; i < a1->n_datasets; i++) {
		const struct policy_dataset *ds0 = dataset_by_name(a0, a1->datasets[i].name);
		if (!ds0 || !same_dataset(ds0, &a1->datasets[i]))
			return false;
	}
	return true;
}

bool policy_agreement_same_terms(const struct policy_agreement *a0,
                                 const struct policy_agreement *a1)
{
	return same_list(a0->senders, a0->n_senders, a1->senders, a1->n_senders) &&
	       same_list(a0->recipients, a0->n_recipients, a1->recipients, a1->n_recipients) &&
	       same_list(a0->controllers, a0->n_controllers, a1->controllers, a1->n_controllers) &&
	       same_list(a0->lawful_basis, a0->n_lawful_basis, a1->lawful_basis,
	                 a1->n_lawful_basis) &&
	       strcmp(a0->purpose_code, a1->purpose_code) == 0 &&
	       strcmp(a0->purpose_text, a1->purpose_text) == 0 && same_text(a0->dpia, a1->dpia) &&
	       a0->valid_from_days == a1->valid_from_days &&
	       a0->valid_until_days == a1->valid_until_days &&
	       a0->max_records_per_message == a1->max_records_per_message &&
	       a0->records_per_day == a1->records_per_day &&
	       a0->messages_per_day == a1->messages_per_day &&
	       a0->undelivered_ttl_ms == a1->undelivered_ttl_ms &&
	       a0->allow_reply == a1->allow_reply && same_datasets(a0, a1);
}

size_t policy_version_issues(const struct policy_set *old_set, const struct policy_set *new_set,
                             policy_version_issue_fn fn, void *ctx)
{
	size_t n = 0;
	for (size_t i = 0; old_set && new_set && i < new_set->n_agreements; i++) {
		const struct policy_agreement *a1 = &new_set->agreements[i];
		const struct policy_agreement *a0 = policy_agreement_by_id(old_set, a1->id);
		if (!a0 || a1->version > a0->version ||
		    (a1->version == a0->version && policy_agreement_same_terms(a0, a1)))
			continue;
		if (fn)
			fn(ctx, a0, a1);
		n++;
	}
	return n;
}
