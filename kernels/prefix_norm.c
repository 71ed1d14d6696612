/* Causal prefix normalisation of (B, T, F) float32 queries, forward and backward in one pass
 * over T each (see models/ffw/prefix_norm.py, whose torch path this reproduces bit for bit).
 *
 * The running sums follow that path's blocked scan (scan_ with block C): inside each of the
 * first T - T mod C rows' blocks a running sum from the block's start (end, in reverse), plus
 * the previous (next) block's carried total; the last T mod C rows continue one by one. Every
 * product and sum is rounded as the torch path's elementwise ops round them: separately
 * (compiled with -ffp-contract=off), except where torch's addcmul fuses a multiply-add,
 * which fmaf reproduces. The loops over F vectorise; column ranges and sequences are
 * shared among the OpenMP threads (PyTorch's own team: see kernels/compiled.py).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "vector_clones.h"

/* to[f] = first[f] + second[f], or a copy of first when second is null. */
static inline void add_or_copy(float *restrict to, const float *restrict first, const float *restrict second,
                               int64_t width) {
    if (second == 0) {
        memcpy(to, first, sizeof(float) * (size_t)width);
    } else {
        for (int64_t f = 0; f < width; ++f) to[f] = first[f] + second[f];
    }
}

/* to[f] = first[f] + to[f] (a running sum), or a copy of first when starting. */
static inline void accumulate(float *restrict to, const float *restrict first, int starting, int64_t width) {
    if (starting) {
        memcpy(to, first, sizeof(float) * (size_t)width);
    } else {
        for (int64_t f = 0; f < width; ++f) to[f] = first[f] + to[f];
    }
}

/* Forward of one sequence: out, mean m_t, scale r_t and clamped ([S2/n - m² < 0]), (T, F) each.
 * Work: 7 vectors of F floats. */
VECTOR_CLONES
static void forward_sequence(const float *restrict x, int64_t length, int64_t width, int64_t stride, int64_t block,
                             const float *restrict weight, const float *restrict bias, float eps, float *restrict out,
                             float *restrict mean, float *restrict scale, uint8_t *restrict clamped, float *work) {
    float *within_first = work, *within_second = work + width, *sum_first = work + 2 * width,
          *sum_second = work + 3 * width, *square = work + 4 * width, *carry_first = work + 5 * width,
          *carry_second = work + 6 * width;
    const int64_t blocked_rows = length / block * block;
    for (int64_t t = 0; t < length; ++t) {
        const float *restrict row = x + t * stride;
        const float count = (float)(t + 1);
        for (int64_t f = 0; f < width; ++f) square[f] = row[f] * row[f];
        if (t < blocked_rows) {
            /* S_t = (sum of the block's rows up to t) + S at the previous block's last row */
            const int first_of_block = t % block == 0;
            accumulate(within_first, row, first_of_block, width);
            accumulate(within_second, square, first_of_block, width);
            add_or_copy(sum_first, within_first, t < block ? 0 : carry_first, width);
            add_or_copy(sum_second, within_second, t < block ? 0 : carry_second, width);
            if (t % block == block - 1) {  /* the carry for the next block */
                memcpy(carry_first, sum_first, sizeof(float) * (size_t)width);
                memcpy(carry_second, sum_second, sizeof(float) * (size_t)width);
            }
        } else {
            accumulate(sum_first, row, 0, width);
            accumulate(sum_second, square, 0, width);
        }
        float *restrict out_row = out + t * stride, *restrict mean_row = mean + t * stride;
        float *restrict scale_row = scale + t * stride;
        uint8_t *restrict clamped_row = clamped + t * stride;
        for (int64_t f = 0; f < width; ++f) {
            const float m = sum_first[f] / count;
            const float variance = fmaf(-m, m, sum_second[f] / count);
            clamped_row[f] = variance < 0.0f;
            const float r = 1.0f / sqrtf((variance < 0.0f ? 0.0f : variance) + eps);
            out_row[f] = fmaf((row[f] - m) * r, weight[f], bias[f]);
            mean_row[f] = m;
            scale_row[f] = r;
        }
    }
}

/* Backward of one sequence: grad_query and weighted (= x̂ g, summed over B and T by the caller
 * for dL/dw), (T, F) each. Work: 9 vectors of F floats. */
VECTOR_CLONES
static void backward_sequence(const float *restrict x, const float *restrict grad, const float *restrict weight,
                              const float *restrict mean, const float *restrict scale, const uint8_t *restrict clamped,
                              int64_t length, int64_t width, int64_t stride, int64_t block, float *restrict grad_query,
                              float *restrict weighted, float *work) {
    float *within_first = work, *within_second = work + width, *carry_first = work + 2 * width,
          *carry_second = work + 3 * width, *later_first = work + 4 * width, *later_second = work + 5 * width,
          *own_first = work + 6 * width, *own_second = work + 7 * width, *direct = work + 8 * width;
    const int64_t blocks = length / block, blocked_rows = blocks * block;
    for (int64_t t = length - 1; t >= 0; --t) {
        const int64_t offset = t * stride;
        const float reciprocal = 1.0f / (float)(t + 1);
        const float second_factor = reciprocal * -0.5f, first_factor = -reciprocal;
        for (int64_t f = 0; f < width; ++f) {  /* this row's dL/dS1_t, dL/dS2_t and the direct path */
            const float r = scale[offset + f], m = mean[offset + f], g = grad[offset + f];
            const float own_direct = g * weight[f] * r;
            const float normalized = (x[offset + f] - m) * r;
            const float product = own_direct * r * normalized;
            const float second = (clamped[offset + f] ? 0.0f : product) * second_factor;
            own_second[f] = second;
            own_first[f] = fmaf(-2.0f * m, second, own_direct * first_factor);
            direct[f] = own_direct;
            weighted[offset + f] = normalized * g;
        }
        /* R_t = sum_{s>=t} dS_s, formed as scan_(reverse=True) forms it */
        if (t >= blocked_rows) {  /* the last T mod C rows: v + R_{t+1}, v alone at T-1 */
            accumulate(later_first, own_first, t == length - 1, width);
            accumulate(later_second, own_second, t == length - 1, width);
        } else {
            const int last_of_block = t % block == block - 1, last_block = t / block == blocks - 1;
            if (last_of_block && !last_block) {  /* the later block's first row, fully carried */
                memcpy(carry_first, later_first, sizeof(float) * (size_t)width);
                memcpy(carry_second, later_second, sizeof(float) * (size_t)width);
            }
            /* the suffix within the block; the last block's last row takes the rest's total */
            const int alone = last_of_block && !(last_block && blocked_rows < length);
            if (last_of_block && !alone) {
                add_or_copy(within_first, own_first, later_first, width);
                add_or_copy(within_second, own_second, later_second, width);
            } else {
                accumulate(within_first, own_first, alone, width);
                accumulate(within_second, own_second, alone, width);
            }
            add_or_copy(later_first, within_first, last_block ? 0 : carry_first, width);
            add_or_copy(later_second, within_second, last_block ? 0 : carry_second, width);
        }
        for (int64_t f = 0; f < width; ++f) {
            grad_query[offset + f] = fmaf(2.0f * x[offset + f], later_second[f], direct[f] + later_first[f]);
        }
    }
}

/* The (sequence, column range) pieces of a (B, T, F) pass: column ranges of at least 64
 * floats (whole cache lines), as many as the OpenMP threads can take. */
static int64_t column_pieces(int64_t width) {
    int64_t threads = 1;
#ifdef _OPENMP
    threads = omp_get_max_threads();
#endif
    int64_t pieces = width / 64;
    return pieces < 1 ? 1 : pieces < threads ? pieces : threads;
}

static int64_t piece_start(int64_t piece, int64_t pieces, int64_t width) {
    return piece == pieces ? width : width / 64 * piece / pieces * 64;
}

/* The arrays of one pass: inputs and outputs of forward (x, weight, bias -> out, mean, scale,
 * clamped) or of backward (x, grad, weight, mean, scale, clamped -> grad_query, weighted). */
typedef struct {
    const float *x, *grad, *weight, *bias;
    float *out, *mean, *scale, *grad_query, *weighted;
    uint8_t *clamped;
    float eps;
} Arrays;

/* Runs forward or backward over every (sequence, column range) piece on the OpenMP threads.
 * Returns 0, or 1 when work memory could not be allocated (the outputs are then incomplete). */
static int run_pieces(const Arrays *arrays, int backward, int64_t batch, int64_t length, int64_t width,
                      int64_t block) {
    const int64_t pieces = column_pieces(width);
    int failed = 0;
#pragma omp parallel for schedule(static) reduction(|| : failed)
    for (int64_t task = 0; task < batch * pieces; ++task) {
        const int64_t b = task / pieces, piece = task % pieces;
        const int64_t start = piece_start(piece, pieces, width), end = piece_start(piece + 1, pieces, width);
        float *work = malloc(sizeof(float) * 9 * (size_t)(end - start));
        if (work == 0) {
            failed = 1;
            continue;
        }
        const int64_t at = b * length * width + start;
        const Arrays *a = arrays;
        if (backward) {
            backward_sequence(a->x + at, a->grad + at, a->weight + start, a->mean + at, a->scale + at,
                              a->clamped + at, length, end - start, width, block, a->grad_query + at,
                              a->weighted + at, work);
        } else {
            forward_sequence(a->x + at, length, end - start, width, block, a->weight + start, a->bias + start,
                             a->eps, a->out + at, a->mean + at, a->scale + at, a->clamped + at, work);
        }
        free(work);
    }
    return failed;
}

/* Returns 0, or 1 when work memory could not be allocated (the outputs are then incomplete). */
int prefix_norm_forward(const float *x, int64_t batch, int64_t length, int64_t width, int64_t block,
                        const float *weight, const float *bias, float eps, float *out, float *mean, float *scale,
                        uint8_t *clamped) {
    const Arrays arrays = {x, 0, weight, bias, out, mean, scale, 0, 0, clamped, eps};
    return run_pieces(&arrays, 0, batch, length, width, block);
}

/* Returns 0, or 1 when work memory could not be allocated (the outputs are then incomplete). */
int prefix_norm_backward(const float *x, const float *grad, const float *weight, const float *mean,
                         const float *scale, const uint8_t *clamped, int64_t batch, int64_t length, int64_t width,
                         int64_t block, float *grad_query, float *weighted) {
    const Arrays arrays = {x, grad, weight, 0, 0, (float *)mean, (float *)scale, grad_query, weighted,
                           (uint8_t *)clamped, 0.0f};
    return run_pieces(&arrays, 1, batch, length, width, block);
}
