"""Install asl: ``pip install --no-build-isolation -e .`` (torch must be installed first).

The package ships the C++ engine (``asl._C``, the surrogate's fused evaluation on CPU
tensors). It is built when a C++ compiler is present; without one asl uses the plain
PyTorch path on CPU (set ``ASL_NO_EXT=1`` to skip the build). The Triton engine (CUDA
tensors) needs no build: ``pip install triton``.
"""
import os

from setuptools import find_packages, setup


def read_version():
    scope = {}
    with open(os.path.join('asl', 'version.py')) as f:
        for line in f:
            if line.startswith('__version__'):
                scope['__version__'] = line.split('=')[1].strip().strip('\'"')
    return scope['__version__']


def extensions():
    if os.environ.get('ASL_NO_EXT') == '1':
        return {}, []
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:
        return {}, []
    # The kernels are built on the machine that runs them (editable or source installs),
    # so by default they target its CPU (AVX2 etc.: several times faster curve code).
    # Set ASL_CPU_FLAGS (for example to "-mavx2 -mfma" or "") for portable builds.
    cpu_flags = os.environ.get('ASL_CPU_FLAGS', '-march=native').split()
    flags = ['-O3', '-fopenmp', '-fno-math-errno', '-fno-trapping-math'] + cpu_flags
    ext = CppExtension('asl._C', ['asl/csrc/kernels.cpp'], extra_compile_args=flags,
                       extra_link_args=['-fopenmp'], depends=['asl/csrc/ir_ops.h'])
    return {'build_ext': BuildExtension}, [ext]


cmdclass, ext_modules = extensions()

setup(
    name='asl',
    version=read_version(),
    description='Auto Seg-Loss for MMSegmentation 1.x: searched metric surrogate losses',
    long_description=open('README.md').read() if os.path.exists('README.md') else '',
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    packages=find_packages(include=['asl', 'asl.*']),
    package_data={'asl': ['csrc/*.cpp', 'csrc/*.h']},
    python_requires='>=3.8',
    install_requires=['numpy', 'scipy'],
    extras_require={'test': ['pytest', 'hypothesis', 'matplotlib'], 'triton': ['triton']},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
