/*
 * Audit entries. Each is one JSON object. They name partners, agreements,
 * datasets, fields and rules, never a field's value: refusal reasons come
 * from policy_apply, which never quotes values either.
 */
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "daemon/gateway.h"
#include "util/util.h"

static void kv_str(struct strbuf *b, const char *key, const char *value)
{
	char bounded[ENTRY_STR_MAX + 1];
	str_copy(bounded, value ? value : "", sizeof(bounded));
	strbuf_puts(b, ",\"");
	strbuf_puts(b, key);
	strbuf_puts(b, "\":");
	strbuf_json_string(b, bounded);
}

static void fields_by_action(struct strbuf *b, const struct policy_dataset *ds,
                             enum field_action action)
{
	strbuf_puts(b, action == ACTION_PASS ? "\"" : ",\"");
	strbuf_puts(b, policy_field_action_name(action));
	strbuf_puts(b, "\":[");
	bool first = true;
	for (size_t i = 0; i < ds->n_fields; i++) {
		if (ds->fields[i].action != action)
			continue;
		if (!first)
			strbuf_puts(b, ",");
		strbuf_json_string(b, ds->fields[i].name);
		first = false;
	}
	strbuf_puts(b, "]");
}

char *entry_accepted(const struct policy_set *set, const struct policy_outcome *o,
                     const char *sender, const Isg__SendRequest *req, const char *subjects,
                     size_t *len)
{
	const struct policy_agreement *a = o->agreement;
	struct strbuf b;
	strbuf_init(&b);
	strbuf_puts(&b, "{\"event\":\"message.accepted\"");
	kv_str(&b, "sender", sender);
	kv_str(&b, "recipient", req->recipient);
	kv_str(&b, "message_id", req->message_id);
	kv_str(&b, "agreement_id", a->id);
	strbuf_puts(&b, ",\"agreement_version\":");
	strbuf_u64(&b, a->version);
	kv_str(&b, "policy_version", set->version);
	kv_str(&b, "purpose", a->purpose_code);
	strbuf_puts(&b, ",\"lawful_basis\":[");
	for (size_t i = 0; i < a->n_lawful_basis; i++) {
		if (i)
			strbuf_puts(&b, ",");
		strbuf_json_string(&b, a->lawful_basis[i]);
	}
	strbuf_puts(&b, "]");
	kv_str(&b, "dataset", o->dataset->name);
	strbuf_puts(&b, ",\"records\":");
	strbuf_u64(&b, o->record_count);
	strbuf_puts(&b, ",\"bytes\":");
	strbuf_u64(&b, o->payload_len);
	strbuf_puts(&b, ",\"fields\":{");
	for (enum field_action act = ACTION_PASS; act <= ACTION_PSEUDONYMISE; act++)
		fields_by_action(&b, o->dataset, act);
	strbuf_puts(&b, "}");
	strbuf_puts(&b, ",\"reply_to\":");
	strbuf_u64(&b, req->reply_to);
	/* Not through printf: a 100-record message's subjects are some 15 KB. */
	strbuf_puts(&b, ",\"subjects\":");
	strbuf_puts(&b, subjects);
	strbuf_puts(&b, "}");
	return strbuf_take(&b, len);
}

/* The base64url alphabet, as a table: a pseudonym's characters are random, so
 * comparing each against ranges mispredicts a branch at nearly every one. */
static const bool base64url[256] = {
    ['A'] = true, ['B'] = true, ['C'] = true, ['D'] = true, ['E'] = true, ['F'] = true,
    ['G'] = true, ['H'] = true, ['I'] = true, ['J'] = true, ['K'] = true, ['L'] = true,
    ['M'] = true, ['N'] = true, ['O'] = true, ['P'] = true, ['Q'] = true, ['R'] = true,
    ['S'] = true, ['T'] = true, ['U'] = true, ['V'] = true, ['W'] = true, ['X'] = true,
    ['Y'] = true, ['Z'] = true, ['a'] = true, ['b'] = true, ['c'] = true, ['d'] = true,
    ['e'] = true, ['f'] = true, ['g'] = true, ['h'] = true, ['i'] = true, ['j'] = true,
    ['k'] = true, ['l'] = true, ['m'] = true, ['n'] = true, ['o'] = true, ['p'] = true,
    ['q'] = true, ['r'] = true, ['s'] = true, ['t'] = true, ['u'] = true, ['v'] = true,
    ['w'] = true, ['x'] = true, ['y'] = true, ['z'] = true, ['0'] = true, ['1'] = true,
    ['2'] = true, ['3'] = true, ['4'] = true, ['5'] = true, ['6'] = true, ['7'] = true,
    ['8'] = true, ['9'] = true, ['-'] = true, ['_'] = true,
};

/*
 * A pseudonym ("p<version>_" and base64url) needs no JSON escaping: write it
 * as it is, which costs far less than escaping it a byte at a time. Anything
 * else takes the escaping path.
 */
static void json_pseudonym(struct strbuf *b, const char *p)
{
	size_t len = 0;
	while (base64url[(unsigned char)p[len]])
		len++;
	if (p[len] != '\0') {
		strbuf_json_string(b, p);
		return;
	}
	strbuf_append(b, "\"", 1);
	strbuf_append(b, p, len);
	strbuf_append(b, "\"", 1);
}

void subjects_init(struct subjects *s, const Isg__SendRequest *req)
{
	*s = (struct subjects){0};
	for (size_t r = 0; r < req->n_records; r++)
		s->max += req->records[r] ? req->records[r]->n_fields : 0;
}

/*
 * Room for more, doubled (and the requests pointed at their moved texts).
 * Not reserved for every field at the start: some 400 bytes a field, and a
 * frame of empty fields has millions, almost none of them identifiers.
 */
static int subjects_grow(struct subjects *s)
{
	size_t cap = s->cap ? 2 * s->cap : 16;
	if (cap > s->max)
		cap = s->max;
	struct pseudo_request *reqs = realloc(s->reqs, cap * sizeof(*reqs));
	if (!reqs)
		return ISG_ERR_NOMEM;
	s->reqs = reqs;
	/* Not zeroed: subjects_add writes each one it uses. Moved by hand, not
	 * realloc'd, so the old block's identifiers are wiped before it goes. */
	char(*norms)[PSEUDO_VALUE_MAX + 1] = malloc(cap * sizeof(*norms));
	if (!norms)
		return ISG_ERR_NOMEM;
	if (s->n) {
		memcpy(norms, s->norms, s->n * sizeof(*norms));
		sodium_memzero(s->norms, s->n * sizeof(*norms));
	}
	free(s->norms);
	s->norms = norms;
	for (size_t i = 0; i < s->n; i++)
		s->reqs[i].norm = s->norms[i];
	s->cap = cap;
	return 0;
}

int subjects_add(struct subjects *s, enum pseudo_type type, const char *norm, size_t len)
{
	if (type == PSEUDO_DATE) /* identifiers name a subject; dates alone do not */
		return 0;
	if (s->n == s->max || len > PSEUDO_VALUE_MAX)
		return ISG_ERR_LIMIT; /* one a field at most, as normalised */
	if (s->n == s->cap && subjects_grow(s) != 0)
		return ISG_ERR_NOMEM;
	memcpy(s->norms[s->n], norm, len);
	s->norms[s->n][len] = '\0';
	s->reqs[s->n] = (struct pseudo_request){
	    .domain = KEYS_AUDIT_DOMAIN, .type = type, .norm = s->norms[s->n], .len = len};
	s->n++;
	return 0;
}

void subjects_release(struct subjects *s)
{
	if (s->norms) /* personal data, normalised, as policy_apply's texts */
		sodium_memzero(s->norms, s->n * sizeof(*s->norms));
	free(s->reqs);
	free(s->norms);
	*s = (struct subjects){0};
}

int entry_subjects(const struct regime *rg, struct subjects *s, int64_t now_ms, char **out)
{
	*out = NULL;
	if (s->n && !s->answered) {
		int err =
		    rg->pseudo.pseudonymise(rg->pseudo.ctx, s->reqs, s->n, date_days_of_ms(now_ms));
		if (err != 0)
			return err;
		s->answered = true;
	}
	struct strbuf b;
	strbuf_init(&b);
	strbuf_puts(&b, "[");
	for (size_t i = 0; i < s->n; i++) {
		if (i)
			strbuf_append(&b, ",", 1);
		json_pseudonym(&b, s->reqs[i].out);
	}
	strbuf_puts(&b, "]");
	*out = strbuf_take(&b, NULL);
	return *out ? 0 : ISG_ERR_NOMEM;
}

void subjects_refusal(int err, const char *agreement_id, struct policy_refusal *why)
{
	*why = (struct policy_refusal){.code = ISG__ERROR_CODE__INTERNAL, .record_index = -1};
	str_copy(why->rule, "keys.domain", sizeof(why->rule));
	snprintf(why->message, sizeof(why->message),
	         err == ISG_ERR_NOT_FOUND
	             ? "the gateway has no key for linkage domain '%s' (agreement '%s')"
	             : "pseudonymisation failed for linkage domain '%s' (agreement '%s')",
	         KEYS_AUDIT_DOMAIN, agreement_id);
}

char *entry_refused(const char *policy_version, const char *sender, const Isg__SendRequest *req,
                    const struct policy_refusal *why, size_t *len)
{
	struct strbuf b;
	strbuf_init(&b);
	strbuf_puts(&b, "{\"event\":\"message.refused\"");
	kv_str(&b, "sender", sender);
	kv_str(&b, "recipient", req->recipient);
	kv_str(&b, "message_id", req->message_id);
	kv_str(&b, "agreement_id", req->agreement_id);
	kv_str(&b, "dataset", req->dataset);
	kv_str(&b, "policy_version", policy_version);
	kv_str(&b, "code",
	       protobuf_c_enum_descriptor_get_value(&isg__error_code__descriptor, (int)why->code)
	           ->name);
	kv_str(&b, "rule", why->rule);
	strbuf_puts(&b, ",\"reason\":"); /* the gateway's own text, in full */
	strbuf_json_string(&b, why->message);
	strbuf_printf(&b, ",\"record_index\":%lld", (long long)why->record_index);
	kv_str(&b, "field", why->field_undeclared ? "" : why->field);
	strbuf_printf(&b, ",\"records\":%zu}", req->n_records);
	return strbuf_take(&b, len);
}

char *entry_connection(const char *peer, const char *subject, const char *partner,
                       const char *reason, size_t *len)
{
	struct strbuf b;
	strbuf_init(&b);
	strbuf_printf(&b, "{\"event\":\"connection.%s\"", reason ? "refused" : "accepted");
	kv_str(&b, "peer", peer);
	strbuf_puts(&b, ",\"subject\":");
	strbuf_json_string(&b, subject ? subject : "");
	if (partner)
		kv_str(&b, "partner", partner);
	if (reason)
		kv_str(&b, "reason", reason);
	strbuf_puts(&b, "}");
	return strbuf_take(&b, len);
}

char *entry_connection_repeated(const struct refusal_record *rec, size_t *len)
{
	char first[32], last[32];
	struct strbuf b;
	strbuf_init(&b);
	strbuf_puts(&b, "{\"event\":\"connection.refused\"");
	kv_str(&b, "peer", rec->peer);
	strbuf_puts(&b, ",\"subject\":");
	strbuf_json_string(&b, rec->subject ? rec->subject : "");
	kv_str(&b, "reason", rec->reason);
	strbuf_printf(&b, ",\"repeated\":%llu", (unsigned long long)rec->repeated);
	kv_str(&b, "first_at", time_format_ms(first, sizeof(first), rec->first_at_ms));
	kv_str(&b, "last_at", time_format_ms(last, sizeof(last), rec->last_at_ms));
	strbuf_puts(&b, "}");
	return strbuf_take(&b, len);
}

char *entry_connection_closed(const struct policy_set *set, const char *peer, const char *subject,
                              const char *partner, const char *rule, const char *reason,
                              size_t *len)
{
	struct strbuf b;
	strbuf_init(&b);
	strbuf_puts(&b, "{\"event\":\"connection.closed\"");
	kv_str(&b, "peer", peer);
	strbuf_puts(&b, ",\"subject\":");
	strbuf_json_string(&b, subject ? subject : "");
	kv_str(&b, "partner", partner);
	kv_str(&b, "policy_version", set->version);
	kv_str(&b, "rule", rule);
	kv_str(&b, "reason", reason);
	strbuf_puts(&b, "}");
	return strbuf_take(&b, len);
}

char *entry_policy(const struct policy_set *set, const char *dir, const char *outcome,
                   size_t errors, size_t *len)
{
	struct strbuf b;
	strbuf_init(&b);
	strbuf_printf(&b, "{\"event\":\"policy.%s\"", outcome);
	strbuf_puts(&b, ",\"dir\":");
	strbuf_json_string(&b, dir);
	if (set) {
		kv_str(&b, "policy_version", set->version);
		strbuf_printf(&b, ",\"partners\":%zu,\"agreements\":%zu", set->n_partners,
		              set->n_agreements);
	}
	strbuf_printf(&b, ",\"errors\":%zu}", errors);
	return strbuf_take(&b, len);
}

/* Append name to a JSON list in json and a comma-separated one in plain (first: no comma). */
static void list_add(struct strbuf *json, struct strbuf *plain, bool *first, const char *name)
{
	strbuf_puts(json, *first ? "" : ",");
	strbuf_json_string(json, name);
	strbuf_puts(plain, *first ? "" : ",");
	strbuf_puts(plain, name);
	*first = false;
}

enum key_change { KEY_CREATED, KEY_ROTATED, KEY_REMOVED, KEY_CHANGES };

/*
 * Append "created", "rotated" and "removed": now against before, both
 * sorted by name, in one merge. In changes, the same lists for the log,
 * the empty ones left out (domain names need no quoting).
 */
static void key_changes(struct strbuf *b, struct strbuf *changes, const struct key_versions *now,
                        const struct key_versions *before)
{
	static const char *const names[KEY_CHANGES] = {"created", "rotated", "removed"};
	struct strbuf lists[KEY_CHANGES], plain[KEY_CHANGES];
	bool empty[KEY_CHANGES];
	for (size_t k = 0; k < KEY_CHANGES; k++) {
		strbuf_init(&lists[k]);
		strbuf_init(&plain[k]);
		empty[k] = true;
	}
	size_t i = 0, j = 0;
	while (i < now->n || j < before->n) {
		int cmp = i == now->n      ? 1
		          : j == before->n ? -1
		                           : strcmp(now->items[i].name, before->items[j].name);
		enum key_change k = KEY_CHANGES;
		const char *name = NULL;
		if (cmp < 0) {
			k = KEY_CREATED;
			name = now->items[i++].name;
		} else if (cmp > 0) {
			k = KEY_REMOVED;
			name = before->items[j++].name;
		} else {
			if (now->items[i].version != before->items[j].version) {
				k = KEY_ROTATED;
				name = now->items[i].name;
			}
			i++;
			j++;
		}
		if (name)
			list_add(&lists[k], &plain[k], &empty[k], name);
	}
	for (size_t k = 0; k < KEY_CHANGES; k++) {
		char *list = strbuf_take(&lists[k], NULL);
		b->failed |= list == NULL;
		strbuf_printf(b, ",\"%s\":[%s]", names[k], list ? list : "");
		free(list);
		char *words = strbuf_take(&plain[k], NULL);
		if (!empty[k])
			strbuf_printf(changes, "%s%s=%s", changes->len ? " " : "", names[k],
			              words ? words : "?");
		free(words);
	}
}

char *entry_keys(const struct key_versions *now, const struct key_versions *before, char **changes,
                 size_t *len)
{
	struct strbuf b, c;
	strbuf_init(&b);
	strbuf_init(&c);
	strbuf_puts(&b, "{\"event\":\"keys.loaded\",\"domains\":{");
	for (size_t i = 0; i < now->n; i++) {
		strbuf_puts(&b, i ? "," : "");
		strbuf_json_string(&b, now->items[i].name);
		strbuf_printf(&b, ":%u", (unsigned)now->items[i].version);
	}
	strbuf_puts(&b, "}");
	if (before)
		key_changes(&b, &c, now, before);
	else /* not known: claim nothing */
		strbuf_puts(&b, ",\"created\":null,\"rotated\":null,\"removed\":null");
	strbuf_puts(&b, "}");
	size_t clen = c.len;
	char *words = strbuf_take(&c, NULL);
	if (clen == 0) {
		free(words);
		words = NULL;
	}
	*changes = words;
	return strbuf_take(&b, len);
}
