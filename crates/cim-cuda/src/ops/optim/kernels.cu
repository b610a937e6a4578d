// Kernels of the optim ops (to be written).

struct PlaceholderoptimArgs {
    float* x;
};
