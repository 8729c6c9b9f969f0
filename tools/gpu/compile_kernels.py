#!/usr/bin/env python
"""Compile the Triton engine's kernels for a GPU architecture, on a machine without one.

Runs the engine (forward and backward) on CPU inputs through Triton's interpreter, for
every formula asked for, float32, float16 and bfloat16 logits, at the class counts of the
real datasets (19: Cityscapes, 21: PASCAL VOC, 150: ADE20K; ``--classes``) and on planes
chosen so that the integer arguments take each form Triton specialises them on, and
records every kernel launch with its arguments. Each distinct launch is then compiled
with ``triton.compile`` for ``--arch`` (default 90: H100 and H200) down to a cubin, with
the specialisations Triton's JIT makes on a GPU for those arguments (Triton's own
function decides them):

* an integer argument equal to 1 becomes a constant (a ``constexpr``);
* an integer argument divisible by 16, and a pointer whose address is (every fresh
  allocation's), gets ``tt.divisibility = 16``; others get none.

The planes (default, per class count: 16 x the engine's tile size, 16x24 and 13x11;
``--planes``) give, for the engine's integer arguments (classes, pixels per image,
tiles, height, width, ``ignore_index``, first class), the all-divisible case of real
training crops (512x512, 512x1024: every size and tile count a multiple of 16), a mixed
case and the not-divisible one, each with more than one tile (a one-tile plane would
compile a ``T == 1`` constant that no real crop launches). A kernel that the interpreter
accepts but the compiler would reject fails here, before any GPU is involved.

The interpreter is slow (BF1's forward + backward: about 20 s per 1024 pixels at 21
classes, some 20 times that per pixel at 150: 16-pixel tiles and 150 pooled planes), so
the recording runs only what the variants need (see ``record``); even so the default run
is estimated at about half an hour on 2 cores, most of it BF1 and the user formula at 150
classes (mIoU and BF1 at 21 classes with mIoU at 150, what the test runs: a few minutes).

    python tools/gpu/compile_kernels.py                      # every metric, 19/21/150
    python tools/gpu/compile_kernels.py --metrics mIoU BF1 --classes 21 150

Exit status 0 when every kernel compiles; 1 otherwise (the errors are printed).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import List, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_METRICS = ['mIoU', 'FWIoU', 'mAcc', 'gAcc', 'BIoU', 'BF1', 'mIoU + BIoU',
                   'x = P ^ G; mean_c(sum(x * dilate(x, 1) + erode(1 - G) * P) / sum(G + 1))']
DEFAULT_CLASSES = [19, 21, 150]


_SPECIALIZE = []


def spec_key(arg):
    """(type, specialisation) of one launch argument, as Triton's JIT decides it on a GPU
    (Triton's own function, for the CUDA backend): 'D' for a pointer or an integer
    divisible by 16, 'N' for one that is not, ('constexpr', 1) for an integer equal to 1."""
    if not _SPECIALIZE:
        try:
            from triton.backends.compiler import GPUTarget
            from triton.compiler.compiler import make_backend
            from triton.runtime.jit import native_specialize_impl
            backend = make_backend(GPUTarget('cuda', 90, 32))
            _SPECIALIZE.append(lambda a: native_specialize_impl(backend, a, False, True, True))
        except ImportError:  # another Triton: the rule of Triton 3.x, written out
            _SPECIALIZE.append(_specialize_rule)
    ty, key = _SPECIALIZE[0](arg)
    return ty, ('N' if key == '' else key)


def _specialize_rule(arg):
    import torch
    from asl.engines.triton import _TYPES
    if isinstance(arg, torch.Tensor):
        return f'*{_TYPES[arg.dtype]}', 'D' if arg.data_ptr() % 16 == 0 else ''
    if isinstance(arg, bool):
        return 'u1', None
    value = int(arg)
    if value == 1:
        return 'constexpr', 1
    return ('i32' if -2**31 <= value < 2**31 else 'i64'), 'D' if value % 16 == 0 else ''


def default_planes(classes: int) -> List[Tuple[int, int]]:
    """The planes recorded for ``classes``: 16 x BLOCK (every integer argument divisible
    by 16, as in a real crop: height, width, pixels, and 16 tiles), 16x24 (mixed) and
    13x11 (none divisible); each has more than one tile."""
    from asl.engines import triton as engine
    block = engine.tile_block(engine._next_pow2(classes))
    return [(16, block), (16, 24), (13, 11)]


def record(metrics, classes, planes, out_path: str) -> None:
    """(In a child process with TRITON_INTERPRET=1) run the engine, save the launches:
    [module file, kernel name, [[type, specialisation] per argument], constexprs].

    The interpreter is slow (BF1: about 20 s per 1024 pixels at 21 classes), so it runs
    no more than the variants need: one image; float16 logits on every plane, float32 and
    bfloat16 on the smallest only, their variants elsewhere derived from float16's (the
    logits' pointer type swapped), which is checked exactly on the smallest plane; and a
    class count whose launches on the smallest plane are another's (19 and 21 classes:
    both pad to 32) is not run further."""
    import torch

    from asl import Surrogate
    from asl.engines.dispatch import surrogate_value
    from asl.engines import triton as engine
    original = engine._launch
    current: dict = {}

    def recording_launch(kernel, grid, *args, **meta):
        fn = getattr(kernel, 'fn', kernel)
        entry = [fn.__code__.co_filename, fn.__name__, [list(spec_key(a)) for a in args],
                 dict(meta)]
        current.setdefault(_key(entry), entry)
        return original(kernel, grid, *args, **meta)

    def run(c, plane, dtype):
        current.clear()
        g = torch.Generator().manual_seed(c)
        h, w = plane
        label = torch.randint(0, c, (1, h, w), generator=g)
        label[:, 0, :2] = 255  # some ignored pixels
        for metric in metrics:
            s = Surrogate(metric)
            x = torch.randn(1, c, h, w, generator=g).to(dtype).requires_grad_()
            surrogate_value(s.compiled, s.curves, x, label, backend='triton').backward()
        return dict(current)

    launches: dict = {}
    notes = []
    smallest_of: dict = {}
    engine._launch = recording_launch
    try:
        for c in classes:
            ps = [tuple(p) for p in planes] if planes else default_planes(c)
            small = min(ps, key=lambda p: p[0] * p[1])
            base = run(c, small, torch.float16)
            same = [c0 for c0, keys in smallest_of.items() if keys == set(base)]
            smallest_of[c] = set(base)
            launches.update(base)
            if same:
                notes.append(f'{c} classes launch what {same[0]} classes launch (checked on '
                             f'{small[0]}x{small[1]}): not run on the other planes')
                continue
            derived_ok = True
            for dtype, name in ((torch.float32, 'fp32'), (torch.bfloat16, 'bf16')):
                got = run(c, small, dtype)
                launches.update(got)
                derived_ok &= set(got) == set(_swap_dtype(base, name))
            for p in ps:
                if p == small:
                    continue
                got = run(c, p, torch.float16)
                launches.update(got)
                if derived_ok:
                    for name in ('fp32', 'bf16'):
                        launches.update(_swap_dtype(got, name))
                else:
                    for dtype in (torch.float32, torch.bfloat16):
                        launches.update(run(c, p, dtype))
            if not derived_ok:
                notes.append(f'{c} classes: float32/bfloat16 launches are not float16\'s '
                             f'with the logits\' type swapped: every dtype run on every plane')
    finally:
        engine._launch = original
    if not launches:
        raise RuntimeError('no kernel launch recorded: asl.engines.triton._launch changed?')
    with open(out_path, 'w') as f:
        json.dump(dict(launches=list(launches.values()), notes=notes), f)


def _key(entry) -> str:
    file, name, specs, meta = entry
    return json.dumps([file, name, specs, sorted(meta.items())])


def _swap_dtype(launches: dict, name: str) -> dict:
    """float16-logits launches as they are with ``name`` logits: every float16 pointer is
    the logits' or their gradient's (the engine's own buffers are float32 or integers)."""
    out = {}
    for entry in launches.values():
        file, kname, specs, meta = entry
        specs = [[f'*{name}' if t == '*fp16' else t, k] for t, k in specs]
        e = [file, kname, specs, meta]
        out[_key(e)] = e
    return out


def _compile_one(item):
    """Compile one recorded launch; returns (ok, description, error)."""
    import importlib.util

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    file, name, specs, meta, arch = item
    mod_name = '_asl_k_' + os.path.basename(file)[:-3]
    mod = sys.modules.get(mod_name)
    if mod is None:
        spec = importlib.util.spec_from_file_location(mod_name, file)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[mod_name] = mod
        spec.loader.exec_module(mod)
    fn = getattr(mod, name)
    names = [n for n in fn.arg_names if n not in meta]
    sig, constexprs, attrs = {}, dict(meta), {}
    for arg, (ty, key) in zip(names, specs):
        sig[arg] = ty
        if ty == 'constexpr':
            constexprs[arg] = key
        elif key in ('D', 'N'):  # as Triton's JIT: every specialised argument has attrs
            attrs[(fn.arg_names.index(arg), )] = ([['tt.divisibility', 16]] if key == 'D'
                                                  else [])
    sig.update({k: 'constexpr' for k in meta})
    consts = {k: v for k, v in constexprs.items() if k not in meta}
    what = (f'{name} {meta} constants {consts} divisible by 16: '
            f'{[a for a, (_, k) in zip(names, specs) if k == "D"]}')
    try:
        k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=constexprs, attrs=attrs),
                           target=GPUTarget('cuda', arch, 32))
        return bool(k.asm.get('cubin')), what, '' if k.asm.get('cubin') else 'no cubin'
    except Exception as e:  # report every failure, then fail
        return False, what, f'{type(e).__name__}: {str(e)[:2000]}'


def compile_all(path: str, arch: int, jobs: int) -> int:
    import triton
    with open(path) as f:
        launches = json.load(f)['launches']
    items = [(file, name, specs, meta, arch) for file, name, specs, meta in launches]
    t0 = time.time()
    if jobs > 1:
        import multiprocessing as mp
        with mp.get_context('spawn').Pool(jobs) as pool:
            results = pool.map(_compile_one, items, chunksize=1)
    else:
        results = [_compile_one(it) for it in items]
    failed = 0
    for ok, what, err in results:
        if not ok:
            failed += 1
            print(f'FAILED {what}: {err}')
    consts = sum(1 for _, _, specs, _ in launches if any(t == 'constexpr' for t, _ in specs))
    print(f'compiled {len(items) - failed}/{len(items)} kernel variants for sm_{arch} '
          f'in {time.time() - t0:.1f} s with {jobs} process(es) (triton {triton.__version__}; '
          f'{consts} with an argument equal to 1 as a constant)')
    return 1 if failed else 0


def main() -> int:
    from asl.utils import usable_cores
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--metrics', nargs='+', default=DEFAULT_METRICS)
    p.add_argument('--classes', nargs='+', type=int, default=DEFAULT_CLASSES,
                   help='class counts (default: 19 21 150: Cityscapes, VOC, ADE20K)')
    p.add_argument('--planes', nargs='+', default=[],
                   help='HxW planes recorded (default, per class count: 16 x the tile '
                   'size, 16x24 and 13x11)')
    p.add_argument('--launches', help='also write the recorded launches (JSON) here')
    p.add_argument('--arch', type=int, default=90)
    p.add_argument('--jobs', type=int, default=usable_cores(),
                   help='compiling processes (default: every core this process may use)')
    p.add_argument('--record', help=argparse.SUPPRESS)  # (child process)
    args = p.parse_args()
    planes = [tuple(int(v) for v in p.split('x')) for p in args.planes]
    if args.record:
        record(args.metrics, args.classes, planes, args.record)
        return 0
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, 'launches.json')
        env = dict(os.environ, TRITON_INTERPRET='1',
                   PYTHONPATH=os.pathsep.join([ROOT, os.environ.get('PYTHONPATH', '')]))
        t0 = time.time()
        subprocess.run([sys.executable, os.path.abspath(__file__), '--record', path,
                        '--metrics', *args.metrics, '--classes', *map(str, args.classes),
                        *(['--planes', *args.planes] if args.planes else [])],
                       check=True, env=env)
        with open(path) as f:
            rec = json.load(f)
        if args.launches:
            with open(args.launches, 'w') as f:
                json.dump(rec, f)
        print(f'recorded {len(rec["launches"])} distinct launches ({len(args.metrics)} '
              f'formulas x classes {" ".join(map(str, args.classes))} x planes '
              f'{" ".join(args.planes) or "16xBLOCK 16x24 13x11"} x fp32/fp16/bf16 logits) '
              f'in {time.time() - t0:.1f} s', flush=True)
        for note in rec['notes']:
            print(f'- {note}', flush=True)
        env.pop('TRITON_INTERPRET')
        return subprocess.run([sys.executable, '-c',
                               f'import sys; sys.path.insert(0, {ROOT!r}); '
                               f'sys.path.insert(0, {os.path.dirname(__file__)!r}); '
                               f'import compile_kernels as c; '
                               f'sys.exit(c.compile_all({path!r}, {args.arch}, {args.jobs}))'],
                              env=env).returncode


if __name__ == '__main__':
    sys.exit(main())
