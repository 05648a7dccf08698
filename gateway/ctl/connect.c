/*
 * Connection options of send, fetch, ping and whoami (flags over the config
 * file over defaults), connecting, and turning a failure into a message and
 * an exit status.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctl/ctl.h"

struct ctl_conn ctl_global_conn;

void ctl_conn_init(struct ctl_conn *c)
{
	*c = ctl_global_conn; /* the options given before the command, if any */
	ctl_client_config_init(&c->file);
}

void ctl_conn_release(struct ctl_conn *c)
{
	ctl_client_config_release(&c->file);
	memset(c, 0, sizeof(*c));
}

int ctl_conn_option(struct ctl_conn *c, int opt, const char *arg, const char *usage)
{
	switch (opt) {
	case CTL_OPT_GATEWAY:
		if (ctl_check_gateway(arg) < 0) {
			ctl_usage_error(usage, "--gateway '%s': give HOST:PORT, or [IPv6]:PORT",
			                arg);
			return -1;
		}
		c->gateway = arg;
		return 1;
	case CTL_OPT_CERT:
		c->cert = arg;
		return 1;
	case CTL_OPT_KEY:
		c->key = arg;
		return 1;
	case CTL_OPT_CA:
		c->ca = arg;
		return 1;
	case CTL_OPT_SERVER_NAME:
		if (!str_host_name(arg)) {
			ctl_usage_error(
			    usage, "--server-name '%s': give a DNS name or an IP address", arg);
			return -1;
		}
		c->server_name = arg;
		return 1;
	case CTL_OPT_CONFIG:
		c->config = arg;
		return 1;
	case CTL_OPT_TIMEOUT:
		if (ctl_parse_timeout(arg, &c->timeout_ms) < 0) {
			ctl_usage_error(usage,
			                "--timeout '%s': give milliseconds or a duration such as "
			                "30s, up to 1d",
			                arg);
			return -1;
		}
		return 1;
	}
	return 0;
}

static const char *pick(const char *flag, const char *file)
{
	return flag ? flag : file;
}

/* Merge the config file under the flags; an exit status. */
static int resolve(struct ctl_conn *c)
{
	if (!c->config) {
		const char *env = getenv("ISGCTL_CONFIG");
		if (env && *env)
			c->config = env;
	}
	if (c->config) {
		struct ydoc_diags d;
		ydoc_diags_init(&d);
		int rc = ctl_client_config_load(c->config, &c->file, &d);
		ydoc_diags_print(&d, stderr);
		ydoc_diags_release(&d);
		if (rc < 0) {
			if (rc == ISG_ERR_NOMEM)
				ctl_warn("out of memory");
			return CTL_EXIT_LOCAL;
		}
	}
	c->gateway = pick(c->gateway, c->file.gateway);
	c->cert = pick(c->cert, c->file.certificate);
	c->key = pick(c->key, c->file.key);
	c->ca = pick(c->ca, c->file.ca);
	c->server_name = pick(c->server_name, c->file.server_name);
	if (!c->timeout_ms)
		c->timeout_ms = c->file.timeout_ms;
	const char *missing = !c->gateway ? "--gateway HOST:PORT"
	                      : !c->cert  ? "--cert FILE"
	                      : !c->key   ? "--key FILE"
	                                  : NULL;
	if (missing) {
		ctl_warn("no %s: give it, or a --config file that has it", missing);
		return CTL_EXIT_USAGE;
	}
	return CTL_EXIT_OK;
}

/* Options of commands that only connect; an exit status, *done after --help. */
int ctl_parse_conn_only(struct ctl_conn *conn, const char *use, const char *help, int argc,
                        char **argv, bool *done)
{
	static const struct option opts[] = {
	    {"help", no_argument, NULL, 'h'},
	    CTL_CONN_LONGOPTS,
	    {NULL, 0, NULL, 0},
	};
	struct ctl_opts o;
	ctl_opts_init(&o, argc, argv, ":h", opts, use);
	int opt;
	while ((opt = ctl_opts_next(&o)) != CTL_OPTS_END) {
		if (opt == CTL_OPTS_ERROR)
			return CTL_EXIT_USAGE;
		if (opt == 'h') {
			printf("%s\n%s", use, help);
			*done = true;
			return CTL_EXIT_OK;
		}
		if (ctl_conn_option(conn, opt, optarg, use) < 0)
			return CTL_EXIT_USAGE;
	}
	if (optind < argc)
		return ctl_usage_error(use, "%s takes no arguments", argv[0]);
	return CTL_EXIT_OK;
}

int ctl_connect(struct ctl_conn *c, struct isg_client **out)
{
	*out = NULL;
	int status = resolve(c);
	if (status != CTL_EXIT_OK)
		return status;
	struct isg_client_options opt;
	isg_client_options_init(&opt);
	opt.gateway = c->gateway;
	opt.cert_file = c->cert;
	opt.key_file = c->key;
	opt.ca_file = c->ca;
	opt.server_name = c->server_name;
	if (c->timeout_ms)
		opt.timeout_ms = c->timeout_ms;
	opt.client_name = "isgctl/" ISG_VERSION;
	struct isg_error err;
	if (isg_client_connect(&opt, out, &err) < 0)
		return ctl_report(c, &err);
	return CTL_EXIT_OK;
}

int ctl_report(const struct ctl_conn *c, const struct isg_error *err)
{
	if (err->from_gateway) {
		fprintf(stderr, "isgctl: refused: %s", err->code_name);
		if (err->rule[0])
			fprintf(stderr, " [%s]", err->rule);
		fprintf(stderr, ": %s", err->message);
		if (err->record_index >= 0 && err->field[0])
			fprintf(stderr, " (record %" PRId64 ", field \"%s\")", err->record_index,
			        err->field);
		else if (err->record_index >= 0)
			fprintf(stderr, " (record %" PRId64 ")", err->record_index);
		else if (err->field[0])
			fprintf(stderr, " (field \"%s\")", err->field);
		fputc('\n', stderr);
		if (err->audit_index)
			ctl_warn("the refusal is audit entry %" PRIu64, err->audit_index);
		/* The one refusal that says "not now" rather than "not this": a script retries it.
		 */
		return err->code == ISG_WIRE_UNAVAILABLE ? CTL_EXIT_UNAVAILABLE : CTL_EXIT_REFUSED;
	}
	switch (err->code) {
	case ISG_CLIENT_E_USAGE:
	case ISG_CLIENT_E_NOMEM:
	case ISG_CLIENT_E_CONFIG:
		ctl_warn("%s", err->message);
		return CTL_EXIT_LOCAL;
	}
	if (c->gateway && !strstr(err->message, c->gateway))
		ctl_warn("%s: %s", c->gateway, err->message);
	else
		ctl_warn("%s", err->message);
	return CTL_EXIT_CONNECT;
}
