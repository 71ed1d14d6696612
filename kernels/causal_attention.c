/* Causal multi-head self-attention of (B, H, T, D) float32, forward and backward (see
 * causal_attention.py: F.scaled_dot_product_attention's contract with is_causal=True).
 *
 * Each (batch, head) is one task for one thread, so that the results do not depend on the
 * thread count. A task copies its head into work memory (the queries times 1/sqrt(D); rows, or
 * transposed columns, padded with zeros; the queries and keys rotated on the way where rotary
 * tables are given, rounded as apply_rotary rounds them: read_row) and computes in vectors of
 * LANES keys, written with GCC's vector extensions (Lanes below): plain loops over small
 * fixed-size arrays were vectorised along whichever dimension GCC liked, often the wrong one.
 * For each few queries (FORWARD_ROWS, BACKWARD_ROWS: they share the loads) and each block of
 * LANES keys up to the causal diagonal:
 *  - forward: the scores s = (q / sqrt(D)) . k, -inf past the query (a product, then a sum, for
 *    each of the D features), kept in units of log2 (times log2 e); their maximum m; e^(s - m)
 *    as 2^((s - m) log2 e) (exp2_nonpositive: libm's expf does not vectorise without
 *    -ffast-math); their sum l; and out = (sum_j e^(s_j - m) v_j) / l, along D in vectors of
 *    the value rows padded to whole Lanes. Kept for backward: m and 1/l of each query.
 *  - backward (Dao et al. 2022, FlashAttention, Algorithm 2): P = e^(s - m) / l (computed again,
 *    bit for bit as forward computed it), dP = dO . v, dS = P (dP - Delta) with
 *    Delta = rowsum(dO o out), then dV^T += P^T dO and dK^T += dS^T (q / sqrt(D)) lane by lane
 *    and dQ += dS K along D; dQ is scaled by 1/sqrt(D) at the end, and dQ and dK are turned
 *    into the gradients of the inputs before the rotation, if any (unrotate_rows).
 * Products and sums are rounded each on its own (-ffp-contract=off): fmaf would be a library
 * call in the generic copy, and fused multiply-adds gain nothing on AMD's Zen, whose adds have
 * pipes of their own. D, which may be small or odd, is only ever a loop count (even where
 * rotated).
 *
 * The file is read three times: first for what does not depend on the vector width, then,
 * with LANES defined, for the kernels of 8 lanes (VECTOR_CLONES: x86-64-v3 and generic) and, on
 * x86-64 with GCC, of 16 (AVX-512, chosen at run time where the CPU has it: 1.4-1.5x faster
 * than 8 lanes on the 2-core AMD Zen 5 test machine; GCC 12 splits 16-lane vectors badly for
 * AVX2). Their names end in _8 and _16. The caller takes PyTorch's kernel where neither
 * vector copy would run (causal_attention_vectorised). Tasks are shared among the OpenMP
 * threads (PyTorch's own team: see kernels/compiled.py).
 */
#ifndef LANES

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "vector_clones.h"

#if X86_GCC
#define WIDE_TARGET __attribute__((target("avx512f")))
#endif
/* Helpers are inlined into each clone (GCC does not otherwise inline across target options). */
#define INLINE static inline __attribute__((always_inline))
#pragma GCC diagnostic ignored "-Wpsabi"  /* vectors passed between inlined helpers only */

static const float LOG2_E = 1.44269504088896341f;

static int64_t round_up(int64_t value, int64_t multiple) { return (value + multiple - 1) / multiple * multiple; }

/* Row t of one head's (T, D) input (from, at element stride d_stride along D) into to[d * step],
 * rotated where the rotary tables cos and sin ((T, D) rows, D even) are given, else as it is,
 * times factor. Element d of the rotated row is x[d] cos[d] + x[d ^ 1] sin[d], a product, a
 * product and their sum each rounded, as kernels/rotary.py's apply_rotary computes
 * x * cos + swap(x) * signed_sin (then times factor: 1/sqrt(D) for the queries, or 1). Both
 * elements of a pair are sums, the signs kept in the tables: GCC 12 turned an even element's
 * difference beside an odd one's sum (the "addsub" pattern) into vfmaddsub, a fused
 * multiply-add, in the AVX2 and AVX-512 copies in spite of -ffp-contract=off (seen in
 * unrotate_rows written so: 1-ulp differences). */
static void read_row(const float *restrict from, int64_t d_stride, int64_t t, int64_t dim, const float *restrict cos,
                     const float *restrict sin, float factor, float *restrict to, int64_t step) {
    if (cos == 0) {
        if (d_stride == 1 && step == 1) {  /* (vectorised) */
            for (int64_t d = 0; d < dim; ++d) to[d] = from[d] * factor;
        } else {
            for (int64_t d = 0; d < dim; ++d) to[d * step] = from[d * d_stride] * factor;
        }
        return;
    }
    const float *restrict c = cos + t * dim, *restrict s = sin + t * dim;
    for (int64_t d = 0; d < dim; d += 2) {
        const float even = from[d * d_stride], odd = from[(d + 1) * d_stride];
        to[d * step] = (even * c[d] + odd * s[d]) * factor;
        to[(d + 1) * step] = (odd * c[d + 1] + even * s[d + 1]) * factor;
    }
}

/* One head's (T, D) input at element strides (t, d) into work memory, rotated by the rotary
 * tables cos and sin where given (read_row), times factor: as rows (Tp, width) with zeros past
 * T and past D, or as columns (D, Tp) with zeros past T. */
static void copy_rows(const float *restrict from, int64_t t_stride, int64_t d_stride, int64_t length,
                      int64_t dim, const float *cos, const float *sin, float factor, int64_t padded_length,
                      int64_t width, float *restrict to) {
    for (int64_t t = 0; t < length; ++t) {
        float *restrict row = to + t * width;
        read_row(from + t * t_stride, d_stride, t, dim, cos, sin, factor, row, 1);
        for (int64_t d = dim; d < width; ++d) row[d] = 0.0f;
    }
    memset(to + length * width, 0, sizeof(float) * (size_t)((padded_length - length) * width));
}

static void copy_columns(const float *restrict from, int64_t t_stride, int64_t d_stride, int64_t length,
                         int64_t dim, const float *cos, const float *sin, int64_t padded_length,
                         float *restrict to) {
    for (int64_t t = 0; t < length; ++t) {
        read_row(from + t * t_stride, d_stride, t, dim, cos, sin, 1.0f, to + t, padded_length);
    }
    for (int64_t d = 0; d < dim; ++d) {
        for (int64_t t = length; t < padded_length; ++t) to[d * padded_length + t] = 0.0f;
    }
}

/* The gradients (T, D) rows of a rotated input (read_row) made the input's, in place: with g the
 * gradient of the rotated row, g[d] cos[d] + g[d ^ 1] sin[d ^ 1], rounded as PyTorch's autograd
 * rounds the gradient of x * cos + swap(x) * signed_sin: g * cos plus swap(g * signed_sin). */
static void unrotate_rows(float *restrict rows, int64_t length, int64_t dim, const float *restrict cos,
                          const float *restrict sin) {
    for (int64_t i = 0; i < length * dim; i += 2) {
        const float even = rows[i], odd = rows[i + 1];
        rows[i] = even * cos[i] + odd * sin[i + 1];
        rows[i + 1] = odd * cos[i + 1] + even * sin[i];
    }
}

#define LANES 8
#define FORWARD_ROWS 4  /* queries taken together (8 would not fit AVX2's 16 registers) */
#define BACKWARD_ROWS 4
#define NAME(name) name##_8
#define KERNEL VECTOR_CLONES
#include "causal_attention.c"  /* this file again, with LANES defined */
#undef LANES
#undef FORWARD_ROWS
#undef BACKWARD_ROWS
#undef NAME
#undef KERNEL

#if X86_GCC
#define LANES 16
#define FORWARD_ROWS 8
#define BACKWARD_ROWS 4  /* measured: 8 is slower */
#define NAME(name) name##_16
#define KERNEL WIDE_TARGET
#include "causal_attention.c"  /* this file again, with LANES defined */
#undef LANES
#undef FORWARD_ROWS
#undef BACKWARD_ROWS
#undef NAME
#undef KERNEL
#endif

/* The kernels of one vector width. */
typedef struct {
    int64_t (*forward_work)(int64_t length, int64_t dim);
    int64_t (*backward_work)(int64_t length, int64_t dim);
    void (*forward_head)(const float *query, const float *key, const float *value, const int64_t *strides,
                         const float *cos, const float *sin, int64_t length, int64_t dim, float scale, float *out,
                         float *stats, float *work);
    void (*backward_head)(const float *query, const float *key, const float *value, const float *out,
                          const float *grad, const int64_t *strides, const float *cos, const float *sin,
                          int64_t length, int64_t dim, float scale, const float *stats, float *grad_query,
                          float *grad_key, float *grad_value, float *work);
} Kernels;

static const Kernels *kernels(void) {
    static const Kernels narrow = {forward_work_8, backward_work_8, forward_head_8, backward_head_8};
#if X86_GCC
    static const Kernels wide = {forward_work_16, backward_work_16, forward_head_16, backward_head_16};
    if (__builtin_cpu_supports("avx512f")) return &wide;
#endif
    return &narrow;
}

/* The arrays of a call: inputs and outputs of forward (query, key, value -> result, stats) or
 * of backward (query, key, value, out, grad, stats -> grad_query, grad_key, grad_value).
 * strides: (b, h, t, d) element strides of query, key, value and (backward) grad. cos, sin:
 * the rotary tables (T, D) applied to the queries and keys, or null (none). */
typedef struct {
    const float *query, *key, *value, *out, *grad;
    const int64_t *strides;
    const float *cos, *sin;
    float *result, *stats, *grad_query, *grad_key, *grad_value;
    float scale;
} Arrays;

/* Runs forward or backward over every (batch, head) on the OpenMP threads, each thread with
 * its own work memory. Returns 0, or 1 when work memory could not be allocated (the outputs
 * are then incomplete). */
static int run_heads(const Arrays *a, int backward, int64_t batch, int64_t heads, int64_t length, int64_t dim) {
    const Kernels *k = kernels();
    const int64_t work_floats = backward ? k->backward_work(length, dim) : k->forward_work(length, dim);
    const int64_t *s = a->strides;
    int failed = 0;
#pragma omp parallel reduction(|| : failed)
    {
        float *work = malloc(sizeof(float) * (size_t)work_floats);
        failed = work == 0;
#pragma omp for schedule(static)
        for (int64_t task = 0; task < batch * heads; ++task) {
            if (work == 0) continue;
            const int64_t b = task / heads, h = task % heads, rows = task * length * dim;
            const float *query = a->query + b * s[0] + h * s[1], *key = a->key + b * s[4] + h * s[5];
            const float *value = a->value + b * s[8] + h * s[9];
            if (backward) {
                k->backward_head(query, key, value, a->out + rows, a->grad + b * s[12] + h * s[13], s, a->cos,
                                 a->sin, length, dim, a->scale, a->stats + 2 * task * length, a->grad_query + rows,
                                 a->grad_key + rows, a->grad_value + rows, work);
            } else {
                k->forward_head(query, key, value, s, a->cos, a->sin, length, dim, a->scale, a->result + rows,
                                a->stats + 2 * task * length, work);
            }
        }
        free(work);
    }
    return failed;
}

/* 1 where the kernels run vectorised (x86-64 built by GCC, with AVX-512 or the AVX2 clone's
 * features), else 0: the generic code (SSE2 vectors, or none) is slower than PyTorch's own
 * kernel (3-6x, measured). */
int causal_attention_vectorised(void) {
#if X86_GCC
    return __builtin_cpu_supports("avx512f") || __builtin_cpu_supports(VECTOR_CLONE_FEATURE);
#else
    return 0;
#endif
}

/* out (B, H, T, D) and stats (B, H, T, 2): each query's maximum score m (times log2 e) and 1/l,
 * for backward. strides: 12 element strides, (b, h, t, d) of query, key and value. cos, sin:
 * rotary tables (T, D), contiguous, D even, that rotate the queries and keys as they are read
 * (read_row), or null for none. Returns 0, or 1 when work memory could not be allocated (the
 * outputs are then incomplete). */
int causal_attention_forward(const float *query, const float *key, const float *value, const int64_t *strides,
                             const float *cos, const float *sin, int64_t batch, int64_t heads, int64_t length,
                             int64_t dim, float scale, float *out, float *stats) {
    const Arrays arrays = {query, key, value, 0, 0, strides, cos, sin, out, stats, 0, 0, 0, scale};
    return run_heads(&arrays, 0, batch, heads, length, dim);
}

/* grad_query, grad_key, grad_value (B, H, T, D) from forward's out and stats (contiguous) and
 * grad = dL/dout. strides: 16 element strides, (b, h, t, d) of query, key, value and grad.
 * cos, sin: forward's rotary tables or null; with them grad_query and grad_key are the
 * gradients of the inputs before rotation (unrotate_rows). Returns 0, or 1 when work memory
 * could not be allocated (the outputs are then incomplete). */
int causal_attention_backward(const float *query, const float *key, const float *value, const float *out,
                              const float *grad, const int64_t *strides, const float *cos, const float *sin,
                              int64_t batch, int64_t heads, int64_t length, int64_t dim, float scale,
                              const float *stats, float *grad_query, float *grad_key, float *grad_value) {
    const Arrays arrays = {query, key, value, out, grad, strides, cos, sin, 0, (float *)stats, grad_query,
                           grad_key, grad_value, scale};
    return run_heads(&arrays, 1, batch, heads, length, dim);
}

#else  /* LANES defined: the kernels for vectors of LANES floats, named by NAME */

#define Lanes NAME(Lanes)
#define LaneInts NAME(LaneInts)
#define LaneBits NAME(LaneBits)
#define load NAME(load)
#define store NAME(store)
#define splat NAME(splat)
#define blend NAME(blend)
#define larger NAME(larger)
#define positions NAME(positions)
#define causal NAME(causal)
#define exp2_nonpositive NAME(exp2_nonpositive)
#define forward_work NAME(forward_work)
#define backward_work NAME(backward_work)
#define forward_head NAME(forward_head)
#define backward_head NAME(backward_head)

typedef float Lanes __attribute__((vector_size(sizeof(float) * LANES)));
typedef int32_t LaneInts __attribute__((vector_size(sizeof(int32_t) * LANES)));
typedef uint32_t LaneBits __attribute__((vector_size(sizeof(uint32_t) * LANES)));

INLINE Lanes load(const float *from) {
    Lanes lanes;
    memcpy(&lanes, from, sizeof lanes);
    return lanes;
}

INLINE void store(float *to, Lanes lanes) { memcpy(to, &lanes, sizeof lanes); }

/* A constant in every lane. (For a variable, vector * scalar is better: GCC 12 builds a
 * 16-lane vector from a variable one lane at a time, each depending on the last.) */
INLINE Lanes splat(float x) {
    const Lanes zero = {0.0f};
    return x - zero;  /* x - 0 is x, -0 included */
}

INLINE Lanes blend(LaneInts mask, Lanes yes, Lanes no) {
    return (Lanes)(((LaneInts)yes & mask) | ((LaneInts)no & ~mask));
}

INLINE Lanes larger(Lanes a, Lanes b) { return blend(a > b, a, b); }

/* Lane l: position + l. */
INLINE LaneInts positions(int64_t position) {
    LaneInts lanes;
    for (int l = 0; l < LANES; ++l) lanes[l] = (int32_t)(position + l);
    return lanes;
}

/* The scores of the keys at key_positions for the query at position query: -inf for the keys after it. */
INLINE Lanes causal(Lanes scores, LaneInts key_positions, int64_t query) {
    return blend(key_positions <= (int32_t)query, scores, splat(-__builtin_inff()));
}

/* 2^x for x <= 0 within 1.2 ulp: 2^n with n = round(x), built in the exponent bits, times 2^r,
 * r = x - n in [-1/2, 1/2] (exact), by a degree-6 polynomial (near-minimax on that interval,
 * relative error 2e-9: fitted for this file). x below -126.5 (-inf: a masked score) gives
 * exactly 0, rather than a subnormal 2^x (< 8e-39: far below the rounding of any row's sum,
 * which has a term 2^0 = 1); NaN gives NaN. */
INLINE Lanes exp2_nonpositive(Lanes x) {
    const Lanes lowest = splat(-127.0f), shifter = splat(12582912.0f);  /* 1.5 * 2^23: adding it rounds */
    const Lanes clamped = blend(x < lowest, lowest, x);
    const Lanes n = (clamped + shifter) - shifter;
    const Lanes r = clamped - n;
    Lanes polynomial = r * 1.535336196e-4f + 1.339887502e-3f;
    polynomial = polynomial * r + 9.618436918e-3f;
    polynomial = polynomial * r + 5.550332367e-2f;
    polynomial = polynomial * r + 2.402264774e-1f;
    polynomial = polynomial * r + 6.931471825e-1f;
    polynomial = polynomial * r + 1.0f;
    /* n + 127 in the exponent field: 0 (the float 0) for n = -127 */
    const LaneBits exponent = (LaneBits)(__builtin_convertvector(n, LaneInts) + 127) << 23;
    return polynomial * (Lanes)exponent;
}

static int64_t forward_work(int64_t length, int64_t dim) {
    const int64_t padded_length = round_up(length, LANES), padded_dim = round_up(dim, LANES);
    return padded_length * (2 * dim + padded_dim) + FORWARD_ROWS * (padded_length + padded_dim);
}

/* Forward of one head: out (T, D) rows and (m, 1/l) of each query into stats (T, 2), m in
 * units of log2 (m log2 e). Work: forward_work floats. */
KERNEL
static void forward_head(const float *query, const float *key, const float *value, const int64_t *strides,
                         const float *cos, const float *sin, int64_t length, int64_t dim, float scale,
                         float *restrict out, float *restrict stats, float *work) {
    const int64_t padded_length = round_up(length, LANES), padded_dim = round_up(dim, LANES);
    float *restrict queries = work;                                    /* (Tp, D), times scale */
    float *restrict key_columns = queries + padded_length * dim;       /* (D, Tp) */
    float *restrict value_rows = key_columns + dim * padded_length;    /* (Tp, Dp) */
    float *restrict scores = value_rows + padded_length * padded_dim;  /* (FORWARD_ROWS, Tp): s log2 e, e^(s - m) */
    float *restrict sums = scores + FORWARD_ROWS * padded_length;      /* (FORWARD_ROWS, Dp): out times l */
    copy_rows(query, strides[2], strides[3], length, dim, cos, sin, scale, padded_length, dim, queries);
    copy_columns(key, strides[6], strides[7], length, dim, cos, sin, padded_length, key_columns);
    copy_rows(value, strides[10], strides[11], length, dim, 0, 0, 1.0f, padded_length, padded_dim, value_rows);
    for (int64_t i = 0; i < length; i += FORWARD_ROWS) {  /* queries i..i+FORWARD_ROWS-1 */
        const int64_t seen = i + FORWARD_ROWS;  /* the keys 0..seen-1 they may see */
        Lanes maxima[FORWARD_ROWS];
        for (int r = 0; r < FORWARD_ROWS; ++r) maxima[r] = splat(-__builtin_inff());
        for (int64_t first = 0; first < seen; first += LANES) {  /* keys first..first+LANES-1 */
            Lanes s[FORWARD_ROWS];
            for (int r = 0; r < FORWARD_ROWS; ++r) s[r] = splat(0.0f);
            for (int64_t d = 0; d < dim; ++d) {
                const Lanes k = load(key_columns + d * padded_length + first);
                for (int r = 0; r < FORWARD_ROWS; ++r) s[r] += k * queries[(i + r) * dim + d];
            }
            const LaneInts key_positions = positions(first);
            for (int r = 0; r < FORWARD_ROWS; ++r) {
                s[r] = s[r] * LOG2_E;
                if (first + LANES - 1 > i + r) s[r] = causal(s[r], key_positions, i + r);
                maxima[r] = larger(maxima[r], s[r]);
                store(scores + r * padded_length + first, s[r]);
            }
        }
        float maximum[FORWARD_ROWS];
        Lanes totals[FORWARD_ROWS];
        for (int r = 0; r < FORWARD_ROWS; ++r) {
            maximum[r] = maxima[r][0];
            for (int l = 1; l < LANES; ++l) maximum[r] = maxima[r][l] > maximum[r] ? maxima[r][l] : maximum[r];
            totals[r] = splat(0.0f);
        }
        memset(sums, 0, sizeof(float) * (size_t)(FORWARD_ROWS * padded_dim));
        for (int64_t first = 0; first < seen; first += LANES) {  /* e^(s - m), l and out times l */
            for (int r = 0; r < FORWARD_ROWS; ++r) {
                const Lanes p = exp2_nonpositive(load(scores + r * padded_length + first) - maximum[r]);
                totals[r] += p;
                store(scores + r * padded_length + first, p);
            }
            for (int64_t piece = 0; piece < padded_dim; piece += LANES) {
                Lanes sum[FORWARD_ROWS];
                for (int r = 0; r < FORWARD_ROWS; ++r) sum[r] = load(sums + r * padded_dim + piece);
                for (int l = 0; l < LANES; ++l) {
                    const Lanes v = load(value_rows + (first + l) * padded_dim + piece);
                    for (int r = 0; r < FORWARD_ROWS; ++r) sum[r] += scores[r * padded_length + first + l] * v;
                }
                for (int r = 0; r < FORWARD_ROWS; ++r) store(sums + r * padded_dim + piece, sum[r]);
            }
        }
        for (int r = 0; r < FORWARD_ROWS && i + r < length; ++r) {
            float total = totals[r][0];
            for (int l = 1; l < LANES; ++l) total += totals[r][l];
            const float reciprocal = 1.0f / total;
            for (int64_t d = 0; d < dim; ++d) out[(i + r) * dim + d] = sums[r * padded_dim + d] * reciprocal;
            stats[2 * (i + r)] = maximum[r];
            stats[2 * (i + r) + 1] = reciprocal;
        }
    }
}

static int64_t backward_work(int64_t length, int64_t dim) {
    const int64_t padded_length = round_up(length, LANES), padded_dim = round_up(dim, LANES);
    return padded_length * (4 * dim + 2 * padded_dim + 3) + 2 * dim * LANES + BACKWARD_ROWS * LANES;
}

/* Backward of one head into grad_query, grad_key and grad_value (T, D) rows, from forward's out
 * and stats. Work: backward_work floats. */
KERNEL
static void backward_head(const float *query, const float *key, const float *value, const float *out,
                          const float *grad, const int64_t *strides, const float *cos, const float *sin,
                          int64_t length, int64_t dim, float scale, const float *stats, float *restrict grad_query,
                          float *restrict grad_key, float *restrict grad_value, float *work) {
    const int64_t padded_length = round_up(length, LANES), padded_dim = round_up(dim, LANES);
    float *restrict queries = work;                                        /* (Tp, D), times scale */
    float *restrict grads = queries + padded_length * dim;                 /* dO (Tp, D) */
    float *restrict key_columns = grads + padded_length * dim;             /* (D, Tp) */
    float *restrict value_columns = key_columns + dim * padded_length;     /* (D, Tp) */
    float *restrict key_rows = value_columns + dim * padded_length;        /* (Tp, Dp) */
    float *restrict query_sums = key_rows + padded_length * padded_dim;    /* dQ sqrt(D) (Tp, Dp) */
    float *restrict maxima = query_sums + padded_length * padded_dim;      /* m log2 e (Tp) */
    float *restrict reciprocals = maxima + padded_length;                  /* 1/l (Tp), 0 past T: P = 0 */
    float *restrict deltas = reciprocals + padded_length;                  /* Delta (Tp) */
    float *restrict key_sums = deltas + padded_length;                     /* dK^T of LANES keys (D, LANES) */
    float *restrict value_sums = key_sums + dim * LANES;                   /* dV^T of LANES keys (D, LANES) */
    float *restrict slopes = value_sums + dim * LANES;                     /* dS (BACKWARD_ROWS, LANES) */
    copy_rows(query, strides[2], strides[3], length, dim, cos, sin, scale, padded_length, dim, queries);
    copy_rows(grad, strides[14], strides[15], length, dim, 0, 0, 1.0f, padded_length, dim, grads);
    copy_columns(key, strides[6], strides[7], length, dim, cos, sin, padded_length, key_columns);
    copy_columns(value, strides[10], strides[11], length, dim, 0, 0, padded_length, value_columns);
    copy_rows(key, strides[6], strides[7], length, dim, cos, sin, 1.0f, padded_length, padded_dim, key_rows);
    memset(query_sums, 0, sizeof(float) * (size_t)(padded_length * padded_dim));
    for (int64_t t = 0; t < padded_length; ++t) {
        float delta = 0.0f;
        for (int64_t d = 0; d < dim && t < length; ++d) delta += grads[t * dim + d] * out[t * dim + d];
        maxima[t] = t < length ? stats[2 * t] : 0.0f;
        reciprocals[t] = t < length ? stats[2 * t + 1] : 0.0f;
        deltas[t] = delta;
    }
    const int64_t rows_end = round_up(length, BACKWARD_ROWS);
    for (int64_t first = 0; first < length; first += LANES) {  /* keys first..first+LANES-1 */
        const LaneInts key_positions = positions(first);
        memset(key_sums, 0, sizeof(float) * (size_t)(2 * dim * LANES));
        for (int64_t i = first; i < rows_end; i += BACKWARD_ROWS) {  /* queries i..: those that see these keys */
            Lanes p[BACKWARD_ROWS], ds[BACKWARD_ROWS];
            for (int r = 0; r < BACKWARD_ROWS; ++r) p[r] = splat(0.0f);
            for (int64_t d = 0; d < dim; ++d) {  /* e^(s - m), as forward computes it */
                const Lanes k = load(key_columns + d * padded_length + first);
                for (int r = 0; r < BACKWARD_ROWS; ++r) p[r] += k * queries[(i + r) * dim + d];
            }
            for (int r = 0; r < BACKWARD_ROWS; ++r) {  /* P (0 past T, where 1/l is 0) */
                p[r] = p[r] * LOG2_E;
                if (first + LANES - 1 > i + r) p[r] = causal(p[r], key_positions, i + r);
                p[r] = exp2_nonpositive(p[r] - maxima[i + r]) * reciprocals[i + r];
                ds[r] = splat(0.0f);
            }
            for (int64_t d = 0; d < dim; ++d) {  /* dP, and dV^T += P^T dO */
                const Lanes v = load(value_columns + d * padded_length + first);
                Lanes value_sum = load(value_sums + d * LANES);
                for (int r = 0; r < BACKWARD_ROWS; ++r) {
                    const float g = grads[(i + r) * dim + d];
                    ds[r] += v * g;
                    value_sum += p[r] * g;
                }
                store(value_sums + d * LANES, value_sum);
            }
            for (int r = 0; r < BACKWARD_ROWS; ++r) {
                ds[r] = p[r] * (ds[r] - deltas[i + r]);
                store(slopes + r * LANES, ds[r]);
            }
            for (int64_t d = 0; d < dim; ++d) {  /* dK^T += dS^T (q/sqrt(D)) */
                Lanes key_sum = load(key_sums + d * LANES);
                for (int r = 0; r < BACKWARD_ROWS; ++r) key_sum += ds[r] * queries[(i + r) * dim + d];
                store(key_sums + d * LANES, key_sum);
            }
            for (int64_t piece = 0; piece < padded_dim; piece += LANES) {  /* dQ sqrt(D) += dS K */
                Lanes sum[BACKWARD_ROWS];
                for (int r = 0; r < BACKWARD_ROWS; ++r) sum[r] = load(query_sums + (i + r) * padded_dim + piece);
                for (int l = 0; l < LANES; ++l) {
                    const Lanes k = load(key_rows + (first + l) * padded_dim + piece);
                    for (int r = 0; r < BACKWARD_ROWS; ++r) sum[r] += slopes[r * LANES + l] * k;
                }
                for (int r = 0; r < BACKWARD_ROWS; ++r) store(query_sums + (i + r) * padded_dim + piece, sum[r]);
            }
        }
        const int64_t count = length - first < LANES ? length - first : LANES;
        for (int64_t d = 0; d < dim; ++d) {
            for (int64_t l = 0; l < count; ++l) {
                grad_key[(first + l) * dim + d] = key_sums[d * LANES + l];
                grad_value[(first + l) * dim + d] = value_sums[d * LANES + l];
            }
        }
    }
    for (int64_t t = 0; t < length; ++t) {
        for (int64_t d = 0; d < dim; ++d) grad_query[t * dim + d] = query_sums[t * padded_dim + d] * scale;
    }
    if (cos != 0) {  /* dQ, dK of the rotated queries and keys -> of the inputs */
        unrotate_rows(grad_query, length, dim, cos, sin);
        unrotate_rows(grad_key, length, dim, cos, sin);
    }
}

#undef Lanes
#undef LaneInts
#undef LaneBits
#undef load
#undef store
#undef splat
#undef blend
#undef larger
#undef positions
#undef causal
#undef exp2_nonpositive
#undef forward_work
#undef backward_work
#undef forward_head
#undef backward_head

#endif
