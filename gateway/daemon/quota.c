/*
 * Daily limits per sender and agreement (records_per_day, messages_per_day),
 * counted in UTC days. They are judged on the store's writer thread, in the
 * send's own job (store_message.admit): after the store has looked the
 * message up, so a resend, answered with its receipt, never takes a share,
 * even while it is in flight beside new messages; and with the batch's time
 * stamp, the message's accepted_at, so a message counts on the day the
 * audit log, `isgctl audit report` and a restart's counts put it on, judged
 * against that day's count. The writer runs one job at a time, so two sends
 * cannot both slip under a limit. A share admitted and then rolled back
 * with its job or batch is given back (store_message.admit_undo,
 * quota_release), once.
 *
 * At start the counters are rebuilt from the store, so a restart does not
 * reset them. Sends under an agreement without limits are counted too, so
 * that a limit a reload brings in counts what was accepted earlier that
 * day, as it would after a restart.
 *
 * A counter's day only moves forward. A stamp from an earlier day than the
 * counter's (the wall clock set back by NTP or by hand) counts on the
 * counter's day: going back would zero the counts, and a day already spent
 * would start again.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/gateway.h"
#include "util/util.h"

#define QUOTA_BUCKETS 256

struct quota_entry {
	struct quota_entry *next;
	int64_t day;
	uint64_t messages, records;
	char key[]; /* sender '\0' agreement_id '\0' */
};

struct quota {
	pthread_mutex_t mu;
	struct quota_entry *buckets[QUOTA_BUCKETS];
};

static size_t quota_hash(const char *sender, const char *agreement)
{
	size_t h = 5381;
	for (const char *p = sender; *p; p++)
		h = h * 33 + (unsigned char)*p;
	h = h * 33;
	for (const char *p = agreement; *p; p++)
		h = h * 33 + (unsigned char)*p;
	return h % QUOTA_BUCKETS;
}

/* The entry for (sender, agreement), created if absent; NULL when out of memory. */
static struct quota_entry *quota_entry(struct quota *q, const char *sender, const char *agreement)
{
	size_t ls = strlen(sender), la = strlen(agreement);
	struct quota_entry **head = &q->buckets[quota_hash(sender, agreement)];
	for (struct quota_entry *e = *head; e; e = e->next)
		if (strcmp(e->key, sender) == 0 && strcmp(e->key + ls + 1, agreement) == 0)
			return e;
	struct quota_entry *e = calloc(1, sizeof(*e) + ls + la + 2);
	if (!e)
		return NULL;
	e->day = INT64_MIN; /* no day yet: the first send's counts */
	memcpy(e->key, sender, ls + 1);
	memcpy(e->key + ls + 1, agreement, la + 1);
	e->next = *head;
	*head = e;
	return e;
}

struct quota *quota_new(void)
{
	struct quota *q = calloc(1, sizeof(*q));
	if (q)
		pthread_mutex_init(&q->mu, NULL);
	return q;
}

void quota_free(struct quota *q)
{
	if (!q)
		return;
	for (size_t i = 0; i < QUOTA_BUCKETS; i++) {
		for (struct quota_entry *e = q->buckets[i], *next; e; e = next) {
			next = e->next;
			free(e);
		}
	}
	pthread_mutex_destroy(&q->mu);
	free(q);
}

struct seed_ctx {
	struct quota *q;
	int64_t day;
	int err;
};

static void quota_seed_one(void *ctx, const struct store_usage *u)
{
	struct seed_ctx *sc = ctx;
	struct quota_entry *e = quota_entry(sc->q, u->sender, u->agreement_id);
	if (!e) {
		sc->err = ISG_ERR_NOMEM;
		return;
	}
	e->day = sc->day;
	e->messages = u->messages;
	e->records = u->records;
}

int quota_seed(struct quota *q, struct store *store, int64_t now_ms)
{
	struct seed_ctx sc = {.q = q, .day = date_days_of_ms(now_ms)};
	pthread_mutex_lock(&q->mu);
	int err = store_usage_since(store, sc.day * 86400000LL, quota_seed_one, &sc);
	pthread_mutex_unlock(&q->mu);
	return err ? err : sc.err;
}

static void quota_refuse(struct policy_refusal *why, const char *rule, const char *what,
                         uint32_t limit, const char *agreement_id)
{
	memset(why, 0, sizeof(*why));
	why->code = ISG__ERROR_CODE__LIMIT_EXCEEDED;
	why->record_index = -1;
	str_copy(why->rule, rule, sizeof(why->rule));
	snprintf(why->message, sizeof(why->message),
	         "this message would exceed the limit of %u %s per day for your organisation "
	         "under agreement '%s'; the limit resets at 00:00 UTC",
	         limit, what, agreement_id);
}

int quota_ask_init(struct quota_ask *ask, const struct policy_agreement *a, uint32_t records)
{
	memset(ask, 0, sizeof(*ask));
	if (strlen(a->id) >= sizeof(ask->agreement_id))
		return ISG_ERR_INVALID; /* a policy id never is (policy/parse.c) */
	str_copy(ask->agreement_id, a->id, sizeof(ask->agreement_id));
	ask->messages_per_day = a->messages_per_day;
	ask->records_per_day = a->records_per_day;
	ask->records = records;
	return 0;
}

int quota_admit(struct quota *q, const char *sender, const struct quota_ask *ask,
                int64_t accepted_at_ms, struct quota_claim *claim, struct policy_refusal *why)
{
	memset(claim, 0, sizeof(*claim));
	bool limited = ask->records_per_day != 0 || ask->messages_per_day != 0;
	int64_t day = date_days_of_ms(accepted_at_ms);
	int err = 0;
	pthread_mutex_lock(&q->mu);
	struct quota_entry *e = quota_entry(q, sender, ask->agreement_id);
	if (!e) {
		err = limited ? ISG_ERR_NOMEM : 0;
		goto out;
	}
	if (day > e->day) {
		e->day = day;
		e->messages = e->records = 0;
	}
	if (ask->messages_per_day && e->messages + 1 > ask->messages_per_day) {
		quota_refuse(why, "agreement.messages_per_day", "messages", ask->messages_per_day,
		             ask->agreement_id);
		err = ISG_ERR_LIMIT;
	} else if (ask->records_per_day && e->records + ask->records > ask->records_per_day) {
		quota_refuse(why, "agreement.records_per_day", "records", ask->records_per_day,
		             ask->agreement_id);
		err = ISG_ERR_LIMIT;
	} else {
		e->messages++;
		e->records += ask->records;
		*claim = (struct quota_claim){.entry = e, .day = e->day, .records = ask->records};
	}
out:
	pthread_mutex_unlock(&q->mu);
	return err;
}

void quota_release(struct quota *q, const struct quota_claim *claim)
{
	if (!claim->entry)
		return;
	pthread_mutex_lock(&q->mu);
	struct quota_entry *e = claim->entry;
	if (e->day == claim->day) {
		e->messages -= e->messages ? 1 : 0;
		e->records -= claim->records <= e->records ? claim->records : e->records;
	}
	pthread_mutex_unlock(&q->mu);
}
