/*
 * eng_safetensors.c - safetensors reader (mmap, single file or sharded); the
 * streaming writer is eng_safetensors_write.c.
 *
 * File format: u64 little-endian header length N, N bytes of JSON header
 * ({"name": {"dtype": "BF16", "shape": [..], "data_offsets": [begin, end]},
 * "__metadata__": {...}}), then the data region; offsets are relative to the
 * start of the data region. The reader validates every entry before any tensor
 * is handed out and keeps one name-sorted index over all files, so lookups are
 * a binary search (17 string compares for 100k tensors).
 */
#define _GNU_SOURCE
#include "eng_safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mls_alloc.h"
#include "mls_buf.h"

/* A header larger than this is not a checkpoint (the Rust reader uses 100 MB). */
#define ST_HEADER_MAX ((uint64_t)256 << 20)

static const struct {
    const char *name;
    size_t size;
} st_dtype_table[ST_DTYPE_COUNT] = {
#define ST_DTYPE_ROW_(name, str, size) {str, size},
    ST_DTYPE_LIST(ST_DTYPE_ROW_)
#undef ST_DTYPE_ROW_
};

const char *st_dtype_name(st_dtype dtype)
{
    return (unsigned)dtype < ST_DTYPE_COUNT ? st_dtype_table[dtype].name : "?";
}

size_t st_dtype_size(st_dtype dtype)
{
    return (unsigned)dtype < ST_DTYPE_COUNT ? st_dtype_table[dtype].size : 0;
}

static bool st_dtype_parse(const char *s, st_dtype *dtype_p)
{
    for (int i = 0; i < ST_DTYPE_COUNT; i++) {
        if (strcmp(s, st_dtype_table[i].name) == 0) {
            *dtype_p = (st_dtype)i;
            return true;
        }
    }
    return false;
}

/* ------------------------------------------------------------------ reader */

typedef struct {
    char *path; /* owned */
    void *map;  /* whole file, read-only */
    uint64_t size;
    st_tensor *tensors; /* (n_tensors) */
    size_t n_tensors;
    char *names; /* arena holding the tensor names */
    size_t names_size;
} st_file;

struct st_archive {
    st_file *files; /* (n_files) */
    size_t n_files;
    const st_tensor **index; /* (n_index) sorted by name */
    size_t n_index;
    char *origin; /* the index.json, or NULL for a single file */
};

static void st_file_release(st_file *f)
{
    if (f->map != NULL) {
        munmap(f->map, f->size);
    }
    mls_free(MLS_ALLOC_TAG_WEIGHTS, f->tensors, f->n_tensors * sizeof(*f->tensors));
    mls_free(MLS_ALLOC_TAG_WEIGHTS, f->names, f->names_size);
    free(f->path);
    memset(f, 0, sizeof(*f));
}

void st_close(st_archive *ar)
{
    if (ar == NULL) {
        return;
    }
    for (size_t i = 0; i < ar->n_files; i++) {
        st_file_release(&ar->files[i]);
    }
    free(ar->files);
    mls_free(MLS_ALLOC_TAG_WEIGHTS, (void *)ar->index, ar->n_index * sizeof(*ar->index));
    free(ar->origin);
    free(ar);
}

static int st_tensor_ptr_cmp_name(const void *a, const void *b)
{
    const st_tensor *ta = *(const st_tensor *const *)a;
    const st_tensor *tb = *(const st_tensor *const *)b;
    return strcmp(ta->name, tb->name);
}

static int st_tensor_ptr_cmp_offset(const void *a, const void *b)
{
    const st_tensor *ta = *(const st_tensor *const *)a;
    const st_tensor *tb = *(const st_tensor *const *)b;
    const uint8_t *pa = ta->data, *pb = tb->data;
    if (pa != pb) {
        return pa < pb ? -1 : 1;
    }
    return ta->nbytes < tb->nbytes ? -1 : ta->nbytes > tb->nbytes;
}

/* A JSON number that is an exact non-negative integer <= 2^53. */
static bool st_json_uint(const cJSON *item, uint64_t *v_p)
{
    if (!cJSON_IsNumber(item)) {
        return false;
    }
    double d = item->valuedouble;
    if (!(d >= 0 && d <= ST_JSON_INT_MAX) || d != (double)(uint64_t)d) {
        return false;
    }
    *v_p = (uint64_t)d;
    return true;
}

/* Validate one header entry and fill *t (name and file set by the caller). */
static mls_status st_entry_parse(const st_file *f, const cJSON *entry, const uint8_t *data,
                                 uint64_t data_size, st_tensor *t, mls_err *err)
{
    const char *path = f->path, *name = entry->string;
    if (!cJSON_IsObject(entry)) {
        mls_err_set(err, "%s: tensor '%s': header entry is not an object", path, name);
        return MLS_ERR_BAD_MODEL;
    }
    const cJSON *dtype = cJSON_GetObjectItemCaseSensitive(entry, "dtype");
    const cJSON *shape = cJSON_GetObjectItemCaseSensitive(entry, "shape");
    const cJSON *offs = cJSON_GetObjectItemCaseSensitive(entry, "data_offsets");
    if (!cJSON_IsString(dtype)) {
        mls_err_set(err, "%s: tensor '%s': missing or non-string \"dtype\"", path, name);
        return MLS_ERR_BAD_MODEL;
    }
    if (!st_dtype_parse(dtype->valuestring, &t->dtype)) {
        mls_err_set(err, "%s: tensor '%s': unsupported dtype \"%.40s\"", path, name,
                    dtype->valuestring);
        return MLS_ERR_BAD_MODEL;
    }
    if (!cJSON_IsArray(shape)) {
        mls_err_set(err, "%s: tensor '%s': missing or non-array \"shape\"", path, name);
        return MLS_ERR_BAD_MODEL;
    }
    int n_dims = cJSON_GetArraySize(shape);
    if (n_dims > ST_MAX_DIMS) {
        mls_err_set(err, "%s: tensor '%s': %d dims, at most %d supported", path, name, n_dims,
                    ST_MAX_DIMS);
        return MLS_ERR_BAD_MODEL;
    }
    uint64_t numel = 1;
    bool overflow = false;
    int d = 0;
    const cJSON *dim;
    cJSON_ArrayForEach(dim, shape)
    {
        uint64_t v;
        if (!st_json_uint(dim, &v) || v > INT64_MAX) {
            mls_err_set(err, "%s: tensor '%s': shape[%d] is not a non-negative integer", path, name,
                        d);
            return MLS_ERR_BAD_MODEL;
        }
        t->shape[d++] = (int64_t)v;
        overflow |= __builtin_mul_overflow(numel, v, &numel);
    }
    t->n_dims = n_dims;
    uint64_t want_bytes;
    overflow |= __builtin_mul_overflow(numel, (uint64_t)st_dtype_size(t->dtype), &want_bytes);
    if (overflow) {
        mls_err_set(err, "%s: tensor '%s': shape size overflows", path, name);
        return MLS_ERR_BAD_MODEL;
    }
    uint64_t begin, end;
    if (!cJSON_IsArray(offs) || cJSON_GetArraySize(offs) != 2 ||
        !st_json_uint(cJSON_GetArrayItem(offs, 0), &begin) ||
        !st_json_uint(cJSON_GetArrayItem(offs, 1), &end)) {
        mls_err_set(err, "%s: tensor '%s': \"data_offsets\" must be [begin, end] integers", path,
                    name);
        return MLS_ERR_BAD_MODEL;
    }
    if (begin > end) {
        mls_err_set(err, "%s: tensor '%s': data_offsets [%llu, %llu] end before they begin", path,
                    name, (unsigned long long)begin, (unsigned long long)end);
        return MLS_ERR_BAD_MODEL;
    }
    if (end > data_size) {
        mls_err_set(err,
                    "%s: tensor '%s': data_offsets [%llu, %llu] outside the data region of "
                    "%llu bytes",
                    path, name, (unsigned long long)begin, (unsigned long long)end,
                    (unsigned long long)data_size);
        return MLS_ERR_BAD_MODEL;
    }
    if (end - begin != want_bytes) {
        char dims[128];
        size_t pos = 0;
        dims[0] = 0;
        for (int i = 0; i < n_dims && pos < sizeof(dims); i++) {
            pos += (size_t)snprintf(dims + pos, sizeof(dims) - pos, "%s%lld", i ? "," : "",
                                    (long long)t->shape[i]);
        }
        mls_err_set(err, "%s: tensor '%s': %llu data bytes, but %s [%s] needs %llu", path, name,
                    (unsigned long long)(end - begin), st_dtype_name(t->dtype), dims,
                    (unsigned long long)want_bytes);
        return MLS_ERR_BAD_MODEL;
    }
    t->data = data + begin;
    t->nbytes = want_bytes;
    return MLS_OK;
}

/* Map f->path and parse its header into f->tensors. */
static mls_status st_file_load(st_file *f, mls_err *err)
{
    mls_status st = MLS_OK;
    cJSON *root = NULL;
    const st_tensor **by_off = NULL;
    int fd = open(f->path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        mls_err_set(err, "%s: cannot open: %s", f->path, strerror(e));
        return e == ENOENT ? MLS_ERR_NOT_FOUND : MLS_ERR_IO;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        mls_err_set(err, "%s: cannot stat: %s", f->path, strerror(errno));
        st = MLS_ERR_IO;
        goto out_close;
    }
    if (!S_ISREG(sb.st_mode)) {
        mls_err_set(err, "%s: not a regular file", f->path);
        st = MLS_ERR_BAD_MODEL;
        goto out_close;
    }
    f->size = (uint64_t)sb.st_size;
    if (f->size < 8) {
        mls_err_set(err, "%s: truncated: %llu bytes, too short for the 8-byte header length",
                    f->path, (unsigned long long)f->size);
        st = MLS_ERR_BAD_MODEL;
        goto out_close;
    }
    f->map = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (f->map == MAP_FAILED) {
        f->map = NULL;
        mls_err_set(err, "%s: mmap of %llu bytes failed: %s", f->path, (unsigned long long)f->size,
                    strerror(errno));
        st = MLS_ERR_IO;
        goto out_close;
    }
    const uint8_t *base = f->map;
    uint64_t hlen = 0;
    for (int i = 0; i < 8; i++) {
        hlen |= (uint64_t)base[i] << (8 * i);
    }
    if (hlen > f->size - 8) {
        mls_err_set(err, "%s: header length %llu runs past the end of the file (%llu bytes)",
                    f->path, (unsigned long long)hlen, (unsigned long long)f->size);
        st = MLS_ERR_BAD_MODEL;
        goto out_close;
    }
    if (hlen < 2 || hlen > ST_HEADER_MAX || base[8] != '{') {
        mls_err_set(err, "%s: header of %llu bytes is not a JSON object", f->path,
                    (unsigned long long)hlen);
        st = MLS_ERR_BAD_MODEL;
        goto out_close;
    }
    const char *hdr = (const char *)base + 8;
    const char *parse_end = NULL;
    root = cJSON_ParseWithLengthOpts(hdr, (size_t)hlen, &parse_end, false);
    if (root == NULL || !cJSON_IsObject(root)) {
        const char *at = cJSON_GetErrorPtr();
        long off = at != NULL && at >= hdr && at <= hdr + hlen ? (long)(at - hdr) : -1;
        mls_err_set(err, "%s: header is not valid JSON (error near byte %ld of %llu)", f->path, off,
                    (unsigned long long)hlen);
        st = MLS_ERR_BAD_MODEL;
        goto out_close;
    }
    for (const char *p = parse_end; p != NULL && p < hdr + hlen; p++) {
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r' && *p != '\0') {
            mls_err_set(err, "%s: trailing bytes after the header JSON at byte %ld", f->path,
                        (long)(p - hdr));
            st = MLS_ERR_BAD_MODEL;
            goto out_close;
        }
    }

    /* Pass 1: count tensors and their name bytes. */
    size_t n = 0, name_bytes = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, root)
    {
        if (strcmp(e->string, "__metadata__") == 0) {
            if (!cJSON_IsObject(e)) {
                mls_err_set(err, "%s: \"__metadata__\" is not an object", f->path);
                st = MLS_ERR_BAD_MODEL;
                goto out_close;
            }
            continue;
        }
        if (e->string[0] == '\0') {
            mls_err_set(err, "%s: tensor with an empty name", f->path);
            st = MLS_ERR_BAD_MODEL;
            goto out_close;
        }
        n++;
        name_bytes += strlen(e->string) + 1;
    }
    if (n > 0) {
        f->tensors = mls_alloc(MLS_ALLOC_TAG_WEIGHTS, n * sizeof(*f->tensors));
        f->names = mls_alloc(MLS_ALLOC_TAG_WEIGHTS, name_bytes);
        by_off = malloc(n * sizeof(*by_off));
        if (f->tensors == NULL || f->names == NULL || by_off == NULL) {
            mls_free(MLS_ALLOC_TAG_WEIGHTS, f->tensors, n * sizeof(*f->tensors));
            mls_free(MLS_ALLOC_TAG_WEIGHTS, f->names, name_bytes);
            f->tensors = NULL;
            f->names = NULL;
            mls_err_set(err, "%s: out of memory for %zu tensor entries", f->path, n);
            st = MLS_ERR_NO_MEMORY;
            goto out_close;
        }
        f->n_tensors = n;
        f->names_size = name_bytes;
    }

    /* Pass 2: validate each entry. */
    const uint8_t *data = base + 8 + hlen;
    uint64_t data_size = f->size - 8 - hlen;
    size_t i = 0, name_pos = 0;
    cJSON_ArrayForEach(e, root)
    {
        if (strcmp(e->string, "__metadata__") == 0) {
            continue;
        }
        st_tensor *t = &f->tensors[i];
        size_t len = strlen(e->string) + 1;
        memcpy(f->names + name_pos, e->string, len);
        t->name = f->names + name_pos;
        t->file = f->path;
        name_pos += len;
        st = st_entry_parse(f, e, data, data_size, t, err);
        if (st != MLS_OK) {
            goto out_close;
        }
        by_off[i++] = t;
    }

    /* No two tensors may share bytes (zero-sized ones take none). */
    if (n > 0) {
        qsort(by_off, n, sizeof(*by_off), st_tensor_ptr_cmp_offset);
    }
    const st_tensor *prev = NULL;
    for (i = 0; i < n; i++) {
        const st_tensor *t = by_off[i];
        if (t->nbytes == 0) {
            continue;
        }
        if (prev != NULL && (const uint8_t *)prev->data + prev->nbytes > (const uint8_t *)t->data) {
            mls_err_set(err, "%s: tensor '%s': data [%llu, %llu) overlaps tensor '%s' [%llu, %llu)",
                        f->path, t->name, (unsigned long long)((const uint8_t *)t->data - data),
                        (unsigned long long)((const uint8_t *)t->data - data + t->nbytes),
                        prev->name, (unsigned long long)((const uint8_t *)prev->data - data),
                        (unsigned long long)((const uint8_t *)prev->data - data + prev->nbytes));
            st = MLS_ERR_BAD_MODEL;
            goto out_close;
        }
        prev = t;
    }

out_close:
    free(by_off);
    cJSON_Delete(root);
    close(fd);
    return st;
}

/* Build the sorted index over every file; duplicate names are an error. */
static mls_status st_archive_index(st_archive *ar, mls_err *err)
{
    size_t n = 0;
    for (size_t i = 0; i < ar->n_files; i++) {
        n += ar->files[i].n_tensors;
    }
    if (n == 0) {
        return MLS_OK;
    }
    const st_tensor **index = mls_alloc(MLS_ALLOC_TAG_WEIGHTS, n * sizeof(*index));
    if (index == NULL) {
        mls_err_set(err, "%s: out of memory for the index of %zu tensors", ar->files[0].path, n);
        return MLS_ERR_NO_MEMORY;
    }
    size_t k = 0;
    for (size_t i = 0; i < ar->n_files; i++) {
        for (size_t j = 0; j < ar->files[i].n_tensors; j++) {
            index[k++] = &ar->files[i].tensors[j];
        }
    }
    qsort(index, n, sizeof(*index), st_tensor_ptr_cmp_name);
    ar->index = index;
    ar->n_index = n;
    for (size_t i = 1; i < n; i++) {
        if (strcmp(index[i - 1]->name, index[i]->name) == 0) {
            if (index[i - 1]->file == index[i]->file) {
                mls_err_set(err, "%s: tensor '%s' appears twice in the header", index[i]->file,
                            index[i]->name);
            } else {
                mls_err_set(err, "%s: tensor '%s' is also in %s", index[i - 1]->file,
                            index[i]->name, index[i]->file);
            }
            return MLS_ERR_BAD_MODEL;
        }
    }
    return MLS_OK;
}

static st_archive *st_archive_new(size_t n_files)
{
    st_archive *ar = calloc(1, sizeof(*ar));
    if (ar == NULL) {
        return NULL;
    }
    ar->files = calloc(n_files ? n_files : 1, sizeof(*ar->files));
    if (ar->files == NULL) {
        free(ar);
        return NULL;
    }
    return ar;
}

mls_status st_open_file(const char *path, st_archive **ar_p, mls_err *err)
{
    mls_status st;
    st_archive *ar = st_archive_new(1);
    if (ar == NULL || (ar->files[0].path = strdup(path)) == NULL) {
        st_close(ar);
        mls_err_set(err, "%s: out of memory", path);
        return MLS_ERR_NO_MEMORY;
    }
    ar->n_files = 1;
    st = st_file_load(&ar->files[0], err);
    if (st == MLS_OK) {
        st = st_archive_index(ar, err);
    }
    if (st != MLS_OK) {
        st_close(ar);
        return st;
    }
    *ar_p = ar;
    return MLS_OK;
}

/* Position of `name` in the sorted index, or n_index when absent. */
static size_t st_find_pos(const st_archive *ar, const char *name)
{
    size_t lo = 0, hi = ar->n_index;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(ar->index[mid]->name, name);
        if (c == 0) {
            return mid;
        }
        if (c < 0) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return ar->n_index;
}

const st_tensor *st_find(const st_archive *ar, const char *name)
{
    size_t pos = st_find_pos(ar, name);
    return pos < ar->n_index ? ar->index[pos] : NULL;
}

static mls_status st_read_text(const char *path, char **text_p, size_t *len_p, mls_err *err)
{
    FILE *fp = fopen(path, "rb");
    if (fp == NULL) {
        int e = errno;
        mls_err_set(err, "%s: cannot open: %s", path, strerror(e));
        return e == ENOENT ? MLS_ERR_NOT_FOUND : MLS_ERR_IO;
    }
    mls_status st = MLS_OK;
    mls_buf b = MLS_BUF_INIT(MLS_ALLOC_TAG_MISC);
    size_t want = (size_t)1 << 16;
    for (;;) {
        size_t got;
        if (b.len >= ((size_t)1 << 31) || mls_buf_reserve(&b, want) != MLS_OK) {
            mls_err_set(err, "%s: out of memory reading the file", path);
            st = MLS_ERR_NO_MEMORY;
            goto out_free_buf;
        }
        got = fread(b.data + b.len, 1, want, fp);
        b.len += got;
        b.data[b.len] = '\0';
        if (got < want) {
            break;
        }
        want = b.len; /* double */
    }
    if (ferror(fp)) {
        mls_err_set(err, "%s: read error", path);
        st = MLS_ERR_IO;
        goto out_free_buf;
    }
    *text_p = mls_buf_detach(&b, len_p);
    if (*text_p == NULL) {
        mls_err_set(err, "%s: out of memory reading the file", path);
        st = MLS_ERR_NO_MEMORY;
    }
out_free_buf:
    mls_buf_free(&b);
    fclose(fp);
    return st;
}

/* Open the shards named by an index.json weight_map and cross-check them. */
static mls_status st_open_index(const char *dir, const char *index_path, st_archive **ar_p,
                                mls_err *err)
{
    mls_status st;
    char *text = NULL;
    size_t len = 0;
    cJSON *root = NULL;
    st_archive *ar = NULL;
    uint8_t *seen = NULL; /* (n_index) tensor listed in weight_map */

    st = st_read_text(index_path, &text, &len, err);
    if (st != MLS_OK) {
        return st;
    }
    root = cJSON_ParseWithLength(text, len);
    if (root == NULL || !cJSON_IsObject(root)) {
        mls_err_set(err, "%s: not a valid JSON object", index_path);
        st = MLS_ERR_BAD_MODEL;
        goto out_free;
    }
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    if (!cJSON_IsObject(wm) || wm->child == NULL) {
        mls_err_set(err, "%s: missing or empty \"weight_map\" object", index_path);
        st = MLS_ERR_BAD_MODEL;
        goto out_free;
    }
    /* Distinct shard names, in first-seen order. */
    size_t n_entries = (size_t)cJSON_GetArraySize(wm), n_files = 0;
    const char **shards = calloc(n_entries, sizeof(*shards));
    if (shards == NULL) {
        mls_err_set(err, "%s: out of memory", index_path);
        st = MLS_ERR_NO_MEMORY;
        goto out_free;
    }
    const cJSON *e;
    cJSON_ArrayForEach(e, wm)
    {
        if (!cJSON_IsString(e) || e->valuestring[0] == '\0' || strchr(e->valuestring, '/') ||
            strcmp(e->valuestring, "..") == 0 || strcmp(e->valuestring, ".") == 0) {
            mls_err_set(err, "%s: weight_map entry for tensor '%s' is not a plain file name",
                        index_path, e->string);
            st = MLS_ERR_BAD_MODEL;
            goto out_shards;
        }
        size_t k;
        for (k = 0; k < n_files && strcmp(shards[k], e->valuestring) != 0; k++) {
        }
        if (k == n_files) {
            shards[n_files++] = e->valuestring;
        }
    }
    ar = st_archive_new(n_files);
    if (ar == NULL || (ar->origin = strdup(index_path)) == NULL) {
        mls_err_set(err, "%s: out of memory", index_path);
        st = MLS_ERR_NO_MEMORY;
        goto out_shards;
    }
    for (size_t k = 0; k < n_files; k++) {
        st_file *f = &ar->files[k];
        if (asprintf(&f->path, "%s/%s", dir, shards[k]) < 0) {
            f->path = NULL;
            mls_err_set(err, "%s: out of memory", index_path);
            st = MLS_ERR_NO_MEMORY;
            goto out_shards;
        }
        ar->n_files = k + 1;
        st = st_file_load(f, err);
        if (st == MLS_ERR_NOT_FOUND) {
            mls_err_set(err, "%s: shard %s named by weight_map is missing", index_path, f->path);
        }
        if (st != MLS_OK) {
            goto out_shards;
        }
    }
    st = st_archive_index(ar, err);
    if (st != MLS_OK) {
        goto out_shards;
    }
    /* Every weight_map entry is in its shard, and every shard tensor is in the map. */
    seen = calloc(ar->n_index ? ar->n_index : 1, 1);
    if (seen == NULL) {
        mls_err_set(err, "%s: out of memory", index_path);
        st = MLS_ERR_NO_MEMORY;
        goto out_shards;
    }
    cJSON_ArrayForEach(e, wm)
    {
        size_t pos = st_find_pos(ar, e->string);
        const st_tensor *t = pos < ar->n_index ? ar->index[pos] : NULL;
        if (t != NULL && seen[pos]) {
            mls_err_set(err, "%s: tensor '%s' is listed twice in weight_map", index_path,
                        e->string);
            st = MLS_ERR_BAD_MODEL;
            goto out_shards;
        }
        if (t != NULL) {
            seen[pos] = 1;
        }
        const char *slash = t != NULL ? strrchr(t->file, '/') : NULL;
        if (t == NULL || strcmp(slash != NULL ? slash + 1 : t->file, e->valuestring) != 0) {
            mls_err_set(err, "%s: tensor '%s' is mapped to %s, which does not hold it", index_path,
                        e->string, e->valuestring);
            st = MLS_ERR_BAD_MODEL;
            goto out_shards;
        }
    }
    for (size_t i = 0; i < ar->n_index; i++) {
        if (!seen[i]) {
            mls_err_set(err, "%s: tensor '%s' is not in the weight_map of %s", ar->index[i]->file,
                        ar->index[i]->name, index_path);
            st = MLS_ERR_BAD_MODEL;
            goto out_shards;
        }
    }
    *ar_p = ar;
    ar = NULL;

out_shards:
    free(seen);
    free(shards);
    st_close(ar);
out_free:
    cJSON_Delete(root);
    free(text);
    return st;
}

mls_status st_open_dir(const char *dir, st_archive **ar_p, mls_err *err)
{
    char *index_path = NULL, *single_path = NULL;
    mls_status st;
    if (asprintf(&index_path, "%s/model.safetensors.index.json", dir) < 0) {
        mls_err_set(err, "%s: out of memory", dir);
        return MLS_ERR_NO_MEMORY;
    }
    if (access(index_path, F_OK) == 0) {
        st = st_open_index(dir, index_path, ar_p, err);
        free(index_path);
        return st;
    }
    free(index_path);
    if (asprintf(&single_path, "%s/model.safetensors", dir) < 0) {
        mls_err_set(err, "%s: out of memory", dir);
        return MLS_ERR_NO_MEMORY;
    }
    if (access(single_path, F_OK) != 0) {
        mls_err_set(err, "%s: neither model.safetensors.index.json nor model.safetensors found",
                    dir);
        free(single_path);
        return MLS_ERR_NOT_FOUND;
    }
    st = st_open_file(single_path, ar_p, err);
    free(single_path);
    return st;
}

size_t st_count(const st_archive *ar)
{
    return ar->n_index;
}

const st_tensor *st_at(const st_archive *ar, size_t i)
{
    return i < ar->n_index ? ar->index[i] : NULL;
}

static void st_shape_str(char *buf, size_t len, int n_dims, const int64_t *shape)
{
    size_t pos = (size_t)snprintf(buf, len, "[");
    for (int i = 0; i < n_dims && pos < len; i++) {
        pos += (size_t)snprintf(buf + pos, len - pos, "%s%lld", i ? "," : "", (long long)shape[i]);
    }
    if (pos < len) {
        snprintf(buf + pos, len - pos, "]");
    }
}

mls_status st_expect(const st_archive *ar, const char *name, const st_dtype *dtypes, int n_dtypes,
                     int n_dims, const int64_t *shape, const st_tensor **tensor_p, mls_err *err)
{
    const st_tensor *t = st_find(ar, name);
    if (t == NULL) {
        mls_err_set(err, "%s: tensor '%s': missing",
                    ar->origin != NULL ? ar->origin : ar->files[0].path, name);
        return MLS_ERR_BAD_MODEL;
    }
    bool dtype_ok = false;
    for (int i = 0; i < n_dtypes; i++) {
        dtype_ok |= t->dtype == dtypes[i];
    }
    if (!dtype_ok) {
        char want[96];
        size_t pos = 0;
        want[0] = 0;
        for (int i = 0; i < n_dtypes && pos < sizeof(want); i++) {
            pos += (size_t)snprintf(want + pos, sizeof(want) - pos, "%s%s", i ? " or " : "",
                                    st_dtype_name(dtypes[i]));
        }
        mls_err_set(err, "%s: tensor '%s': dtype %s, want %s", t->file, name,
                    st_dtype_name(t->dtype), want);
        return MLS_ERR_BAD_MODEL;
    }
    bool shape_ok = t->n_dims == n_dims;
    for (int i = 0; shape_ok && i < n_dims; i++) {
        shape_ok = shape[i] < 0 || shape[i] == t->shape[i];
    }
    if (!shape_ok) {
        char got[160], want[160];
        st_shape_str(got, sizeof(got), t->n_dims, t->shape);
        st_shape_str(want, sizeof(want), n_dims, shape);
        mls_err_set(err, "%s: tensor '%s': shape %s, want %s", t->file, name, got, want);
        return MLS_ERR_BAD_MODEL;
    }
    if (tensor_p != NULL) {
        *tensor_p = t;
    }
    return MLS_OK;
}
