// The hidden layers' elementwise steps, on (rows, cols) arrays in row-major order.
//
//   bias_sigmoid:           a = σ(z + b), b broadcast over rows     (forward, a^l = σ(z^l))
//   sigmoid_backward:       δ = g ⊙ a ⊙ (1 − a)                      (EqA2.1, σ' from a)
//   sigmoid_backward_dbias: the same δ, and db = Σ_rows δ (EqA1's bias term), one launch
//   column_sum:             db = Σ_rows x (the output layer's db^L = Σ_rows δ^L where the
//                           cross-entropy kernel does not sum it itself)
// σ(x) = 1/(1 + e^{−|x|}) for x ≥ 0 and e^{−|x|}/(1 + e^{−|x|}) for x < 0: no overflow.
//
// Memory traffic: bias_sigmoid reads z and writes a (b from cache); sigmoid_backward
// reads g and a and writes δ; the dbias form adds, per block, one row of partial sums
// written and, in the last block per column tile, those partials read back; column_sum
// reads x once. VEC > 1 moves 16 bytes per access; the host uses it only when cols %
// VEC == 0 and the arrays are 16-byte aligned.
//
// Layout: the elementwise kernels are grid-stride loops over vectors. The dbias and
// column_sum kernels run blocks of (32, 8) threads on a grid (column tiles, row slabs):
// thread (x, y) owns the VEC columns of vector x of its tile and walks rows y, y + 8,
// ... of its slab, four rows per step (8 independent 16-byte loads in flight). A
// block's column sums go to `partials[slab, col]`; the last slab block of each column
// tile (a ticket per tile) adds the partials in slab order. Every sum has a fixed order,
// so the result does not depend on timing.
//
// Aliasing: `out` may be `grad_a` (in place): each element is read and then written by
// the same thread, and the loads of a step are issued before its stores, so neither is
// __restrict__. `a` never aliases `out` (the host refuses it) and is __restrict__.
#include "gpubp_common.cuh"

namespace gpubp {

template <typename T>
__device__ __forceinline__ T sigmoid(T x) {
    const T e = exp_(x < T(0) ? x : -x);  // e^{−|x|} ∈ (0, 1]
    const T r = T(1) / (T(1) + e);
    return x >= T(0) ? r : e * r;
}

template <typename T, int VEC>
__device__ void bias_sigmoid(const T* z, const T* bias, T* out, i64 rows, i64 cols) {
    const i64 n_vec = rows * cols / VEC;
    const i64 stride = static_cast<i64>(gridDim.x) * blockDim.x;
    for (i64 v = static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x; v < n_vec; v += stride) {
        const i64 first = v * VEC, col = first % cols;  // a vector never crosses a row
        Vec<T, VEC> x = load_vec<T, VEC>(z + first);
#pragma unroll
        for (int e = 0; e < VEC; ++e) x.v[e] = sigmoid(x.v[e] + bias[col + e]);
        store_vec<T, VEC>(out + first, x);
    }
}

template <typename T, int VEC>
__device__ void sigmoid_backward(const T* grad_a, const T* __restrict__ a, T* out, i64 n) {
    const i64 n_vec = n / VEC;
    const i64 stride = static_cast<i64>(gridDim.x) * blockDim.x;
    for (i64 v = static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x; v < n_vec; v += stride) {
        Vec<T, VEC> g = load_vec<T, VEC>(grad_a + v * VEC);
        const Vec<T, VEC> y = load_vec<T, VEC>(a + v * VEC);
#pragma unroll
        for (int e = 0; e < VEC; ++e) g.v[e] = g.v[e] * y.v[e] * (T(1) - y.v[e]);
        store_vec<T, VEC>(out + v * VEC, g);
    }
}

template <typename T, bool SIGMOID>
__device__ __forceinline__ T backward_value(T g, T y) {
    return SIGMOID ? g * y * (T(1) - y) : g;
}

constexpr int SLAB_THREADS_Y = 8;  // row walkers per block
constexpr int ROW_UNROLL = 4;      // rows per step of each walker

// The block's walkers' sums of one column vector added in walker order (deterministic) and
// stored at `dest` by walker 0: through `part`, [walker][element of the vector][x].
template <typename T, int VEC>
__device__ __forceinline__ void add_walkers(T (*part)[VEC][33], const T (&sum)[VEC],
                                            bool in_cols, T* dest) {
#pragma unroll
    for (int e = 0; e < VEC; ++e) part[threadIdx.y][e][threadIdx.x] = sum[e];
    __syncthreads();  // every walker's sums written before walker 0 adds them
    if (threadIdx.y == 0 && in_cols) {
        Vec<T, VEC> total;
#pragma unroll
        for (int e = 0; e < VEC; ++e) {
            total.v[e] = T(0);
            for (int k = 0; k < SLAB_THREADS_Y; ++k) total.v[e] += part[k][e][threadIdx.x];
        }
        store_vec<T, VEC>(dest, total);
    }
}

// SIGMOID: δ = g ⊙ a ⊙ (1 − a) into `out` and db = Σ_rows δ; otherwise db = Σ_rows g
// (then `a` and `out` are unused).
template <typename T, int VEC, bool SIGMOID>
__device__ void backward_column_sums(const T* grad_a, const T* __restrict__ a, T* out,
                                     T* partials, unsigned int* tickets, T* sums, i64 rows,
                                     i64 cols, i64 rows_per_slab) {
    // Per block: the walkers' column sums, [walker][element of the vector][x], padded
    // so that the 32 lanes of a warp hit 32 banks.
    __shared__ T part[SLAB_THREADS_Y][VEC][33];
    const i64 vec_col = static_cast<i64>(blockIdx.x) * 32 + threadIdx.x;
    const i64 col = vec_col * VEC;
    const bool in_cols = col < cols;
    const i64 row_begin = static_cast<i64>(blockIdx.y) * rows_per_slab;
    const i64 row_end = min(rows, row_begin + rows_per_slab);
    constexpr i64 STEP = SLAB_THREADS_Y * ROW_UNROLL;

    T sum[VEC];
#pragma unroll
    for (int e = 0; e < VEC; ++e) sum[e] = T(0);
    if (in_cols) {
        i64 r = row_begin + threadIdx.y;
        // ROW_UNROLL rows at a time: every load of the step before any store (in place,
        // out == grad_a, each element is still read before it is written).
        for (; r + (ROW_UNROLL - 1) * SLAB_THREADS_Y < row_end; r += STEP) {
            Vec<T, VEC> g[ROW_UNROLL], y[ROW_UNROLL];
#pragma unroll
            for (int u = 0; u < ROW_UNROLL; ++u) {
                const i64 i = (r + u * SLAB_THREADS_Y) * cols + col;
                g[u] = load_vec<T, VEC>(grad_a + i);
                if (SIGMOID) y[u] = load_vec<T, VEC>(a + i);
            }
#pragma unroll
            for (int u = 0; u < ROW_UNROLL; ++u) {
#pragma unroll
                for (int e = 0; e < VEC; ++e) {
                    g[u].v[e] = backward_value<T, SIGMOID>(g[u].v[e], SIGMOID ? y[u].v[e] : T(0));
                    sum[e] += g[u].v[e];
                }
                if (SIGMOID) store_vec<T, VEC>(out + (r + u * SLAB_THREADS_Y) * cols + col, g[u]);
            }
        }
        for (; r < row_end; r += SLAB_THREADS_Y) {  // the last < ROW_UNROLL rows
            const i64 i = r * cols + col;
            Vec<T, VEC> g = load_vec<T, VEC>(grad_a + i);
            Vec<T, VEC> y;
            if (SIGMOID) y = load_vec<T, VEC>(a + i);
#pragma unroll
            for (int e = 0; e < VEC; ++e) {
                g.v[e] = backward_value<T, SIGMOID>(g.v[e], SIGMOID ? y.v[e] : T(0));
                sum[e] += g.v[e];
            }
            if (SIGMOID) store_vec<T, VEC>(out + i, g);
        }
    }
    add_walkers<T, VEC>(part, sum, in_cols, partials + static_cast<i64>(blockIdx.y) * cols + col);
    // The last slab block of this column tile adds the tile's partials, slab by slab.
    // (take_last_ticket's barriers also end the reads of `part` above.)
    if (!take_last_ticket(tickets + blockIdx.x, gridDim.y)) return;
#pragma unroll
    for (int e = 0; e < VEC; ++e) sum[e] = T(0);
    if (in_cols)
        for (unsigned int slab = threadIdx.y; slab < gridDim.y; slab += SLAB_THREADS_Y)
#pragma unroll
            for (int e = 0; e < VEC; ++e)
                sum[e] += ((volatile const T*)partials)[static_cast<i64>(slab) * cols + col + e];
    add_walkers<T, VEC>(part, sum, in_cols, sums + col);
    if (threadIdx.x == 0 && threadIdx.y == 0) tickets[blockIdx.x] = 0u;  // for the next launch
}

}  // namespace gpubp

// ---- entry points (names are what gpubp/cuda/kernels.py loads) ----

#define DEFINE_SIGMOID(T, SUFFIX, VEC)                                                     \
    extern "C" __global__ void bias_sigmoid_##SUFFIX##_v##VEC(                             \
        const T *z, const T *bias, T *out, long long rows, long long cols) {               \
        gpubp::bias_sigmoid<T, VEC>(z, bias, out, rows, cols);                             \
    }                                                                                      \
    extern "C" __global__ void sigmoid_backward_##SUFFIX##_v##VEC(                         \
        const T *grad_a, const T *__restrict__ a, T *out, long long n) {                   \
        gpubp::sigmoid_backward<T, VEC>(grad_a, a, out, n);                                \
    }

#define DEFINE_COLUMN_SUMS(T, SUFFIX, VEC)                                                 \
    extern "C" __global__ void sigmoid_backward_dbias_##SUFFIX##_v##VEC(                   \
        const T *grad_a, const T *__restrict__ a, T *out, T *partials,                     \
        unsigned int *tickets, T *bias_grad, long long rows, long long cols,               \
        long long rows_per_slab) {                                                         \
        gpubp::backward_column_sums<T, VEC, true>(grad_a, a, out, partials, tickets,       \
                                                  bias_grad, rows, cols, rows_per_slab);   \
    }                                                                                      \
    extern "C" __global__ void column_sum_##SUFFIX##_v##VEC(                               \
        const T *x, T *partials, unsigned int *tickets, T *sums, long long rows,           \
        long long cols, long long rows_per_slab) {                                         \
        gpubp::backward_column_sums<T, VEC, false>(x, nullptr, nullptr, partials, tickets, \
                                                   sums, rows, cols, rows_per_slab);       \
    }

DEFINE_SIGMOID(float, f32, 1)
DEFINE_SIGMOID(float, f32, 4)
DEFINE_SIGMOID(double, f64, 1)
DEFINE_SIGMOID(double, f64, 2)
DEFINE_COLUMN_SUMS(float, f32, 1)
DEFINE_COLUMN_SUMS(float, f32, 4)
DEFINE_COLUMN_SUMS(double, f64, 1)
DEFINE_COLUMN_SUMS(double, f64, 2)
