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
    for name in ('bench_loss.sh', 'make_kit.sh', 'check.sh'):
        subprocess.run(['bash', '-n', os.path.join(ROOT, 'tools', 'gpu', name)], check=True)


def test_make_kit_then_check_as_far_as_a_cpu_machine_goes(tmp_path):
    """make_kit.sh gathers the wheels and the mmcv source from the package index; check.sh
    installs them into a private folder and runs everything up to the GPU (here mmcv is
    already built, the GPU tests are skipped and the benchmark says there is no GPU)."""
    kit = tmp_path / 'kit'
    env = dict(os.environ, PIP=f'{sys.executable} -m pip')
    out = subprocess.run(['bash', os.path.join(ROOT, 'tools', 'gpu', 'make_kit.sh'), str(kit)],
                         capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    files = [line.split('\t')[1] for line in open(kit / 'MANIFEST').read().splitlines()]
    names = {os.path.basename(f).split('-')[0].lower() for f in files}
    assert {'mmengine', 'mmsegmentation', 'addict', 'yapf', 'setuptools'} <= names
    assert 'src/mmcv-2.1.0.tar.gz' in files
    assert not names & {'torch', 'triton', 'numpy'}  # the machine has those
    assert all('cp312' in f or 'py3-none' in f or 'abi3' in f for f in files if 'wheels/' in f)
    work = tmp_path / 'out'
    env = dict(os.environ, PYTHON=sys.executable, ASL_KIT_SITE=str(tmp_path / 'site'))
    out = subprocess.run(['bash', os.path.join(ROOT, 'tools', 'gpu', 'check.sh'), str(kit),
                          str(work)], capture_output=True, text=True, timeout=600, env=env,
                         cwd=str(tmp_path))
    text = out.stdout + out.stderr
    assert out.returncode == 1, text[-3000:]  # no GPU for the benchmark
    assert os.path.isfile(tmp_path / 'site' / 'mmseg' / '__init__.py')
    assert 'mmcv with ops already installed' in text and 'mmseg 1.2.2' in text
    assert 'skipped' in open(work / 'tests.log').read()
    assert 'no CUDA device' in open(work / 'bench.log').read()
    assert '# GPU check of the search' in open(work / 'summary.md').read()
