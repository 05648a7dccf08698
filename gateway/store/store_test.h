/*
 * Test-only introspection of the store. Not part of the interface: only
 * tests/unit/test_store*.c include this header.
 */
#ifndef ISG_STORE_TEST_H
#define ISG_STORE_TEST_H

#include <stdbool.h>
#include <stdint.h>

#include "store/store.h"

/* Data keys the store keeps for their messages' first fetch. */
size_t store_test_keys_kept(struct store *s);
/* Transactions the writer has committed since store_open. */
uint64_t store_test_commits(struct store *s);
/* Hold the writer before it takes the next batch, so jobs pile up; returns
 * once it is held (a batch or sweep under way ends first). false releases it. */
void store_test_pause(struct store *s, bool paused);
/* Make the next COMMIT fail (a commit hook turns it into a rollback). Every
 * transaction commits, a sweep's with nothing to expire too: arm it with
 * the writer paused, or the next one may be another's. */
void store_test_fail_next_commit(struct store *s);
/* Make the next n COMMITs fail as on a full disk (ISG_ERR_FULL), as when
 * the WAL cannot grow at commit; as above, any transaction's. */
void store_test_full_commits(struct store *s, int n);
/* Make the next n settings of secure_delete back to ON, after a payload's
 * delete, fail, leaving FAST in force; returns how many of the failures
 * armed before were still to come (n 0 disarms and counts them). */
int store_test_fail_secure_delete_on(struct store *s, int n);
/* Make the next ROLLBACK of a failed batch fail, leaving its transaction open. */
void store_test_fail_next_rollback(struct store *s);
/* Run SQL on the writer's connection as a job of a batch; waits for the result. */
int store_test_exec(struct store *s, const char *sql);
/* Run a query on the writer's connection as a job of a batch: *v is its
 * first column of its first row, or 0 when it has none. */
int store_test_query_int(struct store *s, const char *sql, int64_t *v);
/* The writer's audit tree, read as a job of a batch: its size and root. */
int store_test_audit_root(struct store *s, uint64_t *size, uint8_t root[32]);

/* The writer's VFS (store_vfs.c), registered for any connection to use
 * by this name; NULL if it cannot be. */
const char *store_test_vfs(void);
/* Writes that reached a WAL through it, in this process. */
uint64_t store_test_wal_writes(void);
/* Make its next n writes to a WAL fail as on a full disk, writing nothing. */
void store_test_fail_wal_writes(int n);
/* Make its next n syncs of a WAL fail with an I/O error (SQLITE_IOERR_FSYNC)
 * after what they flush is written, as a failed fsync leaves it; a held
 * batch's sync (store_options' hold_us) too. */
void store_test_fail_wal_syncs(int n);
/* Checkpoints the checkpointer thread ran that copied WAL pages into the file. */
uint64_t store_test_wal_checkpoints(struct store *s);
/* Write the WAL ahead again, as store_open does, for wal_pages from now on.
 * Call it with the writer paused (store_test_pause). */
void store_test_wal_preallocate(struct store *s, uint32_t wal_pages);

#endif
