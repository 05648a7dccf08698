/*
 * daemon/keyvers.c and entry_keys: the keys.loaded entry's comparison of the
 * key versions in use with those before (a reload's keyring, or a start's
 * previous entry read back from the store), and reading that entry back as
 * hostile input.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include <sodium.h>

#include "daemon/gateway.h"

/* A list from "name=version" pairs, sorted as key_versions_of_ring sorts. */
static struct key_versions versions(const char *const *pairs, size_t n)
{
	struct key_versions kv = {.items = calloc(n + 1, sizeof(struct key_version)), .n = n};
	assert_non_null(kv.items);
	kv.cap = n + 1;
	for (size_t i = 0; i < n; i++) {
		const char *eq = strchr(pairs[i], '=');
		assert_non_null(eq);
		snprintf(kv.items[i].name, sizeof(kv.items[i].name), "%.*s", (int)(eq - pairs[i]),
		         pairs[i]);
		kv.items[i].version = (uint32_t)strtoul(eq + 1, NULL, 10);
	}
	return kv;
}

/* want_changes: the keys.changed log line's lists, or NULL for no line. */
static void assert_entry(const struct key_versions *now, const struct key_versions *before,
                         const char *want, const char *want_changes)
{
	char *changes = (char *)"unset";
	size_t len = 0;
	char *entry = entry_keys(now, before, &changes, &len);
	assert_non_null(entry);
	assert_string_equal(entry, want);
	assert_int_equal(len, strlen(want));
	if (want_changes)
		assert_string_equal(changes, want_changes);
	else
		assert_null(changes);
	free(changes);
	free(entry);
}

/* --- the comparison ----------------------------------------------------------------- */

static void test_created_rotated_removed(void **state)
{
	(void)state;
	static const char *const was[] = {"audit=1", "council-link=1", "gone=3", "health-link=2"};
	static const char *const is[] = {"audit=1", "council-link=2", "health-link=2", "new-link=1",
	                                 "zeta=4"};
	struct key_versions before = versions(was, 4), now = versions(is, 5);
	assert_entry(&now, &before,
	             "{\"event\":\"keys.loaded\",\"domains\":{\"audit\":1,\"council-link\":2,"
	             "\"health-link\":2,\"new-link\":1,\"zeta\":4},\"created\":[\"new-link\","
	             "\"zeta\"],\"rotated\":[\"council-link\"],\"removed\":[\"gone\"]}",
	             "created=new-link,zeta rotated=council-link removed=gone");
	/* the other way round: only removed, and a version that went down is another version */
	assert_entry(&before, &now,
	             "{\"event\":\"keys.loaded\",\"domains\":{\"audit\":1,\"council-link\":1,"
	             "\"gone\":3,\"health-link\":2},\"created\":[\"gone\"],\"rotated\":"
	             "[\"council-link\"],\"removed\":[\"new-link\",\"zeta\"]}",
	             "created=gone rotated=council-link removed=new-link,zeta");
	key_versions_release(&before);
	key_versions_release(&now);
}

static void test_nothing_changed_or_only_removed(void **state)
{
	(void)state;
	static const char *const two[] = {"audit=1", "council-link=7"};
	struct key_versions now = versions(two, 2), same = versions(two, 2),
	                    more = versions(two, 2);
	assert_entry(&now, &same,
	             "{\"event\":\"keys.loaded\",\"domains\":{\"audit\":1,\"council-link\":7},"
	             "\"created\":[],\"rotated\":[],\"removed\":[]}",
	             NULL);
	struct key_version *v = &more.items[more.n++];
	snprintf(v->name, sizeof(v->name), "old-link");
	v->version = 2;
	/* a domain gone, none new: removed, and logged as such */
	assert_entry(&now, &more,
	             "{\"event\":\"keys.loaded\",\"domains\":{\"audit\":1,\"council-link\":7},"
	             "\"created\":[],\"rotated\":[],\"removed\":[\"old-link\"]}",
	             "removed=old-link");
	key_versions_release(&now);
	key_versions_release(&same);
	key_versions_release(&more);
}

static void test_first_keys_and_unknown_before(void **state)
{
	(void)state;
	static const char *const two[] = {"audit=1", "council-link=2"};
	struct key_versions now = versions(two, 2), none = {0};
	/* a new log: nothing was in use before, so every domain is new */
	assert_entry(&now, &none,
	             "{\"event\":\"keys.loaded\",\"domains\":{\"audit\":1,\"council-link\":2},"
	             "\"created\":[\"audit\",\"council-link\"],\"rotated\":[],\"removed\":[]}",
	             "created=audit,council-link");
	/* not known: nothing claimed */
	assert_entry(&now, NULL,
	             "{\"event\":\"keys.loaded\",\"domains\":{\"audit\":1,\"council-link\":2},"
	             "\"created\":null,\"rotated\":null,\"removed\":null}",
	             NULL);
	assert_entry(&none, &none,
	             "{\"event\":\"keys.loaded\",\"domains\":{},\"created\":[],\"rotated\":[],"
	             "\"removed\":[]}",
	             NULL);
	key_versions_release(&now);
}

/* --- reading an entry back ------------------------------------------------------------ */

static void assert_parses(const char *body, const char *const *want, size_t n)
{
	struct key_versions kv;
	const char *reason = NULL;
	if (key_versions_parse(body, strlen(body), &kv, &reason) != 0)
		fail_msg("'%s' refused: %s", body, reason);
	assert_int_equal(kv.n, n);
	for (size_t i = 0; i < n; i++) {
		char got[KEYS_DOMAIN_NAME_MAX + 16];
		snprintf(got, sizeof(got), "%s=%u", kv.items[i].name,
		         (unsigned)kv.items[i].version);
		assert_string_equal(got, want[i]);
	}
	key_versions_release(&kv);
}

static void test_parse_reads_what_entry_keys_writes(void **state)
{
	(void)state;
	static const char *const was[] = {"audit=1", "health-link=4294967295", "x=0"};
	static const char *const is[] = {"audit=2", "council-link=1"};
	struct key_versions before = versions(was, 3), now = versions(is, 2);
	char *changes;
	size_t len;
	const struct key_versions *befores[] = {&before, NULL};
	for (size_t i = 0; i < 2; i++) {
		char *entry = entry_keys(&before, befores[i] ? &now : NULL, &changes, &len);
		assert_non_null(entry);
		assert_parses(entry, was, 3);
		free(changes);
		free(entry);
	}
	assert_parses("{\"event\":\"keys.loaded\",\"domains\":{}}", NULL, 0);
	/* entries written before "removed" was added, and names out of order */
	static const char *const sorted[] = {"a=1", "b-2=10", "c=3"};
	assert_parses("{\"event\":\"keys.loaded\",\"domains\":{\"c\":3,\"a\":1,\"b-2\":10},"
	              "\"created\":[],\"rotated\":[\"b-2\"]}",
	              sorted, 3);
	key_versions_release(&before);
	key_versions_release(&now);
}

static void test_parse_refuses_anything_else(void **state)
{
	(void)state;
	static const struct {
		const char *body, *why;
	} cases[] = {
	    {"", "not a keys.loaded entry"},
	    {"{\"event\":\"policy.loaded\",\"domains\":{}}", "not a keys.loaded entry"},
	    {"{\"event\":\"keys.loaded\",\"created\":[],\"domains\":{}}",
	     "not a keys.loaded entry"},
	    {"{\"event\":\"keys.loaded\",\"domains\":[]}", "not a keys.loaded entry"},
	    {"{\"event\":\"keys.loaded\", \"domains\":{}}", "not a keys.loaded entry"},
	    {"{\"event\":\"keys.loaded\",\"domains\":{", "a domain name that is not valid"},
	    {"{\"event\":\"keys.loaded\",\"domains\":{\"A\":1}}",
	     "a domain name that is not valid"},
	    {"{\"event\":\"keys.loaded\",\"domains\":{\"\":1}}", "a domain name that is not valid"},
	    {"{\"event\":\"keys.loaded\",\"domains\":{\"-a\":1}}",
	     "a domain name that is not valid"},
	    {"{\"event\":\"keys.loaded\",\"domains\":{\"a\\u0062\":1}}",
	     "a domain name that is not valid"},
	    {"{\"event\":\"keys.loaded\",\"domains\":{\"a b\":1}}",
	     "a domain name that is not valid"},
	    {"{\"event\":\"keys.loaded\",\"domains\":{"
	     "\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	     "aaaaaaaaaaaaaaaa\":1}}",
	     "a domain name that is not valid"}, /* 64 characters */
	    {"{\"event\":\"keys.loaded\",\"domains\":{\"a\"", "a key version"},
	    {"{\"event\":\"keys.loaded\",\"domains\":{\"a\":}}", "a key version"},
	    {"{\"event\":\"keys.loaded\",\"domains\":{\"a\":01}}", "a key version"},
	    {"{\"event\":\"keys.loaded\",\"domains\":{\"a\":-1}}", "a key version"},
	    {"{\"event\":\"keys.loaded\",\"domains\":{\"a\":\"1\"}}", "a key version"},
	    {"{\"event\":\"keys.loaded\",\"domains\":{\"a\":4294967296}}", "a key version"},
	    {"{\"event\":\"keys.loaded\",\"domains\":{\"a\":99999999999999999999}}",
	     "a key version"},
	    {"{\"event\":\"keys.loaded\",\"domains\":{\"a\":1.5}}", "does not end where it should"},
	    {"{\"event\":\"keys.loaded\",\"domains\":{\"a\":1,}}",
	     "a domain name that is not valid"},
	    {"{\"event\":\"keys.loaded\",\"domains\":{\"a\":1}", "does not end where it should"},
	    {"{\"event\":\"keys.loaded\",\"domains\":{\"a\":1}x", "does not end where it should"},
	    {"{\"event\":\"keys.loaded\",\"domains\":{}x", "does not end where it should"},
	    {"{\"event\":\"keys.loaded\",\"domains\":{}", "does not end where it should"},
	    {"{\"event\":\"keys.loaded\",\"domains\":{\"a\":1 }}", "does not end where it should"},
	    {"{\"event\":\"keys.loaded\",\"domains\":{\"a\":1,\"b\":2,\"a\":3}}",
	     "a domain listed twice"},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct key_versions kv = {.n = 99};
		const char *reason = NULL;
		int rc = key_versions_parse(cases[i].body, strlen(cases[i].body), &kv, &reason);
		if (rc != ISG_ERR_PARSE || !reason || !strstr(reason, cases[i].why))
			fail_msg("case %zu '%s': %d '%s', expected '%s'", i, cases[i].body, rc,
			         reason ? reason : "", cases[i].why);
		assert_null(kv.items);
		assert_int_equal(kv.n, 0);
	}
	/* every prefix of a good body is refused, never read past */
	static const char good[] = "{\"event\":\"keys.loaded\",\"domains\":{\"ab\":12,\"cd\":3}}";
	for (size_t n = 0; n < sizeof(good) - 2; n++) {
		char *cut = malloc(n ? n : 1); /* exactly n bytes, so ASan sees a read past them */
		assert_non_null(cut);
		memcpy(cut, good, n);
		struct key_versions kv;
		assert_int_equal(key_versions_parse(cut, n, &kv, NULL), ISG_ERR_PARSE);
		free(cut);
	}
}

/* --- from a keyring ------------------------------------------------------------------- */

static void test_versions_of_a_keyring(void **state)
{
	(void)state;
	char dir[] = "/tmp/isg-keyvers-XXXXXX";
	assert_non_null(mkdtemp(dir));
	char err[512] = "";
	uint32_t version = 0;
	int64_t today = date_days_of_ms(time_now_ms());
	assert_int_equal(keys_new_domain(dir, "zeta-link", err, sizeof(err)), 0);
	assert_int_equal(keys_new_domain(dir, "alpha-link", err, sizeof(err)), 0);
	assert_int_equal(keys_rotate(dir, "zeta-link", today, 30, &version, err, sizeof(err)), 0);
	assert_int_equal(keys_rotate(dir, "zeta-link", today, 0, &version, err, sizeof(err)), 0);
	assert_int_equal(version, 3);
	struct keyring *ring = NULL;
	assert_int_equal(keys_load_domains(dir, &ring, err, sizeof(err)), 0);
	struct key_versions kv;
	assert_int_equal(key_versions_of_ring(ring, today, &kv), 0);
	assert_int_equal(kv.n, 2);
	assert_string_equal(kv.items[0].name, "alpha-link");
	assert_int_equal(kv.items[0].version, 1);
	assert_string_equal(kv.items[1].name, "zeta-link");
	assert_int_equal(kv.items[1].version, 3);
	key_versions_release(&kv);
	keyring_free(ring);
	assert_int_equal(key_versions_of_ring(NULL, today, &kv), 0);
	assert_int_equal(kv.n, 0);
	key_versions_release(&kv);
	key_versions_release(NULL);

	const char *files[] = {"domains/zeta-link.key", "domains/alpha-link.key", "domains", ""};
	for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
		char p[128];
		snprintf(p, sizeof(p), "%s/%s", dir, files[i]);
		assert_int_equal(remove(p), 0);
	}
}

int main(void)
{
	if (sodium_init() < 0)
		return 1;
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_created_rotated_removed),
	    cmocka_unit_test(test_nothing_changed_or_only_removed),
	    cmocka_unit_test(test_first_keys_and_unknown_before),
	    cmocka_unit_test(test_parse_reads_what_entry_keys_writes),
	    cmocka_unit_test(test_parse_refuses_anything_else),
	    cmocka_unit_test(test_versions_of_a_keyring),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
