/*
 * gm_presets.h - the model shapes `mlaserve genmodel --preset NAME` writes:
 * one constant row per preset (gm_presets.c), which --layers, --experts,
 * --vocab and --dtype then adjust.
 */
#ifndef GM_PRESETS_H
#define GM_PRESETS_H

#include <stdbool.h>

#include "eng_config.h"

#define GM_BLOCK 128 /* fp8 weight block, both dims */

typedef struct {
    const char *name; /* --preset NAME */
    bool fp8;         /* default weight format: block-fp8 (true) or BF16 */
    eng_config cfg;   /* config.json as written (cfg.fp8 is set from the format) */
} gm_preset;

/* The preset called name, or NULL when there is none. */
const gm_preset *gm_preset_find(const char *name);

#endif
