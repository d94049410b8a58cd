// Stochastic gradient descent with torch.optim.SGD's rule (reference: gpubp.optim.SGD),
// for each parameter p with gradient g at learning rate lr:
//   d = g + weight_decay · p                      (d = g when weight_decay is 0)
//   v = d on the first step, else momentum · v + d            (with momentum only)
//   p = p − lr · (nesterov ? d + momentum · v : v)           (p − lr · d without momentum)
//
//   sgd_update   one parameter, lr by value: what SGD.step runs per CuPy parameter.
//   multi_sgd    every parameter of a network in one launch, lr read from device memory
//                (the host writes it once per epoch, so one captured CUDA graph serves
//                any schedule), the first-step flag read from device memory and cleared,
//                and the gather's batch offset advanced by B (gather.cu): the last launch
//                of a training step.
//
// Memory traffic: p and g read, p written; with momentum v read (not on the first step)
// and written. multi_sgd also reads its tables: 4 int64 per tensor, 2 per block.
//
// Layout: sgd_update is a grid-stride loop over VEC-element vectors (VEC > 1 only where
// the size and the addresses allow). multi_sgd runs one block per chunk of one tensor
// (`chunks`: tensor index and first element, built once on the host with the table),
// 16-byte vectors where that tensor's three addresses are 16-byte aligned; the block
// that takes the last ticket clears the flag and advances the offset, after every block
// has read the flag.
#include "gpubp_common.cuh"

namespace gpubp {

template <typename T>
__device__ __forceinline__ void sgd_element(T& p, T g, T* v, T lr, T momentum,
                                            T weight_decay, bool nesterov, bool first) {
    const T d = weight_decay != T(0) ? g + weight_decay * p : g;
    T step = d;
    if (v) {
        *v = first ? d : momentum * *v + d;
        step = nesterov ? d + momentum * *v : *v;
    }
    p = p - lr * step;
}

// Elements [begin, end) of one tensor, by the threads of `threads` starting at `thread`;
// `begin` is a multiple of VEC and `vectorize` says the addresses allow it.
template <typename T, int VEC>
__device__ __forceinline__ void sgd_range(T* p, const T* g, T* v, i64 begin, i64 end,
                                          i64 thread, i64 threads, bool vectorize, T lr,
                                          T momentum, T weight_decay, bool nesterov,
                                          bool first) {
    i64 scalar_begin = begin;
    if (VEC > 1 && vectorize) {
        const i64 n_vec = (end - begin) / VEC;
        for (i64 k = thread; k < n_vec; k += threads) {
            const i64 j = begin + k * VEC;
            Vec<T, VEC> pv = load_vec<T, VEC>(p + j);
            const Vec<T, VEC> gv = load_vec<T, VEC>(g + j);
            Vec<T, VEC> vv;
            if (v && !first) vv = load_vec<T, VEC>(v + j);
#pragma unroll
            for (int e = 0; e < VEC; ++e)
                sgd_element(pv.v[e], gv.v[e], v ? &vv.v[e] : nullptr, lr, momentum,
                            weight_decay, nesterov, first);
            store_vec<T, VEC>(p + j, pv);
            if (v) store_vec<T, VEC>(v + j, vv);
        }
        scalar_begin = begin + n_vec * VEC;
    }
    for (i64 j = scalar_begin + thread; j < end; j += threads)
        sgd_element(p[j], g[j], v ? v + j : nullptr, lr, momentum, weight_decay, nesterov,
                    first);
}

template <typename T, int VEC>
__device__ void sgd_update(T* p, const T* g, T* v, i64 n, T lr, T momentum, T weight_decay,
                           int nesterov, int first) {
    sgd_range<T, VEC>(p, g, v, 0, n, static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x,
                      static_cast<i64>(gridDim.x) * blockDim.x, true, lr, momentum,
                      weight_decay, nesterov != 0, first != 0);
}

template <typename T, int VEC>
__device__ void multi_sgd(const i64* table, const i64* chunks, i64 chunk_elems,
                          const double* lr, T momentum, T weight_decay, int nesterov,
                          int* first_step, i64* offset, i64 batch, unsigned int* ticket) {
    const i64 tensor = chunks[2 * blockIdx.x], begin = chunks[2 * blockIdx.x + 1];
    const i64* entry = table + 4 * tensor;
    T* p = reinterpret_cast<T*>(entry[0]);
    const T* g = reinterpret_cast<const T*>(entry[1]);
    T* v = reinterpret_cast<T*>(entry[2]);  // null without momentum
    const i64 end = min(entry[3], begin + chunk_elems);
    const bool vectorize = ((entry[0] | entry[1] | entry[2]) % (sizeof(T) * VEC)) == 0;
    const bool first = first_step != nullptr && *first_step != 0;
    sgd_range<T, VEC>(p, g, v, begin, end, threadIdx.x, blockDim.x, vectorize, T(*lr), momentum,
                      weight_decay, nesterov != 0, first);
    if (first_step == nullptr && offset == nullptr) return;
    // Every block read the flag before its ticket; the last one clears it.
    if (take_last_ticket(ticket, gridDim.x) && threadIdx.x == 0) {
        if (first_step) *first_step = 0;
        if (offset) *offset += batch;
        *ticket = 0u;
    }
}

}  // namespace gpubp

// ---- entry points (names are what gpubp/optim.py and gpubp/cuda/kernels.py load) ----

#define DEFINE_SGD(T, SUFFIX, VEC)                                                         \
    extern "C" __global__ void sgd_update_##SUFFIX##_v##VEC(                               \
        T *p, const T *g, T *v, long long n, T lr, T momentum, T weight_decay,             \
        int nesterov, int first) {                                                         \
        gpubp::sgd_update<T, VEC>(p, g, v, n, lr, momentum, weight_decay, nesterov, first); \
    }

#define DEFINE_MULTI_SGD(T, SUFFIX, VEC)                                                   \
    extern "C" __global__ void multi_sgd_##SUFFIX(                                         \
        const long long *table, const long long *chunks, long long chunk_elems,            \
        const double *lr, T momentum, T weight_decay, int nesterov, int *first_step,       \
        long long *offset, long long batch, unsigned int *ticket) {                        \
        gpubp::multi_sgd<T, VEC>(table, chunks, chunk_elems, lr, momentum, weight_decay,   \
                                 nesterov, first_step, offset, batch, ticket);             \
    }

DEFINE_SGD(float, f32, 1)
DEFINE_SGD(float, f32, 4)
DEFINE_SGD(double, f64, 1)
DEFINE_SGD(double, f64, 2)
DEFINE_MULTI_SGD(float, f32, 4)
DEFINE_MULTI_SGD(double, f64, 2)
