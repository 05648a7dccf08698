/* isgctl ping: one round trip to the gateway. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "ctl/ctl.h"

static const char usage[] = "usage: isgctl ping [connection]\n" CTL_CONN_USAGE;

int cmd_ping(int argc, char **argv)
{
	struct ctl_conn conn;
	ctl_conn_init(&conn);
	struct isg_client *client = NULL;
	bool done = false;
	int status = ctl_parse_conn_only(&conn, usage,
	                                 "Connects, sends a ping and prints the round-trip time.\n",
	                                 argc, argv, &done);
	if (status == CTL_EXIT_OK && !done)
		status = ctl_connect(&conn, &client);
	if (status == CTL_EXIT_OK && !done) {
		int64_t rtt_us = 0;
		struct isg_error err;
		if (isg_client_ping(client, &rtt_us, &err) < 0)
			status = ctl_report(&conn, &err);
		else
			printf("pong from %s in %" PRId64 ".%03d ms\n", conn.gateway, rtt_us / 1000,
			       (int)(rtt_us % 1000));
	}
	isg_client_close(client);
	ctl_conn_release(&conn);
	return status;
}
