/*
 * The key process: load the keys, shed privileges, then answer requests,
 * one thread per channel. It exits when every channel is closed (isgd
 * stopped or died), wiping its keys first.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <sodium.h>

#include "audit/audit.h"
#include "keyproc/internal.h"
#include "util/util.h"

struct ring_slot {
	uint32_t gen; /* 0: free */
	struct keyring *ring;
};

struct keyproc_server {
	const struct keyproc_options *opt;
	uint8_t *storage_key;
	struct audit_signer *signer;
	/* Guards rings and next_gen. Pseudonym batches only read the rings, so
	 * the channels' batches run side by side. */
	pthread_rwlock_t lock;
	struct ring_slot rings[KEYPROC_RINGS_MAX];
	uint32_t next_gen;
	/*
	 * The audit log as this process has seen it grow: the tree isgd loaded
	 * at store open (LOG_START, once), then every leaf it appended since
	 * (LOG_APPEND). Only checkpoints of exactly this tree are signed. Under
	 * log_mu, apart from lock, so an append never holds up pseudonyms.
	 */
	pthread_mutex_t log_mu;
	struct audit_tree log;
	bool log_started;
	_Atomic int64_t latest_ms; /* the latest clock reading a pseudonym batch went by */
};

static int answer_text(struct keyproc_answer *a, int status, const char *text)
{
	a->status = status;
	a->len = strlen(text);
	a->body = (uint8_t *)strdup(text);
	if (!a->body)
		a->len = 0;
	return status;
}

static int answer_alloc(struct keyproc_answer *a, size_t len)
{
	a->body = malloc(len ? len : 1);
	if (!a->body)
		return a->status = ISG_ERR_NOMEM;
	a->len = len;
	return 0;
}

/* --- a bounded reader over a request body ------------------------------------- */

struct cursor {
	const uint8_t *p;
	size_t left;
};

static bool take(struct cursor *c, void *dst, size_t n)
{
	if (c->left < n)
		return false;
	memcpy(dst, c->p, n);
	c->p += n;
	c->left -= n;
	return true;
}

static const uint8_t *take_ref(struct cursor *c, size_t n)
{
	if (c->left < n)
		return NULL;
	const uint8_t *p = c->p;
	c->p += n;
	c->left -= n;
	return p;
}

/* --- domain keys --------------------------------------------------------------- */

static int do_load(struct keyproc_server *sv, struct keyproc_answer *a)
{
	char err[KEYPROC_REASON_MAX];
	struct keyring *ring = NULL;
	int rc = keys_load_domains(sv->opt->keys_dir, &ring, err, sizeof(err));
	if (rc)
		return answer_text(a, rc, err);
	uint8_t *desc = NULL;
	size_t desc_len = 0;
	if ((rc = keyring_describe(ring, &desc, &desc_len)) != 0) {
		keyring_free(ring);
		return a->status = rc;
	}
	pthread_rwlock_wrlock(&sv->lock);
	struct ring_slot *slot = NULL;
	for (size_t i = 0; i < KEYPROC_RINGS_MAX && !slot; i++)
		if (sv->rings[i].gen == 0)
			slot = &sv->rings[i];
	uint32_t gen = 0;
	if (slot) {
		gen = ++sv->next_gen;
		slot->gen = gen;
		slot->ring = ring;
		ring = NULL;
	}
	pthread_rwlock_unlock(&sv->lock);
	keyring_free(ring);
	if (!slot) {
		free(desc);
		return answer_text(a, ISG_ERR_LIMIT, "too many generations of domain keys in use");
	}
	if (answer_alloc(a, 4 + desc_len) != 0) {
		free(desc);
		return a->status;
	}
	memcpy(a->body, &gen, 4);
	memcpy(a->body + 4, desc, desc_len);
	free(desc);
	return 0;
}

static int do_drop(struct keyproc_server *sv, struct cursor *c, struct keyproc_answer *a)
{
	uint32_t gen;
	if (!take(c, &gen, 4) || c->left != 0 || gen == 0)
		return a->status = ISG_ERR_PARSE;
	struct keyring *ring = NULL;
	pthread_rwlock_wrlock(&sv->lock);
	for (size_t i = 0; i < KEYPROC_RINGS_MAX; i++) {
		if (sv->rings[i].gen == gen) {
			ring = sv->rings[i].ring;
			sv->rings[i] = (struct ring_slot){0};
		}
	}
	pthread_rwlock_unlock(&sv->lock);
	keyring_free(ring); /* wipes: no request can be using it, see do_pseudo */
	return a->status = ring ? 0 : ISG_ERR_NOT_FOUND;
}

/* A batch's domain names, each made a C string. */
typedef char domain_name[KEYS_DOMAIN_NAME_MAX + 1];

/* Requests read straight into place; each answer is written by the keyring. */
static int parse_pseudo(struct cursor *c, struct pseudo_request *reqs, domain_name *domains,
                        uint32_t n)
{
	for (uint32_t i = 0; i < n; i++) {
		uint8_t dlen, type;
		uint32_t vlen;
		if (!take(c, &dlen, 1) || dlen > KEYS_DOMAIN_NAME_MAX || !take(c, domains[i], dlen))
			return ISG_ERR_PARSE;
		domains[i][dlen] = '\0';
		if (!take(c, &type, 1) || !take(c, &vlen, 4) || vlen > PSEUDO_VALUE_MAX)
			return ISG_ERR_PARSE;
		const uint8_t *v = take_ref(c, vlen);
		if (!v)
			return ISG_ERR_PARSE;
		reqs[i].domain = domains[i];
		reqs[i].type = (enum pseudo_type)type;
		reqs[i].norm = (const char *)v;
		reqs[i].len = vlen;
	}
	return c->left == 0 ? 0 : ISG_ERR_PARSE;
}

/*
 * The ring is used under the read lock: a DROP waits for the batch to
 * finish. Batches are short (microseconds per pseudonym), and isgd drops a
 * generation only after the last request using it has finished anyway.
 */
static int do_pseudo(struct keyproc_server *sv, struct cursor *c, struct keyproc_answer *a)
{
	uint32_t gen, n;
	int64_t gateway_today;
	/* Each item takes at least 6 bytes on the wire: n is bounded by the body. */
	if (!take(c, &gen, 4) || !take(c, &gateway_today, 8) || !take(c, &n, 4) || n == 0 ||
	    n > c->left / 6)
		return a->status = ISG_ERR_PARSE;
	/*
	 * Which versions answer is decided by this process's own clock, never the
	 * gateway's day: a compromised gateway sending a past day would otherwise get
	 * pseudonyms under retired versions. The field stays in the request. Nor
	 * does the day go back when the clock is set back: a version retired
	 * today stays retired.
	 */
	(void)gateway_today;
	const int64_t today = date_days_of_ms(time_not_back_ms(&sv->latest_ms, time_now_ms()));
	/* Refused before anything is allocated or computed; the channel serves on. */
	if (n > KEYPROC_PSEUDO_MAX)
		return a->status = ISG_ERR_TOO_BIG;
	struct pseudo_request *reqs = malloc(n * sizeof(*reqs));
	domain_name *domains = malloc(n * sizeof(*domains));
	int rc = reqs && domains ? parse_pseudo(c, reqs, domains, n) : ISG_ERR_NOMEM;
	if (rc == 0) {
		pthread_rwlock_rdlock(&sv->lock);
		const struct keyring *ring = NULL;
		for (size_t i = 0; i < KEYPROC_RINGS_MAX; i++)
			if (sv->rings[i].gen == gen)
				ring = sv->rings[i].ring;
		if (!ring) {
			rc = ISG_ERR_NOT_FOUND;
		} else {
			struct pseudo_service svc = keyring_service(ring);
			rc = svc.pseudonymise(svc.ctx, reqs, n, today);
		}
		pthread_rwlock_unlock(&sv->lock);
	}
	if (rc == 0 && answer_alloc(a, (size_t)n * 2 * (1 + PSEUDO_TEXT_MAX)) == 0) {
		uint8_t *p = a->body;
		for (uint32_t i = 0; i < n; i++) {
			const char *texts[2] = {reqs[i].out, reqs[i].previous};
			for (int k = 0; k < 2; k++) {
				size_t len = strnlen(texts[k], PSEUDO_TEXT_MAX - 1);
				*p++ = (uint8_t)len;
				memcpy(p, texts[k], len);
				p += len;
			}
		}
		a->len = (size_t)(p - a->body);
	} else if (rc) {
		a->status = rc;
	}
	if (reqs)
		sodium_memzero(reqs, n * sizeof(*reqs)); /* the answers */
	free(reqs);
	free(domains);
	return a->status;
}

/* --- the storage key ----------------------------------------------------------- */

static int do_new_keys(struct keyproc_server *sv, struct cursor *c, struct keyproc_answer *a)
{
	uint32_t n;
	if (!take(c, &n, 4) || c->left != 0 || n == 0 || n > KEYPROC_KEYS_MAX)
		return a->status = ISG_ERR_PARSE;
	const size_t each = STORE_SEAL_KEY_LEN + STORE_WRAPPED_KEY_LEN;
	if (answer_alloc(a, n * each) != 0)
		return a->status;
	for (uint32_t i = 0; i < n; i++) {
		uint8_t *p = a->body + i * each;
		crypto_aead_xchacha20poly1305_ietf_keygen(p);
		store_key_wrap(sv->storage_key, p, p + STORE_SEAL_KEY_LEN);
	}
	return 0;
}

static int do_unwrap(struct keyproc_server *sv, struct cursor *c, struct keyproc_answer *a)
{
	uint32_t n;
	if (!take(c, &n, 4) || n == 0 || n > KEYPROC_KEYS_MAX ||
	    c->left != (size_t)n * STORE_WRAPPED_KEY_LEN)
		return a->status = ISG_ERR_PARSE;
	const size_t each = 1 + STORE_SEAL_KEY_LEN;
	if (answer_alloc(a, n * each) != 0)
		return a->status;
	for (uint32_t i = 0; i < n; i++) {
		uint8_t *p = a->body + i * each;
		p[0] =
		    store_key_unwrap(sv->storage_key, c->p + i * STORE_WRAPPED_KEY_LEN, p + 1) == 0;
	}
	return 0;
}

static int do_open(struct keyproc_server *sv, struct cursor *c, struct keyproc_answer *a)
{
	uint32_t ad_len;
	const uint8_t *ad, *nonce;
	/* Only payloads: associated data that begins lp("isg-msg-v1")
	 * (docs/store.md), so OPEN is not a second way to unwrap a data key. */
	static const uint8_t msg_ctx[] = "\0\0\0\x0aisg-msg-v1";
	if (!take(c, &ad_len, 4) || !(ad = take_ref(c, ad_len)) ||
	    !(nonce = take_ref(c, STORE_SEAL_NONCE_LEN)) || c->left < STORE_SEAL_OVERHEAD)
		return a->status = ISG_ERR_PARSE;
	if (ad_len < sizeof(msg_ctx) - 1 || memcmp(ad, msg_ctx, sizeof(msg_ctx) - 1) != 0)
		return a->status = ISG_ERR_DENIED;
	if (answer_alloc(a, c->left - STORE_SEAL_OVERHEAD) != 0)
		return a->status;
	int rc = store_aead_open(sv->storage_key, ad, ad_len, nonce, c->p, c->left, a->body);
	if (rc) {
		free(a->body);
		a->body = NULL;
		a->len = 0;
		a->status = rc;
	}
	return a->status;
}

/* --- the audit log and its signing key ------------------------------------------- */

/*
 * The tree isgd loaded, and checked against its latest signed checkpoint,
 * when it opened the store: accepted once, so code that takes over the
 * gateway later cannot start the log afresh from a tree of its own.
 */
static int do_log_start(struct keyproc_server *sv, struct cursor *c, struct keyproc_answer *a)
{
	struct audit_tree t;
	if (audit_tree_decode(&t, c->p, c->left) != 0)
		return answer_text(a, ISG_ERR_PARSE, "not an audit tree");
	pthread_mutex_lock(&sv->log_mu);
	bool again = sv->log_started;
	if (!again) {
		sv->log = t;
		sv->log_started = true;
	}
	pthread_mutex_unlock(&sv->log_mu);
	if (again)
		return answer_text(a, ISG_ERR_DENIED, "the audit log was started already");
	return a->status = 0;
}

/* Leaves of committed entries, in order, from the size the tree has now. */
static int do_log_append(struct keyproc_server *sv, struct cursor *c, struct keyproc_answer *a)
{
	uint64_t from;
	if (!take(c, &from, 8) || c->left == 0 || c->left % AUDIT_HASH_LEN != 0)
		return a->status = ISG_ERR_PARSE;
	size_t n = c->left / AUDIT_HASH_LEN;
	if (n > KEYPROC_LOG_APPEND_MAX)
		return a->status = ISG_ERR_TOO_BIG;
	const char *refused = NULL;
	pthread_mutex_lock(&sv->log_mu);
	uint64_t size = audit_tree_size(&sv->log);
	if (!sv->log_started)
		refused = "entries of an audit log not started";
	else if (from != size)
		refused = "entries that do not follow the log the key process has seen";
	else if (UINT64_MAX - size < n)
		refused = "more entries than a log can hold";
	for (size_t i = 0; !refused && i < n; i++)
		if (audit_tree_append(&sv->log, c->p + i * AUDIT_HASH_LEN) != 0)
			fatal("keyproc: audit tree overflow"); /* checked above */
	pthread_mutex_unlock(&sv->log_mu);
	if (refused)
		return answer_text(a, ISG_ERR_DENIED, refused);
	return a->status = 0;
}

/* Why the checkpoint c is not the log this process has seen; NULL when it is. */
static const char *not_the_log(struct keyproc_server *sv, const struct audit_checkpoint *c)
{
	uint8_t root[AUDIT_HASH_LEN] = {0};
	pthread_mutex_lock(&sv->log_mu);
	uint64_t size = audit_tree_size(&sv->log);
	bool started = sv->log_started;
	if (started && c->size == size)
		audit_tree_root(&sv->log, root);
	pthread_mutex_unlock(&sv->log_mu);
	if (!started)
		return "a checkpoint before the audit log was started";
	if (c->size < size)
		return "a checkpoint smaller than the log the key process has seen";
	if (c->size > size)
		return "a checkpoint larger than the log the key process has seen";
	if (sodium_memcmp(c->root, root, AUDIT_HASH_LEN) != 0)
		return "a checkpoint that is not the log the key process has seen";
	return NULL;
}

/*
 * Only checkpoints of this log, and only of the tree it has seen grow: a
 * compromised gateway cannot have the key vouch for a rolled-back log, a
 * second history of any length, nor a tree that drops or changes an entry
 * it appended. An idle gateway signs its checkpoint again.
 */
static int do_sign(struct keyproc_server *sv, struct cursor *c, struct keyproc_answer *a)
{
	struct audit_checkpoint cp;
	const char *reason;
	if (audit_checkpoint_parse((const char *)c->p, c->left, &cp, &reason) != 0)
		return answer_text(a, ISG_ERR_INVALID, "not a checkpoint");
	if (strcmp(cp.origin, audit_signer_name(sv->signer)) != 0)
		return answer_text(a, ISG_ERR_DENIED, "a checkpoint of another log");
	const char *refused = not_the_log(sv, &cp);
	if (refused)
		return answer_text(a, ISG_ERR_DENIED, refused);
	if (answer_alloc(a, AUDIT_SIG_LEN) != 0)
		return a->status;
	return a->status = audit_signer_sign(sv->signer, c->p, c->left, a->body);
}

/* --- serving ------------------------------------------------------------------- */

void keyproc_server_answer(struct keyproc_server *sv, const uint8_t *req, size_t len,
                           struct keyproc_answer *a)
{
	*a = (struct keyproc_answer){0};
	if (len == 0) {
		a->status = ISG_ERR_PARSE;
		return;
	}
	struct cursor cur = {req + 1, len - 1}, *c = &cur;
	switch (req[0]) {
	case KEYPROC_LOAD:
		if (c->left == 0)
			do_load(sv, a);
		else
			a->status = ISG_ERR_PARSE;
		break;
	case KEYPROC_DROP:
		do_drop(sv, c, a);
		break;
	case KEYPROC_PSEUDO:
		do_pseudo(sv, c, a);
		break;
	case KEYPROC_NEW_KEYS:
		do_new_keys(sv, c, a);
		break;
	case KEYPROC_UNWRAP:
		do_unwrap(sv, c, a);
		break;
	case KEYPROC_OPEN:
		do_open(sv, c, a);
		break;
	case KEYPROC_SIGN:
		do_sign(sv, c, a);
		break;
	case KEYPROC_LOG_START:
		do_log_start(sv, c, a);
		break;
	case KEYPROC_LOG_APPEND:
		do_log_append(sv, c, a);
		break;
	default:
		a->status = ISG_ERR_PARSE;
	}
}

static int respond(int fd, const struct keyproc_answer *a)
{
	uint32_t len = (uint32_t)(4 + a->len);
	uint8_t head[8];
	memcpy(head, &len, 4);
	memcpy(head + 4, &a->status, 4);
	struct iovec iov[2] = {{head, sizeof(head)}, {a->body, a->len}};
	return keyproc_writev_full(fd, iov, a->len ? 2 : 1);
}

struct channel {
	struct keyproc_server *sv;
	int fd;
	pthread_t thread;
};

/* One request at a time; a malformed frame closes the channel. */
static void *channel_main(void *arg)
{
	struct channel *ch = arg;
	pthread_setname_np(pthread_self(), "isg-keyproc");
	for (;;) {
		uint32_t len;
		if (keyproc_read_full(ch->fd, &len, 4) != 0 || len == 0 || len > KEYPROC_FRAME_MAX)
			break;
		uint8_t *req = malloc(len);
		if (!req || keyproc_read_full(ch->fd, req, len) != 0) {
			free(req);
			break;
		}
		struct keyproc_answer a;
		keyproc_server_answer(ch->sv, req, len, &a);
		sodium_memzero(req, len); /* plaintexts and identifiers */
		free(req);
		int w = respond(ch->fd, &a);
		if (a.body) {
			sodium_memzero(a.body, a.len);
			free(a.body);
		}
		if (w != 0)
			break;
	}
	close(ch->fd);
	return NULL;
}

struct keyproc_server *keyproc_server_new(const struct keyproc_options *opt, char *err,
                                          size_t errlen)
{
	struct keyproc_server *sv = calloc(1, sizeof(*sv));
	if (!sv) {
		snprintf(err, errlen, "key process: out of memory");
		return NULL;
	}
	sv->opt = opt;
	/* Writers first: a stream of batches must not hold off a reload. */
	pthread_rwlockattr_t attr;
	pthread_rwlockattr_init(&attr);
	pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	int rc = pthread_rwlock_init(&sv->lock, &attr);
	pthread_rwlockattr_destroy(&attr);
	if (rc == 0 && pthread_mutex_init(&sv->log_mu, NULL) != 0) {
		pthread_rwlock_destroy(&sv->lock);
		rc = -1;
	}
	if (rc != 0) {
		snprintf(err, errlen, "key process: cannot make a lock");
		free(sv);
		return NULL;
	}
	audit_tree_init(&sv->log);
	rc = keys_load_storage(opt->keys_dir, &sv->storage_key, err, errlen);
	uint8_t *seed = NULL;
	if (rc == 0)
		rc = keys_load_audit_signing(opt->keys_dir, &seed, err, errlen);
	if (rc == 0 && (rc = audit_signer_new(opt->audit_origin, seed, &sv->signer)) != 0)
		snprintf(err, errlen, "cannot make the audit signing key for origin '%s'",
		         opt->audit_origin);
	keys_free(seed);
	if (rc) {
		keyproc_server_free(sv);
		return NULL;
	}
	return sv;
}

void keyproc_server_free(struct keyproc_server *sv)
{
	if (!sv)
		return;
	for (size_t i = 0; i < KEYPROC_RINGS_MAX; i++)
		keyring_free(sv->rings[i].ring);
	keys_free(sv->storage_key);
	audit_signer_free(sv->signer);
	pthread_rwlock_destroy(&sv->lock);
	pthread_mutex_destroy(&sv->log_mu);
	free(sv);
}

static void hello(int fd, int status, const void *body, size_t len)
{
	struct keyproc_answer a = {.status = status, .body = (uint8_t *)body, .len = len};
	(void)respond(fd, &a);
}

_Noreturn void keyproc_serve(const struct keyproc_options *opt, int *fds, unsigned n)
{
	/*
	 * isgd blocks these for its own sigwait. Here they are ignored: a stop or
	 * reload meant for isgd often reaches the whole process group (a service
	 * manager's default, Ctrl-C, pkill), and isgd's drain still needs this
	 * process, which ends when isgd closes its channels.
	 */
	struct sigaction ign = {.sa_handler = SIG_IGN};
	sigemptyset(&ign.sa_mask);
	sigaction(SIGINT, &ign, NULL);
	sigaction(SIGTERM, &ign, NULL);
	sigaction(SIGHUP, &ign, NULL);
	sigset_t none;
	sigemptyset(&none);
	pthread_sigmask(SIG_SETMASK, &none, NULL);

	char err[KEYPROC_REASON_MAX];
	const char *what = NULL;
	struct keyproc_server *sv = keyproc_server_new(opt, err, sizeof(err));
	if (sv && keyproc_sandbox(&what) != 0) {
		snprintf(err, sizeof(err), "key process: cannot %s: %s", what, strerror(errno));
		keyproc_server_free(sv);
		sv = NULL;
	}
	if (!sv) {
		hello(fds[0], ISG_ERR_IO, err, strlen(err));
		_exit(1);
	}
	/* Every channel served, or none: isgd would wait for ever on one without
	 * a thread. isgd sends nothing before the hello, so the threads start first. */
	struct channel *chs = calloc(n, sizeof(*chs));
	unsigned started = 0;
	for (unsigned i = 0; chs && i < n; i++) {
		chs[i] = (struct channel){.sv = sv, .fd = fds[i]};
		if (pthread_create(&chs[i].thread, NULL, channel_main, &chs[i]) != 0)
			break;
		started++;
	}
	if (started == n) {
		uint8_t pk[AUDIT_PUBKEY_LEN];
		audit_signer_public_key(sv->signer, pk);
		hello(fds[0], 0, pk, sizeof(pk));
	} else {
		snprintf(err, sizeof(err), "key process: cannot start its threads");
		hello(fds[0], ISG_ERR_NOMEM, err, strlen(err));
		for (unsigned i = 0; i < n; i++)
			shutdown(fds[i], SHUT_RDWR); /* the threads started read their end */
	}
	for (unsigned i = 0; i < started; i++)
		pthread_join(chs[i].thread, NULL);
	free(chs);
	keyproc_server_free(sv); /* wipes every key */
	/* _exit: the parent's atexit handlers and stdio buffers are not ours. */
	_exit(started == n ? 0 : 1);
}
