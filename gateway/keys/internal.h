/*
 * keys internals shared by the module's files (keys.c: the storage and
 * signing keys; domain.c: linkage-domain keys and the keyring); not part of
 * the interface.
 */
#ifndef ISG_KEYS_INTERNAL_H
#define ISG_KEYS_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "keys/keys.h"

/* Paths built from the keys directory are at most this long. */
#define KEYS_PATH_MAX 4096

/* snprintf into err (when err is not NULL). */
void keys_seterr(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* out = dir/file, or ISG_ERR_TOO_BIG with the reason in err. */
int keys_path(char *out, size_t size, const char *dir, const char *file, char *err, size_t errlen);
/* write(2) all of buf, retrying on EINTR; 0 or -1 with errno set. */
int keys_write_all(int fd, const char *buf, size_t len);
/* Write buf to fd as a key file (mode 0600), fsync it and close fd; errors name path. */
int keys_write_synced(int fd, const char *path, const char *buf, size_t len, char *err,
                      size_t errlen);
/* fsync an open directory or the directory at path. */
int keys_fsync_dirfd(int fd, const char *path, char *err, size_t errlen);
int keys_fsync_dir(const char *path, char *err, size_t errlen);
/*
 * Refuse (ISG_ERR_DENIED, the path, mode and owner in err) a key directory,
 * open as fd, that is not a directory, is writable by group or others, or is
 * owned by another user than this process's or root.
 */
int keys_check_dir_secrecy(int fd, const char *path, char *err, size_t errlen);
/*
 * Why dfd/name (path in messages), a key file or, with dir, a key directory,
 * could not be opened (errno e): when it is there but its mode or owner breaks
 * the rules above, that, as for an open one (ISG_ERR_DENIED); otherwise
 * "cannot open" and strerror(e).
 */
int keys_open_failed(int dfd, const char *name, const char *path, bool dir, int e, char *err,
                     size_t errlen);
/* keys_check_dir_secrecy on the directory at path; ISG_ERR_NOT_FOUND, with a message, if missing.
 */
int keys_check_dir(const char *path, char *err, size_t errlen);
/* mkdir path 0700; an existing directory is fine if keys_check_dir passes. *created says which. */
int keys_prepare_dir(const char *path, int *created, char *err, size_t errlen);

/* What a key file is written as before it gets its name (docs/keys.md). */
#define KEYS_TMP_SUFFIX ".tmp"

/*
 * Create dfd/name (dpath names the directory in messages) holding buf, mode
 * 0600, so that name never exists incomplete, even after a crash: buf is
 * written and synced as name.tmp, created exclusively (also a lock against
 * another keys command), which is then linked to name, failing when name
 * exists, so nothing is ever replaced; then the directory is synced. A failure
 * removes what it wrote. ISG_ERR_CONFLICT when name exists (*name_exists set)
 * or name.tmp does (*name_exists clear), the reason in err.
 */
int keys_create_file(int dfd, const char *dpath, const char *name, const char *buf, size_t len,
                     bool *name_exists, char *err, size_t errlen);

/*
 * Create dir/domains (0700) if needed and dir/domains/NAME.key with version
 * 1 created on `today` (days since 1970-01-01). ISG_ERR_CONFLICT when the
 * domain exists.
 */
int keys_domain_create(const char *dir, const char *name, int64_t today, char *err, size_t errlen);

#endif
