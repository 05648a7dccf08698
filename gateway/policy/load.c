/*
 * Loading a policy directory: list the files, read each once, hash exactly
 * the bytes that are parsed, parse partners.yaml then each agreement, and
 * fail if any file had any problem. A set that fails to load is freed here;
 * the caller keeps running on the set it had.
 */
#include "policy/internal.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/util.h"

struct source {
	char *rel;  /* path inside the policy directory: "agreements/x.yaml" */
	char *path; /* dir/rel, for diagnostics */
	char *buf;
	size_t len;
	bool read_ok;
};

struct loader {
	const char *dir;
	struct ydoc_diags *d;
	struct source *src;
	size_t n_src, cap_src;
	size_t total_bytes;
	int err; /* the worst failure so far */
	bool no_agreements_dir;
};

/* IO beats PARSE beats INVALID: the caller learns the most basic problem. */
static int err_rank(int err)
{
	switch (err) {
	case 0:
		return 0;
	case ISG_ERR_IO:
		return 4;
	case ISG_ERR_NOMEM:
		return 3;
	case ISG_ERR_PARSE:
		return 2;
	default:
		return 1;
	}
}

static void note_err(struct loader *l, int err)
{
	if (err_rank(err) > 1 && err_rank(err) > err_rank(l->err))
		l->err = err;
	else if (err && !l->err)
		l->err = ISG_ERR_INVALID;
}

static char *path_join(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b);
	char *p = malloc(la + lb + 2);
	if (!p)
		return NULL;
	memcpy(p, a, la);
	p[la] = '/';
	memcpy(p + la + 1, b, lb + 1);
	return p;
}

static int add_source(struct loader *l, const char *rel)
{
	if (l->n_src == POLICY_MAX_FILES) {
		ydoc_error(l->d, l->dir, NULL, "more than %d policy files", POLICY_MAX_FILES);
		return ISG_ERR_INVALID;
	}
	if (l->n_src == l->cap_src) {
		size_t cap = l->cap_src ? l->cap_src * 2 : 16;
		struct source *s = realloc(l->src, cap * sizeof(*s));
		if (!s)
			return ISG_ERR_NOMEM;
		l->src = s;
		l->cap_src = cap;
	}
	struct source *s = &l->src[l->n_src];
	memset(s, 0, sizeof(*s));
	s->rel = strdup(rel);
	s->path = path_join(l->dir, rel);
	l->n_src++;
	return s->rel && s->path ? 0 : ISG_ERR_NOMEM;
}

static bool ends_with(const char *s, const char *suffix, bool any_case)
{
	size_t len = strlen(s), n = strlen(suffix);
	return len > n &&
	       (any_case ? strcasecmp(s + len - n, suffix) : strcmp(s + len - n, suffix)) == 0;
}

static bool is_agreement_name(const char *name)
{
	/* Hidden files include editors' lock and swap files. */
	return name[0] != '.' && ends_with(name, ".yaml", false);
}

/*
 * Why agreements/NAME, which is no agreement by its name, looks meant as
 * one (an admin saved new.yml): NULL when it is plainly something else, a
 * README, an editor's backup (x.yaml~), swap file or lock file (.#x.yaml).
 */
static const char *misnamed(const char *name)
{
	if (is_agreement_name(name) || !strcmp(name, ".") || !strcmp(name, "..") ||
	    !strncmp(name, ".#", 2))
		return NULL;
	if (name[0] == '.' && ends_with(name, ".yaml", false))
		return "ignored: the name starts with '.' (hidden)";
	if (ends_with(name, ".yaml", true) || ends_with(name, ".yml", true))
		return "ignored: the name must end in .yaml";
	return NULL;
}

/* What is told of an entry of agreements/ that may have been meant as an agreement. */
typedef void (*ignored_fn)(void *ctx, const char *path, const char *why);

/*
 * Whether agreements/NAME.yaml is an agreement: a regular file, or a link
 * to one. A link that leads to no file is none, for whoever asks; a type
 * that cannot be learnt (EACCES: a link into a directory this process may
 * not enter) is the caller's to report, or a reload, run as another user
 * than the start, would quietly drop an agreement the start loaded.
 */
static int list_entry(const char *dir, const char *name, policy_file_fn fn, ignored_fn ignored,
                      void *ctx)
{
	char rel[sizeof(POLICY_AGREEMENTS_DIR) + 256 + 1];
	snprintf(rel, sizeof(rel), "%s/%s", POLICY_AGREEMENTS_DIR, name);
	char *full = path_join(dir, rel);
	if (!full)
		return ISG_ERR_NOMEM;
	struct stat st;
	int r = 0;
	const char *why = misnamed(name);
	if (!why && is_agreement_name(name)) {
		int type_err = stat(full, &st) == 0 ? 0 : errno;
		if (type_err == ENOENT || type_err == ENOTDIR || type_err == ELOOP)
			why = "ignored: a link that leads to no file";
		else if (type_err)
			r = fn(ctx, rel, full, type_err);
		else if (!S_ISREG(st.st_mode))
			why = "ignored: not a regular *.yaml file";
		else
			r = fn(ctx, rel, full, 0);
	}
	if (why && ignored)
		ignored(ctx, full, why);
	free(full);
	return r;
}

static int list_files(const char *dir, policy_file_fn fn, ignored_fn ignored, void *ctx)
{
	char *partners = path_join(dir, POLICY_PARTNERS_FILE);
	char *adir = path_join(dir, POLICY_AGREEMENTS_DIR);
	int r = ISG_ERR_NOMEM;
	if (!partners || !adir || (r = fn(ctx, POLICY_PARTNERS_FILE, partners, 0)) != 0)
		goto out;
	DIR *dp = opendir(adir);
	if (!dp) {
		r = fn(ctx, POLICY_AGREEMENTS_DIR, adir, errno);
		goto out;
	}
	const struct dirent *e;
	while (r == 0 && (e = readdir(dp)))
		r = list_entry(dir, e->d_name, fn, ignored, ctx);
	closedir(dp);
out:
	free(partners);
	free(adir);
	return r;
}

int policy_list_files(const char *dir, policy_file_fn fn, void *ctx)
{
	return list_files(dir, fn, NULL, ctx);
}

/* An entry an admin may have meant as an agreement: a warning, so a new.yml is noticed. */
static void note_ignored(void *ctx, const char *path, const char *why)
{
	struct loader *l = ctx;
	ydoc_warning(l->d, path, NULL, "%s", why);
}

/* policy_list_files's callback for the loader: each file a source, each failure an error. */
static int list_source(void *ctx, const char *rel, const char *path, int errnum)
{
	struct loader *l = ctx;
	if (errnum == 0)
		return add_source(l, rel);
	if (strcmp(rel, POLICY_AGREEMENTS_DIR) == 0) {
		ydoc_error(l->d, path, NULL, "cannot open directory: %s", strerror(errnum));
		/* The partners are still checked, to report everything at once. */
		l->no_agreements_dir = true;
	} else {
		ydoc_error(l->d, path, NULL, "cannot open: %s", strerror(errnum));
	}
	note_err(l, ISG_ERR_IO);
	return 0;
}

static int source_order(const void *a, const void *b)
{
	return strcmp(((const struct source *)a)->rel, ((const struct source *)b)->rel);
}

/*
 * Whoever may write a policy file, or the directory that names it, may
 * change the policy (a "pseudonymise" into a "pass"): refused, whoever
 * owns it. Only the write bits: a policy is no secret.
 */
static bool writable_by_others(struct loader *l, const char *path, const char *what, mode_t mode)
{
	if ((mode & 022) == 0)
		return false;
	ydoc_error(l->d, path, NULL,
	           "%s is writable by group or others (mode %04o), so anyone who can write it "
	           "can change the policy; chmod go-w it",
	           what, (unsigned)(mode & 07777));
	note_err(l, ISG_ERR_DENIED);
	return true;
}

/* The policy directory and agreements/ (what a link leads to); a missing one is reported later. */
static void check_dir_mode(struct loader *l, const char *path, const char *what)
{
	struct stat st;
	if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
		writable_by_others(l, path, what, st.st_mode);
}

/* The directory part of path: "/" for "/x", "." for "x". */
static void dir_of(const char *path, char out[static PATH_MAX])
{
	const char *slash = strrchr(path, '/');
	if (!slash)
		snprintf(out, PATH_MAX, ".");
	else
		snprintf(out, PATH_MAX, "%.*s", slash == path ? 1 : (int)(slash - path), path);
}

/*
 * What a link leads to may be replaced by whoever may write the directory
 * holding it, whatever its own mode: a 0644 file in a 0777 shared/ is
 * anyone's to rename over. So for a link, each directory holding a link on
 * the way and the one holding what it finally leads to must not be writable
 * by group or others either. A sticky bit (/tmp) does not make one safe:
 * anyone may create the name there once it is gone, and its owner may
 * replace it. The directory holding path itself is the caller's (the policy
 * directory or agreements/, checked once). True when one is refused.
 */
static bool link_dirs_writable(struct loader *l, const char *path, const char *what)
{
	char cur[PATH_MAX], target[PATH_MAX], dir[PATH_MAX], real[PATH_MAX];
	struct stat st;
	if (snprintf(cur, sizeof(cur), "%s", path) >= (int)sizeof(cur))
		return false; /* opening it reports that */
	/* At most as many links as the kernel follows; a longer chain fails to open. */
	for (int hops = 0; hops < 40; hops++) {
		ssize_t n;
		if (lstat(cur, &st) != 0 || !S_ISLNK(st.st_mode) ||
		    (n = readlink(cur, target, sizeof(target) - 1)) < 0)
			return false;
		target[n] = '\0';
		dir_of(cur, dir);
		int w = target[0] == '/' ? snprintf(cur, sizeof(cur), "%s", target)
		                         : snprintf(cur, sizeof(cur), "%s/%s", dir, target);
		if (w < 0 || w >= (int)sizeof(cur))
			return false;
		/* The directory holding the name the link leads to, its own links followed. */
		dir_of(cur, dir);
		if (!realpath(dir, real) || stat(real, &st) != 0 || (st.st_mode & 022) == 0)
			continue;
		ydoc_error(l->d, path, NULL,
		           "%s is a link into directory '%s', which is writable by group or others "
		           "(mode %04o), so anyone who can write there can replace it and change "
		           "the policy; chmod go-w that directory, or move the file out of it",
		           what, real, (unsigned)(st.st_mode & 07777));
		note_err(l, ISG_ERR_DENIED);
		return true;
	}
	return false;
}

static void read_source(struct loader *l, struct source *s)
{
	/*
	 * O_NONBLOCK: opening a FIFO for reading would wait for a writer, and
	 * isgd reloads in its signal loop. Non-regular files are refused below.
	 */
	int fd = open(s->path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	struct stat st;
	if (fd < 0) {
		ydoc_error(l->d, s->path, NULL, "cannot open: %s", strerror(errno));
		note_err(l, ISG_ERR_IO);
		return;
	}
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
		ydoc_error(l->d, s->path, NULL,
		           "not a regular file (a policy file must be a plain file)");
		note_err(l, ISG_ERR_IO);
		goto out;
	}
	if (writable_by_others(l, s->path, "policy file", st.st_mode) ||
	    link_dirs_writable(l, s->path, "policy file"))
		goto out;
	if (st.st_size > POLICY_MAX_FILE_BYTES) {
		ydoc_error(l->d, s->path, NULL, "file too big (a policy file may have %d bytes)",
		           POLICY_MAX_FILE_BYTES);
		note_err(l, ISG_ERR_INVALID);
		goto out;
	}
	if (l->total_bytes + (size_t)st.st_size > POLICY_MAX_TOTAL_BYTES) {
		ydoc_error(l->d, s->path, NULL,
		           "with this file the policy files together have more than %d bytes, "
		           "the most a policy set may have",
		           POLICY_MAX_TOTAL_BYTES);
		note_err(l, ISG_ERR_INVALID);
		goto out;
	}
	size_t cap = (size_t)st.st_size + 1; /* one more, to see a file that grew */
	if (!(s->buf = malloc(cap))) {
		note_err(l, ISG_ERR_NOMEM);
		goto out;
	}
	ssize_t r = fd_read_up_to(fd, s->buf, cap);
	if (r < 0) {
		ydoc_error(l->d, s->path, NULL, "cannot read: %s", strerror(errno));
		note_err(l, ISG_ERR_IO);
		goto out;
	}
	s->len = (size_t)r;
	if (s->len == cap) {
		ydoc_error(l->d, s->path, NULL, "file changed while being read");
		note_err(l, ISG_ERR_IO);
		goto out;
	}
	l->total_bytes += s->len;
	s->read_ok = true;
out:
	close(fd);
}

static void put_u64be(struct sha256_state *h, uint64_t v)
{
	uint8_t b[8];
	for (int i = 0; i < 8; i++)
		b[i] = (uint8_t)(v >> (56 - 8 * i));
	sha256_update(h, b, sizeof(b));
}

/* SHA-256 over (len(path), path, len(content), content) of each file in path order. */
static void hash_sources(const struct loader *l, char version[65])
{
	struct sha256_state h;
	sha256_init(&h);
	for (size_t i = 0; i < l->n_src; i++) {
		const struct source *s = &l->src[i];
		put_u64be(&h, strlen(s->rel));
		sha256_update(&h, s->rel, strlen(s->rel));
		put_u64be(&h, s->len);
		sha256_update(&h, s->buf, s->len);
	}
	uint8_t digest[SHA256_LEN];
	sha256_final(&h, digest);
	hex_encode(version, digest, sizeof(digest));
}

static struct ydoc *parse_source(struct loader *l, const struct source *s)
{
	struct ydoc *doc = NULL;
	if (!s->read_ok)
		return NULL;
	int err = ydoc_load_buffer(s->path, s->buf, s->len, &doc, l->d);
	if (err)
		note_err(l, err);
	return doc;
}

static void parse_all(struct loader *l, struct policy_parser *p)
{
	size_t n_agreements = l->n_src > 1 ? l->n_src - 1 : 0; /* partners.yaml is one source */
	p->set->agreements = calloc(n_agreements ? n_agreements : 1, sizeof(*p->set->agreements));
	p->ids_seen = calloc(n_agreements ? n_agreements : 1, sizeof(*p->ids_seen));
	if (!p->set->agreements || !p->ids_seen) {
		note_err(l, ISG_ERR_NOMEM);
		return;
	}
	for (size_t i = 0; i < l->n_src; i++) {
		if (strcmp(l->src[i].rel, POLICY_PARTNERS_FILE) != 0)
			continue;
		struct ydoc *doc = parse_source(l, &l->src[i]);
		if (doc)
			policy_parse_partners(p, doc);
		ydoc_free(doc);
	}
	for (size_t i = 0; i < l->n_src; i++) {
		if (strcmp(l->src[i].rel, POLICY_PARTNERS_FILE) == 0)
			continue;
		struct ydoc *doc = parse_source(l, &l->src[i]);
		if (doc)
			policy_parse_agreement(p, doc,
			                       l->src[i].rel + strlen(POLICY_AGREEMENTS_DIR) + 1);
		ydoc_free(doc);
	}
	if (n_agreements == 0 && !l->no_agreements_dir)
		ydoc_warning(l->d, l->dir, NULL,
		             "no agreements in %s/: every exchange will be refused",
		             POLICY_AGREEMENTS_DIR);
}

int policy_load(const char *dir, struct policy_set **out, struct ydoc_diags *diags)
{
	return policy_load_at(dir, date_days_of_ms(time_now_ms()), out, diags);
}

int policy_load_at(const char *dir, int64_t today_days, struct policy_set **out,
                   struct ydoc_diags *diags)
{
	*out = NULL;
	if (sodium_init() < 0)
		return ISG_ERR_CRYPTO;
	size_t errors_before = diags->errors;
	/* "policies/" and "policies" name the same files in messages. */
	size_t dl = strlen(dir);
	while (dl > 1 && dir[dl - 1] == '/')
		dl--;
	char *clean_dir = strndup(dir, dl), *adir = NULL;
	struct loader l = {.dir = clean_dir, .d = diags};
	struct policy_parser p = {.d = diags, .today = today_days};
	if (!clean_dir || !(p.set = calloc(1, sizeof(*p.set)))) {
		l.err = ISG_ERR_NOMEM;
		goto out;
	}
	atomic_init(&p.set->refs, 1);
	if (!(adir = path_join(clean_dir, POLICY_AGREEMENTS_DIR))) {
		l.err = ISG_ERR_NOMEM;
		goto out;
	}
	check_dir_mode(&l, clean_dir, "policy directory");
	link_dirs_writable(&l, clean_dir, "policy directory");
	check_dir_mode(&l, adir, "agreements directory");
	link_dirs_writable(&l, adir, "agreements directory");
	int err = list_files(clean_dir, list_source, note_ignored, &l);
	if (err) {
		note_err(&l, err);
		goto out;
	}
	qsort(l.src, l.n_src, sizeof(*l.src), source_order);
	for (size_t i = 0; i < l.n_src; i++)
		read_source(&l, &l.src[i]);
	hash_sources(&l, p.set->version);
	parse_all(&l, &p);
	if (diags->errors != errors_before)
		note_err(&l, ISG_ERR_INVALID);
	else if (!l.err)
		note_err(&l, policy_check_set(&p));
out:
	for (size_t i = 0; i < l.n_src; i++) {
		free(l.src[i].rel);
		free(l.src[i].path);
		free(l.src[i].buf);
	}
	free(l.src);
	policy_parser_release(&p);
	free(adir);
	free(clean_dir);
	if (l.err) {
		if (l.err == ISG_ERR_NOMEM)
			ydoc_error(diags, dir, NULL, "out of memory loading the policy");
		policy_set_free(p.set);
		return l.err;
	}
	*out = p.set;
	return 0;
}
