/* kc_v4_scalar.c - DeepSeek-V4 decode kernels: the scalar kernel table (kc_v4_impl.h at width 1). */
#define KC_SIMD 0
#include "kc_v4_impl.h"

const kc_v4_ops kc_v4_ops_scalar = {KC_V4_OPS_ENTRIES};
