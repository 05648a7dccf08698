/*
 * libisgclient against a scripted gateway: a TLS server on a thread of this
 * process, with a CA, server and client certificates made by the test.
 * Each test gives the server a script (what to read, what to answer) and
 * checks what the client reports.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "isgclient.h"
#include "util/util.h"
#include "wire/wire.h"

/* Certificates. */

struct pki {
	char dir[64];
	char ca[128], rogue_ca[128];
	char server_cert[128], server_key[128];
	char client_cert[128], client_key[128];
	char rogue_cert[128], rogue_key[128]; /* a client certificate from the rogue CA */
};

static struct pki pki;

static void add_ext(X509 *cert, X509 *issuer, int nid, const char *value)
{
	X509V3_CTX ctx;
	X509V3_set_ctx_nodb(&ctx);
	X509V3_set_ctx(&ctx, issuer, cert, NULL, NULL, 0);
	X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
	assert_non_null(ext);
	X509_add_ext(cert, ext, -1);
	X509_EXTENSION_free(ext);
}

/* A certificate for key, signed by (issuer, issuer_key), or self-signed when issuer is NULL. */
static X509 *make_cert(EVP_PKEY *key, const char *cn, X509 *issuer, EVP_PKEY *issuer_key,
                       const char *san)
{
	static long serial = 1;
	X509 *c = X509_new();
	X509_set_version(c, 2);
	ASN1_INTEGER_set(X509_get_serialNumber(c), serial++);
	X509_gmtime_adj(X509_getm_notBefore(c), -3600);
	X509_gmtime_adj(X509_getm_notAfter(c), 86400);
	X509_NAME *name = X509_get_subject_name(c);
	X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
	X509_set_issuer_name(c, issuer ? X509_get_subject_name(issuer) : name);
	X509_set_pubkey(c, key);
	X509 *signer = issuer ? issuer : c;
	if (!issuer) {
		add_ext(c, signer, NID_basic_constraints, "critical,CA:TRUE");
		add_ext(c, signer, NID_key_usage, "critical,keyCertSign,cRLSign");
	} else {
		add_ext(c, signer, NID_basic_constraints, "critical,CA:FALSE");
		add_ext(c, signer, NID_key_usage, "critical,digitalSignature");
	}
	if (san)
		add_ext(c, signer, NID_subject_alt_name, san);
	assert_true(X509_sign(c, issuer ? issuer_key : key, EVP_sha256()) > 0);
	return c;
}

static void write_cert(const char *path, X509 *c)
{
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	PEM_write_X509(f, c);
	fclose(f);
}

static void write_key(const char *path, EVP_PKEY *k)
{
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL);
	fclose(f);
	assert_int_equal(chmod(path, 0600), 0); /* the library refuses a key others may read */
}

static void path_in(char *out, const char *file)
{
	snprintf(out, 128, "%s/%s", pki.dir, file);
}

static int pki_setup(void **state)
{
	str_copy(pki.dir, "/tmp/isgclient-test-XXXXXX", sizeof(pki.dir));
	assert_non_null(mkdtemp(pki.dir));
	EVP_PKEY *ca_key = EVP_EC_gen("P-256"), *rogue_key = EVP_EC_gen("P-256");
	EVP_PKEY *srv_key = EVP_EC_gen("P-256"), *cli_key = EVP_EC_gen("P-256");
	EVP_PKEY *rcli_key = EVP_EC_gen("P-256");
	X509 *ca = make_cert(ca_key, "ISG Test CA", NULL, NULL, NULL);
	X509 *rogue = make_cert(rogue_key, "Rogue CA", NULL, NULL, NULL);
	X509 *srv = make_cert(srv_key, "gateway", ca, ca_key, "DNS:localhost,IP:127.0.0.1");
	X509 *cli = make_cert(cli_key, "partner-a", ca, ca_key, NULL);
	X509 *rcli = make_cert(rcli_key, "partner-a", rogue, rogue_key, NULL);
	path_in(pki.ca, "ca.pem");
	path_in(pki.rogue_ca, "rogue-ca.pem");
	path_in(pki.server_cert, "server.pem");
	path_in(pki.server_key, "server.key");
	path_in(pki.client_cert, "client.pem");
	path_in(pki.client_key, "client.key");
	path_in(pki.rogue_cert, "rogue-client.pem");
	path_in(pki.rogue_key, "rogue-client.key");
	write_cert(pki.ca, ca);
	write_cert(pki.rogue_ca, rogue);
	write_cert(pki.server_cert, srv);
	write_key(pki.server_key, srv_key);
	write_cert(pki.client_cert, cli);
	write_key(pki.client_key, cli_key);
	write_cert(pki.rogue_cert, rcli);
	write_key(pki.rogue_key, rcli_key);
	X509 *certs[] = {ca, rogue, srv, cli, rcli};
	EVP_PKEY *keys[] = {ca_key, rogue_key, srv_key, cli_key, rcli_key};
	for (size_t i = 0; i < ARRAY_LEN(certs); i++) {
		X509_free(certs[i]);
		EVP_PKEY_free(keys[i]);
	}
	return 0;
}

static int pki_teardown(void **state)
{
	const char *files[] = {pki.ca,          pki.rogue_ca,   pki.server_cert, pki.server_key,
	                       pki.client_cert, pki.client_key, pki.rogue_cert,  pki.rogue_key};
	for (size_t i = 0; i < ARRAY_LEN(files); i++)
		unlink(files[i]);
	rmdir(pki.dir);
	return 0;
}

/* The scripted gateway. */

struct mock;
typedef void (*mock_script)(struct mock *m, SSL *ssl);

struct mock {
	int listen_fd;
	uint16_t port;
	SSL_CTX *ctx;
	pthread_t thread;
	mock_script script;
	bool handshake_ok;
	bool saw_close_notify;
	int failures; /* checks that failed on the server thread */
	char failure[256];
	Isg__Frame *last;    /* the last request the script read, for the test to inspect */
	bool running;        /* started and not yet joined */
	int accept_delay_ms; /* before the TLS handshake: a gateway slow to answer */
	_Atomic int conn_fd; /* the connection accepted, or -1 */
};

/*
 * Outside any test's stack: a test that fails returns early, without
 * mock_finish, and its gateway thread must not be left writing into a
 * frame that is gone. The next mock_start, or the group's teardown,
 * stops that thread first (mock_reap).
 */
static struct mock mock_slot;

#define MOCK_CHECK(m, cond)                                                                        \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			(m)->failures++;                                                           \
			snprintf((m)->failure, sizeof((m)->failure), "%s:%d: %s", __FILE__,        \
			         __LINE__, #cond);                                                 \
		}                                                                                  \
	} while (0)

static int ssl_read_all(SSL *ssl, uint8_t *buf, size_t len)
{
	size_t got = 0;
	while (got < len) {
		size_t n = 0;
		if (SSL_read_ex(ssl, buf + got, len - got, &n) != 1)
			return -1;
		got += n;
	}
	return 0;
}

/* Read one frame (blocking); NULL on EOF or error. */
static Isg__Frame *mock_read(SSL *ssl)
{
	uint8_t hdr[WIRE_VARINT_MAX];
	size_t n = 0, h, b;
	for (;;) {
		if (n == sizeof(hdr) || ssl_read_all(ssl, hdr + n, 1) < 0)
			return NULL;
		n++;
		int r = wire_frame_peek(hdr, n, 1u << 26, &h, &b);
		if (r < 0)
			return NULL;
		if (r == 1)
			break;
	}
	uint8_t *body = malloc(b ? b : 1);
	Isg__Frame *f = NULL;
	if (body && ssl_read_all(ssl, body, b) == 0)
		f = wire_frame_decode(body, b);
	free(body);
	return f;
}

static void mock_write(SSL *ssl, Isg__Frame *f)
{
	size_t size = wire_frame_size(f);
	uint8_t *buf = malloc(size);
	wire_frame_encode(f, buf);
	size_t n;
	SSL_write_ex(ssl, buf, size, &n);
	free(buf);
}

/* Read a request of the given kind, keeping it in m->last. */
static Isg__Frame *mock_expect(struct mock *m, SSL *ssl, Isg__Frame__BodyCase body)
{
	wire_frame_free(m->last);
	m->last = mock_read(ssl);
	MOCK_CHECK(m, m->last != NULL);
	if (m->last)
		MOCK_CHECK(m, m->last->body_case == body);
	if (m->last && m->last->body_case != body) {
		wire_frame_free(m->last);
		m->last = NULL;
	}
	return m->last;
}

static void mock_welcome(struct mock *m, SSL *ssl)
{
	Isg__Frame *hello = mock_expect(m, ssl, ISG__FRAME__BODY_HELLO);
	if (!hello)
		return;
	MOCK_CHECK(m, hello->hello->protocol_version == 1);
	MOCK_CHECK(m, hello->request_id != 0);
	Isg__Welcome w = ISG__WELCOME__INIT;
	w.protocol_version = 1;
	w.partner_id = "met-police";
	w.partner_name = "Metropolitan Police Service";
	w.gateway_version = "0.1.0";
	w.policy_version = "3f2a";
	Isg__Frame f = ISG__FRAME__INIT;
	f.request_id = hello->request_id;
	f.body_case = ISG__FRAME__BODY_WELCOME;
	f.welcome = &w;
	mock_write(ssl, &f);
}

static void mock_error(SSL *ssl, uint64_t request_id, Isg__ErrorCode code, const char *message,
                       int64_t record, const char *field, const char *rule, uint64_t audit)
{
	Isg__Error e = ISG__ERROR__INIT;
	e.code = code;
	e.message = (char *)message;
	e.record_index = record;
	e.field = (char *)field;
	e.rule = (char *)rule;
	e.audit_index = audit;
	Isg__Frame f = ISG__FRAME__INIT;
	f.request_id = request_id;
	f.body_case = ISG__FRAME__BODY_ERROR;
	f.error = &e;
	mock_write(ssl, &f);
}

/* Wait until the client closes; note whether it sent close_notify. */
static void mock_drain(struct mock *m, SSL *ssl)
{
	Isg__Frame *f;
	while ((f = mock_read(ssl)))
		wire_frame_free(f);
	m->saw_close_notify = SSL_get_shutdown(ssl) & SSL_RECEIVED_SHUTDOWN;
}

static void *mock_main(void *arg)
{
	struct mock *m = arg;
	/* The scripted gateway writes with plain SSL_write: a client gone, or a
	 * connection mock_reap shut down, must not end the run. Blocked on this
	 * thread only, so the client library's own guard stays under test. */
	sigset_t pipe;
	sigemptyset(&pipe);
	sigaddset(&pipe, SIGPIPE);
	pthread_sigmask(SIG_BLOCK, &pipe, NULL);
	int fd = accept(m->listen_fd, NULL, NULL);
	if (fd < 0)
		return NULL;
	m->conn_fd = fd;
	if (m->accept_delay_ms)
		usleep((useconds_t)m->accept_delay_ms * 1000);
	SSL *ssl = SSL_new(m->ctx);
	SSL_set_fd(ssl, fd);
	if (SSL_accept(ssl) == 1) {
		m->handshake_ok = true;
		m->script(m, ssl);
	} else {
		/* Linger so the client reads the alert instead of a reset. */
		char buf[256];
		while (read(fd, buf, sizeof(buf)) > 0)
			;
	}
	SSL_free(ssl);
	m->conn_fd = -1;
	close(fd);
	return NULL;
}

static void mock_release(struct mock *m)
{
	close(m->listen_fd);
	SSL_CTX_free(m->ctx);
	wire_frame_free(m->last);
	m->last = NULL;
	m->running = false;
}

/* Stop the gateway thread of a test that failed before mock_finish. */
static void mock_reap(struct mock *m)
{
	if (!m->running)
		return;
	shutdown(m->listen_fd, SHUT_RDWR); /* wakes accept */
	for (;;) {
		int fd = m->conn_fd;
		if (fd >= 0)
			shutdown(fd, SHUT_RDWR); /* wakes the script's reads */
		struct timespec t;
		clock_gettime(CLOCK_REALTIME, &t);
		t.tv_nsec += 50 * 1000 * 1000;
		if (t.tv_nsec >= 1000000000) {
			t.tv_sec++;
			t.tv_nsec -= 1000000000;
		}
		if (pthread_timedjoin_np(m->thread, NULL, &t) != ETIMEDOUT)
			break;
	}
	mock_release(m);
}

static int teardown(void **state)
{
	mock_reap(&mock_slot);
	return pki_teardown(state);
}

/* A TCP socket bound to a free loopback port, not yet listening; the port in *port. */
static int loopback_socket(uint16_t *port)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	socklen_t len = sizeof(a);
	getsockname(fd, (struct sockaddr *)&a, &len);
	*port = ntohs(a.sin_port);
	return fd;
}

static void mock_start_slow(struct mock *m, mock_script script, const char *ca_for_clients,
                            int accept_delay_ms)
{
	mock_reap(m);
	memset(m, 0, sizeof(*m));
	m->conn_fd = -1;
	m->script = script;
	m->accept_delay_ms = accept_delay_ms;
	m->ctx = SSL_CTX_new(TLS_server_method());
	SSL_CTX_set_min_proto_version(m->ctx, TLS1_3_VERSION);
	assert_int_equal(SSL_CTX_use_certificate_file(m->ctx, pki.server_cert, SSL_FILETYPE_PEM),
	                 1);
	assert_int_equal(SSL_CTX_use_PrivateKey_file(m->ctx, pki.server_key, SSL_FILETYPE_PEM), 1);
	assert_int_equal(SSL_CTX_load_verify_locations(m->ctx, ca_for_clients, NULL), 1);
	SSL_CTX_set_verify(m->ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
	SSL_CTX_set_num_tickets(m->ctx, 0);
	m->listen_fd = loopback_socket(&m->port);
	assert_int_equal(listen(m->listen_fd, 4), 0);
	assert_int_equal(pthread_create(&m->thread, NULL, mock_main, m), 0);
	m->running = true;
}

static void mock_start(struct mock *m, mock_script script, const char *ca_for_clients)
{
	mock_start_slow(m, script, ca_for_clients, 0);
}

static void mock_finish(struct mock *m)
{
	pthread_join(m->thread, NULL);
	mock_release(m);
	if (m->failures)
		fail_msg("gateway script: %d failed checks, last %s", m->failures, m->failure);
}

/* Options for a gateway at 127.0.0.1:port, with the test PKI. */
static void options_at(struct isg_client_options *opt, unsigned port, char *addr, size_t size)
{
	snprintf(addr, size, "127.0.0.1:%u", port);
	isg_client_options_init(opt);
	opt->gateway = addr;
	opt->cert_file = pki.client_cert;
	opt->key_file = pki.client_key;
	opt->ca_file = pki.ca;
	opt->timeout_ms = 5000;
	opt->client_name = "test_client";
}

static void options_for(struct isg_client_options *opt, const struct mock *m, char *addr,
                        size_t size)
{
	options_at(opt, m->port, addr, size);
}

/* Connect to a fresh mock running `script`; the test then drives the client. */
static struct isg_client *connect_within(struct mock *m, mock_script script, int timeout_ms)
{
	mock_start(m, script, pki.ca);
	struct isg_client_options opt;
	char addr[64];
	options_for(&opt, m, addr, sizeof(addr));
	opt.timeout_ms = timeout_ms;
	struct isg_client *c = NULL;
	struct isg_error err;
	if (isg_client_connect(&opt, &c, &err) < 0)
		fail_msg("connect: %s: %s", err.code_name, err.message);
	return c;
}

static struct isg_client *connect_to(struct mock *m, mock_script script)
{
	return connect_within(m, script, 5000);
}

/* Scripts. */

static void script_eof_without_close_notify(struct mock *m, SSL *ssl);

static void script_welcome_then_drain(struct mock *m, SSL *ssl)
{
	mock_welcome(m, ssl);
	mock_drain(m, ssl);
}

static void script_refuse_connection(struct mock *m, SSL *ssl)
{
	mock_error(ssl, 0, ISG__ERROR_CODE__NOT_PERMITTED,
	           "certificate 'CN=partner-a' matches no partner", -1, "", "partner.certificate",
	           12);
	SSL_shutdown(ssl);
	mock_drain(m, ssl);
}

/* Tests: connecting. */

static void test_connect_welcome_and_close_notify(void **state)
{
	struct mock *m = &mock_slot;
	struct isg_client *c = connect_to(m, script_welcome_then_drain);
	assert_non_null(c);
	assert_string_equal(isg_client_partner_id(c), "met-police");
	assert_string_equal(isg_client_partner_name(c), "Metropolitan Police Service");
	assert_string_equal(isg_client_policy_version(c), "3f2a");
	assert_string_equal(isg_client_gateway_version(c), "0.1.0");
	isg_client_close(c);
	mock_finish(m);
	assert_true(m->saw_close_notify);
}

/* What a failed test leaves behind: a gateway thread still in its script. */
static void test_mock_left_running_is_stopped(void **state)
{
	struct mock *m = &mock_slot;
	struct isg_client *left = connect_to(m, script_welcome_then_drain);
	assert_non_null(left);
	/* No close, no mock_finish: the thread waits in mock_drain. */
	struct isg_client *c = connect_to(m, script_welcome_then_drain);
	assert_non_null(c);
	assert_string_equal(isg_client_partner_id(c), "met-police");
	isg_client_close(c);
	mock_finish(m);
	assert_true(m->saw_close_notify);
	/* The first gateway was stopped: its connection is gone, not silent. */
	struct isg_error err;
	assert_int_equal(isg_client_ping(left, NULL, &err), -1);
	assert_int_not_equal(err.code, ISG_CLIENT_E_TIMEOUT);
	isg_client_close(left);
}

/* By name, and by a port written with leading zeros: a port is a number,
 * not its first seven characters. */
static void test_connect_by_dns_name(void **state)
{
	static const char *const hosts[] = {"localhost:", "127.0.0.1:00000000"};
	for (size_t i = 0; i < ARRAY_LEN(hosts); i++) {
		struct mock *m = &mock_slot;
		mock_start(m, script_welcome_then_drain, pki.ca);
		struct isg_client_options opt;
		char addr[64];
		options_for(&opt, m, addr, sizeof(addr));
		snprintf(addr, sizeof(addr), "%s%u", hosts[i], m->port);
		struct isg_client *c = NULL;
		struct isg_error err;
		if (isg_client_connect(&opt, &c, &err) < 0)
			fail_msg("%s: %s", addr, err.message);
		isg_client_close(c);
		mock_finish(m);
	}
}

/*
 * A slow resolver, for the test that needs one: the library's getaddrinfo
 * is this one (the program's own definition comes first), which waits
 * resolver_delay_ms before asking the real one.
 */
static int resolver_delay_ms;
static int resolver_delayed; /* calls that waited: the test knows the delay took effect */

int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
                struct addrinfo **res)
{
	static int (*real)(const char *, const char *, const struct addrinfo *, struct addrinfo **);
	if (!real)
		*(void **)&real = dlsym(RTLD_NEXT, "getaddrinfo");
	if (resolver_delay_ms) {
		resolver_delayed++;
		usleep((useconds_t)resolver_delay_ms * 1000);
	}
	return real(node, service, hints, res);
}

/*
 * timeout_ms bounds TCP, TLS and Welcome, not name resolution (which
 * getaddrinfo does not let a caller cut short): a resolver that takes
 * longer than the timeout leaves the connection its whole timeout, and
 * does not fail it in the handshake as if the gateway were slow.
 */
static void test_connect_timeout_starts_after_resolution(void **state)
{
	struct mock *m = &mock_slot;
	mock_start(m, script_welcome_then_drain, pki.ca);
	struct isg_client_options opt;
	char addr[64];
	options_for(&opt, m, addr, sizeof(addr));
	snprintf(addr, sizeof(addr), "localhost:%u", m->port);
	opt.timeout_ms = 4000; /* room for a handshake under valgrind on a busy machine */
	struct isg_client *c = NULL;
	struct isg_error err;
	resolver_delay_ms = 5000;
	resolver_delayed = 0;
	int64_t start = time_mono_ms();
	int rc = isg_client_connect(&opt, &c, &err);
	int64_t took = time_mono_ms() - start;
	resolver_delay_ms = 0;
	/* The library asked this resolver, and it was slower than the timeout:
	 * otherwise the connect below proves nothing about where it starts. */
	assert_true(resolver_delayed > 0);
	if (took < 5000)
		fail_msg("connect took %lld ms: the resolver's 5000 ms did not count",
		         (long long)took);
	if (rc < 0)
		fail_msg("connect after a slow resolver: %s: %s", err.code_name, err.message);
	assert_string_equal(isg_client_partner_id(c), "met-police");
	isg_client_close(c);
	mock_finish(m);
}

static void test_gateway_certificate_from_other_ca(void **state)
{
	struct mock *m = &mock_slot;
	mock_start(m, script_welcome_then_drain, pki.ca);
	struct isg_client_options opt;
	char addr[64];
	options_for(&opt, m, addr, sizeof(addr));
	opt.ca_file = pki.rogue_ca;
	struct isg_client *c = NULL;
	struct isg_error err;
	assert_int_equal(isg_client_connect(&opt, &c, &err), -1);
	assert_null(c);
	assert_false(err.from_gateway);
	assert_int_equal(err.code, ISG_CLIENT_E_TLS);
	assert_string_equal(err.code_name, "TLS");
	assert_non_null(strstr(err.message, "certificate verify failed"));
	mock_finish(m);
	assert_false(m->handshake_ok);
}

static void test_gateway_certificate_wrong_name(void **state)
{
	struct mock *m = &mock_slot;
	mock_start(m, script_welcome_then_drain, pki.ca);
	struct isg_client_options opt;
	char addr[64];
	options_for(&opt, m, addr, sizeof(addr));
	opt.server_name = "gateway.other.example";
	struct isg_client *c = NULL;
	struct isg_error err;
	assert_int_equal(isg_client_connect(&opt, &c, &err), -1);
	assert_int_equal(err.code, ISG_CLIENT_E_TLS);
	assert_non_null(strstr(err.message, "not for 'gateway.other.example'"));
	mock_finish(m);
}

static void test_gateway_certificate_wrong_ip(void **state)
{
	struct mock *m = &mock_slot;
	mock_start(m, script_welcome_then_drain, pki.ca);
	struct isg_client_options opt;
	char addr[64];
	options_for(&opt, m, addr, sizeof(addr));
	opt.server_name = "127.0.0.2"; /* the certificate names 127.0.0.1 only */
	struct isg_client *c = NULL;
	struct isg_error err;
	assert_int_equal(isg_client_connect(&opt, &c, &err), -1);
	assert_int_equal(err.code, ISG_CLIENT_E_TLS);
	assert_non_null(strstr(err.message, "not for '127.0.0.2'"));
	mock_finish(m);
}

static void test_client_certificate_refused_by_tls(void **state)
{
	struct mock *m = &mock_slot;
	mock_start(m, script_welcome_then_drain, pki.ca);
	struct isg_client_options opt;
	char addr[64];
	options_for(&opt, m, addr, sizeof(addr));
	opt.cert_file = pki.rogue_cert;
	opt.key_file = pki.rogue_key;
	struct isg_client *c = NULL;
	struct isg_error err;
	assert_int_equal(isg_client_connect(&opt, &c, &err), -1);
	assert_int_equal(err.code, ISG_CLIENT_E_TLS);
	assert_non_null(strstr(err.message,
	                       " (the gateway did not accept the client certificate: not issued by "
	                       "the partner CA it trusts, expired, revoked, or its extended key "
	                       "usage does not allow client authentication)"));
	mock_finish(m);
}

static void test_gateway_refuses_connection_with_error(void **state)
{
	struct mock *m = &mock_slot;
	mock_start(m, script_refuse_connection, pki.ca);
	struct isg_client_options opt;
	char addr[64];
	options_for(&opt, m, addr, sizeof(addr));
	struct isg_client *c = NULL;
	struct isg_error err;
	assert_int_equal(isg_client_connect(&opt, &c, &err), -1);
	assert_null(c);
	assert_true(err.from_gateway);
	assert_int_equal(err.code, ISG_WIRE_NOT_PERMITTED);
	assert_string_equal(err.code_name, "NOT_PERMITTED");
	assert_string_equal(err.message, "certificate 'CN=partner-a' matches no partner");
	assert_string_equal(err.rule, "partner.certificate");
	assert_int_equal(err.record_index, -1);
	assert_int_equal(err.audit_index, 12);
	mock_finish(m);
}

static void test_connection_refused(void **state)
{
	uint16_t port;
	close(loopback_socket(&port)); /* nothing listens there now */
	struct isg_client_options opt;
	char addr[64];
	options_at(&opt, port, addr, sizeof(addr));
	struct isg_client *c = NULL;
	struct isg_error err;
	assert_int_equal(isg_client_connect(&opt, &c, &err), -1);
	assert_int_equal(err.code, ISG_CLIENT_E_CONNECT);
	assert_non_null(strstr(err.message, "connection refused"));
}

/* A TCP server that takes the ClientHello and hangs up: with a reset, or a FIN. */
struct hangup {
	int listen_fd;
	uint16_t port;
	bool reset;
	pthread_t thread;
};

static void *hangup_main(void *arg)
{
	struct hangup *h = arg;
	int fd = accept(h->listen_fd, NULL, NULL);
	if (fd < 0)
		return NULL;
	char buf[512];
	(void)!read(fd, buf, sizeof(buf));
	if (h->reset) {
		struct linger now = {.l_onoff = 1, .l_linger = 0};
		setsockopt(fd, SOL_SOCKET, SO_LINGER, &now, sizeof(now));
	}
	close(fd);
	return NULL;
}

static int open_fds(void)
{
	int n = 0;
	for (int fd = 0; fd < 1024; fd++)
		if (fcntl(fd, F_GETFD) >= 0)
			n++;
	return n;
}

/*
 * A gateway that goes away during the handshake (restarting, or at its
 * connection limit) broke the connection: IO, which a partner retries, not
 * TLS, which says a certificate or the configuration is wrong. No
 * descriptor is left open either way.
 */
static void test_hangup_during_handshake_is_io(void **state)
{
	for (int reset = 0; reset < 2; reset++) {
		int fds = open_fds();
		struct hangup h = {.reset = reset};
		h.listen_fd = loopback_socket(&h.port);
		assert_int_equal(listen(h.listen_fd, 1), 0);
		assert_int_equal(pthread_create(&h.thread, NULL, hangup_main, &h), 0);
		struct isg_client_options opt;
		char addr[64];
		options_at(&opt, h.port, addr, sizeof(addr));
		struct isg_client *c = NULL;
		struct isg_error err;
		assert_int_equal(isg_client_connect(&opt, &c, &err), -1);
		pthread_join(h.thread, NULL);
		close(h.listen_fd);
		assert_null(c);
		if (err.code != ISG_CLIENT_E_IO)
			fail_msg("%s: %s: %s", reset ? "reset" : "FIN", err.code_name, err.message);
		assert_non_null(strstr(err.message, "TLS handshake"));
		assert_int_equal(open_fds(), fds);
	}
}

/*
 * The OpenSSL error queue is the calling thread's, and the partner's program
 * may use OpenSSL too: a call into the library leaves nothing on it, failed
 * or not, for the program's next ERR_get_error to report as its own.
 */
static void test_openssl_error_queue_left_empty(void **state)
{
	struct mock *m = &mock_slot;
	struct isg_client_options opt;
	char addr[64];
	struct isg_client *c = NULL;
	struct isg_error err;

	mock_start(m, script_welcome_then_drain, pki.ca);
	options_for(&opt, m, addr, sizeof(addr));
	opt.ca_file = pki.rogue_ca; /* the gateway's certificate does not verify */
	assert_int_equal(isg_client_connect(&opt, &c, &err), -1);
	assert_int_equal(err.code, ISG_CLIENT_E_TLS);
	assert_int_equal(ERR_peek_error(), 0);
	mock_finish(m);

	mock_start(m, script_welcome_then_drain, pki.ca);
	options_for(&opt, m, addr, sizeof(addr));
	opt.cert_file = pki.rogue_cert; /* refused by the gateway with an alert */
	opt.key_file = pki.rogue_key;
	assert_int_equal(isg_client_connect(&opt, &c, &err), -1);
	assert_int_equal(err.code, ISG_CLIENT_E_TLS);
	assert_int_equal(ERR_peek_error(), 0);
	mock_finish(m);

	options_for(&opt, m, addr, sizeof(addr));
	opt.key_file = pki.server_key; /* not the certificate's key */
	assert_int_equal(isg_client_connect(&opt, &c, &err), -1);
	assert_int_equal(err.code, ISG_CLIENT_E_CONFIG);
	assert_int_equal(ERR_peek_error(), 0);
	opt.key_file = pki.ca; /* not a key */
	assert_int_equal(isg_client_connect(&opt, &c, &err), -1);
	assert_int_equal(err.code, ISG_CLIENT_E_CONFIG);
	assert_int_equal(ERR_peek_error(), 0);

	c = connect_to(m, script_eof_without_close_notify);
	assert_int_equal(ERR_peek_error(), 0);
	assert_int_equal(isg_client_ping(c, NULL, &err), -1);
	assert_int_equal(err.code, ISG_CLIENT_E_IO);
	assert_int_equal(ERR_peek_error(), 0);
	isg_client_close(c);
	assert_int_equal(ERR_peek_error(), 0);
	mock_finish(m);
}

static void test_bad_options(void **state)
{
	struct isg_client_options opt;
	isg_client_options_init(&opt);
	opt.cert_file = pki.client_cert;
	opt.key_file = pki.client_key;
	opt.ca_file = pki.ca;
	struct isg_client *c = NULL;
	struct isg_error err;
	const char *bad_addresses[] = {NULL,     "",           "localhost", "::1:4433", "[::1]4433",
	                               "host:0", "host:65536", "host:http", ":4433"};
	for (size_t i = 0; i < ARRAY_LEN(bad_addresses); i++) {
		opt.gateway = bad_addresses[i];
		assert_int_equal(isg_client_connect(&opt, &c, &err), -1);
		assert_int_equal(err.code, ISG_CLIENT_E_USAGE);
	}
	/* a host that cannot be a name: the caller's mistake, not a network fault to retry */
	opt.gateway = "isg_gateway\xff:4433";
	assert_int_equal(isg_client_connect(&opt, &c, &err), -1);
	assert_int_equal(err.code, ISG_CLIENT_E_USAGE);
	assert_non_null(strstr(err.message, "invalid server name"));
	opt.gateway = "127.0.0.1:1";
	opt.client_name = "export/\xff"; /* not UTF-8: refused, not replaced, before connecting */
	assert_int_equal(isg_client_connect(&opt, &c, &err), -1);
	assert_int_equal(err.code, ISG_CLIENT_E_USAGE);
	assert_string_equal(err.message, "client_name is not valid UTF-8");
	opt.client_name = NULL;
	opt.timeout_ms = -1; /* not "forever", as for isg_client_next_delivery */
	assert_int_equal(isg_client_connect(&opt, &c, &err), -1);
	assert_int_equal(err.code, ISG_CLIENT_E_USAGE);
	assert_non_null(strstr(err.message, "timeout_ms -1 is negative"));
	opt.timeout_ms = 0;
	opt.key_file = pki.server_key; /* not the client certificate's key */
	assert_int_equal(isg_client_connect(&opt, &c, &err), -1);
	assert_int_equal(err.code, ISG_CLIENT_E_CONFIG);
	assert_non_null(strstr(err.message, "does not belong to certificate"));
	opt.key_file = "/nonexistent/client.key";
	assert_int_equal(isg_client_connect(&opt, &c, &err), -1);
	assert_int_equal(err.code, ISG_CLIENT_E_CONFIG);
	assert_string_equal(err.message,
	                    "cannot read private key '/nonexistent/client.key': no such file or "
	                    "directory");
	opt.key_file = pki.client_key;
	opt.ca_file = pki.client_key; /* not a certificate */
	assert_int_equal(isg_client_connect(&opt, &c, &err), -1);
	assert_int_equal(err.code, ISG_CLIENT_E_CONFIG);
	opt.cert_file = NULL;
	assert_int_equal(isg_client_connect(&opt, &c, &err), -1);
	assert_int_equal(err.code, ISG_CLIENT_E_USAGE);
	assert_null(c);
}

/* Tests: requests. */

/* A ping's answer. */
static void mock_pong(SSL *ssl, const Isg__Frame *ping)
{
	Isg__Pong pong = ISG__PONG__INIT;
	pong.nonce = ping->ping->nonce;
	Isg__Frame out = ISG__FRAME__INIT;
	out.request_id = ping->request_id;
	out.body_case = ISG__FRAME__BODY_PONG;
	out.pong = &pong;
	mock_write(ssl, &out);
}

/* A send's receipt; the audit index is the gateway id + 4004. */
static void mock_receipt(SSL *ssl, uint64_t request_id, const char *message_id, uint64_t gateway_id)
{
	Isg__Receipt r = ISG__RECEIPT__INIT;
	r.message_id = (char *)message_id;
	r.gateway_id = gateway_id;
	r.audit_index = gateway_id + 4004;
	r.accepted_at_ms = 1795446245123;
	r.duplicate = true;
	r.policy_version = "3f2a";
	r.record_count = 2;
	Isg__SendResult res = ISG__SEND_RESULT__INIT;
	res.receipt = &r;
	Isg__Frame out = ISG__FRAME__INIT;
	out.request_id = request_id;
	out.body_case = ISG__FRAME__BODY_SEND_RESULT;
	out.send_result = &res;
	mock_write(ssl, &out);
}

static void script_send(struct mock *m, SSL *ssl)
{
	mock_welcome(m, ssl);
	Isg__Frame *f = mock_expect(m, ssl, ISG__FRAME__BODY_SEND);
	if (!f)
		return;
	const Isg__SendRequest *s = f->send;
	MOCK_CHECK(m, strcmp(s->recipient, "nhs-trust") == 0);
	MOCK_CHECK(m, strcmp(s->agreement_id, "isa-42") == 0);
	MOCK_CHECK(m, strcmp(s->dataset, "referrals") == 0);
	MOCK_CHECK(m, s->reply_to == 9);
	MOCK_CHECK(m, s->n_records == 2);
	if (s->n_records == 2 && s->records[0]->n_fields == 4 && s->records[1]->n_fields == 0) {
		Isg__Field **fl = s->records[0]->fields;
		MOCK_CHECK(m, strcmp(fl[0]->name, "nhs_number") == 0);
		MOCK_CHECK(m, fl[0]->value->kind_case == ISG__VALUE__KIND_TEXT);
		MOCK_CHECK(m, strcmp(fl[0]->value->text, "9434765919") == 0);
		MOCK_CHECK(m, fl[1]->value->kind_case == ISG__VALUE__KIND_INTEGER);
		MOCK_CHECK(m, fl[1]->value->integer == -42);
		MOCK_CHECK(m, fl[2]->value->kind_case == ISG__VALUE__KIND_REAL);
		MOCK_CHECK(m, fl[2]->value->real == 2.5);
		MOCK_CHECK(m, fl[3]->value->kind_case == ISG__VALUE__KIND_BOOLEAN);
		MOCK_CHECK(m, fl[3]->value->boolean);
	} else {
		MOCK_CHECK(m, !"record shapes");
	}
	mock_receipt(ssl, f->request_id, s->message_id, 1001);
	mock_drain(m, ssl);
}

static void test_send_and_receipt(void **state)
{
	struct mock *m = &mock_slot;
	struct isg_client *c = connect_to(m, script_send);
	struct isg_field fields[] = {
	    {"nhs_number", {.kind = ISG_VALUE_TEXT, .text = "9434765919"}},
	    {"age", {.kind = ISG_VALUE_INTEGER, .integer = -42}},
	    {"score", {.kind = ISG_VALUE_REAL, .real = 2.5}},
	    {"consent", {.kind = ISG_VALUE_BOOLEAN, .boolean = true}},
	};
	struct isg_record records[] = {{ARRAY_LEN(fields), fields}, {0, NULL}};
	struct isg_message msg = {
	    .recipient = "nhs-trust",
	    .agreement_id = "isa-42",
	    .dataset = "referrals",
	    .reply_to = 9,
	    .n_records = 2,
	    .records = records,
	};
	struct isg_error err;
	struct isg_receipt receipt;

	/* Refused locally, before anything is sent: the value is never quoted. */
	fields[0].value.text = "94347\xff";
	assert_int_equal(isg_client_send(c, &msg, &receipt, &err), -1);
	assert_int_equal(err.code, ISG_CLIENT_E_USAGE);
	assert_int_equal(err.record_index, 0);
	assert_string_equal(err.field, "nhs_number");
	assert_null(strstr(err.message, "94347"));
	fields[0].value.text = "9434765919";
	fields[2].value.kind = ISG_VALUE_NONE;
	assert_int_equal(isg_client_send(c, &msg, &receipt, &err), -1);
	assert_string_equal(err.field, "score");
	fields[2].value.kind = ISG_VALUE_REAL;
	msg.message_id = "";
	assert_int_equal(isg_client_send(c, &msg, &receipt, &err), -1);
	assert_int_equal(err.code, ISG_CLIENT_E_USAGE);
	assert_string_equal(err.message,
	                    "message_id must be 1 to 128 bytes of UTF-8 (got 0 bytes)");
	/* Not UTF-8: said so, not blamed on its length, and its bytes not quoted. */
	msg.message_id = "id\xff";
	assert_int_equal(isg_client_send(c, &msg, &receipt, &err), -1);
	assert_int_equal(err.code, ISG_CLIENT_E_USAGE);
	assert_string_equal(err.message, "message_id is not valid UTF-8");
	msg.message_id = NULL;

	if (isg_client_send(c, &msg, &receipt, &err) < 0)
		fail_msg("%s", err.message);
	assert_int_equal(strlen(receipt.message_id), 32); /* generated: 128 bits in hex */
	assert_true(strspn(receipt.message_id, "0123456789abcdef") == 32);
	assert_int_equal(receipt.gateway_id, 1001);
	assert_int_equal(receipt.audit_index, 5005);
	assert_int_equal(receipt.accepted_at_ms, 1795446245123);
	assert_true(receipt.duplicate);
	assert_int_equal(receipt.record_count, 2);
	assert_string_equal(receipt.policy_version, "3f2a");
	isg_client_close(c);
	mock_finish(m);
}

/*
 * A partner's fixed records, in read-only memory, go as they are: nothing
 * in a message, down to its fields, needs a cast to send.
 */
static const struct isg_field fixed_fields[] = {
    {"nhs_number", {.kind = ISG_VALUE_TEXT, .text = "9434765919"}},
    {"age", {.kind = ISG_VALUE_INTEGER, .integer = -42}},
    {"score", {.kind = ISG_VALUE_REAL, .real = 2.5}},
    {"consent", {.kind = ISG_VALUE_BOOLEAN, .boolean = true}},
};
static const struct isg_record fixed_records[] = {{ARRAY_LEN(fixed_fields), fixed_fields},
                                                  {0, NULL}};

static void test_send_from_const_records(void **state)
{
	struct mock *m = &mock_slot;
	struct isg_client *c = connect_to(m, script_send);
	const struct isg_message msg = {
	    .message_id = "fixed-1",
	    .recipient = "nhs-trust",
	    .agreement_id = "isa-42",
	    .dataset = "referrals",
	    .reply_to = 9,
	    .n_records = ARRAY_LEN(fixed_records),
	    .records = fixed_records,
	};
	struct isg_receipt receipt;
	struct isg_error err;
	if (isg_client_send(c, &msg, &receipt, &err) < 0)
		fail_msg("%s: %s", err.code_name, err.message);
	assert_string_equal(receipt.message_id, "fixed-1");
	isg_client_close(c);
	mock_finish(m);
}

static void script_refuse_then_pong(struct mock *m, SSL *ssl)
{
	mock_welcome(m, ssl);
	Isg__Frame *f = mock_expect(m, ssl, ISG__FRAME__BODY_SEND);
	if (!f)
		return;
	MOCK_CHECK(m, strcmp(f->send->message_id, "msg-1") == 0);
	mock_error(ssl, f->request_id, ISG__ERROR_CODE__BAD_VALUE,
	           "field 'nhs_number' of record 2 is not a valid NHS number", 2, "nhs_number",
	           "field.type", 77);
	f = mock_expect(m, ssl, ISG__FRAME__BODY_PING);
	if (!f)
		return;
	mock_pong(ssl, f);
	mock_drain(m, ssl);
}

static void test_refusal_reported_exactly_and_connection_usable(void **state)
{
	struct mock *m = &mock_slot;
	struct isg_client *c = connect_to(m, script_refuse_then_pong);
	struct isg_field field = {"nhs_number", {.kind = ISG_VALUE_TEXT, .text = "1"}};
	struct isg_record rec = {1, &field};
	struct isg_message msg = {.message_id = "msg-1",
	                          .recipient = "nhs-trust",
	                          .agreement_id = "isa-42",
	                          .dataset = "referrals",
	                          .n_records = 1,
	                          .records = &rec};
	struct isg_error err;
	struct isg_receipt receipt;
	assert_int_equal(isg_client_send(c, &msg, &receipt, &err), -1);
	assert_true(err.from_gateway);
	assert_int_equal(err.code, ISG_WIRE_BAD_VALUE);
	assert_string_equal(err.code_name, "BAD_VALUE");
	assert_string_equal(err.message,
	                    "field 'nhs_number' of record 2 is not a valid NHS number");
	assert_int_equal(err.record_index, 2);
	assert_string_equal(err.field, "nhs_number");
	assert_string_equal(err.rule, "field.type");
	assert_int_equal(err.audit_index, 77);
	int64_t rtt = -1;
	if (isg_client_ping(c, &rtt, &err) < 0)
		fail_msg("%s", err.message);
	assert_true(rtt >= 0);
	isg_client_close(c);
	mock_finish(m);
}

/* A message without records, as the pipelining tests send them. */
static struct isg_message bare_message(const char *message_id)
{
	return (struct isg_message){.message_id = message_id,
	                            .recipient = "nhs-trust",
	                            .agreement_id = "isa-42",
	                            .dataset = "referrals"};
}

/* 300 characters of two bytes each: more than err.message's 511 bytes hold. */
static const char *long_accented(void)
{
	static char text[601];
	for (size_t i = 0; i < 300; i++)
		memcpy(text + 2 * i, "\xc3\xa9", 2); /* é */
	text[600] = '\0';
	return text;
}

static void script_refuse_at_length(struct mock *m, SSL *ssl)
{
	mock_welcome(m, ssl);
	Isg__Frame *f = mock_expect(m, ssl, ISG__FRAME__BODY_PING);
	if (!f)
		return;
	mock_error(ssl, f->request_id, ISG__ERROR_CODE__UNAVAILABLE, long_accented(), -1,
	           long_accented(), long_accented(), 0);
	mock_drain(m, ssl);
}

static bool utf8(const char *s)
{
	return str_utf8_valid(s, strlen(s));
}

/*
 * What struct isg_error holds is text a partner logs, often as JSON: it is
 * valid UTF-8 however long the gateway's words or the caller's strings,
 * and a long field name does not push the problem out of the message.
 */
static void test_error_texts_are_utf8_and_whole(void **state)
{
	struct mock *m = &mock_slot;
	struct isg_client *c = connect_to(m, script_refuse_at_length);
	struct isg_error err;
	assert_int_equal(isg_client_ping(c, NULL, &err), -1);
	assert_true(err.from_gateway);
	assert_true(utf8(err.message) && utf8(err.field) && utf8(err.rule));
	assert_int_equal(strlen(err.message), 510); /* 255 whole characters */
	assert_int_equal(strlen(err.field), 126);
	assert_int_equal(strlen(err.rule), 62);

	char name[600];
	memset(name, 'n', sizeof(name) - 1);
	name[sizeof(name) - 1] = '\0';
	struct isg_field fields[] = {{"ok", {.kind = ISG_VALUE_INTEGER, .integer = 1}},
	                             {name, {.kind = ISG_VALUE_REAL, .real = NAN}}};
	struct isg_record rec = {ARRAY_LEN(fields), fields};
	struct isg_message msg = bare_message("long-name");
	msg.n_records = 1;
	msg.records = &rec;
	struct isg_receipt receipt;
	assert_int_equal(isg_client_send(c, &msg, &receipt, &err), -1);
	assert_int_equal(err.code, ISG_CLIENT_E_USAGE);
	assert_string_equal(err.message, "record 0: field 1 (its name is 599 bytes): real value is "
	                                 "not finite");
	assert_string_equal(err.field, ""); /* not a name cut short */
	assert_int_equal(err.record_index, 0);
	isg_client_close(c);
	mock_finish(m);

	struct isg_client_options opt;
	isg_client_options_init(&opt);
	opt.gateway = "127.0.0.1:44\xff"; /* quoted back, not UTF-8 */
	opt.cert_file = pki.client_cert;
	opt.key_file = pki.client_key;
	assert_int_equal(isg_client_connect(&opt, &c, &err), -1);
	assert_int_equal(err.code, ISG_CLIENT_E_USAGE);
	assert_true(utf8(err.message));
	assert_non_null(strstr(err.message, "'127.0.0.1:44?'"));
}

/*
 * Three sends started before any answer, then a ping: the gateway answers the
 * ping first and the sends in another order (b refused, c, then a).
 */
static void script_pipelined(struct mock *m, SSL *ssl)
{
	mock_welcome(m, ssl);
	uint64_t ids[3];
	for (size_t i = 0; i < 3; i++) {
		Isg__Frame *f = mock_expect(m, ssl, ISG__FRAME__BODY_SEND);
		if (!f)
			return;
		const char want[] = {(char)('a' + i), '\0'};
		MOCK_CHECK(m, strcmp(f->send->message_id, want) == 0);
		ids[i] = f->request_id;
	}
	Isg__Frame *f = mock_expect(m, ssl, ISG__FRAME__BODY_PING);
	if (!f)
		return;
	mock_pong(ssl, f);
	mock_error(ssl, ids[1], ISG__ERROR_CODE__NOT_PERMITTED, "no agreement allows this", -1,
	           NULL, "agreement.none", 78);
	mock_receipt(ssl, ids[2], "c", 3003);
	mock_receipt(ssl, ids[0], "a", 1001);
	mock_drain(m, ssl);
}

static void test_pipelined_sends(void **state)
{
	struct mock *m = &mock_slot;
	struct isg_client *c = connect_to(m, script_pipelined);
	struct isg_message msg = bare_message(NULL);
	struct isg_error err;
	struct isg_receipt r;
	uint64_t t[3];
	const char *names[] = {"a", "b", "c"};
	for (size_t i = 0; i < 3; i++) {
		msg.message_id = names[i];
		if (isg_client_send_start(c, &msg, &t[i], &err) < 0)
			fail_msg("%s", err.message);
	}
	/* Another request in between; the sends' answers come after its own. */
	if (isg_client_ping(c, NULL, &err) < 0)
		fail_msg("%s", err.message);
	/* c's answer comes after b's refusal, which is kept for b. */
	if (isg_client_send_finish(c, t[2], &r, &err) < 0)
		fail_msg("%s", err.message);
	assert_string_equal(r.message_id, "c");
	assert_int_equal(r.gateway_id, 3003);
	assert_int_equal(r.audit_index, 7007);
	assert_int_equal(isg_client_send_finish(c, t[1], &r, &err), -1);
	assert_true(err.from_gateway);
	assert_int_equal(err.code, ISG_WIRE_NOT_PERMITTED);
	assert_string_equal(err.rule, "agreement.none");
	assert_int_equal(err.audit_index, 78);
	if (isg_client_send_finish(c, t[0], &r, &err) < 0)
		fail_msg("%s", err.message);
	assert_string_equal(r.message_id, "a");
	assert_int_equal(r.gateway_id, 1001);
	/* A ticket is finished once. */
	assert_int_equal(isg_client_send_finish(c, t[0], &r, &err), -1);
	assert_int_equal(err.code, ISG_CLIENT_E_USAGE);

	/* At most ISG_CLIENT_MAX_STARTED unfinished; close discards them. */
	msg.message_id = NULL;
	for (int i = 0; i < ISG_CLIENT_MAX_STARTED; i++)
		if (isg_client_send_start(c, &msg, &t[0], &err) < 0)
			fail_msg("start %d: %s", i, err.message);
	assert_int_equal(isg_client_send_start(c, &msg, &t[0], &err), -1);
	assert_int_equal(err.code, ISG_CLIENT_E_USAGE);
	isg_client_close(c);
	mock_finish(m);
}

/* Two sends; the first is answered, then the connection drops. */
static void script_answer_one_then_drop(struct mock *m, SSL *ssl)
{
	mock_welcome(m, ssl);
	Isg__Frame *f = mock_expect(m, ssl, ISG__FRAME__BODY_SEND);
	if (!f)
		return;
	uint64_t first = f->request_id;
	if (!mock_expect(m, ssl, ISG__FRAME__BODY_SEND))
		return;
	mock_receipt(ssl, first, "first", 1001);
	shutdown(SSL_get_fd(ssl), SHUT_RDWR);
}

/* An answer read before the connection failed is not lost. */
static void test_pipelined_answer_kept_when_connection_fails(void **state)
{
	struct mock *m = &mock_slot;
	struct isg_client *c = connect_to(m, script_answer_one_then_drop);
	struct isg_message msg = bare_message("first");
	struct isg_error err;
	struct isg_receipt r;
	uint64_t first, second;
	if (isg_client_send_start(c, &msg, &first, &err) < 0)
		fail_msg("%s", err.message);
	msg.message_id = "second";
	if (isg_client_send_start(c, &msg, &second, &err) < 0)
		fail_msg("%s", err.message);
	assert_int_equal(isg_client_send_finish(c, second, &r, &err), -1);
	assert_int_equal(err.code, ISG_CLIENT_E_IO);
	if (isg_client_send_finish(c, first, &r, &err) < 0)
		fail_msg("%s", err.message);
	assert_string_equal(r.message_id, "first");
	assert_int_equal(r.gateway_id, 1001);
	msg.message_id = "third";
	assert_int_equal(isg_client_send_start(c, &msg, &first, &err), -1);
	assert_int_equal(err.code, ISG_CLIENT_E_CLOSED);
	isg_client_close(c);
	mock_finish(m);
}

/* A send answered, then the gateway's error about the connection, then a reset. */
static void script_answer_then_error_and_reset(struct mock *m, SSL *ssl)
{
	mock_welcome(m, ssl);
	Isg__Frame *f = mock_expect(m, ssl, ISG__FRAME__BODY_SEND);
	if (!f)
		return;
	mock_receipt(ssl, f->request_id, "first", 1001);
	mock_error(ssl, 0, ISG__ERROR_CODE__UNAVAILABLE, "the gateway is shutting down", -1, NULL,
	           "gateway.shutdown", 0);
	struct linger reset = {.l_onoff = 1, .l_linger = 0};
	setsockopt(SSL_get_fd(ssl), SOL_SOCKET, SO_LINGER, &reset, sizeof(reset));
}

/*
 * A write that fails makes the client read what the gateway said before it
 * closed: the receipt of a started send that came first is kept for it.
 */
static void test_pipelined_answer_kept_when_write_fails(void **state)
{
	struct mock *m = &mock_slot;
	struct isg_client *c = connect_to(m, script_answer_then_error_and_reset);
	struct isg_message msg = bare_message("first");
	struct isg_error err;
	struct isg_receipt r;
	uint64_t first, second;
	if (isg_client_send_start(c, &msg, &first, &err) < 0)
		fail_msg("%s", err.message);
	mock_finish(m); /* the gateway has answered, said why and reset the connection */
	msg.message_id = "second";
	assert_int_equal(isg_client_send_start(c, &msg, &second, &err), -1);
	/* The gateway's error may be lost with the reset; the receipt before it is not. */
	assert_true(err.from_gateway ? err.code == ISG_WIRE_UNAVAILABLE
	                             : err.code == ISG_CLIENT_E_IO);
	if (isg_client_send_finish(c, first, &r, &err) < 0)
		fail_msg("%s", err.message);
	assert_string_equal(r.message_id, "first");
	isg_client_close(c);
}

static void fill_delivery(Isg__Delivery *d, uint64_t id, Isg__Record **recs, size_t n)
{
	isg__delivery__init(d);
	d->gateway_id = id;
	d->message_id = "m-1";
	d->sender = "met-police";
	d->agreement_id = "isa-42";
	d->agreement_version = 3;
	d->purpose = "safeguarding";
	d->dataset = "referrals";
	d->reply_to = 0;
	d->accepted_at_ms = 1795446245123;
	d->n_records = n;
	d->records = recs;
}

static void script_fetch_and_ack(struct mock *m, SSL *ssl)
{
	mock_welcome(m, ssl);
	Isg__Frame *f = mock_expect(m, ssl, ISG__FRAME__BODY_FETCH);
	if (!f)
		return;
	MOCK_CHECK(m, f->fetch->max_messages == 10);
	MOCK_CHECK(m, f->fetch->wait_ms == 100);
	Isg__Value v[3];
	Isg__Field fl[3];
	Isg__Field *fp[3] = {&fl[0], &fl[1], &fl[2]};
	for (int i = 0; i < 3; i++) {
		isg__value__init(&v[i]);
		isg__field__init(&fl[i]);
		fl[i].value = &v[i];
	}
	fl[0].name = "pseudonym";
	v[0].kind_case = ISG__VALUE__KIND_TEXT;
	v[0].text = "ab12";
	fl[1].name = "birth_year";
	v[1].kind_case = ISG__VALUE__KIND_INTEGER;
	v[1].integer = 1980;
	fl[2].name = "unset"; /* no value at all */
	Isg__Record rec = ISG__RECORD__INIT;
	rec.n_fields = 3;
	rec.fields = fp;
	Isg__Record *recs[] = {&rec, &rec};
	Isg__Delivery d1, d2;
	fill_delivery(&d1, 501, recs, 2);
	fill_delivery(&d2, 502, NULL, 0);
	d2.reply_to = 77;
	Isg__Delivery *ds[] = {&d1, &d2};
	Isg__FetchResult res = ISG__FETCH_RESULT__INIT;
	res.n_deliveries = 2;
	res.deliveries = ds;
	Isg__Frame out = ISG__FRAME__INIT;
	out.request_id = f->request_id;
	out.body_case = ISG__FRAME__BODY_FETCH_RESULT;
	out.fetch_result = &res;
	mock_write(ssl, &out);

	f = mock_expect(m, ssl, ISG__FRAME__BODY_ACK);
	if (!f)
		return;
	MOCK_CHECK(m, f->ack->n_gateway_ids == 2);
	MOCK_CHECK(m, f->ack->n_gateway_ids == 2 && f->ack->gateway_ids[0] == 501 &&
	                  f->ack->gateway_ids[1] == 502);
	Isg__AckResult ar = ISG__ACK_RESULT__INIT;
	ar.acknowledged = 2;
	Isg__Frame out2 = ISG__FRAME__INIT;
	out2.request_id = f->request_id;
	out2.body_case = ISG__FRAME__BODY_ACK_RESULT;
	out2.ack_result = &ar;
	mock_write(ssl, &out2);
	mock_drain(m, ssl);
}

static void test_fetch_and_ack(void **state)
{
	struct mock *m = &mock_slot;
	struct isg_client *c = connect_to(m, script_fetch_and_ack);
	struct isg_delivery_list *list = NULL;
	struct isg_error err;
	if (isg_client_fetch(c, 10, 100, &list, &err) < 0)
		fail_msg("%s", err.message);
	assert_int_equal(list->n, 2);
	const struct isg_delivery *d = &list->items[0];
	assert_int_equal(d->gateway_id, 501);
	assert_string_equal(d->message_id, "m-1");
	assert_string_equal(d->sender, "met-police");
	assert_string_equal(d->agreement_id, "isa-42");
	assert_int_equal(d->agreement_version, 3);
	assert_string_equal(d->purpose, "safeguarding");
	assert_string_equal(d->dataset, "referrals");
	assert_int_equal(d->accepted_at_ms, 1795446245123);
	assert_int_equal(d->n_records, 2);
	for (size_t i = 0; i < 2; i++) {
		const struct isg_record *r = &d->records[i];
		assert_int_equal(r->n_fields, 3);
		assert_string_equal(r->fields[0].name, "pseudonym");
		assert_int_equal(r->fields[0].value.kind, ISG_VALUE_TEXT);
		assert_string_equal(r->fields[0].value.text, "ab12");
		assert_int_equal(r->fields[1].value.kind, ISG_VALUE_INTEGER);
		assert_int_equal(r->fields[1].value.integer, 1980);
		assert_int_equal(r->fields[2].value.kind, ISG_VALUE_NONE);
	}
	assert_int_equal(list->items[1].gateway_id, 502);
	assert_int_equal(list->items[1].reply_to, 77);
	assert_int_equal(list->items[1].n_records, 0);
	uint64_t ids[] = {list->items[0].gateway_id, list->items[1].gateway_id};
	unsigned acked = 0;
	if (isg_client_ack(c, ids, 2, &acked, &err) < 0)
		fail_msg("%s", err.message);
	assert_int_equal(acked, 2);
	assert_int_equal(isg_client_ack(c, ids, 0, &acked, &err), 0); /* nothing to do */
	assert_int_equal(acked, 0);
	isg_client_close(c);
	mock_finish(m);
	/* The list is the caller's until freed, not the handle's: it outlives close. */
	assert_string_equal(list->items[0].records[1].fields[0].value.text, "ab12");
	assert_string_equal(list->items[1].sender, "met-police");
	isg_delivery_list_free(list);
}

static void push_delivery(SSL *ssl, uint64_t request_id, uint64_t gateway_id)
{
	Isg__Delivery d;
	fill_delivery(&d, gateway_id, NULL, 0);
	Isg__Frame out = ISG__FRAME__INIT;
	out.request_id = request_id;
	out.body_case = ISG__FRAME__BODY_DELIVERY;
	out.delivery = &d;
	mock_write(ssl, &out);
}

static void script_subscription(struct mock *m, SSL *ssl)
{
	mock_welcome(m, ssl);
	Isg__Frame *f = mock_expect(m, ssl, ISG__FRAME__BODY_SUBSCRIBE);
	if (!f)
		return;
	uint64_t sub = f->request_id;
	push_delivery(ssl, sub, 601);
	f = mock_expect(m, ssl, ISG__FRAME__BODY_ACK);
	if (!f)
		return;
	MOCK_CHECK(m, f->ack->n_gateway_ids == 1 && f->ack->gateway_ids[0] == 601);
	/* A push arrives before the ack's answer: the client must keep it. */
	push_delivery(ssl, sub, 602);
	Isg__AckResult ar = ISG__ACK_RESULT__INIT;
	ar.acknowledged = 1;
	Isg__Frame out = ISG__FRAME__INIT;
	out.request_id = f->request_id;
	out.body_case = ISG__FRAME__BODY_ACK_RESULT;
	out.ack_result = &ar;
	mock_write(ssl, &out);
	f = mock_expect(m, ssl, ISG__FRAME__BODY_ACK);
	if (!f)
		return;
	mock_error(ssl, sub, ISG__ERROR_CODE__UNAVAILABLE, "gateway shutting down", -1, "", "", 0);
	ar.acknowledged = 0;
	out.request_id = f->request_id;
	mock_write(ssl, &out);
	mock_drain(m, ssl);
}

#define BIG_PUSHES 16
#define BIG_PUSH_BYTES (512 * 1024)
#define BIG_SEND_BYTES (8 * 1024 * 1024)

/*
 * The gateway pushes more than the sockets hold before it reads again, as
 * one does whose output buffer for the connection is full, while the
 * client writes a send larger than they hold too.
 */
static void script_pushes_while_client_writes(struct mock *m, SSL *ssl)
{
	mock_welcome(m, ssl);
	Isg__Frame *f = mock_expect(m, ssl, ISG__FRAME__BODY_SUBSCRIBE);
	if (!f)
		return;
	uint64_t sub = f->request_id;
	char *text = malloc(BIG_PUSH_BYTES);
	MOCK_CHECK(m, text != NULL);
	if (!text)
		return;
	memset(text, 'p', BIG_PUSH_BYTES - 1);
	text[BIG_PUSH_BYTES - 1] = '\0';
	Isg__Value v = ISG__VALUE__INIT;
	v.kind_case = ISG__VALUE__KIND_TEXT;
	v.text = text;
	Isg__Field fld = ISG__FIELD__INIT;
	fld.name = "notes";
	fld.value = &v;
	Isg__Field *fp = &fld;
	Isg__Record rec = ISG__RECORD__INIT;
	rec.n_fields = 1;
	rec.fields = &fp;
	Isg__Record *rp = &rec;
	for (uint64_t i = 0; i < BIG_PUSHES; i++) {
		Isg__Delivery d;
		fill_delivery(&d, 700 + i, &rp, 1);
		Isg__Frame out = ISG__FRAME__INIT;
		out.request_id = sub;
		out.body_case = ISG__FRAME__BODY_DELIVERY;
		out.delivery = &d;
		mock_write(ssl, &out);
	}
	free(text);
	f = mock_expect(m, ssl, ISG__FRAME__BODY_SEND);
	if (!f)
		return;
	MOCK_CHECK(m, f->send->n_records == 1);
	mock_receipt(ssl, f->request_id, f->send->message_id, 1001);
	mock_drain(m, ssl);
}

/* Reading while writing: neither side waits for the other to read first. */
static void test_send_while_gateway_pushes(void **state)
{
	struct mock *m = &mock_slot;
	/* Long enough for a sanitizer's build; without reading while writing
	 * both sides wait for each other until it runs out. */
	struct isg_client *c = connect_within(m, script_pushes_while_client_writes, 60000);
	struct isg_error err;
	if (isg_client_subscribe(c, &err) < 0)
		fail_msg("%s", err.message);
	char *text = malloc(BIG_SEND_BYTES);
	assert_non_null(text);
	memset(text, 's', BIG_SEND_BYTES - 1);
	text[BIG_SEND_BYTES - 1] = '\0';
	struct isg_field fld = {"notes", {.kind = ISG_VALUE_TEXT, .text = text}};
	struct isg_record rec = {1, &fld};
	struct isg_message msg = bare_message("big");
	msg.n_records = 1;
	msg.records = &rec;
	struct isg_receipt r;
	if (isg_client_send(c, &msg, &r, &err) < 0)
		fail_msg("%s: %s", err.code_name, err.message);
	assert_string_equal(r.message_id, "big");
	free(text);
	for (uint64_t i = 0; i < BIG_PUSHES; i++) {
		struct isg_delivery *d = NULL;
		if (isg_client_next_delivery(c, 60000, &d, &err) < 0 || !d)
			fail_msg("push %" PRIu64 ": %s", i, d ? err.message : "none");
		assert_int_equal(d->gateway_id, 700 + i);
		assert_int_equal(strlen(d->records[0].fields[0].value.text), BIG_PUSH_BYTES - 1);
		isg_delivery_free(d);
	}
	isg_client_close(c);
	mock_finish(m);
}

static void test_subscription_keeps_pushes_during_ack(void **state)
{
	struct mock *m = &mock_slot;
	struct isg_client *c = connect_to(m, script_subscription);
	struct isg_error err;
	struct isg_delivery *d = NULL;
	assert_int_equal(isg_client_next_delivery(c, 100, &d, &err), -1);
	assert_int_equal(err.code, ISG_CLIENT_E_USAGE); /* not subscribed yet */
	assert_int_equal(isg_client_subscribe(c, &err), 0);
	assert_int_equal(isg_client_subscribe(c, &err), -1);
	/* -1 waits forever; below it is a mistake, as the options' timeout_ms says */
	assert_int_equal(isg_client_next_delivery(c, -2, &d, &err), -1);
	assert_int_equal(err.code, ISG_CLIENT_E_USAGE);
	assert_string_equal(err.message, "timeout_ms -2 is below -1 (-1: forever, 0: do not wait)");
	if (isg_client_next_delivery(c, 5000, &d, &err) < 0)
		fail_msg("%s", err.message);
	assert_non_null(d);
	assert_int_equal(d->gateway_id, 601);
	unsigned acked = 0;
	if (isg_client_ack(c, &d->gateway_id, 1, &acked, &err) < 0)
		fail_msg("%s", err.message);
	assert_int_equal(acked, 1);
	isg_delivery_free(d);
	d = NULL;
	assert_int_equal(isg_client_next_delivery(c, 0, &d, &err), 0);
	assert_non_null(d);
	assert_int_equal(d->gateway_id, 602);
	uint64_t id = 602;
	isg_delivery_free(d);
	assert_int_equal(isg_client_ack(c, &id, 1, &acked, &err), 0);
	assert_int_equal(acked, 0);
	/* The gateway ended the subscription with an error, queued during the ack. */
	assert_int_equal(isg_client_next_delivery(c, 0, &d, &err), -1);
	assert_true(err.from_gateway);
	assert_int_equal(err.code, ISG_WIRE_UNAVAILABLE);
	assert_string_equal(err.message, "gateway shutting down");
	/* It does so only as it closes: the handle is done, not merely unsubscribed. */
	assert_int_equal(isg_client_next_delivery(c, 0, &d, &err), -1);
	assert_int_equal(err.code, ISG_CLIENT_E_CLOSED);
	assert_non_null(strstr(err.message, "ended the subscription: gateway shutting down"));
	assert_int_equal(isg_client_ping(c, NULL, &err), -1);
	assert_int_equal(err.code, ISG_CLIENT_E_CLOSED);
	isg_client_close(c);
	mock_finish(m);
}

static void script_silent(struct mock *m, SSL *ssl)
{
	mock_welcome(m, ssl);
	mock_drain(m, ssl); /* reads the ping, never answers */
}

static void test_timeout_then_unusable(void **state)
{
	struct mock *m = &mock_slot;
	mock_start(m, script_silent, pki.ca);
	struct isg_client_options opt;
	char addr[64];
	options_for(&opt, m, addr, sizeof(addr));
	opt.timeout_ms = 1000; /* the handshake too: valgrind's takes some hundreds of ms */
	struct isg_client *c = NULL;
	struct isg_error err;
	assert_int_equal(isg_client_connect(&opt, &c, &err), 0);
	struct isg_delivery *d = (struct isg_delivery *)&err;
	assert_int_equal(isg_client_subscribe(c, &err), 0);
	assert_int_equal(isg_client_next_delivery(c, 50, &d, &err), 0); /* nothing yet */
	assert_null(d);
	int64_t start = time_mono_ms();
	assert_int_equal(isg_client_ping(c, NULL, &err), -1);
	int64_t took = time_mono_ms() - start;
	assert_int_equal(err.code, ISG_CLIENT_E_TIMEOUT);
	assert_true(took >= 990 && took < 5000);
	assert_int_equal(isg_client_ping(c, NULL, &err), -1);
	assert_int_equal(err.code, ISG_CLIENT_E_CLOSED);
	isg_client_close(c);
	mock_finish(m);
}

static void script_pong(struct mock *m, SSL *ssl)
{
	mock_welcome(m, ssl);
	Isg__Frame *f = mock_expect(m, ssl, ISG__FRAME__BODY_PING);
	if (!f)
		return;
	mock_pong(ssl, f);
	mock_drain(m, ssl);
}

/* What a child of fork() does with the handle it inherited: 0 when it was refused. */
static int child_uses_copy(struct isg_client *c)
{
	struct isg_error err;
	if (isg_client_ping(c, NULL, &err) != -1 || err.code != ISG_CLIENT_E_USAGE ||
	    !strstr(err.message, "fork"))
		return 1;
	uint64_t ticket;
	struct isg_message msg = {.recipient = "nhs-trust", .agreement_id = "a", .dataset = "d"};
	if (isg_client_send_start(c, &msg, &ticket, &err) != -1 || err.code != ISG_CLIENT_E_USAGE)
		return 2;
	isg_client_close(c); /* frees the copy; must not end the parent's session */
	return 0;
}

/*
 * A child of fork() shares the TLS session: a close_notify from its copy
 * would end the parent's connection, and a request from it would corrupt
 * the session. The child is refused, and its close sends nothing.
 */
static void test_fork_child_leaves_connection_alone(void **state)
{
	struct mock *m = &mock_slot;
	struct isg_client *c = connect_to(m, script_pong);
	/* The child's verdict comes through a pipe: its exit status is valgrind's
	 * to set, for what the child inherited and never frees. */
	int verdict[2];
	assert_int_equal(pipe(verdict), 0);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		char v = (char)('0' + child_uses_copy(c));
		(void)!write(verdict[1], &v, 1);
		_exit(0);
	}
	close(verdict[1]);
	char v = 'x';
	assert_int_equal(read(verdict[0], &v, 1), 1);
	close(verdict[0]);
	assert_int_equal(waitpid(pid, NULL, 0), pid);
	assert_int_equal(v, '0');
	struct isg_error err;
	if (isg_client_ping(c, NULL, &err) < 0)
		fail_msg("parent's ping after the child closed its copy: %s: %s", err.code_name,
		         err.message);
	isg_client_close(c);
	mock_finish(m);
	assert_true(m->saw_close_notify);
}

static void script_no_welcome(struct mock *m, SSL *ssl)
{
	mock_drain(m, ssl); /* reads the Hello, never answers */
}

/*
 * timeout_ms bounds isg_client_connect as a whole: a gateway slow to
 * handshake leaves less time for its Welcome, not a fresh timeout.
 */
static void test_connect_within_one_timeout(void **state)
{
	struct mock *m = &mock_slot;
	mock_start_slow(m, script_no_welcome, pki.ca, 800);
	struct isg_client_options opt;
	char addr[64];
	options_for(&opt, m, addr, sizeof(addr));
	opt.timeout_ms = 1500;
	struct isg_client *c = NULL;
	struct isg_error err;
	int64_t start = time_mono_ms();
	assert_int_equal(isg_client_connect(&opt, &c, &err), -1);
	int64_t took = time_mono_ms() - start;
	assert_null(c);
	assert_int_equal(err.code, ISG_CLIENT_E_TIMEOUT);
	if (took < 1490 || took > 2100)
		fail_msg("connect gave up after %" PRId64 " ms, not 1500", took);
	mock_finish(m);
}

static void script_eof_without_close_notify(struct mock *m, SSL *ssl)
{
	mock_welcome(m, ssl);
	Isg__Frame *f = mock_expect(m, ssl, ISG__FRAME__BODY_PING);
	(void)f;
	shutdown(SSL_get_fd(ssl), SHUT_RDWR);
}

static void test_eof_without_close_notify(void **state)
{
	struct mock *m = &mock_slot;
	struct isg_client *c = connect_to(m, script_eof_without_close_notify);
	struct isg_error err;
	assert_int_equal(isg_client_ping(c, NULL, &err), -1);
	assert_int_equal(err.code, ISG_CLIENT_E_IO);
	assert_non_null(strstr(err.message, "without close_notify"));
	isg_client_close(c);
	mock_finish(m);
}

static void script_clean_close(struct mock *m, SSL *ssl)
{
	mock_welcome(m, ssl);
	Isg__Frame *f = mock_expect(m, ssl, ISG__FRAME__BODY_PING);
	(void)f;
	SSL_shutdown(ssl);
	mock_drain(m, ssl);
}

static void test_clean_close_by_gateway(void **state)
{
	struct mock *m = &mock_slot;
	struct isg_client *c = connect_to(m, script_clean_close);
	struct isg_error err;
	assert_int_equal(isg_client_ping(c, NULL, &err), -1);
	assert_int_equal(err.code, ISG_CLIENT_E_CLOSED);
	assert_string_equal(err.message, "the gateway closed the connection");
	isg_client_close(c);
	mock_finish(m);
}

/* A reload took the partner away: an error about the connection (isgd then closes). */
static void script_partner_removed(struct mock *m, SSL *ssl)
{
	mock_welcome(m, ssl);
	if (!mock_expect(m, ssl, ISG__FRAME__BODY_PING))
		return;
	mock_error(ssl, 0, ISG__ERROR_CODE__NOT_PERMITTED,
	           "this partner was removed from the gateway's registry", -1, "",
	           "partner.removed", 0);
	mock_drain(m, ssl); /* still open: the client alone must know it is over */
}

/* The call that reads the gateway's error about the connection returns it; the next is CLOSED. */
static void test_connection_refused_while_connected(void **state)
{
	struct mock *m = &mock_slot;
	struct isg_client *c = connect_to(m, script_partner_removed);
	struct isg_error err;
	assert_int_equal(isg_client_ping(c, NULL, &err), -1);
	assert_true(err.from_gateway);
	assert_int_equal(err.code, ISG_WIRE_NOT_PERMITTED);
	assert_string_equal(err.rule, "partner.removed");
	assert_int_equal(isg_client_ping(c, NULL, &err), -1);
	assert_false(err.from_gateway);
	assert_int_equal(err.code, ISG_CLIENT_E_CLOSED);
	isg_client_close(c);
	mock_finish(m);
}

static void script_oversize(struct mock *m, SSL *ssl)
{
	mock_welcome(m, ssl);
	Isg__Frame *f = mock_expect(m, ssl, ISG__FRAME__BODY_PING);
	(void)f;
	uint8_t hdr[WIRE_VARINT_MAX];
	size_t n = wire_varint_encode(100u * 1024 * 1024, hdr), w;
	SSL_write_ex(ssl, hdr, n, &w);
	mock_drain(m, ssl);
}

static void test_oversize_frame_refused(void **state)
{
	struct mock *m = &mock_slot;
	mock_start(m, script_oversize, pki.ca);
	struct isg_client_options opt;
	char addr[64];
	options_for(&opt, m, addr, sizeof(addr));
	opt.max_frame_bytes = 1024 * 1024;
	struct isg_client *c = NULL;
	struct isg_error err;
	assert_int_equal(isg_client_connect(&opt, &c, &err), 0);
	assert_int_equal(isg_client_ping(c, NULL, &err), -1);
	assert_int_equal(err.code, ISG_CLIENT_E_TOO_BIG);
	assert_non_null(strstr(err.message, "more than 1048576 bytes"));
	isg_client_close(c);
	mock_finish(m);
}

static void script_wrong_request_id(struct mock *m, SSL *ssl)
{
	mock_welcome(m, ssl);
	Isg__Frame *f = mock_expect(m, ssl, ISG__FRAME__BODY_PING);
	if (!f)
		return;
	Isg__Pong pong = ISG__PONG__INIT;
	pong.nonce = f->ping->nonce;
	Isg__Frame out = ISG__FRAME__INIT;
	out.request_id = f->request_id + 5;
	out.body_case = ISG__FRAME__BODY_PONG;
	out.pong = &pong;
	mock_write(ssl, &out);
	mock_drain(m, ssl);
}

static void test_answer_with_wrong_request_id(void **state)
{
	struct mock *m = &mock_slot;
	struct isg_client *c = connect_to(m, script_wrong_request_id);
	struct isg_error err;
	assert_int_equal(isg_client_ping(c, NULL, &err), -1);
	assert_int_equal(err.code, ISG_CLIENT_E_PROTOCOL);
	assert_non_null(strstr(err.message, "unexpected 'pong' frame"));
	assert_int_equal(isg_client_ping(c, NULL, &err), -1);
	assert_int_equal(err.code, ISG_CLIENT_E_CLOSED);
	isg_client_close(c);
	mock_finish(m);
	assert_true(m->saw_close_notify); /* still a clean TLS close */
}

static void test_code_names(void **state)
{
	assert_string_equal(isg_client_code_name(ISG_WIRE_LIMIT_EXCEEDED), "LIMIT_EXCEEDED");
	assert_string_equal(isg_client_code_name(ISG_WIRE_BAD_REQUEST), "BAD_REQUEST");
	assert_string_equal(isg_client_code_name(ISG_CLIENT_E_TIMEOUT), "TIMEOUT");
	assert_string_equal(isg_client_code_name(4242), "UNKNOWN");
	assert_true(ISG_CLIENT_IS_LOCAL(ISG_CLIENT_E_USAGE));
	assert_false(ISG_CLIENT_IS_LOCAL(ISG_WIRE_INTERNAL));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_connect_welcome_and_close_notify),
	    cmocka_unit_test(test_mock_left_running_is_stopped),
	    cmocka_unit_test(test_connect_by_dns_name),
	    cmocka_unit_test(test_connect_timeout_starts_after_resolution),
	    cmocka_unit_test(test_gateway_certificate_from_other_ca),
	    cmocka_unit_test(test_gateway_certificate_wrong_name),
	    cmocka_unit_test(test_gateway_certificate_wrong_ip),
	    cmocka_unit_test(test_client_certificate_refused_by_tls),
	    cmocka_unit_test(test_gateway_refuses_connection_with_error),
	    cmocka_unit_test(test_connection_refused),
	    cmocka_unit_test(test_hangup_during_handshake_is_io),
	    cmocka_unit_test(test_openssl_error_queue_left_empty),
	    cmocka_unit_test(test_bad_options),
	    cmocka_unit_test(test_send_and_receipt),
	    cmocka_unit_test(test_send_from_const_records),
	    cmocka_unit_test(test_refusal_reported_exactly_and_connection_usable),
	    cmocka_unit_test(test_error_texts_are_utf8_and_whole),
	    cmocka_unit_test(test_pipelined_sends),
	    cmocka_unit_test(test_pipelined_answer_kept_when_connection_fails),
	    cmocka_unit_test(test_pipelined_answer_kept_when_write_fails),
	    cmocka_unit_test(test_fetch_and_ack),
	    cmocka_unit_test(test_subscription_keeps_pushes_during_ack),
	    cmocka_unit_test(test_send_while_gateway_pushes),
	    cmocka_unit_test(test_timeout_then_unusable),
	    cmocka_unit_test(test_connect_within_one_timeout),
	    cmocka_unit_test(test_fork_child_leaves_connection_alone),
	    cmocka_unit_test(test_eof_without_close_notify),
	    cmocka_unit_test(test_clean_close_by_gateway),
	    cmocka_unit_test(test_connection_refused_while_connected),
	    cmocka_unit_test(test_oversize_frame_refused),
	    cmocka_unit_test(test_answer_with_wrong_request_id),
	    cmocka_unit_test(test_code_names),
	};
	return cmocka_run_group_tests(tests, pki_setup, teardown);
}
