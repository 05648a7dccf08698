/* daemon/clock.c: steps of the wall clock, seen against the monotonic one. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "daemon/gateway.h"

#define WALL INT64_C(1796428800000) /* 2026-12-05T00:00:00Z */
#define MONO INT64_C(5000000)

static void test_steps(void **state)
{
	(void)state;
	struct clock_watch w = {0};
	assert_int_equal(clock_watch_step(&w, WALL, MONO), 0); /* the first look */
	/* both run on together, as NTP's slewing keeps them: no step */
	assert_int_equal(clock_watch_step(&w, WALL + 1000, MONO + 1000), 0);
	assert_int_equal(clock_watch_step(&w, WALL + 2999, MONO + 2000), 0);
	/* set back an hour (an NTP step) */
	assert_int_equal(clock_watch_step(&w, WALL - 3600000 + 4000, MONO + 3000), -3599999);
	assert_int_equal(clock_watch_step(&w, WALL - 3600000 + 5000, MONO + 4000), 0);
	/* a day on (a VM resumed: the monotonic clock stood still) */
	assert_int_equal(clock_watch_step(&w, WALL + 86400000, MONO + 5000), 89994000);
	/* a second, as at a leap second; less is left alone */
	assert_int_equal(clock_watch_step(&w, WALL + 86400000 - 1000, MONO + 5000), -1000);
	assert_int_equal(clock_watch_step(&w, WALL + 86400000 - 1000 + 999, MONO + 5000), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_steps),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
