"""tools/analysis/benchmark_loss.py on tiny sizes: its tables and sections, not its timings."""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, 'tools', 'analysis', 'benchmark_loss.py')
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
    pytest.importorskip('asl.engines.cpp._C')
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


def test_memory_mode(tmp_path):
    """--memory on a tiny shape: the Triton engine under the interpreter, the plain path
    and cross-entropy, their peak and kept memory, the GPU targets and the two checks of
    the method (known allocations; a kernel run by the interpreter allocates nothing)."""
    pytest.importorskip('triton')
    report = tmp_path / 'memory.md'
    out = subprocess.run([sys.executable, TOOL, '--memory', '--n', '1', '--c', '5', '--size',
                          '40', '--only', 'mIoU', 'BIoU', 'BF1', '--out', str(report)],
                         capture_output=True, text=True, timeout=600, cwd=ROOT,
                         env=dict(os.environ, TRITON_INTERPRET='0'))  # the script sets it
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    text = out.stdout
    rows = _rows(text)
    for name in ('CrossEntropyLoss', 'mIoU [triton]', 'mIoU [torch]', 'BIoU [triton]',
                 'BIoU [torch]', 'BF1 [triton]', 'BF1 [torch]'):
        cells = [float(c) for c in rows[name].split('|')]
        assert len(cells) == 5 and all(c >= 0 for c in cells), (name, cells)
    assert float(rows['CrossEntropyLoss'].split('|')[1]) == 1.0  # peak x CE
    assert 'mAcc [triton]' not in rows  # (--only)
    for m, limit in (('mIoU', 1), ('BIoU', 1.5), ('BF1', 2.5)):
        assert re.search(rf'^- (PASS|FAIL) {m} \[triton\]: peak memory [\d.]+x CE '
                         rf'\(target <= {limit}x\)$', text, re.M), m
    assert not re.search(r'^- (PASS|FAIL) \w+ \[torch\]', text, re.M)
    assert 'known allocations: PASS' in text
    assert 'allocates 0 bytes through torch (PASS' in text
    assert report.read_text().startswith('# Loss memory')


def test_memory_of_counts_the_gradient_not_the_inputs():
    """memory_of: the logits and labels are not counted, the input gradient is;
    cross-entropy keeps its log-softmax for the backward pass."""
    pytest.importorskip('triton')
    import importlib.util
    if 'benchmark_loss' not in sys.modules:
        spec = importlib.util.spec_from_file_location('benchmark_loss', TOOL)
        module = importlib.util.module_from_spec(spec)
        sys.modules['benchmark_loss'] = module
        spec.loader.exec_module(module)
    bl = sys.modules['benchmark_loss']
    logits, label = bl.make_inputs(1, 5, 32)
    size = logits.numel() * 4
    ce = bl.memory_of(bl.TorchCrossEntropy(), logits, label)
    assert size <= ce['kept'] < 2 * size  # the log-softmax output (and a few scalars)
    assert ce['peak'] >= 2 * size  # it and the input gradient
    for engine in ('torch', 'triton'):
        r = bl.memory_of(bl.SurrogateLoss('mIoU', engine), logits, label)
        assert r['grad_ok'] and r['peak'] >= size, (engine, r)  # the input gradient
        assert r['peak'] >= r['kept'] >= 0
