/*
 * tok_load.c - loading a Hugging Face tokenizer.json (+ tokenizer_config.json)
 * into the immutable tables of a tok_tokenizer, and the vocabulary lookups.
 *
 * Everything the file says is checked against what this code can reproduce
 * exactly; anything else is refused with the field named, never approximated.
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mls_log.h"
#include "tok_internal.h"

/* The GPT-2 pre-tokenizer regex (HF ByteLevel with use_regex). */
static const char tok_gpt2_regex[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

/* tok_hash_bytes of the DeepSeek-V3 chat_template (deepseek-ai/DeepSeek-V3
 * tokenizer_config.json), the one template tok_chat.c renders exactly. */
#define TOK_CHAT_V3_HASH 0xebe3604609c74460ull /* 2301 bytes */
/* The template `mlaserve genmodel` writes for its own tokenizers
 * (tools/bpe_deepseek.c): written independently, it renders exactly as V3's. */
#define TOK_CHAT_MLASERVE_HASH 0xa4a03529692fc71cull /* 1743 bytes */

typedef struct {
    const char *file; /* for messages */
    mls_err *err;
} tok_load_ctx;

/* ---- JSON helpers -------------------------------------------------------- */

static char *tok_read_file(const char *path, size_t *len_p, mls_err *err, mls_status *st_p)
{
    FILE *f = fopen(path, "rb");
    char *buf = NULL;
    long size;

    if (f == NULL) {
        mls_err_set(err, "%s: cannot open: %s", path, strerror(errno));
        *st_p = errno == ENOENT ? MLS_ERR_NOT_FOUND : MLS_ERR_IO;
        return NULL;
    }
    if (fseek(f, 0, SEEK_END) != 0 || (size = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0) {
        mls_err_set(err, "%s: cannot size: %s", path, strerror(errno));
        *st_p = MLS_ERR_IO;
        goto out_close_file;
    }
    buf = malloc((size_t)size + 1);
    if (buf == NULL) {
        mls_err_set(err, "%s: out of memory for %ld bytes", path, size);
        *st_p = MLS_ERR_NO_MEMORY;
        goto out_close_file;
    }
    if (fread(buf, 1, (size_t)size, f) != (size_t)size) {
        mls_err_set(err, "%s: read error", path);
        *st_p = MLS_ERR_IO;
        free(buf);
        buf = NULL;
        goto out_close_file;
    }
    buf[size] = '\0';
    *len_p = (size_t)size;
out_close_file:
    fclose(f);
    return buf;
}

static cJSON *tok_parse_json(const char *path, const char *buf, size_t len, mls_err *err)
{
    const char *end = NULL;
    cJSON *j = cJSON_ParseWithLengthOpts(buf, len, &end, false);
    if (j == NULL) {
        size_t off = end && end >= buf ? (size_t)(end - buf) : 0;
        size_t line = 1;
        for (size_t i = 0; i < off && i < len; i++) {
            line += buf[i] == '\n';
        }
        mls_err_set(err, "%s: not valid JSON (near byte %zu, line %zu)", path, off, line);
    }
    return j;
}

/* Optional boolean field: absent/null -> dflt; another type -> parse error. */
static bool tok_get_bool(const cJSON *obj, const char *key, bool dflt, const char *where,
                         tok_load_ctx *c, mls_status *st_p)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (v == NULL || cJSON_IsNull(v)) {
        return dflt;
    }
    if (!cJSON_IsBool(v)) {
        mls_err_set(c->err, "%s: %s.%s must be true or false", c->file, where, key);
        *st_p = MLS_ERR_PARSE;
        return dflt;
    }
    return cJSON_IsTrue(v);
}

static bool tok_json_id(const cJSON *v, int32_t *id_p)
{
    if (!cJSON_IsNumber(v) || v->valuedouble < 0 || v->valuedouble > (double)(1 << 30) ||
        v->valuedouble != (double)(int32_t)v->valuedouble) {
        return false;
    }
    *id_p = (int32_t)v->valuedouble;
    return true;
}

/* ---- sections ------------------------------------------------------------ */

static mls_status tok_load_model_check(const cJSON *model, tok_load_ctx *c)
{
    const cJSON *v;

    if (!cJSON_IsObject(model)) {
        mls_err_set(c->err, "%s: \"model\" missing or not an object", c->file);
        return MLS_ERR_PARSE;
    }
    v = cJSON_GetObjectItemCaseSensitive(model, "type");
    if (v != NULL && !(cJSON_IsString(v) && strcmp(v->valuestring, "BPE") == 0)) {
        mls_err_set(c->err, "%s: model.type %s is not supported (only BPE)", c->file,
                    cJSON_IsString(v) ? v->valuestring : "(not a string)");
        return MLS_ERR_UNSUPPORTED;
    }
    v = cJSON_GetObjectItemCaseSensitive(model, "dropout");
    if (v != NULL && !cJSON_IsNull(v) && !(cJSON_IsNumber(v) && v->valuedouble == 0)) {
        mls_err_set(c->err, "%s: model.dropout is not supported", c->file);
        return MLS_ERR_UNSUPPORTED;
    }
    v = cJSON_GetObjectItemCaseSensitive(model, "byte_fallback");
    if (cJSON_IsTrue(v)) {
        mls_err_set(c->err, "%s: model.byte_fallback is not supported", c->file);
        return MLS_ERR_UNSUPPORTED;
    }
    const char *affixes[] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (int i = 0; i < 2; i++) {
        v = cJSON_GetObjectItemCaseSensitive(model, affixes[i]);
        if (v != NULL && !cJSON_IsNull(v) && !(cJSON_IsString(v) && v->valuestring[0] == '\0')) {
            mls_err_set(c->err, "%s: model.%s is not supported", c->file, affixes[i]);
            return MLS_ERR_UNSUPPORTED;
        }
    }
    return MLS_OK;
}

static mls_status tok_load_normalizer(const cJSON *n, tok_load_ctx *c, const char *where)
{
    const cJSON *type, *list, *e;

    if (n == NULL || cJSON_IsNull(n)) {
        return MLS_OK;
    }
    type = cJSON_GetObjectItemCaseSensitive(n, "type");
    if (!cJSON_IsString(type)) {
        mls_err_set(c->err, "%s: %s has no \"type\"", c->file, where);
        return MLS_ERR_PARSE;
    }
    if (strcmp(type->valuestring, "Sequence") != 0) {
        mls_err_set(c->err, "%s: %s type %s is not supported (only none or an empty Sequence)",
                    c->file, where, type->valuestring);
        return MLS_ERR_UNSUPPORTED;
    }
    list = cJSON_GetObjectItemCaseSensitive(n, "normalizers");
    if (!cJSON_IsArray(list)) {
        mls_err_set(c->err, "%s: %s.normalizers must be an array", c->file, where);
        return MLS_ERR_PARSE;
    }
    cJSON_ArrayForEach(e, list)
    {
        mls_status st = tok_load_normalizer(e, c, "normalizer.normalizers[]");
        if (st != MLS_OK) {
            return st;
        }
    }
    return MLS_OK;
}

static mls_status tok_pre_add(tok_tokenizer *tok, tok_pre_step step, tok_load_ctx *c)
{
    if (tok->n_pre >= TOK_PRE_MAX_STEPS) {
        pcre2_code_free(step.re);
        mls_err_set(c->err, "%s: pre_tokenizer has more than %d steps", c->file, TOK_PRE_MAX_STEPS);
        return MLS_ERR_UNSUPPORTED;
    }
    tok->pre[tok->n_pre++] = step;
    return MLS_OK;
}

static mls_status tok_load_split(tok_tokenizer *tok, const cJSON *p, tok_load_ctx *c)
{
    static const char *const names[] = {"Removed", "Isolated", "MergedWithPrevious",
                                        "MergedWithNext", "Contiguous"};
    const cJSON *pat = cJSON_GetObjectItemCaseSensitive(p, "pattern");
    const cJSON *beh = cJSON_GetObjectItemCaseSensitive(p, "behavior");
    const cJSON *re_s = pat ? cJSON_GetObjectItemCaseSensitive(pat, "Regex") : NULL;
    const cJSON *lit_s = pat ? cJSON_GetObjectItemCaseSensitive(pat, "String") : NULL;
    tok_pre_step step = {.kind = TOK_PRE_SPLIT};
    mls_status st = MLS_OK;
    int b;

    if (!cJSON_IsString(re_s) && !cJSON_IsString(lit_s)) {
        mls_err_set(c->err,
                    "%s: pre_tokenizer Split.pattern must be {\"Regex\": ...} or "
                    "{\"String\": ...}",
                    c->file);
        return MLS_ERR_PARSE;
    }
    if (!cJSON_IsString(beh)) {
        mls_err_set(c->err, "%s: pre_tokenizer Split.behavior missing", c->file);
        return MLS_ERR_PARSE;
    }
    for (b = 0; b < 5 && strcmp(beh->valuestring, names[b]) != 0; b++) {
    }
    if (b == 5) {
        mls_err_set(c->err, "%s: pre_tokenizer Split.behavior %s is unknown", c->file,
                    beh->valuestring);
        return MLS_ERR_UNSUPPORTED;
    }
    step.behavior = (tok_split_behavior)b;
    step.invert = tok_get_bool(p, "invert", false, "pre_tokenizer Split", c, &st);
    if (st != MLS_OK) {
        return st;
    }
    const char *s = cJSON_IsString(re_s) ? re_s->valuestring : lit_s->valuestring;
    char what[600];
    snprintf(what, sizeof(what), "%s: pre_tokenizer Split", c->file);
    step.re = tok_regex_compile(s, strlen(s), !cJSON_IsString(re_s), what, c->err);
    if (step.re == NULL) {
        return MLS_ERR_UNSUPPORTED;
    }
    return tok_pre_add(tok, step, c);
}

static mls_status tok_load_pre(tok_tokenizer *tok, const cJSON *p, bool *bytelevel_p,
                               tok_load_ctx *c)
{
    const cJSON *type;
    mls_status st = MLS_OK;

    if (p == NULL || cJSON_IsNull(p)) {
        return MLS_OK;
    }
    type = cJSON_GetObjectItemCaseSensitive(p, "type");
    if (!cJSON_IsString(type)) {
        mls_err_set(c->err, "%s: pre_tokenizer has no \"type\"", c->file);
        return MLS_ERR_PARSE;
    }
    if (*bytelevel_p) {
        /* after ByteLevel the pieces are byte-level strings; nothing here handles that */
        mls_err_set(c->err, "%s: pre_tokenizer %s after ByteLevel is not supported", c->file,
                    type->valuestring);
        return MLS_ERR_UNSUPPORTED;
    }
    if (strcmp(type->valuestring, "Sequence") == 0) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(p, "pretokenizers"), *e;
        if (!cJSON_IsArray(list)) {
            mls_err_set(c->err, "%s: pre_tokenizer Sequence.pretokenizers must be an array",
                        c->file);
            return MLS_ERR_PARSE;
        }
        cJSON_ArrayForEach(e, list)
        {
            if ((st = tok_load_pre(tok, e, bytelevel_p, c)) != MLS_OK) {
                return st;
            }
        }
        return MLS_OK;
    }
    if (strcmp(type->valuestring, "Split") == 0) {
        return tok_load_split(tok, p, c);
    }
    if (strcmp(type->valuestring, "ByteLevel") == 0) {
        /* HF defaults: add_prefix_space true, use_regex true */
        bool prefix = tok_get_bool(p, "add_prefix_space", true, "pre_tokenizer ByteLevel", c, &st);
        bool use_regex = tok_get_bool(p, "use_regex", true, "pre_tokenizer ByteLevel", c, &st);
        if (st != MLS_OK) {
            return st;
        }
        *bytelevel_p = true;
        if (prefix &&
            (st = tok_pre_add(tok, (tok_pre_step){.kind = TOK_PRE_PREFIX_SPACE}, c)) != MLS_OK) {
            return st;
        }
        if (use_regex) {
            char what[600];
            snprintf(what, sizeof(what), "%s: pre_tokenizer ByteLevel", c->file);
            tok_pre_step step = {.kind = TOK_PRE_SPLIT, .behavior = TOK_SPLIT_ISOLATED};
            step.re =
                tok_regex_compile(tok_gpt2_regex, strlen(tok_gpt2_regex), false, what, c->err);
            if (step.re == NULL) {
                return MLS_ERR_INTERNAL;
            }
            return tok_pre_add(tok, step, c);
        }
        return MLS_OK;
    }
    mls_err_set(c->err, "%s: pre_tokenizer type %s is not supported (ByteLevel, Split, Sequence)",
                c->file, type->valuestring);
    return MLS_ERR_UNSUPPORTED;
}

static mls_status tok_load_decoder(const cJSON *d, tok_load_ctx *c)
{
    const cJSON *type = d ? cJSON_GetObjectItemCaseSensitive(d, "type") : NULL;
    if (!cJSON_IsString(type) || strcmp(type->valuestring, "ByteLevel") != 0) {
        mls_err_set(c->err, "%s: decoder %s is not supported (only ByteLevel)", c->file,
                    cJSON_IsString(type) ? type->valuestring : "(none)");
        return MLS_ERR_UNSUPPORTED;
    }
    return MLS_OK;
}

/* Copies s into the string pool, returns its offset. */
static uint32_t tok_pool_put(tok_tokenizer *tok, const void *s, size_t len)
{
    uint32_t off = (uint32_t)tok->strings_len;
    memcpy(tok->strings + off, s, len);
    tok->strings_len += len;
    return off;
}

/* Decodes a byte-level token string to its bytes; false when a char is not byte-level. */
static bool tok_bytelevel_decode(const uint8_t *s, size_t n, uint8_t *out, size_t *out_len_p)
{
    size_t i = 0, o = 0;
    while (i < n) {
        uint32_t cp;
        if (s[i] < 0x80) {
            cp = s[i++];
        } else if ((s[i] & 0xE0) == 0xC0 && i + 1 < n) {
            cp = ((uint32_t)(s[i] & 0x1F) << 6) | (s[i + 1] & 0x3F);
            i += 2;
        } else {
            return false; /* byte-level chars are all below U+0800 */
        }
        int b = tok_cp_to_byte(cp);
        if (b < 0) {
            return false;
        }
        out[o++] = (uint8_t)b;
    }
    *out_len_p = o;
    return true;
}

static mls_status tok_load_vocab(tok_tokenizer *tok, const cJSON *vocab, const cJSON *added,
                                 tok_load_ctx *c)
{
    const cJSON *e;
    size_t n_vocab = 0, bytes = 0;
    int32_t max_id = -1, id;

    if (!cJSON_IsObject(vocab)) {
        mls_err_set(c->err, "%s: model.vocab missing or not an object", c->file);
        return MLS_ERR_PARSE;
    }
    cJSON_ArrayForEach(e, vocab)
    {
        if (!tok_json_id(e, &id)) {
            mls_err_set(c->err, "%s: model.vocab[\"%s\"] is not a valid id", c->file, e->string);
            return MLS_ERR_PARSE;
        }
        max_id = id > max_id ? id : max_id;
        bytes += strlen(e->string);
        n_vocab++;
    }
    if (n_vocab == 0) {
        mls_err_set(c->err, "%s: model.vocab is empty", c->file);
        return MLS_ERR_BAD_MODEL;
    }
    if (added != NULL && !cJSON_IsArray(added)) {
        mls_err_set(c->err, "%s: added_tokens must be an array", c->file);
        return MLS_ERR_PARSE;
    }
    int idx = 0;
    cJSON_ArrayForEach(e, added)
    {
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(e, "content");
        if (!cJSON_IsObject(e) || !tok_json_id(cJSON_GetObjectItemCaseSensitive(e, "id"), &id) ||
            !cJSON_IsString(content) || content->valuestring[0] == '\0') {
            mls_err_set(c->err, "%s: added_tokens[%d] needs an \"id\" and a non-empty \"content\"",
                        c->file, idx);
            return MLS_ERR_PARSE;
        }
        max_id = id > max_id ? id : max_id;
        bytes += strlen(content->valuestring);
        idx++;
    }
    tok->n_added = idx;
    tok->n_ids = max_id + 1;

    /* the pool holds each model string, its decoded bytes, and added contents */
    tok->strings = tok_arena_alloc(&tok->arena, bytes * 2 + 16);
    tok->id_flags = tok_arena_alloc(&tok->arena, (size_t)tok->n_ids);
    tok->model_off = tok_arena_alloc(&tok->arena, (size_t)tok->n_ids * 4);
    tok->model_len = tok_arena_alloc(&tok->arena, (size_t)tok->n_ids * 4);
    tok->dec_off = tok_arena_alloc(&tok->arena, (size_t)tok->n_ids * 4);
    tok->dec_len = tok_arena_alloc(&tok->arena, (size_t)tok->n_ids * 4);
    tok->added_of_id = tok_arena_alloc(&tok->arena, (size_t)tok->n_ids * 4);
    tok->added = tok_arena_alloc(&tok->arena, (size_t)(tok->n_added + 1) * sizeof(*tok->added));
    if (!tok->strings || !tok->id_flags || !tok->model_off || !tok->model_len || !tok->dec_off ||
        !tok->dec_len || !tok->added_of_id || !tok->added ||
        !tok_strmap_init(&tok->arena, &tok->model_map, n_vocab) ||
        !tok_strmap_init(&tok->arena, &tok->added_map, (size_t)tok->n_added)) {
        mls_err_set(c->err, "%s: out of memory for %zu vocab entries", c->file, n_vocab);
        return MLS_ERR_NO_MEMORY;
    }
    for (int32_t i = 0; i < tok->n_ids; i++) {
        tok->added_of_id[i] = -1;
    }

    cJSON_ArrayForEach(e, vocab)
    {
        size_t len = strlen(e->string), dlen = 0;
        tok_json_id(e, &id);
        if (tok->id_flags[id] & TOK_ID_MODEL) {
            mls_err_set(c->err, "%s: model.vocab gives id %d to both \"%.*s\" and \"%s\"", c->file,
                        id, (int)tok->model_len[id], tok->strings + tok->model_off[id], e->string);
            return MLS_ERR_BAD_MODEL;
        }
        uint32_t off = tok_pool_put(tok, e->string, len);
        if (tok_strmap_put(&tok->model_map, tok->strings, off, (uint32_t)len, id) >= 0) {
            mls_err_set(c->err, "%s: model.vocab has \"%s\" twice", c->file, e->string);
            return MLS_ERR_BAD_MODEL;
        }
        tok->id_flags[id] |= TOK_ID_MODEL;
        tok->model_off[id] = off;
        tok->model_len[id] = (uint32_t)len;
        uint8_t *dec = (uint8_t *)tok->strings + tok->strings_len;
        if (tok_bytelevel_decode((const uint8_t *)e->string, len, dec, &dlen)) {
            tok->dec_off[id] = (uint32_t)tok->strings_len;
            tok->dec_len[id] = (uint32_t)dlen;
            tok->strings_len += dlen;
        } else {
            /* HF's ByteLevel decoder passes such a token through as its UTF-8 */
            tok->id_flags[id] |= TOK_ID_RAWDEC;
            tok->dec_off[id] = off;
            tok->dec_len[id] = (uint32_t)len;
        }
    }

    idx = 0;
    cJSON_ArrayForEach(e, added)
    {
        const char *content = cJSON_GetObjectItemCaseSensitive(e, "content")->valuestring;
        size_t len = strlen(content);
        tok_added_token *a = &tok->added[idx];
        mls_status st = MLS_OK;
        char where[64];

        snprintf(where, sizeof(where), "added_tokens[%d]", idx);
        tok_json_id(cJSON_GetObjectItemCaseSensitive(e, "id"), &id);
        a->id = id;
        a->special = tok_get_bool(e, "special", false, where, c, &st);
        a->lstrip = tok_get_bool(e, "lstrip", false, where, c, &st);
        a->rstrip = tok_get_bool(e, "rstrip", false, where, c, &st);
        a->single_word = tok_get_bool(e, "single_word", false, where, c, &st);
        a->normalized = tok_get_bool(e, "normalized", !a->special, where, c, &st);
        if (st != MLS_OK) {
            return st;
        }
        if (tok->added_of_id[id] >= 0) {
            mls_err_set(c->err, "%s: added_tokens has id %d twice", c->file, id);
            return MLS_ERR_BAD_MODEL;
        }
        a->off = tok_pool_put(tok, content, len);
        a->len = (uint32_t)len;
        tok->added_of_id[id] = idx;
        tok->id_flags[id] |= TOK_ID_ADDED | (a->special ? TOK_ID_SPECIAL : 0);
        tok_strmap_put(&tok->added_map, tok->strings, a->off, a->len, idx);
        idx++;
    }

    for (int b = 0; b < 256; b++) {
        char s[2];
        uint32_t cp = tok_byte_to_cp((uint8_t)b);
        size_t len = cp < 0x80 ? 1 : 2;
        if (cp < 0x80) {
            s[0] = (char)cp;
        } else {
            s[0] = (char)(0xC0 | (cp >> 6));
            s[1] = (char)(0x80 | (cp & 0x3F));
        }
        tok->byte_id[b] = tok_model_lookup(tok, s, len);
        if (tok->byte_id[b] < 0) {
            mls_err_set(c->err,
                        "%s: model.vocab lacks the byte-level token \"%.*s\" of byte 0x%02x",
                        c->file, (int)len, s, b);
            return MLS_ERR_BAD_MODEL;
        }
    }
    return MLS_OK;
}

static mls_status tok_load_merges(tok_tokenizer *tok, const cJSON *merges, tok_load_ctx *c)
{
    const cJSON *e;
    int n = cJSON_GetArraySize(merges), rank = 0;
    char *cat = NULL; /* (cat_cap) a and b side by side */
    size_t cat_cap = 0;
    mls_status st = MLS_OK;

    if (!cJSON_IsArray(merges)) {
        mls_err_set(c->err, "%s: model.merges missing or not an array", c->file);
        return MLS_ERR_PARSE;
    }
    if (!tok_pairmap_init(&tok->arena, &tok->merges, (size_t)n)) {
        mls_err_set(c->err, "%s: out of memory for %d merges", c->file, n);
        return MLS_ERR_NO_MEMORY;
    }
    cJSON_ArrayForEach(e, merges)
    {
        const char *a, *b;
        size_t alen, blen;
        if (cJSON_IsString(e)) {
            const char *sp = strchr(e->valuestring, ' ');
            if (sp == NULL || strchr(sp + 1, ' ') != NULL) {
                mls_err_set(c->err,
                            "%s: model.merges[%d] \"%s\" is not two tokens split by one "
                            "space",
                            c->file, rank, e->valuestring);
                st = MLS_ERR_PARSE;
                goto out_free_cat;
            }
            a = e->valuestring;
            alen = (size_t)(sp - a);
            b = sp + 1;
            blen = strlen(b);
        } else if (cJSON_IsArray(e) && cJSON_GetArraySize(e) == 2 &&
                   cJSON_IsString(cJSON_GetArrayItem(e, 0)) &&
                   cJSON_IsString(cJSON_GetArrayItem(e, 1))) {
            a = cJSON_GetArrayItem(e, 0)->valuestring;
            b = cJSON_GetArrayItem(e, 1)->valuestring;
            alen = strlen(a);
            blen = strlen(b);
        } else {
            mls_err_set(c->err, "%s: model.merges[%d] is neither \"a b\" nor [\"a\", \"b\"]",
                        c->file, rank);
            st = MLS_ERR_PARSE;
            goto out_free_cat;
        }
        int32_t ida = tok_model_lookup(tok, a, alen), idb = tok_model_lookup(tok, b, blen);
        if (ida < 0 || idb < 0) {
            mls_err_set(c->err, "%s: model.merges[%d]: token \"%.*s\" is not in model.vocab",
                        c->file, rank, ida < 0 ? (int)alen : (int)blen, ida < 0 ? a : b);
            st = MLS_ERR_BAD_MODEL;
            goto out_free_cat;
        }
        if (alen + blen > cat_cap &&
            mls_array_reserve(&cat, &cat_cap, alen + blen, 1, MLS_ALLOC_TAG_TOKENIZER) != MLS_OK) {
            st = MLS_ERR_NO_MEMORY;
            mls_err_set(c->err, "%s: out of memory", c->file);
            goto out_free_cat;
        }
        memcpy(cat, a, alen);
        memcpy(cat + alen, b, blen);
        int32_t merged = tok_model_lookup(tok, cat, alen + blen);
        if (merged < 0) {
            mls_err_set(c->err, "%s: model.merges[%d]: merged token \"%.*s\" is not in model.vocab",
                        c->file, rank, (int)(alen + blen), cat);
            st = MLS_ERR_BAD_MODEL;
            goto out_free_cat;
        }
        tok_pairmap_put(&tok->merges, ((uint64_t)(uint32_t)ida << 32) | (uint32_t)idb, rank,
                        merged);
        rank++;
    }
out_free_cat:
    mls_array_free(&cat, &cat_cap, 1, MLS_ALLOC_TAG_TOKENIZER);
    return st;
}

static mls_status tok_load_tries(tok_tokenizer *tok, tok_load_ctx *c)
{
    int32_t cap = 1;
    for (int32_t i = 0; i < tok->n_added; i++) {
        cap += (int32_t)tok->added[i].len;
    }
    tok_trie *tries[2] = {&tok->trie_raw, &tok->trie_norm};
    for (int t = 0; t < 2; t++) {
        tries[t]->nodes = tok_arena_alloc(&tok->arena, (size_t)cap * sizeof(tok_trie_node));
        if (tries[t]->nodes == NULL) {
            mls_err_set(c->err, "%s: out of memory", c->file);
            return MLS_ERR_NO_MEMORY;
        }
        tries[t]->nodes[0] = (tok_trie_node){.first_child = -1, .next_sibling = -1, .added = -1};
        tries[t]->n_nodes = 1;
    }
    for (int32_t i = 0; i < tok->n_added; i++) {
        const tok_added_token *a = &tok->added[i];
        tok_trie *t = a->normalized ? &tok->trie_norm : &tok->trie_raw;
        if (!tok_trie_add(t, cap, (const uint8_t *)tok->strings + a->off, a->len, i)) {
            return MLS_ERR_INTERNAL;
        }
    }
    return MLS_OK;
}

/* ---- tokenizer_config.json ----------------------------------------------- */

/* bos_token / eos_token: a string or an AddedToken object with "content". */
static const char *tok_cfg_token(const cJSON *cfg, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, key);
    if (cJSON_IsObject(v)) {
        v = cJSON_GetObjectItemCaseSensitive(v, "content");
    }
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static char *tok_arena_strdup(tok_arena *a, const char *s)
{
    size_t n = strlen(s);
    char *d = tok_arena_alloc(a, n + 1);
    if (d != NULL) {
        memcpy(d, s, n + 1);
    }
    return d;
}

static mls_status tok_load_config(tok_tokenizer *tok, const char *cfg_path, mls_err *err)
{
    size_t len = 0;
    mls_status st = MLS_OK;
    char *buf = NULL;
    cJSON *cfg = NULL;
    tok_load_ctx c = {.file = cfg_path, .err = err};
    const char *bos = NULL, *eos = NULL;

    if (cfg_path != NULL) {
        if ((buf = tok_read_file(cfg_path, &len, err, &st)) == NULL) {
            return st;
        }
        if ((cfg = tok_parse_json(cfg_path, buf, len, err)) == NULL) {
            st = MLS_ERR_PARSE;
            goto out_free_buf;
        }
        if (!cJSON_IsObject(cfg)) {
            mls_err_set(err, "%s: not a JSON object", cfg_path);
            st = MLS_ERR_PARSE;
            goto out_free_json;
        }
        bos = tok_cfg_token(cfg, "bos_token");
        eos = tok_cfg_token(cfg, "eos_token");
        tok->add_bos = tok_get_bool(cfg, "add_bos_token", false, "config", &c, &st);
        if (st != MLS_OK) {
            goto out_free_json;
        }
        const cJSON *tmpl = cJSON_GetObjectItemCaseSensitive(cfg, "chat_template");
        if (cJSON_IsArray(tmpl)) { /* [{"name": "default", "template": ...}, ...] */
            const cJSON *e, *found = NULL;
            cJSON_ArrayForEach(e, tmpl)
            {
                const cJSON *nm = cJSON_GetObjectItemCaseSensitive(e, "name");
                if (cJSON_IsString(nm) && strcmp(nm->valuestring, "default") == 0) {
                    found = cJSON_GetObjectItemCaseSensitive(e, "template");
                }
            }
            tmpl = found;
        }
        if (cJSON_IsString(tmpl)) {
            const char *t = tmpl->valuestring;
            uint64_t h = tok_hash_bytes(t, strlen(t));
            if (h == TOK_CHAT_V3_HASH || h == TOK_CHAT_MLASERVE_HASH) {
                tok->chat_kind = TOK_CHAT_DEEPSEEK_V3;
            } else if (strstr(t, "<\xef\xbd\x9c"
                                 "User\xef\xbd\x9c>") != NULL &&
                       strstr(t, "<\xef\xbd\x9c"
                                 "tool\xe2\x96\x81"
                                 "calls\xe2\x96\x81"
                                 "begin"
                                 "\xef\xbd\x9c>") != NULL) {
                tok->chat_kind = TOK_CHAT_DEEPSEEK_V3_LIKE;
            } else {
                tok->chat_kind = TOK_CHAT_OTHER;
            }
        }
    }
    if (bos == NULL && eos == NULL &&
        tok_strmap_get(&tok->added_map, tok->strings, "<|endoftext|>", 13) >= 0) {
        bos = eos = "<|endoftext|>"; /* GPT-2's convention when no config says otherwise */
    }
    tok->bos_str = tok_arena_strdup(&tok->arena, bos ? bos : "");
    tok->eos_str = tok_arena_strdup(&tok->arena, eos ? eos : "");
    if (tok->bos_str == NULL || tok->eos_str == NULL) {
        mls_err_set(err, "out of memory");
        st = MLS_ERR_NO_MEMORY;
        goto out_free_json;
    }
    tok->bos_id = bos ? tok_token_to_id(tok, bos, strlen(bos)) : -1;
    tok->eos_id = eos ? tok_token_to_id(tok, eos, strlen(eos)) : -1;
out_free_json:
    cJSON_Delete(cfg);
out_free_buf:
    free(buf);
    return st;
}

/* ---- public -------------------------------------------------------------- */

mls_status tok_tokenizer_load(const char *path, tok_tokenizer **tok_p, mls_err *err)
{
    char json_path[4096], cfg_path[4096];
    struct stat sb;
    size_t len = 0;
    char *buf = NULL;
    cJSON *root = NULL;
    tok_tokenizer *tok = NULL;
    mls_status st = MLS_OK;
    bool bytelevel = false;
    tok_load_ctx c = {.file = json_path, .err = err};

    if (path == NULL || stat(path, &sb) != 0) {
        mls_err_set(err, "%s: no such tokenizer file or directory", path ? path : "(null)");
        return MLS_ERR_NOT_FOUND;
    }
    if (S_ISDIR(sb.st_mode)) {
        snprintf(json_path, sizeof(json_path), "%s/tokenizer.json", path);
        snprintf(cfg_path, sizeof(cfg_path), "%s/tokenizer_config.json", path);
    } else {
        const char *slash = strrchr(path, '/');
        snprintf(json_path, sizeof(json_path), "%s", path);
        snprintf(cfg_path, sizeof(cfg_path), "%.*stokenizer_config.json",
                 slash ? (int)(slash - path + 1) : 0, path);
    }

    if ((buf = tok_read_file(json_path, &len, err, &st)) == NULL) {
        return st;
    }
    if ((root = tok_parse_json(json_path, buf, len, err)) == NULL) {
        st = MLS_ERR_PARSE;
        goto out_free_buf;
    }
    if (!cJSON_IsObject(root)) {
        mls_err_set(err, "%s: not a JSON object", json_path);
        st = MLS_ERR_PARSE;
        goto out_free_json;
    }
    tok = calloc(1, sizeof(*tok));
    if (tok == NULL) {
        mls_err_set(err, "out of memory");
        st = MLS_ERR_NO_MEMORY;
        goto out_free_json;
    }
    pthread_mutex_init(&tok->cache_mu, NULL);

    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    if ((st = tok_load_model_check(model, &c)) != MLS_OK ||
        (st = tok_load_vocab(tok, cJSON_GetObjectItemCaseSensitive(model, "vocab"),
                             cJSON_GetObjectItemCaseSensitive(root, "added_tokens"), &c)) !=
            MLS_OK ||
        (st = tok_load_merges(tok, cJSON_GetObjectItemCaseSensitive(model, "merges"), &c)) !=
            MLS_OK ||
        (st = tok_load_tries(tok, &c)) != MLS_OK ||
        (st = tok_load_normalizer(cJSON_GetObjectItemCaseSensitive(root, "normalizer"), &c,
                                  "normalizer")) != MLS_OK ||
        (st = tok_load_pre(tok, cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"), &bytelevel,
                           &c)) != MLS_OK ||
        (st = tok_load_decoder(cJSON_GetObjectItemCaseSensitive(root, "decoder"), &c)) != MLS_OK) {
        goto out_destroy_tok;
    }
    if (!bytelevel) {
        mls_err_set(err,
                    "%s: pre_tokenizer has no ByteLevel step (only byte-level BPE is "
                    "supported)",
                    json_path);
        st = MLS_ERR_UNSUPPORTED;
        goto out_destroy_tok;
    }
    tok->ignore_merges = tok_get_bool(model, "ignore_merges", false, "model", &c, &st);
    if (st != MLS_OK) {
        goto out_destroy_tok;
    }
    tok->cache = tok_arena_alloc(&tok->arena, TOK_CACHE_SLOTS * sizeof(tok_cache_slot));
    if (tok->cache == NULL) {
        mls_err_set(err, "out of memory for the word cache");
        st = MLS_ERR_NO_MEMORY;
        goto out_destroy_tok;
    }
    if ((st = tok_load_config(tok, access(cfg_path, R_OK) == 0 ? cfg_path : NULL, err)) != MLS_OK) {
        goto out_destroy_tok;
    }
    if (tok->chat_kind == TOK_CHAT_DEEPSEEK_V3_LIKE) {
        mls_warn("%s: the chat template is not DeepSeek-V3's own; rendering it with V3 rules",
                 cfg_path);
    }
    mls_debug("%s: %d ids, %d added tokens, %d pre-tokenizer steps", json_path, tok->n_ids,
              tok->n_added, tok->n_pre);
    *tok_p = tok;
    tok = NULL;
out_destroy_tok:
    tok_tokenizer_destroy(tok);
out_free_json:
    cJSON_Delete(root);
out_free_buf:
    free(buf);
    return st;
}

void tok_tokenizer_destroy(tok_tokenizer *tok)
{
    if (tok == NULL) {
        return;
    }
    for (int i = 0; i < tok->n_pre; i++) {
        pcre2_code_free(tok->pre[i].re);
    }
    pthread_mutex_destroy(&tok->cache_mu);
    tok_arena_release(&tok->arena);
    free(tok);
}

int32_t tok_vocab_size(const tok_tokenizer *tok)
{
    return tok->n_ids;
}

int32_t tok_bos_id(const tok_tokenizer *tok)
{
    return tok->bos_id;
}

int32_t tok_eos_id(const tok_tokenizer *tok)
{
    return tok->eos_id;
}

bool tok_add_bos(const tok_tokenizer *tok)
{
    return tok->add_bos;
}

const char *tok_id_to_token(const tok_tokenizer *tok, int32_t id, size_t *len_p)
{
    if (id < 0 || id >= tok->n_ids) {
        return NULL;
    }
    if (tok->added_of_id[id] >= 0) {
        const tok_added_token *a = &tok->added[tok->added_of_id[id]];
        *len_p = a->len;
        return tok->strings + a->off;
    }
    if (tok->id_flags[id] & TOK_ID_MODEL) {
        *len_p = tok->model_len[id];
        return tok->strings + tok->model_off[id];
    }
    return NULL;
}

int32_t tok_token_to_id(const tok_tokenizer *tok, const char *s, size_t len)
{
    int32_t a = tok_strmap_get(&tok->added_map, tok->strings, s, len);
    if (a >= 0) {
        return tok->added[a].id;
    }
    return tok_model_lookup(tok, s, len);
}

bool tok_is_special(const tok_tokenizer *tok, int32_t id)
{
    return id >= 0 && id < tok->n_ids && (tok->id_flags[id] & TOK_ID_SPECIAL);
}

bool tok_is_added(const tok_tokenizer *tok, int32_t id)
{
    return id >= 0 && id < tok->n_ids && (tok->id_flags[id] & TOK_ID_ADDED);
}
