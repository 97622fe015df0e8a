/* tjson.c - the minimal length-keeping JSON reader of the tokenizer tests. */
#include "tjson.h"

#include <stdlib.h>
#include <string.h>

#include "mls_buf.h"

/* The reader's strings and arrays count under MISC. */
#define TJ_TAG MLS_ALLOC_TAG_MISC

typedef struct {
    const char *s;
    size_t n, i;
    int depth;
} tj_in;

static void tj_ws(tj_in *in)
{
    while (in->i < in->n && strchr(" \t\r\n", in->s[in->i]) != NULL && in->s[in->i] != '\0') {
        in->i++;
    }
}

static bool tj_push(mls_buf *b, const char *p, size_t n)
{
    return mls_buf_append(b, p, n) == MLS_OK;
}

static int tj_hex4(const char *p)
{
    int v = 0;
    for (int k = 0; k < 4; k++) {
        char c = p[k];
        v <<= 4;
        if (c >= '0' && c <= '9') {
            v |= c - '0';
        } else if (c >= 'a' && c <= 'f') {
            v |= c - 'a' + 10;
        } else if (c >= 'A' && c <= 'F') {
            v |= c - 'A' + 10;
        } else {
            return -1;
        }
    }
    return v;
}

static bool tj_string(tj_in *in, char **out_p, size_t *len_p)
{
    mls_buf buf = MLS_BUF_INIT(TJ_TAG);
    if (in->i >= in->n || in->s[in->i] != '"') {
        return false;
    }
    in->i++;
    while (in->i < in->n && in->s[in->i] != '"') {
        char c = in->s[in->i++];
        if (c != '\\') {
            if (!tj_push(&buf, &c, 1)) {
                goto err_free_buf;
            }
            continue;
        }
        if (in->i >= in->n) {
            goto err_free_buf;
        }
        char e = in->s[in->i++], o;
        switch (e) {
        case '"':
            o = '"';
            break;
        case '\\':
            o = '\\';
            break;
        case '/':
            o = '/';
            break;
        case 'b':
            o = '\b';
            break;
        case 'f':
            o = '\f';
            break;
        case 'n':
            o = '\n';
            break;
        case 'r':
            o = '\r';
            break;
        case 't':
            o = '\t';
            break;
        case 'u': {
            if (in->i + 4 > in->n) {
                goto err_free_buf;
            }
            long cp = tj_hex4(in->s + in->i);
            in->i += 4;
            if (cp < 0) {
                goto err_free_buf;
            }
            if (cp >= 0xD800 && cp <= 0xDBFF && in->i + 6 <= in->n && in->s[in->i] == '\\' &&
                in->s[in->i + 1] == 'u') {
                long lo = tj_hex4(in->s + in->i + 2);
                if (lo >= 0xDC00 && lo <= 0xDFFF) {
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    in->i += 6;
                }
            }
            char u[4];
            size_t un;
            if (cp < 0x80) {
                u[0] = (char)cp;
                un = 1;
            } else if (cp < 0x800) {
                u[0] = (char)(0xC0 | (cp >> 6));
                u[1] = (char)(0x80 | (cp & 0x3F));
                un = 2;
            } else if (cp < 0x10000) {
                u[0] = (char)(0xE0 | (cp >> 12));
                u[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
                u[2] = (char)(0x80 | (cp & 0x3F));
                un = 3;
            } else {
                u[0] = (char)(0xF0 | (cp >> 18));
                u[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
                u[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
                u[3] = (char)(0x80 | (cp & 0x3F));
                un = 4;
            }
            if (!tj_push(&buf, u, un)) {
                goto err_free_buf;
            }
            continue;
        }
        default:
            goto err_free_buf;
        }
        if (!tj_push(&buf, &o, 1)) {
            goto err_free_buf;
        }
    }
    if (in->i >= in->n) {
        goto err_free_buf;
    }
    in->i++;
    *out_p = mls_buf_detach(&buf, len_p); /* "" for an empty string; freed by tj_free */
    return *out_p != NULL;
err_free_buf:
    mls_buf_free(&buf);
    return false;
}

static tj_val *tj_value(tj_in *in);

static bool tj_add(tj_val *v, tj_val *item, char *key)
{
    if (mls_array_reserve(&v->items, &v->items_cap, v->n + 1, sizeof(*v->items), TJ_TAG) !=
        MLS_OK) {
        return false;
    }
    if (v->type == TJ_OBJ) {
        if (mls_array_reserve(&v->keys, &v->keys_cap, v->n + 1, sizeof(*v->keys), TJ_TAG) !=
            MLS_OK) {
            return false;
        }
        v->keys[v->n] = key;
    }
    v->items[v->n++] = item;
    return true;
}

static tj_val *tj_container(tj_in *in, tj_type type)
{
    tj_val *v = calloc(1, sizeof(*v));
    char close = type == TJ_ARR ? ']' : '}';
    if (v == NULL || ++in->depth > 64) {
        free(v);
        return NULL;
    }
    v->type = type;
    in->i++;
    tj_ws(in);
    if (in->i < in->n && in->s[in->i] == close) {
        in->i++;
        in->depth--;
        return v;
    }
    for (;;) {
        char *key = NULL;
        size_t klen;
        tj_ws(in);
        if (type == TJ_OBJ) {
            if (!tj_string(in, &key, &klen)) {
                goto err_free_val;
            }
            tj_ws(in);
            if (in->i >= in->n || in->s[in->i] != ':') {
                free(key);
                goto err_free_val;
            }
            in->i++;
        }
        tj_val *item = tj_value(in);
        if (item == NULL || !tj_add(v, item, key)) {
            free(key);
            tj_free(item);
            goto err_free_val;
        }
        tj_ws(in);
        if (in->i < in->n && in->s[in->i] == ',') {
            in->i++;
            continue;
        }
        if (in->i < in->n && in->s[in->i] == close) {
            in->i++;
            in->depth--;
            return v;
        }
        goto err_free_val;
    }
err_free_val:
    tj_free(v);
    return NULL;
}

static tj_val *tj_value(tj_in *in)
{
    tj_val *v;
    tj_ws(in);
    if (in->i >= in->n) {
        return NULL;
    }
    char c = in->s[in->i];
    if (c == '{') {
        return tj_container(in, TJ_OBJ);
    }
    if (c == '[') {
        return tj_container(in, TJ_ARR);
    }
    if ((v = calloc(1, sizeof(*v))) == NULL) {
        return NULL;
    }
    if (c == '"') {
        v->type = TJ_STR;
        if (!tj_string(in, &v->str, &v->len)) {
            free(v);
            return NULL;
        }
        return v;
    }
    static const struct {
        const char *w;
        tj_type t;
        bool b;
    } words[] = {{"null", TJ_NULL, false}, {"true", TJ_BOOL, true}, {"false", TJ_BOOL, false}};
    for (int k = 0; k < 3; k++) {
        size_t wl = strlen(words[k].w);
        if (in->n - in->i >= wl && memcmp(in->s + in->i, words[k].w, wl) == 0) {
            in->i += wl;
            v->type = words[k].t;
            v->b = words[k].b;
            return v;
        }
    }
    char tmp[64];
    size_t k = 0;
    while (in->i + k < in->n && k < sizeof(tmp) - 1 &&
           strchr("+-0123456789.eE", in->s[in->i + k]) && in->s[in->i + k] != '\0') {
        tmp[k] = in->s[in->i + k];
        k++;
    }
    tmp[k] = '\0';
    char *end;
    v->num = strtod(tmp, &end);
    if (k == 0 || *end != '\0') {
        free(v);
        return NULL;
    }
    v->type = TJ_NUM;
    in->i += k;
    return v;
}

tj_val *tj_parse(const char *s, size_t n)
{
    tj_in in = {.s = s, .n = n};
    tj_val *v = tj_value(&in);
    tj_ws(&in);
    if (v != NULL && in.i != n) {
        tj_free(v);
        return NULL;
    }
    return v;
}

void tj_free(tj_val *v)
{
    if (v == NULL) {
        return;
    }
    for (size_t i = 0; i < v->n; i++) {
        tj_free(v->items[i]);
        if (v->keys) {
            free(v->keys[i]);
        }
    }
    mls_array_free(&v->items, &v->items_cap, sizeof(*v->items), TJ_TAG);
    mls_array_free(&v->keys, &v->keys_cap, sizeof(*v->keys), TJ_TAG);
    free(v->str);
    free(v);
}

const tj_val *tj_get(const tj_val *obj, const char *key)
{
    if (obj == NULL || obj->type != TJ_OBJ) {
        return NULL;
    }
    for (size_t i = 0; i < obj->n; i++) {
        if (strcmp(obj->keys[i], key) == 0) {
            return obj->items[i];
        }
    }
    return NULL;
}
