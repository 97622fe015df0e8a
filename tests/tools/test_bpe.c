/*
 * test_bpe.c - the byte-level BPE trainer (tools/bpe_train.h) and genmodel's
 * tokenizer options: hand-checked merges and ids on a tiny corpus (tie-break
 * included), determinism, the tokenizer.json/tokenizer_config.json fields read
 * back with cJSON, encode/decode round trips with the project's tokenizer (when
 * built) with exactly the token count the trainer reports, the DeepSeek chat
 * format, and `genmodel --preset demo` producing a checkpoint + tokenizer that
 * load and are byte-identical across runs.
 */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <stdarg.h>
#include <stdbool.h>
#include <sys/stat.h>

#include "bpe_train.h"
#include "loader_check.h"
#include "mls_cli.h"
#include "mls_status.h"
#include "mls_test.h"
#include "tok.h"

static char tmp_root[256];

static const char *tmp_path(const char *name, char *buf, size_t len)
{
    if (tmp_root[0] == 0) {
        snprintf(tmp_root, sizeof(tmp_root), "/tmp/mls_bpe_XXXXXX");
        if (mkdtemp(tmp_root) == NULL) {
            tmp_root[0] = 0;
        }
    }
    snprintf(buf, len, "%s/%s", tmp_root, name);
    return buf;
}

static bool write_file(const char *path, const char *text, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (f == NULL) {
        return false;
    }
    bool ok = fwrite(text, 1, len, f) == len;
    return (fclose(f) == 0) && ok;
}

/* A deterministic English-like text of about `bytes` bytes (malloc'ed): common words
 * and made-up ones of 1-3 syllables, with spaces, newlines and full stops. */
static char *make_corpus(size_t bytes, uint32_t seed, size_t *len_p)
{
    static const char *const words[] = {
        "the",   "model", "serves",    "tokens", "with", "latent", "attention",
        "of",    "and",   "a",         "to",     "in",   "is",     "it's",
        "we'll", "GPU",   "2024",      "42",     "3.14", "(see",   "below)",
        "--",    "e.g.,", "\"quote\"", "naïve",  "café", "über",   "x+y=z",
    };
    static const char *const syl[] = {"ka",  "ro",  "mi", "ten", "sul", "pra", "de",  "vo",
                                      "lin", "gar", "zu", "que", "ish", "on",  "ble", "tor"};
    const size_t nw = sizeof(words) / sizeof(words[0]), ns = sizeof(syl) / sizeof(syl[0]);
    char *buf = malloc(bytes + 64);
    size_t len = 0;
    uint32_t x = seed;
    while (buf != NULL && len < bytes) {
        x = x * 1664525u + 1013904223u;
        if ((x >> 28) < 8) {
            const char *w = words[(x >> 8) % nw];
            memcpy(buf + len, w, strlen(w));
            len += strlen(w);
        } else {
            for (uint32_t k = 0, n = 1 + (x >> 4) % 3; k < n; k++) {
                const char *w = syl[(x >> (8 + 4 * k)) % ns];
                memcpy(buf + len, w, strlen(w));
                len += strlen(w);
            }
        }
        uint32_t r = (x >> 20) % 16;
        buf[len++] = r == 0 ? '\n' : r == 1 ? '.' : ' ';
        if (r == 1) {
            buf[len++] = ' ';
        }
    }
    *len_p = len;
    return buf;
}

static char *read_all(const char *path, size_t *len_p)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        return NULL;
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    if (buf != NULL && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf != NULL) {
        buf[n] = 0;
        *len_p = (size_t)n;
    }
    return buf;
}

static bool same_file(const char *a, const char *b)
{
    size_t na = 0, nb = 0;
    char *x = read_all(a, &na), *y = read_all(b, &nb);
    bool same = x != NULL && y != NULL && na == nb && memcmp(x, y, na) == 0;
    free(x);
    free(y);
    return same;
}

static int genmodel(const char *first, ...)
{
    char *argv[32];
    int argc = 0;
    va_list ap;
    argv[argc++] = (char *)"genmodel";
    va_start(ap, first);
    for (const char *a = first; a != NULL && argc < 31; a = va_arg(ap, const char *)) {
        argv[argc++] = (char *)a;
    }
    va_end(ap);
    argv[argc] = NULL;
    return mls_cmd_genmodel(argc, argv);
}

static mls_status train_text(int32_t vocab, int64_t min_count, const char *text, size_t len,
                             bpe_trainer **tr_p, mls_err *err)
{
    bpe_params p = {.vocab_size = vocab,
                    .added = bpe_deepseek_added,
                    .n_added = bpe_deepseek_n_added,
                    .min_pair_count = min_count};
    mls_status st = bpe_trainer_create(&p, tr_p, err);
    if (st == MLS_OK) {
        st = bpe_trainer_feed(*tr_p, text, len, "test text", err);
    }
    if (st == MLS_OK) {
        st = bpe_trainer_run(*tr_p, err);
    }
    return st;
}

static bool token_is(const bpe_trainer *tr, int32_t id, const char *want)
{
    size_t n = 0;
    const char *s = bpe_trainer_token(tr, id, &n);
    return s != NULL && n == strlen(want) && memcmp(s, want, n) == 0;
}

/* ids: 13 added tokens, then "!" = 13 ... "~" = 106 (printable ASCII), "a" = 77; the
 * 188 printable bytes come first, so " " (the 33rd other byte) is "Ġ" = 13+188+32. */
enum { ID_A = 13 + ('a' - '!'), ID_B = ID_A + 1, ID_SPACE = 13 + 188 + 32, ID_FIRST = 13 + 256 };

/*
 * "aaab aaab aaab aaab": words "aaab" x1, "Ġaaab" x3. Counts: (a,a) 8, (a,b) 4,
 * (Ġ,a) 3 -> merge a+a. Then (aa,a) 4 and (a,b) 4 tie: "a" < "aa", so a+b. Then
 * aa+ab (4), then Ġ+aaab (3), then nothing is left to merge.
 */
static void test_tiny_merges(void)
{
    static const char text[] = "aaab aaab aaab aaab";
    bpe_trainer *tr = NULL;
    mls_err err = {{0}};
    CHECK_OK(train_text(300, 1, text, sizeof(text) - 1, &tr, &err));
    CHECK(token_is(tr, ID_A, "a") && token_is(tr, ID_B, "b"));
    CHECK(token_is(tr, ID_SPACE, "\xc4\xa0")); /* Ġ */
    CHECK(token_is(tr, 13, "!") && token_is(tr, 0, bpe_deepseek_added[0].content));
    CHECK_EQ_INT(bpe_trainer_n_merges(tr), 4);
    CHECK_EQ_INT(bpe_trainer_vocab_size(tr), ID_FIRST + 4);
    static const struct {
        int32_t l, r;
        const char *tok;
    } want[] = {{ID_A, ID_A, "aa"},
                {ID_A, ID_B, "ab"},
                {ID_FIRST, ID_FIRST + 1, "aaab"},
                {ID_SPACE, ID_FIRST + 2,
                 "\xc4\xa0"
                 "aaab"}};
    for (int i = 0; i < 4; i++) {
        int32_t l = -1, r = -1;
        CHECK(bpe_trainer_merge(tr, i, &l, &r));
        CHECK_EQ_INT(l, want[i].l);
        CHECK_EQ_INT(r, want[i].r);
        CHECK(token_is(tr, ID_FIRST + i, want[i].tok));
    }
    bpe_stats st;
    bpe_trainer_stats(tr, &st);
    CHECK_EQ_INT((int)st.bytes, 19);
    CHECK_EQ_INT((int)st.words, 4);
    CHECK_EQ_INT((int)st.unique_words, 2);
    CHECK_EQ_INT((int)st.tokens, 4);
    bpe_trainer_destroy(tr);

    /* min_pair_count 4 stops before Ġ+aaab (3 occurrences) */
    tr = NULL;
    CHECK_OK(train_text(300, 4, text, sizeof(text) - 1, &tr, &err));
    CHECK_EQ_INT(bpe_trainer_n_merges(tr), 3);
    bpe_trainer_destroy(tr);
    /* a small vocab stops after the first merge */
    tr = NULL;
    CHECK_OK(train_text(ID_FIRST + 1, 1, text, sizeof(text) - 1, &tr, &err));
    CHECK_EQ_INT(bpe_trainer_n_merges(tr), 1);
    bpe_trainer_destroy(tr);
}

static void test_bad_input(void)
{
    bpe_trainer *tr = NULL;
    mls_err err = {{0}};
    bpe_params p = {.vocab_size = 200, .added = bpe_deepseek_added, .n_added = 13};
    CHECK_STATUS(bpe_trainer_create(&p, &tr, &err), MLS_ERR_INVALID_ARG);
    bpe_added_token dup[] = {{"<x>", true}, {"<x>", false}};
    p = (bpe_params){.vocab_size = 400, .added = dup, .n_added = 2};
    CHECK_STATUS(bpe_trainer_create(&p, &tr, &err), MLS_ERR_INVALID_ARG);
    p.n_added = 1;
    CHECK_OK(bpe_trainer_create(&p, &tr, &err));
    CHECK_STATUS(bpe_trainer_feed(tr, "ok \xff\xfe", 5, "bad.txt", &err), MLS_ERR_INVALID_ARG);
    CHECK(strstr(err.msg, "bad.txt") != NULL && strstr(err.msg, "byte 3") != NULL);
    CHECK_STATUS(bpe_trainer_feed(tr, "trunc \xe2\x96", 8, "t", &err), MLS_ERR_INVALID_ARG);
    CHECK_STATUS(bpe_trainer_feed_file(tr, "/nonexistent/corpus.txt", &err), MLS_ERR_IO);
    CHECK_OK(bpe_trainer_feed(tr, "hello hello", 11, "t", &err));
    bpe_stats st;
    bpe_trainer_stats(tr, &st);
    CHECK_EQ_INT((int)st.bytes, 11); /* failed feeds counted nothing */
    CHECK_EQ_INT((int)st.unique_words, 2);
    CHECK_OK(bpe_trainer_run(tr, &err));
    CHECK_STATUS(bpe_trainer_run(tr, &err), MLS_ERR_UNSUPPORTED);
    CHECK_STATUS(bpe_trainer_feed(tr, "x", 1, "t", &err), MLS_ERR_UNSUPPORTED);
    bpe_trainer_destroy(tr);
}

static const cJSON *jget(const cJSON *o, const char *k)
{
    return cJSON_GetObjectItemCaseSensitive(o, k);
}

/* tokenizer.json as the fixtures spell it, vocab/merges consistent with the trainer. */
static void check_tokenizer_json(const char *path, const bpe_trainer *tr)
{
    size_t len = 0;
    char *text = read_all(path, &len);
    CHECK(text != NULL);
    cJSON *j = cJSON_ParseWithLength(text, len);
    free(text);
    CHECK(j != NULL);
    CHECK_STR_EQ(jget(j, "version")->valuestring, "1.0");
    CHECK(cJSON_IsNull(jget(j, "normalizer")) && cJSON_IsNull(jget(j, "truncation")));
    const cJSON *pre = jget(j, "pre_tokenizer"), *dec = jget(j, "decoder");
    CHECK_STR_EQ(jget(pre, "type")->valuestring, "ByteLevel");
    CHECK(cJSON_IsFalse(jget(pre, "add_prefix_space")) && cJSON_IsTrue(jget(pre, "use_regex")));
    CHECK_STR_EQ(jget(dec, "type")->valuestring, "ByteLevel");
    const cJSON *model = jget(j, "model"), *vocab = jget(model, "vocab"),
                *merges = jget(model, "merges"), *added = jget(j, "added_tokens");
    CHECK_STR_EQ(jget(model, "type")->valuestring, "BPE");
    CHECK(cJSON_IsNull(jget(model, "dropout")) && cJSON_IsFalse(jget(model, "byte_fallback")));
    CHECK_EQ_INT(cJSON_GetArraySize(vocab), bpe_trainer_vocab_size(tr));
    CHECK_EQ_INT(cJSON_GetArraySize(merges), bpe_trainer_n_merges(tr));
    CHECK_EQ_INT(cJSON_GetArraySize(added), (int)bpe_deepseek_n_added);
    int i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, added)
    {
        CHECK_EQ_INT(jget(e, "id")->valueint, i);
        CHECK_STR_EQ(jget(e, "content")->valuestring, bpe_deepseek_added[i].content);
        CHECK(cJSON_IsTrue(jget(e, "special")) == (i < 2));
        CHECK_EQ_INT(jget(vocab, bpe_deepseek_added[i].content)->valueint, i);
        i++;
    }
    i = 0;
    cJSON_ArrayForEach(e, vocab) /* written in id order; the keys are the spellings */
    {
        size_t n = 0;
        const char *s = bpe_trainer_token(tr, i, &n);
        CHECK_EQ_INT(e->valueint, i);
        CHECK(s != NULL && strlen(e->string) == n && memcmp(e->string, s, n) == 0);
        i++;
    }
    i = 0;
    cJSON_ArrayForEach(e, merges)
    {
        int32_t l, r;
        size_t nl, nr;
        CHECK(bpe_trainer_merge(tr, i, &l, &r));
        const char *sl = bpe_trainer_token(tr, l, &nl), *sr = bpe_trainer_token(tr, r, &nr);
        CHECK_EQ_INT(cJSON_GetArraySize(e), 2);
        CHECK(strlen(cJSON_GetArrayItem(e, 0)->valuestring) == nl &&
              memcmp(cJSON_GetArrayItem(e, 0)->valuestring, sl, nl) == 0);
        CHECK(strlen(cJSON_GetArrayItem(e, 1)->valuestring) == nr &&
              memcmp(cJSON_GetArrayItem(e, 1)->valuestring, sr, nr) == 0);
        i++;
    }
    cJSON_Delete(j);
}

/* Train twice on the same text: the same file; read back it matches the trainer. */
static void test_determinism_and_json(void)
{
    size_t len = 0;
    char *text = make_corpus(200000, 7, &len), a[300], b[300];
    bpe_trainer *t1 = NULL, *t2 = NULL;
    mls_err err = {{0}};
    CHECK(text != NULL);
    CHECK_OK(train_text(1000, 1, text, len, &t1, &err));
    CHECK_OK(train_text(1000, 1, text, len, &t2, &err));
    free(text);
    CHECK_OK(bpe_trainer_write_json(t1, tmp_path("det1.json", a, sizeof(a)), &err));
    CHECK_OK(bpe_trainer_write_json(t2, tmp_path("det2.json", b, sizeof(b)), &err));
    CHECK(same_file(a, b));
    CHECK_EQ_INT(bpe_trainer_vocab_size(t1), 1000);
    bpe_stats st;
    bpe_trainer_stats(t1, &st);
    CHECK(st.tokens > 0 && st.tokens * 3 < st.bytes); /* this repetitive text compresses well */
    check_tokenizer_json(a, t1);
    bpe_trainer_destroy(t1);
    bpe_trainer_destroy(t2);
    unlink(a);
    unlink(b);
}

static void test_config_json(void)
{
    char path[300];
    mls_err err = {{0}};
    size_t len = 0;
    CHECK_OK(bpe_write_deepseek_config(tmp_path("tokenizer_config.json", path, sizeof(path)), 4096,
                                       &err));
    char *text = read_all(path, &len);
    CHECK(text != NULL);
    cJSON *j = cJSON_ParseWithLength(text, len);
    free(text);
    CHECK(j != NULL);
    CHECK(cJSON_IsTrue(jget(j, "add_bos_token")) && cJSON_IsFalse(jget(j, "add_eos_token")));
    CHECK_STR_EQ(jget(jget(j, "bos_token"), "content")->valuestring, bpe_deepseek_added[0].content);
    CHECK_STR_EQ(jget(jget(j, "eos_token"), "content")->valuestring, bpe_deepseek_added[1].content);
    CHECK_EQ_INT(jget(j, "model_max_length")->valueint, 4096);
    CHECK_STR_EQ(jget(j, "chat_template")->valuestring, bpe_deepseek_chat_template);
    cJSON_Delete(j);
    unlink(path);
}

/* Encode each text with the loaded tokenizer; round trip and count. */
static void check_encode(const tok_tokenizer *tok, const char *text, size_t len, uint64_t *ntok_p)
{
    tok_ids ids = {0};
    mls_err err = {{0}};
    char *back = NULL;
    size_t blen = 0;
    CHECK_OK(tok_encode(tok, text, len, &ids, &err));
    CHECK_OK(tok_decode(tok, ids.ids, ids.n, false, &back, &blen, &err));
    CHECK_EQ_INT((long)blen, (long)len);
    CHECK(memcmp(back, text, len) == 0);
    *ntok_p += ids.n;
    free(back);
    tok_ids_free(&ids);
}

/* The written files load in the project's tokenizer; encoding reproduces training. */
static void test_tokenizer_roundtrip(void)
{
    char dir[300], path[400];
    size_t l1 = 0, l2 = 0;
    char *t1 = make_corpus(150000, 11, &l1), *t2 = make_corpus(50000, 12, &l2);
    bpe_params p = {.vocab_size = 2048,
                    .added = bpe_deepseek_added,
                    .n_added = bpe_deepseek_n_added,
                    .min_pair_count = 2};
    bpe_trainer *tr = NULL;
    tok_tokenizer *tok = NULL;
    mls_err err = {{0}};
    CHECK(t1 != NULL && t2 != NULL);
    CHECK_OK(bpe_trainer_create(&p, &tr, &err));
    CHECK_OK(bpe_trainer_feed(tr, t1, l1, "t1", &err));
    CHECK_OK(bpe_trainer_feed(tr, t2, l2, "t2", &err));
    CHECK_OK(bpe_trainer_run(tr, &err));
    tmp_path("tok", dir, sizeof(dir));
    CHECK(mkdir(dir, 0777) == 0);
    snprintf(path, sizeof(path), "%s/tokenizer.json", dir);
    CHECK_OK(bpe_trainer_write_json(tr, path, &err));
    snprintf(path, sizeof(path), "%s/tokenizer_config.json", dir);
    CHECK_OK(bpe_write_deepseek_config(path, 4096, &err));
    CHECK_OK(tok_tokenizer_load(dir, &tok, &err));

    CHECK_EQ_INT(tok_vocab_size(tok), bpe_trainer_vocab_size(tr));
    CHECK_EQ_INT(tok_bos_id(tok), 0);
    CHECK_EQ_INT(tok_eos_id(tok), 1);
    CHECK(tok_add_bos(tok));
    for (int32_t i = 0; i < 4; i++) {
        const char *s = bpe_deepseek_added[i].content;
        CHECK_EQ_INT(tok_token_to_id(tok, s, strlen(s)), i);
        CHECK(tok_is_added(tok, i));
    }
    CHECK(tok_is_special(tok, 0) && tok_is_special(tok, 1) && !tok_is_special(tok, 2));

    bpe_stats st;
    bpe_trainer_stats(tr, &st);
    uint64_t ntok = 0;
    check_encode(tok, t1, l1, &ntok);
    check_encode(tok, t2, l2, &ntok);
    /* BPE encoding applies the merges in rank order, as training did: same count. */
    CHECK_EQ_INT((long)ntok, (long)st.tokens);
    CHECK(ntok * 2 < l1 + l2);
    static const char other[] = "Unseen words: zebra quokka 東京 🙂, and \"naïve\" café.\n";
    uint64_t n_other = 0;
    check_encode(tok, other, sizeof(other) - 1, &n_other);

    /* The chat template renders the DeepSeek format and the tags encode as their ids. */
    tok_chat_msg msgs[] = {{.role = "system", .content = "Be brief."},
                           {.role = "user", .content = "Hi"},
                           {.role = "assistant", .content = "Hello"},
                           {.role = "user", .content = "Bye"}};
    char *text = NULL;
    size_t tlen = 0;
    CHECK_OK(tok_chat_render(tok, msgs, 4, true, &text, &tlen, &err));
    const char *want_fmt = "%sBe brief.%sHi%sHello%s%sBye%s";
    char want[512];
    snprintf(want, sizeof(want), want_fmt, bpe_deepseek_added[0].content,
             bpe_deepseek_added[2].content, bpe_deepseek_added[3].content,
             bpe_deepseek_added[1].content, bpe_deepseek_added[2].content,
             bpe_deepseek_added[3].content);
    CHECK_STR_EQ(text, want);
    free(text);
    tok_ids ids = {0};
    CHECK_OK(tok_chat_encode(tok, msgs + 1, 1, true, &ids, &err));
    CHECK(ids.n >= 3);
    CHECK_EQ_INT(ids.ids[0], 0);
    CHECK_EQ_INT(ids.ids[1], 2);
    CHECK_EQ_INT(ids.ids[ids.n - 1], 3);
    tok_ids_free(&ids);

    tok_tokenizer_destroy(tok);
    bpe_trainer_destroy(tr);
    free(t1);
    free(t2);
    lc_rmdir(dir);
}

static const char *const out_files[] = {"config.json", "model.safetensors", "tokenizer.json",
                                        "tokenizer_config.json"};

static bool exists(const char *dir, const char *name)
{
    char path[400];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    return access(path, F_OK) == 0;
}

/* --tokenizer-corpus on the tiny preset: vocab follows the tokenizer; errors are clean. */
static void test_genmodel_options(void)
{
    char corpus[300], bad[300], dir[300], arg[700], path[400];
    size_t len = 0;
    char *text = make_corpus(30000, 3, &len);
    CHECK(text != NULL && write_file(tmp_path("corpus.txt", corpus, sizeof(corpus)), text, len));
    free(text);
    CHECK(write_file(tmp_path("bad.txt", bad, sizeof(bad)), "a\xff", 2));
    tmp_path("opt", dir, sizeof(dir));
    snprintf(arg, sizeof(arg), "%s,%s", corpus, corpus);
    CHECK_EQ_INT(
        genmodel("--out", dir, "--tokenizer-corpus", arg, "--tokenizer-vocab", "400", NULL), 0);
    eng_config cfg;
    mls_err err = {{0}};
    snprintf(path, sizeof(path), "%s/config.json", dir);
    CHECK_OK(eng_config_load(path, &cfg, &err));
    CHECK_EQ_INT(cfg.vocab_size, 400);
    CHECK_EQ_INT(cfg.bos_token_id, 0);
    CHECK_EQ_INT(cfg.eos_token_id, 1);
    CHECK(exists(dir, "tokenizer.json") && exists(dir, "tokenizer_config.json"));
    /* the tokenizer files count as outputs: refused without --force */
    CHECK_EQ_INT(genmodel("--out", dir, "--tokenizer-corpus", corpus, NULL), 1);
    CHECK_EQ_INT(genmodel("--out", dir, "--tokenizer-corpus", bad, "--force", NULL), 1);
    CHECK_EQ_INT(genmodel("--out", dir, "--tokenizer-corpus", "/nonexistent/x", "--force", NULL),
                 1);
    CHECK_EQ_INT(genmodel("--out", dir, "--tokenizer-vocab", "300", NULL), 2);
    CHECK_EQ_INT(genmodel("--out", dir, "--tokenizer-corpus", corpus, "--tokenizer-vocab", "100",
                          "--force", NULL),
                 1); /* fewer ids than added + byte tokens */
    lc_rmdir(dir);
    unlink(corpus);
    unlink(bad);
}

static bool demo_corpus_present(void)
{
    for (size_t i = 0; i < bpe_demo_corpus_n; i++) {
        if (access(bpe_demo_corpus[i], R_OK) == 0) {
            return true;
        }
    }
    return false;
}

/* --preset demo: weights + tokenizer that load, deterministic in the seed. */
static void test_genmodel_demo(void)
{
    char d1[300], d2[300], d3[300], path[400];
    tmp_path("demo1", d1, sizeof(d1));
    tmp_path("demo2", d2, sizeof(d2));
    tmp_path("demo3", d3, sizeof(d3));
    if (!demo_corpus_present()) {
        CHECK_EQ_INT(genmodel("--preset", "demo", "--out", d1, NULL), 1);
        MLS_TEST_SKIP("no /usr/share/common-licenses texts: the demo corpus is absent");
    }
    CHECK_EQ_INT(genmodel("--preset", "demo", "--out", d1, NULL), 0);
    CHECK_EQ_INT(genmodel("--preset", "demo", "--out", d2, NULL), 0);
    for (size_t i = 0; i < sizeof(out_files) / sizeof(out_files[0]); i++) {
        char a[400], b[400];
        snprintf(a, sizeof(a), "%s/%s", d1, out_files[i]);
        snprintf(b, sizeof(b), "%s/%s", d2, out_files[i]);
        CHECK_MSG(same_file(a, b), "%s differs between two runs", out_files[i]);
    }
    eng_config cfg;
    st_archive *ar = NULL;
    mls_err err = {{0}};
    snprintf(path, sizeof(path), "%s/config.json", d1);
    CHECK_OK(eng_config_load(path, &cfg, &err));
    CHECK_STR_EQ(cfg.model_type, "deepseek_v2");
    CHECK_EQ_INT(cfg.vocab_size, 4096);
    CHECK_EQ_INT(cfg.bos_token_id, 0);
    CHECK_EQ_INT(cfg.eos_token_id, 1);
    CHECK_EQ_INT(cfg.hidden_size, 256);
    CHECK_EQ_INT(cfg.num_hidden_layers, 4);
    CHECK_EQ_INT(cfg.q_lora_rank, 0);
    CHECK_EQ_INT(cfg.kv_lora_rank, 128);
    CHECK_EQ_INT(cfg.qk_rope_head_dim, 32);
    CHECK_EQ_INT(cfg.n_routed_experts, 8);
    CHECK_EQ_INT(cfg.num_experts_per_tok, 2);
    CHECK_EQ_INT((int)cfg.max_position_embeddings, 4096);
    CHECK(!cfg.rope_yarn && !cfg.fp8);
    CHECK_OK(st_open_dir(d1, &ar, &err));
    mls_status cst = lc_check_model(ar, &cfg, &err);
    st_close(ar);
    CHECK_MSG(cst == MLS_OK, "%s", err.msg);
    tok_tokenizer *tok = NULL;
    CHECK_OK(tok_tokenizer_load(d1, &tok, &err));
    CHECK_EQ_INT(tok_vocab_size(tok), cfg.vocab_size);
    CHECK_EQ_INT(tok_bos_id(tok), cfg.bos_token_id);
    CHECK_EQ_INT(tok_eos_id(tok), cfg.eos_token_id);
    static const char gpl[] = "This program is free software: you can redistribute it.";
    tok_ids ids = {0};
    CHECK_OK(tok_encode(tok, gpl, sizeof(gpl) - 1, &ids, &err));
    CHECK(ids.n > 0 && ids.n * 3 < sizeof(gpl)); /* seen text: long tokens */
    tok_ids_free(&ids);
    tok_tokenizer_destroy(tok);
    /* another seed changes the weights, not the tokenizer; --no-tokenizer writes none */
    CHECK_EQ_INT(genmodel("--preset", "demo", "--out", d2, "--seed", "2", "--force", NULL), 0);
    char a[400], b[400];
    snprintf(a, sizeof(a), "%s/model.safetensors", d1);
    snprintf(b, sizeof(b), "%s/model.safetensors", d2);
    CHECK(!same_file(a, b));
    snprintf(a, sizeof(a), "%s/tokenizer.json", d1);
    snprintf(b, sizeof(b), "%s/tokenizer.json", d2);
    CHECK(same_file(a, b));
    CHECK_EQ_INT(genmodel("--preset", "demo", "--out", d3, "--no-tokenizer", NULL), 0);
    CHECK(exists(d3, "config.json") && !exists(d3, "tokenizer.json"));
    lc_rmdir(d1);
    lc_rmdir(d2);
    lc_rmdir(d3);
}

int main(void)
{
    MLS_TEST_RUN(test_tiny_merges);
    MLS_TEST_RUN(test_bad_input);
    MLS_TEST_RUN(test_determinism_and_json);
    MLS_TEST_RUN(test_config_json);
    MLS_TEST_RUN(test_tokenizer_roundtrip);
    MLS_TEST_RUN(test_genmodel_options);
    MLS_TEST_RUN(test_genmodel_demo);
    if (tmp_root[0] != 0) {
        rmdir(tmp_root);
    }
    return MLS_TEST_DONE();
}
