// The C++ engine built with AVX2 and FMA (asl._C_avx2, distributed builds only; see
// setup.py): the same source as asl._C, compiled with other flags.
#include "kernels.cpp"
