/* kc_v4_avx512.c - the DeepSeek-V4 decode kernel table at avx512 width (kc_v4_impl.h). */
#define KC_SIMD 2
#include "kc_v4_impl.h"

const kc_v4_ops kc_v4_ops_avx512 = {KC_V4_OPS_ENTRIES};
