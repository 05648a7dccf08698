/*
 * keys: the gateway's secret keys on disk. Key files live in the keys
 * directory, must be regular files of mode 0600 (or stricter) owned by the
 * user running isgd, and are refused otherwise, like OpenBSD's
 * check_file_secrecy. Keys are read into libsodium guarded memory and wiped
 * when freed. The file format is in docs/keys.md.
 */
#ifndef ISG_KEYS_H
#define ISG_KEYS_H

#include <stddef.h>
#include <stdint.h>

#define KEYS_STORAGE_FILE "storage.key"
#define KEYS_AUDIT_SIGNING_FILE "audit-signing.key"
#define KEYS_STORAGE_LEN 32

/*
 * Refuse a key file that is not a regular file, is group- or
 * world-accessible, or is owned by someone else. 0 or ISG_ERR_DENIED, with
 * the reason in err (path and mode quoted).
 */
int keys_check_secrecy(int fd, const char *path, char *err, size_t errlen);

/*
 * Read the storage key from dir/storage.key into sodium_malloc'd memory
 * (read-only after loading). 0, or ISG_ERR_NOT_FOUND / ISG_ERR_DENIED /
 * ISG_ERR_PARSE / ISG_ERR_IO with the reason in err.
 */
int keys_load_storage(const char *dir, uint8_t **key, char *err, size_t errlen)
	__attribute__((warn_unused_result));
/* Wipe and free a key returned by keys_load_*; NULL ok. */
void keys_free(uint8_t *key);

/*
 * Create dir (0700) if needed and write a fresh storage key and audit signing
 * key (Ed25519) with mode 0600. Refuses to overwrite an existing key file.
 */
int keys_init(const char *dir, char *err, size_t errlen) __attribute__((warn_unused_result));

#endif
