/*
 * isgctl store backup: a consistent copy of isgd's store taken while isgd
 * runs and partners keep exchanging (docs/operations.md, "Backups and
 * restore"). The store is read as the audit commands read it
 * (store_read.c): read-only, in one read transaction. The copy is a new
 * file of mode 0600 beside OUTPUT, checked, synced, then linked at OUTPUT
 * (or renamed with RENAME_NOREPLACE where there are no hard links), which
 * never replaces a file: OUTPUT holds a whole, checked copy or nothing.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

#include "ctl/cmd_audit.h"
#include "ctl/ctl.h"
#include "ctl/store_read.h"

/* What store_db.c writes into every store (docs/store.md, "Recognising the file"). */
#define STORE_APPLICATION_ID 0x49534731 /* "ISG1" */
#define STORE_FORMAT "isg-store"

static const char backup_usage[] =
    "usage: isgctl store backup (--config ISGD_YAML | --store DB) OUTPUT\n";

enum { STORE_OPT_CONFIG = 3000, STORE_OPT_STORE, STORE_OPT_HELP };

/* Not an exit status: a stop signal came, and the backup gave up. */
enum { BACKUP_STOPPED = -1 };

/* Pages copied per backup step: about 1 MiB, between two looks for a stop signal. */
#define BACKUP_STEP_PAGES 256

/* VM steps between two looks for a stop signal while the copy is checked. */
#define CHECK_PROGRESS_OPS 10000

struct backup {
	const char *output;
	char *store_path; /* --store, else the config's store.path */
	sqlite3 *src;
	char *src_real;
	int64_t src_last; /* the audit log's last seq in the snapshot copied */
	int64_t taken_ms; /* when the snapshot was taken: all committed before is in it */
	char *tmp;        /* the copy, until it is linked at output; NULL: none */
	/* what the copy holds, for the summary line */
	int64_t bytes, entries, cp_size; /* cp_size -1: no checkpoint */
	char root[64];                   /* the latest checkpoint's root, base64; "": unreadable */
};

/*
 * The signals that stop a backup: SIGINT, SIGTERM and SIGHUP, but not one
 * that isgctl was started with ignored (nohup ignores SIGHUP). Their
 * default action would end isgctl at once, leaving the temporary copy
 * behind: hundreds of MB of personal data. So they are blocked from before
 * the temporary exists until it is removed or has its name, and looked for
 * between steps (stop_pending); a backup stopped removes its copy and says
 * so. Linux keeps a blocked signal pending even when its action is to
 * ignore it, hence the ignored ones are left out.
 */
static const int stop_signals[] = {SIGINT, SIGTERM, SIGHUP};
static sigset_t stop_set;

static void stops_block(sigset_t *old)
{
	sigemptyset(&stop_set);
	for (size_t i = 0; i < ARRAY_LEN(stop_signals); i++) {
		struct sigaction sa;
		if (sigaction(stop_signals[i], NULL, &sa) == 0 && sa.sa_handler != SIG_IGN)
			sigaddset(&stop_set, stop_signals[i]);
	}
	sigprocmask(SIG_BLOCK, &stop_set, old);
}

/* The stop signal that came, or 0. It stays pending: stops_unblock takes it. */
static int stop_pending(void)
{
	sigset_t pending;
	if (sigpending(&pending) != 0)
		return 0;
	for (size_t i = 0; i < ARRAY_LEN(stop_signals); i++)
		if (sigismember(&stop_set, stop_signals[i]) &&
		    sigismember(&pending, stop_signals[i]))
			return stop_signals[i];
	return 0;
}

/*
 * Once the backup is over (the copy removed, or at OUTPUT), a stop signal
 * has nothing left to stop: the ones that came are taken, not delivered,
 * and the mask restored.
 */
static void stops_unblock(const sigset_t *old)
{
	static const struct timespec now = {0, 0};
	while (sigtimedwait(&stop_set, NULL, &now) > 0)
		;
	sigprocmask(SIG_SETMASK, old, NULL);
}

/* status, or BACKUP_STOPPED when it is CTL_EXIT_OK and a stop signal came meanwhile. */
static int unless_stopped(int status)
{
	return status == CTL_EXIT_OK && stop_pending() ? BACKUP_STOPPED : status;
}

/* A progress handler: non-zero, so SQLite interrupts what it runs, once a stop signal came. */
static int stop_progress(void *arg)
{
	(void)arg;
	return stop_pending() != 0;
}

/* The query's single integer into *v; false when it has no row or fails. */
static bool query_int(sqlite3 *db, const char *sql, int64_t *v)
{
	sqlite3_stmt *st = NULL;
	bool ok = sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK &&
	          sqlite3_step(st) == SQLITE_ROW;
	if (ok)
		*v = sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	return ok;
}

enum store_kind { STORE_ISG, STORE_UNREADABLE, STORE_FOREIGN };

/*
 * Whether db is an isgd store: our application id, the meta row format =
 * 'isg-store', and the audit log's tables. STORE_UNREADABLE: see db's
 * error. The first read of a connection in its transaction: the snapshot
 * is taken here.
 */
static enum store_kind recognise(sqlite3 *db)
{
	int64_t app_id = 0, format = 0, tables = 0;
	if (!query_int(db, "PRAGMA application_id", &app_id) ||
	    !query_int(db,
	               "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name IN "
	               "('meta', 'audit', 'checkpoints')",
	               &tables))
		return STORE_UNREADABLE;
	if (app_id != STORE_APPLICATION_ID || tables != 3 ||
	    !query_int(db,
	               "SELECT count(*) FROM meta WHERE key = 'format' AND value = "
	               "'" STORE_FORMAT "'",
	               &format) ||
	    format != 1)
		return STORE_FOREIGN;
	return STORE_ISG;
}

/* The store's path: --store, else the config's store.path (a config given is read either way). */
static int find_store(struct backup *b, const char *config, const char *store)
{
	if (!config && !store)
		return ctl_usage_error(backup_usage,
		                       "say where the store is: --config ISGD_YAML or --store DB");
	int status = CTL_EXIT_OK;
	if (config) {
		struct isgd_config cfg;
		status = ctl_isgd_config_load(config, &cfg);
		if (status == CTL_EXIT_OK && !store && !cfg.store_path)
			status = ctl_usage_error(
			    backup_usage, "'%s' names no store.path: give --store DB", config);
		if (status == CTL_EXIT_OK && !store)
			b->store_path = strdup(cfg.store_path);
		config_release(&cfg);
	}
	if (status == CTL_EXIT_OK && store)
		b->store_path = strdup(store);
	if (status == CTL_EXIT_OK && !b->store_path) {
		ctl_warn("out of memory");
		status = CTL_EXIT_LOCAL;
	}
	return status;
}

/*
 * OUTPUT must not exist: a backup never replaces a file, which may be the
 * last good copy. Said here, before a long copy; link() says it again at
 * the end, without a race.
 */
static int output_free(const char *output)
{
	struct stat st;
	if (lstat(output, &st) == 0) {
		ctl_warn("'%s' exists: a backup never replaces a file; give a new name", output);
		return CTL_EXIT_LOCAL;
	}
	if (errno != ENOENT) {
		ctl_warn("cannot write '%s': %s", output, ctl_errno_text(errno));
		return CTL_EXIT_LOCAL;
	}
	return CTL_EXIT_OK;
}

/* The store opened, recognised, and its snapshot taken. */
static int open_source(struct backup *b)
{
	int status = ctl_store_open(b->store_path, true, &b->src, &b->src_real);
	/* Before the first read, which takes the snapshot: what was committed before is in it. */
	b->taken_ms = time_now_ms();
	enum store_kind kind = status == CTL_EXIT_OK ? recognise(b->src) : STORE_ISG;
	if (kind == STORE_FOREIGN) {
		ctl_warn("store '%s' is an SQLite database but not an ISG store", b->store_path);
		status = CTL_EXIT_LOCAL;
	}
	if (status == CTL_EXIT_OK &&
	    (kind == STORE_UNREADABLE ||
	     !query_int(b->src, "SELECT coalesce(max(seq), 0) FROM audit", &b->src_last))) {
		ctl_warn("cannot read store '%s': %s", b->store_path, sqlite3_errmsg(b->src));
		status = CTL_EXIT_LOCAL;
	}
	return status;
}

/*
 * The length of name kept in the temporary's, ".NAME.XXXXXX", so that it
 * is no longer than NAME_MAX when OUTPUT's is: cut, where it must be, at
 * the start of a character in UTF-8.
 */
static int temp_stem_len(const char *name)
{
	size_t len = strlen(name);
	if (len <= NAME_MAX - 8)
		return (int)len;
	len = NAME_MAX - 8;
	while (len > 0 && ((unsigned char)name[len] & 0xc0) == 0x80)
		len--;
	return (int)len;
}

/* A new empty file of mode 0600 beside OUTPUT (".NAME.XXXXXX"), in b->tmp. */
static int make_temp(struct backup *b)
{
	const char *slash = strrchr(b->output, '/');
	const char *name = slash ? slash + 1 : b->output;
	int dir_len = slash ? (int)(slash - b->output + 1) : 0;
	/* "./": a relative name SQLite would otherwise take for a URI ("file:...") */
	if (asprintf(&b->tmp, "%s%.*s.%.*s.XXXXXX", b->output[0] == '/' ? "" : "./", dir_len,
	             b->output, temp_stem_len(name), name) < 0) {
		b->tmp = NULL;
		ctl_warn("out of memory");
		return CTL_EXIT_LOCAL;
	}
	int fd = mkostemp(b->tmp, O_CLOEXEC); /* mode 0600 */
	if (fd < 0) {
		ctl_warn("cannot write '%s': %s", b->output, ctl_errno_text(errno));
		free(b->tmp);
		b->tmp = NULL;
		return CTL_EXIT_LOCAL;
	}
	close(fd);
	return CTL_EXIT_OK;
}

/*
 * Copy the source's pages into the temporary file. The source connection
 * is in a read transaction that has already read (recognise), so it holds
 * one snapshot: in WAL mode a reader sees the database as it was when its
 * read began, and isgd's writer goes on appending to the WAL meanwhile
 * (readers do not block writers; the WAL cannot be checkpointed past this
 * snapshot until it ends, so it grows for as long as the copy takes).
 * sqlite3_backup_step() uses a read transaction it finds open and keeps it
 * (it opens and closes one of its own only when there is none), and the
 * backup restarts only when the pager finds, at the start of a new read
 * transaction, that another connection changed the file: with ours held
 * across the copy there is none, so the copy is that snapshot whole, never
 * restarted however busy isgd is. It is copied BACKUP_STEP_PAGES at a
 * time, all the steps in that one read transaction, so that a stop signal
 * is seen between two of them: BACKUP_STOPPED.
 *
 * The copy needs no journal (a failed one is removed) nor syncs of its own
 * (the file is synced once whole): journal_mode OFF, synchronous OFF.
 */
static int copy_pages(struct backup *b)
{
	sqlite3 *dst = NULL;
	bool stopped = false;
	int rc = sqlite3_open_v2(b->tmp, &dst, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOFOLLOW, NULL);
	if (rc == SQLITE_OK)
		rc = sqlite3_exec(dst, "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF", NULL,
		                  NULL, NULL);
	if (rc == SQLITE_OK) {
		sqlite3_backup *bk = sqlite3_backup_init(dst, "main", b->src, "main");
		if (bk) {
			do
				rc = sqlite3_backup_step(bk, BACKUP_STEP_PAGES);
			while (rc == SQLITE_OK && !(stopped = stop_pending() != 0));
			int frc = sqlite3_backup_finish(bk); /* sets dst's error */
			rc = rc == SQLITE_DONE || stopped ? frc : rc;
		} else {
			rc = sqlite3_errcode(dst);
		}
	}
	int status = CTL_EXIT_OK;
	if (rc != SQLITE_OK) {
		/* "disk I/O error" says little: the system's reason too (file too large, ...) */
		int sys = dst ? sqlite3_system_errno(dst) : 0;
		ctl_warn("cannot copy store '%s' to '%s': %s%s%s%s", b->store_path, b->output,
		         dst ? sqlite3_errmsg(dst) : sqlite3_errstr(rc), sys ? " (" : "",
		         sys ? ctl_errno_text(sys) : "", sys ? ")" : "");
		status = CTL_EXIT_LOCAL;
	}
	if (sqlite3_close(dst) != SQLITE_OK && status == CTL_EXIT_OK) {
		ctl_warn("cannot copy store '%s' to '%s': %s", b->store_path, b->output,
		         sqlite3_errmsg(dst));
		status = CTL_EXIT_LOCAL;
	}
	return status == CTL_EXIT_OK && stopped ? BACKUP_STOPPED : status;
}

/* End the source's read, and make sure a store read immutable did not change under it. */
static int close_source(struct backup *b)
{
	sqlite3_exec(b->src, "COMMIT", NULL, NULL, NULL);
	sqlite3_close(b->src);
	b->src = NULL;
	return ctl_store_recheck(CTL_EXIT_OK);
}

/* fsync the copy, and take its size. */
static int sync_copy(struct backup *b)
{
	struct stat st;
	int fd = open(b->tmp, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	bool ok = fd >= 0 && fsync(fd) == 0 && fstat(fd, &st) == 0;
	int err = errno;
	if (fd >= 0)
		close(fd);
	if (!ok) {
		ctl_warn("cannot write '%s': %s", b->output, ctl_errno_text(err));
		return CTL_EXIT_LOCAL;
	}
	b->bytes = (int64_t)st.st_size;
	return CTL_EXIT_OK;
}

/*
 * The latest checkpoint's size and root, as stored (its signature is
 * audit verify's to check). A note that does not read is said, and the
 * copy kept: it is the store as it was.
 */
static int latest_checkpoint(struct backup *b, sqlite3 *db)
{
	sqlite3_stmt *st = NULL;
	b->cp_size = -1;
	if (sqlite3_prepare_v2(db, "SELECT size, note FROM checkpoints ORDER BY size DESC LIMIT 1",
	                       -1, &st, NULL) != SQLITE_OK) {
		ctl_warn("cannot read the copy for '%s': %s", b->output, sqlite3_errmsg(db));
		return CTL_EXIT_LOCAL;
	}
	int rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		b->cp_size = sqlite3_column_int64(st, 0);
		const char *note = (const char *)sqlite3_column_text(st, 1);
		const char *end = note ? strstr(note, "\n\n") : NULL;
		struct audit_checkpoint c;
		const char *reason = NULL;
		if (end &&
		    audit_checkpoint_parse(note, (size_t)(end - note) + 1, &c, &reason) == 0 &&
		    c.size == (uint64_t)b->cp_size)
			audit_ctl_b64(b->root, sizeof(b->root), c.root, AUDIT_HASH_LEN);
		else
			ctl_warn("the latest checkpoint (size %" PRId64
			         ") does not read: %s; check "
			         "the store with 'isgctl audit verify'",
			         b->cp_size, reason ? reason : "not the checkpoint of its size");
	}
	sqlite3_finalize(st);
	if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
		ctl_warn("cannot read the copy for '%s': %s", b->output, sqlite3_errmsg(db));
		return CTL_EXIT_LOCAL;
	}
	return CTL_EXIT_OK;
}

/*
 * PRAGMA quick_check says "ok" (one row). It reads the whole copy, so a
 * stop signal interrupts it (BACKUP_STOPPED), where SQLite looks at the
 * progress handler: between its VM steps, and within its walk of each
 * b-tree from SQLite 3.43.
 */
static int quick_check(struct backup *b, sqlite3 *db)
{
	sqlite3_stmt *st = NULL;
	sqlite3_progress_handler(db, CHECK_PROGRESS_OPS, stop_progress, NULL);
	bool ok = sqlite3_prepare_v2(db, "PRAGMA quick_check", -1, &st, NULL) == SQLITE_OK &&
	          sqlite3_step(st) == SQLITE_ROW &&
	          strcmp((const char *)sqlite3_column_text(st, 0), "ok") == 0 &&
	          sqlite3_step(st) == SQLITE_DONE;
	bool stopped = !ok && sqlite3_errcode(db) == SQLITE_INTERRUPT;
	sqlite3_finalize(st);
	sqlite3_progress_handler(db, 0, NULL, NULL);
	if (stopped)
		return BACKUP_STOPPED;
	if (!ok)
		ctl_warn("the copy for '%s' fails SQLite's quick_check", b->output);
	return ok ? CTL_EXIT_OK : CTL_EXIT_LOCAL;
}

/*
 * Open the copy as any other store is opened (immutable: nothing else has
 * it) and check it: SQLite's quick_check, the store's marks, and the audit
 * log's last entry that of the snapshot copied. Messages name OUTPUT: the
 * temporary's name means nothing once it is removed.
 */
static int check_copy(struct backup *b)
{
	sqlite3 *db = NULL;
	char *real = NULL;
	int64_t count = 0, last = 0;
	int status = ctl_store_open(b->tmp, false, &db, &real);
	if (status == CTL_EXIT_OK)
		status = quick_check(b, db);
	enum store_kind kind = status == CTL_EXIT_OK ? recognise(db) : STORE_ISG;
	if (kind == STORE_FOREIGN) {
		ctl_warn("the copy for '%s' is an SQLite database but not an ISG store", b->output);
		status = CTL_EXIT_LOCAL;
	}
	if (status == CTL_EXIT_OK &&
	    (kind == STORE_UNREADABLE || !query_int(db, "SELECT count(*) FROM audit", &count) ||
	     !query_int(db, "SELECT coalesce(max(seq), 0) FROM audit", &last))) {
		ctl_warn("cannot read the copy for '%s': %s", b->output, sqlite3_errmsg(db));
		status = CTL_EXIT_LOCAL;
	}
	if (status == CTL_EXIT_OK && last != b->src_last) {
		ctl_warn("the copy for '%s' ends its audit log at entry %" PRId64
		         ", the store at %" PRId64,
		         b->output, last, b->src_last);
		status = CTL_EXIT_LOCAL;
	}
	b->entries = count;
	if (status == CTL_EXIT_OK)
		status = latest_checkpoint(b, db);
	if (db) {
		sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
		sqlite3_close(db);
	}
	free(real);
	return status;
}

/* Whether link()'s errno says the filesystem has no hard links (vfat, exfat, CIFS, sshfs). */
static bool no_hard_links(int e)
{
	return e == EPERM || e == ENOTSUP || e == ENOSYS;
}

/* Whether renameat2()'s errno says the filesystem cannot rename without replacing. */
static bool no_noreplace(int e)
{
	return e == EINVAL || e == ENOTSUP || e == ENOSYS;
}

/*
 * Give the copy its name, never replacing a file, as rename() would:
 * link(), then the temporary removed; where the filesystem has no hard
 * links, renameat2() with RENAME_NOREPLACE, which does not replace either.
 */
static int publish_name(struct backup *b)
{
	if (link(b->tmp, b->output) == 0) {
		if (unlink(b->tmp) != 0)
			ctl_warn("'%s' written, but the temporary '%s' cannot be removed: %s",
			         b->output, b->tmp, ctl_errno_text(errno));
		return CTL_EXIT_OK;
	}
	bool rename_tried = no_hard_links(errno);
	if (rename_tried && renameat2(AT_FDCWD, b->tmp, AT_FDCWD, b->output, RENAME_NOREPLACE) == 0)
		return CTL_EXIT_OK;
	if (errno == EEXIST)
		ctl_warn("'%s' exists: a backup never replaces a file; give a new name", b->output);
	else if (rename_tried && no_noreplace(errno))
		ctl_warn("cannot write '%s': its filesystem has neither hard links nor a rename "
		         "that never replaces a file; write the backup to a local filesystem, "
		         "then copy it",
		         b->output);
	else
		ctl_warn("cannot write '%s': %s", b->output, ctl_errno_text(errno));
	return CTL_EXIT_LOCAL;
}

/* Give the copy its name (publish_name), and sync it into its directory. */
static int publish(struct backup *b)
{
	if (publish_name(b) != CTL_EXIT_OK)
		return CTL_EXIT_LOCAL;
	free(b->tmp);
	b->tmp = NULL;
	if (ctl_sync_dir_of(b->output) != 0) {
		ctl_warn("'%s' written, but its directory cannot be synced: %s", b->output,
		         ctl_errno_text(errno));
		return CTL_EXIT_LOCAL;
	}
	return CTL_EXIT_OK;
}

/*
 * One line an admin can log: what was written, when its snapshot was taken
 * (what a restore rolls back to), and the log it holds. Nothing personal.
 */
static void print_summary(const struct backup *b)
{
	char taken[32];
	time_format_ms(taken, sizeof(taken), b->taken_ms);
	printf("store backup OK: %s, snapshot at %s, %" PRId64 " bytes, %" PRId64 " audit entries",
	       b->output, taken, b->bytes, b->entries);
	if (b->cp_size < 0)
		printf(", no checkpoint yet\n");
	else
		printf(", latest checkpoint size %" PRId64 ", root %s\n", b->cp_size,
		       b->root[0] ? b->root : "unreadable");
}

/*
 * The steps, with a look for a stop signal after each until the copy has
 * its name (the copy is long, the check may be: they look within too). The
 * sync cannot be cut short: a signal that comes during it is seen when it
 * is done. One that comes after publish is too late to stop anything.
 */
static int backup_run(struct backup *b)
{
	int status = output_free(b->output);
	if (status == CTL_EXIT_OK)
		status = unless_stopped(open_source(b));
	if (status == CTL_EXIT_OK)
		status = unless_stopped(make_temp(b));
	if (status == CTL_EXIT_OK)
		status = unless_stopped(copy_pages(b));
	if (b->src) {
		int s = close_source(b);
		status = status == CTL_EXIT_OK ? s : status;
	}
	if (status == CTL_EXIT_OK)
		status = unless_stopped(sync_copy(b));
	if (status == CTL_EXIT_OK) {
		status = unless_stopped(check_copy(b));
		if (status == CTL_EXIT_LOCAL)
			ctl_warn("nothing written to '%s': the copy was removed", b->output);
	}
	if (status == CTL_EXIT_OK)
		status = publish(b);
	if (status == CTL_EXIT_OK)
		print_summary(b);
	if (status == BACKUP_STOPPED) {
		int sig = stop_pending();
		ctl_warn("interrupted by SIG%s: nothing written to '%s'",
		         sigabbrev_np(sig) ? sigabbrev_np(sig) : "?", b->output);
		status = CTL_EXIT_LOCAL;
	}
	return status;
}

static void backup_release(struct backup *b)
{
	if (b->src) {
		sqlite3_exec(b->src, "COMMIT", NULL, NULL, NULL);
		sqlite3_close(b->src);
	}
	/* never a partial copy left behind */
	if (b->tmp && unlink(b->tmp) != 0 && errno != ENOENT)
		ctl_warn("cannot remove the temporary copy '%s': %s; remove it", b->tmp,
		         ctl_errno_text(errno));
	free(b->tmp);
	free(b->src_real);
	free(b->store_path);
}

static int backup_help(void)
{
	printf("%s\nCopies isgd's store to OUTPUT, a new file (mode 0600), while isgd runs and\n"
	       "partners keep exchanging: one consistent snapshot, taken with SQLite's online\n"
	       "backup through a read-only connection, which isgd's commits do not wait for\n"
	       "(its WAL grows meanwhile). Works with isgd stopped too. The copy is written\n"
	       "beside OUTPUT, checked (quick_check, the store's marks), synced, then given\n"
	       "its name; an existing OUTPUT is never replaced. Prints one line: 'store\n"
	       "backup OK: OUTPUT, snapshot at T, N bytes, E audit entries, latest\n"
	       "checkpoint size S, root R', where T (UTC) is when the snapshot was taken:\n"
	       "all committed before it is in the copy. The copy is personal data.\n\n"
	       "  --config ISGD_YAML  isgd's configuration: store.path\n"
	       "  --store DB          the store file (overrides the config's)\n",
	       backup_usage);
	return CTL_EXIT_OK;
}

static int store_backup_cmd(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"config", required_argument, NULL, STORE_OPT_CONFIG},
	    {"store", required_argument, NULL, STORE_OPT_STORE},
	    {"help", no_argument, NULL, STORE_OPT_HELP},
	    {NULL, 0, NULL, 0},
	};
	static const char *const names[] = {"OUTPUT"};
	const char *config = NULL, *store = NULL;
	bool help = false;
	struct ctl_opts o;
	ctl_opts_init(&o, argc, argv, ":", opts, backup_usage);
	int opt;
	while ((opt = ctl_opts_next(&o)) != CTL_OPTS_END) {
		if (opt == CTL_OPTS_ERROR)
			return CTL_EXIT_USAGE;
		if (opt == STORE_OPT_CONFIG)
			config = optarg;
		else if (opt == STORE_OPT_STORE)
			store = optarg;
		else
			help = true;
	}
	if (help)
		return backup_help();
	if (argc - optind != 1)
		return ctl_usage_error(backup_usage, "store backup takes one OUTPUT file");
	int status = ctl_opts_args(&o, names);
	if (status != CTL_EXIT_OK)
		return status;
	struct backup b = {.output = argv[optind]};
	sigset_t old;
	stops_block(&old);
	status = find_store(&b, config, store);
	if (status == CTL_EXIT_OK)
		status = backup_run(&b);
	backup_release(&b);
	stops_unblock(&old);
	return status;
}

static const struct ctl_command store_commands[] = {
    {"backup", store_backup_cmd, "copy the store to a new file, consistently, while isgd runs"},
};

int cmd_store(int argc, char **argv)
{
	if (sodium_init() < 0) {
		ctl_warn("cannot initialise libsodium");
		return CTL_EXIT_LOCAL;
	}
	FILE *out = ctl_group_usage(argc, argv, "usage: isgctl store COMMAND [OPTIONS]\n",
	                            store_commands, ARRAY_LEN(store_commands), 8);
	if (out) {
		fprintf(out, "\n'isgctl store COMMAND --help' shows a command's options.\n");
		return argc < 2 ? CTL_EXIT_USAGE : CTL_EXIT_OK;
	}
	int status =
	    ctl_dispatch(store_commands, ARRAY_LEN(store_commands), "store", argc - 1, argv + 1);
	return ctl_store_recheck(status);
}
