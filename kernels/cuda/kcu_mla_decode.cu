/*
 * kcu_mla_decode.cu - paged absorbed MLA decode: tile scheduler, the decode
 * kernel (mma.sync bf16 tensor cores, fp32 accumulation, online softmax),
 * and the split-KV combine kernel. Contract in kcu_mla_decode.h.
 *
 * Decode CTA (256 threads = 8 warps) for one head block of BM = 16*MT rows
 * and one scheduler part:
 *   for each piece (sequence, tile range) of its part:
 *     Q rows -> bf16 in smem [BM][LDK] (latent | rope | zero pad)
 *     for each 32-token tile (a half page), STAGES-deep cp.async ring:
 *       K tile: 32 rows of the page -> smem (bf16 rows copied as they are;
 *               fp8 rows staged raw, then dequantized to bf16 in smem)
 *       S = Q K^T     warps split (m-tiles, n-tiles, two K halves); the two
 *                     halves are summed through smem
 *       softmax       fp32, log2 domain, causal mask, running max/sum per row
 *       O += P V      V = the latent part of the same smem tile (read once
 *                     for all BM heads); warp w owns O columns [w*R/8, ...)
 *     write O / l (whole sequence) or O / l and lse (a split) to the workspace
 * Combine: out = sum_i 2^(lse_i - max) O_i / sum_i 2^(lse_i - max).
 *
 * Tensor-core fragments follow PTX "mma.m16n8k16" (row.col, bf16 -> f32):
 * lane = 4*g + t; A regs hold (g, 2t..), (g+8, 2t..), (g, 2t+8..),
 * (g+8, 2t+8..); B regs (k 2t.., n g), (k 2t+8.., n g); C (g, 2t..),
 * (g+8, 2t..). ldmatrix supplies A and B (.trans for V).
 */
#include <cuda_fp8.h>
#include <math_constants.h>

#include "kcu_internal.cuh"

namespace {

constexpr int kTile = 32;                       /* tokens per tile (half a page) */
constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kKMax = KCU_MLA_MAX_RANK + KCU_MLA_MAX_ROPE; /* 576 */
constexpr int kLdk = kKMax + 8;                 /* bf16 row stride: 1168 B, 16 B bank skew */
constexpr int kLdp = kTile + 8;                 /* P row stride (bf16) */
constexpr int kLds = kTile + 4;                 /* S row stride (f32) */
constexpr int kRawMax = (int)((KVL_ROW_BYTES_FP8(KCU_MLA_MAX_RANK, KCU_MLA_MAX_ROPE) + 15u) / 16u * 16u);
constexpr int kFixedCost = 2;                   /* scheduler: cost of a piece, in tiles */
constexpr int kMaxSplitsPerSeq = 1024;          /* combine kernel's smem weights */

static_assert(KVL_PAGE_TOKENS % kTile == 0, "a tile never crosses a page");
static_assert(kLdk % 8 == 0 && kLdp % 8 == 0, "ldmatrix rows must be 16-byte aligned");

struct SchedPart {
    int begin_seq, begin_tile, begin_split;
    int end_seq, end_tile;                      /* exclusive position */
};

struct MlaArgs {
    const uint8_t *kv;
    uint64_t page_bytes;
    int row_bytes, rope_off, scale_off;
    int R, D, kpad;                             /* kpad = round_up(R + D, 16) */
    int vec16;                                  /* rows are 16-byte copyable */
    int n_seqs, n_q, n_heads, rows;
    float scale_log2;                           /* softmax_scale * log2(e) */
    const int32_t *seq_lens;
    const uint32_t *page_table;
    int pt_stride;
    const float *q_lat, *q_rope;
    float *out;
    const SchedPart *parts;
    const int32_t *split_prefix;                /* [n_seqs + 1] */
    float *o_acc;                               /* [splits, rows, R] */
    float *lse_acc;                             /* [splits, rows] (log2 units) */
};

/* Shared-memory carve of one decode CTA; the same numbers on host and device. */
template <int MT, bool FP8>
struct Smem {
    static constexpr int BM = 16 * MT;
    /* MT=1 (~100 KB) fits two CTAs per SM with two stages; MT=2 one CTA, three stages */
    static constexpr int STAGES = MT == 2 ? 3 : 2;
    static constexpr int stage_bytes = FP8 ? kTile * kRawMax : kTile * kLdk * 2;
    static constexpr int q_off = 0;
    static constexpr int stage_off = q_off + BM * kLdk * 2;
    static constexpr int kt_off = stage_off + STAGES * stage_bytes; /* fp8: dequantized tile */
    static constexpr int s_off = kt_off + (FP8 ? kTile * kLdk * 2 : 0);
    static constexpr int p_off = s_off + 2 * BM * kLds * 4;
    static constexpr int m_off = p_off + BM * kLdp * 2;
    static constexpr int l_off = m_off + BM * 4;
    static constexpr int alpha_off = l_off + BM * 4;
    static constexpr int bytes = alpha_off + BM * 4;
};

/* ---- PTX wrappers ------------------------------------------------------------------ */

__device__ __forceinline__ uint32_t smem_u32(const void *p)
{
    return (uint32_t)__cvta_generic_to_shared(p);
}

__device__ __forceinline__ void cp_async16(void *dst, const void *src)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(smem_u32(dst)), "l"(src));
}

__device__ __forceinline__ void cp_async4(void *dst, const void *src)
{
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(smem_u32(dst)), "l"(src));
}

__device__ __forceinline__ void cp_async_commit()
{
    asm volatile("cp.async.commit_group;\n" ::);
}

template <int N>
__device__ __forceinline__ void cp_async_wait()
{
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const void *p)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(p)));
}

__device__ __forceinline__ void ldmatrix_x2(uint32_t r[2], const void *p)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(smem_u32(p)));
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t r[4], const void *p)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(p)));
}

/* c[4] += a[4] (16x16 bf16) * b[2] (16x8 bf16) */
__device__ __forceinline__ void mma_bf16(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                 "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ int tiles_of(int len)
{
    return len > 0 ? (len + kTile - 1) / kTile : 0;
}

/* ---- scheduler ---------------------------------------------------------------------- */

/*
 * One thread walks the sequences and cuts the total cost (tiles + a fixed
 * cost per piece) into n_parts equal shares. Writes each part's [begin, end)
 * position and, per sequence, the prefix sum of its number of pieces; a
 * sequence in one piece has 1 split (written straight to out), an empty one
 * 0 (the combine kernel writes zeros).
 */
__global__ void mla_sched_kernel(const int32_t *seq_lens, int n_seqs, int n_parts,
                                 SchedPart *parts, int32_t *split_prefix)
{
    if (threadIdx.x != 0 || blockIdx.x != 0) {
        return;
    }
    long long total = 0;
    for (int s = 0; s < n_seqs; s++) {
        total += tiles_of(seq_lens[s]) + kFixedCost;
    }
    const long long payload = (total + n_parts - 1) / n_parts + kFixedCost;
    int seq = 0, tile = 0, split = 0;
    int32_t prefix = 0;
    split_prefix[0] = 0;
    for (int p = 0; p < n_parts; p++) {
        SchedPart part;
        long long remain = payload;
        part.begin_seq = seq;
        part.begin_tile = tile;
        part.begin_split = split;
        if (p == n_parts - 1) {
            remain = 1ll << 60; /* the last part takes whatever is left */
        }
        while (seq < n_seqs) {
            int nt = tiles_of(seq_lens[seq]);
            long long left = nt - tile;
            if (nt == 0) {
                split_prefix[seq + 1] = prefix;
                seq++;
                tile = 0;
                split = 0;
                continue;
            }
            if (remain >= left + kFixedCost) {
                remain -= left + kFixedCost;
                prefix += split + 1;
                split_prefix[seq + 1] = prefix;
                seq++;
                tile = 0;
                split = 0;
            } else {
                long long take = remain - kFixedCost;
                if (take > 0) {
                    tile += (int)take;
                    split++;
                }
                break;
            }
        }
        part.end_seq = seq;
        part.end_tile = tile;
        parts[p] = part;
    }
}

/* ---- decode kernel pieces ------------------------------------------------------------- */

/* Issue the async copy of tile `tile` of sequence s into a stage buffer;
 * rows past the sequence end are zero-filled (they may hold any bytes). */
template <bool FP8>
__device__ __forceinline__ void load_tile(const MlaArgs &a, uint8_t *dst, int s, int tile, int len)
{
    const int tok0 = tile * kTile;
    const uint8_t *src = a.kv + kvl_paged_row_offset(a.page_bytes, (uint32_t)a.row_bytes,
                                                     a.page_table + (size_t)s * a.pt_stride,
                                                     (uint64_t)tok0);
    const int dst_stride = FP8 ? kRawMax : kLdk * 2;
    const int nvalid = min(kTile, len - tok0);

    if (a.vec16) {
        const int chunks = a.row_bytes / 16;
        for (int i = threadIdx.x; i < kTile * chunks; i += kThreads) {
            const int r = i / chunks, c = i - r * chunks;
            uint8_t *d = dst + r * dst_stride + c * 16;
            if (r < nvalid) {
                cp_async16(d, src + (size_t)r * a.row_bytes + c * 16);
            } else {
                *(uint4 *)d = make_uint4(0, 0, 0, 0);
            }
        }
    } else {
        const int chunks = a.row_bytes / 4;
        for (int i = threadIdx.x; i < kTile * chunks; i += kThreads) {
            const int r = i / chunks, c = i - r * chunks;
            uint8_t *d = dst + r * dst_stride + c * 4;
            if (r < nvalid) {
                cp_async4(d, src + (size_t)r * a.row_bytes + c * 4);
            } else {
                *(uint32_t *)d = 0u;
            }
        }
    }
}

/* fp8 staged rows [kTile][kRawMax] -> bf16 tile [kTile][kLdk]: latent codes
 * times their 128-value scale, rope copied. Exact e4m3 decode, one rounding. */
__device__ __forceinline__ void dequant_tile(const MlaArgs &a, const uint8_t *raw,
                                             __nv_bfloat16 *kt)
{
    const int groups = a.R / 8;
    for (int i = threadIdx.x; i < kTile * groups; i += kThreads) {
        const int r = i / groups, g = i - r * groups;
        const uint8_t *row = raw + r * kRawMax;
        const uint2 codes = *(const uint2 *)(row + g * 8);
        const float sc = *(const float *)(row + a.scale_off + (g * 8 / (int)KVL_FP8_TILE) * 4);
        const uint32_t w[2] = {codes.x, codes.y};
        uint32_t packed[4];
#pragma unroll
        for (int h = 0; h < 4; h++) {
            const __nv_fp8x2_storage_t two = (__nv_fp8x2_storage_t)(w[h / 2] >> (16 * (h % 2)));
            const __half2 hv = __half2(__nv_cvt_fp8x2_to_halfraw2(two, __NV_E4M3));
            const float2 f = __half22float2(hv);
            const __nv_bfloat162 b = __floats2bfloat162_rn(f.x * sc, f.y * sc);
            packed[h] = *(const uint32_t *)&b;
        }
        *(uint4 *)(kt + r * kLdk + g * 8) = make_uint4(packed[0], packed[1], packed[2], packed[3]);
    }
    const int pairs = a.D / 2;
    for (int i = threadIdx.x; i < kTile * pairs; i += kThreads) {
        const int r = i / pairs, j = i - r * pairs;
        *(uint32_t *)(kt + r * kLdk + a.R + 2 * j) =
            *(const uint32_t *)(raw + r * kRawMax + a.rope_off + 4 * j);
    }
}

/* Q rows [mb*BM, +BM) of sequence s -> bf16 [BM][kLdk]; absent rows and the
 * pad columns [R+D, kpad) are zero. */
template <int BM>
__device__ __forceinline__ void load_q(const MlaArgs &a, __nv_bfloat16 *sq, int s, int mb)
{
    const int half = a.kpad / 2;
    for (int i = threadIdx.x; i < BM * half; i += kThreads) {
        const int r = i / half, c = (i - r * half) * 2;
        const int grow = mb * BM + r;
        float2 v = make_float2(0.f, 0.f);
        if (grow < a.rows) {
            const size_t qrow = (size_t)s * a.rows + grow;
            if (c < a.R) {
                v = *(const float2 *)(a.q_lat + qrow * a.R + c);
            } else if (c < a.R + a.D) {
                v = *(const float2 *)(a.q_rope + qrow * a.D + (c - a.R));
            }
        }
        *(__nv_bfloat162 *)(sq + r * kLdk + c) = __floats2bfloat162_rn(v.x, v.y);
    }
}

/* ---- decode kernel ------------------------------------------------------------------- */

template <int MT, bool FP8>
__global__ void __launch_bounds__(kThreads, MT == 1 ? 2 : 1) mla_decode_kernel(const MlaArgs a)
{
    using L = Smem<MT, FP8>;
    constexpr int BM = L::BM;
    constexpr int STAGES = L::STAGES;
    constexpr int WM = MT == 4 ? 2 : 1;          /* QK: m-tiles per warp */
    constexpr int WN = MT == 1 ? 1 : 2;          /* QK: n-tiles per warp */
    constexpr int MG = MT / WM;                  /* QK: warp groups along M */
    constexpr int TPR = kThreads / BM;           /* softmax: threads per row */
    constexpr int CPT = kTile / TPR;             /* softmax: columns per thread */
    constexpr int NTO = KCU_MLA_MAX_RANK / 8 / kWarps; /* PV: max O n-tiles per warp */
    static_assert((4 / WN) * MG * 2 == kWarps, "QK warp split covers the tile");

    extern __shared__ __align__(16) uint8_t smem[];
    __nv_bfloat16 *sq = (__nv_bfloat16 *)(smem + L::q_off);
    uint8_t *sstage = smem + L::stage_off;
    float *ss = (float *)(smem + L::s_off);
    __nv_bfloat16 *sp = (__nv_bfloat16 *)(smem + L::p_off);
    float *sm = (float *)(smem + L::m_off);
    float *sl = (float *)(smem + L::l_off);
    float *salpha = (float *)(smem + L::alpha_off);

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t4 = lane & 3;
    const int mb = blockIdx.y;
    const SchedPart part = a.parts[blockIdx.x];

    /* zero the K pad columns once: loads never write them */
    for (int i = tid; i < (STAGES + 1) * kTile; i += kThreads) {
        const int buf = i / kTile, r = i - buf * kTile;
        __nv_bfloat16 *kt;
        if (FP8) {
            if (buf != STAGES) {
                continue;
            }
            kt = (__nv_bfloat16 *)(smem + L::kt_off);
        } else {
            if (buf == STAGES) {
                continue;
            }
            kt = (__nv_bfloat16 *)(sstage + buf * L::stage_bytes);
        }
        for (int c = a.R + a.D; c < kLdk; c++) {
            kt[r * kLdk + c] = __float2bfloat16_rn(0.f);
        }
    }

    /* PV ownership: O n-tiles [nb, ne) of the R/8 */
    const int nt_total = a.R / 8;
    const int per_warp = (nt_total + kWarps - 1) / kWarps;
    const int nb = warp * per_warp;
    const int ne = min(nt_total, nb + per_warp);

    /* QK ownership */
    const int kh = warp & 1, slot = warp >> 1;
    const int mi0 = (slot % MG) * WM, ni0 = (slot / MG) * WN;
    const int ksteps = a.kpad / 16, khalf = (ksteps + 1) / 2;
    const int kb = kh ? khalf : 0, ke = kh ? ksteps : khalf;

    /* softmax ownership */
    const int srow = tid / TPR, sc0 = (tid % TPR) * CPT;
    const int sgrow = mb * BM + srow;
    const bool srow_valid = sgrow < a.rows;
    const int sqi = srow_valid ? sgrow / a.n_heads : 0;

    for (int s = part.begin_seq; s <= part.end_seq && s < a.n_seqs; s++) {
        const int len = a.seq_lens[s];
        const int nt = tiles_of(len);
        const int t0 = s == part.begin_seq ? part.begin_tile : 0;
        const int t1 = s == part.end_seq ? part.end_tile : nt;
        if (t0 >= t1) {
            continue;
        }
        const int split = s == part.begin_seq ? part.begin_split : 0;
        const bool whole = t0 == 0 && t1 == nt;
        const int vis_base = len - a.n_q + 1; /* query i sees tokens < vis_base + i */

        load_q<BM>(a, sq, s, mb);
        if (tid < BM) {
            sm[tid] = -CUDART_INF_F;
            sl[tid] = 0.f;
        }
        float o[MT][NTO][4];
#pragma unroll
        for (int i = 0; i < MT; i++) {
#pragma unroll
            for (int j = 0; j < NTO; j++) {
                o[i][j][0] = o[i][j][1] = o[i][j][2] = o[i][j][3] = 0.f;
            }
        }

#pragma unroll
        for (int st = 0; st < STAGES - 1; st++) {
            if (t0 + st < t1) {
                load_tile<FP8>(a, sstage + st * L::stage_bytes, s, t0 + st, len);
            }
            cp_async_commit();
        }

        for (int tile = t0; tile < t1; tile++) {
            const int it = tile - t0;
            if (tile + STAGES - 1 < t1) {
                load_tile<FP8>(a, sstage + ((it + STAGES - 1) % STAGES) * L::stage_bytes, s,
                               tile + STAGES - 1, len);
            }
            cp_async_commit();
            cp_async_wait<STAGES - 1>();
            __syncthreads();

            const uint8_t *stage = sstage + (it % STAGES) * L::stage_bytes;
            const __nv_bfloat16 *kt;
            if (FP8) {
                __nv_bfloat16 *dq = (__nv_bfloat16 *)(smem + L::kt_off);
                dequant_tile(a, stage, dq);
                __syncthreads();
                kt = dq;
            } else {
                kt = (const __nv_bfloat16 *)stage;
            }

            /* S partial = Q K^T over this warp's K half */
            {
                float sacc[WM][WN][4];
#pragma unroll
                for (int i = 0; i < WM; i++) {
#pragma unroll
                    for (int j = 0; j < WN; j++) {
                        sacc[i][j][0] = sacc[i][j][1] = sacc[i][j][2] = sacc[i][j][3] = 0.f;
                    }
                }
                for (int kk = kb; kk < ke; kk++) {
                    uint32_t af[WM][4], bf[WN][2];
#pragma unroll
                    for (int i = 0; i < WM; i++) {
                        ldmatrix_x4(af[i], sq + ((mi0 + i) * 16 + (lane & 15)) * kLdk + kk * 16 +
                                               (lane >> 4) * 8);
                    }
#pragma unroll
                    for (int j = 0; j < WN; j++) {
                        ldmatrix_x2(bf[j], kt + ((ni0 + j) * 8 + (lane & 7)) * kLdk + kk * 16 +
                                               ((lane >> 3) & 1) * 8);
                    }
#pragma unroll
                    for (int i = 0; i < WM; i++) {
#pragma unroll
                        for (int j = 0; j < WN; j++) {
                            mma_bf16(sacc[i][j], af[i], bf[j][0], bf[j][1]);
                        }
                    }
                }
                float *sk = ss + kh * BM * kLds;
#pragma unroll
                for (int i = 0; i < WM; i++) {
#pragma unroll
                    for (int j = 0; j < WN; j++) {
                        const int r = (mi0 + i) * 16 + g, c = (ni0 + j) * 8 + 2 * t4;
                        *(float2 *)(sk + r * kLds + c) = make_float2(sacc[i][j][0], sacc[i][j][1]);
                        *(float2 *)(sk + (r + 8) * kLds + c) =
                            make_float2(sacc[i][j][2], sacc[i][j][3]);
                    }
                }
            }
            __syncthreads();

            /* online softmax over the tile (log2 domain) */
            {
                float sv[CPT];
                float tmax = -CUDART_INF_F;
                const int vis = vis_base + sqi;
#pragma unroll
                for (int c = 0; c < CPT; c++) {
                    const int col = sc0 + c, tok = tile * kTile + col;
                    float x = (ss[srow * kLds + col] + ss[BM * kLds + srow * kLds + col]) *
                              a.scale_log2;
                    if (!srow_valid || tok >= vis) {
                        x = -CUDART_INF_F;
                    }
                    sv[c] = x;
                    tmax = fmaxf(tmax, x);
                }
#pragma unroll
                for (int off = TPR / 2; off > 0; off /= 2) {
                    tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, off));
                }
                const float mold = sm[srow];
                const float mnew = fmaxf(mold, tmax);
                const float mref = mnew == -CUDART_INF_F ? 0.f : mnew;
                float sum = 0.f;
#pragma unroll
                for (int c = 0; c < CPT; c += 2) {
                    const float p0 = exp2f(sv[c] - mref), p1 = exp2f(sv[c + 1] - mref);
                    sum += p0 + p1;
                    *(__nv_bfloat162 *)(sp + srow * kLdp + sc0 + c) = __floats2bfloat162_rn(p0, p1);
                }
#pragma unroll
                for (int off = TPR / 2; off > 0; off /= 2) {
                    sum += __shfl_xor_sync(0xffffffffu, sum, off);
                }
                __syncwarp();
                if (tid % TPR == 0) {
                    const float alpha = exp2f(mold - mref);
                    salpha[srow] = alpha;
                    sl[srow] = sl[srow] * alpha + sum;
                    sm[srow] = mnew;
                }
            }
            __syncthreads();

            /* O = O * alpha + P V */
#pragma unroll
            for (int i = 0; i < MT; i++) {
                const float a0 = salpha[i * 16 + g], a1 = salpha[i * 16 + g + 8];
#pragma unroll
                for (int j = 0; j < NTO; j++) {
                    o[i][j][0] *= a0;
                    o[i][j][1] *= a0;
                    o[i][j][2] *= a1;
                    o[i][j][3] *= a1;
                }
            }
#pragma unroll
            for (int kk = 0; kk < kTile / 16; kk++) {
                uint32_t pf[MT][4];
#pragma unroll
                for (int i = 0; i < MT; i++) {
                    ldmatrix_x4(pf[i], sp + (i * 16 + (lane & 15)) * kLdp + kk * 16 + (lane >> 4) * 8);
                }
#pragma unroll
                for (int jj = 0; jj < NTO; jj += 2) {
                    if (nb + jj < ne) {
                        uint32_t vb[4];
                        ldmatrix_x4_trans(vb, kt + (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * kLdk +
                                                  (nb + jj) * 8 + (lane >> 4) * 8);
#pragma unroll
                        for (int i = 0; i < MT; i++) {
                            mma_bf16(o[i][jj], pf[i], vb[0], vb[1]);
                            if (nb + jj + 1 < ne) {
                                mma_bf16(o[i][jj + 1], pf[i], vb[2], vb[3]);
                            }
                        }
                    }
                }
            }
            __syncthreads(); /* the stage, S and P buffers are reused next tile */
        }

        /* epilogue: O / l to out (whole sequence) or to the split workspace */
        const int split_idx = whole ? 0 : a.split_prefix[s] + split;
#pragma unroll
        for (int i = 0; i < MT; i++) {
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const int r = i * 16 + g + h * 8, grow = mb * BM + r;
                if (grow >= a.rows) {
                    continue;
                }
                const float l = sl[r];
                const float inv = l > 0.f ? 1.f / l : 0.f;
                float *dst = whole ? a.out + ((size_t)s * a.rows + grow) * a.R
                                   : a.o_acc + ((size_t)split_idx * a.rows + grow) * a.R;
#pragma unroll
                for (int j = 0; j < NTO; j++) {
                    if (nb + j < ne) {
                        const int c = (nb + j) * 8 + 2 * t4;
                        *(float2 *)(dst + c) = make_float2(o[i][j][2 * h] * inv, o[i][j][2 * h + 1] * inv);
                    }
                }
            }
        }
        if (!whole && tid < BM && mb * BM + tid < a.rows) {
            const float l = sl[tid];
            a.lse_acc[(size_t)split_idx * a.rows + mb * BM + tid] =
                l > 0.f ? sm[tid] + log2f(l) : -CUDART_INF_F;
        }
        __syncthreads(); /* m, l and Q are rewritten by the next piece */
    }
}

/* ---- combine ------------------------------------------------------------------------- */

/* One block per (row, sequence): merges the splits of sequences cut in
 * several pieces; writes zeros for empty sequences; leaves whole ones. */
__global__ void mla_combine_kernel(const int32_t *split_prefix, int rows, int R,
                                   const float *o_acc, const float *lse_acc, float *out)
{
    __shared__ float w[kMaxSplitsPerSeq];
    __shared__ float s_sum;
    const int row = blockIdx.x, s = blockIdx.y;
    const int b = split_prefix[s], ns = split_prefix[s + 1] - b;
    float *dst = out + ((size_t)s * rows + row) * R;

    if (ns == 1) {
        return;
    }
    if (ns == 0) {
        for (int c = threadIdx.x; c < R; c += blockDim.x) {
            dst[c] = 0.f;
        }
        return;
    }
    if (threadIdx.x == 0) {
        float mx = -CUDART_INF_F, sum = 0.f;
        for (int i = 0; i < ns; i++) {
            mx = fmaxf(mx, lse_acc[(size_t)(b + i) * rows + row]);
        }
        for (int i = 0; i < ns; i++) {
            const float li = lse_acc[(size_t)(b + i) * rows + row];
            const float wi = mx == -CUDART_INF_F ? 0.f : exp2f(li - mx);
            w[i] = wi;
            sum += wi;
        }
        s_sum = sum;
    }
    __syncthreads();
    const float inv = s_sum > 0.f ? 1.f / s_sum : 0.f;
    for (int c = threadIdx.x; c < R; c += blockDim.x) {
        float acc = 0.f;
        for (int i = 0; i < ns; i++) {
            if (w[i] != 0.f) {
                acc += w[i] * o_acc[((size_t)(b + i) * rows + row) * R + c];
            }
        }
        dst[c] = acc * inv;
    }
}

/* ---- host side ------------------------------------------------------------------------- */

struct WsCarve {
    size_t parts, prefix, lse, oacc, total;
};

WsCarve ws_carve(int n_seqs, int n_parts, int rows, int R)
{
    auto up = [](size_t x) { return (x + 255) & ~(size_t)255; };
    const size_t splits = (size_t)n_seqs + (size_t)n_parts;
    WsCarve w;
    w.parts = 0;
    w.prefix = w.parts + up(sizeof(SchedPart) * (size_t)n_parts);
    w.lse = w.prefix + up(sizeof(int32_t) * ((size_t)n_seqs + 1));
    w.oacc = w.lse + up(sizeof(float) * splits * (size_t)rows);
    w.total = w.oacc + up(sizeof(float) * splits * (size_t)rows * (size_t)R);
    return w;
}

template <int MT, bool FP8>
mls_status kernel_prepare(kcu_ctx *ctx, int *blocks_per_sm_p, mls_err *err)
{
    const int bytes = Smem<MT, FP8>::bytes;
    if (bytes > ctx->max_smem_optin) {
        mls_err_set(err, "kcu_mla_decode: kernel needs %d B of shared memory, device allows %d",
                    bytes, ctx->max_smem_optin);
        return MLS_ERR_UNSUPPORTED;
    }
    KCU_CHECK_CUDA(cudaFuncSetAttribute(mla_decode_kernel<MT, FP8>,
                                        cudaFuncAttributeMaxDynamicSharedMemorySize, bytes),
                   err);
    KCU_CHECK_CUDA(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
                       blocks_per_sm_p, mla_decode_kernel<MT, FP8>, kThreads, bytes),
                   err);
    if (*blocks_per_sm_p < 1) {
        mls_err_set(err, "kcu_mla_decode: kernel<%d,%d> cannot be resident", MT, (int)FP8);
        return MLS_ERR_UNSUPPORTED;
    }
    return MLS_OK;
}

template <int MT, bool FP8>
mls_status kernel_launch(kcu_ctx *ctx, const MlaArgs &args, dim3 grid, mls_err *err)
{
    mla_decode_kernel<MT, FP8><<<grid, kThreads, Smem<MT, FP8>::bytes, ctx->stream>>>(args);
    KCU_CHECK_LAUNCH("mla_decode_kernel", err);
    return MLS_OK;
}

mls_status dispatch_prepare(kcu_ctx *ctx, int mt, bool fp8, int *bps, mls_err *err)
{
    switch (mt * 2 + (fp8 ? 1 : 0)) {
    case 2: return kernel_prepare<1, false>(ctx, bps, err);
    case 3: return kernel_prepare<1, true>(ctx, bps, err);
    case 4: return kernel_prepare<2, false>(ctx, bps, err);
    case 5: return kernel_prepare<2, true>(ctx, bps, err);
    case 8: return kernel_prepare<4, false>(ctx, bps, err);
    case 9: return kernel_prepare<4, true>(ctx, bps, err);
    default: break;
    }
    mls_err_set(err, "kcu_mla_decode: no kernel for %d m-tiles", mt);
    return MLS_ERR_INTERNAL;
}

mls_status dispatch_launch(kcu_ctx *ctx, int mt, bool fp8, const MlaArgs &args, dim3 grid,
                           mls_err *err)
{
    switch (mt * 2 + (fp8 ? 1 : 0)) {
    case 2: return kernel_launch<1, false>(ctx, args, grid, err);
    case 3: return kernel_launch<1, true>(ctx, args, grid, err);
    case 4: return kernel_launch<2, false>(ctx, args, grid, err);
    case 5: return kernel_launch<2, true>(ctx, args, grid, err);
    case 8: return kernel_launch<4, false>(ctx, args, grid, err);
    case 9: return kernel_launch<4, true>(ctx, args, grid, err);
    default: break;
    }
    mls_err_set(err, "kcu_mla_decode: no kernel for %d m-tiles", mt);
    return MLS_ERR_INTERNAL;
}

/* The fixed validation ladder (FlashMLA style): params, layout, shape,
 * pointers and alignment, then the context, in that order; the first failure
 * names the field. Host-only: it never touches the device. */
mls_status validate(const kcu_ctx *ctx, const kcu_mla_params *p, mls_err *err)
{
    KCU_CHECK_ARG(p != NULL, err, "kcu_mla_decode: params is NULL");
    KCU_CHECK_ARG(p->layout != NULL, err, "kcu_mla_decode: params.layout is NULL");
    const kvl_layout *l = p->layout;
    KCU_CHECK_ARG(l->version == KVL_VERSION && l->page_tokens == KVL_PAGE_TOKENS, err,
                  "kcu_mla_decode: layout version %u / page_tokens %u, want %u / %u",
                  l->version, l->page_tokens, KVL_VERSION, KVL_PAGE_TOKENS);
    KCU_CHECK_SUPPORTED(l->dtype == KVL_DTYPE_BF16 || l->dtype == KVL_DTYPE_FP8, err,
                        "kcu_mla_decode: kv dtype %s (bf16 or fp8 on the GPU)",
                        kvl_dtype_name(l->dtype));
    KCU_CHECK_SUPPORTED(l->kv_lora_rank % 8 == 0 && l->kv_lora_rank <= KCU_MLA_MAX_RANK, err,
                        "kcu_mla_decode: kv_lora_rank %u (multiple of 8, <= %d)",
                        l->kv_lora_rank, KCU_MLA_MAX_RANK);
    KCU_CHECK_SUPPORTED(l->rope_dim % 2 == 0 && l->rope_dim <= KCU_MLA_MAX_ROPE, err,
                        "kcu_mla_decode: rope_dim %u (even, <= %d)", l->rope_dim,
                        KCU_MLA_MAX_ROPE);
    KCU_CHECK_ARG(l->row_bytes % 4 == 0 &&
                      l->row_bytes <= (l->dtype == KVL_DTYPE_FP8 ? (uint32_t)kRawMax : 2u * kLdk) &&
                      l->page_bytes == (uint64_t)l->page_tokens * l->row_bytes,
                  err, "kcu_mla_decode: layout row_bytes %u / page_bytes %llu inconsistent",
                  l->row_bytes, (unsigned long long)l->page_bytes);
    KCU_CHECK_ARG(p->n_seqs >= 1, err, "kcu_mla_decode: n_seqs %d", p->n_seqs);
    KCU_CHECK_SUPPORTED(p->n_seqs <= 65535, err, "kcu_mla_decode: n_seqs %d > 65535 (grid.y)",
                        p->n_seqs);
    KCU_CHECK_ARG(p->n_q >= 1 && p->n_heads >= 1, err, "kcu_mla_decode: n_q %d, n_heads %d",
                  p->n_q, p->n_heads);
    KCU_CHECK_SUPPORTED((int64_t)p->n_q * p->n_heads <= KCU_MLA_MAX_ROWS, err,
                        "kcu_mla_decode: n_q * n_heads = %lld > %d",
                        (long long)p->n_q * p->n_heads, KCU_MLA_MAX_ROWS);
    KCU_CHECK_ARG(p->softmax_scale > 0.f && isfinite(p->softmax_scale), err,
                  "kcu_mla_decode: softmax_scale %g", (double)p->softmax_scale);
    KCU_CHECK_ARG(p->max_kv_len >= 0, err, "kcu_mla_decode: max_kv_len %d", p->max_kv_len);
    KCU_CHECK_ARG((int64_t)p->page_table_stride * KVL_PAGE_TOKENS >= p->max_kv_len &&
                      p->page_table_stride >= 1,
                  err, "kcu_mla_decode: page_table_stride %d < ceil(max_kv_len %d / %u)",
                  p->page_table_stride, p->max_kv_len, KVL_PAGE_TOKENS);
    KCU_CHECK_ARG(p->kv_base != NULL && p->seq_lens != NULL && p->page_table != NULL &&
                      p->q_latent != NULL && (p->q_rope != NULL || l->rope_dim == 0) &&
                      p->out != NULL,
                  err, "kcu_mla_decode: NULL %s",
                  p->kv_base == NULL      ? "kv_base"
                  : p->seq_lens == NULL   ? "seq_lens"
                  : p->page_table == NULL ? "page_table"
                  : p->q_latent == NULL   ? "q_latent"
                  : p->out == NULL        ? "out"
                                          : "q_rope");
    KCU_CHECK_ARG(kcu_aligned(p->kv_base, 16) && kcu_aligned(p->q_latent, 8) &&
                      kcu_aligned(p->q_rope, 8) && kcu_aligned(p->out, 8),
                  err, "kcu_mla_decode: kv_base must be 16-B, q_latent/q_rope/out 8-B aligned");
    KCU_CHECK_ARG(ctx != NULL, err, "kcu_mla_decode: ctx is NULL");
    return MLS_OK;
}

} /* namespace */

extern "C" mls_status kcu_mla_plan_make(kcu_ctx *ctx, const kcu_mla_params *p,
                                        kcu_mla_plan *plan_p, mls_err *err)
{
    mls_status st = validate(ctx, p, err);
    kcu_mla_plan plan;
    int bps = 0;

    if (st != MLS_OK) {
        return st;
    }
    KCU_CHECK_ARG(plan_p != NULL, err, "kcu_mla_plan_make: plan_p is NULL");
    const int rows = p->n_q * p->n_heads;
    const int mt = rows <= 16 ? 1 : (rows <= 32 ? 2 : 4);
    const bool fp8 = p->layout->dtype == KVL_DTYPE_FP8;
    st = dispatch_prepare(ctx, mt, fp8, &bps, err);
    if (st != MLS_OK) {
        return st;
    }
    plan.n_seqs = p->n_seqs;
    plan.rows = rows;
    plan.kv_lora_rank = (int32_t)p->layout->kv_lora_rank;
    plan.dtype = p->layout->dtype;
    plan.block_rows = 16 * mt;
    plan.n_head_blocks = (rows + plan.block_rows - 1) / plan.block_rows;
    plan.n_parts = ctx->sm_count * bps / plan.n_head_blocks;
    if (plan.n_parts < 1) {
        plan.n_parts = 1;
    }
    if (plan.n_parts > kMaxSplitsPerSeq - 1) {
        plan.n_parts = kMaxSplitsPerSeq - 1;
    }
    plan.workspace_bytes = ws_carve(p->n_seqs, plan.n_parts, rows, plan.kv_lora_rank).total;
    *plan_p = plan;
    return MLS_OK;
}

extern "C" mls_status kcu_mla_decode(kcu_ctx *ctx, const kcu_mla_params *p,
                                     const kcu_mla_plan *plan, void *workspace,
                                     size_t workspace_bytes, mls_err *err)
{
    mls_status st = validate(ctx, p, err);
    if (st != MLS_OK) {
        return st;
    }
    const kvl_layout *l = p->layout;
    const int rows = p->n_q * p->n_heads;
    KCU_CHECK_ARG(plan != NULL && plan->n_seqs == p->n_seqs && plan->rows == rows &&
                      plan->kv_lora_rank == (int32_t)l->kv_lora_rank && plan->dtype == l->dtype,
                  err, "kcu_mla_decode: plan was made for another shape");
    KCU_CHECK_ARG(workspace != NULL && kcu_aligned(workspace, 256) &&
                      workspace_bytes >= plan->workspace_bytes,
                  err, "kcu_mla_decode: workspace %zu B (256-B aligned, >= %zu B)",
                  workspace_bytes, plan->workspace_bytes);

    const WsCarve wc = ws_carve(p->n_seqs, plan->n_parts, rows, (int)l->kv_lora_rank);
    uint8_t *ws = (uint8_t *)workspace;
    MlaArgs a;
    a.kv = p->kv_base;
    a.page_bytes = l->page_bytes;
    a.row_bytes = (int)l->row_bytes;
    a.rope_off = (int)l->rope_offset;
    a.scale_off = (int)l->scale_offset;
    a.R = (int)l->kv_lora_rank;
    a.D = (int)l->rope_dim;
    a.kpad = (a.R + a.D + 15) / 16 * 16;
    a.vec16 = l->row_bytes % 16 == 0;
    a.n_seqs = p->n_seqs;
    a.n_q = p->n_q;
    a.n_heads = p->n_heads;
    a.rows = rows;
    a.scale_log2 = p->softmax_scale * 1.4426950408889634f;
    a.seq_lens = p->seq_lens;
    a.page_table = p->page_table;
    a.pt_stride = p->page_table_stride;
    a.q_lat = p->q_latent;
    a.q_rope = p->q_rope;
    a.out = p->out;
    a.parts = (const SchedPart *)(ws + wc.parts);
    a.split_prefix = (const int32_t *)(ws + wc.prefix);
    a.lse_acc = (float *)(ws + wc.lse);
    a.o_acc = (float *)(ws + wc.oacc);

    mla_sched_kernel<<<1, 32, 0, ctx->stream>>>(p->seq_lens, p->n_seqs, plan->n_parts,
                                                (SchedPart *)(ws + wc.parts),
                                                (int32_t *)(ws + wc.prefix));
    KCU_CHECK_LAUNCH("mla_sched_kernel", err);
    st = dispatch_launch(ctx, plan->block_rows / 16, l->dtype == KVL_DTYPE_FP8, a,
                         dim3((unsigned)plan->n_parts, (unsigned)plan->n_head_blocks), err);
    if (st != MLS_OK) {
        return st;
    }
    mla_combine_kernel<<<dim3((unsigned)rows, (unsigned)p->n_seqs), 128, 0, ctx->stream>>>(
        a.split_prefix, rows, a.R, a.o_acc, a.lse_acc, p->out);
    KCU_CHECK_LAUNCH("mla_combine_kernel", err);
    return MLS_OK;
}
