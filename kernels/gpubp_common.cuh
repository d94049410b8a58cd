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

// Block-wide reduction; every thread gets the result. `scratch` holds ≥ 32 values and is
// this reduction's own: the one barrier orders its writes before the reads, and nothing
// orders the reads before a later write, so a caller reusing `scratch` must pass a
// __syncthreads() in between (each kernel says where it does).
template <typename Op, typename T>
__device__ __forceinline__ T block_reduce(T x, T* scratch) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = (blockDim.x + 31) / 32;
    x = group_reduce<Op>(x, 32);
    if (lane == 0) scratch[warp] = x;
    __syncthreads();
    x = lane < warps ? scratch[lane] : Op::identity();
    return group_reduce<Op>(x, 32);
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

// ---- a reduction finished in the same launch, by the last block (a ticket) ----
//
// Each block leaves its partial result in global memory, and the block that takes the
// last ticket adds every block's partial in block order. The atomic only elects that
// block; it never orders an addition, so the result is bit-identical from run to run
// (float atomics would add in arrival order). The last block resets the ticket to 0,
// ready for the next launch on the same scratch; two launches running at once need two
// scratches (gpubp.cuda.kernels.KernelScratch).

// Called by every thread after the block's partials are stored. Returns, to every
// thread, whether this block is the last of `blocks` to finish. Writers fence their
// partials before the barrier, so the last block sees all of them.
__device__ __forceinline__ bool take_last_ticket(unsigned int* ticket, unsigned int blocks) {
    __shared__ bool is_last;
    __threadfence();
    __syncthreads();  // every partial of this block stored and fenced before the ticket
    if (threadIdx.x == 0 && threadIdx.y == 0)
        is_last = atomicAdd(ticket, 1u) == blocks - 1;
    __syncthreads();  // is_last written before anyone reads it
    if (is_last) __threadfence();
    return is_last;
}

// A row loss and whether the row counts, summed as one pair.
struct LossCount {
    double loss, count;
};

__device__ __forceinline__ LossCount group_sum_pair(LossCount x, int width) {
    for (int offset = width / 2; offset > 0; offset /= 2) {
        x.loss += __shfl_xor_sync(0xffffffffu, x.loss, offset, width);
        x.count += __shfl_xor_sync(0xffffffffu, x.count, offset, width);
    }
    return x;
}

// Block-wide pair sum (as block_reduce: one barrier, `scratch` its own).
__device__ __forceinline__ LossCount block_sum_pair(LossCount x, LossCount* scratch) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = (blockDim.x + 31) / 32;
    x = group_sum_pair(x, 32);
    if (lane == 0) scratch[warp] = x;
    __syncthreads();
    x = lane < warps ? scratch[lane] : LossCount{0.0, 0.0};
    return group_sum_pair(x, 32);
}

// The last block's part of the loss: adds the `blocks` pairs of `partials` in a fixed
// order (strided per thread, then a fixed tree), writes the mean over counted rows to
// `mean_out` (0 when none counts) and adds the pair to `loss_acc` (Σ loss, Σ count over
// launches: the epoch's loss, in launch order). Every thread of the block calls it.
template <typename T>
__device__ void finish_losses(const double* partials, unsigned int blocks, T* mean_out,
                              double* loss_acc, LossCount* scratch) {
    LossCount sum = {0.0, 0.0};
    for (unsigned int b = threadIdx.x; b < blocks; b += blockDim.x) {
        sum.loss += ((volatile const double*)partials)[2 * b];
        sum.count += ((volatile const double*)partials)[2 * b + 1];
    }
    sum = block_sum_pair(sum, scratch);
    if (threadIdx.x == 0) {
        if (mean_out) *mean_out = T(sum.count > 0.0 ? sum.loss / sum.count : 0.0);
        if (loss_acc) {
            loss_acc[0] += sum.loss;
            loss_acc[1] += sum.count;
        }
    }
}

}  // namespace gpubp
