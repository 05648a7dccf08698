/* isgctl send: records from a CSV or JSON Lines file to a partner, and the receipt as JSON. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/rand.h>

#include "ctl/ctl.h"

static const char usage[] =
    "usage: isgctl send --to PARTNER --agreement ID --dataset NAME [--message-id ID]\n"
    "                   [--reply-to GATEWAY_ID] [--format csv|jsonl] [connection] "
    "[FILE|-]\n" CTL_CONN_USAGE;

static const char help[] =
    "Reads records from FILE (standard input when FILE is - or absent) and sends them\n"
    "as one message; prints the gateway's receipt as one JSON line.\n"
    "  --to PARTNER           the recipient's partner id\n"
    "  --agreement ID         the sharing agreement the message is sent under\n"
    "  --dataset NAME         the agreement's dataset the records belong to\n"
    "  --message-id ID        your id for the message (default: random); sending the\n"
    "                         same id again is safe: the gateway keeps one copy\n"
    "  --reply-to GATEWAY_ID  the gateway_id of a message this one answers\n"
    "  --format csv|jsonl     the input format (default: from .csv, .jsonl or .ndjson)\n";

struct send_args {
	struct ctl_conn conn;
	struct isg_message msg;
	enum ctl_format format;
	const char *file;
	char id[33];
};

enum { OPT_TO = 1, OPT_AGREEMENT, OPT_DATASET, OPT_MESSAGE_ID, OPT_REPLY_TO, OPT_FORMAT };

static int parse_option(struct send_args *a, int opt, const char *arg)
{
	int64_t v;
	switch (opt) {
	case OPT_TO:
		a->msg.recipient = arg;
		break;
	case OPT_AGREEMENT:
		a->msg.agreement_id = arg;
		break;
	case OPT_DATASET:
		a->msg.dataset = arg;
		break;
	case OPT_MESSAGE_ID:
		if (!*arg || strlen(arg) > ISG_CLIENT_MAX_ID || !str_utf8_valid(arg, strlen(arg)))
			return ctl_usage_error(usage, "--message-id must be 1 to %d bytes of UTF-8",
			                       ISG_CLIENT_MAX_ID);
		a->msg.message_id = arg;
		break;
	case OPT_REPLY_TO:
		if (str_to_i64(arg, 1, INT64_MAX, &v) < 0)
			return ctl_usage_error(usage, "--reply-to '%s' is not a gateway id", arg);
		a->msg.reply_to = (uint64_t)v;
		break;
	case OPT_FORMAT:
		if (ctl_format_parse(arg, &a->format) < 0)
			return ctl_usage_error(usage, "--format '%s': give csv or jsonl", arg);
		break;
	}
	return CTL_EXIT_OK;
}

static int parse_args(struct send_args *a, int argc, char **argv, bool *done)
{
	static const struct option opts[] = {
	    {"to", required_argument, NULL, OPT_TO},
	    {"agreement", required_argument, NULL, OPT_AGREEMENT},
	    {"dataset", required_argument, NULL, OPT_DATASET},
	    {"message-id", required_argument, NULL, OPT_MESSAGE_ID},
	    {"reply-to", required_argument, NULL, OPT_REPLY_TO},
	    {"format", required_argument, NULL, OPT_FORMAT},
	    {"help", no_argument, NULL, 'h'},
	    CTL_CONN_LONGOPTS,
	    {NULL, 0, NULL, 0},
	};
	int opt, status;
	struct ctl_opts o;
	ctl_opts_init(&o, argc, argv, ":h", opts, usage);
	while ((opt = ctl_opts_next(&o)) != CTL_OPTS_END) {
		if (opt == CTL_OPTS_ERROR)
			return CTL_EXIT_USAGE;
		if (opt == 'h') {
			printf("%s\n%s", usage, help);
			*done = true;
			return CTL_EXIT_OK;
		}
		int c = ctl_conn_option(&a->conn, opt, optarg, usage);
		if (c < 0)
			return CTL_EXIT_USAGE;
		if (c == 0 && (status = parse_option(a, opt, optarg)) != CTL_EXIT_OK)
			return status;
	}
	static const char *const names[] = {"FILE"};
	if (argc - optind > 1)
		return ctl_usage_error(usage, "send takes one FILE at most");
	if (ctl_opts_args(&o, names) != CTL_EXIT_OK)
		return CTL_EXIT_USAGE;
	a->file = optind < argc ? argv[optind] : "-";
	if (!a->msg.recipient || !a->msg.agreement_id || !a->msg.dataset)
		return ctl_usage_error(usage, "--to, --agreement and --dataset are required");
	if (a->format == CTL_FORMAT_NONE)
		a->format = ctl_format_from_name(a->file);
	if (a->format == CTL_FORMAT_NONE)
		return ctl_usage_error(usage,
		                       "cannot tell the format of '%s': give --format csv or "
		                       "--format jsonl",
		                       a->file);
	return CTL_EXIT_OK;
}

static int read_records(const struct send_args *a, struct ctl_batch *batch)
{
	char err[512];
	char *buf = NULL;
	size_t len = 0;
	const char *name = strcmp(a->file, "-") == 0 ? "<stdin>" : a->file;
	int rc = ctl_slurp(a->file, CTL_MAX_INPUT_DEFAULT, &buf, &len, err, sizeof(err));
	if (rc == 0) {
		struct ctl_limits lim;
		ctl_limits_default(&lim);
		rc = ctl_read_records(a->format, name, buf, len, &lim, batch, err, sizeof(err));
	}
	free(buf);
	if (rc == 0 && batch->n == 0) {
		snprintf(err, sizeof(err), "%s: no records", name);
		rc = ISG_ERR_PARSE;
	}
	if (rc < 0)
		ctl_warn("%s", err);
	return rc < 0 ? CTL_EXIT_LOCAL : CTL_EXIT_OK;
}

static int send_records(struct send_args *a, const struct ctl_batch *batch)
{
	struct isg_client *client = NULL;
	int status = ctl_connect(&a->conn, &client);
	if (status != CTL_EXIT_OK)
		return status;
	a->msg.n_records = batch->n;
	a->msg.records = batch->records;
	struct isg_receipt receipt;
	struct isg_error err;
	if (isg_client_send(client, &a->msg, &receipt, &err) < 0) {
		status = ctl_report(&a->conn, &err);
		const char *name = strcmp(a->file, "-") == 0 ? "<stdin>" : a->file;
		if (err.from_gateway && err.record_index >= 0 &&
		    (size_t)err.record_index < batch->n)
			ctl_warn("record %" PRId64 " is at %s:%d", err.record_index, name,
			         batch->lines[err.record_index]);
		/* The connection lost, or the gateway could not tell whether it
		 * stored the message (it stops; docs/protocol.md). */
		bool unknown = err.from_gateway && strcmp(err.rule, "store.outcome_unknown") == 0;
		if (status == CTL_EXIT_CONNECT || unknown)
			ctl_warn("the message may have been accepted; to retry without sending it "
			         "twice, use --message-id %s",
			         a->msg.message_id);
	} else if (ctl_write_receipt(stdout, &receipt) < 0 || fflush(stdout) != 0) {
		/*
		 * The message is stored: a script that sent it again under a new
		 * random id would give the recipient a second copy.
		 */
		ctl_output_warn("cannot write the receipt: %s; the gateway accepted message '%s' "
		                "(gateway_id %" PRIu64 ", audit entry %" PRIu64
		                "): do not send it again",
		                ctl_errno_text(errno), receipt.message_id, receipt.gateway_id,
		                receipt.audit_index);
		status = CTL_EXIT_LOCAL;
	}
	isg_client_close(client);
	return status;
}

int cmd_send(int argc, char **argv)
{
	struct send_args a;
	memset(&a, 0, sizeof(a));
	ctl_conn_init(&a.conn);
	struct ctl_batch batch;
	ctl_batch_init(&batch);
	bool done = false;
	int status = parse_args(&a, argc, argv, &done);
	if (status != CTL_EXIT_OK || done)
		goto out;
	if (!a.msg.message_id) {
		uint8_t raw[16];
		if (RAND_bytes(raw, sizeof(raw)) != 1) {
			ctl_warn("cannot make a random message id");
			status = CTL_EXIT_LOCAL;
			goto out;
		}
		hex_encode(a.id, raw, sizeof(raw));
		a.msg.message_id = a.id;
	}
	status = read_records(&a, &batch);
	if (status == CTL_EXIT_OK)
		status = send_records(&a, &batch);
out:
	ctl_batch_release(&batch);
	ctl_conn_release(&a.conn);
	return status;
}
