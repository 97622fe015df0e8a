/*
 * bpe_internal.h - helpers shared by the files of the BPE trainer (bpe_train.c,
 * bpe_deepseek.c); not part of its interface (bpe_train.h).
 */
#ifndef BPE_INTERNAL_H
#define BPE_INTERNAL_H

#include <stddef.h>
#include <stdio.h>

#include "mls_status.h"

/* Writes s[0 .. n-1] as a JSON string literal: quotes, backslashes and control
 * bytes escaped, UTF-8 kept as is. */
void bpe_json_str(FILE *fp, const char *s, size_t n);
/* Writes len bytes to path through path.tmp.<pid> + rename; MLS_ERR_IO names the file. */
mls_status bpe_write_file(const char *path, const char *text, size_t len, mls_err *err);

#endif
