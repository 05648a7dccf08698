/*
 * isgctl fetch: print the messages delivered to this partner, then
 * acknowledge them. A message is acknowledged only after it was printed,
 * standard output flushed and, when it is a file, synced to disk, so a
 * crash, a power cut or a full disk means it is delivered again, never lost.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ctl/ctl.h"

static const char usage[] =
    "usage: isgctl fetch [--max N] [--wait MS] [--format jsonl|csv] [--no-ack] [--follow]\n"
    "                    [--exec CMD] [connection]\n" CTL_CONN_USAGE;

static const char help[] =
    "Prints the messages waiting for you, then acknowledges them so the gateway\n"
    "deletes them. Prints nothing when there are none.\n"
    "  --max N               at most N messages (default: the gateway's)\n"
    "  --wait MS             wait up to MS for a message when none is waiting\n"
    "  --format jsonl|csv    one JSON line per message (default), or CSV with one row\n"
    "                        per record and a new header when the columns change\n"
    "  --no-ack              do not acknowledge: the messages will be delivered again\n"
    "  --follow              keep printing messages as they arrive, until interrupted\n"
    "                        (not with --max or --wait)\n"
    "  --exec CMD            instead of printing them, give each batch of messages (with\n"
    "                        --follow, each message) to a new run of /bin/sh -c CMD on\n"
    "                        its standard input; acknowledge them only if it exits 0\n";

struct fetch_args {
	struct ctl_conn conn;
	unsigned max, wait_ms;
	enum ctl_format format;
	bool no_ack, follow;
	const char *exec; /* the importer to run, or NULL to print */
};

struct printer {
	enum ctl_format format;
	struct ctl_csv_writer csv;
};

enum { OPT_MAX = 1, OPT_WAIT, OPT_FORMAT, OPT_NO_ACK, OPT_FOLLOW, OPT_EXEC };

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
	case OPT_EXEC:
		a->exec = arg;
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
	    {"exec", required_argument, NULL, OPT_EXEC},
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

/* Block SIGINT and SIGTERM, the old mask in *old (when not NULL). */
static void block_stops(sigset_t *old)
{
	sigset_t stops;
	sigemptyset(&stops);
	sigaddset(&stops, SIGINT);
	sigaddset(&stops, SIGTERM);
	sigprocmask(SIG_BLOCK, &stops, old);
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
	sigset_t old;
	block_stops(&old);
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
		block_stops(NULL);
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

/* Print one delivery to standard output; an exit status, or WRITE_STOPPED when none of it was
 * written. */
static int print_delivery(struct printer *p, const struct isg_delivery *d)
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
	rc = write_whole(STDOUT_FILENO, buf, len);
	int e = errno;
	free(buf);
	if (rc == WRITE_STOPPED)
		return WRITE_STOPPED;
	if (rc < 0)
		ctl_output_warn("cannot write message %" PRIu64 ": %s; it stays unacknowledged",
		                d->gateway_id, ctl_errno_text(e));
	errno = e;
	return rc < 0 ? CTL_EXIT_LOCAL : CTL_EXIT_OK;
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

/*
 * A run of the --exec command. isgctl keeps the pipe's read end open too:
 * what is left in the pipe once the command has ended is what it did not
 * read, however small the batch. Holding it, a write to a command that has
 * gone never fails with EPIPE, so writing waits on the pidfd as well.
 */
struct command_run {
	pid_t pid;
	int in;     /* the write end of the command's standard input */
	int unread; /* isgctl's own read end of that pipe */
	int pidfd;  /* readable once the command has ended */
};

/* How a run of the command ended, when it did not take its batch and exit 0. */
enum run_end {
	RUN_TOOK_ALL,   /* it read its whole input */
	RUN_LEFT_INPUT, /* it ended with input still unread */
	RUN_WRITE_FAILED,
	RUN_STOPPED, /* a second signal: it was sent SIGTERM */
};

static void run_close(struct command_run *run)
{
	if (run->in >= 0)
		close(run->in);
	close(run->unread);
	close(run->pidfd);
	run->in = -1;
}

/*
 * Start /bin/sh -c CMD reading a pipe: 0, or -1 with errno. The signals
 * isgctl catches or ignores are the command's own again (SIGPIPE above all,
 * or a command writing to a closed pipe would not stop).
 */
static int run_start(const char *cmd, struct command_run *run)
{
	extern char **environ;
	int pipefd[2];
	if (pipe2(pipefd, O_CLOEXEC) < 0)
		return -1;
	posix_spawn_file_actions_t fa;
	posix_spawnattr_t attr;
	sigset_t dfl, none;
	sigemptyset(&dfl);
	sigaddset(&dfl, SIGPIPE);
	sigaddset(&dfl, SIGINT);
	sigaddset(&dfl, SIGTERM);
	sigemptyset(&none);
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, pipefd[0], STDIN_FILENO);
	posix_spawnattr_init(&attr);
	posix_spawnattr_setsigdefault(&attr, &dfl);
	posix_spawnattr_setsigmask(&attr, &none);
	posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK);
	char *argv[] = {"sh", "-c", (char *)cmd, NULL};
	int e = posix_spawn(&run->pid, "/bin/sh", &fa, &attr, argv, environ);
	posix_spawnattr_destroy(&attr);
	posix_spawn_file_actions_destroy(&fa);
	if (e != 0) {
		close(pipefd[0]);
		close(pipefd[1]);
		errno = e;
		return -1;
	}
	run->in = pipefd[1];
	run->unread = pipefd[0];
	/* Not yet waited for, the pid cannot be another process's. */
	run->pidfd = (int)syscall(SYS_pidfd_open, run->pid, 0);
	if (run->pidfd < 0 || fcntl(run->in, F_SETFL, O_NONBLOCK) < 0) {
		e = errno;
		kill(run->pid, SIGKILL);
		waitpid(run->pid, NULL, 0);
		if (run->pidfd >= 0)
			close(run->pidfd);
		close(pipefd[0]);
		close(pipefd[1]);
		errno = e;
		return -1;
	}
	return 0;
}

/*
 * Wait until the command has ended (1) or, when writing, its input has
 * room (0), with the stop signals (blocked by the caller, their old mask in
 * *old) able to end the wait (0); -1 with errno.
 */
static int run_poll(struct command_run *run, bool writing, const sigset_t *old)
{
	struct pollfd pfd[2] = {{.fd = run->pidfd, .events = POLLIN},
	                        {.fd = run->in, .events = POLLOUT}};
	if (ppoll(pfd, writing ? 2 : 1, NULL, old) < 0)
		return errno == EINTR ? 0 : -1;
	return pfd[0].revents != 0;
}

/*
 * Write all of buf to the command: RUN_TOOK_ALL when it is in the pipe,
 * RUN_LEFT_INPUT when the command ended first, RUN_STOPPED at a second
 * signal, RUN_WRITE_FAILED with errno; WRITE_STOPPED when a first signal
 * came before the batch was begun. Once begun, a batch is finished: a
 * command stopped mid-line would be given part of a message.
 */
static int run_feed(struct command_run *run, const char *buf, size_t len, bool begun,
                    const sigset_t *old)
{
	size_t done = 0;
	while (done < len) {
		if (stop_requested > 1 || (stop_requested && !begun && done == 0))
			return stop_requested > 1 ? RUN_STOPPED : WRITE_STOPPED;
		ssize_t n = write(run->in, buf + done, len - done);
		if (n > 0) {
			done += (size_t)n;
			continue;
		}
		if (n < 0 && errno != EAGAIN && errno != EINTR)
			return RUN_WRITE_FAILED;
		int ended = run_poll(run, true, old);
		if (ended != 0)
			return ended < 0 ? RUN_WRITE_FAILED : RUN_LEFT_INPUT;
	}
	return RUN_TOOK_ALL;
}

/*
 * Close the command's input and wait for it to end, in *ws. A first stop
 * signal lets it finish its batch; a second sends it SIGTERM: RUN_STOPPED.
 * Then, input left in the pipe is RUN_LEFT_INPUT. -1 with errno when it
 * cannot be waited for.
 */
static int run_wait(struct command_run *run, int fed, const sigset_t *old, int *ws)
{
	close(run->in);
	run->in = -1;
	bool killed = false;
	for (;;) {
		if (stop_requested > 1 && !killed) {
			kill(run->pid, SIGTERM);
			killed = true;
		}
		int ended = run_poll(run, false, old);
		if (ended < 0)
			return -1;
		if (ended)
			break;
	}
	pid_t r;
	while ((r = waitpid(run->pid, ws, 0)) < 0 && errno == EINTR)
		;
	if (r < 0)
		return -1;
	if (killed)
		return RUN_STOPPED;
	int queued = 0;
	if (fed == RUN_TOOK_ALL && ioctl(run->unread, FIONREAD, &queued) == 0 && queued > 0)
		return RUN_LEFT_INPUT;
	return fed;
}

/* Say why the n messages given to the command stay unacknowledged. */
static void run_failed(int end, int ws, int write_errno, size_t n)
{
	char how[96];
	if (end < 0)
		snprintf(how, sizeof(how), "could not be waited for (%s)", ctl_errno_text(errno));
	else if (end == RUN_STOPPED)
		snprintf(how, sizeof(how), "was sent SIGTERM at a second signal");
	else if (WIFSIGNALED(ws))
		snprintf(how, sizeof(how), "was killed by signal %d (SIG%s)", WTERMSIG(ws),
		         sigabbrev_np(WTERMSIG(ws)) ? sigabbrev_np(WTERMSIG(ws)) : "?");
	else if (WIFEXITED(ws) && WEXITSTATUS(ws) != 0)
		snprintf(how, sizeof(how), "exited with status %d", WEXITSTATUS(ws));
	else if (end == RUN_WRITE_FAILED)
		snprintf(how, sizeof(how), "could not be written to (%s)",
		         ctl_errno_text(write_errno));
	else
		snprintf(how, sizeof(how), "exited 0 without reading all of them");
	ctl_warn("the --exec command %s: the %zu message%s given to it stay%s unacknowledged", how,
	         n, n == 1 ? "" : "s", n == 1 ? "s" : "");
}

/* Give items[0..n) to the command; a run_end, or WRITE_STOPPED. */
static int run_feed_all(struct command_run *run, struct printer *p,
                        const struct isg_delivery *items, size_t n, const sigset_t *old,
                        int *write_errno)
{
	int fed = RUN_TOOK_ALL;
	for (size_t i = 0; fed == RUN_TOOK_ALL && i < n; i++) {
		char *buf;
		size_t len;
		if (format_delivery(p, &items[i], &buf, &len) < 0) {
			*write_errno = ENOMEM;
			return RUN_WRITE_FAILED;
		}
		fed = run_feed(run, buf, len, i > 0, old);
		*write_errno = errno;
		free(buf);
	}
	return fed;
}

/*
 * Give items[0..n) to a new run of the command: CTL_EXIT_OK when it read
 * them all and exited 0, so that they may be acknowledged; WRITE_STOPPED
 * when a stop came before any was written; otherwise a failure, said. The
 * stop signals are blocked but while waiting (ppoll), so that none is
 * taken between a look at stop_requested and the wait.
 */
static int exec_batch(const char *cmd, struct printer *p, const struct isg_delivery *items,
                      size_t n)
{
	if (stop_requested)
		return WRITE_STOPPED;
	struct command_run run;
	if (run_start(cmd, &run) < 0) {
		ctl_warn("cannot run the --exec command: %s; the %zu message%s stay%s "
		         "unacknowledged",
		         ctl_errno_text(errno), n, n == 1 ? "" : "s", n == 1 ? "s" : "");
		return CTL_EXIT_LOCAL;
	}
	sigset_t old;
	block_stops(&old);
	/* Each run is a file of its own: CSV starts with its header row. */
	ctl_csv_writer_release(&p->csv);
	ctl_csv_writer_init(&p->csv);
	int write_errno = 0, ws = 0;
	int fed = run_feed_all(&run, p, items, n, &old, &write_errno);
	int end = run_wait(&run, fed, &old, &ws);
	int e = errno;
	run_close(&run);
	sigprocmask(SIG_SETMASK, &old, NULL);
	errno = e;
	if (end == WRITE_STOPPED)
		return WRITE_STOPPED; /* the command got nothing: nothing to say */
	if (end == RUN_TOOK_ALL && ws == 0)
		return CTL_EXIT_OK;
	run_failed(end, ws, write_errno, n);
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
	if (status == CTL_EXIT_OK && a->exec) {
		for (size_t i = 0; i < list->n; i++)
			ids[i] = list->items[i].gateway_id;
		if (list->n > 0)
			status = exec_batch(a->exec, p, list->items, list->n);
		printed = status == CTL_EXIT_OK ? list->n : 0; /* all or nothing */
	}
	for (; !a->exec && status == CTL_EXIT_OK && printed < list->n; printed++) {
		status = print_delivery(p, &list->items[printed]);
		ids[printed] = list->items[printed].gateway_id;
	}
	if (!a->exec && status != CTL_EXIT_OK && printed > 0)
		printed--; /* the one that failed */
	/* Acknowledge what was printed, even when a later one failed. */
	if (!a->no_ack && printed > 0) {
		int s = a->exec ? CTL_EXIT_OK : sync_printed(ids, printed);
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
		int status = a->exec ? exec_batch(a->exec, p, d, 1) : print_delivery(p, d);
		if (status == CTL_EXIT_OK && !a->no_ack && !a->exec)
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
