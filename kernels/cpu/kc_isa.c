/*
 * kc_isa.c - runtime ISA detection and the choice of kernel table.
 *
 * cpuid says what the CPU has, xgetbv whether the OS saves the wider
 * registers. MLS_ISA=scalar|avx2|avx512|avx512_bf16 lowers the level (never
 * above what the CPU has); kc_isa_force does the same for tests and benches.
 */
#include <cpuid.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "kc_internal.h"
#include "mls_log.h"

static const char *const kc_isa_names[KC_ISA_COUNT] = {"scalar", "avx2", "avx512", "avx512_bf16"};

static atomic_int kc_isa_detected = -1;
static atomic_int kc_isa_current = -1;

static uint64_t kc_xgetbv0(void)
{
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

static kc_isa kc_isa_probe(void)
{
    unsigned a, b, c, d;
    unsigned ecx1, ebx7, eax7_1 = 0;
    uint64_t xcr0;
    kc_isa isa = KC_ISA_SCALAR;

    if (!__get_cpuid(1, &a, &b, &c, &d)) {
        return KC_ISA_SCALAR;
    }
    ecx1 = c;
    if (!(ecx1 & (1u << 27)) || !(ecx1 & (1u << 28))) { /* OSXSAVE, AVX */
        return KC_ISA_SCALAR;
    }
    xcr0 = kc_xgetbv0();
    if ((xcr0 & 0x6) != 0x6) {
        return KC_ISA_SCALAR;
    }
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) {
        return KC_ISA_SCALAR;
    }
    ebx7 = b;
    if (a >= 1 && __get_cpuid_count(7, 1, &a, &b, &c, &d)) {
        eax7_1 = a;
    }
    if ((ebx7 & (1u << 5)) && (ecx1 & (1u << 12)) && (ecx1 & (1u << 29))) { /* AVX2 FMA F16C */
        isa = KC_ISA_AVX2;
    } else {
        return KC_ISA_SCALAR;
    }
    if ((xcr0 & 0xe0) == 0xe0 && (ebx7 & (1u << 16)) && (ebx7 & (1u << 17)) &&
        (ebx7 & (1u << 30)) && (ebx7 & (1u << 31))) { /* F DQ BW VL */
        isa = KC_ISA_AVX512;
        if (eax7_1 & (1u << 5)) {
            isa = KC_ISA_AVX512_BF16;
        }
    }
    return isa;
}

kc_isa kc_isa_detect(void)
{
    int v = atomic_load_explicit(&kc_isa_detected, memory_order_relaxed);
    if (v < 0) {
        v = (int)kc_isa_probe();
        atomic_store_explicit(&kc_isa_detected, v, memory_order_relaxed);
    }
    return (kc_isa)v;
}

kc_isa kc_isa_active(void)
{
    int v = atomic_load_explicit(&kc_isa_current, memory_order_relaxed);
    if (v < 0) {
        const char *env = getenv("MLS_ISA");
        v = (int)kc_isa_detect();
        if (env != NULL && env[0] != '\0') {
            int want = -1;
            for (int i = 0; i < KC_ISA_COUNT; i++) {
                if (strcmp(env, kc_isa_names[i]) == 0) {
                    want = i;
                }
            }
            if (want < 0) {
                mls_warn("MLS_ISA=%s: unknown level (want scalar|avx2|avx512|avx512_bf16); using %s",
                         env, kc_isa_names[v]);
            } else if (want > v) {
                mls_warn("MLS_ISA=%s: this CPU only has %s", env, kc_isa_names[v]);
            } else {
                v = want;
            }
        }
        atomic_store_explicit(&kc_isa_current, v, memory_order_relaxed);
    }
    return (kc_isa)v;
}

void kc_isa_force(kc_isa isa)
{
    kc_isa best = kc_isa_detect();
    if ((int)isa < 0) {
        isa = KC_ISA_SCALAR;
    }
    atomic_store_explicit(&kc_isa_current, (int)(isa > best ? best : isa), memory_order_relaxed);
}

const char *kc_isa_name(kc_isa isa)
{
    return ((unsigned)isa < KC_ISA_COUNT) ? kc_isa_names[isa] : "unknown";
}

const kc_ops *kc_ops_for(kc_isa isa)
{
    switch (isa) {
    case KC_ISA_AVX512_BF16:
        return &kc_ops_avx512_bf16;
    case KC_ISA_AVX512:
        return &kc_ops_avx512;
    case KC_ISA_AVX2:
        return &kc_ops_avx2;
    default:
        return &kc_ops_scalar;
    }
}

const kc_ops *kc_ops_active(void)
{
    return kc_ops_for(kc_isa_active());
}
