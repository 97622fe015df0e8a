/*
 * cmd_tokenize.c - `mlaserve tokenize`: JSON lines in, token ids (or text) out.
 *
 * Each input line is one JSON object; each gets exactly one output line, so a
 * malformed line answers {"error": ...} in its place and the rest go on. The
 * exit status is 1 when any line failed.
 */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mls_cli.h"
#include "tok.h"

#define CMD_TOKENIZE_MAX_MSGS 4096

static void cmd_tokenize_usage(FILE *out)
{
    fprintf(out,
            "usage: mlaserve tokenize --tokenizer DIR [--decode]\n"
            "\n"
            "Reads JSON lines on stdin and writes one JSON line per input line.\n"
            "\n"
            "  --tokenizer DIR  a directory with tokenizer.json (and tokenizer_config.json for\n"
            "                   the chat template and bos/eos), or a tokenizer.json file\n"
            "  --decode         decode instead of encode\n"
            "  -h, --help       this text\n"
            "\n"
            "encode input, one of:\n"
            "  {\"text\": \"...\"}            plain text; no BOS/EOS is added, special-token\n"
            "                               strings in the text become their ids\n"
            "  {\"messages\": [...]}        OpenAI-style chat messages (role, content,\n"
            "                               tool_calls), rendered with the chat template and\n"
            "                               its generation prompt (\"add_generation_prompt\":\n"
            "                               false turns that off)\n"
            "  output: {\"ids\": [...]}\n"
            "decode input: {\"ids\": [...], \"skip_special_tokens\": false}\n"
            "  output: {\"text\": \"...\"}\n"
            "A line that cannot be handled answers {\"error\": \"...\"}; the exit status is 1\n"
            "when any line failed. Blank lines are skipped. U+0000 inside strings is refused.\n");
}

/* Writes s as a JSON string literal (s is UTF-8; control characters escaped). */
static void cmd_json_string(FILE *out, const char *s, size_t n)
{
    fputc('"', out);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        switch (c) {
        case '"':
            fputs("\\\"", out);
            break;
        case '\\':
            fputs("\\\\", out);
            break;
        case '\n':
            fputs("\\n", out);
            break;
        case '\r':
            fputs("\\r", out);
            break;
        case '\t':
            fputs("\\t", out);
            break;
        case '\b':
            fputs("\\b", out);
            break;
        case '\f':
            fputs("\\f", out);
            break;
        default:
            if (c < 0x20 || c == 0x7F) {
                fprintf(out, "\\u%04x", c);
            } else {
                fputc(c, out);
            }
        }
    }
    fputc('"', out);
}

static void cmd_error_line(FILE *out, const char *msg)
{
    fputs("{\"error\":", out);
    cmd_json_string(out, msg, strlen(msg));
    fputs("}\n", out);
}

/* Whether the raw JSON holds a \u0000 escape: cJSON would cut that string short. */
static int cmd_has_nul_escape(const char *s)
{
    for (const char *p = s; (p = strstr(p, "\\u0000")) != NULL; p++) {
        size_t bs = 0;
        while (p - (ptrdiff_t)bs > s && p[-1 - (ptrdiff_t)bs] == '\\') {
            bs++;
        }
        if (bs % 2 == 0) {
            return 1;
        }
    }
    return 0;
}

/* OpenAI content: a string, null, or an array of {"type":"text","text":...} parts
 * (joined). *buf_p receives an allocation to free when parts were joined. */
static const char *cmd_content(const cJSON *c, char **buf_p, const char **why_p)
{
    if (c == NULL || cJSON_IsNull(c)) {
        return NULL;
    }
    if (cJSON_IsString(c)) {
        return c->valuestring;
    }
    if (cJSON_IsArray(c)) {
        size_t len = 0;
        const cJSON *part;
        cJSON_ArrayForEach(part, c)
        {
            const cJSON *t = cJSON_GetObjectItemCaseSensitive(part, "text");
            if (!cJSON_IsString(t)) {
                *why_p = "content parts must be {\"type\": \"text\", \"text\": ...}";
                return NULL;
            }
            len += strlen(t->valuestring);
        }
        char *buf = malloc(len + 1);
        if (buf == NULL) {
            *why_p = "out of memory";
            return NULL;
        }
        buf[0] = '\0';
        cJSON_ArrayForEach(part, c)
        {
            strcat(buf, cJSON_GetObjectItemCaseSensitive(part, "text")->valuestring);
        }
        *buf_p = buf;
        return buf;
    }
    *why_p = "content must be a string, null or an array of text parts";
    return NULL;
}

static int cmd_encode_messages(const tok_tokenizer *tok, const cJSON *line, const cJSON *msgs,
                               tok_ids *ids, char *why, size_t why_len)
{
    int n = cJSON_GetArraySize(msgs), rc = 1, n_calls = 0;
    tok_chat_msg *m = NULL;
    tok_tool_call *calls = NULL;
    char **owned = NULL;
    const cJSON *agp = cJSON_GetObjectItemCaseSensitive(line, "add_generation_prompt");
    mls_err err;

    if (n < 1 || n > CMD_TOKENIZE_MAX_MSGS) {
        snprintf(why, why_len, "\"messages\" must be an array of 1 to %d messages",
                 CMD_TOKENIZE_MAX_MSGS);
        return 1;
    }
    if (agp != NULL && !cJSON_IsBool(agp)) {
        snprintf(why, why_len, "\"add_generation_prompt\" must be true or false");
        return 1;
    }
    const cJSON *e;
    cJSON_ArrayForEach(e, msgs)
    {
        n_calls += cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(e, "tool_calls"));
    }
    m = calloc((size_t)n, sizeof(*m));
    calls = calloc((size_t)n_calls + 1, sizeof(*calls));
    owned = calloc((size_t)n, sizeof(*owned));
    if (m == NULL || calls == NULL || owned == NULL) {
        snprintf(why, why_len, "out of memory");
        goto out_free;
    }
    int i = 0, k = 0;
    cJSON_ArrayForEach(e, msgs)
    {
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(e, "role");
        const cJSON *tc = cJSON_GetObjectItemCaseSensitive(e, "tool_calls"), *c;
        const char *cwhy = NULL;
        if (!cJSON_IsObject(e) || !cJSON_IsString(role)) {
            snprintf(why, why_len, "messages[%d]: an object with a string \"role\" is required", i);
            goto out_free;
        }
        m[i].role = role->valuestring;
        m[i].content =
            cmd_content(cJSON_GetObjectItemCaseSensitive(e, "content"), &owned[i], &cwhy);
        if (cwhy != NULL) {
            snprintf(why, why_len, "messages[%d]: %s", i, cwhy);
            goto out_free;
        }
        if (tc != NULL && !cJSON_IsNull(tc) && !cJSON_IsArray(tc)) {
            snprintf(why, why_len, "messages[%d]: \"tool_calls\" must be an array", i);
            goto out_free;
        }
        m[i].tool_calls = &calls[k];
        cJSON_ArrayForEach(c, tc)
        {
            const cJSON *type = cJSON_GetObjectItemCaseSensitive(c, "type");
            const cJSON *fn = cJSON_GetObjectItemCaseSensitive(c, "function");
            const cJSON *name = cJSON_GetObjectItemCaseSensitive(fn, "name");
            const cJSON *args = cJSON_GetObjectItemCaseSensitive(fn, "arguments");
            if (!cJSON_IsString(type) || !cJSON_IsString(name) || !cJSON_IsString(args)) {
                snprintf(why, why_len,
                         "messages[%d].tool_calls[%zu]: \"type\", \"function.name\" "
                         "and \"function.arguments\" (a JSON string) are required",
                         i, m[i].n_tool_calls);
                goto out_free;
            }
            calls[k++] = (tok_tool_call){.type = type->valuestring,
                                         .name = name->valuestring,
                                         .arguments = args->valuestring};
            m[i].n_tool_calls++;
        }
        i++;
    }
    if (tok_chat_encode(tok, m, (size_t)n, agp == NULL || cJSON_IsTrue(agp), ids, &err) != MLS_OK) {
        snprintf(why, why_len, "%s", err.msg);
        goto out_free;
    }
    rc = 0;
out_free:
    for (int j = 0; owned != NULL && j < n; j++) {
        free(owned[j]);
    }
    free(owned);
    free(calls);
    free(m);
    return rc;
}

static int cmd_encode_line(const tok_tokenizer *tok, const cJSON *line, FILE *out, char *why,
                           size_t why_len)
{
    const cJSON *text = cJSON_GetObjectItemCaseSensitive(line, "text");
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(line, "messages");
    tok_ids ids = {0};
    mls_err err;
    int rc = 1;

    if (cJSON_IsString(text) && msgs == NULL) {
        if (tok_encode(tok, text->valuestring, strlen(text->valuestring), &ids, &err) != MLS_OK) {
            snprintf(why, why_len, "%s", err.msg);
            goto out_free_ids;
        }
    } else if (cJSON_IsArray(msgs) && text == NULL) {
        if (cmd_encode_messages(tok, line, msgs, &ids, why, why_len) != 0) {
            goto out_free_ids;
        }
    } else {
        snprintf(why, why_len, "expected {\"text\": string} or {\"messages\": array}");
        goto out_free_ids;
    }
    fputs("{\"ids\":[", out);
    for (size_t i = 0; i < ids.n; i++) {
        fprintf(out, i ? ",%d" : "%d", ids.ids[i]);
    }
    fputs("]}\n", out);
    rc = 0;
out_free_ids:
    tok_ids_free(&ids);
    return rc;
}

static int cmd_decode_line(const tok_tokenizer *tok, const cJSON *line, FILE *out, char *why,
                           size_t why_len)
{
    const cJSON *arr = cJSON_GetObjectItemCaseSensitive(line, "ids"), *e;
    const cJSON *skip = cJSON_GetObjectItemCaseSensitive(line, "skip_special_tokens");
    int n = cJSON_GetArraySize(arr), i = 0;
    int32_t *ids;
    char *text = NULL;
    size_t len = 0;
    mls_err err;

    if (!cJSON_IsArray(arr) || (skip != NULL && !cJSON_IsBool(skip))) {
        snprintf(why, why_len, "expected {\"ids\": [integers], \"skip_special_tokens\": bool}");
        return 1;
    }
    if ((ids = malloc(((size_t)n + 1) * sizeof(*ids))) == NULL) {
        snprintf(why, why_len, "out of memory");
        return 1;
    }
    cJSON_ArrayForEach(e, arr)
    {
        if (!cJSON_IsNumber(e) || e->valuedouble != (double)(int32_t)e->valuedouble) {
            snprintf(why, why_len, "ids[%d] is not an integer", i);
            free(ids);
            return 1;
        }
        ids[i++] = (int32_t)e->valuedouble;
    }
    if (tok_decode(tok, ids, (size_t)n, cJSON_IsTrue(skip), &text, &len, &err) != MLS_OK) {
        snprintf(why, why_len, "%s", err.msg);
        free(ids);
        return 1;
    }
    fputs("{\"text\":", out);
    cmd_json_string(out, text, len);
    fputs("}\n", out);
    free(text);
    free(ids);
    return 0;
}

int mls_cmd_tokenize(int argc, char **argv)
{
    const char *dir = NULL;
    int decode = 0, failed = 0;
    tok_tokenizer *tok = NULL;
    mls_err err;
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            cmd_tokenize_usage(stdout);
            return 0;
        } else if (strcmp(argv[i], "--tokenizer") == 0 && i + 1 < argc) {
            dir = argv[++i];
        } else if (strcmp(argv[i], "--decode") == 0) {
            decode = 1;
        } else {
            fprintf(stderr, "mlaserve tokenize: unknown or incomplete option '%s'\n", argv[i]);
            cmd_tokenize_usage(stderr);
            return 2;
        }
    }
    if (dir == NULL) {
        fprintf(stderr, "mlaserve tokenize: --tokenizer DIR is required\n");
        cmd_tokenize_usage(stderr);
        return 2;
    }
    if (tok_tokenizer_load(dir, &tok, &err) != MLS_OK) {
        fprintf(stderr, "mlaserve tokenize: %s\n", err.msg);
        return 1;
    }
    while ((len = getline(&line, &cap, stdin)) >= 0) {
        char why[768];
        size_t n = (size_t)len;
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) {
            line[--n] = '\0';
        }
        if (strspn(line, " \t") == n) {
            continue;
        }
        cJSON *j = cJSON_ParseWithLength(line, n);
        int rc = 1;
        if (j == NULL || !cJSON_IsObject(j)) {
            snprintf(why, sizeof(why), "line is not a JSON object");
        } else if (cmd_has_nul_escape(line)) {
            snprintf(why, sizeof(why), "strings containing U+0000 are not supported here");
        } else {
            rc = decode ? cmd_decode_line(tok, j, stdout, why, sizeof(why))
                        : cmd_encode_line(tok, j, stdout, why, sizeof(why));
        }
        if (rc != 0) {
            cmd_error_line(stdout, why);
            failed++;
        }
        cJSON_Delete(j);
        fflush(stdout);
    }
    free(line);
    tok_tokenizer_destroy(tok);
    if (failed > 0) {
        fprintf(stderr, "mlaserve tokenize: %d line(s) failed\n", failed);
    }
    return failed > 0 ? 1 : 0;
}
