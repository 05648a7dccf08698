/*
 * Connection refusals, coalesced. Anyone who can reach the port can make a
 * handshake fail, and each refusal is an audit entry nobody can ever
 * remove: one entry per refusal would let a port scanner or a load
 * balancer's health check grow the log without bound and make the store
 * commit once per TCP connection.
 *
 * So a refusal is keyed by the peer's address (without the port; for
 * IPv6, its /64), the reason and the subject of a certificate that
 * verified. The first of a key is written at once, as it happened, so a
 * partner's expired certificate shows at once and in full; those that
 * follow within the window (audit.refusal_window) are only counted, and
 * once it is over one entry stands for them all (refusals_flush, called
 * every second and at shutdown). The key is then forgotten: the next
 * refusal is written at once again.
 *
 * The subject of a certificate that did not verify is whatever its maker
 * wrote: keyed by it, one address could fill the table with made-up
 * subjects and push every other refusal into the overflow buckets. Those
 * are keyed with subject "*" (the first is still written with the subject
 * it showed), so a second partner's failing certificate from the same
 * address, for the same reason, is only counted.
 *
 * At most REFUSALS_MAX_KEYS keys are kept. Past that a new key is counted,
 * never written at once, in an overflow bucket of its reason (address and
 * subject "*"); past REFUSALS_MAX_OVERFLOW of those, in one bucket for
 * every reason. A write the store refuses (its queue full) is counted
 * instead, or kept for the next flush: every refusal is on record.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/gateway.h"
#include "util/util.h"

#define REFUSALS_BUCKETS 8192 /* a power of two, over REFUSALS_MAX_KEYS */
#define ANY "*"

struct refusal {
	struct refusal *next;
	bool overflow;
	int64_t window_end; /* monotonic ms */
	/* Refusals counted and not written yet, and when (wall clock). */
	uint64_t repeated;
	int64_t first_at_ms, last_at_ms;
	const char *reason, *subject; /* in key, after the address */
	char key[];                   /* address '\0' reason '\0' subject '\0' */
};

struct refusals {
	pthread_mutex_t mu;
	int64_t window_ms;
	refusals_write_fn write;
	void *ctx;
	size_t n_keys, n_overflow;
	int64_t next_due; /* the earliest window_end; INT64_MAX when none */
	struct refusal *every;
	struct refusal *buckets[REFUSALS_BUCKETS];
};

/*
 * Who a refusal is counted against: the address of "198.51.100.7:40022", or
 * the /64 of "[2001:db8::7]:40022" ("2001:db8::/64"), since one host
 * commonly has a whole /64 to choose its address from. An IPv4 address
 * mapped into IPv6 stays whole.
 */
static void refusal_address(const char *peer, char *out, size_t size)
{
	const char *start = peer, *end = strrchr(peer, ':');
	bool v6 = peer[0] == '[' && strchr(peer, ']');
	if (v6) {
		start = peer + 1;
		end = strchr(start, ']');
	}
	if (!end)
		end = peer + strlen(peer);
	size_t n = (size_t)(end - start);
	if (n >= size)
		n = size - 1;
	memcpy(out, start, n);
	out[n] = '\0';
	struct in6_addr a;
	char text[INET6_ADDRSTRLEN];
	if (!v6 || inet_pton(AF_INET6, out, &a) != 1 || IN6_IS_ADDR_V4MAPPED(&a))
		return;
	memset(a.s6_addr + 8, 0, 8);
	if (inet_ntop(AF_INET6, &a, text, sizeof(text)))
		snprintf(out, size, "%s/64", text);
}

static size_t refusal_hash(const char *addr, const char *reason, const char *subject)
{
	const char *parts[3] = {addr, reason, subject};
	uint64_t h = 14695981039346656037u; /* FNV-1a */
	for (size_t i = 0; i < 3; i++) {
		for (const char *p = parts[i]; *p; p++)
			h = (h ^ (unsigned char)*p) * 1099511628211u;
		h *= 1099511628211u; /* the separator */
	}
	return (size_t)(h & (REFUSALS_BUCKETS - 1));
}

static struct refusal *refusal_new(const char *addr, const char *reason, const char *subject,
                                   bool overflow, int64_t window_end)
{
	size_t la = strlen(addr), lr = strlen(reason), ls = strlen(subject);
	struct refusal *e = calloc(1, sizeof(*e) + la + lr + ls + 3);
	if (!e)
		return NULL;
	char *p = e->key;
	memcpy(p, addr, la + 1);
	e->reason = p += la + 1;
	memcpy(p, reason, lr + 1);
	e->subject = p += lr + 1;
	memcpy(p, subject, ls + 1);
	e->overflow = overflow;
	e->window_end = window_end;
	return e;
}

static struct refusal *refusal_find(struct refusals *r, size_t h, const char *addr,
                                    const char *reason, const char *subject)
{
	for (struct refusal *e = r->buckets[h]; e; e = e->next)
		if (strcmp(e->key, addr) == 0 && strcmp(e->reason, reason) == 0 &&
		    strcmp(e->subject, subject) == 0)
			return e;
	return NULL;
}

/* A new key in the table, its window starting now; NULL when out of memory. */
static struct refusal *refusal_add(struct refusals *r, size_t h, const char *addr,
                                   const char *reason, const char *subject, bool overflow,
                                   int64_t mono_ms)
{
	struct refusal *e = refusal_new(addr, reason, subject, overflow, mono_ms + r->window_ms);
	if (!e)
		return NULL;
	e->next = r->buckets[h];
	r->buckets[h] = e;
	if (overflow)
		r->n_overflow++;
	else
		r->n_keys++;
	if (e->window_end < r->next_due)
		r->next_due = e->window_end;
	return e;
}

static void refusal_count(struct refusals *r, struct refusal *e, int64_t mono_ms, int64_t wall_ms)
{
	if (e->repeated == 0) {
		e->first_at_ms = e->last_at_ms = wall_ms;
		if (e == r->every) { /* never in the table: its window starts now */
			e->window_end = mono_ms + r->window_ms;
			if (e->window_end < r->next_due)
				r->next_due = e->window_end;
		}
	}
	if (e->repeated < UINT64_MAX)
		e->repeated++;
	/* The earliest and latest readings: a wall clock set back within the
	 * window must not give a count that ends before it starts. */
	if (wall_ms < e->first_at_ms)
		e->first_at_ms = wall_ms;
	if (wall_ms > e->last_at_ms)
		e->last_at_ms = wall_ms;
}

/* The bucket a key counts in when the table is full. */
static struct refusal *refusal_overflow(struct refusals *r, const char *reason, int64_t mono_ms)
{
	size_t h = refusal_hash(ANY, reason, ANY);
	struct refusal *e = refusal_find(r, h, ANY, reason, ANY);
	if (!e && r->n_overflow < REFUSALS_MAX_OVERFLOW)
		e = refusal_add(r, h, ANY, reason, ANY, true, mono_ms);
	return e ? e : r->every;
}

struct refusals *refusals_new(int64_t window_ms, refusals_write_fn write, void *ctx)
{
	struct refusals *r = calloc(1, sizeof(*r));
	if (!r)
		return NULL;
	/* Made now so that a refusal always has somewhere to be counted. */
	r->every = refusal_new(ANY, ANY, ANY, true, 0);
	if (!r->every) {
		free(r);
		return NULL;
	}
	pthread_mutex_init(&r->mu, NULL);
	r->window_ms = window_ms;
	r->write = write;
	r->ctx = ctx;
	r->next_due = INT64_MAX;
	return r;
}

void refusals_free(struct refusals *r)
{
	if (!r)
		return;
	for (size_t i = 0; i < REFUSALS_BUCKETS; i++) {
		for (struct refusal *e = r->buckets[i], *next; e; e = next) {
			next = e->next;
			free(e);
		}
	}
	free(r->every);
	pthread_mutex_destroy(&r->mu);
	free(r);
}

void refusals_note(struct refusals *r, const char *peer, const char *subject, bool verified,
                   const char *reason, int64_t mono_ms, int64_t wall_ms)
{
	char addr[REFUSALS_ADDR_MAX];
	refusal_address(peer ? peer : "", addr, sizeof(addr));
	subject = subject ? subject : "";
	reason = reason ? reason : "";
	const char *keyed = verified || !subject[0] ? subject : ANY;
	size_t h = refusal_hash(addr, reason, keyed);
	pthread_mutex_lock(&r->mu);
	struct refusal *e = refusal_find(r, h, addr, reason, keyed);
	if (!e && r->n_keys < REFUSALS_MAX_KEYS &&
	    (e = refusal_add(r, h, addr, reason, keyed, false, mono_ms)) != NULL) {
		struct refusal_record rec = {.peer = peer,
		                             .subject = subject,
		                             .reason = reason,
		                             .first_at_ms = wall_ms,
		                             .last_at_ms = wall_ms,
		                             .verified = verified};
		if (r->write(r->ctx, &rec) == 0)
			goto out;
	}
	if (!e)
		e = refusal_overflow(r, reason, mono_ms);
	refusal_count(r, e, mono_ms, wall_ms);
out:
	pthread_mutex_unlock(&r->mu);
}

/* Write what e counted; 0 when written (or nothing to write). */
static int refusal_write_count(struct refusals *r, struct refusal *e)
{
	if (e->repeated == 0)
		return 0;
	struct refusal_record rec = {.peer = e->key,
	                             .subject = e->subject,
	                             .reason = e->reason,
	                             .repeated = e->repeated,
	                             .first_at_ms = e->first_at_ms,
	                             .last_at_ms = e->last_at_ms};
	int err = r->write(r->ctx, &rec);
	if (err == 0)
		e->repeated = 0;
	return err;
}

/* Write the counts of the bucket's keys that are due, and forget them. */
static size_t refusals_flush_bucket(struct refusals *r, struct refusal **pp, int64_t mono_ms,
                                    bool all, int64_t *next)
{
	size_t kept = 0;
	for (struct refusal *e; (e = *pp) != NULL;) {
		bool due = all || e->window_end <= mono_ms;
		if (!due || refusal_write_count(r, e) != 0) {
			kept += due;
			if (e->window_end < *next)
				*next = e->window_end;
			pp = &e->next;
			continue;
		}
		*pp = e->next;
		if (e->overflow)
			r->n_overflow--;
		else
			r->n_keys--;
		free(e);
	}
	return kept;
}

size_t refusals_flush(struct refusals *r, int64_t mono_ms, bool all)
{
	size_t kept = 0;
	pthread_mutex_lock(&r->mu);
	if (!all && mono_ms < r->next_due)
		goto out;
	int64_t next = INT64_MAX;
	for (size_t i = 0; i < REFUSALS_BUCKETS; i++)
		if (r->buckets[i])
			kept += refusals_flush_bucket(r, &r->buckets[i], mono_ms, all, &next);
	if (r->every->repeated) {
		bool due = all || r->every->window_end <= mono_ms;
		if (!due || refusal_write_count(r, r->every) != 0) {
			kept += due;
			if (r->every->window_end < next)
				next = r->every->window_end;
		}
	}
	r->next_due = next;
out:
	pthread_mutex_unlock(&r->mu);
	return kept;
}

void refusals_restore(struct refusals *r, const struct refusal_record *rec, int64_t mono_ms)
{
	char addr[REFUSALS_ADDR_MAX];
	const char *subject = rec->subject ? rec->subject : "";
	const char *reason = rec->reason ? rec->reason : "";
	/* A count's peer and subject are its key already; one refusal's are keyed
	 * as refusals_note keys them. */
	if (rec->repeated)
		str_copy(addr, rec->peer ? rec->peer : "", sizeof(addr));
	else
		refusal_address(rec->peer ? rec->peer : "", addr, sizeof(addr));
	if (!rec->repeated && !rec->verified && subject[0])
		subject = ANY;
	uint64_t n = rec->repeated ? rec->repeated : 1;
	size_t h = refusal_hash(addr, reason, subject);
	pthread_mutex_lock(&r->mu);
	struct refusal *e = refusal_find(r, h, addr, reason, subject);
	bool overflow = strcmp(addr, ANY) == 0 && strcmp(subject, ANY) == 0;
	if (!e && strcmp(reason, ANY) == 0 && overflow)
		e = r->every;
	if (!e &&
	    (overflow ? r->n_overflow < REFUSALS_MAX_OVERFLOW : r->n_keys < REFUSALS_MAX_KEYS))
		e = refusal_add(r, h, addr, reason, subject, overflow, mono_ms);
	if (!e)
		e = refusal_overflow(r, reason, mono_ms);
	refusal_count(r, e, mono_ms, rec->first_at_ms);
	e->repeated += n - 1 > UINT64_MAX - e->repeated ? UINT64_MAX - e->repeated : n - 1;
	if (rec->last_at_ms > e->last_at_ms)
		e->last_at_ms = rec->last_at_ms;
	pthread_mutex_unlock(&r->mu);
}
