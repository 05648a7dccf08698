/*
 * The connection: non-blocking socket, OpenSSL driven directly, poll() for
 * every wait so each blocking call honours its deadline. SIGPIPE is blocked
 * around OpenSSL calls (as libpq does) so a gateway that went away cannot
 * kill the partner's process.
 */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>

#include "client_impl.h"
#include "util/util.h"

#define INPUT_CHUNK 16384
/* An idle buffer bigger than this is given back after a big frame. */
#define INPUT_KEEP (1024 * 1024)

int64_t client_deadline(int64_t timeout_ms)
{
	return timeout_ms < 0 ? -1 : time_mono_ms() + timeout_ms;
}

struct sigpipe_guard {
	sigset_t old;
	bool was_pending;
};

static void sigpipe_block(struct sigpipe_guard *g)
{
	sigset_t set, pending;
	sigemptyset(&set);
	sigaddset(&set, SIGPIPE);
	sigpending(&pending);
	g->was_pending = sigismember(&pending, SIGPIPE) == 1;
	pthread_sigmask(SIG_BLOCK, &set, &g->old);
}

static void sigpipe_restore(struct sigpipe_guard *g)
{
	sigset_t set, pending;
	sigemptyset(&set);
	sigaddset(&set, SIGPIPE);
	sigpending(&pending);
	if (!g->was_pending && sigismember(&pending, SIGPIPE) == 1) {
		/* Ours: consume it before unblocking. */
		const struct timespec zero = {0, 0};
		while (sigtimedwait(&set, NULL, &zero) < 0 && errno == EINTR)
			;
	}
	pthread_sigmask(SIG_SETMASK, &g->old, NULL);
}

/* Wait for the socket: 1 ready, 0 deadline passed, -2 interrupted, -1 poll failed. */
static int wait_fd(int fd, short events, int64_t deadline, bool interruptible)
{
	for (;;) {
		int ms = -1;
		if (deadline >= 0) {
			int64_t left = deadline - time_mono_ms();
			if (left <= 0)
				return 0;
			ms = left > 60000 ? 60000 : (int)left;
		}
		struct pollfd p = {.fd = fd, .events = events};
		int n = poll(&p, 1, ms);
		if (n > 0)
			return 1;
		if (n < 0 && errno == EINTR) {
			if (interruptible)
				return -2;
			continue;
		}
		if (n < 0)
			return -1;
	}
}

static void lower_first(char *s)
{
	if (s[0] >= 'A' && s[0] <= 'Z' && !(s[1] >= 'A' && s[1] <= 'Z'))
		s[0] = (char)(s[0] - 'A' + 'a');
}

static const char *errno_text(int e, char *buf, size_t size)
{
	str_copy(buf, strerror(e), size);
	lower_first(buf);
	return buf;
}

static int connect_one(const struct addrinfo *ai, int64_t deadline, int *fd_out, int *why)
{
	int fd =
	    socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
	if (fd < 0) {
		*why = errno;
		return -1;
	}
	if (connect(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
		if (errno != EINPROGRESS) {
			*why = errno;
			close(fd);
			return -1;
		}
		int r = wait_fd(fd, POLLOUT, deadline, false);
		int soerr = 0;
		socklen_t len = sizeof(soerr);
		if (r == 0) {
			*why = ETIMEDOUT;
			close(fd);
			return -1;
		}
		if (r < 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) < 0 || soerr) {
			*why = soerr ? soerr : errno;
			close(fd);
			return -1;
		}
	}
	sock_tcp_options(fd);
	*fd_out = fd;
	return 0;
}

int client_resolve(struct isg_client *c, const char *host, const char *port, struct addrinfo **out,
                   struct isg_error *err)
{
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_family = AF_UNSPEC};
	int rc = getaddrinfo(host, port, &hints, out);
	if (rc != 0)
		return client_fail(c, err, ISG_CLIENT_E_CONNECT, "cannot resolve '%s': %s", host,
		                   gai_strerror(rc));
	return 0;
}

int client_tcp_connect(struct isg_client *c, const struct addrinfo *res, int64_t deadline,
                       struct isg_error *err)
{
	int why = 0;
	for (const struct addrinfo *ai = res; ai; ai = ai->ai_next) {
		if (connect_one(ai, deadline, &c->fd, &why) == 0)
			return 0;
		if (why == ETIMEDOUT)
			break;
	}
	char text[128];
	if (why == ETIMEDOUT)
		return client_fail(c, err, ISG_CLIENT_E_TIMEOUT,
		                   "connect to %s: timed out after %d ms", c->peer, c->timeout_ms);
	return client_fail(c, err, ISG_CLIENT_E_CONNECT, "connect to %s: %s", c->peer,
	                   errno_text(why, text, sizeof(text)));
}

/*
 * Turn a failed OpenSSL call (SSL_get_error result e, errno saved) into err;
 * closes. A reset or an EOF is IO also during the handshake: the gateway
 * went away (restarting, at its connection limit), which is worth retrying;
 * TLS is kept for what a retry cannot mend (certificates, alerts).
 */
static int tls_failure(struct isg_client *c, struct isg_error *err, int e, int saved,
                       const char *during)
{
	c->tls_dead = true;
	char text[300];
	if (e == SSL_ERROR_ZERO_RETURN)
		return client_fail(c, err, ISG_CLIENT_E_CLOSED,
		                   "the gateway closed the connection");
	unsigned long code = ERR_peek_error();
	bool eof =
	    (e == SSL_ERROR_SSL && ERR_GET_REASON(code) == SSL_R_UNEXPECTED_EOF_WHILE_READING) ||
	    (e == SSL_ERROR_SYSCALL && code == 0 && saved == 0);
	if (eof)
		return client_fail(c, err, ISG_CLIENT_E_IO,
		                   "%s: the gateway closed the connection without close_notify",
		                   during);
	if (e == SSL_ERROR_SYSCALL && code == 0)
		return client_fail(c, err, ISG_CLIENT_E_IO, "%s: %s", during,
		                   errno_text(saved, text, sizeof(text)));
	client_tls_describe(c, text, sizeof(text));
	return client_fail(c, err, ISG_CLIENT_E_TLS, "%s: %s", during, text);
}

int client_tls_handshake(struct isg_client *c, int64_t deadline, struct isg_error *err)
{
	for (;;) {
		struct sigpipe_guard g;
		ERR_clear_error();
		errno = 0;
		sigpipe_block(&g);
		int r = SSL_connect(c->ssl);
		int e = r == 1 ? SSL_ERROR_NONE : SSL_get_error(c->ssl, r);
		int saved = errno;
		sigpipe_restore(&g);
		if (r == 1) {
			c->handshake_done = true;
			return 0;
		}
		short ev;
		if (e == SSL_ERROR_WANT_READ)
			ev = POLLIN;
		else if (e == SSL_ERROR_WANT_WRITE)
			ev = POLLOUT;
		else
			return tls_failure(c, err, e, saved,
			                   "TLS handshake with the gateway failed");
		int w = wait_fd(c->fd, ev, deadline, false);
		if (w == 0)
			return client_fail(c, err, ISG_CLIENT_E_TIMEOUT,
			                   "TLS handshake with %s: timed out after %d ms", c->peer,
			                   c->timeout_ms);
		if (w < 0)
			return client_fail(c, err, ISG_CLIENT_E_IO, "poll failed");
	}
}

static int input_grow(struct isg_client *c, size_t want);

/*
 * Take in what the gateway has sent, without waiting, while a write waits
 * for room: the gateway may itself be waiting for its pushes to be read
 * before it reads more. The bytes are decoded later, by client_read_frame.
 * false when nothing more should be read now (the buffer is at its bound,
 * or reading failed: the write or the next read will say why).
 */
static bool input_take_in(struct isg_client *c)
{
	while (c->in_len < CLIENT_MAX_QUEUED_BYTES) {
		if (input_grow(c, 0) < 0) /* doubling: no frame's size to aim at */
			return false;
		struct sigpipe_guard g;
		size_t n = 0;
		ERR_clear_error();
		sigpipe_block(&g);
		int ok = SSL_read_ex(c->ssl, c->in + c->in_len, c->in_cap - c->in_len, &n);
		int e = ok == 1 ? SSL_ERROR_NONE : SSL_get_error(c->ssl, ok);
		sigpipe_restore(&g);
		if (ok != 1) {
			ERR_clear_error();
			return e == SSL_ERROR_WANT_READ;
		}
		c->in_len += n;
	}
	return false;
}

/*
 * The gateway closed (after a frame over its limit, say): it reads no more,
 * and bytes written on would only meet a reset. Its last answers are taken
 * in already, for salvage_error. Our record is cut: no close_notify.
 */
static bool gateway_closed(struct isg_client *c, struct isg_error *err)
{
	if (!(SSL_get_shutdown(c->ssl) & SSL_RECEIVED_SHUTDOWN))
		return false;
	c->tls_dead = true;
	client_fail(c, err, ISG_CLIENT_E_CLOSED,
	            "sending to the gateway: the gateway closed the connection");
	return true;
}

static bool readable_now(int fd)
{
	struct pollfd p = {.fd = fd, .events = POLLIN};
	return poll(&p, 1, 0) > 0;
}

/*
 * A large frame goes in slices, with a look between them at what the
 * gateway sent: a gateway that closed is found before megabytes more are
 * written to it, also while the socket keeps taking them.
 */
#define WRITE_SLICE (256 * 1024)

int client_write_frame(struct isg_client *c, const Isg__Frame *f, int64_t deadline,
                       struct isg_error *err)
{
	size_t size = 0;
	uint8_t *buf = wire_frame_pack(f, &size);
	if (!buf) {
		client_error(err, ISG_CLIENT_E_NOMEM, "out of memory for a frame");
		return -1;
	}
	int rc = 0;
	bool take_in = true;
	size_t done = 0;
	while (done < size) {
		/* After WANT_WRITE the same slice is written again, as OpenSSL requires. */
		size_t n = size - done < WRITE_SLICE ? size - done : WRITE_SLICE;
		struct sigpipe_guard g;
		size_t written = 0;
		ERR_clear_error();
		errno = 0;
		sigpipe_block(&g);
		int r = SSL_write_ex(c->ssl, buf + done, n, &written);
		int e = r == 1 ? SSL_ERROR_NONE : SSL_get_error(c->ssl, r);
		int saved = errno;
		sigpipe_restore(&g);
		if (r == 1) {
			done += written;
			if (done < size && take_in && readable_now(c->fd))
				take_in = input_take_in(c);
			if (done < size && gateway_closed(c, err)) {
				rc = -1;
				break;
			}
			continue;
		}
		short ev;
		if (e == SSL_ERROR_WANT_WRITE)
			ev = take_in ? POLLOUT | POLLIN : POLLOUT;
		else if (e == SSL_ERROR_WANT_READ)
			ev = POLLIN;
		else {
			rc = tls_failure(c, err, e, saved, "sending to the gateway");
			break;
		}
		int w = wait_fd(c->fd, ev, deadline, false);
		if (w > 0 && e == SSL_ERROR_WANT_WRITE && take_in)
			take_in = input_take_in(c);
		if (gateway_closed(c, err)) {
			rc = -1;
			break;
		}
		if (w <= 0) {
			rc = w == 0 ? client_fail(c, err, ISG_CLIENT_E_TIMEOUT,
			                          "sending to %s: timed out after %d ms", c->peer,
			                          c->timeout_ms)
			            : client_fail(c, err, ISG_CLIENT_E_IO, "poll failed");
			break;
		}
	}
	free(buf);
	return rc;
}

/* Make room for more input; `want` is the size the frame being read needs. */
static int input_grow(struct isg_client *c, size_t want)
{
	if (c->in_len < c->in_cap)
		return 0;
	size_t cap = c->in_cap ? c->in_cap * 2 : INPUT_CHUNK;
	if (cap > want && want > c->in_len)
		cap = want;
	if (cap <= c->in_len)
		cap = c->in_len + INPUT_CHUNK;
	uint8_t *p = realloc(c->in, cap);
	if (!p)
		return -1;
	c->in = p;
	c->in_cap = cap;
	return 0;
}

static void input_consume(struct isg_client *c, size_t n)
{
	memmove(c->in, c->in + n, c->in_len - n);
	c->in_len -= n;
	if (c->in_len == 0 && c->in_cap > INPUT_KEEP) {
		free(c->in);
		c->in = NULL;
		c->in_cap = 0;
	}
}

/* A whole frame in the buffer: 1 and *out set; 0 more bytes needed (*want set); -1 error. */
static int input_frame(struct isg_client *c, Isg__Frame **out, size_t *size, size_t *want,
                       struct isg_error *err)
{
	size_t hdr = 0, body = 0;
	int r = wire_frame_peek(c->in, c->in_len, c->max_frame, &hdr, &body);
	if (r == ISG_ERR_TOO_BIG)
		return client_fail(c, err, ISG_CLIENT_E_TOO_BIG,
		                   "the gateway sent a frame of more than %zu bytes", c->max_frame);
	if (r < 0)
		return client_fail(c, err, ISG_CLIENT_E_PROTOCOL,
		                   "the gateway sent a malformed frame length");
	if (r == 0) {
		*want = c->in_len + WIRE_VARINT_MAX;
		return 0;
	}
	if (c->in_len - hdr < body) {
		*want = hdr + body;
		return 0;
	}
	Isg__Frame *f;
	int bad = wire_frame_decode_checked(c->in + hdr, body, &f);
	if (!f)
		return client_fail(c, err, ISG_CLIENT_E_PROTOCOL,
		                   "the gateway sent an undecodable frame of %zu bytes", body);
	if (bad) {
		wire_frame_free(f);
		return client_fail(c, err, ISG_CLIENT_E_PROTOCOL,
		                   "the gateway sent a frame with a string that is not UTF-8 "
		                   "or holds a NUL");
	}
	input_consume(c, hdr + body);
	*out = f;
	*size = body;
	return 1;
}

enum read_result client_read_frame(struct isg_client *c, int64_t deadline, bool interruptible,
                                   Isg__Frame **out, size_t *size, struct isg_error *err)
{
	for (;;) {
		size_t want = 0;
		int r = input_frame(c, out, size, &want, err);
		if (r != 0)
			return r > 0 ? READ_FRAME : READ_ERROR;
		if (input_grow(c, want) < 0) {
			client_fail(c, err, ISG_CLIENT_E_NOMEM, "out of memory reading a frame");
			return READ_ERROR;
		}
		struct sigpipe_guard g;
		size_t n = 0;
		ERR_clear_error();
		errno = 0;
		sigpipe_block(&g);
		int ok = SSL_read_ex(c->ssl, c->in + c->in_len, c->in_cap - c->in_len, &n);
		int e = ok == 1 ? SSL_ERROR_NONE : SSL_get_error(c->ssl, ok);
		int saved = errno;
		sigpipe_restore(&g);
		if (ok == 1) {
			c->in_len += n;
			continue;
		}
		short ev;
		if (e == SSL_ERROR_WANT_READ)
			ev = POLLIN;
		else if (e == SSL_ERROR_WANT_WRITE)
			ev = POLLOUT;
		else {
			tls_failure(c, err, e, saved, "reading from the gateway");
			return READ_ERROR;
		}
		int w = wait_fd(c->fd, ev, deadline, interruptible);
		if (w == 0)
			return READ_TIMEOUT;
		if (w == -2)
			return READ_INTERRUPTED;
		if (w < 0) {
			client_fail(c, err, ISG_CLIENT_E_IO, "poll failed");
			return READ_ERROR;
		}
	}
}

void client_tls_shutdown(struct isg_client *c)
{
	if (!c->ssl || !c->handshake_done || c->tls_dead)
		return;
	/* Send our close_notify; do not wait for the gateway's. */
	int64_t deadline = client_deadline(c->timeout_ms < 1000 ? c->timeout_ms : 1000);
	for (;;) {
		struct sigpipe_guard g;
		ERR_clear_error();
		errno = 0;
		sigpipe_block(&g);
		int r = SSL_shutdown(c->ssl);
		int e = r >= 0 ? SSL_ERROR_NONE : SSL_get_error(c->ssl, r);
		sigpipe_restore(&g);
		if (r >= 0)
			return;
		if (e != SSL_ERROR_WANT_WRITE && e != SSL_ERROR_WANT_READ)
			return;
		if (wait_fd(c->fd, e == SSL_ERROR_WANT_WRITE ? POLLOUT : POLLIN, deadline, false) !=
		    1)
			return;
	}
}
