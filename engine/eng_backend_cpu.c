/* eng_backend_cpu.c - the CPU backend table: kernels/cpu behind eng_backend_ops. */
#include "eng_internal.h"

const eng_backend_ops eng_backend_cpu = {
    .name = "cpu",
    .matmul = kc_matmul,
    .matmul_t = kc_matmul_t,
    .rmsnorm = kc_rmsnorm,
    .silu_mul = kc_silu_mul,
    .rope = kc_rope_interleaved,
    .mla_workspace_size = kc_mla_workspace_size,
    .mla_attention = kc_mla_attention,
};
