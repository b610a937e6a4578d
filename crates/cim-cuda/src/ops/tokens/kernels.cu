// Kernels of the tokens ops (to be written).

struct PlaceholdertokensArgs {
    float* x;
};
