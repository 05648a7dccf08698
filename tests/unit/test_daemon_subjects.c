/*
 * daemon/entries.c: the subjects of a message, the identifiers an audit
 * entry names by their audit-domain pseudonyms, collected as the agreement
 * checks each field.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "daemon/gateway.h"

/* A request of n_records records of fields_each fields (their contents unread). */
struct req_fx {
	Isg__Record records[4], *ptrs[4];
	Isg__SendRequest req;
};

static void req_init(struct req_fx *fx, size_t n_records, size_t fields_each)
{
	memset(fx, 0, sizeof(*fx));
	for (size_t i = 0; i < n_records; i++) {
		fx->records[i].n_fields = fields_each;
		fx->ptrs[i] = &fx->records[i];
	}
	fx->req.n_records = n_records;
	fx->req.records = fx->ptrs;
}

/*
 * Room grows with the identifiers, not with the fields: a frame of a
 * million empty fields, almost none of them identifiers, once reserved
 * some 400 bytes for each before the agreement looked at any.
 */
static void test_room_follows_the_identifiers_not_the_fields(void **state)
{
	(void)state;
	struct req_fx fx;
	req_init(&fx, 4, 250000);
	struct subjects s;
	subjects_init(&s, &fx.req);
	assert_int_equal(s.cap, 0);
	assert_int_equal(subjects_add(&s, PSEUDO_NHS_NUMBER, "9434765919", 10), 0);
	assert_int_equal(subjects_add(&s, PSEUDO_POSTCODE, "SW1A 1AA", 8), 0);
	assert_int_equal(subjects_add(&s, PSEUDO_DATE, "1980-01-01", 10), 0); /* not a subject */
	assert_int_equal(s.n, 2);
	assert_true(s.cap <= 16);
	subjects_release(&s);
}

/* Each request points at its own text, also after the room has moved. */
static void test_requests_keep_their_texts_as_room_grows(void **state)
{
	(void)state;
	struct req_fx fx;
	req_init(&fx, 2, 100);
	struct subjects s;
	subjects_init(&s, &fx.req);
	char text[32];
	for (int i = 0; i < 200; i++) {
		int n = snprintf(text, sizeof(text), "id-%d", i);
		assert_int_equal(subjects_add(&s, PSEUDO_IDENTIFIER, text, (size_t)n), 0);
	}
	assert_int_equal(s.n, 200);
	assert_true(s.cap <= 200);
	for (int i = 0; i < 200; i++) {
		int n = snprintf(text, sizeof(text), "id-%d", i);
		assert_ptr_equal(s.reqs[i].norm, s.norms[i]);
		assert_int_equal(s.reqs[i].len, (size_t)n);
		assert_string_equal(s.reqs[i].norm, text);
		assert_int_equal(s.reqs[i].type, PSEUDO_IDENTIFIER);
	}
	subjects_release(&s);
}

/* One a field at most, and no value longer than a normalised one can be. */
static void test_one_subject_a_field_at_most(void **state)
{
	(void)state;
	struct req_fx fx;
	req_init(&fx, 1, 3);
	struct subjects s;
	subjects_init(&s, &fx.req);
	for (int i = 0; i < 3; i++)
		assert_int_equal(subjects_add(&s, PSEUDO_NAME, "ann", 3), 0);
	assert_int_equal(subjects_add(&s, PSEUDO_NAME, "ann", 3), ISG_ERR_LIMIT);
	assert_int_equal(s.n, 3);
	assert_true(s.cap <= 3);
	subjects_release(&s);

	req_init(&fx, 1, 3);
	subjects_init(&s, &fx.req);
	static char long_value[PSEUDO_VALUE_MAX + 1];
	memset(long_value, 'a', sizeof(long_value));
	assert_int_equal(subjects_add(&s, PSEUDO_NAME, long_value, sizeof(long_value)),
	                 ISG_ERR_LIMIT);
	assert_int_equal(s.n, 0);
	subjects_release(&s);

	req_init(&fx, 0, 0);
	subjects_init(&s, &fx.req);
	assert_int_equal(subjects_add(&s, PSEUDO_NAME, "ann", 3), ISG_ERR_LIMIT);
	subjects_release(&s);
}

/* A pseudonymisation service that answers with a fixed status (and "p1", "p2"... when 0). */
static int service_status;
static size_t service_calls;

static int fixed_service(void *ctx, struct pseudo_request *reqs, size_t n, int64_t today)
{
	(void)ctx;
	(void)today;
	service_calls++;
	for (size_t i = 0; service_status == 0 && i < n; i++) {
		assert_string_equal(reqs[i].domain, KEYS_AUDIT_DOMAIN);
		snprintf(reqs[i].out, sizeof(reqs[i].out), "p%zu", i + 1);
	}
	return service_status;
}

/*
 * The key process failing to name the subjects is told apart from memory
 * running out: the send is refused as a key failure (keys.domain), not
 * answered "out of memory" with no rule and no audit entry.
 */
static void test_a_key_failure_is_not_out_of_memory(void **state)
{
	(void)state;
	struct regime rg = {.pseudo = {.pseudonymise = fixed_service}};
	struct req_fx fx;
	req_init(&fx, 1, 2);
	static const int failures[] = {ISG_ERR_IO, ISG_ERR_NOT_FOUND, ISG_ERR_CRYPTO};
	for (size_t i = 0; i < sizeof(failures) / sizeof(failures[0]); i++) {
		struct subjects s;
		subjects_init(&s, &fx.req);
		assert_int_equal(subjects_add(&s, PSEUDO_NHS_NUMBER, "9434765919", 10), 0);
		service_status = failures[i];
		char *out = (char *)"untouched";
		assert_int_equal(entry_subjects(&rg, &s, 0, &out), failures[i]);
		assert_null(out);
		assert_false(s.answered);

		struct policy_refusal why;
		subjects_refusal(failures[i], "police-to-nhs", &why);
		assert_int_equal(why.code, ISG__ERROR_CODE__INTERNAL);
		assert_string_equal(why.rule, "keys.domain");
		assert_int_equal(why.record_index, -1);
		assert_string_equal(why.field, "");
		assert_string_equal(
		    why.message,
		    failures[i] == ISG_ERR_NOT_FOUND
		        ? "the gateway has no key for linkage domain 'audit' (agreement "
		          "'police-to-nhs')"
		        : "pseudonymisation failed for linkage domain 'audit' (agreement "
		          "'police-to-nhs')");
		subjects_release(&s);
	}

	/* The key process out of memory stays out of memory: the handler
	 * answers it as such, and does not audit it as a key failure. */
	{
		struct subjects s;
		subjects_init(&s, &fx.req);
		assert_int_equal(subjects_add(&s, PSEUDO_NHS_NUMBER, "9434765919", 10), 0);
		service_status = ISG_ERR_NOMEM;
		char *out = (char *)"untouched";
		assert_int_equal(entry_subjects(&rg, &s, 0, &out), ISG_ERR_NOMEM);
		assert_null(out);
		assert_false(s.answered);
		subjects_release(&s);
	}

	/* Answered: the subjects, asked once. */
	struct subjects s;
	subjects_init(&s, &fx.req);
	assert_int_equal(subjects_add(&s, PSEUDO_NHS_NUMBER, "9434765919", 10), 0);
	assert_int_equal(subjects_add(&s, PSEUDO_NAME, "ann", 3), 0);
	service_status = 0;
	service_calls = 0;
	char *out = NULL;
	assert_int_equal(entry_subjects(&rg, &s, 0, &out), 0);
	assert_string_equal(out, "[\"p1\",\"p2\"]");
	free(out);
	assert_int_equal(entry_subjects(&rg, &s, 0, &out), 0);
	assert_string_equal(out, "[\"p1\",\"p2\"]");
	free(out);
	assert_int_equal(service_calls, 1);
	subjects_release(&s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_room_follows_the_identifiers_not_the_fields),
	    cmocka_unit_test(test_requests_keep_their_texts_as_room_grows),
	    cmocka_unit_test(test_one_subject_a_field_at_most),
	    cmocka_unit_test(test_a_key_failure_is_not_out_of_memory),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
