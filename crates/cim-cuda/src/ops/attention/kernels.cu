// Kernels of the attention ops (to be written).

struct PlaceholderattentionArgs {
    float* x;
};
