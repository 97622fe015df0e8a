/*
 * tok_chat.c - the DeepSeek-V3 chat template, rendered in C.
 *
 * This is the Jinja template of deepseek-ai/DeepSeek-V3's tokenizer_config.json
 * transcribed statement by statement (the template has no literal text between
 * its tags, so trim_blocks/lstrip_blocks change nothing). Its quirks are kept on
 * purpose, because they are what the model was trained on and what HF renders:
 *   - every system message is gathered at the front, joined by "\n\n";
 *   - ns.is_first is never reset, so only the first tool call of the whole
 *     conversation opens with <｜Assistant｜><｜tool▁calls▁begin｜>, and only calls
 *     after it close with <｜tool▁calls▁end｜><｜end▁of▁sentence｜>;
 *   - ns.is_output_first is never reset either;
 *   - after tool outputs the generation prompt adds no <｜Assistant｜>.
 * Where Jinja would raise (str + None), rendering fails with MLS_ERR_INVALID_ARG.
 * One leniency: an assistant message with no content at all is taken as null.
 */
#include <stdlib.h>
#include <string.h>

#include "tok_internal.h"

#define TOK_FW_BAR "\xef\xbd\x9c" /* U+FF5C FULLWIDTH VERTICAL LINE */
#define TOK_LB     "\xe2\x96\x81" /* U+2581 LOWER ONE EIGHTH BLOCK */

#define TOK_S_USER          "<" TOK_FW_BAR "User" TOK_FW_BAR ">"
#define TOK_S_ASSISTANT     "<" TOK_FW_BAR "Assistant" TOK_FW_BAR ">"
#define TOK_S_EOS           "<" TOK_FW_BAR "end" TOK_LB "of" TOK_LB "sentence" TOK_FW_BAR ">"
#define TOK_S_CALLS_BEGIN   "<" TOK_FW_BAR "tool" TOK_LB "calls" TOK_LB "begin" TOK_FW_BAR ">"
#define TOK_S_CALLS_END     "<" TOK_FW_BAR "tool" TOK_LB "calls" TOK_LB "end" TOK_FW_BAR ">"
#define TOK_S_CALL_BEGIN    "<" TOK_FW_BAR "tool" TOK_LB "call" TOK_LB "begin" TOK_FW_BAR ">"
#define TOK_S_CALL_END      "<" TOK_FW_BAR "tool" TOK_LB "call" TOK_LB "end" TOK_FW_BAR ">"
#define TOK_S_SEP           "<" TOK_FW_BAR "tool" TOK_LB "sep" TOK_FW_BAR ">"
#define TOK_S_OUTPUTS_BEGIN "<" TOK_FW_BAR "tool" TOK_LB "outputs" TOK_LB "begin" TOK_FW_BAR ">"
#define TOK_S_OUTPUTS_END   "<" TOK_FW_BAR "tool" TOK_LB "outputs" TOK_LB "end" TOK_FW_BAR ">"
#define TOK_S_OUTPUT_BEGIN  "<" TOK_FW_BAR "tool" TOK_LB "output" TOK_LB "begin" TOK_FW_BAR ">"
#define TOK_S_OUTPUT_END    "<" TOK_FW_BAR "tool" TOK_LB "output" TOK_LB "end" TOK_FW_BAR ">"

static bool tok_cat(tok_buf *b, const char *s)
{
    return tok_buf_append(b, s, strlen(s));
}

static bool tok_role_is(const tok_chat_msg *m, const char *role)
{
    return m->role != NULL && strcmp(m->role, role) == 0;
}

/* One tool call, as either branch of the template writes it (prefix differs). */
static bool tok_cat_call(tok_buf *b, const char *prefix, const tok_tool_call *tc)
{
    return tok_cat(b, prefix) && tok_cat(b, tc->type) && tok_cat(b, TOK_S_SEP) &&
           tok_cat(b, tc->name) && tok_cat(b, "\n```json\n") && tok_cat(b, tc->arguments) &&
           tok_cat(b, "\n```" TOK_S_CALL_END);
}

static mls_status tok_chat_check(const tok_chat_msg *msgs, size_t n, mls_err *err)
{
    for (size_t i = 0; i < n; i++) {
        const tok_chat_msg *m = &msgs[i];
        if (m->role == NULL) {
            mls_err_set(err, "messages[%zu]: role missing", i);
            return MLS_ERR_INVALID_ARG;
        }
        if (m->content == NULL &&
            (tok_role_is(m, "system") || tok_role_is(m, "user") || tok_role_is(m, "tool"))) {
            mls_err_set(err, "messages[%zu]: a %s message needs a string content", i, m->role);
            return MLS_ERR_INVALID_ARG;
        }
        if (tok_role_is(m, "assistant") && m->content == NULL) {
            for (size_t k = 0; k < m->n_tool_calls; k++) {
                const tok_tool_call *tc = &m->tool_calls[k];
                if (tc->type == NULL || tc->name == NULL || tc->arguments == NULL) {
                    mls_err_set(err,
                                "messages[%zu].tool_calls[%zu]: type, function.name and "
                                "function.arguments (a string) are required",
                                i, k);
                    return MLS_ERR_INVALID_ARG;
                }
            }
        }
    }
    return MLS_OK;
}

static bool tok_render_v3(const tok_tokenizer *tok, const tok_chat_msg *msgs, size_t n,
                          bool add_generation_prompt, tok_buf *b)
{
    bool is_first = false, is_tool = false, is_output_first = true, is_first_sp = true;
    bool ok = tok_cat(b, tok->bos_str);

    for (size_t i = 0; i < n && ok; i++) {
        if (tok_role_is(&msgs[i], "system")) {
            ok = (is_first_sp || tok_cat(b, "\n\n")) && tok_cat(b, msgs[i].content);
            is_first_sp = false;
        }
    }
    for (size_t i = 0; i < n && ok; i++) {
        const tok_chat_msg *m = &msgs[i];
        if (tok_role_is(m, "user")) {
            is_tool = false;
            ok = tok_cat(b, TOK_S_USER) && tok_cat(b, m->content);
        }
        if (tok_role_is(m, "assistant") && m->content == NULL) {
            is_tool = false;
            for (size_t k = 0; k < m->n_tool_calls && ok; k++) {
                if (!is_first) {
                    ok = tok_cat_call(b, TOK_S_ASSISTANT TOK_S_CALLS_BEGIN TOK_S_CALL_BEGIN,
                                      &m->tool_calls[k]);
                    is_first = true;
                } else {
                    ok = tok_cat_call(b, "\n" TOK_S_CALL_BEGIN, &m->tool_calls[k]) &&
                         tok_cat(b, TOK_S_CALLS_END TOK_S_EOS);
                }
            }
        }
        if (tok_role_is(m, "assistant") && m->content != NULL) {
            if (is_tool) {
                ok = tok_cat(b, TOK_S_OUTPUTS_END) && tok_cat(b, m->content) &&
                     tok_cat(b, TOK_S_EOS);
                is_tool = false;
            } else {
                ok = tok_cat(b, TOK_S_ASSISTANT) && tok_cat(b, m->content) && tok_cat(b, TOK_S_EOS);
            }
        }
        if (tok_role_is(m, "tool")) {
            is_tool = true;
            if (is_output_first) {
                ok = tok_cat(b, TOK_S_OUTPUTS_BEGIN TOK_S_OUTPUT_BEGIN) && tok_cat(b, m->content) &&
                     tok_cat(b, TOK_S_OUTPUT_END);
                is_output_first = false;
            } else {
                ok = tok_cat(b, "\n" TOK_S_OUTPUT_BEGIN) && tok_cat(b, m->content) &&
                     tok_cat(b, TOK_S_OUTPUT_END);
            }
        }
    }
    if (ok && is_tool) {
        ok = tok_cat(b, TOK_S_OUTPUTS_END);
    }
    if (ok && add_generation_prompt && !is_tool) {
        ok = tok_cat(b, TOK_S_ASSISTANT);
    }
    return ok;
}

mls_status tok_chat_render(const tok_tokenizer *tok, const tok_chat_msg *msgs, size_t n_msgs,
                           bool add_generation_prompt, char **text_p, size_t *len_p, mls_err *err)
{
    tok_buf b = {0};
    mls_status st;

    if (tok->chat_kind != TOK_CHAT_DEEPSEEK_V3 && tok->chat_kind != TOK_CHAT_DEEPSEEK_V3_LIKE) {
        mls_err_set(err, "%s",
                    tok->chat_kind == TOK_CHAT_NONE
                        ? "tokenizer has no chat template (tokenizer_config.json)"
                        : "tokenizer's chat template is not a DeepSeek one; only the "
                          "DeepSeek-V3 template is supported");
        return MLS_ERR_UNSUPPORTED;
    }
    if ((st = tok_chat_check(msgs, n_msgs, err)) != MLS_OK) {
        return st;
    }
    if (!tok_render_v3(tok, msgs, n_msgs, add_generation_prompt, &b) || !tok_cat(&b, "")) {
        tok_buf_free(&b);
        mls_err_set(err, "chat template: out of memory");
        return MLS_ERR_NO_MEMORY;
    }
    *text_p = mls_buf_detach(&b, len_p);
    return MLS_OK;
}

mls_status tok_chat_encode(const tok_tokenizer *tok, const tok_chat_msg *msgs, size_t n_msgs,
                           bool add_generation_prompt, tok_ids *out, mls_err *err)
{
    char *text = NULL;
    size_t len = 0;
    mls_status st = tok_chat_render(tok, msgs, n_msgs, add_generation_prompt, &text, &len, err);
    if (st != MLS_OK) {
        return st;
    }
    st = tok_encode(tok, text, len, out, err);
    free(text);
    return st;
}
