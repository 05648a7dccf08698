/*
 * isgctl keys: the gateway's key files (docs/keys.md). These commands work
 * on the keys directory directly, not through the gateway; they never print
 * key material.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctl/ctl.h"
#include "keys/keys.h"

#define OVERLAP_DEFAULT 30

static const char init_usage[] = "usage: isgctl keys init DIR\n";
static const char new_domain_usage[] = "usage: isgctl keys new-domain DIR NAME\n";
static const char rotate_usage[] = "usage: isgctl keys rotate DIR NAME [--overlap DAYS]\n";
static const char list_usage[] = "usage: isgctl keys list DIR\n";

/*
 * The command line of a keys command: --help, and --overlap when overlap is
 * not NULL (rotate); then the positional arguments, as many as names holds
 * (n), none empty, else count_error. Exit status; *help when asked for.
 */
static int keys_options(int argc, char **argv, const char *usage, const char *const *names, int n,
                        const char *count_error, int64_t *overlap, bool *help)
{
	static const struct option plain[] = {
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	static const struct option rotate[] = {
	    {"overlap", required_argument, NULL, 'o'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	struct ctl_opts o;
	ctl_opts_init(&o, argc, argv, ":h", overlap ? rotate : plain, usage);
	int opt;
	while ((opt = ctl_opts_next(&o)) != CTL_OPTS_END) {
		if (opt == CTL_OPTS_ERROR)
			return CTL_EXIT_USAGE;
		if (opt == 'h') {
			*help = true;
			return CTL_EXIT_OK;
		}
		if (str_to_i64(optarg, 0, KEYS_OVERLAP_MAX, overlap) != 0) /* 'o' */
			return ctl_usage_error(usage,
			                       "--overlap must be a whole number of days from 0 to "
			                       "%d, not '%s'",
			                       KEYS_OVERLAP_MAX, optarg);
	}
	if (argc - optind != n)
		return ctl_usage_error(usage, "%s", count_error);
	return ctl_opts_args(&o, names);
}

/* "dir/" unless dir already ends in a slash. */
static const char *slash(const char *dir)
{
	size_t n = strlen(dir);
	return n && dir[n - 1] == '/' ? "" : "/";
}

/* Days since 1970-01-01 as YYYY-MM-DD; buf needs 32 bytes. */
static const char *date_text(char *buf, size_t size, int64_t days)
{
	time_format_ms(buf, size, days * 86400000);
	buf[10] = '\0';
	return buf;
}

static int64_t today(void)
{
	return date_days_of_ms(time_now_ms());
}

static int fail(int rc, const char *err)
{
	ctl_warn("%s", err[0] ? err : isg_strerror(rc));
	return CTL_EXIT_LOCAL;
}

static int keys_init_cmd(int argc, char **argv)
{
	static const char *const names[] = {"DIR"};
	bool help = false;
	int status = keys_options(argc, argv, init_usage, names, 1, "keys init takes one directory",
	                          NULL, &help);
	if (status != CTL_EXIT_OK)
		return status;
	if (help) {
		printf("%s\nCreates DIR (mode 0700) if needed, and in it a storage key (%s), an\n"
		       "audit signing key (%s) and the linkage domain 'audit' that the audit\n"
		       "log pseudonymises subjects under (%s/audit.key), each of mode 0600.\n"
		       "Refuses to overwrite a key: it creates all three or none.\n",
		       init_usage, KEYS_STORAGE_FILE, KEYS_AUDIT_SIGNING_FILE, KEYS_DOMAINS_DIR);
		return CTL_EXIT_OK;
	}
	const char *dir = argv[optind];
	char err[512] = "";
	int rc = keys_init(dir, err, sizeof(err));
	if (rc < 0)
		return fail(rc, err);
	const char *s = slash(dir);
	printf("created %s%s%s\n", dir, s, KEYS_STORAGE_FILE);
	printf("created %s%s%s\n", dir, s, KEYS_AUDIT_SIGNING_FILE);
	printf("created %s%s%s/audit.key\n", dir, s, KEYS_DOMAINS_DIR);
	return CTL_EXIT_OK;
}

static int keys_new_domain_cmd(int argc, char **argv)
{
	static const char *const names[] = {"DIR", "NAME"};
	bool help = false;
	int status =
	    keys_options(argc, argv, new_domain_usage, names, 2,
	                 "keys new-domain takes a directory and a domain name", NULL, &help);
	if (status != CTL_EXIT_OK)
		return status;
	if (help) {
		printf("%s\nCreates the linkage domain NAME: %s/NAME.key in DIR (mode 0600), with\n"
		       "version 1 of a fresh random 256-bit key. NAME is 1 to %d characters\n"
		       "a-z, 0-9 and '-', not starting with '-'. Refuses an existing domain.\n"
		       "isgd uses the domain after a reload (SIGHUP) or a restart.\n",
		       new_domain_usage, KEYS_DOMAINS_DIR, KEYS_DOMAIN_NAME_MAX);
		return CTL_EXIT_OK;
	}
	const char *dir = argv[optind], *name = argv[optind + 1];
	char err[512] = "";
	int rc = keys_new_domain(dir, name, err, sizeof(err));
	if (rc < 0)
		return fail(rc, err);
	printf("created %s%s%s/%s.key: domain '%s', version 1\n", dir, slash(dir), KEYS_DOMAINS_DIR,
	       name, name);
	return CTL_EXIT_OK;
}

/*
 * Which version answers as previous after a rotation, read back as isgd will
 * read it: the one just replaced, as keys_rotate retires no older version
 * later (docs/keys.md). False when the keyring could not be read back.
 */
static bool print_previous(const char *dir, const char *name, int64_t day)
{
	char err[512] = "", date[32];
	struct keyring *ring = NULL;
	bool said = false;
	if (keys_load_domains(dir, &ring, err, sizeof(err)) != 0)
		return false; /* the rotation is done; `keys list` will say what is wrong */
	for (size_t i = 0; i < keyring_domain_count(ring); i++) {
		size_t n = 0;
		if (strcmp(keyring_domain_name(ring, i, &n), name) != 0)
			continue;
		said = true;
		bool any = false;
		for (size_t j = 0; j < n; j++) {
			struct keys_version_info v;
			if (keyring_version_info(ring, i, j, day, &v) == 0 &&
			    v.state == KEYS_VERSION_PREVIOUS) {
				printf("version %u answers as previous until it retires on %s: "
				       "recipients also get its pseudonyms in '<field>.previous'\n",
				       (unsigned)v.version,
				       date_text(date, sizeof(date), v.retires));
				any = true;
			}
		}
		if (!any)
			printf("no version answers as previous: recipients get no "
			       "'<field>.previous'\n");
	}
	keyring_free(ring);
	return said;
}

static int keys_rotate_cmd(int argc, char **argv)
{
	static const char *const names[] = {"DIR", "NAME"};
	int64_t overlap = OVERLAP_DEFAULT;
	bool help = false;
	int status =
	    keys_options(argc, argv, rotate_usage, names, 2,
	                 "keys rotate takes a directory and a domain name", &overlap, &help);
	if (status != CTL_EXIT_OK)
		return status;
	if (help) {
		printf(
		    "%s\nAdds a new version, with a fresh random key, to the linkage domain NAME\n"
		    "in DIR. The new version makes pseudonyms from isgd's next reload\n"
		    "(SIGHUP) or restart. The version it replaces stays in use for DAYS days\n"
		    "(default %d, 0 to %d; 0 retires it at once): until then recipients also\n"
		    "get each pseudonym under it, in the field '<name>.previous', so they can\n"
		    "link records across the rotation. Old versions stay in the file.\n",
		    rotate_usage, OVERLAP_DEFAULT, KEYS_OVERLAP_MAX);
		return CTL_EXIT_OK;
	}
	const char *dir = argv[optind], *name = argv[optind + 1];
	char err[512] = "", date[32];
	uint32_t version = 0;
	int64_t day = today();
	int rc = keys_rotate(dir, name, day, overlap, &version, err, sizeof(err));
	if (rc < 0)
		return fail(rc, err);
	printf("rotated domain '%s': version %u is current from %s\n", name, (unsigned)version,
	       date_text(date, sizeof(date), day));
	if (overlap == 0)
		printf("version %u retired at once\n", (unsigned)version - 1);
	if (!print_previous(dir, name, day) && overlap > 0)
		printf("version %u retires on %s\n", (unsigned)version - 1,
		       date_text(date, sizeof(date), day + overlap));
	printf("reload isgd (SIGHUP) or restart it to use version %u\n", (unsigned)version);
	return CTL_EXIT_OK;
}

static const char *state_name(enum keys_version_state s)
{
	switch (s) {
	case KEYS_VERSION_CURRENT:
		return "current";
	case KEYS_VERSION_PREVIOUS:
		return "previous";
	case KEYS_VERSION_SUPERSEDED:
		return "superseded";
	case KEYS_VERSION_RETIRED:
		return "retired";
	}
	return "unknown";
}

static void print_domain(const struct keyring *ring, size_t i, int width, int64_t day)
{
	size_t n = 0;
	const char *name = keyring_domain_name(ring, i, &n);
	for (size_t j = 0; j < n; j++) {
		struct keys_version_info v;
		char created[32], retires[32] = "-";
		if (keyring_version_info(ring, i, j, day, &v) != 0)
			continue;
		date_text(created, sizeof(created), v.created);
		if (v.retires != KEYS_RETIRES_NEVER)
			date_text(retires, sizeof(retires), v.retires);
		printf("%-*s  %7u  %-10s  %-10s  %s\n", width, name, (unsigned)v.version, created,
		       retires, state_name(v.state));
	}
}

static int keys_list_cmd(int argc, char **argv)
{
	static const char *const names[] = {"DIR"};
	bool help = false;
	int status = keys_options(argc, argv, list_usage, names, 1, "keys list takes one directory",
	                          NULL, &help);
	if (status != CTL_EXIT_OK)
		return status;
	if (help) {
		printf("%s\nLoads every linkage domain key file in DIR/%s as isgd would (a bad\n"
		       "file is an error) and prints each domain's versions, oldest first: when\n"
		       "each was created, when it retires, and its state today:\n"
		       "  current     makes the pseudonyms\n"
		       "  previous    also answers, in '<field>.previous', until it retires\n"
		       "  superseded  not retired yet, but a newer version answers as previous\n"
		       "  retired     no longer used; kept for the audit log\n"
		       "Key material is never printed.\n",
		       list_usage, KEYS_DOMAINS_DIR);
		return CTL_EXIT_OK;
	}
	const char *dir = argv[optind];
	char err[512] = "";
	struct keyring *ring = NULL;
	/* keys_load_domains refuses a DIR that is missing (with the keys init advice) or is not a
	 * directory, each with its own message; only a missing DIR/domains is "no domains". */
	int rc = keys_load_domains(dir, &ring, err, sizeof(err));
	if (rc < 0)
		return fail(rc, err);
	size_t count = keyring_domain_count(ring);
	if (count == 0) {
		printf("no linkage domains in %s%s%s; create one with 'isgctl keys new-domain'\n",
		       dir, slash(dir), KEYS_DOMAINS_DIR);
		keyring_free(ring);
		return CTL_EXIT_OK;
	}
	int width = (int)strlen("DOMAIN");
	for (size_t i = 0; i < count; i++) {
		int len = (int)strlen(keyring_domain_name(ring, i, NULL));
		if (len > width)
			width = len;
	}
	int64_t day = today();
	printf("%-*s  %7s  %-10s  %-10s  %s\n", width, "DOMAIN", "VERSION", "CREATED", "RETIRES",
	       "STATE");
	for (size_t i = 0; i < count; i++)
		print_domain(ring, i, width, day);
	keyring_free(ring);
	return CTL_EXIT_OK;
}

static const struct ctl_command keys_commands[] = {
    {"init", keys_init_cmd, "create the storage, audit signing and audit domain keys in DIR"},
    {"new-domain", keys_new_domain_cmd, "create a linkage domain's key: new-domain DIR NAME"},
    {"rotate", keys_rotate_cmd, "add a new key version: rotate DIR NAME [--overlap DAYS]"},
    {"list", keys_list_cmd, "show each domain's key versions and dates (never the keys)"},
};

int cmd_keys(int argc, char **argv)
{
	if (ctl_group_usage(argc, argv, "usage: isgctl keys COMMAND ...\n", keys_commands,
	                    ARRAY_LEN(keys_commands), 10))
		return argc < 2 ? CTL_EXIT_USAGE : CTL_EXIT_OK;
	return ctl_dispatch(keys_commands, ARRAY_LEN(keys_commands), "keys", argc - 1, argv + 1);
}
