/*
 * test_tokenizer.c - the tokenizer against Hugging Face's own outputs.
 *
 * Every case of tests/fixtures/tokenizers/{gpt2,deepseek-v3}/cases.jsonl
 * (encode ids; decode text, text_skip_special, and the per-prefix ground truth
 * for the streaming detokenizer) and every chat case; the `mlaserve tokenize`
 * CLI; malformed tokenizer.json files (these use small synthetic files).
 * A missing fixture, or one that does not load, fails every test that needs it.
 */
#include <pthread.h>
#include <stdarg.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>

#include "mls_alloc.h"
#include "mls_buf.h"
#include "mls_status.h"
#include "mls_test.h"
#include "tjson.h"
#include "tok.h"

#define FIX_DIR "tokenizers"

static tok_tokenizer *g_gpt2, *g_ds;

/* ---- helpers ------------------------------------------------------------- */

static char *read_all(const char *path, size_t *len_p)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    long n;
    if (f == NULL) {
        return NULL;
    }
    if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0 &&
        (buf = malloc((size_t)n + 1)) != NULL) {
        if (fread(buf, 1, (size_t)n, f) != (size_t)n) {
            free(buf);
            buf = NULL;
        } else {
            buf[n] = '\0';
            *len_p = (size_t)n;
        }
    }
    fclose(f);
    return buf;
}

static bool write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "wb");
    if (f == NULL) {
        return false;
    }
    bool ok = fwrite(text, 1, strlen(text), f) == strlen(text);
    return fclose(f) == 0 && ok;
}

/* Calls fn on each line of a JSONL file; returns the number of lines or -1. */
typedef void (*line_fn)(const tj_val *c, void *ctx);
static int for_each_line(const char *path, line_fn fn, void *ctx)
{
    size_t len = 0;
    char *buf = read_all(path, &len);
    int n = 0;
    if (buf == NULL) {
        return -1;
    }
    for (char *p = buf; p < buf + len;) {
        char *nl = memchr(p, '\n', (size_t)(buf + len - p));
        size_t ll = nl ? (size_t)(nl - p) : (size_t)(buf + len - p);
        if (ll > 0) {
            tj_val *v = tj_parse(p, ll);
            if (v == NULL) {
                fprintf(stderr, "  %s: line %d is not JSON\n", path, n + 1);
                free(buf);
                return -1;
            }
            fn(v, ctx);
            tj_free(v);
            n++;
        }
        p += ll + 1;
    }
    free(buf);
    return n;
}

static bool ids_equal(const tok_ids *got, const tj_val *want)
{
    if (want == NULL || want->type != TJ_ARR || got->n != want->n) {
        return false;
    }
    for (size_t i = 0; i < got->n; i++) {
        if (got->ids[i] != (int32_t)want->items[i]->num) {
            return false;
        }
    }
    return true;
}

static void print_id_diff(const tok_ids *got, const tj_val *want)
{
    size_t i = 0;
    while (i < got->n && i < want->n && got->ids[i] == (int32_t)want->items[i]->num) {
        i++;
    }
    fprintf(stderr, "    got %zu ids, want %zu; first difference at %zu:", got->n, want->n, i);
    for (size_t k = i; k < i + 6 && k < got->n; k++) {
        fprintf(stderr, " %d", got->ids[k]);
    }
    fprintf(stderr, "  vs");
    for (size_t k = i; k < i + 6 && k < want->n; k++) {
        fprintf(stderr, " %d", (int)want->items[k]->num);
    }
    fprintf(stderr, "\n");
}

static bool str_equal(const char *got, size_t got_len, const tj_val *want)
{
    return want != NULL && want->type == TJ_STR && want->len == got_len &&
           memcmp(want->str, got, got_len) == 0;
}

/* ---- cases.jsonl --------------------------------------------------------- */

typedef struct {
    const tok_tokenizer *tok;
    int n_encode, n_decode, n_prefix, n_stream, failed;
} case_ctx;

static void case_fail(case_ctx *cx, const char *name, const char *fmt, ...)
{
    va_list ap;
    if (cx->failed++ < 12) {
        fprintf(stderr, "  case %s: ", name);
        va_start(ap, fmt);
        vfprintf(stderr, fmt, ap);
        va_end(ap);
        fprintf(stderr, "\n");
    }
}

/* Streams ids through a detokenizer; checks every step against prefixes (when
 * given) and the final text against want. Returns false on a mismatch. */
static bool stream_check(case_ctx *cx, const char *name, const int32_t *ids, size_t n,
                         bool skip_special, const tj_val *prefixes, const tj_val *want)
{
    tok_detok *d = NULL;
    mls_err err;
    mls_buf acc = MLS_BUF_INIT(MLS_ALLOC_TAG_MISC); /* the text streamed so far */
    bool ok = true;
    const char *chunk;
    size_t clen;

    if (tok_detok_create(cx->tok, skip_special, &d, &err) != MLS_OK) {
        case_fail(cx, name, "tok_detok_create: %s", err.msg);
        return false;
    }
    for (size_t k = 0; k <= n && ok; k++) {
        mls_status st =
            k < n ? tok_detok_feed(d, ids[k], &chunk, &clen) : tok_detok_flush(d, &chunk, &clen);
        if (st != MLS_OK) {
            case_fail(cx, name, "feed: %s", mls_status_name(st));
            ok = false;
            break;
        }
        if (mls_buf_append(&acc, chunk, clen) != MLS_OK) {
            ok = false;
            break;
        }
        /* never a broken UTF-8 sequence, never text the final result disagrees with */
        if (clen > 0 && (chunk[0] & 0xC0) == 0x80) {
            case_fail(cx, name, "chunk %zu starts inside a UTF-8 sequence", k);
            ok = false;
        }
        if (acc.len > want->len || memcmp(acc.data, want->str, acc.len) != 0) {
            case_fail(cx, name,
                      "after %zu ids the streamed text is not a prefix of the final "
                      "text",
                      k + 1);
            ok = false;
        }
        if (k < n && prefixes != NULL) {
            const tj_val *p = prefixes->items[k];
            size_t pend = tok_detok_pending(d);
            /* prefixes[k] = emitted + (one U+FFFD for held bytes, if any) */
            bool match = p->len == acc.len + (pend ? 3 : 0) &&
                         memcmp(p->str, acc.data, acc.len) == 0 &&
                         (pend == 0 || memcmp(p->str + acc.len, "\xEF\xBF\xBD", 3) == 0);
            if (!match) {
                case_fail(cx, name,
                          "prefix %zu: emitted %zu bytes, %zu held; reference prefix "
                          "is %zu bytes",
                          k + 1, acc.len, pend, p->len);
                ok = false;
            }
            cx->n_prefix++;
        }
    }
    if (ok && acc.len != want->len) {
        case_fail(cx, name, "streamed %zu bytes, decode gives %zu", acc.len, want->len);
        ok = false;
    }
    if (ok && tok_detok_pending(d) != 0) {
        case_fail(cx, name, "bytes still held after flush");
        ok = false;
    }
    cx->n_stream++;
    mls_buf_free(&acc);
    tok_detok_destroy(d);
    return ok;
}

static int32_t *ids_of(const tj_val *arr)
{
    int32_t *ids = malloc((arr->n + 1) * sizeof(*ids));
    for (size_t i = 0; ids && i < arr->n; i++) {
        ids[i] = (int32_t)arr->items[i]->num;
    }
    return ids;
}

static void check_decode(case_ctx *cx, const char *name, const tj_val *ids_v, const tj_val *text,
                         const tj_val *text_skip, const tj_val *prefixes)
{
    int32_t *ids = ids_of(ids_v);
    mls_err err;
    char *out = NULL;
    size_t len = 0;

    if (tok_decode(cx->tok, ids, ids_v->n, false, &out, &len, &err) != MLS_OK) {
        case_fail(cx, name, "decode: %s", err.msg);
    } else if (!str_equal(out, len, text)) {
        case_fail(cx, name, "decode gives \"%s\" (%zu bytes), want %zu bytes", out, len, text->len);
    }
    free(out);
    out = NULL;
    if (text_skip != NULL) {
        if (tok_decode(cx->tok, ids, ids_v->n, true, &out, &len, &err) != MLS_OK) {
            case_fail(cx, name, "decode(skip_special): %s", err.msg);
        } else if (!str_equal(out, len, text_skip)) {
            case_fail(cx, name, "decode(skip_special) gives \"%s\", want \"%s\"", out,
                      text_skip->str);
        }
        free(out);
        stream_check(cx, name, ids, ids_v->n, true, NULL, text_skip);
    }
    if (prefixes != NULL && (prefixes->type != TJ_ARR || prefixes->n != ids_v->n)) {
        case_fail(cx, name, "fixture: prefixes do not match ids");
        prefixes = NULL;
    }
    stream_check(cx, name, ids, ids_v->n, false, prefixes, text);
    cx->n_decode++;
    free(ids);
}

static void case_line(const tj_val *c, void *ctx)
{
    case_ctx *cx = ctx;
    const tj_val *kind = tj_get(c, "kind"), *name_v = tj_get(c, "name");
    const char *name = name_v ? name_v->str : "?";
    tok_ids got = {0};
    mls_err err;

    if (kind == NULL || name_v == NULL) {
        case_fail(cx, name, "fixture line without kind/name");
        return;
    }
    if (strcmp(kind->str, "encode") == 0) {
        const tj_val *text = tj_get(c, "text"), *want = tj_get(c, "ids");
        mls_status st = tok_encode(cx->tok, text->str, text->len, &got, &err);
        if (st != MLS_OK) {
            case_fail(cx, name, "encode: %s", err.msg);
        } else if (!ids_equal(&got, want)) {
            case_fail(cx, name, "encode ids differ");
            print_id_diff(&got, want);
        }
        cx->n_encode++;
        /* decode(encode(t)) == t, whole and streamed */
        check_decode(cx, name, want, text, NULL, NULL);
    } else if (strcmp(kind->str, "decode") == 0) {
        check_decode(cx, name, tj_get(c, "ids"), tj_get(c, "text"), tj_get(c, "text_skip_special"),
                     tj_get(c, "prefixes"));
    } else {
        case_fail(cx, name, "unknown kind %s", kind->str);
    }
    tok_ids_free(&got);
}

static void run_cases(const tok_tokenizer *tok, const char *dir, int want_encode, int want_decode)
{
    char rel[256], path[512];
    case_ctx cx = {.tok = tok};

    snprintf(rel, sizeof(rel), FIX_DIR "/%s/cases.jsonl", dir);
    CHECK_FIXTURE(rel, path);
    CHECK_MSG(tok != NULL, "the %s tokenizer did not load", dir);
    CHECK(for_each_line(path, case_line, &cx) > 0);
    /* encode cases also run a decode round trip: count decode-kind cases apart */
    fprintf(stderr,
            "  %s: %d encode cases, %d decode cases, %d streams, %d prefixes checked, "
            "%d failures\n",
            dir, cx.n_encode, cx.n_decode - cx.n_encode, cx.n_stream, cx.n_prefix, cx.failed);
    CHECK_EQ_INT(cx.failed, 0);
    CHECK_EQ_INT(cx.n_encode, want_encode);
    CHECK_EQ_INT(cx.n_decode - cx.n_encode, want_decode);
}

static void test_gpt2_cases(void)
{
    run_cases(g_gpt2, "gpt2", 285, 65);
}

static void test_deepseek_cases(void)
{
    run_cases(g_ds, "deepseek-v3", 301, 84);
}

/* ---- chat_cases.jsonl ---------------------------------------------------- */

typedef struct {
    int n, failed;
} chat_ctx;

static const char *str_or_null(const tj_val *v)
{
    return v != NULL && v->type == TJ_STR ? v->str : NULL;
}

static void chat_line(const tj_val *c, void *ctx)
{
    chat_ctx *cx = ctx;
    const tj_val *msgs = tj_get(c, "messages"), *name = tj_get(c, "name");
    tok_chat_msg m[64];
    tok_tool_call calls[64];
    size_t n_calls = 0;
    char *text = NULL;
    size_t len = 0;
    tok_ids ids = {0};
    mls_err err;

    cx->n++;
    if (msgs == NULL || msgs->n > 64) {
        cx->failed++;
        return;
    }
    for (size_t i = 0; i < msgs->n; i++) {
        const tj_val *mv = msgs->items[i], *tc = tj_get(mv, "tool_calls");
        m[i] = (tok_chat_msg){.role = str_or_null(tj_get(mv, "role")),
                              .content = str_or_null(tj_get(mv, "content"))};
        if (tc != NULL) {
            m[i].tool_calls = &calls[n_calls];
            for (size_t k = 0; k < tc->n && n_calls < 64; k++) {
                const tj_val *fn = tj_get(tc->items[k], "function");
                calls[n_calls++] =
                    (tok_tool_call){.type = str_or_null(tj_get(tc->items[k], "type")),
                                    .name = str_or_null(tj_get(fn, "name")),
                                    .arguments = str_or_null(tj_get(fn, "arguments"))};
                m[i].n_tool_calls++;
            }
        }
    }
    bool agp = tj_get(c, "add_generation_prompt")->b;
    if (tok_chat_render(g_ds, m, msgs->n, agp, &text, &len, &err) != MLS_OK) {
        fprintf(stderr, "  chat %s: render: %s\n", name->str, err.msg);
        cx->failed++;
        return;
    }
    if (!str_equal(text, len, tj_get(c, "text"))) {
        fprintf(stderr, "  chat %s: rendered\n    %s\n  want\n    %s\n", name->str, text,
                tj_get(c, "text")->str);
        cx->failed++;
    } else if (tok_chat_encode(g_ds, m, msgs->n, agp, &ids, &err) != MLS_OK) {
        fprintf(stderr, "  chat %s: encode: %s\n", name->str, err.msg);
        cx->failed++;
    } else if (!ids_equal(&ids, tj_get(c, "ids"))) {
        fprintf(stderr, "  chat %s: ids differ\n", name->str);
        print_id_diff(&ids, tj_get(c, "ids"));
        cx->failed++;
    }
    free(text);
    tok_ids_free(&ids);
}

static void test_deepseek_chat(void)
{
    char path[512];
    chat_ctx cx = {0};
    CHECK_FIXTURE(FIX_DIR "/deepseek-v3/chat_cases.jsonl", path);
    CHECK_MSG(g_ds != NULL, "the deepseek-v3 tokenizer did not load");
    CHECK(for_each_line(path, chat_line, &cx) > 0);
    fprintf(stderr, "  deepseek-v3: %d chat cases, %d failures\n", cx.n, cx.failed);
    CHECK_EQ_INT(cx.failed, 0);
    CHECK_EQ_INT(cx.n, 15);
}

/* Template quirks the fixtures do not cover, derived by reading the template. */
static void test_deepseek_chat_rules(void)
{
    char *text = NULL;
    size_t len;
    mls_err err;
    CHECK_MSG(g_ds != NULL, "the deepseek-v3 tokenizer did not load");
    tok_tool_call tc = {.type = "function", .name = "f", .arguments = "{}"};
    tok_chat_msg msgs[] = {
        {.role = "user", .content = "a"},
        {.role = "assistant", .content = NULL, .tool_calls = &tc, .n_tool_calls = 1},
        {.role = "tool", .content = "r"},
        {.role = "assistant", .content = "b"},
        {.role = "developer", .content = "ignored"},
        {.role = "assistant", .content = NULL, .tool_calls = &tc, .n_tool_calls = 1},
    };
    CHECK_OK(tok_chat_render(g_ds, msgs, 6, true, &text, &len, &err));
    /* the second tool-call message takes the "not first" branch: is_first never resets */
    CHECK_STR_EQ(
        text, "<｜begin▁of▁sentence｜><｜User｜>a<｜Assistant｜><｜tool▁calls▁begin｜>"
              "<｜tool▁call▁begin｜>function<｜tool▁sep｜>f\n```json\n{}\n```<｜tool▁call▁end｜>"
              "<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>r<｜tool▁output▁end｜>"
              "<｜tool▁outputs▁end｜>b<｜end▁of▁sentence｜>"
              "\n<｜tool▁call▁begin｜>function<｜tool▁sep｜>f\n```json\n{}\n```<｜tool▁call▁end｜>"
              "<｜tool▁calls▁end｜><｜end▁of▁sentence｜><｜Assistant｜>");
    free(text);
    tok_chat_msg bad[] = {{.role = "user", .content = NULL}};
    CHECK_STATUS(tok_chat_render(g_ds, bad, 1, true, &text, &len, &err), MLS_ERR_INVALID_ARG);
    tok_tool_call badtc = {.type = "function", .name = "f", .arguments = NULL};
    tok_chat_msg bad2[] = {{.role = "assistant", .tool_calls = &badtc, .n_tool_calls = 1}};
    CHECK_STATUS(tok_chat_render(g_ds, bad2, 1, true, &text, &len, &err), MLS_ERR_INVALID_ARG);
    if (g_gpt2 != NULL) {
        CHECK_STATUS(tok_chat_render(g_gpt2, msgs, 1, true, &text, &len, &err),
                     MLS_ERR_UNSUPPORTED);
    }
}

/* ---- vocabulary API ------------------------------------------------------ */

static void test_vocab_api(void)
{
    size_t len = 0;
    const char *s;
    CHECK_MSG(g_ds != NULL && g_gpt2 != NULL, "the fixture tokenizers did not load");
    /* meta.json of each fixture */
    CHECK_EQ_INT(tok_vocab_size(g_ds), 128815);
    CHECK_EQ_INT(tok_bos_id(g_ds), 0);
    CHECK_EQ_INT(tok_eos_id(g_ds), 1);
    CHECK(tok_add_bos(g_ds));
    CHECK_EQ_INT(tok_vocab_size(g_gpt2), 50257);
    CHECK_EQ_INT(tok_bos_id(g_gpt2), 50256);
    CHECK_EQ_INT(tok_eos_id(g_gpt2), 50256);
    CHECK(!tok_add_bos(g_gpt2));
    CHECK(tok_is_special(g_ds, 0) && tok_is_special(g_ds, 128799) && tok_is_special(g_ds, 128805));
    CHECK(!tok_is_special(g_ds, 128803) && tok_is_added(g_ds, 128803) && !tok_is_added(g_ds, 3));
    CHECK(tok_is_special(g_gpt2, 50256) && !tok_is_special(g_gpt2, 50255));
    CHECK_EQ_INT(tok_token_to_id(g_ds, "<｜User｜>", strlen("<｜User｜>")), 128803);
    CHECK_EQ_INT(tok_token_to_id(g_gpt2, "Hello", 5), 15496);
    CHECK_EQ_INT(tok_token_to_id(g_gpt2, "\xc4\xa0world", 7), 995); /* "Ġworld" */
    CHECK_EQ_INT(tok_token_to_id(g_gpt2, "no such token", 13), -1);
    s = tok_id_to_token(g_gpt2, 995, &len);
    CHECK(s != NULL && len == 7 && memcmp(s, "\xc4\xa0world", 7) == 0);
    s = tok_id_to_token(g_ds, 128804, &len);
    CHECK(s != NULL && len == strlen("<｜Assistant｜>") && memcmp(s, "<｜Assistant｜>", len) == 0);
    CHECK(tok_id_to_token(g_ds, 128815, &len) == NULL && tok_id_to_token(g_ds, -1, &len) == NULL);
}

static void test_encode_edges(void)
{
    tok_ids ids = {0};
    mls_err err;
    char *out = NULL;
    size_t len;
    CHECK_MSG(g_gpt2 != NULL, "the gpt2 tokenizer did not load");
    /* invalid UTF-8 is refused and leaves the vector as it was */
    CHECK_OK(tok_ids_push(&ids, 7));
    CHECK_STATUS(tok_encode(g_gpt2, "ab\xff", 3, &ids, &err), MLS_ERR_INVALID_ARG);
    CHECK(strstr(err.msg, "byte 2") != NULL);
    CHECK_STATUS(tok_encode(g_gpt2, "\xe4\xb8", 2, &ids, &err), MLS_ERR_INVALID_ARG);
    CHECK_EQ_INT(ids.n, 1);
    /* appends */
    CHECK_OK(tok_encode(g_gpt2, "Hello world", 11, &ids, &err));
    CHECK_EQ_INT(ids.n, 3);
    CHECK_EQ_INT(ids.ids[1], 15496);
    CHECK_EQ_INT(ids.ids[2], 995);
    /* ids naming no token are skipped, as HF does */
    int32_t odd[] = {15496, 999999, -5, 995};
    CHECK_OK(tok_decode(g_gpt2, odd, 4, false, &out, &len, &err));
    CHECK_STR_EQ(out, "Hello world");
    free(out);
    CHECK_OK(tok_decode(g_gpt2, NULL, 0, false, &out, &len, &err));
    CHECK(out != NULL && len == 0);
    free(out);
    tok_ids_free(&ids);
}

/* The 20 KB paragraph, timed: the BPE must stay well under quadratic. */
static void test_encode_speed(void)
{
    char path[512];
    size_t len = 0;
    CHECK_MSG(g_ds != NULL, "the deepseek-v3 tokenizer did not load");
    CHECK_FIXTURE(FIX_DIR "/deepseek-v3/cases.jsonl", path);
    char *buf = read_all(path, &len);
    CHECK(buf != NULL);
    char *line = strstr(buf, "{\"kind\":\"encode\",\"name\":\"big_paragraph_20kb\"");
    CHECK(line != NULL);
    tj_val *c = tj_parse(line, (size_t)(strchr(line, '\n') - line));
    CHECK(c != NULL);
    const tj_val *text = tj_get(c, "text");
    /* a long word without spaces: one BPE run over every byte */
    size_t wlen = 20000;
    char *word = malloc(wlen);
    for (size_t i = 0; i < wlen; i++) {
        word[i] = "abcdefghij"[(i * 7 + i / 13) % 10];
    }
    tok_ids ids = {0};
    mls_err err;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int reps = 20;
    for (int r = 0; r < reps; r++) {
        ids.n = 0;
        CHECK_OK(tok_encode(g_ds, text->str, text->len, &ids, &err));
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double dt = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9;
    fprintf(stderr, "  20 KB paragraph: %zu ids, %.2f ms per encode (%.1f MB/s)\n", ids.n,
            dt / reps * 1e3, (double)text->len * reps / dt / 1e6);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    ids.n = 0;
    CHECK_OK(tok_encode(g_gpt2 ? g_gpt2 : g_ds, word, wlen, &ids, &err));
    clock_gettime(CLOCK_MONOTONIC, &t1);
    dt = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9;
    fprintf(stderr, "  20000-byte single word: %zu ids in %.2f ms\n", ids.n, dt * 1e3);
    CHECK_LE_DBL(dt, 2.0);
    tok_ids_free(&ids);
    free(word);
    tj_free(c);
    free(buf);
}

/* Several threads encoding at once share the word cache: results must not change. */
typedef struct {
    const tok_tokenizer *tok;
    const tj_val *texts; /* encode cases */
    int bad;
} thread_arg;

static void *encode_thread(void *p)
{
    thread_arg *a = p;
    for (int rep = 0; rep < 3; rep++) {
        for (size_t i = 0; i < a->texts->n; i++) {
            const tj_val *c = a->texts->items[i];
            tok_ids ids = {0};
            mls_err err;
            const tj_val *t = tj_get(c, "text");
            if (tok_encode(a->tok, t->str, t->len, &ids, &err) != MLS_OK ||
                !ids_equal(&ids, tj_get(c, "ids"))) {
                a->bad++;
            }
            tok_ids_free(&ids);
        }
    }
    return NULL;
}

/* Each JSONL line parsed; NULL when the file is missing. Free with free_lines. */
static tj_val **load_lines(const char *path, size_t *n_p)
{
    size_t len = 0, n = 0;
    char *buf = read_all(path, &len);
    tj_val **v = NULL;
    if (buf == NULL) {
        return NULL;
    }
    v = calloc(len / 2 + 1, sizeof(*v)); /* a line is at least 2 bytes */
    for (char *p = buf; v != NULL && p < buf + len;) {
        char *nl = memchr(p, '\n', (size_t)(buf + len - p));
        size_t ll = nl ? (size_t)(nl - p) : (size_t)(buf + len - p);
        if (ll > 0 && (v[n] = tj_parse(p, ll)) != NULL) {
            n++;
        }
        p += ll + 1;
    }
    free(buf);
    *n_p = n;
    return v;
}

static void free_lines(tj_val **v, size_t n)
{
    for (size_t i = 0; v != NULL && i < n; i++) {
        tj_free(v[i]);
    }
    free(v);
}

static void test_threads(void)
{
    char path[512];
    pthread_t th[4];
    thread_arg args[4];
    size_t n_lines = 0;
    tj_val **lines, arr = {.type = TJ_ARR};
    CHECK_MSG(g_ds != NULL, "the deepseek-v3 tokenizer did not load");
    CHECK_FIXTURE(FIX_DIR "/deepseek-v3/cases.jsonl", path);
    lines = load_lines(path, &n_lines);
    CHECK(lines != NULL);
    arr.items = calloc(n_lines + 1, sizeof(*arr.items));
    for (size_t i = 0; i < n_lines; i++) {
        if (strcmp(tj_get(lines[i], "kind")->str, "encode") == 0) {
            arr.items[arr.n++] = lines[i];
        }
    }
    for (int t = 0; t < 4; t++) {
        args[t] = (thread_arg){.tok = g_ds, .texts = &arr};
        CHECK(pthread_create(&th[t], NULL, encode_thread, &args[t]) == 0);
    }
    int bad = 0;
    for (int t = 0; t < 4; t++) {
        pthread_join(th[t], NULL);
        bad += args[t].bad;
    }
    fprintf(stderr, "  4 threads x 3 x %zu encodes, %d wrong\n", arr.n, bad);
    free(arr.items);
    free_lines(lines, n_lines);
    CHECK_EQ_INT(bad, 0);
    CHECK_EQ_INT(arr.n, 301);
}

/* ---- malformed and synthetic tokenizer.json ------------------------------ */

static char g_tmp[256];

/* A small, complete byte-level BPE tokenizer.json: the 256 byte tokens, merges
 * "h e", "l l", "he ll", "hell o", and two added tokens. `extra` is spliced in
 * as top-level members ("normalizer", "pre_tokenizer", ...). */
static char *synthetic_json(const char *merges, const char *pre, const char *decoder,
                            const char *added)
{
    static const char hex[] = "0123456789abcdef";
    size_t cap = 64 * 1024, n = 0;
    char *j = malloc(cap);
    n += (size_t)snprintf(j + n, cap - n,
                          "{\"version\":\"1.0\",\"added_tokens\":%s,"
                          "\"normalizer\":null,\"pre_tokenizer\":%s,\"decoder\":%s,"
                          "\"model\":{\"type\":\"BPE\",\"vocab\":{",
                          added, pre, decoder);
    int id = 0;
    for (int b = 0; b < 256; b++) {
        bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
        unsigned cp = (unsigned)b;
        if (!printable) {
            unsigned k = 0;
            for (int x = 0; x < b; x++) {
                k += !((x >= 0x21 && x <= 0x7E) || (x >= 0xA1 && x <= 0xAC) || x >= 0xAE);
            }
            cp = 256 + k;
        }
        if (cp == '"' || cp == '\\') {
            n += (size_t)snprintf(j + n, cap - n, "\"\\%c\":%d,", (char)cp, id++);
        } else {
            n += (size_t)snprintf(j + n, cap - n, "\"\\u%c%c%c%c\":%d,", hex[(cp >> 12) & 15],
                                  hex[(cp >> 8) & 15], hex[(cp >> 4) & 15], hex[cp & 15], id++);
        }
    }
    n += (size_t)snprintf(j + n, cap - n,
                          "\"he\":256,\"ll\":257,\"hell\":258,\"hello\":259,"
                          "\"\\u0120hello\":260},\"merges\":%s}}",
                          merges);
    return j;
}

static const char *k_merges = "[\"h e\",[\"l\",\"l\"],\"he ll\",\"hell o\",\"\\u0120 hello\"]";
static const char *k_pre = "{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"use_regex\":true}";
static const char *k_dec = "{\"type\":\"ByteLevel\"}";
static const char *k_added = "[{\"id\":261,\"content\":\"<eot>\",\"special\":true,\"lstrip\":true,"
                             "\"rstrip\":true,\"normalized\":false},"
                             "{\"id\":262,\"content\":\"<w>\",\"special\":false,"
                             "\"single_word\":true,\"normalized\":true}]";

static mls_status load_text(const char *json, tok_tokenizer **tok_p, mls_err *err)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/tokenizer.json", g_tmp);
    if (!write_file(path, json)) {
        mls_err_set(err, "cannot write %s", path);
        return MLS_ERR_IO;
    }
    return tok_tokenizer_load(g_tmp, tok_p, err);
}

static void expect_load_error(const char *json, mls_status want, const char *msg_part)
{
    tok_tokenizer *tok = (tok_tokenizer *)0x1;
    mls_err err = {{0}};
    mls_status st = load_text(json, &tok, &err);
    if (st != want || strstr(err.msg, msg_part) == NULL || tok != (tok_tokenizer *)0x1) {
        fprintf(stderr, "  FAIL load: got %s \"%s\", want %s with \"%s\"\n", mls_status_name(st),
                err.msg, mls_status_name(want), msg_part);
        mls_test_cur_failed = 1;
    }
}

static void test_synthetic(void)
{
    tok_tokenizer *tok = NULL;
    mls_err err;
    tok_ids ids = {0};
    char *j = synthetic_json(k_merges, k_pre, k_dec, k_added);
    CHECK_OK(load_text(j, &tok, &err));
    free(j);
    /* "hello hello" -> hello, Ġhello; "<eot>" strips the spaces around it */
    CHECK_OK(tok_encode(tok, "hello hello  <eot>  hel", 23, &ids, &err));
    CHECK_EQ_INT(ids.n, 5);
    CHECK_EQ_INT(ids.ids[0], 259);
    CHECK_EQ_INT(ids.ids[1], 260);
    CHECK_EQ_INT(ids.ids[2], 261);
    CHECK_EQ_INT(ids.ids[3], 256); /* he */
    CHECK_EQ_INT(ids.ids[4], 'l');
    /* single_word: "<w>" only counts between non-word characters */
    ids.n = 0;
    CHECK_OK(tok_encode(tok, "a<w> <w>", 8, &ids, &err));
    CHECK_EQ_INT(ids.ids[ids.n - 1], 262);
    CHECK(ids.n >= 2 && ids.ids[ids.n - 2] != 262);
    CHECK_EQ_INT(tok_bos_id(tok), -1);
    tok_ids_free(&ids);
    tok_tokenizer_destroy(tok);
}

static void test_malformed(void)
{
    char *j;
    char path[512];
    tok_tokenizer *tok = NULL;
    mls_err err;

    CHECK_STATUS(tok_tokenizer_load("/nonexistent/tokenizer/dir", &tok, &err), MLS_ERR_NOT_FOUND);
    CHECK(strstr(err.msg, "/nonexistent/tokenizer/dir") != NULL);

    expect_load_error("{\"model\": {\"vocab\": {", MLS_ERR_PARSE, "not valid JSON");
    expect_load_error("[1,2]", MLS_ERR_PARSE, "not a JSON object");
    expect_load_error("{\"version\":\"1.0\"}", MLS_ERR_PARSE, "\"model\" missing");
    expect_load_error("{\"model\":{\"type\":\"WordPiece\",\"vocab\":{}}}", MLS_ERR_UNSUPPORTED,
                      "model.type WordPiece");
    expect_load_error("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":\"x\"},\"merges\":[]}}",
                      MLS_ERR_PARSE, "model.vocab[\"a\"]");

    j = synthetic_json("[\"h e\",\"q zz\"]", k_pre, k_dec, "[]");
    expect_load_error(j, MLS_ERR_BAD_MODEL, "model.merges[1]: token \"zz\" is not in model.vocab");
    free(j);
    j = synthetic_json("[\"h x\"]", k_pre, k_dec, "[]");
    expect_load_error(j, MLS_ERR_BAD_MODEL, "merged token \"hx\"");
    free(j);
    j = synthetic_json("[\"h e l\"]", k_pre, k_dec, "[]");
    expect_load_error(j, MLS_ERR_PARSE, "model.merges[0]");
    free(j);
    j = synthetic_json(k_merges, "{\"type\":\"Whitespace\"}", k_dec, "[]");
    expect_load_error(j, MLS_ERR_UNSUPPORTED, "pre_tokenizer type Whitespace");
    free(j);
    j = synthetic_json(k_merges, "null", k_dec, "[]");
    expect_load_error(j, MLS_ERR_UNSUPPORTED, "no ByteLevel");
    free(j);
    j = synthetic_json(k_merges,
                       "{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":"
                       "{\"Regex\":\"(unclosed\"},\"behavior\":\"Isolated\",\"invert\":false},"
                       "{\"type\":\"ByteLevel\",\"use_regex\":false}]}",
                       k_dec, "[]");
    expect_load_error(j, MLS_ERR_UNSUPPORTED, "does not compile");
    free(j);
    j = synthetic_json(k_merges, k_pre, "{\"type\":\"WordPiece\"}", "[]");
    expect_load_error(j, MLS_ERR_UNSUPPORTED, "decoder WordPiece");
    free(j);
    j = synthetic_json(k_merges, k_pre, k_dec, "[{\"id\":300,\"content\":\"\"}]");
    expect_load_error(j, MLS_ERR_PARSE, "added_tokens[0]");
    free(j);
    /* a broken tokenizer_config.json next to a good tokenizer.json */
    j = synthetic_json(k_merges, k_pre, k_dec, "[]");
    snprintf(path, sizeof(path), "%s/tokenizer_config.json", g_tmp);
    CHECK(write_file(path, "{\"bos_token\": "));
    expect_load_error(j, MLS_ERR_PARSE, "tokenizer_config.json: not valid JSON");
    CHECK(unlink(path) == 0);
    free(j);
}

/* ---- the CLI ------------------------------------------------------------- */

static void test_cli(void)
{
    char dir[512], in[512], out[512], cmd[2048];
    size_t len = 0;
    CHECK_FIXTURE(FIX_DIR "/deepseek-v3", dir);
    CHECK_MSG(access(MLS_BIN_DIR "/mlaserve", X_OK) == 0, "%s/mlaserve is not built",
              MLS_BIN_DIR);
    snprintf(in, sizeof(in), "%s/in.jsonl", g_tmp);
    snprintf(out, sizeof(out), "%s/out.jsonl", g_tmp);
    CHECK(write_file(in, "{\"text\":\"Hello world\"}\n"
                         "{\"messages\":[{\"role\":\"system\",\"content\":\"You are a helpful "
                         "assistant.\"},{\"role\":\"user\",\"content\":\"Hello!\"}]}\n"
                         "{\"text\": 5}\n"
                         "not json at all\n"
                         "{\"text\":\"<｜User｜>\"}\n"));
    snprintf(cmd, sizeof(cmd), "%s/mlaserve tokenize --tokenizer %s < %s > %s 2>/dev/null",
             MLS_BIN_DIR, dir, in, out);
    int rc = system(cmd);
    CHECK(WIFEXITED(rc) && WEXITSTATUS(rc) == 1);
    char *got = read_all(out, &len);
    CHECK(got != NULL);
    const char *want_lines[] = {
        "{\"ids\":[19923,2058]}",
        "{\"ids\":[0,3476,477,260,11502,22896,16,128803,19923,3,128804]}",
        NULL, /* error */
        NULL, /* error */
        "{\"ids\":[128803]}",
    };
    char *p = got;
    for (int i = 0; i < 5; i++) {
        char *nl = strchr(p, '\n');
        CHECK_MSG(nl != NULL, "output has %d lines, want 5: %s", i, got);
        *nl = '\0';
        if (want_lines[i] != NULL) {
            CHECK_STR_EQ(p, want_lines[i]);
        } else {
            CHECK_MSG(strncmp(p, "{\"error\":\"", 10) == 0, "line %d: %s", i + 1, p);
        }
        p = nl + 1;
    }
    CHECK(*p == '\0');
    free(got);

    /* --decode: ids back to text, JSON-escaped */
    CHECK(write_file(
        in, "{\"ids\":[19923,2058,201]}\n{\"ids\":[0,19923],\"skip_special_tokens\":true}\n"));
    snprintf(cmd, sizeof(cmd), "%s/mlaserve tokenize --tokenizer %s --decode < %s > %s",
             MLS_BIN_DIR, dir, in, out);
    rc = system(cmd);
    CHECK(WIFEXITED(rc) && WEXITSTATUS(rc) == 0);
    got = read_all(out, &len);
    CHECK(got != NULL);
    CHECK_STR_EQ(got, "{\"text\":\"Hello world\\n\"}\n{\"text\":\"Hello\"}\n");
    free(got);

    snprintf(cmd, sizeof(cmd), "%s/mlaserve tokenize --help > /dev/null", MLS_BIN_DIR);
    rc = system(cmd);
    CHECK(WIFEXITED(rc) && WEXITSTATUS(rc) == 0);
    snprintf(cmd, sizeof(cmd),
             "%s/mlaserve tokenize --tokenizer /nonexistent < /dev/null 2>/dev/null", MLS_BIN_DIR);
    rc = system(cmd);
    CHECK(WIFEXITED(rc) && WEXITSTATUS(rc) == 1);
    unlink(in);
    unlink(out);
}

/* ---- main ---------------------------------------------------------------- */

static tok_tokenizer *load_fixture(const char *name)
{
    char rel[256], path[512];
    tok_tokenizer *tok = NULL;
    mls_err err;
    snprintf(rel, sizeof(rel), FIX_DIR "/%s", name);
    if (mls_test_fixture_path(rel, path, sizeof(path)) == NULL) {
        return NULL;
    }
    if (tok_tokenizer_load(path, &tok, &err) != MLS_OK) {
        fprintf(stderr, "  load %s: %s\n", path, err.msg);
        return NULL;
    }
    return tok;
}

static void test_load_fixtures(void)
{
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    g_gpt2 = load_fixture("gpt2");
    g_ds = load_fixture("deepseek-v3");
    clock_gettime(CLOCK_MONOTONIC, &t1);
    CHECK_MSG(g_gpt2 != NULL && g_ds != NULL, "the tokenizers under %s/" FIX_DIR " did not load",
              MLS_FIXTURES_DIR);
    fprintf(stderr, "  loaded both in %.0f ms, %lld bytes under TOKENIZER\n",
            ((double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9) * 1e3,
            (long long)mls_alloc_bytes(MLS_ALLOC_TAG_TOKENIZER));
}

int main(void)
{
    snprintf(g_tmp, sizeof(g_tmp), "/tmp/test_tokenizer.XXXXXX");
    if (mkdtemp(g_tmp) == NULL) {
        perror("mkdtemp");
        return 1;
    }
    MLS_TEST_RUN(test_synthetic);
    MLS_TEST_RUN(test_malformed);
    MLS_TEST_RUN(test_load_fixtures);
    MLS_TEST_RUN(test_vocab_api);
    MLS_TEST_RUN(test_encode_edges);
    MLS_TEST_RUN(test_gpt2_cases);
    MLS_TEST_RUN(test_deepseek_cases);
    MLS_TEST_RUN(test_deepseek_chat);
    MLS_TEST_RUN(test_deepseek_chat_rules);
    MLS_TEST_RUN(test_encode_speed);
    MLS_TEST_RUN(test_threads);
    MLS_TEST_RUN(test_cli);
    tok_tokenizer_destroy(g_gpt2);
    tok_tokenizer_destroy(g_ds);
    if (mls_alloc_bytes(MLS_ALLOC_TAG_TOKENIZER) != 0) {
        fprintf(stderr, "FAIL: %lld bytes still held under TOKENIZER\n",
                (long long)mls_alloc_bytes(MLS_ALLOC_TAG_TOKENIZER));
        mls_test_failed_count++;
    }
    rmdir(g_tmp);
    return MLS_TEST_DONE();
}
