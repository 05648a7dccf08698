#include "util/util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static enum log_level min_level = LOG_INFO;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

void log_set_level(enum log_level level)
{
	min_level = level;
}

void log_eventv(enum log_level level, const char *event, const char *fields, va_list ap)
{
	if (level < min_level)
		return;
	/* One write per line so lines from several threads never interleave. */
	char line[2048];
	char ts[32];
	int n = snprintf(line, sizeof(line), "ts=%s level=%s event=%s",
	                 time_format_ms(ts, sizeof(ts), time_now_ms()), level_names[level], event);
	if (n < 0)
		return;
	size_t used = (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1;
	if (fields && *fields && used < sizeof(line) - 2) {
		line[used++] = ' ';
		int m = vsnprintf(line + used, sizeof(line) - used, fields, ap);
		if (m > 0)
			used +=
			    (size_t)m < sizeof(line) - used ? (size_t)m : sizeof(line) - used - 1;
	}
	line[used++] = '\n';
	fwrite(line, 1, used, stderr);
}

void log_event(enum log_level level, const char *event, const char *fields, ...)
{
	va_list ap;
	va_start(ap, fields);
	log_eventv(level, event, fields, ap);
	va_end(ap);
}

const char *log_quote(char *buf, size_t size, const char *s)
{
	if (size == 0)
		return buf;
	bool plain = s[0] != '\0';
	for (const char *p = s; *p; p++)
		if (*p <= ' ' || *p == '"' || *p == '=' || *p == '\\' || (unsigned char)*p >= 0x7f)
			plain = false;
	if (plain) {
		str_copy(buf, s, size);
		return buf;
	}
	if (size < 3) { /* not even "" fits: an empty value, not a write past buf */
		buf[0] = '\0';
		return buf;
	}
	size_t o = 0;
	buf[o++] = '"';
	for (const char *p = s; *p && o + 5 < size; p++) {
		unsigned char c = (unsigned char)*p;
		if (c == '"' || c == '\\') {
			buf[o++] = '\\';
			buf[o++] = (char)c;
		} else if (c < 0x20 || c == 0x7f) {
			o += (size_t)snprintf(buf + o, size - o, "\\x%02x", c);
		} else {
			buf[o++] = (char)c;
		}
	}
	if (o < size - 1)
		buf[o++] = '"';
	buf[o] = '\0';
	return buf;
}

_Noreturn void fatal(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("isg: fatal: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	abort();
}
