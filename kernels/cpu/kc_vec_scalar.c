/* kc_vec_scalar.c - the scalar kernel table (kc_vec_impl.h at width 1). */
#define KC_SIMD 0
#include "kc_vec_impl.h"

const kc_ops kc_ops_scalar = {
    KC_VEC_OPS_ENTRIES(kc_vec_matmul_rows, kc_vec_mla_few, KC_MLA_FEW_AUTO_FP8)};
