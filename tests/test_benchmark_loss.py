"""tools/benchmark_loss.py on tiny sizes: its tables and sections, not its timings."""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, 'tools', 'benchmark_loss.py')
TINY = ['--n', '1', '--c', '4', '--size', '24', '--repeat', '1', '--warmup', '0']


def _run(*args, **env):
    out = subprocess.run([sys.executable, TOOL, *TINY, *args], capture_output=True, text=True,
                         timeout=600, cwd=ROOT, env=dict(os.environ, **env))
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return out.stdout


def _rows(text):
    return {m.group(1): m.group(2) for m in re.finditer(r'^\| ([^|]+?) \| (.+)\|$', text, re.M)}


def test_engine_rows_targets_and_accuracy(tmp_path):
    pytest.importorskip('mmseg')
    pytest.importorskip('asl._C')
    pytest.importorskip('triton')
    report = tmp_path / 'bench.md'
    text = _run('--engines', 'torch', 'cpp', 'triton', '--only', 'mIoU', 'BF1',
                '--accuracy-points', '500', '--ref-points', '50', '--out', str(report),
                TRITON_INTERPRET='1')
    rows = _rows(text)
    for name in ('CrossEntropyLoss', 'LovaszLoss', 'mIoU [torch]', 'mIoU [cpp]', 'mIoU [triton]',
                 'BF1 [torch]', 'BF1 [cpp]', 'BF1 [triton]'):
        cells = [c.strip() for c in rows[name].split('|')]
        assert len(cells) == 4 and all(float(c) >= 0 for c in cells), (name, cells)
    assert 'DiceLoss' not in rows  # (--only)
    assert float(rows['CrossEntropyLoss'].split('|')[1]) == 1.0  # the ratio column
    assert re.search(r'^- (PASS|FAIL) mIoU \[cpp\]: time [\d.]+x CE', text, re.M)
    assert re.search(r'^- (PASS|FAIL) BF1 \[triton\]: peak memory [\d.]+x CE', text, re.M)
    for m in ('mIoU', 'FWIoU', 'mAcc', 'gAcc', 'BIoU', 'BF1'):
        assert re.search(rf'^\| {m} \| \d \| [\d.e+-]+ \| .* \| yes \| PASS', text, re.M), m
    assert report.read_text().startswith('# Loss benchmark')


def test_without_mmseg_and_with_torch_compile():
    """What a GPU machine without MMSeg runs: torch's cross-entropy, no MMSeg rows, and the
    compile time of torch.compile shown apart."""
    text = _run('--no-mmseg', '--engines', 'torch', 'compile', '--only', 'gAcc',
                '--no-accuracy')
    rows = _rows(text)
    assert 'LovaszLoss' not in rows and 'DiceLoss' not in rows
    assert {'CrossEntropyLoss', 'gAcc [torch]', 'gAcc [compile]'} <= set(rows)
    assert 'note: MMSeg is not used' in text
    assert re.search(r'^\| gAcc \[compile\] \| [\d.]+ \|$', text, re.M)  # the first call
