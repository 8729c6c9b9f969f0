"""The GPU check scripts, as far as a machine without a GPU can run them: the Triton
engine's kernels compile for Hopper (sm_90) ahead of time at the real datasets' class
counts, and the one-call GPU check (tools/gpu/run.sh) runs end to end as a dry run."""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GPU = os.path.join(ROOT, 'tools', 'gpu')


def _compile_kernels(tmp_path, *args):
    import json
    launches = tmp_path / 'launches.json'
    out = subprocess.run([sys.executable, os.path.join(GPU, 'compile_kernels.py'), *args,
                          '--launches', str(launches)], capture_output=True, text=True,
                         timeout=1200, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    m = re.search(r'compiled (\d+)/(\d+) kernel variants for sm_90', out.stdout)
    assert m and m.group(1) == m.group(2), out.stdout
    rec = json.load(open(launches))
    assert not rec['notes'], rec['notes']  # float32/bfloat16 derived from float16: checked
    return int(m.group(1)), rec['launches'], out.stdout


def test_triton_kernels_compile_for_sm90(tmp_path):
    """Every kernel variant the engine launches for mIoU and BF1 at 21 classes (VOC) and
    for mIoU at 150 (ADE20K: the largest tile of classes), float32, float16 and bfloat16
    logits, with the integer arguments specialised as Triton's JIT does on a GPU
    (divisible by 16 or not, equal to 1), compiles to a cubin; the interpreter alone
    would not catch a kernel the compiler rejects. (The tool's default adds 19 classes,
    the other formulas and BF1 at 150 classes, which the interpreter takes long over.)
    The recorded launches carry what Triton specialises on: pixel counts divisible by 16
    and not, aligned pointers, and no one-tile constant from a too small plane."""
    pytest.importorskip('triton')
    n21, entries, text = _compile_kernels(tmp_path, '--metrics', 'mIoU', 'BF1', '--classes',
                                          '21')
    assert n21 >= 60, text
    assert re.search(r'recorded \d+ distinct launches .* classes 21 ', text), text
    types = {t for _, _, specs, _ in entries for t, _ in specs}
    assert {'*fp32', '*fp16', '*bf16', 'i32'} <= types
    fwd = [specs for _, name, specs, _ in entries if name == 'stats_fwd']
    hw = {tuple(s[-4]) for s in fwd}  # (type, specialisation) of the pixel count
    assert ('i32', 'D') in hw and ('i32', 'N') in hw, hw
    assert all(s[-1][0] != 'constexpr' for s in fwd)  # more than one tile on every plane
    pools = [specs for _, name, specs, _ in entries if name == 'pool_pass']
    assert pools and all(s[0][1] == 'D' for s in pools)  # fresh tensors: aligned
    n150, entries, text = _compile_kernels(tmp_path, '--metrics', 'mIoU', '--classes', '150')
    assert n150 >= 18 and {meta.get('CP') for _, _, _, meta in entries} == {256}, text


def test_scripts_parse():
    for name in ('run.sh', 'make_kit.sh'):
        subprocess.run(['bash', '-n', os.path.join(GPU, name)], check=True)
        # every script of the repository they name exists (tools/analysis/benchmark_loss.py...)
        text = open(os.path.join(GPU, name)).read()
        for path in set(re.findall(r'(?<![\w/.])((?:tools|tests)/[\w/]+\.(?:py|sh))', text)):
            assert os.path.isfile(os.path.join(ROOT, path)), (name, path)


def _budget(text):
    """The per-step seconds of run.sh's budget table (its header comment) and its total."""
    head = text.split('set -uo pipefail')[0]
    table = head.split('Time budget')[1]
    steps = [int(m.group(1)) for m in re.finditer(r'\s(\d+)\s*$', table.split('total')[0],
                                                  re.M)]
    total = int(re.search(r'total\s+(\d+)', table).group(1))
    return steps, total


def test_run_budget_adds_up_to_8_minutes():
    text = open(os.path.join(GPU, 'run.sh')).read()
    steps, total = _budget(text)
    assert len(steps) == 6 and sum(steps) == total <= 480, (steps, total)
    assert 'BUDGET_S="${BUDGET_S:-480}"' in text


def test_make_kit_then_run_dry(tmp_path):
    """make_kit.sh gathers the wheels and the mmcv source from the package index; run.sh,
    as a dry run on this CPU machine (DEVICE=cpu, TRITON_INTERPRET=1, tiny shapes),
    installs the kit into a private folder and runs every step: the loss table and
    torch.compile against the Triton engine (through the interpreter), mmcv (already
    installed here, so not built), the GPU tests (skipped without a GPU) and the search's
    throughput. OUT_DIR gets at most 6 small files, the summary among them, rewritten
    after every step; caches and work directories go elsewhere."""
    pytest.importorskip('triton')
    pytest.importorskip('mmseg')
    kit = tmp_path / 'kit'
    env = dict(os.environ, PIP=f'{sys.executable} -m pip')
    out = subprocess.run(['bash', os.path.join(GPU, 'make_kit.sh'), str(kit)],
                         capture_output=True, text=True, timeout=600, env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    files = [line.split('\t')[1] for line in open(kit / 'MANIFEST').read().splitlines()]
    names = {os.path.basename(f).split('-')[0].lower() for f in files}
    assert {'mmengine', 'mmsegmentation', 'addict', 'yapf', 'setuptools'} <= names
    assert 'src/mmcv-2.1.0.tar.gz' in files
    assert not names & {'torch', 'triton', 'numpy'}  # the machine has those
    assert all('cp312' in f or 'py3-none' in f or 'abi3' in f for f in files if 'wheels/' in f)

    result, work = tmp_path / 'out', tmp_path / 'work'
    env = dict(os.environ, PYTHON=sys.executable, DEVICE='cpu', TRITON_INTERPRET='1',
               KIT=str(kit), WORK=str(work), OMP_NUM_THREADS='1')
    out = subprocess.run(['bash', os.path.join(GPU, 'run.sh'), str(result)],
                         capture_output=True, text=True, timeout=600, env=env,
                         cwd=str(tmp_path))
    text = out.stdout + out.stderr
    assert out.returncode == 0, text[-4000:]
    assert os.path.isfile(work / 'site' / 'mmseg' / '__init__.py')  # the kit's MMSeg
    produced = sorted(os.listdir(result))
    assert len(produced) <= 6 and 'summary.md' in produced, produced
    assert all(os.path.getsize(result / f) < 200_000 for f in produced), produced
    summary = open(result / 'summary.md').read()
    for step in ('machine, kit', 'loss table', 'torch.compile vs Triton: gAcc',
                 'mmcv CPU ops', 'MMSeg on the GPU', 'search throughput'):
        assert re.search(rf'^\| {re.escape(step)}[^|]* \| (ok|mmcv with ops[^|]*) \|',
                         summary, re.M), (step, summary)
    assert re.search(r'^- (PASS|FAIL) BF1 \[triton\]: peak memory', summary, re.M), summary
    assert re.search(r'^\| BF1 \| triton \| .* \| yes', summary, re.M), summary  # agreement
    assert re.search(r'^\| gAcc \[compile\] \| [\d.]+ \|', summary, re.M), summary
    assert re.search(r'^- gAcc \[compile\]: first call \(compiles\) [\d.]+ s', summary, re.M)
    assert 'skipped' in summary  # the GPU tests, without a GPU
    assert re.search(r'^\| 1 \| [\d.]+ \|', summary, re.M), summary  # the K=1 search row
    assert re.search(r"^## The paper's proxy task", summary, re.M), summary  # a section
    assert os.path.isdir(work / 'search' / 'search_k1')  # work directories outside OUT
