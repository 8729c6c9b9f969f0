"""Test a segmentor with MMSeg 1.x and asl (see `python tools/test.py --help`).

Works like MMSeg's own `tools/test.py`; `--launcher pytorch` under torchrun and
`--launcher slurm` under srun also work on machines without CUDA (gloo).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from asl.mmseg.cli import test_main  # noqa: E402

if __name__ == '__main__':
    sys.exit(test_main())
