/*
 * isg-bench-send: durable sends through a running isgd, through libisgclient.
 *
 *   isg-bench-send --gateway HOST:PORT --cert F --key F --ca F --to PARTNER
 *                  --agreement ID --dataset NAME [--threads P] [--messages M]
 *                  [--records R] [--runs N]
 *
 * P threads, each with its own connection, send M messages of R records
 * (shaped like a safeguarding concern) one after another and wait for each
 * receipt, which isgd gives only once the message is on disk. Prints, per
 * run and as the median of N runs: messages/s, records/s and send-to-receipt
 * latency p50/p99.
 */
#include <getopt.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "isgclient.h"

struct opts {
	struct isg_client_options client;
	const char *to, *agreement, *dataset;
	unsigned threads, messages, records, runs;
};

struct worker {
	const struct opts *o;
	unsigned index, run;
	double *latency_ms; /* one per message */
	int failed;
};

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static const char *const categories[] = {"self-neglect", "financial-abuse", "domestic-abuse",
                                         "neglect"};

/* The n-th valid NHS number after 900000000 (Modulus 11; check 10 is skipped). */
static void nhs_number(unsigned n, char out[16])
{
	for (uint64_t body = 900000000ull + (uint64_t)n * 2;; body++) {
		unsigned sum = 0;
		uint64_t b = body;
		for (unsigned w = 2; w <= 10; w++, b /= 10)
			sum += (unsigned)(b % 10) * w;
		unsigned check = (11 - sum % 11) % 11;
		if (check != 10) {
			snprintf(out, 16, "%09llu%u", (unsigned long long)body, check);
			return;
		}
	}
}

/* R records of a safeguarding concern; values vary so nothing is cached. */
static void fill_records(struct isg_record *recs, struct isg_field *fields, char (*nhs)[16],
                         unsigned n, unsigned seed)
{
	for (unsigned i = 0; i < n; i++) {
		struct isg_field *f = fields + i * 8;
		nhs_number(seed * n + i, nhs[i]);
		f[0] = (struct isg_field){"nhs_number", {.kind = ISG_VALUE_TEXT, .text = nhs[i]}};
		f[1] =
		    (struct isg_field){"family_name", {.kind = ISG_VALUE_TEXT, .text = "Okafor"}};
		f[2] = (struct isg_field){"date_of_birth",
		                          {.kind = ISG_VALUE_TEXT, .text = "1958-03-14"}};
		f[3] = (struct isg_field){"postcode", {.kind = ISG_VALUE_TEXT, .text = "NE3 4RT"}};
		f[4] = (struct isg_field){"concern_category",
		                          {.kind = ISG_VALUE_TEXT, .text = categories[i % 4]}};
		f[5] = (struct isg_field){
		    "concern_summary",
		    {.kind = ISG_VALUE_TEXT,
		     .text = "Found living without heating; agreed to a welfare visit"}};
		f[6] = (struct isg_field){"officer_notes",
		                          {.kind = ISG_VALUE_TEXT, .text = "Neighbour concerned"}};
		f[7] = (struct isg_field){"incident_date",
		                          {.kind = ISG_VALUE_TEXT, .text = "2026-11-20"}};
		recs[i] = (struct isg_record){8, f};
	}
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	const struct opts *o = w->o;
	struct isg_error err;
	struct isg_client *c;
	if (isg_client_connect(&o->client, &c, &err) != 0) {
		fprintf(stderr, "isg-bench-send: connect: %s\n", err.message);
		w->failed = 1;
		return NULL;
	}
	struct isg_record *recs = calloc(o->records, sizeof(*recs));
	struct isg_field *fields = calloc((size_t)o->records * 8, sizeof(*fields));
	char(*nhs)[16] = calloc(o->records, sizeof(*nhs));
	for (unsigned m = 0; m < o->messages && recs && fields && nhs; m++) {
		char id[64];
		snprintf(id, sizeof(id), "bench-%ld-%u-%u-%u", (long)time(NULL), w->run, w->index,
		         m);
		fill_records(recs, fields, nhs, o->records, m);
		struct isg_message msg = {.message_id = id,
		                          .recipient = o->to,
		                          .agreement_id = o->agreement,
		                          .dataset = o->dataset,
		                          .n_records = o->records,
		                          .records = recs};
		struct isg_receipt r;
		double t0 = now_s();
		if (isg_client_send(c, &msg, &r, &err) != 0) {
			fprintf(stderr, "isg-bench-send: send: %s %s\n", err.code_name,
			        err.message);
			w->failed = 1;
			break;
		}
		w->latency_ms[m] = (now_s() - t0) * 1000;
	}
	free(recs);
	free(fields);
	free(nhs);
	isg_client_close(c);
	return NULL;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static double percentile(double *sorted, size_t n, double p)
{
	size_t i = (size_t)(p * (double)(n - 1) + 0.5);
	return sorted[i < n ? i : n - 1];
}

struct result {
	double msgs_per_s, records_per_s, p50_ms, p99_ms;
};

static int run_once(const struct opts *o, unsigned run, struct result *res)
{
	size_t total = (size_t)o->threads * o->messages;
	double *lat = calloc(total, sizeof(*lat));
	struct worker *ws = calloc(o->threads, sizeof(*ws));
	pthread_t *th = calloc(o->threads, sizeof(*th));
	if (!lat || !ws || !th)
		return -1;
	double t0 = now_s();
	for (unsigned i = 0; i < o->threads; i++) {
		ws[i] = (struct worker){
		    .o = o, .index = i, .run = run, .latency_ms = lat + (size_t)i * o->messages};
		pthread_create(&th[i], NULL, worker_main, &ws[i]);
	}
	int failed = 0;
	for (unsigned i = 0; i < o->threads; i++) {
		pthread_join(th[i], NULL);
		failed |= ws[i].failed;
	}
	double secs = now_s() - t0;
	qsort(lat, total, sizeof(*lat), cmp_double);
	res->msgs_per_s = (double)total / secs;
	res->records_per_s = res->msgs_per_s * o->records;
	res->p50_ms = percentile(lat, total, 0.50);
	res->p99_ms = percentile(lat, total, 0.99);
	free(lat);
	free(ws);
	free(th);
	return failed ? -1 : 0;
}

/* Median of one metric across runs, each metric sorted on its own. */
static double median_of(const struct result *rs, unsigned n, size_t offset)
{
	double v[100];
	for (unsigned i = 0; i < n; i++)
		v[i] = *(const double *)((const char *)&rs[i] + offset);
	qsort(v, n, sizeof(v[0]), cmp_double);
	return v[n / 2];
}

static void usage(void)
{
	fputs("usage: isg-bench-send --gateway HOST:PORT --cert F --key F --ca F --to PARTNER\n"
	      "         --agreement ID --dataset NAME [--threads P] [--messages M]\n"
	      "         [--records R] [--runs N]\n",
	      stderr);
	exit(2);
}

int main(int argc, char **argv)
{
	struct opts o = {.threads = 8, .messages = 500, .records = 1, .runs = 5};
	isg_client_options_init(&o.client);
	static const struct option lopts[] = {
	    {"gateway", 1, NULL, 'g'}, {"cert", 1, NULL, 'c'},    {"key", 1, NULL, 'k'},
	    {"ca", 1, NULL, 'a'},      {"to", 1, NULL, 't'},      {"agreement", 1, NULL, 'A'},
	    {"dataset", 1, NULL, 'd'}, {"threads", 1, NULL, 'P'}, {"messages", 1, NULL, 'M'},
	    {"records", 1, NULL, 'R'}, {"runs", 1, NULL, 'N'},    {NULL, 0, NULL, 0},
	};
	int ch;
	while ((ch = getopt_long(argc, argv, "", lopts, NULL)) != -1) {
		switch (ch) {
		case 'g':
			o.client.gateway = optarg;
			break;
		case 'c':
			o.client.cert_file = optarg;
			break;
		case 'k':
			o.client.key_file = optarg;
			break;
		case 'a':
			o.client.ca_file = optarg;
			break;
		case 't':
			o.to = optarg;
			break;
		case 'A':
			o.agreement = optarg;
			break;
		case 'd':
			o.dataset = optarg;
			break;
		case 'P':
			o.threads = (unsigned)strtoul(optarg, NULL, 10);
			break;
		case 'M':
			o.messages = (unsigned)strtoul(optarg, NULL, 10);
			break;
		case 'R':
			o.records = (unsigned)strtoul(optarg, NULL, 10);
			break;
		case 'N':
			o.runs = (unsigned)strtoul(optarg, NULL, 10);
			break;
		default:
			usage();
		}
	}
	if (!o.client.gateway || !o.to || !o.agreement || !o.dataset || !o.threads || !o.messages ||
	    !o.records || !o.runs || o.runs > 100)
		usage();
	struct result *rs = calloc(o.runs, sizeof(*rs));
	if (!rs)
		return 1;
	printf("durable sends: %u connections x %u messages x %u records, %u runs\n", o.threads,
	       o.messages, o.records, o.runs);
	for (unsigned r = 0; r < o.runs; r++) {
		if (run_once(&o, r, &rs[r]) != 0)
			return 1;
		printf("  run %u: %9.0f messages/s %10.0f records/s  p50 %6.2f ms  p99 %6.2f ms\n",
		       r + 1, rs[r].msgs_per_s, rs[r].records_per_s, rs[r].p50_ms, rs[r].p99_ms);
	}
	printf("median: %9.0f messages/s %10.0f records/s  p50 %6.2f ms  p99 %6.2f ms\n",
	       median_of(rs, o.runs, offsetof(struct result, msgs_per_s)),
	       median_of(rs, o.runs, offsetof(struct result, records_per_s)),
	       median_of(rs, o.runs, offsetof(struct result, p50_ms)),
	       median_of(rs, o.runs, offsetof(struct result, p99_ms)));
	free(rs);
	return 0;
}
