/*
 * eng_safetensors_write.c - safetensors streaming writer (the reader is
 * eng_safetensors.c; the format is described there).
 *
 * Tensors are declared first (name, dtype, shape), then their bytes are
 * streamed in declaration order; the header goes out before the first data
 * byte, its entries sorted by name while the data stays in declaration order.
 * The file is written under a temporary name and renamed into place by
 * st_writer_finish, so a reader never sees a partial checkpoint.
 */
#define _GNU_SOURCE
#include "eng_safetensors.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mls_buf.h"

typedef struct {
    char *name;
    st_dtype dtype;
    int n_dims;
    int64_t shape[ST_MAX_DIMS];
    uint64_t begin, end;
} st_decl;

struct st_writer {
    char *path;     /* final name */
    char *tmp_path; /* written here, renamed over path by finish */
    FILE *fp;
    st_decl *decls; /* (n_decls) in declaration (= data) order */
    size_t n_decls, cap_decls;
    uint64_t total;   /* data bytes declared */
    uint64_t written; /* data bytes written */
    bool header_done;
    bool failed; /* a write failed: finish only cleans up */
};

static void st_writer_free(st_writer *w)
{
    for (size_t i = 0; i < w->n_decls; i++) {
        free(w->decls[i].name);
    }
    mls_array_free(&w->decls, &w->cap_decls, sizeof(*w->decls), MLS_ALLOC_TAG_MISC);
    free(w->path);
    free(w->tmp_path);
    free(w);
}

mls_status st_writer_create(const char *path, st_writer **w_p, mls_err *err)
{
    st_writer *w = calloc(1, sizeof(*w));
    if (w == NULL || (w->path = strdup(path)) == NULL ||
        asprintf(&w->tmp_path, "%s.tmp.%d", path, (int)getpid()) < 0) {
        if (w != NULL) {
            w->tmp_path = NULL;
            st_writer_free(w);
        }
        mls_err_set(err, "%s: out of memory", path);
        return MLS_ERR_NO_MEMORY;
    }
    w->fp = fopen(w->tmp_path, "wb");
    if (w->fp == NULL) {
        int e = errno;
        mls_err_set(err, "%s: cannot create: %s", w->tmp_path, strerror(e));
        st_writer_free(w);
        return e == ENOENT ? MLS_ERR_NOT_FOUND : MLS_ERR_IO;
    }
    setvbuf(w->fp, NULL, _IOFBF, 1 << 20);
    *w_p = w;
    return MLS_OK;
}

mls_status st_writer_declare(st_writer *w, const char *name, st_dtype dtype, int n_dims,
                             const int64_t *shape, mls_err *err)
{
    if (w->header_done) {
        mls_err_set(err, "%s: tensor '%s' declared after data was written", w->path, name);
        return MLS_ERR_INVALID_ARG;
    }
    if (name[0] == '\0' || strcmp(name, "__metadata__") == 0 || (unsigned)dtype >= ST_DTYPE_COUNT ||
        n_dims < 0 || n_dims > ST_MAX_DIMS) {
        mls_err_set(err, "%s: tensor '%s': bad name, dtype or rank", w->path, name);
        return MLS_ERR_INVALID_ARG;
    }
    uint64_t nbytes = st_dtype_size(dtype);
    for (int i = 0; i < n_dims; i++) {
        if (shape[i] < 0 || __builtin_mul_overflow(nbytes, (uint64_t)shape[i], &nbytes)) {
            mls_err_set(err, "%s: tensor '%s': bad shape[%d] %lld", w->path, name, i,
                        (long long)shape[i]);
            return MLS_ERR_INVALID_ARG;
        }
    }
    if (w->total + nbytes < w->total || w->total + nbytes > (uint64_t)ST_JSON_INT_MAX) {
        mls_err_set(err, "%s: tensor '%s': file too large", w->path, name);
        return MLS_ERR_INVALID_ARG;
    }
    if (mls_array_reserve(&w->decls, &w->cap_decls, w->n_decls + 1, sizeof(*w->decls),
                          MLS_ALLOC_TAG_MISC) != MLS_OK) {
        mls_err_set(err, "%s: out of memory", w->path);
        return MLS_ERR_NO_MEMORY;
    }
    st_decl *d = &w->decls[w->n_decls];
    memset(d, 0, sizeof(*d));
    if ((d->name = strdup(name)) == NULL) {
        mls_err_set(err, "%s: out of memory", w->path);
        return MLS_ERR_NO_MEMORY;
    }
    d->dtype = dtype;
    d->n_dims = n_dims;
    if (n_dims > 0) {
        memcpy(d->shape, shape, (size_t)n_dims * sizeof(*shape));
    }
    d->begin = w->total;
    d->end = w->total + nbytes;
    w->total = d->end;
    w->n_decls++;
    return MLS_OK;
}

static int st_decl_ptr_cmp(const void *a, const void *b)
{
    return strcmp((*(const st_decl *const *)a)->name, (*(const st_decl *const *)b)->name);
}

/* Append a JSON string literal (quotes included) to the header buffer. */
static void st_json_put_string(FILE *mem, const char *s)
{
    fputc('"', mem);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') {
            fputc('\\', mem);
            fputc(*p, mem);
        } else if (*p < 0x20) {
            fprintf(mem, "\\u%04x", *p);
        } else {
            fputc(*p, mem);
        }
    }
    fputc('"', mem);
}

static mls_status st_writer_header(st_writer *w, mls_err *err)
{
    mls_status st = MLS_OK;
    char *hdr = NULL;
    size_t hlen = 0;
    const st_decl **sorted = malloc((w->n_decls ? w->n_decls : 1) * sizeof(*sorted));
    FILE *mem = open_memstream(&hdr, &hlen);
    if (sorted == NULL || mem == NULL) {
        mls_err_set(err, "%s: out of memory for the header", w->path);
        st = MLS_ERR_NO_MEMORY;
        goto out_free;
    }
    for (size_t i = 0; i < w->n_decls; i++) {
        sorted[i] = &w->decls[i];
    }
    qsort(sorted, w->n_decls, sizeof(*sorted), st_decl_ptr_cmp);
    for (size_t i = 1; i < w->n_decls; i++) {
        if (strcmp(sorted[i - 1]->name, sorted[i]->name) == 0) {
            mls_err_set(err, "%s: tensor '%s' declared twice", w->path, sorted[i]->name);
            st = MLS_ERR_INVALID_ARG;
            goto out_free;
        }
    }
    fputs("{\"__metadata__\":{\"format\":\"pt\"}", mem);
    for (size_t i = 0; i < w->n_decls; i++) {
        const st_decl *d = sorted[i];
        fputc(',', mem);
        st_json_put_string(mem, d->name);
        fprintf(mem, ":{\"dtype\":\"%s\",\"shape\":[", st_dtype_name(d->dtype));
        for (int k = 0; k < d->n_dims; k++) {
            fprintf(mem, "%s%lld", k ? "," : "", (long long)d->shape[k]);
        }
        fprintf(mem, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)d->begin,
                (unsigned long long)d->end);
    }
    fputc('}', mem);
    while ((ftell(mem) % 8) != 0) {
        fputc(' ', mem);
    }
    if (fclose(mem) != 0) {
        mem = NULL;
        mls_err_set(err, "%s: out of memory for the header", w->path);
        st = MLS_ERR_NO_MEMORY;
        goto out_free;
    }
    mem = NULL;
    uint8_t len8[8];
    for (int i = 0; i < 8; i++) {
        len8[i] = (uint8_t)((uint64_t)hlen >> (8 * i));
    }
    if (fwrite(len8, 1, 8, w->fp) != 8 || fwrite(hdr, 1, hlen, w->fp) != hlen) {
        mls_err_set(err, "%s: write failed: %s", w->tmp_path, strerror(errno));
        st = MLS_ERR_IO;
        goto out_free;
    }
    w->header_done = true;

out_free:
    if (mem != NULL) {
        fclose(mem);
    }
    free(hdr);
    free(sorted);
    return st;
}

mls_status st_writer_write(st_writer *w, const void *data, size_t nbytes, mls_err *err)
{
    mls_status st;
    if (w->failed) {
        mls_err_set(err, "%s: writer already failed", w->path);
        return MLS_ERR_INVALID_ARG;
    }
    if (!w->header_done && (st = st_writer_header(w, err)) != MLS_OK) {
        w->failed = true;
        return st;
    }
    if (nbytes > w->total - w->written) {
        mls_err_set(err, "%s: %zu bytes written past the %llu declared", w->path, nbytes,
                    (unsigned long long)w->total);
        w->failed = true;
        return MLS_ERR_INVALID_ARG;
    }
    if (nbytes > 0 && fwrite(data, 1, nbytes, w->fp) != nbytes) {
        mls_err_set(err, "%s: write failed: %s", w->tmp_path, strerror(errno));
        w->failed = true;
        return MLS_ERR_IO;
    }
    w->written += nbytes;
    return MLS_OK;
}

void st_writer_abort(st_writer *w)
{
    if (w == NULL) {
        return;
    }
    if (w->fp != NULL) {
        fclose(w->fp);
    }
    unlink(w->tmp_path);
    st_writer_free(w);
}

mls_status st_writer_finish(st_writer *w, mls_err *err)
{
    mls_status st = MLS_OK;
    if (w->failed) {
        mls_err_set(err, "%s: not written: an earlier write failed", w->path);
        st_writer_abort(w);
        return MLS_ERR_INVALID_ARG;
    }
    if (!w->header_done && (st = st_writer_header(w, err)) != MLS_OK) {
        st_writer_abort(w);
        return st;
    }
    if (w->written != w->total) {
        mls_err_set(err, "%s: only %llu of %llu declared data bytes were written", w->path,
                    (unsigned long long)w->written, (unsigned long long)w->total);
        st_writer_abort(w);
        return MLS_ERR_INVALID_ARG;
    }
    FILE *fp = w->fp;
    w->fp = NULL;
    if (fflush(fp) != 0 || ferror(fp)) {
        mls_err_set(err, "%s: write failed: %s", w->tmp_path, strerror(errno));
        fclose(fp);
        st = MLS_ERR_IO;
    } else if (fclose(fp) != 0) {
        mls_err_set(err, "%s: close failed: %s", w->tmp_path, strerror(errno));
        st = MLS_ERR_IO;
    } else if (rename(w->tmp_path, w->path) != 0) {
        mls_err_set(err, "%s: rename from %s failed: %s", w->path, w->tmp_path, strerror(errno));
        st = MLS_ERR_IO;
    }
    if (st != MLS_OK) {
        unlink(w->tmp_path);
    }
    st_writer_free(w);
    return st;
}
