/*
 * bpe_train.h - a byte-level BPE trainer (GPT-2 style) that writes a Hugging Face
 * tokenizer.json, and the DeepSeek chat-format files around it, so that
 * `mlaserve genmodel` can ship a model with a tokenizer that is our own.
 *
 * Training:
 *   1. Text is pre-tokenized with the GPT-2 regex (PCRE2, UTF + UCP), the
 *      pieces are counted (one table of unique words).
 *   2. Every word becomes a sequence of the 256 byte tokens, spelled in the
 *      GPT-2 byte-to-unicode alphabet ("Ġ" for a space).
 *   3. The most frequent adjacent pair is merged, again and again, until the
 *      vocabulary is full or no pair occurs min_pair_count times. Ties go to the
 *      pair whose left token string, then right token string, is smallest
 *      (bytewise on the UTF-8 spelling written to tokenizer.json). Pair counts
 *      are updated incrementally from the words that held the merged pair.
 *
 * Ids: the added tokens first (0 .. n_added-1, in the order given; they are also
 * model vocab entries, as in DeepSeek's tokenizer.json, so every reader agrees on
 * their ids), then the 256 byte tokens in GPT-2 order (the order of their
 * code points in the byte alphabet: "!" first), then one id per merge.
 *
 * Everything is single-threaded and deterministic: the same texts fed in the
 * same order give the same tokenizer.json bytes.
 */
#ifndef BPE_TRAIN_H
#define BPE_TRAIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mls_status.h"

/* One added token. Strings are borrowed until bpe_trainer_create returns (copied). */
typedef struct {
    const char *content; /* UTF-8, NUL-terminated */
    bool special;        /* tokenizer.json "special"; "normalized" is written as !special */
} bpe_added_token;

typedef struct {
    int32_t vocab_size;           /* total ids wanted: added + 256 bytes + merges */
    const bpe_added_token *added; /* (n_added) become ids 0 .. n_added-1 */
    size_t n_added;
    int64_t min_pair_count; /* stop when the best pair occurs fewer times; < 1 means 1 */
} bpe_params;

typedef struct {
    uint64_t bytes;        /* text fed */
    uint64_t words;        /* pre-tokenized pieces */
    uint64_t unique_words; /* distinct pieces */
    uint64_t tokens;       /* the text fed, in trained tokens (after bpe_trainer_run) */
    int32_t vocab_size;    /* ids in the trained vocabulary (<= params.vocab_size) */
    int32_t n_merges;
    double seconds; /* spent in feed + run */
} bpe_stats;

typedef struct bpe_trainer bpe_trainer;

/*
 * A trainer for params p. MLS_ERR_INVALID_ARG when vocab_size cannot hold the
 * added tokens and the 256 byte tokens, or an added token is empty, not UTF-8 or
 * repeated. On success *tr_p owns the trainer (bpe_trainer_destroy).
 */
mls_status bpe_trainer_create(const bpe_params *p, bpe_trainer **tr_p, mls_err *err);
/* Accepts NULL. */
void bpe_trainer_destroy(bpe_trainer *tr);

/*
 * Pre-tokenizes and counts len bytes of UTF-8 text (one document; `source` names
 * it in messages). MLS_ERR_INVALID_ARG for invalid UTF-8 (err gives the offset),
 * MLS_ERR_TOO_LARGE past 4 GiB of distinct words, MLS_ERR_UNSUPPORTED after
 * bpe_trainer_run. Nothing is counted when it fails.
 */
mls_status bpe_trainer_feed(bpe_trainer *tr, const char *text, size_t len, const char *source,
                            mls_err *err);
/* bpe_trainer_feed of a whole file; MLS_ERR_IO when it cannot be read. */
mls_status bpe_trainer_feed_file(bpe_trainer *tr, const char *path, mls_err *err);

/* Learns the merges (once). MLS_ERR_UNSUPPORTED when called twice. */
mls_status bpe_trainer_run(bpe_trainer *tr, mls_err *err);

void bpe_trainer_stats(const bpe_trainer *tr, bpe_stats *stats_p);
/* Ids in the vocabulary so far (added + 256 before run). */
int32_t bpe_trainer_vocab_size(const bpe_trainer *tr);
/* The token's tokenizer.json spelling (not NUL-terminated; *len_p gets its length), or
 * NULL for an id out of range. Valid until the trainer is destroyed. */
const char *bpe_trainer_token(const bpe_trainer *tr, int32_t id, size_t *len_p);
int32_t bpe_trainer_n_merges(const bpe_trainer *tr);
/* Merge i (rank order) as token ids: false when i is out of range. */
bool bpe_trainer_merge(const bpe_trainer *tr, int32_t i, int32_t *left_p, int32_t *right_p);

/*
 * Writes tokenizer.json (ByteLevel pre-tokenizer with the GPT-2 regex, ByteLevel
 * decoder and post-processor, BPE model with vocab and merges as pairs) to path,
 * atomically (temporary file + rename). MLS_ERR_IO names the file.
 */
mls_status bpe_trainer_write_json(const bpe_trainer *tr, const char *path, mls_err *err);

/* ---- the DeepSeek chat format ------------------------------------------- */

/* bos "<｜begin▁of▁sentence｜>" = 0, eos "<｜end▁of▁sentence｜>" = 1, "<｜User｜>" = 2,
 * "<｜Assistant｜>" = 3, then the nine tool-call tokens of DeepSeek-V3 (4 .. 12).
 * Only bos and eos are "special", as in DeepSeek-V3. */
extern const bpe_added_token bpe_deepseek_added[];
extern const size_t bpe_deepseek_n_added;
enum { BPE_DEEPSEEK_BOS_ID = 0, BPE_DEEPSEEK_EOS_ID = 1 };

/* A Jinja chat template that renders like DeepSeek-V3's (system prompts first, then
 * <｜User｜>/<｜Assistant｜> turns closed by eos, DeepSeek-V3 tool calls/outputs). */
extern const char bpe_deepseek_chat_template[];

/* Writes tokenizer_config.json for a DeepSeek-format tokenizer: bos/eos/pad tokens,
 * add_bos_token true, model_max_length, the chat template. Atomic, like the above. */
mls_status bpe_write_deepseek_config(const char *path, int64_t model_max_length, mls_err *err);

/* The default training corpus of the demo model: texts every Debian system carries
 * (base-files' /usr/share/common-licenses). Those that exist are used, in this order. */
extern const char *const bpe_demo_corpus[];
extern const size_t bpe_demo_corpus_n;

#endif
