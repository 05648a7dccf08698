/* Usage totals for daily limits, read through a separate read-only connection. */
#include <sqlite3.h>

#include "store/store_internal.h"
#include "util/util.h"

int store_usage_since(struct store *s, int64_t since_ms,
                      void (*cb)(void *ctx, const struct store_usage *u), void *ctx)
{
	sqlite3 *db = NULL;
	sqlite3_stmt *st = NULL;
	int err = ISG_ERR_STORE;
	if (store_db_reader(s, &db) != SQLITE_OK)
		goto out;
	static const char sql[] =
	    "SELECT sender, agreement_id, count(*), sum(record_count) "
	    "FROM messages WHERE accepted_at >= ?1 GROUP BY sender, agreement_id";
	if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK)
		goto out;
	sqlite3_bind_int64(st, 1, since_ms);
	int rc;
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		struct store_usage u = {
		    .sender = (const char *)sqlite3_column_text(st, 0),
		    .agreement_id = (const char *)sqlite3_column_text(st, 1),
		    .messages = (uint64_t)sqlite3_column_int64(st, 2),
		    .records = (uint64_t)sqlite3_column_int64(st, 3),
		};
		if (u.sender && u.agreement_id)
			cb(ctx, &u);
	}
	if (rc == SQLITE_DONE)
		err = 0;
out:
	if (err) {
		char q[256];
		log_event(LOG_ERROR, "store.usage_failed", "error=%s",
		          log_quote(q, sizeof(q), db ? sqlite3_errmsg(db) : "cannot open"));
	}
	sqlite3_finalize(st);
	sqlite3_close(db);
	return err;
}
