/*
 * A uid in the words of a message that tells an administrator whom a file
 * must belong to: "uid 999 (isg)", and "isg" for the chown they will type.
 */
#include <pwd.h>
#include <stdio.h>
#include <sys/types.h>

#include "util/util.h"

void user_words(unsigned uid, char *words, size_t wsize, char *who, size_t whosize)
{
	struct passwd pw, *found = NULL;
	char scratch[1024];
	if (getpwuid_r((uid_t)uid, &pw, scratch, sizeof(scratch), &found) == 0 && found &&
	    found->pw_name) {
		snprintf(words, wsize, "uid %u (%s)", uid, found->pw_name);
		snprintf(who, whosize, "%s", found->pw_name);
	} else {
		snprintf(words, wsize, "uid %u", uid);
		snprintf(who, whosize, "%u", uid);
	}
}
