/*
 * What list and subject say of the log they answered from.
 *
 * They read each entry as the table holds it now and judge it by its
 * bytes: a row whose unsigned columns were edited is caught by comparing
 * them with the entry, but an entry whose own bytes were edited (one
 * character taken out of a pseudonym) reads as a valid entry that says
 * something else, and only the signed checkpoints can tell. So, as report
 * does for its integrity section, they run every check of verify over the
 * whole log in the same read transaction, and end with one line: OK
 * against the signed checkpoints, FAILED (the answer may be incomplete or
 * wrong: verify names the problems), or NOT VERIFIED when no verifier key
 * could be had. The problems themselves are not printed here: the answer's
 * standard error is for the answer, and verify says each in full.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctl/cmd_audit.h"
#include "ctl/ctl.h"

int audit_integrity_check(struct audit_log *l, const struct audit_where *w, char **against,
                          size_t n_against, struct audit_integrity *in)
{
	struct audit_verifier v;
	char key[AUDIT_VERIFIER_KEY_MAX];
	const char *from = NULL;
	memset(in, 0, sizeof(*in));
	/* why, with what to do (run as the keys' owner, or --pubkey-file), is said once,
	 * in audit_integrity_say's last line */
	l->key_error_quiet = true;
	int got = audit_log_verifier(l, w, &v, key, &from);
	l->key_error_quiet = false;
	if (got != CTL_EXIT_OK) {
		str_copy(in->key_error, l->key_error, sizeof(in->key_error));
		return CTL_EXIT_OK;
	}
	char *problems = NULL;
	size_t len = 0;
	FILE *out = open_memstream(&problems, &len);
	if (!out) {
		ctl_warn("out of memory");
		return CTL_EXIT_LOCAL;
	}
	int status = audit_verify_log(l, &v, -1, against, n_against, out, &in->vr);
	if (fclose(out) != 0 && status == CTL_EXIT_OK) {
		ctl_warn("out of memory");
		status = CTL_EXIT_LOCAL;
	}
	free(problems);
	in->checked = status == CTL_EXIT_OK;
	return status;
}

/* OK: what vouches for the answer, and what does not yet. */
static void say_ok(const struct audit_integrity *in)
{
	const struct audit_verify_result *vr = &in->vr;
	char root[64] = "";
	char saved[64] = "";
	if (vr->saved)
		snprintf(saved, sizeof(saved), " and %zu saved elsewhere", vr->saved);
	if (vr->checkpoints == 0) {
		ctl_warn(
		    "audit log OK, but no signed checkpoint covers it yet: nothing vouches for "
		    "these %" PRIu64 " entries (run 'isgctl audit verify' once isgd has signed "
		    "one)",
		    vr->entries);
		return;
	}
	audit_ctl_b64(root, sizeof(root), vr->latest_root, AUDIT_HASH_LEN);
	ctl_warn("audit log OK against %zu signed checkpoint%s%s: %" PRIu64
	         " entries, latest checkpoint size %" PRIu64 ", root %s",
	         vr->checkpoints, vr->checkpoints == 1 ? "" : "s", saved, vr->entries,
	         vr->latest_size, root);
	if (vr->uncovered)
		ctl_warn("note: the last %" PRIu64 " entr%s (written since that checkpoint) %s not "
		         "yet covered by one: nothing vouches for %s yet",
		         vr->uncovered, vr->uncovered == 1 ? "y" : "ies",
		         vr->uncovered == 1 ? "is" : "are", vr->uncovered == 1 ? "it" : "them");
}

int audit_integrity_say(const struct audit_integrity *in, const char *answer)
{
	if (!in->checked) {
		/* the hint once: the reason may already say how to give the key */
		bool hinted = strstr(in->key_error, "--pubkey") != NULL;
		ctl_warn("audit log NOT VERIFIED: isgctl had no verifier key it could use (%s); %s "
		         "was not checked against the signed checkpoints%s",
		         in->key_error[0] ? in->key_error : "see above", answer,
		         hinted ? ""
		                : ": give the verifier key recorded for this gateway with "
		                  "--pubkey-file FILE or --pubkey KEY ('isgctl audit pubkey' "
		                  "prints it)");
		return CTL_EXIT_LOCAL;
	}
	unsigned unreadable = in->vr.saved_unreadable;
	if (in->vr.problems && in->vr.problems == unreadable) {
		/* as verify says it: a file that is no checkpoint says nothing of the log */
		ctl_warn("audit log checks passed, but %u saved checkpoint%s could not be read, so "
		         "the log was NOT checked against %s: %s stands only as far as the signed "
		         "checkpoints go (run 'isgctl audit verify' for the details)",
		         unreadable, unreadable == 1 ? "" : "s", unreadable == 1 ? "it" : "them",
		         answer);
		return CTL_EXIT_LOCAL;
	}
	if (in->vr.problems) {
		ctl_warn(
		    "audit log FAILED verification: %u problem%s; run 'isgctl audit verify' for "
		    "the details: %s may be incomplete or wrong",
		    in->vr.problems, in->vr.problems == 1 ? "" : "s", answer);
		return CTL_EXIT_LOCAL;
	}
	say_ok(in);
	return CTL_EXIT_OK;
}
