/*
 * isgctl audit: the IG officer's tools over the tamper-evident audit log
 * (DESIGN.md section 8, docs/audit.md). This file dispatches and holds the
 * two small commands, pubkey and checkpoint; verify and prove are in
 * cmd_audit_verify.c, list and subject in cmd_audit_list.c, export in
 * cmd_audit_export.c, report in cmd_audit_report.c. None of them writes to the store.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "ctl/cmd_audit.h"
#include "ctl/ctl.h"
#include "ctl/store_read.h"

static const char pubkey_usage[] =
    "usage: isgctl audit pubkey (--config ISGD_YAML | --keys KEYS_DIR) [--origin NAME]\n";
static const char checkpoint_usage[] =
    "usage: isgctl audit checkpoint (--config ISGD_YAML | --store DB)\n";

void audit_where_help(FILE *out, unsigned takes)
{
	/* in the order of the AUDIT_TAKES_* bits */
	static const char *const from_config[] = {"store.path", "keys_dir", "audit.origin"};
	fprintf(out, "The log is found with:\n  --config ISGD_YAML  isgd's configuration:");
	for (unsigned i = 0, n = 0; i < ARRAY_LEN(from_config); i++)
		if (takes & (1u << i))
			fprintf(out, "%s %s", n++ ? "," : "", from_config[i]);
	fputc('\n', out);
	if (takes & AUDIT_TAKES_STORE)
		fprintf(out, "  --store DB          the store file (overrides the config's)\n");
	if (takes & AUDIT_TAKES_KEYS)
		fprintf(out, "  --keys KEYS_DIR     the keys directory (overrides the config's)\n");
	if (takes & AUDIT_TAKES_ORIGIN)
		fprintf(out, "  --origin NAME       the log's origin, which names its signing key\n"
		             "                      (default: the config's audit.origin, else "
		             "" AUDIT_ORIGIN_DEFAULT ")\n");
	if (takes & AUDIT_TAKES_STORE)
		fprintf(out, "The store is opened read-only; a running isgd is not disturbed.\n");
}

int audit_pubkey_cmd(int argc, char **argv)
{
	static const struct option opts[] = {
	    AUDIT_LONGOPT_CONFIG, AUDIT_LONGOPT_KEYS, AUDIT_LONGOPT_ORIGIN,
	    AUDIT_LONGOPT_HELP,   {NULL, 0, NULL, 0},
	};
	struct audit_where w = {.takes = AUDIT_TAKES_KEYS | AUDIT_TAKES_ORIGIN};
	struct ctl_opts o;
	ctl_opts_init(&o, argc, argv, ":", opts, pubkey_usage);
	int opt;
	while ((opt = ctl_opts_next(&o)) != CTL_OPTS_END) {
		if (opt == CTL_OPTS_ERROR)
			return CTL_EXIT_USAGE;
		audit_where_option(&w, opt, optarg);
	}
	if (w.help) {
		printf("%s\nPrints the verifier key of the log's checkpoints in signed-note form,\n"
		       "<origin>+<key hash>+<base64 public key>, from the audit signing key\n"
		       "KEYS_DIR/audit-signing.key. Publish it to whoever checks the log\n"
		       "(isgctl audit verify --pubkey KEY, or any signed-note tool).\n\n",
		       pubkey_usage);
		audit_where_help(stdout, w.takes);
		return CTL_EXIT_OK;
	}
	if (optind != argc)
		return ctl_usage_error(pubkey_usage, "audit pubkey takes no arguments");
	struct audit_log l;
	int status = audit_log_open(&l, &w, pubkey_usage, false);
	char key[AUDIT_VERIFIER_KEY_MAX];
	if (status == CTL_EXIT_OK)
		status = audit_log_signer_key(&l, key);
	if (status == CTL_EXIT_OK)
		printf("%s\n", key);
	audit_log_release(&l);
	return status;
}

int audit_checkpoint_cmd(int argc, char **argv)
{
	static const struct option opts[] = {
	    AUDIT_LONGOPT_CONFIG,
	    AUDIT_LONGOPT_STORE,
	    AUDIT_LONGOPT_HELP,
	    {NULL, 0, NULL, 0},
	};
	struct audit_where w = {.takes = AUDIT_TAKES_STORE};
	struct ctl_opts o;
	ctl_opts_init(&o, argc, argv, ":", opts, checkpoint_usage);
	int opt;
	while ((opt = ctl_opts_next(&o)) != CTL_OPTS_END) {
		if (opt == CTL_OPTS_ERROR)
			return CTL_EXIT_USAGE;
		audit_where_option(&w, opt, optarg);
	}
	if (w.help) {
		printf("%s\nPrints the latest signed checkpoint exactly as the gateway stored it:\n"
		       "the log's origin, its size and its root, signed. Keep copies outside the\n"
		       "gateway (for example a daily cron job) and check the log against them\n"
		       "with 'isgctl audit verify --against FILE'.\n\n",
		       checkpoint_usage);
		audit_where_help(stdout, w.takes);
		return CTL_EXIT_OK;
	}
	if (optind != argc)
		return ctl_usage_error(checkpoint_usage, "audit checkpoint takes no arguments");
	struct audit_log l;
	struct audit_stored_cp *cps = NULL;
	size_t n = 0;
	int status = audit_log_open(&l, &w, checkpoint_usage, true);
	if (status == CTL_EXIT_OK)
		status = audit_log_checkpoints(&l, &cps, &n);
	if (status == CTL_EXIT_OK && n == 0) {
		ctl_warn("the log in '%s' has no checkpoint yet", l.store_path);
		status = CTL_EXIT_LOCAL;
	}
	if (status == CTL_EXIT_OK) {
		const struct audit_stored_cp *c = &cps[n - 1];
		if (fwrite(c->note, 1, c->note_len, stdout) != c->note_len || fflush(stdout) != 0) {
			ctl_output_warn("cannot write the checkpoint: %s",
			                ctl_output_errno_text(stdout, errno));
			status = CTL_EXIT_LOCAL;
		}
	}
	audit_stored_cps_free(cps, n);
	audit_log_release(&l);
	return status;
}

static const struct ctl_command audit_commands[] = {
    {"verify", audit_verify_cmd, "check the log against its signed checkpoints"},
    {"checkpoint", audit_checkpoint_cmd, "print the latest signed checkpoint, to keep elsewhere"},
    {"pubkey", audit_pubkey_cmd, "print the checkpoints' verifier key"},
    {"prove", audit_prove_cmd, "print an inclusion proof of entry SEQ"},
    {"list", audit_list_cmd, "list entries, filtered by time, partner, agreement, kind"},
    {"subject", audit_subject_cmd, "list every exchange whose message named one identifier"},
    {"export", audit_export_cmd, "write the log as JSON Lines that anyone can verify"},
    {"report", audit_report_cmd, "write a privacy-impact review of a period (HTML, Markdown, CSV)"},
};

int cmd_audit(int argc, char **argv)
{
	if (sodium_init() < 0) {
		ctl_warn("cannot initialise libsodium");
		return CTL_EXIT_LOCAL;
	}
	FILE *out = ctl_group_usage(argc, argv, "usage: isgctl audit COMMAND [OPTIONS]\n",
	                            audit_commands, ARRAY_LEN(audit_commands), 11);
	if (out) {
		fputc('\n', out);
		audit_where_help(out, AUDIT_TAKES_ALL);
		fprintf(out, "\n'isgctl audit COMMAND --help' shows a command's options.\n");
		return argc < 2 ? CTL_EXIT_USAGE : CTL_EXIT_OK;
	}
	/*
	 * Every command's read is over here, however it ended: one recheck of
	 * a store read immutable (ctl_store_recheck), so no command can miss it.
	 */
	int status =
	    ctl_dispatch(audit_commands, ARRAY_LEN(audit_commands), "audit", argc - 1, argv + 1);
	return ctl_store_recheck(status);
}
