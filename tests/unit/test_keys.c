/* keys: key file creation, format, secrecy checks and strict parsing. */
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
		char want[16];
		snprintf(want, sizeof(want), "mode %04o", (unsigned)bad[i]);
		assert_non_null(strstr(err, want));
		assert_non_null(strstr(err, f->storage));
		assert_non_null(strstr(err, "must be 0600"));
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

int main(void)
{
	if (sodium_init() < 0)
		return 1;
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_init_creates_private_files, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_init_refuses_overwrite, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_init_existing_dir_and_not_a_dir, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_load_refuses_lax_modes, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_load_refuses_other_owner, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_load_refuses_links_dirs_and_missing, setup,
	                                    teardown),
	    cmocka_unit_test_setup_teardown(test_check_secrecy_on_fd, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_load_refuses_malformed, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_loaded_key_is_read_only, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
