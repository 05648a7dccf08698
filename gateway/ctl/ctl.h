/*
 * isgctl: one file per subcommand, dispatched from the table in main.c.
 * Each command takes (argc, argv) with argv[0] its own name and returns the
 * process exit status.
 */
#ifndef ISG_CTL_H
#define ISG_CTL_H

#include <getopt.h>
#include <stdbool.h>
#include <stdio.h>

#include "ctl/ctlio.h"
#include "isgclient.h"

/* Exit statuses, documented in `isgctl help` and docs/isgctl.md. */
enum ctl_exit {
	CTL_EXIT_OK = 0,
	CTL_EXIT_LOCAL = 1,   /* bad input, config or file; a local failure */
	CTL_EXIT_USAGE = 2,   /* bad command line */
	CTL_EXIT_REFUSED = 3, /* the gateway refused the request */
	CTL_EXIT_CONNECT = 4, /* connection, TLS or protocol failure */
	/* the gateway cannot serve now (UNAVAILABLE: disk full, shutting down); nothing was
	 * done, and the same request later may succeed, unlike one refused (3) */
	CTL_EXIT_UNAVAILABLE = 5,
};

struct ctl_command {
	const char *name;
	int (*fn)(int argc, char **argv);
	const char *description;
};

/*
 * Find and run a subcommand of a table (argv[0] names it). `prefix` is the
 * command whose subcommands the table holds ("audit"), NULL for isgctl's
 * own: an unknown name is reported as 'audit bogus' or 'bogus'.
 */
int ctl_dispatch(const struct ctl_command *table, size_t n, const char *prefix, int argc,
                 char **argv);
/*
 * A command group run alone ("isgctl keys") or with --help or -h: prints
 * usage_line and each command with its description (names padded to width)
 * on standard error when no command was given, else on standard output, and
 * returns that stream for the group to add to; NULL when a command was given.
 * The group then exits CTL_EXIT_USAGE without a command, CTL_EXIT_OK with --help.
 */
FILE *ctl_group_usage(int argc, char **argv, const char *usage_line,
                      const struct ctl_command *table, size_t n, int width);

/*
 * The exit status when standard output cannot be written (main checks it
 * after every command): CTL_EXIT_LOCAL, unless a command whose statuses mean
 * something else sets its own trouble code (policy diff: 2).
 */
extern int ctl_output_failure;

/* Print "isgctl: message" to stderr. */
void ctl_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/*
 * The same, for a command that reports standard output it could not write
 * ("cannot write the list: REASON"): main then prints no "cannot write
 * output" of its own, so the failure is told once.
 */
void ctl_output_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Print "isgctl: message" and the usage line, and return CTL_EXIT_USAGE. */
int ctl_usage_error(const char *usage, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/*
 * The option parser of every command: getopt_long over argv (optind as
 * ctl_dispatch left it), that also refuses, as a usage error naming the
 * option (never its value):
 *   - an unknown option, or one whose value is missing;
 *   - an empty value (--to ''), or a value that is one of the command's
 *     own options (--html --csv: the value of --html was forgotten);
 *   - an option with a value given twice (also once before and once after
 *     the command name), unless `many` lists it: one of the two would be
 *     dropped unsaid. A flag (no value) may be given twice: it says the same.
 * Every short option needs a long one with the same val (its name is used
 * in messages), among the first CTL_OPTS_MAX.
 */
#define CTL_OPTS_MAX 64
enum { CTL_OPTS_END = -1, CTL_OPTS_ERROR = -2 };

struct ctl_opts {
	int argc;
	char **argv;
	const char *shortopts; /* getopt's, starting with ':' (after a '+') */
	const struct option *longopts;
	const char *usage; /* printed after a usage error */
	const int *many;   /* vals of options that may be given more than once, 0 ends; or NULL */
	uint64_t given;    /* bit i: longopts[i], an option with a value, was given */
	const char *name;  /* the long name of the option ctl_opts_next returned */
};

void ctl_opts_init(struct ctl_opts *o, int argc, char **argv, const char *shortopts,
                   const struct option *longopts, const char *usage);
/*
 * The next option's val (its value in optarg); CTL_OPTS_END after the last;
 * CTL_OPTS_ERROR once the mistake was said and the usage printed: the
 * command then exits CTL_EXIT_USAGE.
 */
int ctl_opts_next(struct ctl_opts *o);
/* Whether the option with this val, one with a value, was given. */
bool ctl_opts_given(const struct ctl_opts *o, int opt);
/*
 * After the options, their count checked: an empty positional argument
 * (argv[optind..argc)) is a usage error, as an empty value is ("policy
 * check ''" would read "/partners.yaml"), naming it by names[i - optind]
 * ("DIR").
 * An exit status.
 */
int ctl_opts_args(const struct ctl_opts *o, const char *const *names);
/* main's options, before the command name: a command's parser refuses them again. */
void ctl_opts_before_command(const struct ctl_opts *o);

/* Connection options shared by send, fetch, ping and whoami. */
enum {
	CTL_OPT_GATEWAY = 1000,
	CTL_OPT_CERT,
	CTL_OPT_KEY,
	CTL_OPT_CA,
	CTL_OPT_SERVER_NAME,
	CTL_OPT_TIMEOUT,
	CTL_OPT_CONFIG,
};

/* clang-format off */
#define CTL_CONN_LONGOPTS \
	{"gateway", required_argument, NULL, CTL_OPT_GATEWAY}, \
	{"cert", required_argument, NULL, CTL_OPT_CERT}, \
	{"key", required_argument, NULL, CTL_OPT_KEY}, \
	{"ca", required_argument, NULL, CTL_OPT_CA}, \
	{"server-name", required_argument, NULL, CTL_OPT_SERVER_NAME}, \
	{"timeout", required_argument, NULL, CTL_OPT_TIMEOUT}, \
	{"config", required_argument, NULL, CTL_OPT_CONFIG}
/* clang-format on */

#define CTL_CONN_USAGE                                                                             \
	"connection: --gateway HOST:PORT --cert FILE --key FILE --ca FILE\n"                       \
	"            [--server-name NAME] [--timeout MS] | --config FILE\n"

struct ctl_conn {
	const char *gateway, *cert, *key, *ca, *server_name, *config;
	int timeout_ms;
	struct ctl_client_config file;
};

/*
 * A gateway address as libisgclient takes it: "HOST:PORT" or "[IPv6]:PORT",
 * host 1 to CTL_GATEWAY_HOST_MAX bytes, port 1 to 65535. 0 or ISG_ERR_PARSE.
 * Checked where the address is given (--gateway, the config file), so a bad
 * one is a usage or config error there, not a failure to connect.
 */
#define CTL_GATEWAY_HOST_MAX 255
int ctl_check_gateway(const char *s);

/* Connection options given before the command name; ctl_conn_init starts from these. */
extern struct ctl_conn ctl_global_conn;

void ctl_conn_init(struct ctl_conn *c);
void ctl_conn_release(struct ctl_conn *c);
/* A getopt result: 1 when it was a connection option, 0 when not, -1 on a bad value. */
int ctl_conn_option(struct ctl_conn *c, int opt, const char *arg, const char *usage);
/* Load the config, merge the flags, connect. Returns an exit status; prints why on failure. */
int ctl_connect(struct ctl_conn *c, struct isg_client **out);
/* Parse the options of a command that only connects (ping, whoami). */
int ctl_parse_conn_only(struct ctl_conn *conn, const char *usage, const char *help, int argc,
                        char **argv, bool *done);
/* Report a failed request: prints the refusal or the failure; returns the exit status. */
int ctl_report(const struct ctl_conn *c, const struct isg_error *err);

/* Subcommands. */
int cmd_send(int argc, char **argv);
int cmd_fetch(int argc, char **argv);
int cmd_ping(int argc, char **argv);
int cmd_whoami(int argc, char **argv);
int cmd_keys(int argc, char **argv);
int cmd_policy(int argc, char **argv);
int cmd_audit(int argc, char **argv);
int cmd_store(int argc, char **argv);

#endif
