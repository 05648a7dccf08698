/*
 * libFuzzer harness for the key process's request parser: the input is one
 * request (op byte and body) exactly as it arrives over a channel, from a
 * gateway that may be compromised. Checks, beyond "no crash": an answer's
 * body is consistent with its status (a failure carries at most a reason;
 * a success of NEW_KEYS or UNWRAP holds exactly the keys asked for, and a
 * key that did not unwrap is zeros; the audit log, started in setup, is
 * never started again), and
 * the process keeps answering well-formed requests after any input.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "keyproc/internal.h"
#include "util/util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static struct keyproc_server *sv;
static struct keyproc_options opt = {.audit_origin = "fuzz-log"};

static char dir[64];

static void remove_keys(void)
{
	static const char *const files[] = {"domains/health.key", "domains/audit.key", "domains",
	                                    "storage.key",        "audit-signing.key", ""};
	char path[128];
	for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
		snprintf(path, sizeof(path), "%s/%s", dir, files[i]);
		if (unlink(path) != 0)
			rmdir(path);
	}
}

/* One keys directory for the whole run, with a domain besides "audit". */
static void setup(void)
{
	if (sv)
		return;
	char err[512];
	snprintf(dir, sizeof(dir), "/tmp/isg-fuzz-keyproc-%d", (int)getpid());
	opt.keys_dir = dir;
	if (keys_init(dir, err, sizeof(err)) != 0 ||
	    keys_new_domain(dir, "health", err, sizeof(err)) != 0 ||
	    !(sv = keyproc_server_new(&opt, err, sizeof(err)))) {
		fprintf(stderr, "fuzz_keyproc: %s\n", err);
		abort();
	}
	atexit(remove_keys);
	/* Generation 1 exists, so PSEUDO and DROP reach their parsers' depths. */
	struct keyproc_answer a;
	const uint8_t load = KEYPROC_LOAD;
	keyproc_server_answer(sv, &load, 1, &a);
	if (a.status != 0)
		abort();
	free(a.body);
	/* The audit log started (empty), so LOG_APPEND and SIGN reach their checks. */
	const uint8_t start[9] = {KEYPROC_LOG_START};
	keyproc_server_answer(sv, start, sizeof(start), &a);
	if (a.status != 0)
		abort();
	free(a.body);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	setup();
	/* Keep generation 1 alive: a DROP of it would make later inputs shallower. */
	if (size >= 5 && data[0] == KEYPROC_DROP)
		return 0;
	/* LOAD reads the disk and fills the generation table; it has no body to parse. */
	if (size >= 1 && data[0] == KEYPROC_LOAD)
		return 0;
	struct keyproc_answer a;
	keyproc_server_answer(sv, data, size, &a);
	if (a.status > 0)
		abort();
	if (a.status == 0 && size >= 5 &&
	    (data[0] == KEYPROC_NEW_KEYS || data[0] == KEYPROC_UNWRAP)) {
		uint32_t n;
		memcpy(&n, data + 1, 4);
		size_t each = data[0] == KEYPROC_NEW_KEYS
		                  ? STORE_SEAL_KEY_LEN + STORE_WRAPPED_KEY_LEN
		                  : 1 + STORE_SEAL_KEY_LEN;
		if (n == 0 || n > KEYPROC_KEYS_MAX || a.len != n * each)
			abort();
		static const uint8_t zeros[STORE_SEAL_KEY_LEN];
		for (uint32_t i = 0; data[0] == KEYPROC_UNWRAP && i < n; i++) {
			const uint8_t *p = a.body + i * each;
			if (p[0] > 1 || (p[0] == 0 && memcmp(p + 1, zeros, sizeof(zeros)) != 0))
				abort();
		}
	}
	if (a.status != 0 && a.len > KEYPROC_REASON_MAX)
		abort();
	/* The log is started once, in setup; a log request's success says nothing more. */
	if (size >= 1 && data[0] == KEYPROC_LOG_START && a.status == 0)
		abort();
	if (size >= 1 && data[0] == KEYPROC_LOG_APPEND && a.status == 0 && a.len != 0)
		abort();
	free(a.body);

	/* Still answering: a one-item batch under generation 1. */
	static const uint8_t probe[] = {KEYPROC_PSEUDO,
	                                1,
	                                0,
	                                0,
	                                0,
	                                0,
	                                0,
	                                0,
	                                0,
	                                0,
	                                0,
	                                0,
	                                0,
	                                1,
	                                0,
	                                0,
	                                0,
	                                6,
	                                'h',
	                                'e',
	                                'a',
	                                'l',
	                                't',
	                                'h',
	                                4,
	                                1,
	                                0,
	                                0,
	                                0,
	                                'x'};
	keyproc_server_answer(sv, probe, sizeof(probe), &a);
	if (a.status != 0)
		abort();
	free(a.body);
	return 0;
}
