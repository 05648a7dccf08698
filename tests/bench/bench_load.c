/*
 * isg-bench-load: the throughput and latency workload, through libisgclient.
 *
 *   isg-bench-load --gateway HOST:PORT --ca F --cert F --key F
 *                  [--recipient NAME:CERT:KEY ...] --agreement ID --dataset NAME
 *                  [--senders P] [--window W] [--messages M] [--records R] [--runs N]
 *                  [--idle K] [--pid PID[,PID...]] [--label TEXT] [--to NAME]
 *
 * P sender threads, each with its own connection, send M messages of R
 * records (a safeguarding referral of ten fields) and wait for each receipt,
 * which the gateway gives only once the message is on disk. With --window W
 * (default 1) each keeps W messages in flight, pipelined on its connection
 * (isg_client_send_start and _finish). Each --recipient is one more thread
 * with its own connection that subscribes and acknowledges in batches what
 * it is pushed; sender i sends its m-th message to recipient (i + m) mod Q.
 * Without recipients, messages go to --to and stay undelivered.
 *
 * A run ends when every message has its receipt and, with recipients, has
 * been delivered and acknowledged. What is counted is checked: a receipt
 * must say every record was stored and not be a duplicate's; a delivery
 * must be one of this run's messages (the process and the run are in the
 * message id), delivered once, with every record; and the gateway must
 * acknowledge every id acknowledged. Anything else fails the run.
 *
 * Printed per run and as the median of N runs (each metric's median on its
 * own): messages/s, records/s, send-to-receipt and send-to-delivery
 * latency p50/p99, and for the processes named by --pid (the server side)
 * the CPU seconds they used per million records (utime + stime from
 * /proc/PID/stat) and their peak RSS (VmHWM, summed), and the CPU seconds
 * this load generator used per million records (getrusage). With --idle K,
 * K more connections (the sender's certificate) are opened before the runs
 * and kept open, doing nothing; the resident memory of --pid before and
 * after is printed.
 *
 * The last line is "RESULT label key=value ..." for scripts/bench.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <malloc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "bench.h"
#include "isgclient.h"

#define MAX_RECIPIENTS 8
#define MAX_PIDS 8
#define MAX_RUNS 100
#define FIELDS 10
#define ACK_BATCH 64
#define MAX_WINDOW ISG_CLIENT_MAX_STARTED

struct recipient {
	const char *name;
	struct isg_client_options client;
};

struct opts {
	struct isg_client_options client; /* the sender's */
	struct recipient recipients[MAX_RECIPIENTS];
	unsigned n_recipients;
	const char *to, *agreement, *dataset, *label;
	unsigned senders, window, messages, records, runs, idle;
	int pids[MAX_PIDS];
	unsigned n_pids;
};

struct run_state {
	const struct opts *o;
	unsigned run;
	pthread_barrier_t ready;
	double *receipt_ms;  /* senders * messages */
	double *delivery_ms; /* senders * messages, filled in any order */
	atomic_size_t delivered;
	atomic_uchar *seen; /* senders * messages: delivered already */
	atomic_int failed;
	size_t total;
};

struct worker {
	struct run_state *rs;
	unsigned index;
};

static int64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static const char *const categories[] = {"self-neglect", "financial-abuse", "domestic-abuse",
                                         "neglect"};
static const char *const names[] = {"Okafor", "Nowak",  "O'Brien", "Smith-Jones",
                                    "Patel",  "Müller", "Nguyen",  "MacLeod"};
static const char *const postcodes[] = {"NE3 4RT", "SW1A 1AA", "M1 1AE",   "B33 8TH",
                                        "CR2 6XH", "DN55 1PT", "EC1A 1BB", "W1A 0AX"};

/* v in exactly width decimal digits at out (no terminator): the records are
 * built by hand, since the load generator's CPU counts against the same
 * cores as isgd's and snprintf was a sixth of it. */
static void put_digits(char *out, unsigned width, uint64_t v)
{
	while (width--) {
		out[width] = (char)('0' + v % 10);
		v /= 10;
	}
}

/* The n-th valid NHS number after 900000000 (Modulus 11; check 10 is skipped). */
static void nhs_number(uint64_t n, char out[16])
{
	for (uint64_t body = 900000000ull + (n * 2) % 90000000ull;; body++) {
		unsigned sum = 0;
		uint64_t b = body;
		for (unsigned w = 2; w <= 10; w++, b /= 10)
			sum += (unsigned)(b % 10) * w;
		unsigned check = (11 - sum % 11) % 11;
		if (check != 10) {
			put_digits(out, 9, body);
			put_digits(out + 9, 1, check);
			out[10] = '\0';
			return;
		}
	}
}

/* YYYY-MM-DD */
static void put_date(char out[16], unsigned y, unsigned m, unsigned d)
{
	put_digits(out, 4, y);
	out[4] = '-';
	put_digits(out + 5, 2, m);
	out[7] = '-';
	put_digits(out + 8, 2, d);
	out[10] = '\0';
}

struct message_buf {
	struct isg_record *recs;
	struct isg_field *fields;
	char (*nhs)[16];
	char (*dob)[16];
};

static int message_buf_init(struct message_buf *b, unsigned n)
{
	b->recs = calloc(n, sizeof(*b->recs));
	b->fields = calloc((size_t)n * FIELDS, sizeof(*b->fields));
	b->nhs = calloc(n, sizeof(*b->nhs));
	b->dob = calloc(n, sizeof(*b->dob));
	return b->recs && b->fields && b->nhs && b->dob ? 0 : -1;
}

static void message_buf_release(struct message_buf *b)
{
	free(b->recs);
	free(b->fields);
	free(b->nhs);
	free(b->dob);
}

#define TEXT(s)                                                                                    \
	{                                                                                          \
		.kind = ISG_VALUE_TEXT, .text = (s)                                                \
	}

/* R referrals; identifiers and dates vary so nothing can be cached. */
static void fill_records(struct message_buf *b, unsigned n, uint64_t seed)
{
	for (unsigned i = 0; i < n; i++) {
		uint64_t k = seed * n + i;
		struct isg_field *f = b->fields + (size_t)i * FIELDS;
		nhs_number(k, b->nhs[i]);
		put_date(b->dob[i], 1930 + (unsigned)(k % 80), 1 + (unsigned)(k % 12),
		         1 + (unsigned)(k % 28));
		f[0] = (struct isg_field){"nhs_number", TEXT(b->nhs[i])};
		f[1] = (struct isg_field){"family_name", TEXT(names[k % 8])};
		f[2] = (struct isg_field){"date_of_birth", TEXT(b->dob[i])};
		f[3] = (struct isg_field){"postcode", TEXT(postcodes[(k / 8) % 8])};
		f[4] =
		    (struct isg_field){"officer_notes", TEXT("Neighbour concerned; lives alone")};
		f[5] = (struct isg_field){"concern_category", TEXT(categories[k % 4])};
		f[6] = (struct isg_field){
		    "concern_summary",
		    TEXT("Found living without heating; agreed to a welfare visit")};
		f[7] = (struct isg_field){"incident_date", TEXT("2026-11-20")};
		f[8] = (struct isg_field){"risk_level",
		                          {.kind = ISG_VALUE_INTEGER, .integer = (int64_t)(k % 5)}};
		f[9] = (struct isg_field){"referral_source", TEXT("response officer")};
		b->recs[i] = (struct isg_record){FIELDS, f};
	}
}

static void fail(struct run_state *rs, const char *what, const struct isg_error *err)
{
	fprintf(stderr, "isg-bench-load: %s: %s %s\n", what, err->code_name, err->message);
	atomic_store(&rs->failed, 1);
}

/* A receipt for the message sent, every record stored, not a duplicate's. */
static bool receipt_ok(const struct isg_receipt *r, const char *id, unsigned records)
{
	const char *bad = NULL;
	if (strcmp(r->message_id, id) != 0)
		bad = "names another message";
	else if (r->duplicate)
		bad = "marks it a duplicate";
	else if (r->record_count != records)
		bad = "does not count every record as stored";
	if (bad)
		fprintf(stderr, "isg-bench-load: the receipt for %s %s (%s, %" PRIu32 " records)\n",
		        id, bad, r->message_id, r->record_count);
	return !bad;
}

static void *sender_main(void *arg)
{
	struct worker *w = arg;
	struct run_state *rs = w->rs;
	const struct opts *o = rs->o;
	struct isg_error err;
	struct isg_client *c = NULL;
	struct message_buf b;
	int ok = message_buf_init(&b, o->records) == 0;
	if (ok && isg_client_connect(&o->client, &c, &err) != 0) {
		fail(rs, "sender connect", &err);
		ok = 0;
	}
	pthread_barrier_wait(&rs->ready);
	/* Messages done .. sent - 1 are started, up to --window of them; their
	 * receipts are collected oldest first, each timed when collected. */
	struct started {
		uint64_t ticket;
		int64_t t0;
		char id[96];
	} ring[MAX_WINDOW];
	unsigned sent = 0, done = 0;
	while (ok && done < o->messages && !atomic_load(&rs->failed)) {
		if (sent < o->messages && sent - done < o->window) {
			unsigned m = sent++;
			fill_records(&b, o->records,
			             (uint64_t)(rs->run * 1000003u + w->index) * 65537u + m);
			const char *to = o->n_recipients
			                     ? o->recipients[(w->index + m) % o->n_recipients].name
			                     : o->to;
			struct started *st = &ring[m % MAX_WINDOW];
			st->t0 = now_ns();
			snprintf(st->id, sizeof(st->id), "b%ld-%u-%u-%u-%" PRId64, (long)getpid(),
			         rs->run, w->index, m, st->t0);
			struct isg_message msg = {.message_id = st->id,
			                          .recipient = to,
			                          .agreement_id = o->agreement,
			                          .dataset = o->dataset,
			                          .n_records = o->records,
			                          .records = b.recs};
			if (isg_client_send_start(c, &msg, &st->ticket, &err) != 0) {
				fail(rs, "send", &err);
				break;
			}
			continue;
		}
		unsigned m = done++;
		struct started *st = &ring[m % MAX_WINDOW];
		struct isg_receipt r;
		if (isg_client_send_finish(c, st->ticket, &r, &err) != 0) {
			fail(rs, "send", &err);
			break;
		}
		if (!receipt_ok(&r, st->id, o->records)) {
			atomic_store(&rs->failed, 1);
			break;
		}
		rs->receipt_ms[(size_t)w->index * o->messages + m] =
		    (double)(now_ns() - st->t0) / 1e6;
	}
	message_buf_release(&b);
	isg_client_close(c);
	return NULL;
}

/* One decimal number of a message id and the '-' after it; -1 when none. */
static long long id_part(const char **p)
{
	char *end;
	errno = 0;
	long long v = strtoll(*p, &end, 10);
	if (errno || end == *p || *end != '-' || v < 0)
		return -1;
	*p = end + 1;
	return v;
}

/*
 * The slot of a message of this run in rs->seen and the time it was sent,
 * from the id the sender gave it ("b<pid>-<run>-<sender>-<message>-<t0>");
 * -1 when the id is not one of this process's messages of this run.
 */
static long long run_slot(const struct run_state *rs, const char *message_id, int64_t *sent_ns)
{
	const char *p = message_id;
	if (*p++ != 'b')
		return -1;
	long long pid = id_part(&p), run = id_part(&p), sender = id_part(&p), m = id_part(&p);
	if (pid != (long long)getpid() || run != (long long)rs->run || sender < 0 ||
	    sender >= (long long)rs->o->senders || m < 0 || m >= (long long)rs->o->messages)
		return -1;
	*sent_ns = strtoll(p, NULL, 10);
	return sender * (long long)rs->o->messages + m;
}

static int ack(struct isg_client *c, uint64_t *ids, size_t *n, struct run_state *rs)
{
	struct isg_error err;
	unsigned acked = 0;
	if (*n == 0)
		return 0;
	if (isg_client_ack(c, ids, *n, &acked, &err) != 0) {
		fail(rs, "ack", &err);
		return -1;
	}
	if (acked != *n) { /* some were not pending: delivered twice, or not ours */
		fprintf(stderr, "isg-bench-load: the gateway acknowledged %u of %zu deliveries\n",
		        acked, *n);
		atomic_store(&rs->failed, 1);
		return -1;
	}
	*n = 0;
	return 0;
}

/* Counts a delivery when it is one of this run's, first delivered, whole. */
static int take_delivery(struct run_state *rs, const struct isg_delivery *d)
{
	int64_t at = 0;
	long long slot = run_slot(rs, d->message_id, &at);
	const char *bad = NULL;
	if (slot < 0)
		bad = "is not one of this run's messages";
	else if (atomic_exchange(&rs->seen[slot], 1))
		bad = "was delivered twice";
	else if (d->n_records != rs->o->records)
		bad = "does not have every record";
	if (bad) {
		fprintf(stderr, "isg-bench-load: delivery %s (%zu records) %s\n", d->message_id,
		        d->n_records, bad);
		atomic_store(&rs->failed, 1);
		return -1;
	}
	size_t i = atomic_fetch_add(&rs->delivered, 1);
	if (i < rs->total)
		rs->delivery_ms[i] = (double)(now_ns() - at) / 1e6;
	return 0;
}

static void *recipient_main(void *arg)
{
	struct worker *w = arg;
	struct run_state *rs = w->rs;
	const struct opts *o = rs->o;
	struct isg_error err;
	struct isg_client *c = NULL;
	int ok = 1;
	if (isg_client_connect(&o->recipients[w->index].client, &c, &err) != 0) {
		fail(rs, "recipient connect", &err);
		ok = 0;
	} else if (isg_client_subscribe(c, &err) != 0) {
		fail(rs, "subscribe", &err);
		ok = 0;
	} else if (isg_client_ping(c, NULL, &err) != 0) {
		/* Answered in order: the subscription is in place before anyone sends. */
		fail(rs, "ping", &err);
		ok = 0;
	}
	pthread_barrier_wait(&rs->ready);
	uint64_t ids[ACK_BATCH];
	size_t n = 0;
	int64_t deadline = now_ns() + (int64_t)120 * 1000000000;
	while (ok && atomic_load(&rs->delivered) < rs->total && !atomic_load(&rs->failed)) {
		if (now_ns() > deadline) {
			fprintf(stderr, "isg-bench-load: deliveries still missing after 120 s\n");
			atomic_store(&rs->failed, 1);
			break;
		}
		struct isg_delivery *d = NULL;
		/* Wait for one; once one came, take what is already there without waiting. */
		if (isg_client_next_delivery(c, n ? 0 : 100, &d, &err) != 0) {
			fail(rs, "next delivery", &err);
			break;
		}
		if (!d) {
			if (ack(c, ids, &n, rs) != 0)
				break;
			continue;
		}
		if (take_delivery(rs, d) != 0) {
			isg_delivery_free(d);
			break;
		}
		ids[n++] = d->gateway_id;
		isg_delivery_free(d);
		if (n == ACK_BATCH && ack(c, ids, &n, rs) != 0)
			break;
	}
	if (n)
		ack(c, ids, &n, rs);
	isg_client_close(c);
	return NULL;
}

static double percentile(double *sorted, size_t n, double p)
{
	if (n == 0)
		return 0;
	size_t i = (size_t)(p * (double)(n - 1) + 0.5);
	return sorted[i < n ? i : n - 1];
}

/* --- the server side's CPU time and memory ------------------------------- */

static double proc_cpu_s(int pid)
{
	char path[64], buf[1024];
	snprintf(path, sizeof(path), "/proc/%d/stat", pid);
	FILE *f = fopen(path, "r");
	if (!f)
		return 0;
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	char *p = strrchr(buf, ')'); /* the command name may hold spaces */
	if (!p)
		return 0;
	/* After ") ": state(3) ... utime(14) stime(15). */
	unsigned long long ut = 0, st = 0;
	if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
		return 0;
	return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

/* A "VmHWM:" or "VmRSS:" line of /proc/PID/status, in MiB. */
static double proc_mem_mib(int pid, const char *key)
{
	char path[64], line[256];
	snprintf(path, sizeof(path), "/proc/%d/status", pid);
	FILE *f = fopen(path, "r");
	if (!f)
		return 0;
	double v = 0;
	size_t klen = strlen(key);
	while (fgets(line, sizeof(line), f))
		if (strncmp(line, key, klen) == 0) {
			v = strtod(line + klen, NULL) / 1024.0;
			break;
		}
	fclose(f);
	return v;
}

static double self_cpu(void)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
	       (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static double pids_cpu(const struct opts *o)
{
	double s = 0;
	for (unsigned i = 0; i < o->n_pids; i++)
		s += proc_cpu_s(o->pids[i]);
	return s;
}

static double pids_mem(const struct opts *o, const char *key)
{
	double s = 0;
	for (unsigned i = 0; i < o->n_pids; i++)
		s += proc_mem_mib(o->pids[i], key);
	return s;
}

/* --- runs ---------------------------------------------------------------- */

enum metric {
	M_MSGS,
	M_RECORDS,
	M_RECEIPT_P50,
	M_RECEIPT_P99,
	M_DELIVERY_P50,
	M_DELIVERY_P99,
	M_CPU_PER_M,
	M_CLIENT_CPU_PER_M,
	M_COUNT
};
static const char *const metric_key[M_COUNT] = {
    "msgs_s",          "records_s",       "receipt_p50_ms",      "receipt_p99_ms",
    "delivery_p50_ms", "delivery_p99_ms", "cpu_s_per_m_records", "client_cpu_s_per_m_records"};

static int run_once(const struct opts *o, unsigned run, double res[M_COUNT])
{
	unsigned nthreads = o->senders + o->n_recipients;
	struct run_state rs = {.o = o, .run = run, .total = (size_t)o->senders * o->messages};
	rs.receipt_ms = calloc(rs.total, sizeof(double));
	rs.delivery_ms = calloc(rs.total, sizeof(double));
	rs.seen = calloc(rs.total, sizeof(*rs.seen));
	struct worker *ws = calloc(nthreads, sizeof(*ws));
	pthread_t *th = calloc(nthreads, sizeof(*th));
	if (!rs.receipt_ms || !rs.delivery_ms || !rs.seen || !ws || !th)
		return -1;
	pthread_barrier_init(&rs.ready, NULL, nthreads + 1);
	for (unsigned i = 0; i < nthreads; i++) {
		bool sender = i < o->senders;
		ws[i] = (struct worker){.rs = &rs, .index = sender ? i : i - o->senders};
		if (pthread_create(&th[i], NULL, sender ? sender_main : recipient_main, &ws[i]) !=
		    0)
			return -1;
	}
	pthread_barrier_wait(&rs.ready); /* every connection is open (or failed) */
	double cpu0 = pids_cpu(o), self0 = self_cpu();
	int64_t t0 = now_ns();
	for (unsigned i = 0; i < nthreads; i++)
		pthread_join(th[i], NULL);
	double secs = (double)(now_ns() - t0) / 1e9;
	double cpu = pids_cpu(o) - cpu0, self = self_cpu() - self0;
	pthread_barrier_destroy(&rs.ready);
	int failed = atomic_load(&rs.failed);
	size_t delivered = atomic_load(&rs.delivered);
	if (delivered > rs.total)
		delivered = rs.total;
	qsort(rs.receipt_ms, rs.total, sizeof(double), bench_cmp_double);
	qsort(rs.delivery_ms, delivered, sizeof(double), bench_cmp_double);
	res[M_MSGS] = (double)rs.total / secs;
	res[M_RECORDS] = res[M_MSGS] * o->records;
	res[M_RECEIPT_P50] = percentile(rs.receipt_ms, rs.total, 0.50);
	res[M_RECEIPT_P99] = percentile(rs.receipt_ms, rs.total, 0.99);
	res[M_DELIVERY_P50] = percentile(rs.delivery_ms, delivered, 0.50);
	res[M_DELIVERY_P99] = percentile(rs.delivery_ms, delivered, 0.99);
	res[M_CPU_PER_M] = cpu / ((double)rs.total * o->records / 1e6);
	res[M_CLIENT_CPU_PER_M] = self / ((double)rs.total * o->records / 1e6);
	free(rs.receipt_ms);
	free(rs.delivery_ms);
	free(rs.seen);
	free(ws);
	free(th);
	return failed ? -1 : 0;
}

static double median_of(double rs[][M_COUNT], unsigned n, enum metric m)
{
	double v[MAX_RUNS];
	for (unsigned i = 0; i < n; i++)
		v[i] = rs[i][m];
	return bench_median(v, n);
}

static void print_line(const char *head, const double r[M_COUNT], bool recipients, bool cpu)
{
	printf("%s %8.0f msg/s %9.0f rec/s  receipt p50 %6.2f p99 %6.2f ms", head, r[M_MSGS],
	       r[M_RECORDS], r[M_RECEIPT_P50], r[M_RECEIPT_P99]);
	if (recipients)
		printf("  delivery p50 %6.2f p99 %6.2f ms", r[M_DELIVERY_P50], r[M_DELIVERY_P99]);
	if (cpu)
		printf("  server %.1f cpu-s/M rec", r[M_CPU_PER_M]);
	printf("  client %.1f cpu-s/M rec", r[M_CLIENT_CPU_PER_M]);
	printf("\n");
}

/* --- idle connections ---------------------------------------------------- */

static struct isg_client **open_idle(const struct opts *o)
{
	struct isg_client **v = calloc(o->idle ? o->idle : 1, sizeof(*v));
	if (!v)
		return NULL;
	for (unsigned i = 0; i < o->idle; i++) {
		struct isg_error err;
		if (isg_client_connect(&o->client, &v[i], &err) != 0) {
			fprintf(stderr, "isg-bench-load: idle connection %u: %s %s\n", i + 1,
			        err.code_name, err.message);
			for (unsigned k = 0; k < i; k++)
				isg_client_close(v[k]);
			free(v);
			return NULL;
		}
	}
	return v;
}

/* --- options ------------------------------------------------------------- */

static void usage(void)
{
	fputs("usage: isg-bench-load --gateway HOST:PORT --ca F --cert F --key F\n"
	      "         [--recipient NAME:CERT:KEY ...] [--to NAME] --agreement ID --dataset NAME\n"
	      "         [--senders P] [--window W] [--messages M] [--records R] [--runs N]\n"
	      "         [--idle K] [--pid PID[,PID...]] [--label TEXT]\n",
	      stderr);
	exit(2);
}

static unsigned parse_uint(const char *s, unsigned max)
{
	char *end;
	errno = 0;
	unsigned long v = strtoul(s, &end, 10);
	if (errno || end == s || *end || v > max)
		usage();
	return (unsigned)v;
}

static void parse_recipient(struct opts *o, char *spec)
{
	if (o->n_recipients == MAX_RECIPIENTS)
		usage();
	char *cert = strchr(spec, ':');
	char *key = cert ? strchr(cert + 1, ':') : NULL;
	if (!key)
		usage();
	*cert++ = '\0';
	*key++ = '\0';
	struct recipient *r = &o->recipients[o->n_recipients++];
	r->name = spec;
	r->client = o->client; /* gateway and CA filled in later */
	r->client.cert_file = cert;
	r->client.key_file = key;
}

static void parse_pids(struct opts *o, char *list)
{
	for (char *p = list; *p && o->n_pids < MAX_PIDS;) {
		char *end;
		long v = strtol(p, &end, 10);
		if (end == p || v <= 0)
			usage();
		o->pids[o->n_pids++] = (int)v;
		p = *end == ',' ? end + 1 : end;
	}
}

int main(int argc, char **argv)
{
	struct opts o = {
	    .senders = 4, .window = 1, .messages = 200, .records = 1, .runs = 5, .label = "load"};
	/* The load generator shares the two cores with what it measures. Its
	 * recipients hold up to a batch of decoded Deliveries at a time, and
	 * glibc gave their memory back to the kernel as they were freed, so
	 * every batch faulted it in again, zeroed: 9% of this program's CPU at
	 * R = 100. Keep freed memory instead, as a long-running partner system
	 * would tune itself; isgd's own allocations do not fault this way. */
	mallopt(M_TRIM_THRESHOLD, 256 << 20);
	mallopt(M_MMAP_THRESHOLD, 32 << 20);
	isg_client_options_init(&o.client);
	o.client.timeout_ms = 60000;
	static const struct option lopts[] = {
	    {"gateway", 1, NULL, 'g'}, {"cert", 1, NULL, 'c'},    {"key", 1, NULL, 'k'},
	    {"ca", 1, NULL, 'a'},      {"to", 1, NULL, 't'},      {"agreement", 1, NULL, 'A'},
	    {"dataset", 1, NULL, 'd'}, {"senders", 1, NULL, 'P'}, {"messages", 1, NULL, 'M'},
	    {"records", 1, NULL, 'R'}, {"runs", 1, NULL, 'N'},    {"idle", 1, NULL, 'I'},
	    {"pid", 1, NULL, 'p'},     {"label", 1, NULL, 'l'},   {"recipient", 1, NULL, 'r'},
	    {"window", 1, NULL, 'W'},  {NULL, 0, NULL, 0},
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
			o.senders = parse_uint(optarg, 1000);
			break;
		case 'W':
			o.window = parse_uint(optarg, MAX_WINDOW);
			break;
		case 'M':
			o.messages = parse_uint(optarg, 10000000);
			break;
		case 'R':
			o.records = parse_uint(optarg, 100000);
			break;
		case 'N':
			o.runs = parse_uint(optarg, MAX_RUNS);
			break;
		case 'I':
			o.idle = parse_uint(optarg, 100000);
			break;
		case 'p':
			parse_pids(&o, optarg);
			break;
		case 'l':
			o.label = optarg;
			break;
		case 'r':
			parse_recipient(&o, optarg);
			break;
		default:
			usage();
		}
	}
	if (!o.client.gateway || (!o.to && !o.n_recipients) || !o.agreement || !o.dataset ||
	    !o.senders || !o.window || !o.messages || !o.records || !o.runs)
		usage();
	for (unsigned i = 0; i < o.n_recipients; i++) {
		o.recipients[i].client.gateway = o.client.gateway;
		o.recipients[i].client.ca_file = o.client.ca_file;
		o.recipients[i].client.timeout_ms = o.client.timeout_ms;
	}
	printf("%s: %u senders (%u in flight each) x %u messages x %u records, %u recipients, "
	       "%u idle, %u runs\n",
	       o.label, o.senders, o.window, o.messages, o.records, o.n_recipients, o.idle, o.runs);
	double rss_before = pids_mem(&o, "VmRSS:");
	struct isg_client **idle = NULL;
	if (o.idle) {
		idle = open_idle(&o);
		if (!idle)
			return 1;
		sleep(1); /* let the server settle (audit entries of the new connections) */
		double rss_after = pids_mem(&o, "VmRSS:");
		printf("  idle: %u connections open; server RSS %.1f -> %.1f MiB (%.1f KiB each)\n",
		       o.idle, rss_before, rss_after, (rss_after - rss_before) * 1024.0 / o.idle);
	}
	double(*rs)[M_COUNT] = calloc(o.runs, sizeof(*rs));
	if (!rs)
		return 1;
	for (unsigned r = 0; r < o.runs; r++) {
		if (run_once(&o, r, rs[r]) != 0)
			return 1;
		char head[32];
		snprintf(head, sizeof(head), "  run %u:", r + 1);
		print_line(head, rs[r], o.n_recipients > 0, o.n_pids > 0);
	}
	double med[M_COUNT];
	for (int m = 0; m < M_COUNT; m++)
		med[m] = median_of(rs, o.runs, (enum metric)m);
	print_line("  median:", med, o.n_recipients > 0, o.n_pids > 0);
	double hwm = pids_mem(&o, "VmHWM:"), rss = pids_mem(&o, "VmRSS:");
	printf("RESULT %s records=%u senders=%u window=%u recipients=%u idle=%u", o.label,
	       o.records, o.senders, o.window, o.n_recipients, o.idle);
	for (int m = 0; m < M_COUNT; m++)
		printf(" %s=%.3f", metric_key[m], med[m]);
	printf(" server_rss_mib=%.1f server_hwm_mib=%.1f rss_before_idle_mib=%.1f\n", rss, hwm,
	       rss_before);
	if (idle) {
		for (unsigned i = 0; i < o.idle; i++)
			isg_client_close(idle[i]);
		free(idle);
	}
	free(rs);
	return 0;
}
