// Kernels of the norm ops (to be written).

struct PlaceholdernormArgs {
    float* x;
};
