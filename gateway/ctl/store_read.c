/*
 * How isgctl opens isgd's store: read-only (SQLITE_OPEN_READONLY: isgctl
 * never writes it) in one read transaction, so each command sees one
 * snapshot even while isgd keeps writing. The audit commands read the log
 * through it, and store backup copies the store through it.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "ctl/ctl.h"
#include "ctl/store_read.h"
#include "store/store.h"

#define BUSY_TIMEOUT_MS 10000

int ctl_isgd_config_load(const char *path, struct isgd_config *cfg)
{
	struct ydoc_diags diags;
	config_init(cfg);
	ydoc_diags_init(&diags);
	int rc = config_load(path, cfg, &diags);
	ydoc_diags_print(&diags, stderr);
	int status = CTL_EXIT_OK;
	if (rc != 0) {
		if (diags.errors == 0)
			ctl_warn("%s: %s", path, isg_strerror(rc));
		ctl_warn("cannot use the gateway configuration '%s'", path);
		status = CTL_EXIT_LOCAL;
	}
	ydoc_diags_release(&diags);
	return status;
}

/* Whether isgd has the store at path open: its WAL file exists (or cannot be named). */
static bool wal_exists(const char *path)
{
	struct stat st;
	char wal[4200];
	return (size_t)snprintf(wal, sizeof(wal), "%s-wal", path) >= sizeof(wal) ||
	       stat(wal, &st) == 0;
}

/*
 * The store file as it was when opened immutable (isgd stopped). SQLite
 * then takes no lock and trusts that no one writes the file, so an isgd
 * started while a command still reads (an 'audit list | less' left open, a
 * long report, a backup) would write under it unseen: the answer could mix
 * two logs, or read torn pages. ctl_store_recheck looks at the file again
 * once the reading is over. One store watched per process: each command
 * reads one.
 */
static struct {
	char *shown;     /* the path as given, for the message; NULL: none kept */
	char *real_path; /* where SQLite read it */
	struct stat st;
} snapshot;

static void snapshot_release(void)
{
	free(snapshot.shown);
	free(snapshot.real_path);
	memset(&snapshot, 0, sizeof(snapshot));
}

static int snapshot_take(const char *shown, const char *real_path, const struct stat *st)
{
	snapshot_release();
	snapshot.shown = strdup(shown);
	snapshot.real_path = strdup(real_path);
	snapshot.st = *st;
	if (!snapshot.shown || !snapshot.real_path) {
		snapshot_release();
		ctl_warn("out of memory");
		return CTL_EXIT_LOCAL;
	}
	return CTL_EXIT_OK;
}

static bool snapshot_unchanged(void)
{
	struct stat now;
	const struct stat *then = &snapshot.st;
	return stat(snapshot.real_path, &now) == 0 && now.st_dev == then->st_dev &&
	       now.st_ino == then->st_ino && now.st_size == then->st_size &&
	       now.st_mtim.tv_sec == then->st_mtim.tv_sec &&
	       now.st_mtim.tv_nsec == then->st_mtim.tv_nsec && !wal_exists(snapshot.real_path);
}

int ctl_store_recheck(int status)
{
	if (!snapshot.real_path)
		return status;
	if (!snapshot_unchanged()) {
		ctl_warn("the store '%s' changed while it was read (isgd started?): nothing here "
		         "can be trusted; run the command again",
		         snapshot.shown);
		if (status == CTL_EXIT_OK)
			status = CTL_EXIT_LOCAL;
	}
	snapshot_release();
	return status;
}

/* What to do when the user may not read the store or enter a directory on its way. */
static const char *denied_hint(int e)
{
	return e == EACCES || e == EPERM ? " (run it as the store's owner)" : "";
}

/* The store's file, links followed, in *real_path. */
static int resolve_store(const char *path, char **real_path)
{
	*real_path = realpath(path, NULL);
	if (!*real_path) {
		/* a store that is not there is the usual case: say so plainly */
		int e = errno;
		bool missing = e == ENOENT || e == ENOTDIR;
		ctl_warn("cannot open store '%s': %s%s%s", path,
		         missing ? "" : "cannot resolve its path: ", ctl_errno_text(e),
		         denied_hint(e));
		return CTL_EXIT_LOCAL;
	}
	return CTL_EXIT_OK;
}

int ctl_store_open(const char *path, bool watch, sqlite3 **db, char **real_path)
{
	struct stat st;
	*db = NULL;
	int status = resolve_store(path, real_path);
	if (status != CTL_EXIT_OK)
		return status;
	if (stat(*real_path, &st) != 0) {
		int e = errno;
		ctl_warn("cannot open store '%s': %s%s", path, ctl_errno_text(e), denied_hint(e));
		return CTL_EXIT_LOCAL;
	}
	if (!S_ISREG(st.st_mode)) {
		ctl_warn("store '%s' is not a regular file", path);
		return CTL_EXIT_LOCAL;
	}
	/*
	 * While isgd runs, its WAL file exists and a read-only connection shares
	 * it. When isgd is stopped there is none, and a read-only connection
	 * would still create -wal and -shm files, owned by whoever runs isgctl
	 * (root, say), which isgd could then not open: so the file is opened
	 * immutable, which creates nothing and locks nothing, as no one writes
	 * it. The path is resolved (realpath): SQLite follows a link to the
	 * file, and isgd's -wal lies beside the file, not beside the link. st
	 * is taken before the WAL is looked for: an isgd that starts after it
	 * shows.
	 */
	bool immutable = !wal_exists(*real_path);
	if (immutable && watch && snapshot_take(path, *real_path, &st) != CTL_EXIT_OK)
		return CTL_EXIT_LOCAL;
	char *uri = store_read_uri(*real_path, immutable);
	if (!uri) {
		ctl_warn("out of memory");
		return CTL_EXIT_LOCAL;
	}
	int rc = sqlite3_open_v2(uri, db, SQLITE_OPEN_READONLY | SQLITE_OPEN_URI, NULL);
	free(uri);
	if (rc != SQLITE_OK) {
		/* SQLite says "unable to open database file" whatever the reason */
		int e = *db ? sqlite3_system_errno(*db) : 0;
		if ((rc & 0xff) == SQLITE_CANTOPEN && *denied_hint(e))
			ctl_warn("cannot open store '%s': %s%s", path, ctl_errno_text(e),
			         denied_hint(e));
		else
			ctl_warn("cannot open store '%s': %s", path,
			         *db ? sqlite3_errmsg(*db) : sqlite3_errstr(rc));
		return CTL_EXIT_LOCAL;
	}
	sqlite3_busy_timeout(*db, BUSY_TIMEOUT_MS);
	if (sqlite3_exec(*db, "BEGIN", NULL, NULL, NULL) != SQLITE_OK) {
		ctl_warn("cannot read store '%s': %s", path, sqlite3_errmsg(*db));
		return CTL_EXIT_LOCAL;
	}
	return CTL_EXIT_OK;
}
