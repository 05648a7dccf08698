/*
 * daemon: isgd's own wiring. main.c loads the config, keys and policy,
 * starts the store and the listeners and handles signals; regime.c loads
 * the policy set and domain keys a reload swaps as one; handler.c serves
 * partner requests; quota.c counts the daily limits; refusals.c coalesces
 * refused connections; entries.c writes the audit entries' JSON; keyvers.c
 * lists the key versions a keys.loaded entry holds, from a keyring or read
 * back from the entry before a start; clock.c is the wall clock for days,
 * and its steps.
 */
#ifndef ISG_DAEMON_GATEWAY_H
#define ISG_DAEMON_GATEWAY_H

#include <pthread.h>
#include <stdatomic.h>

#include "config/config.h"
#include "keyproc/keyproc.h"
#include "keys/keys.h"
#include "net/net.h"
#include "policy/policy.h"
#include "store/store.h"

/*
 * What a reload replaces, as one: the policy set and the linkage-domain
 * keys its agreements need. A request holds a reference for its duration.
 */
struct regime {
	atomic_int refs;
	struct policy_set *policy;
	/* Names, versions and dates of the domain keys; the keys themselves are
	 * in the key process (ring), or here only when key_process is false. */
	const struct keyring *keys;
	struct keyproc_ring *ring;
	struct keyring *own_keys;
	struct pseudo_service pseudo;
};

/*
 * Who reads what regime_load reports. --check-config prints every error and
 * warning for the admin at the terminal, as isgctl policy check does. A
 * start prints its errors the same way, since they stop it, but logs the
 * warnings, which stay true of the gateway it goes on to run. A reload logs
 * both, as events.
 */
enum regime_report {
	REGIME_CHECK,  /* errors and warnings printed (file:line:col: ...) */
	REGIME_START,  /* errors printed, warnings logged */
	REGIME_RELOAD, /* errors and warnings logged */
};

/*
 * Load the policy set and the domain keys (through the key process kp, or
 * here when kp is NULL) and check that every domain an agreement names has
 * a key. Problems are reported as `report` says, and *errors counts the
 * errors. Returns NULL when anything is wrong.
 */
struct regime *regime_load(const struct isgd_config *cfg, struct keyproc *kp,
                           enum regime_report report, size_t *errors);
/*
 * The policy set alone, its problems reported and counted as regime_load
 * does: for a check whose key process did not start, so that the policy's
 * errors are not left for the next run to find.
 */
void regime_check_policy(const struct isgd_config *cfg, enum regime_report report, size_t *errors);
void regime_unref(struct regime *r);
/* At a reload, a warning in isgd's log for each agreement of `next` whose terms
 * differ from `running`'s under the same version, or whose version went down. */
void regime_warn_versions(const struct regime *running, const struct regime *next);

/*
 * quota.c: daily limits per sender and agreement, judged on the store's
 * writer as it stores a new message (store_message.admit).
 */
struct quota;
struct quota_entry;
struct quota_claim {
	struct quota_entry *entry; /* NULL: nothing admitted */
	int64_t day;
	uint32_t records;
};
/*
 * What one send asks of the limits: its agreement's, copied, since a
 * reload may free the agreement before the store comes to the send.
 */
struct quota_ask {
	char agreement_id[64];                      /* a policy id: at most 63 bytes */
	uint32_t messages_per_day, records_per_day; /* 0: no limit */
	uint32_t records;                           /* the message's */
};
struct quota *quota_new(void);
void quota_free(struct quota *q);
/* Rebuild today's counters from what the store accepted today. */
int quota_seed(struct quota *q, struct store *store, int64_t now_ms);
/* 0, or ISG_ERR_INVALID for an agreement id too long to be a policy's. */
int quota_ask_init(struct quota_ask *ask, const struct policy_agreement *a, uint32_t records);
/*
 * Count one message stamped accepted_at_ms on that UTC day (or the
 * counter's, when the stamp is from an earlier one: a day never comes
 * back), if it fits that day's limits: 0 and *claim filled; ISG_ERR_LIMIT
 * and *why filled; or ISG_ERR_NOMEM.
 */
int quota_admit(struct quota *q, const char *sender, const struct quota_ask *ask,
                int64_t accepted_at_ms, struct quota_claim *claim, struct policy_refusal *why);
/* Give back an admission whose message was not stored after all (rolled back). */
void quota_release(struct quota *q, const struct quota_claim *claim);

/*
 * refusals.c: connection refusals, coalesced so that a flood of them writes
 * a bounded number of audit entries. Keyed by the peer's address (without
 * the port; an IPv6 address's /64), the reason and the subject of a
 * certificate that verified ("*" for one that did not): the first refusal
 * of a key is written at once; those within the window after it are
 * counted, and written as one entry once the window is over. At most
 * REFUSALS_MAX_KEYS keys; past that, refusals are counted per reason under
 * address and subject "*" (REFUSALS_MAX_OVERFLOW reasons, then one bucket
 * with reason "*" too). Thread-safe.
 */
#define REFUSALS_MAX_KEYS 4096
#define REFUSALS_MAX_OVERFLOW 64
#define REFUSALS_ADDR_MAX 64
struct refusals;
struct refusal_record {
	/* repeated 0: one refusal as it happened, peer with its port. Otherwise
	 * the entry stands for `repeated` refusals, the first and last at these
	 * wall-clock times; peer is the address (an IPv6 address's /64), or "*"
	 * with subject "*". */
	const char *peer, *subject, *reason;
	uint64_t repeated;
	int64_t first_at_ms, last_at_ms; /* repeated 0: both the refusal's time */
	bool verified;                   /* repeated 0: as refusals_note had it */
};
/* Writes one entry (called with the table locked); 0, or it is counted or kept. */
typedef int (*refusals_write_fn)(void *ctx, const struct refusal_record *rec);
/* window_ms: how long after the first of a key refusals like it are counted. */
struct refusals *refusals_new(int64_t window_ms, refusals_write_fn write, void *ctx);
void refusals_free(struct refusals *r);
/*
 * One refusal: subject NULL or "" when there was no certificate; verified
 * when the certificate verified, so that its subject is the CA's word.
 */
void refusals_note(struct refusals *r, const char *peer, const char *subject, bool verified,
                   const char *reason, int64_t mono_ms, int64_t wall_ms);
/*
 * Write the counts of the windows over at mono_ms (every count when `all`)
 * and forget their keys. Returns how many counts are due and could not be
 * written: they are kept, to be tried again.
 */
size_t refusals_flush(struct refusals *r, int64_t mono_ms, bool all);
/*
 * An entry written was lost after all (its store batch failed): count what
 * rec stood for again under its key, to be written with the next flush.
 */
void refusals_restore(struct refusals *r, const struct refusal_record *rec, int64_t mono_ms);
/*
 * store_audit's callback for an entry no one waits for; ctx is its kind (a
 * string constant). A failure is logged as audit.failed: the entry is lost.
 */
void gateway_audit_done(void *kind, int err, uint64_t audit_index);

struct gateway {
	struct isgd_config cfg;
	struct quota *quota;
	struct refusals *refusals;
	struct store *store;
	struct net_server *net;
	struct keyproc *keyproc; /* NULL when key_process is false */
	bool keyproc_died;       /* it ended on its own, and that was logged */
	pthread_mutex_t regime_mu;
	struct regime *regime;     /* current; swapped on reload */
	_Atomic int64_t latest_ms; /* gateway_today_ms's */
	/* --new-store: make the store, which must not exist yet; otherwise it must. */
	enum store_create store_create;
	/* crldue.c's, on the main thread: the running CRLs' first nextUpdate. */
	struct net_crl_due crl_due;
	int crl_state;         /* the last line it gave: quiet, expiring, expired */
	int64_t crl_logged_ms; /* when, monotonic */
};

/*
 * crldue.c. A CRL near its nextUpdate (within 7 days) or past it locks its
 * CA's partners out: said at load (printed by --check-config, logged at
 * start and reload) for the TLS context tls just loaded, whose due time it
 * keeps (not for REGIME_CHECK); crl_due_watch, on the main thread's tick,
 * says it again once a day, and at once when the CRL runs out.
 */
void crl_due_loaded(struct gateway *g, SSL_CTX *tls, enum regime_report how);
void crl_due_watch(struct gateway *g);

/*
 * clock.c. The wall clock for what isgd decides by the day (an agreement
 * in force, the key versions that answer, a daily limit), never earlier
 * than it gave before: a clock set back cannot bring back a day that has
 * ended.
 */
int64_t gateway_today_ms(struct gateway *g);
/*
 * Steps of the wall clock, seen against the monotonic clock: their
 * difference moves only when the wall clock is stepped (NTP slews both
 * alike) or the machine was suspended. clock_watch_step returns how far the
 * wall clock moved beyond the monotonic one since the last call, when that
 * is a second or more either way, else 0; the first call returns 0.
 */
struct clock_watch {
	bool started;
	int64_t offset_ms; /* wall - monotonic at the last call */
};
int64_t clock_watch_step(struct clock_watch *w, int64_t wall_ms, int64_t mono_ms);

/* The current regime, referenced: release with regime_unref. */
struct regime *gateway_regime(struct gateway *g);
/* Replace the current regime (takes over the caller's reference). */
void gateway_regime_swap(struct gateway *g, struct regime *r);

/* handler.c: the net callbacks. */
struct net_handler handler_new(struct gateway *g);
/* The refusals table's writer: one connection.refused entry (ctx: the gateway). */
int handler_write_refusal(void *ctx, const struct refusal_record *rec);
/* Store notification: wake connections waiting for this recipient. */
void handler_notify(void *ctx, const char *recipient);
/* After a reload: close connections of partners the new set no longer has. */
void handler_recheck_partners(struct gateway *g);
/* After a reload installed new TLS material: close connections whose certificate
 * chain no longer verifies against it (revoked, CA gone); logs tls.rechecked when
 * every worker is done. */
void handler_recheck_certificates(struct gateway *g);
/* After a step of the wall clock: subscribers judge again which pushes expired. */
void handler_clock_stepped(struct gateway *g);

/* entries.c: audit entries as JSON text; NULL when out of memory. */
struct store_message;
char *entry_accepted(const struct policy_set *set, const struct policy_outcome *o,
                     const char *sender, const Isg__SendRequest *req, const char *subjects,
                     size_t *len);
/*
 * The subjects of a message: one request under the audit domain per
 * identifier-typed field of every record, normalised. Collected before the
 * agreement is applied, they ride in the same batch to the key process
 * (see handler.c); `answered` says whether they have their pseudonyms.
 */
struct subjects {
	struct pseudo_request *reqs;
	char (*norms)[PSEUDO_VALUE_MAX + 1];
	size_t n, cap, max; /* max: one a field of the request */
	bool answered;
};
/* None yet, for req's records; release with subjects_release. */
void subjects_init(struct subjects *s, const Isg__SendRequest *req);
/* A value policy_apply checked (pseudo_service.checked): a subject unless
 * it is a date. 0, ISG_ERR_LIMIT past one a field, or ISG_ERR_NOMEM. */
int subjects_add(struct subjects *s, enum pseudo_type type, const char *norm, size_t len);
void subjects_release(struct subjects *s);
/*
 * The subjects as a JSON array of audit-domain pseudonyms into *out,
 * asking the regime's service first if they are not answered yet. 0;
 * ISG_ERR_NOMEM; or the service's own error when the audit domain cannot
 * answer (the key process failed), which is a key failure like any other:
 * refused with subjects_refusal's keys.domain.
 */
int entry_subjects(const struct regime *rg, struct subjects *s, int64_t now_ms, char **out);
/* The refusal for an entry_subjects error other than memory, as policy_apply
 * words its own keys.domain refusals. */
void subjects_refusal(int err, const char *agreement_id, struct policy_refusal *why);

/* Client-chosen strings in entries are cut to this many bytes, so a hostile
 * request cannot bloat the log. */
#define ENTRY_STR_MAX 128
char *entry_refused(const char *policy_version, const char *sender, const Isg__SendRequest *req,
                    const struct policy_refusal *why, size_t *len);
char *entry_connection(const char *peer, const char *subject, const char *partner,
                       const char *reason, size_t *len);
/*
 * "connection.refused" standing for rec->repeated refusals of one key
 * (refusals.c) with "repeated", "first_at" and "last_at".
 */
char *entry_connection_repeated(const struct refusal_record *rec, size_t *len);
/*
 * "connection.closed": a reload cut an open connection (rule
 * "partner.removed", "partner.unrecognised" or "certificate.rejected"),
 * under policy set `set`.
 */
char *entry_connection_closed(const struct policy_set *set, const char *peer, const char *subject,
                              const char *partner, const char *rule, const char *reason,
                              size_t *len);
char *entry_policy(const struct policy_set *set, const char *dir, const char *outcome,
                   size_t errors, size_t *len);

/* keyvers.c: each linkage domain's current key version, as keys.loaded lists them. */
struct key_version {
	char name[KEYS_DOMAIN_NAME_MAX + 1];
	uint32_t version; /* 0: the domain has no current version */
};
/* Sorted by name (strcmp), each name once. */
struct key_versions {
	struct key_version *items;
	size_t n, cap;
};
void key_versions_release(struct key_versions *kv);
/* The current versions of ring's domains on day today_days: 0 or ISG_ERR_NOMEM. */
int key_versions_of_ring(const struct keyring *ring, int64_t today_days, struct key_versions *out);
/*
 * The "domains" of a keys.loaded entry's body, in the form entry_keys
 * writes: {"event":"keys.loaded","domains":{"NAME":VERSION,...},... where
 * only what "domains" holds is read. 0; ISG_ERR_PARSE with *reason (static,
 * never quoting the body) for anything else, a name twice included; or
 * ISG_ERR_NOMEM.
 */
int key_versions_parse(const char *body, size_t len, struct key_versions *out, const char **reason);
/*
 * "keys.loaded": the current version of every linkage domain key (now),
 * and against the versions before, in "created" the domains new since,
 * in "rotated" those with another version, in "removed" those gone. With
 * before NULL (not known) all three are null: nothing is claimed. *changes
 * gets the same lists for the keys.changed log line, the empty ones left
 * out ("created=a,b rotated=c removed=d"; free it), or NULL when nothing
 * changed or it is not known. Never holds key material.
 */
char *entry_keys(const struct key_versions *now, const struct key_versions *before, char **changes,
                 size_t *len);

#endif
