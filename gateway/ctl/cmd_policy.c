/* isgctl policy: the policy directory (partner registry and agreements). */
#include <stdio.h>
#include <string.h>

#include "ctl/ctl.h"
#include "policy/policy.h"

static const char check_usage[] = "usage: isgctl policy check DIR\n";

static int policy_check_cmd(int argc, char **argv)
{
	if (argc == 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
		printf("%s\nLoads every policy file in DIR as the gateway would and prints every\n"
		       "problem as file:line:column. Exits 0 when the policy is valid.\n",
		       check_usage);
		return CTL_EXIT_OK;
	}
	if (argc != 2 || argv[1][0] == '-')
		return ctl_usage_error(check_usage, "policy check takes one directory");
	struct ydoc_diags diags;
	ydoc_diags_init(&diags);
	struct policy_set *set = NULL;
	int rc = policy_load(argv[1], &set, &diags);
	ydoc_diags_print(&diags, stderr);
	if (rc == 0)
		printf("policy OK: %zu partners, %zu agreements, version %s\n", set->n_partners,
		       set->n_agreements, set->version);
	else if (diags.errors == 0)
		ctl_warn("%s: %s", argv[1], isg_strerror(rc));
	policy_set_unref(set);
	ydoc_diags_release(&diags);
	return rc == 0 ? CTL_EXIT_OK : CTL_EXIT_LOCAL;
}

static const struct ctl_command policy_commands[] = {
    {"check", policy_check_cmd, "check a policy directory and print every problem"},
};

int cmd_policy(int argc, char **argv)
{
	if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
		FILE *out = argc < 2 ? stderr : stdout;
		fprintf(out, "usage: isgctl policy COMMAND ...\n");
		for (size_t i = 0; i < ARRAY_LEN(policy_commands); i++)
			fprintf(out, "  %-8s %s\n", policy_commands[i].name,
			        policy_commands[i].description);
		return argc < 2 ? CTL_EXIT_USAGE : CTL_EXIT_OK;
	}
	return ctl_dispatch(policy_commands, ARRAY_LEN(policy_commands), "policy", argc - 1,
	                    argv + 1);
}
