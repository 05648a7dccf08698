/* The policy set and the domain keys it needs, loaded, checked and swapped together. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/gateway.h"
#include "util/util.h"

/* An error: a line of isgd's log at a reload, a line for the admin otherwise. */
static void report(enum regime_report how, const char *event, const char *msg)
{
	char q[PATH_MAX + 800];
	if (how == REGIME_RELOAD)
		log_event(LOG_ERROR, event, "message=%s", log_quote(q, sizeof(q), msg));
	else
		fprintf(stderr, "isgd: %s\n", msg);
}

/*
 * An error at a place in a policy file (file NULL: none known). At start
 * and --check-config, printed as the policy loader's errors are
 * (FILE:LINE:COL: error: ...); at a reload, logged with the place in
 * fields of its own, as policy.diagnostic has it.
 */
static void report_at(enum regime_report how, const char *event, const char *file, int line,
                      int col, const char *msg)
{
	if (!file) {
		report(how, event, msg);
	} else if (how == REGIME_RELOAD) {
		char qf[PATH_MAX + 8], qm[2 * PATH_MAX + 800];
		log_event(LOG_ERROR, event, "file=%s line=%d col=%d message=%s",
		          log_quote(qf, sizeof(qf), file), line, col,
		          log_quote(qm, sizeof(qm), msg));
	} else {
		struct ydoc_diag g = {
		    .file = (char *)file, .line = line, .col = col, .message = (char *)msg};
		ydoc_diag_print(&g, stderr);
	}
}

/* One policy problem as a policy.diagnostic event, its place in fields of its own. */
static void log_diagnostic(const struct ydoc_diag *g)
{
	char qf[PATH_MAX + 8], qm[600];
	log_event(g->warning ? LOG_WARN : LOG_ERROR, "policy.diagnostic",
	          "file=%s line=%d col=%d message=%s",
	          log_quote(qf, sizeof(qf), g->file ? g->file : ""), g->line, g->col,
	          log_quote(qm, sizeof(qm), g->message));
}

/* The policy's problems, each where `how` sends it (see enum regime_report). */
static void report_diagnostics(enum regime_report how, const struct ydoc_diags *d)
{
	for (size_t i = 0; i < d->n; i++) {
		const struct ydoc_diag *g = &d->items[i];
		if (how == REGIME_RELOAD || (how == REGIME_START && g->warning))
			log_diagnostic(g);
		else
			ydoc_diag_print(g, stderr);
	}
	size_t total = d->errors + d->warnings;
	if (how != REGIME_RELOAD && total > d->n)
		fprintf(stderr, "(%zu more diagnostics not shown)\n", total - d->n);
}

/* Loads the policy set, counting its errors (not its warnings) into *errors. */
static bool policy_errors(const struct isgd_config *cfg, enum regime_report how,
                          struct policy_set **set, size_t *errors)
{
	struct ydoc_diags d;
	ydoc_diags_init(&d);
	int r = policy_load(cfg->policy_dir, set, &d);
	size_t before = *errors;
	for (size_t i = 0; i < d.n; i++)
		*errors += !d.items[i].warning;
	report_diagnostics(how, &d);
	ydoc_diags_release(&d);
	if (r != 0) {
		char msg[600];
		snprintf(msg, sizeof(msg), "policy directory '%s' has errors", cfg->policy_dir);
		report(how, "policy.error", msg);
		if (*errors == before) /* refused, though no single diagnostic said why */
			(*errors)++;
	}
	return r != 0;
}

/* Every linkage domain an agreement names must have a key. */
static bool domains_missing(const struct policy_set *set, const struct keyring *keys,
                            enum regime_report how, const char *keys_dir, size_t *errors)
{
	const char *domains[POLICY_MAX_DOMAINS];
	size_t n = policy_domains(set, domains, POLICY_MAX_DOMAINS);
	/* The loader refuses the domain past the limit, where it is written; should
	 * one come another way, the set is refused, never isgd stopped. */
	if (n > POLICY_MAX_DOMAINS) {
		char msg[160];
		snprintf(msg, sizeof(msg),
		         "the agreements name %zu linkage domains; at most %d are supported", n,
		         POLICY_MAX_DOMAINS);
		report(how, "keys.too_many_domains", msg);
		(*errors)++;
		return true;
	}
	bool missing = false;
	for (size_t i = 0; i < n; i++) {
		if (keyring_has(keys, domains[i]))
			continue;
		/* Where and in the words of policy check --keys: the admin may have meant
		 * another name. Once per domain, at the first field naming it. */
		const char *file = "", *field = "";
		int line = 0, col = 0;
		bool placed = policy_domain_named_at(set, domains[i], &file, &line, &col, &field);
		char why[2 * PATH_MAX + 200], msg[2 * PATH_MAX + 400];
		keys_missing_domain_why(why, sizeof(why), keys_dir, domains[i]);
		policy_missing_key_message(msg, sizeof(msg), domains[i], field, why);
		report_at(how, "keys.missing_domain", placed ? file : NULL, line, col, msg);
		(*errors)++;
		missing = true;
	}
	return missing;
}

/* The domain keys: as a generation in the key process, or here. */
static int load_keys(const struct isgd_config *cfg, struct keyproc *kp, struct regime *r, char *err,
                     size_t errlen)
{
	int rc;
	if (kp) {
		if ((rc = keyproc_ring_load(kp, &r->ring, err, errlen)) != 0)
			return rc;
		r->keys = keyproc_ring_keys(r->ring);
		r->pseudo = keyproc_ring_service(r->ring);
	} else {
		if ((rc = keys_load_domains(cfg->keys_dir, &r->own_keys, err, errlen)) != 0)
			return rc;
		r->keys = r->own_keys;
		r->pseudo = keyring_service(r->own_keys);
	}
	return 0;
}

struct regime *regime_load(const struct isgd_config *cfg, struct keyproc *kp,
                           enum regime_report how, size_t *errors)
{
	*errors = 0;
	struct regime *r = calloc(1, sizeof(*r));
	if (!r) {
		*errors = 1;
		return NULL;
	}
	atomic_init(&r->refs, 1);
	bool failed = policy_errors(cfg, how, &r->policy, errors);
	char err[512];
	if (load_keys(cfg, kp, r, err, sizeof(err)) != 0) {
		report(how, "keys.error", err);
		(*errors)++;
		failed = true;
	}
	if (!failed && domains_missing(r->policy, r->keys, how, cfg->keys_dir, errors))
		failed = true;
	if (!failed && !keyring_has(r->keys, KEYS_AUDIT_DOMAIN)) {
		snprintf(err, sizeof(err),
		         "the audit log's linkage domain '%s' has no key in '%s/%s' (isgctl keys "
		         "init makes it; or: isgctl keys new-domain %s %s)",
		         KEYS_AUDIT_DOMAIN, cfg->keys_dir, KEYS_DOMAINS_DIR, cfg->keys_dir,
		         KEYS_AUDIT_DOMAIN);
		report(how, "keys.missing_domain", err);
		(*errors)++;
		failed = true;
	}
	if (failed) {
		regime_unref(r);
		return NULL;
	}
	return r;
}

void regime_check_policy(const struct isgd_config *cfg, enum regime_report how, size_t *errors)
{
	*errors = 0;
	struct policy_set *set = NULL;
	policy_errors(cfg, how, &set, errors);
	policy_set_unref(set);
}

static void log_version_issue(void *ctx, const struct policy_agreement *a0,
                              const struct policy_agreement *a1)
{
	(void)ctx;
	if (a1->version < a0->version)
		log_event(LOG_WARN, "policy.version_lowered", "agreement=%s version=%u previous=%u",
		          a1->id, a1->version, a0->version);
	else
		log_event(LOG_WARN, "policy.version_unchanged", "agreement=%s version=%u", a1->id,
		          a1->version);
}

void regime_warn_versions(const struct regime *running, const struct regime *next)
{
	policy_version_issues(running->policy, next->policy, log_version_issue, NULL);
}

void regime_unref(struct regime *r)
{
	if (!r || atomic_fetch_sub(&r->refs, 1) != 1)
		return;
	policy_set_unref(r->policy);
	keyproc_ring_free(r->ring);
	keyring_free(r->own_keys);
	free(r);
}

struct regime *gateway_regime(struct gateway *g)
{
	pthread_mutex_lock(&g->regime_mu);
	struct regime *r = g->regime;
	atomic_fetch_add(&r->refs, 1);
	pthread_mutex_unlock(&g->regime_mu);
	return r;
}

void gateway_regime_swap(struct gateway *g, struct regime *r)
{
	pthread_mutex_lock(&g->regime_mu);
	struct regime *old = g->regime;
	g->regime = r;
	pthread_mutex_unlock(&g->regime_mu);
	regime_unref(old);
}
