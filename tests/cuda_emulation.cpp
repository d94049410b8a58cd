// The host side of cuda_emulation.h: thread context, block barrier, warp exchange.
#include "cuda_emulation.h"

thread_local gpubp_thread_context gpubp_ctx;
gpubp_dim3 gpubp_block_dim, gpubp_grid_dim;

namespace {
pthread_barrier_t block_barrier;
pthread_barrier_t warp_barriers[32];
int warps = 0;
unsigned long long exchange_slots[1024];
}  // namespace

extern "C" void gpubp_begin_block(unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                                  unsigned by, unsigned bz) {
    gpubp_grid_dim = {gx, gy, gz};
    gpubp_block_dim = {bx, by, bz};
    const unsigned threads = bx * by * bz;
    pthread_barrier_init(&block_barrier, nullptr, threads);
    warps = static_cast<int>((threads + 31) / 32);
    for (int w = 0; w < warps; ++w)
        pthread_barrier_init(&warp_barriers[w], nullptr, std::min(32u, threads - 32u * w));
}

extern "C" void gpubp_end_block() {
    pthread_barrier_destroy(&block_barrier);
    for (int w = 0; w < warps; ++w) pthread_barrier_destroy(&warp_barriers[w]);
}

extern "C" void gpubp_set_thread(unsigned tx, unsigned ty, unsigned tz, unsigned bx, unsigned by,
                                 unsigned bz) {
    gpubp_ctx.thread = {tx, ty, tz};
    gpubp_ctx.block = {bx, by, bz};
}

extern "C" void gpubp_syncthreads() { pthread_barrier_wait(&block_barrier); }

extern "C" void gpubp_warp_exchange(int linear, unsigned long long value,
                                    unsigned long long* result, int source_lane) {
    const int warp = linear / 32;
    exchange_slots[linear] = value;
    pthread_barrier_wait(&warp_barriers[warp]);
    *result = exchange_slots[warp * 32 + source_lane];
    pthread_barrier_wait(&warp_barriers[warp]);
}
