/*
 * keys: key file creation, format, secrecy checks and strict parsing; the
 * linkage-domain key files, rotation, and the keyring as a pseudonymisation
 * service checked against the known answers of docs/pseudonyms.md.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <signal.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <pthread.h>
#include <unistd.h>
#include <cmocka.h>

#include <sodium.h>

#include "keys/keys.h"
#include "util/util.h"

struct fixture {
	char root[64]; /* mkdtemp directory */
	char dir[128]; /* root/keys, not created */
	char storage[192];
	char signing[192];
	char domains[192]; /* root/keys/domains */
};

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));
	if (!f)
		return -1;
	str_copy(f->root, "/tmp/isg-keys-XXXXXX", sizeof(f->root));
	if (!mkdtemp(f->root)) {
		free(f);
		return -1;
	}
	snprintf(f->dir, sizeof(f->dir), "%s/keys", f->root);
	snprintf(f->storage, sizeof(f->storage), "%s/%s", f->dir, KEYS_STORAGE_FILE);
	snprintf(f->signing, sizeof(f->signing), "%s/%s", f->dir, KEYS_AUDIT_SIGNING_FILE);
	snprintf(f->domains, sizeof(f->domains), "%s/%s", f->dir, KEYS_DOMAINS_DIR);
	*state = f;
	return 0;
}

static void remove_tree(const char *path)
{
	struct stat st;
	if (lstat(path, &st) != 0)
		return;
	if (S_ISDIR(st.st_mode)) {
		DIR *d = opendir(path);
		struct dirent *e;
		while (d && (e = readdir(d))) {
			if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
				continue;
			char sub[512];
			snprintf(sub, sizeof(sub), "%s/%s", path, e->d_name);
			remove_tree(sub);
		}
		if (d)
			closedir(d);
		rmdir(path);
	} else {
		unlink(path);
	}
}

static int teardown(void **state)
{
	struct fixture *f = *state;
	remove_tree(f->root);
	free(f);
	return 0;
}

static size_t read_file(const char *path, char *buf, size_t size)
{
	FILE *fp = fopen(path, "rb");
	assert_non_null(fp);
	size_t n = fread(buf, 1, size - 1, fp);
	fclose(fp);
	buf[n] = '\0';
	return n;
}

static void write_file(const char *path, const char *content, size_t len, mode_t mode)
{
	unlink(path);
	int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, mode);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, content, len), (ssize_t)len);
	assert_int_equal(fchmod(fd, mode), 0);
	close(fd);
}

static mode_t file_mode(const char *path)
{
	struct stat st;
	assert_int_equal(stat(path, &st), 0);
	return st.st_mode & 07777;
}

/* The base64 key of a file written by keys_init, checking the line's shape. */
static void check_key_line(const char *path, const char *kind, char b64[45])
{
	char buf[256];
	size_t n = read_file(path, buf, sizeof(buf));
	char prefix[64];
	int p = snprintf(prefix, sizeof(prefix), "isg-key-v1 %s ", kind);
	assert_int_equal(n, (size_t)p + 44 + 1);
	assert_memory_equal(buf, prefix, (size_t)p);
	assert_int_equal(buf[n - 1], '\n');
	memcpy(b64, buf + p, 44);
	b64[44] = '\0';
	uint8_t raw[32];
	size_t raw_len = 0;
	assert_int_equal(sodium_base642bin(raw, sizeof(raw), b64, 44, NULL, &raw_len, NULL,
	                                   sodium_base64_VARIANT_ORIGINAL),
	                 0);
	assert_int_equal(raw_len, 32);
}

static void test_init_creates_private_files(void **state)
{
	struct fixture *f = *state;
	char err[512] = "";
	assert_int_equal(keys_init(f->dir, err, sizeof(err)), 0);
	assert_int_equal(file_mode(f->dir), 0700);
	assert_int_equal(file_mode(f->storage), 0600);
	assert_int_equal(file_mode(f->signing), 0600);
	char b64_storage[45], b64_signing[45];
	check_key_line(f->storage, "storage", b64_storage);
	check_key_line(f->signing, "audit-signing-ed25519", b64_signing);
	/* Two independent random keys. */
	assert_string_not_equal(b64_storage, b64_signing);
	/* And the audit log's linkage domain, version 1. */
	assert_int_equal(file_mode(f->domains), 0700);
	char audit[256];
	snprintf(audit, sizeof(audit), "%s/audit.key", f->domains);
	assert_int_equal(file_mode(audit), 0600);
	struct keyring *ring = NULL;
	assert_int_equal(keys_load_domains(f->dir, &ring, err, sizeof(err)), 0);
	assert_int_equal(keyring_domain_count(ring), 1);
	assert_true(keyring_has(ring, "audit"));
	keyring_free(ring);

	/* The storage key loads and is the one in the file. */
	uint8_t *key = NULL;
	assert_int_equal(keys_load_storage(f->dir, &key, err, sizeof(err)), 0);
	assert_non_null(key);
	char b64[45];
	sodium_bin2base64(b64, sizeof(b64), key, KEYS_STORAGE_LEN, sodium_base64_VARIANT_ORIGINAL);
	assert_string_equal(b64, b64_storage);
	keys_free(key);
	keys_free(NULL);
}

static void test_init_refuses_overwrite(void **state)
{
	struct fixture *f = *state;
	char err[512] = "";
	assert_int_equal(keys_init(f->dir, err, sizeof(err)), 0);
	char before[256], after[256];
	read_file(f->storage, before, sizeof(before));
	assert_int_equal(keys_init(f->dir, err, sizeof(err)), ISG_ERR_CONFLICT);
	assert_non_null(strstr(err, "exists"));
	assert_non_null(strstr(err, f->storage));
	read_file(f->storage, after, sizeof(after));
	assert_string_equal(before, after);

	/* Only the signing key present: refused, and no storage key is written either. */
	assert_int_equal(unlink(f->storage), 0);
	assert_int_equal(keys_init(f->dir, err, sizeof(err)), ISG_ERR_CONFLICT);
	assert_non_null(strstr(err, KEYS_AUDIT_SIGNING_FILE));
	struct stat st;
	assert_int_not_equal(stat(f->storage, &st), 0);

	/* Only the audit domain present: refused too, and it is left as it was. */
	assert_int_equal(unlink(f->signing), 0);
	char audit[256];
	snprintf(audit, sizeof(audit), "%s/audit.key", f->domains);
	read_file(audit, before, sizeof(before));
	assert_int_equal(keys_init(f->dir, err, sizeof(err)), ISG_ERR_CONFLICT);
	assert_non_null(strstr(err, "audit.key"));
	assert_int_not_equal(stat(f->storage, &st), 0);
	assert_int_not_equal(stat(f->signing, &st), 0);
	read_file(audit, after, sizeof(after));
	assert_string_equal(before, after);
}

static void test_init_existing_dir_and_not_a_dir(void **state)
{
	struct fixture *f = *state;
	char err[512] = "";
	assert_int_equal(mkdir(f->dir, 0700), 0);
	assert_int_equal(keys_init(f->dir, err, sizeof(err)), 0);
	char file[192];
	snprintf(file, sizeof(file), "%s/plainfile", f->root);
	write_file(file, "x", 1, 0600);
	assert_int_equal(keys_init(file, err, sizeof(err)), ISG_ERR_CONFLICT);
	assert_non_null(strstr(err, "not a directory"));
}

/* keys_init writes all three keys or none: a refused domains directory undoes the rest. */
static void test_init_all_or_nothing(void **state)
{
	struct fixture *f = *state;
	char err[512] = "";
	assert_int_equal(mkdir(f->dir, 0700), 0);
	assert_int_equal(mkdir(f->domains, 0700), 0);
	assert_int_equal(chmod(f->domains, 0777), 0);
	assert_int_equal(keys_init(f->dir, err, sizeof(err)), ISG_ERR_DENIED);
	assert_non_null(strstr(err, f->domains));
	struct stat st;
	assert_int_not_equal(lstat(f->storage, &st), 0);
	assert_int_not_equal(lstat(f->signing, &st), 0);
	assert_int_equal(chmod(f->domains, 0700), 0);
	assert_int_equal(keys_init(f->dir, err, sizeof(err)), 0);
}

static void test_load_refuses_lax_modes(void **state)
{
	struct fixture *f = *state;
	char err[512] = "";
	uint8_t *key = NULL;
	assert_int_equal(keys_init(f->dir, err, sizeof(err)), 0);

	const mode_t bad[] = {0644, 0640, 0604, 0660, 0601, 0610};
	for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
		assert_int_equal(chmod(f->storage, bad[i]), 0);
		err[0] = '\0';
		assert_int_equal(keys_load_storage(f->dir, &key, err, sizeof(err)), ISG_ERR_DENIED);
		assert_null(key);
		char want[512];
		snprintf(want, sizeof(want),
		         "key file '%s' has mode %04o: key files must have no group or other "
		         "permissions (0600 or 0400): chmod 600 '%s'",
		         f->storage, (unsigned)bad[i], f->storage);
		assert_string_equal(err, want);
	}
	/* 0600 and stricter are fine. */
	const mode_t good[] = {0600, 0400};
	for (size_t i = 0; i < ARRAY_LEN(good); i++) {
		assert_int_equal(chmod(f->storage, good[i]), 0);
		assert_int_equal(keys_load_storage(f->dir, &key, err, sizeof(err)), 0);
		keys_free(key);
		key = NULL;
	}
}

/* Whoever can write the keys directory can replace a key: every entry point refuses it. */
static void test_keys_dir_writable_by_others_refused(void **state)
{
	struct fixture *f = *state;
	char err[512] = "", want[300];
	uint8_t *key = NULL;
	struct keyring *ring = NULL;
	assert_int_equal(keys_init(f->dir, err, sizeof(err)), 0);
	const mode_t bad[] = {0777, 0770, 0720, 0702};
	for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
		assert_int_equal(chmod(f->dir, bad[i]), 0);
		snprintf(want, sizeof(want), "key directory '%s' has mode %04o", f->dir,
		         (unsigned)bad[i]);
		err[0] = '\0';
		assert_int_equal(keys_load_storage(f->dir, &key, err, sizeof(err)), ISG_ERR_DENIED);
		assert_null(key);
		assert_non_null(strstr(err, want));
		err[0] = '\0';
		assert_int_equal(keys_load_audit_signing(f->dir, &key, err, sizeof(err)),
		                 ISG_ERR_DENIED);
		assert_non_null(strstr(err, want));
		err[0] = '\0';
		assert_int_equal(keys_load_domains(f->dir, &ring, err, sizeof(err)),
		                 ISG_ERR_DENIED);
		assert_null(ring);
		assert_non_null(strstr(err, want));
		err[0] = '\0';
		assert_int_equal(keys_new_domain(f->dir, "more", err, sizeof(err)), ISG_ERR_DENIED);
		assert_non_null(strstr(err, want));
	}
	/* keys_init (keys_prepare_dir) will not write into such a directory either. */
	char other[200];
	snprintf(other, sizeof(other), "%s-other", f->dir);
	assert_int_equal(mkdir(other, 0700), 0);
	assert_int_equal(chmod(other, 0777), 0);
	err[0] = '\0';
	assert_int_equal(keys_init(other, err, sizeof(err)), ISG_ERR_DENIED);
	assert_non_null(strstr(err, "has mode 0777"));
	assert_int_equal(rmdir(other), 0); /* nothing was written */
	/* 0700 and 0755 are fine. */
	const mode_t good[] = {0700, 0755};
	for (size_t i = 0; i < ARRAY_LEN(good); i++) {
		assert_int_equal(chmod(f->dir, good[i]), 0);
		assert_int_equal(keys_load_storage(f->dir, &key, err, sizeof(err)), 0);
		keys_free(key);
		key = NULL;
		assert_int_equal(keys_load_domains(f->dir, &ring, err, sizeof(err)), 0);
		keyring_free(ring);
		ring = NULL;
	}
}

/* A FIFO in place of a key file is refused at once; opening it blocking would hang. */
static void test_load_refuses_fifo(void **state)
{
	struct fixture *f = *state;
	char err[512] = "";
	uint8_t *key = NULL;
	assert_int_equal(keys_init(f->dir, err, sizeof(err)), 0);
	assert_int_equal(unlink(f->storage), 0);
	assert_int_equal(mkfifo(f->storage, 0600), 0);
	alarm(10); /* a hang ends the test (SIGALRM) rather than the suite's timeout */
	assert_int_equal(keys_load_storage(f->dir, &key, err, sizeof(err)), ISG_ERR_DENIED);
	alarm(0);
	assert_null(key);
	char want[300];
	snprintf(want, sizeof(want), "key file '%s' is not a regular file", f->storage);
	assert_non_null(strstr(err, want));
}

static void test_load_refuses_other_owner(void **state)
{
	struct fixture *f = *state;
	char err[512] = "";
	uint8_t *key = NULL;
	if (geteuid() != 0)
		skip(); /* only root can give a file away */
	assert_int_equal(keys_init(f->dir, err, sizeof(err)), 0);
	assert_int_equal(chown(f->storage, 4242, (gid_t)-1), 0);
	assert_int_equal(keys_load_storage(f->dir, &key, err, sizeof(err)), ISG_ERR_DENIED);
	assert_null(key);
	assert_non_null(strstr(err, "uid 4242"));
}

static void test_load_refuses_links_dirs_and_missing(void **state)
{
	struct fixture *f = *state;
	char err[512] = "";
	uint8_t *key = NULL;
	assert_int_equal(mkdir(f->dir, 0700), 0);
	assert_int_equal(keys_load_storage(f->dir, &key, err, sizeof(err)), ISG_ERR_NOT_FOUND);
	assert_non_null(strstr(err, "isgctl keys init"));

	/* A symlink to a perfectly good key file is still refused. */
	char target[192];
	snprintf(target, sizeof(target), "%s/real.key", f->root);
	assert_int_equal(keys_init(f->dir, err, sizeof(err)), 0);
	assert_int_equal(rename(f->storage, target), 0);
	assert_int_equal(symlink(target, f->storage), 0);
	assert_int_equal(keys_load_storage(f->dir, &key, err, sizeof(err)), ISG_ERR_DENIED);
	assert_non_null(strstr(err, "symbolic link"));
	assert_null(key);

	/* A directory where the file should be. */
	assert_int_equal(unlink(f->storage), 0);
	assert_int_equal(mkdir(f->storage, 0700), 0);
	assert_int_equal(keys_load_storage(f->dir, &key, err, sizeof(err)), ISG_ERR_DENIED);
	assert_non_null(strstr(err, "not a regular file"));
	assert_null(key);
}

static void test_check_secrecy_on_fd(void **state)
{
	struct fixture *f = *state;
	char err[512] = "";
	char path[192];
	snprintf(path, sizeof(path), "%s/x.key", f->root);
	write_file(path, "x", 1, 0600);
	int fd = open(path, O_RDONLY);
	assert_true(fd >= 0);
	assert_int_equal(keys_check_secrecy(fd, "keys/x.key", err, sizeof(err)), 0);
	assert_int_equal(fchmod(fd, 0644), 0);
	assert_int_equal(keys_check_secrecy(fd, "keys/x.key", err, sizeof(err)), ISG_ERR_DENIED);
	assert_non_null(strstr(err, "key file 'keys/x.key' has mode 0644"));
	close(fd);
}

/* Someone else's key file: whom it must belong to, and the chown that does it. */
static void test_secrecy_wrong_owner_says_chown(void **state)
{
	struct fixture *f = *state;
	char err[512] = "", want[512], path[192];
	snprintf(path, sizeof(path), "%s/x.key", f->root);
	write_file(path, "x", 1, 0600);
	int fd = open(path, O_RDONLY);
	assert_true(fd >= 0);
	unsigned me = (unsigned)geteuid(), other = 4242424;
	char mine[96], who[64];
	user_words(me, mine, sizeof(mine), who, sizeof(who));
	assert_int_equal(keys_check_secrecy_for(fd, "keys/x.key", other, err, sizeof(err)),
	                 ISG_ERR_DENIED);
	snprintf(want, sizeof(want),
	         "key file 'keys/x.key' is owned by %s, not by uid %u, who reads it: key files "
	         "are read by their owner, the user isgd starts as: run isgctl as that user, or, "
	         "if uid %u is that user, chown %u 'keys/x.key'",
	         mine, other, other, other);
	assert_string_equal(err, want);

	assert_int_equal(fchmod(fd, 0640), 0);
	assert_int_equal(keys_check_secrecy_for(fd, "keys/x.key", other, err, sizeof(err)),
	                 ISG_ERR_DENIED);
	snprintf(want, sizeof(want),
	         "key file 'keys/x.key' has mode 0640 and is owned by %s, not by uid %u, who "
	         "reads it: key files must have no group or other permissions (0600 or 0400) and "
	         "be read by their owner, the user isgd starts as: chmod 600 'keys/x.key'; then "
	         "run isgctl as that user, or, if uid %u is that user, chown %u 'keys/x.key'",
	         mine, other, other, other);
	assert_string_equal(err, want);
	close(fd);
}

/* Malformed files: every one refused with a parse error naming the file, never the key. */
static void test_load_refuses_malformed(void **state)
{
	struct fixture *f = *state;
	char err[512] = "";
	uint8_t *key = NULL;
	/* base64 of 32 bytes 0x11..., 31 bytes, 33 bytes */
	uint8_t raw[33];
	memset(raw, 0x5a, sizeof(raw));
	char k32[64], k31[64], k33[64];
	sodium_bin2base64(k32, sizeof(k32), raw, 32, sodium_base64_VARIANT_ORIGINAL);
	sodium_bin2base64(k31, sizeof(k31), raw, 31, sodium_base64_VARIANT_ORIGINAL);
	sodium_bin2base64(k33, sizeof(k33), raw, 33, sodium_base64_VARIANT_ORIGINAL);
	char k32url[64];
	sodium_bin2base64(k32url, sizeof(k32url), raw, 32, sodium_base64_VARIANT_URLSAFE);

	char cases[16][256];
	size_t n = 0;
	snprintf(cases[n++], 256, "%s", "");
	snprintf(cases[n++], 256, "isg-key-v2 storage %s\n", k32);
	snprintf(cases[n++], 256, "isg-key-v1 audit-signing-ed25519 %s\n", k32);
	snprintf(cases[n++], 256, "isg-key-v1 Storage %s\n", k32);
	snprintf(cases[n++], 256, "isg-key-v1 storage %s", k32);       /* no newline */
	snprintf(cases[n++], 256, "isg-key-v1 storage %s\r\n", k32);   /* CRLF */
	snprintf(cases[n++], 256, "isg-key-v1 storage %s\n\n", k32);   /* two lines */
	snprintf(cases[n++], 256, "isg-key-v1  storage %s\n", k32);    /* double space */
	snprintf(cases[n++], 256, "isg-key-v1 storage  %s\n", k32);    /* double space */
	snprintf(cases[n++], 256, "isg-key-v1 storage %s\n", k31);     /* short key */
	snprintf(cases[n++], 256, "isg-key-v1 storage %s\n", k33);     /* long key */
	snprintf(cases[n++], 256, "isg-key-v1 storage %.43s!\n", k32); /* bad character */
	snprintf(cases[n++], 256, "isg-key-v1 storage %.43sA\n", k32); /* non-canonical end */
	snprintf(cases[n++], 256, "isg-key-v1 storage %s\n", k32url + 1);
	snprintf(cases[n++], 256, "isg-key-v1 storage\n");

	assert_int_equal(mkdir(f->dir, 0700), 0);
	for (size_t i = 0; i < n; i++) {
		write_file(f->storage, cases[i], strlen(cases[i]), 0600);
		err[0] = '\0';
		int rc = keys_load_storage(f->dir, &key, err, sizeof(err));
		if (rc != ISG_ERR_PARSE)
			fail_msg("case %zu: got %d (%s)", i, rc, err);
		assert_null(key);
		assert_non_null(strstr(err, f->storage));
		/* No run of key material in the message. */
		char probe[9];
		str_copy(probe, k32, sizeof(probe));
		assert_null(strstr(err, probe));
	}

	/* A file much longer than a key line. */
	char big[4096];
	memset(big, 'A', sizeof(big));
	write_file(f->storage, big, sizeof(big), 0600);
	assert_int_equal(keys_load_storage(f->dir, &key, err, sizeof(err)), ISG_ERR_PARSE);
	assert_null(key);

	/* And the well-formed line loads. */
	snprintf(cases[0], 256, "isg-key-v1 storage %s\n", k32);
	write_file(f->storage, cases[0], strlen(cases[0]), 0600);
	assert_int_equal(keys_load_storage(f->dir, &key, err, sizeof(err)), 0);
	assert_memory_equal(key, raw, 32);
	keys_free(key);
}

static void test_loaded_key_is_read_only(void **state)
{
	struct fixture *f = *state;
	char err[512] = "";
	uint8_t *key = NULL;
	assert_int_equal(keys_init(f->dir, err, sizeof(err)), 0);
	assert_int_equal(keys_load_storage(f->dir, &key, err, sizeof(err)), 0);
	/* A write to the key faults: the child must not get to exit(0). */
	fflush(NULL);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		int devnull = open("/dev/null", O_WRONLY);
		dup2(devnull, 1);
		dup2(devnull, 2); /* the sanitizer's report is expected */
		/* cmocka catches SIGSEGV to report a failure; here it is the answer. */
		signal(SIGSEGV, SIG_DFL);
		signal(SIGBUS, SIG_DFL);
		((volatile uint8_t *)key)[0] ^= 1;
		_exit(0);
	}
	int status = 0;
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_false(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	keys_free(key);
}

/* --- linkage-domain keys ---------------------------------------------------- */

#define NHS "9434765919"
/* docs/pseudonyms.md: 9434765919 under the key 00 01 ... 1f, and under 20 21 ... 3f. */
#define P1_NHS "p1_3OclCLKM5wMlaCmiStTYz8SUpPKTbA4OyifUBQE5d_w"
#define P7_NHS "p7_3OclCLKM5wMlaCmiStTYz8SUpPKTbA4OyifUBQE5d_w"
#define P1_NHS_KEY2 "p1__DNY__N4I0D3mAszsrSkmHj4GGXxdQhAMWKwFEnn_k0"

static int64_t day(const char *date)
{
	int64_t d = 0;
	assert_int_equal(date_parse_days(date, &d), 0);
	return d;
}

/* base64 of the 32 bytes first, first+1, ... */
static void key_b64(uint8_t first, char b64[45])
{
	uint8_t raw[32];
	for (unsigned i = 0; i < sizeof(raw); i++)
		raw[i] = (uint8_t)(first + i);
	sodium_bin2base64(b64, 45, raw, sizeof(raw), sodium_base64_VARIANT_ORIGINAL);
}

static void domain_path(const struct fixture *f, const char *name, char *out, size_t size)
{
	snprintf(out, size, "%s/%s.key", f->domains, name);
}

/* Write domains/NAME.key (making the directories) with the given content. */
static void write_domain(const struct fixture *f, const char *name, const char *content,
                         mode_t mode)
{
	char path[256];
	mkdir(f->dir, 0700);
	mkdir(f->domains, 0700);
	domain_path(f, name, path, sizeof(path));
	write_file(path, content, strlen(content), mode);
}

/* A file with one version: the test key 00..1f as version `version`. */
static void write_known_domain(const struct fixture *f, const char *name, unsigned version)
{
	char b64[45], line[256];
	key_b64(0x00, b64);
	snprintf(line, sizeof(line), "isg-domain-key-v1 %s %u 2026-01-01 - %s\n", name, version,
	         b64);
	write_domain(f, name, line, 0600);
}

static struct keyring *load_ok(const struct fixture *f)
{
	char err[512] = "";
	struct keyring *ring = NULL;
	int rc = keys_load_domains(f->dir, &ring, err, sizeof(err));
	if (rc)
		fail_msg("keys_load_domains: %d: %s", rc, err);
	assert_non_null(ring);
	return ring;
}

static void request(struct pseudo_request *r, const char *domain, const char *norm)
{
	memset(r, 0, sizeof(*r));
	r->domain = domain;
	r->type = PSEUDO_NHS_NUMBER;
	r->norm = norm;
	r->len = strlen(norm);
}

/* The pseudonyms of NHS under domain on day today: out and previous. */
static void pseudonymise(const struct keyring *ring, const char *domain, int64_t today,
                         char out[PSEUDO_TEXT_MAX], char previous[PSEUDO_TEXT_MAX])
{
	struct pseudo_service svc = keyring_service(ring);
	struct pseudo_request r;
	request(&r, domain, NHS);
	assert_int_equal(svc.pseudonymise(svc.ctx, &r, 1, today), 0);
	str_copy(out, r.out, PSEUDO_TEXT_MAX);
	str_copy(previous, r.previous, PSEUDO_TEXT_MAX);
}

static void test_new_domain_creates_private_file(void **state)
{
	struct fixture *f = *state;
	char err[512] = "";
	assert_int_equal(mkdir(f->dir, 0700), 0);
	assert_int_equal(keys_new_domain(f->dir, "police-nhs-2026", err, sizeof(err)), 0);
	assert_int_equal(file_mode(f->domains), 0700);
	char path[256], buf[512];
	domain_path(f, "police-nhs-2026", path, sizeof(path));
	assert_int_equal(file_mode(path), 0600);

	/* One line: magic, name, version 1, created today (UTC), "-", the key. */
	size_t n = read_file(path, buf, sizeof(buf));
	char today[32], want[128];
	time_format_ms(today, sizeof(today), time_now_ms());
	today[10] = '\0';
	int p = snprintf(want, sizeof(want), "isg-domain-key-v1 police-nhs-2026 1 %s - ", today);
	assert_int_equal(n, (size_t)p + 44 + 1);
	assert_memory_equal(buf, want, (size_t)p);
	assert_int_equal(buf[n - 1], '\n');

	struct keyring *ring = load_ok(f);
	assert_int_equal(keyring_domain_count(ring), 1);
	size_t versions = 0;
	assert_string_equal(keyring_domain_name(ring, 0, &versions), "police-nhs-2026");
	assert_int_equal(versions, 1);
	assert_null(keyring_domain_name(ring, 1, &versions));
	struct keys_version_info info;
	assert_int_equal(keyring_version_info(ring, 0, 0, day(today), &info), 0);
	assert_int_equal(info.version, 1);
	assert_int_equal(info.created, day(today));
	assert_true(info.retires == KEYS_RETIRES_NEVER);
	assert_int_equal(info.state, KEYS_VERSION_CURRENT);
	assert_int_equal(keyring_version_info(ring, 0, 1, day(today), &info), ISG_ERR_NOT_FOUND);
	char out[PSEUDO_TEXT_MAX], prev[PSEUDO_TEXT_MAX];
	pseudonymise(ring, "police-nhs-2026", day(today), out, prev);
	assert_int_equal(strncmp(out, "p1_", 3), 0);
	assert_int_equal(strlen(out), 3 + 43);
	assert_string_equal(prev, "");
	keyring_free(ring);

	/* An existing domain is never overwritten. */
	char before[512], after[512];
	read_file(path, before, sizeof(before));
	assert_int_equal(keys_new_domain(f->dir, "police-nhs-2026", err, sizeof(err)),
	                 ISG_ERR_CONFLICT);
	assert_non_null(strstr(err, "exists"));
	read_file(path, after, sizeof(after));
	assert_string_equal(before, after);

	/* Names: [a-z0-9][a-z0-9-]{0,62}. */
	char longest[64], too_long[65];
	memset(longest, 'a', 63);
	longest[63] = '\0';
	memset(too_long, 'a', 64);
	too_long[64] = '\0';
	assert_int_equal(keys_new_domain(f->dir, longest, err, sizeof(err)), 0);
	assert_int_equal(keys_new_domain(f->dir, "0", err, sizeof(err)), 0);
	const char *bad[] = {"", "-x", "Police", "a_b", "a.b", "a/b", "..", "a b", too_long, NULL};
	for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
		err[0] = '\0';
		assert_int_equal(keys_new_domain(f->dir, bad[i], err, sizeof(err)),
		                 ISG_ERR_INVALID);
		assert_non_null(strstr(err, "not a valid domain name"));
	}
	ring = load_ok(f);
	assert_int_equal(keyring_domain_count(ring), 3);
	assert_string_equal(keyring_domain_name(ring, 0, NULL), "0");
	assert_string_equal(keyring_domain_name(ring, 1, NULL), longest);
	keyring_free(ring);
}

static void test_load_missing_and_empty(void **state)
{
	struct fixture *f = *state;
	/* No keys directory: said so, with how to make one; not "no domains". */
	char err[512] = "";
	struct keyring *ring = NULL;
	assert_int_equal(keys_load_domains(f->dir, &ring, err, sizeof(err)), ISG_ERR_NOT_FOUND);
	assert_null(ring);
	assert_non_null(strstr(err,
	                       "does not exist; restore it from its backup, or create one for a "
	                       "new gateway with 'isgctl keys init'"));

	/* No domains directory: an empty keyring. */
	assert_int_equal(mkdir(f->dir, 0700), 0);
	ring = load_ok(f);
	assert_int_equal(keyring_domain_count(ring), 0);
	assert_false(keyring_has(ring, "audit"));
	struct pseudo_service svc = keyring_service(ring);
	struct pseudo_request r;
	request(&r, "audit", NHS);
	assert_int_equal(svc.pseudonymise(svc.ctx, &r, 1, day("2026-01-01")), ISG_ERR_NOT_FOUND);
	assert_int_equal(svc.pseudonymise(svc.ctx, &r, 0, day("2026-01-01")), 0);
	keyring_free(ring);
	keyring_free(NULL);
	assert_false(keyring_has(NULL, "audit"));
	assert_int_equal(keyring_domain_count(NULL), 0);

	/* Other files are ignored: a rotation's temporary file, notes. */
	assert_int_equal(mkdir(f->domains, 0700), 0);
	char tmp[256], note[256];
	snprintf(tmp, sizeof(tmp), "%s/x.key.tmp", f->domains);
	snprintf(note, sizeof(note), "%s/README", f->domains);
	write_file(tmp, "garbage", 7, 0644);
	write_file(note, "garbage", 7, 0644);
	ring = load_ok(f);
	assert_int_equal(keyring_domain_count(ring), 0);
	keyring_free(ring);
}

static void test_load_refuses_lax_permissions(void **state)
{
	struct fixture *f = *state;
	char err[512] = "";
	struct keyring *ring = NULL;
	write_known_domain(f, "shared", 1);
	char path[256];
	domain_path(f, "shared", path, sizeof(path));

	const mode_t bad[] = {0644, 0640, 0604, 0660};
	for (size_t i = 0; i < ARRAY_LEN(bad); i++) {
		assert_int_equal(chmod(path, bad[i]), 0);
		err[0] = '\0';
		assert_int_equal(keys_load_domains(f->dir, &ring, err, sizeof(err)),
		                 ISG_ERR_DENIED);
		assert_null(ring);
		char want[16];
		snprintf(want, sizeof(want), "mode %04o", (unsigned)bad[i]);
		assert_non_null(strstr(err, want));
		assert_non_null(strstr(err, path));
	}
	assert_int_equal(chmod(path, 0400), 0);
	keyring_free(load_ok(f));
	assert_int_equal(chmod(path, 0600), 0);

	/* The domains directory: not writable by group or others; readable is fine. */
	const mode_t bad_dir[] = {0770, 0720, 0702, 0777};
	for (size_t i = 0; i < ARRAY_LEN(bad_dir); i++) {
		assert_int_equal(chmod(f->domains, bad_dir[i]), 0);
		err[0] = '\0';
		assert_int_equal(keys_load_domains(f->dir, &ring, err, sizeof(err)),
		                 ISG_ERR_DENIED);
		assert_null(ring);
		assert_non_null(strstr(err, f->domains));
		assert_non_null(strstr(err, "writable by group or others"));
		/* Nor will new-domain or rotate write into it. */
		assert_int_equal(keys_new_domain(f->dir, "other", err, sizeof(err)),
		                 ISG_ERR_DENIED);
		uint32_t v = 0;
		assert_int_equal(
		    keys_rotate(f->dir, "shared", day("2026-02-01"), 0, &v, err, sizeof(err)),
		    ISG_ERR_DENIED);
	}
	assert_int_equal(chmod(f->domains, 0755), 0);
	keyring_free(load_ok(f));
	assert_int_equal(chmod(f->domains, 0700), 0);

	/* A symbolic link for the directory or a file is refused. */
	char real[256];
	snprintf(real, sizeof(real), "%s/real-domains", f->root);
	assert_int_equal(rename(f->domains, real), 0);
	assert_int_equal(symlink(real, f->domains), 0);
	assert_int_equal(keys_load_domains(f->dir, &ring, err, sizeof(err)), ISG_ERR_DENIED);
	assert_non_null(strstr(err, "symbolic link"));
	assert_int_equal(unlink(f->domains), 0);
	assert_int_equal(rename(real, f->domains), 0);
	char target[256];
	snprintf(target, sizeof(target), "%s/target.key", f->root);
	assert_int_equal(rename(path, target), 0);
	assert_int_equal(symlink(target, path), 0);
	assert_int_equal(keys_load_domains(f->dir, &ring, err, sizeof(err)), ISG_ERR_DENIED);
	assert_non_null(strstr(err, "symbolic link"));
	assert_null(ring);

	/* A FIFO named like a key file is refused, not waited on. */
	assert_int_equal(unlink(path), 0);
	assert_int_equal(mkfifo(path, 0600), 0);
	assert_int_equal(keys_load_domains(f->dir, &ring, err, sizeof(err)), ISG_ERR_DENIED);
	assert_non_null(strstr(err, "not a regular file"));
	assert_int_equal(unlink(path), 0);

	/* A key file whose name is not a domain name. */
	write_known_domain(f, "Shared", 1);
	assert_int_equal(keys_load_domains(f->dir, &ring, err, sizeof(err)), ISG_ERR_INVALID);
	assert_non_null(strstr(err, "Shared.key"));
	assert_null(ring);
}

static void test_load_refuses_malformed_domain(void **state)
{
	struct fixture *f = *state;
	char k[45], k2[45], short_key[64], long_key[64], url_key[64];
	key_b64(0x00, k);
	key_b64(0xc0, k2); /* contains '/' or '+': bytes c0..df */
	uint8_t raw[33];
	memset(raw, 0xfb, sizeof(raw));
	sodium_bin2base64(short_key, sizeof(short_key), raw, 31, sodium_base64_VARIANT_ORIGINAL);
	sodium_bin2base64(long_key, sizeof(long_key), raw, 33, sodium_base64_VARIANT_ORIGINAL);
	sodium_bin2base64(url_key, sizeof(url_key), raw, 32, sodium_base64_VARIANT_URLSAFE);
	const char *v1 = "isg-domain-key-v1 d 1 2026-01-01 2026-03-01 ";
	const char *v2 = "isg-domain-key-v1 d 2 2026-02-01 - ";

	struct {
		char content[512];
		unsigned line, col;
		const char *why;
	} c[40];
	size_t n = 0;
#define CASE(line_, col_, why_, ...)                                                               \
	do {                                                                                       \
		snprintf(c[n].content, sizeof(c[n].content), __VA_ARGS__);                         \
		c[n].line = line_;                                                                 \
		c[n].col = col_;                                                                   \
		c[n].why = why_;                                                                   \
		n++;                                                                               \
	} while (0)
	CASE(1, 1, "file is empty", "%s", "");
	CASE(1, 1, "does not end in a newline", "isg-domain-key-v1 d 1 2026-01-01 - %s", k);
	CASE(2, 1, "does not end in a newline", "%s%s\n%s%s", v1, k, v2, k2);
	CASE(1, 1, "expected 'isg-domain-key-v1'", "isg-domain-key-v2 d 1 2026-01-01 - %s\n", k);
	CASE(1, 1, "expected 'isg-domain-key-v1'", "isg-key-v1 d 1 2026-01-01 - %s\n", k);
	CASE(1, 19, "does not match the file name; expected 'd'",
	     "isg-domain-key-v1 e 1 2026-01-01 - %s\n", k);
	CASE(1, 19, "does not match", "isg-domain-key-v1 D 1 2026-01-01 - %s\n", k);
	CASE(1, 21, "version must be a whole number", "isg-domain-key-v1 d 0 2026-01-01 - %s\n", k);
	CASE(1, 21, "version must be a whole number", "isg-domain-key-v1 d 01 2026-01-01 - %s\n",
	     k);
	CASE(1, 21, "version must be a whole number",
	     "isg-domain-key-v1 d 4294967296 2026-01-01 - %s\n", k);
	CASE(1, 21, "version must be a whole number", "isg-domain-key-v1 d +1 2026-01-01 - %s\n",
	     k);
	CASE(2, 21, "version must be 2, one more than the line before",
	     "%s%s\nisg-domain-key-v1 d 3 2026-02-01 - %s\n", v1, k, k2);
	CASE(2, 21, "version must be 2", "%s%s\nisg-domain-key-v1 d 1 2026-02-01 - %s\n", v1, k,
	     k2);
	CASE(1, 23, "creation date must be a date", "isg-domain-key-v1 d 1 2026-02-30 - %s\n", k);
	CASE(1, 23, "creation date must be a date", "isg-domain-key-v1 d 1 2026-1-01 - %s\n", k);
	CASE(1, 23, "creation date must be a date", "isg-domain-key-v1 d 1 01/01/2026 - %s\n", k);
	CASE(1, 34, "last line is the current version",
	     "isg-domain-key-v1 d 1 2026-01-01 2026-03-01 %s\n", k);
	CASE(1, 34, "only the last line", "isg-domain-key-v1 d 1 2026-01-01 - %s\n%s%s\n", k, v2,
	     k2);
	CASE(1, 34, "retirement date must be a date",
	     "isg-domain-key-v1 d 1 2026-01-01 2026-13-01 %s\n%s%s\n", k, v2, k2);
	CASE(1, 34, "before the creation date",
	     "isg-domain-key-v1 d 1 2026-01-01 2025-12-31 %s\n%s%s\n", k, v2, k2);
	CASE(1, 36, "key must be 44 characters", "isg-domain-key-v1 d 1 2026-01-01 - %s\n",
	     short_key);
	CASE(1, 36, "key must be 44 characters", "isg-domain-key-v1 d 1 2026-01-01 - %s\n",
	     long_key);
	CASE(1, 36, "key must be 44 characters", "isg-domain-key-v1 d 1 2026-01-01 - %s\n",
	     url_key);
	CASE(1, 36, "key must be 44 characters", "isg-domain-key-v1 d 1 2026-01-01 - %.43s!\n", k);
	CASE(1, 36, "key must be 44 characters", "isg-domain-key-v1 d 1 2026-01-01 - %.43sA\n", k);
	CASE(1, 36, "key must be 44 characters", "isg-domain-key-v1 d 1 2026-01-01 - %.42sB=\n",
	     k); /* non-zero padding bits */
	CASE(1, 80, "unexpected control character", "isg-domain-key-v1 d 1 2026-01-01 - %s\r\n", k);
	CASE(1, 18, "unexpected control character", "isg-domain-key-v1\td 1 2026-01-01 - %s\n", k);
	CASE(1, 19, "empty field", "isg-domain-key-v1  d 1 2026-01-01 - %s\n", k);
	CASE(1, 1, "empty field", " isg-domain-key-v1 d 1 2026-01-01 - %s\n", k);
	CASE(1, 81, "empty field", "isg-domain-key-v1 d 1 2026-01-01 - %s \n", k);
	CASE(1, 81, "too many fields", "isg-domain-key-v1 d 1 2026-01-01 - %s x\n", k);
	CASE(1, 35, "too few fields", "isg-domain-key-v1 d 1 2026-01-01 -\n%s", "");
	CASE(2, 1, "empty line", "%s%s\n\n", v1, k);
	/* A blank line after the current version is blamed on itself, not on the line before. */
	CASE(2, 1, "empty line; each line is one key version",
	     "isg-domain-key-v1 d 1 2026-01-01 - %s\n\n", k);
	CASE(3, 1, "empty line", "%s%s\n%s%s\n\n", v1, k, v2, k2);
	CASE(1, 1, "empty line", "\n%s", "");
#undef CASE
	assert_true(n <= ARRAY_LEN(c));

	char path[256];
	domain_path(f, "d", path, sizeof(path));
	for (size_t i = 0; i < n; i++) {
		write_domain(f, "d", c[i].content, 0600);
		char err[512] = "";
		struct keyring *ring = NULL;
		int rc = keys_load_domains(f->dir, &ring, err, sizeof(err));
		char where[300];
		snprintf(where, sizeof(where), "%s:%u:%u: ", path, c[i].line, c[i].col);
		if (rc != ISG_ERR_PARSE || strncmp(err, where, strlen(where)) != 0 ||
		    !strstr(err, c[i].why))
			fail_msg("case %zu: got %d '%s'; want %s%s", i, rc, err, where, c[i].why);
		assert_null(ring);
		/* No run of key material in the message. */
		char probe[9];
		str_copy(probe, k + 20, sizeof(probe));
		assert_null(strstr(err, probe));
		str_copy(probe, k2 + 20, sizeof(probe));
		assert_null(strstr(err, probe));
	}

	/* The two-version file that the cases above break loads. */
	char good[512];
	snprintf(good, sizeof(good), "%s%s\n%s%s\n", v1, k, v2, k2);
	write_domain(f, "d", good, 0600);
	struct keyring *ring = load_ok(f);
	size_t versions = 0;
	assert_non_null(keyring_domain_name(ring, 0, &versions));
	assert_int_equal(versions, 2);
	keyring_free(ring);

	/* A file over the size limit. */
	char *big = malloc(200 * 1024);
	assert_non_null(big);
	memset(big, 'A', 200 * 1024);
	big[200 * 1024 - 1] = '\0';
	write_domain(f, "d", big, 0600);
	free(big);
	char err[512] = "";
	assert_int_equal(keys_load_domains(f->dir, &ring, err, sizeof(err)), ISG_ERR_PARSE);
	assert_non_null(strstr(err, "larger than"));
}

static void test_service_known_answers(void **state)
{
	struct fixture *f = *state;
	write_known_domain(f, "known", 1);
	write_known_domain(f, "seven", 7); /* a file may start past version 1 (pruned) */
	char b64[45], line[256];
	key_b64(0x20, b64);
	snprintf(line, sizeof(line), "isg-domain-key-v1 second 1 2026-01-01 - %s\n", b64);
	write_domain(f, "second", line, 0600);

	struct keyring *ring = load_ok(f);
	char out[PSEUDO_TEXT_MAX], prev[PSEUDO_TEXT_MAX];
	pseudonymise(ring, "known", day("2026-06-01"), out, prev);
	assert_string_equal(out, P1_NHS);
	assert_string_equal(prev, "");
	pseudonymise(ring, "seven", day("2026-06-01"), out, prev);
	assert_string_equal(out, P7_NHS);
	pseudonymise(ring, "second", day("2026-06-01"), out, prev);
	assert_string_equal(out, P1_NHS_KEY2);
	/* One batch across domains, each request answered under its own. */
	static const char *const batch[] = {"known", "known", "second", "seven", "seven", "known"};
	static const char *const batch_want[] = {P1_NHS, P1_NHS, P1_NHS_KEY2,
	                                         P7_NHS, P7_NHS, P1_NHS};
	struct pseudo_request rs[ARRAY_LEN(batch)];
	for (size_t i = 0; i < ARRAY_LEN(batch); i++)
		request(&rs[i], batch[i], NHS);
	struct pseudo_service bsvc = keyring_service(ring);
	assert_int_equal(bsvc.pseudonymise(bsvc.ctx, rs, ARRAY_LEN(rs), day("2026-06-01")), 0);
	for (size_t i = 0; i < ARRAY_LEN(batch); i++)
		assert_string_equal(rs[i].out, batch_want[i]);

	/* Every type, as pseudo_format(pseudo_hash(...)) gives it for the known key. */
	uint8_t key[PSEUDO_KEY_LEN];
	for (unsigned i = 0; i < sizeof(key); i++)
		key[i] = (uint8_t)i;
	const struct {
		enum pseudo_type t;
		const char *norm;
		const char *want;
	} v[] = {
	    {PSEUDO_PNC_ID, "1979/0163001B", "p1_Ozh5VLAXW3PoH1KoKPkqmbyl8dtVX694rMjzBZJjw54"},
	    {PSEUDO_POSTCODE, "SW1A 1AA", "p1_u_RuvuxcubBc4VtSZaf3ys8aNMxFcT0F6ZFGEv-Nkbw"},
	    {PSEUDO_NAME, "siobhan obrien murphy",
	     "p1_A8MR2OdR7RElh03kd492c6pGdnsgPMOx5wab2gC27AI"},
	    {PSEUDO_IDENTIFIER, "ab 12 cd", "p1__YrUhLbMkX2hcRl0hQM8u70rlLW7qb1-yva9uCwHcjk"},
	    {PSEUDO_IDENTIFIER, "", NULL},
	};
	struct pseudo_request r[ARRAY_LEN(v)];
	for (size_t i = 0; i < ARRAY_LEN(v); i++) {
		request(&r[i], "known", v[i].norm);
		r[i].type = v[i].t;
	}
	struct pseudo_service svc = keyring_service(ring);
	assert_int_equal(svc.pseudonymise(svc.ctx, r, ARRAY_LEN(r), day("2026-06-01")), 0);
	for (size_t i = 0; i < ARRAY_LEN(v); i++) {
		uint8_t hash[PSEUDO_HASH_LEN];
		char want[PSEUDO_TEXT_MAX];
		pseudo_hash(key, v[i].t, v[i].norm, strlen(v[i].norm), hash);
		pseudo_format(hash, 1, want);
		assert_string_equal(r[i].out, want);
		if (v[i].want)
			assert_string_equal(r[i].out, v[i].want);
		assert_string_equal(r[i].previous, "");
	}
	keyring_free(ring);
}

static void test_service_refuses_whole_batch(void **state)
{
	struct fixture *f = *state;
	write_known_domain(f, "known", 1);
	struct keyring *ring = load_ok(f);
	struct pseudo_service svc = keyring_service(ring);
	struct pseudo_request r[3];
	request(&r[0], "known", NHS);
	request(&r[1], "unknown", NHS);
	request(&r[2], "known", NHS);
	memset(r[0].out, 'x', sizeof(r[0].out) - 1);
	r[0].out[sizeof(r[0].out) - 1] = '\0';
	char sentinel[PSEUDO_TEXT_MAX];
	str_copy(sentinel, r[0].out, sizeof(sentinel));
	assert_int_equal(svc.pseudonymise(svc.ctx, r, 3, day("2026-06-01")), ISG_ERR_NOT_FOUND);
	assert_string_equal(r[0].out, sentinel); /* nothing filled */
	assert_string_equal(r[2].out, "");
	request(&r[1], NULL, NHS);
	assert_int_equal(svc.pseudonymise(svc.ctx, r, 3, day("2026-06-01")), ISG_ERR_NOT_FOUND);
	char long_name[200];
	memset(long_name, 'k', sizeof(long_name) - 1);
	long_name[sizeof(long_name) - 1] = '\0';
	request(&r[1], long_name, NHS);
	assert_int_equal(svc.pseudonymise(svc.ctx, r, 3, day("2026-06-01")), ISG_ERR_NOT_FOUND);
	/* Requests pseudo_hash could not take are refused, not fatal. */
	request(&r[1], "known", NHS);
	r[1].len = PSEUDO_VALUE_MAX + 1;
	assert_int_equal(svc.pseudonymise(svc.ctx, r, 3, day("2026-06-01")), ISG_ERR_INVALID);
	request(&r[1], "known", NHS);
	r[1].norm = NULL;
	assert_int_equal(svc.pseudonymise(svc.ctx, r, 3, day("2026-06-01")), ISG_ERR_INVALID);
	request(&r[1], "known", NHS);
	r[1].type = (enum pseudo_type)0x100;
	assert_int_equal(svc.pseudonymise(svc.ctx, r, 3, day("2026-06-01")), ISG_ERR_INVALID);
	assert_string_equal(r[0].out, sentinel);
	request(&r[1], "known", NHS);
	assert_int_equal(svc.pseudonymise(svc.ctx, r, 3, day("2026-06-01")), 0);
	assert_string_equal(r[0].out, P1_NHS);
	assert_string_equal(r[1].out, P1_NHS);
	assert_string_equal(r[2].out, P1_NHS);
	keyring_free(ring);
}

static void test_domains_unrelated_and_stable(void **state)
{
	struct fixture *f = *state;
	char err[512] = "";
	assert_int_equal(keys_init(f->dir, err, sizeof(err)), 0);
	assert_int_equal(keys_new_domain(f->dir, "police-nhs", err, sizeof(err)), 0);
	assert_int_equal(keys_new_domain(f->dir, "council-nhs", err, sizeof(err)), 0);
	int64_t today = day("2026-06-01");

	struct keyring *ring = load_ok(f);
	assert_int_equal(keyring_domain_count(ring), 3);
	assert_string_equal(keyring_domain_name(ring, 0, NULL), "audit");
	assert_string_equal(keyring_domain_name(ring, 1, NULL), "council-nhs");
	assert_string_equal(keyring_domain_name(ring, 2, NULL), "police-nhs");
	char a[PSEUDO_TEXT_MAX], b[PSEUDO_TEXT_MAX], c[PSEUDO_TEXT_MAX], prev[PSEUDO_TEXT_MAX];
	pseudonymise(ring, "police-nhs", today, a, prev);
	pseudonymise(ring, "council-nhs", today, b, prev);
	pseudonymise(ring, "audit", today, c, prev);
	assert_string_not_equal(a, b);
	assert_string_not_equal(a, c);
	assert_string_not_equal(b, c);
	/* Same domain, same value: the same pseudonym, also after a restart. */
	char again[PSEUDO_TEXT_MAX];
	pseudonymise(ring, "police-nhs", today, again, prev);
	assert_string_equal(a, again);
	keyring_free(ring);
	ring = load_ok(f);
	pseudonymise(ring, "police-nhs", today + 100, again, prev);
	assert_string_equal(a, again);
	pseudonymise(ring, "council-nhs", today, again, prev);
	assert_string_equal(b, again);
	keyring_free(ring);
}

static void test_rotate_overlap(void **state)
{
	struct fixture *f = *state;
	char err[512] = "";
	write_known_domain(f, "d", 1);
	char path[256], tmp[300];
	domain_path(f, "d", path, sizeof(path));
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	int64_t t = day("2026-03-10");

	uint32_t version = 0;
	assert_int_equal(keys_rotate(f->dir, "d", t, 30, &version, err, sizeof(err)), 0);
	assert_int_equal(version, 2);
	assert_int_equal(file_mode(path), 0600);
	struct stat st;
	assert_int_not_equal(lstat(tmp, &st), 0);
	/* The old line keeps its key and gets its retirement date; the new one is current. */
	char buf[1024], b64[45], want[256];
	read_file(path, buf, sizeof(buf));
	key_b64(0x00, b64);
	snprintf(want, sizeof(want),
	         "isg-domain-key-v1 d 1 2026-01-01 2026-04-09 %s\nisg-domain-key-v1 d 2 "
	         "2026-03-10 - ",
	         b64);
	assert_memory_equal(buf, want, strlen(want));
	assert_int_equal(strlen(buf), strlen(want) + 45);

	struct keyring *ring = load_ok(f);
	char out[PSEUDO_TEXT_MAX], prev[PSEUDO_TEXT_MAX], out2[PSEUDO_TEXT_MAX];
	pseudonymise(ring, "d", t, out, prev);
	assert_int_equal(strncmp(out, "p2_", 3), 0);
	assert_string_not_equal(out + 3, &P1_NHS[3]);
	assert_string_equal(prev, P1_NHS);
	pseudonymise(ring, "d", t + 29, out2, prev);
	assert_string_equal(out2, out);
	assert_string_equal(prev, P1_NHS); /* the last day of the overlap */
	pseudonymise(ring, "d", t + 30, out2, prev);
	assert_string_equal(out2, out);
	assert_string_equal(prev, ""); /* retired on its RETIRES date */
	struct keys_version_info info;
	assert_int_equal(keyring_version_info(ring, 0, 0, t, &info), 0);
	assert_int_equal(info.version, 1);
	assert_int_equal(info.retires, t + 30);
	assert_int_equal(info.state, KEYS_VERSION_PREVIOUS);
	assert_int_equal(keyring_version_info(ring, 0, 0, t + 30, &info), 0);
	assert_int_equal(info.state, KEYS_VERSION_RETIRED);
	assert_int_equal(keyring_version_info(ring, 0, 1, t + 30, &info), 0);
	assert_int_equal(info.state, KEYS_VERSION_CURRENT);
	/* Every version answers for the audit log's search, the retired one included. */
	char all[3][PSEUDO_TEXT_MAX];
	assert_int_equal(
	    keyring_pseudonymise_all(ring, "d", PSEUDO_NHS_NUMBER, "9434765919", 10, all, 3), 2);
	assert_string_equal(all[0], P1_NHS);
	assert_string_equal(all[1], out);
	assert_int_equal(
	    keyring_pseudonymise_all(ring, "nope", PSEUDO_NHS_NUMBER, "9434765919", 10, all, 3), 0);
	assert_int_equal(info.created, t);
	keyring_free(ring);

	/* A second rotation with an overlap: version 2 answers as previous, 1 waits. */
	assert_int_equal(keys_rotate(f->dir, "d", t + 1, 30, &version, err, sizeof(err)), 0);
	assert_int_equal(version, 3);
	ring = load_ok(f);
	char out3[PSEUDO_TEXT_MAX];
	pseudonymise(ring, "d", t + 1, out3, prev);
	assert_int_equal(strncmp(out3, "p3_", 3), 0);
	assert_string_equal(prev, out);
	assert_int_equal(keyring_version_info(ring, 0, 0, t + 1, &info), 0);
	assert_int_equal(info.state, KEYS_VERSION_SUPERSEDED);
	keyring_free(ring);

	/* Overlap 0 retires at once: version 3 is gone as previous the same day, and so is
	 * version 2, whose own overlap (to t + 31) the emergency rotation cuts short. */
	assert_int_equal(keys_rotate(f->dir, "d", t + 2, 0, &version, err, sizeof(err)), 0);
	assert_int_equal(version, 4);
	ring = load_ok(f);
	char out4[PSEUDO_TEXT_MAX];
	pseudonymise(ring, "d", t + 2, out4, prev);
	assert_int_equal(strncmp(out4, "p4_", 3), 0);
	assert_string_equal(prev, "");
	assert_int_equal(keyring_version_info(ring, 0, 1, t + 2, &info), 0);
	assert_int_equal(info.retires, t + 2);
	assert_int_equal(info.state, KEYS_VERSION_RETIRED);
	/* Version 1 (retiring on t + 30) too. */
	assert_int_equal(keyring_version_info(ring, 0, 0, t + 2, &info), 0);
	assert_int_equal(info.retires, t + 2);
	keyring_free(ring);

	/* Overlap 0 with no older version in use: no previous at all. */
	write_known_domain(f, "e", 1);
	assert_int_equal(keys_rotate(f->dir, "e", t, 0, &version, err, sizeof(err)), 0);
	ring = load_ok(f);
	pseudonymise(ring, "e", t, out, prev);
	assert_int_equal(strncmp(out, "p2_", 3), 0);
	assert_string_equal(prev, "");
	keyring_free(ring);
}

/*
 * The reviewer's case: v1 -> v2 with a 30-day overlap, then v2 compromised and
 * v2 -> v3 with overlap 0 the next day. No version may answer as previous,
 * v1 included, and the shorter retirement dates are never extended again.
 */
static void test_rotate_emergency_retires_all(void **state)
{
	struct fixture *f = *state;
	char err[512] = "";
	write_known_domain(f, "d", 1);
	int64_t t = day("2026-03-10");
	uint32_t version = 0;
	assert_int_equal(keys_rotate(f->dir, "d", t, 30, &version, err, sizeof(err)), 0);
	assert_int_equal(keys_rotate(f->dir, "d", t + 1, 0, &version, err, sizeof(err)), 0);
	assert_int_equal(version, 3);
	struct keyring *ring = load_ok(f);
	char out[PSEUDO_TEXT_MAX], prev[PSEUDO_TEXT_MAX];
	for (int64_t d = t + 1; d <= t + 31; d += 10) {
		pseudonymise(ring, "d", d, out, prev);
		assert_int_equal(strncmp(out, "p3_", 3), 0);
		assert_string_equal(prev, "");
	}
	struct keys_version_info info;
	for (size_t j = 0; j < 2; j++) {
		assert_int_equal(keyring_version_info(ring, 0, j, t + 1, &info), 0);
		assert_int_equal(info.retires, t + 1);
		assert_int_equal(info.state, KEYS_VERSION_RETIRED);
	}
	keyring_free(ring);
	/* A later rotation with a long overlap leaves them retired. */
	assert_int_equal(keys_rotate(f->dir, "d", t + 2, 30, &version, err, sizeof(err)), 0);
	ring = load_ok(f);
	for (size_t j = 0; j < 2; j++) {
		assert_int_equal(keyring_version_info(ring, 0, j, t + 2, &info), 0);
		assert_int_equal(info.retires, t + 1);
	}
	pseudonymise(ring, "d", t + 2, out, prev);
	assert_int_equal(strncmp(out, "p4_", 3), 0);
	assert_int_equal(strncmp(prev, "p3_", 3), 0);
	keyring_free(ring);
}

static void test_rotate_refusals(void **state)
{
	struct fixture *f = *state;
	char err[512] = "";
	uint32_t version = 0;
	int64_t t = day("2026-03-10");
	/* No keys directory: said so, with how to make one. */
	assert_int_equal(keys_rotate(f->dir, "d", t, 30, &version, err, sizeof(err)),
	                 ISG_ERR_NOT_FOUND);
	assert_non_null(strstr(err,
	                       "does not exist; restore it from its backup, or create one for a "
	                       "new gateway with 'isgctl keys init'"));
	/* No domains directory, no such domain. */
	assert_int_equal(mkdir(f->dir, 0700), 0);
	assert_int_equal(keys_rotate(f->dir, "d", t, 30, &version, err, sizeof(err)),
	                 ISG_ERR_NOT_FOUND);
	assert_non_null(strstr(err, "no domain keys in"));
	assert_non_null(strstr(err, "new-domain"));
	write_known_domain(f, "d", 1);
	assert_int_equal(keys_rotate(f->dir, "nope", t, 30, &version, err, sizeof(err)),
	                 ISG_ERR_NOT_FOUND);
	assert_non_null(strstr(err, "nope.key"));
	assert_int_equal(keys_rotate(f->dir, "Bad", t, 30, &version, err, sizeof(err)),
	                 ISG_ERR_INVALID);
	assert_int_equal(keys_rotate(f->dir, "d", t, -1, &version, err, sizeof(err)),
	                 ISG_ERR_INVALID);
	assert_int_equal(keys_rotate(f->dir, "d", t, 100000, &version, err, sizeof(err)),
	                 ISG_ERR_INVALID);
	assert_int_equal(keys_rotate(f->dir, "d", -5, 30, &version, err, sizeof(err)),
	                 ISG_ERR_INVALID);
	/* Today before the current version's creation date: the clock is wrong. */
	assert_int_equal(
	    keys_rotate(f->dir, "d", day("2025-12-31"), 30, &version, err, sizeof(err)),
	    ISG_ERR_INVALID);
	assert_non_null(strstr(err, "clock"));

	char path[256], tmp[300], before[1024], after[1024];
	domain_path(f, "d", path, sizeof(path));
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	read_file(path, before, sizeof(before));

	/* A lax file is refused and left alone, and no temporary file is left behind. */
	assert_int_equal(chmod(path, 0644), 0);
	assert_int_equal(keys_rotate(f->dir, "d", t, 30, &version, err, sizeof(err)),
	                 ISG_ERR_DENIED);
	struct stat st;
	assert_int_not_equal(lstat(tmp, &st), 0);
	assert_int_equal(chmod(path, 0600), 0);

	/* A malformed file is refused with its line. */
	write_domain(f, "bad", "isg-domain-key-v1 bad 1 2026-01-01 -\n", 0600);
	assert_int_equal(keys_rotate(f->dir, "bad", t, 30, &version, err, sizeof(err)),
	                 ISG_ERR_PARSE);
	assert_non_null(strstr(err, "bad.key:1:"));

	/* Another rotation's temporary file: refused, and that file is not touched. */
	write_file(tmp, "x", 1, 0600);
	assert_int_equal(keys_rotate(f->dir, "d", t, 30, &version, err, sizeof(err)),
	                 ISG_ERR_CONFLICT);
	assert_non_null(strstr(err, "another rotation"));
	assert_int_equal(lstat(tmp, &st), 0);
	assert_int_equal(unlink(tmp), 0);
	read_file(path, after, sizeof(after));
	assert_string_equal(before, after);

	/* And then it works. */
	assert_int_equal(keys_rotate(f->dir, "d", t, 30, &version, err, sizeof(err)), 0);
	assert_int_equal(version, 2);
}

/*
 * The loader takes older lines in any date order, so one may be created after
 * today though the current one is not. Cutting its retirement to today + overlap
 * would put it before its creation: the rotation is refused, naming that version,
 * and the file is left as it was and still loads.
 */
static void test_rotate_refuses_older_version_created_after_today(void **state)
{
	struct fixture *f = *state;
	char err[512] = "", b64[45], content[512], path[256], tmp[300], after[1024];
	uint32_t version = 0;
	key_b64(0x00, b64);
	snprintf(content, sizeof(content),
	         "isg-domain-key-v1 dom 1 2027-01-01 2027-06-01 %s\n"
	         "isg-domain-key-v1 dom 2 2026-11-01 - %s\n",
	         b64, b64);
	write_domain(f, "dom", content, 0600);
	keyring_free(load_ok(f));
	domain_path(f, "dom", path, sizeof(path));
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	for (int64_t overlap = 0; overlap <= 30; overlap += 30) {
		assert_int_equal(keys_rotate(f->dir, "dom", day("2026-12-01"), overlap, &version,
		                             err, sizeof(err)),
		                 ISG_ERR_INVALID);
		assert_non_null(strstr(err, "version 1 was created after today"));
		assert_non_null(strstr(err, "left as it was"));
		read_file(path, after, sizeof(after));
		assert_string_equal(after, content);
		struct stat st;
		assert_int_not_equal(lstat(tmp, &st), 0);
		keyring_free(load_ok(f));
	}
	/* From the older version's creation date on, the rotation goes through and loads. */
	assert_int_equal(
	    keys_rotate(f->dir, "dom", day("2027-01-01"), 0, &version, err, sizeof(err)), 0);
	assert_int_equal(version, 3);
	keyring_free(load_ok(f));
}

struct thread_arg {
	const struct keyring *ring;
	int ok;
};

static void *hash_many(void *p)
{
	struct thread_arg *a = p;
	struct pseudo_service svc = keyring_service(a->ring);
	struct pseudo_request r[16];
	a->ok = 1;
	for (int round = 0; round < 50; round++) {
		for (size_t i = 0; i < ARRAY_LEN(r); i++)
			request(&r[i], "known", NHS);
		if (svc.pseudonymise(svc.ctx, r, ARRAY_LEN(r), 0) != 0)
			a->ok = 0;
		for (size_t i = 0; i < ARRAY_LEN(r); i++)
			if (strcmp(r[i].out, P1_NHS) != 0)
				a->ok = 0;
	}
	return NULL;
}

/*
 * A keyring's description (what the key process tells isgd of its keys)
 * reads back as the same domains and versions, with no key; a malformed
 * one is refused, a name whose bytes stop at a NUL before its length
 * among them (it would read as a shorter name than the one described).
 */
static void test_description_round_trip_and_refusals(void **state)
{
	struct fixture *f = *state;
	write_known_domain(f, "alpha", 1);
	write_known_domain(f, "beta", 1);
	struct keyring *ring = load_ok(f);
	uint8_t *desc = NULL;
	size_t len = 0;
	assert_int_equal(keyring_describe(ring, &desc, &len), 0);
	struct keyring *back = NULL;
	assert_int_equal(keyring_from_description(desc, len, &back), 0);
	assert_int_equal(keyring_domain_count(back), 2);
	size_t versions = 0;
	assert_string_equal(keyring_domain_name(back, 0, &versions), "alpha");
	assert_int_equal(versions, 1);
	assert_string_equal(keyring_domain_name(back, 1, NULL), "beta");
	struct pseudo_request r;
	request(&r, "alpha", "9434765919");
	struct pseudo_service svc = keyring_service(back);
	assert_int_equal(svc.pseudonymise(svc.ctx, &r, 1, 20000), ISG_ERR_CRYPTO);
	keyring_free(back);

	/* u32 count, then "alpha" at 4: its length byte, then its five bytes. */
	assert_int_equal(desc[4], 5);
	uint8_t *bad = malloc(len + 1);
	assert_non_null(bad);
	memcpy(bad, desc, len);
	bad[len] = 0;
	assert_int_equal(keyring_from_description(bad, len + 1, &back), ISG_ERR_PARSE);
	assert_int_equal(keyring_from_description(bad, len - 1, &back), ISG_ERR_PARSE);
	bad[7] = '\0'; /* "al\0ha": a valid "al" by strlen, but five bytes long */
	assert_int_equal(keyring_from_description(bad, len, &back), ISG_ERR_PARSE);
	assert_null(back);
	free(bad);
	free(desc);
	keyring_free(ring);
}

static void test_service_concurrent_readers(void **state)
{
	struct fixture *f = *state;
	write_known_domain(f, "known", 1);
	struct keyring *ring = load_ok(f);
	pthread_t th[4];
	struct thread_arg args[4];
	for (size_t i = 0; i < ARRAY_LEN(th); i++) {
		args[i] = (struct thread_arg){ring, 0};
		assert_int_equal(pthread_create(&th[i], NULL, hash_many, &args[i]), 0);
	}
	for (size_t i = 0; i < ARRAY_LEN(th); i++) {
		assert_int_equal(pthread_join(th[i], NULL), 0);
		assert_true(args[i].ok);
	}
	keyring_free(ring);
}

int main(void)
{
	if (sodium_init() < 0)
		return 1;
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_init_creates_private_files, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_init_refuses_overwrite, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_init_existing_dir_and_not_a_dir, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_init_all_or_nothing, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_load_refuses_lax_modes, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_keys_dir_writable_by_others_refused, setup,
	                                    teardown),
	    cmocka_unit_test_setup_teardown(test_load_refuses_fifo, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_load_refuses_other_owner, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_load_refuses_links_dirs_and_missing, setup,
	                                    teardown),
	    cmocka_unit_test_setup_teardown(test_check_secrecy_on_fd, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_secrecy_wrong_owner_says_chown, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_load_refuses_malformed, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_loaded_key_is_read_only, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_new_domain_creates_private_file, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_load_missing_and_empty, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_load_refuses_lax_permissions, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_load_refuses_malformed_domain, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_service_known_answers, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_service_refuses_whole_batch, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_domains_unrelated_and_stable, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_rotate_overlap, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_rotate_emergency_retires_all, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_rotate_refusals, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_rotate_refuses_older_version_created_after_today,
	                                    setup, teardown),
	    cmocka_unit_test_setup_teardown(test_service_concurrent_readers, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_description_round_trip_and_refusals, setup,
	                                    teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
