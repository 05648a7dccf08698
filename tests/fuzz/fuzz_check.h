/*
 * CHECK(cond): a harness's oracle, which aborts (a finding) when cond is
 * false, in every build; assert would vanish under NDEBUG.
 */
#ifndef ISG_FUZZ_CHECK_H
#define ISG_FUZZ_CHECK_H

#include <stdlib.h>

#define CHECK(cond)                                                                                \
	do {                                                                                       \
		if (!(cond))                                                                       \
			abort();                                                                   \
	} while (0)

#endif
