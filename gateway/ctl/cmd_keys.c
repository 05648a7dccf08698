/* isgctl keys: the gateway's key files. */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctl/ctl.h"
#include "keys/keys.h"

static const char init_usage[] = "usage: isgctl keys init DIR\n";

/* The names in dir (none when it does not exist), sorted; NULL-terminated. */
static char **list_dir(const char *dir, size_t *n)
{
	struct dirent **entries = NULL;
	int count = scandir(dir, &entries, NULL, alphasort);
	*n = 0;
	char **names = calloc(count > 0 ? (size_t)count + 1 : 1, sizeof(*names));
	for (int i = 0; i < count; i++) {
		if (names && strcmp(entries[i]->d_name, ".") != 0 &&
		    strcmp(entries[i]->d_name, "..") != 0 &&
		    (names[*n] = strdup(entries[i]->d_name)))
			(*n)++;
		free(entries[i]);
	}
	free(entries);
	return names;
}

static bool listed(char **names, size_t n, const char *name)
{
	for (size_t i = 0; i < n; i++)
		if (strcmp(names[i], name) == 0)
			return true;
	return false;
}

static void free_list(char **names, size_t n)
{
	for (size_t i = 0; names && i < n; i++)
		free(names[i]);
	free(names);
}

static int keys_init_cmd(int argc, char **argv)
{
	if (argc == 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
		printf(
		    "%s\nCreates DIR (mode 0700) if needed, and in it a storage key (%s) and an\n"
		    "audit signing key (%s), each of mode 0600. Refuses to overwrite a key.\n",
		    init_usage, KEYS_STORAGE_FILE, KEYS_AUDIT_SIGNING_FILE);
		return CTL_EXIT_OK;
	}
	if (argc != 2 || argv[1][0] == '-')
		return ctl_usage_error(init_usage, "keys init takes one directory");
	const char *dir = argv[1];
	size_t n_before, n_after;
	char **before = list_dir(dir, &n_before);
	char err[512] = "";
	int rc = keys_init(dir, err, sizeof(err));
	if (rc < 0) {
		free_list(before, n_before);
		ctl_warn("%s", err[0] ? err : isg_strerror(rc));
		return CTL_EXIT_LOCAL;
	}
	char **after = list_dir(dir, &n_after);
	for (size_t i = 0; after && i < n_after; i++)
		if (!before || !listed(before, n_before, after[i]))
			printf("created %s%s%s\n", dir, dir[strlen(dir) - 1] == '/' ? "" : "/",
			       after[i]);
	free_list(before, n_before);
	free_list(after, n_after);
	return CTL_EXIT_OK;
}

static const struct ctl_command keys_commands[] = {
    {"init", keys_init_cmd, "create the storage key and the audit signing key in DIR"},
};

int cmd_keys(int argc, char **argv)
{
	if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
		FILE *out = argc < 2 ? stderr : stdout;
		fprintf(out, "usage: isgctl keys COMMAND ...\n");
		for (size_t i = 0; i < ARRAY_LEN(keys_commands); i++)
			fprintf(out, "  %-8s %s\n", keys_commands[i].name,
			        keys_commands[i].description);
		return argc < 2 ? CTL_EXIT_USAGE : CTL_EXIT_OK;
	}
	return ctl_dispatch(keys_commands, ARRAY_LEN(keys_commands), "keys", argc - 1, argv + 1);
}
