// Shared device helpers for gpubp's kernels: accumulator types, vector loads, reductions.
// gpubp's loader pastes this file in place of its #include, so the NVRTC cache key
// covers it; no other headers are used (NVRTC finds none without a CUDA toolkit).
#pragma once

namespace gpubp {

typedef long long i64;

// Math in the logits' own precision: float for float, double for double.
__device__ __forceinline__ float exp_(float x) { return expf(x); }
__device__ __forceinline__ double exp_(double x) { return exp(x); }
__device__ __forceinline__ float log_(float x) { return logf(x); }
__device__ __forceinline__ double log_(double x) { return log(x); }
__device__ __forceinline__ float max_(float a, float b) { return fmaxf(a, b); }
__device__ __forceinline__ double max_(double a, double b) { return fmax(a, b); }
template <typename T> __device__ __forceinline__ T neg_inf();
template <> __device__ __forceinline__ float neg_inf<float>() { return -__int_as_float(0x7f800000); }
template <> __device__ __forceinline__ double neg_inf<double>() {
    return -__longlong_as_double(0x7ff0000000000000LL);
}

// VEC elements that move as one 16-byte load or store (VEC = 1: a plain scalar).
template <typename T, int VEC>
struct __align__(sizeof(T) * VEC) Vec {
    T v[VEC];
};

template <typename T, int VEC>
__device__ __forceinline__ Vec<T, VEC> load_vec(const T* p) {
    return *reinterpret_cast<const Vec<T, VEC>*>(p);
}

template <typename T, int VEC>
__device__ __forceinline__ void store_vec(T* p, const Vec<T, VEC>& x) {
    *reinterpret_cast<Vec<T, VEC>*>(p) = x;
}

// The two reductions the kernels need, as an identity and a combining step.
template <typename T> struct MaxOp {
    static __device__ __forceinline__ T identity() { return neg_inf<T>(); }
    static __device__ __forceinline__ T combine(T a, T b) { return max_(a, b); }
};
template <typename T> struct SumOp {
    static __device__ __forceinline__ T identity() { return T(0); }
    static __device__ __forceinline__ T combine(T a, T b) { return a + b; }
};

// Butterfly reduction over groups of `width` lanes (a power of two ≤ 32). Every lane of
// the warp must call it; each lane gets its group's result. The order is fixed.
template <typename Op, typename T>
__device__ __forceinline__ T group_reduce(T x, int width) {
    for (int offset = width / 2; offset > 0; offset /= 2)
        x = Op::combine(x, __shfl_xor_sync(0xffffffffu, x, offset, width));
    return x;
}

// Block-wide reduction; every thread gets the result. `scratch` holds ≥ 32 values.
// Called by all threads of the block; they synchronize twice.
template <typename Op, typename T>
__device__ __forceinline__ T block_reduce(T x, T* scratch) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = (blockDim.x + 31) / 32;
    x = group_reduce<Op>(x, 32);
    if (lane == 0) scratch[warp] = x;
    __syncthreads();
    x = lane < warps ? scratch[lane] : Op::identity();
    x = group_reduce<Op>(x, 32);
    __syncthreads();  // scratch may be reused right after
    return x;
}

template <typename T> __device__ __forceinline__ T group_max(T x, int width) {
    return group_reduce<MaxOp<T>>(x, width);
}
template <typename T> __device__ __forceinline__ T group_sum(T x, int width) {
    return group_reduce<SumOp<T>>(x, width);
}
template <typename T> __device__ __forceinline__ T block_max(T x, T* scratch) {
    return block_reduce<MaxOp<T>>(x, scratch);
}
template <typename T> __device__ __forceinline__ T block_sum(T x, T* scratch) {
    return block_reduce<SumOp<T>>(x, scratch);
}

// The batch-mean loss in the same launch: each block adds its rows' losses (in a fixed
// order), leaves (sum, count) in `partials`, and the last block to finish adds the
// partials in block order. The atomic ticket only elects that block; it never orders
// the additions, so the mean is bit-identical from run to run. The last block resets the
// ticket to 0 for the next launch. The mean of zero counted rows is defined as 0.
template <typename T>
__device__ void finish_mean(double block_loss, double block_count, double* partials,
                            unsigned int* ticket, T* mean_out, double* scratch) {
    __shared__ bool is_last;
    block_loss = block_sum(block_loss, scratch);
    block_count = block_sum(block_count, scratch);
    if (threadIdx.x == 0) {
        partials[2 * blockIdx.x] = block_loss;
        partials[2 * blockIdx.x + 1] = block_count;
        __threadfence();
        is_last = atomicAdd(ticket, 1u) == gridDim.x - 1;
    }
    __syncthreads();
    if (!is_last) return;
    __threadfence();
    double loss = 0.0, count = 0.0;
    // Strided per thread, then a fixed-shape tree: the same order in every run.
    for (unsigned int b = threadIdx.x; b < gridDim.x; b += blockDim.x) {
        loss += ((volatile double*)partials)[2 * b];
        count += ((volatile double*)partials)[2 * b + 1];
    }
    loss = block_sum(loss, scratch);
    count = block_sum(count, scratch);
    if (threadIdx.x == 0) {
        *mean_out = T(count > 0.0 ? loss / count : 0.0);
        *ticket = 0u;
    }
}

}  // namespace gpubp
