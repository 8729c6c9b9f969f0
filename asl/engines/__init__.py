"""Engines that evaluate the fused program of a surrogate (see :mod:`asl.engines.ir`).

* :mod:`asl.engines.ir`: the typed program description every engine evaluates;
* :mod:`asl.engines.lower`: compiled metric -> fused program;
* :mod:`asl.engines.cpp`: the C++ engine (CPU tensors);
* :mod:`asl.engines.triton`: the Triton engine (CUDA tensors; CPU tensors through
  Triton's interpreter).

:mod:`asl.engines.dispatch` picks one; :mod:`asl.engines.reference` is the plain PyTorch reference.
"""
