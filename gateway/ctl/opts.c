/*
 * The option parser of every isgctl command: getopt_long, and the mistakes
 * on a command line that getopt_long lets through, refused alike by every
 * command. An option that names one thing (a recipient, a file, a number)
 * given twice would silently lose one of its values: a script that sends
 * "--to nhs-south ... --to police-north" must not send to police-north. An
 * empty value, or a value that is another option of the command (its own
 * value forgotten: "--html --csv r.csv"), is a mistake too. The messages
 * name options, never their values: an identifier searched for by audit
 * subject is personal data.
 *
 * Options are taken by their full names only. getopt_long also takes any
 * unambiguous prefix ("--agr" for --agreement), so a script that
 * abbreviates would change meaning, or stop working, the day a command
 * gains an option with the same prefix; and a prefix where a value belongs
 * ("--html --cs") would pass for a value. Hence also: a value given as a
 * word of its own may not begin with "--" (one that does is given after
 * '=': "--message-id=--7").
 */
#include <stdio.h>
#include <string.h>

#include "ctl/ctl.h"

/* The options given before the command name (main's), for the commands' own parsers. */
static const struct ctl_opts *before_command;

void ctl_opts_init(struct ctl_opts *o, int argc, char **argv, const char *shortopts,
                   const struct option *longopts, const char *usage)
{
	memset(o, 0, sizeof(*o));
	o->argc = argc;
	o->argv = argv;
	o->shortopts = shortopts;
	o->longopts = longopts;
	o->usage = usage;
}

void ctl_opts_before_command(const struct ctl_opts *o)
{
	before_command = o;
}

/* The index in o->longopts of the option getopt_long returned as opt; -1 when none. */
static int long_index(const struct ctl_opts *o, int opt)
{
	for (int i = 0; o->longopts[i].name; i++)
		if (o->longopts[i].val == opt && !o->longopts[i].flag)
			return i;
	return -1;
}

static bool given(const struct ctl_opts *o, int i)
{
	return i >= 0 && i < CTL_OPTS_MAX && (o->given & (UINT64_C(1) << i));
}

static bool may_repeat(const struct ctl_opts *o, int opt)
{
	for (const int *m = o->many; m && *m; m++)
		if (*m == opt)
			return true;
	return false;
}

/* Whether name was given before the command name. */
static bool given_before(const char *name)
{
	const struct ctl_opts *b = before_command;
	if (!b)
		return false;
	for (int i = 0; b->longopts[i].name; i++)
		if (strcmp(b->longopts[i].name, name) == 0)
			return given(b, i);
	return false;
}

/* The long option of this command that s is, as "--name" or "--name=...": NULL when none. */
static const char *is_option(const struct ctl_opts *o, const char *s)
{
	if (strncmp(s, "--", 2) != 0)
		return NULL;
	s += 2;
	size_t n = strcspn(s, "=");
	for (int i = 0; o->longopts[i].name; i++)
		if (strlen(o->longopts[i].name) == n && strncmp(o->longopts[i].name, s, n) == 0)
			return o->longopts[i].name;
	return NULL;
}

/* The length of an option word's name, "--name" or "--name=VALUE", without its "--". */
static size_t name_len(const char *word)
{
	return strcspn(word + 2, "=");
}

/*
 * The word of argv that getopt_long just took as an option: the one before
 * its value when the value was a word of its own (optarg is that word).
 */
static const char *option_word(const struct ctl_opts *o)
{
	if (optind >= 2 && optarg && optarg == o->argv[optind - 1])
		return o->argv[optind - 2];
	return optind >= 1 ? o->argv[optind - 1] : "?";
}

/* Whether the value was a word of its own ("--to X"), not after '=' ("--to=X"). */
static bool value_is_word(const struct ctl_opts *o)
{
	return optind >= 1 && optarg == o->argv[optind - 1];
}

/* Refuse an abbreviation (the option word) of the long option name as unknown, naming name. */
static int abbreviation(const struct ctl_opts *o, const char *word, const char *name)
{
	ctl_usage_error(o->usage,
	                "unknown option '%.*s' (options are not abbreviated: did you mean "
	                "'--%s'?)",
	                (int)(name_len(word) + 2), word, name);
	return CTL_OPTS_ERROR;
}

/* Whether getopt_long took an abbreviation for the long option i; if so, say so. */
static int abbreviated(const struct ctl_opts *o, int i)
{
	const char *word = option_word(o);
	if (strncmp(word, "--", 2) != 0)
		return 0; /* a short option */
	size_t n = name_len(word);
	const char *name = o->longopts[i].name;
	if (strlen(name) == n && strncmp(name, word + 2, n) == 0)
		return 0;
	return abbreviation(o, word, name);
}

/* An unknown option is named without what follows its '=': a mistyped --nhs-number=N. */
static int bad_option(const struct ctl_opts *o, int opt)
{
	const char *what = optind > 0 ? o->argv[optind - 1] : "?";
	if (opt == ':' && strncmp(what, "--", 2) == 0 && !is_option(o, what)) {
		/* an abbreviation, its value missing: getopt_long found the option */
		for (int i = 0; o->longopts[i].name; i++)
			if (strncmp(o->longopts[i].name, what + 2, name_len(what)) == 0)
				return abbreviation(o, what, o->longopts[i].name);
	}
	if (opt == ':')
		ctl_usage_error(o->usage, "option '%s' needs a value", what);
	else if (optopt && optopt < 256 && what[0] == '-' && what[1] != '-')
		ctl_usage_error(o->usage, "unknown option '-%c'", optopt);
	else if (strchr(what, '=') && is_option(o, what))
		ctl_usage_error(o->usage, "option '%.*s' takes no value", (int)strcspn(what, "="),
		                what);
	else
		ctl_usage_error(o->usage, "unknown option '%.*s'", (int)strcspn(what, "="), what);
	return CTL_OPTS_ERROR;
}

/* The checks of a value option: an exit status. */
static int check_value(struct ctl_opts *o, int opt, int i)
{
	const char *name = o->longopts[i].name, *other;
	if (!*optarg)
		return ctl_usage_error(o->usage, "option '--%s' has an empty value", name);
	if (value_is_word(o) && (other = is_option(o, optarg)))
		return ctl_usage_error(
		    o->usage, "option '--%s' needs a value, not the option '--%s'", name, other);
	if (value_is_word(o) && strncmp(optarg, "--", 2) == 0)
		return ctl_usage_error(o->usage,
		                       "option '--%s' needs a value, not an option; a value that "
		                       "begins with '--' is given as --%s=VALUE",
		                       name, name);
	if (may_repeat(o, opt))
		return CTL_EXIT_OK;
	if (given(o, i))
		return ctl_usage_error(o->usage, "--%s given twice", name);
	if (given_before(name))
		return ctl_usage_error(o->usage, "--%s given twice (before and after the command)",
		                       name);
	o->given |= UINT64_C(1) << i;
	return CTL_EXIT_OK;
}

int ctl_opts_next(struct ctl_opts *o)
{
	opterr = 0;
	optarg = NULL;
	int longindex = -1;
	int opt = getopt_long(o->argc, o->argv, o->shortopts, o->longopts, &longindex);
	if (opt == -1)
		return CTL_OPTS_END;
	if (opt == '?' || opt == ':')
		return bad_option(o, opt);
	if (longindex >= 0 && abbreviated(o, longindex) != 0)
		return CTL_OPTS_ERROR;
	int i = long_index(o, opt);
	if (i < 0 || i >= CTL_OPTS_MAX)
		fatal("isgctl option %d has no long option among the first %d", opt, CTL_OPTS_MAX);
	o->name = o->longopts[i].name;
	if (!optarg) /* a flag: saying it twice says it once */
		return opt;
	return check_value(o, opt, i) == CTL_EXIT_OK ? opt : CTL_OPTS_ERROR;
}

bool ctl_opts_given(const struct ctl_opts *o, int opt)
{
	return given(o, long_index(o, opt));
}

int ctl_opts_args(const struct ctl_opts *o, const char *const *names)
{
	for (int i = optind; i < o->argc; i++)
		if (!o->argv[i][0])
			return ctl_usage_error(o->usage, "the %s argument is empty",
			                       names[i - optind]);
	return CTL_EXIT_OK;
}
