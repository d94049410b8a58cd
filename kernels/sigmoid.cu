// The hidden layers' elementwise steps, on (rows, cols) arrays in row-major order.
//
//   bias_sigmoid:           a = σ(z + b), b broadcast over rows     (forward, a^l = σ(z^l))
//   sigmoid_backward:       δ = g ⊙ a ⊙ (1 − a)                      (EqA2.1, σ' from a)
//   sigmoid_backward_dbias: the same δ, plus per-block column sums of δ in `partials`
//   sum_partials:           db_c = Σ_p partials[p, c], in order p = 0, 1, ...
// Each output may be its input (in place). VEC > 1 moves 16 bytes at a time; the host
// uses it only when cols % VEC == 0 and the arrays are 16-byte aligned.
// σ(x) = 1/(1 + e^{−|x|}) for x ≥ 0 and e^{−|x|}/(1 + e^{−|x|}) for x < 0: no overflow.
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
__device__ void sigmoid_backward(const T* grad_a, const T* a, T* out, i64 n) {
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

// Block (32, 8) covers 32 columns and a slab of rows_per_block rows; thread (x, y) walks
// rows y, y + 8, ... of the slab. Column sums go to partials[blockIdx.y, col], added
// over threadIdx.y in order, so the result does not depend on timing.
template <typename T>
__device__ void sigmoid_backward_dbias(const T* grad_a, const T* a, T* out, T* partials,
                                       i64 rows, i64 cols, i64 rows_per_block) {
    __shared__ T column_part[8][33];
    const i64 col = static_cast<i64>(blockIdx.x) * 32 + threadIdx.x;
    const i64 row_begin = static_cast<i64>(blockIdx.y) * rows_per_block;
    const i64 row_end = min(rows, row_begin + rows_per_block);
    T sum = T(0);
    if (col < cols) {
        for (i64 r = row_begin + threadIdx.y; r < row_end; r += 8) {
            const i64 i = r * cols + col;
            const T y = a[i];
            const T d = grad_a[i] * y * (T(1) - y);
            out[i] = d;
            sum += d;
        }
    }
    column_part[threadIdx.y][threadIdx.x] = sum;
    __syncthreads();
    if (threadIdx.y == 0 && col < cols) {
        T total = T(0);
#pragma unroll
        for (int k = 0; k < 8; ++k) total += column_part[k][threadIdx.x];
        partials[static_cast<i64>(blockIdx.y) * cols + col] = total;
    }
}

template <typename T>
__device__ void sum_partials(const T* partials, T* out, i64 n_parts, i64 cols) {
    const i64 col = static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (col >= cols) return;
    T total = T(0);
    for (i64 p = 0; p < n_parts; ++p) total += partials[p * cols + col];
    out[col] = total;
}

}  // namespace gpubp

// ---- entry points (names are what gpubp/cuda_kernels.py loads) ----

#define DEFINE_SIGMOID(T, SUFFIX, VEC)                                                     \
    extern "C" __global__ void bias_sigmoid_##SUFFIX##_v##VEC(                             \
        const T *z, const T *bias, T *out, long long rows, long long cols) {               \
        gpubp::bias_sigmoid<T, VEC>(z, bias, out, rows, cols);                             \
    }                                                                                      \
    extern "C" __global__ void sigmoid_backward_##SUFFIX##_v##VEC(                         \
        const T *grad_a, const T *a, T *out, long long n) {                                \
        gpubp::sigmoid_backward<T, VEC>(grad_a, a, out, n);                                \
    }

#define DEFINE_DBIAS(T, SUFFIX)                                                            \
    extern "C" __global__ void sigmoid_backward_dbias_##SUFFIX(                            \
        const T *grad_a, const T *a, T *out, T *partials, long long rows, long long cols,  \
        long long rows_per_block) {                                                        \
        gpubp::sigmoid_backward_dbias<T>(grad_a, a, out, partials, rows, cols,             \
                                         rows_per_block);                                  \
    }                                                                                      \
    extern "C" __global__ void sum_partials_##SUFFIX(const T *partials, T *out,            \
                                                     long long n_parts, long long cols) {  \
        gpubp::sum_partials<T>(partials, out, n_parts, cols);                              \
    }

DEFINE_SIGMOID(float, f32, 1)
DEFINE_SIGMOID(float, f32, 4)
DEFINE_SIGMOID(double, f64, 1)
DEFINE_SIGMOID(double, f64, 2)
DEFINE_DBIAS(float, f32)
DEFINE_DBIAS(double, f64)
