/*
 * Preloaded by scripts/bench when ISG_BENCH_SLOW_SYNC_US is set: every
 * fsync and fdatasync of the process takes that many microseconds longer
 * (ISG_SLOW_SYNC_US), as on network block storage, whose syncs take
 * milliseconds where this machine's disk takes a fraction of one.
 */
#include <dlfcn.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static void slow(void)
{
	const char *v = getenv("ISG_SLOW_SYNC_US");
	long us = v ? strtol(v, NULL, 10) : 0;
	if (us <= 0)
		return;
	struct timespec ts = {.tv_sec = us / 1000000, .tv_nsec = (us % 1000000) * 1000};
	while (nanosleep(&ts, &ts) != 0)
		;
}

int fsync(int fd)
{
	int (*real)(int) = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
	slow();
	return real(fd);
}

int fdatasync(int fd)
{
	int (*real)(int) = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
	slow();
	return real(fd);
}
