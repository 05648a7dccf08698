/* A ring of frames pushed on the subscription while another request waited. */
#include <stdlib.h>

#include "client_impl.h"
#include "util/util.h"

int queue_push(struct frame_queue *q, Isg__Frame *f, size_t size)
{
	if (q->bytes + size > CLIENT_MAX_QUEUED_BYTES)
		return ISG_ERR_LIMIT;
	if (q->n == q->cap) {
		size_t cap = q->cap ? q->cap * 2 : 16;
		Isg__Frame **items = malloc(cap * sizeof(*items));
		size_t *sizes = malloc(cap * sizeof(*sizes));
		if (!items || !sizes) {
			free(items);
			free(sizes);
			return ISG_ERR_NOMEM;
		}
		for (size_t i = 0; i < q->n; i++) {
			items[i] = q->items[(q->head + i) % q->cap];
			sizes[i] = q->sizes[(q->head + i) % q->cap];
		}
		free(q->items);
		free(q->sizes);
		q->items = items;
		q->sizes = sizes;
		q->cap = cap;
		q->head = 0;
	}
	size_t at = (q->head + q->n) % q->cap;
	q->items[at] = f;
	q->sizes[at] = size;
	q->n++;
	q->bytes += size;
	return 0;
}

Isg__Frame *queue_pop(struct frame_queue *q)
{
	if (q->n == 0)
		return NULL;
	Isg__Frame *f = q->items[q->head];
	q->bytes -= q->sizes[q->head];
	q->head = (q->head + 1) % q->cap;
	q->n--;
	return f;
}

const Isg__Frame *queue_last(const struct frame_queue *q)
{
	return q->n ? q->items[(q->head + q->n - 1) % q->cap] : NULL;
}

void queue_release(struct frame_queue *q)
{
	Isg__Frame *f;
	while ((f = queue_pop(q)))
		wire_frame_free(f);
	free(q->items);
	free(q->sizes);
	q->items = NULL;
	q->sizes = NULL;
	q->cap = q->head = q->n = q->bytes = 0;
}
