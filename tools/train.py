"""Train a segmentor with MMSeg 1.x and asl (see `python tools/train.py --help`).

Works like MMSeg's own `tools/train.py`; `--launcher pytorch` under torchrun and
`--launcher slurm` under srun also work on machines without CUDA (gloo).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from asl.mmseg.cli import train_main  # noqa: E402

if __name__ == '__main__':
    sys.exit(train_main())
