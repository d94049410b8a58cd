// Fused softmax + cross-entropy, forward and backward in one pass over the logits.
//
// For each row of logits z (B rows, C columns) and its target (a label, or a row t):
//   loss = −Σ_j t_j log p_j  with  p = softmax(z)
//   grad = (p · Σ_k t_k − t) · scale                 (the exact dL/dz for any row t;
//                                                     EqA1.1's P − Y when Σ_k t_k = 1)
// With sh_j = z_j − max(z) and s = Σ_j e^{sh_j}: log p_j = sh_j − log s, so
//   loss = log s · Σ_j t_j − Σ_j t_j sh_j   and   p_j · Σ_k t_k = e^{sh_j} · (Σ_k t_k / s).
// Shifting by the row max makes both exact under any common offset of the row and
// lets −inf logits through (p_j = 0) while the row has a finite one.
// Every gradient value needs the row's target sum Σt: xent_small and xent_row sum a
// dense row's targets before its logits fill the registers and read them again (from
// cache) for the gradient; the split path has Σt from its first pass. A label's Σt is
// 1, and Σt / s = 1 / s exactly, so label rows give the same bits as P − Y did.
//
// Three paths, chosen on the host by C (all give the same results):
//   xent_small   C ≤ 256: a group of 1..32 lanes per row, many rows per block.
//   xent_row     C ≤ 1024·ITEMS: one block per row, the row held in registers, so the
//                logits are read from memory once and the gradient written once.
//   xent_partial + xent_finish   larger C: each row split over blocks of 4096 columns;
//                the first pass leaves (max, Σe, target sums) per chunk, the second
//                combines them in a fixed order and writes the gradient.
//
// Targets: `labels` (int32 or int64 by `labels_64`, ignored rows equal `ignore_index`
// when `has_ignore`) or, when `labels` is null, dense `target_rows` (B, C).
// Outputs, each optional (null): `grad` (may be `logits` itself: in place), `loss_rows`
// (B,), `mean_out` (the mean over counted rows, 0 when none is counted; needs
// `mean_partials` with 2·gridDim doubles and `ticket`, a zeroed counter).
// A label outside [0, C) that is not ignored sets *bad_label = 1 and gives that row a
// NaN loss and gradient; it is never used as an index. No atomics order any sum, so
// equal inputs give bit-identical outputs.
#include "gpubp_common.cuh"

namespace gpubp {

// One row's target: the label (or −1 for dense rows), and whether the row counts.
struct RowTarget {
    i64 label;
    bool dense, counted, bad;
};

__device__ __forceinline__ RowTarget row_target(const void* labels, int labels_64, i64 row,
                                                i64 cols, i64 ignore_index, int has_ignore) {
    RowTarget t = {-1, labels == nullptr, true, false};
    if (t.dense) return t;
    t.label = labels_64 ? static_cast<const long long*>(labels)[row]
                        : static_cast<i64>(static_cast<const int*>(labels)[row]);
    if (has_ignore && t.label == ignore_index) {
        t.counted = false;
    } else if (t.label < 0 || t.label >= cols) {
        t.bad = true;
    }
    return t;
}

template <typename T>
__device__ __forceinline__ T quiet_nan() {
    return T(0) / T(0) + T(0);  // evaluated at run time; NVRTC keeps it a NaN
}

// t_j for column j: the dense target, or 1 at the label.
template <typename T>
__device__ __forceinline__ T target_at(const RowTarget& rt, const T* target_row, i64 j) {
    return rt.dense ? target_row[j] : T(j == rt.label ? 1 : 0);
}

// (p·Σt − t)·scale = (e^{sh}·ratio − t)·scale with ratio = Σt / s; adds t·sh to `dot`
// (zero t skipped: no 0·(−inf)).
template <typename T>
__device__ __forceinline__ T grad_term(T sh, T t, T ratio, T scale, T& dot) {
    if (t != T(0)) dot += t * sh;
    return (exp_(sh) * ratio - t) * scale;
}

// A bad row gives NaN, an ignored row 0.
template <typename T>
__device__ __forceinline__ T masked(T v, const RowTarget& rt) {
    return rt.bad ? quiet_nan<T>() : rt.counted ? v : T(0);
}

// The row's loss out: `writer` (one thread per row) stores it and flags a bad label;
// with mean_out, every thread of the block joins finish_mean.
template <typename T>
__device__ __forceinline__ void emit_loss(T loss, const RowTarget& rt, bool writer, i64 row,
                                          T* loss_rows, int* bad_label, double* mean_partials,
                                          unsigned int* ticket, T* mean_out, double* scratch) {
    loss = masked(loss, rt);
    if (writer) {
        if (loss_rows) loss_rows[row] = loss;
        if (rt.bad) *bad_label = 1;
    }
    if (mean_out)
        finish_mean(writer ? double(loss) : 0.0, writer && rt.counted ? 1.0 : 0.0,
                    mean_partials, ticket, mean_out, scratch);
}

template <typename T>
__device__ __forceinline__ T row_loss(T log_s, T dot, T tsum) {
    return log_s * tsum - dot;
}

// ---- C ≤ 256: `group` lanes per row (a power of two), SMALL_ITEMS columns per lane ----

constexpr int SMALL_ITEMS = 8;

template <typename T>
__device__ void xent_small(const T* logits, const void* labels, int labels_64,
                           const T* target_rows, T* grad, T* loss_rows, i64 rows, i64 cols,
                           T scale, i64 ignore_index, int has_ignore, double* mean_partials,
                           unsigned int* ticket, T* mean_out, int* bad_label, int group) {
    __shared__ double scratch[32];
    const int lane = threadIdx.x % group;
    const i64 row = static_cast<i64>(blockIdx.x) * (blockDim.x / group) + threadIdx.x / group;
    const bool valid = row < rows;  // lanes past the last row still join the shuffles
    const i64 base = valid ? row * cols : 0;

    // Σt of a dense row (labels == null for the whole launch, so every lane joins).
    T tsum = T(1);
    if (labels == nullptr) {
        tsum = T(0);
#pragma unroll
        for (int i = 0; i < SMALL_ITEMS; ++i) {
            const i64 j = lane + static_cast<i64>(i) * group;
            if (valid && j < cols) tsum += target_rows[base + j];
        }
        tsum = group_sum(tsum, group);
    }

    T sh[SMALL_ITEMS];
    T m = neg_inf<T>();
#pragma unroll
    for (int i = 0; i < SMALL_ITEMS; ++i) {
        const i64 j = lane + static_cast<i64>(i) * group;
        sh[i] = (valid && j < cols) ? logits[base + j] : neg_inf<T>();
        m = max_(m, sh[i]);
    }
    m = group_max(m, group);
    T s = T(0);
#pragma unroll
    for (int i = 0; i < SMALL_ITEMS; ++i) {
        sh[i] -= m;
        const i64 j = lane + static_cast<i64>(i) * group;
        if (j < cols) s += exp_(sh[i]);
    }
    s = group_sum(s, group);

    RowTarget rt = {-1, true, false, false};
    if (valid) rt = row_target(labels, labels_64, row, cols, ignore_index, has_ignore);
    const T* target_row = rt.dense && valid ? target_rows + base : nullptr;
    const T ratio = tsum / s;
    T dot = T(0);
#pragma unroll
    for (int i = 0; i < SMALL_ITEMS; ++i) {
        const i64 j = lane + static_cast<i64>(i) * group;
        if (!valid || j >= cols) continue;
        const T g = grad_term(sh[i], target_at(rt, target_row, j), ratio, scale, dot);
        if (grad) grad[base + j] = masked(g, rt);
    }
    dot = group_sum(dot, group);

    emit_loss(row_loss(log_(s), dot, tsum), rt, valid && lane == 0, row, loss_rows, bad_label,
              mean_partials, ticket, mean_out, scratch);
}

// ---- C ≤ blockDim·ITEMS: one block per row, ITEMS columns per thread in registers ----
// VEC > 1 moves 16 bytes at a time; the host uses it only when C % VEC == 0 and the
// arrays are 16-byte aligned, so a vector never straddles the end of a row.

template <typename T, int ITEMS, int VEC>
__device__ void xent_row(const T* logits, const void* labels, int labels_64,
                         const T* target_rows, T* grad, T* loss_rows, i64 rows, i64 cols,
                         T scale, i64 ignore_index, int has_ignore, double* mean_partials,
                         unsigned int* ticket, T* mean_out, int* bad_label) {
    __shared__ T scratch[32];
    __shared__ double scratch_d[32];
    const i64 row = blockIdx.x;
    const int n = static_cast<int>(cols);  // < 2^31 on this path: 32-bit indices in the row
    const T* z = logits + row * cols;
    constexpr int NVEC = ITEMS / VEC;
    // Thread t holds vectors t, t + blockDim, ...: column (k·blockDim + t)·VEC + e.
    const int stride = blockDim.x * VEC;
    const int first = threadIdx.x * VEC;

    // Σt of a dense row (labels == null for the whole launch, so every thread joins),
    // kept in shared memory while the row takes the registers.
    __shared__ T dense_tsum;
    if (labels == nullptr) {
        const T* target_row = target_rows + row * cols;
        T tsum = T(0);
        // Not unrolled: unrolled, it made ptxas spill registers in the row's own loops.
#pragma unroll 1
        for (int k = 0; k < NVEC; ++k) {
            const int j0 = first + k * stride;
            if (j0 >= n) continue;
            const Vec<T, VEC> t = load_vec<T, VEC>(target_row + j0);
#pragma unroll
            for (int e = 0; e < VEC; ++e) tsum += t.v[e];
        }
        tsum = block_sum(tsum, scratch);
        if (threadIdx.x == 0) dense_tsum = tsum;  // read after block_max's barriers
    }

    T sh[ITEMS];
    T m = neg_inf<T>();
#pragma unroll
    for (int k = 0; k < NVEC; ++k) {
        const int j0 = first + k * stride;
        if (j0 < n) {
            const Vec<T, VEC> x = load_vec<T, VEC>(z + j0);
#pragma unroll
            for (int e = 0; e < VEC; ++e) sh[k * VEC + e] = x.v[e];
        } else {
#pragma unroll
            for (int e = 0; e < VEC; ++e) sh[k * VEC + e] = neg_inf<T>();
        }
#pragma unroll
        for (int e = 0; e < VEC; ++e) m = max_(m, sh[k * VEC + e]);
    }
    m = block_max(m, scratch);
    T s = T(0);
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
        sh[i] -= m;
        s += exp_(sh[i]);  // padding: e^{−inf} = 0
    }
    s = block_sum(s, scratch);

    const RowTarget rt = row_target(labels, labels_64, row, cols, ignore_index, has_ignore);
    const T ratio = (rt.dense ? dense_tsum : T(1)) / s;  // 1/s for a label
    T dot = T(0);
    T* grad_row = grad ? grad + row * cols : nullptr;
    if (rt.bad || !rt.counted) {
        // The whole row's gradient is one value: NaN for a bad label, 0 when ignored.
        Vec<T, VEC> g;
#pragma unroll
        for (int e = 0; e < VEC; ++e) g.v[e] = rt.bad ? quiet_nan<T>() : T(0);
        for (int j0 = first; grad_row && j0 < n; j0 += stride) store_vec<T, VEC>(grad_row + j0, g);
    } else if (rt.dense) {
        const T* target_row = target_rows + row * cols;
#pragma unroll
        for (int k = 0; k < NVEC; ++k) {
            const int j0 = first + k * stride;
            if (j0 >= n) continue;
            const Vec<T, VEC> t = load_vec<T, VEC>(target_row + j0);
            Vec<T, VEC> g;
#pragma unroll
            for (int e = 0; e < VEC; ++e)
                g.v[e] = grad_term(sh[k * VEC + e], t.v[e], ratio, scale, dot);
            if (grad_row) store_vec<T, VEC>(grad_row + j0, g);
        }
    } else {
        const int label = static_cast<int>(rt.label);
#pragma unroll
        for (int k = 0; k < NVEC; ++k) {
            const int j0 = first + k * stride;
            if (j0 >= n) continue;
            Vec<T, VEC> g;
#pragma unroll
            for (int e = 0; e < VEC; ++e) {
                const bool hit = j0 + e == label;
                if (hit) dot = sh[k * VEC + e];
                g.v[e] = (exp_(sh[k * VEC + e]) * ratio - (hit ? T(1) : T(0))) * scale;
            }
            if (grad_row) store_vec<T, VEC>(grad_row + j0, g);
        }
    }
    dot = block_sum(dot, scratch);
    const T tsum = rt.dense ? dense_tsum : T(1);

    emit_loss(row_loss(log_(s), dot, tsum), rt, threadIdx.x == 0, row, loss_rows, bad_label,
              mean_partials, ticket, mean_out, scratch_d);
}

// ---- large C: rows split into chunks of blockDim·SPLIT_ITEMS columns, two passes ----
// Block b handles row b / chunks, chunk b % chunks. `chunk_stats` holds per (row, chunk):
// the chunk max m_k, Σ e^{z−m_k}, Σ t_j (m_k − z_j) and Σ t_j (dense targets; label rows
// leave the last two 0 and store z_label in `label_logit` instead).

constexpr int SPLIT_ITEMS = 16;

template <typename T>
__device__ void xent_partial(const T* logits, const void* labels, int labels_64,
                             const T* target_rows, i64 rows, i64 cols, i64 chunks,
                             i64 ignore_index, int has_ignore, T* chunk_stats, T* label_logit) {
    __shared__ T scratch[32];
    const i64 row = blockIdx.x / chunks, chunk = blockIdx.x % chunks;
    const i64 base = row * cols;
    const i64 begin = chunk * blockDim.x * SPLIT_ITEMS;
    const RowTarget rt = row_target(labels, labels_64, row, cols, ignore_index, has_ignore);

    T x[SPLIT_ITEMS];
    T m = neg_inf<T>();
#pragma unroll
    for (int i = 0; i < SPLIT_ITEMS; ++i) {
        const i64 j = begin + static_cast<i64>(i) * blockDim.x + threadIdx.x;
        x[i] = j < cols ? logits[base + j] : neg_inf<T>();
        m = max_(m, x[i]);
        if (!rt.dense && j == rt.label) *label_logit = x[i];
    }
    m = block_max(m, scratch);
    // A chunk of −inf logits (m = −inf) adds nothing to Σe; its nonzero targets add +inf.
    const bool all_neg_inf = m == neg_inf<T>();
    T s = T(0), dot = T(0), tsum = T(0);
#pragma unroll
    for (int i = 0; i < SPLIT_ITEMS; ++i) {
        if (!all_neg_inf) s += exp_(x[i] - m);
        const i64 j = begin + static_cast<i64>(i) * blockDim.x + threadIdx.x;
        if (rt.dense && j < cols) {
            const T t = target_rows[base + j];
            if (t != T(0)) {
                dot += t * (all_neg_inf ? -neg_inf<T>() : m - x[i]);
                tsum += t;
            }
        }
    }
    s = block_sum(s, scratch);
    if (rt.dense) {
        dot = block_sum(dot, scratch);
        tsum = block_sum(tsum, scratch);
    }
    if (threadIdx.x == 0) {
        T* stats = chunk_stats + 4 * (row * chunks + chunk);
        stats[0] = m;
        stats[1] = s;
        stats[2] = dot;
        stats[3] = tsum;
    }
}

template <typename T>
__device__ void xent_finish(const T* logits, const void* labels, int labels_64,
                            const T* target_rows, T* grad, T* loss_rows, i64 rows, i64 cols,
                            i64 chunks, T scale, i64 ignore_index, int has_ignore,
                            const T* chunk_stats, const T* label_logits, double* mean_partials,
                            unsigned int* ticket, T* mean_out, int* bad_label) {
    __shared__ double scratch_d[32];
    const i64 row = blockIdx.x / chunks, chunk = blockIdx.x % chunks;
    const i64 base = row * cols;
    const i64 begin = chunk * blockDim.x * SPLIT_ITEMS;
    const RowTarget rt = row_target(labels, labels_64, row, cols, ignore_index, has_ignore);

    // Combine the chunks in index order: M = max m_k, S = Σ_k s_k e^{m_k − M}, and for
    // dense rows Σt = Σ_k Σt_k (a label's is 1).
    const T* stats = chunk_stats + 4 * row * chunks;
    T M = neg_inf<T>();
    for (i64 k = 0; k < chunks; ++k) M = max_(M, stats[4 * k]);
    T S = T(0), tsum = T(0);
    for (i64 k = 0; k < chunks; ++k) {
        if (stats[4 * k + 1] != T(0)) S += stats[4 * k + 1] * exp_(stats[4 * k] - M);
        tsum += stats[4 * k + 3];
    }
    const T log_s = log_(S), ratio = rt.dense ? tsum / S : T(1) / S;

    if (grad) {
        const T* target_row = rt.dense ? target_rows + base : nullptr;
#pragma unroll 4
        for (int i = 0; i < SPLIT_ITEMS; ++i) {
            const i64 j = begin + static_cast<i64>(i) * blockDim.x + threadIdx.x;
            if (j >= cols) break;
            const T t = target_at(rt, target_row, j);
            grad[base + j] = masked((exp_(logits[base + j] - M) * ratio - t) * scale, rt);
        }
    }

    // loss = Σ_k [Σ t_j (m_k − z_j) + Σ t_j · (M − m_k + log S)] for dense rows,
    //        (M − z_label) + log S for a label.
    T loss = T(0);
    if (rt.dense) {
        for (i64 k = 0; k < chunks; ++k) {
            loss += stats[4 * k + 2];
            if (stats[4 * k + 3] != T(0)) loss += stats[4 * k + 3] * ((M - stats[4 * k]) + log_s);
        }
    } else {
        loss = (M - label_logits[row]) + log_s;
    }
    emit_loss(loss, rt, chunk == 0 && threadIdx.x == 0, row, loss_rows, bad_label,
              mean_partials, ticket, mean_out, scratch_d);
}

}  // namespace gpubp

// ---- entry points, one per type and shape (names are what gpubp/cuda_kernels.py loads) ----

#define XENT_ARGS(T)                                                                       \
    const T *logits, const void *labels, int labels_64, const T *target_rows, T *grad,     \
        T *loss_rows, long long rows, long long cols, T scale, long long ignore_index,     \
        int has_ignore, double *mean_partials, unsigned int *ticket, T *mean_out,          \
        int *bad_label
#define XENT_PASS                                                                          \
    logits, labels, labels_64, target_rows, grad, loss_rows, rows, cols, scale,            \
        ignore_index, has_ignore, mean_partials, ticket, mean_out, bad_label

#define DEFINE_XENT(T, SUFFIX)                                                             \
    extern "C" __global__ void xent_small_##SUFFIX(XENT_ARGS(T), int group) {              \
        gpubp::xent_small<T>(XENT_PASS, group);                                            \
    }                                                                                      \
    extern "C" __global__ void xent_partial_##SUFFIX(                                      \
        const T *logits, const void *labels, int labels_64, const T *target_rows,          \
        long long rows, long long cols, long long chunks, long long ignore_index,          \
        int has_ignore, T *chunk_stats, T *label_logits) {                                 \
        const long long row = blockIdx.x / chunks;                                         \
        gpubp::xent_partial<T>(logits, labels, labels_64, target_rows, rows, cols, chunks, \
                               ignore_index, has_ignore, chunk_stats, label_logits + row); \
    }                                                                                      \
    extern "C" __global__ void xent_finish_##SUFFIX(XENT_ARGS(T), long long chunks,        \
                                                    const T *chunk_stats,                  \
                                                    const T *label_logits) {               \
        gpubp::xent_finish<T>(logits, labels, labels_64, target_rows, grad, loss_rows,     \
                              rows, cols, chunks, scale, ignore_index, has_ignore,         \
                              chunk_stats, label_logits, mean_partials, ticket, mean_out,  \
                              bad_label);                                                  \
    }

// The row kernels run up to ROW_MAX_THREADS = 1024 threads, so registers are capped at 64.
#define DEFINE_XENT_ROW(T, SUFFIX, ITEMS, VEC)                                             \
    extern "C" __global__ void __launch_bounds__(1024)                                     \
        xent_row_##SUFFIX##_i##ITEMS##_v##VEC(XENT_ARGS(T)) {                              \
        gpubp::xent_row<T, ITEMS, VEC>(XENT_PASS);                                         \
    }

DEFINE_XENT(float, f32)
DEFINE_XENT(double, f64)

DEFINE_XENT_ROW(float, f32, 4, 1)
DEFINE_XENT_ROW(float, f32, 4, 4)
DEFINE_XENT_ROW(float, f32, 8, 1)
DEFINE_XENT_ROW(float, f32, 8, 4)
DEFINE_XENT_ROW(float, f32, 16, 1)
DEFINE_XENT_ROW(float, f32, 16, 4)
DEFINE_XENT_ROW(float, f32, 32, 1)
DEFINE_XENT_ROW(float, f32, 32, 4)
DEFINE_XENT_ROW(double, f64, 4, 1)
DEFINE_XENT_ROW(double, f64, 4, 2)
DEFINE_XENT_ROW(double, f64, 8, 1)
DEFINE_XENT_ROW(double, f64, 8, 2)
