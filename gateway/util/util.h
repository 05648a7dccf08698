/*
 * util: error codes, structured logging, time, small string helpers and the
 * TCP options of a partner connection, shared by every module, the client
 * library and the tools.
 */
#ifndef ISG_UTIL_H
#define ISG_UTIL_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <openssl/sha.h>

/* Every function that can fail returns 0 or one of these. */
enum isg_err {
	ISG_OK = 0,
	ISG_ERR_NOMEM = -1,     /* out of memory */
	ISG_ERR_IO = -2,        /* a system call failed; errno says why */
	ISG_ERR_PARSE = -3,     /* malformed input */
	ISG_ERR_INVALID = -4,   /* well-formed but not acceptable */
	ISG_ERR_NOT_FOUND = -5, /* no such thing */
	ISG_ERR_DENIED = -6,    /* refused by policy or permissions */
	ISG_ERR_CONFLICT = -7,  /* clashes with something already there */
	ISG_ERR_LIMIT = -8,     /* over a limit */
	ISG_ERR_CRYPTO = -9,    /* a cryptographic operation failed */
	ISG_ERR_STORE = -10,    /* the store failed */
	ISG_ERR_TLS = -11,      /* TLS failed */
	ISG_ERR_AGAIN = -12,    /* try again later */
	ISG_ERR_TOO_BIG = -13,  /* input longer than allowed */
	ISG_ERR_FULL = -14,     /* disk full */
	ISG_ERR_CORRUPT = -15,  /* stored data failed an integrity check */
	ISG_ERR_CLOSED = -16,   /* the peer or the component is gone */
	ISG_ERR_UNKNOWN = -17,  /* a write may or may not have reached the disk */
};

const char *isg_strerror(int err);

/*
 * Structured logging: one logfmt line per event on stderr,
 *   ts=2026-11-23T15:04:05.123Z level=info event=conn.accepted peer=127.0.0.1:4242
 * `fields` is a printf format producing further key=value pairs; values that
 * may hold spaces or quotes go through log_quote(). Never pass a personal
 * value (a field value of a record) to the log: name the field and index.
 */
enum log_level { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR };

void log_set_level(enum log_level level);
void log_event(enum log_level level, const char *event, const char *fields, ...)
    __attribute__((format(printf, 3, 4)));
void log_eventv(enum log_level level, const char *event, const char *fields, va_list ap)
    __attribute__((format(printf, 3, 0)));
/* Quote `s` for a logfmt value into buf (always NUL-terminated); returns buf. */
const char *log_quote(char *buf, size_t size, const char *s);

/* Fatal: for states that cannot happen. Logs and aborts. */
_Noreturn void fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Time. */
int64_t time_now_ms(void);  /* wall clock, Unix milliseconds */
int64_t time_mono_ms(void); /* monotonic milliseconds */
int64_t time_mono_us(void); /* monotonic microseconds */
/*
 * now_ms, or the latest time *latest was given when now_ms is earlier: for
 * what is decided by the day (an agreement in force, the key versions that
 * answer), which must not return to a day that has ended when the wall clock
 * is set back (an NTP step, a VM restored from a snapshot). Thread-safe.
 */
int64_t time_not_back_ms(_Atomic int64_t *latest, int64_t now_ms);
/* Format Unix ms as 2026-11-23T15:04:05.123Z; buf needs 25 bytes. */
const char *time_format_ms(char *buf, size_t size, int64_t unix_ms);
/* Parse YYYY-MM-DD into days since 1970-01-01; returns 0 or ISG_ERR_PARSE. */
int date_parse_days(const char *s, int64_t *days);
/* Days since 1970-01-01 of a Unix time in ms. */
int64_t date_days_of_ms(int64_t unix_ms);
/* The (proleptic Gregorian) year, month 1-12 and day 1-31 of days since 1970-01-01. */
void date_civil_of_days(int64_t days, int64_t *year, unsigned *month, unsigned *day);

/* Strings. */
/* Copy with truncation, always NUL-terminated; returns strlen(src). */
size_t str_copy(char *dst, const char *src, size_t size);
/* Parse a whole decimal number in [min, max]; 0 or ISG_ERR_PARSE/ISG_ERR_INVALID. */
int str_to_i64(const char *s, int64_t min, int64_t max, int64_t *out);
/*
 * Split "host:port" or "[IPv6]:port" (port 1 to 65535): *host points at the
 * host in s, brackets left out, *host_len bytes of it, not terminated. 0, or
 * ISG_ERR_PARSE with *why (a static string). The host itself is the
 * caller's to check.
 */
int str_host_port(const char *s, const char **host, size_t *host_len, uint16_t *port,
                  const char **why);
/*
 * True when s is a name a certificate can be checked against: an IPv4 or
 * IPv6 address, or a DNS name of dot-separated labels of 1 to 63 letters,
 * digits, '-' and '_' (no '-' at a label's ends, the last not all digits),
 * at most 253 bytes, one final '.' allowed. An internationalised name is given in its xn-- form.
 */
bool str_host_name(const char *s);
/* Parse a duration such as "30d", "12h", "15m", "10s", "250ms" into ms. */
int str_to_duration_ms(const char *s, int64_t *out);
/* Parse a size such as "4MiB", "512KiB", "1000" into bytes. */
int str_to_size(const char *s, uint64_t *out);
/* True when s is valid UTF-8 of length len. */
bool str_utf8_valid(const char *s, size_t len);
/* Bytes (1 to 4) of the valid UTF-8 character at s, left bytes on; 0 when invalid. */
size_t str_utf8_char(const char *s, size_t left);
/*
 * True when the character of n bytes at s is one a terminal may obey: a C0
 * control, DEL or a C1 control (U+0080-U+009F; U+009B is CSI).
 */
bool str_utf8_control(const char *s, size_t n);
/* True when no byte of s[0..len) is above 0x7f. */
bool str_ascii(const void *s, size_t len);
/*
 * True when s[0..len) has a field name's shape, as a policy's datasets
 * declare them: [A-Za-z_][A-Za-z0-9_-], at most STR_FIELD_NAME_MAX bytes.
 * What lacks it may be a person's data (a CSV without its header row), so
 * errors name such a field by its position instead.
 */
#define STR_FIELD_NAME_MAX 64
bool str_field_name(const char *s, size_t len);
/*
 * Decode standard base64 with padding, all of s[0..len), into at most max
 * bytes. The alphabet is checked first: libsodium 1.0.18's decoder takes any
 * byte >= 0x80 as a digit. Returns 0 or ISG_ERR_PARSE.
 */
int base64_decode(const char *s, size_t len, uint8_t *out, size_t max, size_t *out_len);
/* Encode one code point (at most U+10FFFF) as UTF-8 into out; returns 1 to 4. */
size_t utf8_encode(uint32_t cp, char out[static 4]);
/* Lowercase hex of len bytes into out (2*len+1 bytes). */
void hex_encode(char *out, const uint8_t *in, size_t len);

/*
 * TCP options for a partner connection, gateway and client alike: no Nagle
 * delay (every frame is a request or an answer someone waits for), and
 * keepalive probes after SOCK_KEEPALIVE_IDLE_S of silence, so a connection
 * whose peer vanished (a crash, a pulled cable, a firewall or NAT that
 * forgot the flow) is dropped after about two minutes rather than the
 * kernel's default of over two hours, and a firewall in between sees a
 * subscriber's otherwise silent connection in use. The same two minutes
 * bound data sent and not acknowledged (TCP_USER_TIMEOUT), which keepalive
 * does not probe, and a peer that keeps its receive window shut.
 */
#define SOCK_KEEPALIVE_IDLE_S 60
#define SOCK_KEEPALIVE_INTERVAL_S 10
#define SOCK_KEEPALIVE_PROBES 6
#define SOCK_USER_TIMEOUT_MS                                                                       \
	((SOCK_KEEPALIVE_IDLE_S + SOCK_KEEPALIVE_INTERVAL_S * SOCK_KEEPALIVE_PROBES) * 1000)
void sock_tcp_options(int fd);

/* Read fd until its end or until cap bytes are in buf, whichever is first
 * (EINTR retried): the bytes read, or -1 with errno. A loader passes one
 * byte more than it accepts, to see a file that grew since its fstat. */
ssize_t fd_read_up_to(int fd, void *buf, size_t cap);

/* uid for a message that says whom a file must belong to: in words
 * "uid 999 (isg)" ("uid 999" when the user database has no name for it),
 * in who what chown takes ("isg", or "999"). */
void user_words(unsigned uid, char *words, size_t wsize, char *who, size_t whosize);

/*
 * A growable string. After an allocation failure it stays failed and
 * strbuf_take returns NULL, so a builder can append freely and check once.
 */
struct strbuf {
	char *p;
	size_t len, cap;
	bool failed;
};

void strbuf_init(struct strbuf *b);
void strbuf_release(struct strbuf *b);
void strbuf_append(struct strbuf *b, const char *s, size_t len);
void strbuf_puts(struct strbuf *b, const char *s);
void strbuf_printf(struct strbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Append v in decimal: what printf's %llu writes, without parsing a format. */
void strbuf_u64(struct strbuf *b, uint64_t v);
/* Append s as a JSON string literal (quotes and escapes; invalid UTF-8 bytes as U+FFFD). */
void strbuf_json_string(struct strbuf *b, const char *s);
/* Hand over the NUL-terminated text (caller frees); NULL after a failure. */
char *strbuf_take(struct strbuf *b, size_t *len);

/*
 * SHA-256, OpenSSL's: it uses the CPU's SHA extensions, where libsodium
 * 1.0.18's is portable C (about 5x slower on this project's inputs, see
 * docs/performance.md). The state is a plain struct, so a copy forks a hash
 * (HMAC's key pads are hashed once and copied per value), a keyed state can
 * live in guarded memory, and nothing allocates or fails. sha256_final
 * wipes the state.
 */
#define SHA256_LEN 32
struct sha256_state {
	SHA256_CTX ctx;
};
void sha256_init(struct sha256_state *h);
void sha256_update(struct sha256_state *h, const void *data, size_t len);
void sha256_final(struct sha256_state *h, uint8_t out[static SHA256_LEN]);
void sha256_digest(const void *data, size_t len, uint8_t out[static SHA256_LEN]);

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

#endif
