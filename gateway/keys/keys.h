/*
 * keys: the gateway's secret keys on disk. Key files live in the keys
 * directory, must be regular files of mode 0600 (or stricter) owned by the
 * user running isgd, and are refused otherwise, like OpenBSD's
 * check_file_secrecy. Keys are read into libsodium guarded memory and wiped
 * when freed. The file format is in docs/keys.md.
 */
#ifndef ISG_KEYS_H
#define ISG_KEYS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pseudo/pseudo.h"

#define KEYS_STORAGE_FILE "storage.key"
#define KEYS_AUDIT_SIGNING_FILE "audit-signing.key"
#define KEYS_STORAGE_LEN 32

/*
 * Refuse a key file that is not a regular file, is group- or
 * world-accessible, or is owned by someone else. 0 or ISG_ERR_DENIED, with
 * the reason in err (path and mode quoted); ISG_ERR_IO when fstat fails.
 */
int keys_check_secrecy(int fd, const char *path, char *err, size_t errlen);
/* The same check for a file that must be owned by `owner` (not the caller). */
int keys_check_secrecy_for(int fd, const char *path, unsigned owner, char *err, size_t errlen);

/*
 * Read the storage key from dir/storage.key into sodium_malloc'd memory
 * (read-only after loading). 0, or ISG_ERR_NOT_FOUND / ISG_ERR_DENIED /
 * ISG_ERR_PARSE / ISG_ERR_IO with the reason in err.
 */
int keys_load_storage(const char *dir, uint8_t **key, char *err, size_t errlen)
    __attribute__((warn_unused_result));
/*
 * Read the audit signing key (the 32-byte Ed25519 seed, kind
 * audit-signing-ed25519) from dir/audit-signing.key, with the same checks
 * and errors as keys_load_storage. For audit_signer_new; free with keys_free.
 */
int keys_load_audit_signing(const char *dir, uint8_t **seed, char *err, size_t errlen)
    __attribute__((warn_unused_result));
/* Wipe and free a key returned by keys_load_*; NULL ok. */
void keys_free(uint8_t *key);

/*
 * Create dir (0700) if needed and write a fresh storage key, audit signing
 * key (Ed25519) and linkage domain "audit" (domains/audit.key, the domain
 * the audit log's subjects are pseudonymised in), each with mode 0600.
 * Each file appears whole or not at all (written as NAME.tmp, then linked).
 * Refuses, before writing anything, when any of the three, or a NAME.tmp an
 * interrupted init left, exists, naming what to remove; a failure removes
 * the key files it wrote. 0, or an error with the reason in err.
 */
int keys_init(const char *dir, char *err, size_t errlen) __attribute__((warn_unused_result));

/*
 * Linkage-domain keys: one file per domain, keys_dir/domains/NAME.key, each
 * holding every version of the domain's key (docs/keys.md). The newest
 * version makes pseudonyms; after a rotation the previous version stays
 * usable until its retirement date, so recipients can link across it.
 */
#define KEYS_DOMAINS_DIR "domains"
/* The linkage domain the audit log pseudonymises subjects under (DESIGN.md section 8);
 * reserved, so no agreement names it (pseudo.h). */
#define KEYS_AUDIT_DOMAIN PSEUDO_AUDIT_DOMAIN
#define KEYS_DOMAIN_NAME_MAX 63
#define KEYS_OVERLAP_MAX 3660 /* days */

struct keyring;

/* True for a valid domain name: [a-z0-9][a-z0-9-]{0,62}. */
bool keys_domain_name_valid(const char *name);

/* Load every domain key file (each checked like the others); an empty or
 * missing domains directory gives an empty keyring, a missing keys directory
 * ISG_ERR_NOT_FOUND with "key directory 'DIR' does not exist; ...". */
int keys_load_domains(const char *dir, struct keyring **out, char *err, size_t errlen)
    __attribute__((warn_unused_result));
/* Wipe and free; NULL ok. */
void keyring_free(struct keyring *ring);
/* True when the keyring has a key for this domain. */
bool keyring_has(const struct keyring *ring, const char *domain);
/* What is missing when domain has no key in keys_dir, and how to make it, as isgd and
 * isgctl policy check --keys both say it: "no file 'KEYS_DIR/domains/NAME.key' (create
 * it with: isgctl keys new-domain KEYS_DIR NAME)". Returns buf. */
const char *keys_missing_domain_why(char *buf, size_t size, const char *keys_dir,
                                    const char *domain);
/* The keyring as the pseudonymisation service policy_apply uses. */
struct pseudo_service keyring_service(const struct keyring *ring);

/*
 * A keyring's description without its keys (domain names, versions and
 * dates), as bytes for a process that must not hold keys (isgd's key
 * process hands it to the network side). *out is malloc'd.
 */
int keyring_describe(const struct keyring *ring, uint8_t **out, size_t *len)
    __attribute__((warn_unused_result));
/*
 * A keyring from keyring_describe's bytes, checked as hostile input
 * (ISG_ERR_PARSE). It answers keyring_has, keyring_domain_* and
 * keyring_version_info, but holds no key: its service refuses with
 * ISG_ERR_CRYPTO and keyring_pseudonymise_all answers 0.
 */
int keyring_from_description(const uint8_t *buf, size_t len, struct keyring **out)
    __attribute__((warn_unused_result));

/* What `isgctl keys list` shows of a keyring: dates and versions, never keys. */
#define KEYS_RETIRES_NEVER INT64_MAX
enum keys_version_state {
	KEYS_VERSION_CURRENT,    /* makes the pseudonyms */
	KEYS_VERSION_PREVIOUS,   /* also answers, as the `previous` pseudonym */
	KEYS_VERSION_SUPERSEDED, /* not retired yet, but a newer previous version answers */
	KEYS_VERSION_RETIRED,    /* its retirement date has come: no longer used */
};
struct keys_version_info {
	uint32_t version;
	int64_t created; /* days since 1970-01-01 (UTC) */
	int64_t retires; /* first day it is no longer used; KEYS_RETIRES_NEVER if current */
	enum keys_version_state state; /* on the day asked about */
};
/* Domains are numbered 0..count-1 in name order. */
size_t keyring_domain_count(const struct keyring *ring);
/* Domain i's name and number of versions; NULL when i is out of range. */
const char *keyring_domain_name(const struct keyring *ring, size_t i, size_t *n_versions);
/* Version j (0 = oldest) of domain i on day today_days; ISG_ERR_NOT_FOUND if out of range. */
int keyring_version_info(const struct keyring *ring, size_t i, size_t j, int64_t today_days,
                         struct keys_version_info *out);

/*
 * The pseudonym of one value under every stored version of a domain's key,
 * retired versions included, oldest first: for searching the audit log,
 * whose entries keep the version that was current when they were written.
 * Fills at most max; returns how many versions the domain has (0: unknown).
 */
size_t keyring_pseudonymise_all(const struct keyring *ring, const char *domain,
                                enum pseudo_type type, const char *norm, size_t len,
                                char (*out)[PSEUDO_TEXT_MAX], size_t max);

/* Create domains/NAME.key with version 1, whole or not at all (written as
 * NAME.key.tmp, then linked); refuses an existing domain, or NAME.key.tmp. */
int keys_new_domain(const char *dir, const char *name, char *err, size_t errlen)
    __attribute__((warn_unused_result));
/*
 * Add a new version to a domain; the current version then retires after
 * overlap_days (0: at once; at most KEYS_OVERLAP_MAX). The file is
 * replaced atomically (rename).
 * *version gets the new version number.
 */
int keys_rotate(const char *dir, const char *name, int64_t today_days, int64_t overlap_days,
                uint32_t *version, char *err, size_t errlen) __attribute__((warn_unused_result));

#endif
