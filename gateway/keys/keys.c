/*
 * keys: the storage and audit signing key files. One line per file,
 *   isg-key-v1 <kind> <base64 of 32 bytes>\n
 * (docs/keys.md). Linkage-domain keys are in domain.c. Key material never
 * reaches an error message or a log.
 */
#include "keys/internal.h"

#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

#include "util/util.h"

#define KEYS_MAGIC "isg-key-v1"
#define KEYS_KIND_STORAGE "storage"
#define KEYS_KIND_AUDIT_SIGNING "audit-signing-ed25519"
#define KEYS_RAW_LEN 32
/* base64 (with padding) of 32 bytes */
#define KEYS_B64_LEN 44
/* Longest valid file: magic, longest kind, key, two spaces and a newline. */
#define KEYS_LINE_MAX                                                                              \
	(sizeof(KEYS_MAGIC) - 1 + sizeof(KEYS_KIND_AUDIT_SIGNING) - 1 + KEYS_B64_LEN + 3)
_Static_assert(KEYS_STORAGE_LEN == KEYS_RAW_LEN, "storage key is one raw key");

void keys_seterr(char *err, size_t errlen, const char *fmt, ...)
{
	if (!err || errlen == 0)
		return;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

int keys_path(char *out, size_t size, const char *dir, const char *file, char *err, size_t errlen)
{
	int n = snprintf(out, size, "%s/%s", dir, file);
	if (n < 0 || (size_t)n >= size) {
		keys_seterr(err, errlen, "key directory path '%s' is too long", dir);
		return ISG_ERR_TOO_BIG;
	}
	return 0;
}

int keys_check_secrecy(int fd, const char *path, char *err, size_t errlen)
{
	return keys_check_secrecy_for(fd, path, (unsigned)geteuid(), err, errlen);
}

/*
 * What is wrong and the command that fixes it, one clause per problem. The
 * owner is whoever reads the file: isgd's key process keeps the uid isgd
 * starts as, and isgctl reads as its own.
 */
static void secrecy_refused(const struct stat *st, const char *path, unsigned owner, char *err,
                            size_t errlen)
{
	unsigned mode = (unsigned)(st->st_mode & 07777);
	bool bad_mode = (st->st_mode & 077) != 0;
	bool bad_owner = st->st_uid != owner;
	char has[96], want[96], who[64], unused[64];
	user_words((unsigned)st->st_uid, has, sizeof(has), unused, sizeof(unused));
	user_words((unsigned)owner, want, sizeof(want), who, sizeof(who));
	/* The reader knows only itself: isgctl run as another user than isgd's (sudo)
	 * must not be told to take the keys from the user isgd starts as. */
	if (bad_mode && bad_owner)
		keys_seterr(
		    err, errlen,
		    "key file '%s' has mode %04o and is owned by %s, not by %s, who reads it: "
		    "key files must have no group or other permissions (0600 or 0400) and be "
		    "read by their owner, the user isgd starts as: chmod 600 '%s'; then run "
		    "isgctl as that user, or, if %s is that user, chown %s '%s'",
		    path, mode, has, want, path, want, who, path);
	else if (bad_mode)
		keys_seterr(err, errlen,
		            "key file '%s' has mode %04o: key files must have no group or other "
		            "permissions (0600 or 0400): chmod 600 '%s'",
		            path, mode, path);
	else
		keys_seterr(err, errlen,
		            "key file '%s' is owned by %s, not by %s, who reads it: key files are "
		            "read by their owner, the user isgd starts as: run isgctl as that "
		            "user, or, if %s is that user, chown %s '%s'",
		            path, has, want, want, who, path);
}

static int file_secrecy(const struct stat *st, const char *path, unsigned owner, char *err,
                        size_t errlen)
{
	if (!S_ISREG(st->st_mode)) {
		keys_seterr(err, errlen, "key file '%s' is not a regular file", path);
		return ISG_ERR_DENIED;
	}
	if ((st->st_mode & 077) != 0 || st->st_uid != owner) {
		secrecy_refused(st, path, owner, err, errlen);
		return ISG_ERR_DENIED;
	}
	return 0;
}

int keys_check_secrecy_for(int fd, const char *path, unsigned owner, char *err, size_t errlen)
{
	struct stat st;
	if (fstat(fd, &st) != 0) {
		keys_seterr(err, errlen, "key file '%s': cannot stat: %s", path, strerror(errno));
		return ISG_ERR_IO;
	}
	return file_secrecy(&st, path, owner, err, errlen);
}

static int dir_secrecy(const struct stat *st, const char *path, char *err, size_t errlen)
{
	if (!S_ISDIR(st->st_mode)) {
		keys_seterr(err, errlen, "key directory '%s' is not a directory", path);
		return ISG_ERR_DENIED;
	}
	uid_t euid = geteuid();
	if ((st->st_mode & 022) != 0 || (st->st_uid != euid && st->st_uid != 0)) {
		keys_seterr(
		    err, errlen,
		    "key directory '%s' has mode %04o and owner uid %u; it must not be "
		    "writable by group or others (0700) and must be owned by uid %u or root",
		    path, (unsigned)(st->st_mode & 07777), (unsigned)st->st_uid, (unsigned)euid);
		return ISG_ERR_DENIED;
	}
	return 0;
}

int keys_check_dir_secrecy(int fd, const char *path, char *err, size_t errlen)
{
	struct stat st;
	if (fstat(fd, &st) != 0) {
		keys_seterr(err, errlen, "key directory '%s': cannot stat: %s", path,
		            strerror(errno));
		return ISG_ERR_IO;
	}
	return dir_secrecy(&st, path, err, errlen);
}

int keys_open_failed(int dfd, const char *name, const char *path, bool dir, int e, char *err,
                     size_t errlen)
{
	/* Without CAP_DAC_OVERRIDE (the key process), a key owned by someone else
	 * cannot be opened at all: say what is wrong with it, as the check of an
	 * open one would, not just "Permission denied". */
	struct stat st;
	if ((e == EACCES || e == EPERM) && fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0) {
		int rc = dir ? dir_secrecy(&st, path, err, errlen)
		             : file_secrecy(&st, path, (unsigned)geteuid(), err, errlen);
		if (rc)
			return rc;
	}
	keys_seterr(err, errlen, "key %s '%s': cannot open: %s", dir ? "directory" : "file", path,
	            strerror(e));
	return e == EACCES || e == EPERM ? ISG_ERR_DENIED : ISG_ERR_IO;
}

int keys_check_dir(const char *path, char *err, size_t errlen)
{
	int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0) {
		int e = errno;
		if (e == ENOENT) {
			keys_seterr(
			    err, errlen,
			    "key directory '%s' does not exist; restore it from its backup, or "
			    "create one for a new gateway with 'isgctl keys init'",
			    path);
			return ISG_ERR_NOT_FOUND;
		}
		if (e == ENOTDIR) {
			keys_seterr(err, errlen, "key directory '%s' is not a directory", path);
			return ISG_ERR_CONFLICT;
		}
		return keys_open_failed(AT_FDCWD, path, path, true, e, err, errlen);
	}
	int rc = keys_check_dir_secrecy(fd, path, err, errlen);
	close(fd);
	return rc;
}

static int keys_open(const char *path, int *fd_out, char *err, size_t errlen)
{
	/* O_NONBLOCK: a FIFO planted here must not hang start-up; fstat then refuses it. */
	int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (fd >= 0) {
		*fd_out = fd;
		return 0;
	}
	int e = errno;
	if (e == ENOENT) {
		keys_seterr(err, errlen,
		            "key file '%s' does not exist; restore the keys directory from its "
		            "backup, or create one for a new gateway with 'isgctl keys init'",
		            path);
		return ISG_ERR_NOT_FOUND;
	}
	if (e == ELOOP) {
		keys_seterr(err, errlen,
		            "key file '%s' is a symbolic link; it must be a regular file", path);
		return ISG_ERR_DENIED;
	}
	return keys_open_failed(AT_FDCWD, path, path, false, e, err, errlen);
}

/* Read the whole file into buf (at most size - 1 bytes), refusing longer files. */
static int keys_read_all(int fd, const char *path, char *buf, size_t size, size_t *len, char *err,
                         size_t errlen)
{
	ssize_t used = fd_read_up_to(fd, buf, size - 1);
	if (used < 0) {
		keys_seterr(err, errlen, "key file '%s': cannot read: %s", path, strerror(errno));
		return ISG_ERR_IO;
	}
	if ((size_t)used == size - 1) {
		keys_seterr(err, errlen, "%s:1:1: file is longer than a key file can be", path);
		return ISG_ERR_PARSE;
	}
	buf[used] = '\0';
	*len = (size_t)used;
	return 0;
}

/*
 * Parse "isg-key-v1 <kind> <base64>\n" into out (KEYS_RAW_LEN bytes).
 * Errors give the column, never the bytes found there.
 */
static int keys_parse(const char *path, const char *buf, size_t len, const char *want_kind,
                      uint8_t *out, char *err, size_t errlen)
{
	const size_t magic_len = sizeof(KEYS_MAGIC) - 1;
	if (len < magic_len + 1 || memcmp(buf, KEYS_MAGIC " ", magic_len + 1) != 0) {
		keys_seterr(err, errlen, "%s:1:1: not an ISG key file; expected '" KEYS_MAGIC " '",
		            path);
		return ISG_ERR_PARSE;
	}
	size_t pos = magic_len + 1;
	const char *kind = buf + pos;
	const char *sp = memchr(kind, ' ', len - pos);
	size_t kind_len = sp ? (size_t)(sp - kind) : 0;
	if (!sp || kind_len != strlen(want_kind) || memcmp(kind, want_kind, kind_len) != 0) {
		const char *known[] = {KEYS_KIND_STORAGE, KEYS_KIND_AUDIT_SIGNING};
		for (size_t i = 0; sp && i < ARRAY_LEN(known); i++) {
			if (kind_len == strlen(known[i]) && memcmp(kind, known[i], kind_len) == 0) {
				keys_seterr(err, errlen,
				            "%s:1:%zu: holds a key of kind '%s'; expected '%s'",
				            path, pos + 1, known[i], want_kind);
				return ISG_ERR_PARSE;
			}
		}
		keys_seterr(err, errlen, "%s:1:%zu: unknown key kind; expected '%s'", path, pos + 1,
		            want_kind);
		return ISG_ERR_PARSE;
	}
	pos += kind_len + 1;
	const char *b64 = buf + pos;
	if (len - pos != KEYS_B64_LEN + 1 || buf[len - 1] != '\n') {
		keys_seterr(
		    err, errlen,
		    "%s:1:%zu: expected %d base64 characters and a newline at the end of the "
		    "line",
		    path, pos + 1, KEYS_B64_LEN);
		return ISG_ERR_PARSE;
	}
	size_t bin_len = 0;
	if (base64_decode(b64, KEYS_B64_LEN, out, KEYS_RAW_LEN, &bin_len) != 0 ||
	    bin_len != KEYS_RAW_LEN) {
		sodium_memzero(out, KEYS_RAW_LEN);
		keys_seterr(err, errlen, "%s:1:%zu: key is not valid base64 of %d bytes", path,
		            pos + 1, KEYS_RAW_LEN);
		return ISG_ERR_PARSE;
	}
	return 0;
}

/* What every operation on a key directory needs first. */
static int keys_ready(const char *dir, char *err, size_t errlen)
{
	if (!dir) {
		keys_seterr(err, errlen, "no key directory given");
		return ISG_ERR_INVALID;
	}
	if (sodium_init() < 0) {
		keys_seterr(err, errlen, "libsodium failed to initialise");
		return ISG_ERR_CRYPTO;
	}
	return 0;
}

/* Load one key of the given kind from dir/file into guarded, read-only memory. */
static int keys_load(const char *dir, const char *file, const char *kind, uint8_t **key, char *err,
                     size_t errlen)
{
	char path[KEYS_PATH_MAX];
	char buf[KEYS_LINE_MAX + 2];
	uint8_t *k = NULL;
	int fd = -1;
	size_t len = 0;
	int rc;

	*key = NULL;
	if ((rc = keys_ready(dir, err, errlen)) != 0)
		return rc;
	rc = keys_path(path, sizeof(path), dir, file, err, errlen);
	if (rc)
		goto out;
	/* Whoever can write the directory can replace the key: refuse it. A missing
	 * directory is left to keys_open, which says how to make the file. */
	rc = keys_check_dir(dir, err, errlen);
	if (rc && rc != ISG_ERR_NOT_FOUND)
		goto out;
	rc = keys_open(path, &fd, err, errlen);
	if (rc)
		goto out;
	rc = keys_check_secrecy(fd, path, err, errlen);
	if (rc)
		goto out;
	rc = keys_read_all(fd, path, buf, sizeof(buf), &len, err, errlen);
	if (rc)
		goto out;
	k = sodium_malloc(KEYS_RAW_LEN);
	if (!k) {
		keys_seterr(err, errlen, "key file '%s': cannot allocate guarded memory", path);
		rc = ISG_ERR_NOMEM;
		goto out;
	}
	rc = keys_parse(path, buf, len, kind, k, err, errlen);
	if (rc)
		goto out;
	if (sodium_mprotect_readonly(k) != 0) {
		keys_seterr(err, errlen, "key file '%s': cannot protect key memory", path);
		rc = ISG_ERR_NOMEM;
		goto out;
	}
	*key = k;
	k = NULL;
out:
	sodium_memzero(buf, sizeof(buf));
	if (k) {
		sodium_memzero(k, KEYS_RAW_LEN);
		sodium_free(k);
	}
	if (fd >= 0)
		close(fd);
	return rc;
}

int keys_load_storage(const char *dir, uint8_t **key, char *err, size_t errlen)
{
	return keys_load(dir, KEYS_STORAGE_FILE, KEYS_KIND_STORAGE, key, err, errlen);
}

int keys_load_audit_signing(const char *dir, uint8_t **seed, char *err, size_t errlen)
{
	return keys_load(dir, KEYS_AUDIT_SIGNING_FILE, KEYS_KIND_AUDIT_SIGNING, seed, err, errlen);
}

void keys_free(uint8_t *key)
{
	if (!key)
		return;
	sodium_mprotect_readwrite(key);
	sodium_memzero(key, KEYS_RAW_LEN);
	sodium_free(key);
}

/* --- init ----------------------------------------------------------------- */

int keys_write_all(int fd, const char *buf, size_t len)
{
	size_t done = 0;
	while (done < len) {
		ssize_t n = write(fd, buf + done, len - done);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -1;
		done += (size_t)n;
	}
	return 0;
}

int keys_fsync_dirfd(int fd, const char *path, char *err, size_t errlen)
{
	if (fsync(fd) != 0) {
		keys_seterr(err, errlen, "key directory '%s': cannot sync: %s", path,
		            strerror(errno));
		return ISG_ERR_IO;
	}
	return 0;
}

int keys_fsync_dir(const char *path, char *err, size_t errlen)
{
	int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0) {
		keys_seterr(err, errlen, "key directory '%s': cannot open: %s", path,
		            strerror(errno));
		return ISG_ERR_IO;
	}
	int rc = keys_fsync_dirfd(fd, path, err, errlen);
	close(fd);
	return rc;
}

int keys_prepare_dir(const char *path, int *created, char *err, size_t errlen)
{
	*created = 0;
	if (mkdir(path, 0700) == 0) {
		*created = 1;
		return 0;
	}
	if (errno != EEXIST) {
		keys_seterr(err, errlen, "key directory '%s': cannot create: %s", path,
		            strerror(errno));
		return ISG_ERR_IO;
	}
	struct stat st;
	if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode)) {
		keys_seterr(err, errlen, "key directory '%s' exists and is not a directory", path);
		return ISG_ERR_CONFLICT;
	}
	/* Keys are not written where others could replace them. */
	return keys_check_dir(path, err, errlen);
}

/* Give the synced dfd/tmp the name `name`, unless name exists: link(2), or on a file system
 * without hard links, rename(2) with RENAME_NOREPLACE. 0 or an errno. */
int keys_write_synced(int fd, const char *path, const char *buf, size_t len, char *err,
                      size_t errlen)
{
	int rc = 0;
	/* The umask can only remove bits, but say exactly what we mean. */
	if (fchmod(fd, 0600) != 0 || keys_write_all(fd, buf, len) != 0 || fsync(fd) != 0) {
		keys_seterr(err, errlen, "key file '%s': cannot write: %s", path, strerror(errno));
		rc = ISG_ERR_IO;
	}
	if (close(fd) != 0 && rc == 0) {
		keys_seterr(err, errlen, "key file '%s': cannot close: %s", path, strerror(errno));
		rc = ISG_ERR_IO;
	}
	return rc;
}

static int name_new_file(int dfd, const char *tmp, const char *name, bool *moved)
{
	*moved = false;
	if (linkat(dfd, tmp, dfd, name, 0) == 0)
		return 0;
	int e = errno;
	if (e != EPERM && e != EOPNOTSUPP && e != ENOSYS)
		return e;
	if (renameat2(dfd, tmp, dfd, name, RENAME_NOREPLACE) != 0)
		return errno;
	*moved = true; /* tmp is gone: the name another command may take as its lock */
	return 0;
}

int keys_create_file(int dfd, const char *dpath, const char *name, const char *buf, size_t len,
                     bool *name_exists, char *err, size_t errlen)
{
	char path[KEYS_PATH_MAX], tmppath[KEYS_PATH_MAX], tmp[KEYS_PATH_MAX];
	*name_exists = false;
	int n = snprintf(tmp, sizeof(tmp), "%s" KEYS_TMP_SUFFIX, name);
	if (n < 0 || (size_t)n >= sizeof(tmp)) {
		keys_seterr(err, errlen, "key file name '%s' is too long", name);
		return ISG_ERR_TOO_BIG;
	}
	int rc = keys_path(path, sizeof(path), dpath, name, err, errlen);
	if (rc == 0)
		rc = keys_path(tmppath, sizeof(tmppath), dpath, tmp, err, errlen);
	if (rc)
		return rc;
	int fd = openat(dfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0 && errno == EEXIST) {
		keys_seterr(err, errlen,
		            "'%s' exists: another isgctl keys command is writing '%s' or one was "
		            "interrupted; once none is running, remove it and retry",
		            tmppath, path);
		return ISG_ERR_CONFLICT;
	}
	if (fd < 0) {
		keys_seterr(err, errlen, "key file '%s': cannot create: %s", tmppath,
		            strerror(errno));
		return ISG_ERR_IO;
	}
	rc = keys_write_synced(fd, tmppath, buf, len, err, errlen);
	bool moved = false;
	int e = rc ? 0 : name_new_file(dfd, tmp, name, &moved);
	if (!moved)
		unlinkat(dfd, tmp, 0);
	if (rc)
		return rc;
	if (e == EEXIST) {
		*name_exists = true;
		keys_seterr(err, errlen, "key file '%s' exists; refusing to overwrite it", path);
		return ISG_ERR_CONFLICT;
	}
	if (e) {
		keys_seterr(err, errlen, "key file '%s': cannot create: %s", path, strerror(e));
		return ISG_ERR_IO;
	}
	rc = keys_fsync_dirfd(dfd, dpath, err, errlen);
	if (rc)
		unlinkat(dfd, name, 0);
	return rc;
}

/* Write a fresh random key of the given kind to dir/file, mode 0600, never overwriting. */
static int keys_write_new(const char *dir, const char *file, const char *kind, char *err,
                          size_t errlen)
{
	uint8_t raw[KEYS_RAW_LEN];
	char b64[KEYS_B64_LEN + 1];
	char line[KEYS_LINE_MAX + 1];
	bool exists;

	/* Followed if a link, as keys_check_dir did; the file's own name is not (O_NOFOLLOW). */
	int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0) {
		keys_seterr(err, errlen, "key directory '%s': cannot open: %s", dir,
		            strerror(errno));
		return ISG_ERR_IO;
	}
	randombytes_buf(raw, sizeof(raw));
	sodium_bin2base64(b64, sizeof(b64), raw, sizeof(raw), sodium_base64_VARIANT_ORIGINAL);
	int n = snprintf(line, sizeof(line), KEYS_MAGIC " %s %s\n", kind, b64);
	if (n < 0 || (size_t)n >= sizeof(line))
		fatal("key line does not fit");
	int rc = keys_create_file(dfd, dir, file, line, (size_t)n, &exists, err, errlen);
	close(dfd);
	sodium_memzero(raw, sizeof(raw));
	sodium_memzero(b64, sizeof(b64));
	sodium_memzero(line, sizeof(line));
	return rc;
}

/* The files keys_init makes, under the keys directory. */
static const char *const init_files[] = {
    KEYS_STORAGE_FILE,
    KEYS_AUDIT_SIGNING_FILE,
    KEYS_DOMAINS_DIR "/" KEYS_AUDIT_DOMAIN ".key",
};
#define INIT_FILES (sizeof(init_files) / sizeof(init_files[0]))

/* Append ", 'item'" (or "'item'" first) to list; a list too long for it is cut. */
static void list_add(char *list, size_t size, const char *item)
{
	size_t used = strlen(list);
	snprintf(list + used, size - used, "%s'%s'", used ? ", " : "", item);
}

/* Whether dir/file exists (a dangling link too): 1, 0, or an error with the reason in err. */
static int init_file_exists(const char *dir, const char *file, char *err, size_t errlen)
{
	char path[KEYS_PATH_MAX];
	struct stat st;
	int rc = keys_path(path, sizeof(path), dir, file, err, errlen);
	if (rc)
		return rc;
	if (lstat(path, &st) == 0)
		return 1;
	if (errno == ENOENT || errno == ENOTDIR)
		return 0;
	keys_seterr(err, errlen, "key file '%s': cannot stat: %s", path, strerror(errno));
	return ISG_ERR_IO;
}

/*
 * Refuse, before writing anything, when any of init's files, or a NAME.tmp
 * an interrupted init left, is there. Keys are never overwritten; when only
 * some are there, say which to remove to rerun an interrupted init, and to
 * restore the others from the backup otherwise.
 */
static int init_refuse_existing(const char *dir, char *err, size_t errlen)
{
	char have[256] = "", lack[256] = "", left[256] = "", rm[512] = "";
	size_t n_have = 0, n_rm = 0;
	for (size_t i = 0; i < INIT_FILES; i++) {
		char tmp[64];
		snprintf(tmp, sizeof(tmp), "%s" KEYS_TMP_SUFFIX, init_files[i]);
		int is = init_file_exists(dir, init_files[i], err, errlen);
		int is_tmp = is < 0 ? 0 : init_file_exists(dir, tmp, err, errlen);
		if (is < 0 || is_tmp < 0)
			return is < 0 ? is : is_tmp;
		list_add(is ? have : lack, sizeof(have), init_files[i]);
		if (is)
			list_add(rm, sizeof(rm), init_files[i]);
		if (is_tmp) {
			list_add(left, sizeof(left), tmp);
			list_add(rm, sizeof(rm), tmp);
		}
		n_have += (size_t)is;
		n_rm += (size_t)(is + is_tmp);
	}
	if (n_have == INIT_FILES) {
		keys_seterr(
		    err, errlen,
		    "key file '%s/%s' exists; refusing to overwrite it: this keys directory "
		    "was made already",
		    dir, init_files[0]);
		return ISG_ERR_CONFLICT;
	}
	if (n_rm == 0)
		return 0;
	if (n_have == 0)
		keys_seterr(err, errlen,
		            "'%s' has %s: an 'isgctl keys init' is running or one was interrupted; "
		            "once none is running, remove %s from '%s' and retry",
		            dir, left, n_rm == 1 ? "it" : "them", dir);
	else
		keys_seterr(err, errlen,
		            "'%s' has %s but not %s; keys init refuses to overwrite a key: if an "
		            "'isgctl keys init' was interrupted (isgd never ran with these keys), "
		            "remove %s from '%s' and run it again; if key files were lost, restore "
		            "them from the backup",
		            dir, have, lack, rm, dir);
	return ISG_ERR_CONFLICT;
}

int keys_init(const char *dir, char *err, size_t errlen)
{
	char storage[KEYS_PATH_MAX], signing[KEYS_PATH_MAX], audit[KEYS_PATH_MAX];
	int created_dir = 0;
	int rc;

	if ((rc = keys_ready(dir, err, errlen)) != 0)
		return rc;
	rc = keys_path(storage, sizeof(storage), dir, init_files[0], err, errlen);
	if (rc == 0)
		rc = keys_path(signing, sizeof(signing), dir, init_files[1], err, errlen);
	if (rc == 0)
		rc = keys_path(audit, sizeof(audit), dir, init_files[2], err, errlen);
	if (rc == 0)
		rc = keys_prepare_dir(dir, &created_dir, err, errlen);
	/* Check every file first so a refusal leaves the directory as it was. */
	if (rc == 0)
		rc = init_refuse_existing(dir, err, errlen);
	if (rc)
		return rc;
	/* Each file appears whole or not at all (keys_create_file). */
	rc = keys_write_new(dir, KEYS_STORAGE_FILE, KEYS_KIND_STORAGE, err, errlen);
	if (rc)
		return rc;
	rc = keys_write_new(dir, KEYS_AUDIT_SIGNING_FILE, KEYS_KIND_AUDIT_SIGNING, err, errlen);
	if (rc)
		goto out;
	/* Syncs domains/ and, when it made it, the keys directory too. */
	rc =
	    keys_domain_create(dir, KEYS_AUDIT_DOMAIN, date_days_of_ms(time_now_ms()), err, errlen);
	if (rc)
		goto out;
	rc = keys_fsync_dir(dir, err, errlen);
	if (rc)
		unlink(audit);
out:
	/* All or nothing: a failure removes what this call wrote. */
	if (rc) {
		unlink(storage);
		unlink(signing);
	}
	return rc;
}
