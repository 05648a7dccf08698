/* Private to the ctlio files (readers, writers, batches). */
#ifndef ISG_CTL_INTERNAL_H
#define ISG_CTL_INTERNAL_H

#include <stdio.h>

#include "ctl/ctlio.h"

void *ctl_arena_alloc(struct ctl_batch *b, size_t size);
char *ctl_arena_strdup(struct ctl_batch *b, const char *s, size_t len);
/* Append a record (fields copied into the arena); 0 or ISG_ERR_NOMEM. */
int ctl_batch_add(struct ctl_batch *b, const struct isg_field *fields, size_t n, int line);

/*
 * Position of the first byte of buf that is not valid UTF-8 or is NUL;
 * len when every byte is fine.
 */
size_t ctl_utf8_check(const char *buf, size_t len);
/* [+-]digits within int64: 0, ISG_ERR_PARSE (syntax) or ISG_ERR_INVALID (range). */
int ctl_parse_integer(const char *s, size_t len, int64_t *out);

/* 1-based line and byte column of offset in buf. */
void ctl_position(const char *buf, size_t offset, int *line, int *col);

#endif
