/*
 * tok_util.c - the tokenizer's small tools: arena, growable buffers, UTF-8
 * validation and lossy decoding, the GPT-2 byte-level map, and the translation
 * of Hugging Face (Oniguruma) regexes to PCRE2.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mls_alloc.h"
#include "tok_internal.h"

/* ---- arena --------------------------------------------------------------- */

#define TOK_ARENA_BLOCK (1u << 20)

struct tok_arena_block {
    tok_arena_block *next;
    size_t size; /* bytes of the whole block, header included */
    size_t used;
};

void *tok_arena_alloc(tok_arena *a, size_t size)
{
    const size_t hdr = (sizeof(tok_arena_block) + 15) & ~(size_t)15;
    tok_arena_block *b = a->head;

    size = (size + 15) & ~(size_t)15;
    if (b == NULL || b->size - b->used < size) {
        size_t bsize = hdr + size > TOK_ARENA_BLOCK ? hdr + size : TOK_ARENA_BLOCK;
        tok_arena_block *nb = mls_alloc(MLS_ALLOC_TAG_TOKENIZER, bsize);
        if (nb == NULL) {
            return NULL;
        }
        nb->size = bsize;
        nb->used = hdr;
        if (b != NULL && hdr + size > TOK_ARENA_BLOCK) {
            /* a big one-off: keep the current block as the head for small ones */
            nb->next = b->next;
            b->next = nb;
            nb->used = bsize;
            return (char *)nb + hdr;
        }
        nb->next = b;
        a->head = nb;
        b = nb;
    }
    void *p = (char *)b + b->used;
    b->used += size;
    return p; /* zeroed: mls_alloc zeroes and nothing is reused */
}

void tok_arena_release(tok_arena *a)
{
    tok_arena_block *b = a->head;
    while (b != NULL) {
        tok_arena_block *next = b->next;
        mls_free(MLS_ALLOC_TAG_TOKENIZER, b, b->size);
        b = next;
    }
    a->head = NULL;
}

/* ---- growable buffers ---------------------------------------------------- */

bool tok_buf_reserve(tok_buf *b, size_t n)
{
    return mls_buf_reserve(b, n) == MLS_OK;
}

bool tok_buf_append(tok_buf *b, const void *p, size_t n)
{
    return mls_buf_append(b, p, n) == MLS_OK;
}

void tok_buf_free(tok_buf *b)
{
    mls_buf_free(b);
}

void tok_ids_free(tok_ids *v)
{
    if (v == NULL) {
        return;
    }
    mls_array_free(&v->ids, &v->cap, sizeof(*v->ids), MLS_ALLOC_TAG_TOKENIZER);
    v->n = 0;
}

int32_t *tok_ids_detach(tok_ids *v, size_t *n_p)
{
    int32_t *ids = v->ids;

    mls_alloc_count(MLS_ALLOC_TAG_TOKENIZER, -(int64_t)(v->cap * sizeof(*v->ids)));
    if (n_p != NULL) {
        *n_p = v->n;
    }
    v->ids = NULL;
    v->n = v->cap = 0;
    return ids;
}

/* tok_ids_push when v is full: room for 64 ids the first time, then doubling.
 * Apart, so that the push the encoder makes once per id stays a compare and a
 * store. */
static mls_status tok_ids_grow_push(tok_ids *v, int32_t id)
{
    mls_status st = mls_array_reserve(&v->ids, &v->cap, v->cap ? v->n + 1 : 64, sizeof(*v->ids),
                                      MLS_ALLOC_TAG_TOKENIZER);
    if (st != MLS_OK) {
        return st;
    }
    v->ids[v->n++] = id;
    return MLS_OK;
}

mls_status tok_ids_push(tok_ids *v, int32_t id)
{
    if (v->n == v->cap) {
        return tok_ids_grow_push(v, id);
    }
    v->ids[v->n++] = id;
    return MLS_OK;
}

/* ---- UTF-8 --------------------------------------------------------------- */

/* For a lead byte: number of continuation bytes and the range of the first one
 * (Unicode Table 3-7, well-formed UTF-8). Returns -1 for a byte that cannot lead. */
static int tok_utf8_lead(uint8_t b, uint8_t *lo_p, uint8_t *hi_p)
{
    *lo_p = 0x80;
    *hi_p = 0xBF;
    if (b >= 0xC2 && b <= 0xDF) {
        return 1;
    }
    if (b == 0xE0) {
        *lo_p = 0xA0;
        return 2;
    }
    if ((b >= 0xE1 && b <= 0xEC) || b == 0xEE || b == 0xEF) {
        return 2;
    }
    if (b == 0xED) {
        *hi_p = 0x9F;
        return 2;
    }
    if (b == 0xF0) {
        *lo_p = 0x90;
        return 3;
    }
    if (b >= 0xF1 && b <= 0xF3) {
        return 3;
    }
    if (b == 0xF4) {
        *hi_p = 0x8F;
        return 3;
    }
    return -1;
}

size_t tok_utf8_valid_prefix(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint8_t lo, hi;
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        int need = tok_utf8_lead(s[i], &lo, &hi);
        if (need < 0 || n - i <= (size_t)need) {
            return i;
        }
        for (int k = 1; k <= need; k++) {
            uint8_t c = s[i + (size_t)k];
            if (c < lo || c > hi) {
                return i;
            }
            lo = 0x80;
            hi = 0xBF;
        }
        i += (size_t)need + 1;
    }
    return n;
}

static const char tok_fffd[3] = {(char)0xEF, (char)0xBF, (char)0xBD};

bool tok_utf8_lossy(const uint8_t *s, size_t n, bool partial, tok_buf *out, size_t *held_p)
{
    size_t i = 0, run = 0; /* run: start of the pending valid stretch */

    if (held_p) {
        *held_p = 0;
    }
    if (n == 0) {
        return tok_buf_append(out, "", 0); /* s may be NULL: an empty buffer's data */
    }
    while (i < n) {
        uint8_t lo, hi;
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        int need = tok_utf8_lead(s[i], &lo, &hi);
        size_t j = i + 1;
        int got = 0;
        if (need > 0) {
            while (got < need && j < n && s[j] >= lo && s[j] <= hi) {
                lo = 0x80;
                hi = 0xBF;
                j++;
                got++;
            }
        }
        if (need > 0 && got == need) {
            i = j; /* a whole, valid sequence */
            continue;
        }
        if (need > 0 && j == n && partial) {
            /* a valid prefix cut by the end: hold it back */
            if (!tok_buf_append(out, s + run, i - run)) {
                return false;
            }
            if (held_p) {
                *held_p = n - i;
            }
            return true;
        }
        /* invalid: the maximal subpart s[i..j) becomes one U+FFFD */
        if (!tok_buf_append(out, s + run, i - run) || !tok_buf_append(out, tok_fffd, 3)) {
            return false;
        }
        i = j;
        run = j;
    }
    return tok_buf_append(out, s + run, n - run);
}

/* ---- byte-level map ------------------------------------------------------ */

/* GPT-2's bytes_to_unicode: printable Latin-1 bytes map to themselves, the other
 * 68 bytes to U+0100.. in byte order. */
static bool tok_byte_printable(unsigned b)
{
    return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
}

uint32_t tok_byte_to_cp(uint8_t b)
{
    if (tok_byte_printable(b)) {
        return b;
    }
    uint32_t n = 0;
    for (unsigned x = 0; x < b; x++) {
        n += !tok_byte_printable(x);
    }
    return 256 + n;
}

int tok_cp_to_byte(uint32_t cp)
{
    if (cp < 256) {
        return tok_byte_printable(cp) ? (int)cp : -1;
    }
    if (cp >= 256 + 68) {
        return -1;
    }
    uint32_t n = cp - 256;
    for (unsigned x = 0; x < 256; x++) {
        if (!tok_byte_printable(x) && n-- == 0) {
            return (int)x;
        }
    }
    return -1;
}

/* ---- regex translation --------------------------------------------------- */

/* Oniguruma's \s in Unicode mode is the White_Space property; PCRE2's UCP \s
 * differs (it adds U+180E), so spell the set out. */
#define TOK_RE_SPACE                                                                               \
    "\\t\\n\\x{0B}\\f\\r \\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}"             \
    "\\x{202F}\\x{205F}\\x{3000}"
/* Oniguruma's \w: Letter, Mark, Decimal_Number, Connector_Punctuation. */
#define TOK_RE_WORD "\\p{L}\\p{M}\\p{Nd}\\p{Pc}"
#define TOK_RE_HEX  "0-9a-fA-F"

static bool tok_is_hex(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* Appends the class body `set` either bare (inside a class) or as [set] / [^set]. */
static bool tok_re_class(tok_buf *o, bool in_class, bool negate, const char *set)
{
    if (in_class) {
        return !negate && tok_buf_append(o, set, strlen(set));
    }
    return tok_buf_append(o, negate ? "[^" : "[", negate ? 2 : 1) &&
           tok_buf_append(o, set, strlen(set)) && tok_buf_append(o, "]", 1);
}

static bool tok_re_translate(const char *p, size_t n, tok_buf *o, const char **why_p)
{
    bool in_class = false;
    size_t class_start = 0; /* index just past "[" or "[^" */

    for (size_t i = 0; i < n; i++) {
        char c = p[i];
        if (c == '\\' && i + 1 < n) {
            char e = p[i + 1];
            bool ok = true;
            switch (e) {
            case 's':
            case 'S':
                ok = tok_re_class(o, in_class, e == 'S', TOK_RE_SPACE);
                break;
            case 'w':
            case 'W':
                ok = tok_re_class(o, in_class, e == 'W', TOK_RE_WORD);
                break;
            case 'h':
            case 'H':
                ok = tok_re_class(o, in_class, e == 'H', TOK_RE_HEX);
                break;
            case 'd':
                ok = tok_buf_append(o, "\\p{Nd}", 6);
                break;
            case 'D':
                ok = tok_buf_append(o, "\\P{Nd}", 6);
                break;
            case 'u':
                if (i + 5 < n && tok_is_hex(p[i + 2]) && tok_is_hex(p[i + 3]) &&
                    tok_is_hex(p[i + 4]) && tok_is_hex(p[i + 5])) {
                    char x[16];
                    snprintf(x, sizeof(x), "\\x{%.4s}", p + i + 2);
                    ok = tok_buf_append(o, x, strlen(x));
                    i += 4;
                    break;
                }
                *why_p = "\\u not followed by 4 hex digits";
                return false;
            default:
                ok = tok_buf_append(o, p + i, 2);
                break;
            }
            if (!ok) {
                *why_p = in_class ? "negated escape (\\S, \\W, \\H) inside a character class"
                                  : "out of memory";
                return false;
            }
            i++;
            continue;
        }
        if (!in_class && c == '[') {
            in_class = true;
            class_start = i + 1;
            if (i + 1 < n && p[i + 1] == '^') {
                class_start++;
            }
        } else if (in_class && c == ']' && i != class_start) {
            in_class = false;
        } else if (in_class && c == '[') {
            if (i + 1 < n && p[i + 1] == ':') {
                /* POSIX class: copy through its closing ":]" */
                const char *end = memchr(p + i, ']', n - i);
                if (end == NULL) {
                    *why_p = "unterminated POSIX class";
                    return false;
                }
                if (!tok_buf_append(o, p + i, (size_t)(end - (p + i)) + 1)) {
                    *why_p = "out of memory";
                    return false;
                }
                i = (size_t)(end - p);
                continue;
            }
            *why_p = "nested character classes (Oniguruma only)";
            return false;
        } else if (in_class && c == '&' && i + 1 < n && p[i + 1] == '&') {
            *why_p = "character class intersection && (Oniguruma only)";
            return false;
        }
        if (!tok_buf_append(o, &c, 1)) {
            *why_p = "out of memory";
            return false;
        }
    }
    return true;
}

pcre2_code *tok_regex_compile(const char *pattern, size_t len, bool literal, const char *what,
                              mls_err *err)
{
    tok_buf o = {0};
    const char *why = NULL;
    pcre2_code *re = NULL;
    int ec = 0;
    PCRE2_SIZE eoff = 0;

    if (literal) {
        if (!tok_buf_append(&o, pattern, len)) {
            mls_err_set(err, "%s: out of memory", what);
            return NULL;
        }
    } else if (!tok_re_translate(pattern, len, &o, &why)) {
        mls_err_set(err, "%s: regex /%.*s/: %s", what, (int)len, pattern, why);
        tok_buf_free(&o);
        return NULL;
    }
    re = pcre2_compile((PCRE2_SPTR)(o.data ? o.data : ""), o.len,
                       PCRE2_UTF | PCRE2_UCP | (literal ? PCRE2_LITERAL : 0), &ec, &eoff, NULL);
    if (re == NULL) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(ec, msg, sizeof(msg));
        mls_err_set(err, "%s: regex /%.*s/ does not compile (as PCRE2 /%s/ at %zu): %s", what,
                    (int)len, pattern, o.data ? o.data : "", (size_t)eoff, (const char *)msg);
    } else {
        (void)pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* interpreter when JIT is absent */
    }
    tok_buf_free(&o);
    return re;
}
