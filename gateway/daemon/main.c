/*
 * isgd: the Information Sharing Gateway daemon.
 *
 *   isgd --config FILE                 run on the existing store
 *   isgd --new-store --config FILE     run on a new store, made now (a new gateway)
 *   isgd --check-config --config FILE  check everything, print "configuration OK"
 *
 * Signals: SIGTERM/SIGINT drain and exit; SIGHUP reloads the policy set with
 * its linkage-domain keys, and the TLS files, keeping the running ones if
 * the new ones are broken (or, for the policy, cannot be put on record).
 *
 * The keys live in a child, the key process (gateway/keyproc), started
 * before anything else; with `user:` isgd binds its port as root and then
 * becomes that user before it opens the store or serves anyone.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <grp.h>
#include <limits.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/fsuid.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <openssl/ssl.h>
#include <sodium.h>

#include "daemon/gateway.h"
#include "audit/audit.h"
#include "keys/keys.h"
#include "util/util.h"

#define SHUTDOWN_GRACE_MS 5000
/* How often counted connection refusals are looked at (refusals.c). */
#define REFUSALS_TICK_MS 1000
/* The store failed (store_failed): a commit's outcome is unknown. Restart
 * isgd; docs/operations.md "Exit status". */
#define EXIT_STORE_FAILED 3
/* At shutdown, how long counts the store's full queue refused are retried. */
#define REFUSALS_FINAL_TRIES 50
#define REFUSALS_FINAL_PAUSE_MS 100

static void usage(FILE *f)
{
	fputs("usage: isgd --config FILE [--new-store] [--check-config]\n"
	      "       isgd --version\n"
	      "\n"
	      "  -c, --config FILE     the gateway's YAML configuration\n"
	      "      --new-store       make a new, empty store at store.path, which must not\n"
	      "                        exist yet: once, at a new gateway's first start (never\n"
	      "                        after losing the store: restore its backup instead)\n"
	      "  -n, --check-config    check the configuration, policy, keys, certificates and\n"
	      "                        store (as this command line would start isgd), print\n"
	      "                        \"configuration OK\" or every error, and exit\n"
	      "  -V, --version         print the version\n",
	      f);
}

/* Who isgd serves as: the configured user, or whoever started it. */
struct identity {
	uid_t uid;
	gid_t gid;
	bool drop; /* a user is configured and isgd is not it yet */
};

static int resolve_user(const struct isgd_config *cfg, struct identity *id)
{
	*id = (struct identity){.uid = geteuid(), .gid = getegid()};
	if (!cfg->user)
		return 0;
	/* At user's value, as the configuration's other errors are placed. */
	char at[PATH_MAX + 32];
	snprintf(at, sizeof(at), "%s:%d:%d", cfg->path, cfg->user_line, cfg->user_col);
	errno = 0;
	const struct passwd *pw = getpwnam(cfg->user);
	if (!pw) {
		fprintf(stderr, "%s: error: user '%s' does not exist\n", at, cfg->user);
		return ISG_ERR_INVALID;
	}
	if (pw->pw_uid == 0) {
		fprintf(stderr, "%s: error: user '%s' is root; name an unprivileged user\n", at,
		        cfg->user);
		return ISG_ERR_INVALID;
	}
	if (geteuid() != 0 && geteuid() != pw->pw_uid) {
		fprintf(stderr, "%s: error: isgd must start as root to become user '%s'\n", at,
		        cfg->user);
		return ISG_ERR_DENIED;
	}
	*id = (struct identity){.uid = pw->pw_uid, .gid = pw->pw_gid, .drop = geteuid() == 0};
	return 0;
}

/*
 * Out of reach of its own uid: no ptrace, no /proc/PID/mem, no core dump
 * (its memory holds records in clear). The kernel sets the flag back to
 * fs.suid_dumpable at every change of its uids or gids (fs ones included),
 * so it is set again after each.
 */
static int undumpable(void)
{
	if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) == 0)
		return 0;
	fprintf(stderr, "isgd: cannot make itself undumpable: %s\n", strerror(errno));
	return ISG_ERR_DENIED;
}

/*
 * For good: no way back to root, and no gaining privileges by exec, whether
 * isgd became its user here or was started as it (or as root without one).
 */
static int drop_privileges(const struct isgd_config *cfg, const struct identity *id)
{
	if (!id->drop) {
		if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0)
			return 0;
		fprintf(stderr, "isgd: cannot give up gaining privileges: %s\n", strerror(errno));
		return ISG_ERR_DENIED;
	}
	if (setgroups(1, &id->gid) != 0 || setgid(id->gid) != 0 || setuid(id->uid) != 0 ||
	    setuid(0) == 0 || prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
		fprintf(stderr, "isgd: cannot become user '%s': %s\n", cfg->user, strerror(errno));
		return ISG_ERR_DENIED;
	}
	if (undumpable() != 0)
		return ISG_ERR_DENIED;
	log_event(LOG_INFO, "isgd.privileges_dropped", "user=%s uid=%u", cfg->user,
	          (unsigned)id->uid);
	return 0;
}

/*
 * The TLS key's own words for the key files' rule: which setting names it,
 * whom it must belong to and why (user:, or the user isgd starts as), and
 * the command that fixes it.
 */
static int tls_key_secrecy(int fd, const struct isgd_config *cfg, uid_t owner, char *err,
                           size_t errlen)
{
	const char *path = cfg->tls_key;
	struct stat st;
	if (fstat(fd, &st) != 0) {
		snprintf(err, errlen, "TLS key '%s' (tls.key): cannot stat: %s", path,
		         strerror(errno));
		return ISG_ERR_IO;
	}
	if (!S_ISREG(st.st_mode)) {
		snprintf(err, errlen, "TLS key '%s' (tls.key) is not a regular file", path);
		return ISG_ERR_DENIED;
	}
	if ((st.st_mode & 077) != 0) {
		snprintf(err, errlen,
		         "TLS key '%s' (tls.key) has mode %04o: it must have no group or other "
		         "permissions (0600 or 0400): chmod 600 '%s'",
		         path, (unsigned)(st.st_mode & 07777), path);
		return ISG_ERR_DENIED;
	}
	if (st.st_uid != owner) {
		char has[96], want[96], who[64], unused[64];
		user_words((unsigned)st.st_uid, has, sizeof(has), unused, sizeof(unused));
		user_words((unsigned)owner, want, sizeof(want), who, sizeof(who));
		if (cfg->user)
			snprintf(
			    err, errlen,
			    "TLS key '%s' (tls.key) is owned by %s; with user: %s it must be owned "
			    "by %s, who reads it again at every reload: chown %s '%s'",
			    path, has, cfg->user, want, who, path);
		else
			snprintf(
			    err, errlen,
			    "TLS key '%s' (tls.key) is owned by %s; it must be owned by %s, the "
			    "user isgd starts as: chown %s '%s'",
			    path, has, want, who, path);
		return ISG_ERR_DENIED;
	}
	return 0;
}

/*
 * The TLS private key is a secret like the others: no group or other bits,
 * and owned by the user isgd serves as, who reads it again on reload.
 * Checked and then read on the one descriptor (net_tls_new), so that a file
 * swapped in between is not read unchecked.
 */
static int tls_new_checked(const struct isgd_config *cfg, uid_t owner, SSL_CTX **tls, char *err,
                           size_t errlen)
{
	/* O_NONBLOCK: a FIFO in its place must not hang start-up; the check refuses it. */
	int fd = open(cfg->tls_key, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
	if (fd < 0) {
		snprintf(err, errlen, "cannot open TLS key '%s': %s", cfg->tls_key,
		         strerror(errno));
		return ISG_ERR_IO;
	}
	int r = tls_key_secrecy(fd, cfg, owner, err, errlen);
	if (r == 0)
		r = net_tls_new(cfg, fd, tls, err, errlen);
	close(fd);
	return r;
}

/*
 * What a reload reads, read as the user who reloads. isgd reads these as
 * root at start, so a file only root can read would pass then and fail at
 * every SIGHUP. A missing file is left to the checks as root, which say so.
 */
struct user_reads {
	const char *user;
	int failed;
};

static void cannot_read(struct user_reads *u, const char *what, const char *path, int errnum)
{
	fprintf(stderr, "isgd: cannot read %s '%s' as user '%s', as every reload does: %s\n", what,
	        path, u->user, strerror(errnum));
	u->failed = 1;
}

static void try_read(struct user_reads *u, const char *what, const char *path)
{
	if (!path)
		return;
	/* O_NONBLOCK: a FIFO in a file's place must not hang the check. */
	int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
	if (fd >= 0)
		close(fd);
	else if (errno != ENOENT)
		cannot_read(u, what, path, errno);
}

/* Each file the policy loader reads, as policy_list_files gives them. */
static int try_read_listed(void *ctx, const char *rel, const char *path, int errnum)
{
	struct user_reads *u = ctx;
	if (errnum == 0)
		try_read(u, "policy file", path);
	else if (errnum != ENOENT)
		cannot_read(
		    u, strcmp(rel, POLICY_AGREEMENTS_DIR) == 0 ? "policy directory" : "policy file",
		    path, errnum);
	return 0;
}

/*
 * What the policy loader opens, listed by the loader's own code: a
 * directory or a FIFO named like an agreement is not read, so not asked for.
 */
static void try_read_policy(struct user_reads *u, const char *dir)
{
	char path[PATH_MAX];
	/* "dir/." with O_PATH: whether the user may search it (access() would ask as root) */
	snprintf(path, sizeof(path), "%s/.", dir);
	int fd = open(path, O_PATH | O_CLOEXEC);
	if (fd < 0) {
		if (errno != ENOENT)
			cannot_read(u, "policy directory", dir, errno);
		return;
	}
	close(fd);
	if (policy_list_files(dir, try_read_listed, u) != 0) {
		fprintf(stderr, "isgd: out of memory listing the policy directory '%s'\n", dir);
		u->failed = 1;
	}
}

/*
 * Without a key process, isgd loads the domain keys itself: as root at
 * start, as the user at every reload. A key file must be owned by whoever
 * loads it, with no group or other access, so no file passes both, and
 * every reload would fail on them. Refused at start instead; the rule on
 * key files stays as it is. With a key process, the key process, which
 * keeps root's uid, loads them every time.
 */
static int domain_keys_unreadable(const struct isgd_config *cfg)
{
	if (cfg->key_process)
		return 0;
	fprintf(stderr,
	        "isgd: cannot load the linkage-domain keys in '%s/%s' as user '%s', as every "
	        "reload does with key_process: false: a key file must be owned by the user that "
	        "loads it, and the start loads them as root; keep key_process on (the default), "
	        "or start isgd as user '%s'\n",
	        cfg->keys_dir, KEYS_DOMAINS_DIR, cfg->user, cfg->user);
	return 1;
}

/* Whether the user in force for the file system may access path (faccessat
 * with AT_EACCESS asks with the file system ids): 0, or the errno. */
static int fs_access(const char *path, int mode)
{
	return faccessat(AT_FDCWD, path, mode, AT_EACCESS) == 0 ? 0 : errno;
}

static void store_dir_of(const char *path, char *dir, size_t size)
{
	const char *slash = strrchr(path, '/');
	if (!slash)
		snprintf(dir, size, ".");
	else if (slash == path)
		snprintf(dir, size, "/");
	else
		snprintf(dir, size, "%.*s", (int)(slash - path), path);
}

/* The store's directory: there (for --new-store), and writable by the user,
 * as SQLite makes the -wal and -shm files there. */
static int check_store_dir(const char *path, const char *user)
{
	char dir[PATH_MAX];
	store_dir_of(path, dir, sizeof(dir));
	int e = fs_access(dir, W_OK | X_OK);
	if (e == ENOENT) {
		fprintf(stderr,
		        "isgd: the store's directory '%s' does not exist; make it, owned by user "
		        "'%s', who opens the store: install -d -o %s -m 700 '%s'\n",
		        dir, user, user, dir);
		return ISG_ERR_NOT_FOUND;
	}
	if (e != 0) {
		fprintf(stderr,
		        "isgd: cannot write in the store's directory '%s' as user '%s', who opens "
		        "the store and makes its '-wal' and '-shm' files there: %s; fix: chown %s "
		        "'%s' && chmod 700 '%s'\n",
		        dir, user, strerror(e), user, dir, dir);
		return ISG_ERR_DENIED;
	}
	return 0;
}

/* The store file, and the -wal and -shm files beside it if there are any:
 * readable and writable by the user. */
static int check_store_files(const char *path, const char *user)
{
	static const char *const suffixes[] = {"", "-wal", "-shm"};
	struct stat st;
	int failed = 0;
	for (size_t i = 0; i < ARRAY_LEN(suffixes); i++) {
		char file[PATH_MAX + 8];
		snprintf(file, sizeof(file), "%s%s", path, suffixes[i]);
		if (i > 0 && lstat(file, &st) != 0)
			continue; /* none there: SQLite makes it */
		int e = fs_access(file, R_OK | W_OK);
		if (e == 0)
			continue;
		fprintf(stderr,
		        "isgd: cannot read and write store file '%s' as user '%s', who opens the "
		        "store: %s; fix: chown %s '%s' && chmod 600 '%s'\n",
		        file, user, strerror(e), user, file, file);
		failed = 1;
	}
	return failed ? ISG_ERR_DENIED : 0;
}

/*
 * The store as the user who will open it (user:, or whoever starts isgd):
 * there, or not, as --new-store wants (store_check_file says what to do),
 * then the directory and the files SQLite opens, each problem with the
 * command that fixes it. Looking only, with the file system ids in force:
 * check_user_reads sets the user's.
 */
static int check_store(const struct isgd_config *cfg, enum store_create create, const char *user)
{
	char err[1024];
	const char *path = cfg->store_path;
	int r = store_check_file(path, create, err, sizeof(err));
	if (r == ISG_ERR_DENIED) { /* stat: a directory on the way refuses the user */
		fprintf(stderr,
		        "isgd: cannot reach store '%s' as user '%s', who opens it: %s; a directory "
		        "on its path does not let that user search it (namei -l '%s' shows which); "
		        "fix: chown %s the store's own directory, or chmod o+x one above it\n",
		        path, user, strerror(EACCES), path, user);
		return r;
	}
	if (r != 0) {
		fprintf(stderr, "isgd: %s\n", err);
		return r;
	}
	r = check_store_dir(path, user);
	if (r == 0 && create == STORE_CREATE_NEVER)
		r = check_store_files(path, user);
	return r;
}

/*
 * As the user, for the file system only (setfsuid, setfsgid, and the one
 * group drop_privileges leaves it), so modes, ACLs and security modules
 * answer as they will at reload; then root's own ids again, as isgd still
 * has work to do as root. In this process, not a child: a forked child's
 * exit would be a second process for valgrind and its leak check. isgd is
 * single-threaded here, and setfsuid is per thread. Only when isgd is to
 * become a user: otherwise start and reload read as the same one.
 */
static int check_user_reads(const struct isgd_config *cfg, const struct identity *id,
                            enum store_create create)
{
	if (!id->drop)
		return 0;
	struct user_reads u = {.user = cfg->user, .failed = domain_keys_unreadable(cfg)};
	int n = getgroups(0, NULL);
	gid_t *groups = n > 0 ? calloc((size_t)n, sizeof(*groups)) : NULL;
	if (n < 0 || (n > 0 && (!groups || getgroups(n, groups) != n)) ||
	    setgroups(1, &id->gid) != 0) {
		fprintf(stderr, "isgd: cannot check files as user '%s': %s\n", cfg->user,
		        strerror(errno));
		free(groups);
		return ISG_ERR_IO;
	}
	setfsgid(id->gid);
	setfsuid(id->uid);
	/* setfsuid says nothing of failure: ask what is in force */
	if ((uid_t)setfsuid((uid_t)-1) != id->uid || (gid_t)setfsgid((gid_t)-1) != id->gid) {
		fprintf(stderr, "isgd: cannot check files as user '%s'\n", cfg->user);
		u.failed = 1;
	} else {
		try_read_policy(&u, cfg->policy_dir);
		try_read(&u, "TLS certificate", cfg->tls_certificate);
		try_read(&u, "TLS key", cfg->tls_key);
		try_read(&u, "partner CA bundle", cfg->tls_client_ca);
		try_read(&u, "CRL", cfg->tls_crl);
		if (check_store(cfg, create, cfg->user) != 0)
			u.failed = 1;
	}
	setfsuid(geteuid());
	setfsgid(getegid());
	int back = setgroups((size_t)n, groups);
	free(groups);
	if (back != 0 || (uid_t)setfsuid((uid_t)-1) != geteuid()) {
		fprintf(stderr, "isgd: cannot take back its own ids after checking files as '%s'\n",
		        cfg->user);
		return ISG_ERR_DENIED;
	}
	if (undumpable() != 0)
		return ISG_ERR_DENIED;
	return u.failed ? ISG_ERR_DENIED : 0;
}

/*
 * The keys the store needs when there is no key process: it keeps its own
 * copy of the storage key and borrows the signer until store_close.
 */
struct secrets {
	uint8_t *storage_key;
	struct audit_signer *signer;
};

static void secrets_release(struct secrets *s)
{
	keys_free(s->storage_key);
	audit_signer_free(s->signer);
	memset(s, 0, sizeof(*s));
}

static int load_secrets(const struct isgd_config *cfg, struct secrets *s)
{
	char err[512];
	int failed = 0;
	if (keys_load_storage(cfg->keys_dir, &s->storage_key, err, sizeof(err)) != 0) {
		fprintf(stderr, "isgd: %s\n", err);
		failed = 1;
	}
	uint8_t *seed = NULL;
	if (keys_load_audit_signing(cfg->keys_dir, &seed, err, sizeof(err)) != 0) {
		fprintf(stderr, "isgd: %s\n", err);
		failed = 1;
	} else if (audit_signer_new(cfg->audit_origin, seed, &s->signer) != 0) {
		fprintf(stderr, "isgd: cannot make the audit signing key for origin '%s'\n",
		        cfg->audit_origin);
		failed = 1;
	}
	keys_free(seed);
	return failed ? ISG_ERR_INVALID : 0;
}

/*
 * Everything --check-config checks, and what a start needs before it
 * listens; how says who reads the policy's problems (REGIME_CHECK or
 * REGIME_START).
 */
static int check_all(struct gateway *g, const struct identity *id, enum regime_report how,
                     struct regime **regime, struct secrets *sec, SSL_CTX **tls)
{
	const struct isgd_config *cfg = &g->cfg;
	char err[512];
	int failed = 0;
	/* As the start will look it up, named where it is written; the file
	 * only says it is an address or a name. */
	if (net_listen_check(cfg->listen_host, cfg->listen_port, err, sizeof(err)) != 0) {
		fprintf(stderr, "%s:%d:%d: error: %s\n", cfg->path, cfg->listen_line,
		        cfg->listen_col, err);
		failed = 1;
	}
	if (cfg->key_process) {
		struct keyproc_options ko = {.keys_dir = cfg->keys_dir,
		                             .audit_origin = cfg->audit_origin,
		                             .channels = cfg->threads + 2};
		if (keyproc_start(&ko, &g->keyproc, err, sizeof(err)) != 0) {
			fprintf(stderr, "isgd: %s\n", err);
			failed = 1;
		}
	} else if (load_secrets(cfg, sec) != 0) {
		failed = 1;
	}
	size_t errors;
	if (cfg->key_process && !g->keyproc) /* no domain keys to check the policy against */
		regime_check_policy(cfg, how, &errors);
	else if ((*regime = regime_load(cfg, g->keyproc, how, &errors)) == NULL)
		failed = 1;
	if (tls_new_checked(cfg, id->uid, tls, err, sizeof(err)) != 0) {
		fprintf(stderr, "isgd: %s\n", err);
		failed = 1;
	} else {
		crl_due_loaded(g, *tls, how);
	}
	/* The store as the user who opens it, after binding: checked by
	 * check_user_reads when isgd is to become user:, else as isgd is. */
	if (check_user_reads(cfg, id, g->store_create) != 0)
		failed = 1;
	if (!id->drop) {
		char who[64], unused[96];
		user_words((unsigned)geteuid(), unused, sizeof(unused), who, sizeof(who));
		if (check_store(cfg, g->store_create, who) != 0)
			failed = 1;
	}
	return failed ? ISG_ERR_INVALID : 0;
}

/*
 * Hand one entry (NULL: out of memory) to the store. With committed, wait
 * for its commit (store_audit_wait): a reload uses its new policy set only
 * once the entries that record it are on disk.
 */
static int audit_write(struct gateway *g, const char *kind, const char *entry, size_t len,
                       int *committed)
{
	if (!entry)
		return ISG_ERR_NOMEM;
	if (committed)
		return store_audit_wait(g->store, kind, entry, len, committed);
	return store_audit(g->store, kind, entry, len, gateway_audit_done, (void *)kind);
}

/* A policy.loaded or policy.refused entry: 0 when handed over (and committed as audit_write). */
static int audit_policy(struct gateway *g, const struct policy_set *set, const char *outcome,
                        size_t errors, int *committed)
{
	size_t len = 0;
	char *entry = entry_policy(set, g->cfg.policy_dir, outcome, errors, &len);
	int err = audit_write(g, outcome[0] == 'l' ? "policy.loaded" : "policy.refused", entry, len,
	                      committed);
	free(entry);
	if (err != 0)
		log_event(LOG_ERROR, "audit.failed", "kind=policy.%s", outcome);
	return err;
}

/*
 * Record which key versions are in use, and which changed since the
 * versions before (NULL: not known); *changes as entry_keys gives it, for
 * log_keys_changed. 0 when handed over (and committed as audit_write).
 */
static int audit_keys(struct gateway *g, const struct keyring *now,
                      const struct key_versions *before, int *committed, char **changes)
{
	size_t len = 0;
	char *entry = NULL;
	struct key_versions cur;
	*changes = NULL;
	if (key_versions_of_ring(now, date_days_of_ms(gateway_today_ms(g)), &cur) == 0)
		entry = entry_keys(&cur, before, changes, &len);
	int err = audit_write(g, "keys.loaded", entry, len, committed);
	free(entry);
	key_versions_release(&cur);
	if (err != 0)
		log_event(LOG_ERROR, "audit.failed", "kind=keys.loaded");
	return err;
}

/* Which linkage domains a start or reload created, rotated or removed (as its keys.loaded entry
 * lists them); nothing when none did. Frees changes. */
static void log_keys_changed(char *changes)
{
	if (changes)
		log_event(LOG_INFO, "keys.changed", "%s audit=keys.loaded", changes);
	free(changes);
}

/* No keys.loaded entry in the log: 0 when the log is new, else why that cannot be. */
static int new_log(struct gateway *g, const char **reason)
{
	uint64_t seq = 0;
	int rc = store_audit_newest(g->store, NULL, &seq, NULL, NULL);
	if (rc == ISG_ERR_NOT_FOUND)
		return 0;
	*reason = rc == ISG_ERR_STORE || rc == ISG_ERR_NOMEM
	              ? "cannot read the audit log"
	              : "the audit log has entries but no keys.loaded entry";
	return rc ? rc : ISG_ERR_NOT_FOUND;
}

/*
 * The key versions before a start: those of the newest keys.loaded entry
 * in the log, which the last start or reload wrote, so that a start
 * records what changed while isgd was stopped as a reload would. A new log
 * has none: nothing was in use before, so every domain is new. Read before
 * this start writes an entry (its first sweep can only add to a log that
 * has messages). False, and logged, when it cannot be said.
 */
static bool keys_before_start(struct gateway *g, struct key_versions *before)
{
	uint64_t seq = 0;
	char *body = NULL;
	size_t len = 0;
	const char *reason = "cannot read the audit log";
	*before = (struct key_versions){0};
	int rc = store_audit_newest(g->store, "keys.loaded", &seq, &body, &len);
	if (rc == 0)
		rc = key_versions_parse(body, len, before, &reason);
	else if (rc == ISG_ERR_NOT_FOUND)
		rc = new_log(g, &reason);
	else if (rc == ISG_ERR_CORRUPT)
		reason = "an entry whose leaf cannot be read or disagrees with its kind column";
	free(body);
	if (rc == 0)
		return true;
	char q[160], prev[24] = "none";
	if (seq > 0)
		snprintf(prev, sizeof(prev), "%llu", (unsigned long long)seq);
	log_event(LOG_WARN, "keys.compare_failed",
	          "previous=%s reason=%s action=\"this start's keys.loaded entry says null for "
	          "created, rotated and removed\"",
	          prev, log_quote(q, sizeof(q), reason));
	return false;
}

/*
 * A reload's policy.loaded and keys.loaded entries, committed: 0, or the
 * store's error when either was not. The new set is used only once both
 * are on disk, so that every entry written under it names a policy set the
 * log records. The keys.loaded entry is written only once the policy.loaded
 * one is committed: it must never stand in the log for a refused reload,
 * since a start compares the keys with the newest one.
 */
static int audit_reload(struct gateway *g, const struct regime *r, char **changes)
{
	struct regime *old = gateway_regime(g);
	struct key_versions before;
	bool known =
	    key_versions_of_ring(old->keys, date_days_of_ms(gateway_today_ms(g)), &before) == 0;
	regime_unref(old);
	if (!known) /* only out of memory: say so, as a start does */
		log_event(LOG_WARN, "keys.compare_failed",
		          "previous=running reason=\"out of memory\" action=\"this reload's "
		          "keys.loaded entry says null for created, rotated and removed\"");
	int committed = 0;
	int err = audit_policy(g, r->policy, "loaded", 0, &committed);
	if (err == 0 && committed == 0)
		err = audit_keys(g, r->keys, known ? &before : NULL, &committed, changes);
	key_versions_release(&before);
	return err ? err : committed;
}

/* A refused reload's entry, committed before its log line, so that whoever reads
 * the line finds the entry. */
static void audit_refused(struct gateway *g, size_t errors)
{
	int committed = 0;
	char q[64];
	if (audit_policy(g, NULL, "refused", errors, &committed) == 0 && committed != 0)
		log_event(LOG_ERROR, "audit.failed", "kind=policy.refused error=%s",
		          log_quote(q, sizeof(q), isg_strerror(committed)));
}

static void reload(struct gateway *g)
{
	char qp[PATH_MAX + 8];
	log_event(LOG_INFO, "reload.start", "policy_dir=%s",
	          log_quote(qp, sizeof(qp), g->cfg.policy_dir));
	size_t errors;
	char *changes = NULL;
	struct regime *r = regime_load(&g->cfg, g->keyproc, REGIME_RELOAD, &errors);
	int rc = r ? audit_reload(g, r, &changes) : 0;
	if (r && rc == 0) {
		const struct policy_set *set = r->policy;
		struct regime *running = gateway_regime(g);
		regime_warn_versions(running, r);
		regime_unref(running);
		gateway_regime_swap(g, r); /* r stays referenced by the gateway */
		/* Logged after the swap: whoever waits for this line gets the new set. */
		log_event(LOG_INFO, "policy.loaded", "version=%s partners=%zu agreements=%zu",
		          set->version, set->n_partners, set->n_agreements);
		log_keys_changed(changes);
		changes = NULL;
		handler_recheck_partners(g);
	} else if (r) {
		char q[64];
		regime_unref(r);
		audit_refused(g, 0);
		log_event(LOG_ERROR, "policy.refused",
		          "reason=\"the audit log did not record the new policy set and keys\" "
		          "error=%s action=\"kept the running policy set and keys\"",
		          log_quote(q, sizeof(q), isg_strerror(rc)));
	} else {
		audit_refused(g, errors);
		log_event(LOG_ERROR, "policy.refused",
		          "action=\"kept the running policy set and keys\"");
	}
	free(changes); /* a refused reload changed no keys */

	char err[512];
	SSL_CTX *tls = NULL;
	if (tls_new_checked(&g->cfg, geteuid(), &tls, err, sizeof(err)) == 0) {
		crl_due_loaded(g, tls, REGIME_RELOAD); /* before the workers share its store */
		net_server_set_tls(g->net, tls);
		SSL_CTX_free(tls);
		log_event(LOG_INFO, "tls.reloaded", "certificate=%s",
		          log_quote(qp, sizeof(qp), g->cfg.tls_certificate));
		/* New CAs or CRLs judge the open connections too: a revoked
		 * certificate's subscription must not outlive the revocation. */
		handler_recheck_certificates(g);
	} else {
		char q[600];
		log_event(LOG_ERROR, "tls.reload_failed",
		          "reason=%s action=\"kept the running certificates\"",
		          log_quote(q, sizeof(q), err));
	}
}

/*
 * One line for the key process's end, with what an operator needs to tell
 * a kill from a crash or a failure: its pid and its exit status or signal.
 * status is a wait status, or -1 when the key process could not be reaped.
 */
static void log_keyproc_exit(pid_t pid, int status, const char *reason)
{
	char how[48], q[64] = "";
	if (status == -1)
		snprintf(how, sizeof(how), "status=unknown");
	else if (WIFSIGNALED(status) && sigabbrev_np(WTERMSIG(status)))
		snprintf(how, sizeof(how), "signal=%s", sigabbrev_np(WTERMSIG(status)));
	else if (WIFSIGNALED(status))
		snprintf(how, sizeof(how), "signal=%d", WTERMSIG(status));
	else
		snprintf(how, sizeof(how), "status=%d", WEXITSTATUS(status));
	if (reason)
		snprintf(q, sizeof(q), " reason=\"%s\"", reason);
	log_event(LOG_ERROR, "keyproc.exited", "pid=%d %s%s", (int)pid, how, q);
}

/*
 * True when the key process has ended before keyproc_stop asked it to:
 * whatever its status, it ends only when its channels are gone, and isgd
 * cannot pseudonymise, seal or sign without them. Logged once, the first
 * time it is seen, however often isgd asks afterwards.
 */
static bool keyproc_failed(struct gateway *g)
{
	int status;
	if (g->keyproc_died)
		return true;
	if (!g->keyproc || !keyproc_exited(g->keyproc, &status))
		return false;
	log_keyproc_exit(keyproc_pid(g->keyproc), status, NULL);
	g->keyproc_died = true;
	return true;
}

/*
 * A step of the wall clock changes the audit entries' times (a step back
 * makes them go back) and when undelivered messages expire: the log says
 * when and by how much, for the admin and the IG officer, and subscribers
 * whose window waits for a push to expire judge again.
 */
static void watch_clock(struct gateway *g, struct clock_watch *w)
{
	int64_t step = clock_watch_step(w, time_now_ms(), time_mono_ms());
	if (step == 0)
		return;
	log_event(LOG_WARN, "clock.stepped", "by_ms=%lld", (long long)step);
	handler_clock_stepped(g);
	/* The entries from before a step forward look older than they are: cover
	 * them now, not after audit.checkpoint_interval, so verify's grace holds. */
	if (step > 0)
		store_checkpoint_soon(g->store);
}

/*
 * Signals are taken synchronously by the main thread; workers never see
 * them. Between them, every REFUSALS_TICK_MS, it writes the counts of
 * refused connections whose window is over and looks for a step of the
 * wall clock. Returns nonzero when isgd must stop because the key process
 * died: nothing can be pseudonymised, sealed or signed without it; or
 * (ISG_ERR_UNKNOWN) because the store failed, within a tick of it.
 */
static int serve(struct gateway *g, const sigset_t *sigs)
{
	const struct timespec tick = {.tv_sec = REFUSALS_TICK_MS / 1000,
	                              .tv_nsec = REFUSALS_TICK_MS % 1000 * 1000000L};
	struct clock_watch clock = {0};
	watch_clock(g, &clock);
	for (;;) {
		int sig = sigtimedwait(sigs, NULL, &tick);
		/* Its file deleted or replaced while idle: logged as store.unlinked. */
		store_watch(g->store);
		if (store_failed(g->store)) { /* logged as store.failed or store.unlinked */
			log_event(LOG_ERROR, "shutdown.start", "reason=\"the store failed\"");
			return ISG_ERR_UNKNOWN;
		}
		refusals_flush(g->refusals, time_mono_ms(), false);
		watch_clock(g, &clock);
		crl_due_watch(g);
		if (sig < 0)
			continue; /* the tick (EAGAIN) or EINTR */
		if (sig == SIGCHLD) {
			if (!keyproc_failed(g))
				continue;
			log_event(LOG_ERROR, "shutdown.start", "reason=\"the key process died\"");
			return ISG_ERR_IO;
		}
		if (sig == SIGHUP) {
			reload(g);
			continue;
		}
		log_event(LOG_INFO, "shutdown.start", "signal=%s", sig == SIGTERM ? "TERM" : "INT");
		return 0;
	}
}

/*
 * At shutdown, before the store closes: every refusal still counted is
 * written. The store's queue may be full of the last requests' work; it
 * drains, so a count it refused is tried again for a while. What is left
 * is told once, by run_end.
 */
static void flush_refusals(struct gateway *g)
{
	size_t kept = refusals_flush(g->refusals, time_mono_ms(), true);
	/* A failed store refuses everything: no use waiting for it. */
	for (int i = 0; kept > 0 && i < REFUSALS_FINAL_TRIES && !store_failed(g->store); i++) {
		struct timespec pause = {.tv_nsec = REFUSALS_FINAL_PAUSE_MS * 1000000L};
		nanosleep(&pause, NULL);
		kept = refusals_flush(g->refusals, time_mono_ms(), true);
	}
}

/*
 * What run set up, in order: the store closes after the workers, so their
 * last requests are stored, and before net_server_free, which cleans up
 * what the store's last commits posted to the stopped workers. True when
 * the store failed, also in its last commits (EXIT_STORE_FAILED).
 */
static bool run_end(struct gateway *g)
{
	bool failed = store_close(g->store);
	g->store = NULL;
	/* Counts whose entries the store's last batches lost (refusals_restore). */
	size_t kept = g->refusals ? refusals_flush(g->refusals, time_mono_ms(), true) : 0;
	if (kept > 0)
		log_event(LOG_ERROR, "audit.failed", "kind=connection.refused counts=%zu", kept);
	net_server_free(g->net);
	quota_free(g->quota);
	refusals_free(g->refusals);
	regime_unref(g->regime);
	return failed;
}

static int run(struct gateway *g, const struct identity *id, struct regime *regime,
               struct secrets *sec, SSL_CTX *tls, const sigset_t *sigs)
{
	char err[512];
	struct net_options no = {
	    .host = g->cfg.listen_host,
	    .port = g->cfg.listen_port,
	    .threads = g->cfg.threads,
	    .max_frame = g->cfg.max_frame_bytes,
	    .max_connections = g->cfg.max_connections,
	    .handshake_timeout_ms = g->cfg.handshake_timeout_ms,
	    .idle_timeout_ms = g->cfg.idle_timeout_ms,
	    .conn_buffer_bytes = g->cfg.conn_buffer_bytes,
	    .max_inflight = g->cfg.max_inflight,
	    .inflight_buffer = g->cfg.inflight_buffer_bytes,
	};
	struct net_handler h = handler_new(g);
	int r = net_server_new(&no, tls, &h, &g->net, err, sizeof(err));
	if (r != 0) {
		fprintf(stderr, "isgd: %s\n", err);
		regime_unref(regime);
		return r;
	}
	/* Bound: from here on isgd needs no privilege. The store is opened as the user. */
	if ((r = drop_privileges(&g->cfg, id)) != 0) {
		net_server_free(g->net);
		regime_unref(regime);
		return r;
	}
	struct store_sealer sealer;
	struct store_witness witness;
	struct store_options so = {.path = g->cfg.store_path,
	                           .create = g->store_create,
	                           .storage_key = sec->storage_key,
	                           .sweep_interval_ms = g->cfg.sweep_interval_ms,
	                           .signer = sec->signer,
	                           .checkpoint_every = g->cfg.checkpoint_every,
	                           .checkpoint_interval_ms = g->cfg.checkpoint_interval_ms,
	                           /* a delivery or an ack waits at most 1 ms for a send's sync */
	                           .hold_us = 1000};
	if (g->keyproc) {
		sealer = keyproc_sealer(g->keyproc);
		so.sealer = &sealer;
		so.signer = keyproc_signer(g->keyproc);
		/* Started here, before any partner's frame: see docs/security.md. */
		witness = keyproc_witness(g->keyproc);
		so.witness = &witness;
	}
	r = store_open(&so, &g->store, err, sizeof(err));
	keys_free(sec->storage_key); /* the store keeps its own guarded copy */
	sec->storage_key = NULL;
	if (r != 0) {
		fprintf(stderr, "isgd: %s\n", err);
		net_server_free(g->net);
		regime_unref(regime);
		return r;
	}
	g->regime = regime;
	g->quota = quota_new();
	g->refusals = refusals_new(g->cfg.refusal_window_ms, handler_write_refusal, g);
	r = !g->quota || !g->refusals ? ISG_ERR_NOMEM
	                              : quota_seed(g->quota, g->store, time_now_ms());
	if (r != 0) {
		fputs(r == ISG_ERR_NOMEM
		          ? "isgd: out of memory\n"
		          : "isgd: cannot read today's usage from the store for the daily limits\n",
		      stderr);
		run_end(g);
		return r;
	}
	store_set_notify(g->store, handler_notify, g);
	struct key_versions before;
	bool known = keys_before_start(g, &before);
	char *changes = NULL;
	/* Committed before the first partner is served, as at a reload: every
	 * entry written under this policy set names one the log records. */
	int committed = 0;
	r = audit_policy(g, regime->policy, "loaded", 0, &committed);
	if (r == 0 && committed == 0)
		r = audit_keys(g, regime->keys, known ? &before : NULL, &committed, &changes);
	key_versions_release(&before);
	if (r == 0 && committed != 0)
		r = committed;
	if (r != 0) {
		free(changes);
		fprintf(stderr, "isgd: the audit log did not record the policy set and keys: %s\n",
		        isg_strerror(r));
		run_end(g);
		return r;
	}
	log_keys_changed(changes);

	net_server_run(g->net);
	bool v6 = strchr(g->cfg.listen_host, ':') != NULL; /* written as listen: takes it */
	log_event(LOG_INFO, "isgd.started",
	          "listen=%s%s%s:%u threads=%u policy_version=%s pid=%d key_process=%d",
	          v6 ? "[" : "", g->cfg.listen_host, v6 ? "]" : "", net_server_port(g->net),
	          g->cfg.threads, regime->policy->version, (int)getpid(),
	          g->keyproc ? (int)keyproc_pid(g->keyproc) : 0);
	r = serve(g, sigs);
	net_server_stop(g->net, SHUTDOWN_GRACE_MS);
	flush_refusals(g); /* the workers, which count them, are gone */
	if (run_end(g) && r == 0)
		r = ISG_ERR_UNKNOWN; /* in the shutdown's last commits; logged as store.failed */
	log_event(LOG_INFO, "isgd.stopped", "pid=%d", (int)getpid());
	return r;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"config", required_argument, NULL, 'c'},
	    {"check-config", no_argument, NULL, 'n'},
	    {"new-store", no_argument, NULL, 'N'}, /* long only: not typed by accident */
	    {"version", no_argument, NULL, 'V'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	const char *config = NULL;
	bool check_only = false;
	enum store_create store_create = STORE_CREATE_NEVER;
	int opt;
	while ((opt = getopt_long(argc, argv, "c:nVh", opts, NULL)) != -1) {
		switch (opt) {
		case 'c':
			config = optarg;
			break;
		case 'n':
			check_only = true;
			break;
		case 'N':
			store_create = STORE_CREATE_ONLY;
			break;
		case 'V':
			puts("isgd " ISG_VERSION);
			return 0;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (!config || optind != argc) {
		usage(stderr);
		return 2;
	}
	if (sodium_init() < 0) {
		fputs("isgd: cannot initialise libsodium\n", stderr);
		return 1;
	}
	/* Started as a non-root user without user:, the key process has that uid
	 * too, and one taken over would otherwise write into isgd and have its
	 * network. */
	if (undumpable() != 0)
		return 1;
	signal(SIGPIPE, SIG_IGN);
	/* Blocked before any thread starts, so every thread inherits the mask and only
	 * the main thread's sigwait ever takes these signals. */
	sigset_t sigs;
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGTERM);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGHUP);
	sigaddset(&sigs, SIGCHLD);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);

	struct gateway g = {.store_create = store_create};
	pthread_mutex_init(&g.regime_mu, NULL);
	struct ydoc_diags d;
	ydoc_diags_init(&d);
	config_init(&g.cfg);
	int r = config_load(config, &g.cfg, &d);
	ydoc_diags_print(&d, stderr);
	ydoc_diags_release(&d);
	if (r != 0) {
		config_release(&g.cfg);
		return 1;
	}
	log_set_level(g.cfg.log_level);

	struct identity id;
	struct regime *regime = NULL;
	struct secrets sec = {0};
	SSL_CTX *tls = NULL;
	r = resolve_user(&g.cfg, &id);
	if (r == 0)
		r = check_all(&g, &id, check_only ? REGIME_CHECK : REGIME_START, &regime, &sec,
		              &tls);
	if (r == 0 && !check_only) {
		r = run(&g, &id, regime, &sec, tls, &sigs); /* takes the regime */
	} else {
		if (r == 0)
			puts("configuration OK");
		regime_unref(regime);
	}
	secrets_release(&sec); /* after run: the store borrowed the signer until it closed */
	SSL_CTX_free(tls);
	/* Last: the regimes and the store used it until now. */
	bool died = keyproc_failed(&g);
	pid_t kp_pid = g.keyproc ? keyproc_pid(g.keyproc) : 0;
	int kp_status;
	if (!keyproc_stop(g.keyproc, &kp_status) || died) {
		if (!died)
			log_keyproc_exit(kp_pid, kp_status, "failed at stop");
		r = r ? r : ISG_ERR_IO;
	}
	config_release(&g.cfg);
	pthread_mutex_destroy(&g.regime_mu);
	if (r == ISG_ERR_UNKNOWN)
		return EXIT_STORE_FAILED;
	return r == 0 ? 0 : 1;
}
