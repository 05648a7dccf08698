/* The server's TLS context and what we read from a client certificate. */
#include "net/net.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "util/util.h"

/* Mozilla "modern": TLS 1.3 AEAD suites; TLS 1.2 (only when asked) ECDHE with AEAD. */
static const char tls13_suites[] =
    "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256";
static const char tls12_ciphers[] = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
                                    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
                                    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305";
static const char groups[] = "X25519:P-256:P-384";

/*
 * OpenSSL's last error, or, when a system call failed below it, that
 * call's: "No such file or directory" says more to an admin than
 * "x509 certificate routines::system lib".
 */
static void tls_error(char *err, size_t errlen, const char *what, const char *path)
{
	unsigned long e = ERR_peek_last_error();
	char reason[256] = "";
	if (e)
		ERR_error_string_n(e, reason, sizeof(reason));
	for (unsigned long x; (x = ERR_get_error()) != 0;)
		if (ERR_SYSTEM_ERROR(x))
			str_copy(reason, strerror(ERR_GET_REASON(x)), sizeof(reason));
	if (path)
		snprintf(err, errlen, "%s '%s': %s", what, path, e ? reason : "failed");
	else
		snprintf(err, errlen, "%s: %s", what, e ? reason : "failed");
}

/* The most a TLS file may hold: a CA bundle or a CRL is big, but not this big. */
#define TLS_MAX_FILE_BYTES (64u << 20)

/* A TLS file read whole: what it is, for messages, and its bytes. */
struct tls_file {
	const char *what; /* "certificate", "private key", "partner CA bundle", "CRL" */
	const char *path;
	char *buf;
	size_t len;
};

static void tls_file_release(struct tls_file *f, bool secret)
{
	if (f->buf && secret)
		OPENSSL_cleanse(f->buf, f->len);
	free(f->buf);
	f->buf = NULL;
	f->len = 0;
}

/*
 * Read all of fd, opened on f->path, after fstat on that descriptor says
 * it is a regular file: a FIFO or a device in a TLS file's place is
 * refused, not read (which would wait for a writer).
 */
static int tls_file_read_fd(struct tls_file *f, int fd, char *err, size_t errlen)
{
	struct stat st;
	if (fstat(fd, &st) != 0) {
		snprintf(err, errlen, "cannot load %s '%s': %s", f->what, f->path, strerror(errno));
		return ISG_ERR_IO;
	}
	if (!S_ISREG(st.st_mode)) {
		snprintf(err, errlen, "%s '%s' is not a regular file", f->what, f->path);
		return ISG_ERR_INVALID;
	}
	if ((uint64_t)st.st_size > TLS_MAX_FILE_BYTES) {
		snprintf(err, errlen, "%s '%s' is larger than %u bytes", f->what, f->path,
		         TLS_MAX_FILE_BYTES);
		return ISG_ERR_TOO_BIG;
	}
	size_t cap = (size_t)st.st_size + 1; /* one more, to see a file that grew */
	if (!(f->buf = malloc(cap))) {
		snprintf(err, errlen, "cannot load %s '%s': out of memory", f->what, f->path);
		return ISG_ERR_NOMEM;
	}
	ssize_t n = fd_read_up_to(fd, f->buf, cap);
	if (n < 0 || (size_t)n == cap) {
		snprintf(err, errlen, "cannot load %s '%s': %s", f->what, f->path,
		         n < 0 ? strerror(errno) : "file changed while being read");
		return ISG_ERR_IO;
	}
	f->len = (size_t)n;
	return 0;
}

/*
 * Open f->path once, without waiting (O_NONBLOCK: a FIFO must not hang a
 * start, or a reload in the signal loop, and with it SIGTERM), and read
 * it. Symbolic links are followed: certificates and CA bundles often are
 * links (certbot's live/ directory).
 */
static int tls_file_read(struct tls_file *f, char *err, size_t errlen)
{
	int fd = open(f->path, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
	if (fd < 0) {
		snprintf(err, errlen, "cannot load %s '%s': %s", f->what, f->path, strerror(errno));
		return ISG_ERR_IO;
	}
	int rc = tls_file_read_fd(f, fd, err, errlen);
	close(fd);
	return rc;
}

/*
 * Read the file (from fd, opened and checked by the caller, or with fd -1
 * from its path) into f, and a read-only memory BIO over its bytes into
 * *bio (free it before tls_file_release). 0, or an error with err set.
 */
static int tls_file_load(struct tls_file *f, int fd, BIO **bio, char *err, size_t errlen)
{
	int rc = fd >= 0 ? tls_file_read_fd(f, fd, err, errlen) : tls_file_read(f, err, errlen);
	if (rc)
		return rc;
	if (!(*bio = BIO_new_mem_buf(f->buf, (int)f->len))) {
		snprintf(err, errlen, "cannot load %s '%s': out of memory", f->what, f->path);
		return ISG_ERR_NOMEM;
	}
	return 0;
}

/* Whether the last PEM read ended at the end of the input, not on bad PEM. */
static bool pem_at_end(void)
{
	unsigned long e = ERR_peek_last_error();
	if (ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE) {
		ERR_clear_error();
		return true;
	}
	return false;
}

/* The certificate, then the chain after it, as SSL_CTX_use_certificate_chain_file would. */
static int load_certificate(SSL_CTX *ctx, const char *path, char *err, size_t errlen)
{
	struct tls_file f = {.what = "certificate", .path = path};
	BIO *bio = NULL;
	X509 *cert = NULL, *ca;
	int rc = tls_file_load(&f, -1, &bio, err, errlen);
	if (rc)
		goto out;
	rc = ISG_ERR_TLS;
	cert = PEM_read_bio_X509_AUX(bio, NULL, NULL, NULL);
	if (!cert || SSL_CTX_use_certificate(ctx, cert) != 1 || !SSL_CTX_clear_chain_certs(ctx)) {
		tls_error(err, errlen, "cannot load certificate", path);
		goto out;
	}
	while ((ca = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL) {
		if (!SSL_CTX_add0_chain_cert(ctx, ca)) {
			X509_free(ca);
			tls_error(err, errlen, "cannot load certificate", path);
			goto out;
		}
	}
	if (!pem_at_end()) {
		tls_error(err, errlen, "cannot load certificate", path);
		goto out;
	}
	rc = 0;
out:
	X509_free(cert);
	BIO_free(bio);
	tls_file_release(&f, false);
	return rc;
}

/*
 * The private key from key_fd, the descriptor the caller checked (mode,
 * owner, type), so the file checked is the file read; or, with key_fd -1,
 * from the path. The bytes read are wiped.
 */
static int load_private_key(SSL_CTX *ctx, const char *path, int key_fd, char *err, size_t errlen)
{
	struct tls_file f = {.what = "private key", .path = path};
	BIO *bio = NULL;
	EVP_PKEY *pkey = NULL;
	int rc = tls_file_load(&f, key_fd, &bio, err, errlen);
	if (rc)
		goto out;
	rc = ISG_ERR_TLS;
	pkey = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL);
	if (!pkey || SSL_CTX_use_PrivateKey(ctx, pkey) != 1)
		tls_error(err, errlen, "cannot load private key", path);
	else
		rc = 0;
out:
	EVP_PKEY_free(pkey);
	BIO_free(bio);
	tls_file_release(&f, true);
	return rc;
}

static bool name_listed(STACK_OF(X509_NAME) * names, const X509_NAME *name)
{
	for (int i = 0; i < sk_X509_NAME_num(names); i++)
		if (X509_NAME_cmp(sk_X509_NAME_value(names, i), name) == 0)
			return true;
	return false;
}

/*
 * The partner CA bundle into the verify store (its certificates and any
 * CRLs, as SSL_CTX_load_verify_locations would) and its subjects into the
 * list of CAs sent to clients.
 */
static int add_bundle(SSL_CTX *ctx, STACK_OF(X509_INFO) * infos, STACK_OF(X509_NAME) * names)
{
	X509_STORE *store = SSL_CTX_get_cert_store(ctx);
	for (int i = 0; i < sk_X509_INFO_num(infos); i++) {
		X509_INFO *info = sk_X509_INFO_value(infos, i);
		if (info->x509) {
			if (!X509_STORE_add_cert(store, info->x509))
				return ISG_ERR_TLS;
			X509_NAME *name = X509_get_subject_name(info->x509);
			if (!name_listed(names, name)) {
				X509_NAME *dup = X509_NAME_dup(name);
				if (!dup || !sk_X509_NAME_push(names, dup)) {
					X509_NAME_free(dup);
					return ISG_ERR_NOMEM;
				}
			}
		}
		if (info->crl && !X509_STORE_add_crl(store, info->crl))
			return ISG_ERR_TLS;
	}
	return 0;
}

static int load_client_ca(SSL_CTX *ctx, const char *path, char *err, size_t errlen)
{
	struct tls_file f = {.what = "partner CA bundle", .path = path};
	STACK_OF(X509_INFO) *infos = NULL;
	STACK_OF(X509_NAME) *names = NULL;
	BIO *bio = NULL;
	int rc = tls_file_load(&f, -1, &bio, err, errlen);
	if (rc)
		goto out;
	rc = ISG_ERR_TLS;
	infos = PEM_X509_INFO_read_bio(bio, NULL, NULL, NULL);
	if (!infos || sk_X509_INFO_num(infos) == 0) {
		if (infos) /* an empty file: the message SSL_CTX_load_verify_locations gave */
			ERR_raise(ERR_LIB_X509, X509_R_NO_CERTIFICATE_OR_CRL_FOUND);
		tls_error(err, errlen, "cannot load partner CA bundle", path);
		goto out;
	}
	if (!(names = sk_X509_NAME_new_null()) || add_bundle(ctx, infos, names) != 0) {
		tls_error(err, errlen, "cannot load partner CA bundle", path);
		goto out;
	}
	if (sk_X509_NAME_num(names) == 0) {
		snprintf(err, errlen, "no CA certificate in partner CA bundle '%s'", path);
		goto out;
	}
	SSL_CTX_set_client_CA_list(ctx, names);
	names = NULL;
	rc = 0;
out:
	BIO_free(bio);
	sk_X509_NAME_pop_free(names, X509_NAME_free);
	sk_X509_INFO_pop_free(infos, X509_INFO_free);
	tls_file_release(&f, false);
	return rc;
}

static int load_crl(SSL_CTX *ctx, const char *path, char *err, size_t errlen)
{
	struct tls_file f = {.what = "CRL", .path = path};
	X509_STORE *store = SSL_CTX_get_cert_store(ctx);
	BIO *bio = NULL;
	X509_CRL *crl;
	size_t n = 0;
	int rc = tls_file_load(&f, -1, &bio, err, errlen);
	if (rc)
		goto out;
	rc = ISG_ERR_TLS;
	while ((crl = PEM_read_bio_X509_CRL(bio, NULL, NULL, NULL)) != NULL) {
		int ok = X509_STORE_add_crl(store, crl);
		X509_CRL_free(crl);
		if (!ok) {
			tls_error(err, errlen, "cannot add CRL", path);
			goto out;
		}
		n++;
	}
	ERR_clear_error(); /* the loop ends on a "no start line" error */
	if (n == 0) {
		snprintf(err, errlen, "no CRL found in '%s'", path);
		rc = ISG_ERR_PARSE;
		goto out;
	}
	X509_STORE_set_flags(store, X509_V_FLAG_CRL_CHECK | X509_V_FLAG_CRL_CHECK_ALL);
	rc = 0;
out:
	BIO_free(bio);
	tls_file_release(&f, false);
	return rc;
}

/*
 * How a partner CA's best CRL stands, worst first: a CA whose CRLs are all
 * worse than current refuses every certificate it issued once CRL checking
 * is on ("unable to get certificate CRL", "CRL signature failure", "CRL is
 * not yet valid", "CRL has expired").
 */
enum crl_state { CRL_NONE, CRL_BAD_SIGNATURE, CRL_NOT_YET_VALID, CRL_EXPIRED, CRL_CURRENT };

/* A partner CA's best CRL: its state, and the times of the CRL that has it. */
struct crl_best {
	enum crl_state state;
	int64_t this_update, next_update; /* Unix seconds; next_update 0 when it has none */
};

static int64_t asn1_unix(const ASN1_TIME *t)
{
	struct tm tm;
	if (!t || !ASN1_TIME_to_tm(t, &tm))
		return 0;
	return (int64_t)timegm(&tm);
}

static void format_utc(int64_t t, char *buf, size_t size)
{
	time_t tt = (time_t)t;
	struct tm tm;
	if (!gmtime_r(&tt, &tm) || !strftime(buf, size, "%Y-%m-%dT%H:%M:%SZ", &tm))
		str_copy(buf, "?", size);
}

/* One CRL judged as the issuer's: signed by its key, and current at now. */
static struct crl_best crl_judge(X509_CRL *crl, X509 *ca, int64_t now)
{
	struct crl_best b = {.this_update = asn1_unix(X509_CRL_get0_lastUpdate(crl)),
	                     .next_update = asn1_unix(X509_CRL_get0_nextUpdate(crl))};
	EVP_PKEY *key = X509_get0_pubkey(ca);
	if (!key || X509_CRL_verify(crl, key) != 1)
		b.state = CRL_BAD_SIGNATURE;
	else if (b.this_update > now)
		b.state = CRL_NOT_YET_VALID;
	else if (b.next_update != 0 && b.next_update <= now)
		b.state = CRL_EXPIRED;
	else
		b.state = CRL_CURRENT;
	ERR_clear_error(); /* a failed signature check leaves its reason queued */
	return b;
}

/*
 * The best CRL of ca among the store's: the state OpenSSL would find, and
 * among current ones the latest nextUpdate, which says how long the CA's
 * partners can still connect without a new CRL.
 */
static struct crl_best crl_best_of(STACK_OF(X509_OBJECT) * objs, X509 *ca, int64_t now)
{
	struct crl_best best = {.state = CRL_NONE};
	const X509_NAME *subject = X509_get_subject_name(ca);
	for (int i = 0; i < sk_X509_OBJECT_num(objs); i++) {
		X509_CRL *crl = X509_OBJECT_get0_X509_CRL(sk_X509_OBJECT_value(objs, i));
		if (!crl || X509_NAME_cmp(X509_CRL_get_issuer(crl), subject) != 0)
			continue;
		struct crl_best b = crl_judge(crl, ca, now);
		bool later = b.next_update == 0 ||
		             (best.next_update != 0 && b.next_update > best.next_update);
		if (b.state > best.state || (b.state == best.state && later))
			best = b;
	}
	return best;
}

static void ca_subject(X509 *ca, char *buf, size_t size)
{
	struct cert_identity id;
	net_cert_identity(ca, &id);
	str_copy(buf, id.subject, size);
}

/* Why best is not current, for the admin, with what to do about it. */
static void crl_problem(const struct crl_best *best, const char *ca, const char *path, char *err,
                        size_t errlen)
{
	char when[32];
	switch (best->state) {
	case CRL_NONE:
		snprintf(err, errlen,
		         "CRL '%s' (tls.crl) holds no CRL of partner CA \"%s\": every partner "
		         "certificate that CA issued would be refused (unable to get certificate "
		         "CRL); make that CA's CRL where the CA is kept (openssl ca -gencrl) and "
		         "install it at '%s' (tls.crl), or take the CA out of tls.client_ca",
		         path, ca, path);
		break;
	case CRL_BAD_SIGNATURE:
		snprintf(
		    err, errlen,
		    "CRL '%s' (tls.crl): the CRL that names partner CA \"%s\" as its issuer is "
		    "not signed by that CA's key: every partner certificate the CA issued "
		    "would be refused; make the CRL again with that CA, where it is kept "
		    "(openssl ca -gencrl), and install it at '%s' (tls.crl)",
		    path, ca, path);
		break;
	case CRL_NOT_YET_VALID:
		format_utc(best->this_update, when, sizeof(when));
		snprintf(err, errlen,
		         "CRL '%s' (tls.crl): the CRL of partner CA \"%s\" is not valid before %s "
		         "(its thisUpdate): every partner certificate the CA issued would be "
		         "refused until then; check this machine's clock and the CA's, or make "
		         "the CRL again where the CA is kept (openssl ca -gencrl) and install it "
		         "at '%s'",
		         path, ca, when, path);
		break;
	case CRL_EXPIRED:
		format_utc(best->next_update, when, sizeof(when));
		snprintf(err, errlen,
		         "CRL '%s' (tls.crl): the CRL of partner CA \"%s\" expired at %s (its "
		         "nextUpdate): every partner certificate the CA issued would be refused "
		         "(CRL has expired); make the CRL again where the CA is kept (openssl ca "
		         "-gencrl) and install it at '%s'",
		         path, ca, when, path);
		break;
	case CRL_CURRENT:
		break;
	}
}

/*
 * With CRL checking on (X509_V_FLAG_CRL_CHECK_ALL), every CA in the chain
 * needs a current CRL signed by it, or none of its partners gets in. So
 * each CA of the partner CA bundle must have one, in tls.crl or the bundle;
 * and the soonest nextUpdate among them, and its CA, go into *due.
 */
static int crl_survey(SSL_CTX *ctx, const char *path, int64_t now, struct net_crl_due *due,
                      char *err, size_t errlen)
{
	X509_STORE *store = SSL_CTX_get_cert_store(ctx);
	STACK_OF(X509_OBJECT) *objs = X509_STORE_get0_objects(store);
	if (due)
		*due = (struct net_crl_due){0};
	for (int i = 0; i < sk_X509_OBJECT_num(objs); i++) {
		X509 *ca = X509_OBJECT_get0_X509(sk_X509_OBJECT_value(objs, i));
		if (!ca)
			continue;
		struct crl_best best = crl_best_of(objs, ca, now);
		char subject[256];
		ca_subject(ca, subject, sizeof(subject));
		if (best.state != CRL_CURRENT) {
			crl_problem(&best, subject, path, err, errlen);
			return ISG_ERR_INVALID;
		}
		if (due && best.next_update != 0 &&
		    (due->next_update == 0 || best.next_update < due->next_update)) {
			due->next_update = best.next_update;
			str_copy(due->ca, subject, sizeof(due->ca));
		}
	}
	return 0;
}

int net_tls_crl_due(SSL_CTX *ctx, struct net_crl_due *due)
{
	char unused[8];
	*due = (struct net_crl_due){0};
	X509_VERIFY_PARAM *param = X509_STORE_get0_param(SSL_CTX_get_cert_store(ctx));
	if (!(X509_VERIFY_PARAM_get_flags(param) & X509_V_FLAG_CRL_CHECK))
		return ISG_ERR_NOT_FOUND;
	crl_survey(ctx, "", (int64_t)time(NULL), due, unused, sizeof(unused));
	if (due->next_update != 0)
		format_utc(due->next_update, due->when, sizeof(due->when));
	return 0;
}

int net_tls_verify_peer(SSL_CTX *ctx, SSL *ssl, char *reason, size_t len)
{
	X509 *cert = SSL_get0_peer_certificate(ssl);
	if (!cert) {
		str_copy(reason, "no client certificate", len);
		return ISG_ERR_DENIED;
	}
	X509_STORE_CTX *vctx = X509_STORE_CTX_new();
	/* As the handshake does (ssl_verify_cert_chain): the client's chain as
	 * untrusted certificates, the purpose of a client, the context's
	 * parameters (depth) on top of the store's (the CRL flags). */
	if (!vctx ||
	    !X509_STORE_CTX_init(vctx, SSL_CTX_get_cert_store(ctx), cert,
	                         SSL_get_peer_cert_chain(ssl)) ||
	    !X509_STORE_CTX_set_default(vctx, "ssl_client") ||
	    !X509_VERIFY_PARAM_set1(X509_STORE_CTX_get0_param(vctx), SSL_CTX_get0_param(ctx))) {
		X509_STORE_CTX_free(vctx);
		ERR_clear_error();
		str_copy(reason, "out of memory", len);
		return ISG_ERR_NOMEM;
	}
	int rc = 0;
	if (X509_verify_cert(vctx) != 1) {
		str_copy(reason, X509_verify_cert_error_string(X509_STORE_CTX_get_error(vctx)),
		         len);
		rc = ISG_ERR_DENIED;
	}
	X509_STORE_CTX_free(vctx);
	ERR_clear_error();
	return rc;
}

int net_tls_new(const struct isgd_config *cfg, int key_fd, SSL_CTX **out, char *err, size_t errlen)
{
	int rc = ISG_ERR_TLS;
	ERR_clear_error(); /* tls_error reports what this call leaves, nothing older */
	SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
	if (!ctx) {
		tls_error(err, errlen, "cannot create TLS context", NULL);
		return ISG_ERR_TLS;
	}
	SSL_CTX_set_min_proto_version(ctx, cfg->tls_allow_tls12 ? TLS1_2_VERSION : TLS1_3_VERSION);
	SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION |
	                             SSL_OP_CIPHER_SERVER_PREFERENCE);
	SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
	                          SSL_MODE_RELEASE_BUFFERS);
	if (!SSL_CTX_set_ciphersuites(ctx, tls13_suites) ||
	    !SSL_CTX_set_cipher_list(ctx, tls12_ciphers) ||
	    !SSL_CTX_set1_groups_list(ctx, groups)) {
		tls_error(err, errlen, "cannot set TLS parameters", NULL);
		goto out;
	}
	if ((rc = load_certificate(ctx, cfg->tls_certificate, err, errlen)) != 0 ||
	    (rc = load_private_key(ctx, cfg->tls_key, key_fd, err, errlen)) != 0)
		goto out;
	if (SSL_CTX_check_private_key(ctx) != 1) {
		tls_error(err, errlen, "private key does not match certificate", cfg->tls_key);
		rc = ISG_ERR_TLS;
		goto out;
	}
	if ((rc = load_client_ca(ctx, cfg->tls_client_ca, err, errlen)) != 0)
		goto out;
	if (cfg->tls_crl &&
	    ((rc = load_crl(ctx, cfg->tls_crl, err, errlen)) != 0 ||
	     (rc = crl_survey(ctx, cfg->tls_crl, (int64_t)time(NULL), NULL, err, errlen)) != 0))
		goto out;
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
	SSL_CTX_set_verify_depth(ctx, 4);
	/* Resumption with client certificates needs a session id context. */
	static const unsigned char sid_ctx[] = "isgd";
	SSL_CTX_set_session_id_context(ctx, sid_ctx, sizeof(sid_ctx) - 1);
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER);
	SSL_CTX_set_timeout(ctx, 3600);
	*out = ctx;
	return 0;
out:
	SSL_CTX_free(ctx);
	return rc == 0 ? ISG_ERR_TLS : rc;
}

static void name_entry(X509_NAME *name, int nid, char *buf, size_t size)
{
	buf[0] = '\0';
	int idx = X509_NAME_get_index_by_NID(name, nid, -1);
	if (idx < 0)
		return;
	ASN1_STRING *data = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, idx));
	unsigned char *utf8 = NULL;
	int len = ASN1_STRING_to_UTF8(&utf8, data);
	if (len < 0)
		return;
	/* A name with an embedded NUL could impersonate another; keep it unmatchable. */
	if ((size_t)len < size && memchr(utf8, 0, (size_t)len) == NULL) {
		memcpy(buf, utf8, (size_t)len);
		buf[len] = '\0';
	}
	OPENSSL_free(utf8);
}

static void copy_ia5(const ASN1_IA5STRING *s, char *buf, size_t size)
{
	int len = ASN1_STRING_length(s);
	const unsigned char *p = ASN1_STRING_get0_data(s);
	buf[0] = '\0';
	if (len >= 0 && (size_t)len < size && memchr(p, 0, (size_t)len) == NULL) {
		memcpy(buf, p, (size_t)len);
		buf[len] = '\0';
	}
}

void net_cert_identity(X509 *cert, struct cert_identity *id)
{
	memset(id, 0, sizeof(*id));
	X509_NAME *subject = X509_get_subject_name(cert);
	BIO *bio = BIO_new(BIO_s_mem());
	if (bio) {
		X509_NAME_print_ex(bio, subject, 0, XN_FLAG_RFC2253 & ~ASN1_STRFLGS_ESC_MSB);
		int n = BIO_read(bio, id->subject, sizeof(id->subject) - 1);
		id->subject[n > 0 ? n : 0] = '\0';
		BIO_free(bio);
	}
	name_entry(subject, NID_commonName, id->subject_cn, sizeof(id->subject_cn));
	name_entry(X509_get_issuer_name(cert), NID_commonName, id->issuer_cn,
	           sizeof(id->issuer_cn));

	GENERAL_NAMES *sans = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
	for (int i = 0; sans && i < sk_GENERAL_NAME_num(sans); i++) {
		const GENERAL_NAME *gn = sk_GENERAL_NAME_value(sans, i);
		if (gn->type == GEN_URI && id->n_san_uri < CERT_MAX_SANS)
			copy_ia5(gn->d.uniformResourceIdentifier, id->san_uri[id->n_san_uri++],
			         sizeof(id->san_uri[0]));
		else if (gn->type == GEN_DNS && id->n_san_dns < CERT_MAX_SANS)
			copy_ia5(gn->d.dNSName, id->san_dns[id->n_san_dns++],
			         sizeof(id->san_dns[0]));
	}
	GENERAL_NAMES_free(sans);

	unsigned char *der = NULL;
	int len = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(cert), &der);
	if (len > 0)
		sha256_digest(der, (size_t)len, id->spki_sha256);
	OPENSSL_free(der);
}
