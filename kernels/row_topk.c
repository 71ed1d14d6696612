/* Top-k of each row of a row-major float32 matrix, sorted descending (see row_topk.py).
 *
 * Per row, without data-dependent branches in the hot loops:
 *  1. a threshold t that at least k elements reach: the columns are dealt into L = min(2k,
 *     columns) lanes (column c to lane c mod L) and t is the k-th largest lane maximum;
 *  2. the elements >= t (the candidates, in column order) are gathered;
 *  3. each candidate's rank is the number of candidates that beat it (a larger value, or
 *     the same value in an earlier column), and the k of rank < k are written at their rank.
 * Rows shorter than 4k take one insertion pass into a sorted buffer instead. A row whose
 * top-k is not unique (equal values among or at the edge of the k, or a NaN) is flagged for
 * the caller, which takes torch.topk's own choice for it. Rows are shared among the OpenMP
 * threads (PyTorch's own team: see kernels/compiled.py).
 */
#include <stdint.h>
#include <stdlib.h>

#include "vector_clones.h"

/* Insertion into a sorted buffer of k: the path for short rows (a row holding a NaN comes out
 * in no particular order; has_tie flags it). */
static void insertion_top_k(const float *scores, int64_t columns, int64_t k, float *values, int64_t *indices) {
    int64_t filled = 0;
    for (int64_t column = 0; column < columns; ++column) {
        const float score = scores[column];
        int64_t slot;
        if (filled < k) {
            slot = filled++;
        } else if (score > values[k - 1]) {
            slot = k - 1;
        } else {
            continue;
        }
        while (slot > 0 && score > values[slot - 1]) {
            values[slot] = values[slot - 1];
            indices[slot] = indices[slot - 1];
            --slot;
        }
        values[slot] = score;
        indices[slot] = column;
    }
}

/* ranks[i] = how many of values[0..count) beat values[i]: a larger value, or the same value
 * earlier. The ranks are 0..count-1, each once. Vectorised over i for each beating value. */
VECTOR_CLONES
static void rank_values(const float *values, int64_t count, int32_t *ranks) {
    for (int64_t index = 0; index < count; ++index) ranks[index] = 0;
    for (int64_t other = 0; other < count; ++other) {
        const float value = values[other];
        for (int64_t index = 0; index <= other; ++index) ranks[index] += value > values[index];
        for (int64_t index = other + 1; index < count; ++index) ranks[index] += value >= values[index];
    }
}

/* Returns 0, or 1 when the row holds a NaN (nothing written then). Scratch: lane_max
 * (2k floats), candidate_values, candidate_columns and ranks (columns entries each). */
VECTOR_CLONES
static int threshold_top_k(const float *scores, int64_t columns, int64_t k, float *values, int64_t *indices,
                           float *lane_max, float *candidate_values, int64_t *candidate_columns, int32_t *ranks) {
    const int64_t lanes = columns < 2 * k ? columns : 2 * k;
    for (int64_t lane = 0; lane < lanes; ++lane) lane_max[lane] = scores[lane];
    for (int64_t start = lanes; start < columns; start += lanes) {
        const int64_t width = columns - start < lanes ? columns - start : lanes;
        for (int64_t lane = 0; lane < width; ++lane) {
            const float score = scores[start + lane];
            lane_max[lane] = score > lane_max[lane] ? score : lane_max[lane];
        }
    }
    rank_values(lane_max, lanes, ranks);
    float threshold = lane_max[0];
    for (int64_t lane = 0; lane < lanes; ++lane) threshold = ranks[lane] == k - 1 ? lane_max[lane] : threshold;
    int64_t count = 0;
    int nan_seen = 0;
    for (int64_t column = 0; column < columns; ++column) {
        const float score = scores[column];
        candidate_values[count] = score;
        candidate_columns[count] = column;
        count += score >= threshold;
        nan_seen |= score != score;
    }
    if (nan_seen) return 1;
    rank_values(candidate_values, count, ranks);
    for (int64_t candidate = 0; candidate < count; ++candidate) {
        if (ranks[candidate] < k) {
            values[ranks[candidate]] = candidate_values[candidate];
            indices[ranks[candidate]] = candidate_columns[candidate];
        }
    }
    return 0;
}

/* Whether the row's top-k is not unique: two of the k values equal, more than k elements
 * reaching the k-th value, or a NaN anywhere (torch.topk's order among those is its own). */
VECTOR_CLONES
static int has_tie(const float *scores, int64_t columns, int64_t k, const float *values) {
    int tie = 0;
    for (int64_t rank = 0; rank + 1 < k; ++rank) tie |= values[rank] == values[rank + 1];
    const float last = values[k - 1];
    int64_t reaching = 0;
    int nan_seen = last != last;
    for (int64_t column = 0; column < columns; ++column) {
        reaching += scores[column] >= last;
        nan_seen |= scores[column] != scores[column];
    }
    return tie || nan_seen || reaching > k;
}

/* The top-k of every row (1 <= k <= columns), rows shared among the OpenMP threads;
 * tied[row] = 1 where the row's top-k is not unique (has_tie): the caller redoes those rows. */
void row_top_k(const float *scores, int64_t rows, int64_t columns, int64_t k, float *values, int64_t *indices,
               uint8_t *tied) {
#pragma omp parallel
    {
        /* scratch: lane maxima (2k), candidate values, columns and ranks (columns each) */
        float *scratch = malloc(sizeof(float) * (size_t)(2 * k + columns));
        int64_t *candidate_columns = malloc(sizeof(int64_t) * (size_t)columns);
        int32_t *ranks = malloc(sizeof(int32_t) * (size_t)columns);
        const int have_scratch = scratch != 0 && candidate_columns != 0 && ranks != 0;
#pragma omp for schedule(static)
        for (int64_t row = 0; row < rows; ++row) {
            const float *row_scores = scores + row * columns;
            float *row_values = values + row * k;
            int64_t *row_indices = indices + row * k;
            if (columns < 4 * k || !have_scratch) {
                insertion_top_k(row_scores, columns, k, row_values, row_indices);
            } else if (threshold_top_k(row_scores, columns, k, row_values, row_indices, scratch, scratch + 2 * k,
                                       candidate_columns, ranks)) {
                tied[row] = 1;  /* a NaN: nothing written */
                continue;
            }
            tied[row] = (uint8_t)has_tie(row_scores, columns, k, row_values);
        }
        free(scratch);
        free(candidate_columns);
        free(ranks);
    }
}
