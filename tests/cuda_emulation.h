// Just enough of CUDA's device model to run gpubp's kernels on a CPU, for tests.
//
// g++ compiles the .cu sources with this header forced in front (-include). Each CUDA
// thread is a host thread (tests/cuda_emulator.py starts them); blocks run one at a
// time, so `__shared__` becomes `static`. __syncthreads is a barrier over the block's
// threads; a warp shuffle is an exchange through memory between two barriers over the
// warp's 32 threads. It checks the kernels' logic (indexing, reductions, the paths),
// not NVRTC's code generation or timing.
#pragma once

#include <pthread.h>

#include <algorithm>
#include <cmath>
#include <cstring>

using std::max;
using std::min;

#define __global__
#define __device__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
#define __shared__ static

struct gpubp_dim3 {
    unsigned int x = 1, y = 1, z = 1;
};

struct gpubp_thread_context {
    gpubp_dim3 thread, block;
};

extern thread_local gpubp_thread_context gpubp_ctx;
extern gpubp_dim3 gpubp_block_dim, gpubp_grid_dim;

#define threadIdx (gpubp_ctx.thread)
#define blockIdx (gpubp_ctx.block)
#define blockDim (gpubp_block_dim)
#define gridDim (gpubp_grid_dim)

extern "C" void gpubp_syncthreads();
extern "C" void gpubp_warp_exchange(int lane_in_block, unsigned long long value,
                                    unsigned long long* result_of, int source_lane);

inline void __syncthreads() { gpubp_syncthreads(); }
inline void __threadfence() { __sync_synchronize(); }

template <typename T>
inline T __shfl_xor_sync(unsigned int, T value, int lane_mask, int width = 32) {
    const unsigned int linear = threadIdx.x + blockDim.x * threadIdx.y;
    const int lane = linear % 32;
    const int source = lane ^ lane_mask;  // outside the lane's segment: its own value
    unsigned long long bits = 0, got = 0;
    std::memcpy(&bits, &value, sizeof(T));
    gpubp_warp_exchange(static_cast<int>(linear), bits, &got,
                        source / width == lane / width ? source : lane);
    T out;
    std::memcpy(&out, &got, sizeof(T));
    return out;
}

inline unsigned int atomicAdd(unsigned int* address, unsigned int value) {
    return __atomic_fetch_add(address, value, __ATOMIC_SEQ_CST);
}

inline float __int_as_float(int bits) {
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
}

inline double __longlong_as_double(long long bits) {
    double d;
    std::memcpy(&d, &bits, sizeof d);
    return d;
}
