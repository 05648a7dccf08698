/*
 * isgctl audit report: the figures of a privacy-impact review over a period
 * (UTC days, both ends included), from the audit log alone, as one
 * self-contained HTML page (inline CSS and SVG, no script, nothing fetched),
 * Markdown or CSV.
 *
 * One pass over the entries of the period tallies, per day, agreement and
 * sending partner, the messages and records accepted, the refusals and the
 * deliveries; refusals per rule; per agreement, dataset and field the
 * records shared under each action (the "fields" of message.accepted); and
 * entries per event. As in list and subject, the pass reads every entry of
 * the log (cmd_audit_read.c) and judges it by its signed bytes alone: its
 * day is its signed time and everything counted comes from the signed
 * entry, never from the table's at or kind column, which nothing signs; an
 * entry that cannot be read may belong to the period, so the report says it
 * is INCOMPLETE. The same read transaction then runs the checks of `isgctl
 * audit verify` over the whole log, so the integrity section and the figures
 * describe one snapshot.
 *
 * Every string in the output comes from the log, which holds strings a
 * partner chose (message ids, agreement ids asked for): each is escaped for
 * the output's language. The report shows no message id, certificate
 * subject or pseudonym: only agreements, partners, datasets, fields, rules
 * and counts.
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "ctl/cmd_audit.h"
#include "ctl/ctl.h"
#include "policy/policy.h"

#define REPORT_DAYS_MAX 1100 /* about three years: a chart bar per day stays readable */
#define SERIES_MAX 8         /* bars per chart: the largest, then "other" */
#define LABEL_MAX 40         /* bytes of a chart label */

static const char report_usage[] =
    "usage: isgctl audit report --from YYYY-MM-DD --to YYYY-MM-DD\n"
    "                           (--html FILE | --markdown FILE | --csv FILE)...\n"
    "                           [--policy DIR]\n"
    "                           (--config ISGD_YAML | --store DB [--keys KEYS_DIR])\n"
    "                           [--origin NAME] [--pubkey KEY | --pubkey-file FILE]\n"
    "                           [--against FILE ...] [--grace SECONDS]\n";

enum {
	OPT_FROM = AUDIT_OPT_FIRST_OWN,
	OPT_TO,
	OPT_HTML,
	OPT_MARKDOWN,
	OPT_CSV,
	OPT_POLICY,
	OPT_GRACE,
	OPT_AGAINST,
};

/* ---- interned strings ---- */

struct strtab {
	char **s;
	size_t n, cap;
	size_t *slots; /* id + 1; 0 = empty */
	size_t nslots;
};

static uint64_t hash_bytes(const void *p, size_t len, uint64_t h)
{
	const unsigned char *b = p;
	for (size_t i = 0; i < len; i++)
		h = (h ^ b[i]) * 1099511628211u;
	return h;
}

static bool slots_grow(size_t **slots, size_t *nslots, size_t n)
{
	if ((n + 1) * 2 <= *nslots)
		return true;
	size_t ns = *nslots ? *nslots * 2 : 64;
	size_t *s = calloc(ns, sizeof(*s));
	if (!s)
		return false;
	free(*slots);
	*slots = s;
	*nslots = ns;
	return true;
}

static bool strtab_rehash(struct strtab *t)
{
	size_t old = t->nslots;
	if (!slots_grow(&t->slots, &t->nslots, t->n))
		return false;
	if (old == t->nslots)
		return true;
	for (size_t id = 0; id < t->n; id++) {
		size_t i =
		    hash_bytes(t->s[id], strlen(t->s[id]), 14695981039346656037u) & (t->nslots - 1);
		while (t->slots[i])
			i = (i + 1) & (t->nslots - 1);
		t->slots[i] = id + 1;
	}
	return true;
}

/* The id of s (NULL means ""); ids count from 0 in order of first sight. */
static int strtab_id(struct strtab *t, const char *s, uint32_t *id)
{
	if (!s)
		s = "";
	if (!strtab_rehash(t))
		return ISG_ERR_NOMEM;
	size_t len = strlen(s);
	size_t i = hash_bytes(s, len, 14695981039346656037u) & (t->nslots - 1);
	for (; t->slots[i]; i = (i + 1) & (t->nslots - 1)) {
		if (strcmp(t->s[t->slots[i] - 1], s) == 0) {
			*id = (uint32_t)(t->slots[i] - 1);
			return 0;
		}
	}
	if (t->n >= UINT32_MAX)
		return ISG_ERR_NOMEM;
	if (t->n == t->cap) {
		size_t cap = t->cap ? t->cap * 2 : 64;
		char **ns = realloc(t->s, cap * sizeof(*ns));
		if (!ns)
			return ISG_ERR_NOMEM;
		t->s = ns;
		t->cap = cap;
	}
	if (!(t->s[t->n] = strdup(s)))
		return ISG_ERR_NOMEM;
	t->slots[i] = t->n + 1;
	*id = (uint32_t)t->n++;
	return 0;
}

static void strtab_release(struct strtab *t)
{
	for (size_t i = 0; i < t->n; i++)
		free(t->s[i]);
	free(t->s);
	free(t->slots);
}

/* ---- tallies keyed by up to four ids ---- */

enum { V_MESSAGES, V_RECORDS, V_REFUSED, V_DELIVERED, V_ACKED, V_EXPIRED, V_N };

struct tally {
	uint32_t key[4];
	uint64_t v[V_N];
};

struct tmap {
	struct tally *items;
	size_t n, cap;
	size_t *slots;
	size_t nslots;
};

static size_t tally_slot(const struct tmap *m, const uint32_t key[4])
{
	return hash_bytes(key, 4 * sizeof(uint32_t), 14695981039346656037u) & (m->nslots - 1);
}

static struct tally *tmap_get(struct tmap *m, uint32_t k0, uint32_t k1, uint32_t k2, uint32_t k3)
{
	const uint32_t key[4] = {k0, k1, k2, k3};
	size_t old = m->nslots;
	if (!slots_grow(&m->slots, &m->nslots, m->n))
		return NULL;
	if (old != m->nslots) {
		for (size_t j = 0; j < m->n; j++) {
			size_t i = tally_slot(m, m->items[j].key);
			while (m->slots[i])
				i = (i + 1) & (m->nslots - 1);
			m->slots[i] = j + 1;
		}
	}
	size_t i = tally_slot(m, key);
	for (; m->slots[i]; i = (i + 1) & (m->nslots - 1))
		if (memcmp(m->items[m->slots[i] - 1].key, key, sizeof(key)) == 0)
			return &m->items[m->slots[i] - 1];
	if (m->n == m->cap) {
		size_t cap = m->cap ? m->cap * 2 : 64;
		struct tally *ni = realloc(m->items, cap * sizeof(*ni));
		if (!ni)
			return NULL;
		m->items = ni;
		m->cap = cap;
	}
	struct tally *t = &m->items[m->n];
	memset(t, 0, sizeof(*t));
	memcpy(t->key, key, sizeof(key));
	m->slots[i] = ++m->n;
	return t;
}

/* The tally of this key, or NULL when there is none. */
static const struct tally *tmap_find(const struct tmap *m, uint32_t k0)
{
	const uint32_t key[4] = {k0, 0, 0, 0};
	if (!m->nslots)
		return NULL;
	for (size_t i = tally_slot(m, key); m->slots[i]; i = (i + 1) & (m->nslots - 1))
		if (memcmp(m->items[m->slots[i] - 1].key, key, sizeof(key)) == 0)
			return &m->items[m->slots[i] - 1];
	return NULL;
}

static void tmap_release(struct tmap *m)
{
	free(m->items);
	free(m->slots);
}

/* ---- the report ---- */

static const char *const action_names[] = {"pass", "drop", "generalise", "pseudonymise"};

struct report {
	int64_t from_days, to_days;
	size_t ndays;
	struct strtab str;
	struct tmap cells;    /* (day, agreement, sender): every V_ */
	struct tmap received; /* (recipient): V_MESSAGES, V_RECORDS accepted for it; V_DELIVERED,
	                         V_ACKED, V_EXPIRED of messages for it */
	struct tmap rules;    /* (rule): V_REFUSED, V_RECORDS */
	struct tmap fields;   /* (agreement, dataset, field, action): V_RECORDS, V_MESSAGES */
	struct tmap kinds;    /* (event): V_MESSAGES = entries */
	uint64_t entries;
	uint64_t total[V_N];
	uint64_t conn_accepted, conn_refused, conn_closed;
	struct audit_reader read; /* the pass; read.unread: entries left out */
	/* integrity */
	bool verified; /* the checks ran */
	struct audit_verify_result vr;
	char *problems;
	size_t problems_len;
	char key[AUDIT_VERIFIER_KEY_MAX];
	const char *key_from;
	char key_error[AUDIT_KEY_ERROR_MAX]; /* why the checks did not run */
	/* context */
	struct policy_set *policy;
	const char *origin;
	char generated[32];
};

static uint64_t member_uint(const struct aj_doc *d, const struct aj_node *o, const char *key)
{
	uint64_t v = 0;
	const struct aj_node *m = aj_member(d, o, key);
	if (!m || !aj_uint(m, &v))
		return 0;
	return v;
}

/* The "fields" object of a message.accepted entry: records per field per action. */
static int tally_fields(struct report *r, const struct aj_doc *d, const struct aj_node *b,
                        uint32_t agr, uint64_t records)
{
	uint32_t ds;
	if (strtab_id(&r->str, aj_string(d, b, "dataset"), &ds) != 0)
		return ISG_ERR_NOMEM;
	const struct aj_node *fo = aj_member(d, b, "fields");
	for (uint32_t a = 0; fo && fo->type == AJ_OBJECT && a < ARRAY_LEN(action_names); a++) {
		const struct aj_node *list = aj_member(d, fo, action_names[a]);
		if (!list || list->type != AJ_ARRAY)
			continue;
		for (const struct aj_node *f = aj_first(d, list); f; f = aj_next(d, f)) {
			uint32_t fid;
			if (f->type != AJ_STRING)
				continue;
			if (strtab_id(&r->str, f->str, &fid) != 0)
				return ISG_ERR_NOMEM;
			struct tally *t = tmap_get(&r->fields, agr, ds, fid, a);
			if (!t)
				return ISG_ERR_NOMEM;
			t->v[V_RECORDS] += records;
			t->v[V_MESSAGES]++;
		}
	}
	return 0;
}

static int tally_entry(struct report *r, const struct aj_doc *d, uint32_t day,
                       const struct audit_leaf *lf)
{
	const struct aj_node *b = lf->body;
	const char *ev = lf->event;
	uint32_t kind, agr, sender, recipient;
	if (strtab_id(&r->str, ev, &kind) != 0)
		return ISG_ERR_NOMEM;
	struct tally *k = tmap_get(&r->kinds, kind, 0, 0, 0);
	if (!k)
		return ISG_ERR_NOMEM;
	k->v[V_MESSAGES]++;
	if (strcmp(ev, "connection.accepted") == 0)
		r->conn_accepted++;
	/* An entry with "repeated" stands for that many refusals (a flood coalesced). */
	if (strcmp(ev, "connection.refused") == 0) {
		uint64_t n = member_uint(d, b, "repeated");
		n = n ? n : 1;
		r->conn_refused =
		    n > UINT64_MAX - r->conn_refused ? UINT64_MAX : r->conn_refused + n;
	}
	if (strcmp(ev, "connection.closed") == 0)
		r->conn_closed++;
	int v = strcmp(ev, "message.accepted") == 0       ? V_MESSAGES
	        : strcmp(ev, "message.refused") == 0      ? V_REFUSED
	        : strcmp(ev, "message.delivered") == 0    ? V_DELIVERED
	        : strcmp(ev, "message.acknowledged") == 0 ? V_ACKED
	        : strcmp(ev, "message.expired") == 0      ? V_EXPIRED
	                                                  : -1;
	if (v < 0)
		return 0;
	if (strtab_id(&r->str, aj_string(d, b, "agreement_id"), &agr) != 0 ||
	    strtab_id(&r->str, aj_string(d, b, "sender"), &sender) != 0 ||
	    strtab_id(&r->str, aj_string(d, b, "recipient"), &recipient) != 0)
		return ISG_ERR_NOMEM;
	struct tally *c = tmap_get(&r->cells, day, agr, sender, 0);
	if (!c)
		return ISG_ERR_NOMEM;
	uint64_t records = member_uint(d, b, "records");
	c->v[v]++;
	r->total[v]++;
	if (v == V_MESSAGES) {
		c->v[V_RECORDS] += records;
		r->total[V_RECORDS] += records;
		struct tally *t = tmap_get(&r->received, recipient, 0, 0, 0);
		if (!t)
			return ISG_ERR_NOMEM;
		t->v[V_MESSAGES]++;
		t->v[V_RECORDS] += records;
		return tally_fields(r, d, b, agr, records);
	}
	if (v == V_DELIVERED || v == V_ACKED || v == V_EXPIRED) {
		/* by recipient too: one receiving far more than it acknowledges shows */
		struct tally *t = tmap_get(&r->received, recipient, 0, 0, 0);
		if (!t)
			return ISG_ERR_NOMEM;
		t->v[v]++;
		return 0;
	}
	if (v == V_REFUSED) {
		uint32_t rule;
		if (strtab_id(&r->str, aj_string(d, b, "rule"), &rule) != 0)
			return ISG_ERR_NOMEM;
		struct tally *t = tmap_get(&r->rules, rule, 0, 0, 0);
		if (!t)
			return ISG_ERR_NOMEM;
		t->v[V_REFUSED]++;
		t->v[V_RECORDS] += records;
	}
	return 0;
}

/* An entry of the period, placed on its day by its signed time. */
static int report_entry(void *ctx, const struct aj_doc *d, const struct audit_leaf *lf,
                        int64_t at_ms, const char *leaf, size_t len)
{
	struct report *r = ctx;
	(void)leaf;
	(void)len;
	int64_t day = date_days_of_ms(at_ms) - r->from_days;
	if (day < 0 || (size_t)day >= r->ndays) /* the reader kept to the period */
		fatal("audit entry outside the report's period");
	r->entries++;
	if (tally_entry(r, d, (uint32_t)day, lf) != 0) {
		ctl_warn("out of memory");
		return CTL_EXIT_LOCAL;
	}
	return CTL_EXIT_OK;
}

static int report_scan(struct report *r, struct audit_log *l)
{
	r->read.from_ms = r->from_days * 86400000;
	r->read.to_ms = (r->to_days + 1) * 86400000 - 1;
	return audit_read_entries(l, &r->read, report_entry, r);
}

struct report_args {
	const char *from, *to, *html, *markdown, *csv, *policy;
	int64_t grace_ms; /* -1: the default */
	char **against;   /* --against FILE, each a checkpoint saved elsewhere; argc long */
	size_t n_against;
};

/* The checks of audit verify; problems are kept for the report. */
static int report_verify(struct report *r, struct audit_log *l, const struct audit_where *w,
                         const struct report_args *a)
{
	struct audit_verifier v;
	if (audit_log_verifier(l, w, &v, r->key, &r->key_from) != CTL_EXIT_OK) {
		str_copy(r->key_error, l->key_error, sizeof(r->key_error));
		ctl_warn("the log's integrity cannot be checked: the report says why");
		return CTL_EXIT_OK;
	}
	FILE *out = open_memstream(&r->problems, &r->problems_len);
	if (!out) {
		ctl_warn("out of memory");
		return CTL_EXIT_LOCAL;
	}
	int status = audit_verify_log(l, &v, a->grace_ms, a->against, a->n_against, out, &r->vr);
	if (fclose(out) != 0 && status == CTL_EXIT_OK) {
		ctl_warn("out of memory");
		status = CTL_EXIT_LOCAL;
	}
	r->verified = status == CTL_EXIT_OK;
	return status;
}

/* ---- ordering ---- */

/* Tallies sorted by the strings their keys name (n_keys of them), then by key. */
struct order_ctx {
	const struct report *r;
	const struct tmap *m;
	int n_str; /* how many leading keys are string ids; the rest compare as numbers */
	bool day_first;
};

static int order_cmp(const void *a, const void *b, void *arg)
{
	const struct order_ctx *c = arg;
	const struct tally *x = &c->m->items[*(const size_t *)a],
	                   *y = &c->m->items[*(const size_t *)b];
	for (int i = 0; i < 4; i++) {
		bool is_str = c->day_first ? (i >= 1 && i <= c->n_str) : i < c->n_str;
		int d;
		if (is_str)
			d = strcmp(c->r->str.s[x->key[i]], c->r->str.s[y->key[i]]);
		else
			d = x->key[i] < y->key[i] ? -1 : x->key[i] > y->key[i];
		if (d)
			return d;
	}
	return 0;
}

static size_t *tmap_order(const struct report *r, const struct tmap *m, int n_str, bool day_first)
{
	size_t *idx = malloc((m->n ? m->n : 1) * sizeof(*idx));
	if (!idx)
		return NULL;
	for (size_t i = 0; i < m->n; i++)
		idx[i] = i;
	struct order_ctx c = {r, m, n_str, day_first};
	qsort_r(idx, m->n, sizeof(*idx), order_cmp, &c);
	return idx;
}

/* ---- per-partner and per-agreement sums, and peaks per day ---- */

struct sums {
	struct tmap by_agreement; /* (agreement) */
	struct tmap by_sender;    /* (sender) */
	struct tmap peaks; /* (agreement, sender): V_MESSAGES/V_RECORDS peaks; V_ACKED/V_EXPIRED
	                      their days */
};

static int sums_build(const struct report *r, struct sums *s)
{
	memset(s, 0, sizeof(*s));
	for (size_t i = 0; i < r->cells.n; i++) {
		const struct tally *c = &r->cells.items[i];
		struct tally *a = tmap_get(&s->by_agreement, c->key[1], 0, 0, 0);
		struct tally *p = tmap_get(&s->by_sender, c->key[2], 0, 0, 0);
		struct tally *k = tmap_get(&s->peaks, c->key[1], c->key[2], 0, 0);
		if (!a || !p || !k)
			return ISG_ERR_NOMEM;
		for (int v = 0; v < V_N; v++) {
			a->v[v] += c->v[v];
			p->v[v] += c->v[v];
		}
		if (c->v[V_MESSAGES] > k->v[V_MESSAGES]) {
			k->v[V_MESSAGES] = c->v[V_MESSAGES];
			k->v[V_ACKED] = c->key[0];
		}
		if (c->v[V_RECORDS] > k->v[V_RECORDS]) {
			k->v[V_RECORDS] = c->v[V_RECORDS];
			k->v[V_EXPIRED] = c->key[0];
		}
	}
	return 0;
}

static void sums_release(struct sums *s)
{
	tmap_release(&s->by_agreement);
	tmap_release(&s->by_sender);
	tmap_release(&s->peaks);
}

/*
 * The rows of the per-partner table, the same for every output: senders by
 * name, then partners that only received.
 */
struct partner_row {
	uint32_t id;
	uint64_t sent, records_sent, refused, received, records_received;
	uint64_t delivered, acked, expired; /* of messages for it */
};

static struct partner_row *partner_rows(const struct report *r, const struct sums *s, size_t *n)
{
	static const struct tally none;
	size_t cap = s->by_sender.n + r->received.n;
	struct partner_row *rows = malloc((cap ? cap : 1) * sizeof(*rows));
	size_t *o = tmap_order(r, &s->by_sender, 1, false);
	if (!rows || !o) {
		free(rows);
		free(o);
		return NULL;
	}
	size_t k = 0;
	for (size_t i = 0; i < s->by_sender.n; i++) {
		const struct tally *t = &s->by_sender.items[o[i]];
		const struct tally *in = tmap_find(&r->received, t->key[0]);
		if (!in)
			in = &none;
		rows[k++] =
		    (struct partner_row){t->key[0],          t->v[V_MESSAGES],  t->v[V_RECORDS],
		                         t->v[V_REFUSED],    in->v[V_MESSAGES], in->v[V_RECORDS],
		                         in->v[V_DELIVERED], in->v[V_ACKED],    in->v[V_EXPIRED]};
	}
	for (size_t i = 0; i < r->received.n; i++) {
		const struct tally *in = &r->received.items[i];
		if (!tmap_find(&s->by_sender, in->key[0]))
			rows[k++] = (struct partner_row){.id = in->key[0],
			                                 .received = in->v[V_MESSAGES],
			                                 .records_received = in->v[V_RECORDS],
			                                 .delivered = in->v[V_DELIVERED],
			                                 .acked = in->v[V_ACKED],
			                                 .expired = in->v[V_EXPIRED]};
	}
	free(o);
	*n = k;
	return rows;
}

/* The limits of a peaks tally's agreement (0: none known) and whether a peak used 90%. */
struct limit_use {
	uint32_t messages, records;
	bool messages_near, records_near;
};

static struct limit_use limit_use(const struct report *r, const struct tally *t)
{
	const struct policy_agreement *a =
	    r->policy ? policy_agreement_by_id(r->policy, r->str.s[t->key[0]]) : NULL;
	struct limit_use u = {a ? a->messages_per_day : 0, a ? a->records_per_day : 0, false,
	                      false};
	u.messages_near = u.messages && t->v[V_MESSAGES] * 10 >= (uint64_t)u.messages * 9;
	u.records_near = u.records && t->v[V_RECORDS] * 10 >= (uint64_t)u.records * 9;
	return u;
}

/* ---- escaping ---- */

/* Append s as HTML text or attribute value; invalid UTF-8 and controls become '?'. */
static void html_escape(struct strbuf *b, const char *s)
{
	size_t n = strlen(s);
	bool utf8 = str_utf8_valid(s, n);
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		switch (c) {
		case '&':
			strbuf_puts(b, "&amp;");
			break;
		case '<':
			strbuf_puts(b, "&lt;");
			break;
		case '>':
			strbuf_puts(b, "&gt;");
			break;
		case '"':
			strbuf_puts(b, "&quot;");
			break;
		case '\'':
			strbuf_puts(b, "&#39;");
			break;
		default:
			if (c < 0x20 || c == 0x7f || (c >= 0x80 && !utf8))
				strbuf_puts(b, "?");
			else
				strbuf_append(b, s + i, 1);
		}
	}
}

/* At most LABEL_MAX bytes of s, cut at a character boundary, with an ellipsis. */
static void html_label(struct strbuf *b, const char *s)
{
	size_t n = strlen(s);
	if (n <= LABEL_MAX) {
		html_escape(b, s);
		return;
	}
	char cut[LABEL_MAX + 1];
	size_t k = LABEL_MAX;
	while (k > 0 && ((unsigned char)s[k] & 0xc0) == 0x80)
		k--;
	memcpy(cut, s, k);
	cut[k] = '\0';
	html_escape(b, cut);
	strbuf_puts(b, "\xe2\x80\xa6");
}

/*
 * A Markdown table cell: no line breaks; inline markup characters escaped
 * with a backslash; <, > and & as entities, so no renderer sees a tag.
 */
static void md_escape(struct strbuf *b, const char *s)
{
	size_t n = strlen(s);
	bool utf8 = str_utf8_valid(s, n);
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c < 0x20 || c == 0x7f || (c >= 0x80 && !utf8))
			strbuf_puts(b, "?");
		else if (c == '<')
			strbuf_puts(b, "&lt;");
		else if (c == '>')
			strbuf_puts(b, "&gt;");
		else if (c == '&')
			strbuf_puts(b, "&amp;");
		else if (strchr("\\`*_[]|~", c))
			strbuf_printf(b, "\\%c", c);
		else
			strbuf_append(b, s + i, 1);
	}
}

/* An RFC 4180 cell; a text a spreadsheet would run as a formula gets a leading quote. */
static void csv_escape(struct strbuf *b, const char *s)
{
	size_t n = strlen(s);
	bool utf8 = str_utf8_valid(s, n);
	bool formula = n && strchr("=+-@", s[0]);
	bool quote = formula || strpbrk(s, ",\"") != NULL;
	if (quote)
		strbuf_puts(b, "\"");
	if (formula)
		strbuf_puts(b, "'");
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c == '"')
			strbuf_puts(b, "\"\"");
		else if (c < 0x20 || c == 0x7f || (c >= 0x80 && !utf8))
			strbuf_puts(b, "?");
		else
			strbuf_append(b, s + i, 1);
	}
	if (quote)
		strbuf_puts(b, "\"");
}

static const char *name_or_none(const struct report *r, uint32_t id)
{
	return r->str.s[id][0] ? r->str.s[id] : "(none)";
}

static void day_text(char out[static 11], const struct report *r, uint64_t day)
{
	char buf[32];
	time_format_ms(buf, sizeof(buf), (r->from_days + (int64_t)day) * 86400000);
	memcpy(out, buf, 10);
	out[10] = '\0';
}

/* ---- HTML: charts ---- */

static const char *const palette[SERIES_MAX + 1] = {
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#17becf", "#9a9a9a", /* the last: other */
};

/* Series of a chart: the SERIES_MAX largest ids by total, then the rest as "other". */
struct series {
	uint32_t id[SERIES_MAX];
	size_t n;
	bool other;
	uint64_t *grid; /* [ndays][SERIES_MAX + 1] */
};

static int series_cmp(const void *a, const void *b, void *arg)
{
	const uint64_t *tot = arg;
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	if (tot[x] != tot[y])
		return tot[x] > tot[y] ? -1 : 1;
	return x < y ? -1 : x > y;
}

/* Per day, the value v of cells grouped by key[which] (1 agreement, 2 sender). */
static int series_build(const struct report *r, int which, int v, struct series *s)
{
	memset(s, 0, sizeof(*s));
	uint64_t *tot = calloc(r->str.n ? r->str.n : 1, sizeof(*tot));
	uint32_t *ids = calloc(r->str.n ? r->str.n : 1, sizeof(*ids));
	s->grid = calloc(r->ndays * (SERIES_MAX + 1), sizeof(*s->grid));
	if (!tot || !ids || !s->grid) {
		free(tot);
		free(ids);
		return ISG_ERR_NOMEM;
	}
	size_t n = 0;
	for (size_t i = 0; i < r->cells.n; i++) {
		const struct tally *c = &r->cells.items[i];
		uint32_t id = c->key[which];
		if (c->v[v] && tot[id] == 0)
			ids[n++] = id;
		tot[id] += c->v[v];
	}
	qsort_r(ids, n, sizeof(*ids), series_cmp, tot);
	s->n = n < SERIES_MAX ? n : SERIES_MAX;
	s->other = n > SERIES_MAX;
	memcpy(s->id, ids, s->n * sizeof(*ids));
	for (size_t i = 0; i < r->cells.n; i++) {
		const struct tally *c = &r->cells.items[i];
		size_t col = SERIES_MAX;
		for (size_t j = 0; j < s->n; j++)
			if (s->id[j] == c->key[which])
				col = j;
		s->grid[c->key[0] * (SERIES_MAX + 1) + col] += c->v[v];
	}
	free(tot);
	free(ids);
	return 0;
}

/* A round step for the value axis: 1, 2 or 5 times a power of ten, at most 5 steps to max. */
static uint64_t nice_step(uint64_t max)
{
	uint64_t step = 1;
	for (;;) {
		if (max <= step * 5)
			return step;
		if (max <= step * 10)
			return step * 2;
		if (max <= step * 25)
			return step * 5;
		if (step > UINT64_MAX / 100)
			return step * 10;
		step *= 10;
	}
}

enum { CH_W = 960, CH_H = 260, CH_LEFT = 56, CH_RIGHT = 12, CH_TOP = 12, CH_BOTTOM = 46 };

static void chart_legend(struct strbuf *b, const struct report *r, const struct series *s)
{
	strbuf_puts(b, "<ul class=\"legend\">");
	for (size_t j = 0; j < s->n + s->other; j++) {
		strbuf_printf(b, "<li><span class=\"swatch\" style=\"background:%s\"></span>",
		              palette[j < s->n ? j : SERIES_MAX]);
		if (j < s->n)
			html_label(b, name_or_none(r, s->id[j]));
		else
			strbuf_puts(b, "other");
		strbuf_puts(b, "</li>");
	}
	strbuf_puts(b, "</ul>");
}

/* A stacked bar per day, one colour per series. */
static void chart_days(struct strbuf *b, const struct report *r, const struct series *s,
                       const char *id, const char *unit)
{
	uint64_t max = 0;
	for (size_t d = 0; d < r->ndays; d++) {
		uint64_t sum = 0;
		for (size_t j = 0; j <= SERIES_MAX; j++)
			sum += s->grid[d * (SERIES_MAX + 1) + j];
		if (sum > max)
			max = sum;
	}
	uint64_t step = nice_step(max ? max : 1);
	uint64_t top = ((max ? max : 1) + step - 1) / step * step;
	double pw = CH_W - CH_LEFT - CH_RIGHT, ph = CH_H - CH_TOP - CH_BOTTOM;
	double slot = pw / (double)r->ndays, bw = slot * 0.7 > 48 ? 48 : slot * 0.7;
	strbuf_printf(b,
	              "<svg id=\"%s\" class=\"chart\" xmlns=\"http://www.w3.org/2000/svg\" "
	              "viewBox=\"0 0 %d %d\" width=\"%d\" height=\"%d\" role=\"img\">",
	              id, CH_W, CH_H, CH_W, CH_H);
	for (uint64_t t = 0; t <= top; t += step) {
		double y = CH_TOP + ph - ph * (double)t / (double)top;
		strbuf_printf(b,
		              "<line x1=\"%d\" x2=\"%d\" y1=\"%.1f\" y2=\"%.1f\" class=\"grid\"/>"
		              "<text x=\"%d\" y=\"%.1f\" class=\"ytick\">%" PRIu64 "</text>",
		              CH_LEFT, CH_W - CH_RIGHT, y, y, CH_LEFT - 6, y + 4, t);
	}
	size_t every = r->ndays <= 16 ? 1 : (r->ndays + 15) / 16;
	for (size_t d = 0; d < r->ndays; d++) {
		double x = CH_LEFT + slot * (double)d + (slot - bw) / 2, y = CH_TOP + ph;
		char day[11];
		day_text(day, r, d);
		for (size_t j = 0; j <= SERIES_MAX; j++) {
			uint64_t v = s->grid[d * (SERIES_MAX + 1) + j];
			if (!v)
				continue;
			double h = ph * (double)v / (double)top;
			y -= h;
			strbuf_printf(b,
			              "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" "
			              "fill=\"%s\"><title>%s ",
			              x, y, bw, h, palette[j], day);
			if (j < s->n)
				html_escape(b, name_or_none(r, s->id[j]));
			else
				strbuf_puts(b, "other");
			strbuf_printf(b, ": %" PRIu64 " %s</title></rect>", v, unit);
		}
		if (d % every == 0)
			strbuf_printf(b, "<text x=\"%.1f\" y=\"%d\" class=\"xtick\">%s</text>",
			              x + bw / 2, CH_H - CH_BOTTOM + 16, day + 5);
	}
	strbuf_printf(b,
	              "<line x1=\"%d\" x2=\"%d\" y1=\"%d\" y2=\"%d\" class=\"axis\"/>"
	              "<text x=\"%d\" y=\"%d\" class=\"xlabel\">day (UTC), %s per day</text></svg>",
	              CH_LEFT, CH_W - CH_RIGHT, CH_H - CH_BOTTOM, CH_H - CH_BOTTOM, CH_W / 2,
	              CH_H - 8, unit);
	chart_legend(b, r, s);
}

/* Horizontal bars: refusals per rule. */
static void chart_rules(struct strbuf *b, const struct report *r, const size_t *order)
{
	uint64_t max = 1;
	for (size_t i = 0; i < r->rules.n; i++)
		if (r->rules.items[i].v[V_REFUSED] > max)
			max = r->rules.items[i].v[V_REFUSED];
	int row = 24, label = 300, h = (int)r->rules.n * row + 8;
	double pw = CH_W - label - 80;
	strbuf_printf(
	    b,
	    "<svg id=\"chart-refusals\" class=\"chart\" xmlns=\"http://www.w3.org/2000/svg\" "
	    "viewBox=\"0 0 %d %d\" width=\"%d\" height=\"%d\" role=\"img\">",
	    CH_W, h, CH_W, h);
	for (size_t i = 0; i < r->rules.n; i++) {
		const struct tally *t = &r->rules.items[order[i]];
		double w = pw * (double)t->v[V_REFUSED] / (double)max, y = 4 + (double)i * row;
		strbuf_printf(b, "<text x=\"%d\" y=\"%.1f\" class=\"rlabel\">", label - 8, y + 15);
		html_label(b, name_or_none(r, t->key[0]));
		strbuf_printf(
		    b,
		    "</text><rect x=\"%d\" y=\"%.1f\" width=\"%.1f\" height=\"%d\" "
		    "fill=\"%s\"/><text x=\"%.1f\" y=\"%.1f\" class=\"rvalue\">%" PRIu64 "</text>",
		    label, y + 2, w, row - 6, palette[3], label + w + 6, y + 15, t->v[V_REFUSED]);
	}
	strbuf_puts(b, "</svg>");
}

/* ---- HTML: sections ---- */

static const char html_style[] =
    "body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif;"
    "margin:24px auto;max-width:1000px;color:#1b1b1b;line-height:1.4}"
    "h1{font-size:1.6em;margin-bottom:0}h2{border-bottom:2px solid #ddd;padding-bottom:4px;"
    "margin-top:2em}p.meta{color:#555;margin-top:4px}"
    "table{border-collapse:collapse;margin:8px 0 16px}"
    "th,td{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}"
    "th{background:#f2f2f2}td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:"
    "nowrap}"
    "td.day{white-space:nowrap}"
    ".chart{display:block;max-width:100%;height:auto;margin:8px 0}"
    ".chart .grid{stroke:#e5e5e5}.chart .axis{stroke:#333}"
    ".chart text{font-size:11px;fill:#333}.chart .ytick{text-anchor:end}"
    ".chart .xtick,.chart .xlabel{text-anchor:middle}.chart .rlabel{text-anchor:end}"
    "ul.legend{list-style:none;padding:0;margin:0 0 16px;display:flex;flex-wrap:wrap;gap:4px 16px}"
    ".swatch{display:inline-block;width:12px;height:12px;margin-right:6px;vertical-align:middle}"
    ".ok{color:#11632b;font-weight:bold}.bad{color:#b00020;font-weight:bold}"
    ".warn{color:#8a5a00;font-weight:bold}"
    "code{font-family:ui-monospace,Menlo,Consolas,monospace;word-break:break-all}"
    "tr.over td{background:#fde7ea}";

static void html_num(struct strbuf *b, const char *id, const char *cls, uint64_t v)
{
	strbuf_puts(b, "<td class=\"n");
	if (cls)
		strbuf_printf(b, " %s", cls);
	strbuf_puts(b, "\"");
	if (id)
		strbuf_printf(b, " id=\"%s\"", id);
	strbuf_printf(b, " data-value=\"%" PRIu64 "\">%" PRIu64 "</td>", v, v);
}

static void html_attr(struct strbuf *b, const char *name, const char *value)
{
	strbuf_printf(b, " %s=\"", name);
	html_escape(b, value);
	strbuf_puts(b, "\"");
}

static void html_summary(struct strbuf *b, const struct report *r)
{
	static const struct {
		const char *id, *what;
		int v;
	} rows[] = {
	    {"total-accepted", "messages accepted", V_MESSAGES},
	    {"total-records", "records accepted", V_RECORDS},
	    {"total-refused", "messages refused", V_REFUSED},
	    {"total-delivered", "messages delivered", V_DELIVERED},
	    {"total-acknowledged", "messages acknowledged (payload deleted)", V_ACKED},
	    {"total-expired", "messages expired undelivered (purged)", V_EXPIRED},
	};
	strbuf_puts(b, "<h2 id=\"summary\">Summary</h2><table id=\"summary-table\">");
	strbuf_puts(b, "<tr><th>audit entries in the period</th>");
	html_num(b, "total-entries", NULL, r->entries);
	strbuf_puts(b, "</tr>");
	for (size_t i = 0; i < ARRAY_LEN(rows); i++) {
		strbuf_printf(b, "<tr><th>%s</th>", rows[i].what);
		html_num(b, rows[i].id, NULL, r->total[rows[i].v]);
		strbuf_puts(b, "</tr>");
	}
	strbuf_puts(b, "<tr><th>connections accepted</th>");
	html_num(b, "total-connections-accepted", NULL, r->conn_accepted);
	strbuf_puts(b, "</tr><tr><th>connections refused</th>");
	html_num(b, "total-connections-refused", NULL, r->conn_refused);
	strbuf_puts(b, "</tr><tr><th>connections closed by a reload (partner removed or "
	               "certificate no longer recognised)</th>");
	html_num(b, "total-connections-closed", NULL, r->conn_closed);
	strbuf_puts(b, "</tr></table>");
}

/*
 * isgd's clock was set back while it wrote the log (or entries were rewritten
 * with later times and signed by a restarted isgd, which verify cannot always
 * tell apart): the figures count each entry on the day of its own time. Plain
 * text (digits and fixed words), the same in HTML and Markdown.
 */
static void times_back_text(struct strbuf *b, const struct report *r)
{
	int64_t ms = r->vr.times_back_max_ms;
	strbuf_printf(b,
	              "Entry %" PRId64 " has an earlier time than the entry before it (%" PRIu64
	              " entr%s in all, by up to %" PRId64 ".%03d s): the gateway's clock was set "
	              "back (an NTP step, a change by hand, or a restore onto a host whose clock "
	              "was behind), or entries were rewritten with later times and signed by a "
	              "restarted isgd: compare with a checkpoint saved outside the gateway. Each "
	              "entry is counted on the day of the time its clock gave.",
	              r->vr.times_back_seq, r->vr.times_back, r->vr.times_back == 1 ? "y" : "ies",
	              ms / 1000, (int)(ms % 1000));
}

static void html_integrity(struct strbuf *b, const struct report *r)
{
	strbuf_puts(b, "<h2 id=\"integrity\">Integrity of the log</h2>");
	if (!r->verified) {
		strbuf_puts(b,
		            "<p id=\"integrity-status\" data-status=\"unverified\" class=\"warn\">"
		            "NOT VERIFIED: isgctl had no verifier key it could use (");
		html_escape(b, r->key_error[0] ? r->key_error
		                               : "give --keys, --pubkey or --pubkey-file");
		strbuf_puts(b, "), so these figures are not backed by the signed checkpoints.</p>");
		return;
	}
	bool ok = r->vr.problems == 0;
	strbuf_printf(b,
	              "<p id=\"integrity-status\" data-status=\"%s\" class=\"%s\">%s</p>"
	              "<table id=\"integrity-table\"><tr><th>entries in the whole log</th>",
	              ok ? "ok" : "failed", ok ? "ok" : "bad",
	              ok ? "OK: every check of isgctl audit verify passed"
	                 : "FAILED: the log does not match its signed checkpoints");
	html_num(b, "integrity-entries", NULL, r->vr.entries);
	strbuf_puts(b, "</tr><tr><th>checkpoints whose signature verifies</th>");
	html_num(b, "integrity-checkpoints", NULL, r->vr.checkpoints);
	strbuf_puts(b, "</tr><tr><th>latest checkpoint size</th>");
	html_num(b, "integrity-latest-size", NULL, r->vr.latest_size);
	char root[64] = "-";
	if (r->vr.latest_size)
		audit_ctl_b64(root, sizeof(root), r->vr.latest_root, AUDIT_HASH_LEN);
	strbuf_printf(b,
	              "</tr><tr><th>latest checkpoint root</th><td id=\"integrity-latest-root\">"
	              "<code>%s</code></td></tr>",
	              root);
	strbuf_puts(b, "<tr><th>entries not yet covered by a checkpoint</th>");
	html_num(b, "integrity-uncovered", NULL, r->vr.uncovered);
	strbuf_puts(b, "</tr><tr><th>entries with an earlier time than the entry before "
	               "(isgd's clock was set back)</th>");
	html_num(b, "integrity-times-back", NULL, r->vr.times_back);
	strbuf_puts(b, "</tr><tr><th>checkpoints saved elsewhere (--against) that the log "
	               "still holds</th>");
	strbuf_printf(b,
	              "<td id=\"integrity-saved\" class=\"n\" data-value=\"%zu\">%zu of %zu</td>",
	              r->vr.saved_matched, r->vr.saved_matched, r->vr.saved);
	strbuf_puts(b, "</tr><tr><th>verifier key</th><td><code>");
	html_escape(b, r->key);
	strbuf_puts(b, "</code> (from ");
	html_escape(b, r->key_from ? r->key_from : "?");
	strbuf_printf(b, ")</td></tr><tr><th>problems</th>");
	html_num(b, "integrity-problems", NULL, r->vr.problems);
	strbuf_puts(b, "</tr></table>");
	if (r->vr.times_back) {
		strbuf_puts(b, "<p id=\"integrity-times-back-note\" class=\"warn\">");
		times_back_text(b, r);
		strbuf_puts(b, "</p>");
	}
	if (!ok && r->problems) {
		strbuf_puts(b, "<ul id=\"integrity-problem-list\">");
		for (const char *p = r->problems; *p;) {
			const char *e = strchr(p, '\n');
			size_t n = e ? (size_t)(e - p) : strlen(p);
			char *line = strndup(p, n);
			if (!line) {
				b->failed = true;
				break;
			}
			strbuf_puts(b, "<li>");
			html_escape(b, line);
			strbuf_puts(b, "</li>");
			free(line);
			p += n + (e != NULL);
		}
		strbuf_puts(b, "</ul>");
	}
	strbuf_puts(b, "<p>Keep the latest checkpoint outside the gateway (<code>isgctl audit "
	               "checkpoint</code>): a later review can then show the log was not rolled "
	               "back.</p>");
}

static int html_volumes(struct strbuf *b, const struct report *r, const struct sums *s)
{
	struct series se;
	strbuf_puts(b, "<h2 id=\"volumes\">Volumes</h2><h3>Records accepted per day, by agreement"
	               "</h3>");
	if (series_build(r, 1, V_RECORDS, &se) != 0)
		return ISG_ERR_NOMEM;
	chart_days(b, r, &se, "chart-records-by-agreement", "records");
	free(se.grid);
	strbuf_puts(b, "<h3>Messages accepted per day, by sending partner</h3>");
	if (series_build(r, 2, V_MESSAGES, &se) != 0)
		return ISG_ERR_NOMEM;
	chart_days(b, r, &se, "chart-messages-by-partner", "messages");
	free(se.grid);

	size_t *o = tmap_order(r, &s->by_agreement, 1, false);
	if (!o)
		return ISG_ERR_NOMEM;
	strbuf_puts(b, "<h3>By agreement</h3><table id=\"agreements\"><tr><th>agreement</th>"
	               "<th>messages accepted</th><th>records accepted</th><th>refused</th>"
	               "<th>delivered</th><th>acknowledged</th><th>expired</th></tr>");
	for (size_t i = 0; i < s->by_agreement.n; i++) {
		const struct tally *t = &s->by_agreement.items[o[i]];
		strbuf_puts(b, "<tr");
		html_attr(b, "data-agreement", r->str.s[t->key[0]]);
		strbuf_puts(b, "><td>");
		html_escape(b, name_or_none(r, t->key[0]));
		strbuf_puts(b, "</td>");
		html_num(b, NULL, "messages", t->v[V_MESSAGES]);
		html_num(b, NULL, "records", t->v[V_RECORDS]);
		html_num(b, NULL, "refused", t->v[V_REFUSED]);
		html_num(b, NULL, "delivered", t->v[V_DELIVERED]);
		html_num(b, NULL, "acknowledged", t->v[V_ACKED]);
		html_num(b, NULL, "expired", t->v[V_EXPIRED]);
		strbuf_puts(b, "</tr>");
	}
	strbuf_puts(b, "</table>");
	free(o);

	size_t n = 0;
	struct partner_row *rows = partner_rows(r, s, &n);
	if (!rows)
		return ISG_ERR_NOMEM;
	strbuf_puts(b, "<h3>By partner</h3><table id=\"partners\"><tr><th>partner</th>"
	               "<th>messages sent</th><th>records sent</th><th>sends refused</th>"
	               "<th>messages received</th><th>records received</th>"
	               "<th>delivered to it</th><th>acknowledged by it</th>"
	               "<th>expired undelivered</th></tr>");
	for (size_t i = 0; i < n; i++) {
		const struct partner_row *p = &rows[i];
		strbuf_puts(b, "<tr");
		html_attr(b, "data-partner", r->str.s[p->id]);
		strbuf_puts(b, "><td>");
		html_escape(b, name_or_none(r, p->id));
		strbuf_puts(b, "</td>");
		html_num(b, NULL, "sent", p->sent);
		html_num(b, NULL, "records-sent", p->records_sent);
		html_num(b, NULL, "refused", p->refused);
		html_num(b, NULL, "received", p->received);
		html_num(b, NULL, "records-received", p->records_received);
		html_num(b, NULL, "delivered", p->delivered);
		html_num(b, NULL, "acknowledged", p->acked);
		html_num(b, NULL, "expired", p->expired);
		strbuf_puts(b, "</tr>");
	}
	free(rows);
	strbuf_puts(b, "</table>");
	return 0;
}

static int html_refusals(struct strbuf *b, const struct report *r)
{
	size_t *o = tmap_order(r, &r->rules, 1, false);
	if (!o)
		return ISG_ERR_NOMEM;
	strbuf_puts(b, "<h2 id=\"refusals\">Refusals by rule</h2>");
	if (r->rules.n == 0)
		strbuf_puts(b, "<p>No message was refused in the period.</p>");
	else
		chart_rules(b, r, o);
	strbuf_puts(b, "<table id=\"refusal-rules\"><tr><th>rule</th><th>messages refused</th>"
	               "<th>records in them</th></tr>");
	for (size_t i = 0; i < r->rules.n; i++) {
		const struct tally *t = &r->rules.items[o[i]];
		strbuf_puts(b, "<tr");
		html_attr(b, "data-rule", r->str.s[t->key[0]]);
		strbuf_puts(b, "><td><code>");
		html_escape(b, name_or_none(r, t->key[0]));
		strbuf_puts(b, "</code></td>");
		html_num(b, NULL, "count", t->v[V_REFUSED]);
		html_num(b, NULL, "records", t->v[V_RECORDS]);
		strbuf_puts(b, "</tr>");
	}
	strbuf_puts(b, "</table>");
	free(o);
	return 0;
}

/* Rows of the fields table: one per (agreement, dataset, field), the actions as columns. */
static int html_fields(struct strbuf *b, const struct report *r)
{
	size_t *o = tmap_order(r, &r->fields, 3, false);
	if (!o)
		return ISG_ERR_NOMEM;
	strbuf_puts(b, "<h2 id=\"fields\">Fields shared, by action</h2><p>Records accepted "
	               "carrying each field of the agreement's dataset, by what the gateway did "
	               "with it.</p><table id=\"fields-table\"><tr><th>agreement</th><th>dataset"
	               "</th><th>field</th>");
	for (size_t a = 0; a < ARRAY_LEN(action_names); a++)
		strbuf_printf(b, "<th>%s</th>", action_names[a]);
	strbuf_puts(b, "</tr>");
	for (size_t i = 0; i < r->fields.n;) {
		const struct tally *t = &r->fields.items[o[i]];
		uint64_t by[ARRAY_LEN(action_names)] = {0};
		size_t j = i;
		for (; j < r->fields.n; j++) {
			const struct tally *u = &r->fields.items[o[j]];
			if (memcmp(u->key, t->key, 3 * sizeof(uint32_t)) != 0)
				break;
			by[u->key[3]] += u->v[V_RECORDS];
		}
		i = j;
		strbuf_puts(b, "<tr");
		html_attr(b, "data-agreement", r->str.s[t->key[0]]);
		html_attr(b, "data-dataset", r->str.s[t->key[1]]);
		html_attr(b, "data-field", r->str.s[t->key[2]]);
		for (int k = 0; k < 3; k++) {
			strbuf_puts(b, "><td>");
			html_escape(b, name_or_none(r, t->key[k]));
			strbuf_puts(b, "</td");
		}
		strbuf_puts(b, ">");
		for (size_t a = 0; a < ARRAY_LEN(action_names); a++)
			html_num(b, NULL, action_names[a], by[a]);
		strbuf_puts(b, "</tr>");
	}
	strbuf_puts(b, "</table>");
	free(o);
	return 0;
}

static void limit_cell(struct strbuf *b, const char *cls, uint64_t peak, uint32_t limit)
{
	if (!limit) {
		strbuf_printf(b, "<td class=\"%s\">-</td>", cls);
		return;
	}
	strbuf_printf(
	    b, "<td class=\"n %s\" data-value=\"%" PRIu32 "\">%" PRIu32 " (%" PRIu64 "%%)</td>",
	    cls, limit, limit, peak * 100 / limit);
}

static int html_limits(struct strbuf *b, const struct report *r, const struct sums *s)
{
	size_t *o = tmap_order(r, &s->peaks, 2, false);
	if (!o)
		return ISG_ERR_NOMEM;
	strbuf_puts(b, "<h2 id=\"limits\">Limits used</h2><p>The busiest day of each sending "
	               "partner under each agreement.");
	if (r->policy)
		strbuf_puts(b,
		            " Limits are those of the policy given with --policy (which may differ "
		            "from the policy in force on the day: each message.accepted entry "
		            "names its policy version).");
	else
		strbuf_puts(b, " Give --policy DIR to show the agreements' daily limits.");
	strbuf_puts(b, "</p><table id=\"limits-table\"><tr><th>agreement</th><th>sender</th>"
	               "<th>peak messages per day</th><th>on</th><th>limit</th><th>peak records "
	               "per day</th><th>on</th><th>limit</th></tr>");
	for (size_t i = 0; i < s->peaks.n; i++) {
		const struct tally *t = &s->peaks.items[o[i]];
		if (!t->v[V_MESSAGES])
			continue;
		struct limit_use u = limit_use(r, t);
		uint32_t lm = u.messages, lr = u.records;
		bool over = u.messages_near || u.records_near;
		char dm[11], dr[11];
		day_text(dm, r, t->v[V_ACKED]);
		day_text(dr, r, t->v[V_EXPIRED]);
		strbuf_printf(b, "<tr%s", over ? " class=\"over\"" : "");
		html_attr(b, "data-agreement", r->str.s[t->key[0]]);
		html_attr(b, "data-partner", r->str.s[t->key[1]]);
		strbuf_puts(b, "><td>");
		html_escape(b, name_or_none(r, t->key[0]));
		strbuf_puts(b, "</td><td>");
		html_escape(b, name_or_none(r, t->key[1]));
		strbuf_puts(b, "</td>");
		html_num(b, NULL, "peak-messages", t->v[V_MESSAGES]);
		strbuf_printf(b, "<td class=\"day\">%s</td>", dm);
		limit_cell(b, "limit-messages", t->v[V_MESSAGES], lm);
		html_num(b, NULL, "peak-records", t->v[V_RECORDS]);
		strbuf_printf(b, "<td class=\"day\">%s</td>", dr);
		limit_cell(b, "limit-records", t->v[V_RECORDS], lr);
		strbuf_puts(b, "</tr>");
	}
	strbuf_puts(b, "</table>");
	free(o);
	return 0;
}

static int html_events(struct strbuf *b, const struct report *r)
{
	size_t *o = tmap_order(r, &r->kinds, 1, false);
	if (!o)
		return ISG_ERR_NOMEM;
	strbuf_puts(b, "<h2 id=\"events\">Entries by event</h2><table id=\"events-table\">"
	               "<tr><th>event</th><th>entries</th></tr>");
	for (size_t i = 0; i < r->kinds.n; i++) {
		const struct tally *t = &r->kinds.items[o[i]];
		strbuf_puts(b, "<tr");
		html_attr(b, "data-event", r->str.s[t->key[0]]);
		strbuf_puts(b, "><td><code>");
		html_escape(b, r->str.s[t->key[0]]);
		strbuf_puts(b, "</code></td>");
		html_num(b, NULL, "count", t->v[V_MESSAGES]);
		strbuf_puts(b, "</tr>");
	}
	strbuf_puts(b, "</table>");
	free(o);
	return 0;
}

/*
 * What a report that could not read some entries says first, in every
 * format: plain words and numbers, nothing from the log but indexes.
 */
static void incomplete_text(struct strbuf *b, const struct report *r)
{
	uint64_t n = r->read.unread;
	strbuf_printf(b,
	              "These figures are INCOMPLETE: %" PRIu64 " entr%s of the log could not be "
	              "read (",
	              n, n == 1 ? "y" : "ies");
	audit_reader_unread_text(&r->read, b);
	strbuf_puts(b, n == 1 ? "): it cannot be placed in time, so wherever the store's table "
	                        "puts it, it may belong to this period, and it is counted nowhere."
	                      : "): they cannot be placed in time, so wherever the store's table "
	                        "puts them, any of them may belong to this period, and none is "
	                        "counted.");
	strbuf_puts(b, " Run isgctl audit verify.");
}

static int render_html(struct strbuf *b, const struct report *r, const struct sums *s)
{
	char from[11], to[11];
	day_text(from, r, 0);
	day_text(to, r, r->ndays - 1);
	strbuf_printf(b,
	              "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
	              "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
	              "<title>ISG audit report %s to %s</title><style>%s</style></head>\n<body>"
	              "<h1>ISG audit report</h1><p class=\"meta\">Period <span id=\"period-from\">"
	              "%s</span> to <span id=\"period-to\">%s</span> (UTC, both days included). "
	              "Log <code>",
	              from, to, html_style, from, to);
	html_escape(b, r->origin);
	strbuf_printf(b,
	              "</code>. Generated %s by isgctl " ISG_VERSION ". The figures come from the "
	              "audit log alone; it holds no personal data in clear, and this report shows "
	              "no message id, certificate subject or pseudonym.</p>\n",
	              r->generated);
	if (r->read.unread) {
		strbuf_puts(b, "<p class=\"bad\" id=\"incomplete\">");
		incomplete_text(b, r);
		strbuf_puts(b, "</p>\n");
	}
	html_summary(b, r);
	html_integrity(b, r);
	if (html_volumes(b, r, s) != 0 || html_refusals(b, r) != 0 || html_fields(b, r) != 0 ||
	    html_limits(b, r, s) != 0 || html_events(b, r) != 0)
		return ISG_ERR_NOMEM;
	strbuf_puts(b, "</body></html>\n");
	return 0;
}

/* ---- Markdown: the figures of the HTML page, section by section, as tables ---- */

static void md_summary(struct strbuf *b, const struct report *r)
{
	char from[11], to[11];
	day_text(from, r, 0);
	day_text(to, r, r->ndays - 1);
	strbuf_printf(b,
	              "# ISG audit report %s to %s\n\nPeriod %s to %s (UTC, both days "
	              "included). Log `",
	              from, to, from, to);
	md_escape(b, r->origin);
	strbuf_printf(b,
	              "`. Generated %s by isgctl " ISG_VERSION ". The figures come from the audit "
	              "log alone; it holds no personal data in clear, and this report shows no "
	              "message id, certificate subject or pseudonym.\n\n",
	              r->generated);
	if (r->read.unread) {
		strbuf_puts(b, "**");
		incomplete_text(b, r);
		strbuf_puts(b, "**\n\n");
	}
	strbuf_puts(b, "## Summary\n\n| figure | value |\n| --- | ---: |\n");
	strbuf_printf(b,
	              "| audit entries in the period | %" PRIu64
	              " |\n| messages accepted | %" PRIu64 " |\n| records accepted | %" PRIu64
	              " |\n| messages refused | %" PRIu64 " |\n| messages delivered | %" PRIu64
	              " |\n| messages acknowledged | %" PRIu64 " |\n| messages expired | %" PRIu64
	              " |\n| connections accepted | %" PRIu64 " |\n| connections refused | %" PRIu64
	              " |\n| connections closed by a reload | %" PRIu64 " |\n",
	              r->entries, r->total[V_MESSAGES], r->total[V_RECORDS], r->total[V_REFUSED],
	              r->total[V_DELIVERED], r->total[V_ACKED], r->total[V_EXPIRED],
	              r->conn_accepted, r->conn_refused, r->conn_closed);
}

static int md_integrity(struct strbuf *b, const struct report *r)
{
	strbuf_puts(b, "\n## Integrity of the log\n\n");
	if (!r->verified) {
		strbuf_puts(b, "**NOT VERIFIED**: no verifier key it could use (");
		md_escape(b, r->key_error[0] ? r->key_error
		                             : "give --keys, --pubkey or --pubkey-file");
		strbuf_puts(b, ").\n");
		return 0;
	}
	char root[64] = "-";
	if (r->vr.latest_size)
		audit_ctl_b64(root, sizeof(root), r->vr.latest_root, AUDIT_HASH_LEN);
	strbuf_printf(b,
	              "**%s**: %" PRIu64 " entries, %zu checkpoints verified, latest "
	              "checkpoint size %" PRIu64 ", root `%s`, %" PRIu64
	              " entries not yet covered, %zu of %zu checkpoints saved elsewhere "
	              "(--against) held, %u problems.\n\nVerifier key ",
	              r->vr.problems ? "FAILED" : "OK", r->vr.entries, r->vr.checkpoints,
	              r->vr.latest_size, root, r->vr.uncovered, r->vr.saved_matched, r->vr.saved,
	              r->vr.problems);
	md_escape(b, r->key);
	strbuf_puts(b, " (from ");
	md_escape(b, r->key_from ? r->key_from : "?");
	strbuf_puts(b, ").\n");
	if (r->vr.times_back) {
		strbuf_puts(b, "\n");
		times_back_text(b, r);
		strbuf_puts(b, "\n");
	}
	for (const char *p = r->problems; p && *p;) {
		const char *e = strchr(p, '\n');
		size_t n = e ? (size_t)(e - p) : strlen(p);
		char *line = strndup(p, n);
		if (!line)
			return ISG_ERR_NOMEM;
		strbuf_puts(b, "\n- ");
		md_escape(b, line);
		free(line);
		p += n + (e != NULL);
	}
	if (r->problems && *r->problems)
		strbuf_puts(b, "\n");
	return 0;
}

static int md_volumes(struct strbuf *b, const struct report *r, const struct sums *s)
{
	size_t *o = tmap_order(r, &s->by_agreement, 1, false);
	if (!o)
		return ISG_ERR_NOMEM;
	strbuf_puts(b, "\n## Volumes by agreement\n\n| agreement | messages | records | refused | "
	               "delivered | acknowledged | expired |\n| --- | ---: | ---: | ---: | ---: | "
	               "---: | ---: |\n");
	for (size_t i = 0; i < s->by_agreement.n; i++) {
		const struct tally *t = &s->by_agreement.items[o[i]];
		strbuf_puts(b, "| ");
		md_escape(b, name_or_none(r, t->key[0]));
		strbuf_printf(b,
		              " | %" PRIu64 " | %" PRIu64 " | %" PRIu64 " | %" PRIu64 " | %" PRIu64
		              " | %" PRIu64 " |\n",
		              t->v[V_MESSAGES], t->v[V_RECORDS], t->v[V_REFUSED], t->v[V_DELIVERED],
		              t->v[V_ACKED], t->v[V_EXPIRED]);
	}
	free(o);
	size_t n = 0;
	struct partner_row *rows = partner_rows(r, s, &n);
	if (!rows)
		return ISG_ERR_NOMEM;
	strbuf_puts(b, "\n## Volumes by partner\n\n| partner | messages sent | records sent | "
	               "sends refused | messages received | records received | delivered to it | "
	               "acknowledged by it | expired undelivered |\n| --- | ---: | ---: | ---: | "
	               "---: | ---: | ---: | ---: | ---: |\n");
	for (size_t i = 0; i < n; i++) {
		const struct partner_row *p = &rows[i];
		strbuf_puts(b, "| ");
		md_escape(b, name_or_none(r, p->id));
		strbuf_printf(b,
		              " | %" PRIu64 " | %" PRIu64 " | %" PRIu64 " | %" PRIu64 " | %" PRIu64
		              " | %" PRIu64 " | %" PRIu64 " | %" PRIu64 " |\n",
		              p->sent, p->records_sent, p->refused, p->received,
		              p->records_received, p->delivered, p->acked, p->expired);
	}
	free(rows);
	if (!(o = tmap_order(r, &r->cells, 2, true)))
		return ISG_ERR_NOMEM;
	strbuf_puts(b, "\n## Volumes per day\n\n| day | agreement | sender | messages | records | "
	               "refused |\n| --- | --- | --- | ---: | ---: | ---: |\n");
	for (size_t i = 0; i < r->cells.n; i++) {
		const struct tally *t = &r->cells.items[o[i]];
		char day[11];
		day_text(day, r, t->key[0]);
		strbuf_printf(b, "| %s | ", day);
		md_escape(b, name_or_none(r, t->key[1]));
		strbuf_puts(b, " | ");
		md_escape(b, name_or_none(r, t->key[2]));
		strbuf_printf(b, " | %" PRIu64 " | %" PRIu64 " | %" PRIu64 " |\n", t->v[V_MESSAGES],
		              t->v[V_RECORDS], t->v[V_REFUSED]);
	}
	free(o);
	return 0;
}

static int md_refusals(struct strbuf *b, const struct report *r)
{
	size_t *o = tmap_order(r, &r->rules, 1, false);
	if (!o)
		return ISG_ERR_NOMEM;
	strbuf_puts(b, "\n## Refusals by rule\n\n| rule | messages refused | records |\n| --- | "
	               "---: | ---: |\n");
	for (size_t i = 0; i < r->rules.n; i++) {
		const struct tally *t = &r->rules.items[o[i]];
		strbuf_puts(b, "| ");
		md_escape(b, name_or_none(r, t->key[0]));
		strbuf_printf(b, " | %" PRIu64 " | %" PRIu64 " |\n", t->v[V_REFUSED],
		              t->v[V_RECORDS]);
	}
	free(o);
	return 0;
}

static int md_fields(struct strbuf *b, const struct report *r)
{
	size_t *o = tmap_order(r, &r->fields, 3, false);
	if (!o)
		return ISG_ERR_NOMEM;
	strbuf_puts(b, "\n## Fields shared, by action (records)\n\n| agreement | dataset | field | "
	               "action | records |\n| --- | --- | --- | --- | ---: |\n");
	for (size_t i = 0; i < r->fields.n; i++) {
		const struct tally *t = &r->fields.items[o[i]];
		for (int k = 0; k < 3; k++) {
			strbuf_puts(b, "| ");
			md_escape(b, name_or_none(r, t->key[k]));
			strbuf_puts(b, " ");
		}
		strbuf_printf(b, "| %s | %" PRIu64 " |\n", action_names[t->key[3]],
		              t->v[V_RECORDS]);
	}
	free(o);
	return 0;
}

/* A limit and the share of it the peak used; bold at 90% or more, as the page highlights. */
static void md_limit(struct strbuf *b, uint64_t peak, uint32_t limit, bool near)
{
	if (!limit) {
		strbuf_puts(b, " | -");
		return;
	}
	strbuf_printf(b, " | %s%" PRIu32 " (%" PRIu64 "%%)%s", near ? "**" : "", limit,
	              peak * 100 / limit, near ? "**" : "");
}

static int md_limits(struct strbuf *b, const struct report *r, const struct sums *s)
{
	size_t *o = tmap_order(r, &s->peaks, 2, false);
	if (!o)
		return ISG_ERR_NOMEM;
	strbuf_printf(
	    b,
	    "\n## Limits used (busiest day)\n\nThe busiest day of each sending partner "
	    "under each agreement. %s\n\n| agreement | sender | peak messages per day "
	    "| on | limit | peak records per day | on | limit |\n| --- | --- | ---: | --- "
	    "| ---: | ---: | --- | ---: |\n",
	    r->policy ? "Limits are those of the policy given with --policy (which may "
	                "differ from the policy in force on the day: each "
	                "message.accepted entry names its policy version); a share of "
	                "90% or more is in bold."
	              : "Give --policy DIR to show the agreements' daily limits.");
	for (size_t i = 0; i < s->peaks.n; i++) {
		const struct tally *t = &s->peaks.items[o[i]];
		if (!t->v[V_MESSAGES])
			continue;
		struct limit_use u = limit_use(r, t);
		char dm[11], dr[11];
		day_text(dm, r, t->v[V_ACKED]);
		day_text(dr, r, t->v[V_EXPIRED]);
		strbuf_puts(b, "| ");
		md_escape(b, name_or_none(r, t->key[0]));
		strbuf_puts(b, " | ");
		md_escape(b, name_or_none(r, t->key[1]));
		strbuf_printf(b, " | %" PRIu64 " | %s", t->v[V_MESSAGES], dm);
		md_limit(b, t->v[V_MESSAGES], u.messages, u.messages_near);
		strbuf_printf(b, " | %" PRIu64 " | %s", t->v[V_RECORDS], dr);
		md_limit(b, t->v[V_RECORDS], u.records, u.records_near);
		strbuf_puts(b, " |\n");
	}
	free(o);
	return 0;
}

static int md_events(struct strbuf *b, const struct report *r)
{
	size_t *o = tmap_order(r, &r->kinds, 1, false);
	if (!o)
		return ISG_ERR_NOMEM;
	strbuf_puts(b, "\n## Entries by event\n\n| event | entries |\n| --- | ---: |\n");
	for (size_t i = 0; i < r->kinds.n; i++) {
		const struct tally *t = &r->kinds.items[o[i]];
		strbuf_puts(b, "| ");
		md_escape(b, r->str.s[t->key[0]]);
		strbuf_printf(b, " | %" PRIu64 " |\n", t->v[V_MESSAGES]);
	}
	free(o);
	return 0;
}

static int render_markdown(struct strbuf *b, const struct report *r, const struct sums *s)
{
	md_summary(b, r);
	if (md_integrity(b, r) != 0 || md_volumes(b, r, s) != 0 || md_refusals(b, r) != 0 ||
	    md_fields(b, r) != 0 || md_limits(b, r, s) != 0 || md_events(b, r) != 0)
		return ISG_ERR_NOMEM;
	return 0;
}

/* ---- CSV: one row per (day, agreement, sending partner) ---- */

static int render_csv(struct strbuf *b, const struct report *r)
{
	size_t *o = tmap_order(r, &r->cells, 2, true);
	if (!o)
		return ISG_ERR_NOMEM;
	strbuf_puts(b, "day,agreement,partner,messages,records,refusals,delivered,acknowledged,"
	               "expired\n");
	for (size_t i = 0; i < r->cells.n; i++) {
		const struct tally *t = &r->cells.items[o[i]];
		char day[11];
		day_text(day, r, t->key[0]);
		strbuf_printf(b, "%s,", day);
		csv_escape(b, r->str.s[t->key[1]]);
		strbuf_puts(b, ",");
		csv_escape(b, r->str.s[t->key[2]]);
		strbuf_printf(
		    b, ",%" PRIu64 ",%" PRIu64 ",%" PRIu64 ",%" PRIu64 ",%" PRIu64 ",%" PRIu64 "\n",
		    t->v[V_MESSAGES], t->v[V_RECORDS], t->v[V_REFUSED], t->v[V_DELIVERED],
		    t->v[V_ACKED], t->v[V_EXPIRED]);
	}
	free(o);
	return 0;
}

/* ---- the command ---- */

/* A report describes exchanges of personal data: a file is written as export writes one. */
static int write_output(const char *path, struct strbuf *b)
{
	size_t len = 0;
	char *text = strbuf_take(b, &len);
	if (!text) {
		ctl_warn("out of memory");
		return CTL_EXIT_LOCAL;
	}
	struct audit_output o;
	int status = audit_output_open(&o, strcmp(path, "-") == 0 ? NULL : path, "the report");
	if (status == CTL_EXIT_OK)
		status = audit_output_close(&o, fwrite(text, 1, len, o.f) != len, false);
	free(text);
	return status;
}

static int report_render(const struct report *r, const struct report_args *a)
{
	struct sums s;
	int status = CTL_EXIT_OK;
	if (sums_build(r, &s) != 0) {
		sums_release(&s);
		ctl_warn("out of memory");
		return CTL_EXIT_LOCAL;
	}
	const char *paths[3] = {a->html, a->markdown, a->csv};
	for (int k = 0; k < 3 && status == CTL_EXIT_OK; k++) {
		if (!paths[k])
			continue;
		struct strbuf b;
		strbuf_init(&b);
		int rc = k == 0   ? render_html(&b, r, &s)
		         : k == 1 ? render_markdown(&b, r, &s)
		                  : render_csv(&b, r);
		if (rc != 0 || b.failed) {
			strbuf_release(&b);
			ctl_warn("out of memory");
			status = CTL_EXIT_LOCAL;
			break;
		}
		status = write_output(paths[k], &b);
	}
	sums_release(&s);
	return status;
}

/*
 * Two outputs that name one file would leave one, the one written last, as
 * a repeated --csv would: refused, however the two are spelt ("r.html" and
 * "./r.html", or a link to it). Standard output ("-") takes several.
 */
static int report_outputs_differ(const struct report_args *a)
{
	const char *paths[3] = {a->html, a->markdown, a->csv};
	static const char *const names[3] = {"--html", "--markdown", "--csv"};
	for (int i = 0; i < 3; i++)
		for (int j = i + 1; j < 3; j++)
			if (paths[i] && paths[j] && strcmp(paths[i], "-") != 0 &&
			    strcmp(paths[j], "-") != 0 && audit_output_same(paths[i], paths[j]))
				return ctl_usage_error(report_usage, "%s and %s name the same file",
				                       names[i], names[j]);
	return CTL_EXIT_OK;
}

static int report_options(int argc, char **argv, struct audit_where *w, struct report_args *a)
{
	static const struct option opts[] = {
	    AUDIT_LOG_LONGOPTS,
	    AUDIT_KEY_LONGOPTS,
	    {"from", required_argument, NULL, OPT_FROM},
	    {"to", required_argument, NULL, OPT_TO},
	    {"html", required_argument, NULL, OPT_HTML},
	    {"markdown", required_argument, NULL, OPT_MARKDOWN},
	    {"csv", required_argument, NULL, OPT_CSV},
	    {"policy", required_argument, NULL, OPT_POLICY},
	    {"grace", required_argument, NULL, OPT_GRACE},
	    {"against", required_argument, NULL, OPT_AGAINST},
	    {NULL, 0, NULL, 0},
	};
	static const int many[] = {OPT_AGAINST, 0}; /* each saved checkpoint, as for verify */
	struct ctl_opts o;
	ctl_opts_init(&o, argc, argv, ":", opts, report_usage);
	o.many = many;
	int opt;
	while ((opt = ctl_opts_next(&o)) != CTL_OPTS_END) {
		switch (opt) {
		case CTL_OPTS_ERROR:
			return CTL_EXIT_USAGE;
		case OPT_FROM:
			a->from = optarg;
			break;
		case OPT_TO:
			a->to = optarg;
			break;
		case OPT_HTML:
			a->html = optarg;
			break;
		case OPT_MARKDOWN:
			a->markdown = optarg;
			break;
		case OPT_CSV:
			a->csv = optarg;
			break;
		case OPT_POLICY:
			a->policy = optarg;
			break;
		case OPT_GRACE:
			if (audit_grace_option(optarg, report_usage, &a->grace_ms) != CTL_EXIT_OK)
				return CTL_EXIT_USAGE;
			break;
		case OPT_AGAINST:
			a->against[a->n_against++] = optarg;
			break;
		default:
			audit_where_option(w, opt, optarg);
		}
	}
	if (w->help)
		return CTL_EXIT_OK;
	if (optind != argc)
		return ctl_usage_error(report_usage, "audit report takes no arguments");
	if (!a->from || !a->to)
		return ctl_usage_error(report_usage, "audit report needs --from and --to");
	if (!a->html && !a->markdown && !a->csv)
		return ctl_usage_error(report_usage,
		                       "audit report needs --html, --markdown or --csv FILE");
	return report_outputs_differ(a);
}

static int report_period(struct report *r, const struct report_args *a)
{
	if (strlen(a->from) != 10 || date_parse_days(a->from, &r->from_days) != 0)
		return ctl_usage_error(report_usage, "--from must be a date YYYY-MM-DD, not '%s'",
		                       a->from);
	if (strlen(a->to) != 10 || date_parse_days(a->to, &r->to_days) != 0)
		return ctl_usage_error(report_usage, "--to must be a date YYYY-MM-DD, not '%s'",
		                       a->to);
	if (r->to_days < r->from_days)
		return ctl_usage_error(report_usage, "--to '%s' is before --from '%s'", a->to,
		                       a->from);
	if (r->to_days - r->from_days >= REPORT_DAYS_MAX)
		return ctl_usage_error(report_usage, "the period is longer than %d days",
		                       REPORT_DAYS_MAX);
	r->ndays = (size_t)(r->to_days - r->from_days + 1);
	return CTL_EXIT_OK;
}

static int report_policy(struct report *r, const char *dir)
{
	struct ydoc_diags diags;
	ydoc_diags_init(&diags);
	int rc = policy_load(dir, &r->policy, &diags);
	ydoc_diags_print(&diags, stderr);
	ydoc_diags_release(&diags);
	if (rc != 0) {
		ctl_warn("cannot load the policy in '%s' for the limits", dir);
		r->policy = NULL;
		return CTL_EXIT_LOCAL;
	}
	return CTL_EXIT_OK;
}

static void report_release(struct report *r)
{
	strtab_release(&r->str);
	tmap_release(&r->cells);
	tmap_release(&r->received);
	tmap_release(&r->rules);
	tmap_release(&r->fields);
	tmap_release(&r->kinds);
	audit_reader_release(&r->read);
	free(r->problems);
	policy_set_unref(r->policy);
}

static int report_help(void)
{
	printf("%s\nWrites the figures of a privacy-impact review over a period of UTC days\n"
	       "(both included), from the audit log: messages and records per agreement and\n"
	       "partner per day, refusals by rule, fields shared by action, the busiest day of\n"
	       "each sender under each agreement, and the result of 'isgctl audit verify'.\n\n"
	       "  --from, --to DATE   the period, YYYY-MM-DD (at most %d days)\n"
	       "  --html FILE         one self-contained page (inline CSS and SVG charts)\n"
	       "  --markdown FILE     the same figures as Markdown tables\n"
	       "  --csv FILE          one row per day, agreement and sending partner\n"
	       "  --policy DIR        a policy directory, to show the agreements' daily limits\n"
	       "  --pubkey KEY, --pubkey-file FILE  the verifier key, as for verify\n"
	       "  --against FILE      as for verify: a checkpoint saved elsewhere earlier,\n"
	       "                      which the log must still hold (else it was truncated\n"
	       "                      or rolled back, and the integrity section FAILS).\n"
	       "                      Repeatable.\n"
	       "  --grace SECONDS     as for verify: older entries covered by no checkpoint\n"
	       "                      fail the integrity check (default 600, or twice the\n"
	       "                      config's audit.checkpoint_interval when that is longer)\n"
	       "FILE '-' is standard output. A FILE is written as a new file of mode 0600,\n"
	       "renamed over FILE once written whole (a FIFO, device or symbolic link there\n"
	       "is written through instead). Every entry of the log is read and counted on\n"
	       "the day of its own signed time, as its signed kind, never by the store\n"
	       "table's columns (a row whose columns were edited is named in a warning).\n"
	       "Exits 0 when the report is written and the log verifies, 1 when it is\n"
	       "written but the log failed verification or could not be verified, or\n"
	       "entries could not be read (the report then says it is INCOMPLETE), or when\n"
	       "it could not be written.\n\n",
	       report_usage, REPORT_DAYS_MAX);
	audit_where_help(stdout, AUDIT_TAKES_ALL);
	return CTL_EXIT_OK;
}

int audit_report_cmd(int argc, char **argv)
{
	struct audit_where w = {.takes = AUDIT_TAKES_ALL};
	struct report_args a = {.grace_ms = -1,
	                        .against = calloc((size_t)argc + 1, sizeof(char *))};
	if (!a.against) {
		ctl_warn("out of memory");
		return CTL_EXIT_LOCAL;
	}
	int status = report_options(argc, argv, &w, &a);
	if (status == CTL_EXIT_OK && w.help)
		status = report_help();
	if (status != CTL_EXIT_OK || w.help) {
		free(a.against);
		return status;
	}
	struct report r = {0};
	audit_reader_init(&r.read, INT64_MIN, INT64_MAX); /* the period is set once known */
	status = report_period(&r, &a);
	if (status != CTL_EXIT_OK) {
		report_release(&r);
		free(a.against);
		return status;
	}
	time_format_ms(r.generated, sizeof(r.generated), time_now_ms());
	if (a.policy)
		status = report_policy(&r, a.policy);
	struct audit_log l;
	int open = audit_log_open(&l, &w, report_usage, true);
	if (status == CTL_EXIT_OK)
		status = open;
	r.origin = l.origin ? l.origin : AUDIT_ORIGIN_DEFAULT;
	if (status == CTL_EXIT_OK)
		status = report_scan(&r, &l);
	if (status == CTL_EXIT_OK)
		status = report_verify(&r, &l, &w, &a);
	if (status == CTL_EXIT_OK)
		status = report_render(&r, &a);
	if (status == CTL_EXIT_OK) {
		bool failed = !r.verified || r.vr.problems;
		/* figures that left out entries must not pass for the whole, as in list */
		if (r.read.unread)
			audit_reader_incomplete(
			    &r.read, "the report",
			    "may belong to its period (the figures leave out what "
			    "could not be read); run 'isgctl audit verify'");
		if (failed)
			ctl_warn("report written, but the log %s",
			         r.verified ? "FAILED verification: see its integrity section"
			                    : "could not be verified");
		if (r.read.unread || failed)
			status = CTL_EXIT_LOCAL;
	}
	audit_log_release(&l);
	report_release(&r);
	free(a.against);
	return status;
}
