/* Top-k of each row of a row-major float32 matrix, sorted descending (see row_topk.py).
 *
 * Per row, without data-dependent branches in the hot loops:
 *  1. a threshold t that at least k elements reach: the columns are dealt into L = min(2k,
 *     columns) lanes (column c to lane c mod L) and t is the k-th largest lane maximum;
 *  2. the elements >= t (the candidates, in column order) are gathered;
 *  3. each candidate's rank is the number of candidates that beat it (a larger value, or
 *     the same value in an earlier column), and the k of rank < k are written at their rank.
 * Rows of at most SMALL_COLUMNS with k <= SMALL_LANES (the product-key layers' rows in the CPU
 * studies: 64 sub-key scores or 20 candidate sums, k = 8) take the same three steps on whole
 * vectors (small_top_k); other rows shorter than 4k take one insertion pass into a sorted buffer
 * instead. A row whose top-k is not unique (equal values among or at the edge of the k, or a
 * NaN) is flagged for the caller, which takes torch.topk's own choice for it. best_pairs is
 * product keys' second search on top of it. Rows are shared among the OpenMP threads
 * (PyTorch's own team: see kernels/compiled.py).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "vector_clones.h"

#define SMALL_COLUMNS 64 /* rows this short, with k <= SMALL_LANES, take small_top_k */
#define SMALL_LANES 16   /* small_top_k's threshold lanes */
#define WIDTH 8          /* floats per vector: AVX2's (GCC 12 splits 16-float vectors badly for AVX2) */
#define SMALL_BLOCKS (SMALL_COLUMNS / WIDTH)
typedef float Floats __attribute__((vector_size(sizeof(float) * WIDTH)));
typedef int32_t Ints __attribute__((vector_size(sizeof(int32_t) * WIDTH)));
#pragma GCC diagnostic ignored "-Wpsabi" /* vectors stay inside the functions */

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

/* Helpers are inlined into each clone (GCC does not otherwise inline across target options). */
#define INLINE static inline __attribute__((always_inline))

INLINE Floats select_floats(Ints take_first, Floats first, Floats second) {
    return (Floats)(((Ints)first & take_first) | ((Ints)second & ~take_first));
}

/* The smallest of a vector's lanes (no NaN among them). */
INLINE float lanes_min(Floats lanes) {
    lanes = select_floats(lanes < __builtin_shuffle(lanes, (Ints){4, 5, 6, 7, 0, 1, 2, 3}), lanes,
                          __builtin_shuffle(lanes, (Ints){4, 5, 6, 7, 0, 1, 2, 3}));
    lanes = select_floats(lanes < __builtin_shuffle(lanes, (Ints){2, 3, 0, 1, 6, 7, 4, 5}), lanes,
                          __builtin_shuffle(lanes, (Ints){2, 3, 0, 1, 6, 7, 4, 5}));
    lanes = select_floats(lanes < __builtin_shuffle(lanes, (Ints){1, 0, 3, 2, 5, 4, 7, 6}), lanes,
                          __builtin_shuffle(lanes, (Ints){1, 0, 3, 2, 5, 4, 7, 6}));
    return lanes[0];
}

/* Whether two neighbours among the k sorted values are equal (has_tie's first test). */
INLINE int equal_neighbours(const float *values, int64_t k) {
    int equal = 0;
    for (int64_t rank = 0; rank + 1 < k; ++rank) equal |= values[rank] == values[rank + 1];
    return equal;
}

/* Bit i set where lane i of a comparison's result (0 or -1 per lane) is set. */
INLINE uint32_t lane_bits(Ints comparison) {
    Ints bits = comparison & (Ints){1, 2, 4, 8, 16, 32, 64, 128};
    bits |= __builtin_shuffle(bits, (Ints){4, 5, 6, 7, 0, 1, 2, 3});
    bits |= __builtin_shuffle(bits, (Ints){2, 3, 0, 1, 6, 7, 4, 5});
    bits |= __builtin_shuffle(bits, (Ints){1, 0, 3, 2, 5, 4, 7, 6});
    return (uint32_t)bits[0];
}

/* threshold_top_k's three steps for a row of at most SMALL_COLUMNS, k <= SMALL_LANES, on
 * whole vectors of WIDTH: the columns dealt into SMALL_LANES lanes (lanes past a row shorter
 * than that hold -inf, which only adds candidates); the threshold t is the smallest lane
 * maximum that fewer than k others exceed (the k-th largest); the candidates are read off a
 * bit mask of the columns >= t, in column order; and each one's rank is counted against all
 * candidates at once. Returns has_tie's answer (computed from the candidates), or 1 when the row
 * holds a NaN (nothing written then). */
VECTOR_CLONES
static int small_top_k(const float *scores, int64_t columns, int64_t k, float *values, int64_t *indices) {
    Floats row[SMALL_BLOCKS];
    const int64_t row_blocks = (columns + SMALL_LANES - 1) / SMALL_LANES * (SMALL_LANES / WIDTH);
    float *padded = (float *)row;
    for (int64_t column = columns; column < row_blocks * WIDTH; ++column) padded[column] = -__builtin_inff();
    memcpy(padded, scores, sizeof(float) * (size_t)columns);
    Ints nan_seen = row[0] != row[0];
    Floats lane_max[SMALL_LANES / WIDTH];
    for (int64_t part = 0; part < SMALL_LANES / WIDTH; ++part) lane_max[part] = row[part];
    for (int64_t block = SMALL_LANES / WIDTH; block < row_blocks; ++block) {
        const int64_t part = block % (SMALL_LANES / WIDTH);
        lane_max[part] = select_floats(row[block] > lane_max[part], row[block], lane_max[part]);
        nan_seen |= row[block] != row[block];
    }
    for (int64_t part = 1; part < SMALL_LANES / WIDTH; ++part) nan_seen |= row[part] != row[part];
    if (lane_bits(nan_seen)) return 1;
    const float *lanes = (const float *)lane_max;
    Ints above[SMALL_LANES / WIDTH] = {0};
    for (int64_t lane = 0; lane < SMALL_LANES; ++lane)
        for (int64_t part = 0; part < SMALL_LANES / WIDTH; ++part) above[part] -= lanes[lane] > lane_max[part];
    Floats within = select_floats(above[0] < (int32_t)k, lane_max[0], (Floats){0} + __builtin_inff());
    for (int64_t part = 1; part < SMALL_LANES / WIDTH; ++part) {
        const Floats more = select_floats(above[part] < (int32_t)k, lane_max[part], (Floats){0} + __builtin_inff());
        within = select_floats(more < within, more, within);
    }
    const float threshold = lanes_min(within);

    uint64_t reaching = 0;
    for (int64_t block = 0; block < row_blocks; ++block)
        reaching |= (uint64_t)lane_bits(row[block] >= threshold) << (block * WIDTH);
    reaching &= columns < 64 ? ((uint64_t)1 << columns) - 1 : ~(uint64_t)0;
    float candidate_values[SMALL_COLUMNS + WIDTH] __attribute__((aligned(32)));
    int32_t candidate_columns[SMALL_COLUMNS];
    int64_t count = 0;
    for (; reaching; reaching &= reaching - 1, ++count) {
        const int column = __builtin_ctzll(reaching);
        candidate_values[count] = padded[column];
        candidate_columns[count] = column;
    }
    const int64_t blocks = (count + WIDTH - 1) / WIDTH;
    for (int64_t unused = count; unused < blocks * WIDTH; ++unused) candidate_values[unused] = 0.0f;
    Floats candidates[SMALL_BLOCKS];
    Ints ranks[SMALL_BLOCKS], positions[SMALL_BLOCKS];
    for (int64_t block = 0; block < blocks; ++block) {
        memcpy(&candidates[block], candidate_values + block * WIDTH, sizeof(Floats));
        ranks[block] = (Ints){0};
        positions[block] = (Ints){0, 1, 2, 3, 4, 5, 6, 7} + (int32_t)(block * WIDTH);
    }
    for (int64_t other = 0; other < count; ++other) {  /* it beats: a larger value, or the same value earlier */
        const float value = candidate_values[other];
        for (int64_t block = 0; block < blocks; ++block)
            ranks[block] -= (value > candidates[block]) |
                            ((value == candidates[block]) & ((int32_t)other < positions[block]));
    }
    const int32_t *rank = (const int32_t *)ranks;
    for (int64_t candidate = 0; candidate < count; ++candidate) {
        if (rank[candidate] < k) {
            values[rank[candidate]] = candidate_values[candidate];
            indices[rank[candidate]] = candidate_columns[candidate];
        }
    }
    /* has_tie's test: every element reaching the k-th value is a candidate */
    const float last = values[k - 1];
    int tie = equal_neighbours(values, k);
    for (int64_t candidate = 0; candidate < count; ++candidate) tie |= rank[candidate] >= k && candidate_values[candidate] >= last;
    return tie;
}

/* Whether the row's top-k is not unique: two of the k values equal, more than k elements
 * reaching the k-th value, or a NaN anywhere (torch.topk's order among those is its own). */
VECTOR_CLONES
static int has_tie(const float *scores, int64_t columns, int64_t k, const float *values) {
    const int tie = equal_neighbours(values, k);
    const float last = values[k - 1];
    int64_t reaching = 0;
    int nan_seen = last != last;
    for (int64_t column = 0; column < columns; ++column) {
        reaching += scores[column] >= last;
        nan_seen |= scores[column] != scores[column];
    }
    return tie || nan_seen || reaching > k;
}

/* Per-thread work memory of threshold_top_k: lane maxima (2k floats), candidate values,
 * columns and ranks (columns entries each). */
typedef struct {
    float *floats;
    int64_t *columns;
    int32_t *ranks;
} Scratch;

static int scratch_open(Scratch *scratch, int64_t columns, int64_t k) {
    scratch->floats = malloc(sizeof(float) * (size_t)(2 * k + columns));
    scratch->columns = malloc(sizeof(int64_t) * (size_t)columns);
    scratch->ranks = malloc(sizeof(int32_t) * (size_t)columns);
    return scratch->floats != 0 && scratch->columns != 0 && scratch->ranks != 0;
}

static void scratch_close(Scratch *scratch) {
    free(scratch->floats);
    free(scratch->columns);
    free(scratch->ranks);
}

/* One row's top-k by the path its length takes; returns 1 where the top-k is not unique
 * (has_tie, or a NaN: then nothing may have been written) and the caller must redo the row. */
static int top_k_of_row(const float *scores, int64_t columns, int64_t k, float *values, int64_t *indices,
                        Scratch *scratch, int have_scratch) {
    if (columns <= SMALL_COLUMNS && k <= SMALL_LANES) return small_top_k(scores, columns, k, values, indices);
    if (columns < 4 * k || !have_scratch) {
        insertion_top_k(scores, columns, k, values, indices);
    } else if (threshold_top_k(scores, columns, k, values, indices, scratch->floats, scratch->floats + 2 * k,
                               scratch->columns, scratch->ranks)) {
        return 1;
    }
    return has_tie(scores, columns, k, values);
}

/* The top-k of every row (1 <= k <= columns), rows shared among the OpenMP threads;
 * tied[row] = 1 where the row's top-k is not unique (has_tie): the caller redoes those rows. */
void row_top_k(const float *scores, int64_t rows, int64_t columns, int64_t k, float *values, int64_t *indices,
               uint8_t *tied) {
#pragma omp parallel
    {
        Scratch scratch;
        const int have_scratch = scratch_open(&scratch, columns, k);
#pragma omp for schedule(static)
        for (int64_t row = 0; row < rows; ++row)
            tied[row] = (uint8_t)top_k_of_row(scores + row * columns, columns, k, values + row * k,
                                              indices + row * k, &scratch, have_scratch);
        scratch_close(&scratch);
    }
}

/* Product keys' second search (models/ffw/product_keys.py, best_pairs), row by row: the sums
 * first_top[a] + second_top[b] of the candidate pairs (first_rank[c], second_rank[c]), c <
 * candidates, their top-k (top_k_of_row), and for each of the k best its score, its key id
 * first_index[a] * keys + second_index[b] and its ranks a and b. Inputs are (rows, k) and
 * outputs (rows, k), row-major; tied[row] = 1 where the row's top-k is not unique (its outputs
 * are then to be redone by the caller). */
void best_pairs(const float *first_top, const float *second_top, const int64_t *first_index,
                const int64_t *second_index, int64_t rows, int64_t k, const int64_t *first_rank,
                const int64_t *second_rank, int64_t candidates, int64_t keys, float *best_scores,
                int64_t *best_index, int64_t *best_first_rank, int64_t *best_second_rank, uint8_t *tied) {
#pragma omp parallel
    {
        Scratch scratch;
        const int have_scratch = scratch_open(&scratch, candidates, k);
        float *sums = malloc(sizeof(float) * (size_t)candidates);
        int64_t *best = malloc(sizeof(int64_t) * (size_t)k);
        const int have_work = sums != 0 && best != 0;
#pragma omp for schedule(static)
        for (int64_t row = 0; row < rows; ++row) {
            const int64_t offset = row * k;
            if (!have_work) {
                tied[row] = 1;
                continue;
            }
            for (int64_t candidate = 0; candidate < candidates; ++candidate)
                sums[candidate] = first_top[offset + first_rank[candidate]] + second_top[offset + second_rank[candidate]];
            tied[row] = (uint8_t)top_k_of_row(sums, candidates, k, best_scores + offset, best, &scratch,
                                              have_scratch);
            if (tied[row]) continue;
            for (int64_t rank = 0; rank < k; ++rank) {
                const int64_t first = first_rank[best[rank]], second = second_rank[best[rank]];
                best_first_rank[offset + rank] = first;
                best_second_rank[offset + rank] = second;
                best_index[offset + rank] = first_index[offset + first] * keys + second_index[offset + second];
            }
        }
        free(sums);
        free(best);
        scratch_close(&scratch);
    }
}
