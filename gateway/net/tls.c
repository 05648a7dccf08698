/* The server's TLS context and what we read from a client certificate. */
#include "net/net.h"

#include <stdio.h>
#include <string.h>

#include <openssl/err.h>
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

static int load_crl(SSL_CTX *ctx, const char *path, char *err, size_t errlen)
{
	FILE *f = fopen(path, "r");
	if (!f) {
		snprintf(err, errlen, "cannot open CRL '%s': %m", path);
		return ISG_ERR_IO;
	}
	X509_STORE *store = SSL_CTX_get_cert_store(ctx);
	size_t n = 0;
	X509_CRL *crl;
	while ((crl = PEM_read_X509_CRL(f, NULL, NULL, NULL)) != NULL) {
		int ok = X509_STORE_add_crl(store, crl);
		X509_CRL_free(crl);
		if (!ok) {
			fclose(f);
			tls_error(err, errlen, "cannot add CRL", path);
			return ISG_ERR_TLS;
		}
		n++;
	}
	fclose(f);
	ERR_clear_error(); /* the loop ends on a "no start line" error */
	if (n == 0) {
		snprintf(err, errlen, "no CRL found in '%s'", path);
		return ISG_ERR_PARSE;
	}
	X509_STORE_set_flags(store, X509_V_FLAG_CRL_CHECK | X509_V_FLAG_CRL_CHECK_ALL);
	return 0;
}

int net_tls_new(const struct isgd_config *cfg, SSL_CTX **out, char *err, size_t errlen)
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
	if (SSL_CTX_use_certificate_chain_file(ctx, cfg->tls_certificate) != 1) {
		tls_error(err, errlen, "cannot load certificate", cfg->tls_certificate);
		goto out;
	}
	if (SSL_CTX_use_PrivateKey_file(ctx, cfg->tls_key, SSL_FILETYPE_PEM) != 1) {
		tls_error(err, errlen, "cannot load private key", cfg->tls_key);
		goto out;
	}
	if (SSL_CTX_check_private_key(ctx) != 1) {
		tls_error(err, errlen, "private key does not match certificate", cfg->tls_key);
		goto out;
	}
	if (SSL_CTX_load_verify_locations(ctx, cfg->tls_client_ca, NULL) != 1) {
		tls_error(err, errlen, "cannot load partner CA bundle", cfg->tls_client_ca);
		goto out;
	}
	STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(cfg->tls_client_ca);
	if (!names) {
		tls_error(err, errlen, "no CA certificate in partner CA bundle",
		          cfg->tls_client_ca);
		goto out;
	}
	SSL_CTX_set_client_CA_list(ctx, names);
	if (cfg->tls_crl && (rc = load_crl(ctx, cfg->tls_crl, err, errlen)) != 0)
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
