/* kc_v4_scalar.c - the DeepSeek-V4 decode kernel table at scalar width (kc_v4_impl.h). */
#define KC_SIMD 0
#include "kc_v4_impl.h"

const kc_v4_ops kc_v4_ops_scalar = {KC_V4_OPS_ENTRIES};
