/*
 * TCP options for a partner connection, set the same way at both ends.
 */
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include "util/util.h"

void sock_tcp_options(int fd)
{
	static const int one = 1, idle = SOCK_KEEPALIVE_IDLE_S,
	                 interval = SOCK_KEEPALIVE_INTERVAL_S, count = SOCK_KEEPALIVE_PROBES;
	static const unsigned user_timeout = SOCK_USER_TIMEOUT_MS;
	/* Best effort: a connection without them still works. */
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
	setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
	setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof(interval));
	setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &count, sizeof(count));
	/* Keepalive probes only an idle connection: data sent and never acknowledged
	 * (a push to a peer that vanished) is retransmitted for up to 15 minutes
	 * unless this bounds it too. */
	setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_timeout, sizeof(user_timeout));
}
