/* kc_v4_avx512.c - DeepSeek-V4 decode kernels: the AVX-512 table (kc_v4_impl.h at width 16). */
#define KC_SIMD 2
#include "kc_v4_impl.h"

const kc_v4_ops kc_v4_ops_avx512 = {KC_V4_OPS_ENTRIES};
