/* The handle: connect (TCP, TLS, Hello/Welcome), accessors, close. */
#include <netdb.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "client_impl.h"
#include "util/util.h"

ISG_CLIENT_API void isg_client_options_init(struct isg_client_options *opt)
{
	if (!opt)
		return;
	memset(opt, 0, sizeof(*opt));
	opt->timeout_ms = CLIENT_DEFAULT_TIMEOUT_MS;
	opt->max_frame_bytes = CLIENT_DEFAULT_MAX_FRAME;
}

/* "host:port", "[v6]:port"; host and port are copied into the buffers. */
static int split_gateway(const char *s, char *host, size_t hsize, char *port, size_t psize,
                         struct isg_error *err)
{
	if (!s || !*s) {
		client_error(err, ISG_CLIENT_E_USAGE, "no gateway address (HOST:PORT)");
		return -1;
	}
	const char *h, *why;
	size_t hlen;
	uint16_t p;
	if (str_host_port(s, &h, &hlen, &p, &why) != 0 || hlen == 0 || hlen >= hsize) {
		client_error(err, ISG_CLIENT_E_USAGE,
		             "bad gateway address '%s' (HOST:PORT, or [IPv6]:PORT)", s);
		return -1;
	}
	memcpy(host, h, hlen);
	host[hlen] = '\0';
	/* The number, not the text: "0000443" is port 443. */
	snprintf(port, psize, "%u", (unsigned)p);
	return 0;
}

static char *dup_or_empty(const char *s)
{
	return strdup(s ? s : "");
}

static int hello(struct isg_client *c, const char *client_name, int64_t deadline,
                 struct isg_error *err)
{
	Isg__Hello h = ISG__HELLO__INIT;
	h.protocol_version = WIRE_PROTOCOL_VERSION;
	h.client_name = (char *)(client_name ? client_name : "libisgclient/" ISG_CLIENT_VERSION);
	Isg__Frame req = ISG__FRAME__INIT;
	req.body_case = ISG__FRAME__BODY_HELLO;
	req.hello = &h;
	Isg__Frame *resp = NULL;
	if (client_call(c, &req, ISG__FRAME__BODY_WELCOME, deadline, &resp, err) < 0)
		return -1;
	const Isg__Welcome *w = resp->welcome;
	const char *parts[] = {w->partner_id, w->partner_name, w->gateway_version,
	                       w->policy_version};
	for (size_t i = 0; i < ARRAY_LEN(parts); i++) {
		if (parts[i] && !str_utf8_valid(parts[i], strlen(parts[i]))) {
			wire_frame_free(resp);
			return client_fail(c, err, ISG_CLIENT_E_PROTOCOL,
			                   "the gateway's welcome is not valid UTF-8");
		}
	}
	c->partner_id = dup_or_empty(w->partner_id);
	c->partner_name = dup_or_empty(w->partner_name);
	c->gateway_version = dup_or_empty(w->gateway_version);
	c->policy_version = dup_or_empty(w->policy_version);
	wire_frame_free(resp);
	if (!c->partner_id || !c->partner_name || !c->gateway_version || !c->policy_version) {
		client_error(err, ISG_CLIENT_E_NOMEM, "out of memory");
		return -1;
	}
	return 0;
}

static struct isg_client *client_new(const struct isg_client_options *opt)
{
	struct isg_client *c = calloc(1, sizeof(*c));
	if (!c)
		return NULL;
	c->owner = getpid();
	c->fd = -1;
	c->timeout_ms = opt->timeout_ms ? opt->timeout_ms : CLIENT_DEFAULT_TIMEOUT_MS;
	c->max_frame = opt->max_frame_bytes ? opt->max_frame_bytes : CLIENT_DEFAULT_MAX_FRAME;
	str_copy(c->peer, opt->gateway, sizeof(c->peer));
	return c;
}

/* What can be refused before anything is opened: a caller's mistake is
 * USAGE, never a failure that looks worth retrying. */
static int check_options(const struct isg_client_options *opt, const char *server_name,
                         struct isg_error *err)
{
	/* Checked again by client_tls_new, but before the name is resolved: a
	 * host that cannot be a name would otherwise fail as CONNECT, which a
	 * service takes for a network fault and retries for ever. */
	if (!str_host_name(server_name)) {
		client_error(err, ISG_CLIENT_E_USAGE,
		             "invalid server name '%s' (a DNS name or an IP address)", server_name);
		return -1;
	}
	/* -1 means "forever" to isg_client_next_delivery, not here. */
	if (opt->timeout_ms < 0) {
		client_error(err, ISG_CLIENT_E_USAGE,
		             "timeout_ms %d is negative (0: the default of %d ms)", opt->timeout_ms,
		             CLIENT_DEFAULT_TIMEOUT_MS);
		return -1;
	}
	/* The gateway would refuse the Hello: say so before connecting. */
	if (opt->client_name && !str_utf8_valid(opt->client_name, strlen(opt->client_name))) {
		client_error(err, ISG_CLIENT_E_USAGE, "client_name is not valid UTF-8");
		return -1;
	}
	return 0;
}

ISG_CLIENT_API int isg_client_connect(const struct isg_client_options *opt, struct isg_client **out,
                                      struct isg_error *err)
{
	client_error_clear(err);
	if (!opt || !out) {
		client_error(err, ISG_CLIENT_E_USAGE, "no options or no place for the client");
		return -1;
	}
	*out = NULL;
	char host[256], port[8];
	if (split_gateway(opt->gateway, host, sizeof(host), port, sizeof(port), err) < 0)
		return -1;
	const char *server_name = opt->server_name ? opt->server_name : host;
	if (check_options(opt, server_name, err) < 0)
		return -1;
	struct isg_client *c = client_new(opt);
	if (!c) {
		client_error(err, ISG_CLIENT_E_NOMEM, "out of memory");
		return -1;
	}
	struct addrinfo *addrs = NULL;
	if (client_tls_context(opt, &c->ctx, err) < 0 ||
	    client_resolve(c, host, port, &addrs, err) < 0)
		goto fail;
	/* One deadline for TCP, TLS and Welcome: timeout_ms bounds them as a
	 * whole. It starts once the name is resolved, as documented: a slow
	 * resolver must not leave the handshake no time at all. */
	int64_t deadline = client_deadline(c->timeout_ms);
	int rc = client_tcp_connect(c, addrs, deadline, err);
	freeaddrinfo(addrs);
	if (rc < 0 || client_tls_new(c, server_name, err) < 0 ||
	    client_tls_handshake(c, deadline, err) < 0 ||
	    hello(c, opt->client_name, deadline, err) < 0)
		goto fail;
	*out = c;
	return 0;
fail:
	isg_client_close(c);
	return -1;
}

int client_check_owner(const struct isg_client *c, struct isg_error *err)
{
	if (c->owner == getpid())
		return 0;
	client_error(err, ISG_CLIENT_E_USAGE,
	             "the connection belongs to process %ld: after fork(), connect anew",
	             (long)c->owner);
	return -1;
}

ISG_CLIENT_API void isg_client_close(struct isg_client *c)
{
	if (!c)
		return;
	/* A child of fork() frees its copy without a close_notify, which would
	 * end the parent's session: the socket itself stays open in the parent. */
	if (c->owner == getpid())
		client_tls_shutdown(c);
	SSL_free(c->ssl);
	SSL_CTX_free(c->ctx);
	if (c->fd >= 0)
		close(c->fd);
	queue_release(&c->pushed);
	for (size_t i = 0; i < c->n_started; i++)
		wire_frame_free(c->started[i].answer);
	free(c->in);
	free(c->partner_id);
	free(c->partner_name);
	free(c->policy_version);
	free(c->gateway_version);
	free(c);
}

static const char *or_empty(const char *s)
{
	return s ? s : "";
}

ISG_CLIENT_API const char *isg_client_partner_id(const struct isg_client *c)
{
	return c ? or_empty(c->partner_id) : "";
}

ISG_CLIENT_API const char *isg_client_partner_name(const struct isg_client *c)
{
	return c ? or_empty(c->partner_name) : "";
}

ISG_CLIENT_API const char *isg_client_policy_version(const struct isg_client *c)
{
	return c ? or_empty(c->policy_version) : "";
}

ISG_CLIENT_API const char *isg_client_gateway_version(const struct isg_client *c)
{
	return c ? or_empty(c->gateway_version) : "";
}
