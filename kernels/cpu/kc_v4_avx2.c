/* kc_v4_avx2.c - the DeepSeek-V4 decode kernel table at avx2 width (kc_v4_impl.h). */
#define KC_SIMD 1
#include "kc_v4_impl.h"

const kc_v4_ops kc_v4_ops_avx2 = {KC_V4_OPS_ENTRIES};
