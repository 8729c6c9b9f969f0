#!/usr/bin/env python
"""Compile the Triton engine's kernels for a GPU architecture, on a machine without one.

Runs the engine (forward and backward) on small CPU inputs through Triton's
interpreter, records every kernel launch with its argument types and constexprs, then
compiles each distinct launch with ``triton.compile`` for ``--arch`` (default 90: H100 and
H200) down to a cubin: a kernel that the interpreter accepts but the compiler would
reject fails here, before any GPU is involved.

    python tools/gpu/compile_kernels.py                      # the six metrics and more
    python tools/gpu/compile_kernels.py --metrics mIoU BF1

Exit status 0 when every kernel compiles; 1 otherwise (the errors are printed).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_METRICS = ['mIoU', 'FWIoU', 'mAcc', 'gAcc', 'BIoU', 'BF1', 'mIoU + BIoU',
                   'x = P ^ G; mean_c(sum(x * dilate(x, 1) + erode(1 - G) * P) / sum(G + 1))']


def record(metrics, out_path: str) -> None:
    """(In a child process with TRITON_INTERPRET=1) run the engine, save the launches."""
    import torch

    from asl import Surrogate
    from asl.backend import surrogate_value
    from asl.engines import triton as engine
    launches = []
    g = torch.Generator().manual_seed(0)
    label = torch.randint(0, 5, (2, 12, 10), generator=g)
    for metric in metrics:
        s = Surrogate(metric)
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            x = torch.randn(2, 5, 12, 10, generator=g).to(dtype).requires_grad_()
            with engine.record_launches() as rec:
                surrogate_value(s.compiled, s.curves, x, label, backend='triton').backward()
            launches += rec
    seen, unique = set(), []
    for path, name, types, meta in launches:
        key = json.dumps([path, name, types, sorted(meta.items())])
        if key not in seen:
            seen.add(key)
            unique.append([path, name, types, meta])
    with open(out_path, 'w') as f:
        json.dump(unique, f)


def compile_all(path: str, arch: int) -> int:
    import importlib.util

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    with open(path) as f:
        launches = json.load(f)
    target = GPUTarget('cuda', arch, 32)
    modules, failed = {}, 0
    t0 = time.time()
    for file, name, types, meta in launches:
        mod = modules.get(file)
        if mod is None:
            spec = importlib.util.spec_from_file_location(
                f'_k{len(modules)}_' + os.path.basename(file)[:-3], file)
            mod = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = mod
            spec.loader.exec_module(mod)
            modules[file] = mod
        fn = getattr(mod, name)
        names = [n for n in fn.arg_names if n not in meta]
        sig = dict(zip(names, types))
        sig.update({k: 'constexpr' for k in meta})
        try:
            k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=meta), target=target)
            ok = bool(k.asm.get('cubin'))
        except Exception as e:  # report every failure, then fail
            ok = False
            print(f'FAILED {name} {meta}: {type(e).__name__}: {str(e)[:2000]}')
        failed += not ok
    print(f'compiled {len(launches) - failed}/{len(launches)} kernel variants for sm_{arch} '
          f'in {time.time() - t0:.1f} s (triton {triton.__version__})')
    return 1 if failed else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--metrics', nargs='+', default=DEFAULT_METRICS)
    p.add_argument('--arch', type=int, default=90)
    p.add_argument('--record', help=argparse.SUPPRESS)  # (child process)
    args = p.parse_args()
    if args.record:
        record(args.metrics, args.record)
        return 0
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, 'launches.json')
        env = dict(os.environ, TRITON_INTERPRET='1',
                   PYTHONPATH=os.pathsep.join([ROOT, os.environ.get('PYTHONPATH', '')]))
        subprocess.run([sys.executable, os.path.abspath(__file__), '--record', path,
                        '--metrics', *args.metrics], check=True, env=env)
        env.pop('TRITON_INTERPRET')
        return subprocess.run([sys.executable, '-c',
                               f'import sys; sys.path.insert(0, {ROOT!r}); '
                               f'sys.path.insert(0, {os.path.dirname(__file__)!r}); '
                               f'import compile_kernels as c; '
                               f'sys.exit(c.compile_all({path!r}, {args.arch}))'],
                              env=env).returncode


if __name__ == '__main__':
    sys.exit(main())
