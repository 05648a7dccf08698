/* ydoc: positions, refusals of non-plain YAML, syntax errors, diagnostics, key checks. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include "util/util.h"
#include "ydoc/ydoc.h"

static struct ydoc *load_ok(const char *text)
{
	struct ydoc_diags d;
	ydoc_diags_init(&d);
	struct ydoc *doc = NULL;
	int err = ydoc_load_buffer("t.yaml", text, strlen(text), &doc, &d);
	if (err)
		ydoc_diags_print(&d, stderr);
	assert_int_equal(err, 0);
	assert_int_equal(d.errors, 0);
	ydoc_diags_release(&d);
	return doc;
}

/* Parse text that must fail with exactly one error at line:col containing msg. */
static void load_fails(const char *text, int line, int col, const char *msg)
{
	struct ydoc_diags d;
	ydoc_diags_init(&d);
	struct ydoc *doc = (struct ydoc *)1;
	int err = ydoc_load_buffer("bad.yaml", text, strlen(text), &doc, &d);
	assert_int_equal(err, ISG_ERR_PARSE);
	assert_null(doc);
	assert_int_equal(d.errors, 1);
	assert_int_equal(d.n, 1);
	if (d.items[0].line != line || d.items[0].col != col || !strstr(d.items[0].message, msg))
		ydoc_diags_print(&d, stderr);
	assert_string_equal(d.items[0].file, "bad.yaml");
	assert_int_equal(d.items[0].line, line);
	assert_int_equal(d.items[0].col, col);
	assert_non_null(strstr(d.items[0].message, msg));
	ydoc_diags_release(&d);
}

/* As load_fails, and msg is the whole message. */
static void load_fails_exactly(const char *text, int line, int col, const char *msg)
{
	load_fails(text, line, col, msg);
	struct ydoc_diags d;
	ydoc_diags_init(&d);
	struct ydoc *doc = NULL;
	assert_int_equal(ydoc_load_buffer("bad.yaml", text, strlen(text), &doc, &d), ISG_ERR_PARSE);
	assert_string_equal(d.items[0].message, msg);
	ydoc_diags_release(&d);
}

static void test_tree_and_positions(void **state)
{
	struct ydoc *doc = load_ok("# comment\n"
	                           "name: isg\n"
	                           "list:\n"
	                           "  - one\n"
	                           "  - 'two'\n"
	                           "flow: {a: \"x\", b: [1, 2]}\n"
	                           "empty:\n");
	const struct ydoc_node *root = doc->root;
	assert_string_equal(doc->file, "t.yaml");
	assert_int_equal(root->kind, YDOC_MAP);
	assert_int_equal(root->n, 4);
	assert_int_equal(root->line, 2);
	assert_int_equal(root->col, 1);

	const struct ydoc_node *name = ydoc_get(root, "name");
	assert_int_equal(name->kind, YDOC_SCALAR);
	assert_string_equal(name->scalar, "isg");
	assert_false(name->quoted);
	assert_int_equal(name->line, 2);
	assert_int_equal(name->col, 7);
	assert_int_equal(root->keys[0]->line, 2);
	assert_int_equal(root->keys[0]->col, 1);

	const struct ydoc_node *list = ydoc_get(root, "list");
	assert_int_equal(list->kind, YDOC_SEQ);
	assert_int_equal(list->n, 2);
	assert_int_equal(list->line, 4);
	assert_int_equal(list->col, 3);
	assert_string_equal(list->items[1]->scalar, "two");
	assert_true(list->items[1]->quoted);
	assert_int_equal(list->items[1]->line, 5);
	assert_int_equal(list->items[1]->col, 5);

	const struct ydoc_node *flow = ydoc_get(root, "flow");
	assert_int_equal(flow->kind, YDOC_MAP);
	assert_int_equal(flow->line, 6);
	assert_int_equal(flow->col, 7);
	assert_true(ydoc_get(flow, "a")->quoted);
	const struct ydoc_node *b = ydoc_get(flow, "b");
	assert_int_equal(b->kind, YDOC_SEQ);
	assert_string_equal(b->items[1]->scalar, "2");
	assert_int_equal(b->items[1]->col, 23);

	const struct ydoc_node *empty = ydoc_get(root, "empty");
	assert_int_equal(empty->kind, YDOC_SCALAR);
	assert_string_equal(empty->scalar, "");

	assert_null(ydoc_get(root, "missing"));
	assert_null(ydoc_get(name, "x")); /* not a map */
	assert_null(ydoc_get(NULL, "x"));
	ydoc_free(doc);
}

static void test_empty_and_comment_only(void **state)
{
	struct ydoc *doc = load_ok("");
	assert_null(doc->root);
	ydoc_free(doc);
	doc = load_ok("# nothing here\n\n");
	assert_null(doc->root);
	ydoc_free(doc);
	ydoc_free(NULL);
}

static void test_refuses_anchor_alias_tag_documents(void **state)
{
	load_fails("a: &x 1\nb: 2\n", 1, 4, "anchors are not supported");
	load_fails("a: 1\nb: *x\n", 2, 4, "aliases are not supported");
	load_fails("a: 1\nb: !!str 2\n", 2, 4, "tags are not supported");
	load_fails("a: 1\nb: !custom {c: 1}\n", 2, 4, "tags are not supported");
	load_fails("a: 1\n---\nb: 2\n", 2, 1, "multiple documents are not supported");
	load_fails("%TAG ! tag:example.com,2000:\n---\na: 1\n", 1, 1, "%TAG directives");
	load_fails("a: \"x\\0y\"\n", 1, 4, "NUL character");
	load_fails("? [a, b]\n: 1\n", 1, 3, "mapping keys must be plain scalars");
}

static void test_syntax_errors_positioned(void **state)
{
	/* libyaml's problem mark, made 1-based; its words marked as YAML syntax. */
	/* A line indented deeper than its key continues the value above it. */
	load_fails_exactly("a: 1\n  b: 2\n", 2, 4,
	                   "YAML syntax error: mapping values are not allowed in this context "
	                   "(check this line's indentation against the lines above)");
	/* An unquoted value holding ": ". */
	load_fails_exactly("a: 1\ntitle: Falls: a review\n", 2, 13,
	                   "YAML syntax error: mapping values are not allowed in this context "
	                   "(a value that contains ': ' must be quoted)");
	/* After characters of two bytes: libyaml's column counts characters, and
	 * counted in bytes it would end before the first ": ". */
	load_fails_exactly("- {a: 1}\n- \u00e9\u00e9\u00e9\u00e9\u00e9: b: c\n", 2, 11,
	                   "YAML syntax error: mapping values are not allowed in this context "
	                   "(a value that contains ': ' must be quoted)");
	load_fails_exactly("a: [1, 2\nb: 3\n", 2, 2,
	                   "YAML syntax error: did not find expected ',' or ']' while parsing a "
	                   "flow sequence");
	load_fails("a: 'unterminated\n", 2, 1, "YAML syntax error: found unexpected end of stream");
	/* A block mapping or list that loses its key or '-': nearly always indentation. */
	load_fails_exactly("list:\n  - a\n  b: 1\n", 3, 3,
	                   "YAML syntax error: did not find expected '-' indicator while parsing a "
	                   "block collection (check this line's indentation against the lines "
	                   "above)");
	load_fails_exactly("a:\n  b: 1\n c: 2\n", 3, 2,
	                   "YAML syntax error: did not find expected key while parsing a block "
	                   "mapping (check this line's indentation against the lines above)");
	/* Invalid UTF-8: a reader error, positioned at the start of the bad sequence. */
	load_fails_exactly(
	    "a: 1\nb: \xff\n", 2, 4,
	    "YAML syntax error: invalid leading UTF-8 octet (save the file as UTF-8)");
	load_fails("a: 1\nb: \xc3\x28\n", 2, 4, "(save the file as UTF-8)");
	load_fails("a: 1\nb: x\xe2\x82\n", 2, 5, "(save the file as UTF-8)");
	load_fails("a: \xc3\xa9\xc3\x28\n", 1, 5, "(save the file as UTF-8)");
	/* A tab where YAML wants indentation. */
	load_fails("a:\n\tb: 1\n", 2, 1, "(indent with spaces, not tabs)");
}

/*
 * A UTF-8 byte order mark (what some Windows editors write) is ignored: the
 * file loads, and positions on line 1 count from the character after it.
 */
static void test_byte_order_mark_ignored(void **state)
{
	struct ydoc *doc = load_ok("\xef\xbb\xbflisten: 127.0.0.1:7443\nthreads: 2\n");
	const struct ydoc_node *listen = ydoc_get(doc->root, "listen");
	assert_non_null(listen);
	assert_string_equal(listen->scalar, "127.0.0.1:7443");
	assert_int_equal(doc->root->keys[0]->line, 1);
	assert_int_equal(doc->root->keys[0]->col, 1);
	assert_int_equal(listen->col, 9);
	ydoc_free(doc);
	load_fails("\xef\xbb\xbf"
	           "a: &x 1\n",
	           1, 4, "anchors are not supported");
	load_fails("\xef\xbb\xbf"
	           "a: 1\nb: \xff\n",
	           2, 4, "invalid leading UTF-8 octet");
	load_fails("\xef\xbb\xbf"
	           "a: \xff\n",
	           1, 4, "invalid leading UTF-8 octet");
}

static void test_depth_limit(void **state)
{
	char buf[400];
	size_t n = 0;
	for (int i = 0; i < 70; i++)
		buf[n++] = '[';
	for (int i = 0; i < 70; i++)
		buf[n++] = ']';
	buf[n] = '\0';
	load_fails(buf, 1, 65, "nesting deeper than 64 levels");
	/* 64 levels are fine. */
	n = 0;
	for (int i = 0; i < 64; i++)
		buf[n++] = '[';
	for (int i = 0; i < 64; i++)
		buf[n++] = ']';
	buf[n] = '\0';
	ydoc_free(load_ok(buf));
}

static void test_check_keys(void **state)
{
	struct ydoc *doc = load_ok("listen: x\n"
	                           "threds: 2\n"
	                           "zzz: 1\n"
	                           "listen: y\n");
	static const char *const allowed[] = {"listen", "threads", "tls", NULL};
	struct ydoc_diags d;
	ydoc_diags_init(&d);
	assert_int_equal(ydoc_check_keys(&d, "c.yaml", doc->root, "the configuration", allowed), 3);
	assert_int_equal(d.errors, 3);
	assert_int_equal(d.items[0].line, 2);
	assert_int_equal(d.items[0].col, 1);
	assert_string_equal(d.items[0].message,
	                    "unknown key 'threds' in the configuration (did you mean 'threads'?)");
	assert_string_equal(d.items[1].message, "unknown key 'zzz' in the configuration");
	assert_int_equal(d.items[2].line, 4);
	assert_string_equal(d.items[2].message, "duplicate key 'listen' in the configuration");
	/* Not a map: nothing to check. */
	assert_int_equal(ydoc_check_keys(&d, "c.yaml", doc->root->items[0], "x", allowed), 0);
	ydoc_diags_release(&d);
	ydoc_free(doc);
}

/* What ydoc_diags_print writes for d; free it. */
static char *printed(const struct ydoc_diags *d)
{
	char *text = NULL;
	size_t size = 0;
	FILE *f = open_memstream(&text, &size);
	assert_non_null(f);
	ydoc_diags_print(d, f);
	assert_int_equal(fclose(f), 0);
	return text;
}

static void test_diags_print_and_sanitise(void **state)
{
	struct ydoc_diags d;
	ydoc_diags_init(&d);
	struct ydoc_node at = {.line = 4, .col = 10};
	ydoc_error(&d, "isgd.yaml", &at, "invalid duration '%s' for %s", "10x",
	           "limits.idle_timeout");
	ydoc_warning(&d, "p.yaml", &at, "line\nbreak, CSI \xc2\x9b, lone \x9b, caf\xc3\xa9");
	ydoc_error(&d, "dir/x.yaml", NULL, "cannot open: %s", "No such file or directory");
	assert_int_equal(d.errors, 2);
	assert_int_equal(d.warnings, 1);
	char *text = printed(&d);
	assert_string_equal(text, "isgd.yaml:4:10: error: invalid duration '10x' for "
	                          "limits.idle_timeout\n"
	                          "p.yaml:4:10: warning: line?break, CSI ?, lone ?, caf\xc3\xa9\n"
	                          "dir/x.yaml: error: cannot open: No such file or directory\n");
	free(text);
	ydoc_diags_release(&d);

	/* Long messages are cut; the count stays right past the stored maximum. */
	ydoc_diags_init(&d);
	char big[2000];
	memset(big, 'v', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	ydoc_error(&d, "x", &at, "bad '%s'", big);
	assert_true(strlen(d.items[0].message) <= 400);
	assert_non_null(strstr(d.items[0].message, "..."));
	for (int i = 0; i < 1500; i++)
		ydoc_error(&d, "x", &at, "e%d", i);
	assert_int_equal(d.errors, 1501);
	assert_true(d.n < d.errors);
	text = printed(&d);
	assert_non_null(strstr(text, "(501 more diagnostics not shown)\n"));
	free(text);
	ydoc_diags_release(&d);
}

/*
 * A file name is as hostile as a message: an agreement named with ESC and a
 * newline must not forge lines or terminal sequences in isgctl policy check.
 */
static void test_diags_clean_file_names(void **state)
{
	struct ydoc_diags d;
	ydoc_diags_init(&d);
	struct ydoc_node at = {.line = 1, .col = 2};
	ydoc_error(&d, "agreements/\x1b[2Jx\ny.yaml: error: forged\x9b\xc2\x9b\xff.yaml", &at,
	           "bad");
	ydoc_warning(&d, "caf\xc3\xa9\r.yaml", NULL, "w");
	char *text = printed(&d);
	assert_string_equal(text, "agreements/?[2Jx?y.yaml: error: forged???.yaml:1:2: error: bad\n"
	                          "caf\xc3\xa9?.yaml: warning: w\n");
	free(text);
	ydoc_diags_release(&d);
}

static void test_load_file(void **state)
{
	char path[] = "/tmp/test_ydoc_XXXXXX";
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	const char *text = "a: 1\nb: [x, y]\n";
	assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	close(fd);

	struct ydoc_diags d;
	ydoc_diags_init(&d);
	struct ydoc *doc = NULL;
	assert_int_equal(ydoc_load_file(path, 1024, &doc, &d), 0);
	assert_string_equal(doc->file, path);
	assert_int_equal(ydoc_get(doc->root, "b")->n, 2);
	ydoc_free(doc);

	assert_int_equal(ydoc_load_file(path, 10, &doc, &d), ISG_ERR_TOO_BIG);
	assert_null(doc);
	assert_int_equal(d.errors, 1);
	assert_non_null(strstr(d.items[0].message, "larger than 10 bytes"));
	unlink(path);

	assert_int_equal(ydoc_load_file(path, 1024, &doc, &d), ISG_ERR_IO);
	assert_int_equal(d.errors, 2);
	assert_string_equal(d.items[1].file, path);
	assert_int_equal(d.items[1].line, 0);
	assert_non_null(strstr(d.items[1].message, "cannot open"));

	assert_int_equal(ydoc_load_file("/tmp", 1024, &doc, &d), ISG_ERR_IO);
	assert_non_null(strstr(d.items[2].message, "not a regular file"));

	/* A FIFO with no writer is refused at once; opening it must not wait (alarm: fail). */
	char fifo[] = "/tmp/test_ydoc_fifo_XXXXXX";
	assert_non_null(mkdtemp(fifo));
	char fpath[64];
	snprintf(fpath, sizeof(fpath), "%s/f.yaml", fifo);
	assert_int_equal(mkfifo(fpath, 0600), 0);
	alarm(10);
	assert_int_equal(ydoc_load_file(fpath, 1024, &doc, &d), ISG_ERR_IO);
	alarm(0);
	assert_non_null(strstr(d.items[3].message, "not a regular file"));
	unlink(fpath);
	rmdir(fifo);
	ydoc_diags_release(&d);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_tree_and_positions),
	    cmocka_unit_test(test_empty_and_comment_only),
	    cmocka_unit_test(test_refuses_anchor_alias_tag_documents),
	    cmocka_unit_test(test_syntax_errors_positioned),
	    cmocka_unit_test(test_byte_order_mark_ignored),
	    cmocka_unit_test(test_depth_limit),
	    cmocka_unit_test(test_check_keys),
	    cmocka_unit_test(test_diags_print_and_sanitise),
	    cmocka_unit_test(test_diags_clean_file_names),
	    cmocka_unit_test(test_load_file),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
