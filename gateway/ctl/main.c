/*
 * isgctl: the command-line tool of ISG for partners, admins and IG officers.
 * One file per subcommand; this one dispatches and prints help.
 */
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "ctl/ctl.h"

static int cmd_help(int argc, char **argv);

int ctl_output_failure = CTL_EXIT_LOCAL;
static bool output_reported; /* a command said why its output failed: main says no more */

static const struct ctl_command commands[] = {
    {"send", cmd_send, "send records from a CSV or JSON Lines file to a partner"},
    {"fetch", cmd_fetch, "print the messages delivered to you, then acknowledge them"},
    {"ping", cmd_ping, "check that the gateway answers"},
    {"whoami", cmd_whoami, "show which partner the gateway recognises you as"},
    {"keys", cmd_keys, "manage the gateway's keys: keys init|new-domain|rotate|list DIR"},
    {"policy", cmd_policy, "check, summarise and compare policies: policy check|show|diff"},
    {"audit", cmd_audit, "check and query the audit log: audit verify|list|subject|prove|..."},
    {"store", cmd_store, "back up isgd's store while it runs: store backup OUTPUT"},
    {"help", cmd_help, "show this help, or a command's: help COMMAND"},
};

static const char exit_codes[] =
    "exit status:\n"
    "  0  success\n"
    "  1  local error: bad input file, config or certificate file\n"
    "  2  usage error: bad command line\n"
    "  3  the gateway refused the request (the reason is printed exactly as given)\n"
    "  4  connection, TLS or protocol failure (gateway unreachable, certificate refused)\n"
    "  5  the gateway is unavailable for now (UNAVAILABLE: disk full, shutting down):\n"
    "     nothing was done; run the same command again later\n";

static void print_help(FILE *out)
{
	fprintf(out, "usage: isgctl [connection options] COMMAND [OPTIONS]\n\ncommands:\n");
	for (size_t i = 0; i < ARRAY_LEN(commands); i++)
		fprintf(out, "  %-8s %s\n", commands[i].name, commands[i].description);
	fprintf(
	    out,
	    "\nsend, fetch, ping and whoami connect to the gateway:\n"
	    "  --gateway HOST:PORT   the gateway's address\n"
	    "  --cert FILE           your certificate (PEM)\n"
	    "  --key FILE            its private key (PEM, not encrypted)\n"
	    "  --ca FILE             the CA certificate that signed the gateway's certificate\n"
	    "  --server-name NAME    the name the gateway's certificate must carry\n"
	    "                        (default: the host part of --gateway)\n"
	    "  --timeout MS          for connecting and for each request (default 30000)\n"
	    "  --config FILE         a YAML file with gateway, certificate, key, ca,\n"
	    "                        server_name and timeout (default: $ISGCTL_CONFIG);\n"
	    "                        options given on the command line win\n"
	    "\n%s\n'isgctl help COMMAND' or 'isgctl COMMAND --help' shows a command's options.\n",
	    exit_codes);
}

static const char help_usage[] = "usage: isgctl help [COMMAND]\n";

static int cmd_help(int argc, char **argv)
{
	if (argc < 2) {
		print_help(stdout);
		return CTL_EXIT_OK;
	}
	/* "help keys rotate" would show the help of keys, not of keys rotate */
	if (argc > 2)
		return ctl_usage_error(help_usage, "help takes one command; a subcommand's help is "
		                                   "'isgctl COMMAND SUBCOMMAND --help'");
	if (strcmp(argv[1], "help") == 0) {
		print_help(stdout);
		return CTL_EXIT_OK;
	}
	char help[] = "--help";
	char *args[] = {argv[1], help, NULL};
	return ctl_dispatch(commands, ARRAY_LEN(commands), NULL, 2, args);
}

static __attribute__((format(printf, 1, 0))) void vwarn(const char *fmt, va_list ap)
{
	fputs("isgctl: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
}

void ctl_warn(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vwarn(fmt, ap);
	va_end(ap);
}

void ctl_output_warn(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vwarn(fmt, ap);
	va_end(ap);
	output_reported = true;
}

int ctl_usage_error(const char *usage, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vwarn(fmt, ap);
	va_end(ap);
	fputs(usage, stderr);
	return CTL_EXIT_USAGE;
}

int ctl_dispatch(const struct ctl_command *table, size_t n, const char *prefix, int argc,
                 char **argv)
{
	for (size_t i = 0; i < n; i++) {
		if (strcmp(argv[0], table[i].name) == 0) {
			optind = 0; /* each command parses its options afresh */
			opterr = 0;
			return table[i].fn(argc, argv);
		}
	}
	if (prefix)
		fprintf(stderr, "isgctl: unknown command '%s %s'; commands:", prefix, argv[0]);
	else
		fprintf(stderr, "isgctl: unknown command '%s'; commands:", argv[0]);
	for (size_t i = 0; i < n; i++)
		fprintf(stderr, " %s", table[i].name);
	fputc('\n', stderr);
	return CTL_EXIT_USAGE;
}

FILE *ctl_group_usage(int argc, char **argv, const char *usage_line,
                      const struct ctl_command *table, size_t n, int width)
{
	if (argc >= 2 && strcmp(argv[1], "--help") != 0 && strcmp(argv[1], "-h") != 0)
		return NULL;
	FILE *out = argc < 2 ? stderr : stdout;
	fputs(usage_line, out);
	for (size_t i = 0; i < n; i++)
		fprintf(out, "  %-*s %s\n", width, table[i].name, table[i].description);
	return out;
}

static const char main_usage[] = "usage: isgctl [connection options] COMMAND [OPTIONS]\n"
                                 "       isgctl help | --help | --version\n";

/* The first connection option given before the command name; NULL when none. */
static const char *conn_option_given;

/* Options before the command: --help, --version and connection options. */
static int main_options(int argc, char **argv, bool *done)
{
	static const struct option opts[] = {
	    {"help", no_argument, NULL, 'h'},
	    {"version", no_argument, NULL, 'V'},
	    CTL_CONN_LONGOPTS,
	    {NULL, 0, NULL, 0},
	};
	static struct ctl_opts o; /* the commands' parsers look back at it */
	ctl_opts_init(&o, argc, argv, "+:hV", opts, main_usage);
	ctl_opts_before_command(&o);
	int opt;
	while ((opt = ctl_opts_next(&o)) != CTL_OPTS_END) {
		if (opt == CTL_OPTS_ERROR)
			return CTL_EXIT_USAGE;
		if (opt == 'h' || opt == 'V') {
			if (opt == 'h')
				print_help(stdout);
			else
				printf("isgctl %s (libisgclient %s)\n", ISG_VERSION,
				       ISG_CLIENT_VERSION);
			*done = true;
			return CTL_EXIT_OK;
		}
		if (ctl_conn_option(&ctl_global_conn, opt, optarg, main_usage) < 0)
			return CTL_EXIT_USAGE;
		if (!conn_option_given)
			conn_option_given = o.name;
	}
	return CTL_EXIT_OK;
}

/*
 * Connection options before a command that does not connect would be
 * ignored: "isgctl --config client.yaml audit list" is not the isgd config
 * it may look like, and a --gateway meant for another command would be lost.
 */
static int check_conn_options(const char *command)
{
	static const char *const connecting[] = {"send", "fetch", "ping", "whoami"};
	if (!conn_option_given)
		return CTL_EXIT_OK;
	for (size_t i = 0; i < ARRAY_LEN(connecting); i++)
		if (strcmp(command, connecting[i]) == 0)
			return CTL_EXIT_OK;
	for (size_t i = 0; i < ARRAY_LEN(commands); i++)
		if (strcmp(command, commands[i].name) == 0)
			return ctl_usage_error(main_usage,
			                       "--%s is a connection option: it goes with send, "
			                       "fetch, ping or whoami, not with %s",
			                       conn_option_given, command);
	return CTL_EXIT_OK; /* an unknown command: ctl_dispatch says so */
}

/*
 * Output that never arrived (a full disk, a closed pipe) is a failure, or a
 * script would take a truncated proof, list or key for the whole: one check
 * here, after any command, so no command can forget it. When the command
 * has said so itself (ctl_output_warn), once is enough.
 */
static int finish_output(int status)
{
	errno = 0;
	bool failed = fflush(stdout) != 0;
	int err = errno;
	if (!failed && !ferror(stdout))
		return status;
	/* a reader that stopped (a pager quit, "| head") is no broken device */
	if (!output_reported && ctl_output_closed(stdout, err))
		ctl_warn("output closed before the end (a pipe's reader stopped)");
	else if (!output_reported)
		ctl_warn("cannot write output: %s", err ? ctl_errno_text(err) : "a write failed");
	if (ctl_output_failure != CTL_EXIT_LOCAL || status == CTL_EXIT_OK)
		return ctl_output_failure;
	return status;
}

int main(int argc, char **argv)
{
	/*
	 * A reader that went away (a closed pipe) is a write that fails, said
	 * as such ("cannot write message N: broken pipe; it stays
	 * unacknowledged"), not a silent death by SIGPIPE.
	 */
	signal(SIGPIPE, SIG_IGN);
	bool done = false;
	int status = main_options(argc, argv, &done);
	if (status != CTL_EXIT_OK || done)
		return finish_output(status);
	if (optind >= argc) {
		print_help(stderr);
		return CTL_EXIT_USAGE;
	}
	if ((status = check_conn_options(argv[optind])) != CTL_EXIT_OK)
		return finish_output(status);
	status = ctl_dispatch(commands, ARRAY_LEN(commands), NULL, argc - optind, argv + optind);
	return finish_output(status);
}
