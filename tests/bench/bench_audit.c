/*
 * bench_audit: `isgctl audit verify` speed in entries per second. Builds a
 * log of N message.accepted entries in a temporary store through the store
 * API (with a signer, so checkpoints are written as isgd writes them),
 * closes it, then runs `isgctl audit verify` on it RUNS times. The baseline
 * in the same run is the floor: hashing the same leaves (SHA-256(0x00 ||
 * leaf)) already in memory. It also times isgd's own check of the store at
 * start (store_open: quick_check, then the tree rebuilt from every entry and
 * checked against the latest checkpoint), which grows with the log as
 * verify does. Each figure is the median of RUNS runs.
 * Usage: isg-bench-audit [N] [ISGCTL]   (default 200000, bin/isgctl next to this program)
 */
#include <inttypes.h>
#include <limits.h>
#include <sodium.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"
#include "audit/audit.h"
#include "store/store.h"
#include "util/util.h"

#define RUNS 5
#define IN_FLIGHT 2048
#define ORIGIN "isg-bench"

static atomic_ulong done, failed;

static void audited(void *ctx, int err, uint64_t index)
{
	(void)ctx;
	(void)index;
	if (err)
		atomic_fetch_add(&failed, 1);
	atomic_fetch_add(&done, 1);
}

/* An entry shaped like isgd's message.accepted (docs/audit.md), about 700 bytes. */
static int entry_text(char *buf, size_t size, unsigned long i)
{
	return snprintf(
	    buf, size,
	    "{\"event\":\"message.accepted\",\"sender\":\"met-police\",\"recipient\":\"nhs-trust\","
	    "\"message_id\":\"bench-%lu\",\"agreement_id\":\"police-nhs-adult-safeguarding\","
	    "\"agreement_version\":1,\"policy_version\":"
	    "\"5f1c0e7a2b9d4c3e8f6a1b2c3d4e5f60718293a4b5c6d7e8f9a0b1c2d3e4f506\","
	    "\"purpose\":\"adult-safeguarding\",\"lawful_basis\":[\"UK GDPR Art. 6(1)(e)\","
	    "\"UK GDPR Art. 9(2)(b)\"],\"dataset\":\"safeguarding-concern\",\"records\":%lu,"
	    "\"bytes\":%lu,\"fields\":{\"pass\":[\"nhs_number\",\"family_name\",\"age\"],"
	    "\"drop\":[\"officer_notes\"],\"generalise\":[],\"pseudonymise\":[]},\"reply_to\":0,"
	    "\"subjects\":[\"pv1.audit.1.3Jx8c2Vq0yT6lZk4mN7pR1sW9uB5dF2hK8gL3aE6oY0\"]}",
	    i, 1 + i % 5, 200 + i % 300);
}

static int build_log(const char *path, unsigned long n, const struct audit_signer *signer)
{
	uint8_t key[32];
	randombytes_buf(key, sizeof(key));
	struct store_options opt = {.path = path, .storage_key = key, .signer = signer};
	struct store *s = NULL;
	char err[256] = "";
	if (store_open(&opt, &s, err, sizeof(err)) != 0) {
		fprintf(stderr, "isg-bench-audit: cannot open the store '%s': %s\n", path, err);
		return 1;
	}
	char buf[1024];
	for (unsigned long i = 0; i < n; i++) {
		while (i - atomic_load(&done) >= IN_FLIGHT)
			usleep(200);
		int len = entry_text(buf, sizeof(buf), i);
		if (store_audit(s, "message.accepted", buf, (size_t)len, audited, NULL) != 0) {
			fprintf(stderr, "isg-bench-audit: store_audit failed at entry %lu\n",
			        i + 1);
			store_close(s);
			return 1;
		}
	}
	store_close(s);
	if (atomic_load(&failed)) {
		fprintf(stderr, "isg-bench-audit: %lu entries failed\n", atomic_load(&failed));
		return 1;
	}
	return 0;
}

/* The leaves, as verify reads them, for the baseline. */
static int load_leaves(const char *path, unsigned long n, char ***leaves, size_t **lens)
{
	sqlite3 *db = NULL;
	sqlite3_stmt *st = NULL;
	*leaves = calloc(n, sizeof(**leaves));
	*lens = calloc(n, sizeof(**lens));
	if (!*leaves || !*lens ||
	    sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK ||
	    sqlite3_prepare_v2(db, "SELECT entry FROM audit ORDER BY seq", -1, &st, NULL) !=
	        SQLITE_OK)
		goto fail;
	unsigned long i = 0;
	while (i < n && sqlite3_step(st) == SQLITE_ROW) {
		size_t len = (size_t)sqlite3_column_bytes(st, 0);
		if (!((*leaves)[i] = malloc(len ? len : 1)))
			goto fail;
		memcpy((*leaves)[i], sqlite3_column_blob(st, 0), len);
		(*lens)[i++] = len;
	}
	sqlite3_finalize(st);
	sqlite3_close(db);
	return i == n ? 0 : 1;
fail:
	sqlite3_finalize(st);
	sqlite3_close(db);
	return 1;
}

/* isgd's start: store_open on the log, as isgd opens it (with the signer), then closed. */
static double run_open(const char *path, const struct audit_signer *signer)
{
	uint8_t key[32];
	randombytes_buf(key, sizeof(key));
	struct store_options opt = {.path = path, .storage_key = key, .signer = signer};
	struct store *s = NULL;
	char err[256] = "";
	double t0 = bench_now_s();
	if (store_open(&opt, &s, err, sizeof(err)) != 0) {
		fprintf(stderr, "isg-bench-audit: cannot reopen the store '%s': %s\n", path, err);
		return -1;
	}
	double t = bench_now_s() - t0;
	store_close(s);
	return t;
}

static double run_verify(const char *isgctl, const char *store, const char *pubkey)
{
	fflush(stdout); /* the child must not write our buffer again */
	double t0 = bench_now_s();
	pid_t pid = fork();
	if (pid == 0) {
		if (!freopen("/dev/null", "w", stdout))
			_exit(127);
		execl(isgctl, isgctl, "audit", "verify", "--store", store, "--origin", ORIGIN,
		      "--pubkey", pubkey, (char *)NULL);
		_exit(127);
	}
	int status = 0;
	if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status) ||
	    WEXITSTATUS(status) != 0) {
		fprintf(stderr, "isg-bench-audit: '%s audit verify' failed\n", isgctl);
		return -1;
	}
	return bench_now_s() - t0;
}

int main(int argc, char **argv)
{
	unsigned long n = argc > 1 ? strtoul(argv[1], NULL, 10) : 200000;
	char isgctl[PATH_MAX], dir[] = "/tmp/isg-bench-audit-XXXXXX", store[PATH_MAX];
	if (argc > 2) {
		snprintf(isgctl, sizeof(isgctl), "%s", argv[2]);
	} else {
		ssize_t k = readlink("/proc/self/exe", isgctl, sizeof(isgctl) - 1);
		isgctl[k > 0 ? k : 0] = '\0';
		char *slash = strrchr(isgctl, '/');
		snprintf(slash ? slash + 1 : isgctl,
		         sizeof(isgctl) - (size_t)(slash ? slash + 1 - isgctl : 0), "isgctl");
	}
	if (n == 0 || sodium_init() < 0 || !mkdtemp(dir))
		return 1;
	snprintf(store, sizeof(store), "%s/isg.db", dir);
	uint8_t seed[AUDIT_SEED_LEN];
	randombytes_buf(seed, sizeof(seed));
	struct audit_signer *signer = NULL;
	int rc0;
	char pubkey[AUDIT_VERIFIER_KEY_MAX];
	rc0 = audit_signer_new(ORIGIN, seed, &signer);
	sodium_memzero(seed, sizeof(seed));
	if (rc0 != 0)
		return 1;
	audit_signer_verifier_key(signer, pubkey);

	double t0 = bench_now_s();
	int rc = build_log(store, n, signer);
	printf("log: %lu message.accepted entries written through store_audit in %.1f s "
	       "(checkpoint every 1000)\n",
	       n, bench_now_s() - t0);
	char **leaves = NULL;
	size_t *lens = NULL, total = 0;
	if (rc == 0)
		rc = load_leaves(store, n, &leaves, &lens);
	for (unsigned long i = 0; rc == 0 && i < n; i++)
		total += lens[i];
	double verify[RUNS], hash[RUNS], open[RUNS];
	volatile uint8_t sink = 0;
	for (int r = 0; rc == 0 && r < RUNS; r++) {
		verify[r] = run_verify(isgctl, store, pubkey);
		open[r] = run_open(store, signer);
		if (verify[r] < 0 || open[r] < 0)
			rc = 1;
		double h0 = bench_now_s();
		for (unsigned long i = 0; i < n; i++) {
			uint8_t out[AUDIT_HASH_LEN];
			audit_leaf_hash((const uint8_t *)leaves[i], lens[i], out);
			sink ^= out[0];
		}
		hash[r] = bench_now_s() - h0;
	}
	if (rc == 0) {
		double v = bench_median(verify, RUNS), h = bench_median(hash, RUNS);
		printf("leaves: %lu, %.0f bytes on average\n", n, (double)total / (double)n);
		printf("isgctl audit verify:     %10.0f entries/s  (median of %d: %.3f s)\n",
		       (double)n / v, RUNS, v);
		printf("baseline, leaf SHA-256:  %10.0f entries/s  (median of %d: %.3f s)\n",
		       (double)n / h, RUNS, h);
		printf("verify takes %.1fx the time of hashing the leaves alone\n", v / h);
		double o = bench_median(open, RUNS);
		printf("isgd's start, store_open: %9.0f entries/s  (median of %d: %.3f s, %.1fx "
		       "hashing the leaves)\n",
		       (double)n / o, RUNS, o, o / h);
		printf("(checksum %u)\n", (unsigned)sink);
	}
	for (unsigned long i = 0; leaves && i < n; i++)
		free(leaves[i]);
	free(leaves);
	free(lens);
	audit_signer_free(signer);
	char cmd[PATH_MAX + 16];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	if (system(cmd) != 0)
		fprintf(stderr, "isg-bench-audit: cannot remove '%s'\n", dir);
	return rc;
}
