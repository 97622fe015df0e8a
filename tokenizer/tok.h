/*
 * tok.h - the tokenizer of mlaserve: Hugging Face tokenizer.json byte-level BPE,
 * the DeepSeek-V3 chat template, and an incremental (streaming) detokenizer.
 *
 * It reproduces Hugging Face `tokenizers` byte for byte for what it supports:
 *   model          BPE (vocab, merges as "a b" strings or ["a","b"] arrays,
 *                  ignore_merges), no dropout, no byte_fallback, no unk
 *   added_tokens   matched in the raw text before pre-tokenization, leftmost-longest,
 *                  non-normalized tokens first, then normalized ones (HF's order);
 *                  lstrip/rstrip/single_word honoured
 *   normalizer     none, or an empty Sequence
 *   pre_tokenizer  ByteLevel (use_regex: the GPT-2 regex; add_prefix_space), or a
 *                  Sequence of Split (Regex or String pattern, any behavior, invert)
 *                  ending in ByteLevel. Regexes run on PCRE2 after translating the
 *                  Oniguruma escapes that differ (\s, \S, \h, \H, \uHHHH, \w, \d).
 *   decoder        ByteLevel; added tokens are copied out verbatim and cut the byte
 *                  stream; invalid UTF-8 becomes U+FFFD (maximal-subpart rule)
 * Anything else is refused at load time with MLS_ERR_UNSUPPORTED naming the field.
 *
 * Encoding never adds BOS/EOS (HF add_special_tokens=false); callers that want
 * HF transformers' behaviour prepend tok_bos_id() when tok_add_bos() says so.
 *
 * Threads: a loaded tok_tokenizer is immutable apart from an internal word cache
 * guarded by a mutex; every function taking a const tok_tokenizer * may be called
 * from several threads at once. A tok_detok belongs to one thread at a time.
 *
 * tokenizer/ owns text <-> token ids and chat rendering; it may include common/
 * only (and PCRE2, cJSON): it knows nothing of the engine, the nodes or HTTP.
 *
 * Memory: the tokenizer's tables, and the ids a tok_ids holds, are counted
 * under MLS_ALLOC_TAG_TOKENIZER. Buffers handed to the caller (decoded or
 * rendered text, the ids tok_ids_detach gives) come from malloc and are the
 * caller's to free() as each function says.
 */
#ifndef TOK_H
#define TOK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mls_status.h"

typedef struct tok_tokenizer tok_tokenizer;
typedef struct tok_detok tok_detok;

/* A growable id vector owned by the caller: zero-initialise it, let tok_encode /
 * tok_chat_encode append to it, give it back with tok_ids_free or take the ids
 * out with tok_ids_detach. */
typedef struct {
    int32_t *ids; /* (cap) token ids, n in use; counted under TOKENIZER */
    size_t n;
    size_t cap;
} tok_ids;

void tok_ids_free(tok_ids *v);
/* Hands the ids over: returns them (NULL when v never grew) for the caller to
 * free(), with their count in *n_p when n_p is not NULL; they no longer count
 * under TOKENIZER and v is left empty. */
int32_t *tok_ids_detach(tok_ids *v, size_t *n_p);
/* Appends one id; MLS_ERR_NO_MEMORY when growing fails (v is unchanged then). */
mls_status tok_ids_push(tok_ids *v, int32_t id);

/* ---- loading ------------------------------------------------------------- */

/*
 * Loads a tokenizer. `path` is a directory holding tokenizer.json (and,
 * optionally, tokenizer_config.json for bos/eos tokens, add_bos_token and the
 * chat template) or the path of a tokenizer.json file itself (then a
 * tokenizer_config.json beside it is read if present). On success *tok_p owns
 * the tokenizer (give it back with tok_tokenizer_destroy). On failure *tok_p is
 * untouched and err names the file and field:
 *   MLS_ERR_IO          a file cannot be read
 *   MLS_ERR_PARSE       not JSON, or a field has the wrong JSON type
 *   MLS_ERR_BAD_MODEL   inconsistent content (merge of unknown tokens, bad ids)
 *   MLS_ERR_UNSUPPORTED a model/normalizer/pre-tokenizer/decoder this code lacks
 */
mls_status tok_tokenizer_load(const char *path, tok_tokenizer **tok_p, mls_err *err);
/* Accepts NULL. */
void tok_tokenizer_destroy(tok_tokenizer *tok);

/* ---- vocabulary ---------------------------------------------------------- */

/* One more than the largest id (model vocab and added tokens together). */
int32_t tok_vocab_size(const tok_tokenizer *tok);
/* The BOS/EOS ids from tokenizer_config.json (bos_token/eos_token); without a
 * config, the added token "<|endoftext|>" if there is one (GPT-2's convention);
 * else -1. */
int32_t tok_bos_id(const tok_tokenizer *tok);
int32_t tok_eos_id(const tok_tokenizer *tok);
/* tokenizer_config.json add_bos_token (false when absent). */
bool tok_add_bos(const tok_tokenizer *tok);
/* The token's string as tokenizer.json spells it (byte-level form such as "Ġworld"
 * for model tokens, the content for added tokens), not NUL-terminated: *len_p gets
 * its length. NULL for an id that names no token. Valid while tok lives. */
const char *tok_id_to_token(const tok_tokenizer *tok, int32_t id, size_t *len_p);
/* The id of a token string (added tokens first, then the model vocab), or -1. */
int32_t tok_token_to_id(const tok_tokenizer *tok, const char *s, size_t len);
/* Whether id is an added token with "special": true (what skip_special drops). */
bool tok_is_special(const tok_tokenizer *tok, int32_t id);
/* Whether id is an added token (special or not). */
bool tok_is_added(const tok_tokenizer *tok, int32_t id);

/* ---- encode / decode ----------------------------------------------------- */

/*
 * Encodes len bytes of UTF-8 text (NULs allowed) and appends the ids to *out.
 * Added-token strings in the text become their ids; nothing else is added.
 * MLS_ERR_INVALID_ARG when text is not valid UTF-8 (err gives the byte offset);
 * *out then keeps what it held before the call.
 */
mls_status tok_encode(const tok_tokenizer *tok, const char *text, size_t len, tok_ids *out,
                      mls_err *err);

/*
 * Decodes ids to text as HF decode(ids, skip_special_tokens, clean_up=false) does:
 * byte-level tokens are joined and decoded as UTF-8 with U+FFFD for invalid bytes,
 * added tokens are copied out verbatim and cut the byte stream, skip_special
 * drops added tokens marked special, and ids that name no token are skipped
 * (as HF does). On success *text_p is a malloc'ed NUL-terminated string the caller
 * frees (it may contain NULs: *len_p is its length).
 */
mls_status tok_decode(const tok_tokenizer *tok, const int32_t *ids, size_t n, bool skip_special,
                      char **text_p, size_t *len_p, mls_err *err);

/* ---- streaming detokenizer ---------------------------------------------- */

/*
 * Feed generated ids one at a time; each call hands back only text that is final:
 * never part of a UTF-8 sequence still waiting for bytes, never text a later id
 * could change. The concatenation of all chunks plus tok_detok_flush equals
 * tok_decode of all ids with the same skip_special.
 * *d_p owns the detokenizer (tok_detok_destroy); it keeps a pointer to tok, which
 * must outlive it.
 */
mls_status tok_detok_create(const tok_tokenizer *tok, bool skip_special, tok_detok **d_p,
                            mls_err *err);
/* Feeds one id. *text_p and *len_p get the newly final text (possibly empty); the text
 * lives in d and stays valid until the next call on d. */
mls_status tok_detok_feed(tok_detok *d, int32_t id, const char **text_p, size_t *len_p);
/* Ends the stream: held bytes of an unfinished UTF-8 sequence become one U+FFFD.
 * The detokenizer is then empty and may be fed a new stream. */
mls_status tok_detok_flush(tok_detok *d, const char **text_p, size_t *len_p);
/* How many bytes are held back (0 when everything fed so far has been emitted). */
size_t tok_detok_pending(const tok_detok *d);
/* Accepts NULL. */
void tok_detok_destroy(tok_detok *d);

/* ---- chat template ------------------------------------------------------- */

/* One OpenAI-style tool call of an assistant message. Strings are borrowed. */
typedef struct {
    const char *type;      /* "function"; required by the template */
    const char *name;      /* function.name */
    const char *arguments; /* function.arguments: a JSON text, as a string */
} tok_tool_call;

/* One chat message. Strings are borrowed, NUL-terminated. */
typedef struct {
    const char *role;    /* "system", "user", "assistant" or "tool"; others render nothing */
    const char *content; /* NULL stands for JSON null (assistant tool-call messages) */
    const tok_tool_call *tool_calls; /* (n_tool_calls), for assistant messages */
    size_t n_tool_calls;
} tok_chat_msg;

/*
 * Renders messages with the tokenizer's chat template exactly as HF transformers'
 * apply_chat_template(tokenize=False) does. Supported: the DeepSeek-V3 template
 * (recognised exactly; a DeepSeek template that differs from it is rendered with
 * V3 rules and a warning is logged once). MLS_ERR_UNSUPPORTED when the tokenizer has
 * no (or another) template; MLS_ERR_INVALID_ARG for a message the template cannot
 * render (user/system/tool content NULL, a tool call lacking type/name/arguments).
 * On success *text_p is malloc'ed, NUL-terminated, the caller frees it.
 */
mls_status tok_chat_render(const tok_tokenizer *tok, const tok_chat_msg *msgs, size_t n_msgs,
                           bool add_generation_prompt, char **text_p, size_t *len_p, mls_err *err);
/* tok_chat_render then tok_encode of the text (the template writes BOS itself);
 * ids are appended to *out. */
mls_status tok_chat_encode(const tok_tokenizer *tok, const tok_chat_msg *msgs, size_t n_msgs,
                           bool add_generation_prompt, tok_ids *out, mls_err *err);

#endif
