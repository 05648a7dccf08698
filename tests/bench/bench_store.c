/*
 * isg-bench-store: baseline (c) of scripts/bench, the store's group commit
 * without network, TLS or policy.
 *
 *   isg-bench-store DIR [--senders P] [--messages M] [--records R] [--runs N]
 *
 * Opens a fresh store in DIR (synchronous=FULL, a storage key, a checkpoint
 * signer, as isgd does) and has P threads each submit M messages one after
 * another through store_send, waiting for each callback (the commit) before
 * the next, as isgd's senders wait for their receipts. Each message carries
 * the payload isgd would store for R benchmark referrals (a packed Delivery
 * of R records of nine fields, two of them pseudonyms) and an audit entry
 * of the size isgd writes (two subject pseudonyms per record). Prints
 * messages/s, records/s and submit-to-commit p50/p99, medians of N runs,
 * and "RESULT store ..." last.
 */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sodium.h>

#include "bench.h"
#include "audit/audit.h"
#include "store/store.h"
#include "util/util.h"
#include "wire/wire.h"

#define MAX_RUNS 100

struct opts {
	unsigned senders, messages, records, runs;
};

struct waiter {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool done;
	int err;
};

struct worker {
	const struct opts *o;
	struct store *store;
	unsigned index, run;
	const uint8_t *payload;
	size_t payload_len;
	const char *audit;
	size_t audit_len;
	double *latency_ms;
	int failed;
};

/* A packed Delivery of R records shaped like what isgd stores for the bench agreement. */
static uint8_t *make_payload(unsigned records, size_t *len)
{
	static char pseudonym[] = "p1_Zm9vYmFyYmF6cXV4cXV1eHh5enp5Ynl0ZXNieXRlc2J5dGVzYg";
	Isg__Value v[9];
	Isg__Field f[9];
	Isg__Field *fp[9];
	static const char *const names[9] = {
	    "nhs_number",    "family_name",      "date_of_birth",
	    "postcode",      "concern_category", "concern_summary",
	    "incident_date", "risk_level",       "referral_source"};
	static const char *const texts[9] = {
	    pseudonym,    pseudonym,      "65-69",
	    "NE3",        "self-neglect", "Found living without heating; agreed to a welfare visit",
	    "2026-11-20", NULL,           "response officer"};
	for (int i = 0; i < 9; i++) {
		isg__value__init(&v[i]);
		if (texts[i]) {
			v[i].kind_case = ISG__VALUE__KIND_TEXT;
			v[i].text = (char *)texts[i];
		} else {
			v[i].kind_case = ISG__VALUE__KIND_INTEGER;
			v[i].integer = 3;
		}
		isg__field__init(&f[i]);
		f[i].name = (char *)names[i];
		f[i].value = &v[i];
		fp[i] = &f[i];
	}
	Isg__Record rec = ISG__RECORD__INIT;
	rec.fields = fp;
	rec.n_fields = 9;
	Isg__Record **recs = calloc(records, sizeof(*recs));
	if (!recs)
		return NULL;
	for (unsigned i = 0; i < records; i++)
		recs[i] = &rec;
	Isg__Delivery d = ISG__DELIVERY__INIT;
	d.records = recs;
	d.n_records = records;
	*len = isg__delivery__get_packed_size(&d);
	uint8_t *out = malloc(*len ? *len : 1);
	if (out)
		isg__delivery__pack(&d, out);
	free(recs);
	return out;
}

/* A "message.accepted" entry of isgd's shape, with 2 subject pseudonyms per record. */
static char *make_audit(unsigned records, size_t *len)
{
	struct strbuf b;
	strbuf_init(&b);
	strbuf_puts(&b, "{\"event\":\"message.accepted\",\"sender\":\"met-police\","
	                "\"recipient\":\"nhs-trust\",\"message_id\":\"bench-message-0000000000\","
	                "\"agreement_id\":\"bench-referral\",\"agreement_version\":1,"
	                "\"policy_version\":\"9124d382e9f03e53a6f2b1c0d4e5f60718293a4b5c6d7e8f"
	                "90a1b2c3d4e5f607\",\"purpose\":\"benchmark\",\"lawful_basis\":[\"UK GDPR "
	                "Art. 6(1)(e): public task\"],\"dataset\":\"referral\"");
	strbuf_printf(&b, ",\"records\":%u,\"bytes\":1000", records);
	strbuf_puts(&b, ",\"fields\":{\"passed\":[\"concern_category\",\"concern_summary\","
	                "\"incident_date\",\"risk_level\",\"referral_source\"],\"generalised\":["
	                "\"date_of_birth\",\"postcode\"],\"dropped\":[\"officer_notes\"],"
	                "\"pseudonymised\":[\"nhs_number\",\"family_name\"]},\"reply_to\":0,"
	                "\"subjects\":[");
	for (unsigned i = 0; i < records * 2; i++)
		strbuf_printf(&b, "%s\"p1_%043u\"", i ? "," : "", i);
	strbuf_puts(&b, "]}");
	return strbuf_take(&b, len);
}

static void sent(void *ctx, int err, const struct store_receipt *r)
{
	struct waiter *w = ctx;
	pthread_mutex_lock(&w->lock);
	w->err = err;
	w->done = true;
	pthread_cond_signal(&w->cond);
	pthread_mutex_unlock(&w->lock);
}

static void *worker_main(void *arg)
{
	struct worker *k = arg;
	struct waiter w;
	pthread_mutex_init(&w.lock, NULL);
	pthread_cond_init(&w.cond, NULL);
	for (unsigned m = 0; m < k->o->messages; m++) {
		char id[64];
		snprintf(id, sizeof(id), "store-%u-%u-%u", k->run, k->index, m);
		struct store_message msg = {.sender = "met-police",
		                            .message_id = id,
		                            .recipient = "nhs-trust",
		                            .agreement_id = "bench-referral",
		                            .agreement_version = 1,
		                            .purpose = "benchmark",
		                            .dataset = "referral",
		                            .record_count = k->o->records,
		                            .payload = k->payload,
		                            .payload_len = k->payload_len,
		                            .ttl_ms = 86400000,
		                            .audit_entry = k->audit,
		                            .audit_len = k->audit_len};
		crypto_hash_sha256(msg.request_hash, (const unsigned char *)id, strlen(id));
		w.done = false;
		double t0 = bench_now_s();
		if (store_send(k->store, &msg, sent, &w) != 0) {
			k->failed = 1;
			break;
		}
		pthread_mutex_lock(&w.lock);
		while (!w.done)
			pthread_cond_wait(&w.cond, &w.lock);
		pthread_mutex_unlock(&w.lock);
		if (w.err != 0) {
			fprintf(stderr, "isg-bench-store: store_send: %s\n", isg_strerror(w.err));
			k->failed = 1;
			break;
		}
		k->latency_ms[m] = (bench_now_s() - t0) * 1000;
	}
	pthread_mutex_destroy(&w.lock);
	pthread_cond_destroy(&w.cond);
	return NULL;
}

static void usage(void)
{
	fputs("usage: isg-bench-store DIR [--senders P] [--messages M] [--records R] [--runs N]\n",
	      stderr);
	exit(2);
}

static unsigned parse_uint(const char *s, unsigned min, unsigned max)
{
	int64_t v;
	if (str_to_i64(s, min, max, &v) != 0)
		usage();
	return (unsigned)v;
}

int main(int argc, char **argv)
{
	struct opts o = {.senders = 4, .messages = 200, .records = 1, .runs = 5};
	static const struct option lopts[] = {
	    {"senders", 1, NULL, 'P'}, {"messages", 1, NULL, 'M'}, {"records", 1, NULL, 'R'},
	    {"runs", 1, NULL, 'N'},    {NULL, 0, NULL, 0},
	};
	int ch;
	while ((ch = getopt_long(argc, argv, "", lopts, NULL)) != -1) {
		switch (ch) {
		case 'P':
			o.senders = parse_uint(optarg, 1, 1000);
			break;
		case 'M':
			o.messages = parse_uint(optarg, 1, 10000000);
			break;
		case 'R':
			o.records = parse_uint(optarg, 1, 100000);
			break;
		case 'N':
			o.runs = parse_uint(optarg, 1, MAX_RUNS);
			break;
		default:
			usage();
		}
	}
	if (optind != argc - 1 || sodium_init() < 0)
		usage();
	char path[4096];
	snprintf(path, sizeof(path), "%s/bench-store.db", argv[optind]);
	for (const char *suffix = ""; suffix; suffix = *suffix ? NULL : "-wal") {
		char p[4200];
		snprintf(p, sizeof(p), "%s%s", path, suffix);
		remove(p);
	}
	uint8_t storage_key[32], seed[32];
	randombytes_buf(storage_key, sizeof(storage_key));
	randombytes_buf(seed, sizeof(seed));
	struct audit_signer *signer = NULL;
	if (audit_signer_new("isg-bench", seed, &signer) != 0)
		return 1;
	struct store_options so = {.path = path, .storage_key = storage_key, .signer = signer};
	struct store *st;
	char err[512];
	if (store_open(&so, &st, err, sizeof(err)) != 0) {
		fprintf(stderr, "isg-bench-store: %s\n", err);
		return 1;
	}
	size_t payload_len = 0, audit_len = 0;
	uint8_t *payload = make_payload(o.records, &payload_len);
	char *audit = make_audit(o.records, &audit_len);
	if (!payload || !audit)
		return 1;
	printf("store group commit: %u threads x %u messages x %u records (payload %zu bytes, "
	       "audit entry %zu bytes), %u runs\n",
	       o.senders, o.messages, o.records, payload_len, audit_len, o.runs);
	double msgs[MAX_RUNS], p50[MAX_RUNS], p99[MAX_RUNS];
	size_t total = (size_t)o.senders * o.messages;
	double *lat = calloc(total, sizeof(*lat));
	struct worker *ws = calloc(o.senders, sizeof(*ws));
	pthread_t *th = calloc(o.senders, sizeof(*th));
	if (!lat || !ws || !th)
		return 1;
	for (unsigned r = 0; r < o.runs; r++) {
		double t0 = bench_now_s();
		for (unsigned i = 0; i < o.senders; i++) {
			ws[i] = (struct worker){.o = &o,
			                        .store = st,
			                        .index = i,
			                        .run = r,
			                        .payload = payload,
			                        .payload_len = payload_len,
			                        .audit = audit,
			                        .audit_len = audit_len,
			                        .latency_ms = lat + (size_t)i * o.messages};
			pthread_create(&th[i], NULL, worker_main, &ws[i]);
		}
		int failed = 0;
		for (unsigned i = 0; i < o.senders; i++) {
			pthread_join(th[i], NULL);
			failed |= ws[i].failed;
		}
		if (failed)
			return 1;
		double secs = bench_now_s() - t0;
		qsort(lat, total, sizeof(*lat), bench_cmp_double);
		msgs[r] = (double)total / secs;
		p50[r] = lat[total / 2];
		p99[r] = lat[(size_t)((double)(total - 1) * 0.99 + 0.5)];
		printf("  run %u: %8.0f msg/s %9.0f rec/s  commit p50 %6.2f p99 %6.2f ms\n", r + 1,
		       msgs[r], msgs[r] * o.records, p50[r], p99[r]);
	}
	double m = bench_median(msgs, o.runs), a = bench_median(p50, o.runs),
	       b = bench_median(p99, o.runs);
	printf("  median: %8.0f msg/s %9.0f rec/s  commit p50 %6.2f p99 %6.2f ms\n", m,
	       m * o.records, a, b);
	printf("RESULT store records=%u senders=%u msgs_s=%.3f records_s=%.3f receipt_p50_ms=%.3f "
	       "receipt_p99_ms=%.3f\n",
	       o.records, o.senders, m, m * o.records, a, b);
	store_close(st);
	audit_signer_free(signer);
	sodium_memzero(storage_key, sizeof(storage_key));
	sodium_memzero(seed, sizeof(seed));
	free(payload);
	free(audit);
	free(lat);
	free(ws);
	free(th);
	return 0;
}
