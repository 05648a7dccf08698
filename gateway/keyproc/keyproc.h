/*
 * keyproc: isgd's key process (privilege separation, docs/security.md).
 *
 * keyproc_start forks a child that loads the storage key, the audit signing
 * key and, on request, the linkage-domain keys. Before it answers anything
 * it gives up what it does not need: it keeps no file descriptor but its
 * channels, cannot create sockets or run programs (seccomp), cannot gain
 * privileges or capabilities and cannot be ptraced or dumped. It answers
 * requests over socketpairs, one request at a time per channel:
 * pseudonyms (a batch per call), fresh data keys wrapped under the storage
 * key, unwrapping them again, opening payloads sealed under the storage key
 * itself (before envelopes), and signatures of audit checkpoints. The
 * gateway's threads never hold the storage key, the signing key or a domain
 * key, only data keys, each for one payload (docs/security.md).
 *
 * Every call may be made from any thread; at most `channels` at once, the
 * rest wait for a free channel. A channel that fails mid-call (a read or a
 * write) is closed and not used again: that call fails with ISG_ERR_IO,
 * later ones go over the others. When the key process is gone, or every
 * channel has failed, every call fails with ISG_ERR_IO.
 */
#ifndef ISG_KEYPROC_H
#define ISG_KEYPROC_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "keys/keys.h"
#include "store/store.h"

struct keyproc;
struct audit_signer;

struct keyproc_options {
	const char *keys_dir;
	const char *audit_origin; /* the checkpoints' signer name */
	unsigned channels;        /* calls that may run at once; default 4, at most 256 */
};

/*
 * Fork the key process and wait until it has loaded the storage and audit
 * signing keys. Call before any other thread exists. On failure err says
 * why (a key file's problem, as keys_load_* word it).
 */
int keyproc_start(const struct keyproc_options *opt, struct keyproc **out, char *err, size_t errlen)
    __attribute__((warn_unused_result));
/*
 * Close the channels (the key process then wipes its keys and exits), reap
 * it and free. True when it ended well (exit status 0); NULL ok. *status
 * (when status is not NULL) gets its wait status, or -1 when it could not
 * be reaped or never started.
 */
bool keyproc_stop(struct keyproc *kp, int *status);
/* The key process's pid. */
pid_t keyproc_pid(const struct keyproc *kp);
/*
 * If the key process has exited, reap it: true, with its wait status.
 * keyproc_stop then only frees.
 */
bool keyproc_exited(struct keyproc *kp, int *status);

/* The audit signer: its public key and name, signing in the key process. */
const struct audit_signer *keyproc_signer(const struct keyproc *kp);
/*
 * The store's witness of the audit log: the key process signs only
 * checkpoints of the tree the store started it with (once per key process)
 * and the leaves appended since. isgd passes it with keyproc_signer, or
 * nothing is signed.
 */
struct store_witness keyproc_witness(struct keyproc *kp);
/* The store's sealer: data keys made and unwrapped, and payloads sealed
 * under the storage key itself opened, in the key process. */
struct store_sealer keyproc_sealer(struct keyproc *kp);

/*
 * A generation of linkage-domain keys, loaded afresh from the keys
 * directory by the key process. *desc describes it (names, versions,
 * dates; no key) and belongs to the ring.
 */
struct keyproc_ring;
int keyproc_ring_load(struct keyproc *kp, struct keyproc_ring **out, char *err, size_t errlen)
    __attribute__((warn_unused_result));
const struct keyring *keyproc_ring_keys(const struct keyproc_ring *r);
/* Pseudonyms from this generation's keys, one call per batch. */
struct pseudo_service keyproc_ring_service(struct keyproc_ring *r);
/* Tell the key process to wipe this generation, and free it. NULL ok. */
void keyproc_ring_free(struct keyproc_ring *r);

#endif
