/* kc_v4_avx2.c - DeepSeek-V4 decode kernels: the AVX2+FMA table (kc_v4_impl.h at width 8). */
#define KC_SIMD 1
#include "kc_v4_impl.h"

const kc_v4_ops kc_v4_ops_avx2 = {KC_V4_OPS_ENTRIES};
