/*
 * config: the gateway's own YAML configuration (isgd.yaml). Relative paths
 * are resolved against the directory of the config file. See
 * docs/configuration.md for every key, its default and its bounds.
 */
#ifndef ISG_CONFIG_H
#define ISG_CONFIG_H

#include <stdbool.h>
#include <stdint.h>

#include "util/util.h"
#include "ydoc/ydoc.h"

struct isgd_config {
	char *path; /* the config file itself */

	char *listen_host; /* listen: "127.0.0.1:7443" or "[::1]:7443" */
	uint16_t listen_port;
	int listen_line, listen_col; /* where listen's value is written, for --check-config */
	uint32_t threads;            /* I/O threads; default: number of cores, 1..64 */

	char *tls_certificate; /* tls.certificate: gateway chain, PEM */
	char *tls_key;         /* tls.key: gateway private key, PEM, mode 0600 */
	char *tls_client_ca;   /* tls.client_ca: partner CA bundle, PEM */
	char *tls_crl;         /* tls.crl: optional CRL file, PEM; NULL when absent */
	bool tls_allow_tls12;  /* tls.min_version: "1.3" (default) or "1.2" */

	char *store_path;           /* store.path: SQLite file */
	int64_t undelivered_ttl_ms; /* store.undelivered_ttl: default 30d */
	int64_t sweep_interval_ms;  /* store.sweep_interval: default 60s */

	char *policy_dir; /* policy_dir */
	char *keys_dir;   /* keys_dir */

	uint64_t max_frame_bytes;         /* limits.max_frame: default 4MiB, 1KiB..64MiB */
	uint32_t max_connections;         /* limits.max_connections: default 1000 */
	uint32_t max_records_per_message; /* limits.max_records_per_message: default 10000 */
	uint32_t max_fetch_messages;      /* limits.max_fetch_messages: default 100 */
	int64_t max_wait_ms;          /* limits.max_wait: longest fetch long-poll, default 60s */
	int64_t handshake_timeout_ms; /* limits.handshake_timeout: default 10s */
	int64_t idle_timeout_ms;      /* limits.idle_timeout: default 300s */
	uint64_t conn_buffer_bytes; /* limits.connection_buffer: output queued per connection before
	                               reads stop, default 8MiB */
	uint32_t max_inflight; /* limits.max_inflight: requests per connection awaiting the store,
	                          default 64 */
	uint64_t inflight_buffer_bytes; /* limits.inflight_buffer: bytes of requests awaiting an
	                                   answer over all connections before no connection's next
	                                   frame is taken, default 256MiB */

	char *user;               /* user: drop to this user after binding; NULL = stay */
	int user_line, user_col;  /* where user's value is written, for errors about the user */
	bool key_process;         /* key_process: keys in a separate process (default true); false
	                             only to measure what that costs */
	enum log_level log_level; /* log_level: debug, info (default), warn, error */

	char *audit_origin;             /* audit.origin: checkpoint origin and signing key name,
	                                   default "isg-gateway" (set by config_load) */
	uint32_t checkpoint_every;      /* audit.checkpoint_every: default 1000, 1..1000000 */
	int64_t checkpoint_interval_ms; /* audit.checkpoint_interval: default 10s, 1s..1d */
	int64_t refusal_window_ms; /* audit.refusal_window: refused connections alike within this
	                              long are written as one entry, default 60s, 10s..1h */
};

/* Zero the struct and set every default. */
void config_init(struct isgd_config *c);
/*
 * Load and validate; every problem goes to diags with file:line:column.
 * Returns 0 or ISG_ERR_PARSE / ISG_ERR_INVALID / ISG_ERR_IO / ISG_ERR_NOMEM;
 * on failure *c holds only the defaults again. Free with config_release.
 */
int config_load(const char *path, struct isgd_config *c, struct ydoc_diags *diags);
void config_release(struct isgd_config *c);

#endif
