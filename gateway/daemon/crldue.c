/*
 * When the partner CAs' CRLs run out. With tls.crl, a CRL past its
 * nextUpdate makes OpenSSL refuse every certificate its CA issued ("CRL
 * has expired"): net_tls_new refuses such a CRL at load, and this says, at
 * load and then while isgd runs, that one is about to run out, so that the
 * admin makes it again before every partner of that CA is locked out.
 */
#include <stdio.h>
#include <time.h>

#include "daemon/gateway.h"
#include "util/util.h"

/* Warn this long before a CRL's nextUpdate; again every CRL_WARN_AGAIN_MS. */
#define CRL_WARN_S (7 * 86400)
#define CRL_WARN_AGAIN_MS (24 * 3600 * 1000LL)

/* Which line the running CRLs last gave: none, expiring, expired. */
enum { CRL_QUIET, CRL_EXPIRING, CRL_EXPIRED };

static int crl_state_at(const struct net_crl_due *due, int64_t now)
{
	if (due->next_update == 0 || due->next_update - now > CRL_WARN_S)
		return CRL_QUIET;
	return due->next_update <= now ? CRL_EXPIRED : CRL_EXPIRING;
}

static void crl_log(const struct net_crl_due *due, int state, int64_t now)
{
	char q[300];
	log_quote(q, sizeof(q), due->ca);
	if (state == CRL_EXPIRED)
		log_event(
		    LOG_ERROR, "tls.crl_expired",
		    "ca=%s next_update=%s reason=\"every certificate this CA issued is "
		    "refused\" action=\"make the CRL again (openssl ca -gencrl), install it at "
		    "tls.crl and reload (SIGHUP)\"",
		    q, due->when);
	else
		log_event(LOG_WARN, "tls.crl_expiring",
		          "ca=%s next_update=%s hours_left=%lld action=\"make the CRL again "
		          "(openssl ca -gencrl), install it at tls.crl and reload (SIGHUP) before "
		          "then, or every certificate this CA issued is refused\"",
		          q, due->when, (long long)((due->next_update - now) / 3600));
}

void crl_due_loaded(struct gateway *g, SSL_CTX *tls, enum regime_report how)
{
	struct net_crl_due due;
	if (net_tls_crl_due(tls, &due) != 0)
		due = (struct net_crl_due){0};
	int64_t now = (int64_t)time(NULL);
	int state = crl_state_at(&due, now);
	if (how == REGIME_CHECK) {
		if (state != CRL_QUIET)
			fprintf(
			    stderr,
			    "isgd: warning: CRL '%s' (tls.crl): the CRL of partner CA \"%s\" "
			    "expires at %s (its nextUpdate), within %d days: make it again where "
			    "the CA is kept (openssl ca -gencrl), install it at '%s' and reload "
			    "before then, or every "
			    "certificate that CA issued is refused from then on\n",
			    g->cfg.tls_crl, due.ca, due.when, CRL_WARN_S / 86400, g->cfg.tls_crl);
		return;
	}
	g->crl_due = due;
	g->crl_state = state;
	g->crl_logged_ms = time_mono_ms();
	if (state != CRL_QUIET)
		crl_log(&due, state, now);
}

void crl_due_watch(struct gateway *g)
{
	int64_t now = (int64_t)time(NULL), mono = time_mono_ms();
	int state = crl_state_at(&g->crl_due, now);
	if (state == CRL_QUIET) {
		g->crl_state = state;
		return;
	}
	if (state == g->crl_state && mono - g->crl_logged_ms < CRL_WARN_AGAIN_MS)
		return;
	g->crl_state = state;
	g->crl_logged_ms = mono;
	crl_log(&g->crl_due, state, now);
}
