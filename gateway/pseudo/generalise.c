/*
 * pseudo: generalisers for quasi-identifiers. Each accepts any input form
 * the matching normaliser accepts (it normalises first), and parses the
 * value: nothing here cuts a fixed number of characters.
 */
#include "pseudo/internal.h"
#include "util/util.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#define AGE_MAX 120
#define BAND_WIDTH_MAX 50

static int normalise_cstr(enum pseudo_type t, const char *s, char norm[PSEUDO_VALUE_MAX + 1],
                          const char **reason)
{
	if (!s)
		return pseudo_refuse(reason, "value is missing");
	return pseudo_normalise(t, s, strnlen(s, PSEUDO_VALUE_MAX + 1), norm, reason);
}

/* Write text into out[size]; refuse when it does not fit. */
static int put_out(char *out, size_t size, const char *text, const char **reason)
{
	size_t len = strlen(text);
	if (!out || len >= size) {
		if (out && size)
			out[0] = '\0';
		return pseudo_refuse(reason, "output buffer too small");
	}
	memcpy(out, text, len + 1);
	return 0;
}

int pseudo_gen_year(const char *date, char *out, size_t size, const char **reason)
{
	char norm[PSEUDO_VALUE_MAX + 1];
	int err = normalise_cstr(PSEUDO_DATE, date, norm, reason);
	if (err)
		return err;
	norm[4] = '\0';
	return put_out(out, size, norm, reason);
}

int pseudo_gen_month(const char *date, char *out, size_t size, const char **reason)
{
	char norm[PSEUDO_VALUE_MAX + 1];
	int err = normalise_cstr(PSEUDO_DATE, date, norm, reason);
	if (err)
		return err;
	norm[7] = '\0';
	return put_out(out, size, norm, reason);
}

static unsigned two(const char *s)
{
	return (unsigned)((s[0] - '0') * 10 + (s[1] - '0'));
}

int pseudo_gen_age_band(const char *date, int64_t today_days, unsigned width, char *out,
                        size_t size, const char **reason)
{
	if (width < 1 || width > BAND_WIDTH_MAX)
		return pseudo_refuse(reason, "age band width must be 1 to 50 years");
	/* Far outside the calendar the date code cannot go: refuse early. */
	if (today_days < -1000000 || today_days > 1000000)
		return pseudo_refuse(reason, "exchange date is out of range");
	char norm[PSEUDO_VALUE_MAX + 1];
	int err = normalise_cstr(PSEUDO_DATE, date, norm, reason);
	if (err)
		return err;
	int64_t by = (int64_t)two(norm) * 100 + two(norm + 2), ty;
	unsigned bm = two(norm + 5), bd = two(norm + 8), tm, td;
	date_civil_of_days(today_days, &ty, &tm, &td);
	/*
	 * Completed years: one less while this year's birthday is still to
	 * come. A 29 February birthday is reached on 1 March in other years.
	 */
	int64_t age = ty - by - (tm < bm || (tm == bm && td < bd));
	if (age < 0)
		return pseudo_refuse(reason, "date of birth is after the exchange date");
	if (age > AGE_MAX)
		return pseudo_refuse(reason, "age is over 120 years");
	int64_t lo = age / width * width;
	char band[32];
	snprintf(band, sizeof(band), "%" PRId64 "-%" PRId64, lo, lo + width - 1);
	return put_out(out, size, band, reason);
}

int pseudo_gen_postcode(const char *postcode, enum pseudo_postcode_level level, char *out,
                        size_t size, const char **reason)
{
	char norm[PSEUDO_VALUE_MAX + 1];
	int err = normalise_cstr(PSEUDO_POSTCODE, postcode, norm, reason);
	if (err)
		return err;
	/* Canonical: outward code, one space, inward code (digit, two letters). */
	char *space = strchr(norm, ' ');
	size_t nletters = 0;
	while (norm[nletters] >= 'A' && norm[nletters] <= 'Z')
		nletters++;
	switch (level) {
	case POSTCODE_AREA:
		norm[nletters] = '\0';
		break;
	case POSTCODE_DISTRICT:
		*space = '\0';
		break;
	case POSTCODE_SECTOR:
		space[2] = '\0';
		break;
	default:
		return pseudo_refuse(reason, "unknown postcode level");
	}
	return put_out(out, size, norm, reason);
}

int pseudo_gen_number_band(int64_t value, int64_t width, char *out, size_t size,
                           const char **reason)
{
	if (width < 1)
		return pseudo_refuse(reason, "band width must be positive");
	/* Floor division, so -1 with width 10 is in -10..-1. */
	int64_t rem = value % width;
	if (rem < 0)
		rem += width;
	int64_t lo, hi;
	if (__builtin_sub_overflow(value, rem, &lo) || __builtin_add_overflow(lo, width - 1, &hi))
		return pseudo_refuse(reason, "band does not fit in a 64-bit integer");
	char band[48];
	snprintf(band, sizeof(band), "%" PRId64 "-%" PRId64, lo, hi);
	return put_out(out, size, band, reason);
}
