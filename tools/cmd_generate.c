/*
 * cmd_generate.c - `mlaserve generate`: run a checkpoint on prompt token ids.
 *
 * Prefills the prompt, then decodes one token at a time with the paged latent
 * KV cache, printing the generated ids (comma-separated) on stdout and the
 * prefill/decode speed on stderr. --dump writes the logits for exact
 * comparisons (prefill_logits, ids, decode_logits) as safetensors. --device
 * picks the backend; a device this build or machine lacks is refused before
 * the model is loaded (exit 2, one line).
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eng_safetensors.h"
#include "engine.h"
#include "mls_alloc.h"
#include "mls_cli.h"
#include "mls_num.h"

typedef struct {
    const char *model_dir;
    const char *prompt;
    const char *dump;
    int32_t max_tokens;
    eng_sampling sampling;
    uint64_t seed;
    kvl_dtype kv_dtype;
    bool kv_dtype_given; /* --kv-dtype on the command line (DeepSeek-V4 defaults to fp8) */
    eng_device device;
    int threads;
    int32_t chunk;
    bool ignore_eos;
} gen_args;

static void gen_usage(FILE *out)
{
    fprintf(out,
            "usage: mlaserve generate --model DIR --prompt-ids 5,17,42 [options]\n"
            "\n"
            "Run a DeepSeek-V2/V3-family checkpoint (Hugging Face layout) or a\n"
            "DeepSeek-V4 one (the release's layout; CPU, its KV state per sequence).\n"
            "Prints the generated token ids on stdout, speed on stderr.\n"
            "\n"
            "  --model DIR          checkpoint directory (config.json + safetensors)\n"
            "  --prompt-ids LIST    comma-separated prompt token ids\n"
            "  --max-tokens N       tokens to generate (default 16)\n"
            "  --greedy             argmax decoding (the default)\n"
            "  --temperature T      sample at temperature T (0 = greedy)\n"
            "  --top-p P            nucleus sampling mass (default 1 = off)\n"
            "  --top-k K            keep the K most likely tokens (default 0 = off)\n"
            "  --seed S             sampling seed (default 0)\n"
            "  --ignore-eos         keep generating after the model's eos token\n"
            "  --kv-dtype D         latent KV cache: f32, bf16 (default) or fp8;\n"
            "                       DeepSeek-V4: f32 or fp8 (default)\n"
            "  --device D           cpu (default) or cuda (needs a CUDA build and a GPU;\n"
            "                       fails at once, exit 2, where either is missing)\n"
            "  --threads N          compute threads (default: all cores)\n"
            "  --chunk N            prefill chunk in tokens (default 256)\n"
            "  --dump FILE          write prefill_logits [T,vocab], ids [n] and\n"
            "                       decode_logits [n,vocab] (F32/I32) as safetensors\n");
}

/* "5,17,42" -> ids (malloc'd, the caller frees) and their count. */
static mls_status gen_parse_ids(const char *list, int32_t **ids_p, int32_t *n_p)
{
    size_t max = 1; /* ids at most: one more than the commas */
    int32_t *ids, n = 0;
    const char *p = list;

    for (const char *c = list; *c != '\0'; c++) {
        max += *c == ',';
    }
    if (max > INT32_MAX || (ids = malloc(sizeof(int32_t) * max)) == NULL) {
        return MLS_ERR_NO_MEMORY;
    }
    while (*p != '\0') {
        char *end;
        long v;
        errno = 0;
        v = strtol(p, &end, 10);
        if (end == p || errno != 0 || v < 0 || v > INT32_MAX || (*end != ',' && *end != '\0')) {
            free(ids);
            return MLS_ERR_PARSE;
        }
        ids[n++] = (int32_t)v;
        p = *end == ',' ? end + 1 : end;
    }
    if (n == 0) {
        free(ids);
        return MLS_ERR_PARSE;
    }
    *ids_p = ids;
    *n_p = n;
    return MLS_OK;
}

static int gen_parse_args(int argc, char **argv, gen_args *a)
{
    enum { OPT_GREEDY = 256, OPT_IGNORE_EOS, OPT_DEVICE };
    static const struct option opts[] = {
        {"model", required_argument, NULL, 'm'},      {"prompt-ids", required_argument, NULL, 'p'},
        {"max-tokens", required_argument, NULL, 'n'}, {"greedy", no_argument, NULL, OPT_GREEDY},
        {"temperature", required_argument, NULL, 't'}, {"top-p", required_argument, NULL, 'P'},
        {"top-k", required_argument, NULL, 'K'},      {"seed", required_argument, NULL, 's'},
        {"kv-dtype", required_argument, NULL, 'k'},   {"threads", required_argument, NULL, 'j'},
        {"chunk", required_argument, NULL, 'c'},      {"dump", required_argument, NULL, 'd'},
        {"ignore-eos", no_argument, NULL, OPT_IGNORE_EOS}, {"help", no_argument, NULL, 'h'},
        {"device", required_argument, NULL, OPT_DEVICE},
        {NULL, 0, NULL, 0}};
    int c;

    memset(a, 0, sizeof(*a));
    a->max_tokens = 16;
    a->sampling.top_p = 1.0f;
    a->kv_dtype = KVL_DTYPE_BF16;
    a->chunk = 256;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'm': a->model_dir = optarg; break;
        case 'p': a->prompt = optarg; break;
        case 'n': a->max_tokens = atoi(optarg); break;
        case OPT_GREEDY: a->sampling.temperature = 0.0f; break;
        case 't': a->sampling.temperature = strtof(optarg, NULL); break;
        case 'P': a->sampling.top_p = strtof(optarg, NULL); break;
        case 'K': a->sampling.top_k = atoi(optarg); break;
        case 's': a->seed = strtoull(optarg, NULL, 10); break;
        case 'j': a->threads = atoi(optarg); break;
        case 'c': a->chunk = atoi(optarg); break;
        case 'd': a->dump = optarg; break;
        case OPT_IGNORE_EOS: a->ignore_eos = true; break;
        case 'k':
            if (kvl_dtype_parse(optarg, &a->kv_dtype) != MLS_OK) {
                fprintf(stderr, "generate: --kv-dtype must be f32, bf16 or fp8, not '%s'\n", optarg);
                return 2;
            }
            a->kv_dtype_given = true;
            break;
        case OPT_DEVICE:
            if (eng_device_parse(optarg, &a->device) != MLS_OK) {
                fprintf(stderr, "generate: --device must be cpu or cuda, not '%s'\n", optarg);
                return 2;
            }
            break;
        case 'h': gen_usage(stdout); return 0;
        default: gen_usage(stderr); return 2;
        }
    }
    if (a->model_dir == NULL || a->prompt == NULL) {
        fprintf(stderr, "generate: --model and --prompt-ids are required\n");
        gen_usage(stderr);
        return 2;
    }
    if (a->max_tokens < 1 || a->sampling.temperature < 0 || a->sampling.top_p <= 0 ||
        a->sampling.top_p > 1 || a->sampling.top_k < 0 || a->chunk < 1) {
        fprintf(stderr, "generate: invalid --max-tokens/--temperature/--top-p/--top-k/--chunk\n");
        return 2;
    }
    {
        mls_err err = {{0}};
        if (eng_device_check(a->device, 0, &err) != MLS_OK) {
            fprintf(stderr, "generate: --device %s: %s\n", eng_device_name(a->device), err.msg);
            return 2;
        }
    }
    return -1;
}

static mls_status gen_dump(const char *path, const float *prefill_logits, int32_t n_prompt,
                           const int32_t *ids, const float *decode_logits, int32_t n_gen,
                           int32_t vocab, mls_err *err)
{
    st_writer *w;
    int64_t s_prefill[2] = {n_prompt, vocab}, s_ids[1] = {n_gen}, s_decode[2] = {n_gen, vocab};
    mls_status st;

    if ((st = st_writer_create(path, &w, err)) != MLS_OK) {
        return st;
    }
    if ((st = st_writer_declare(w, "prefill_logits", ST_DTYPE_F32, 2, s_prefill, err)) ||
        (st = st_writer_declare(w, "ids", ST_DTYPE_I32, 1, s_ids, err)) ||
        (st = st_writer_declare(w, "decode_logits", ST_DTYPE_F32, 2, s_decode, err)) ||
        (st = st_writer_write(w, prefill_logits, sizeof(float) * (size_t)n_prompt * vocab, err)) ||
        (st = st_writer_write(w, ids, sizeof(int32_t) * (size_t)n_gen, err)) ||
        (st = st_writer_write(w, decode_logits, sizeof(float) * (size_t)n_gen * vocab, err))) {
        st_writer_finish(w, NULL);
        return st;
    }
    return st_writer_finish(w, err);
}

int mls_cmd_generate(int argc, char **argv)
{
    gen_args a;
    eng_load_opts load_opts = {.progress = true};
    eng_model *model = NULL;
    eng_kv_pool *pool = NULL;
    eng_ctx *ctx = NULL;
    eng_seq seq;
    eng_rng rng;
    kvl_layout layout;
    const eng_config *c;
    mls_err err = {{0}};
    int32_t *prompt = NULL, *out_ids = NULL, n_prompt = 0, n_gen = 0, vocab;
    float *prefill_logits = NULL, *decode_logits = NULL, *scratch = NULL;
    double t0, t_prefill, t_decode;
    char kv_desc[64];
    int rc = 1, parsed;
    mls_status st;

    eng_seq_init(&seq);
    if ((parsed = gen_parse_args(argc, argv, &a)) >= 0) {
        return parsed;
    }
    if (gen_parse_ids(a.prompt, &prompt, &n_prompt) != MLS_OK) {
        fprintf(stderr, "generate: --prompt-ids must be a comma-separated list of ids\n");
        return 2;
    }
    st = eng_model_load(a.model_dir, &load_opts, &model, &err);
    if (st != MLS_OK) {
        fprintf(stderr, "generate: %s (%s)\n", err.msg, mls_status_name(st));
        goto out;
    }
    c = eng_model_config(model);
    vocab = c->vocab_size;
    for (int32_t i = 0; i < n_prompt; i++) {
        if (prompt[i] >= vocab) {
            fprintf(stderr, "generate: prompt id %d is outside the vocabulary (%d)\n", prompt[i],
                    vocab);
            goto out;
        }
    }
    if (c->is_v4) {
        /* DeepSeek-V4: the engine keeps a state per sequence (eng_seq.v4), no pool */
        eng_ctx_opts ctx_opts = {.n_threads = a.threads, .device = a.device};
        if (!a.kv_dtype_given) {
            a.kv_dtype = KVL_DTYPE_FP8;
        }
        if (a.kv_dtype != KVL_DTYPE_F32 && a.kv_dtype != KVL_DTYPE_FP8) {
            fprintf(stderr, "generate: DeepSeek-V4 stores its KV as f32 or fp8 (FlashMLA's V4 "
                            "rows), not %s\n",
                    kvl_dtype_name(a.kv_dtype));
            goto out;
        }
        ctx_opts.v4_kv_dtype = a.kv_dtype;
        if ((st = eng_ctx_create_opts(model, NULL, &ctx_opts, &ctx, &err)) != MLS_OK) {
            fprintf(stderr, "generate: %s (%s)\n", err.msg, mls_status_name(st));
            goto out;
        }
    } else {
        int32_t total = n_prompt + a.max_tokens;
        uint32_t pages = (uint32_t)((total + KVL_PAGE_TOKENS - 1) / KVL_PAGE_TOKENS);
        eng_kv_pool_opts pool_opts = {.device = a.device};
        eng_ctx_opts ctx_opts = {.n_threads = a.threads, .device = a.device};
        if ((st = kvl_layout_init(a.kv_dtype, (uint32_t)c->kv_lora_rank,
                                  (uint32_t)c->qk_rope_head_dim, eng_model_fingerprint(model),
                                  &layout)) != MLS_OK) {
            fprintf(stderr, "generate: KV layout: %s\n", mls_status_message(st));
            goto out;
        }
        if ((st = eng_kv_pool_create_opts(&layout, c->num_hidden_layers, pages, &pool_opts, &pool,
                                          &err)) ||
            (st = eng_ctx_create_opts(model, pool, &ctx_opts, &ctx, &err))) {
            fprintf(stderr, "generate: %s (%s)\n", err.msg, mls_status_name(st));
            goto out;
        }
        if ((st = eng_seq_reserve(&seq, pool, total)) != MLS_OK) {
            fprintf(stderr, "generate: cannot set up the KV cache: %s\n", mls_status_message(st));
            goto out;
        }
    }
    eng_ctx_set_chunk(ctx, a.chunk);
    prefill_logits = malloc(sizeof(float) * (size_t)vocab * (a.dump ? n_prompt : 1));
    decode_logits = malloc(sizeof(float) * (size_t)vocab * (size_t)a.max_tokens);
    out_ids = malloc(sizeof(int32_t) * (size_t)a.max_tokens);
    scratch = malloc(sizeof(float) * 2 * (size_t)vocab);
    if (prefill_logits == NULL || decode_logits == NULL || out_ids == NULL || scratch == NULL) {
        fprintf(stderr, "generate: out of memory\n");
        goto out;
    }
    eng_rng_seed(&rng, a.seed);

    t0 = mls_now_s();
    st = eng_prefill(ctx, &seq, prompt, n_prompt, a.dump != NULL, prefill_logits, NULL, NULL);
    if (st != MLS_OK) {
        fprintf(stderr, "generate: prefill failed: %s\n", mls_status_message(st));
        goto out;
    }
    t_prefill = mls_now_s() - t0;
    memcpy(decode_logits, prefill_logits + (a.dump ? (size_t)(n_prompt - 1) * vocab : 0),
           sizeof(float) * (size_t)vocab);

    t0 = mls_now_s();
    for (n_gen = 0; n_gen < a.max_tokens;) {
        float *logits = decode_logits + (size_t)n_gen * vocab;
        eng_seq *seqs[1] = {&seq};
        int32_t id = eng_sample(logits, vocab, &a.sampling, &rng, scratch, NULL);

        out_ids[n_gen++] = id;
        if ((id == c->eos_token_id && !a.ignore_eos) || n_gen == a.max_tokens) {
            break;
        }
        st = eng_decode_step(ctx, seqs, &id, 1, decode_logits + (size_t)n_gen * vocab);
        if (st != MLS_OK) {
            fprintf(stderr, "generate: decode failed: %s\n", mls_status_message(st));
            goto out;
        }
    }
    t_decode = mls_now_s() - t0;
    if (pool != NULL) {
        snprintf(kv_desc, sizeof(kv_desc), "%s, %llu B/token", kvl_dtype_name(a.kv_dtype),
                 (unsigned long long)eng_kv_pool_bytes_per_token(pool));
    } else {
        snprintf(kv_desc, sizeof(kv_desc), "%s state per sequence (DeepSeek-V4)",
                 kvl_dtype_name(a.kv_dtype));
    }

    for (int32_t i = 0; i < n_gen; i++) {
        printf("%s%d", i ? "," : "", out_ids[i]);
    }
    printf("\n");
    fprintf(stderr,
            "prefill: %d tokens in %.3f s (%.1f tokens/s); decode: %d tokens in %.3f s "
            "(%.2f tokens/s); kv %s\n",
            n_prompt, t_prefill, n_prompt / t_prefill, n_gen - 1, t_decode,
            n_gen > 1 ? (n_gen - 1) / t_decode : 0.0, kv_desc);
    if (a.dump != NULL) {
        st = gen_dump(a.dump, prefill_logits, n_prompt, out_ids, decode_logits, n_gen, vocab, &err);
        if (st != MLS_OK) {
            fprintf(stderr, "generate: --dump: %s\n", err.msg);
            goto out;
        }
    }
    rc = 0;
out:
    free(scratch);
    free(out_ids);
    free(decode_logits);
    free(prefill_logits);
    eng_seq_release(&seq, pool); /* pool NULL: no pages (a V4 sequence, or none reserved) */
    eng_ctx_destroy(ctx);
    eng_kv_pool_destroy(pool);
    eng_model_destroy(model);
    free(prompt);
    return rc;
}
