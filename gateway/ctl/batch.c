/* Record batches (an arena owns their strings), input formats, and the small file and
 * output helpers the commands share (slurping a file, syncing a directory, errno texts). */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdalign.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ctl/ctl_internal.h"

#define ARENA_CHUNK (64u * 1024)

struct ctl_arena_chunk {
	struct ctl_arena_chunk *next;
	size_t used, cap;
	alignas(max_align_t) unsigned char data[];
};

void *ctl_arena_alloc(struct ctl_batch *b, size_t size)
{
	size = (size + alignof(max_align_t) - 1) & ~(alignof(max_align_t) - 1);
	struct ctl_arena_chunk *c = b->arena;
	if (!c || c->cap - c->used < size) {
		size_t cap = size > ARENA_CHUNK ? size : ARENA_CHUNK;
		if (cap > SIZE_MAX - sizeof(*c))
			return NULL;
		c = malloc(sizeof(*c) + cap);
		if (!c)
			return NULL;
		c->used = 0;
		c->cap = cap;
		c->next = b->arena;
		b->arena = c;
	}
	void *p = c->data + c->used;
	c->used += size;
	return p;
}

char *ctl_arena_strdup(struct ctl_batch *b, const char *s, size_t len)
{
	if (len == SIZE_MAX)
		return NULL;
	char *p = ctl_arena_alloc(b, len + 1);
	if (p) {
		memcpy(p, s, len);
		p[len] = '\0';
	}
	return p;
}

void ctl_batch_init(struct ctl_batch *b)
{
	memset(b, 0, sizeof(*b));
}

void ctl_batch_release(struct ctl_batch *b)
{
	struct ctl_arena_chunk *c = b->arena;
	while (c) {
		struct ctl_arena_chunk *next = c->next;
		free(c);
		c = next;
	}
	free(b->records);
	free(b->lines);
	ctl_batch_init(b);
}

int ctl_batch_add(struct ctl_batch *b, const struct isg_field *fields, size_t n, int line)
{
	if (b->n == b->cap) {
		size_t cap = b->cap ? b->cap * 2 : 64;
		struct isg_record *r = realloc(b->records, cap * sizeof(*r));
		if (!r)
			return ISG_ERR_NOMEM;
		b->records = r;
		int *l = realloc(b->lines, cap * sizeof(*l));
		if (!l)
			return ISG_ERR_NOMEM;
		b->lines = l;
		b->cap = cap;
	}
	struct isg_field *copy = NULL;
	if (n) {
		copy = ctl_arena_alloc(b, n * sizeof(*copy));
		if (!copy)
			return ISG_ERR_NOMEM;
		memcpy(copy, fields, n * sizeof(*copy));
	}
	b->records[b->n] = (struct isg_record){.n_fields = n, .fields = copy};
	b->lines[b->n] = line;
	b->n++;
	return 0;
}

void ctl_limits_default(struct ctl_limits *l)
{
	l->max_line = CTL_MAX_LINE_DEFAULT;
	l->max_fields = CTL_MAX_FIELDS_DEFAULT;
	l->max_records = CTL_MAX_RECORDS_DEFAULT;
}

static bool ends_with(const char *s, const char *suffix)
{
	size_t a = strlen(s), b = strlen(suffix);
	return a > b && strcasecmp(s + a - b, suffix) == 0;
}

enum ctl_format ctl_format_from_name(const char *path)
{
	if (!path)
		return CTL_FORMAT_NONE;
	if (ends_with(path, ".csv"))
		return CTL_FORMAT_CSV;
	if (ends_with(path, ".jsonl") || ends_with(path, ".ndjson"))
		return CTL_FORMAT_JSONL;
	return CTL_FORMAT_NONE;
}

int ctl_format_parse(const char *s, enum ctl_format *out)
{
	if (strcmp(s, "csv") == 0)
		*out = CTL_FORMAT_CSV;
	else if (strcmp(s, "jsonl") == 0 || strcmp(s, "ndjson") == 0)
		*out = CTL_FORMAT_JSONL;
	else
		return ISG_ERR_PARSE;
	return 0;
}

int ctl_read_records(enum ctl_format format, const char *name, const char *buf, size_t len,
                     const struct ctl_limits *lim, struct ctl_batch *out, char *err, size_t errlen)
{
	switch (format) {
	case CTL_FORMAT_CSV:
		return ctl_read_csv(name, buf, len, lim, out, err, errlen);
	case CTL_FORMAT_JSONL:
		return ctl_read_jsonl(name, buf, len, lim, out, err, errlen);
	case CTL_FORMAT_NONE:
		break;
	}
	snprintf(err, errlen, "%s: unknown input format", name);
	return ISG_ERR_INVALID;
}

static int slurp_fd(int fd, const char *shown, size_t max, char **buf, size_t *len, char *err,
                    size_t errlen)
{
	size_t cap = 64 * 1024, n = 0;
	char *p = malloc(cap + 1);
	for (;;) {
		if (!p) {
			snprintf(err, errlen, "out of memory reading %s", shown);
			return ISG_ERR_NOMEM;
		}
		if (n > max) {
			snprintf(err, errlen, "%s: larger than %zu bytes", shown, max);
			free(p);
			return ISG_ERR_TOO_BIG;
		}
		if (n == cap) {
			cap = cap > max / 2 ? max + 1 : cap * 2;
			char *q = realloc(p, cap + 1);
			if (!q)
				free(p);
			p = q;
			continue;
		}
		ssize_t r = read(fd, p + n, cap - n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			snprintf(err, errlen, "cannot read %s: %s", shown, ctl_errno_text(errno));
			free(p);
			return ISG_ERR_IO;
		}
		if (r == 0)
			break;
		n += (size_t)r;
	}
	p[n] = '\0';
	*buf = p;
	*len = n;
	return 0;
}

int ctl_sync_dir_of(const char *path)
{
	const char *slash = strrchr(path, '/');
	char *dir = slash ? strndup(path, (size_t)(slash - path + 1)) : strdup(".");
	int fd = dir ? open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
	int rc = fd >= 0 && fsync(fd) == 0 ? 0 : -1;
	int e = errno;
	if (fd >= 0)
		close(fd);
	free(dir);
	errno = e; /* the caller says why */
	return rc;
}

int ctl_slurp(const char *path, size_t max, char **buf, size_t *len, char *err, size_t errlen)
{
	if (strcmp(path, "-") == 0)
		return slurp_fd(STDIN_FILENO, "standard input", max, buf, len, err, errlen);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		snprintf(err, errlen, "cannot open '%s': %s", path, ctl_errno_text(errno));
		return ISG_ERR_IO;
	}
	struct stat st;
	if (fstat(fd, &st) == 0 && S_ISDIR(st.st_mode)) {
		snprintf(err, errlen, "'%s' is a directory", path);
		close(fd);
		return ISG_ERR_IO;
	}
	char shown[300];
	snprintf(shown, sizeof(shown), "'%s'", path);
	int rc = slurp_fd(fd, shown, max, buf, len, err, errlen);
	close(fd);
	return rc;
}

const char *ctl_errno_text(int e)
{
	static char buf[128];
	str_copy(buf, strerror(e), sizeof(buf));
	if (buf[0] >= 'A' && buf[0] <= 'Z' && !(buf[1] >= 'A' && buf[1] <= 'Z'))
		buf[0] = (char)(buf[0] - 'A' + 'a');
	return buf;
}

bool ctl_output_closed(FILE *f, int e)
{
	if (e == EPIPE)
		return true;
	struct stat st;
	int fd = f ? fileno(f) : -1;
	if (e != 0 || fd < 0 || fstat(fd, &st) != 0 ||
	    !(S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode)))
		return false;
	/* Linux reports POLLERR on a pipe's write end once no reader is left. */
	struct pollfd p = {.fd = fd, .events = POLLOUT};
	return poll(&p, 1, 0) == 1 && (p.revents & (POLLERR | POLLHUP));
}

const char *ctl_output_errno_text(FILE *f, int e)
{
	if (ctl_output_closed(f, e))
		return "output closed before the end (a pipe's reader stopped)";
	return e ? ctl_errno_text(e) : "a write failed";
}

size_t ctl_utf8_check(const char *buf, size_t len)
{
	const unsigned char *s = (const unsigned char *)buf;
	size_t i = 0;
	while (i < len) {
		if (s[i] == 0)
			return i;
		if (s[i] < 0x80) {
			i++;
			continue;
		}
		size_t n = (s[i] & 0xe0) == 0xc0   ? 2
		           : (s[i] & 0xf0) == 0xe0 ? 3
		           : (s[i] & 0xf8) == 0xf0 ? 4
		                                   : 0;
		if (n == 0 || n > len - i || !str_utf8_valid(buf + i, n))
			return i;
		i += n;
	}
	return len;
}

void ctl_position(const char *buf, size_t offset, int *line, int *col)
{
	int l = 1;
	size_t start = 0;
	for (size_t i = 0; i < offset; i++) {
		if (buf[i] == '\n') {
			l++;
			start = i + 1;
		}
	}
	*line = l;
	*col = (int)(offset - start + 1);
}

int ctl_parse_integer(const char *s, size_t len, int64_t *out)
{
	size_t i = 0;
	bool neg = false;
	if (len > 0 && (s[0] == '-' || s[0] == '+')) {
		neg = s[0] == '-';
		i = 1;
	}
	if (i == len)
		return ISG_ERR_PARSE;
	uint64_t v = 0, limit = neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
	bool over = false;
	for (; i < len; i++) {
		if (s[i] < '0' || s[i] > '9')
			return ISG_ERR_PARSE;
		unsigned d = (unsigned)(s[i] - '0');
		if (v > (limit - d) / 10)
			over = true;
		else
			v = v * 10 + d;
	}
	if (over)
		return ISG_ERR_INVALID;
	*out = neg ? (v == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)v) : (int64_t)v;
	return 0;
}
