/* isgctl whoami: what the gateway said in its Welcome. */
#include <stdio.h>

#include "ctl/ctl.h"

static const char usage[] = "usage: isgctl whoami [connection]\n" CTL_CONN_USAGE;

int cmd_whoami(int argc, char **argv)
{
	struct ctl_conn conn;
	ctl_conn_init(&conn);
	struct isg_client *client = NULL;
	bool done = false;
	int status = ctl_parse_conn_only(
	    &conn, usage,
	    "Connects and prints which partner the gateway recognised from your certificate,\n"
	    "and the version of the policy it runs.\n",
	    argc, argv, &done);
	if (status == CTL_EXIT_OK && !done)
		status = ctl_connect(&conn, &client);
	if (status == CTL_EXIT_OK && !done) {
		printf("partner_id: %s\n", isg_client_partner_id(client));
		printf("partner_name: %s\n", isg_client_partner_name(client));
		printf("policy_version: %s\n", isg_client_policy_version(client));
		printf("gateway_version: %s\n", isg_client_gateway_version(client));
		printf("gateway: %s\n", conn.gateway);
	}
	isg_client_close(client);
	ctl_conn_release(&conn);
	return status;
}
