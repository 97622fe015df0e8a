/*
 * fuzz_model.c - libFuzzer harness for what a node reads from a model folder
 * before it trusts it: safetensors files and their index
 * (engine/eng_safetensors.h) and config.json (engine/eng_config.h).
 *
 * Input: one byte choosing the surface, then
 *   0  a model.safetensors file (st_open_file; the loader needs a path, so the
 *      bytes go to a file in a private folder under /dev/shm or $TMPDIR);
 *   1  config.json text (eng_config_parse, in memory);
 *   2  a sharded checkpoint: a 2-byte big-endian length and that many bytes of
 *      model.safetensors.index.json, a 2-byte length and s1.safetensors, and
 *      the rest as s2.safetensors (st_open_dir).
 * Properties: refusals carry a reason; an opened archive's tensors have a
 * known dtype, shape x dtype = nbytes, lie inside their file's data section
 * without overlapping (single file), are found by name, and every byte of
 * them can be read; an accepted config's sizes are positive and its MoE
 * layer rule answers for every layer.
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "eng_config.h"
#include "eng_safetensors.h"
#include "fuzz_util.h"

static char fuzz_dir[256];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    const char *tmp = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : getenv("TMPDIR");

    (void)argc;
    (void)argv;
    fuzz_log_quiet();
    snprintf(fuzz_dir, sizeof(fuzz_dir), "%s/mls-fuzz-model.XXXXXX", tmp != NULL ? tmp : "/tmp");
    FUZZ_CHECK(mkdtemp(fuzz_dir) != NULL, "mkdtemp %s", fuzz_dir);
    return 0;
}

/* The folder goes when the run ends (libFuzzer exits through exit()). */
__attribute__((destructor)) static void fuzz_model_cleanup(void)
{
    static const char *const names[] = {"model.safetensors", "model.safetensors.index.json",
                                        "s1.safetensors", "s2.safetensors"};
    char path[300];

    if (fuzz_dir[0] == '\0') {
        return;
    }
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        snprintf(path, sizeof(path), "%s/%s", fuzz_dir, names[i]);
        unlink(path);
    }
    rmdir(fuzz_dir);
}

static void fuzz_model_write(const char *name, const uint8_t *data, size_t len)
{
    char path[300];
    int fd;

    snprintf(path, sizeof(path), "%s/%s", fuzz_dir, name);
    fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    FUZZ_CHECK(fd >= 0, "open %s", path);
    FUZZ_CHECK(len == 0 || write(fd, data, len) == (ssize_t)len, "write %s", path);
    close(fd);
}

static void fuzz_model_unlink(const char *name)
{
    char path[300];

    snprintf(path, sizeof(path), "%s/%s", fuzz_dir, name);
    unlink(path);
}

/* Checks every tensor; data_bytes > 0 (one file): they fit in that many bytes. */
static void fuzz_model_archive(const st_archive *ar, uint64_t data_bytes)
{
    size_t n = st_count(ar);
    uintptr_t lo = UINTPTR_MAX, hi = 0;
    uint64_t sum = 0;
    volatile uint8_t sink = 0;

    for (size_t i = 0; i < n; i++) {
        const st_tensor *t = st_at(ar, i);
        uint64_t elems = 1;
        FUZZ_CHECK(t != NULL && t->name != NULL, "tensor %zu missing", i);
        FUZZ_CHECK(t->dtype < ST_DTYPE_COUNT, "tensor '%s': dtype %d", t->name, (int)t->dtype);
        FUZZ_CHECK(t->n_dims >= 0 && t->n_dims <= ST_MAX_DIMS, "tensor '%s': %d dims", t->name,
                   t->n_dims);
        for (int d = 0; d < t->n_dims; d++) {
            FUZZ_CHECK(t->shape[d] >= 0, "tensor '%s': dim %d is %lld", t->name, d,
                       (long long)t->shape[d]);
            elems *= (uint64_t)t->shape[d];
        }
        FUZZ_CHECK(elems * st_dtype_size(t->dtype) == t->nbytes,
                   "tensor '%s': %llu elements of %zu bytes in %llu bytes", t->name,
                   (unsigned long long)elems, st_dtype_size(t->dtype),
                   (unsigned long long)t->nbytes);
        FUZZ_CHECK(st_find(ar, t->name) == t, "tensor '%s' not found by name", t->name);
        for (uint64_t b = 0; b < t->nbytes; b++) {
            sink ^= ((const uint8_t *)t->data)[b];
        }
        if (t->nbytes > 0) {
            lo = (uintptr_t)t->data < lo ? (uintptr_t)t->data : lo;
            hi = (uintptr_t)t->data + t->nbytes > hi ? (uintptr_t)t->data + t->nbytes : hi;
            sum += t->nbytes;
        }
    }
    if (data_bytes > 0 && sum > 0) {
        /* Inside the data section, and no byte claimed twice. */
        FUZZ_CHECK(hi - lo <= data_bytes, "tensors span %llu bytes of a %llu-byte data section",
                   (unsigned long long)(hi - lo), (unsigned long long)data_bytes);
        FUZZ_CHECK(sum <= hi - lo, "tensors claim %llu bytes of a %llu-byte span: overlap",
                   (unsigned long long)sum, (unsigned long long)(hi - lo));
    }
    (void)sink;
}

static void fuzz_model_file(const uint8_t *data, size_t size)
{
    st_archive *ar = NULL;
    mls_err err = {{0}};
    char path[300];
    uint64_t hlen = 0;

    fuzz_model_write("model.safetensors", data, size);
    snprintf(path, sizeof(path), "%s/model.safetensors", fuzz_dir);
    if (st_open_file(path, &ar, &err) != MLS_OK) {
        FUZZ_CHECK(err.msg[0] != '\0', "a refused file without a reason");
        return;
    }
    FUZZ_CHECK(size >= 8, "a %zu-byte file accepted", size);
    for (int i = 0; i < 8; i++) {
        hlen |= (uint64_t)data[i] << (8 * i);
    }
    FUZZ_CHECK(hlen <= size - 8, "header of %llu bytes in a %zu-byte file accepted",
               (unsigned long long)hlen, size);
    fuzz_model_archive(ar, size - 8 - hlen);
    st_close(ar);
}

static void fuzz_model_config(const uint8_t *data, size_t size)
{
    eng_config cfg;
    mls_err err = {{0}};

    if (eng_config_parse((const char *)data, size, "config.json", &cfg, &err) != MLS_OK) {
        FUZZ_CHECK(strncmp(err.msg, "config.json", 11) == 0, "refusal names no source: %s",
                   err.msg);
        return;
    }
    FUZZ_CHECK(cfg.vocab_size > 0 && cfg.hidden_size > 0 && cfg.num_hidden_layers > 0 &&
                   cfg.num_attention_heads > 0 && cfg.kv_lora_rank > 0,
               "accepted with a size <= 0");
    for (int l = 0; l < cfg.num_hidden_layers && l < 4096; l++) {
        (void)eng_config_layer_is_moe(&cfg, l);
    }
}

static size_t fuzz_model_len16(fuzz_cursor *in)
{
    size_t n = (size_t)fuzz_byte(in) << 8;
    n |= fuzz_byte(in);
    return n < in->n ? n : in->n;
}

static void fuzz_model_sharded(fuzz_cursor *in)
{
    st_archive *ar = NULL;
    mls_err err = {{0}};
    size_t n;

    n = fuzz_model_len16(in);
    fuzz_model_write("model.safetensors.index.json", in->p, n);
    in->p += n;
    in->n -= n;
    n = fuzz_model_len16(in);
    fuzz_model_write("s1.safetensors", in->p, n);
    in->p += n;
    in->n -= n;
    fuzz_model_write("s2.safetensors", in->p, in->n);
    if (st_open_dir(fuzz_dir, &ar, &err) != MLS_OK) {
        FUZZ_CHECK(err.msg[0] != '\0', "a refused checkpoint without a reason");
    } else {
        fuzz_model_archive(ar, 0);
        st_close(ar);
    }
    fuzz_model_unlink("model.safetensors.index.json");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_cursor in = {data, size};

    switch (fuzz_byte(&in) % 3) {
    case 0:
        fuzz_model_file(in.p, in.n);
        break;
    case 1:
        fuzz_model_config(in.p, in.n);
        break;
    default:
        fuzz_model_sharded(&in);
        break;
    }
    return 0;
}
