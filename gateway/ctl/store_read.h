/*
 * isgd's store as isgctl reads it (the audit commands, store backup):
 * opened read-only, in one read transaction, so that a command sees one
 * snapshot while isgd keeps writing, never blocks isgd's writer (a WAL
 * reader does not), and never writes or creates a file beside the store.
 */
#ifndef ISG_CTL_STORE_READ_H
#define ISG_CTL_STORE_READ_H

#include <stdbool.h>

#include <sqlite3.h>

#include "config/config.h"

/*
 * Load isgd's configuration file, its diagnostics printed as
 * FILE:LINE:COL. An exit status; says why on failure. cfg is initialised
 * whatever happens: release it.
 */
int ctl_isgd_config_load(const char *path, struct isgd_config *cfg);

/*
 * Open the store at path read-only and BEGIN a read transaction: the
 * snapshot is the one of the first read after it. Links to the file are
 * followed (*real_path). While isgd runs (a -wal beside the file) the
 * connection shares its WAL; when it is stopped the file is opened
 * immutable, and with watch the file as it was is kept for
 * ctl_store_recheck. An exit status; says why on failure, naming path.
 * Whatever the status, the caller closes *db (after COMMIT) and frees
 * *real_path.
 */
int ctl_store_open(const char *path, bool watch, sqlite3 **db, char **real_path);

/*
 * Once the last read of a store opened immutable with watch is over: when
 * the file has changed since (its device, inode, size or mtime, or a -wal
 * beside it: isgd started), say that nothing read can be trusted and
 * return CTL_EXIT_LOCAL instead of CTL_EXIT_OK; otherwise status. The
 * file is forgotten, so a second call returns status.
 */
int ctl_store_recheck(int status);

#endif
