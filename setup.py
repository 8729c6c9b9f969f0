"""Install asl: ``pip install --no-build-isolation -e .`` (torch must be installed first).

The package ships the C++ engine (``asl.engines.cpp._C``, the surrogate's fused evaluation on CPU
tensors). It is built when torch and a C++ compiler are present at build time (hence
``--no-build-isolation``); without them asl uses the plain PyTorch path on CPU, with one
warning (``ASL_NO_EXT=1`` skips the build). The Triton engine (CUDA tensors) needs no build:
``pip install triton``.

CPU flags: an editable install (``pip install -e``) is built for the machine it runs on
(``-march=native``). A distributed build (``python -m build --no-isolation``: a wheel or an
sdist installed elsewhere) builds the engine twice, portable (``asl.engines.cpp._C``) and with AVX2 and
FMA (``asl.engines.cpp._C_avx2``), and ``asl.engines.cpp.extension`` picks the latter at run time on CPUs that have them.
``ASL_CPU_FLAGS`` (for example ``"-mavx2 -mfma"``, or ``""``) builds one module with those
flags instead.
"""
import glob
import os
import sys

from setuptools import find_packages, setup

CSRC = 'asl/engines/cpp/csrc'  # the C++ engine's sources (relative: setuptools wants that)


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
        print('asl: torch is not importable at build time: building without the C++ engine '
              '(build with --no-build-isolation to include it)', file=sys.stderr)
        return {}, []
    base = ['-O3', '-fopenmp', '-fno-math-errno', '-fno-trapping-math']

    def ext(name, source, cpu_flags):
        return CppExtension(f'asl.engines.cpp.{name}', [source],
                            extra_compile_args=base + cpu_flags, extra_link_args=['-fopenmp'],
                            depends=sorted(glob.glob(os.path.join(CSRC, '*'))))

    if 'ASL_CPU_FLAGS' in os.environ:
        modules = [ext('_C', os.path.join(CSRC, 'kernels.cpp'), os.environ['ASL_CPU_FLAGS'].split())]
    elif any(cmd in sys.argv for cmd in ('editable_wheel', 'develop')):
        modules = [ext('_C', os.path.join(CSRC, 'kernels.cpp'), ['-march=native'])]
    else:  # runs elsewhere: portable, plus AVX2/FMA picked at run time (asl/engines/cpp/extension.py)
        modules = [ext('_C', os.path.join(CSRC, 'kernels.cpp'), []),
                   ext('_C_avx2', os.path.join(CSRC, 'kernels_avx2.cpp'), ['-mavx2', '-mfma'])]
    return {'build_ext': BuildExtension}, modules


cmdclass, ext_modules = extensions()

setup(
    name='asl',
    version=read_version(),
    description='Auto Seg-Loss for MMSegmentation 1.x: searched metric surrogate losses',
    long_description=open('README.md').read() if os.path.exists('README.md') else '',
    long_description_content_type='text/markdown',
    license='Apache-2.0',
    packages=find_packages(include=['asl', 'asl.*']),
    package_data={'asl.engines.cpp': ['csrc/*.cpp', 'csrc/*.h']},
    python_requires='>=3.10',
    install_requires=['numpy', 'scipy'],
    extras_require={'test': ['pytest', 'hypothesis', 'matplotlib'], 'triton': ['triton']},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
