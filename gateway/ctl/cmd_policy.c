/*
 * isgctl policy: the policy directory (partner registry and agreements).
 * check validates it (and with --keys, that every linkage domain has a key),
 * show summarises an agreement for IG officers, diff gives the privacy
 * effect of a change. See docs/isgctl.md and docs/policy.md.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "ctl/ctl.h"
#include "keys/keys.h"
#include "policy/policy.h"

/* ---- shared ---- */

/*
 * The command line of show and diff: --help, then from min to max
 * positional arguments (names), none empty, else count_error. Exit status;
 * *help when asked for.
 */
static int policy_options(int argc, char **argv, const char *usage, const char *const *names,
                          int min, int max, const char *count_error, bool *help)
{
	static const struct option opts[] = {
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	struct ctl_opts o;
	ctl_opts_init(&o, argc, argv, ":h", opts, usage);
	int opt = ctl_opts_next(&o);
	if (opt == CTL_OPTS_ERROR)
		return CTL_EXIT_USAGE;
	if (opt != CTL_OPTS_END) { /* 'h' */
		*help = true;
		return CTL_EXIT_OK;
	}
	if (argc - optind < min || argc - optind > max)
		return ctl_usage_error(usage, "%s", count_error);
	return ctl_opts_args(&o, names);
}

/* Load a policy directory, printing its diagnostics; NULL (and a note) when it has errors. */
static struct policy_set *load_policy(const char *dir, struct ydoc_diags *diags)
{
	struct policy_set *set = NULL;
	int rc = policy_load(dir, &set, diags);
	ydoc_diags_print(diags, stderr);
	if (rc == 0)
		return set;
	if (diags->errors == 0)
		ctl_warn("%s: %s", dir, isg_strerror(rc));
	ctl_warn("the policy in '%s' has errors: nothing shown (see 'isgctl policy check %s')", dir,
	         dir);
	return NULL;
}

/* ---- check ---- */

static const char check_usage[] = "usage: isgctl policy check DIR [--keys KEYS_DIR]\n";

struct key_probe {
	const char *keys_dir;
	const struct keyring *ring;
	char why[4400 + 200];
};

/* NULL when the loaded keyring has the domain, else what is missing. */
static const char *key_missing(void *ctx, const char *domain)
{
	struct key_probe *k = ctx;
	if (keyring_has(k->ring, domain))
		return NULL;
	return keys_missing_domain_why(k->why, sizeof(k->why), k->keys_dir, domain);
}

/*
 * The domain keys as isgd's key process loads them (keys_load_domains): a
 * key file isgd would refuse (its mode, owner, a link, a line it cannot
 * parse), and so refuse to start or reload, fails here too, and so does a
 * missing key for audit, the domain of the audit log's subjects.
 */
static int check_keys(const struct policy_set *set, const char *keys_dir, struct ydoc_diags *diags)
{
	struct stat st;
	int err = stat(keys_dir, &st) != 0 ? errno : S_ISDIR(st.st_mode) ? 0 : ENOTDIR;
	if (err == ENOENT) {
		/* As keys_check_dir words it, for isgd and the keys commands. */
		ydoc_error(diags, keys_dir, NULL,
		           "key directory does not exist; restore it from its backup, or create "
		           "one for a new gateway with 'isgctl keys init'");
		return 1;
	}
	if (err) {
		ydoc_error(diags, keys_dir, NULL, "cannot open keys directory: %s", strerror(err));
		return 1;
	}
	struct key_probe probe = {.keys_dir = keys_dir};
	struct keyring *ring = NULL;
	if (keys_load_domains(keys_dir, &ring, probe.why, sizeof(probe.why)) != 0) {
		ydoc_error(diags, keys_dir, NULL,
		           "isgd would refuse the linkage domain keys, and so refuse to start or "
		           "reload: %s",
		           probe.why);
		return 1;
	}
	probe.ring = ring;
	int bad = policy_check_domains(set, key_missing, &probe, diags) ? 1 : 0;
	if (!keyring_has(ring, KEYS_AUDIT_DOMAIN)) {
		ydoc_error(
		    diags, keys_dir, NULL,
		    "the audit log's linkage domain '%s' has no key file '%s/%s/%s.key', "
		    "without which isgd refuses to start or reload ('isgctl keys init' makes "
		    "it; or: isgctl keys new-domain %s %s)",
		    KEYS_AUDIT_DOMAIN, keys_dir, KEYS_DOMAINS_DIR, KEYS_AUDIT_DOMAIN, keys_dir,
		    KEYS_AUDIT_DOMAIN);
		bad = 1;
	}
	keyring_free(ring);
	return bad;
}

static int policy_check_cmd(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"keys", required_argument, NULL, 'k'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	const char *keys_dir = NULL;
	struct ctl_opts o;
	ctl_opts_init(&o, argc, argv, ":hk:", opts, check_usage);
	int opt;
	while ((opt = ctl_opts_next(&o)) != CTL_OPTS_END) {
		if (opt == CTL_OPTS_ERROR)
			return CTL_EXIT_USAGE;
		if (opt == 'h') {
			printf("%s\nLoads every policy file in DIR as the gateway would and prints "
			       "every\n"
			       "problem as file:line:column. With --keys, also loads the linkage "
			       "domain\n"
			       "keys in KEYS_DIR as isgd would (run it as the keys' owner) and "
			       "reports\n"
			       "a key file isgd would refuse, and every domain an agreement names, "
			       "and\n"
			       "audit, that has no key file KEYS_DIR/domains/NAME.key.\n"
			       "Exits 0 when the policy is valid (warnings may be printed), 1 when "
			       "not.\n",
			       check_usage);
			return CTL_EXIT_OK;
		}
		keys_dir = optarg; /* 'k' */
	}
	static const char *const names[] = {"DIR"};
	if (argc - optind != 1)
		return ctl_usage_error(check_usage, "policy check takes one directory");
	if (ctl_opts_args(&o, names) != CTL_EXIT_OK)
		return CTL_EXIT_USAGE;
	const char *dir = argv[optind];
	struct ydoc_diags diags;
	ydoc_diags_init(&diags);
	struct policy_set *set = NULL;
	int rc = policy_load(dir, &set, &diags);
	int bad_keys = rc == 0 && keys_dir ? check_keys(set, keys_dir, &diags) : 0;
	ydoc_diags_print(&diags, stderr);
	if (rc == 0 && !bad_keys) {
		printf("policy OK: %zu partners, %zu agreements, version %s\n", set->n_partners,
		       set->n_agreements, set->version);
		if (keys_dir)
			printf("keys OK: every linkage domain the agreements name (%zu), and "
			       "audit, has a key in %s/domains that isgd can load\n",
			       policy_domains(set, NULL, 0), keys_dir);
		else /* isgd refuses the set all the same when a domain has no key */
			printf("keys not checked: isgd also needs a key for every linkage domain "
			       "the agreements name (%zu), and audit; check them with --keys "
			       "KEYS_DIR\n",
			       policy_domains(set, NULL, 0));
	} else if (rc != 0 && diags.errors == 0) {
		ctl_warn("%s: %s", dir, isg_strerror(rc));
	}
	if (rc != 0 && keys_dir)
		ctl_warn("linkage domain keys not checked: the policy has errors");
	policy_set_unref(set);
	ydoc_diags_release(&diags);
	return rc == 0 && !bad_keys ? CTL_EXIT_OK : CTL_EXIT_LOCAL;
}

/* ---- show ---- */

static const char show_usage[] = "usage: isgctl policy show DIR [AGREEMENT_ID]\n";

/* Text from a policy file, with control characters replaced. */
static void print_clean(const char *s)
{
	for (; *s; s++)
		putchar((unsigned char)*s < 0x20 || *s == 0x7f ? '?' : *s);
}

static void list_agreements(const struct policy_set *set)
{
	for (size_t i = 0; i < set->n_agreements; i++) {
		const struct policy_agreement *a = &set->agreements[i];
		printf("%s, version %u: ", a->id, a->version);
		print_clean(a->title);
		printf("\n  ");
		for (size_t k = 0; k < a->n_senders; k++)
			printf("%s%s", k ? ", " : "", a->senders[k]);
		printf(" ->");
		for (size_t k = 0; k < a->n_recipients; k++)
			printf("%s %s", k ? "," : "", a->recipients[k]);
		printf("\n");
	}
}

static int unknown_agreement(const struct policy_set *set, const char *dir, const char *id)
{
	char known[1024] = "";
	size_t used = 0;
	for (size_t i = 0; i < set->n_agreements && used < sizeof(known); i++) {
		int w = snprintf(known + used, sizeof(known) - used, "%s%s", i ? ", " : "",
		                 set->agreements[i].id);
		used += w > 0 ? (size_t)w : 0;
	}
	ctl_warn("no agreement '%s' in '%s' (its agreements: %s)", id, dir,
	         set->n_agreements ? known : "none");
	return CTL_EXIT_LOCAL;
}

static int policy_show_cmd(int argc, char **argv)
{
	static const char *const names[] = {"DIR", "AGREEMENT_ID"};
	bool help = false;
	int status = policy_options(argc, argv, show_usage, names, 1, 2,
	                            "policy show takes a directory and an agreement id", &help);
	if (status != CTL_EXIT_OK)
		return status;
	if (help) {
		printf(
		    "%s\nPrints a plain-language summary of agreement AGREEMENT_ID of the policy\n"
		    "in DIR: who sends what to whom, why, on what basis, until when, and which\n"
		    "fields arrive in clear, generalised, pseudonymised or not at all. Without\n"
		    "AGREEMENT_ID, lists the agreements. Exits 1 when DIR has errors or has no\n"
		    "such agreement.\n",
		    show_usage);
		return CTL_EXIT_OK;
	}
	const char *dir = argv[optind], *id = argc - optind == 2 ? argv[optind + 1] : NULL;
	struct ydoc_diags diags;
	ydoc_diags_init(&diags);
	struct policy_set *set = load_policy(dir, &diags);
	ydoc_diags_release(&diags);
	if (!set)
		return CTL_EXIT_LOCAL;
	const struct policy_agreement *a = id ? policy_agreement_by_id(set, id) : NULL;
	if (!id) {
		list_agreements(set);
	} else if (!a) {
		status = unknown_agreement(set, dir, id);
	} else {
		struct strbuf out;
		strbuf_init(&out);
		if (policy_describe(set, a, date_days_of_ms(time_now_ms()), &out) != 0) {
			ctl_warn("out of memory");
			status = CTL_EXIT_LOCAL;
		} else {
			printf("%s\nPolicy version %s.\n", out.p, set->version);
		}
		strbuf_release(&out);
	}
	policy_set_unref(set);
	return status;
}

/* ---- diff ---- */

static const char diff_usage[] = "usage: isgctl policy diff OLD_DIR NEW_DIR\n";

enum { DIFF_SAME = 0, DIFF_DIFFERENT = 1, DIFF_TROUBLE = 2 };

/* An agreement whose terms changed under the same version, or whose version went down. */
static void version_issue(void *ctx, const struct policy_agreement *a0,
                          const struct policy_agreement *a1)
{
	struct strbuf *out = ctx;
	if (a1->version < a0->version)
		strbuf_printf(
		    out,
		    "! VERSION DOWN  agreement '%s': version %u -> %u: a version may only "
		    "go up (recipients and the audit log would take %u for other terms)\n",
		    a1->id, a0->version, a1->version, a1->version);
	else
		strbuf_printf(
		    out,
		    "! VERSION       agreement '%s': its terms changed but its version is "
		    "still %u: raise it (recipients see the version on each delivery, and "
		    "the audit log records it)\n",
		    a1->id, a1->version);
}

static int policy_diff_cmd(int argc, char **argv)
{
	static const char *const names[] = {"OLD_DIR", "NEW_DIR"};
	ctl_output_failure = DIFF_TROUBLE; /* 0 and 1 say whether the policies differ */
	bool help = false;
	if (policy_options(argc, argv, diff_usage, names, 2, 2, "policy diff takes two directories",
	                   &help) != CTL_EXIT_OK)
		return DIFF_TROUBLE;
	if (help) {
		printf(
		    "%s\nShows the privacy effect of replacing the policy in OLD_DIR by the one "
		    "in\n"
		    "NEW_DIR, for the partner registry, each agreement and each data flow\n"
		    "(sender -> recipient, agreement, dataset). Lines that share more, with less\n"
		    "protection, for longer or with more partners start with '! WEAKENED'; an\n"
		    "agreement whose terms changed while its version did not go up, with\n"
		    "'! VERSION'.\n"
		    "Exits 0 when nothing changed, 1 when something did, 2 on trouble (a policy\n"
		    "with errors, a bad command line), like diff(1).\n",
		    diff_usage);
		return DIFF_SAME;
	}
	const char *old_dir = argv[optind], *new_dir = argv[optind + 1];
	struct ydoc_diags diags;
	ydoc_diags_init(&diags);
	struct policy_set *old_set = load_policy(old_dir, &diags);
	ydoc_diags_release(&diags);
	ydoc_diags_init(&diags);
	struct policy_set *new_set = load_policy(new_dir, &diags);
	ydoc_diags_release(&diags);
	int status = DIFF_TROUBLE;
	struct strbuf out, versions;
	strbuf_init(&out);
	strbuf_init(&versions);
	struct policy_diff_stats st;
	if (!old_set || !new_set)
		goto out;
	int rc = policy_diff(old_set, new_set, &out, &st);
	size_t issues = policy_version_issues(old_set, new_set, version_issue, &versions);
	if (rc != 0 || versions.failed) {
		ctl_warn("out of memory");
		goto out;
	}
	printf("Policy %s (version %.12s) -> %s (version %.12s)\n", old_dir, old_set->version,
	       new_dir, new_set->version);
	if (st.changes == 0 && issues == 0) {
		printf("No difference in partners or agreements%s.\n",
		       strcmp(old_set->version, new_set->version) == 0
		           ? ""
		           : " (the files differ only in comments, layout or order)");
		status = DIFF_SAME;
		goto out;
	}
	printf("\n%s\n", out.p ? out.p : "");
	if (issues)
		printf("Versions:\n%s\n", versions.p);
	printf("%zu change%s: %zu weakened, %zu strengthened, %zu other.\n", st.changes,
	       st.changes == 1 ? "" : "s", st.weakened, st.strengthened,
	       st.changes - st.weakened - st.strengthened);
	status = DIFF_DIFFERENT;
out:
	strbuf_release(&out);
	strbuf_release(&versions);
	policy_set_unref(old_set);
	policy_set_unref(new_set);
	return status;
}

static const struct ctl_command policy_commands[] = {
    {"check", policy_check_cmd, "check a policy directory and print every problem"},
    {"show", policy_show_cmd, "summarise an agreement in plain language"},
    {"diff", policy_diff_cmd, "show the privacy effect of a policy change"},
};

int cmd_policy(int argc, char **argv)
{
	FILE *out = ctl_group_usage(argc, argv, "usage: isgctl policy COMMAND ...\n",
	                            policy_commands, ARRAY_LEN(policy_commands), 8);
	if (out) {
		fprintf(out, "\n%s%s%s", check_usage, show_usage, diff_usage);
		return argc < 2 ? CTL_EXIT_USAGE : CTL_EXIT_OK;
	}
	return ctl_dispatch(policy_commands, ARRAY_LEN(policy_commands), "policy", argc - 1,
	                    argv + 1);
}
