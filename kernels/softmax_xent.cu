// Fused softmax + cross-entropy, forward and backward in one pass over the logits, with
// the output layer's bias add, its bias gradient and the epoch's loss sum folded in.
//
// For each row of logits z = z^L + b^L (B rows, C columns; b^L optional) and its target
// (a label, or a row t):
//   loss = −Σ_j t_j log p_j  with  p = softmax(z)
//   grad = (p · Σ_k t_k − t) · scale                 (the exact dL/dz for any row t;
//                                                     EqA1.1's P − Y when Σ_k t_k = 1)
// With sh_j = z_j − max(z) and s = Σ_j e^{sh_j}: log p_j = sh_j − log s, so
//   loss = log s · Σ_j t_j − Σ_j t_j sh_j   and   p_j · Σ_k t_k = e^{sh_j} · (Σ_k t_k / s).
// Shifting by the row max makes both exact under any common offset of the row and
// lets −inf logits through (p_j = 0) while the row has a finite one. A label's Σt is 1
// and its loss log s − sh_label; Σt / s = 1 / s exactly, so label rows give P − Y.
//
// Memory traffic per launch: the logits read once and the gradient written once (in
// place when grad == logits), b^L (C values) read per row from cache, a label per row.
// Target rows are read twice (Σt first, then with the gradient), and so are a dense
// row's logits (the second read, for the loss's Σ t·sh, from cache). The split path
// (C > 32,768 in float32, 8,192 in float64) reads the logits twice.
//
// Three paths, chosen on the host by C (all give the same results):
//   xent_small       C ≤ 256: a group of 1..32 lanes per row, 256/group rows per block;
//                    also sums db^L = Σ_rows grad over its rows (the MLP's C = 10 step
//                    is this one launch).
//   xent_row_labels  C ≤ 1024·ITEMS, labels: one block per row holding e^{sh} in
//                    registers (ITEMS per thread); z_label is read again from memory
//                    for the loss, so no shifted copy of the row is kept.
//   xent_row_dense   the same for target rows; the loss's Σ t_j·sh_j reads z_j again
//                    (from cache) in the gradient loop.
//   xent_partial + xent_finish   larger C: each row split over blocks of 4096 columns;
//                    the first pass leaves (max, Σe, target sums) per chunk, the second
//                    combines them in a fixed order and writes the gradient.
// On the row and split paths the host sums db^L with column_sum (sigmoid.cu).
//
// Targets: `labels` (int32 or int64 by `labels_64`, ignored rows equal `ignore_index`
// when `has_ignore`) or, when `labels` is null, dense `target_rows` (B, C).
// Outputs, each optional (null): `grad` (may be `logits` itself: in place), `loss_rows`
// (B,), `mean_out` (the mean over counted rows, 0 when none is counted), `loss_acc`
// (two doubles, += (Σ row losses, counted rows): the epoch's loss), and on xent_small
// `bias_grad` (C,). The mean, loss_acc and bias_grad are finished by the last block to
// take `ticket` (a zeroed counter, left zeroed), from per-block partials in
// `loss_partials` (2 doubles per block, or per row on the row and split paths) and
// `bias_partials` (C per block); no atomic orders any sum, so equal inputs give
// bit-identical outputs.
// A label outside [0, C) that is not ignored sets *bad_label = 1 and gives that row a
// NaN loss and gradient; it is never used as an index.
#include "gpubp_common.cuh"

namespace gpubp {

// The arguments every path shares (the kernel parameters, gathered for readability).
template <typename T>
struct Xent {
    const T* logits;
    const T* bias;
    const void* labels;
    int labels_64;
    const T* target_rows;
    T* grad;
    T* loss_rows;
    i64 rows, cols;
    T scale;
    i64 ignore_index;
    int has_ignore;
    double* loss_partials;
    unsigned int* ticket;
    int* bad_label;
    T* mean_out;
    double* loss_acc;

    __device__ bool reduces_loss() const { return mean_out != nullptr || loss_acc != nullptr; }
    // z_j + b_j: the one expression for a logit, so that z_label read again matches.
    __device__ T logit(i64 row_base, i64 j) const {
        return bias ? logits[row_base + j] + bias[j] : logits[row_base + j];
    }
};

// One row's target: the label (or −1 for dense rows), and whether the row counts.
struct RowTarget {
    i64 label;
    bool dense, counted, bad;
};

template <typename T>
__device__ __forceinline__ RowTarget row_target(const Xent<T>& a, i64 row) {
    RowTarget t = {-1, a.labels == nullptr, true, false};
    if (t.dense) return t;
    t.label = a.labels_64 ? static_cast<const long long*>(a.labels)[row]
                          : static_cast<i64>(static_cast<const int*>(a.labels)[row]);
    if (a.has_ignore && t.label == a.ignore_index) {
        t.counted = false;
    } else if (t.label < 0 || t.label >= a.cols) {
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

template <typename T>
__device__ __forceinline__ T row_loss(T log_s, T dot, T tsum) {
    return log_s * tsum - dot;
}

// The row's (masked) loss out, by the row's one writer thread on the row and split
// paths: loss_rows, the bad-label flag, and the row's (loss, count) pair in
// loss_partials[2·row] for the last block.
template <typename T>
__device__ __forceinline__ void write_row_loss(const Xent<T>& a, T loss, const RowTarget& rt,
                                               i64 row) {
    if (a.loss_rows) a.loss_rows[row] = loss;
    if (rt.bad) *a.bad_label = 1;
    if (a.reduces_loss()) {
        a.loss_partials[2 * row] = double(loss);
        a.loss_partials[2 * row + 1] = rt.counted ? 1.0 : 0.0;
    }
}

// For kernels whose one thread 0 per block wrote its loss pair: that thread takes the
// ticket as soon as the pair is stored (before the block's gradient stores, so the
// atomic's latency hides under them); finish_if_last then lets the last block add all
// `blocks` pairs. `blocks` counts the blocks that take a ticket.
__device__ __forceinline__ void ticket_by_thread0(unsigned int* ticket, unsigned int blocks,
                                                  bool* is_last) {
    __threadfence();  // the pair before the ticket
    *is_last = atomicAdd(ticket, 1u) == blocks - 1;
}

template <typename T>
__device__ __forceinline__ void finish_if_last(const Xent<T>& a, const bool* is_last,
                                               unsigned int blocks, LossCount* scratch) {
    __syncthreads();  // thread 0's is_last written before anyone reads it
    if (!*is_last) return;
    __threadfence();
    finish_losses(a.loss_partials, blocks, a.mean_out, a.loss_acc, scratch);
    if (threadIdx.x == 0) *a.ticket = 0u;
}

// ---- C ≤ 256: `group` lanes per row (a power of two), SMALL_ITEMS columns per lane ----

constexpr int SMALL_ITEMS = 8;
constexpr int SMALL_MAX_COLS = 256;
constexpr int SMALL_WARPS = 8;  // the host launches 256 threads

// Σ of x over the rows a warp holds (lanes with the same lane-in-group), in a fixed
// butterfly order; every lane gets its column's warp sum.
template <typename T>
__device__ __forceinline__ T warp_rows_sum(T x, int group) {
    for (int offset = group; offset < 32; offset *= 2)
        x += __shfl_xor_sync(0xffffffffu, x, offset, 32);
    return x;
}

template <typename T>
__device__ void xent_small(const Xent<T>& a, T* bias_grad, T* bias_partials, int group) {
    __shared__ LossCount pair_scratch[32];
    __shared__ T column_part[SMALL_WARPS][SMALL_MAX_COLS];  // per warp: Σ_rows grad
    const int lane = threadIdx.x % group, warp = threadIdx.x / 32;
    const i64 row = static_cast<i64>(blockIdx.x) * (blockDim.x / group) + threadIdx.x / group;
    const bool valid = row < a.rows;  // lanes past the last row still join the shuffles
    const i64 base = valid ? row * a.cols : 0;
    const i64 cols = a.cols;

    // The label first: its load overlaps the logits' loads.
    RowTarget rt = {-1, a.labels == nullptr, false, false};
    if (valid) rt = row_target(a, row);

    // Σt of a dense row (labels == null for the whole launch, so every lane joins).
    T tsum = T(1);
    if (rt.dense) {
        tsum = T(0);
#pragma unroll
        for (int i = 0; i < SMALL_ITEMS; ++i) {
            const i64 j = lane + static_cast<i64>(i) * group;
            if (valid && j < cols) tsum += a.target_rows[base + j];
        }
        tsum = group_sum(tsum, group);
    }

    T sh[SMALL_ITEMS];
    T m = neg_inf<T>();
#pragma unroll
    for (int i = 0; i < SMALL_ITEMS; ++i) {
        const i64 j = lane + static_cast<i64>(i) * group;
        sh[i] = (valid && j < cols) ? a.logit(base, j) : neg_inf<T>();
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

    const T* target_row = rt.dense && valid ? a.target_rows + base : nullptr;
    const T ratio = tsum / s;
    T dot = T(0);
    const bool warp_leader = threadIdx.x % 32 < group;  // the first row of its warp
#pragma unroll
    for (int i = 0; i < SMALL_ITEMS; ++i) {
        const i64 j = lane + static_cast<i64>(i) * group;
        T g = T(0);
        if (valid && j < cols) {
            g = masked(grad_term(sh[i], target_at(rt, target_row, j), ratio, a.scale, dot), rt);
            if (a.grad) a.grad[base + j] = g;
        }
        if (bias_grad) {  // uniform: every lane shuffles
            g = warp_rows_sum(g, group);
            if (warp_leader && j < cols) column_part[warp][j] = g;
        }
    }
    dot = group_sum(dot, group);

    const bool writer = valid && lane == 0;
    const T loss = masked(row_loss(log_(s), dot, tsum), rt);
    if (writer) {
        if (a.loss_rows) a.loss_rows[row] = loss;
        if (rt.bad) *a.bad_label = 1;
    }
    if (!a.reduces_loss() && !bias_grad) return;

    // This block's partials: its (loss, count) pair and its column sums. The pair sum's
    // barrier also orders the column_part writes above before the reads below.
    LossCount pair = {writer ? double(loss) : 0.0, writer && rt.counted ? 1.0 : 0.0};
    pair = block_sum_pair(pair, pair_scratch);
    if (threadIdx.x == 0 && a.reduces_loss()) {
        a.loss_partials[2 * blockIdx.x] = pair.loss;
        a.loss_partials[2 * blockIdx.x + 1] = pair.count;
    }
    const bool column_writer = bias_grad && threadIdx.x < cols;
    if (column_writer) {
        T total = T(0);
        for (int w = 0; w < SMALL_WARPS; ++w) total += column_part[w][threadIdx.x];
        bias_partials[blockIdx.x * cols + threadIdx.x] = total;
    }
    if (!take_last_ticket(a.ticket, gridDim.x)) return;  // its barriers end the reads above

    if (a.reduces_loss()) finish_losses(a.loss_partials, gridDim.x, a.mean_out, a.loss_acc,
                                        pair_scratch);
    if (bias_grad) {
        // db_c = Σ_b bias_partials[b, c]: thread (part, c) adds blocks part, part + parts,
        // ..., then thread c adds the parts in order.
        int width = 1;
        while (width < cols) width *= 2;
        const int parts = blockDim.x / width, c = threadIdx.x % width, part = threadIdx.x / width;
        T* part_sums = &column_part[0][0];  // parts · width ≤ 256 values
        T total = T(0);
        if (c < cols && part < parts)
            for (unsigned int b = part; b < gridDim.x; b += parts)
                total += ((volatile const T*)bias_partials)[b * cols + c];
        if (part < parts) part_sums[part * width + c] = total;
        __syncthreads();
        if (threadIdx.x < cols) {
            total = T(0);
            for (int p = 0; p < parts; ++p) total += part_sums[p * width + threadIdx.x];
            bias_grad[threadIdx.x] = total;
        }
    }
    if (threadIdx.x == 0) *a.ticket = 0u;
}

// ---- C ≤ blockDim·ITEMS: one block per row, ITEMS columns per thread in registers ----
// VEC > 1 moves 16 bytes at a time; the host uses it only when C % VEC == 0 and the
// arrays are 16-byte aligned, so a vector never straddles the end of a row.
// Thread t holds vectors t, t + blockDim, ...: column (k·blockDim + t)·VEC + e.

// VEC logits z + b from column j0 (a vector never straddles the end of the row).
template <typename T, int VEC>
__device__ __forceinline__ Vec<T, VEC> load_logits(const Xent<T>& a, const T* z, int j0) {
    Vec<T, VEC> v = load_vec<T, VEC>(z + j0);
    if (a.bias) {
        const Vec<T, VEC> b = load_vec<T, VEC>(a.bias + j0);
#pragma unroll
        for (int e = 0; e < VEC; ++e) v.v[e] = v.v[e] + b.v[e];
    }
    return v;
}

// The row's logits into x, −inf past the end; returns the thread's max.
template <typename T, int ITEMS, int VEC>
__device__ __forceinline__ T load_row(const Xent<T>& a, const T* z, int n, T (&x)[ITEMS]) {
    constexpr int NVEC = ITEMS / VEC;
    const int stride = blockDim.x * VEC, first = threadIdx.x * VEC;
    T m = neg_inf<T>();
#pragma unroll
    for (int k = 0; k < NVEC; ++k) {
        const int j0 = first + k * stride;
        if (j0 < n) {
            const Vec<T, VEC> v = load_logits<T, VEC>(a, z, j0);
#pragma unroll
            for (int e = 0; e < VEC; ++e) x[k * VEC + e] = v.v[e];
        } else {
#pragma unroll
            for (int e = 0; e < VEC; ++e) x[k * VEC + e] = neg_inf<T>();
        }
#pragma unroll
        for (int e = 0; e < VEC; ++e) m = max_(m, x[k * VEC + e]);
    }
    return m;
}

// x ← e^{x − m} (padding: e^{−inf} = 0); returns the thread's Σ.
template <typename T, int ITEMS>
__device__ __forceinline__ T exp_shifted(T (&x)[ITEMS], T m) {
    T s = T(0);
#pragma unroll
    for (int i = 0; i < ITEMS; ++i) {
        x[i] = exp_(x[i] - m);
        s += x[i];
    }
    return s;
}

// Labels: the registers hold e^{sh} only. Barriers: the max, the sum, and the ticket's.
template <typename T, int ITEMS, int VEC>
__device__ void xent_row_labels(const Xent<T>& a) {
    __shared__ T max_scratch[32], sum_scratch[32];
    __shared__ LossCount pair_scratch[32];
    __shared__ bool is_last;
    constexpr int NVEC = ITEMS / VEC;
    const i64 row = blockIdx.x;
    const int n = static_cast<int>(a.cols);  // < 2^31 on this path: 32-bit indices in the row
    const i64 base = row * a.cols;
    const int stride = blockDim.x * VEC, first = threadIdx.x * VEC;

    // The label before the row: thread 0's read of z_label is in flight during the loads.
    const RowTarget rt = row_target(a, row);
    T z_label = T(0);
    if (threadIdx.x == 0 && !rt.bad && rt.counted) z_label = a.logit(base, rt.label);

    T e[ITEMS];
    T m = load_row<T, ITEMS, VEC>(a, a.logits + base, n, e);
    m = block_max(m, max_scratch);
    T s = exp_shifted(e, m);
    s = block_sum(s, sum_scratch);

    if (threadIdx.x == 0) {
        write_row_loss(a, masked(row_loss(log_(s), z_label - m, T(1)), rt), rt, row);
        if (a.reduces_loss()) ticket_by_thread0(a.ticket, gridDim.x, &is_last);
    }

    const T ratio = T(1) / s;
    if (a.grad) {
        T* grad_row = a.grad + base;
        if (rt.bad || !rt.counted) {
            // The whole row's gradient is one value: NaN for a bad label, 0 when ignored.
            Vec<T, VEC> g;
#pragma unroll
            for (int k = 0; k < VEC; ++k) g.v[k] = rt.bad ? quiet_nan<T>() : T(0);
            for (int j0 = first; j0 < n; j0 += stride) store_vec<T, VEC>(grad_row + j0, g);
        } else {
            const int label = static_cast<int>(rt.label);
#pragma unroll
            for (int k = 0; k < NVEC; ++k) {
                const int j0 = first + k * stride;
                if (j0 >= n) continue;
                Vec<T, VEC> g;
#pragma unroll
                for (int v = 0; v < VEC; ++v)
                    g.v[v] = (e[k * VEC + v] * ratio - (j0 + v == label ? T(1) : T(0))) * a.scale;
                store_vec<T, VEC>(grad_row + j0, g);
            }
        }
    }
    if (a.reduces_loss()) finish_if_last(a, &is_last, gridDim.x, pair_scratch);
}

// Target rows: Σt first (its own pass, so the row's registers are free), then the row.
// The registers hold e^{sh} only; the loss's Σ t·sh reads z_j again (from cache) in the
// gradient loop, before the gradient's store to the same element when grad == logits.
// Barriers: Σt, the max, the sum, Σ t·sh, and the ticket's.
template <typename T, int ITEMS, int VEC>
__device__ void xent_row_dense(const Xent<T>& a) {
    __shared__ T tsum_scratch[32], max_scratch[32], sum_scratch[32], dot_scratch[32];
    __shared__ LossCount pair_scratch[32];
    __shared__ bool is_last;
    constexpr int NVEC = ITEMS / VEC;
    const i64 row = blockIdx.x;
    const int n = static_cast<int>(a.cols);
    const i64 base = row * a.cols;
    const T* z = a.logits + base;
    const T* target_row = a.target_rows + base;
    const int stride = blockDim.x * VEC, first = threadIdx.x * VEC;

    T tsum = T(0);
    // Unrolled by 2 only: fully, it made ptxas spill in the row's own loops; not at all,
    // ptxas spilled 8 bytes of xent_row_dense_f32_i8_v1 on sm_90 (NVRTC 12.9).
#pragma unroll 2
    for (int k = 0; k < NVEC; ++k) {
        const int j0 = first + k * stride;
        if (j0 >= n) continue;
        const Vec<T, VEC> t = load_vec<T, VEC>(target_row + j0);
#pragma unroll
        for (int v = 0; v < VEC; ++v) tsum += t.v[v];
    }
    tsum = block_sum(tsum, tsum_scratch);

    T e[ITEMS];
    T m = load_row<T, ITEMS, VEC>(a, z, n, e);
    m = block_max(m, max_scratch);
    T s = exp_shifted(e, m);
    s = block_sum(s, sum_scratch);

    const T ratio = tsum / s;
    T dot = T(0);
#pragma unroll
    for (int k = 0; k < NVEC; ++k) {
        const int j0 = first + k * stride;
        if (j0 >= n) continue;
        const Vec<T, VEC> t = load_vec<T, VEC>(target_row + j0);
        const Vec<T, VEC> x = load_logits<T, VEC>(a, z, j0);
        Vec<T, VEC> g;
#pragma unroll
        for (int v = 0; v < VEC; ++v) {
            if (t.v[v] != T(0)) dot += t.v[v] * (x.v[v] - m);  // zero t: no 0·(−inf)
            g.v[v] = (e[k * VEC + v] * ratio - t.v[v]) * a.scale;
        }
        if (a.grad) store_vec<T, VEC>(a.grad + base + j0, g);
    }
    dot = block_sum(dot, dot_scratch);

    if (threadIdx.x == 0) {
        const RowTarget rt = {-1, true, true, false};
        write_row_loss(a, row_loss(log_(s), dot, tsum), rt, row);
        if (a.reduces_loss()) ticket_by_thread0(a.ticket, gridDim.x, &is_last);
    }
    if (a.reduces_loss()) finish_if_last(a, &is_last, gridDim.x, pair_scratch);
}

// ---- large C: rows split into chunks of blockDim·SPLIT_ITEMS columns, two passes ----
// Block b handles row b / chunks, chunk b % chunks. `chunk_stats` holds per (row, chunk):
// the chunk max m_k, Σ e^{z−m_k}, Σ t_j (m_k − z_j) and Σ t_j (dense targets; label rows
// leave the last two 0 and store z_label in `label_logits[row]` instead).

constexpr int SPLIT_ITEMS = 16;

template <typename T>
__device__ void xent_partial(const Xent<T>& a, i64 chunks, T* chunk_stats, T* label_logits) {
    __shared__ T max_scratch[32], sum_scratch[32], dot_scratch[32], tsum_scratch[32];
    const i64 row = blockIdx.x / chunks, chunk = blockIdx.x % chunks;
    const i64 base = row * a.cols, cols = a.cols;
    const i64 begin = chunk * blockDim.x * SPLIT_ITEMS;
    const RowTarget rt = row_target(a, row);

    T x[SPLIT_ITEMS];
    T m = neg_inf<T>();
#pragma unroll
    for (int i = 0; i < SPLIT_ITEMS; ++i) {
        const i64 j = begin + static_cast<i64>(i) * blockDim.x + threadIdx.x;
        x[i] = j < cols ? a.logit(base, j) : neg_inf<T>();
        m = max_(m, x[i]);
        if (!rt.dense && j == rt.label) label_logits[row] = x[i];
    }
    m = block_max(m, max_scratch);
    // A chunk of −inf logits (m = −inf) adds nothing to Σe; its nonzero targets add +inf.
    const bool all_neg_inf = m == neg_inf<T>();
    T s = T(0), dot = T(0), tsum = T(0);
#pragma unroll
    for (int i = 0; i < SPLIT_ITEMS; ++i) {
        if (!all_neg_inf) s += exp_(x[i] - m);
        const i64 j = begin + static_cast<i64>(i) * blockDim.x + threadIdx.x;
        if (rt.dense && j < cols) {
            const T t = a.target_rows[base + j];
            if (t != T(0)) {
                dot += t * (all_neg_inf ? -neg_inf<T>() : m - x[i]);
                tsum += t;
            }
        }
    }
    s = block_sum(s, sum_scratch);
    if (rt.dense) {
        dot = block_sum(dot, dot_scratch);
        tsum = block_sum(tsum, tsum_scratch);
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
__device__ void xent_finish(const Xent<T>& a, i64 chunks, const T* chunk_stats,
                            const T* label_logits) {
    __shared__ LossCount pair_scratch[32];
    __shared__ bool is_last;
    const i64 row = blockIdx.x / chunks, chunk = blockIdx.x % chunks;
    const i64 base = row * a.cols, cols = a.cols;
    const i64 begin = chunk * blockDim.x * SPLIT_ITEMS;
    const RowTarget rt = row_target(a, row);

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

    // The row's loss and ticket first (chunk 0's thread 0), so the atomic's latency hides
    // under the gradient stores. loss = Σ_k [Σ t_j (m_k − z_j) + Σ t_j · (M − m_k + log S)]
    // for dense rows, (M − z_label) + log S for a label.
    const bool writer = chunk == 0 && threadIdx.x == 0;
    if (writer) {
        T loss = T(0);
        if (rt.dense) {
            for (i64 k = 0; k < chunks; ++k) {
                loss += stats[4 * k + 2];
                if (stats[4 * k + 3] != T(0))
                    loss += stats[4 * k + 3] * ((M - stats[4 * k]) + log_s);
            }
        } else {
            loss = (M - label_logits[row]) + log_s;
        }
        write_row_loss(a, masked(loss, rt), rt, row);
        if (a.reduces_loss()) ticket_by_thread0(a.ticket, a.rows, &is_last);
    }

    if (a.grad) {
        const T* target_row = rt.dense ? a.target_rows + base : nullptr;
#pragma unroll 4
        for (int i = 0; i < SPLIT_ITEMS; ++i) {
            const i64 j = begin + static_cast<i64>(i) * blockDim.x + threadIdx.x;
            if (j >= cols) break;
            const T t = target_at(rt, target_row, j);
            a.grad[base + j] = masked((exp_(a.logit(base, j) - M) * ratio - t) * a.scale, rt);
        }
    }
    // Only chunk 0's blocks took a ticket; they are the ones that may finish.
    if (a.reduces_loss() && chunk == 0) finish_if_last(a, &is_last, a.rows, pair_scratch);
}

}  // namespace gpubp

// ---- entry points, one per type and shape (names are what gpubp/cuda/kernels.py loads) ----

#define XENT_ARGS(T)                                                                       \
    const T *logits, const T *bias, const void *labels, int labels_64,                     \
        const T *target_rows, T *grad, T *loss_rows, long long rows, long long cols,       \
        T scale, long long ignore_index, int has_ignore, double *loss_partials,            \
        unsigned int *ticket, int *bad_label, T *mean_out, double *loss_acc
#define XENT_STRUCT(T)                                                                     \
    const gpubp::Xent<T> a = {logits,      bias,         labels,        labels_64,         \
                              target_rows, grad,         loss_rows,     rows,              \
                              cols,        scale,        ignore_index,  has_ignore,        \
                              loss_partials, ticket,     bad_label,     mean_out,          \
                              loss_acc}

#define DEFINE_XENT(T, SUFFIX)                                                             \
    extern "C" __global__ void xent_small_##SUFFIX(                                        \
        XENT_ARGS(T), T *bias_grad, T *bias_partials, int group) {                         \
        XENT_STRUCT(T);                                                                    \
        gpubp::xent_small<T>(a, bias_grad, bias_partials, group);                          \
    }                                                                                      \
    extern "C" __global__ void xent_partial_##SUFFIX(XENT_ARGS(T), long long chunks,       \
                                                     T *chunk_stats, T *label_logits) {    \
        XENT_STRUCT(T);                                                                    \
        gpubp::xent_partial<T>(a, chunks, chunk_stats, label_logits);                      \
    }                                                                                      \
    extern "C" __global__ void xent_finish_##SUFFIX(XENT_ARGS(T), long long chunks,        \
                                                    const T *chunk_stats,                  \
                                                    const T *label_logits) {               \
        XENT_STRUCT(T);                                                                    \
        gpubp::xent_finish<T>(a, chunks, chunk_stats, label_logits);                       \
    }

// The row kernels run up to ROW_MAX_THREADS = 1024 threads, so registers are capped at 64.
#define DEFINE_XENT_ROW(T, SUFFIX, ITEMS, VEC)                                             \
    extern "C" __global__ void __launch_bounds__(1024)                                     \
        xent_row_labels_##SUFFIX##_i##ITEMS##_v##VEC(XENT_ARGS(T)) {                       \
        XENT_STRUCT(T);                                                                    \
        gpubp::xent_row_labels<T, ITEMS, VEC>(a);                                          \
    }                                                                                      \
    extern "C" __global__ void __launch_bounds__(1024)                                     \
        xent_row_dense_##SUFFIX##_i##ITEMS##_v##VEC(XENT_ARGS(T)) {                        \
        XENT_STRUCT(T);                                                                    \
        gpubp::xent_row_dense<T, ITEMS, VEC>(a);                                           \
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
