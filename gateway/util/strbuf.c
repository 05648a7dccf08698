#include "util/util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void strbuf_init(struct strbuf *b)
{
	memset(b, 0, sizeof(*b));
}

void strbuf_release(struct strbuf *b)
{
	free(b->p);
	strbuf_init(b);
}

static bool strbuf_grow(struct strbuf *b, size_t more)
{
	if (b->failed)
		return false;
	if (b->cap - b->len > more)
		return true;
	size_t cap = b->cap ? b->cap : 128;
	while (cap - b->len <= more) {
		if (cap > SIZE_MAX / 2)
			goto fail;
		cap *= 2;
	}
	char *p = realloc(b->p, cap);
	if (!p)
		goto fail;
	b->p = p;
	b->cap = cap;
	return true;
fail:
	b->failed = true;
	return false;
}

void strbuf_append(struct strbuf *b, const char *s, size_t len)
{
	if (!strbuf_grow(b, len))
		return;
	memcpy(b->p + b->len, s, len);
	b->len += len;
	b->p[b->len] = '\0';
}

void strbuf_puts(struct strbuf *b, const char *s)
{
	strbuf_append(b, s, strlen(s));
}

void strbuf_u64(struct strbuf *b, uint64_t v)
{
	char digits[20];
	size_t n = sizeof(digits);
	do {
		digits[--n] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	strbuf_append(b, digits + n, sizeof(digits) - n);
}

/* Written straight into the room there is, and again only when it did not fit. */
void strbuf_printf(struct strbuf *b, const char *fmt, ...)
{
	if (b->failed)
		return;
	size_t room = b->cap - b->len;
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(b->p ? b->p + b->len : NULL, room, fmt, ap);
	va_end(ap);
	if (n < 0) {
		if (b->p)
			b->p[b->len] = '\0'; /* nor is what was written before the error */
		b->failed = true;
		return;
	}
	if ((size_t)n >= room) {
		if (b->p)
			b->p[b->len] = '\0'; /* what did not fit is not kept */
		if (!strbuf_grow(b, (size_t)n))
			return;
		va_start(ap, fmt);
		vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
		va_end(ap);
	}
	b->len += (size_t)n;
}

/* A byte that goes into a JSON string as it is. */
static bool json_plain(unsigned char c)
{
	return c >= 0x20 && c < 0x80 && c != '"' && c != '\\';
}

void strbuf_json_string(struct strbuf *b, const char *str)
{
	const unsigned char *s = (const unsigned char *)str;
	size_t left = strlen(str);
	strbuf_append(b, "\"", 1);
	while (left > 0) {
		/* A run of plain bytes goes in one piece. */
		size_t run = 0;
		while (run < left && json_plain(s[run]))
			run++;
		if (run) {
			strbuf_append(b, (const char *)s, run);
			s += run;
			left -= run;
			continue;
		}
		unsigned char c = *s;
		size_t n = 1;
		if (c == '"' || c == '\\') {
			char esc[2] = {'\\', (char)c};
			strbuf_append(b, esc, 2);
		} else if (c < 0x20) {
			strbuf_printf(b, "\\u%04x", c);
		} else if ((n = str_utf8_char((const char *)s, left)) == 0) {
			strbuf_puts(b, "\\ufffd");
			n = 1;
		} else {
			strbuf_append(b, (const char *)s, n);
		}
		s += n;
		left -= n;
	}
	strbuf_append(b, "\"", 1);
}

char *strbuf_take(struct strbuf *b, size_t *len)
{
	if (b->failed) {
		strbuf_release(b);
		return NULL;
	}
	if (!b->p)
		strbuf_append(b, "", 0);
	if (b->failed || !b->p) {
		strbuf_release(b);
		return NULL;
	}
	char *p = b->p;
	if (len)
		*len = b->len;
	strbuf_init(b);
	return p;
}
