/*
 * libFuzzer harness for the two configuration loaders: isgd.yaml through
 * config_load (from a file, as isgd reads it; the input is written to one
 * temporary file in /dev/shm or $TMPDIR) and isgctl's client config through
 * ctl_client_config_parse. Oracles beyond the sanitizers: a loaded config
 * holds every required value within its documented bounds, every path is
 * absolute and clean, a refused one has its errors counted and is back to
 * the defaults, and no diagnostic holds a control character.
 * Seeds: tests/fuzz/corpus/config/.
 */
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config/config.h"
#include "ctl/ctlio.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char path[PATH_MAX];
static int fd = -1;
static FILE *devnull;

static void cleanup(void)
{
	if (fd >= 0)
		unlink(path);
}

static void setup(void)
{
	const char *dir = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : getenv("TMPDIR");
	snprintf(path, sizeof(path), "%s/isg-fuzz-config-XXXXXX", dir ? dir : "/tmp");
	fd = mkstemp(path);
	devnull = fopen("/dev/null", "w");
	if (fd < 0 || !devnull)
		abort();
	atexit(cleanup);
}

static void check_diags(const struct ydoc_diags *d)
{
	if (d->n > d->errors + d->warnings)
		abort();
	for (size_t i = 0; i < d->n; i++)
		for (const char *p = d->items[i].message; *p; p++)
			if ((unsigned char)*p < 0x20 || *p == 0x7f)
				abort(); /* one diagnostic is one line */
	ydoc_diags_print(d, devnull);
}

/* Absolute, no empty or "." component, no trailing slash (except "/"). */
static void check_path(const char *p, bool required)
{
	if (!p) {
		if (required)
			abort();
		return;
	}
	size_t len = strlen(p);
	if (p[0] != '/' || len >= PATH_MAX || strstr(p, "//") || strstr(p, "/./") ||
	    (len > 1 && p[len - 1] == '/') || (len >= 2 && strcmp(p + len - 2, "/.") == 0))
		abort();
}

static void check_loaded(const struct isgd_config *c)
{
	if (!c->listen_host || !c->listen_host[0] || c->listen_port == 0)
		abort();
	check_path(c->path, true);
	check_path(c->tls_certificate, true);
	check_path(c->tls_key, true);
	check_path(c->tls_client_ca, true);
	check_path(c->tls_crl, false);
	check_path(c->store_path, true);
	check_path(c->policy_dir, true);
	check_path(c->keys_dir, true);
	if (c->threads < 1 || c->threads > 64 || c->max_frame_bytes < 1024 ||
	    c->max_frame_bytes > 64u * 1024 * 1024 || c->conn_buffer_bytes < c->max_frame_bytes ||
	    c->max_connections < 1 || c->max_inflight < 1 || c->max_records_per_message < 1 ||
	    c->max_fetch_messages < 1 || c->max_wait_ms < 0 || c->handshake_timeout_ms < 100 ||
	    c->idle_timeout_ms < 1000 || c->undelivered_ttl_ms < 1000 ||
	    c->sweep_interval_ms < 100 || c->checkpoint_every < 1 ||
	    c->checkpoint_interval_ms < 1000 || c->refusal_window_ms < 10000 ||
	    c->refusal_window_ms > 3600000 || !c->audit_origin || !c->audit_origin[0] ||
	    strchr(c->audit_origin, '+') || strchr(c->audit_origin, ' '))
		abort();
}

static void fuzz_isgd_config(const uint8_t *data, size_t size)
{
	if (ftruncate(fd, 0) != 0 || pwrite(fd, data, size, 0) != (ssize_t)size)
		abort();
	struct isgd_config c;
	struct ydoc_diags d;
	ydoc_diags_init(&d);
	int rc = config_load(path, &c, &d);
	if (rc == 0) {
		if (d.errors)
			abort();
		check_loaded(&c);
	} else if (d.errors == 0 || c.path || c.listen_host || c.tls_certificate || c.store_path) {
		abort(); /* a refusal says why and leaves the defaults */
	}
	check_diags(&d);
	config_release(&c);
	ydoc_diags_release(&d);
}

static void fuzz_client_config(const uint8_t *data, size_t size)
{
	struct ctl_client_config c;
	ctl_client_config_init(&c);
	struct ydoc_diags d;
	ydoc_diags_init(&d);
	int rc = ctl_client_config_parse("etc/isgctl.yaml", (const char *)data, size, &c, &d);
	if (rc == 0) {
		if (d.errors || c.timeout_ms < 0 || c.timeout_ms > 86400000)
			abort();
		/* Relative paths are joined to the config file's directory. */
		const char *paths[] = {c.certificate, c.key, c.ca};
		for (size_t i = 0; i < ARRAY_LEN(paths); i++)
			if (paths[i] && (!paths[i][0] ||
			                 (paths[i][0] != '/' && strncmp(paths[i], "etc/", 4) != 0)))
				abort();
	} else if (rc != ISG_ERR_NOMEM && d.errors == 0) {
		abort();
	}
	check_diags(&d);
	ctl_client_config_release(&c);
	ydoc_diags_release(&d);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (fd < 0)
		setup();
	fuzz_isgd_config(data, size);
	fuzz_client_config(data, size);
	return 0;
}
