/*
 * pseudo: person names folded without ICU, so that the spellings a clerk
 * is likely to type for one name give one value. The rule, code point by
 * code point (docs/pseudonyms.md has the full table):
 *   - ASCII letters are lowercased; Latin-1 Supplement and Latin Extended-A
 *     letters are folded to ASCII by the table below (é→e, ß→ss, æ→ae, ø→o);
 *   - combining diacritical marks (U+0300..U+036F) are dropped, so decomposed
 *     input folds like precomposed input;
 *   - apostrophes are dropped ("O'Brien" → "obrien"); hyphens, dashes, full
 *     stops, commas and spaces separate words ("Smith-Jones" → "smith jones");
 *     runs of separators become one space, and none lead or trail;
 *   - Greek and Cyrillic capitals are lowercased, final sigma becomes sigma;
 *   - digits, other ASCII punctuation, symbols, invisible and private-use
 *     characters are refused; other letters are kept as they are.
 */
#include "pseudo/internal.h"
#include "util/util.h"

/* ASCII folding of U+00C0..U+017F; "" marks × and ÷, which are refused. */
/* clang-format off */
static const char *const latin_fold[0x180 - 0xc0] = {
	/* U+00C0 */ "a", "a", "a", "a", "a", "a", "ae", "c", "e", "e", "e", "e", "i", "i", "i", "i",
	/* U+00D0 */ "d", "n", "o", "o", "o", "o", "o", "", "o", "u", "u", "u", "u", "y", "th", "ss",
	/* U+00E0 */ "a", "a", "a", "a", "a", "a", "ae", "c", "e", "e", "e", "e", "i", "i", "i", "i",
	/* U+00F0 */ "d", "n", "o", "o", "o", "o", "o", "", "o", "u", "u", "u", "u", "y", "th", "y",
	/* U+0100 */ "a", "a", "a", "a", "a", "a", "c", "c", "c", "c", "c", "c", "c", "c", "d", "d",
	/* U+0110 */ "d", "d", "e", "e", "e", "e", "e", "e", "e", "e", "e", "e", "g", "g", "g", "g",
	/* U+0120 */ "g", "g", "g", "g", "h", "h", "h", "h", "i", "i", "i", "i", "i", "i", "i", "i",
	/* U+0130 */ "i", "i", "ij", "ij", "j", "j", "k", "k", "k", "l", "l", "l", "l", "l", "l", "l",
	/* U+0140 */ "l", "l", "l", "n", "n", "n", "n", "n", "n", "n", "n", "n", "o", "o", "o", "o",
	/* U+0150 */ "o", "o", "oe", "oe", "r", "r", "r", "r", "r", "r", "s", "s", "s", "s", "s", "s",
	/* U+0160 */ "s", "s", "t", "t", "t", "t", "t", "t", "u", "u", "u", "u", "u", "u", "u", "u",
	/* U+0170 */ "u", "u", "u", "u", "w", "w", "y", "y", "y", "z", "z", "z", "z", "z", "z", "s",
};
/* clang-format on */

/* Ranges of code points refused in names: symbols, punctuation, invisibles. */
static const struct {
	uint32_t lo, hi;
} refused[] = {
    {0x00a1, 0x00bf},    /* Latin-1 punctuation and symbols (´ is handled first) */
    {0x02b0, 0x02ff},    /* spacing modifier letters (ʻ ʼ are handled first) */
    {0x2000, 0x2bff},    /* general punctuation to miscellaneous symbols */
    {0x2e00, 0x2e7f},    /* supplemental punctuation */
    {0x3000, 0x303f},    /* CJK symbols and punctuation */
    {0xd800, 0xf8ff},    /* surrogates and private use */
    {0xfe00, 0xfe6f},    /* variation selectors, vertical and small forms */
    {0xfeff, 0xfeff},    /* byte order mark */
    {0xff00, 0xffff},    /* half- and full-width forms, specials */
    {0x1d000, 0x1d7ff},  /* musical and mathematical symbols */
    {0x1f000, 0x1ffff},  /* emoji and other symbols */
    {0xe0000, 0x10ffff}, /* tags, variation selectors, private use planes */
};

enum name_class { NAME_DROP, NAME_SEPARATOR, NAME_KEEP, NAME_REFUSE_DIGIT, NAME_REFUSE };

static enum name_class classify(uint32_t cp)
{
	if (cp == '\'' || cp == '`' || cp == 0x00b4 || cp == 0x02bb || cp == 0x02bc ||
	    cp == 0x2018 || cp == 0x2019)
		return NAME_DROP; /* apostrophes: O'Brien, D’Arcy, Hawaiʻi */
	if (cp >= 0x0300 && cp <= 0x036f)
		return NAME_DROP; /* combining diacritical marks */
	if (cp == ' ' || cp == '-' || cp == '.' || cp == ',' || cp == 0x00a0 || cp == 0x2010 ||
	    cp == 0x2011 || cp == 0x2013 || cp == 0x2014)
		return NAME_SEPARATOR;
	if (cp >= '0' && cp <= '9')
		return NAME_REFUSE_DIGIT;
	if (cp < 0x80)
		return (cp | 0x20) >= 'a' && (cp | 0x20) <= 'z' ? NAME_KEEP : NAME_REFUSE;
	if (cp >= 0xc0 && cp < 0x180)
		return latin_fold[cp - 0xc0][0] ? NAME_KEEP : NAME_REFUSE;
	for (size_t i = 0; i < ARRAY_LEN(refused); i++)
		if (cp >= refused[i].lo && cp <= refused[i].hi)
			return NAME_REFUSE;
	return NAME_KEEP;
}

/* Simple lowercase for Greek and Cyrillic; final sigma folds to sigma. */
static uint32_t lower_other(uint32_t cp)
{
	if ((cp >= 0x0391 && cp <= 0x03a1) || (cp >= 0x03a3 && cp <= 0x03ab))
		return cp + 0x20;
	switch (cp) {
	case 0x0386:
		return 0x03ac;
	case 0x0388:
		return 0x03ad;
	case 0x0389:
		return 0x03ae;
	case 0x038a:
		return 0x03af;
	case 0x038c:
		return 0x03cc;
	case 0x038e:
		return 0x03cd;
	case 0x038f:
		return 0x03ce;
	case 0x03c2:
		return 0x03c3;
	}
	if (cp >= 0x0400 && cp <= 0x040f)
		return cp + 0x50;
	if (cp >= 0x0410 && cp <= 0x042f)
		return cp + 0x20;
	return cp;
}

/* Append the folded form of one letter; false when it would not fit. */
static bool put_letter(char *out, size_t *n, uint32_t cp)
{
	char buf[4];
	const char *s = buf;
	size_t len;
	if (cp < 0x80) {
		buf[0] = (char)(cp | 0x20);
		len = 1;
	} else if (cp >= 0xc0 && cp < 0x180) {
		s = latin_fold[cp - 0xc0];
		len = s[1] ? 2 : 1;
	} else {
		len = utf8_encode(lower_other(cp), buf);
	}
	if (*n + len > PSEUDO_VALUE_MAX)
		return false;
	for (size_t i = 0; i < len; i++)
		out[(*n)++] = s[i];
	return true;
}

int pseudo_norm_name(const char *s, size_t len, char out[static PSEUDO_VALUE_MAX + 1],
                     const char **reason)
{
	size_t n = 0;
	bool gap = false; /* a separator is pending between two words */
	for (size_t i = 0; i < len;) {
		uint32_t cp = pseudo_utf8_next(s, len, &i);
		switch (classify(cp)) {
		case NAME_DROP:
			break;
		case NAME_SEPARATOR:
			gap = n > 0;
			break;
		case NAME_REFUSE_DIGIT:
			return pseudo_refuse(reason, "name contains a digit");
		case NAME_REFUSE:
			return pseudo_refuse(reason,
			                     "name contains a character that is not a letter");
		case NAME_KEEP:
			if (gap && n < PSEUDO_VALUE_MAX)
				out[n++] = ' ';
			gap = false;
			if (!put_letter(out, &n, cp))
				return pseudo_refuse(reason, "name is too long");
			break;
		}
	}
	if (n == 0)
		return pseudo_refuse(reason, "name has no letters");
	out[n] = '\0';
	return 0;
}
