#include "util/util.h"

#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

int64_t time_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t time_mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t time_mono_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int64_t time_not_back_ms(_Atomic int64_t *latest, int64_t now_ms)
{
	int64_t seen = atomic_load(latest);
	while (now_ms > seen)
		if (atomic_compare_exchange_weak(latest, &seen, now_ms))
			return now_ms;
	return seen;
}

/* v's last n decimal digits at p, zero-padded; returns the end. */
static char *put_digits(char *p, unsigned v, int n)
{
	for (int i = n - 1; i >= 0; i--) {
		p[i] = (char)('0' + v % 10);
		v /= 10;
	}
	return p + n;
}

/* Three times a message (its audit entries' "at"): by hand, not through
 * snprintf, which cost ten times as much; the same text. */
const char *time_format_ms(char *buf, size_t size, int64_t unix_ms)
{
	/* Rounded down, so that a time before 1970 is its second and a positive ms. */
	int64_t whole = unix_ms / 1000, rest = unix_ms % 1000;
	if (rest < 0) {
		whole--;
		rest += 1000;
	}
	time_t secs = (time_t)whole;
	struct tm tm;
	if (!gmtime_r(&secs, &tm))
		memset(&tm, 0, sizeof(tm)); /* out of its range: no time at all */
	int year = tm.tm_year + 1900, ms = (int)rest;
	if (size < 25 || year < 0 || year > 9999) {
		snprintf(buf, size, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", year, tm.tm_mon + 1,
		         tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ms);
		return buf;
	}
	char *p = put_digits(buf, (unsigned)year, 4);
	*p++ = '-';
	p = put_digits(p, (unsigned)tm.tm_mon + 1, 2);
	*p++ = '-';
	p = put_digits(p, (unsigned)tm.tm_mday, 2);
	*p++ = 'T';
	p = put_digits(p, (unsigned)tm.tm_hour, 2);
	*p++ = ':';
	p = put_digits(p, (unsigned)tm.tm_min, 2);
	*p++ = ':';
	p = put_digits(p, (unsigned)tm.tm_sec, 2);
	*p++ = '.';
	p = put_digits(p, (unsigned)ms, 3);
	*p++ = 'Z';
	*p = '\0';
	return buf;
}

/* Days from civil date, after Howard Hinnant's algorithm (proleptic Gregorian). */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
	y -= m <= 2;
	int64_t era = (y >= 0 ? y : y - 399) / 400;
	unsigned yoe = (unsigned)(y - era * 400);
	unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
	unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
	return era * 146097 + (int64_t)doe - 719468;
}

/* Howard Hinnant's civil_from_days, the inverse of days_from_civil. */
void date_civil_of_days(int64_t z, int64_t *year, unsigned *month, unsigned *day)
{
	z += 719468;
	int64_t era = (z >= 0 ? z : z - 146096) / 146097;
	unsigned doe = (unsigned)(z - era * 146097);
	unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
	unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
	unsigned mp = (5 * doy + 2) / 153;
	*day = doy - (153 * mp + 2) / 5 + 1;
	*month = mp < 10 ? mp + 3 : mp - 9;
	*year = (int64_t)yoe + era * 400 + (*month <= 2);
}

static bool is_leap(int64_t y)
{
	return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

int date_parse_days(const char *s, int64_t *days)
{
	for (int i = 0; i < 10; i++) {
		bool dash = i == 4 || i == 7;
		if (dash ? s[i] != '-' : (s[i] < '0' || s[i] > '9'))
			return ISG_ERR_PARSE;
	}
	if (s[10] != '\0')
		return ISG_ERR_PARSE;
	int64_t y = (s[0] - '0') * 1000 + (s[1] - '0') * 100 + (s[2] - '0') * 10 + (s[3] - '0');
	unsigned m = (unsigned)((s[5] - '0') * 10 + (s[6] - '0'));
	unsigned d = (unsigned)((s[8] - '0') * 10 + (s[9] - '0'));
	static const unsigned mdays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
	if (m < 1 || m > 12 || d < 1)
		return ISG_ERR_PARSE;
	unsigned max = mdays[m - 1] + (m == 2 && is_leap(y));
	if (d > max)
		return ISG_ERR_PARSE;
	*days = days_from_civil(y, m, d);
	return 0;
}

int64_t date_days_of_ms(int64_t unix_ms)
{
	int64_t secs = unix_ms >= 0 ? unix_ms / 1000 : (unix_ms - 999) / 1000;
	return secs >= 0 ? secs / 86400 : (secs - 86399) / 86400;
}
