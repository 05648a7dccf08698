/*
 * isgd.yaml: every option is one row of the table below with its kind,
 * where it is stored and its bounds, like Redis's config table. Loading
 * walks the table, so a new option is one new row (and a line in
 * docs/configuration.md). All problems are collected before failing.
 */
#include "config/config.h"

#include <arpa/inet.h>
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* A config file is a few hundred bytes; anything this big is a mistake. */
#define CONFIG_MAX_BYTES (1024 * 1024)
#define CONFIG_DEFAULT_ORIGIN "isg-gateway"
#define CONFIG_ORIGIN_MAX 64

enum opt_kind {
	OPT_PATH,     /* char *, resolved against the config file's directory */
	OPT_DURATION, /* int64_t milliseconds */
	OPT_SIZE,     /* uint64_t bytes */
	OPT_U32,      /* uint32_t */
	OPT_LISTEN,   /* listen_host + listen_port */
	OPT_TLS_VERSION,
	OPT_LOG_LEVEL,
	OPT_USER,
	OPT_ORIGIN, /* char *, an audit checkpoint origin */
	OPT_BOOL,   /* bool: true or false */
};

struct opt {
	const char *section; /* NULL: top level */
	const char *key;
	enum opt_kind kind;
	size_t offset;
	bool required;
	int64_t min, max;        /* bounds of numbers, durations and sizes */
	const char *bounds_text; /* the bounds as an admin writes them */
};

#define KIB 1024LL
#define MIB (1024LL * 1024)
#define GIB (1024LL * 1024 * 1024)
#define SEC 1000LL
#define MIN (60 * SEC)
#define HOUR (60 * MIN)
#define DAY (24 * HOUR)
#define AT(field) offsetof(struct isgd_config, field)

static const struct opt opts[] = {
    {NULL, "listen", OPT_LISTEN, 0, true, 0, 0, NULL},
    {NULL, "threads", OPT_U32, AT(threads), false, 1, 64, "1 to 64"},
    {"tls", "certificate", OPT_PATH, AT(tls_certificate), true, 0, 0, NULL},
    {"tls", "key", OPT_PATH, AT(tls_key), true, 0, 0, NULL},
    {"tls", "client_ca", OPT_PATH, AT(tls_client_ca), true, 0, 0, NULL},
    {"tls", "crl", OPT_PATH, AT(tls_crl), false, 0, 0, NULL},
    {"tls", "min_version", OPT_TLS_VERSION, AT(tls_allow_tls12), false, 0, 0, NULL},
    {"store", "path", OPT_PATH, AT(store_path), true, 0, 0, NULL},
    {"store", "undelivered_ttl", OPT_DURATION, AT(undelivered_ttl_ms), false, SEC, 365 * DAY,
     "1s to 365d"},
    {"store", "sweep_interval", OPT_DURATION, AT(sweep_interval_ms), false, 100, DAY,
     "100ms to 1d"},
    {NULL, "policy_dir", OPT_PATH, AT(policy_dir), true, 0, 0, NULL},
    {NULL, "keys_dir", OPT_PATH, AT(keys_dir), true, 0, 0, NULL},
    {"limits", "max_frame", OPT_SIZE, AT(max_frame_bytes), false, KIB, 64 * MIB, "1KiB to 64MiB"},
    {"limits", "max_connections", OPT_U32, AT(max_connections), false, 1, 100000, "1 to 100000"},
    {"limits", "max_records_per_message", OPT_U32, AT(max_records_per_message), false, 1, 1000000,
     "1 to 1000000"},
    {"limits", "max_fetch_messages", OPT_U32, AT(max_fetch_messages), false, 1, 10000,
     "1 to 10000"},
    {"limits", "max_wait", OPT_DURATION, AT(max_wait_ms), false, 0, 10 * MIN, "0s to 10m"},
    {"limits", "handshake_timeout", OPT_DURATION, AT(handshake_timeout_ms), false, 100, 5 * MIN,
     "100ms to 5m"},
    {"limits", "idle_timeout", OPT_DURATION, AT(idle_timeout_ms), false, SEC, DAY, "1s to 1d"},
    {"limits", "connection_buffer", OPT_SIZE, AT(conn_buffer_bytes), false, 64 * KIB, GIB,
     "64KiB to 1GiB"},
    {"limits", "max_inflight", OPT_U32, AT(max_inflight), false, 1, 4096, "1 to 4096"},
    {"limits", "inflight_buffer", OPT_SIZE, AT(inflight_buffer_bytes), false, MIB, 1024 * GIB,
     "1MiB to 1024GiB"},
    {NULL, "user", OPT_USER, AT(user), false, 0, 0, NULL},
    {NULL, "key_process", OPT_BOOL, AT(key_process), false, 0, 0, NULL},
    {NULL, "log_level", OPT_LOG_LEVEL, AT(log_level), false, 0, 0, NULL},
    {"audit", "origin", OPT_ORIGIN, AT(audit_origin), false, 0, 0, NULL},
    {"audit", "checkpoint_every", OPT_U32, AT(checkpoint_every), false, 1, 1000000, "1 to 1000000"},
    {"audit", "checkpoint_interval", OPT_DURATION, AT(checkpoint_interval_ms), false, SEC, DAY,
     "1s to 1d"},
    {"audit", "refusal_window", OPT_DURATION, AT(refusal_window_ms), false, 10 * SEC, HOUR,
     "10s to 1h"},
};

static const char *const sections[] = {"tls", "store", "limits", "audit"};

struct loader {
	const char *file; /* as given, for diagnostics */
	char *dir;        /* absolute directory of the config file */
	struct ydoc_diags *d;
	struct isgd_config *c;
	bool frame_sizes_ok;   /* limits.max_frame and limits.connection_buffer valid alone */
	bool inflight_size_ok; /* limits.inflight_buffer valid alone */
};

static uint32_t default_threads(void)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);
	if (n < 1)
		return 1;
	return n > 64 ? 64 : (uint32_t)n;
}

void config_init(struct isgd_config *c)
{
	memset(c, 0, sizeof(*c));
	c->threads = default_threads();
	c->undelivered_ttl_ms = 30 * DAY;
	c->sweep_interval_ms = 60 * SEC;
	c->max_frame_bytes = 4 * MIB;
	c->max_connections = 1000;
	c->max_records_per_message = 10000;
	c->max_fetch_messages = 100;
	c->max_wait_ms = 60 * SEC;
	c->handshake_timeout_ms = 10 * SEC;
	c->idle_timeout_ms = 300 * SEC;
	c->conn_buffer_bytes = 8 * MIB;
	c->max_inflight = 64;
	c->inflight_buffer_bytes = 256 * MIB;
	c->key_process = true;
	c->log_level = LOG_INFO;
	c->checkpoint_every = 1000;
	c->checkpoint_interval_ms = 10 * SEC;
	c->refusal_window_ms = 60 * SEC;
}

void config_release(struct isgd_config *c)
{
	if (!c)
		return;
	char **strings[] = {&c->path,          &c->listen_host, &c->tls_certificate, &c->tls_key,
	                    &c->tls_client_ca, &c->tls_crl,     &c->store_path,      &c->policy_dir,
	                    &c->keys_dir,      &c->user,        &c->audit_origin};
	for (size_t i = 0; i < ARRAY_LEN(strings); i++) {
		free(*strings[i]);
		*strings[i] = NULL;
	}
}

/* "tls.certificate" or "threads", for messages. */
static const char *opt_name(const struct opt *o, char *buf, size_t size)
{
	if (o->section)
		snprintf(buf, size, "%s.%s", o->section, o->key);
	else
		snprintf(buf, size, "%s", o->key);
	return buf;
}

/* Join dir and rel, dropping "." components and repeated slashes (never ".."). */
static char *path_join_clean(const char *dir, const char *rel)
{
	size_t dl = dir ? strlen(dir) : 0, rl = strlen(rel);
	char *out = malloc(dl + rl + 3);
	if (!out)
		return NULL;
	size_t n = 0;
	const char *parts[2] = {dir, rel};
	for (int p = 0; p < 2; p++) {
		const char *s = parts[p];
		while (s && *s) {
			while (*s == '/')
				s++;
			const char *e = strchr(s, '/');
			size_t len = e ? (size_t)(e - s) : strlen(s);
			if (len && !(len == 1 && s[0] == '.')) {
				out[n++] = '/';
				memcpy(out + n, s, len);
				n += len;
			}
			s += len;
		}
	}
	if (n == 0)
		out[n++] = '/';
	out[n] = '\0';
	return out;
}

static char *absolute_path(const char *dir, const char *value)
{
	return path_join_clean(value[0] == '/' ? NULL : dir, value);
}

/* Plain empty, "~" or "null": the admin wrote the key without a value. */
static bool is_null(const struct ydoc_node *n)
{
	return n->kind == YDOC_SCALAR && !n->quoted &&
	       (!n->scalar[0] || !strcmp(n->scalar, "~") || !strcmp(n->scalar, "null"));
}

static const char *kind_name(enum ydoc_kind k)
{
	return k == YDOC_MAP ? "a mapping" : k == YDOC_SEQ ? "a list" : "a value";
}

static void set_path(struct loader *l, const struct opt *o, const struct ydoc_node *n,
                     const char *name)
{
	/* "" would resolve to the configuration's own directory: never meant */
	if (!n->scalar[0]) {
		ydoc_error(l->d, l->file, n, "path for %s is empty%s", name,
		           o->required ? ""
		                       : " (to leave it unset, write the key without a value)");
		return;
	}
	if (strlen(n->scalar) >= PATH_MAX) {
		ydoc_error(l->d, l->file, n, "path for %s is longer than %d bytes", name,
		           PATH_MAX - 1);
		return;
	}
	char *p = absolute_path(l->dir, n->scalar);
	if (!p) {
		ydoc_error(l->d, l->file, n, "out of memory");
		return;
	}
	char **slot = (char **)((char *)l->c + o->offset);
	free(*slot);
	*slot = p;
}

static void set_duration(struct loader *l, const struct opt *o, const struct ydoc_node *n,
                         const char *name)
{
	int64_t ms;
	if (str_to_duration_ms(n->scalar, &ms) != 0) {
		ydoc_error(l->d, l->file, n,
		           "invalid duration '%s' for %s (use e.g. 250ms, 10s, 15m, 12h, 30d)",
		           n->scalar, name);
		return;
	}
	if (ms < o->min || ms > o->max) {
		ydoc_error(l->d, l->file, n, "duration '%s' for %s is out of range (%s)", n->scalar,
		           name, o->bounds_text);
		return;
	}
	*(int64_t *)((char *)l->c + o->offset) = ms;
}

static void set_size(struct loader *l, const struct opt *o, const struct ydoc_node *n,
                     const char *name)
{
	uint64_t bytes;
	if (str_to_size(n->scalar, &bytes) != 0) {
		ydoc_error(l->d, l->file, n,
		           "invalid size '%s' for %s (use e.g. 512KiB, 4MiB or a number of bytes)",
		           n->scalar, name);
		return;
	}
	if (bytes < (uint64_t)o->min || bytes > (uint64_t)o->max) {
		ydoc_error(l->d, l->file, n, "size '%s' for %s is out of range (%s)", n->scalar,
		           name, o->bounds_text);
		return;
	}
	*(uint64_t *)((char *)l->c + o->offset) = bytes;
}

static void set_u32(struct loader *l, const struct opt *o, const struct ydoc_node *n,
                    const char *name)
{
	int64_t v;
	if (str_to_i64(n->scalar, o->min, o->max, &v) != 0) {
		ydoc_error(l->d, l->file, n, "invalid value '%s' for %s (use an integer from %s)",
		           n->scalar, name, o->bounds_text);
		return;
	}
	*(uint32_t *)((char *)l->c + o->offset) = (uint32_t)v;
}

/*
 * "host:port" or "[v6addr]:port"; the host is stored without brackets. The
 * host is checked as the clients check a server name (str_host_name), so a
 * mistyped address such as 10.0.0.300 is refused here, at its line.
 */
static int parse_listen(const char *s, char **host, uint16_t *port, const char **why)
{
	const char *hs;
	size_t hl;
	if (str_host_port(s, &hs, &hl, port, why) != 0)
		return ISG_ERR_PARSE;
	if (hl == 0 || hl > 253) {
		*why = "the host is missing or too long";
		return ISG_ERR_PARSE;
	}
	char *h = strndup(hs, hl);
	if (!h)
		return ISG_ERR_NOMEM;
	struct in6_addr a6;
	if (s[0] == '[' ? inet_pton(AF_INET6, h, &a6) != 1 : !str_host_name(h)) {
		*why = s[0] == '[' ? "invalid IPv6 address" : "invalid host name or IPv4 address";
		free(h);
		return ISG_ERR_PARSE;
	}
	*host = h;
	return 0;
}

static void set_listen(struct loader *l, const struct ydoc_node *n)
{
	const char *why = NULL;
	char *host = NULL;
	uint16_t port = 0;
	if (parse_listen(n->scalar, &host, &port, &why) != 0) {
		ydoc_error(l->d, l->file, n, "invalid listen address '%s' (%s)", n->scalar,
		           why ? why : "out of memory");
		return;
	}
	free(l->c->listen_host);
	l->c->listen_host = host;
	l->c->listen_port = port;
	l->c->listen_line = n->line;
	l->c->listen_col = n->col;
}

static bool valid_user(const char *u)
{
	size_t len = strlen(u);
	if (len == 0 || len > 32 || u[0] == '-')
		return false;
	for (size_t i = 0; i < len; i++) {
		char c = u[i];
		bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		          (c >= '0' && c <= '9') || c == '_' || c == '-' || c == '.';
		if (!ok)
			return false;
	}
	return true;
}

/*
 * A checkpoint origin is also the signing key's name in signed notes, and
 * verifiers, file names and command lines carry it: keep it to a plain
 * [A-Za-z0-9._/-]{1,64}, which has no space and no '+'.
 */
static bool valid_origin(const char *o)
{
	size_t len = strlen(o);
	if (len == 0 || len > CONFIG_ORIGIN_MAX)
		return false;
	for (size_t i = 0; i < len; i++) {
		char c = o[i];
		bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		          (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '/' || c == '-';
		if (!ok)
			return false;
	}
	return true;
}

static void set_special(struct loader *l, const struct opt *o, const struct ydoc_node *n,
                        const char *name)
{
	const char *v = n->scalar;
	switch (o->kind) {
	case OPT_LISTEN:
		set_listen(l, n);
		break;
	case OPT_TLS_VERSION:
		if (strcmp(v, "1.3") == 0 || strcmp(v, "1.2") == 0)
			l->c->tls_allow_tls12 = strcmp(v, "1.2") == 0;
		else
			ydoc_error(l->d, l->file, n,
			           "invalid TLS version '%s' for %s (use \"1.3\" or \"1.2\")", v,
			           name);
		break;
	case OPT_LOG_LEVEL: {
		static const char *const levels[] = {"debug", "info", "warn", "error"};
		size_t i = 0;
		while (i < ARRAY_LEN(levels) && strcmp(v, levels[i]) != 0)
			i++;
		if (i < ARRAY_LEN(levels))
			l->c->log_level = (enum log_level)i;
		else
			ydoc_error(l->d, l->file, n,
			           "invalid log level '%s' (use debug, info, warn or error)", v);
		break;
	}
	case OPT_ORIGIN:
		if (!valid_origin(v)) {
			ydoc_error(l->d, l->file, n,
			           "invalid origin '%s' for %s (use 1 to %d letters, digits, '.', "
			           "'_', '/' or '-'; no spaces or '+')",
			           v, name, CONFIG_ORIGIN_MAX);
		} else {
			free(l->c->audit_origin);
			if (!(l->c->audit_origin = strdup(v)))
				ydoc_error(l->d, l->file, n, "out of memory");
		}
		break;
	case OPT_BOOL:
		if (strcmp(v, "true") == 0 || strcmp(v, "false") == 0)
			*(bool *)((char *)l->c + o->offset) = v[0] == 't';
		else
			ydoc_error(l->d, l->file, n,
			           "invalid value '%s' for %s (use true or false)", v, name);
		break;
	case OPT_USER:
		if (!valid_user(v)) {
			ydoc_error(l->d, l->file, n, "invalid user name '%s'", v);
		} else {
			free(l->c->user);
			if (!(l->c->user = strdup(v)))
				ydoc_error(l->d, l->file, n, "out of memory");
			l->c->user_line = n->line;
			l->c->user_col = n->col;
		}
		break;
	default:
		break;
	}
}

static void apply_opt(struct loader *l, const struct ydoc_node *root, const struct opt *o)
{
	char name[64];
	opt_name(o, name, sizeof(name));
	const struct ydoc_node *sec = o->section ? ydoc_get(root, o->section) : root;
	const struct ydoc_node *where = sec ? sec : root;
	if (o->section && sec && is_null(sec))
		sec = NULL; /* a section written without a value is absent */
	else if (o->section && sec && sec->kind != YDOC_MAP)
		return; /* reported once for the section */
	const struct ydoc_node *n = sec ? ydoc_get(sec, o->key) : NULL;
	if (!n || is_null(n)) {
		if (o->required)
			ydoc_error(l->d, l->file, n ? n : where, "missing required key '%s'", name);
		return;
	}
	if (n->kind != YDOC_SCALAR) {
		ydoc_error(l->d, l->file, n, "%s must be a single value, not %s", name,
		           kind_name(n->kind));
		return;
	}
	switch (o->kind) {
	case OPT_PATH:
		set_path(l, o, n, name);
		break;
	case OPT_DURATION:
		set_duration(l, o, n, name);
		break;
	case OPT_SIZE:
		set_size(l, o, n, name);
		break;
	case OPT_U32:
		set_u32(l, o, n, name);
		break;
	default:
		set_special(l, o, n, name);
		break;
	}
}

/* Every key allowed in a section (NULL: top level), NULL-terminated. */
static size_t allowed_keys(const char *section, const char **out, size_t cap)
{
	size_t n = 0;
	for (size_t i = 0; i < ARRAY_LEN(opts) && n + 1 < cap; i++) {
		bool same = section ? opts[i].section && !strcmp(opts[i].section, section)
		                    : !opts[i].section;
		if (same)
			out[n++] = opts[i].key;
	}
	for (size_t i = 0; !section && i < ARRAY_LEN(sections) && n + 1 < cap; i++)
		out[n++] = sections[i];
	out[n] = NULL;
	return n;
}

static void check_structure(struct loader *l, const struct ydoc_node *root)
{
	const char *allowed[ARRAY_LEN(opts) + ARRAY_LEN(sections) + 1];
	allowed_keys(NULL, allowed, ARRAY_LEN(allowed));
	ydoc_check_keys(l->d, l->file, root, "the configuration", allowed);
	for (size_t i = 0; i < ARRAY_LEN(sections); i++) {
		const struct ydoc_node *sec = ydoc_get(root, sections[i]);
		if (!sec || is_null(sec)) /* without a value: absent, as any key */
			continue;
		if (sec->kind != YDOC_MAP) {
			ydoc_error(l->d, l->file, sec, "%s must be a mapping, not %s", sections[i],
			           kind_name(sec->kind));
			continue;
		}
		allowed_keys(sections[i], allowed, ARRAY_LEN(allowed));
		ydoc_check_keys(l->d, l->file, sec, sections[i], allowed);
	}
}

/* Checks between options, once each is valid on its own. */
static void check_relations(struct loader *l, const struct ydoc_node *root)
{
	const struct ydoc_node *buf = ydoc_get(ydoc_get(root, "limits"), "connection_buffer");
	const struct ydoc_node *frame = ydoc_get(ydoc_get(root, "limits"), "max_frame");
	if (l->frame_sizes_ok && l->c->conn_buffer_bytes < l->c->max_frame_bytes)
		ydoc_error(
		    l->d, l->file, buf ? buf : frame,
		    "limits.connection_buffer (%llu bytes) must be at least limits.max_frame "
		    "(%llu bytes): a connection must be able to queue one whole frame",
		    (unsigned long long)l->c->conn_buffer_bytes,
		    (unsigned long long)l->c->max_frame_bytes);
	const struct ydoc_node *held = ydoc_get(ydoc_get(root, "limits"), "inflight_buffer");
	if (l->frame_sizes_ok && l->inflight_size_ok &&
	    l->c->inflight_buffer_bytes < l->c->max_frame_bytes)
		ydoc_error(l->d, l->file, held ? held : frame,
		           "limits.inflight_buffer (%llu bytes) must be at least limits.max_frame "
		           "(%llu bytes): the gateway must be able to hold one whole request",
		           (unsigned long long)l->c->inflight_buffer_bytes,
		           (unsigned long long)l->c->max_frame_bytes);
}

/* The config file's absolute path, and its directory. */
static int config_paths(const char *path, char **abs, char **dir)
{
	char cwd[PATH_MAX];
	if (path[0] != '/' && !getcwd(cwd, sizeof(cwd)))
		return ISG_ERR_IO;
	*abs = path_join_clean(path[0] == '/' ? NULL : cwd, path);
	if (!*abs)
		return ISG_ERR_NOMEM;
	char *slash = strrchr(*abs, '/');
	size_t dl = slash == *abs ? 1 : (size_t)(slash - *abs);
	*dir = strndup(*abs, dl);
	return *dir ? 0 : ISG_ERR_NOMEM;
}

int config_load(const char *path, struct isgd_config *c, struct ydoc_diags *diags)
{
	config_init(c);
	size_t errors_before = diags->errors;
	struct loader l = {.file = path, .d = diags, .c = c};
	struct ydoc *doc = NULL;
	int err = config_paths(path, &c->path, &l.dir);
	if (err) {
		ydoc_error(diags, path, NULL, "cannot resolve the path: %s", isg_strerror(err));
		goto out;
	}
	err = ydoc_load_file(path, CONFIG_MAX_BYTES, &doc, diags);
	if (err) {
		if (err == ISG_ERR_TOO_BIG)
			err = ISG_ERR_INVALID;
		goto out;
	}
	if (!doc->root || doc->root->kind != YDOC_MAP) {
		ydoc_error(diags, path, doc->root,
		           "the configuration must be a mapping of keys to values");
		err = ISG_ERR_INVALID;
		goto out;
	}
	check_structure(&l, doc->root);
	l.frame_sizes_ok = true;
	l.inflight_size_ok = true;
	for (size_t i = 0; i < ARRAY_LEN(opts); i++) {
		size_t before = diags->errors;
		apply_opt(&l, doc->root, &opts[i]);
		bool sized = opts[i].offset == AT(max_frame_bytes) ||
		             opts[i].offset == AT(conn_buffer_bytes);
		if (sized && diags->errors != before)
			l.frame_sizes_ok = false;
		if (opts[i].offset == AT(inflight_buffer_bytes) && diags->errors != before)
			l.inflight_size_ok = false;
	}
	/* Reported with the others, not only once they are mended. */
	check_relations(&l, doc->root);
	if (diags->errors == errors_before && !c->audit_origin &&
	    !(c->audit_origin = strdup(CONFIG_DEFAULT_ORIGIN)))
		ydoc_error(diags, path, NULL, "out of memory");
	if (diags->errors != errors_before)
		err = ISG_ERR_INVALID;
out:
	ydoc_free(doc);
	free(l.dir);
	if (err) {
		config_release(c);
		config_init(c);
	}
	return err;
}
