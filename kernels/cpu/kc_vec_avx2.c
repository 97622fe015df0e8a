/* kc_vec_avx2.c - the AVX2+FMA+F16C kernel table (kc_vec_impl.h at width 8). */
#define KC_SIMD 1
#include "kc_vec_impl.h"

const kc_ops kc_ops_avx2 = {
    KC_VEC_OPS_ENTRIES(kc_vec_matmul_rows, kc_vec_mla_few, KC_MLA_FEW_AUTO_FP8)};
