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

/* Reserve one message of `records` records at now_ms: 0 or ISG_ERR_LIMIT. */
static int send_at(struct quota *q, const struct policy_agreement *a, uint32_t records,
                   int64_t now_ms, struct quota_claim *claim)
{
	struct policy_refusal why;
	struct quota_claim unused;
	int rc = quota_reserve(q, "met-police", a, records, now_ms, claim ? claim : &unused, &why);
	if (rc == ISG_ERR_LIMIT) {
		assert_int_equal(why.code, ISG__ERROR_CODE__LIMIT_EXCEEDED);
		assert_non_null(strstr(why.message, "resets at 00:00 UTC"));
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
	assert_int_equal(quota_reserve(q, "city-council", &a, 1, MIDNIGHT + 5, &c, &why), 0);
	quota_free(q);
}

/*
 * A clock reading from a day before one already counted (the wall clock set
 * back an hour across midnight, or a worker that read the clock just before
 * midnight reserving after one that read it just after) counts on the later
 * day: it neither zeroes the counts nor opens a second allowance.
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

/* A message given back (not stored, or a resend) frees its share of its day. */
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
 * Reserved at 23:59:59.990 and stamped 00:00:00.004 by the store: the
 * message is on the new day in the audit log, the report and a restart's
 * counts, so it takes its share of the new day's allowance, not the old's.
 */
static void test_stored_send_counts_on_its_stamped_day(void **state)
{
	(void)state;
	struct quota *q = quota_new();
	struct policy_agreement a = limited(2, 10);
	struct quota_claim c;
	assert_int_equal(send_at(q, &a, 1, MIDNIGHT - 10, NULL), 0);
	assert_int_equal(send_at(q, &a, 4, MIDNIGHT - 10, &c), 0);
	quota_settle(q, &c, MIDNIGHT + 4);
	assert_int_equal(c.day, D);
	assert_int_equal(send_at(q, &a, 7, MIDNIGHT + 10, NULL), ISG_ERR_LIMIT); /* 4 + 7 > 10 */
	assert_int_equal(send_at(q, &a, 6, MIDNIGHT + 20, NULL), 0);
	assert_int_equal(send_at(q, &a, 1, MIDNIGHT + 30, NULL), ISG_ERR_LIMIT); /* 2 messages */
	/* stamped on the day it was reserved on, or earlier (a clock set back): no change */
	struct quota_claim same;
	assert_int_equal(send_at(q, &a, 0, MIDNIGHT + DAY_MS, &same), 0);
	quota_settle(q, &same, MIDNIGHT + DAY_MS + 5);
	quota_settle(q, &same, MIDNIGHT + 5);
	assert_int_equal(send_at(q, &a, 0, MIDNIGHT + DAY_MS + 6, NULL), 0);
	assert_int_equal(send_at(q, &a, 0, MIDNIGHT + DAY_MS + 7, NULL), ISG_ERR_LIMIT);
	quota_free(q);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_day_starts_at_midnight),
	    cmocka_unit_test(test_day_never_goes_back),
	    cmocka_unit_test(test_release),
	    cmocka_unit_test(test_stored_send_counts_on_its_stamped_day),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
