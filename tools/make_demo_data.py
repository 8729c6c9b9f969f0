"""Generate the embedded demo dataset (synthetic, deterministic from a seed).

    python tools/make_demo_data.py [--out data/asl_demo] [--seed 0] [--num-train 240]
                                   [--num-val 80] [--num-holdout 60] [--size 64]
                                   [--classes 5] [--force]

More classes than the demo's five (``--classes 21``, the shape of PASCAL VOC) adds
coloured variants of the four object kinds; with ``--size 128 --classes 21
--num-train 512`` it has the shape of the paper's proxy task.

If ``--out`` already holds a dataset with the same parameters (seed, sizes, counts,
generator version) nothing is done; if it holds a different one the command refuses
unless ``--force`` is given. The files are written into a temporary directory that
is renamed at the end, so an interrupted run never leaves a partial dataset.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from asl.data.demo import (DEFAULT_ROOT, DEFAULT_SIZES, DemoDataError,  # noqa: E402
                           build_demo_data, demo_data_status, format_stats)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description='Generate the synthetic asl demo dataset.')
    p.add_argument('--out', default=DEFAULT_ROOT, help='output directory (default: %(default)s)')
    p.add_argument('--seed', type=int, default=0, help='dataset seed (default: %(default)s)')
    p.add_argument('--num-train', type=int, default=DEFAULT_SIZES['num_train'],
                   help='training images (default: %(default)s)')
    p.add_argument('--num-val', type=int, default=DEFAULT_SIZES['num_val'],
                   help='validation images (default: %(default)s)')
    p.add_argument('--num-holdout', type=int, default=DEFAULT_SIZES['num_holdout'],
                   help='training images put in the search hold-out (default: %(default)s)')
    p.add_argument('--size', type=int, default=DEFAULT_SIZES['size'],
                   help='image height and width in pixels (default: %(default)s)')
    p.add_argument('--classes', type=int, default=5,
                   help='classes, background included (default: %(default)s; at least 5)')
    p.add_argument('--force', action='store_true',
                   help='replace an existing dataset generated with other parameters')
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    sizes = dict(num_train=args.num_train, num_val=args.num_val, num_holdout=args.num_holdout,
                 size=args.size, num_classes=args.classes)
    try:
        status, meta, diffs = demo_data_status(args.out, args.seed, **sizes)
    except ValueError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    desc = (f'seed {args.seed}, {args.num_train} train ({args.num_holdout} hold-out) + '
            f'{args.num_val} val images of {args.size}x{args.size}, {args.classes} classes')
    if status == 'match':
        print(f'{args.out} already holds the demo dataset ({desc}); nothing to do.')
        print(format_stats(meta))
        return 0
    if status == 'mismatch':
        if not args.force:
            print(f'error: {args.out} exists but does not match the requested dataset:',
                  file=sys.stderr)
            for d in diffs:
                print(f'  {d}', file=sys.stderr)
            print('use --force to regenerate it, or choose another --out', file=sys.stderr)
            return 1
        print(f'{args.out} exists with other parameters; regenerating (--force)')

    print(f'generating {args.out}: {desc}')
    marks = {}

    def progress(split, done, total):
        step = max(total // 4, 1)
        if done % step == 0 or done == total:
            if marks.get(split) != done:
                marks[split] = done
                print(f'  {split:<5} {done:>5}/{total}', flush=True)

    t0 = time.perf_counter()
    try:
        meta = build_demo_data(args.out, args.seed, force=args.force, progress=progress,
                               **sizes)
    except DemoDataError as e:
        print(f'error: {e}', file=sys.stderr)
        return 1
    dt = time.perf_counter() - t0
    print(f'wrote {args.out} in {dt:.1f} s')
    print(format_stats(meta))
    return 0


if __name__ == '__main__':
    sys.exit(main())
