"""The GPU check scripts, as far as a machine without a GPU can run them: the Triton
engine's kernels compile for Hopper (sm_90) ahead of time, and the one-go script parses."""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_triton_kernels_compile_for_sm90():
    """Every kernel variant the engine launches for mIoU and BF1 (float32, float16 and
    bfloat16 logits) compiles to a cubin; the interpreter alone would not catch a kernel
    the compiler rejects."""
    pytest.importorskip('triton')
    out = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'gpu', 'compile_kernels.py'),
                          '--metrics', 'mIoU', 'BF1'], capture_output=True, text=True,
                         timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    m = re.search(r'compiled (\d+)/(\d+) kernel variants for sm_90', out.stdout)
    assert m and m.group(1) == m.group(2) and int(m.group(1)) >= 20, out.stdout


def test_scripts_parse():
    for name in ('bench_loss.sh', ):
        subprocess.run(['bash', '-n', os.path.join(ROOT, 'tools', 'gpu', name)], check=True)
