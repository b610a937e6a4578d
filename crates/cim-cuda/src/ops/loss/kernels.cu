// Kernels of the loss ops (to be written).

struct PlaceholderlossArgs {
    float* x;
};
