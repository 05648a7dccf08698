/*
 * keys: linkage-domain keys. One file per domain, keys_dir/domains/NAME.key,
 * one line per key version, oldest first (docs/keys.md):
 *   isg-domain-key-v1 NAME VERSION CREATED RETIRES BASE64KEY\n
 * and the keyring: every domain's versions in guarded, read-only memory,
 * answering pseudonym requests for policy_apply. Key material never reaches
 * an error message or a log.
 */
#include "keys/internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

#include "util/util.h"

#define DOMAIN_MAGIC "isg-domain-key-v1"
#define DOMAIN_SUFFIX ".key"
#define DOMAIN_TMP_SUFFIX DOMAIN_SUFFIX KEYS_TMP_SUFFIX
#define DOMAIN_FIELDS 6
#define DOMAIN_B64_LEN 44  /* base64 with padding of 32 bytes */
#define DOMAIN_DATE_LEN 10 /* YYYY-MM-DD */
/* magic, name, version, two dates, key, five spaces and a newline */
#define DOMAIN_LINE_MAX                                                                            \
	(sizeof(DOMAIN_MAGIC) - 1 + KEYS_DOMAIN_NAME_MAX + 10 + 2 * DOMAIN_DATE_LEN +              \
	 DOMAIN_B64_LEN + 6)
/* Bounds on what one file and one keys directory may hold. */
#define DOMAIN_VERSIONS_MAX 1000
#define DOMAIN_FILE_MAX (DOMAIN_VERSIONS_MAX * DOMAIN_LINE_MAX)
#define DOMAINS_MAX 1000
/* 9999-12-31, the last day a key file can name. */
#define DOMAIN_DAYS_MAX INT64_C(2932896)

struct domain_version {
	uint32_t version;
	int64_t created;
	int64_t retires; /* KEYS_RETIRES_NEVER for the current (last) version */
};

struct domain {
	char name[KEYS_DOMAIN_NAME_MAX + 1];
	size_t n; /* versions, at least 1 once loaded */
	struct domain_version *versions;
	uint8_t *keys; /* sodium_malloc'd, n * PSEUDO_KEY_LEN, read-only once loaded */
	/* Each version's keyed HMAC state, derived once (pseudo_hash_keyed): as
	 * secret as keys and kept the same way. */
	struct pseudo_keyed *keyed;
};

struct keyring {
	size_t n;
	struct domain *domains; /* sorted by name */
};

bool keys_domain_name_valid(const char *name)
{
	size_t len = name ? strlen(name) : 0;
	if (len == 0 || len > KEYS_DOMAIN_NAME_MAX || name[0] == '-')
		return false;
	for (size_t i = 0; i < len; i++) {
		char c = name[i];
		if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-'))
			return false;
	}
	return true;
}

static int refuse_name(const char *name, char *err, size_t errlen)
{
	keys_seterr(err, errlen,
	            "'%s' is not a valid domain name: use 1 to %d characters a-z, 0-9 and '-', "
	            "not starting with '-'",
	            name ? name : "", KEYS_DOMAIN_NAME_MAX);
	return ISG_ERR_INVALID;
}

static void domain_release(struct domain *d)
{
	if (d->keys) {
		sodium_mprotect_readwrite(d->keys);
		sodium_memzero(d->keys, d->n * PSEUDO_KEY_LEN);
		sodium_free(d->keys);
	}
	if (d->keyed) {
		sodium_mprotect_readwrite(d->keyed);
		sodium_memzero(d->keyed, d->n * sizeof(*d->keyed));
		sodium_free(d->keyed);
	}
	free(d->versions);
	memset(d, 0, sizeof(*d));
}

/* --- parsing ---------------------------------------------------------------- */

/* Where a parse error is: the file and line; columns count bytes from 1. */
struct where {
	const char *path;
	size_t line;
	char *err;
	size_t errlen;
};

static int parse_error(const struct where *w, size_t col, const char *msg)
{
	keys_seterr(w->err, w->errlen, "%s:%zu:%zu: %s", w->path, w->line, col, msg);
	return ISG_ERR_PARSE;
}

static bool field_is(const char *f, size_t len, const char *want)
{
	return len == strlen(want) && memcmp(f, want, len) == 0;
}

/* A decimal 1..UINT32_MAX without leading zeros. */
static bool parse_version(const char *f, size_t len, uint32_t *out)
{
	if (len == 0 || len > 10 || f[0] == '0')
		return false;
	uint64_t v = 0;
	for (size_t i = 0; i < len; i++) {
		if (f[i] < '0' || f[i] > '9')
			return false;
		v = v * 10 + (uint64_t)(f[i] - '0');
	}
	if (v > UINT32_MAX)
		return false;
	*out = (uint32_t)v;
	return true;
}

static bool parse_date(const char *f, size_t len, int64_t *days)
{
	char buf[DOMAIN_DATE_LEN + 1];
	if (len != DOMAIN_DATE_LEN)
		return false;
	memcpy(buf, f, len);
	buf[len] = '\0';
	return date_parse_days(buf, days) == 0 && *days <= DOMAIN_DAYS_MAX;
}

/*
 * One line (without its newline) into v and key. prev is the previous
 * line's version (0 on the first line); last says whether this is the
 * current version.
 */
static int parse_line(const struct where *w, const char *line, size_t len, const char *name,
                      uint32_t prev, bool last, struct domain_version *v,
                      uint8_t key[static PSEUDO_KEY_LEN])
{
	const char *f[DOMAIN_FIELDS] = {0};
	size_t flen[DOMAIN_FIELDS] = {0}, col[DOMAIN_FIELDS] = {0};
	size_t nf = 0, start = 0;

	if (len == 0)
		return parse_error(w, 1, "empty line; each line is one key version");
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)line[i];
		if (c < 0x20 || c > 0x7e)
			return parse_error(w, i + 1,
			                   "unexpected control character or non-ASCII byte");
	}
	for (size_t i = 0; i <= len; i++) {
		if (i < len && line[i] != ' ')
			continue;
		if (i == start)
			return parse_error(w, i + 1,
			                   "empty field: fields are separated by single spaces");
		if (nf == DOMAIN_FIELDS)
			return parse_error(w, start + 1, "too many fields; expected 6");
		f[nf] = line + start;
		flen[nf] = i - start;
		col[nf] = start + 1;
		nf++;
		start = i + 1;
	}
	if (nf != DOMAIN_FIELDS)
		return parse_error(w, len + 1,
		                   "too few fields; expected 'isg-domain-key-v1 NAME VERSION "
		                   "CREATED RETIRES KEY'");
	if (!field_is(f[0], flen[0], DOMAIN_MAGIC))
		return parse_error(w, col[0], "not a domain key line; expected '" DOMAIN_MAGIC "'");
	if (!field_is(f[1], flen[1], name)) {
		char msg[160];
		snprintf(msg, sizeof(msg),
		         "domain name does not match the file name; expected '%s'", name);
		return parse_error(w, col[1], msg);
	}
	if (!parse_version(f[2], flen[2], &v->version))
		return parse_error(w, col[2],
		                   "version must be a whole number from 1 to 4294967295 without "
		                   "leading zeros");
	if (prev != 0 && v->version != prev + 1) {
		char msg[96];
		snprintf(msg, sizeof(msg),
		         "version must be %" PRIu64 ", one more than the line before",
		         (uint64_t)prev + 1);
		return parse_error(w, col[2], msg);
	}
	if (!parse_date(f[3], flen[3], &v->created))
		return parse_error(w, col[3], "creation date must be a date YYYY-MM-DD");
	if (field_is(f[4], flen[4], "-")) {
		if (!last)
			return parse_error(w, col[4],
			                   "only the last line, the current version, has '-' for "
			                   "its retirement date");
		v->retires = KEYS_RETIRES_NEVER;
	} else if (last) {
		return parse_error(w, col[4],
		                   "the last line is the current version; its retirement date "
		                   "must be '-'");
	} else if (!parse_date(f[4], flen[4], &v->retires)) {
		return parse_error(w, col[4], "retirement date must be a date YYYY-MM-DD or '-'");
	} else if (v->retires < v->created) {
		return parse_error(w, col[4], "retirement date is before the creation date");
	}
	size_t bin_len = 0;
	if (flen[5] != DOMAIN_B64_LEN ||
	    base64_decode(f[5], flen[5], key, PSEUDO_KEY_LEN, &bin_len) != 0 ||
	    bin_len != PSEUDO_KEY_LEN) {
		sodium_memzero(key, PSEUDO_KEY_LEN);
		return parse_error(w, col[5],
		                   "key must be 44 characters of base64 (RFC 4648 "
		                   "section 4, padded) decoding to 32 bytes");
	}
	return 0;
}

/* The whole file into d; d->keys is left writable. */
static int parse_file(const char *path, const char *name, const char *buf, size_t len,
                      struct domain *d, char *err, size_t errlen)
{
	struct where w = {path, 1, err, errlen};
	size_t lines = 0;
	for (size_t i = 0; i < len; i++)
		lines += buf[i] == '\n';
	if (len == 0)
		return parse_error(&w, 1, "file is empty; it must hold at least one key version");
	if (buf[len - 1] != '\n') {
		w.line = lines + 1;
		return parse_error(&w, 1, "last line does not end in a newline");
	}
	if (lines > DOMAIN_VERSIONS_MAX) {
		w.line = DOMAIN_VERSIONS_MAX + 1;
		return parse_error(&w, 1, "too many key versions; at most 1000");
	}
	str_copy(d->name, name, sizeof(d->name));
	d->versions = calloc(lines, sizeof(*d->versions));
	d->keys = sodium_malloc(lines * PSEUDO_KEY_LEN);
	if (!d->versions || !d->keys) {
		keys_seterr(err, errlen, "key file '%s': out of memory", path);
		return ISG_ERR_NOMEM;
	}
	d->n = lines;
	/*
	 * An empty line first, at its own number: parsed in order, the line
	 * before a trailing blank one would be blamed, its '-' not on the last line.
	 */
	for (size_t i = 0, pos = 0; i < lines; i++) {
		const char *nl = memchr(buf + pos, '\n', len - pos);
		if (nl == buf + pos) {
			w.line = i + 1;
			return parse_error(&w, 1, "empty line; each line is one key version");
		}
		pos = (size_t)(nl - buf) + 1;
	}
	size_t pos = 0;
	for (size_t i = 0; i < lines; i++) {
		const char *nl = memchr(buf + pos, '\n', len - pos);
		size_t line_len = (size_t)(nl - (buf + pos));
		w.line = i + 1;
		int rc =
		    parse_line(&w, buf + pos, line_len, name, i ? d->versions[i - 1].version : 0,
		               i + 1 == lines, &d->versions[i], d->keys + i * PSEUDO_KEY_LEN);
		if (rc)
			return rc;
		pos += line_len + 1;
	}
	return 0;
}

/* --- reading ---------------------------------------------------------------- */

/*
 * Open dir/domains and check it, dir first: a missing dir is an error
 * (ISG_ERR_NOT_FOUND, "does not exist; restore it from its backup, or create one
 * ... with isgctl keys init"),
 * a missing dir/domains is not: 0 with *fd_out -1, no domains yet.
 */
static int open_domains_dir(const char *dir, char *path, size_t size, int *fd_out, char *err,
                            size_t errlen)
{
	*fd_out = -1;
	if (!dir) {
		keys_seterr(err, errlen, "no key directory given");
		return ISG_ERR_INVALID;
	}
	int rc = keys_path(path, size, dir, KEYS_DOMAINS_DIR, err, errlen);
	if (rc)
		return rc;
	/* The keys directory first: whoever can write there can replace domains/. */
	rc = keys_check_dir(dir, err, errlen);
	if (rc)
		return rc;
	int fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0) {
		int e = errno;
		if (e == ENOENT)
			return 0;
		if (e == ELOOP || e == ENOTDIR) {
			keys_seterr(err, errlen,
			            "key directory '%s' is a symbolic link or not a directory",
			            path);
			return ISG_ERR_DENIED;
		}
		return keys_open_failed(AT_FDCWD, path, path, true, e, err, errlen);
	}
	rc = keys_check_dir_secrecy(fd, path, err, errlen);
	if (rc) {
		close(fd);
		return rc;
	}
	*fd_out = fd;
	return 0;
}

/* Read an open key file whole into sodium_malloc'd *out (NUL-terminated). */
static int read_file(int fd, const char *path, char **out, size_t *len, char *err, size_t errlen)
{
	struct stat st;
	*out = NULL;
	if (fstat(fd, &st) != 0) {
		keys_seterr(err, errlen, "key file '%s': cannot stat: %s", path, strerror(errno));
		return ISG_ERR_IO;
	}
	if (st.st_size < 0 || st.st_size > (off_t)DOMAIN_FILE_MAX) {
		keys_seterr(err, errlen, "%s:1:1: file is larger than %zu bytes", path,
		            (size_t)DOMAIN_FILE_MAX);
		return ISG_ERR_PARSE;
	}
	size_t cap = (size_t)st.st_size + 1;
	char *buf = sodium_malloc(cap);
	if (!buf) {
		keys_seterr(err, errlen, "key file '%s': cannot allocate guarded memory", path);
		return ISG_ERR_NOMEM;
	}
	ssize_t used = fd_read_up_to(fd, buf, cap);
	if (used < 0 || (size_t)used == cap) {
		if (used < 0)
			keys_seterr(err, errlen, "key file '%s': cannot read: %s", path,
			            strerror(errno));
		else
			keys_seterr(err, errlen, "key file '%s' changed while it was read", path);
		sodium_free(buf); /* sodium_free wipes */
		return ISG_ERR_IO;
	}
	buf[used] = '\0';
	*out = buf;
	*len = (size_t)used;
	return 0;
}

/*
 * Load domains/NAME.key (dfd is domains/, path its name for messages) into
 * d, keys made read-only. ISG_ERR_NOT_FOUND when the file does not exist.
 */
static int load_domain(int dfd, const char *path, const char *name, struct domain *d, char *err,
                       size_t errlen)
{
	char file[KEYS_DOMAIN_NAME_MAX + sizeof(DOMAIN_SUFFIX)];
	char *buf = NULL;
	size_t len = 0;
	int rc;

	memset(d, 0, sizeof(*d));
	snprintf(file, sizeof(file), "%s" DOMAIN_SUFFIX, name);
	/* O_NONBLOCK: a FIFO planted here must not hang the loader; fstat refuses it. */
	int fd = openat(dfd, file, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (fd < 0) {
		int e = errno;
		if (e == ENOENT) {
			keys_seterr(err, errlen, "key file '%s' does not exist", path);
			return ISG_ERR_NOT_FOUND;
		}
		if (e == ELOOP) {
			keys_seterr(err, errlen,
			            "key file '%s' is a symbolic link; it must be a regular file",
			            path);
			return ISG_ERR_DENIED;
		}
		return keys_open_failed(dfd, file, path, false, e, err, errlen);
	}
	rc = keys_check_secrecy(fd, path, err, errlen);
	if (rc == 0)
		rc = read_file(fd, path, &buf, &len, err, errlen);
	close(fd);
	if (rc)
		return rc;
	rc = parse_file(path, name, buf, len, d, err, errlen);
	sodium_memzero(buf, len);
	sodium_free(buf);
	if (rc == 0 && !(d->keyed = sodium_malloc(d->n * sizeof(*d->keyed)))) {
		keys_seterr(err, errlen, "key file '%s': out of memory", path);
		rc = ISG_ERR_NOMEM;
	}
	for (size_t i = 0; rc == 0 && i < d->n; i++)
		pseudo_keyed_init(&d->keyed[i], d->keys + i * PSEUDO_KEY_LEN);
	if (rc == 0 &&
	    (sodium_mprotect_readonly(d->keys) != 0 || sodium_mprotect_readonly(d->keyed) != 0)) {
		keys_seterr(err, errlen, "key file '%s': cannot protect key memory", path);
		rc = ISG_ERR_NOMEM;
	}
	if (rc)
		domain_release(d);
	return rc;
}

static int domain_cmp(const void *a, const void *b)
{
	return strcmp(((const struct domain *)a)->name, ((const struct domain *)b)->name);
}

/* The domain name of a directory entry "NAME.key" ("" when too long); false for others. */
static bool key_file_name(const char *entry, char name[static KEYS_DOMAIN_NAME_MAX + 1])
{
	size_t len = strlen(entry), sl = strlen(DOMAIN_SUFFIX);
	if (len < sl || strcmp(entry + len - sl, DOMAIN_SUFFIX) != 0)
		return false;
	size_t n = len - sl;
	if (n > KEYS_DOMAIN_NAME_MAX)
		n = 0; /* fails validation */
	memcpy(name, entry, n);
	name[n] = '\0';
	return true;
}

static int load_all(int dfd, const char *dirpath, struct keyring *ring, char *err, size_t errlen)
{
	int fd2 = dup(dfd);
	DIR *d = fd2 >= 0 ? fdopendir(fd2) : NULL;
	size_t cap = 0;
	int rc = 0;

	if (!d) {
		keys_seterr(err, errlen, "key directory '%s': cannot read: %s", dirpath,
		            strerror(errno));
		if (fd2 >= 0)
			close(fd2);
		return ISG_ERR_IO;
	}
	for (;;) {
		errno = 0;
		struct dirent *e = readdir(d);
		if (!e) {
			if (errno) {
				keys_seterr(err, errlen, "key directory '%s': cannot read: %s",
				            dirpath, strerror(errno));
				rc = ISG_ERR_IO;
			}
			break;
		}
		char name[KEYS_DOMAIN_NAME_MAX + 1];
		if (!key_file_name(e->d_name, name))
			continue; /* NAME.key.tmp of a rotation, notes, backups */
		char path[KEYS_PATH_MAX];
		int n = snprintf(path, sizeof(path), "%s/%s", dirpath, e->d_name);
		if (n < 0 || (size_t)n >= sizeof(path)) {
			keys_seterr(err, errlen, "key directory path '%s' is too long", dirpath);
			rc = ISG_ERR_TOO_BIG;
			break;
		}
		if (!keys_domain_name_valid(name)) {
			keys_seterr(err, errlen,
			            "key file '%s': the file name must be NAME.key with NAME 1 to "
			            "%d characters a-z, 0-9 and '-', not starting with '-'",
			            path, KEYS_DOMAIN_NAME_MAX);
			rc = ISG_ERR_INVALID;
			break;
		}
		if (ring->n == DOMAINS_MAX) {
			keys_seterr(err, errlen, "key directory '%s' holds more than %d domains",
			            dirpath, DOMAINS_MAX);
			rc = ISG_ERR_LIMIT;
			break;
		}
		if (ring->n == cap) {
			size_t ncap = cap ? 2 * cap : 8;
			struct domain *p = realloc(ring->domains, ncap * sizeof(*p));
			if (!p) {
				keys_seterr(err, errlen, "key directory '%s': out of memory",
				            dirpath);
				rc = ISG_ERR_NOMEM;
				break;
			}
			ring->domains = p;
			cap = ncap;
		}
		rc = load_domain(dfd, path, name, &ring->domains[ring->n], err, errlen);
		if (rc)
			break;
		ring->n++;
	}
	closedir(d);
	if (rc == 0 && ring->n > 1)
		qsort(ring->domains, ring->n, sizeof(*ring->domains), domain_cmp);
	return rc;
}

int keys_load_domains(const char *dir, struct keyring **out, char *err, size_t errlen)
{
	char path[KEYS_PATH_MAX];
	int dfd = -1;

	*out = NULL;
	if (sodium_init() < 0) {
		keys_seterr(err, errlen, "libsodium failed to initialise");
		return ISG_ERR_CRYPTO;
	}
	struct keyring *ring = calloc(1, sizeof(*ring));
	if (!ring) {
		keys_seterr(err, errlen, "out of memory");
		return ISG_ERR_NOMEM;
	}
	/* A missing keys directory (mistyped, unmounted) is an error; a missing domains/ is not. */
	int rc = open_domains_dir(dir, path, sizeof(path), &dfd, err, errlen);
	if (rc == 0 && dfd < 0) {
		*out = ring; /* no domains yet */
		return 0;
	}
	if (rc == 0)
		rc = load_all(dfd, path, ring, err, errlen);
	if (dfd >= 0)
		close(dfd);
	if (rc) {
		keyring_free(ring);
		return rc;
	}
	*out = ring;
	return 0;
}

void keyring_free(struct keyring *ring)
{
	if (!ring)
		return;
	for (size_t i = 0; i < ring->n; i++)
		domain_release(&ring->domains[i]);
	free(ring->domains);
	free(ring);
}

/* --- the keyring ------------------------------------------------------------ */

static const struct domain *keyring_find(const struct keyring *ring, const char *name)
{
	if (!ring || !name || ring->n == 0)
		return NULL;
	struct domain key;
	if (str_copy(key.name, name, sizeof(key.name)) >= sizeof(key.name))
		return NULL;
	return bsearch(&key, ring->domains, ring->n, sizeof(*ring->domains), domain_cmp);
}

/* keyring_find for a batch, whose requests mostly name the domain the one before did. */
static const struct domain *keyring_find_next(const struct keyring *ring, const char *name,
                                              const struct domain **last)
{
	if (!*last || !name || strcmp(name, (*last)->name) != 0)
		*last = keyring_find(ring, name);
	return *last;
}

const char *keys_missing_domain_why(char *buf, size_t size, const char *keys_dir,
                                    const char *domain)
{
	snprintf(buf, size, "no file '%s/%s/%s.key' (create it with: isgctl keys new-domain %s %s)",
	         keys_dir, KEYS_DOMAINS_DIR, domain, keys_dir, domain);
	return buf;
}

bool keyring_has(const struct keyring *ring, const char *domain)
{
	return keyring_find(ring, domain) != NULL;
}

/*
 * The version that answers as `previous` on day `today`: the newest older
 * version not yet retired (a version retires on its RETIRES day), or
 * SIZE_MAX.
 */
static size_t domain_previous(const struct domain *d, int64_t today)
{
	for (size_t j = d->n - 1; j-- > 0;)
		if (today < d->versions[j].retires)
			return j;
	return SIZE_MAX;
}

static void answer(const struct domain *d, size_t j, const struct pseudo_request *r,
                   char out[static PSEUDO_TEXT_MAX])
{
	uint8_t hash[PSEUDO_HASH_LEN];
	pseudo_hash_keyed(&d->keyed[j], r->type, r->norm, r->len, hash);
	pseudo_format(hash, d->versions[j].version, out);
	sodium_memzero(hash, sizeof(hash));
}

/*
 * Read-only access to an immutable keyring, and pseudo_hash keeps its state
 * on the stack: any number of threads may call this at once.
 */
static int keyring_pseudonymise_parts(void *ctx, const struct pseudo_batch *parts, size_t n_parts,
                                      int64_t today_days)
{
	const struct keyring *ring = ctx;
	const struct domain *last = NULL;
	/* Check the whole batch first, so a refusal fills nothing. */
	for (size_t p = 0; p < n_parts; p++) {
		for (size_t i = 0; i < parts[p].n; i++) {
			const struct pseudo_request *r = &parts[p].reqs[i];
			const struct domain *d = keyring_find_next(ring, r->domain, &last);
			if (!d)
				return ISG_ERR_NOT_FOUND;
			if (!d->keys) /* a description: it holds no key */
				return ISG_ERR_CRYPTO;
			if ((!r->norm && r->len) || r->len > PSEUDO_VALUE_MAX ||
			    (unsigned)r->type == 0 || (unsigned)r->type > 0xff)
				return ISG_ERR_INVALID;
		}
	}
	for (size_t p = 0; p < n_parts; p++) {
		for (size_t i = 0; i < parts[p].n; i++) {
			struct pseudo_request *r = &parts[p].reqs[i];
			const struct domain *d = keyring_find_next(ring, r->domain, &last);
			answer(d, d->n - 1, r, r->out);
			size_t prev = domain_previous(d, today_days);
			if (prev == SIZE_MAX)
				r->previous[0] = '\0';
			else
				answer(d, prev, r, r->previous);
		}
	}
	return 0;
}

static int keyring_pseudonymise(void *ctx, struct pseudo_request *reqs, size_t n,
                                int64_t today_days)
{
	const struct pseudo_batch all = {reqs, n};
	return keyring_pseudonymise_parts(ctx, &all, 1, today_days);
}

size_t keyring_pseudonymise_all(const struct keyring *ring, const char *domain,
                                enum pseudo_type type, const char *norm, size_t len,
                                char (*out)[PSEUDO_TEXT_MAX], size_t max)
{
	const struct domain *d = keyring_find(ring, domain);
	if (!d || !d->keys)
		return 0;
	const struct pseudo_request r = {.domain = domain, .type = type, .norm = norm, .len = len};
	for (size_t j = 0; j < d->n && j < max; j++)
		answer(d, j, &r, out[j]);
	return d->n;
}

struct pseudo_service keyring_service(const struct keyring *ring)
{
	/* The service only reads through ctx; the cast drops const for the generic slot. */
	return (struct pseudo_service){.ctx = (void *)ring,
	                               .pseudonymise = keyring_pseudonymise,
	                               .pseudonymise_parts = keyring_pseudonymise_parts};
}

size_t keyring_domain_count(const struct keyring *ring)
{
	return ring ? ring->n : 0;
}

const char *keyring_domain_name(const struct keyring *ring, size_t i, size_t *n_versions)
{
	if (!ring || i >= ring->n)
		return NULL;
	if (n_versions)
		*n_versions = ring->domains[i].n;
	return ring->domains[i].name;
}

int keyring_version_info(const struct keyring *ring, size_t i, size_t j, int64_t today_days,
                         struct keys_version_info *out)
{
	if (!ring || i >= ring->n || j >= ring->domains[i].n)
		return ISG_ERR_NOT_FOUND;
	const struct domain *d = &ring->domains[i];
	const struct domain_version *v = &d->versions[j];
	out->version = v->version;
	out->created = v->created;
	out->retires = v->retires;
	if (j + 1 == d->n)
		out->state = KEYS_VERSION_CURRENT;
	else if (today_days >= v->retires)
		out->state = KEYS_VERSION_RETIRED;
	else if (domain_previous(d, today_days) == j)
		out->state = KEYS_VERSION_PREVIOUS;
	else
		out->state = KEYS_VERSION_SUPERSEDED;
	return 0;
}

/* --- descriptions: the keyring without its keys ------------------------------ */

/* u32 domains; per domain: u8 name length, name, u32 versions; per version:
 * u32 version, i64 created, i64 retires. Host byte order: it never leaves
 * the machine. */
int keyring_describe(const struct keyring *ring, uint8_t **out, size_t *len)
{
	size_t total = 4;
	for (size_t i = 0; i < ring->n; i++)
		total += 1 + strlen(ring->domains[i].name) + 4 + ring->domains[i].n * 20;
	uint8_t *b = malloc(total), *p = b;
	if (!b)
		return ISG_ERR_NOMEM;
	uint32_t n = (uint32_t)ring->n;
	memcpy(p, &n, 4);
	p += 4;
	for (size_t i = 0; i < ring->n; i++) {
		const struct domain *d = &ring->domains[i];
		size_t nl = strlen(d->name);
		uint32_t nv = (uint32_t)d->n;
		*p++ = (uint8_t)nl;
		memcpy(p, d->name, nl);
		p += nl;
		memcpy(p, &nv, 4);
		p += 4;
		for (size_t j = 0; j < d->n; j++) {
			memcpy(p, &d->versions[j].version, 4);
			memcpy(p + 4, &d->versions[j].created, 8);
			memcpy(p + 12, &d->versions[j].retires, 8);
			p += 20;
		}
	}
	*out = b;
	*len = total;
	return 0;
}

struct reader {
	const uint8_t *p;
	size_t left;
};

static bool take(struct reader *r, void *dst, size_t n)
{
	if (r->left < n)
		return false;
	memcpy(dst, r->p, n);
	r->p += n;
	r->left -= n;
	return true;
}

static int describe_domain(struct reader *r, struct domain *d, const struct domain *prev)
{
	uint8_t nl;
	uint32_t nv;
	if (!take(r, &nl, 1) || nl > KEYS_DOMAIN_NAME_MAX || !take(r, d->name, nl))
		return ISG_ERR_PARSE;
	d->name[nl] = '\0';
	/* A NUL among its bytes would make it read as a shorter name. */
	if (strlen(d->name) != nl || !keys_domain_name_valid(d->name) ||
	    (prev && strcmp(prev->name, d->name) >= 0))
		return ISG_ERR_PARSE;
	if (!take(r, &nv, 4) || nv == 0 || nv > DOMAIN_VERSIONS_MAX || nv > r->left / 20)
		return ISG_ERR_PARSE;
	d->versions = calloc(nv, sizeof(*d->versions));
	if (!d->versions)
		return ISG_ERR_NOMEM;
	d->n = nv;
	for (size_t j = 0; j < nv; j++) {
		struct domain_version *v = &d->versions[j];
		if (!take(r, &v->version, 4) || !take(r, &v->created, 8) ||
		    !take(r, &v->retires, 8))
			return ISG_ERR_PARSE;
		if (j > 0 && v->version <= d->versions[j - 1].version)
			return ISG_ERR_PARSE;
	}
	return 0;
}

int keyring_from_description(const uint8_t *buf, size_t len, struct keyring **out)
{
	*out = NULL;
	struct reader r = {buf, len};
	uint32_t n;
	if (!take(&r, &n, 4) || n > DOMAINS_MAX)
		return ISG_ERR_PARSE;
	struct keyring *ring = calloc(1, sizeof(*ring));
	if (!ring || (n && !(ring->domains = calloc(n, sizeof(*ring->domains))))) {
		free(ring);
		return ISG_ERR_NOMEM;
	}
	int rc = 0;
	for (uint32_t i = 0; i < n && rc == 0; i++) {
		ring->n = i + 1;
		rc = describe_domain(&r, &ring->domains[i], i ? &ring->domains[i - 1] : NULL);
	}
	if (rc == 0 && r.left != 0)
		rc = ISG_ERR_PARSE;
	if (rc) {
		keyring_free(ring);
		return rc;
	}
	*out = ring;
	return 0;
}

/* --- writing ---------------------------------------------------------------- */

/* One file line for version v with its key, into out (at least DOMAIN_LINE_MAX + 1 bytes). */
static size_t format_line(char *out, const char *name, const struct domain_version *v,
                          const uint8_t key[static PSEUDO_KEY_LEN])
{
	char created[32], retires[32] = "-";
	time_format_ms(created, sizeof(created), v->created * 86400000);
	created[DOMAIN_DATE_LEN] = '\0';
	if (v->retires != KEYS_RETIRES_NEVER) {
		time_format_ms(retires, sizeof(retires), v->retires * 86400000);
		retires[DOMAIN_DATE_LEN] = '\0';
	}
	int n = snprintf(out, DOMAIN_LINE_MAX + 1, DOMAIN_MAGIC " %s %" PRIu32 " %s %s ", name,
	                 v->version, created, retires);
	if (n < 0 || (size_t)n + DOMAIN_B64_LEN + 1 > DOMAIN_LINE_MAX)
		fatal("domain key line does not fit");
	sodium_bin2base64(out + n, DOMAIN_B64_LEN + 1, key, PSEUDO_KEY_LEN,
	                  sodium_base64_VARIANT_ORIGINAL);
	out[n + DOMAIN_B64_LEN] = '\n';
	return (size_t)n + DOMAIN_B64_LEN + 1;
}

/* Write len bytes to fd (a new file of mode 0600), then fsync and close it. */
/* A fresh random key as version `version` of d's line, appended to buf at *len. */
static void append_new_version(char *buf, size_t *len, const char *name, uint32_t version,
                               int64_t today)
{
	uint8_t *key = sodium_malloc(PSEUDO_KEY_LEN);
	if (!key)
		fatal("cannot allocate guarded memory for a key");
	randombytes_buf(key, PSEUDO_KEY_LEN);
	struct domain_version v = {version, today, KEYS_RETIRES_NEVER};
	*len += format_line(buf + *len, name, &v, key);
	sodium_memzero(key, PSEUDO_KEY_LEN);
	sodium_free(key);
}

int keys_domain_create(const char *dir, const char *name, int64_t today, char *err, size_t errlen)
{
	char dpath[KEYS_PATH_MAX], path[KEYS_PATH_MAX], file[KEYS_DOMAIN_NAME_MAX + 8];
	char *buf = NULL;
	size_t len = 0;
	int created = 0, dfd = -1;
	int rc;

	if (!keys_domain_name_valid(name))
		return refuse_name(name, err, errlen);
	if (!dir) {
		keys_seterr(err, errlen, "no key directory given");
		return ISG_ERR_INVALID;
	}
	if (today < 0 || today > DOMAIN_DAYS_MAX) {
		keys_seterr(err, errlen, "today's date is out of range; is the clock right?");
		return ISG_ERR_INVALID;
	}
	snprintf(file, sizeof(file), "%s" DOMAIN_SUFFIX, name);
	rc = keys_path(dpath, sizeof(dpath), dir, KEYS_DOMAINS_DIR, err, errlen);
	if (rc == 0)
		rc = keys_path(path, sizeof(path), dpath, file, err, errlen);
	if (rc == 0) /* before domains/ is made in it */
		rc = keys_check_dir(dir, err, errlen);
	if (rc == 0)
		rc = keys_prepare_dir(dpath, &created, err, errlen);
	if (rc == 0) {
		rc = open_domains_dir(dir, dpath, sizeof(dpath), &dfd, err, errlen);
		if (rc == 0 && dfd < 0) { /* it was there a moment ago */
			keys_seterr(err, errlen, "key directory '%s' disappeared", dpath);
			rc = ISG_ERR_NOT_FOUND;
		}
	}
	if (rc)
		goto out;
	buf = sodium_malloc(DOMAIN_LINE_MAX + 1);
	if (!buf) {
		keys_seterr(err, errlen, "key file '%s': cannot allocate guarded memory", path);
		rc = ISG_ERR_NOMEM;
		goto out;
	}
	append_new_version(buf, &len, name, 1, today);
	/* Whole or not at all; NAME.key.tmp is also rotation's lock. */
	bool exists;
	rc = keys_create_file(dfd, dpath, file, buf, len, &exists, err, errlen);
	if (rc == ISG_ERR_CONFLICT && exists)
		keys_seterr(err, errlen,
		            "domain '%s' exists ('%s'); refusing to overwrite it: use "
		            "'isgctl keys rotate' for a new key version",
		            name, path);
	if (rc == 0 && created && (rc = keys_fsync_dir(dir, err, errlen)) != 0)
		unlinkat(dfd, file, 0);
out:
	if (buf) {
		sodium_memzero(buf, DOMAIN_LINE_MAX + 1);
		sodium_free(buf);
	}
	if (dfd >= 0)
		close(dfd);
	return rc;
}

int keys_new_domain(const char *dir, const char *name, char *err, size_t errlen)
{
	if (sodium_init() < 0) {
		keys_seterr(err, errlen, "libsodium failed to initialise");
		return ISG_ERR_CRYPTO;
	}
	return keys_domain_create(dir, name, date_days_of_ms(time_now_ms()), err, errlen);
}

/* What a rotation may do to d on `today`; the reason in err otherwise. */
static int rotation_allowed(const struct domain *d, const char *path, int64_t today, char *err,
                            size_t errlen)
{
	const struct domain_version *cur = &d->versions[d->n - 1];
	if (d->n >= DOMAIN_VERSIONS_MAX) {
		keys_seterr(err, errlen,
		            "key file '%s' holds %d versions already; remove retired versions "
		            "from its start first (docs/keys.md)",
		            path, DOMAIN_VERSIONS_MAX);
		return ISG_ERR_LIMIT;
	}
	if (cur->version == UINT32_MAX) {
		keys_seterr(err, errlen, "key file '%s': no version number is left", path);
		return ISG_ERR_LIMIT;
	}
	/* Every version, not only the current one: the parser takes older lines in any date
	 * order, and an older one created after today would retire before its creation once
	 * the rotation cuts its retirement to today + overlap, a file the loader refuses. */
	for (size_t j = 0; j < d->n; j++) {
		if (today >= d->versions[j].created)
			continue;
		keys_seterr(err, errlen,
		            "key file '%s': version %" PRIu32
		            " was created after today: the clock is wrong or the file's dates "
		            "are; the file is left as it was",
		            path, d->versions[j].version);
		return ISG_ERR_INVALID;
	}
	return 0;
}

/*
 * The new contents of d's file after a rotation on today, into buf; its length.
 * Every older version retires by today + overlap too, or one still in its own
 * overlap would answer as previous again and keep alive the linkage an
 * emergency rotation (overlap 0) is meant to break. No retirement is extended.
 */
static size_t rotated_contents(const struct domain *d, char *buf, int64_t today,
                               int64_t overlap_days)
{
	size_t len = 0;
	for (size_t j = 0; j < d->n; j++) {
		struct domain_version v = d->versions[j];
		if (v.retires > today + overlap_days)
			v.retires = today + overlap_days;
		len += format_line(buf + len, d->name, &v, d->keys + j * PSEUDO_KEY_LEN);
	}
	append_new_version(buf, &len, d->name, d->versions[d->n - 1].version + 1, today);
	return len;
}

/*
 * A belt to rotation_allowed: the rotated contents read back with the loader's own
 * parser before they replace the file, so a rotation never leaves a file isgd
 * refuses at its next reload or start.
 */
static int rotation_loadable(const struct domain *d, const char *path, const char *buf, size_t len,
                             char *err, size_t errlen)
{
	struct domain check = {0};
	char why[KEYS_PATH_MAX + 256];
	int rc = parse_file(path, d->name, buf, len, &check, why, sizeof(why));
	domain_release(&check);
	if (rc == 0)
		return 0;
	keys_seterr(err, errlen,
	            "rotation refused, the file is left as it was: its result would "
	            "not load: %s",
	            why);
	return rc == ISG_ERR_NOMEM ? rc : ISG_ERR_INVALID;
}

int keys_rotate(const char *dir, const char *name, int64_t today_days, int64_t overlap_days,
                uint32_t *version, char *err, size_t errlen)
{
	char dpath[KEYS_PATH_MAX], path[KEYS_PATH_MAX], tmppath[KEYS_PATH_MAX];
	char file[KEYS_DOMAIN_NAME_MAX + 8], tmp[KEYS_DOMAIN_NAME_MAX + 12];
	struct domain d = {0};
	char *buf = NULL;
	size_t size = 0, len = 0;
	int dfd = -1, fd = -1;
	bool own_tmp = false;
	int rc;

	if (!keys_domain_name_valid(name))
		return refuse_name(name, err, errlen);
	if (overlap_days < 0 || overlap_days > KEYS_OVERLAP_MAX) {
		keys_seterr(err, errlen, "overlap of %" PRId64 " days is out of range 0 to %d",
		            overlap_days, KEYS_OVERLAP_MAX);
		return ISG_ERR_INVALID;
	}
	if (today_days < 0 || today_days + overlap_days > DOMAIN_DAYS_MAX) {
		keys_seterr(err, errlen, "today's date is out of range; is the clock right?");
		return ISG_ERR_INVALID;
	}
	if (sodium_init() < 0) {
		keys_seterr(err, errlen, "libsodium failed to initialise");
		return ISG_ERR_CRYPTO;
	}
	snprintf(file, sizeof(file), "%s" DOMAIN_SUFFIX, name);
	snprintf(tmp, sizeof(tmp), "%s" DOMAIN_TMP_SUFFIX, name);
	/* A missing keys directory is told as such, not as a missing domains/. */
	rc = open_domains_dir(dir, dpath, sizeof(dpath), &dfd, err, errlen);
	if (rc == 0 && dfd < 0) {
		keys_seterr(err, errlen,
		            "no domain keys in '%s'; create one with 'isgctl keys new-domain'",
		            dpath);
		rc = ISG_ERR_NOT_FOUND;
	}
	if (rc == 0)
		rc = keys_path(path, sizeof(path), dpath, file, err, errlen);
	if (rc == 0)
		rc = keys_path(tmppath, sizeof(tmppath), dpath, tmp, err, errlen);
	if (rc)
		goto out;
	/* The temporary file, created exclusively, is also the lock against a concurrent rotation:
	 * the current file is read only once it is held. */
	fd = openat(dfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0 && errno == EEXIST) {
		keys_seterr(err, errlen,
		            "'%s' exists: another rotation is running or one was interrupted; "
		            "once none is running, remove it and retry",
		            tmppath);
		rc = ISG_ERR_CONFLICT;
		goto out;
	}
	if (fd < 0) {
		keys_seterr(err, errlen, "key file '%s': cannot create: %s", tmppath,
		            strerror(errno));
		rc = ISG_ERR_IO;
		goto out;
	}
	own_tmp = true;
	rc = load_domain(dfd, path, name, &d, err, errlen);
	if (rc == ISG_ERR_NOT_FOUND)
		keys_seterr(err, errlen,
		            "domain '%s' has no key file '%s'; create it with 'isgctl keys "
		            "new-domain'",
		            name, path);
	if (rc == 0)
		rc = rotation_allowed(&d, path, today_days, err, errlen);
	if (rc)
		goto out;
	size = (d.n + 1) * DOMAIN_LINE_MAX + 1;
	buf = sodium_malloc(size);
	if (!buf) {
		keys_seterr(err, errlen, "key file '%s': cannot allocate guarded memory", path);
		rc = ISG_ERR_NOMEM;
		goto out;
	}
	len = rotated_contents(&d, buf, today_days, overlap_days);
	rc = rotation_loadable(&d, path, buf, len, err, errlen);
	if (rc)
		goto out;
	rc = keys_write_synced(fd, tmppath, buf, len, err, errlen);
	fd = -1;
	if (rc)
		goto out;
	if (renameat(dfd, tmp, dfd, file) != 0) {
		keys_seterr(err, errlen, "key file '%s': cannot replace: %s", path,
		            strerror(errno));
		rc = ISG_ERR_IO;
		goto out;
	}
	own_tmp = false;
	rc = keys_fsync_dirfd(dfd, dpath, err, errlen);
	if (rc == 0 && version)
		*version = d.versions[d.n - 1].version + 1;
out:
	if (buf) {
		sodium_memzero(buf, size);
		sodium_free(buf);
	}
	if (fd >= 0)
		close(fd);
	if (own_tmp) /* failed before the rename: the old file stays as it was */
		unlinkat(dfd, tmp, 0);
	domain_release(&d);
	if (dfd >= 0)
		close(dfd);
	return rc;
}
