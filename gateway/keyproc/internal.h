/*
 * keyproc internals: the protocol between isgd and its key process.
 *
 * Both ends are the same binary on the same machine, so integers are in
 * host byte order; the key process still checks every length, because a
 * compromised gateway is exactly what it guards against.
 *
 *   request:  u32 length (of what follows) | u8 op | body
 *   response: u32 length (of what follows) | i32 status | body
 *
 *   HELLO (response only, on channel 0 at start): status; body = Ed25519
 *         public key, or on failure the reason text
 *   LOAD   body: -               -> u32 generation | keyring description
 *                                   (on failure the reason text)
 *   DROP   body: u32 generation  -> -
 *   PSEUDO body: u32 generation | i64 today | u32 n | n x (u8 domain length |
 *         domain | u8 type | u32 value length | value)
 *                                -> n x (u8 length | pseudonym | u8 length | previous)
 *   NEW_KEYS body: u32 n (1 to KEYPROC_KEYS_MAX)
 *                                -> n x (32-byte data key | the key wrapped
 *                                   under the storage key, 72 bytes)
 *   UNWRAP body: u32 n (1 to KEYPROC_KEYS_MAX) | n x wrapped key (72 bytes)
 *                                -> n x (u8 1 | data key, or u8 0 | 32 zeros)
 *   OPEN   body: u32 ad length | ad | nonce | sealed -> plaintext
 *         (payloads sealed under the storage key itself, before envelopes)
 *   LOG_START body: the audit tree as isgd loaded it at store open
 *         (audit_tree_encode); once per key process -> -
 *   LOG_APPEND body: u64 size | n x 32-byte leaf hash (1 to
 *         KEYPROC_LOG_APPEND_MAX), size being the key process's tree size
 *         before them -> -
 *   SIGN   body: a checkpoint body of the configured origin whose size and
 *         root are exactly those of the tree LOG_START and LOG_APPEND built
 *         -> 64-byte signature
 */
#ifndef ISG_KEYPROC_INTERNAL_H
#define ISG_KEYPROC_INTERNAL_H

#include <stdint.h>
#include <sys/uio.h>

#include "keyproc/keyproc.h"

enum keyproc_op {
	KEYPROC_LOAD = 1,
	KEYPROC_DROP,
	KEYPROC_PSEUDO,
	KEYPROC_NEW_KEYS,
	KEYPROC_OPEN,
	KEYPROC_SIGN,
	KEYPROC_UNWRAP,
	KEYPROC_LOG_START,
	KEYPROC_LOG_APPEND,
};

/* Data keys made or unwrapped in one request. */
#define KEYPROC_KEYS_MAX 1024
/* Leaf hashes in one LOG_APPEND: 2 MiB, far inside a frame. */
#define KEYPROC_LOG_APPEND_MAX 65536

/* The largest message either way: a payload at the store's limit, and room. */
#define KEYPROC_FRAME_MAX (64u * 1024 * 1024 + 4096)
/*
 * The most pseudonyms one PSEUDO request may ask for: every answer then fits
 * a frame (two texts of at most PSEUDO_TEXT_MAX - 1 bytes, each after its
 * length byte), so the gateway never meets an answer it must refuse by
 * closing the channel, and the key process's arrays for one request stay
 * bounded (about 224 bytes an item, 117 MB at most).
 */
#define KEYPROC_PSEUDO_MAX ((KEYPROC_FRAME_MAX - 4) / (2 * PSEUDO_TEXT_MAX))
/* Generations of domain keys the key process keeps at once. */
#define KEYPROC_RINGS_MAX 16
#define KEYPROC_REASON_MAX 512

/* The key process's state: its keys and the generations of domain keys. */
struct keyproc_server;
/* Load the storage and audit signing keys; NULL with the reason in err. */
struct keyproc_server *keyproc_server_new(const struct keyproc_options *opt, char *err,
                                          size_t errlen);
/* Wipe every key and free. NULL ok. */
void keyproc_server_free(struct keyproc_server *sv);
/* What one request (op byte and body, len bytes) is answered. */
struct keyproc_answer {
	int32_t status;
	uint8_t *body; /* malloc'd, or NULL; the caller frees it */
	size_t len;
};
void keyproc_server_answer(struct keyproc_server *sv, const uint8_t *req, size_t len,
                           struct keyproc_answer *a);

/* The child's side: never returns. fds are its ends of the channels. */
_Noreturn void keyproc_serve(const struct keyproc_options *opt, int *fds, unsigned n);
/* Give up what the key process does not need; 0 or the failed step in *what. */
int keyproc_sandbox(const char **what);

/* Read or write exactly len bytes; 0, or -1 (errno set; EPIPE for a short read at EOF). */
int keyproc_read_full(int fd, void *buf, size_t len);
int keyproc_writev_full(int fd, struct iovec *iov, int n);

#endif
