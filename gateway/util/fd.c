/*
 * Reading a file descriptor whole, as every loader of a small file does.
 */
#include <errno.h>
#include <unistd.h>

#include "util/util.h"

ssize_t fd_read_up_to(int fd, void *buf, size_t cap)
{
	size_t len = 0;
	while (len < cap) {
		ssize_t n = read(fd, (char *)buf + len, cap - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -1;
		if (n == 0)
			break;
		len += (size_t)n;
	}
	return (ssize_t)len;
}
