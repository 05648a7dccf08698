/*
 * Where audit export and audit report write: standard output, or a file
 * that holds what the log holds (pseudonyms; who shared what about whom),
 * so a new one of mode 0600 renamed over the old only once written whole.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ctl/cmd_audit.h"
#include "ctl/ctl.h"

/*
 * What is at path already and is not a plain file (a FIFO, a device such
 * as /dev/stdout, a symbolic link) is written through, as it is: renaming
 * over it would replace it. A file reached through a link is cut to 0600,
 * or made 0600 when the link points to nothing yet.
 */
static FILE *open_through(const char *path)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_NOCTTY | O_CLOEXEC, 0600);
	struct stat st;
	/* Narrowed before it is emptied: a file isgctl may not chmod stays as it was. */
	if (fd >= 0 && fstat(fd, &st) == 0 && S_ISREG(st.st_mode) &&
	    (fchmod(fd, 0600) != 0 || ftruncate(fd, 0) != 0)) {
		int e = errno;
		close(fd);
		fd = -1;
		errno = e;
	}
	FILE *f = fd >= 0 ? fdopen(fd, "w") : NULL;
	if (!f) {
		ctl_warn("cannot write '%s': %s", path, ctl_errno_text(errno));
		if (fd >= 0)
			close(fd);
	}
	return f;
}

/* A new file of mode 0600 beside path (".NAME.XXXXXX"), named in *tmp. */
static FILE *open_new(const char *path, char **tmp)
{
	const char *slash = strrchr(path, '/');
	int dir_len = slash ? (int)(slash - path + 1) : 0;
	if (asprintf(tmp, "%.*s.%s.XXXXXX", dir_len, path, slash ? slash + 1 : path) < 0) {
		*tmp = NULL;
		ctl_warn("out of memory");
		return NULL;
	}
	int fd = mkostemp(*tmp, O_CLOEXEC); /* mode 0600 */
	FILE *f = fd >= 0 ? fdopen(fd, "w") : NULL;
	if (!f) {
		ctl_warn("cannot write '%s': %s", path, ctl_errno_text(errno));
		if (fd >= 0) {
			close(fd);
			unlink(*tmp);
		}
		free(*tmp);
		*tmp = NULL;
	}
	return f;
}

int audit_output_open(struct audit_output *o, const char *path, const char *what)
{
	*o = (struct audit_output){.path = path, .what = what};
	if (!path) {
		o->f = stdout;
		return CTL_EXIT_OK;
	}
	struct stat st;
	if (lstat(path, &st) == 0 && !S_ISREG(st.st_mode))
		o->f = open_through(path);
	else
		o->f = open_new(path, &o->tmp);
	return o->f ? CTL_EXIT_OK : CTL_EXIT_LOCAL;
}

int audit_output_close(struct audit_output *o, bool write_failed, bool abandoned)
{
	FILE *f = o->f;
	const char *path = o->path;
	char *tmp = o->tmp;
	o->f = NULL;
	o->tmp = NULL;
	bool ok = !write_failed && fflush(f) == 0;
	int err = errno;
	if (path) {
		struct stat st;
		if (ok && fstat(fileno(f), &st) == 0 && S_ISREG(st.st_mode) &&
		    fsync(fileno(f)) != 0) {
			ok = false;
			err = errno;
		}
		if (fclose(f) != 0 && ok) {
			ok = false;
			err = errno;
		}
		if (ok && !abandoned && tmp && rename(tmp, path) != 0) {
			ok = false;
			err = errno;
		}
		if (ok && !abandoned && tmp && ctl_sync_dir_of(path) != 0)
			ctl_warn("'%s' written, but its directory cannot be synced: %s", path,
			         ctl_errno_text(errno));
	}
	if (ok && !abandoned) {
		free(tmp);
		return CTL_EXIT_OK;
	}
	if (!abandoned && path)
		ctl_warn("cannot write '%s': %s", path, ctl_errno_text(err ? err : errno));
	else if (!abandoned)
		ctl_output_warn("cannot write %s: %s", o->what,
		                ctl_output_errno_text(f, err ? err : errno));
	if (tmp)
		unlink(tmp);
	free(tmp);
	return CTL_EXIT_LOCAL;
}

/*
 * The directory of path resolved (symbolic links, "." and "..") and its
 * last component: "out/../out/r.html" and "./out/r.html" are one name.
 * NULL when the directory cannot be resolved or there is no last component.
 */
static char *resolved_name(const char *path)
{
	const char *slash = strrchr(path, '/');
	const char *base = slash ? slash + 1 : path;
	if (!*base || strcmp(base, ".") == 0 || strcmp(base, "..") == 0)
		return NULL;
	char *dir = NULL;
	if (!slash) {
		dir = realpath(".", NULL);
	} else {
		char *d = strndup(path, slash == path ? 1 : (size_t)(slash - path));
		dir = d ? realpath(d, NULL) : NULL;
		free(d);
	}
	if (!dir)
		return NULL;
	struct strbuf b;
	strbuf_init(&b);
	strbuf_printf(&b, "%s/%s", strcmp(dir, "/") == 0 ? "" : dir, base);
	free(dir);
	return strbuf_take(&b, NULL);
}

bool audit_output_same(const char *a, const char *b)
{
	if (strcmp(a, b) == 0)
		return true;
	struct stat sa, sb;
	bool has_a = stat(a, &sa) == 0, has_b = stat(b, &sb) == 0;
	if (has_a && has_b) /* through any link or path: the file itself */
		return sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
	if (has_a != has_b)
		return false;
	char *ra = resolved_name(a), *rb = resolved_name(b);
	bool same = ra && rb && strcmp(ra, rb) == 0;
	free(ra);
	free(rb);
	return same;
}
