/* daemon/quota.c: daily limits per sender and agreement, counted in UTC days. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "daemon/gateway.h"

#define DAY_MS INT64_C(86400000)
#define D INT64_C(20790) /* 2026-12-03 */
#define MIDNIGHT (D * DAY_MS)

static struct policy_agreement limited(uint32_t messages, uint32_t records)
{
	return (struct policy_agreement){
	    .id = "police-nhs", .messages_per_day = messages, .records_per_day = records};
}

/* Admit one message of `records` records stamped at_ms: 0 or ISG_ERR_LIMIT. */
static int send_at(struct quota *q, const struct policy_agreement *a, uint32_t records,
                   int64_t at_ms, struct quota_claim *claim)
{
	struct policy_refusal why;
	struct quota_claim unused;
	struct quota_ask ask;
	assert_int_equal(quota_ask_init(&ask, a, records), 0);
	int rc = quota_admit(q, "met-police", &ask, at_ms, claim ? claim : &unused, &why);
	if (rc == ISG_ERR_LIMIT) {
		assert_int_equal(why.code, ISG__ERROR_CODE__LIMIT_EXCEEDED);
		assert_non_null(strstr(why.message, "resets at 00:00 UTC"));
		assert_non_null(strstr(why.message, "'police-nhs'"));
	}
	return rc;
}

/* The day is [00:00:00.000, 24:00:00.000) UTC: the allowance is new at midnight exactly. */
static void test_day_starts_at_midnight(void **state)
{
	(void)state;
	struct quota *q = quota_new();
	struct policy_agreement a = limited(2, 0);
	assert_int_equal(send_at(q, &a, 1, MIDNIGHT - 2, NULL), 0);
	assert_int_equal(send_at(q, &a, 1, MIDNIGHT - 1, NULL), 0);
	assert_int_equal(send_at(q, &a, 1, MIDNIGHT - 1, NULL), ISG_ERR_LIMIT);
	assert_int_equal(send_at(q, &a, 1, MIDNIGHT, NULL), 0);
	assert_int_equal(send_at(q, &a, 1, MIDNIGHT + DAY_MS - 1, NULL), 0);
	assert_int_equal(send_at(q, &a, 1, MIDNIGHT + DAY_MS - 1, NULL), ISG_ERR_LIMIT);
	/* another sender has its own allowance */
	struct policy_refusal why;
	struct quota_claim c;
	struct quota_ask ask;
	assert_int_equal(quota_ask_init(&ask, &a, 1), 0);
	assert_int_equal(quota_admit(q, "city-council", &ask, MIDNIGHT + 5, &c, &why), 0);
	quota_free(q);
}

/*
 * A stamp from a day before one already counted (the wall clock set back
 * an hour across midnight) counts on the later day: it neither zeroes the
 * counts nor opens a second allowance.
 */
static void test_day_never_goes_back(void **state)
{
	(void)state;
	struct quota *q = quota_new();
	struct policy_agreement a = limited(2, 0);
	assert_int_equal(send_at(q, &a, 1, MIDNIGHT + 30000, NULL), 0);           /* 00:00:30 */
	assert_int_equal(send_at(q, &a, 1, MIDNIGHT - 3600000 + 30500, NULL), 0); /* 23:00:30 */
	assert_int_equal(send_at(q, &a, 1, MIDNIGHT - 3600000 + 31000, NULL), ISG_ERR_LIMIT);
	/* and forward again: still the same day, still spent */
	assert_int_equal(send_at(q, &a, 1, MIDNIGHT + 31500, NULL), ISG_ERR_LIMIT);
	assert_int_equal(send_at(q, &a, 1, MIDNIGHT + DAY_MS, NULL), 0);
	quota_free(q);
}

/* An admission given back (its job or batch rolled back) frees its share of its day. */
static void test_release(void **state)
{
	(void)state;
	struct quota *q = quota_new();
	struct policy_agreement a = limited(0, 5);
	struct quota_claim c;
	assert_int_equal(send_at(q, &a, 3, MIDNIGHT + 1, &c), 0);
	assert_int_equal(send_at(q, &a, 3, MIDNIGHT + 2, NULL), ISG_ERR_LIMIT);
	quota_release(q, &c);
	assert_int_equal(send_at(q, &a, 5, MIDNIGHT + 3, NULL), 0);
	assert_int_equal(send_at(q, &a, 1, MIDNIGHT + 4, NULL), ISG_ERR_LIMIT);
	quota_free(q);
}

/*
 * Admitted with the store's stamps, which straddle midnight: each message
 * counts on the day it is stamped, judged against that day's count, so no
 * day ends over its limit (a send reserved on the old day and stamped on
 * the new one was once added to the new day without a check). An
 * admission of the old day given back after midnight leaves the new day's
 * count alone.
 */
static void test_stamps_straddling_midnight_never_exceed_a_day(void **state)
{
	(void)state;
	struct quota *q = quota_new();
	struct policy_agreement a = limited(1, 0);
	struct quota_claim before;
	assert_int_equal(send_at(q, &a, 1, MIDNIGHT - 10, &before), 0);
	assert_int_equal(send_at(q, &a, 1, MIDNIGHT + 1, NULL), 0);
	assert_int_equal(send_at(q, &a, 1, MIDNIGHT + 4, NULL), ISG_ERR_LIMIT);
	quota_release(q, &before);
	assert_int_equal(send_at(q, &a, 1, MIDNIGHT + 5, NULL), ISG_ERR_LIMIT);
	quota_free(q);

	/* A burst of stamps a few ms apart around each of three midnights, some
	 * given back: what stays admitted on each day is within its limits. */
	enum { N = 1000, DAYS = 4 };
	q = quota_new();
	a = limited(300, 2000);
	uint64_t messages[DAYS] = {0}, records[DAYS] = {0};
	uint32_t seed = 12345;
	for (int64_t d = 0; d < 3; d++) {
		int64_t at = MIDNIGHT + d * DAY_MS - 2000;
		for (int i = 0; i < N; i++) {
			seed = seed * 1103515245u + 12345u;
			at += (seed >> 16) % 9;
			uint32_t n = (seed >> 8) % 13;
			struct quota_claim c;
			if (send_at(q, &a, n, at, &c) != 0)
				continue;
			int64_t day = at / DAY_MS - (D - 1);
			if (seed % 7 == 0) { /* rolled back with its batch */
				quota_release(q, &c);
				continue;
			}
			messages[day]++;
			records[day] += n;
			assert_true(messages[day] <= a.messages_per_day);
			assert_true(records[day] <= a.records_per_day);
		}
		assert_true(at >= MIDNIGHT + d * DAY_MS + 1000);
	}
	for (int d = 0; d < DAYS; d++) /* each day was filled, on both sides of midnight */
		assert_int_equal(messages[d], a.messages_per_day);
	quota_free(q);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_day_starts_at_midnight),
	    cmocka_unit_test(test_day_never_goes_back),
	    cmocka_unit_test(test_release),
	    cmocka_unit_test(test_stamps_straddling_midnight_never_exceed_a_day),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
