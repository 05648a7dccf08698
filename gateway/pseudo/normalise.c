/*
 * pseudo: normalisers for the structured identifier types. Each takes a
 * value already bounded, UTF-8 checked, free of control characters and
 * trimmed (pseudo_normalise does that), and writes the canonical form. The
 * rules are listed, type by type, in docs/pseudonyms.md.
 */
#include "pseudo/internal.h"
#include "util/util.h"

#include <stdio.h>
#include <string.h>

static bool is_digit(char c)
{
	return c >= '0' && c <= '9';
}

static bool is_upper(char c)
{
	return c >= 'A' && c <= 'Z';
}

static char to_upper(char c)
{
	return c >= 'a' && c <= 'z' ? (char)(c - 'a' + 'A') : c;
}

static char to_lower(char c)
{
	return c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
}

/* --- NHS number --------------------------------------------------------- */

int pseudo_norm_nhs(const char *s, size_t len, char out[static PSEUDO_VALUE_MAX + 1],
                    const char **reason)
{
	char d[10];
	size_t n = 0;
	for (size_t i = 0; i < len; i++) {
		if (is_digit(s[i])) {
			if (n == sizeof(d))
				return pseudo_refuse(reason, "NHS number must have 10 digits");
			d[n++] = s[i];
		} else if (s[i] != ' ' && s[i] != '-') {
			return pseudo_refuse(reason,
			                     "NHS number may hold only digits, spaces and dashes");
		}
	}
	if (n != sizeof(d))
		return pseudo_refuse(reason, "NHS number must have 10 digits");
	/* Modulus 11: digits 1-9 weighted 10 down to 2. */
	unsigned sum = 0;
	for (unsigned i = 0; i < 9; i++)
		sum += (unsigned)(d[i] - '0') * (10 - i);
	unsigned check = 11 - sum % 11;
	if (check == 11)
		check = 0;
	if (check == 10)
		return pseudo_refuse(reason, "NHS number is not valid (no check digit possible)");
	if ((unsigned)(d[9] - '0') != check)
		return pseudo_refuse(reason, "NHS number check digit does not match");
	/*
	 * Ten equal digits pass the check (digit d gives the stem 54d, and
	 * 11 - 54d mod 11 = d) but none is issued: they are placeholders for
	 * "not known", and pseudonymised they would link unrelated people.
	 */
	if (memcmp(d, d + 1, sizeof(d) - 1) == 0)
		return pseudo_refuse(reason, "NHS number is a placeholder (ten equal digits)");
	memcpy(out, d, sizeof(d));
	out[sizeof(d)] = '\0';
	return 0;
}

/* --- PNC ID ------------------------------------------------------------- */

static const char pnc_check_letters[] = "ZABCDEFGHJKLMNPQRTUVWXY";

/*
 * A two-digit year is 20yy up to PNC_PIVOT and 19yy above it: fixed, not
 * taken from the clock, so a value normalises the same on every day.
 */
#define PNC_PIVOT 50

/* Read up to max digits from s[*i]; returns how many were read. */
static size_t read_digits(const char *s, size_t len, size_t *i, size_t max, unsigned long *v)
{
	size_t n = 0;
	*v = 0;
	while (*i < len && is_digit(s[*i])) {
		if (++n > max)
			return n;
		*v = *v * 10 + (unsigned long)(s[*i] - '0');
		(*i)++;
	}
	return n;
}

int pseudo_norm_pnc(const char *s, size_t len, char out[static PSEUDO_VALUE_MAX + 1],
                    const char **reason)
{
	static const char *const shape = "PNC ID must be YYYY/NNNNNNNC or YY/NNNNNNNC";
	size_t i = 0;
	unsigned long year, serial;
	size_t ny = read_digits(s, len, &i, 4, &year);
	if ((ny != 2 && ny != 4) || i >= len || s[i] != '/')
		return pseudo_refuse(reason, shape);
	i++;
	size_t ns = read_digits(s, len, &i, 7, &serial);
	if (ns < 1 || ns > 7 || i + 1 != len || !is_upper(to_upper(s[i])))
		return pseudo_refuse(reason, shape);
	char letter = to_upper(s[i]);
	if (ny == 2)
		year += year <= PNC_PIVOT ? 2000 : 1900;
	else if (year < 1900 || year > 2099)
		return pseudo_refuse(reason, "PNC ID year must be between 1900 and 2099");
	unsigned long long n = (unsigned long long)(year % 100) * 10000000ULL + serial;
	if (pnc_check_letters[n % 23] != letter)
		return pseudo_refuse(reason, "PNC ID check character does not match");
	snprintf(out, PSEUDO_VALUE_MAX + 1, "%04lu/%07lu%c", year, serial, letter);
	return 0;
}

/* --- UK postcode -------------------------------------------------------- */

/* Letters never used in the inward code (Royal Mail). */
static bool inward_letter(char c)
{
	return is_upper(c) && !strchr("CIKMOV", c);
}

int pseudo_norm_postcode(const char *s, size_t len, char out[static PSEUDO_VALUE_MAX + 1],
                         const char **reason)
{
	static const char *const shape = "postcode is not a valid UK postcode";
	char pc[8];
	size_t n = 0;
	for (size_t i = 0; i < len; i++) {
		char c = to_upper(s[i]);
		if (c == ' ')
			continue;
		if (!is_digit(c) && !is_upper(c))
			return pseudo_refuse(reason,
			                     "postcode may hold only letters, digits and spaces");
		if (n == 7)
			return pseudo_refuse(reason, shape);
		pc[n++] = c;
	}
	if (n < 5)
		return pseudo_refuse(reason, shape);
	pc[n] = '\0';
	size_t nout = n - 3;
	const char *in = pc + nout;
	if (!is_digit(in[0]) || !inward_letter(in[1]) || !inward_letter(in[2]))
		return pseudo_refuse(reason, shape);
	/* The outward code's shape: a bit for each character, set for a letter,
	 * after a leading 1 that keeps the length (A9 is 0b110). */
	unsigned form = 1;
	for (size_t i = 0; i < nout; i++)
		form = form << 1 | !is_digit(pc[i]);
	bool ok = nout == 3 && memcmp(pc, "GIR0AA", 6) == 0 && n == 6;
	switch (form) {
	case 0x6:  /* A9 */
	case 0xc:  /* A99 */
	case 0xe:  /* AA9 */
	case 0xd:  /* A9A */
	case 0x1c: /* AA99 */
	case 0x1d: /* AA9A */
		ok = true;
		break;
	default:
		break;
	}
	if (!ok)
		return pseudo_refuse(reason, shape);
	memcpy(out, pc, nout);
	out[nout] = ' ';
	memcpy(out + nout + 1, in, 3);
	out[nout + 4] = '\0';
	return 0;
}

/* --- date --------------------------------------------------------------- */

#define DATE_YEAR_MIN 1850
#define DATE_YEAR_MAX 2200

static bool all_digits(const char *s, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if (!is_digit(s[i]))
			return false;
	return len > 0;
}

/* D/M/YYYY with one or two digits for day and month, into YYYY-MM-DD. */
static bool parse_uk_date(const char *s, size_t len, char iso[11])
{
	const char *a = memchr(s, '/', len);
	if (!a)
		return false;
	const char *b = memchr(a + 1, '/', len - (size_t)(a + 1 - s));
	if (!b)
		return false;
	size_t nd = (size_t)(a - s), nm = (size_t)(b - a - 1), ny = len - (size_t)(b + 1 - s);
	if (nd < 1 || nd > 2 || nm < 1 || nm > 2 || ny != 4 || !all_digits(s, nd) ||
	    !all_digits(a + 1, nm) || !all_digits(b + 1, ny))
		return false;
	memcpy(iso, b + 1, 4);
	iso[4] = '-';
	iso[5] = nm == 2 ? a[1] : '0';
	iso[6] = a[nm];
	iso[7] = '-';
	iso[8] = nd == 2 ? s[0] : '0';
	iso[9] = s[nd - 1];
	iso[10] = '\0';
	return true;
}

int pseudo_norm_date(const char *s, size_t len, char out[static PSEUDO_VALUE_MAX + 1],
                     const char **reason)
{
	char iso[11];
	if (len == 10 && s[4] == '-' && s[7] == '-' && all_digits(s, 4) && all_digits(s + 5, 2) &&
	    all_digits(s + 8, 2)) {
		memcpy(iso, s, 10);
		iso[10] = '\0';
	} else if (len == 8 && all_digits(s, 8)) {
		memcpy(iso, s, 4);
		iso[4] = '-';
		memcpy(iso + 5, s + 4, 2);
		iso[7] = '-';
		memcpy(iso + 8, s + 6, 2);
		iso[10] = '\0';
	} else if (!parse_uk_date(s, len, iso)) {
		return pseudo_refuse(reason, "date must be YYYY-MM-DD, YYYYMMDD or DD/MM/YYYY");
	}
	int64_t days;
	if (date_parse_days(iso, &days) != 0)
		return pseudo_refuse(reason, "date is not a real calendar date");
	int year =
	    (iso[0] - '0') * 1000 + (iso[1] - '0') * 100 + (iso[2] - '0') * 10 + (iso[3] - '0');
	if (year < DATE_YEAR_MIN || year > DATE_YEAR_MAX)
		return pseudo_refuse(reason, "date year must be between 1850 and 2200");
	memcpy(out, iso, sizeof(iso));
	return 0;
}

/* --- email -------------------------------------------------------------- */

#define EMAIL_MAX 254
#define EMAIL_LOCAL_MAX 64

int pseudo_norm_email(const char *s, size_t len, char out[static PSEUDO_VALUE_MAX + 1],
                      const char **reason)
{
	if (len > EMAIL_MAX)
		return pseudo_refuse(reason, "email address is longer than 254 bytes");
	const char *at = memchr(s, '@', len);
	if (!at)
		return pseudo_refuse(reason, "email address has no @");
	size_t nlocal = (size_t)(at - s), ndomain = len - nlocal - 1;
	const char *domain = at + 1;
	if (memchr(domain, '@', ndomain))
		return pseudo_refuse(reason, "email address has more than one @");
	if (memchr(s, ' ', len))
		return pseudo_refuse(reason, "email address contains a space");
	if (nlocal == 0 || nlocal > EMAIL_LOCAL_MAX)
		return pseudo_refuse(reason, "email local part must be 1 to 64 bytes");
	if (!memchr(domain, '.', ndomain))
		return pseudo_refuse(reason, "email domain must contain a dot");
	/* Labels are non-empty: no leading, trailing or doubled dot. */
	if (domain[0] == '.' || domain[ndomain - 1] == '.')
		return pseudo_refuse(reason, "email domain has an empty label");
	for (size_t i = 1; i < ndomain; i++)
		if (domain[i] == '.' && domain[i - 1] == '.')
			return pseudo_refuse(reason, "email domain has an empty label");
	for (size_t i = 0; i < len; i++)
		out[i] = to_lower(s[i]);
	out[len] = '\0';
	return 0;
}

/* --- generic identifier ------------------------------------------------- */

int pseudo_norm_identifier(const char *s, size_t len, char out[static PSEUDO_VALUE_MAX + 1],
                           const char **reason)
{
	size_t n = 0;
	for (size_t i = 0; i < len; i++) {
		if (s[i] == ' ' && s[i - 1] == ' ')
			continue; /* s is trimmed, so s[0] is not a space */
		out[n++] = to_lower(s[i]);
	}
	out[n] = '\0';
	(void)reason;
	return 0;
}
