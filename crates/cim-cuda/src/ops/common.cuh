// Device helpers shared by every kernel module: NVRTC compiles each module with this file
// prepended, the emulator build force-includes it. Reductions here use a fixed tree (no
// atomics), so a kernel gives the same bits on every run (the contract's determinism).
#ifndef CIM_COMMON_CUH
#define CIM_COMMON_CUH

#ifndef CIM_EMULATED
// One struct argument per kernel, an unmangled name for cuModuleGetFunction.
#define CIM_KERNEL(name, Args) extern "C" __global__ void name(const Args a)
#define CIM_DYNAMIC_SMEM(T, var)                                   \
    extern __shared__ __align__(16) unsigned char cim_smem_raw[]; \
    T* var = reinterpret_cast<T*>(cim_smem_raw)
#endif

#define CIM_FULL_MASK 0xffffffffu

// The index of this thread in a 1-D grid-stride loop, and the loop's stride.
__device__ __forceinline__ long long global_index() {
    return (long long)blockIdx.x * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ long long grid_stride() { return (long long)gridDim.x * blockDim.x; }

__device__ __forceinline__ float cim_neg_inf() { return __int_as_float((int)0xff800000u); }

// max that returns NaN when either side is NaN (fmaxf would drop it; the contract wants
// every NaN to reach the outputs that depend on it).
__device__ __forceinline__ float nan_max(float a, float b) { return (a != a || a > b) ? a : b; }

__device__ __forceinline__ float warp_sum(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(CIM_FULL_MASK, v, offset);
    return v;
}

__device__ __forceinline__ double warp_sum_f64(double v) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(CIM_FULL_MASK, v, offset);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int offset = 16; offset > 0; offset >>= 1)
        v = nan_max(v, __shfl_xor_sync(CIM_FULL_MASK, v, offset));
    return v;
}

// Sum over a 1-D block (blockDim.x a multiple of 32, at most 1024); every thread gets it.
// All threads of the block must call it.
__device__ __forceinline__ float block_sum(float v) {
    __shared__ float partial[32];
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    v = warp_sum(v);
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    float total = lane < warps ? partial[lane] : 0.0f;
    total = warp_sum(total);
    __syncthreads();
    return total;
}

__device__ __forceinline__ double block_sum_f64(double v) {
    __shared__ double partial_f64[32];
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    v = warp_sum_f64(v);
    if (lane == 0) partial_f64[warp] = v;
    __syncthreads();
    double total = lane < warps ? partial_f64[lane] : 0.0;
    total = warp_sum_f64(total);
    __syncthreads();
    return total;
}

__device__ __forceinline__ float block_max(float v) {
    __shared__ float partial_max[32];
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    v = warp_max(v);
    if (lane == 0) partial_max[warp] = v;
    __syncthreads();
    float total = lane < warps ? partial_max[lane] : cim_neg_inf();
    total = warp_max(total);
    __syncthreads();
    return total;
}

#endif
