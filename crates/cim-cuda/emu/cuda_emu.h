// Host emulation of the CUDA C++ subset the cim-cuda kernels use, so the very kernel
// sources that NVRTC compiles for the GPU also compile with g++ and run on the CPU under
// the conformance suite (no GPU in CI).
//
// Model: a launch runs its blocks one after another; the threads of a block are fibers
// (ucontext) on the calling OS thread, switched at __syncthreads, __syncwarp and warp
// shuffles. So barriers, shared memory and warp-synchronous reductions behave as on the
// GPU, a barrier in divergent code is reported as a deadlock, and launches on different OS
// threads never share state (__shared__ is thread_local). What it cannot show: races
// between threads that skip a barrier (fibers never interleave between barriers),
// performance, and the GPU's own rounding of rsqrtf and friends (all are exact here).
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

#define CIM_EMULATED 1

struct uint3 {
    unsigned x, y, z;
};
typedef uint3 dim3;

extern thread_local uint3 cim_emu_thread_idx;
extern thread_local uint3 cim_emu_block_idx;
extern thread_local uint3 cim_emu_block_dim;
extern thread_local uint3 cim_emu_grid_dim;
extern thread_local unsigned char* cim_emu_dynamic_smem;

#define threadIdx cim_emu_thread_idx
#define blockIdx cim_emu_block_idx
#define blockDim cim_emu_block_dim
#define gridDim cim_emu_grid_dim

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __shared__ static thread_local
#define __align__(n) alignas(n)

void __syncthreads();
void __syncwarp(unsigned mask = 0xffffffffu);
// Exchanges `bytes` (at most 8) with the other lanes of the warp: writes `mine`, waits for
// the warp, reads lane `src_lane`'s value into `out`, waits again.
void cim_emu_warp_exchange(const void* mine, void* out, int src_lane, size_t bytes);
int cim_emu_lane();

template <class T>
inline T __shfl_sync(unsigned, T v, int src_lane, int width = 32) {
    (void)width;
    T out;
    cim_emu_warp_exchange(&v, &out, src_lane & 31, sizeof(T));
    return out;
}
template <class T>
inline T __shfl_xor_sync(unsigned, T v, int lane_mask, int width = 32) {
    (void)width;
    T out;
    cim_emu_warp_exchange(&v, &out, (cim_emu_lane() ^ lane_mask) & 31, sizeof(T));
    return out;
}
template <class T>
inline T __shfl_down_sync(unsigned, T v, unsigned delta, int width = 32) {
    (void)width;
    int lane = cim_emu_lane();
    int src = lane + (int)delta;
    T out;
    cim_emu_warp_exchange(&v, &out, src < 32 ? src : lane, sizeof(T));
    return out;
}

inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
// The build does not contract a * b + c (-ffp-contract=off): a plain product is already
// the correctly rounded, never-fused one.
inline float __fmul_rn(float x, float y) { return x * y; }
inline double __dmul_rn(double x, double y) { return x * y; }
inline double __dadd_rn(double x, double y) { return x + y; }
template <class T>
inline T __ldg(const T* p) { return *p; }
// CUDA's integer min and max overloads.
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline float __int_as_float(int i) {
    float f;
    memcpy(&f, &i, 4);
    return f;
}
inline int __float_as_int(float f) {
    int i;
    memcpy(&i, &f, 4);
    return i;
}

// A kernel takes one argument, a struct of its parameters (pointers as device addresses).
// Here it also gets a C entry point, cim_emu_<name>, that the emulator's launcher calls
// once per thread.
#define CIM_KERNEL(name, Args)                                                          \
    static void name(const Args a);                                                     \
    extern "C" void cim_emu_##name(const void* p) { name(*static_cast<const Args*>(p)); } \
    static void name(const Args a)

#define CIM_DYNAMIC_SMEM(T, var) T* var = reinterpret_cast<T*>(cim_emu_dynamic_smem)
