// The emulator's launcher (see cuda_emu.h): runs every block of a launch in turn, the
// block's threads as fibers switched at barriers, and reports a deadlock (a barrier not
// every live thread reaches) instead of hanging.
#include <ucontext.h>

#include <cstdio>
#include <cstdlib>
#include <vector>

#include "cuda_emu.h"

thread_local uint3 cim_emu_thread_idx;
thread_local uint3 cim_emu_block_idx;
thread_local uint3 cim_emu_block_dim;
thread_local uint3 cim_emu_grid_dim;
thread_local unsigned char* cim_emu_dynamic_smem;

namespace {

constexpr size_t kStackBytes = 64 * 1024;
constexpr int kMaxThreads = 1024;
constexpr int kMaxWarps = kMaxThreads / 32;

struct Fiber {
    ucontext_t ctx;
    uint3 idx;
    int linear;
    bool done;
};

struct Launch {
    void (*kernel)(const void*);
    const void* params;
    int threads;
    int live;
    unsigned long progress;
    // __syncthreads
    int block_arrived;
    unsigned block_gen;
    // __syncwarp and shuffles
    int warp_live[kMaxWarps];
    int warp_arrived[kMaxWarps];
    unsigned warp_gen[kMaxWarps];
    unsigned long long exchange[kMaxWarps][32];
    std::vector<Fiber> fibers;
    int current;
    ucontext_t scheduler;
};

thread_local Launch* launch;
thread_local char* stacks;
thread_local size_t stacks_threads;
thread_local std::vector<unsigned char> dynamic_smem;

Fiber& current_fiber() { return launch->fibers[launch->current]; }

void yield() { swapcontext(&current_fiber().ctx, &launch->scheduler); }

void release_if_complete() {
    Launch& l = *launch;
    if (l.block_arrived > 0 && l.block_arrived == l.live) {
        l.block_arrived = 0;
        l.block_gen++;
    }
    for (int w = 0; w < kMaxWarps; w++) {
        if (l.warp_arrived[w] > 0 && l.warp_arrived[w] == l.warp_live[w]) {
            l.warp_arrived[w] = 0;
            l.warp_gen[w]++;
        }
    }
}

void fiber_main() {
    Launch& l = *launch;
    l.kernel(l.params);
    Fiber& f = current_fiber();
    f.done = true;
    l.live--;
    l.warp_live[f.linear / 32]--;
    l.progress++;
    release_if_complete();
    // Returns to the scheduler through uc_link.
}

}  // namespace

int cim_emu_lane() { return current_fiber().linear % 32; }

void __syncthreads() {
    Launch& l = *launch;
    unsigned gen = l.block_gen;
    l.block_arrived++;
    l.progress++;
    release_if_complete();
    while (l.block_gen == gen) yield();
}

void __syncwarp(unsigned) {
    Launch& l = *launch;
    int w = current_fiber().linear / 32;
    unsigned gen = l.warp_gen[w];
    l.warp_arrived[w]++;
    l.progress++;
    release_if_complete();
    while (l.warp_gen[w] == gen) yield();
}

void cim_emu_warp_exchange(const void* mine, void* out, int src_lane, size_t bytes) {
    Launch& l = *launch;
    int linear = current_fiber().linear;
    int w = linear / 32;
    memcpy(&l.exchange[w][linear % 32], mine, bytes);
    __syncwarp();
    memcpy(out, &l.exchange[w][src_lane], bytes);
    __syncwarp();
}

// Runs `kernel` over the grid; 0 on success, otherwise writes the reason into `err`.
extern "C" int cim_emu_launch(void (*kernel)(const void*), const void* params, unsigned gx,
                              unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                              size_t smem_bytes, char* err, size_t err_len) {
    unsigned long long threads = (unsigned long long)bx * by * bz;
    if (threads == 0 || threads > kMaxThreads || gx == 0 || gy == 0 || gz == 0 ||
        gy > 65535 || gz > 65535) {
        snprintf(err, err_len, "invalid launch: grid (%u,%u,%u), block (%u,%u,%u)", gx, gy, gz,
                 bx, by, bz);
        return 1;
    }
    if (launch != nullptr) {
        snprintf(err, err_len, "a kernel launched another kernel");
        return 1;
    }
    if (stacks_threads < threads) {
        // Uninitialised on purpose: zeroing up to 64 MiB of stacks per launch would dominate.
        free(stacks);
        stacks = static_cast<char*>(malloc(threads * kStackBytes));
        if (stacks == nullptr) {
            stacks_threads = 0;
            snprintf(err, err_len, "out of host memory for %llu fiber stacks", threads);
            return 1;
        }
        stacks_threads = threads;
    }
    if (dynamic_smem.size() < smem_bytes) dynamic_smem.resize(smem_bytes);
    Launch l;
    l.kernel = kernel;
    l.params = params;
    l.threads = (int)threads;
    l.fibers.resize(threads);
    launch = &l;
    cim_emu_block_dim = {bx, by, bz};
    cim_emu_grid_dim = {gx, gy, gz};
    cim_emu_dynamic_smem = dynamic_smem.data();
    // volatile: the fibers' context switches look like setjmp to g++ (-Wclobbered).
    volatile int status = 0;
    for (unsigned z = 0; z < gz && status == 0; z++)
        for (unsigned y = 0; y < gy && status == 0; y++)
            for (unsigned x = 0; x < gx && status == 0; x++) {
                cim_emu_block_idx = {x, y, z};
                l.live = l.threads;
                l.block_arrived = 0;
                l.block_gen = 0;
                for (int w = 0; w < kMaxWarps; w++) {
                    int first = w * 32;
                    int n = l.threads - first;
                    l.warp_live[w] = n <= 0 ? 0 : (n < 32 ? n : 32);
                    l.warp_arrived[w] = 0;
                    l.warp_gen[w] = 0;
                }
                for (int t = 0; t < l.threads; t++) {
                    Fiber& f = l.fibers[t];
                    f.linear = t;
                    f.idx = {t % bx, (t / bx) % by, t / (bx * by)};
                    f.done = false;
                    getcontext(&f.ctx);
                    f.ctx.uc_stack.ss_sp = stacks + (size_t)t * kStackBytes;
                    f.ctx.uc_stack.ss_size = kStackBytes;
                    f.ctx.uc_link = &l.scheduler;
                    makecontext(&f.ctx, fiber_main, 0);
                }
                while (l.live > 0) {
                    unsigned long before = l.progress;
                    for (int t = 0; t < l.threads; t++) {
                        if (l.fibers[t].done) continue;
                        l.current = t;
                        cim_emu_thread_idx = l.fibers[t].idx;
                        swapcontext(&l.scheduler, &l.fibers[t].ctx);
                    }
                    if (l.live > 0 && l.progress == before) {
                        snprintf(err, err_len,
                                 "deadlock in block (%u,%u,%u): %d of %d threads wait at a "
                                 "barrier that the others never reach",
                                 x, y, z, l.live, l.threads);
                        status = 1;
                        break;
                    }
                }
            }
    launch = nullptr;
    return status;
}
