/* daemon/refusals.c: connection refusals coalesced per address, reason and verified subject. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "daemon/gateway.h"

#define T0 1000000         /* monotonic ms */
#define WALL 1790000000000 /* wall-clock ms */
#define WINDOW 60000       /* ms */

struct written {
	char peer[REFUSALS_ADDR_MAX], subject[64], reason[64];
	uint64_t repeated;
	int64_t first_at_ms, last_at_ms;
};

struct sink {
	struct written *w;
	size_t n, cap;
	int fail; /* the next `fail` writes fail as a full store queue would */
};

static int sink_write(void *ctx, const struct refusal_record *rec)
{
	struct sink *s = ctx;
	if (s->fail > 0) {
		s->fail--;
		return ISG_ERR_AGAIN;
	}
	if (s->n == s->cap) {
		s->cap = s->cap ? s->cap * 2 : 16;
		s->w = realloc(s->w, s->cap * sizeof(*s->w));
		assert_non_null(s->w);
	}
	struct written *w = &s->w[s->n++];
	snprintf(w->peer, sizeof(w->peer), "%s", rec->peer);
	snprintf(w->subject, sizeof(w->subject), "%s", rec->subject);
	snprintf(w->reason, sizeof(w->reason), "%s", rec->reason);
	w->repeated = rec->repeated;
	w->first_at_ms = rec->first_at_ms;
	w->last_at_ms = rec->last_at_ms;
	return 0;
}

/* Refusals each written entry stands for, in all. */
static uint64_t sink_total(const struct sink *s)
{
	uint64_t n = 0;
	for (size_t i = 0; i < s->n; i++)
		n += s->w[i].repeated ? s->w[i].repeated : 1;
	return n;
}

static void test_first_at_once_repeats_counted(void **state)
{
	struct sink s = {0};
	struct refusals *r = refusals_new(WINDOW, sink_write, &s);
	assert_non_null(r);
	refusals_note(r, "198.51.100.7:40001", "", false, "connection closed during handshake", T0,
	              WALL);
	/* written at once, in full, with the port */
	assert_int_equal(s.n, 1);
	assert_string_equal(s.w[0].peer, "198.51.100.7:40001");
	assert_string_equal(s.w[0].reason, "connection closed during handshake");
	assert_int_equal(s.w[0].repeated, 0);
	/* 49 more from other ports within the window: only counted */
	for (int i = 1; i < 50; i++) {
		char peer[32];
		snprintf(peer, sizeof(peer), "198.51.100.7:%d", 40001 + i);
		refusals_note(r, peer, NULL, false, "connection closed during handshake",
		              T0 + i * 100, WALL + i * 100);
	}
	assert_int_equal(s.n, 1);
	assert_int_equal(refusals_flush(r, T0 + WINDOW - 1, false), 0);
	assert_int_equal(s.n, 1);
	/* the window is over: one entry stands for the 49 */
	assert_int_equal(refusals_flush(r, T0 + WINDOW, false), 0);
	assert_int_equal(s.n, 2);
	assert_string_equal(s.w[1].peer, "198.51.100.7");
	assert_string_equal(s.w[1].subject, "");
	assert_string_equal(s.w[1].reason, "connection closed during handshake");
	assert_int_equal(s.w[1].repeated, 49);
	assert_int_equal(s.w[1].first_at_ms, WALL + 100);
	assert_int_equal(s.w[1].last_at_ms, WALL + 4900);
	assert_int_equal(sink_total(&s), 50);
	/* nothing more to write, and the key is forgotten: the next is written at once */
	refusals_flush(r, T0 + 2 * WINDOW, false);
	assert_int_equal(s.n, 2);
	refusals_note(r, "198.51.100.7:40100", "", false, "connection closed during handshake",
	              T0 + 2 * WINDOW, WALL + 2 * WINDOW);
	assert_int_equal(s.n, 3);
	assert_int_equal(s.w[2].repeated, 0);
	refusals_free(r);
	free(s.w);
}

/* A wall clock set back within a window: the count spans the earliest and latest readings. */
static void test_clock_set_back_within_a_window(void **state)
{
	(void)state;
	struct sink s = {0};
	struct refusals *r = refusals_new(WINDOW, sink_write, &s);
	assert_non_null(r);
	const char *why = "connection closed during handshake";
	refusals_note(r, "198.51.100.7:1", "", false, why, T0, WALL);
	refusals_note(r, "198.51.100.7:2", "", false, why, T0 + 100, WALL + 100);
	refusals_note(r, "198.51.100.7:3", "", false, why, T0 + 200, WALL - 3600000 + 200);
	refusals_note(r, "198.51.100.7:4", "", false, why, T0 + 300, WALL - 3600000 + 300);
	assert_int_equal(refusals_flush(r, T0 + WINDOW, false), 0);
	assert_int_equal(s.n, 2);
	assert_int_equal(s.w[1].repeated, 3);
	assert_int_equal(s.w[1].first_at_ms, WALL - 3600000 + 200);
	assert_int_equal(s.w[1].last_at_ms, WALL + 100);
	refusals_free(r);
	free(s.w);
}

static void test_single_refusal_has_no_second_entry(void **state)
{
	struct sink s = {0};
	struct refusals *r = refusals_new(WINDOW, sink_write, &s);
	refusals_note(r, "192.0.2.1:5000", "CN=partner", false,
	              "certificate verify failed: expired", T0, WALL);
	refusals_flush(r, T0 + WINDOW, false);
	assert_int_equal(refusals_flush(r, T0 + WINDOW, true), 0);
	assert_int_equal(s.n, 1);
	refusals_free(r);
	free(s.w);
}

static void test_keys(void **state)
{
	struct sink s = {0};
	struct refusals *r = refusals_new(WINDOW, sink_write, &s);
	/* certificates that verified: each a key of its own, written at once */
	refusals_note(r, "192.0.2.1:1", "CN=a", true, "expired", T0, WALL);
	refusals_note(r, "192.0.2.1:2", "CN=b", true, "expired", T0, WALL);
	refusals_note(r, "192.0.2.1:3", "CN=a", true, "revoked", T0, WALL);
	refusals_note(r, "192.0.2.2:1", "CN=a", true, "expired", T0, WALL);
	refusals_note(r, "[2001:db8::7]:443", "CN=a", true, "expired", T0, WALL);
	refusals_note(r, "192.0.2.1:4", NULL, false, "expired", T0, WALL);
	assert_int_equal(s.n, 6);
	assert_string_equal(s.w[4].peer, "[2001:db8::7]:443");
	/* an IPv4 address mapped into IPv6 is an address of its own */
	refusals_note(r, "[::ffff:192.0.2.1]:1", NULL, false, "expired", T0, WALL);
	assert_int_equal(s.n, 7);
	/* the same again, from other ports, and for IPv6 from the same /64: counted */
	refusals_note(r, "[2001:db8::7]:444", "CN=a", true, "expired", T0 + 1, WALL + 1);
	refusals_note(r, "[2001:db8:0:0:ffff:1:2:3]:444", "CN=a", true, "expired", T0 + 1,
	              WALL + 1);
	refusals_note(r, "192.0.2.1:5", "", false, "expired", T0 + 1, WALL + 1);
	refusals_note(r, "[::ffff:192.0.2.1]:2", "", false, "expired", T0 + 1, WALL + 1);
	assert_int_equal(s.n, 7);
	/* from the next /64: a key of its own */
	refusals_note(r, "[2001:db8:0:1::7]:443", "CN=a", true, "expired", T0 + 1, WALL + 1);
	assert_int_equal(s.n, 8);
	assert_int_equal(refusals_flush(r, T0, true), 0);
	assert_int_equal(s.n, 11);
	assert_int_equal(sink_total(&s), 12);
	bool v6 = false, none = false, mapped = false;
	for (size_t i = 8; i < 11; i++) {
		v6 |= strcmp(s.w[i].peer, "2001:db8::/64") == 0 &&
		      strcmp(s.w[i].subject, "CN=a") == 0 && s.w[i].repeated == 2;
		none |= strcmp(s.w[i].peer, "192.0.2.1") == 0 && strcmp(s.w[i].subject, "") == 0 &&
		        s.w[i].repeated == 1;
		mapped |= strcmp(s.w[i].peer, "::ffff:192.0.2.1") == 0 && s.w[i].repeated == 1;
	}
	assert_true(v6);
	assert_true(none);
	assert_true(mapped);
	refusals_free(r);
	free(s.w);
}

/*
 * The subject of a certificate that did not verify is whatever its maker
 * wrote: a flood of self-made ones from one address is one key, and leaves
 * the table free for everyone else's refusals.
 */
static void test_unverified_subjects_share_a_key(void **state)
{
	struct sink s = {0};
	struct refusals *r = refusals_new(WINDOW, sink_write, &s);
	for (int i = 0; i < REFUSALS_MAX_KEYS + 10; i++) {
		char subject[32];
		snprintf(subject, sizeof(subject), "CN=made-up-%d", i);
		refusals_note(r, "203.0.113.5:7000", subject, false, "self-signed certificate",
		              T0 + i, WALL + i);
	}
	/* the first at once, with the subject it showed */
	assert_int_equal(s.n, 1);
	assert_string_equal(s.w[0].subject, "CN=made-up-0");
	/* a partner's refusal from elsewhere still has a key of its own */
	refusals_note(r, "192.0.2.1:1", "CN=partner", false, "certificate has expired", T0, WALL);
	assert_int_equal(s.n, 2);
	assert_string_equal(s.w[1].peer, "192.0.2.1:1");
	assert_string_equal(s.w[1].subject, "CN=partner");
	assert_int_equal(s.w[1].repeated, 0);
	/* the rest of the flood is one count, its subject "*" */
	assert_int_equal(refusals_flush(r, T0, true), 0);
	assert_int_equal(s.n, 3);
	assert_string_equal(s.w[2].peer, "203.0.113.5");
	assert_string_equal(s.w[2].subject, "*");
	assert_string_equal(s.w[2].reason, "self-signed certificate");
	assert_int_equal(s.w[2].repeated, REFUSALS_MAX_KEYS + 9);
	refusals_free(r);
	free(s.w);
}

static void note_key(struct refusals *r, unsigned i, const char *reason, int64_t at)
{
	char peer[48];
	snprintf(peer, sizeof(peer), "10.%u.%u.%u:9", (i >> 16) & 255, (i >> 8) & 255, i & 255);
	refusals_note(r, peer, "", false, reason, at, WALL + (at - T0));
}

static void test_table_full_overflow_per_reason(void **state)
{
	struct sink s = {0};
	struct refusals *r = refusals_new(WINDOW, sink_write, &s);
	unsigned i = 0;
	for (; i < REFUSALS_MAX_KEYS; i++)
		note_key(r, i, "eof", T0);
	assert_int_equal(s.n, REFUSALS_MAX_KEYS);
	/* new addresses now: counted per reason, none written at once */
	for (int k = 0; k < 100; k++)
		note_key(r, i++, k % 2 ? "eof" : "bad record", T0 + 10);
	/* a key already in the table is counted with its own */
	note_key(r, 0, "eof", T0 + 20);
	assert_int_equal(s.n, REFUSALS_MAX_KEYS);
	/* more reasons than overflow buckets: the rest go to one bucket */
	for (int k = 0; k < REFUSALS_MAX_OVERFLOW + 5; k++) {
		char reason[32];
		snprintf(reason, sizeof(reason), "reason %d", k);
		note_key(r, i++, reason, T0 + 30);
	}
	assert_int_equal(s.n, REFUSALS_MAX_KEYS);
	size_t before = s.n;
	assert_int_equal(refusals_flush(r, T0 + WINDOW + 30, false), 0);
	uint64_t eof = 0, bad = 0, other = 0, own = 0, buckets = 0;
	for (size_t k = before; k < s.n; k++) {
		struct written *w = &s.w[k];
		if (strcmp(w->peer, "*") != 0) {
			assert_string_equal(w->peer, "10.0.0.0");
			own += w->repeated;
			continue;
		}
		assert_string_equal(w->subject, "*");
		buckets++;
		if (strcmp(w->reason, "eof") == 0)
			eof = w->repeated;
		else if (strcmp(w->reason, "bad record") == 0)
			bad = w->repeated;
		else if (strcmp(w->reason, "*") == 0)
			other = w->repeated;
		assert_true(w->first_at_ms <= w->last_at_ms);
	}
	assert_int_equal(eof, 50);
	assert_int_equal(bad, 50);
	assert_int_equal(own, 1);
	/* 2 buckets taken above, so REFUSALS_MAX_OVERFLOW - 2 reasons had one */
	assert_int_equal(other, 7);
	assert_int_equal(buckets, REFUSALS_MAX_OVERFLOW + 1);
	assert_int_equal(sink_total(&s), REFUSALS_MAX_KEYS + 100 + 1 + REFUSALS_MAX_OVERFLOW + 5);
	/* the table is empty again: a new key is written at once */
	note_key(r, i++, "eof", T0 + 2 * WINDOW);
	assert_int_equal(s.w[s.n - 1].repeated, 0);
	refusals_free(r);
	free(s.w);
}

/* The window is the one given, for a key and for the last overflow bucket. */
static void test_window(void **state)
{
	struct sink s = {0};
	struct refusals *r = refusals_new(5000, sink_write, &s);
	unsigned i = 0;
	for (; i < REFUSALS_MAX_KEYS; i++)
		note_key(r, i, "eof", T0);
	for (int k = 0; k < REFUSALS_MAX_OVERFLOW; k++) {
		char reason[32];
		snprintf(reason, sizeof(reason), "reason %d", k);
		note_key(r, i++, reason, T0);
	}
	note_key(r, 0, "eof", T0 + 1);       /* counted under its own key */
	note_key(r, i++, "another", T0 + 2); /* in the bucket for every reason */
	assert_int_equal(s.n, REFUSALS_MAX_KEYS);
	assert_int_equal(refusals_flush(r, T0 + 4999, false), 0);
	assert_int_equal(s.n, REFUSALS_MAX_KEYS);
	/* the keys' windows are over; the last bucket's, begun 2 ms later, is not */
	assert_int_equal(refusals_flush(r, T0 + 5000, false), 0);
	assert_int_equal(s.n, REFUSALS_MAX_KEYS + 1 + REFUSALS_MAX_OVERFLOW);
	size_t own = 0;
	for (size_t k = REFUSALS_MAX_KEYS; k < s.n; k++)
		own += strcmp(s.w[k].peer, "10.0.0.0") == 0 && s.w[k].repeated == 1;
	assert_int_equal(own, 1);
	assert_int_equal(refusals_flush(r, T0 + 5001, false), 0);
	assert_int_equal(s.n, REFUSALS_MAX_KEYS + 1 + REFUSALS_MAX_OVERFLOW);
	assert_int_equal(refusals_flush(r, T0 + 5002, false), 0);
	assert_int_equal(s.n, REFUSALS_MAX_KEYS + 2 + REFUSALS_MAX_OVERFLOW);
	assert_string_equal(s.w[s.n - 1].reason, "*");
	assert_int_equal(sink_total(&s), REFUSALS_MAX_KEYS + REFUSALS_MAX_OVERFLOW + 2);
	refusals_free(r);
	free(s.w);
}

static void test_failed_writes_are_counted_and_kept(void **state)
{
	struct sink s = {0};
	struct refusals *r = refusals_new(WINDOW, sink_write, &s);
	/* the first, written at once, fails: it is counted instead */
	s.fail = 1;
	refusals_note(r, "192.0.2.9:1", "", false, "eof", T0, WALL);
	assert_int_equal(s.n, 0);
	refusals_note(r, "192.0.2.9:2", "", false, "eof", T0 + 1, WALL + 1);
	/* the count's write fails too: kept for the next flush */
	s.fail = 1;
	assert_int_equal(refusals_flush(r, T0 + WINDOW, false), 1);
	assert_int_equal(s.n, 0);
	assert_int_equal(refusals_flush(r, T0 + WINDOW + 1000, false), 0);
	assert_int_equal(s.n, 1);
	assert_int_equal(s.w[0].repeated, 2);
	assert_int_equal(s.w[0].first_at_ms, WALL);
	assert_int_equal(s.w[0].last_at_ms, WALL + 1);
	refusals_free(r);
	free(s.w);
}

/* Entries written and then lost with a failed store batch are counted again. */
static void test_lost_entries_are_restored(void **state)
{
	struct sink s = {0};
	struct refusals *r = refusals_new(WINDOW, sink_write, &s);
	refusals_note(r, "[2001:db8::7]:443", "CN=made up", false, "eof", T0, WALL);
	assert_int_equal(s.n, 1);
	/* Lost: counted again under the key it was written for (subject "*", unverified). */
	struct refusal_record one = {.peer = "[2001:db8::7]:443",
	                             .subject = "CN=made up",
	                             .reason = "eof",
	                             .first_at_ms = WALL,
	                             .last_at_ms = WALL};
	refusals_restore(r, &one, T0 + 10);
	refusals_note(r, "[2001:db8::9]:1", "CN=other", false, "eof", T0 + 20, WALL + 20);
	assert_int_equal(s.n, 1);
	assert_int_equal(refusals_flush(r, T0 + WINDOW, false), 0);
	assert_int_equal(s.n, 2);
	assert_string_equal(s.w[1].peer, "2001:db8::/64");
	assert_string_equal(s.w[1].subject, "*");
	assert_int_equal(s.w[1].repeated, 2);
	assert_int_equal(s.w[1].first_at_ms, WALL);
	assert_int_equal(s.w[1].last_at_ms, WALL + 20);
	/* That count lost too, its key forgotten since: a key of its own again. */
	struct refusal_record count = {.peer = "2001:db8::/64",
	                               .subject = "*",
	                               .reason = "eof",
	                               .repeated = 2,
	                               .first_at_ms = WALL,
	                               .last_at_ms = WALL + 20};
	refusals_restore(r, &count, T0 + WINDOW + 5);
	assert_int_equal(refusals_flush(r, T0 + 2 * WINDOW + 5, false), 0);
	assert_int_equal(s.n, 3);
	assert_string_equal(s.w[2].peer, "2001:db8::/64");
	assert_int_equal(s.w[2].repeated, 2);
	assert_int_equal(s.w[2].first_at_ms, WALL);
	assert_int_equal(s.w[2].last_at_ms, WALL + 20);
	refusals_free(r);
	free(s.w);
}

struct flood {
	struct refusals *r;
	int thread;
};

#define THREADS 4
#define PER_THREAD 5000

static void *flood_main(void *arg)
{
	struct flood *f = arg;
	for (int i = 0; i < PER_THREAD; i++) {
		char peer[32];
		snprintf(peer, sizeof(peer), "10.9.%d.%d:%d", f->thread, i % 7, i);
		refusals_note(f->r, peer, "", false, i % 3 ? "eof" : "bad", T0 + i, WALL + i);
	}
	return NULL;
}

static void test_threads(void **state)
{
	struct sink s = {0};
	struct refusals *r = refusals_new(WINDOW, sink_write, &s);
	pthread_t t[THREADS];
	struct flood f[THREADS];
	for (int i = 0; i < THREADS; i++) {
		f[i] = (struct flood){.r = r, .thread = i};
		assert_int_equal(pthread_create(&t[i], NULL, flood_main, &f[i]), 0);
	}
	for (int i = 0; i < THREADS; i++)
		pthread_join(t[i], NULL);
	/* 7 addresses and 2 reasons a thread: 56 keys, each written at once */
	assert_int_equal(s.n, THREADS * 7 * 2);
	assert_int_equal(refusals_flush(r, T0, true), 0);
	assert_int_equal(s.n, 2 * THREADS * 7 * 2);
	assert_int_equal(sink_total(&s), THREADS * PER_THREAD);
	refusals_free(r);
	free(s.w);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_first_at_once_repeats_counted),
	    cmocka_unit_test(test_clock_set_back_within_a_window),
	    cmocka_unit_test(test_single_refusal_has_no_second_entry),
	    cmocka_unit_test(test_keys),
	    cmocka_unit_test(test_unverified_subjects_share_a_key),
	    cmocka_unit_test(test_table_full_overflow_per_reason),
	    cmocka_unit_test(test_window),
	    cmocka_unit_test(test_failed_writes_are_counted_and_kept),
	    cmocka_unit_test(test_lost_entries_are_restored),
	    cmocka_unit_test(test_threads),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
