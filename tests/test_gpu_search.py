"""The search's GPU paths, on a CUDA machine (``tools/gpu/run.sh`` runs this file there):
a training on CUDA with the Triton engine, a search whose trials are forked from the
pre-warmed launcher onto the GPU, run with AMP and packed two per GPU, and a two-process
NCCL training where there is a second GPU. Skipped without CUDA (the CPU tests cover the
same code paths on CPU workers)."""
import json
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip('torch')
pytest.importorskip('mmseg')
if not torch.cuda.is_available():
    pytest.skip('no CUDA device: these tests run on a GPU machine (tools/gpu/run.sh)',
                allow_module_level=True)

from search_fixtures import CONFIG, ROOT, env, events_of, journal, tail  # noqa: E402

RETRAIN = os.path.join(ROOT, 'configs', 'retrain', 'demo',
                       'deeplabv3plus_r18tiny-d8_asl-miou_1xb8-1200_asldemo-64x64.py')
SHORT = ['train_cfg.max_iters=20', 'param_scheduler.0.end=20', 'train_cfg.val_interval=20',
         'default_hooks.logger.interval=5']


def _env():
    e = env()
    e.pop('CUDA_VISIBLE_DEVICES', None)
    return e


def test_training_on_cuda_with_the_triton_engine(tmp_path):
    work = tmp_path / 'train'
    out = subprocess.run([sys.executable, 'tools/train.py', RETRAIN, '--work-dir', str(work),
                          '--cfg-options', *SHORT], cwd=ROOT, env=_env(),
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, tail(out)
    log = out.stdout + out.stderr
    assert 'cuda' in log.lower()
    assert 'loss_asl' in log and 'runs on the plain PyTorch' not in log
    assert os.path.isfile(work / 'iter_20.pth')


def test_forked_amp_trials_packed_two_per_gpu(tmp_path):
    work = tmp_path / 'search'
    out = subprocess.run(
        [sys.executable, 'tools/search.py', CONFIG, '--work-dir', str(work), '--launch', 'fork',
         '--trials-per-gpu', '2', '--gpus', '1', '--cfg-options', 'search.num_steps=1',
         'search.num_samples=2', 'search.amp=True', 'search.reevaluate=None',
         'search.holdout.num=16', *SHORT], cwd=ROOT, env=_env(), capture_output=True,
        text=True, timeout=900)
    assert out.returncode == 0, tail(out)
    launched = events_of(work, 'trial_launched')
    assert [e['info']['launch'] for e in launched] == ['fork', 'fork']
    seq = [e['event'] for e in journal(work) if e['event'].startswith('trial_')]
    assert seq[:2] == ['trial_launched', 'trial_launched']  # both at once on one GPU
    finished = events_of(work, 'trial_finished')
    assert len(finished) == 2 and all(0 < e['reward'] <= 1 for e in finished)
    for e in launched:
        text = open(os.path.join(e['work_dir'], 'config.py')).read()
        assert 'AmpOptimWrapper' in text
        log = open(os.path.join(e['work_dir'], 'stdout.log')).read()
        assert 'cuda' in log.lower() and 'Traceback' not in log
    result = json.load(open(os.path.join(launched[0]['work_dir'], 'result.json')))
    assert result['iter'] == 20


def test_two_process_nccl_training(tmp_path):
    if torch.cuda.device_count() < 2:
        pytest.skip(f'{torch.cuda.device_count()} GPU: no second GPU for an NCCL training')
    work = tmp_path / 'ddp'
    out = subprocess.run([sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2',
                          '--master_port=29613', 'tools/train.py', RETRAIN, '--launcher',
                          'pytorch', '--work-dir', str(work), '--cfg-options', *SHORT],
                         cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, tail(out)
    assert 'nccl' in (out.stdout + out.stderr).lower()
    assert os.path.isfile(work / 'iter_20.pth')
