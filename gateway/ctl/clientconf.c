/* The client config file of isgctl: where the gateway is and which certificate to show it. */
#include <stdlib.h>
#include <string.h>

#include "ctl/ctl.h"
#include "ctl/ctl_internal.h"

void ctl_client_config_init(struct ctl_client_config *c)
{
	memset(c, 0, sizeof(*c));
}

void ctl_client_config_release(struct ctl_client_config *c)
{
	free(c->gateway);
	free(c->certificate);
	free(c->key);
	free(c->ca);
	free(c->server_name);
	ctl_client_config_init(c);
}

int ctl_parse_timeout(const char *s, int *out_ms)
{
	int64_t ms;
	bool plain = *s && strspn(s, "0123456789") == strlen(s);
	int rc = plain ? str_to_i64(s, 0, INT64_MAX, &ms) : str_to_duration_ms(s, &ms);
	if (rc < 0 || ms < 1 || ms > 86400000)
		return ISG_ERR_INVALID;
	*out_ms = (int)ms;
	return 0;
}

int ctl_check_gateway(const char *s)
{
	const char *host, *why;
	size_t host_len;
	uint16_t port;
	if (str_host_port(s, &host, &host_len, &port, &why) != 0 || host_len == 0 ||
	    host_len > CTL_GATEWAY_HOST_MAX)
		return ISG_ERR_PARSE;
	return 0;
}

/* path as written, or joined to the config file's directory when relative. */
static char *resolve(const char *file, const char *path)
{
	const char *slash = strrchr(file, '/');
	if (path[0] == '/' || !slash) {
		return strdup(path);
	}
	size_t dir = (size_t)(slash - file) + 1, len = strlen(path);
	char *p = malloc(dir + len + 1);
	if (p) {
		memcpy(p, file, dir);
		memcpy(p + dir, path, len + 1);
	}
	return p;
}

static int take(struct ydoc_diags *d, const char *file, const struct ydoc_node *root,
                const char *key, bool is_path, char **out)
{
	const struct ydoc_node *n = ydoc_get(root, key);
	if (!n)
		return 0;
	if (n->kind != YDOC_SCALAR || !n->scalar[0]) {
		ydoc_error(d, file, n, "'%s' must be a non-empty text value", key);
		return ISG_ERR_PARSE;
	}
	*out = is_path ? resolve(file, n->scalar) : strdup(n->scalar);
	return *out ? 0 : ISG_ERR_NOMEM;
}

static int fill(struct ydoc_diags *d, const char *file, const struct ydoc_node *root,
                struct ctl_client_config *out)
{
	static const char *const allowed[] = {"gateway",     "certificate", "key", "ca",
	                                      "server_name", "timeout",     NULL};
	if (!root || root->kind != YDOC_MAP) {
		ydoc_error(d, file, root, "a client config is a map of keys: %s",
		           "gateway, certificate, key, ca, server_name, timeout");
		return ISG_ERR_PARSE;
	}
	int rc = ydoc_check_keys(d, file, root, "the client config", allowed) ? ISG_ERR_PARSE : 0;
	int r[] = {
	    take(d, file, root, "gateway", false, &out->gateway),
	    take(d, file, root, "certificate", true, &out->certificate),
	    take(d, file, root, "key", true, &out->key),
	    take(d, file, root, "ca", true, &out->ca),
	    take(d, file, root, "server_name", false, &out->server_name),
	};
	for (size_t i = 0; i < ARRAY_LEN(r); i++)
		if (r[i] < 0 && (rc == 0 || r[i] == ISG_ERR_NOMEM))
			rc = r[i];
	if (out->gateway && ctl_check_gateway(out->gateway) < 0) {
		ydoc_error(d, file, ydoc_get(root, "gateway"),
		           "'gateway' must be HOST:PORT, or [IPv6]:PORT, not '%s'", out->gateway);
		if (rc == 0)
			rc = ISG_ERR_PARSE;
	}
	if (out->server_name && !str_host_name(out->server_name)) {
		ydoc_error(d, file, ydoc_get(root, "server_name"),
		           "'server_name' must be a DNS name or an IP address, not '%s'",
		           out->server_name);
		if (rc == 0)
			rc = ISG_ERR_PARSE;
	}
	const struct ydoc_node *t = ydoc_get(root, "timeout");
	if (t && (t->kind != YDOC_SCALAR || ctl_parse_timeout(t->scalar, &out->timeout_ms) < 0)) {
		ydoc_error(d, file, t,
		           "'timeout' must be milliseconds or a duration such as 30s, up to 1d");
		if (rc == 0)
			rc = ISG_ERR_PARSE;
	}
	return rc;
}

int ctl_client_config_parse(const char *name, const char *buf, size_t len,
                            struct ctl_client_config *out, struct ydoc_diags *diags)
{
	struct ydoc *doc = NULL;
	int rc = ydoc_load_buffer(name, buf, len, &doc, diags);
	if (rc == 0)
		rc = fill(diags, name, doc->root, out);
	ydoc_free(doc);
	return rc;
}

int ctl_client_config_load(const char *path, struct ctl_client_config *out,
                           struct ydoc_diags *diags)
{
	struct ydoc *doc = NULL;
	int rc = ydoc_load_file(path, CTL_CONFIG_MAX_BYTES, &doc, diags);
	if (rc == 0)
		rc = fill(diags, path, doc->root, out);
	ydoc_free(doc);
	return rc;
}
