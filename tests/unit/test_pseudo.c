/*
 * pseudo: known answers for every normaliser and generaliser, and the keyed
 * hash checked against vectors computed independently with Python's hmac
 * and hashlib (the same vectors are in docs/pseudonyms.md).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include <sodium.h>

#include "pseudo/name_fold.h"
#include "pseudo/pseudo.h"
#include "util/util.h"

/* The documented test key: bytes 0x00, 0x01, ..., 0x1f. */
static void test_key(uint8_t key[PSEUDO_KEY_LEN], uint8_t first)
{
	for (unsigned i = 0; i < PSEUDO_KEY_LEN; i++)
		key[i] = (uint8_t)(first + i);
}

static void expect_norm(enum pseudo_type t, const char *in, const char *want)
{
	char out[PSEUDO_VALUE_MAX + 1];
	const char *reason = NULL;
	int err = pseudo_normalise(t, in, strlen(in), out, &reason);
	if (err)
		print_error("%s %s: refused: %s\n", pseudo_type_name(t), in, reason);
	assert_int_equal(err, 0);
	assert_string_equal(out, want);
}

/* Refused with the expected reason, which never quotes the value. */
static void expect_refused_len(enum pseudo_type t, const char *in, size_t len, const char *why)
{
	char out[PSEUDO_VALUE_MAX + 1];
	const char *reason = NULL;
	memset(out, 'x', sizeof(out));
	int err = pseudo_normalise(t, in, len, out, &reason);
	if (err == 0)
		print_error("%s: accepted as %s\n", pseudo_type_name(t), out);
	assert_int_equal(err, ISG_ERR_INVALID);
	assert_non_null(reason);
	assert_string_equal(reason, why);
	assert_string_equal(out, "");
	if (len >= 4)
		assert_null(strstr(reason, in));
}

static void expect_refused(enum pseudo_type t, const char *in, const char *why)
{
	expect_refused_len(t, in, strlen(in), why);
}

static void test_type_names(void **state)
{
	(void)state;
	assert_string_equal(pseudo_type_name(PSEUDO_NHS_NUMBER), "nhs_number");
	assert_string_equal(pseudo_type_name(PSEUDO_PNC_ID), "pnc_id");
	assert_string_equal(pseudo_type_name(PSEUDO_POSTCODE), "postcode");
	assert_string_equal(pseudo_type_name(PSEUDO_DATE), "date");
	assert_string_equal(pseudo_type_name(PSEUDO_NAME), "name");
	assert_string_equal(pseudo_type_name(PSEUDO_EMAIL), "email");
	assert_string_equal(pseudo_type_name(PSEUDO_IDENTIFIER), "identifier");
	assert_string_equal(pseudo_type_name((enum pseudo_type)0), "unknown");
}

static void test_common_refusals(void **state)
{
	(void)state;
	expect_refused((enum pseudo_type)0, "x", "unknown identifier type");
	expect_refused((enum pseudo_type)99, "x", "unknown identifier type");
	expect_refused_len(PSEUDO_IDENTIFIER, NULL, 0, "value is empty");
	expect_refused_len(PSEUDO_IDENTIFIER, NULL, 3, "value is missing");
	expect_refused(PSEUDO_IDENTIFIER, "", "value is empty");
	expect_refused(PSEUDO_IDENTIFIER, "    ", "value is empty");
	expect_refused(PSEUDO_IDENTIFIER, "ab\tcd", "value contains a control character");
	expect_refused(PSEUDO_IDENTIFIER, "abcd\x7f", "value contains a control character");
	expect_refused(PSEUDO_IDENTIFIER, "ab\xc2\x85", "value contains a control character");
	expect_refused_len(PSEUDO_IDENTIFIER, "ab\0cd", 5, "value contains a control character");
	expect_refused(PSEUDO_NAME, "Zo\xc3", "value is not valid UTF-8");
	expect_refused(PSEUDO_NAME,
	               "Zo\xc0\xaf"
	               "e",
	               "value is not valid UTF-8");
	expect_refused(PSEUDO_NAME, "Zo\xed\xa0\x80", "value is not valid UTF-8");

	/* The bound applies to the raw input: 256 bytes pass, 257 do not. */
	char big[PSEUDO_VALUE_MAX + 2];
	memset(big, 'A', sizeof(big));
	big[PSEUDO_VALUE_MAX] = '\0';
	char out[PSEUDO_VALUE_MAX + 1];
	const char *reason;
	assert_int_equal(pseudo_normalise(PSEUDO_IDENTIFIER, big, PSEUDO_VALUE_MAX, out, &reason),
	                 0);
	assert_int_equal(strlen(out), PSEUDO_VALUE_MAX);
	assert_int_equal(out[0], 'a');
	big[PSEUDO_VALUE_MAX] = 'A';
	big[PSEUDO_VALUE_MAX + 1] = '\0';
	expect_refused(PSEUDO_IDENTIFIER, big, "value is too long");
	/* A NULL reason pointer is allowed. */
	assert_int_equal(pseudo_normalise(PSEUDO_NHS_NUMBER, "1", 1, out, NULL), ISG_ERR_INVALID);
}

static void test_nhs_number(void **state)
{
	(void)state;
	expect_norm(PSEUDO_NHS_NUMBER, "9434765919", "9434765919");
	expect_norm(PSEUDO_NHS_NUMBER, "943 476 5919", "9434765919");
	expect_norm(PSEUDO_NHS_NUMBER, "943-476-5919", "9434765919");
	expect_norm(PSEUDO_NHS_NUMBER, "  943 476-5919 ", "9434765919");
	expect_norm(PSEUDO_NHS_NUMBER, "4010232137", "4010232137");
	expect_norm(PSEUDO_NHS_NUMBER, "4857773457", "4857773457");
	/* 401023211: sum 88, 88 mod 11 = 0, so check 11, which means 0 */
	expect_norm(PSEUDO_NHS_NUMBER, "4010232110", "4010232110");
	expect_refused(PSEUDO_NHS_NUMBER, "4010232111", "NHS number check digit does not match");
	/* Every ten-equal-digit number passes the check digit: placeholders. */
	for (char c = '0'; c <= '9'; c++) {
		char same[11];
		memset(same, c, 10);
		same[10] = '\0';
		expect_refused(PSEUDO_NHS_NUMBER, same,
		               "NHS number is a placeholder (ten equal digits)");
	}
	expect_refused(PSEUDO_NHS_NUMBER, "000 000 0000",
	               "NHS number is a placeholder (ten equal digits)");
	/* One digit different is an ordinary number (stem 000000001: check 9). */
	expect_norm(PSEUDO_NHS_NUMBER, "0000000019", "0000000019");

	expect_refused(PSEUDO_NHS_NUMBER, "9434765918", "NHS number check digit does not match");
	expect_refused(PSEUDO_NHS_NUMBER, "4010232138", "NHS number check digit does not match");
	/* 123456789: sum 210, check 11 - 1 = 10: no number has this stem */
	expect_refused(PSEUDO_NHS_NUMBER, "1234567890",
	               "NHS number is not valid (no check digit possible)");
	expect_refused(PSEUDO_NHS_NUMBER, "1234567891",
	               "NHS number is not valid (no check digit possible)");
	expect_refused(PSEUDO_NHS_NUMBER, "943476591", "NHS number must have 10 digits");
	expect_refused(PSEUDO_NHS_NUMBER, "94347659190", "NHS number must have 10 digits");
	expect_refused(PSEUDO_NHS_NUMBER, "943.476.5919",
	               "NHS number may hold only digits, spaces and dashes");
	expect_refused(PSEUDO_NHS_NUMBER, "943476591X",
	               "NHS number may hold only digits, spaces and dashes");
	expect_refused(PSEUDO_NHS_NUMBER, "９434765919",
	               "NHS number may hold only digits, spaces and dashes");
}

static void test_pnc_id(void **state)
{
	(void)state;
	expect_norm(PSEUDO_PNC_ID, "2008/0056560Z", "2008/0056560Z");
	expect_norm(PSEUDO_PNC_ID, "2008/0056560z", "2008/0056560Z");
	expect_norm(PSEUDO_PNC_ID, "08/56560Z", "2008/0056560Z");
	expect_norm(PSEUDO_PNC_ID, "79/163001B", "1979/0163001B");
	expect_norm(PSEUDO_PNC_ID, " 79/163001b ", "1979/0163001B");
	expect_norm(PSEUDO_PNC_ID, "1979/163001B", "1979/0163001B");
	/* Century pivot: 00..50 are 20yy, 51..99 are 19yy. */
	expect_norm(PSEUDO_PNC_ID, "00/1A", "2000/0000001A");
	expect_norm(PSEUDO_PNC_ID, "50/1234567F", "2050/1234567F");
	expect_norm(PSEUDO_PNC_ID, "51/1234567W", "1951/1234567W");
	expect_norm(PSEUDO_PNC_ID, "99/9999999V", "1999/9999999V");
	/* Only the two-digit year enters the check: 1908 and 2008 share it. */
	expect_norm(PSEUDO_PNC_ID, "1908/0056560Z", "1908/0056560Z");

	expect_refused(PSEUDO_PNC_ID, "2008/0056560A", "PNC ID check character does not match");
	expect_refused(PSEUDO_PNC_ID, "79/163001C", "PNC ID check character does not match");
	expect_refused(PSEUDO_PNC_ID, "1899/0056560Z", "PNC ID year must be between 1900 and 2099");
	expect_refused(PSEUDO_PNC_ID, "2100/0056560Z", "PNC ID year must be between 1900 and 2099");
	const char *shape = "PNC ID must be YYYY/NNNNNNNC or YY/NNNNNNNC";
	expect_refused(PSEUDO_PNC_ID, "208/0056560Z", shape);
	expect_refused(PSEUDO_PNC_ID, "20080/0056560Z", shape);
	expect_refused(PSEUDO_PNC_ID, "2008/00565601Z", shape);
	expect_refused(PSEUDO_PNC_ID, "2008/Z", shape);
	expect_refused(PSEUDO_PNC_ID, "2008/0056560", shape);
	expect_refused(PSEUDO_PNC_ID, "2008 0056560Z", shape);
	expect_refused(PSEUDO_PNC_ID, "20080056560Z", shape);
	expect_refused(PSEUDO_PNC_ID, "2008/0056560ZZ", shape);
	expect_refused(PSEUDO_PNC_ID, "2008/0056560/", shape);
	expect_refused(PSEUDO_PNC_ID, "2008/", shape);
	expect_refused(PSEUDO_PNC_ID, "/1A", shape);
}

static void test_postcode(void **state)
{
	(void)state;
	expect_norm(PSEUDO_POSTCODE, "SW1A 1AA", "SW1A 1AA");
	expect_norm(PSEUDO_POSTCODE, "sw1a1aa", "SW1A 1AA");
	expect_norm(PSEUDO_POSTCODE, " SW1A  1AA ", "SW1A 1AA");
	expect_norm(PSEUDO_POSTCODE, "M1 1AE", "M1 1AE");     /* A9 */
	expect_norm(PSEUDO_POSTCODE, "b338th", "B33 8TH");    /* A99 */
	expect_norm(PSEUDO_POSTCODE, "CR2 6XH", "CR2 6XH");   /* AA9 */
	expect_norm(PSEUDO_POSTCODE, "DN55 1PT", "DN55 1PT"); /* AA99 */
	expect_norm(PSEUDO_POSTCODE, "w1a 0ax", "W1A 0AX");   /* A9A */
	expect_norm(PSEUDO_POSTCODE, "EC1A1BB", "EC1A 1BB");  /* AA9A */
	expect_norm(PSEUDO_POSTCODE, "NE3 4AB", "NE3 4AB");
	expect_norm(PSEUDO_POSTCODE, "NE35 7XY", "NE35 7XY");
	expect_norm(PSEUDO_POSTCODE, "gir0aa", "GIR 0AA");
	/* British Forces, Gibraltar and the Crown Dependencies have UK shapes. */
	expect_norm(PSEUDO_POSTCODE, "bf1 3aa", "BF1 3AA");
	expect_norm(PSEUDO_POSTCODE, "GX111AA", "GX11 1AA");
	expect_norm(PSEUDO_POSTCODE, "JE2 3AB", "JE2 3AB");
	expect_norm(PSEUDO_POSTCODE, "IM1 1AA", "IM1 1AA");

	const char *shape = "postcode is not a valid UK postcode";
	/* C I K M O V never appear in the inward code. */
	expect_refused(PSEUDO_POSTCODE, "SW1A 1CA", shape);
	expect_refused(PSEUDO_POSTCODE, "SW1A 1AI", shape);
	expect_refused(PSEUDO_POSTCODE, "SW1A 1KA", shape);
	expect_refused(PSEUDO_POSTCODE, "SW1A 1AM", shape);
	expect_refused(PSEUDO_POSTCODE, "SW1A 1OA", shape);
	expect_refused(PSEUDO_POSTCODE, "SW1A 1AV", shape);
	expect_refused(PSEUDO_POSTCODE, "SW1A 1A", shape);
	expect_refused(PSEUDO_POSTCODE, "SW1A 1AAA", shape);
	expect_refused(PSEUDO_POSTCODE, "SW1AB 1AA", shape);
	expect_refused(PSEUDO_POSTCODE, "1W1A 1AA", shape);
	expect_refused(PSEUDO_POSTCODE, "SWA 1AA", shape);
	expect_refused(PSEUDO_POSTCODE, "S1AA 1AA", shape);
	expect_refused(PSEUDO_POSTCODE, "SW12A 1AA", shape);
	expect_refused(PSEUDO_POSTCODE, "SW1A AAA", shape);
	expect_refused(PSEUDO_POSTCODE, "GIR 0AB", shape);
	expect_refused(PSEUDO_POSTCODE, "1AA", shape);
	/* Neither is a BFPO number, nor an overseas territory's own code. */
	expect_refused(PSEUDO_POSTCODE, "BFPO 1234", shape);
	expect_refused(PSEUDO_POSTCODE, "BFPO 12", shape);
	expect_refused(PSEUDO_POSTCODE, "FIQQ 1ZZ", shape);
	expect_refused(PSEUDO_POSTCODE, "stHL 1zz", shape);
	expect_refused(PSEUDO_POSTCODE, "KY1-1000",
	               "postcode may hold only letters, digits and spaces");
	/* Every outward code of 2 to 4 letters (A) and digits (9): only the six
	 * shapes Royal Mail uses are taken. */
	static const char *const shapes[] = {"A9", "A99", "AA9", "A9A", "AA99", "AA9A"};
	for (unsigned len = 2; len <= 4; len++) {
		for (unsigned bits = 0; bits < 1u << len; bits++) {
			char form[5], in[9], want[9];
			for (unsigned i = 0; i < len; i++)
				form[i] = bits >> (len - 1 - i) & 1 ? 'A' : '9';
			form[len] = '\0';
			bool taken = false;
			for (size_t k = 0; k < ARRAY_LEN(shapes); k++)
				taken = taken || strcmp(form, shapes[k]) == 0;
			for (unsigned i = 0; i < len; i++)
				in[i] = form[i] == 'A' ? 'B' : '2';
			snprintf(in + len, sizeof(in) - len, "%s", "3AB");
			snprintf(want, sizeof(want), "%.*s 3AB", (int)len, in);
			if (taken)
				expect_norm(PSEUDO_POSTCODE, in, want);
			else
				expect_refused(PSEUDO_POSTCODE, in, shape);
		}
	}
	expect_refused(PSEUDO_POSTCODE, "SW1A-1AA",
	               "postcode may hold only letters, digits and spaces");
	expect_refused(PSEUDO_POSTCODE, "SW1Á 1AA",
	               "postcode may hold only letters, digits and spaces");
}

static void test_date(void **state)
{
	(void)state;
	expect_norm(PSEUDO_DATE, "1958-02-01", "1958-02-01");
	expect_norm(PSEUDO_DATE, "19580201", "1958-02-01");
	expect_norm(PSEUDO_DATE, "01/02/1958", "1958-02-01"); /* UK order: 1 February */
	expect_norm(PSEUDO_DATE, "1/2/1958", "1958-02-01");
	expect_norm(PSEUDO_DATE, "1/12/1958", "1958-12-01");
	expect_norm(PSEUDO_DATE, "31/1/1958", "1958-01-31");
	expect_norm(PSEUDO_DATE, " 2000-02-29 ", "2000-02-29");
	expect_norm(PSEUDO_DATE, "29/02/2024", "2024-02-29");
	expect_norm(PSEUDO_DATE, "1850-01-01", "1850-01-01");
	expect_norm(PSEUDO_DATE, "2200-12-31", "2200-12-31");

	const char *unreal = "date is not a real calendar date";
	expect_refused(PSEUDO_DATE, "1900-02-29", unreal);
	expect_refused(PSEUDO_DATE, "29/02/2023", unreal);
	expect_refused(PSEUDO_DATE, "2023-13-01", unreal);
	expect_refused(PSEUDO_DATE, "2023-04-31", unreal);
	expect_refused(PSEUDO_DATE, "20230000", unreal);
	expect_refused(PSEUDO_DATE, "0/1/2000", unreal);
	const char *range = "date year must be between 1850 and 2200";
	expect_refused(PSEUDO_DATE, "1849-12-31", range);
	expect_refused(PSEUDO_DATE, "2201-01-01", range);
	const char *shape = "date must be YYYY-MM-DD, YYYYMMDD or DD/MM/YYYY";
	expect_refused(PSEUDO_DATE, "01-02-1958", shape);
	expect_refused(PSEUDO_DATE, "1958-2-1", shape);
	expect_refused(PSEUDO_DATE, "1/2/58", shape);
	expect_refused(PSEUDO_DATE, "001/2/1958", shape);
	expect_refused(PSEUDO_DATE, "1/002/1958", shape);
	expect_refused(PSEUDO_DATE, "1/2/1958/", shape);
	expect_refused(PSEUDO_DATE, "1//1958", shape);
	expect_refused(PSEUDO_DATE, "1958/02/01", shape);
	expect_refused(PSEUDO_DATE, "1958-02-01T00:00", shape);
	expect_refused(PSEUDO_DATE, "195802011", shape);
	expect_refused(PSEUDO_DATE, "a1/02/1958", shape);
}

static void test_name(void **state)
{
	(void)state;
	expect_norm(PSEUDO_NAME, "O'Brien", "obrien");
	expect_norm(PSEUDO_NAME, "O’Brien", "obrien");
	expect_norm(PSEUDO_NAME, "Smith-Jones", "smith jones");
	expect_norm(PSEUDO_NAME, "Smith - Jones", "smith jones");
	expect_norm(PSEUDO_NAME, "  Siobhán  O’Brien-Murphy ", "siobhan obrien murphy");
	expect_norm(PSEUDO_NAME, "J.R.R. Tolkien", "j r r tolkien");
	expect_norm(PSEUDO_NAME, "Tolkien, J.", "tolkien j");
	expect_norm(PSEUDO_NAME, "Straße", "strasse");
	expect_norm(PSEUDO_NAME, "ÆRØ", "aero");
	expect_norm(PSEUDO_NAME, "Łukasz Żółć", "lukasz zolc");
	expect_norm(PSEUDO_NAME, "ZOË", "zoe");
	expect_norm(PSEUDO_NAME, "Zoe\xcc\x88", "zoe"); /* e + U+0308 COMBINING DIAERESIS */
	expect_norm(PSEUDO_NAME, "Þórr Ðiđ", "thorr did");
	expect_norm(PSEUDO_NAME, "Œdipe Ĳsselmeer", "oedipe ijsselmeer");
	expect_norm(PSEUDO_NAME, "Anne\xc2\xa0Marie", "anne marie"); /* no-break space */
	expect_norm(PSEUDO_NAME, "Müller", "muller");
	expect_norm(PSEUDO_NAME, "ΟΔΥΣΣΕΑΣ", "οδυσσεασ");
	expect_norm(PSEUDO_NAME, "οδυσσεας", "οδυσσεασ");
	expect_norm(PSEUDO_NAME, "ИВАН Ёлкин", "иван елкин");
	expect_norm(PSEUDO_NAME, "王芳", "王芳");
	expect_norm(PSEUDO_NAME, "-O'Neil-", "oneil");
	/* The letters of Latin Extended-A with no canonical decomposition. */
	expect_norm(PSEUDO_NAME, "Ŀŀ ŉ", "ll n");

	expect_refused(PSEUDO_NAME, "R2D2", "name contains a digit");
	expect_refused(PSEUDO_NAME, "Bob!", "name contains a character that is not a letter");
	expect_refused(PSEUDO_NAME, "Jo_Bloggs", "name contains a character that is not a letter");
	expect_refused(PSEUDO_NAME, "Bob \xc3\x97 2",
	               "name contains a character that is not a letter");
	expect_refused(PSEUDO_NAME, "Bob \xf0\x9f\x98\x80", /* emoji */
	               "name contains a character that is not a letter");
	expect_refused(PSEUDO_NAME, "Bob\xe2\x80\x8b", /* zero-width space */
	               "name contains a character that is not a letter");
	expect_refused(PSEUDO_NAME, "Bob\xef\xbb\xbf",
	               "name contains a character that is not a letter");
	expect_refused(PSEUDO_NAME, "'-. ,", "name has no letters");

	/* Invisible characters outside U+2000..U+2BFF: Arabic letter mark,
	 * Hangul fillers, Khmer inherent vowels, Mongolian variation selectors
	 * and vowel separator, shorthand format controls; and the Ogham space. */
	static const char *const invisible[] = {
	    "Ali\u061c",       "\u115fAli",     "Ali\u1160",     "Ali\u17b4",     "Ali\u17b5",
	    "Ali\u180b",       "Ali\u180d",     "Ali\u180e",     "Ali\u180f",     "Ali\u3164",
	    "Ali \u3164 Khan", "Ali\U0001bca0", "Ali\U0001bca3", "Ali\u1680Khan",
	};
	for (size_t i = 0; i < ARRAY_LEN(invisible); i++)
		expect_refused(PSEUDO_NAME, invisible[i],
		               "name contains a character that is not a letter");
}

static void test_email(void **state)
{
	(void)state;
	expect_norm(PSEUDO_EMAIL, " Jane.Doe@Example.NHS.uk ", "jane.doe@example.nhs.uk");
	expect_norm(PSEUDO_EMAIL, "a@b.c", "a@b.c");
	expect_norm(PSEUDO_EMAIL, "ZOË@example.org", "zoË@example.org"); /* ASCII only */

	expect_refused(PSEUDO_EMAIL, "jane.example.org", "email address has no @");
	expect_refused(PSEUDO_EMAIL, "jane@doe@example.org", "email address has more than one @");
	expect_refused(PSEUDO_EMAIL, "jane doe@example.org", "email address contains a space");
	expect_refused(PSEUDO_EMAIL, "@example.org", "email local part must be 1 to 64 bytes");
	expect_refused(PSEUDO_EMAIL, "jane@localhost", "email domain must contain a dot");
	expect_refused(PSEUDO_EMAIL, "jane@", "email domain must contain a dot");
	expect_refused(PSEUDO_EMAIL, "jane@.example", "email domain has an empty label");
	expect_refused(PSEUDO_EMAIL, "jane@example.", "email domain has an empty label");
	expect_refused(PSEUDO_EMAIL, "jane@example..org", "email domain has an empty label");

	char buf[300];
	memset(buf, 'a', 64);
	snprintf(buf + 64, sizeof(buf) - 64, "@example.org");
	expect_norm(PSEUDO_EMAIL, buf, buf);
	memset(buf, 'a', 65);
	snprintf(buf + 65, sizeof(buf) - 65, "@example.org");
	expect_refused(PSEUDO_EMAIL, buf, "email local part must be 1 to 64 bytes");
	/* 254 bytes in all pass, 255 do not. */
	memcpy(buf, "a@", 2);
	memset(buf + 2, 'b', 248);
	memcpy(buf + 250, ".org", 5);
	expect_norm(PSEUDO_EMAIL, buf, buf);
	memcpy(buf, "a@", 2);
	memset(buf + 2, 'b', 249);
	memcpy(buf + 251, ".org", 5);
	expect_refused(PSEUDO_EMAIL, buf, "email address is longer than 254 bytes");
}

static void test_identifier(void **state)
{
	(void)state;
	expect_norm(PSEUDO_IDENTIFIER, "  AB  12 cd ", "ab 12 cd");
	expect_norm(PSEUDO_IDENTIFIER, "CASE-0042/X", "case-0042/x");
	expect_norm(PSEUDO_IDENTIFIER, "Ünï ID", "Ünï id");
	expect_norm(PSEUDO_IDENTIFIER, "x", "x");
}

/* --- keyed hash ------------------------------------------------------- */

static void expect_pseudonym(const uint8_t *key, uint32_t version, enum pseudo_type t,
                             const char *norm, const char *hex, const char *text)
{
	uint8_t h[PSEUDO_HASH_LEN];
	char got_hex[2 * PSEUDO_HASH_LEN + 1], got_text[PSEUDO_TEXT_MAX];
	pseudo_hash(key, t, norm, strlen(norm), h);
	hex_encode(got_hex, h, sizeof(h));
	assert_string_equal(got_hex, hex);
	memset(got_text, 'x', sizeof(got_text));
	pseudo_format(h, version, got_text);
	assert_string_equal(got_text, text);
}

static void test_hash_vectors(void **state)
{
	(void)state;
	uint8_t k[PSEUDO_KEY_LEN];
	test_key(k, 0x00);
	/* From /usr/bin/python3: hmac.new(key, b"ISG-PSEUDONYM\0\1" + type + len + value). */
	expect_pseudonym(k, 1, PSEUDO_NHS_NUMBER, "9434765919",
	                 "dce72508b28ce703256829a24ad4d8cfc494a4f2936c0e0eca27d405013977fc",
	                 "p1_3OclCLKM5wMlaCmiStTYz8SUpPKTbA4OyifUBQE5d_w");
	expect_pseudonym(k, 1, PSEUDO_PNC_ID, "1979/0163001B",
	                 "3b387954b0175b73e81f52a828f92a99bca5f1db555faf78acc8f3059263c39e",
	                 "p1_Ozh5VLAXW3PoH1KoKPkqmbyl8dtVX694rMjzBZJjw54");
	expect_pseudonym(k, 1, PSEUDO_PNC_ID, "2008/0056560Z",
	                 "c2beef732939fb2ed7a17d98dbe93270e526dec9c886d970ae503831abc7379d",
	                 "p1_wr7vcyk5-y7XoX2Y2-kycOUm3snIhtlwrlA4MavHN50");
	expect_pseudonym(k, 1, PSEUDO_POSTCODE, "SW1A 1AA",
	                 "bbf46ebeec5cb9b05ce15b5265a7f7cacf1a34cc45713d05e9914612ff8d91bc",
	                 "p1_u_RuvuxcubBc4VtSZaf3ys8aNMxFcT0F6ZFGEv-Nkbw");
	expect_pseudonym(k, 1, PSEUDO_DATE, "1958-02-01",
	                 "95cb474722e8a9669220a2b2d8558f20e8aa0ecb00b4ba481ddf5897ac99c79e",
	                 "p1_lctHRyLoqWaSIKKy2FWPIOiqDssAtLpIHd9Yl6yZx54");
	expect_pseudonym(k, 1, PSEUDO_NAME, "siobhan obrien murphy",
	                 "03c311d8e751ed1125874de4778f7673aa46767b203cc3b1e7069bda00b6ec02",
	                 "p1_A8MR2OdR7RElh03kd492c6pGdnsgPMOx5wab2gC27AI");
	expect_pseudonym(k, 1, PSEUDO_EMAIL, "jane.doe@example.nhs.uk",
	                 "a6955a4a1a4f896d521b0aaf8a02e7eedc0ea2dc0ca7e9002970fc3bdb5260ca",
	                 "p1_ppVaShpPiW1SGwqvigLn7twOotwMp-kAKXD8O9tSYMo");
	expect_pseudonym(k, 1, PSEUDO_IDENTIFIER, "ab 12 cd",
	                 "fd8ad484b6cc917da171197485033cbbbd2b94b5bba9bd7ecaf6bdb82c077239",
	                 "p1__YrUhLbMkX2hcRl0hQM8u70rlLW7qb1-yva9uCwHcjk");
	expect_pseudonym(k, 1, PSEUDO_IDENTIFIER, "",
	                 "51d90f3d684111532ab7562ee2611842a0c6daca41a028f04bd59a5ed56b46e3",
	                 "p1_UdkPPWhBEVMqt1Yu4mEYQqDG2spBoCjwS9WaXtVrRuM");
	/* The key version appears in the text form only. */
	expect_pseudonym(k, 7, PSEUDO_NHS_NUMBER, "9434765919",
	                 "dce72508b28ce703256829a24ad4d8cfc494a4f2936c0e0eca27d405013977fc",
	                 "p7_3OclCLKM5wMlaCmiStTYz8SUpPKTbA4OyifUBQE5d_w");
	expect_pseudonym(k, UINT32_MAX, PSEUDO_NHS_NUMBER, "9434765919",
	                 "dce72508b28ce703256829a24ad4d8cfc494a4f2936c0e0eca27d405013977fc",
	                 "p4294967295_3OclCLKM5wMlaCmiStTYz8SUpPKTbA4OyifUBQE5d_w");
	/* Second key: bytes 0x20..0x3f. */
	test_key(k, 0x20);
	expect_pseudonym(k, 1, PSEUDO_NHS_NUMBER, "9434765919",
	                 "fc3358fff3782340f7980b33b2b4a49878f81865f17508403162b01449e7fe4d",
	                 "p1__DNY__N4I0D3mAszsrSkmHj4GGXxdQhAMWKwFEnn_k0");
}

/* The HMAC is RFC 2104's: the same bytes as libsodium's over the documented
 * input ("ISG-PSEUDONYM" 00 01, type, u32be length, value), for values that
 * end anywhere in SHA-256's 64-byte blocks. */
static void test_hash_is_hmac(void **state)
{
	(void)state;
	static const char head[] = "ISG-PSEUDONYM\0\1";
	const size_t head_len = sizeof(head) - 1 + 5;
	uint8_t key[PSEUDO_KEY_LEN], msg[sizeof(head) - 1 + 5 + 300];
	memcpy(msg, head, sizeof(head) - 1);
	struct pseudo_keyed k;
	for (int round = 0; round < 3; round++) {
		randombytes_buf(key, sizeof(key));
		randombytes_buf(msg + head_len, sizeof(msg) - head_len);
		pseudo_keyed_init(&k, key);
		for (size_t len = 0; len <= 300; len++) {
			uint8_t *p = msg + sizeof(head) - 1;
			p[0] = (uint8_t)PSEUDO_IDENTIFIER;
			p[1] = 0;
			p[2] = 0;
			p[3] = (uint8_t)(len >> 8);
			p[4] = (uint8_t)len;
			uint8_t want[crypto_auth_hmacsha256_BYTES], got[PSEUDO_HASH_LEN];
			crypto_auth_hmacsha256_state st;
			crypto_auth_hmacsha256_init(&st, key, sizeof(key));
			crypto_auth_hmacsha256_update(&st, msg, head_len + len);
			crypto_auth_hmacsha256_final(&st, want);
			const char *value = (const char *)msg + head_len;
			pseudo_hash_keyed(&k, PSEUDO_IDENTIFIER, value, len, got);
			assert_memory_equal(got, want, sizeof(want));
			pseudo_hash(key, PSEUDO_IDENTIFIER, value, len, got);
			assert_memory_equal(got, want, sizeof(want));
		}
		pseudo_keyed_wipe(&k);
	}
}

/* normalise + hash + format, as the gateway does. */
static void pseudonym_of(const uint8_t *key, enum pseudo_type t, const char *in,
                         char text[PSEUDO_TEXT_MAX])
{
	char norm[PSEUDO_VALUE_MAX + 1];
	const char *reason;
	uint8_t h[PSEUDO_HASH_LEN];
	assert_int_equal(pseudo_normalise(t, in, strlen(in), norm, &reason), 0);
	pseudo_hash(key, t, norm, strlen(norm), h);
	pseudo_format(h, 1, text);
}

static void test_hash_equivalence(void **state)
{
	(void)state;
	uint8_t k1[PSEUDO_KEY_LEN], k2[PSEUDO_KEY_LEN];
	test_key(k1, 0x00);
	test_key(k2, 0x20);
	char a[PSEUDO_TEXT_MAX], b[PSEUDO_TEXT_MAX];

	pseudonym_of(k1, PSEUDO_NHS_NUMBER, "943 476 5919", a);
	pseudonym_of(k1, PSEUDO_NHS_NUMBER, "9434765919", b);
	assert_string_equal(a, b);
	assert_string_equal(a, "p1_3OclCLKM5wMlaCmiStTYz8SUpPKTbA4OyifUBQE5d_w");
	pseudonym_of(k1, PSEUDO_POSTCODE, "sw1a1aa", a);
	pseudonym_of(k1, PSEUDO_POSTCODE, "SW1A 1AA", b);
	assert_string_equal(a, b);
	pseudonym_of(k1, PSEUDO_PNC_ID, "79/163001b", a);
	pseudonym_of(k1, PSEUDO_PNC_ID, "1979/0163001B", b);
	assert_string_equal(a, b);
	pseudonym_of(k1, PSEUDO_DATE, "1/2/1958", a);
	pseudonym_of(k1, PSEUDO_DATE, "19580201", b);
	assert_string_equal(a, b);
	pseudonym_of(k1, PSEUDO_NAME, "SIOBHÁN O'BRIEN-MURPHY", a);
	pseudonym_of(k1, PSEUDO_NAME, "siobhan  obrien murphy", b);
	assert_string_equal(a, b);

	/* Two keys (two linkage domains) give different pseudonyms. */
	pseudonym_of(k1, PSEUDO_NHS_NUMBER, "9434765919", a);
	pseudonym_of(k2, PSEUDO_NHS_NUMBER, "9434765919", b);
	assert_string_not_equal(a, b);
	/* The same text under two types gives different pseudonyms. */
	pseudonym_of(k1, PSEUDO_IDENTIFIER, "9434765919", b);
	assert_string_not_equal(a, b);
}

/* Both spellings of one name normalise to want and give one pseudonym. */
static void expect_same_name(const char *a, const char *b, const char *want)
{
	uint8_t k[PSEUDO_KEY_LEN];
	char ta[PSEUDO_TEXT_MAX], tb[PSEUDO_TEXT_MAX];
	test_key(k, 0x00);
	expect_norm(PSEUDO_NAME, a, want);
	expect_norm(PSEUDO_NAME, b, want);
	pseudonym_of(k, PSEUDO_NAME, a, ta);
	pseudonym_of(k, PSEUDO_NAME, b, tb);
	assert_string_equal(ta, tb);
}

/* A name precomposed (NFC) and decomposed (NFD) is one name, whatever its
 * script; so are Romanian's comma-below and cedilla spellings. */
static void test_name_nfc_nfd(void **state)
{
	(void)state;
	expect_same_name("\u0218tefan \u021aurcanu", "S\u0326tefan T\u0326urcanu",
	                 "stefan turcanu");
	expect_same_name("\u0218tefan \u021aurcanu", "\u015etefan \u0162urcanu", "stefan turcanu");
	expect_same_name("\u0219\u021b", "\u015f\u0163", "st");
	expect_same_name("Nguy\u1ec5n", "Nguye\u0302\u0303n", "nguyen");
	expect_same_name("Nguy\u1ec5n", "Nguy\u00ea\u0303n", "nguyen"); /* half composed */
	expect_same_name("\u01cd", "A\u030c", "a");
	expect_same_name("\u01d5", "U\u0308\u0304", "u"); /* Ǖ, two marks */
	expect_same_name("\u01fc", "\u00c6\u0301", "ae"); /* Ǽ: base Æ folds on */
	expect_same_name("\u0401\u043b\u043a\u0438\u043d", "\u0415\u0308\u043b\u043a\u0438\u043d",
	                 "\u0435\u043b\u043a\u0438\u043d"); /* Ёлкин → елкин */
	expect_same_name("\u0419\u043e\u0441\u0438\u0444", "\u0418\u0306\u043e\u0441\u0438\u0444",
	                 "\u0438\u043e\u0441\u0438\u0444");   /* Йосиф → иосиф */
	expect_same_name("\u0457", "\u0456\u0308", "\u0456"); /* ї → і */
	expect_same_name("\u04f1", "\u0443\u0308", "\u0443"); /* ӱ */
	expect_same_name("\u0386", "\u0391\u0301", "\u03b1");
	expect_same_name("\u0386\u03bd\u03bd\u03b1", "\u03ac\u03bd\u03bd\u03b1",
	                 "\u03b1\u03bd\u03bd\u03b1"); /* Άννα, άννα → αννα */
	expect_same_name("\u0390", "\u03b9\u0308\u0301", "\u03b9"); /* ΐ */
	expect_same_name("\u1f71", "\u03b1\u0301", "\u03b1");       /* ά with oxia, a singleton */
	expect_same_name("\u1f0c", "\u0391\u0313\u0301", "\u03b1"); /* Ἄ, Greek Extended */
	expect_same_name("\u1fbe", "\u03b9", "\u03b9"); /* prosgegrammeni: NFC makes it ι */
	/* Greek spacing accents and punctuation fold as their NFD spelling does:
	 * kept, dropped as an apostrophe, or refused, alike. */
	expect_same_name("\u03b1\u1fcd", "\u03b1\u1fbf\u0300", "\u03b1\u1fbf"); /* psili varia */
	expect_same_name("x\u1ffd", "x\u00b4", "x"); /* oxia → ´, an apostrophe */
	expect_same_name("x\u1fef", "x`", "x");      /* varia → ` */
	expect_refused(PSEUDO_NAME, "\u03b1\u0387\u03b2",
	               "name contains a character that is not a letter"); /* ano teleia → · */
	expect_refused(PSEUDO_NAME, "\u03b1\u037e",
	               "name contains a character that is not a letter");
	expect_refused(PSEUDO_NAME, "\u03b1\u0385",
	               "name contains a character that is not a letter");

	/* Letters with no decomposition stay, lower-cased: a name in capitals, as
	 * police systems keep them, links with the same name in small letters. */
	expect_norm(PSEUDO_NAME, "\u0180", "\u0180");
	expect_norm(PSEUDO_NAME, "\u018fL\u0130YEV", "\u0259liyev"); /* ƏLİYEV */
	expect_norm(PSEUDO_NAME, "\u018fliyev", "\u0259liyev");
	expect_norm(PSEUDO_NAME, "\u0259liyev", "\u0259liyev");
	expect_norm(PSEUDO_NAME, "\u01ee", "\u0292"); /* Ǯ → Ʒ → ʒ */
	expect_norm(PSEUDO_NAME, "\u0490\u0410\u041d\u0414\u0416\u0423\u041a",
	            "\u0491\u0430\u043d\u0434\u0436\u0443\u043a"); /* ҐАНДЖУК → ґанджук */
	expect_norm(PSEUDO_NAME, "\u0540\u0531\u0545", "\u0570\u0561\u0575"); /* ՀԱՅ → հայ */
	expect_norm(PSEUDO_NAME, "STRA\u1e9eE", "strasse"); /* ẞ → ß → ss */
	/* GREEK NUMERAL SIGN is U+02B9 in NFC and NFD, a refused modifier letter. */
	expect_refused(PSEUDO_NAME, "A\u0374", "name contains a character that is not a letter");
}

/* The generated table: sorted for the binary search, inside the range
 * name.c looks it up in, and complete, so one look-up reaches the base. */
static void test_name_fold_table(void **state)
{
	(void)state;
	assert_true(ARRAY_LEN(name_fold) > 600);
	for (size_t i = 0; i < ARRAY_LEN(name_fold); i++) {
		uint32_t cp = name_fold[i].cp, base = name_fold[i].to;
		if (i > 0)
			assert_true(name_fold[i - 1].cp < cp);
		assert_in_range(cp, 0x0180, 0x1fff);
		assert_false(cp >= 0x0300 && cp <= 0x036f);
		assert_false(base >= 0x0300 && base <= 0x036f);
		for (size_t j = 0; j < ARRAY_LEN(name_fold); j++)
			assert_int_not_equal(name_fold[j].cp, base);

		/* The letter alone normalises as its base alone does. */
		char a[8], b[8], na[PSEUDO_VALUE_MAX + 1], nb[PSEUDO_VALUE_MAX + 1];
		const char *ra = NULL, *rb = NULL;
		size_t la = utf8_encode(cp, a), lb = utf8_encode(base, b);
		int ea = pseudo_normalise(PSEUDO_NAME, a, la, na, &ra);
		int eb = pseudo_normalise(PSEUDO_NAME, b, lb, nb, &rb);
		assert_int_equal(ea, eb);
		assert_string_equal(na, nb);
	}
}

/* The lower-case table: sorted, in name_map's range, its letters left alone
 * by the fold and its results folded no further; each capital alone
 * normalises as its lower-case letter alone. */
static void test_name_lower_table(void **state)
{
	(void)state;
	assert_true(ARRAY_LEN(name_lower) > 400);
	for (size_t i = 0; i < ARRAY_LEN(name_lower); i++) {
		uint32_t cp = name_lower[i].cp, low = name_lower[i].to;
		if (i > 0)
			assert_true(name_lower[i - 1].cp < cp);
		assert_in_range(cp, 0x0180, 0x1fff);
		for (size_t j = 0; j < ARRAY_LEN(name_fold); j++) {
			assert_int_not_equal(name_fold[j].cp, cp);
			assert_int_not_equal(name_fold[j].cp, low);
		}
		char a[8], b[8], na[PSEUDO_VALUE_MAX + 1], nb[PSEUDO_VALUE_MAX + 1];
		const char *ra = NULL, *rb = NULL;
		size_t la = utf8_encode(cp, a), lb = utf8_encode(low, b);
		assert_int_equal(pseudo_normalise(PSEUDO_NAME, a, la, na, &ra),
		                 pseudo_normalise(PSEUDO_NAME, b, lb, nb, &rb));
		assert_string_equal(na, nb);
	}
}

/* The text form's hash part is unpadded base64url: libsodium's, byte for byte. */
static void test_format_is_base64url(void **state)
{
	(void)state;
	for (int i = 0; i < 2000; i++) {
		uint8_t h[PSEUDO_HASH_LEN];
		randombytes_buf(h, sizeof(h));
		if (i < 2)
			memset(h, i ? 0xff : 0x00, sizeof(h));
		char text[PSEUDO_TEXT_MAX], want[PSEUDO_TEXT_MAX];
		pseudo_format(h, 12, text);
		memcpy(want, "p12_", 4);
		sodium_bin2base64(want + 4, sizeof(want) - 4, h, sizeof(h),
		                  sodium_base64_VARIANT_URLSAFE_NO_PADDING);
		assert_string_equal(text, want);
	}
}

static void test_format_length(void **state)
{
	(void)state;
	uint8_t h[PSEUDO_HASH_LEN];
	memset(h, 0xff, sizeof(h));
	char text[PSEUDO_TEXT_MAX];
	pseudo_format(h, UINT32_MAX, text);
	assert_int_equal(strlen(text), 1 + 10 + 1 + 43);
	assert_string_equal(text, "p4294967295___________________________________________8");
	memset(h, 0, sizeof(h));
	pseudo_format(h, 0, text);
	assert_string_equal(text, "p0_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
}

/* --- generalisers ------------------------------------------------------ */

static int64_t days(const char *iso)
{
	int64_t d;
	assert_int_equal(date_parse_days(iso, &d), 0);
	return d;
}

static void expect_band(const char *dob, const char *today, unsigned width, const char *want)
{
	char out[32];
	const char *reason = NULL;
	int err = pseudo_gen_age_band(dob, days(today), width, out, sizeof(out), &reason);
	if (err)
		print_error("%s at %s: %s\n", dob, today, reason);
	assert_int_equal(err, 0);
	assert_string_equal(out, want);
}

static void expect_band_refused(const char *dob, const char *today, unsigned width, const char *why)
{
	char out[32];
	const char *reason = NULL;
	assert_int_equal(pseudo_gen_age_band(dob, days(today), width, out, sizeof(out), &reason),
	                 ISG_ERR_INVALID);
	assert_string_equal(reason, why);
}

static void test_gen_dates(void **state)
{
	(void)state;
	char out[16];
	const char *reason;
	assert_int_equal(pseudo_gen_year("1958-02-01", out, sizeof(out), &reason), 0);
	assert_string_equal(out, "1958");
	assert_int_equal(pseudo_gen_year("01/02/1958", out, sizeof(out), &reason), 0);
	assert_string_equal(out, "1958");
	assert_int_equal(pseudo_gen_month("2026-11-23", out, sizeof(out), &reason), 0);
	assert_string_equal(out, "2026-11");
	assert_int_equal(pseudo_gen_month("2026-02-30", out, sizeof(out), &reason),
	                 ISG_ERR_INVALID);
	assert_string_equal(reason, "date is not a real calendar date");
	assert_int_equal(pseudo_gen_year(NULL, out, sizeof(out), &reason), ISG_ERR_INVALID);
	assert_int_equal(pseudo_gen_year("1958-02-01", out, 4, &reason), ISG_ERR_INVALID);
	assert_string_equal(reason, "output buffer too small");
	assert_int_equal(pseudo_gen_month("2026-11-23", out, 8, &reason), 0);
	assert_int_equal(pseudo_gen_month("2026-11-23", out, 7, &reason), ISG_ERR_INVALID);
}

static void test_gen_age_band(void **state)
{
	(void)state;
	/* Completed years: the day before the birthday is still the younger age. */
	expect_band("1958-02-01", "2024-01-31", 5, "65-69");
	expect_band("1958-02-01", "2024-02-01", 5, "65-69");
	expect_band("1954-06-15", "2024-06-14", 5, "65-69"); /* 69 */
	expect_band("1954-06-15", "2024-06-15", 5, "70-74"); /* 70 */
	expect_band("1954-06-15", "2024-06-15", 10, "70-79");
	expect_band("1954-06-15", "2024-06-14", 10, "60-69");
	expect_band("1954-06-15", "2024-06-14", 1, "69-69");
	expect_band("1954-06-15", "2024-06-14", 50, "50-99");
	expect_band("2024-03-10", "2024-03-10", 5, "0-4"); /* born today */
	/* 29 February: the birthday is reached on 1 March in other years. */
	expect_band("2000-02-29", "2023-02-28", 1, "22-22");
	expect_band("2000-02-29", "2023-03-01", 1, "23-23");
	expect_band("2000-02-29", "2024-02-28", 1, "23-23");
	expect_band("2000-02-29", "2024-02-29", 1, "24-24");
	expect_band("29/02/2000", "2025-02-28", 5, "20-24");
	expect_band("29/02/2000", "2025-03-01", 5, "25-29");
	/* Year ends. */
	expect_band("1999-12-31", "2000-12-30", 1, "0-0");
	expect_band("1999-12-31", "2000-12-31", 1, "1-1");
	/* 120 is the oldest age accepted. */
	expect_band("1900-05-01", "2020-04-30", 5, "115-119");
	expect_band("1900-05-01", "2020-05-01", 5, "120-124");
	expect_band("1900-05-01", "2021-04-30", 5, "120-124"); /* a day short of 121 */
	expect_band_refused("1900-05-01", "2021-05-01", 5, "age is over 120 years");
	expect_band_refused("2024-03-11", "2024-03-10", 5,
	                    "date of birth is after the exchange date");
	expect_band_refused("1958-02-01", "2024-01-31", 0, "age band width must be 1 to 50 years");
	expect_band_refused("1958-02-01", "2024-01-31", 51, "age band width must be 1 to 50 years");
	expect_band_refused("1958-02-31", "2024-01-31", 5, "date is not a real calendar date");
	char out[8];
	const char *reason;
	assert_int_equal(pseudo_gen_age_band("1958-02-01", INT64_MAX, 5, out, sizeof(out), &reason),
	                 ISG_ERR_INVALID);
	assert_int_equal(pseudo_gen_age_band("1958-02-01", days("2024-01-31"), 5, out, 5, &reason),
	                 ISG_ERR_INVALID);
	assert_string_equal(reason, "output buffer too small");
	assert_int_equal(pseudo_gen_age_band("1958-02-01", days("2024-01-31"), 5, out, 6, &reason),
	                 0);
}

static void expect_postcode(const char *in, enum pseudo_postcode_level level, const char *want)
{
	char out[16];
	const char *reason = NULL;
	assert_int_equal(pseudo_gen_postcode(in, level, out, sizeof(out), &reason), 0);
	assert_string_equal(out, want);
}

static void test_gen_postcode(void **state)
{
	(void)state;
	expect_postcode("NE3 4AB", POSTCODE_AREA, "NE");
	expect_postcode("NE3 4AB", POSTCODE_DISTRICT, "NE3");
	expect_postcode("NE3 4AB", POSTCODE_SECTOR, "NE3 4");
	/* NE35 is another district, not NE3 with a longer tail. */
	expect_postcode("NE35 7XY", POSTCODE_AREA, "NE");
	expect_postcode("NE35 7XY", POSTCODE_DISTRICT, "NE35");
	expect_postcode("NE35 7XY", POSTCODE_SECTOR, "NE35 7");
	expect_postcode("M1 1AE", POSTCODE_AREA, "M");
	expect_postcode("M1 1AE", POSTCODE_DISTRICT, "M1");
	expect_postcode("M1 1AE", POSTCODE_SECTOR, "M1 1");
	expect_postcode("w1a0ax", POSTCODE_AREA, "W");
	expect_postcode("w1a0ax", POSTCODE_DISTRICT, "W1A");
	expect_postcode("w1a0ax", POSTCODE_SECTOR, "W1A 0");
	expect_postcode("ec1a 1bb", POSTCODE_DISTRICT, "EC1A");
	expect_postcode("B33 8TH", POSTCODE_DISTRICT, "B33");
	expect_postcode("GIR 0AA", POSTCODE_AREA, "GIR");
	expect_postcode("GIR 0AA", POSTCODE_DISTRICT, "GIR");
	expect_postcode("GIR 0AA", POSTCODE_SECTOR, "GIR 0");
	expect_postcode("gx111aa", POSTCODE_AREA, "GX");
	expect_postcode("gx111aa", POSTCODE_DISTRICT, "GX11");
	expect_postcode("bf13aa", POSTCODE_DISTRICT, "BF1");

	char out[16];
	const char *reason;
	assert_int_equal(pseudo_gen_postcode("NE3 4CB", POSTCODE_AREA, out, sizeof(out), &reason),
	                 ISG_ERR_INVALID);
	assert_string_equal(reason, "postcode is not a valid UK postcode");
	assert_int_equal(pseudo_gen_postcode("NE3 4AB", (enum pseudo_postcode_level)9, out,
	                                     sizeof(out), &reason),
	                 ISG_ERR_INVALID);
	assert_int_equal(pseudo_gen_postcode("NE35 7XY", POSTCODE_DISTRICT, out, 4, &reason),
	                 ISG_ERR_INVALID);
	assert_string_equal(reason, "output buffer too small");
}

static void expect_number_band(int64_t v, int64_t w, const char *want)
{
	char out[48];
	const char *reason = NULL;
	assert_int_equal(pseudo_gen_number_band(v, w, out, sizeof(out), &reason), 0);
	assert_string_equal(out, want);
}

static void test_gen_number_band(void **state)
{
	(void)state;
	expect_number_band(37, 10, "30-39");
	expect_number_band(30, 10, "30-39");
	expect_number_band(39, 10, "30-39");
	expect_number_band(40, 10, "40-49");
	expect_number_band(0, 10, "0-9");
	expect_number_band(-1, 10, "-10--1");
	expect_number_band(-10, 10, "-10--1");
	expect_number_band(-11, 10, "-20--11");
	expect_number_band(7, 1, "7-7");
	expect_number_band(INT64_MIN, 1, "-9223372036854775808--9223372036854775808");
	expect_number_band(INT64_MAX, 1, "9223372036854775807-9223372036854775807");
	expect_number_band(INT64_MAX - 9, 10, "9223372036854775790-9223372036854775799");
	char out[48];
	const char *reason;
	assert_int_equal(pseudo_gen_number_band(1, 0, out, sizeof(out), &reason), ISG_ERR_INVALID);
	assert_string_equal(reason, "band width must be positive");
	assert_int_equal(pseudo_gen_number_band(1, -5, out, sizeof(out), &reason), ISG_ERR_INVALID);
	assert_int_equal(pseudo_gen_number_band(INT64_MAX, 10, out, sizeof(out), &reason),
	                 ISG_ERR_INVALID);
	assert_string_equal(reason, "band does not fit in a 64-bit integer");
	assert_int_equal(pseudo_gen_number_band(INT64_MIN, 3, out, sizeof(out), &reason),
	                 ISG_ERR_INVALID);
	assert_int_equal(pseudo_gen_number_band(37, 10, out, 5, &reason), ISG_ERR_INVALID);
	assert_int_equal(pseudo_gen_number_band(37, 10, out, 6, &reason), 0);
}

/* The second table of vectors in docs/pseudonyms.md, from the input as sent:
 * each computed by pseudo_* and by an independent Python implementation of
 * the page alone. */
static void test_doc_vectors_from_input(void **state)
{
	(void)state;
	static const struct {
		enum pseudo_type type;
		const char *in, *norm, *text;
	} v[] = {
	    {PSEUDO_PNC_ID, "51/1234567W", "1951/1234567W",
	     "p1_t_wTvO1RWHcAkmxeAwKF9OT7DGZGwpvs06F3mjPTAVY"},
	    {PSEUDO_PNC_ID, " 50/1234567f ", "2050/1234567F",
	     "p1_Wpf47vXEtEeeQ0HMa8cMrDJ-B4hHQ5UB6nwg6svI2X4"},
	    {PSEUDO_POSTCODE, "gir0aa", "GIR 0AA",
	     "p1_FN5akdTvjs5pbUPbGlPEAe1ghmgu1IvyF2AvZYB-1zI"},
	    {PSEUDO_POSTCODE, "dn55 1pt", "DN55 1PT",
	     "p1_6tUdEb9U1i2c8QaoOCvcecMejwr_mRFliAYLgXdePvI"},
	    {PSEUDO_DATE, "29/2/2000", "2000-02-29",
	     "p1_7gVjKQxq73_d3tysv56MPFLWmIOWoYpvXfsvqUK2iRs"},
	    {PSEUDO_NAME, "ΟΔΥΣΣΕΑΣ", "οδυσσεασ", "p1_KXzCdiRyydcGwKXQyIcC_F2-0vazUDaLLbWNlNWVvSM"},
	    {PSEUDO_NAME, "ИВАН Ёлкин", "иван елкин",
	     "p1_4zMqlGL2OYj7q4uCfNK4EvXKYfLzIQ-BHCeTXquQ8Hw"},
	    {PSEUDO_NAME, "\u0218tefan \u0162urcanu", "stefan turcanu", /* comma below, cedilla */
	     "p1_4iSdY0YRXsnZgQ-nHNrVOQF18gawjNRcPVzx8Zs_JiQ"},
	    {PSEUDO_NAME, "Nguy\u1ec5n", "nguyen",
	     "p1_jrfO1ezPxamUopeEGcBHBIV6G0y6i6GkaulPjygWMk0"},
	    {PSEUDO_NAME,
	     "Sio\xcc\x81"
	     "bhan",
	     "siobhan", /* o + U+0301 */
	     "p1_1nZAKXaGsTodbsAZmRWe3R1qVsC4vNXRPKONmTmGQpU"},
	    {PSEUDO_NAME, "Gaŀlard", "gallard", "p1_NztXFFSQX5knh8kltQCg_c9JjmcLQNfr8CaT1wia0tE"},
	    {PSEUDO_NAME, "Łukasz Żółć", "lukasz zolc",
	     "p1_UJENVpfjOc-A4CGwvzwCIuxs-cOfWC3jamcEFdAJS4w"},
	    {PSEUDO_EMAIL, "Ünïcode@Exämple.COM", "Ünïcode@exämple.com",
	     "p1_DzT8aYT31d08tUQWW5JzrZNIG_pkRfVb9iWn_5zJ1Ho"},
	    {PSEUDO_IDENTIFIER,
	     "AB\xc2\xa0"
	     "12",
	     "ab\xc2\xa0"
	     "12", /* a no-break space */
	     "p1_-GCD9onNhv7hWaFEPk17kfLD2kU4L3FI88Fhyaho_yA"},
	};
	uint8_t k[PSEUDO_KEY_LEN];
	test_key(k, 0x00);
	char text[PSEUDO_TEXT_MAX];
	for (size_t i = 0; i < ARRAY_LEN(v); i++) {
		expect_norm(v[i].type, v[i].in, v[i].norm);
		pseudonym_of(k, v[i].type, v[i].in, text);
		assert_string_equal(text, v[i].text);
	}
	/* 256 bytes, the longest value: its length field is 00 00 01 00. */
	char in[PSEUDO_VALUE_MAX + 1], norm[PSEUDO_VALUE_MAX + 1];
	memset(in, 'X', PSEUDO_VALUE_MAX);
	in[PSEUDO_VALUE_MAX] = '\0';
	memset(norm, 'x', PSEUDO_VALUE_MAX);
	norm[PSEUDO_VALUE_MAX] = '\0';
	expect_norm(PSEUDO_IDENTIFIER, in, norm);
	pseudonym_of(k, PSEUDO_IDENTIFIER, in, text);
	assert_string_equal(text, "p1_F56s2BB-u0XH5geM-BLCR-ztl22rc92plfhZPkdU8bY");
}

int main(void)
{
	if (sodium_init() < 0)
		return 1;
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_type_names),
	    cmocka_unit_test(test_common_refusals),
	    cmocka_unit_test(test_nhs_number),
	    cmocka_unit_test(test_pnc_id),
	    cmocka_unit_test(test_postcode),
	    cmocka_unit_test(test_date),
	    cmocka_unit_test(test_name),
	    cmocka_unit_test(test_name_nfc_nfd),
	    cmocka_unit_test(test_name_fold_table),
	    cmocka_unit_test(test_name_lower_table),
	    cmocka_unit_test(test_email),
	    cmocka_unit_test(test_identifier),
	    cmocka_unit_test(test_hash_vectors),
	    cmocka_unit_test(test_hash_is_hmac),
	    cmocka_unit_test(test_format_is_base64url),
	    cmocka_unit_test(test_hash_equivalence),
	    cmocka_unit_test(test_doc_vectors_from_input),
	    cmocka_unit_test(test_format_length),
	    cmocka_unit_test(test_gen_dates),
	    cmocka_unit_test(test_gen_age_band),
	    cmocka_unit_test(test_gen_postcode),
	    cmocka_unit_test(test_gen_number_band),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
