/*
 * bpe_deepseek.c - the DeepSeek chat format around a trained tokenizer: the added
 * tokens (DeepSeek-V3's exact strings), a chat template that renders like
 * DeepSeek-V3's, tokenizer_config.json, and the demo model's default corpus.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bpe_internal.h"
#include "bpe_train.h"

#define BPE_FW       "\xef\xbd\x9c" /* U+FF5C FULLWIDTH VERTICAL LINE */
#define BPE_LB       "\xe2\x96\x81" /* U+2581 LOWER ONE EIGHTH BLOCK */
#define BPE_DS(name) "<" BPE_FW name BPE_FW ">"

#define BPE_DS_BOS           BPE_DS("begin" BPE_LB "of" BPE_LB "sentence")
#define BPE_DS_EOS           BPE_DS("end" BPE_LB "of" BPE_LB "sentence")
#define BPE_DS_USER          BPE_DS("User")
#define BPE_DS_ASSISTANT     BPE_DS("Assistant")
#define BPE_DS_CALLS_BEGIN   BPE_DS("tool" BPE_LB "calls" BPE_LB "begin")
#define BPE_DS_CALLS_END     BPE_DS("tool" BPE_LB "calls" BPE_LB "end")
#define BPE_DS_CALL_BEGIN    BPE_DS("tool" BPE_LB "call" BPE_LB "begin")
#define BPE_DS_CALL_END      BPE_DS("tool" BPE_LB "call" BPE_LB "end")
#define BPE_DS_OUTPUTS_BEGIN BPE_DS("tool" BPE_LB "outputs" BPE_LB "begin")
#define BPE_DS_OUTPUTS_END   BPE_DS("tool" BPE_LB "outputs" BPE_LB "end")
#define BPE_DS_OUTPUT_BEGIN  BPE_DS("tool" BPE_LB "output" BPE_LB "begin")
#define BPE_DS_OUTPUT_END    BPE_DS("tool" BPE_LB "output" BPE_LB "end")
#define BPE_DS_SEP           BPE_DS("tool" BPE_LB "sep")

const bpe_added_token bpe_deepseek_added[] = {
    {BPE_DS_BOS, true},          {BPE_DS_EOS, true},           {BPE_DS_USER, false},
    {BPE_DS_ASSISTANT, false},   {BPE_DS_CALLS_BEGIN, false},  {BPE_DS_CALLS_END, false},
    {BPE_DS_CALL_BEGIN, false},  {BPE_DS_CALL_END, false},     {BPE_DS_OUTPUTS_BEGIN, false},
    {BPE_DS_OUTPUTS_END, false}, {BPE_DS_OUTPUT_BEGIN, false}, {BPE_DS_OUTPUT_END, false},
    {BPE_DS_SEP, false},
};
const size_t bpe_deepseek_n_added = sizeof(bpe_deepseek_added) / sizeof(bpe_deepseek_added[0]);

/*
 * The DeepSeek-V3 conversation format, written for this project as Jinja:
 *   bos, then every system message (joined by a blank line);
 *   user:       <｜User｜>content
 *   assistant:  <｜Assistant｜>content<｜end▁of▁sentence｜>, or after tool outputs
 *               <｜tool▁outputs▁end｜>content<｜end▁of▁sentence｜>
 *   tool calls (assistant content null): the conversation's first call opens with
 *               <｜Assistant｜><｜tool▁calls▁begin｜>, every later one starts on a new
 *               line and closes the calls with <｜tool▁calls▁end｜><｜end▁of▁sentence｜>;
 *               each call is <｜tool▁call▁begin｜>type<｜tool▁sep｜>name, the arguments in
 *               a ```json fence, then <｜tool▁call▁end｜>
 *   tool:       the conversation's first output opens <｜tool▁outputs▁begin｜>, later
 *               ones start on a new line; each is wrapped in
 *               <｜tool▁output▁begin｜> ... <｜tool▁output▁end｜>
 *   the end:    <｜tool▁outputs▁end｜> when the last turn was a tool output, else
 *               <｜Assistant｜> when a generation prompt is asked for.
 * The "first call"/"first output" flags are never reset, as in DeepSeek-V3's own
 * template, so that conversations render as that model was trained. There is no
 * text between the tags: the output does not depend on trim_blocks/lstrip_blocks.
 */
const char bpe_deepseek_chat_template[] =
    "{%- set ns = namespace(system='', has_system=false, calls_open=false, in_tool=false,"
    " outputs_open=false) -%}"
    "{%- for m in messages if m['role'] == 'system' -%}"
    "{%- if ns.has_system -%}{%- set ns.system = ns.system + '\n\n' -%}{%- endif -%}"
    "{%- set ns.system = ns.system + m['content'] -%}"
    "{%- set ns.has_system = true -%}"
    "{%- endfor -%}"
    "{{- bos_token + ns.system -}}"
    "{%- for m in messages -%}"
    "{%- if m['role'] == 'user' -%}"
    "{%- set ns.in_tool = false -%}"
    "{{- '" BPE_DS_USER "' + m['content'] -}}"
    "{%- elif m['role'] == 'assistant' and m['content'] is none -%}"
    "{%- set ns.in_tool = false -%}"
    "{%- for call in m['tool_calls'] -%}"
    "{%- set body = '" BPE_DS_CALL_BEGIN "' + call['type'] + '" BPE_DS_SEP
    "' + call['function']['name'] + '\n```json\n' + call['function']['arguments']"
    " + '\n```" BPE_DS_CALL_END "' -%}"
    "{%- if ns.calls_open -%}"
    "{{- '\n' + body + '" BPE_DS_CALLS_END BPE_DS_EOS "' -}}"
    "{%- else -%}"
    "{{- '" BPE_DS_ASSISTANT BPE_DS_CALLS_BEGIN "' + body -}}"
    "{%- set ns.calls_open = true -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- elif m['role'] == 'assistant' -%}"
    "{%- if ns.in_tool -%}{{- '" BPE_DS_OUTPUTS_END "' -}}"
    "{%- else -%}{{- '" BPE_DS_ASSISTANT "' -}}{%- endif -%}"
    "{{- m['content'] + '" BPE_DS_EOS "' -}}"
    "{%- set ns.in_tool = false -%}"
    "{%- elif m['role'] == 'tool' -%}"
    "{%- if ns.outputs_open -%}{{- '\n' -}}"
    "{%- else -%}{{- '" BPE_DS_OUTPUTS_BEGIN "' -}}{%- endif -%}"
    "{{- '" BPE_DS_OUTPUT_BEGIN "' + m['content'] + '" BPE_DS_OUTPUT_END "' -}}"
    "{%- set ns.in_tool = true -%}"
    "{%- set ns.outputs_open = true -%}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if ns.in_tool -%}{{- '" BPE_DS_OUTPUTS_END "' -}}"
    "{%- elif add_generation_prompt is defined and add_generation_prompt -%}"
    "{{- '" BPE_DS_ASSISTANT "' -}}"
    "{%- endif -%}";

static void bpe_json_added_obj(FILE *fp, const char *key, const char *content)
{
    fprintf(fp, "  \"%s\": {\n    \"__type\": \"AddedToken\",\n    \"content\": ", key);
    bpe_json_str(fp, content, strlen(content));
    fputs(",\n    \"lstrip\": false,\n    \"normalized\": false,\n    \"rstrip\": false,\n"
          "    \"single_word\": false\n  },\n",
          fp);
}

mls_status bpe_write_deepseek_config(const char *path, int64_t model_max_length, mls_err *err)
{
    char *text = NULL;
    size_t len = 0;
    FILE *fp = open_memstream(&text, &len);
    if (fp == NULL) {
        mls_err_set(err, "bpe: %s: out of memory", path);
        return MLS_ERR_NO_MEMORY;
    }
    fputs("{\n  \"add_bos_token\": true,\n  \"add_eos_token\": false,\n", fp);
    bpe_json_added_obj(fp, "bos_token", BPE_DS_BOS);
    bpe_json_added_obj(fp, "eos_token", BPE_DS_EOS);
    bpe_json_added_obj(fp, "pad_token", BPE_DS_EOS);
    fprintf(fp,
            "  \"clean_up_tokenization_spaces\": false,\n  \"legacy\": true,\n"
            "  \"model_max_length\": %lld,\n  \"sp_model_kwargs\": {},\n"
            "  \"unk_token\": null,\n  \"tokenizer_class\": \"LlamaTokenizerFast\",\n"
            "  \"chat_template\": ",
            (long long)model_max_length);
    bpe_json_str(fp, bpe_deepseek_chat_template, strlen(bpe_deepseek_chat_template));
    fputs("\n}\n", fp);
    if (fclose(fp) != 0) {
        free(text);
        mls_err_set(err, "bpe: %s: out of memory", path);
        return MLS_ERR_NO_MEMORY;
    }
    mls_status st = bpe_write_file(path, text, len, err);
    free(text);
    return st;
}

const char *const bpe_demo_corpus[] = {
    "/usr/share/common-licenses/GPL-3",    "/usr/share/common-licenses/Apache-2.0",
    "/usr/share/common-licenses/Artistic", "/usr/share/common-licenses/GPL-2",
    "/usr/share/common-licenses/LGPL-2.1", "/usr/share/common-licenses/MPL-2.0",
};
const size_t bpe_demo_corpus_n = sizeof(bpe_demo_corpus) / sizeof(bpe_demo_corpus[0]);
