/*
 * cmd_kvsize.c - `mlaserve kv-size`: the KV bytes one sequence holds at a
 * context length, per layer kind and in total, and per token amortized.
 *
 * The model comes from a checkpoint's config.json (--model) or a preset
 * (--preset: the shapes of gm_presets.c, plus DeepSeek-V3.2's indexer keys).
 * Row sizes come from the KV layout codec (mls_kv_layout.h) and nowhere else:
 *
 *   V2/V3 (MLA)  one latent row per token per layer: kvl_layout_init's
 *                row_bytes (656 B fp8 / 1152 B bf16 / 2304 B f32 at R 512,
 *                D 64). V3.2 adds one lightning-indexer key per token per
 *                layer, FP8 with one f32 scale per 128 values as its
 *                reference caches it whatever the main cache's dtype:
 *                KVL_ROW_BYTES_FP8(index_head_dim, 0) (132 B at 128).
 *   V4           per layer a window ring of sliding_window entries; CSA
 *                layers (ratio 4) one entry and one indexer key per 4
 *                tokens, HCA layers one entry per `ratio` tokens; rows as
 *                the engine stores them (eng_v4_kv_row_bytes /
 *                eng_v4_idx_row_bytes): fp8 is FlashMLA's V4 row
 *                (KVL_ROW_BYTES_V4_ENTRY: 584 B at head_dim 512, keys
 *                KVL_ROW_BYTES_V4_INDEXER: 68 B at 128), f32 4 B a value.
 *                bf16 is no V4 row format and is refused. Row counts follow
 *                the codec's kinds (kvl_kind_rows: complete blocks only, a
 *                ring holds at most its length). MTP layers hold no KV (not
 *                run). The compressors' partial blocks (f32, a fixed size
 *                per sequence) are reported apart, not in the total.
 *
 * Bytes are those of the rows held, not rounded up to whole pages.
 */
#include <assert.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "eng_config.h"
#include "eng_v4_forward.h"
#include "gm_presets.h"
#include "mls_cli.h"
#include "mls_kv_layout.h"

#define KS_DEFAULT_CONTEXT 1048576u
#define KS_MAX_GROUPS      8 /* layer kinds reported (V4: one per distinct ratio) */

/* kv-size's presets: a genmodel shape (gm_presets.c), and for DeepSeek-V3.2
 * (V3's shape, DSA) the indexer head dim its config.json adds. */
typedef struct {
    const char *name;
    const char *shape;      /* gm_preset_find name */
    int32_t index_head_dim; /* V3.2 lightning indexer keys per token per layer; 0 none */
} ks_preset;

static const ks_preset ks_presets[] = {
    {"deepseek-v3", "deepseek-v3", 0},
    {"deepseek-v3.2", "deepseek-v3", 128},
    {"deepseek-v4-flash", "deepseek-v4-flash", 0},
};

/* One layer kind: `count` layers holding `bytes` together at the context. */
typedef struct {
    const char *kind;       /* "mla", "mla+indexer", "window", "csa", "hca" */
    int32_t count;          /* layers of this kind */
    int32_t ratio;          /* V4 compress ratio (0 window only); 0 for MLA */
    uint32_t entry_bytes;   /* latent row / V4 entry */
    uint32_t indexer_bytes; /* indexer key (V3.2, V4 CSA); 0 none */
    uint64_t window_rows;   /* V4: window ring rows held (per layer) */
    uint64_t entries;       /* entries (rows) per layer, window excluded */
    uint64_t bytes;         /* all `count` layers */
} ks_group;

typedef struct {
    const char *name; /* preset name or model dir */
    kvl_dtype dtype;
    uint64_t context;
    int32_t n_layers;
    ks_group groups[KS_MAX_GROUPS];
    int n_groups;
    uint64_t total_bytes;
    uint64_t state_bytes; /* V4 compressor partial blocks (f32), not in total_bytes */
} ks_report;

static void ks_usage(FILE *out)
{
    fprintf(out,
            "usage: mlaserve kv-size (--model DIR | --preset NAME) [--context N] [--kv-dtype D]\n"
            "                        [--json]\n"
            "Print the KV bytes one sequence holds at a context of N tokens, per layer kind\n"
            "and in total, and the bytes per token amortized (the V4 window rings included).\n\n"
            "  --model DIR     a checkpoint's config.json (DeepSeek-V2/V3/V4)\n"
            "  --preset NAME   deepseek-v3 | deepseek-v3.2 | deepseek-v4-flash\n"
            "                  (V3.2: V3's latent row + a 132-B FP8 indexer key per token\n"
            "                  per layer; V4-Pro is absent: its config is not published here)\n"
            "  --context N     tokens (default 1048576)\n"
            "  --kv-dtype D    f32 | bf16 | fp8 (default as generate: bf16 for V2/V3, fp8\n"
            "                  for V4; V4 stores f32 or fp8 only)\n"
            "  --json          one JSON object: model, kv_dtype, context, bytes_per_token,\n"
            "                  total_bytes, layers [{kind, count, ratio, entry_bytes,\n"
            "                  indexer_bytes, window_rows, entries, bytes}],\n"
            "                  compressor_state_bytes (V4, f32, not in total_bytes)\n");
}

/* Fold g into the report's group of the same kind and ratio, or a new one;
 * -1 when there is no room for another. */
static int ks_group_add(ks_report *r, const ks_group *g)
{
    for (int i = 0; i < r->n_groups; i++) {
        if (r->groups[i].kind == g->kind && r->groups[i].ratio == g->ratio) {
            r->groups[i].count += g->count;
            r->groups[i].bytes += g->bytes;
            return 0;
        }
    }
    if (r->n_groups == KS_MAX_GROUPS) {
        return -1;
    }
    r->groups[r->n_groups++] = *g;
    return 0;
}

/* V2/V3 (index_head_dim 0) or V3.2: one latent row (+ one indexer key) per
 * token per layer. */
static int ks_mla(const eng_config *cfg, int32_t index_head_dim, ks_report *r)
{
    kvl_layout l;
    if (kvl_layout_init(r->dtype, (uint32_t)cfg->kv_lora_rank, (uint32_t)cfg->qk_rope_head_dim, 0,
                        &l) != MLS_OK) {
        fprintf(stderr, "kv-size: %s: kv_lora_rank %d / qk_rope_head_dim %d have no KV layout\n",
                r->name, cfg->kv_lora_rank, cfg->qk_rope_head_dim);
        return 1;
    }
    ks_group g = {
        .kind = index_head_dim > 0 ? "mla+indexer" : "mla",
        .count = cfg->num_hidden_layers,
        .entry_bytes = l.row_bytes,
        .indexer_bytes = index_head_dim > 0 ? KVL_ROW_BYTES_FP8((uint32_t)index_head_dim, 0u) : 0,
        .entries = r->context,
    };
    g.bytes = (uint64_t)g.count * r->context * (g.entry_bytes + g.indexer_bytes);
    return ks_group_add(r, &g) == 0 ? 0 : 1;
}

/* One V4 layer of compress ratio `ratio`: its kinds as the codec describes
 * them (row sizes, tokens per row, ring length), then rows at the context. */
static ks_group ks_v4_layer(const eng_config *cfg, int32_t ratio, kvl_dtype dtype, uint64_t context,
                            uint64_t *state_bytes_p)
{
    const eng_config_v4 *v = &cfg->v4;
    uint32_t kv_row = eng_v4_kv_row_bytes(dtype, v->head_dim, cfg->qk_rope_head_dim);
    uint32_t idx_row = eng_v4_idx_row_bytes(dtype, v->index_head_dim);
    kvl_layout l;
    memset(&l, 0, sizeof(l));
    l.kinds[KVL_KIND_WINDOW] = (kvl_kind_layout){kv_row, 1, (uint32_t)v->sliding_window, 0, 0};
    l.kinds[KVL_KIND_CSA] = (kvl_kind_layout){kv_row, 4, KVL_PAGE_TOKENS, 0, 0};
    l.kinds[KVL_KIND_INDEXER] = (kvl_kind_layout){idx_row, 4, KVL_PAGE_TOKENS, 0, 0};
    l.kinds[KVL_KIND_HCA] =
        (kvl_kind_layout){kv_row, ratio > 0 ? (uint32_t)ratio : 1u, KVL_PAGE_TOKENS, 0, 0};

    ks_group g = {.kind = ratio == 0   ? "window"
                          : ratio == 4 ? "csa"
                                       : "hca",
                  .count = 1,
                  .ratio = ratio,
                  .entry_bytes = kv_row,
                  .window_rows = kvl_kind_rows(&l, KVL_KIND_WINDOW, context)};
    g.bytes = g.window_rows * kv_row;
    /* The compressors' partial blocks (eng_v4_cmp_state): kv and score, each
     * (c*m, c*width) f32; CSA (c 2) has the indexer's too (m 4, width Id). */
    *state_bytes_p = 0;
    if (ratio == 4) {
        g.indexer_bytes = idx_row;
        g.entries = kvl_kind_rows(&l, KVL_KIND_CSA, context);
        g.bytes += g.entries * kv_row + kvl_kind_rows(&l, KVL_KIND_INDEXER, context) * idx_row;
        uint64_t rows = 2u * (uint64_t)ratio; /* c*m: the previous block and the current */
        *state_bytes_p = 2u * rows * KVL_ROW_BYTES_V4_STATE(2u * (uint32_t)v->head_dim) +
                         2u * rows * KVL_ROW_BYTES_V4_STATE(2u * (uint32_t)v->index_head_dim);
    } else if (ratio > 0) {
        g.entries = kvl_kind_rows(&l, KVL_KIND_HCA, context);
        g.bytes += g.entries * kv_row;
        *state_bytes_p = 2ull * (uint64_t)ratio * KVL_ROW_BYTES_V4_STATE((uint32_t)v->head_dim);
    }
    return g;
}

static int ks_v4(const eng_config *cfg, ks_report *r)
{
    if (r->dtype == KVL_DTYPE_BF16) {
        fprintf(stderr,
                "kv-size: %s: DeepSeek-V4 KV is stored as f32 or fp8 (FlashMLA's V4 rows: nope "
                "e4m3 with UE8M0 per 64 + rope bf16, indexer keys FP4); bf16 is no V4 row "
                "format and the engine refuses it\n",
                r->name);
        return 1;
    }
    for (int32_t layer = 0; layer < cfg->num_hidden_layers; layer++) {
        uint64_t state;
        ks_group g =
            ks_v4_layer(cfg, eng_config_v4_ratio(cfg, layer), r->dtype, r->context, &state);
        if (ks_group_add(r, &g) != 0) {
            fprintf(stderr, "kv-size: %s: more than %d distinct compress ratios\n", r->name,
                    KS_MAX_GROUPS);
            return 1;
        }
        r->state_bytes += state;
    }
    return 0;
}

static void ks_print_text(const ks_report *r)
{
    double per_token = (double)r->total_bytes / (double)r->context;
    printf("%s: %d layers, kv-dtype %s, context %" PRIu64 " tokens\n", r->name, r->n_layers,
           kvl_dtype_name(r->dtype), r->context);
    printf("  %-12s %6s %6s %8s %10s %11s %12s %16s\n", "kind", "layers", "ratio", "entry B",
           "indexer B", "window rows", "entries", "bytes");
    for (int i = 0; i < r->n_groups; i++) {
        const ks_group *g = &r->groups[i];
        printf("  %-12s %6d %6d %8" PRIu32 " %10" PRIu32 " %11" PRIu64 " %12" PRIu64 " %16" PRIu64
               "\n",
               g->kind, g->count, g->ratio, g->entry_bytes, g->indexer_bytes, g->window_rows,
               g->entries, g->bytes);
    }
    printf("  total %" PRIu64 " bytes (%.2f GiB), %.1f bytes per token\n", r->total_bytes,
           (double)r->total_bytes / (double)(1ull << 30), per_token);
    if (r->state_bytes > 0) {
        printf("  compressor partial blocks: %" PRIu64 " bytes (f32, fixed per sequence, not in "
               "the total)\n",
               r->state_bytes);
    }
}

/* s as a JSON string (quotes, backslashes and control bytes escaped). */
static void ks_json_str(const char *s)
{
    putchar('"');
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\') {
            printf("\\%c", *p);
        } else if (*p < 0x20) {
            printf("\\u%04x", *p);
        } else {
            putchar(*p);
        }
    }
    putchar('"');
}

static void ks_print_json(const ks_report *r)
{
    printf("{\"model\": ");
    ks_json_str(r->name);
    printf(", \"kv_dtype\": \"%s\", \"context\": %" PRIu64
           ", \"bytes_per_token\": %.2f, \"total_bytes\": %" PRIu64 ", \"layers\": [",
           kvl_dtype_name(r->dtype), r->context, (double)r->total_bytes / (double)r->context,
           r->total_bytes);
    for (int i = 0; i < r->n_groups; i++) {
        const ks_group *g = &r->groups[i];
        printf("%s{\"kind\": \"%s\", \"count\": %d, \"ratio\": %d, \"entry_bytes\": %" PRIu32
               ", \"indexer_bytes\": %" PRIu32 ", \"window_rows\": %" PRIu64
               ", \"entries\": %" PRIu64 ", \"bytes\": %" PRIu64 "}",
               i ? ", " : "", g->kind, g->count, g->ratio, g->entry_bytes, g->indexer_bytes,
               g->window_rows, g->entries, g->bytes);
    }
    printf("], \"compressor_state_bytes\": %" PRIu64 "}\n", r->state_bytes);
}

/* --context: 1 .. 2^40 tokens. */
static bool ks_parse_context(const char *s, uint64_t *v_p)
{
    char *end;
    errno = 0;
    if (s[0] < '0' || s[0] > '9') {
        return false;
    }
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || *end != '\0' || v < 1 || v > (1ull << 40)) {
        return false;
    }
    *v_p = v;
    return true;
}

/* The config of --model DIR or --preset NAME into *cfg_p (and the V3.2 indexer dim). */
static int ks_load(const char *model, const char *preset, eng_config *cfg_p,
                   int32_t *index_head_dim_p)
{
    *index_head_dim_p = 0;
    if (model != NULL) {
        char path[4096];
        mls_err err = {{0}};
        snprintf(path, sizeof(path), "%s/config.json", model);
        if (eng_config_load(path, cfg_p, &err) != MLS_OK) {
            fprintf(stderr, "kv-size: %s\n", err.msg);
            return 1;
        }
        return 0;
    }
    for (size_t i = 0; i < sizeof(ks_presets) / sizeof(ks_presets[0]); i++) {
        if (strcmp(ks_presets[i].name, preset) == 0) {
            const gm_preset *p = gm_preset_find(ks_presets[i].shape);
            assert(p != NULL);
            *cfg_p = p->cfg;
            *index_head_dim_p = ks_presets[i].index_head_dim;
            return 0;
        }
    }
    fprintf(stderr,
            "kv-size: unknown preset '%s' (deepseek-v3, deepseek-v3.2, deepseek-v4-flash)\n",
            preset);
    return 2;
}

int mls_cmd_kvsize(int argc, char **argv)
{
    static const struct option opts[] = {{"model", required_argument, NULL, 'm'},
                                         {"preset", required_argument, NULL, 'p'},
                                         {"context", required_argument, NULL, 'n'},
                                         {"kv-dtype", required_argument, NULL, 'k'},
                                         {"json", no_argument, NULL, 'J'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    const char *model = NULL, *preset = NULL;
    bool json = false, dtype_given = false;
    ks_report r;
    eng_config cfg;
    int32_t index_head_dim;
    int c, rc;

    memset(&r, 0, sizeof(r));
    r.context = KS_DEFAULT_CONTEXT;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'm':
            model = optarg;
            break;
        case 'p':
            preset = optarg;
            break;
        case 'J':
            json = true;
            break;
        case 'n':
            if (!ks_parse_context(optarg, &r.context)) {
                fprintf(stderr, "kv-size: --context must be 1 .. 2^40 tokens, not '%s'\n", optarg);
                return 2;
            }
            break;
        case 'k':
            if (kvl_dtype_parse(optarg, &r.dtype) != MLS_OK) {
                fprintf(stderr, "kv-size: --kv-dtype must be f32, bf16 or fp8, not '%s'\n", optarg);
                return 2;
            }
            dtype_given = true;
            break;
        case 'h':
            ks_usage(stdout);
            return 0;
        default:
            ks_usage(stderr);
            return 2;
        }
    }
    if (optind < argc || (model == NULL) == (preset == NULL)) {
        fprintf(stderr, "kv-size: give one of --model DIR and --preset NAME\n");
        ks_usage(stderr);
        return 2;
    }
    if ((rc = ks_load(model, preset, &cfg, &index_head_dim)) != 0) {
        return rc;
    }
    r.name = model != NULL ? model : preset;
    r.n_layers = cfg.num_hidden_layers;
    if (!dtype_given) {
        r.dtype = cfg.is_v4 ? KVL_DTYPE_FP8 : KVL_DTYPE_BF16; /* generate's defaults */
    }
    rc = cfg.is_v4 ? ks_v4(&cfg, &r) : ks_mla(&cfg, index_head_dim, &r);
    if (rc != 0) {
        return rc;
    }
    for (int i = 0; i < r.n_groups; i++) {
        r.total_bytes += r.groups[i].bytes;
    }
    if (json) {
        ks_print_json(&r);
    } else {
        ks_print_text(&r);
    }
    return 0;
}
