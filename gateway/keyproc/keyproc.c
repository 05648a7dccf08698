/*
 * isgd's side of the key process: start it, and make calls over a pool of
 * channels (socketpairs), one call per channel at a time.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <sodium.h>

#include "audit/audit.h"
#include "keyproc/internal.h"
#include "util/util.h"

#define CHANNELS_DEFAULT 4
#define CHANNELS_MAX 256

struct keyproc {
	pid_t pid;
	bool reaped;
	int status;
	unsigned n;
	int *fds; /* -1 once broken */
	pthread_mutex_t mu;
	pthread_cond_t cv;
	/* under mu: the channels free for a call, and those not broken (free or in use) */
	unsigned *free_list, n_free, n_live;
	struct audit_signer *signer;
};

struct keyproc_ring {
	struct keyproc *kp;
	uint32_t gen;
	struct keyring *desc;
};

int keyproc_read_full(int fd, void *buf, size_t len)
{
	uint8_t *p = buf;
	while (len > 0) {
		ssize_t n = read(fd, p, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			if (n == 0)
				errno = EPIPE;
			return -1;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/*
 * The parts in one sendmsg where the socket takes them, so the peer wakes
 * once per message and not once per part. iov is consumed.
 */
int keyproc_writev_full(int fd, struct iovec *iov, int n)
{
	while (n > 0) {
		struct msghdr m = {.msg_iov = iov, .msg_iovlen = (size_t)n};
		ssize_t sent = sendmsg(fd, &m, MSG_NOSIGNAL);
		if (sent < 0 && errno == EINTR)
			continue;
		if (sent < 0)
			return -1;
		size_t left = (size_t)sent;
		while (n > 0 && left >= iov->iov_len) {
			left -= iov->iov_len;
			iov++;
			n--;
		}
		if (n > 0) {
			iov->iov_base = (uint8_t *)iov->iov_base + left;
			iov->iov_len -= left;
		}
	}
	return 0;
}

/* --- calls --------------------------------------------------------------------- */

/* A free channel, once one is; -1 when every channel has broken. */
static int channel_take(struct keyproc *kp)
{
	pthread_mutex_lock(&kp->mu);
	while (kp->n_free == 0 && kp->n_live > 0)
		pthread_cond_wait(&kp->cv, &kp->mu);
	int i = kp->n_free > 0 ? (int)kp->free_list[--kp->n_free] : -1;
	pthread_mutex_unlock(&kp->mu);
	return i;
}

/*
 * A broken channel leaves the pool. Given back, it would be the next one
 * taken (the free list is a stack), so one broken channel would fail
 * nearly every call while the others, and the key process, still work.
 */
static void channel_give(struct keyproc *kp, unsigned i, bool broken)
{
	pthread_mutex_lock(&kp->mu);
	if (broken)
		kp->n_live--;
	else
		kp->free_list[kp->n_free++] = i;
	/* The last channel broken: every waiter fails at once. */
	if (broken && kp->n_live == 0)
		pthread_cond_broadcast(&kp->cv);
	else if (!broken)
		pthread_cond_signal(&kp->cv);
	pthread_mutex_unlock(&kp->mu);
}

/* Read one response: status, and the body into *body (malloc'd) when there is one. */
static int read_response(int fd, int32_t *status, uint8_t **body, size_t *len)
{
	uint32_t total;
	if (keyproc_read_full(fd, &total, 4) != 0 || total < 4 || total > KEYPROC_FRAME_MAX ||
	    keyproc_read_full(fd, status, 4) != 0)
		return ISG_ERR_IO;
	*len = total - 4;
	*body = malloc(*len ? *len : 1);
	if (!*body || keyproc_read_full(fd, *body, *len) != 0) {
		if (*body) /* a part of a data key or a payload may have arrived */
			sodium_memzero(*body, *len);
		free(*body);
		*body = NULL;
		return ISG_ERR_IO;
	}
	return 0;
}

/*
 * One round trip: the request is op and the iov parts, concatenated. The
 * answer's status is returned (0 or negative), its body in *body (malloc'd;
 * free it) unless body is NULL. A channel that fails mid-call is closed and
 * leaves the pool (channel_give).
 */
static int call(struct keyproc *kp, uint8_t op, const struct iovec *parts, int n_parts,
                uint8_t **body, size_t *len)
{
	struct iovec iov[8];
	if (n_parts < 0 || n_parts > (int)ARRAY_LEN(iov) - 2)
		return ISG_ERR_INVALID;
	size_t total = 1;
	for (int i = 0; i < n_parts; i++)
		total += parts[i].iov_len;
	if (total > KEYPROC_FRAME_MAX)
		return ISG_ERR_TOO_BIG;
	uint32_t total32 = (uint32_t)total;
	iov[0] = (struct iovec){&total32, 4};
	iov[1] = (struct iovec){&op, 1};
	for (int i = 0; i < n_parts; i++)
		iov[2 + i] = parts[i];

	int c = channel_take(kp);
	if (c < 0)
		return ISG_ERR_IO;
	int fd = kp->fds[c];
	int rc = 0;
	if (keyproc_writev_full(fd, iov, 2 + n_parts) != 0)
		rc = ISG_ERR_IO;
	int32_t status = 0;
	uint8_t *b = NULL;
	size_t blen = 0;
	if (rc == 0)
		rc = read_response(fd, &status, &b, &blen);
	if (rc != 0) {
		log_event(LOG_ERROR, "keyproc.failed", "channel=%d reason=%s", c,
		          errno == EPIPE ? "closed" : "io");
		close(fd);
		kp->fds[c] = -1;
	}
	channel_give(kp, (unsigned)c, rc != 0);
	if (rc != 0)
		return rc;
	if (body) {
		*body = b;
		*len = blen;
	} else {
		free(b);
	}
	return status;
}

/* --- start and stop ------------------------------------------------------------- */

static int int_cmp(const void *a, const void *b)
{
	return *(const int *)a - *(const int *)b;
}

/* Close descriptors lo to hi (~0u: every one from lo). */
static void close_from_to(unsigned lo, unsigned hi)
{
	if (lo > hi || close_range(lo, hi, 0) == 0)
		return;
	/* Before Linux 5.9, or refused by a container's seccomp profile: one by
	 * one, up to the most this process may have open. */
	long max = sysconf(_SC_OPEN_MAX);
	unsigned long limit = max > 0 ? (unsigned long)max : 1ul << 20;
	for (unsigned long fd = lo; fd <= hi && fd < limit; fd++)
		close((int)fd);
}

/* In the child: keep only stdin/stdout/stderr and the child's channel ends
 * (3 or above, see above_stdio). */
static void close_others(const int *theirs, unsigned n)
{
	int keep[CHANNELS_MAX];
	memcpy(keep, theirs, n * sizeof(int));
	qsort(keep, n, sizeof(int), int_cmp);
	unsigned next = 3;
	for (unsigned i = 0; i < n; i++) {
		if ((unsigned)keep[i] > next)
			close_from_to(next, (unsigned)keep[i] - 1);
		next = (unsigned)keep[i] + 1;
	}
	close_from_to(next, ~0u);
}

/* The key process's first answer: its audit public key, or why it could not start. */
static int hello(struct keyproc *kp, uint8_t pk[static AUDIT_PUBKEY_LEN], char *err, size_t errlen)
{
	int32_t status;
	uint8_t *body = NULL;
	size_t len = 0;
	if (read_response(kp->fds[0], &status, &body, &len) != 0) {
		snprintf(err, errlen, "the key process died at start");
		return ISG_ERR_IO;
	}
	int rc = status;
	if (status != 0) {
		snprintf(err, errlen, "%.*s", (int)(len < 1024 ? len : 1024), (const char *)body);
	} else if (len != AUDIT_PUBKEY_LEN) {
		snprintf(err, errlen, "the key process answered its start badly");
		rc = ISG_ERR_IO;
	} else {
		memcpy(pk, body, AUDIT_PUBKEY_LEN);
	}
	free(body);
	return rc;
}

/*
 * A failed or refused request about the audit log, with the key process's
 * reason when it gave one: its own fixed words, never a secret or a value.
 */
static void log_refused(const char *event, int rc, const uint8_t *body, size_t len)
{
	char text[KEYPROC_REASON_MAX], q[KEYPROC_REASON_MAX + 16], e[64];
	snprintf(text, sizeof(text), "%.*s", (int)(len < sizeof(text) ? len : sizeof(text) - 1),
	         body ? (const char *)body : "");
	if (!str_utf8_valid(text, strlen(text)))
		text[0] = '\0';
	log_event(LOG_ERROR, event, "error=%s%s%s", log_quote(e, sizeof(e), isg_strerror(rc)),
	          text[0] ? " reason=" : "", text[0] ? log_quote(q, sizeof(q), text) : "");
}

static int remote_sign(void *ctx, const uint8_t *msg, size_t len, uint8_t sig[static AUDIT_SIG_LEN])
{
	uint8_t *body = NULL;
	size_t blen = 0;
	struct iovec part = {(void *)msg, len};
	int rc = call(ctx, KEYPROC_SIGN, &part, 1, &body, &blen);
	if (rc == 0 && blen != AUDIT_SIG_LEN)
		rc = ISG_ERR_IO;
	if (rc == 0)
		memcpy(sig, body, AUDIT_SIG_LEN);
	else
		log_refused("keyproc.sign_refused", rc, rc == ISG_ERR_IO ? NULL : body, blen);
	free(body);
	return rc;
}

/* --- the audit log's witness ------------------------------------------------------ */

_Static_assert(STORE_WITNESS_APPEND_MAX <= KEYPROC_LOG_APPEND_MAX,
               "the store's appends fit one request");

/* A request about the log, answered with nothing but a status. */
static int log_call(struct keyproc *kp, uint8_t op, struct iovec *parts, int n)
{
	uint8_t *body = NULL;
	size_t len = 0;
	int rc = call(kp, op, parts, n, &body, &len);
	if (rc == 0 && len != 0)
		rc = ISG_ERR_IO;
	if (rc)
		log_refused(op == KEYPROC_LOG_START ? "keyproc.log_start_refused"
		                                    : "keyproc.log_append_refused",
		            rc, rc == ISG_ERR_IO ? NULL : body, len);
	free(body);
	return rc;
}

static int remote_log_start(void *ctx, const uint8_t *tree, size_t len)
{
	struct iovec part = {(void *)tree, len};
	return log_call(ctx, KEYPROC_LOG_START, &part, 1);
}

static int remote_log_append(void *ctx, uint64_t size, const uint8_t *leaf_hashes, size_t n)
{
	if (n == 0 || n > KEYPROC_LOG_APPEND_MAX)
		return ISG_ERR_INVALID;
	struct iovec parts[2] = {{&size, 8}, {(void *)leaf_hashes, n * AUDIT_HASH_LEN}};
	return log_call(ctx, KEYPROC_LOG_APPEND, parts, 2);
}

struct store_witness keyproc_witness(struct keyproc *kp)
{
	return (struct store_witness){
	    .ctx = kp, .start = remote_log_start, .append = remote_log_append};
}

/*
 * fd, moved to 3 or above when it is 0 to 2 (isgd started with one of them
 * closed): the key process keeps 0 to 2 open as its standard descriptors
 * (close_others), so isgd's end there would keep its channel open in the
 * key process after isgd died; and isgd's log lines go to 2. -1 on failure.
 */
static int above_stdio(int fd)
{
	if (fd > 2)
		return fd;
	int moved = fcntl(fd, F_DUPFD_CLOEXEC, 3);
	close(fd);
	return moved;
}

/* Make the channels: ours in kp->fds, the child's in theirs. */
static int make_channels(struct keyproc *kp, int *theirs, char *err, size_t errlen)
{
	for (unsigned i = 0; i < kp->n; i++) {
		int sv[2];
		if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
			snprintf(err, errlen, "cannot make the key process's channels: %s",
			         strerror(errno));
			return ISG_ERR_IO;
		}
		kp->fds[i] = above_stdio(sv[0]);
		theirs[i] = above_stdio(sv[1]);
		if (kp->fds[i] < 0 || theirs[i] < 0) {
			snprintf(err, errlen, "cannot make the key process's channels: %s",
			         strerror(errno));
			return ISG_ERR_IO;
		}
		kp->free_list[kp->n_free++] = i;
		kp->n_live++;
	}
	return 0;
}

/* In the child: isgd's side of the channels, whose descriptors close_others closed. */
static void free_in_child(struct keyproc *kp)
{
	pthread_cond_destroy(&kp->cv);
	pthread_mutex_destroy(&kp->mu);
	free(kp->free_list);
	free(kp->fds);
	free(kp);
}

int keyproc_start(const struct keyproc_options *opt, struct keyproc **out, char *err, size_t errlen)
{
	*out = NULL;
	unsigned n = opt->channels ? opt->channels : CHANNELS_DEFAULT;
	if (n > CHANNELS_MAX)
		n = CHANNELS_MAX;
	int rc = ISG_ERR_NOMEM;
	struct keyproc *kp = calloc(1, sizeof(*kp));
	int *theirs = calloc(n, sizeof(int));
	if (!kp || !theirs || !(kp->fds = calloc(n, sizeof(int))) ||
	    !(kp->free_list = calloc(n, sizeof(unsigned)))) {
		snprintf(err, errlen, "out of memory");
		goto out;
	}
	kp->n = n;
	kp->pid = -1;
	pthread_mutex_init(&kp->mu, NULL);
	pthread_cond_init(&kp->cv, NULL);
	for (unsigned i = 0; i < n; i++)
		kp->fds[i] = theirs[i] = -1;
	if ((rc = make_channels(kp, theirs, err, errlen)) != 0)
		goto out;
	fflush(NULL); /* so nothing buffered is written twice */
	kp->pid = fork();
	if (kp->pid < 0) {
		snprintf(err, errlen, "cannot start the key process: %s", strerror(errno));
		rc = ISG_ERR_IO;
		goto out;
	}
	if (kp->pid == 0) {
		close_others(theirs, n);
		free_in_child(kp); /* isgd's side; the child never returns to it */
		keyproc_serve(opt, theirs, n);
	}
	for (unsigned i = 0; i < n; i++) {
		close(theirs[i]);
		theirs[i] = -1;
	}
	uint8_t pk[AUDIT_PUBKEY_LEN];
	if ((rc = hello(kp, pk, err, errlen)) != 0)
		goto out;
	if ((rc = audit_signer_remote(opt->audit_origin, pk, remote_sign, kp, &kp->signer)) != 0) {
		snprintf(err, errlen, "invalid audit origin '%s'", opt->audit_origin);
		goto out;
	}
	*out = kp;
out:
	if (theirs)
		for (unsigned i = 0; i < n; i++)
			if (theirs[i] >= 0)
				close(theirs[i]);
	free(theirs);
	if (rc)
		keyproc_stop(kp, NULL);
	return rc;
}

pid_t keyproc_pid(const struct keyproc *kp)
{
	return kp->pid;
}

bool keyproc_exited(struct keyproc *kp, int *status)
{
	if (!kp->reaped && kp->pid > 0) {
		pid_t r;
		while ((r = waitpid(kp->pid, &kp->status, WNOHANG)) < 0 && errno == EINTR)
			;
		kp->reaped = r == kp->pid;
	}
	if (kp->reaped && status)
		*status = kp->status;
	return kp->reaped;
}

bool keyproc_stop(struct keyproc *kp, int *status)
{
	if (status)
		*status = -1;
	if (!kp)
		return true;
	for (unsigned i = 0; kp->fds && i < kp->n; i++)
		if (kp->fds[i] >= 0)
			close(kp->fds[i]);
	if (kp->pid > 0 && !kp->reaped) {
		pid_t r;
		while ((r = waitpid(kp->pid, &kp->status, 0)) < 0 && errno == EINTR)
			;
		kp->reaped = r == kp->pid;
	}
	bool ok = kp->reaped && WIFEXITED(kp->status) && WEXITSTATUS(kp->status) == 0;
	if (status && kp->reaped)
		*status = kp->status;
	audit_signer_free(kp->signer);
	if (kp->n) {
		pthread_cond_destroy(&kp->cv);
		pthread_mutex_destroy(&kp->mu);
	}
	free(kp->free_list);
	free(kp->fds);
	free(kp);
	return ok;
}

const struct audit_signer *keyproc_signer(const struct keyproc *kp)
{
	return kp->signer;
}

/* --- sealing ------------------------------------------------------------------ */

_Static_assert(STORE_KEY_POOL <= KEYPROC_KEYS_MAX, "the store's pool fills in one request");

static int remote_new_keys(void *ctx, size_t n, uint8_t *keys, uint8_t *wrapped)
{
	if (n == 0 || n > KEYPROC_KEYS_MAX)
		return ISG_ERR_INVALID;
	uint32_t n32 = (uint32_t)n;
	struct iovec parts[1] = {{&n32, 4}};
	uint8_t *body = NULL;
	size_t len = 0;
	int rc = call(ctx, KEYPROC_NEW_KEYS, parts, 1, &body, &len);
	if (rc == 0 && len != n * (STORE_SEAL_KEY_LEN + STORE_WRAPPED_KEY_LEN))
		rc = ISG_ERR_IO;
	for (size_t i = 0; rc == 0 && i < n; i++) {
		const uint8_t *p = body + i * (STORE_SEAL_KEY_LEN + STORE_WRAPPED_KEY_LEN);
		memcpy(keys + i * STORE_SEAL_KEY_LEN, p, STORE_SEAL_KEY_LEN);
		memcpy(wrapped + i * STORE_WRAPPED_KEY_LEN, p + STORE_SEAL_KEY_LEN,
		       STORE_WRAPPED_KEY_LEN);
	}
	if (body) {
		sodium_memzero(body, len);
		free(body);
	}
	return rc;
}

static int remote_unwrap(void *ctx, size_t n, const uint8_t *wrapped, uint8_t *keys, uint8_t *ok)
{
	int rc = 0;
	/* In calls of at most KEYPROC_KEYS_MAX keys, so a request stays small. */
	for (size_t done = 0; rc == 0 && done < n;) {
		size_t k = n - done < KEYPROC_KEYS_MAX ? n - done : KEYPROC_KEYS_MAX;
		uint32_t k32 = (uint32_t)k;
		struct iovec parts[2] = {
		    {&k32, 4},
		    {(void *)(wrapped + done * STORE_WRAPPED_KEY_LEN), k * STORE_WRAPPED_KEY_LEN}};
		uint8_t *body = NULL;
		size_t len = 0;
		rc = call(ctx, KEYPROC_UNWRAP, parts, 2, &body, &len);
		if (rc == 0 && len != k * (1 + STORE_SEAL_KEY_LEN))
			rc = ISG_ERR_IO;
		for (size_t i = 0; rc == 0 && i < k; i++) {
			const uint8_t *p = body + i * (1 + STORE_SEAL_KEY_LEN);
			ok[done + i] = p[0] == 1;
			memcpy(keys + (done + i) * STORE_SEAL_KEY_LEN, p + 1, STORE_SEAL_KEY_LEN);
		}
		if (body) {
			sodium_memzero(body, len);
			free(body);
		}
		done += k;
	}
	return rc;
}

static int remote_open(void *ctx, const uint8_t *ad, size_t ad_len,
                       const uint8_t nonce[static STORE_SEAL_NONCE_LEN], const uint8_t *sealed,
                       size_t sealed_len, uint8_t *out)
{
	uint32_t ad32 = (uint32_t)ad_len;
	struct iovec parts[4] = {{&ad32, 4},
	                         {(void *)ad, ad_len},
	                         {(void *)nonce, STORE_SEAL_NONCE_LEN},
	                         {(void *)sealed, sealed_len}};
	uint8_t *body = NULL;
	size_t len = 0;
	int rc = call(ctx, KEYPROC_OPEN, parts, 4, &body, &len);
	if (rc == 0 &&
	    (sealed_len < STORE_SEAL_OVERHEAD || len != sealed_len - STORE_SEAL_OVERHEAD))
		rc = ISG_ERR_IO;
	if (rc == 0)
		memcpy(out, body, len);
	if (body) {
		sodium_memzero(body, len);
		free(body);
	}
	return rc;
}

struct store_sealer keyproc_sealer(struct keyproc *kp)
{
	return (struct store_sealer){
	    .ctx = kp, .new_keys = remote_new_keys, .unwrap = remote_unwrap, .open = remote_open};
}

/* --- domain keys ---------------------------------------------------------------- */

int keyproc_ring_load(struct keyproc *kp, struct keyproc_ring **out, char *err, size_t errlen)
{
	*out = NULL;
	uint8_t *body = NULL;
	size_t len = 0;
	int rc = call(kp, KEYPROC_LOAD, NULL, 0, &body, &len);
	if (rc == ISG_ERR_IO && !body) {
		snprintf(err, errlen, "the key process is gone");
		return rc;
	}
	if (rc) {
		snprintf(err, errlen, "%.*s", (int)(len < 1024 ? len : 1024),
		         body ? (const char *)body : "");
		free(body);
		return rc;
	}
	struct keyproc_ring *r = len >= 4 ? calloc(1, sizeof(*r)) : NULL;
	if (!r || keyring_from_description(body + 4, len - 4, &r->desc) != 0) {
		/* The key process holds the generation now: give it back, or each
		 * such failure keeps a slot of KEYPROC_RINGS_MAX for good. */
		uint32_t gen;
		struct iovec part = {&gen, 4};
		if (len >= 4) {
			memcpy(&gen, body, 4);
			call(kp, KEYPROC_DROP, &part, 1, NULL, NULL);
		}
		snprintf(err, errlen, "%s",
		         r ? "the key process described its keys badly"
		           : "out of memory, or no generation in the answer");
		free(r);
		free(body);
		return ISG_ERR_IO;
	}
	memcpy(&r->gen, body, 4);
	r->kp = kp;
	free(body);
	*out = r;
	return 0;
}

const struct keyring *keyproc_ring_keys(const struct keyproc_ring *r)
{
	return r->desc;
}

void keyproc_ring_free(struct keyproc_ring *r)
{
	if (!r)
		return;
	struct iovec part = {&r->gen, 4};
	if (call(r->kp, KEYPROC_DROP, &part, 1, NULL, NULL) != 0)
		log_event(LOG_WARN, "keyproc.drop_failed", "generation=%" PRIu32, r->gen);
	keyring_free(r->desc);
	free(r);
}

static uint8_t *put_request(uint8_t *p, const struct pseudo_request *r)
{
	uint8_t dlen = (uint8_t)strlen(r->domain), type = (uint8_t)r->type;
	uint32_t vlen = (uint32_t)r->len;
	*p++ = dlen;
	memcpy(p, r->domain, dlen);
	p += dlen;
	*p++ = type;
	memcpy(p, &vlen, 4);
	if (vlen)
		memcpy(p + 4, r->norm, vlen);
	return p + 4 + vlen;
}

/* A request's two answers (current and previous key), checked like any input. */
static int get_answer(const uint8_t **q, const uint8_t *end, struct pseudo_request *r)
{
	char *texts[2] = {r->out, r->previous};
	for (int k = 0; k < 2; k++) {
		const uint8_t *at = *q;
		if (at >= end || *at >= PSEUDO_TEXT_MAX || (size_t)(end - at - 1) < *at)
			return ISG_ERR_IO;
		memcpy(texts[k], at + 1, *at);
		texts[k][*at] = '\0';
		*q = at + 1 + *at;
	}
	return 0;
}

/* The next request from (*k, *i) on, across the arrays; advances the cursor. */
static struct pseudo_request *next_request(const struct pseudo_batch *parts, size_t *k, size_t *i)
{
	while (*i == parts[*k].n) {
		++*k;
		*i = 0;
	}
	return &parts[*k].reqs[(*i)++];
}

/* One round trip for the count requests from (k, i) on, size bytes of request. */
static int round_trip(struct keyproc_ring *r, const struct pseudo_batch *parts, size_t k, size_t i,
                      size_t count, size_t size, int64_t today)
{
	uint8_t *req = malloc(size), *p = req;
	if (!req)
		return ISG_ERR_NOMEM;
	uint32_t n32 = (uint32_t)count;
	memcpy(p, &r->gen, 4);
	memcpy(p + 4, &today, 8);
	memcpy(p + 12, &n32, 4);
	p += 16;
	size_t kk = k, ii = i;
	for (size_t c = 0; c < count; c++)
		p = put_request(p, next_request(parts, &kk, &ii));
	struct iovec part = {req, (size_t)(p - req)};
	uint8_t *body = NULL;
	size_t len = 0;
	int rc = call(r->kp, KEYPROC_PSEUDO, &part, 1, &body, &len);
	sodium_memzero(req, size);
	free(req);
	const uint8_t *q = body, *end = body ? body + len : NULL;
	kk = k, ii = i;
	for (size_t c = 0; rc == 0 && c < count; c++)
		rc = get_answer(&q, end, next_request(parts, &kk, &ii));
	if (rc == 0 && q != end)
		rc = ISG_ERR_IO;
	free(body);
	return rc;
}

/*
 * One round trip per batch, however many arrays hold it; a batch larger
 * than one request may carry (KEYPROC_PSEUDO_MAX, or a frame) goes in as
 * many as it needs.
 */
static int remote_pseudonymise_parts(void *ctx, const struct pseudo_batch *parts, size_t n_parts,
                                     int64_t today)
{
	struct keyproc_ring *r = ctx;
	for (size_t k = 0; k < n_parts; k++)
		for (size_t i = 0; i < parts[k].n; i++) {
			const struct pseudo_request *q = &parts[k].reqs[i];
			if (!q->domain || strlen(q->domain) > KEYS_DOMAIN_NAME_MAX ||
			    q->len > PSEUDO_VALUE_MAX || (unsigned)q->type > 0xff)
				return ISG_ERR_INVALID;
		}
	size_t size = 16, n = 0, k0 = 0, i0 = 0;
	for (size_t k = 0; k < n_parts; k++)
		for (size_t i = 0; i < parts[k].n; i++) {
			const struct pseudo_request *q = &parts[k].reqs[i];
			size_t item = 6 + strlen(q->domain) + q->len;
			if (n == KEYPROC_PSEUDO_MAX || size + item >= KEYPROC_FRAME_MAX) {
				int rc = round_trip(r, parts, k0, i0, n, size, today);
				if (rc)
					return rc;
				size = 16, n = 0, k0 = k, i0 = i;
			}
			size += item;
			n++;
		}
	return n ? round_trip(r, parts, k0, i0, n, size, today) : 0;
}

static int remote_pseudonymise(void *ctx, struct pseudo_request *reqs, size_t n, int64_t today)
{
	const struct pseudo_batch all = {reqs, n};
	return remote_pseudonymise_parts(ctx, &all, 1, today);
}

struct pseudo_service keyproc_ring_service(struct keyproc_ring *r)
{
	return (struct pseudo_service){.ctx = r,
	                               .pseudonymise = remote_pseudonymise,
	                               .pseudonymise_parts = remote_pseudonymise_parts};
}
