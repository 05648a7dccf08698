/* isgd.yaml: every key, defaults, path resolution and positioned errors. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "config/config.h"
#include "util/util.h"
#include "ydoc/ydoc.h"

static char data_dir[4096];

static int setup(void **state)
{
	const char *d = getenv("ISG_TEST_DATA");
	if (!d) {
		fprintf(stderr, "ISG_TEST_DATA is not set (run through ctest)\n");
		return -1;
	}
	snprintf(data_dir, sizeof(data_dir), "%s/config", d);
	return 0;
}

static const char *fixture(const char *name)
{
	static char path[4200];
	snprintf(path, sizeof(path), "%s/%s", data_dir, name);
	return path;
}

static void assert_diag(const struct ydoc_diags *d, size_t i, int line, int col, const char *msg)
{
	assert_true(i < d->n);
	const struct ydoc_diag *g = &d->items[i];
	if (g->line != line || g->col != col || !strstr(g->message, msg))
		fprintf(stderr, "diag %zu: %d:%d: %s\n", i, g->line, g->col, g->message);
	assert_int_equal(g->line, line);
	assert_int_equal(g->col, col);
	assert_non_null(strstr(g->message, msg));
	assert_false(g->warning);
}

static void test_full(void **state)
{
	struct isgd_config c;
	struct ydoc_diags d;
	ydoc_diags_init(&d);
	int err = config_load(fixture("full.yaml"), &c, &d);
	ydoc_diags_print(&d, stderr);
	assert_int_equal(err, 0);
	assert_int_equal(d.errors, 0);
	char want[4400];
	assert_string_equal(c.path, fixture("full.yaml"));
	assert_string_equal(c.listen_host, "127.0.0.1");
	assert_int_equal(c.listen_port, 7443);
	assert_int_equal(c.listen_line, 2); /* where --check-config names it */
	assert_int_equal(c.listen_col, 9);
	assert_int_equal(c.threads, 2);
	snprintf(want, sizeof(want), "%s/pki/gateway.crt", data_dir);
	assert_string_equal(c.tls_certificate, want);
	snprintf(want, sizeof(want), "%s/pki/gateway.key", data_dir);
	assert_string_equal(c.tls_key, want);
	snprintf(want, sizeof(want), "%s/pki/partners-ca.crt", data_dir);
	assert_string_equal(c.tls_client_ca, want);
	snprintf(want, sizeof(want), "%s/pki/partners.crl", data_dir);
	assert_string_equal(c.tls_crl, want);
	assert_true(c.tls_allow_tls12);
	snprintf(want, sizeof(want), "%s/data/isg.db", data_dir);
	assert_string_equal(c.store_path, want);
	assert_int_equal(c.undelivered_ttl_ms, 14LL * 86400000);
	assert_int_equal(c.sweep_interval_ms, 250);
	snprintf(want, sizeof(want), "%s/../policies", data_dir);
	assert_string_equal(c.policy_dir, want);
	assert_string_equal(c.keys_dir, "/etc/isg/keys");
	assert_int_equal(c.max_frame_bytes, 1024 * 1024);
	assert_int_equal(c.max_connections, 500);
	assert_int_equal(c.max_records_per_message, 2000);
	assert_int_equal(c.max_fetch_messages, 50);
	assert_int_equal(c.max_wait_ms, 30000);
	assert_int_equal(c.handshake_timeout_ms, 5000);
	assert_int_equal(c.idle_timeout_ms, 15 * 60000);
	assert_int_equal(c.conn_buffer_bytes, 2 * 1024 * 1024);
	assert_int_equal(c.max_inflight, 16);
	assert_int_equal(c.inflight_buffer_bytes, 64 * 1024 * 1024);
	assert_string_equal(c.user, "isg");
	assert_false(c.key_process);
	assert_int_equal(c.log_level, LOG_DEBUG);
	config_release(&c);
	config_release(&c); /* twice is fine */
	ydoc_diags_release(&d);
}

static void test_defaults_and_relative_config_path(void **state)
{
	struct isgd_config c;
	struct ydoc_diags d;
	ydoc_diags_init(&d);
	char old[4096];
	assert_non_null(getcwd(old, sizeof(old)));
	assert_int_equal(chdir(data_dir), 0);
	int err = config_load("./minimal.yaml", &c, &d);
	assert_int_equal(chdir(old), 0);
	ydoc_diags_print(&d, stderr);
	assert_int_equal(err, 0);
	char want[4400];
	assert_string_equal(c.path, fixture("minimal.yaml"));
	assert_string_equal(c.listen_host, "::1");
	assert_int_equal(c.listen_port, 7443);
	snprintf(want, sizeof(want), "%s/data/isg.db", data_dir);
	assert_string_equal(c.store_path, want);
	snprintf(want, sizeof(want), "%s/policies", data_dir);
	assert_string_equal(c.policy_dir, want);
	assert_null(c.tls_crl);
	assert_null(c.user);
	assert_true(c.key_process);
	assert_false(c.tls_allow_tls12);
	assert_true(c.threads >= 1 && c.threads <= 64);
	assert_int_equal(c.undelivered_ttl_ms, 30LL * 86400000);
	assert_int_equal(c.sweep_interval_ms, 60000);
	assert_int_equal(c.max_frame_bytes, 4 * 1024 * 1024);
	assert_int_equal(c.max_connections, 1000);
	assert_int_equal(c.max_records_per_message, 10000);
	assert_int_equal(c.max_fetch_messages, 100);
	assert_int_equal(c.max_wait_ms, 60000);
	assert_int_equal(c.handshake_timeout_ms, 10000);
	assert_int_equal(c.idle_timeout_ms, 300000);
	assert_int_equal(c.conn_buffer_bytes, 8 * 1024 * 1024);
	assert_int_equal(c.max_inflight, 64);
	assert_int_equal(c.inflight_buffer_bytes, 256 * 1024 * 1024);
	assert_int_equal(c.log_level, LOG_INFO);
	assert_string_equal(c.audit_origin, "isg-gateway");
	assert_int_equal(c.checkpoint_every, 1000);
	assert_int_equal(c.checkpoint_interval_ms, 10000);
	assert_int_equal(c.refusal_window_ms, 60000);
	config_release(&c);
	assert_null(c.audit_origin);
	ydoc_diags_release(&d);
}

static void test_bad_values(void **state)
{
	struct isgd_config c;
	struct ydoc_diags d;
	ydoc_diags_init(&d);
	assert_int_equal(config_load(fixture("bad-values.yaml"), &c, &d), ISG_ERR_INVALID);
	assert_int_equal(d.errors, 8);
	assert_diag(&d, 0, 1, 9,
	            "invalid listen address '127.0.0.1:99999' (the port must be a number from 1 to "
	            "65535)");
	assert_diag(&d, 1, 2, 10, "invalid value '0' for threads (use an integer from 1 to 64)");
	assert_diag(&d, 2, 7, 16, "invalid TLS version '1.1' for tls.min_version");
	assert_diag(&d, 3, 10, 20, "invalid duration 'forever' for store.undelivered_ttl");
	assert_diag(&d, 4, 14, 14,
	            "size '128MiB' for limits.max_frame is out of range (1KiB to 64MiB)");
	assert_diag(
	    &d, 5, 15, 17,
	    "invalid duration '10x' for limits.idle_timeout (use e.g. 250ms, 10s, 15m, 12h, "
	    "30d)");
	assert_diag(&d, 6, 16, 17, "invalid value 'lots' for limits.max_inflight");
	assert_diag(&d, 7, 17, 12, "invalid log level 'verbose'");
	/* The printed form: file:line:column: error: message. */
	char *text = NULL;
	size_t size = 0;
	FILE *f = open_memstream(&text, &size);
	ydoc_diags_print(&d, f);
	fclose(f);
	char want[4400];
	snprintf(want, sizeof(want),
	         "%s:15:17: error: invalid duration '10x' for limits.idle_timeout (use e.g. 250ms, "
	         "10s, 15m, 12h, 30d)\n",
	         fixture("bad-values.yaml"));
	assert_non_null(strstr(text, want));
	free(text);
	/* On failure the struct is back to defaults, nothing to leak. */
	assert_null(c.listen_host);
	assert_null(c.path);
	assert_int_equal(c.max_inflight, 64);
	config_release(&c);
	ydoc_diags_release(&d);
}

static void test_bad_structure(void **state)
{
	struct isgd_config c;
	struct ydoc_diags d;
	ydoc_diags_init(&d);
	assert_int_equal(config_load(fixture("bad-structure.yaml"), &c, &d), ISG_ERR_INVALID);
	assert_int_equal(d.errors, 7);
	assert_diag(&d, 0, 11, 1,
	            "unknown key 'pollicy_dir' in the configuration (did you mean 'policy_dir'?)");
	assert_diag(&d, 1, 5, 3, "unknown key 'clientca' in tls (did you mean 'client_ca'?)");
	assert_diag(&d, 2, 6, 8, "store must be a mapping, not a value");
	assert_diag(&d, 3, 10, 3, "duplicate key 'max_frame' in limits");
	assert_diag(&d, 4, 3, 16, "tls.certificate must be a single value, not a list");
	assert_diag(&d, 5, 3, 3, "missing required key 'tls.client_ca'");
	assert_diag(&d, 6, 1, 1, "missing required key 'policy_dir'");
	config_release(&c);
	ydoc_diags_release(&d);
}

static void test_syntax_error(void **state)
{
	struct isgd_config c;
	struct ydoc_diags d;
	ydoc_diags_init(&d);
	assert_int_equal(config_load(fixture("syntax.yaml"), &c, &d), ISG_ERR_PARSE);
	assert_int_equal(d.errors, 1);
	assert_diag(&d, 0, 4, 7,
	            "YAML syntax error: mapping values are not allowed in this context");
	ydoc_diags_release(&d);
	ydoc_diags_init(&d);
	assert_int_equal(config_load(fixture("does-not-exist.yaml"), &c, &d), ISG_ERR_IO);
	assert_non_null(strstr(d.items[0].message, "cannot open"));
	ydoc_diags_release(&d);
}

static int load_text(const char *text, struct isgd_config *c, struct ydoc_diags *d, char *path);

static void test_relation_between_limits(void **state)
{
	struct isgd_config c;
	struct ydoc_diags d;
	ydoc_diags_init(&d);
	assert_int_equal(config_load(fixture("relation.yaml"), &c, &d), ISG_ERR_INVALID);
	assert_int_equal(d.errors, 1);
	assert_diag(&d, 0, 7, 14, "limits.connection_buffer (8388608 bytes) must be at least");
	ydoc_diags_release(&d);

	/* Said with the other errors, not only once they are mended; but not
	 * about a size that is itself wrong. */
#define REQUIRED                                                                                   \
	"listen: localhost:7443\n"                                                                 \
	"tls: {certificate: a.crt, key: a.key, client_ca: ca.crt}\n"                               \
	"store: {path: isg.db}\npolicy_dir: policies\nkeys_dir: keys\n"
	char path[32];
	assert_int_equal(
	    load_text(REQUIRED "threads: lots\nlimits: {max_frame: 16MiB}\n", &c, &d, path),
	    ISG_ERR_INVALID);
	assert_int_equal(d.errors, 2);
	assert_diag(&d, 1, 7, 21, "limits.connection_buffer (8388608 bytes) must be at least");
	ydoc_diags_release(&d);
	assert_int_equal(load_text(REQUIRED "limits: {max_frame: 99GiB}\n", &c, &d, path),
	                 ISG_ERR_INVALID);
	assert_int_equal(d.errors, 1);
	assert_diag(&d, 0, 6, 21, "max_frame");
	ydoc_diags_release(&d);

	/* The bytes of requests in flight must hold one whole frame too. */
	assert_int_equal(load_text(REQUIRED "limits: {max_frame: 16MiB, connection_buffer: 16MiB, "
	                                    "inflight_buffer: 8MiB}\n",
	                           &c, &d, path),
	                 ISG_ERR_INVALID);
	assert_int_equal(d.errors, 1);
	assert_diag(&d, 0, 6, 71,
	            "limits.inflight_buffer (8388608 bytes) must be at least limits.max_frame "
	            "(16777216 bytes)");
	ydoc_diags_release(&d);
	/* Out of its own range: said once, not again as too small for max_frame. */
	assert_int_equal(load_text(REQUIRED "limits: {inflight_buffer: 512KiB}\n", &c, &d, path),
	                 ISG_ERR_INVALID);
	assert_int_equal(d.errors, 1);
	assert_diag(&d, 0, 6, 27,
	            "size '512KiB' for limits.inflight_buffer is out of range (1MiB to 1024GiB)");
	ydoc_diags_release(&d);
	/* Each alone valid, and the relation holds: loaded. */
	assert_int_equal(
	    load_text(REQUIRED "limits: {max_frame: 1MiB, inflight_buffer: 1MiB}\n", &c, &d, path),
	    0);
	assert_int_equal(c.inflight_buffer_bytes, 1024 * 1024);
	config_release(&c);
	ydoc_diags_release(&d);
#undef REQUIRED
}

/* Write text to a temporary config file and load it. */
static int load_text(const char *text, struct isgd_config *c, struct ydoc_diags *d, char *path)
{
	str_copy(path, "/tmp/test_config_XXXXXX", 32);
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	close(fd);
	ydoc_diags_init(d);
	int err = config_load(path, c, d);
	unlink(path);
	return err;
}

/* Write text to a temporary config file, load it, expect one error. */
static void load_text_fails(const char *text, int line, int col, const char *msg)
{
	char path[] = "/tmp/test_config_XXXXXX";
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	close(fd);
	struct isgd_config c;
	struct ydoc_diags d;
	ydoc_diags_init(&d);
	int err = config_load(path, &c, &d);
	unlink(path);
	if (d.errors != 1)
		ydoc_diags_print(&d, stderr);
	assert_int_equal(err, ISG_ERR_INVALID);
	assert_int_equal(d.errors, 1);
	assert_string_equal(d.items[0].file, path);
	assert_diag(&d, 0, line, col, msg);
	config_release(&c);
	ydoc_diags_release(&d);
}

#define BASE                                                                                       \
	"tls: {certificate: a.crt, key: a.key, client_ca: ca.crt}\n"                               \
	"store: {path: isg.db}\n"                                                                  \
	"policy_dir: p\n"                                                                          \
	"keys_dir: k\n"

static void test_audit_section(void **state)
{
	struct isgd_config c;
	struct ydoc_diags d;
	char path[32];
	assert_int_equal(load_text(BASE
	                           "listen: h:1\naudit:\n  origin: gw.police.example/isg-audit_1\n"
	                           "  checkpoint_every: 1000000\n  checkpoint_interval: 1d\n"
	                           "  refusal_window: 1h\n",
	                           &c, &d, path),
	                 0);
	assert_string_equal(c.audit_origin, "gw.police.example/isg-audit_1");
	assert_int_equal(c.checkpoint_every, 1000000);
	assert_int_equal(c.checkpoint_interval_ms, 86400000);
	assert_int_equal(c.refusal_window_ms, 3600000);
	config_release(&c);
	ydoc_diags_release(&d);
	/* The smallest values, and an origin of exactly 64 characters. */
	assert_int_equal(
	    load_text(BASE "listen: h:1\naudit: {checkpoint_every: 1, checkpoint_interval: "
	                   "1s, refusal_window: 10s, origin: "
	                   "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa}\n",
	              &c, &d, path),
	    0);
	assert_int_equal(strlen(c.audit_origin), 64);
	assert_int_equal(c.checkpoint_every, 1);
	assert_int_equal(c.checkpoint_interval_ms, 1000);
	assert_int_equal(c.refusal_window_ms, 10000);
	config_release(&c);
	ydoc_diags_release(&d);
	/* An empty audit section keeps every default. */
	assert_int_equal(load_text(BASE "listen: h:1\naudit: {}\n", &c, &d, path), 0);
	assert_string_equal(c.audit_origin, "isg-gateway");
	assert_int_equal(c.checkpoint_every, 1000);
	assert_int_equal(c.checkpoint_interval_ms, 10000);
	assert_int_equal(c.refusal_window_ms, 60000);
	config_release(&c);
	ydoc_diags_release(&d);

	load_text_fails(
	    BASE "listen: h:1\naudit: {origin: 'isg gateway'}\n", 6, 17,
	    "invalid origin 'isg gateway' for audit.origin (use 1 to 64 letters, digits, "
	    "'.', '_', '/' or '-'; no spaces or '+')");
	load_text_fails(BASE "listen: h:1\naudit: {origin: isg+gateway}\n", 6, 17,
	                "invalid origin 'isg+gateway'");
	load_text_fails(BASE "listen: h:1\naudit: {origin: ''}\n", 6, 17, "invalid origin ''");
	load_text_fails(BASE "listen: h:1\nkey_process: no\n", 6, 14,
	                "invalid value 'no' for key_process (use true or false)");
	load_text_fails(BASE "listen: h:1\naudit: {origin: "
	                     "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa}\n",
	                6, 17, "invalid origin");
	load_text_fails(BASE "listen: h:1\naudit: {origin: \"caf\u00e9\"}\n", 6, 17,
	                "invalid origin");
	load_text_fails(BASE "listen: h:1\naudit: {checkpoint_every: 0}\n", 6, 27,
	                "invalid value '0' for audit.checkpoint_every (use an integer from 1 to "
	                "1000000)");
	load_text_fails(BASE "listen: h:1\naudit: {checkpoint_every: 1000001}\n", 6, 27,
	                "invalid value '1000001' for audit.checkpoint_every");
	load_text_fails(
	    BASE "listen: h:1\naudit: {checkpoint_interval: 999ms}\n", 6, 30,
	    "duration '999ms' for audit.checkpoint_interval is out of range (1s to 1d)");
	load_text_fails(BASE "listen: h:1\naudit: {checkpoint_interval: 2d}\n", 6, 30,
	                "duration '2d' for audit.checkpoint_interval is out of range");
	load_text_fails(BASE "listen: h:1\naudit: {refusal_window: 9s}\n", 6, 25,
	                "duration '9s' for audit.refusal_window is out of range (10s to 1h)");
	load_text_fails(BASE "listen: h:1\naudit: {refusal_window: 61m}\n", 6, 25,
	                "duration '61m' for audit.refusal_window is out of range");
	load_text_fails(
	    BASE "listen: h:1\naudit: {chekpoint_every: 5}\n", 6, 9,
	    "unknown key 'chekpoint_every' in audit (did you mean 'checkpoint_every'?)");
	load_text_fails(BASE "listen: h:1\naudit: isg-gateway\n", 6, 8,
	                "audit must be a mapping, not a value");
}

static void test_listen_and_more_errors(void **state)
{
	load_text_fails(BASE "listen: ::1:7443\n", 5, 9, "an IPv6 address needs brackets");
	load_text_fails(BASE "listen: '[::g]:7443'\n", 5, 9, "invalid IPv6 address");
	load_text_fails(BASE "listen: 7443\n", 5, 9, "use host:port or [v6addr]:port");
	load_text_fails(BASE "listen: 'bad host:1'\n", 5, 9, "invalid host name or IPv4 address");
	/* Digits only in the last label: a mistyped IPv4 address, which start cannot bind. */
	load_text_fails(BASE "listen: 10.0.0.300:17443\n", 5, 9,
	                "invalid listen address '10.0.0.300:17443' (invalid host name or IPv4 "
	                "address)");
	load_text_fails(BASE "listen: 999.1.1.1:1\n", 5, 9, "invalid host name or IPv4 address");
	load_text_fails(BASE "listen: 10.0.0:1\n", 5, 9, "invalid host name or IPv4 address");
	load_text_fails(BASE "listen: ':7443'\n", 5, 9, "the host is missing");
	load_text_fails(BASE "listen: 'h:0'\n", 5, 9, "the port must be a number from 1 to 65535");
	load_text_fails(BASE "listen: h:1\nuser: 'root;rm'\n", 6, 7, "invalid user name 'root;rm'");
	/* Where user is written, for the errors isgd finds when it looks the user up. */
	struct isgd_config c;
	struct ydoc_diags d;
	char path[32];
	assert_int_equal(load_text(BASE "listen: h:1\nuser:   nobody\n", &c, &d, path), 0);
	assert_int_equal(c.user_line, 6);
	assert_int_equal(c.user_col, 9);
	config_release(&c);
	ydoc_diags_release(&d);
	load_text_fails(BASE "listen: h:1\nthreads: 65\n", 6, 10, "from 1 to 64");
	load_text_fails(BASE "listen: h:1\nlimits: {max_wait: 11m}\n", 6, 20,
	                "duration '11m' for limits.max_wait is out of range (0s to 10m)");
	load_text_fails(BASE "listen: h:1\nlimits: {max_frame: 4XB}\n", 6, 21,
	                "invalid size '4XB' for limits.max_frame");
	load_text_fails(BASE "listen: h:1\nlimits: {max_connections: -1}\n", 6, 27,
	                "invalid value '-1' for limits.max_connections");
	load_text_fails(BASE "listen: h:1\nstore: {path: x, sweep_interval: 10ms}\n", 6, 1,
	                "duplicate key 'store' in the configuration");
	load_text_fails(BASE "listen:\n", 5, 8, "missing required key 'listen'");
	load_text_fails("- a\n- b\n", 1, 1, "the configuration must be a mapping");
	load_text_fails("", 0, 0, "the configuration must be a mapping");
}

/* A UTF-8 byte order mark at the start is ignored: the file loads, columns on line 1 stay right. */
static void test_byte_order_mark(void **state)
{
	struct isgd_config c;
	struct ydoc_diags d;
	char path[32];
	assert_int_equal(load_text("\xef\xbb\xbflisten: h:1\n" BASE, &c, &d, path), 0);
	assert_string_equal(c.listen_host, "h");
	config_release(&c);
	ydoc_diags_release(&d);
	load_text_fails("\xef\xbb\xbflisten: 7443\n" BASE, 1, 9, "use host:port or [v6addr]:port");
}

/* A section written without a value (audit:, limits: ~) is absent, as any other key is. */
static void test_section_without_a_value(void **state)
{
	static const char *const texts[] = {
	    "listen: h:1\naudit:\nlimits: ~\n" BASE,
	    "listen: h:1\naudit: null\nlimits:\n" BASE,
	};
	for (size_t i = 0; i < ARRAY_LEN(texts); i++) {
		struct isgd_config c, defaults;
		struct ydoc_diags d;
		char path[32];
		if (load_text(texts[i], &c, &d, path) != 0)
			ydoc_diags_print(&d, stderr);
		assert_int_equal(d.errors, 0);
		ydoc_diags_release(&d);
		assert_int_equal(load_text("listen: h:1\n" BASE, &defaults, &d, path), 0);
		ydoc_diags_release(&d);
		assert_int_equal(c.max_frame_bytes, defaults.max_frame_bytes);
		assert_int_equal(c.idle_timeout_ms, defaults.idle_timeout_ms);
		assert_int_equal(c.checkpoint_every, defaults.checkpoint_every);
		config_release(&c);
		config_release(&defaults);
	}
	/* A required section without a value: its keys are missing, at the section. */
	struct isgd_config c;
	struct ydoc_diags d;
	char path[32];
	assert_int_equal(
	    load_text("listen: h:1\ntls:\nstore: {path: x}\npolicy_dir: p\nkeys_dir: k\n", &c, &d,
	              path),
	    ISG_ERR_INVALID);
	assert_int_equal(d.errors, 3);
	assert_diag(&d, 0, 2, 5, "missing required key 'tls.certificate'");
	assert_diag(&d, 1, 2, 5, "missing required key 'tls.key'");
	assert_diag(&d, 2, 2, 5, "missing required key 'tls.client_ca'");
	config_release(&c);
	ydoc_diags_release(&d);
}

static void test_empty_paths(void **state)
{
	/* A quoted empty path is not a key without a value: it would be the config's directory. */
	load_text_fails("listen: h:1\ntls: {certificate: a.crt, key: a.key, client_ca: ca.crt}\n"
	                "store: {path: \"\"}\npolicy_dir: p\nkeys_dir: k\n",
	                3, 15, "path for store.path is empty");
	load_text_fails(
	    "listen: h:1\ntls: {certificate: a.crt, key: a.key, client_ca: ca.crt, "
	    "crl: ''}\nstore: {path: x}\npolicy_dir: p\nkeys_dir: k\n",
	    2, 63, "path for tls.crl is empty (to leave it unset, write the key without a value)");
	load_text_fails("listen: h:1\ntls: {certificate: a.crt, key: a.key, client_ca: ca.crt}\n"
	                "store: {path: x}\npolicy_dir: ''\nkeys_dir: k\n",
	                4, 13, "path for policy_dir is empty");
	/* Without a value, ~ or null, an optional path is unset, as before. */
	static const char *const unset[] = {"crl:", "crl: ~", "crl: null"};
	for (size_t i = 0; i < ARRAY_LEN(unset); i++) {
		char text[256], path[32];
		snprintf(
		    text, sizeof(text),
		    "listen: h:1\ntls:\n  certificate: a.crt\n  key: a.key\n  client_ca: ca.crt\n"
		    "  %s\nstore: {path: x}\npolicy_dir: p\nkeys_dir: k\n",
		    unset[i]);
		struct isgd_config c;
		struct ydoc_diags d;
		assert_int_equal(load_text(text, &c, &d, path), 0);
		assert_null(c.tls_crl);
		config_release(&c);
		ydoc_diags_release(&d);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_full),
	    cmocka_unit_test(test_defaults_and_relative_config_path),
	    cmocka_unit_test(test_bad_values),
	    cmocka_unit_test(test_bad_structure),
	    cmocka_unit_test(test_syntax_error),
	    cmocka_unit_test(test_relation_between_limits),
	    cmocka_unit_test(test_listen_and_more_errors),
	    cmocka_unit_test(test_empty_paths),
	    cmocka_unit_test(test_section_without_a_value),
	    cmocka_unit_test(test_byte_order_mark),
	    cmocka_unit_test(test_audit_section),
	};
	return cmocka_run_group_tests(tests, setup, NULL);
}
