/*
 * WAL checkpoints off the commit path. SQLite's default has the committing
 * connection copy the WAL into the database file (and fsync it) once the
 * WAL holds 1000 pages, so every few hundred sends one waits for that copy.
 * Here the writer's connection never checkpoints by itself: after a commit
 * that leaves wal_pages or more pages in the WAL, its WAL hook wakes the
 * checkpointer thread, which copies them through a connection of its own
 * (SQLITE_CHECKPOINT_PASSIVE, which never blocks the writer). The WAL starts
 * again from its beginning at the first transaction after a checkpoint that
 * caught up. Should the checkpointer fall behind by STORE_WAL_BEHIND times
 * wal_pages, the writer checkpoints between its transactions, as SQLite
 * would by default, so the WAL stays bounded.
 */
#include <pthread.h>
#include <string.h>

#include "store/store_internal.h"
#include "util/util.h"

#define STORE_WAL_BEHIND 16

static void log_failure(sqlite3 *db, int rc, const char *who)
{
	char q[256];
	log_event(LOG_WARN, "store.wal_checkpoint_failed", "by=%s code=%d error=%s", who, rc,
	          log_quote(q, sizeof(q), sqlite3_errmsg(db)));
}

/* On the writer's thread, after every commit. */
static int wal_hook(void *arg, sqlite3 *db, const char *name, int pages)
{
	struct store *s = arg;
	if ((uint64_t)pages >= (uint64_t)s->wal_pages * STORE_WAL_BEHIND) {
		int rc = sqlite3_wal_checkpoint_v2(db, name, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
		if (rc != SQLITE_OK && rc != SQLITE_BUSY) /* busy: the checkpointer is at it */
			log_failure(db, rc, "writer");
	} else if ((uint32_t)pages >= s->wal_pages) {
		pthread_mutex_lock(&s->wal_mu);
		if (!s->wal_wanted) {
			s->wal_wanted = true;
			pthread_cond_signal(&s->wal_cv);
		}
		pthread_mutex_unlock(&s->wal_mu);
	}
	return SQLITE_OK;
}

static void *wal_main(void *arg)
{
	struct store *s = arg;
	pthread_mutex_lock(&s->wal_mu);
	for (;;) {
		while (!s->wal_wanted && !s->wal_closing)
			pthread_cond_wait(&s->wal_cv, &s->wal_mu);
		if (s->wal_closing)
			break;
		s->wal_wanted = false;
		pthread_mutex_unlock(&s->wal_mu);
		int rc = sqlite3_wal_checkpoint_v2(s->wal_db, NULL, SQLITE_CHECKPOINT_PASSIVE, NULL,
		                                   NULL);
		/* A failure (a full disk) is tried again after the next commit. */
		if (rc != SQLITE_OK && rc != SQLITE_BUSY)
			log_failure(s->wal_db, rc, "checkpointer");
		pthread_mutex_lock(&s->wal_mu);
	}
	pthread_mutex_unlock(&s->wal_mu);
	return NULL;
}

int store_wal_start(struct store *s, uint32_t wal_pages, char *err, size_t errlen)
{
	s->wal_pages = wal_pages ? wal_pages : STORE_DEFAULT_WAL_PAGES;
	if (pthread_mutex_init(&s->wal_mu, NULL) != 0 || pthread_cond_init(&s->wal_cv, NULL) != 0) {
		store_seterr(err, errlen, "store: out of memory");
		return ISG_ERR_NOMEM;
	}
	s->wal_sync = true;
	int rc = sqlite3_open_v2(s->path, &s->wal_db, SQLITE_OPEN_READWRITE, NULL);
	if (rc == SQLITE_OK)
		sqlite3_busy_timeout(s->wal_db, STORE_BUSY_TIMEOUT_MS);
	if (rc != SQLITE_OK) {
		store_seterr(err, errlen, "store '%s': cannot open for checkpoints: %s", s->path,
		             s->wal_db ? sqlite3_errmsg(s->wal_db) : sqlite3_errstr(rc));
		return ISG_ERR_STORE;
	}
	if (pthread_create(&s->wal_thread, NULL, wal_main, s) != 0) {
		store_seterr(err, errlen, "store: cannot start the checkpointer thread");
		return ISG_ERR_NOMEM;
	}
	s->wal_started = true;
	/* Replaces SQLite's own hook, and so its automatic checkpoints. */
	sqlite3_wal_hook(s->db, wal_hook, s);
	return 0;
}

void store_wal_stop(struct store *s)
{
	if (s->wal_started) {
		pthread_mutex_lock(&s->wal_mu);
		s->wal_closing = true;
		pthread_cond_signal(&s->wal_cv);
		pthread_mutex_unlock(&s->wal_mu);
		pthread_join(s->wal_thread, NULL);
		s->wal_started = false;
	}
	/* Before the writer's connection: closing the last one checkpoints the WAL. */
	if (s->wal_db) {
		sqlite3_close(s->wal_db);
		s->wal_db = NULL;
	}
	if (s->wal_sync) {
		pthread_cond_destroy(&s->wal_cv);
		pthread_mutex_destroy(&s->wal_mu);
		s->wal_sync = false;
	}
}
