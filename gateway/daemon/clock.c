/* The wall clock as isgd uses it for days, and its steps. */
#include "daemon/gateway.h"
#include "util/util.h"

#define CLOCK_STEP_MIN_MS 1000

int64_t gateway_today_ms(struct gateway *g)
{
	return time_not_back_ms(&g->latest_ms, time_now_ms());
}

int64_t clock_watch_step(struct clock_watch *w, int64_t wall_ms, int64_t mono_ms)
{
	int64_t offset = wall_ms - mono_ms;
	int64_t step = w->started ? offset - w->offset_ms : 0;
	w->started = true;
	w->offset_ms = offset;
	return step >= CLOCK_STEP_MIN_MS || step <= -CLOCK_STEP_MIN_MS ? step : 0;
}
