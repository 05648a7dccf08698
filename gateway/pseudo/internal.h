/*
 * pseudo internals shared by the module's files; not part of the interface.
 * Each normaliser gets a value that is already bounded by PSEUDO_VALUE_MAX,
 * valid UTF-8, free of control characters and trimmed of outer spaces.
 */
#ifndef ISG_PSEUDO_INTERNAL_H
#define ISG_PSEUDO_INTERNAL_H

#include "pseudo/pseudo.h"

#include <stdbool.h>

typedef int (*pseudo_normaliser)(const char *s, size_t len, char out[static PSEUDO_VALUE_MAX + 1],
                                 const char **reason);

int pseudo_norm_nhs(const char *s, size_t len, char out[static PSEUDO_VALUE_MAX + 1],
                    const char **reason);
int pseudo_norm_pnc(const char *s, size_t len, char out[static PSEUDO_VALUE_MAX + 1],
                    const char **reason);
int pseudo_norm_postcode(const char *s, size_t len, char out[static PSEUDO_VALUE_MAX + 1],
                         const char **reason);
int pseudo_norm_date(const char *s, size_t len, char out[static PSEUDO_VALUE_MAX + 1],
                     const char **reason);
int pseudo_norm_name(const char *s, size_t len, char out[static PSEUDO_VALUE_MAX + 1],
                     const char **reason);
int pseudo_norm_email(const char *s, size_t len, char out[static PSEUDO_VALUE_MAX + 1],
                      const char **reason);
int pseudo_norm_identifier(const char *s, size_t len, char out[static PSEUDO_VALUE_MAX + 1],
                           const char **reason);

/* Set *reason when the caller asked for it; returns ISG_ERR_INVALID. */
int pseudo_refuse(const char **reason, const char *why);

/*
 * Decode the code point at s[*i] of valid UTF-8 (checked beforehand) and
 * advance *i past it.
 */
uint32_t pseudo_utf8_next(const char *s, size_t len, size_t *i);

#endif
