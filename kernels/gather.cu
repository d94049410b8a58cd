// The batch gather, the first launch of a training step:
//   out_X[i, :] = X[order[offset + i], :]   and   out_T[i] = targets[order[offset + i]]
// for i < B, where targets are labels (N,) or target rows (N, C). `offset` is read from
// device memory, so one captured CUDA graph serves every step of an epoch: the host
// fills `order` (the epoch's permutation) and sets offset = 0 once per epoch, and the
// step's multi-tensor SGD launch (sgd.cu) advances offset by B.
//
// Memory traffic: B rows of X read and written, B target rows read and written, B
// indices read. Rows move in units of U (4, 8 or 16 bytes: the widest dividing the row
// length and the addresses, chosen on the host); targets move as 4-byte words.
//
// Layout: one warp per output row, a grid-stride loop over rows (8 rows per block of
// 256 threads at a time); lane l moves units l, l + 32, ... of the row. Every lane reads
// the same order[offset + i]: one transaction per warp.
//
// A position offset + i outside the order array, or an index outside [0, N), sets
// *bad_index = 1 and fills the output row's bytes with 0xFF (NaN features, label −1),
// never reading outside X.
#include "gpubp_common.cuh"

namespace gpubp {

template <typename U>
__device__ __forceinline__ void copy_row(const U* src, U* dst, i64 units, bool ok) {
    U fill;
    unsigned char* bytes = reinterpret_cast<unsigned char*>(&fill);
    for (int b = 0; b < static_cast<int>(sizeof(U)); ++b) bytes[b] = 0xFF;
#pragma unroll 4
    for (i64 j = threadIdx.x % 32; j < units; j += 32) dst[j] = ok ? src[j] : fill;
}

template <typename U>
__device__ void gather_rows(const U* src, U* dst, i64 row_units, const i64* order,
                            i64 order_len, const i64* offset, i64 rows_out, i64 n_src,
                            const unsigned int* target_src, unsigned int* target_dst,
                            i64 target_words, int* bad_index) {
    const i64 warps_per_block = blockDim.x / 32;
    const i64 warps = static_cast<i64>(gridDim.x) * warps_per_block;
    const i64 start = *offset;
    for (i64 i = blockIdx.x * warps_per_block + threadIdx.x / 32; i < rows_out; i += warps) {
        const i64 k = start + i;
        const i64 r = (k >= 0 && k < order_len) ? order[k] : -1;
        const bool ok = r >= 0 && r < n_src;
        if (!ok && threadIdx.x % 32 == 0) *bad_index = 1;
        const i64 from = ok ? r : 0;
        copy_row(src + from * row_units, dst + i * row_units, row_units, ok);
        if (target_dst)
            copy_row(target_src + from * target_words, target_dst + i * target_words,
                     target_words, ok);
    }
}

}  // namespace gpubp

// ---- entry points (names are what gpubp/cuda/kernels.py loads) ----

#define DEFINE_GATHER(BYTES, WORDS)                                                        \
    extern "C" __global__ void gather_rows_b##BYTES(                                       \
        const void *src, void *dst, long long row_units, const long long *order,           \
        long long order_len, const long long *offset, long long rows_out, long long n_src, \
        const unsigned int *target_src, unsigned int *target_dst, long long target_words,  \
        int *bad_index) {                                                                  \
        typedef gpubp::Vec<unsigned int, WORDS> U;                                         \
        gpubp::gather_rows<U>(static_cast<const U *>(src), static_cast<U *>(dst),          \
                              row_units, order, order_len, offset, rows_out, n_src,        \
                              target_src, target_dst, target_words, bad_index);            \
    }

DEFINE_GATHER(4, 1)
DEFINE_GATHER(8, 2)
DEFINE_GATHER(16, 4)
