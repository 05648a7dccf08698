/*
 * An agreement in plain language, for the IG officers who read
 * `isgctl policy show`: who sends what to whom, why, on what basis, until
 * when, and how each field arrives. Text from the policy files is printed
 * with control characters replaced, so a file cannot drive the terminal.
 */
#include "policy/internal.h"

#include <stdio.h>
#include <string.h>

#include "util/util.h"

#define WIDTH 80

const char *policy_type_label(enum field_type t)
{
	switch (t) {
	case FIELD_TEXT:
		return "text";
	case FIELD_INTEGER:
		return "whole number";
	case FIELD_NUMBER:
		return "number";
	case FIELD_BOOLEAN:
		return "yes/no";
	case FIELD_DATE:
		return "date";
	case FIELD_NHS_NUMBER:
		return "NHS number";
	case FIELD_PNC_ID:
		return "PNC ID";
	case FIELD_POSTCODE:
		return "postcode";
	case FIELD_NAME:
		return "name";
	case FIELD_EMAIL:
		return "email address";
	case FIELD_IDENTIFIER:
		return "identifier";
	}
	return "unknown type";
}

const char *policy_generalise_label(const struct policy_field *f, char *buf, size_t size)
{
	switch (f->to) {
	case GEN_YEAR:
		return "its year";
	case GEN_MONTH:
		return "its month";
	case GEN_AGE_BAND:
		snprintf(buf, size, "a %lld-year age band", (long long)f->width);
		return buf;
	case GEN_POSTCODE_AREA:
		return "its postcode area";
	case GEN_POSTCODE_DISTRICT:
		return "its postcode district";
	case GEN_POSTCODE_SECTOR:
		return "its postcode sector";
	case GEN_NUMBER_BAND:
		snprintf(buf, size, "a band of %lld", (long long)f->width);
		return buf;
	case GEN_NONE:
		break;
	}
	return "?";
}

const char *policy_field_how(const struct policy_field *f, char *buf, size_t size)
{
	char gen[64];
	switch (f->action) {
	case ACTION_PASS:
		return "in clear";
	case ACTION_DROP:
		return "dropped";
	case ACTION_GENERALISE:
		snprintf(buf, size, "generalised as %s",
		         policy_generalise_label(f, gen, sizeof(gen)));
		return buf;
	case ACTION_PSEUDONYMISE:
		snprintf(buf, size, "pseudonymised in linkage domain %s", f->domain);
		return buf;
	}
	return "?";
}

/*
 * C0 controls, DEL, C1 controls (U+0080-U+009F: U+009B is CSI, an escape
 * introducer for terminals) and invalid UTF-8 become '?'; line breaks and
 * tabs a space. Other characters are kept.
 */
void policy_put_clean(struct strbuf *b, const char *s, size_t len)
{
	for (size_t i = 0; i < len;) {
		const char *u = s + i;
		size_t n = str_utf8_char(u, len - i);
		bool blank = n == 1 && (u[0] == '\n' || u[0] == '\t' || u[0] == '\r');
		if (blank || n == 0 || str_utf8_control(u, n))
			strbuf_append(b, blank ? " " : "?", 1);
		else
			strbuf_append(b, u, n);
		i += n ? n : 1;
	}
}

const char *policy_partner_label(const struct policy_set *set, const char *id, char *buf,
                                 size_t size)
{
	const struct policy_partner *p = policy_partner_by_id(set, id);
	if (p)
		snprintf(buf, size, "%s (%s)", p->name, id);
	else
		snprintf(buf, size, "%s", id);
	return buf;
}

/* ---- wrapped text ---- */

/* Words go on the current line while they fit in WIDTH columns, else on a new, indented one. */
struct wrap {
	struct strbuf *out;
	size_t col;
	size_t indent;
};

static void wrap_start(struct wrap *w, struct strbuf *out, size_t indent, const char *head)
{
	w->out = out;
	w->indent = indent;
	w->col = 0;
	for (size_t i = 0; i < indent; i++)
		strbuf_append(out, " ", 1);
	w->col = indent;
	if (head) {
		policy_put_clean(out, head, strlen(head));
		w->col += strlen(head);
	}
}

/* One unit that is never broken (it may hold spaces), preceded by a space unless first. */
static void wrap_unit(struct wrap *w, const char *s, size_t len)
{
	bool first = w->col == w->indent;
	if (!first && w->col + 1 + len > WIDTH) {
		strbuf_append(w->out, "\n", 1);
		for (size_t i = 0; i < w->indent + 2; i++)
			strbuf_append(w->out, " ", 1);
		w->col = w->indent + 2;
		first = true;
	}
	if (!first) {
		strbuf_append(w->out, " ", 1);
		w->col++;
	}
	policy_put_clean(w->out, s, len);
	w->col += len;
}

/* Prose: broken at any blank. */
static void wrap_text(struct wrap *w, const char *s)
{
	while (*s) {
		s += strspn(s, " \t\r\n");
		size_t len = strcspn(s, " \t\r\n");
		if (len)
			wrap_unit(w, s, len);
		s += len;
	}
}

static void wrap_end(struct wrap *w)
{
	strbuf_append(w->out, "\n", 1);
}

/* "A", "A and B", "A, B and C" */
static const char *list_sep(size_t i, size_t n)
{
	return i + 1 == n ? "" : i + 2 == n ? " and" : ",";
}

static void wrap_partners(struct wrap *w, const struct policy_set *set, char *const *ids, size_t n)
{
	char label[400], unit[420];
	for (size_t i = 0; i < n; i++) {
		snprintf(unit, sizeof(unit), "%s%s",
		         policy_partner_label(set, ids[i], label, sizeof(label)), list_sep(i, n));
		wrap_text(w, unit);
	}
}

/* ---- the summary ---- */

static void describe_head(const struct policy_set *set, const struct policy_agreement *a,
                          struct strbuf *out)
{
	struct wrap w;
	char unit[300];
	/* The first line is never wrapped: it is what a reader searches for. */
	strbuf_printf(out, "Agreement %s, version %u: ", a->id, a->version);
	policy_put_clean(out, a->title, strlen(a->title));
	strbuf_puts(out, "\n");

	wrap_start(&w, out, 0, NULL);
	wrap_partners(&w, set, a->senders, a->n_senders);
	if (policy_agreement_has_flow(a)) {
		wrap_text(&w, a->n_senders == 1 ? "sends to" : "send to");
		wrap_partners(&w, set, a->recipients, a->n_recipients);
		strbuf_puts(out, ".");
	} else {
		/* As the gateway applies it: a partner never sends to itself. */
		wrap_text(&w, "is its only sender and its only recipient, and a partner never "
		              "sends to itself: nothing can be sent under this agreement.");
	}
	wrap_end(&w);

	wrap_start(&w, out, 0, "Controllers:");
	if (a->n_controllers)
		wrap_partners(&w, set, a->controllers, a->n_controllers);
	else
		wrap_text(&w, "not named");
	strbuf_puts(out, ".");
	wrap_end(&w);

	wrap_start(&w, out, 0, NULL);
	snprintf(unit, sizeof(unit), "Purpose (%s):", a->purpose_code);
	wrap_text(&w, unit);
	wrap_text(&w, a->purpose_text);
	wrap_end(&w);

	strbuf_puts(out, "Lawful basis:\n");
	for (size_t i = 0; i < a->n_lawful_basis; i++) {
		wrap_start(&w, out, 2, "-");
		wrap_text(&w, a->lawful_basis[i]);
		wrap_end(&w);
	}
	wrap_start(&w, out, 0, "DPIA:");
	wrap_text(&w, a->dpia ? a->dpia : "none referenced");
	wrap_end(&w);
}

static void describe_dates(const struct policy_agreement *a, int64_t today, struct strbuf *out)
{
	char from[48], until[48], review[48], now[48];
	policy_format_day(from, a->valid_from_days);
	if (a->valid_until_days == INT64_MAX)
		strbuf_printf(out, "Valid from %s (UTC), with no end date", from);
	else
		strbuf_printf(out, "Valid %s to %s (UTC)", from,
		              policy_format_day(until, a->valid_until_days));
	if (a->review_days == INT64_MAX)
		strbuf_puts(out, "; no review date");
	else
		strbuf_printf(out, "; review by %s%s", policy_format_day(review, a->review_days),
		              today != INT64_MIN && a->review_days < today ? " (overdue)" : "");
	strbuf_puts(out, ".\n");
	if (today == INT64_MIN)
		return;
	policy_format_day(now, today);
	if (today < a->valid_from_days)
		strbuf_printf(out, "Not yet in force: today (UTC) is %s.\n", now);
	else if (today > a->valid_until_days)
		strbuf_printf(out, "Expired: today (UTC) is %s.\n", now);
}

/* One line of fields that arrive the same way; nothing when there are none. */
static void describe_fields(const struct policy_dataset *ds, const char *head,
                            bool (*pick)(const struct policy_field *, const char *),
                            const char *domain, bool how, struct strbuf *out)
{
	size_t n = 0;
	for (size_t i = 0; i < ds->n_fields; i++)
		n += pick(&ds->fields[i], domain);
	if (!n)
		return;
	struct wrap w;
	wrap_start(&w, out, 2, head);
	char unit[200], gen[64];
	for (size_t i = 0, k = 0; i < ds->n_fields; i++) {
		const struct policy_field *f = &ds->fields[i];
		if (!pick(f, domain))
			continue;
		if (f->action == ACTION_GENERALISE)
			snprintf(unit, sizeof(unit), "%s as %s%s", f->name,
			         policy_generalise_label(f, gen, sizeof(gen)),
			         k + 1 == n ? "" : ",");
		else if (how)
			snprintf(unit, sizeof(unit), "%s (%s)%s", f->name,
			         policy_type_label(f->type), k + 1 == n ? "" : ",");
		else
			snprintf(unit, sizeof(unit), "%s%s", f->name, k + 1 == n ? "" : ",");
		wrap_unit(&w, unit, strlen(unit));
		k++;
	}
	wrap_end(&w);
}

static bool pick_clear(const struct policy_field *f, const char *d)
{
	return f->action == ACTION_PASS;
}

static bool pick_generalised(const struct policy_field *f, const char *d)
{
	return f->action == ACTION_GENERALISE;
}

static bool pick_domain(const struct policy_field *f, const char *d)
{
	return f->action == ACTION_PSEUDONYMISE && strcmp(f->domain, d) == 0;
}

static bool pick_dropped(const struct policy_field *f, const char *d)
{
	return f->action == ACTION_DROP;
}

static void describe_dataset(const struct policy_dataset *ds, struct strbuf *out)
{
	strbuf_printf(out, "\nDataset %s:\n", ds->name);
	describe_fields(ds, "arrive in clear:", pick_clear, NULL, true, out);
	describe_fields(ds, "arrive generalised:", pick_generalised, NULL, false, out);
	/* One line per linkage domain, in the order the fields name them. */
	for (size_t i = 0; i < ds->n_fields; i++) {
		const struct policy_field *f = &ds->fields[i];
		bool first = f->action == ACTION_PSEUDONYMISE;
		for (size_t k = 0; first && k < i; k++)
			first = !pick_domain(&ds->fields[k], f->domain);
		if (!first)
			continue;
		char head[120];
		snprintf(head, sizeof(head),
		         "arrive pseudonymised (linkage domain %s):", f->domain);
		describe_fields(ds, head, pick_domain, f->domain, false, out);
	}
	describe_fields(ds, "never leave the sender (dropped):", pick_dropped, NULL, false, out);
	strbuf_printf(out, "  unknown fields: %s\n",
	              ds->unknown_drop ? "dropped (never leave the sender)"
	                               : "refused (a record with a field not listed is refused)");
}

/* 14d, 12h, 90m... as words: "14 days". */
static void describe_duration(int64_t ms, struct strbuf *out)
{
	static const struct {
		int64_t ms;
		const char *unit;
	} units[] = {{86400000, "day"}, {3600000, "hour"}, {60000, "minute"}, {1000, "second"}};
	for (size_t i = 0; i < ARRAY_LEN(units); i++) {
		if (ms % units[i].ms == 0) {
			int64_t n = ms / units[i].ms;
			strbuf_printf(out, "%lld %s%s", (long long)n, units[i].unit,
			              n == 1 ? "" : "s");
			return;
		}
	}
	strbuf_printf(out, "%lld milliseconds", (long long)ms);
}

static void describe_limits(const struct policy_agreement *a, struct strbuf *out)
{
	struct strbuf t;
	strbuf_init(&t);
	if (a->max_records_per_message)
		strbuf_printf(&t, "%u records per message;", a->max_records_per_message);
	else
		strbuf_puts(&t, "the gateway's limit of records per message;");
	if (a->records_per_day && a->messages_per_day)
		strbuf_printf(&t, " %u records and %u messages", a->records_per_day,
		              a->messages_per_day);
	else if (a->records_per_day)
		strbuf_printf(&t, " %u records", a->records_per_day);
	else if (a->messages_per_day)
		strbuf_printf(&t, " %u messages", a->messages_per_day);
	if (a->records_per_day || a->messages_per_day)
		strbuf_puts(&t, " per sender per day (UTC).");
	else
		strbuf_puts(&t, " no daily limit.");
	strbuf_puts(&t, " Undelivered data waits at most ");
	if (a->undelivered_ttl_ms)
		describe_duration(a->undelivered_ttl_ms, &t);
	else
		strbuf_puts(&t, "the gateway's default time (store.undelivered_ttl)");
	strbuf_puts(&t, ".");
	struct wrap w;
	strbuf_puts(out, "\n");
	wrap_start(&w, out, 0, "Limits:");
	wrap_text(&w, t.p ? t.p : "");
	wrap_end(&w);
	strbuf_printf(out, "Replies: %s.\n",
	              a->allow_reply ? "allowed (a message under this agreement may answer an "
	                               "earlier message)"
	                             : "not allowed");
	out->failed |= t.failed;
	strbuf_release(&t);
}

int policy_describe(const struct policy_set *set, const struct policy_agreement *a,
                    int64_t today_days, struct strbuf *out)
{
	describe_head(set, a, out);
	describe_dates(a, today_days, out);
	for (size_t i = 0; i < a->n_datasets; i++)
		describe_dataset(&a->datasets[i], out);
	describe_limits(a, out);
	return out->failed ? ISG_ERR_NOMEM : 0;
}
