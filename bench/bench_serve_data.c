/*
 * bench_serve_data.c - what `mlaserve bench serve` sends and when: a seeded
 * xoshiro256** RNG, gamma-distributed arrival gaps (vLLM's burstiness), and
 * the request bodies of the random and jsonl datasets.
 *
 * Random dataset (as vLLM's): prompt and output lengths uniform over the
 * integers in [floor(L*(1-r)), ceil(L*(1+r))] (at least 1). /v1/completions
 * gets prompts of random token ids in [0, vocab_size) - the server counts
 * exactly those tokens; /v1/chat/completions gets that many random English
 * words (about one token each; the server's usage says how many it was).
 *
 * jsonl dataset: one object a line, {"prompt": "text" | [ids]} or
 * {"messages": [...]} (chat only; a "prompt" on chat becomes one user
 * message), optionally with "output_len" / "output_tokens" / "max_tokens".
 * Lines are used in order and reused from the top when --num-prompts is more.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "bench_serve.h"

/* ---- RNG ------------------------------------------------------------------------------ */

void bs_rng_seed(bs_rng *r, uint64_t seed)
{
    mls_rng_seed(r, seed);
}

uint64_t bs_rng_next(bs_rng *r)
{
    return mls_rng_next(r);
}

double bs_rng_uniform(bs_rng *r)
{
    return mls_rng_uniform(r);
}

int64_t bs_rng_int(bs_rng *r, int64_t lo, int64_t hi)
{
    uint64_t span = (uint64_t)(hi - lo) + 1;
    return span == 0 ? (int64_t)bs_rng_next(r) : lo + (int64_t)(bs_rng_next(r) % span);
}

static double bs_rng_normal(bs_rng *r)
{
    double u1 = 1.0 - bs_rng_uniform(r); /* (0, 1] */
    double u2 = bs_rng_uniform(r);
    return sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2);
}

/* Marsaglia & Tsang (2000); shape < 1 through Gamma(shape + 1) * U^(1/shape). */
double bs_rng_gamma(bs_rng *r, double shape, double scale)
{
    double d, c;

    if (shape < 1.0) {
        double u = 1.0 - bs_rng_uniform(r);
        return bs_rng_gamma(r, shape + 1.0, scale) * pow(u, 1.0 / shape);
    }
    d = shape - 1.0 / 3.0;
    c = 1.0 / sqrt(9.0 * d);
    for (;;) {
        double x = bs_rng_normal(r), v = 1.0 + c * x, u;
        if (v <= 0) {
            continue;
        }
        v = v * v * v;
        u = 1.0 - bs_rng_uniform(r);
        if (u < 1.0 - 0.0331 * x * x * x * x || log(u) < 0.5 * x * x + d * (1.0 - v + log(v))) {
            return d * v * scale;
        }
    }
}

void bs_arrivals(double rate, double burstiness, uint64_t seed, int n, double *t_p)
{
    bs_rng r;
    double t = 0;

    bs_rng_seed(&r, seed ^ 0xa7a7a7a7a7a7a7a7ull);
    for (int i = 0; i < n; i++) {
        t_p[i] = t;
        if (isfinite(rate) && rate > 0) {
            t += bs_rng_gamma(&r, burstiness, 1.0 / (rate * burstiness));
        }
    }
}

/* ---- request bodies -------------------------------------------------------------------- */

/* Common English words, mostly one BPE token each with their leading space. */
static const char *const bs_words[] = {
    "the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "was", "with", "be", "by",
    "on", "not", "he", "this", "are", "or", "his", "from", "at", "which", "but", "have", "an",
    "had", "they", "you", "were", "their", "one", "all", "we", "can", "her", "has", "there",
    "been", "if", "more", "when", "will", "would", "who", "so", "no", "time", "people", "may",
    "other", "new", "also", "some", "what", "only", "into", "two", "first", "then", "now",
    "like", "over", "such", "our", "man", "me", "even", "most", "made", "after", "many", "could",
    "these", "well", "world", "work", "life", "day", "year", "back", "good", "way", "still",
    "long", "great", "little", "own", "old", "right", "big", "high", "small", "large", "next",
    "early", "young", "important", "public", "same", "able", "open", "water", "light", "house",
    "place", "case", "point", "number", "group", "problem", "fact", "hand", "part", "system",
    "program", "question", "government", "company", "state", "night", "city", "home", "read",
    "write", "model", "serve", "token", "cache", "memory",
};

static void bs_range(int len, double ratio, int *lo_p, int *hi_p)
{
    int lo = (int)floor(len * (1.0 - ratio)), hi = (int)ceil(len * (1.0 + ratio));
    *lo_p = lo < 1 ? 1 : lo;
    *hi_p = hi < *lo_p ? *lo_p : hi;
}

/* The fields every request carries. Takes ownership of prompt (an item or NULL). */
static char *bs_body_render(const bs_data_cfg *cfg, const char *prompt_key, cJSON *prompt, int output_len)
{
    cJSON *root = cJSON_CreateObject(), *so;
    char *out = NULL;

    if (root == NULL || prompt == NULL) {
        cJSON_Delete(prompt);
        goto out_delete;
    }
    if (cfg->model != NULL && cfg->model[0] != '\0') {
        cJSON_AddStringToObject(root, "model", cfg->model);
    }
    cJSON_AddItemToObject(root, prompt_key, prompt);
    cJSON_AddNumberToObject(root, "max_tokens", output_len);
    cJSON_AddNumberToObject(root, "temperature", cfg->temperature);
    cJSON_AddBoolToObject(root, "stream", 1);
    so = cJSON_AddObjectToObject(root, "stream_options");
    if (so == NULL || cJSON_AddBoolToObject(so, "include_usage", 1) == NULL) {
        goto out_delete;
    }
    if (cfg->ignore_eos) {
        cJSON_AddBoolToObject(root, "ignore_eos", 1);
    }
    out = cJSON_PrintUnformatted(root);
out_delete:
    cJSON_Delete(root);
    return out;
}

static cJSON *bs_user_message(const char *text)
{
    cJSON *msgs = cJSON_CreateArray(), *m = cJSON_CreateObject();

    if (msgs == NULL || m == NULL) {
        cJSON_Delete(msgs);
        cJSON_Delete(m);
        return NULL;
    }
    cJSON_AddItemToArray(msgs, m);
    cJSON_AddStringToObject(m, "role", "user");
    cJSON_AddStringToObject(m, "content", text);
    return msgs;
}

static mls_status bs_random_build(const bs_data_cfg *cfg, bs_dataset *ds, mls_err *err)
{
    int in_lo, in_hi, out_lo, out_hi;
    bs_rng r;

    bs_range(cfg->input_len, cfg->range_ratio, &in_lo, &in_hi);
    bs_range(cfg->output_len, cfg->range_ratio, &out_lo, &out_hi);
    bs_rng_seed(&r, cfg->seed);
    for (int i = 0; i < ds->n; i++) {
        int in_len = (int)bs_rng_int(&r, in_lo, in_hi);
        int out_len = (int)bs_rng_int(&r, out_lo, out_hi);
        cJSON *prompt;

        if (cfg->kind == BS_EP_COMPLETIONS) {
            prompt = cJSON_CreateArray();
            for (int k = 0; prompt != NULL && k < in_len; k++) {
                cJSON *id = cJSON_CreateNumber((double)bs_rng_int(&r, 0, cfg->vocab_size - 1));
                if (id == NULL) {
                    cJSON_Delete(prompt);
                    prompt = NULL;
                    break;
                }
                cJSON_AddItemToArray(prompt, id);
            }
            ds->v[i].body = bs_body_render(cfg, "prompt", prompt, out_len);
            ds->v[i].prompt_len = in_len;
        } else {
            size_t cap = (size_t)in_len * 16 + 1, len = 0;
            char *text = malloc(cap);
            const size_t n_words = sizeof(bs_words) / sizeof(bs_words[0]);
            for (int k = 0; text != NULL && k < in_len; k++) {
                const char *w = bs_words[bs_rng_int(&r, 0, (int64_t)n_words - 1)];
                len += (size_t)snprintf(text + len, cap - len, "%s%s", k ? " " : "", w);
            }
            ds->v[i].body = text ? bs_body_render(cfg, "messages", bs_user_message(text), out_len) : NULL;
            ds->v[i].prompt_len = -1;
            free(text);
        }
        ds->v[i].output_len = out_len;
        if (ds->v[i].body == NULL) {
            mls_err_set(err, "out of memory building prompt %d", i);
            return MLS_ERR_NO_MEMORY;
        }
    }
    return MLS_OK;
}

/* One jsonl line -> one prompt. */
static mls_status bs_jsonl_line(const bs_data_cfg *cfg, const char *line, const char *file, int lineno,
                                bs_prompt *p, mls_err *err)
{
    cJSON *root = cJSON_Parse(line), *pr, *msgs, *ol, *item = NULL;
    const char *key = "prompt";
    int out_len = cfg->output_len;
    mls_status st = MLS_ERR_PARSE;

    if (root == NULL || !cJSON_IsObject(root)) {
        mls_err_set(err, "%s:%d: not a JSON object", file, lineno);
        goto out_delete;
    }
    pr = cJSON_GetObjectItemCaseSensitive(root, "prompt");
    msgs = cJSON_GetObjectItemCaseSensitive(root, "messages");
    ol = cJSON_GetObjectItemCaseSensitive(root, "output_len");
    ol = ol ? ol : cJSON_GetObjectItemCaseSensitive(root, "output_tokens");
    ol = ol ? ol : cJSON_GetObjectItemCaseSensitive(root, "max_tokens");
    if (ol != NULL) {
        if (!cJSON_IsNumber(ol) || ol->valuedouble < 1 || ol->valuedouble > 1e7) {
            mls_err_set(err, "%s:%d: the output length must be a positive integer", file, lineno);
            goto out_delete;
        }
        out_len = (int)ol->valuedouble;
    }
    p->prompt_len = -1;
    if (msgs != NULL) {
        if (cfg->kind != BS_EP_CHAT || !cJSON_IsArray(msgs) || cJSON_GetArraySize(msgs) == 0) {
            mls_err_set(err, "%s:%d: \"messages\" must be a non-empty array and needs --endpoint "
                        "/v1/chat/completions", file, lineno);
            goto out_delete;
        }
        item = cJSON_DetachItemViaPointer(root, msgs);
        key = "messages";
    } else if (cJSON_IsString(pr)) {
        if (cfg->kind == BS_EP_CHAT) {
            item = bs_user_message(pr->valuestring);
            key = "messages";
        } else {
            item = cJSON_DetachItemViaPointer(root, pr);
        }
    } else if (cJSON_IsArray(pr) && cfg->kind == BS_EP_COMPLETIONS && cJSON_GetArraySize(pr) > 0) {
        const cJSON *id;
        cJSON_ArrayForEach(id, pr) {
            if (!cJSON_IsNumber(id)) {
                mls_err_set(err, "%s:%d: \"prompt\" ids must be numbers", file, lineno);
                goto out_delete;
            }
        }
        p->prompt_len = cJSON_GetArraySize(pr);
        item = cJSON_DetachItemViaPointer(root, pr);
    } else {
        mls_err_set(err, "%s:%d: need \"prompt\" (text, or token ids for /v1/completions) or \"messages\"",
                    file, lineno);
        goto out_delete;
    }
    p->output_len = out_len;
    p->body = bs_body_render(cfg, key, item, out_len);
    if (p->body == NULL) {
        mls_err_set(err, "%s:%d: out of memory", file, lineno);
        st = MLS_ERR_NO_MEMORY;
        goto out_delete;
    }
    st = MLS_OK;
out_delete:
    cJSON_Delete(root);
    return st;
}

static mls_status bs_jsonl_build(const bs_data_cfg *cfg, bs_dataset *ds, mls_err *err)
{
    FILE *f = fopen(cfg->jsonl, "r");
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    int lineno = 0, filled = 0;
    mls_status st = MLS_OK;

    if (f == NULL) {
        mls_err_set(err, "%s: %s", cfg->jsonl, strerror(errno));
        return MLS_ERR_IO;
    }
    while (filled < ds->n && (len = getline(&line, &cap, f)) >= 0) {
        const char *s = line;
        lineno++;
        while (*s == ' ' || *s == '\t' || *s == '\r' || *s == '\n') {
            s++;
        }
        if (*s == '\0') {
            continue;
        }
        if ((st = bs_jsonl_line(cfg, s, cfg->jsonl, lineno, &ds->v[filled], err)) != MLS_OK) {
            goto out_close;
        }
        filled++;
    }
    if (filled == 0) {
        mls_err_set(err, "%s: no prompts", cfg->jsonl);
        st = MLS_ERR_PARSE;
        goto out_close;
    }
    /* fewer lines than prompts: reuse them in order */
    for (int i = filled; i < ds->n; i++) {
        ds->v[i] = ds->v[i % filled];
        ds->v[i].body = strdup(ds->v[i % filled].body);
        if (ds->v[i].body == NULL) {
            mls_err_set(err, "out of memory");
            st = MLS_ERR_NO_MEMORY;
            goto out_close;
        }
    }
out_close:
    free(line);
    fclose(f);
    return st;
}

mls_status bs_dataset_build(const bs_data_cfg *cfg, bs_dataset *ds_p, mls_err *err)
{
    bs_dataset ds = {0};
    mls_status st;

    if (cfg->num_prompts < 1 || cfg->output_len < 1 || (cfg->jsonl == NULL && cfg->input_len < 1) ||
        cfg->range_ratio < 0 || cfg->range_ratio >= 1 || cfg->vocab_size < 1) {
        mls_err_set(err, "need --num-prompts, --input-len, --output-len and --vocab-size >= 1 and "
                    "0 <= --range-ratio < 1");
        return MLS_ERR_INVALID_ARG;
    }
    ds.n = cfg->num_prompts;
    ds.v = calloc((size_t)ds.n, sizeof(*ds.v));
    if (ds.v == NULL) {
        mls_err_set(err, "out of memory for %d prompts", ds.n);
        return MLS_ERR_NO_MEMORY;
    }
    st = cfg->jsonl != NULL ? bs_jsonl_build(cfg, &ds, err) : bs_random_build(cfg, &ds, err);
    if (st != MLS_OK) {
        bs_dataset_free(&ds);
        return st;
    }
    *ds_p = ds;
    return MLS_OK;
}

void bs_dataset_free(bs_dataset *ds)
{
    for (int i = 0; ds->v != NULL && i < ds->n; i++) {
        free(ds->v[i].body);
    }
    free(ds->v);
    ds->v = NULL;
    ds->n = 0;
}
