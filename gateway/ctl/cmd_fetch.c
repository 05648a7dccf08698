/*
 * isgctl fetch: print the messages delivered to this partner, then
 * acknowledge them. A message is acknowledged only after it was printed,
 * standard output flushed and, when it is a file, synced to disk, so a
 * crash, a power cut or a full disk means it is delivered again, never lost.
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ctl/ctl.h"

static const char usage[] =
    "usage: isgctl fetch [--max N] [--wait MS] [--format jsonl|csv] [--no-ack] [--follow]\n"
    "                    [connection]\n" CTL_CONN_USAGE;

static const char help[] =
    "Prints the messages waiting for you, then acknowledges them so the gateway\n"
    "deletes them. Prints nothing when there are none.\n"
    "  --max N               at most N messages (default: the gateway's)\n"
    "  --wait MS             wait up to MS for a message when none is waiting\n"
    "  --format jsonl|csv    one JSON line per message (default), or CSV with one row\n"
    "                        per record and a new header when the columns change\n"
    "  --no-ack              do not acknowledge: the messages will be delivered again\n"
    "  --follow              keep printing messages as they arrive, until interrupted\n"
    "                        (not with --max or --wait)\n";

struct fetch_args {
	struct ctl_conn conn;
	unsigned max, wait_ms;
	enum ctl_format format;
	bool no_ack, follow;
};

struct printer {
	enum ctl_format format;
	struct ctl_csv_writer csv;
};

enum { OPT_MAX = 1, OPT_WAIT, OPT_FORMAT, OPT_NO_ACK, OPT_FOLLOW };

/* SIGINT or SIGTERM: 1 to stop between messages, 2 or more to stop at once. */
static volatile sig_atomic_t stop_requested;

static void on_stop(int sig)
{
	if (stop_requested < 2)
		stop_requested++;
}

static int parse_option(struct fetch_args *a, int opt, const char *arg)
{
	int64_t v;
	int ms;
	switch (opt) {
	case OPT_MAX:
		if (str_to_i64(arg, 1, UINT32_MAX, &v) < 0)
			return ctl_usage_error(usage, "--max '%s' is not a number from 1", arg);
		a->max = (unsigned)v;
		break;
	case OPT_WAIT:
		if (strcmp(arg, "0") == 0)
			ms = 0;
		else if (ctl_parse_timeout(arg, &ms) < 0)
			return ctl_usage_error(usage, "--wait '%s': give milliseconds, up to 1d",
			                       arg);
		a->wait_ms = (unsigned)ms;
		break;
	case OPT_FORMAT:
		if (ctl_format_parse(arg, &a->format) < 0)
			return ctl_usage_error(usage, "--format '%s': give jsonl or csv", arg);
		break;
	case OPT_NO_ACK:
		a->no_ack = true;
		break;
	case OPT_FOLLOW:
		a->follow = true;
		break;
	}
	return CTL_EXIT_OK;
}

static int parse_args(struct fetch_args *a, int argc, char **argv, bool *done)
{
	static const struct option opts[] = {
	    {"max", required_argument, NULL, OPT_MAX},
	    {"wait", required_argument, NULL, OPT_WAIT},
	    {"format", required_argument, NULL, OPT_FORMAT},
	    {"no-ack", no_argument, NULL, OPT_NO_ACK},
	    {"follow", no_argument, NULL, OPT_FOLLOW},
	    {"help", no_argument, NULL, 'h'},
	    CTL_CONN_LONGOPTS,
	    {NULL, 0, NULL, 0},
	};
	int opt, status;
	a->format = CTL_FORMAT_JSONL;
	struct ctl_opts o;
	ctl_opts_init(&o, argc, argv, ":h", opts, usage);
	while ((opt = ctl_opts_next(&o)) != CTL_OPTS_END) {
		if (opt == CTL_OPTS_ERROR)
			return CTL_EXIT_USAGE;
		if (opt == 'h') {
			printf("%s\n%s", usage, help);
			*done = true;
			return CTL_EXIT_OK;
		}
		int c = ctl_conn_option(&a->conn, opt, optarg, usage);
		if (c < 0)
			return CTL_EXIT_USAGE;
		if (c == 0 && (status = parse_option(a, opt, optarg)) != CTL_EXIT_OK)
			return status;
	}
	if (optind < argc)
		return ctl_usage_error(usage, "fetch takes no arguments");
	/* A subscription takes every message as it comes: a limit asked for would be ignored. */
	const char *ignored = !a->follow                     ? NULL
	                      : ctl_opts_given(&o, OPT_MAX)  ? "--max"
	                      : ctl_opts_given(&o, OPT_WAIT) ? "--wait"
	                                                     : NULL;
	if (ignored)
		return ctl_usage_error(usage,
		                       "give --follow or %s, not both: --follow prints every "
		                       "message as it arrives",
		                       ignored);
	return CTL_EXIT_OK;
}

/* One delivery's text in *buf (free it) of *len bytes; 0 or ISG_ERR_NOMEM. */
static int format_delivery(struct printer *p, const struct isg_delivery *d, char **buf, size_t *len)
{
	*buf = NULL;
	FILE *m = open_memstream(buf, len);
	if (!m)
		return ISG_ERR_NOMEM;
	int rc = p->format == CTL_FORMAT_CSV ? ctl_write_delivery_csv(m, &p->csv, d)
	                                     : ctl_write_delivery_jsonl(m, d);
	if (fclose(m) != 0 || rc < 0) {
		free(*buf);
		*buf = NULL;
		return ISG_ERR_NOMEM; /* a memory stream fails for want of memory only */
	}
	return 0;
}

/* Not an exit status: a stop was asked for before anything was written. */
enum { WRITE_STOPPED = -100 };

/*
 * Write all of buf to fd: 0, WRITE_STOPPED when a stop was asked for before
 * any of it was written, or -1 with errno. A message begun is finished, so
 * that a reader never gets part of a line; only a second signal gives up
 * (EINTR). The stop signals are blocked but while waiting (ppoll) and
 * writing: a signal that comes before the wait ends it at once, so a reader
 * that never reads cannot keep fetch from stopping; and once fd is ready, a
 * write of PIPE_BUF bytes to a pipe does not block.
 */
static int write_whole(int fd, const char *buf, size_t len)
{
	sigset_t stops, old;
	sigemptyset(&stops);
	sigaddset(&stops, SIGINT);
	sigaddset(&stops, SIGTERM);
	sigprocmask(SIG_BLOCK, &stops, &old);
	int rc = 0;
	size_t done = 0;
	while (done < len) {
		if (stop_requested && (done == 0 || stop_requested > 1)) {
			rc = done == 0 ? WRITE_STOPPED : -1;
			errno = EINTR;
			break;
		}
		struct pollfd pfd = {.fd = fd, .events = POLLOUT};
		if (ppoll(&pfd, 1, NULL, &old) < 0) {
			if (errno == EINTR)
				continue;
			rc = -1;
			break;
		}
		size_t chunk = len - done < PIPE_BUF ? len - done : PIPE_BUF;
		sigprocmask(SIG_SETMASK, &old, NULL);
		ssize_t n = write(fd, buf + done, chunk);
		int e = errno;
		sigprocmask(SIG_BLOCK, &stops, NULL);
		if (n < 0 && e != EINTR && e != EAGAIN) {
			errno = e;
			rc = -1;
			break;
		}
		if (n > 0)
			done += (size_t)n;
	}
	int e = errno;
	sigprocmask(SIG_SETMASK, &old, NULL);
	errno = e;
	return rc;
}

/* Print one delivery to fd; an exit status, or WRITE_STOPPED when none of it was written. */
static int print_delivery(struct printer *p, int fd, const struct isg_delivery *d)
{
	char *buf;
	size_t len;
	int rc = format_delivery(p, d, &buf, &len);
	if (rc < 0) {
		/* Out of memory is not an output failure: main still checks standard output. */
		ctl_warn("cannot write message %" PRIu64 ": out of memory; it stays "
		         "unacknowledged",
		         d->gateway_id);
		return CTL_EXIT_LOCAL;
	}
	rc = write_whole(fd, buf, len);
	int e = errno;
	free(buf);
	if (rc == WRITE_STOPPED)
		return WRITE_STOPPED;
	if (rc < 0) {
		ctl_output_warn("cannot write message %" PRIu64 ": %s; it stays unacknowledged",
		                d->gateway_id, ctl_errno_text(e));
		return CTL_EXIT_LOCAL;
	}
	return CTL_EXIT_OK;
}

/*
 * What was printed to a file is on disk before it is acknowledged: the
 * gateway deletes what is acknowledged, and a power cut must not take the
 * only copy left in the page cache. A pipe or a terminal is its reader's
 * to keep; a file that cannot be synced (EINVAL) has nothing to sync.
 */
static int sync_output(void)
{
	struct stat st;
	if (fstat(STDOUT_FILENO, &st) < 0 || !S_ISREG(st.st_mode))
		return 0;
	if (fsync(STDOUT_FILENO) == 0 || errno == EINVAL || errno == ENOTSUP)
		return 0;
	return -1;
}

/* Sync before acknowledging ids[0..n); an exit status. */
static int sync_printed(const uint64_t *ids, size_t n)
{
	if (n == 0 || sync_output() == 0)
		return CTL_EXIT_OK;
	if (n == 1)
		ctl_output_warn("cannot write message %" PRIu64 ": %s; it stays unacknowledged",
		                ids[0], ctl_errno_text(errno));
	else
		ctl_output_warn("cannot write the %zu messages from %" PRIu64 " to %" PRIu64
		                ": %s; they stay unacknowledged",
		                n, ids[0], ids[n - 1], ctl_errno_text(errno));
	return CTL_EXIT_LOCAL;
}

static int acknowledge(struct fetch_args *a, struct isg_client *c, const uint64_t *ids, size_t n)
{
	unsigned acked = 0;
	struct isg_error err;
	if (isg_client_ack(c, ids, n, &acked, &err) < 0) {
		int status = ctl_report(&a->conn, &err);
		ctl_warn(
		    "the messages printed were not acknowledged: they will be delivered again");
		return status;
	}
	if (acked < n)
		ctl_warn("%zu of %zu acknowledgements were not pending any more", n - acked, n);
	return CTL_EXIT_OK;
}

static int fetch_once(struct fetch_args *a, struct isg_client *c, struct printer *p)
{
	struct isg_delivery_list *list = NULL;
	struct isg_error err;
	if (isg_client_fetch(c, a->max, a->wait_ms, &list, &err) < 0)
		return ctl_report(&a->conn, &err);
	int status = CTL_EXIT_OK;
	uint64_t *ids = calloc(list->n ? list->n : 1, sizeof(*ids));
	if (!ids) {
		ctl_warn("out of memory");
		status = CTL_EXIT_LOCAL;
	}
	size_t printed = 0;
	for (; status == CTL_EXIT_OK && printed < list->n; printed++) {
		status = print_delivery(p, STDOUT_FILENO, &list->items[printed]);
		ids[printed] = list->items[printed].gateway_id;
	}
	if (status != CTL_EXIT_OK && printed > 0)
		printed--; /* the one that failed */
	/* Acknowledge what was printed, even when a later one failed. */
	if (!a->no_ack && printed > 0) {
		int s = sync_printed(ids, printed);
		if (s == CTL_EXIT_OK)
			s = acknowledge(a, c, ids, printed);
		if (status == CTL_EXIT_OK)
			status = s;
	}
	free(ids);
	isg_delivery_list_free(list);
	return status;
}

/*
 * SA_RESTART, so that no other system call fails with EINTR; the waits
 * that must end at a stop are poll and ppoll, which Linux never restarts.
 */
static void catch_stop_signals(void)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_stop;
	sa.sa_flags = SA_RESTART;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
}

static int follow(struct fetch_args *a, struct isg_client *c, struct printer *p)
{
	struct isg_error err;
	catch_stop_signals();
	if (isg_client_subscribe(c, &err) < 0)
		return ctl_report(&a->conn, &err);
	while (!stop_requested) {
		struct isg_delivery *d = NULL;
		if (isg_client_next_delivery(c, 1000, &d, &err) < 0) {
			if (err.code == ISG_CLIENT_E_INTERRUPTED && !err.from_gateway)
				continue;
			return ctl_report(&a->conn, &err);
		}
		if (!d)
			continue;
		int status = print_delivery(p, STDOUT_FILENO, d);
		if (status == CTL_EXIT_OK && !a->no_ack)
			status = sync_printed(&d->gateway_id, 1);
		if (status == CTL_EXIT_OK && !a->no_ack)
			status = acknowledge(a, c, &d->gateway_id, 1);
		isg_delivery_free(d);
		if (status == WRITE_STOPPED)
			break; /* nothing of it was printed: it stays unacknowledged */
		if (status != CTL_EXIT_OK)
			return status;
	}
	return CTL_EXIT_OK;
}

int cmd_fetch(int argc, char **argv)
{
	struct fetch_args a;
	memset(&a, 0, sizeof(a));
	ctl_conn_init(&a.conn);
	struct printer p = {0};
	ctl_csv_writer_init(&p.csv);
	bool done = false;
	struct isg_client *client = NULL;
	int status = parse_args(&a, argc, argv, &done);
	if (status != CTL_EXIT_OK || done)
		goto out;
	p.format = a.format;
	status = ctl_connect(&a.conn, &client);
	if (status != CTL_EXIT_OK)
		goto out;
	status = a.follow ? follow(&a, client, &p) : fetch_once(&a, client, &p);
out:
	isg_client_close(client);
	ctl_csv_writer_release(&p.csv);
	ctl_conn_release(&a.conn);
	return status;
}
