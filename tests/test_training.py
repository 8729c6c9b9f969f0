"""tools/train.py, tools/test.py and ASL_retrain.sh run for real (subprocesses, CPU)."""
import glob
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from asl.utils import usable_cores

pytest.importorskip('mmseg')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(ROOT, 'configs', 'retrain', 'demo')
CFG = 'deeplabv3plus_r18tiny-d8_asl-miou_1xb8-1200_asldemo-64x64'
METRICS = ('mIoU', 'FWIoU', 'mAcc', 'gAcc', 'BIoU', 'BF1')


def _env(threads=1):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               PYTHON=sys.executable, PYTHONUNBUFFERED='1')
    return env


def _iters(n, ckpt=None, val=None):
    return ['--cfg-options', f'train_cfg.max_iters={n}', f'param_scheduler.0.end={n}',
            f'train_cfg.val_interval={val or n}', f'default_hooks.checkpoint.interval={ckpt or n}',
            'default_hooks.logger.interval=2']


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _derived_config(tmp_path, base, text):
    path = tmp_path / 'derived.py'
    path.write_text(f'_base_ = {os.path.join(DEMO, base + ".py")!r}\n' + text)
    return str(path)


def test_asl_retrain_sh_end_to_end(tmp_path):
    work = tmp_path / 'retrain'
    out = subprocess.run(['bash', 'ASL_retrain.sh', CFG + '.py', '1', '3', *_iters(6)], cwd=ROOT,
                         env=dict(_env(usable_cores()), ASL_WORK_DIR=str(work)), capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert f'work dir {work}' in out.stdout
    assert os.path.isfile(work / 'iter_6.pth')
    logs = glob.glob(str(work / '*' / '*.log'))
    assert logs
    text = open(logs[0]).read()
    val = [ln for ln in text.splitlines() if 'Iter(val)' in ln and 'mIoU' in ln]
    assert val, text[-2000:]
    for m in METRICS:
        assert re.search(rf'\b{m}: \d+\.\d+', val[-1]), (m, val[-1])
    assert re.search(r'\bseed: 3\b', text), text[:3000]


def test_asl_retrain_sh_errors():
    out = subprocess.run(['bash', 'ASL_retrain.sh', 'asl-miuo_1xb8', '1'], cwd=ROOT, env=_env(),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and 'not found' in out.stderr and 'asl-miou' in out.stderr
    out = subprocess.run(['bash', 'ASL_retrain.sh', CFG, '3'], cwd=ROOT,
                         env=dict(_env(), ASL_ALLOW_CPU_PROCS='0'), capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2 and 'GPUS=3' in out.stderr


def test_torchrun_two_processes_train_one_model(tmp_path):
    """2 gloo processes: after training both ranks hold the same parameters, and these
    moved away from the initial ones (each rank sees other images, so without gradient
    synchronisation they would differ)."""
    import torch
    cfg = _derived_config(
        tmp_path, CFG,
        "custom_imports = dict(imports=['asl.mmseg', 'asl_test_hooks'], allow_failed_imports=False)\n"
        "custom_hooks = [dict(type='ASLTrialHook', result_file='result_rank{rank}.json'),\n"
        "                dict(type='SaveParamsHook')]\n")
    work = tmp_path / 'work'
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nnodes=1', '--nproc_per_node=2',
           f'--master_port={_free_port()}', os.path.join(ROOT, 'tools', 'train.py'), cfg,
           '--work-dir', str(work), '--launcher', 'pytorch', *_iters(4)]
    env = dict(_env(1), PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.abspath(__file__))]
        + [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep) if p]))
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    r0 = json.loads((work / 'result_rank0.json').read_text())
    assert set(r0['metrics']) == set(METRICS) and r0['iter'] == 4
    before = [torch.load(work / f'params_before_rank{r}.pt') for r in (0, 1)]
    after = [torch.load(work / f'params_after_rank{r}.pt') for r in (0, 1)]
    assert set(after[0]) == set(after[1]) == set(before[0]) and len(after[0]) > 50
    for name in after[0]:
        assert torch.equal(after[0][name], after[1][name]), name
    moved = [n for n in after[0] if not torch.equal(after[0][n], before[0][n])]
    assert len(moved) == len(after[0]), sorted(set(after[0]) - set(moved))
    log = open(glob.glob(str(work / '*' / '*.log'))[0]).read()
    assert 'Distributed training: True' in log and 'device_ids=None' in log


def test_kill_after_first_checkpoint_then_resume(tmp_path):
    work = tmp_path / 'work'
    cmd = [sys.executable, os.path.join(ROOT, 'tools', 'train.py'),
           os.path.join(DEMO, CFG + '.py'), '--work-dir', str(work), *_iters(40, ckpt=8)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(usable_cores()), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    # last_checkpoint names a checkpoint once it is complete (the file is created, then
    # written: wait for its content)
    def named():
        path = work / 'last_checkpoint'
        return re.search(r'iter_(\d+)\.pth', path.read_text()) if path.exists() else None

    while named() is None:
        assert proc.poll() is None, 'training ended before its first checkpoint'
        assert time.time() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    k = int(named().group(1))
    assert k < 40, 'the training finished before it could be killed'
    first_logs = set(glob.glob(str(work / '*' / '*.log')))
    out = subprocess.run(cmd + ['--resume'], cwd=ROOT, env=_env(usable_cores()), capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    new_log = [p for p in glob.glob(str(work / '*' / '*.log')) if p not in first_logs]
    text = open(new_log[0]).read()
    assert f'resumed epoch: 0, iter: {k}' in text
    iters = [int(m) for m in re.findall(r'Iter\(train\) \[\s*(\d+)/40\]', text)]
    assert iters and min(iters) > k and max(iters) == 40  # continued from k, not from 0
    assert (work / 'iter_40.pth').exists()


def test_tools_test_writes_all_metrics(tmp_path):
    work = tmp_path / 'work'
    cfg = os.path.join(DEMO, 'deeplabv3plus_r18tiny-d8_ce_1xb8-1200_asldemo-64x64.py')
    out = subprocess.run([sys.executable, 'tools/train.py', cfg, '--work-dir', str(work),
                          *_iters(2)], cwd=ROOT, env=_env(usable_cores()), capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    res = tmp_path / 'metrics.json'
    out = subprocess.run([sys.executable, 'tools/test.py', cfg, str(work / 'iter_2.pth'),
                          '--work-dir', str(work), '--out', str(res)], cwd=ROOT, env=_env(usable_cores()),
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    metrics = json.loads(res.read_text())
    assert set(METRICS) <= set(metrics) and all(0 <= metrics[m] <= 100 for m in METRICS)
    out = subprocess.run([sys.executable, 'tools/test.py', cfg, str(work / 'nope.pth')],
                         cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and 'nope.pth' in out.stderr
