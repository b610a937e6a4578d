// Kernels of the conv ops (to be written).

struct PlaceholderconvArgs {
    float* x;
};
