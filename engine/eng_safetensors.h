/*
 * eng_safetensors.h - safetensors reading (mmap; eng_safetensors.c) and
 * writing (eng_safetensors_write.c).
 *
 * Reader: one file or a sharded checkpoint (model.safetensors.index.json),
 * every file mmapped read-only; tensors point straight into the mapping.
 * Every header is validated before any tensor is handed out: JSON shape,
 * dtypes, offsets inside the file, sizes matching shape x dtype, no overlap.
 * Errors name the file (and tensor) in *err.
 *
 * Writer: declare tensors (name, dtype, shape) first, then stream their bytes
 * in declaration order; the header is written up front, so multi-GB
 * checkpoints are written without holding them in memory.
 */
#ifndef ENG_SAFETENSORS_H
#define ENG_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "mls_status.h"

#define ST_MAX_DIMS 8
/* JSON numbers are doubles: offsets above 2^53 are not exact, so neither the
 * reader nor the writer accepts them. */
#define ST_JSON_INT_MAX 9007199254740992.0

#define ST_DTYPE_LIST(X)   \
    X(F64, "F64", 8)       \
    X(F32, "F32", 4)       \
    X(F16, "F16", 2)       \
    X(BF16, "BF16", 2)     \
    X(F8_E4M3, "F8_E4M3", 1) \
    X(I64, "I64", 8)       \
    X(I32, "I32", 4)       \
    X(I16, "I16", 2)       \
    X(I8, "I8", 1)         \
    X(U8, "U8", 1)         \
    X(BOOL, "BOOL", 1)     \
    X(F8_E8M0, "F8_E8M0", 1) /* UE8M0: 2^(code-127), 0xFF NaN (DeepSeek-V4 scales) */

typedef enum {
#define ST_DTYPE_ENUM_(name, str, size) ST_DTYPE_##name,
    ST_DTYPE_LIST(ST_DTYPE_ENUM_)
#undef ST_DTYPE_ENUM_
    ST_DTYPE_COUNT
} st_dtype;

const char *st_dtype_name(st_dtype dtype);
size_t st_dtype_size(st_dtype dtype);

typedef struct {
    const char *name;           /* "model.layers.0.self_attn.kv_a_proj_with_mqa.weight" */
    const char *file;           /* path of the file that holds it */
    st_dtype dtype;
    int n_dims;
    int64_t shape[ST_MAX_DIMS];
    const void *data;           /* into the read-only mapping; valid until st_close */
    uint64_t nbytes;
} st_tensor;

typedef struct st_archive st_archive;

/* Open <dir>/model.safetensors.index.json if present, else <dir>/model.safetensors. */
mls_status st_open_dir(const char *dir, st_archive **ar_p, mls_err *err);
/* Open one .safetensors file. */
mls_status st_open_file(const char *path, st_archive **ar_p, mls_err *err);
void st_close(st_archive *ar); /* accepts NULL */

const st_tensor *st_find(const st_archive *ar, const char *name); /* NULL if absent */
size_t st_count(const st_archive *ar);
const st_tensor *st_at(const st_archive *ar, size_t i);

/*
 * Find `name` and check it: present, dtype one of `dtypes` (n_dtypes of them),
 * n_dims dims equal to shape[] (a shape entry of -1 matches anything).
 * MLS_ERR_BAD_MODEL with "<file>: tensor '<name>': <what>" otherwise.
 */
mls_status st_expect(const st_archive *ar, const char *name, const st_dtype *dtypes, int n_dtypes,
                     int n_dims, const int64_t *shape, const st_tensor **tensor_p, mls_err *err);

typedef struct st_writer st_writer;

mls_status st_writer_create(const char *path, st_writer **w_p, mls_err *err);
/* Declare the next tensor; all declarations come before the first write. */
mls_status st_writer_declare(st_writer *w, const char *name, st_dtype dtype, int n_dims,
                             const int64_t *shape, mls_err *err);
/* Stream tensor bytes in declaration order (any chunking). Writes the header first. */
mls_status st_writer_write(st_writer *w, const void *data, size_t nbytes, mls_err *err);
/* Checks every declared byte was written, closes the file, frees w (also on error). */
mls_status st_writer_finish(st_writer *w, mls_err *err);
/* Give up: closes and deletes the partial file, frees w (accepts NULL). */
void st_writer_abort(st_writer *w);

#endif
