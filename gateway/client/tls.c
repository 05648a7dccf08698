/*
 * TLS settings of the client: TLS 1.3 only, the Mozilla "modern" suites and
 * groups, the gateway's certificate verified against the configured CA and
 * the expected name (or IP address), the partner's certificate presented.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

#include "client_impl.h"
#include "util/util.h"

#define CLIENT_CIPHERSUITES                                                                        \
	"TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
#define CLIENT_GROUPS "X25519:P-256:P-384"
/* A PEM private key is a few hundred bytes (a few KiB for RSA): a bigger file is not one. */
#define KEY_FILE_MAX (64 * 1024)

/* Never prompt on a terminal for a key passphrase: encrypted keys are refused. */
static int no_passphrase(char *buf, int size, int rwflag, void *u)
{
	return -1;
}

static const char *openssl_reason(void)
{
	unsigned long code = ERR_peek_last_error();
	const char *r = code ? ERR_reason_error_string(code) : NULL;
	return r ? r : "unknown error";
}

static int cannot_read(const char *what, const char *path, int e, struct isg_error *err)
{
	char text[128];
	str_copy(text, strerror(e), sizeof(text));
	if (text[0] >= 'A' && text[0] <= 'Z')
		text[0] = (char)(text[0] - 'A' + 'a');
	client_error(err, ISG_CLIENT_E_CONFIG, "cannot read %s '%s': %s", what, path, text);
	return -1;
}

/* Say why a file cannot be opened, in words people know, before OpenSSL tries. */
static int check_readable(const char *what, const char *path, struct isg_error *err)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	if (fd < 0)
		return cannot_read(what, path, errno, err);
	close(fd);
	return 0;
}

/* The key file in *buf, of *cap bytes (OPENSSL_clear_free it): its size, or -1. */
static ssize_t read_key_file(const char *path, unsigned char **buf, size_t *cap,
                             struct isg_error *err)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	if (fd < 0)
		return cannot_read("private key", path, errno, err);
	struct stat st;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) || st.st_size > KEY_FILE_MAX) {
		close(fd);
		client_error(err, ISG_CLIENT_E_CONFIG,
		             "private key '%s' is not a file of at most %d bytes", path,
		             KEY_FILE_MAX);
		return -1;
	}
	/* As isgd does with its keys: a private key that others may read is refused. */
	if ((st.st_mode & 077) != 0) {
		close(fd);
		client_error(err, ISG_CLIENT_E_CONFIG,
		             "private key '%s' has mode %04o; it must be readable by its owner "
		             "only, the user this program runs as (chown that user, then chmod 600 "
		             "'%s')",
		             path, (unsigned)(st.st_mode & 07777), path);
		return -1;
	}
	*cap = (size_t)st.st_size + 1; /* a byte more, to see a file that grew */
	unsigned char *b = OPENSSL_malloc(*cap);
	if (!b) {
		close(fd);
		client_error(err, ISG_CLIENT_E_NOMEM, "out of memory reading private key '%s'",
		             path);
		return -1;
	}
	ssize_t len = fd_read_up_to(fd, b, *cap);
	int e = errno;
	close(fd);
	if (len >= 0 && (size_t)len < *cap) {
		*buf = b;
		return len;
	}
	if (len < 0)
		cannot_read("private key", path, e, err);
	else
		client_error(err, ISG_CLIENT_E_CONFIG, "private key '%s' changed while being read",
		             path);
	OPENSSL_clear_free(b, *cap);
	return -1;
}

/*
 * The key is read here, not by SSL_CTX_use_PrivateKey_file: stdio, which
 * OpenSSL reads files with, frees its buffer holding the key's text without
 * wiping it, once per connect, and opens the file without close-on-exec.
 * (OpenSSL's own decoding still frees pieces of the decoded key unwiped;
 * that is beyond this library.) 0; KEY_MISMATCH when the key is not the
 * certificate's; -1 with err filled.
 */
#define KEY_MISMATCH (-2)
static int use_key_file(SSL_CTX *ctx, const char *path, struct isg_error *err)
{
	unsigned char *text = NULL;
	size_t cap = 0;
	ssize_t len = read_key_file(path, &text, &cap, err);
	if (len < 0)
		return -1;
	ERR_clear_error();
	BIO *bio = BIO_new_mem_buf(text, (int)len);
	EVP_PKEY *key = bio ? PEM_read_bio_PrivateKey(bio, NULL, no_passphrase, NULL) : NULL;
	BIO_free(bio);
	OPENSSL_clear_free(text, cap);
	int rc = 0;
	if (!key) {
		client_error(err, ISG_CLIENT_E_CONFIG,
		             "cannot load private key '%s': %s (it must be an unencrypted PEM key)",
		             path, openssl_reason());
		rc = -1;
	} else if (SSL_CTX_use_PrivateKey(ctx, key) != 1) {
		if (ERR_GET_REASON(ERR_peek_last_error()) == X509_R_KEY_VALUES_MISMATCH) {
			rc = KEY_MISMATCH;
		} else {
			client_error(err, ISG_CLIENT_E_CONFIG, "cannot use private key '%s': %s",
			             path, openssl_reason());
			rc = -1;
		}
	}
	EVP_PKEY_free(key);
	return rc;
}

static int load_identity(SSL_CTX *ctx, const struct isg_client_options *opt, struct isg_error *err)
{
	if (check_readable("certificate", opt->cert_file, err) < 0)
		return -1;
	ERR_clear_error();
	if (SSL_CTX_use_certificate_chain_file(ctx, opt->cert_file) != 1) {
		client_error(err, ISG_CLIENT_E_CONFIG, "cannot load certificate '%s': %s",
		             opt->cert_file, openssl_reason());
		return -1;
	}
	int r = use_key_file(ctx, opt->key_file, err);
	if (r == KEY_MISMATCH)
		goto mismatch;
	if (r < 0)
		return -1;
	ERR_clear_error();
	if (SSL_CTX_check_private_key(ctx) != 1)
		goto mismatch;
	return 0;
mismatch:
	client_error(err, ISG_CLIENT_E_CONFIG,
	             "private key '%s' does not belong to certificate '%s'", opt->key_file,
	             opt->cert_file);
	return -1;
}

static int load_trust(SSL_CTX *ctx, const struct isg_client_options *opt, struct isg_error *err)
{
	ERR_clear_error();
	if (!opt->ca_file) {
		if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
			client_error(err, ISG_CLIENT_E_CONFIG,
			             "cannot load the system's trusted certificates: %s",
			             openssl_reason());
			return -1;
		}
		return 0;
	}
	if (check_readable("CA file", opt->ca_file, err) < 0)
		return -1;
	if (SSL_CTX_load_verify_locations(ctx, opt->ca_file, NULL) != 1) {
		client_error(err, ISG_CLIENT_E_CONFIG, "cannot load CA file '%s': %s", opt->ca_file,
		             openssl_reason());
		return -1;
	}
	return 0;
}

int client_tls_context(const struct isg_client_options *opt, SSL_CTX **out, struct isg_error *err)
{
	if (!opt->cert_file || !opt->key_file) {
		client_error(err, ISG_CLIENT_E_USAGE,
		             "a client certificate and its key are required");
		return -1;
	}
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
	if (!ctx) {
		client_error(err, ISG_CLIENT_E_NOMEM, "cannot create a TLS context");
		return -1;
	}
	if (SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) != 1 ||
	    SSL_CTX_set_ciphersuites(ctx, CLIENT_CIPHERSUITES) != 1 ||
	    SSL_CTX_set1_groups_list(ctx, CLIENT_GROUPS) != 1) {
		client_error(err, ISG_CLIENT_E_TLS, "cannot configure TLS 1.3: %s",
		             openssl_reason());
		goto fail;
	}
	SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION);
	SSL_CTX_set_default_passwd_cb(ctx, no_passphrase);
	SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	if (load_identity(ctx, opt, err) < 0 || load_trust(ctx, opt, err) < 0)
		goto fail;
	*out = ctx;
	return 0;
fail:
	SSL_CTX_free(ctx);
	return -1;
}

static bool is_ip_literal(const char *s)
{
	unsigned char buf[16];
	return inet_pton(AF_INET, s, buf) == 1 || inet_pton(AF_INET6, s, buf) == 1;
}

int client_tls_new(struct isg_client *c, const char *server_name, struct isg_error *err)
{
	if (!str_host_name(server_name))
		return client_fail(c, err, ISG_CLIENT_E_USAGE,
		                   "invalid server name '%s' (a DNS name or an IP address)",
		                   server_name);
	str_copy(c->server_name, server_name, sizeof(c->server_name));
	c->ssl = SSL_new(c->ctx);
	if (!c->ssl || SSL_set_fd(c->ssl, c->fd) != 1)
		return client_fail(c, err, ISG_CLIENT_E_NOMEM, "cannot create a TLS session");
	int ok;
	if (is_ip_literal(server_name)) {
		ok = X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(c->ssl), server_name);
	} else {
		SSL_set_hostflags(c->ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
		ok = SSL_set_tlsext_host_name(c->ssl, server_name) == 1 &&
		     SSL_set1_host(c->ssl, server_name) == 1;
	}
	if (!ok)
		return client_fail(c, err, ISG_CLIENT_E_NOMEM, "cannot set server name '%s'",
		                   server_name);
	return 0;
}

/* What an alert from the gateway usually means; for a refused client certificate, the causes
 * the gateway's verification has (its side says which in conn.refused). */
static const char *alert_hint(int reason)
{
	switch (reason) {
	case SSL_R_SSLV3_ALERT_BAD_CERTIFICATE:
	case SSL_R_TLSV1_ALERT_UNKNOWN_CA:
	case SSL_R_SSLV3_ALERT_CERTIFICATE_UNKNOWN:
	case SSL_R_SSLV3_ALERT_CERTIFICATE_REVOKED:
	case SSL_R_SSLV3_ALERT_CERTIFICATE_EXPIRED:
	case SSL_R_SSLV3_ALERT_UNSUPPORTED_CERTIFICATE:
	case SSL_R_TLSV1_ALERT_ACCESS_DENIED:
		return " (the gateway did not accept the client certificate: not issued by the "
		       "partner CA it trusts, expired, revoked, or its extended key usage does not "
		       "allow client authentication)";
	case SSL_R_TLSV13_ALERT_CERTIFICATE_REQUIRED:
		return " (the gateway requires a client certificate, and none was sent)";
	case SSL_R_TLSV1_ALERT_PROTOCOL_VERSION:
	case SSL_R_UNSUPPORTED_PROTOCOL:
		return " (the gateway does not offer TLS 1.3)";
	case SSL_R_WRONG_VERSION_NUMBER:
	case SSL_R_PACKET_LENGTH_TOO_LONG:
		return " (is this the gateway's TLS port?)";
	}
	return "";
}

void client_tls_describe(struct isg_client *c, char *buf, size_t size)
{
	unsigned long code = ERR_peek_last_error();
	long v = c->ssl ? SSL_get_verify_result(c->ssl) : X509_V_OK;
	if (ERR_GET_REASON(code) == SSL_R_CERTIFICATE_VERIFY_FAILED && v != X509_V_OK) {
		if (v == X509_V_ERR_HOSTNAME_MISMATCH || v == X509_V_ERR_IP_ADDRESS_MISMATCH)
			snprintf(buf, size,
			         "certificate verify failed: the gateway's certificate is not "
			         "for '%s'",
			         c->server_name);
		else
			snprintf(buf, size, "certificate verify failed: %s",
			         X509_verify_cert_error_string(v));
		return;
	}
	if (!code) {
		str_copy(buf, "unknown TLS error", size);
		return;
	}
	snprintf(buf, size, "%s%s", openssl_reason(), alert_hint(ERR_GET_REASON(code)));
}
