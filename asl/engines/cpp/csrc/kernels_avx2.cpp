// The C++ engine built with AVX2 and FMA (asl.engines.cpp._C_avx2, distributed builds only; see
// setup.py): the same source as asl.engines.cpp._C, compiled with other flags.
#include "kernels.cpp"
