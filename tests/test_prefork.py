"""The pre-warmed trial launcher (asl.search.executors.prefork) and the local executor's fork mode,
with real launcher processes and real (short) MMSeg trainings on the demo data."""
import json
import os
import signal
import sys
import time

import pytest

pytest.importorskip('mmseg')

from asl.search.executors import LocalExecutor  # noqa: E402
from asl.search.executors.prefork import PreforkError, PreforkServer  # noqa: E402
from asl.search.trial import TrialSpec  # noqa: E402
from search_fixtures import alive as _alive  # noqa: E402
from search_fixtures import trial_losses  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CFG = os.path.join(ROOT, 'configs', 'retrain', 'demo',
                   'deeplabv3plus_r18tiny-d8_asl-miou_1xb8-1200_asldemo-64x64.py')
ITERS = 30  # with RMSprop, enough for the demo model to learn the larger classes


def _env():
    return dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', CUDA_VISIBLE_DEVICES='')


def _wait_dead(pid, timeout=15.0):
    deadline = time.time() + timeout
    while _alive(pid) and time.time() < deadline:
        time.sleep(0.1)
    return not _alive(pid)


def _wait_for_text(path, text, timeout=300.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if os.path.exists(path) and text in open(path, errors='replace').read():
            return True
        time.sleep(0.2)
    return False


def _train_args(work_dir, iters, *extra, log=2):
    return [CFG, '--work-dir', str(work_dir), '--seed', '0', '--deterministic', '--lean',
            '--cfg-options', f'train_cfg.max_iters={iters}', f'param_scheduler.0.end={iters}',
            f'train_cfg.val_interval={iters}', f'default_hooks.checkpoint.interval={iters}',
            f'default_hooks.logger.interval={log}', *extra]


@pytest.fixture(scope='module')
def server(tmp_path_factory):
    srv = PreforkServer(sys.executable, _env(),
                        str(tmp_path_factory.mktemp('launcher') / 'launcher.log'))
    info = srv.start()
    yield srv, info
    srv.close()


def test_launcher_warms_up_without_cuda_or_torch_work(server):
    srv, info = server
    assert info['ready'] and info['import_s'] > 0
    assert info['cuda_initialized'] is False
    assert srv.alive()


def test_forked_training_matches_a_fresh_process(server, tmp_path):
    """Same config, same seed, deterministic mode: a forked trial and tools/train.py give
    the same losses at every iteration and identical metrics, for a model that learns
    (so a difference in seeding, threads or data order would show)."""
    import subprocess
    srv, _ = server
    fork_dir, spawn_dir = tmp_path / 'fork', tmp_path / 'spawn'
    fork_dir.mkdir()
    args = [_train_args(d, ITERS, 'optim_wrapper.optimizer.type=RMSprop',
                        'optim_wrapper.optimizer.lr=0.001', log=1) for d in (fork_dir, spawn_dir)]
    pid = srv.fork(args[0], {'ASL_TEST_MARK': 'x'}, str(fork_dir / 'stdout.log'), threads=1)
    assert srv.wait(pid, 600) == 0, open(fork_dir / 'stdout.log').read()[-3000:]
    out = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'train.py'), *args[1]],
                         cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]

    losses = trial_losses(str(fork_dir))
    assert [it for it, _ in losses] == list(range(1, ITERS + 1))
    assert losses == trial_losses(str(spawn_dir))
    # the model learns: the loss falls, and it predicts more than the background
    total = [v['loss'] for _, v in losses]
    assert max(total[-5:]) < 0.9 * min(total[:5]), total

    def last_val(d):
        lines = open(next(d.glob('*/vis_data/scalars.json'))).read().splitlines()
        return [json.loads(x) for x in lines if 'mIoU' in x][-1]

    a, b = last_val(fork_dir), last_val(spawn_dir)
    for key in ('mIoU', 'FWIoU', 'mAcc', 'gAcc', 'BIoU', 'BF1'):
        assert a[key] == b[key], (key, a, b)
    assert a['mAcc'] > 25.0 and a['BF1'] > 0, a  # background only: mAcc 20.00, BF1 0
    # the forked child wrote its own log, which names the training
    log = open(fork_dir / 'stdout.log').read()
    assert f'Iter(train) [{ITERS}/{ITERS}]' in log and 'Iter(val)' in log
    # --lean: the config dump is written (valid Python) without yapf formatting
    from mmengine.config import Config
    dump = next(fork_dir.glob('*.py'))
    assert Config.fromfile(str(dump)).train_cfg.max_iters == ITERS


def test_exit_status_of_failing_children(server, tmp_path):
    srv, _ = server
    # an unknown option: argparse exits with status 2
    pid = srv.fork([CFG, '--no-such-option'], {}, str(tmp_path / 'a.log'))
    assert srv.wait(pid, 60) == 2
    assert '--no-such-option' in open(tmp_path / 'a.log').read()
    # an exception: status 1 and its traceback in the trial's log
    pid = srv.fork([str(tmp_path / 'missing.py')], {}, str(tmp_path / 'b.log'))
    assert srv.wait(pid, 60) == 1
    text = open(tmp_path / 'b.log').read()
    assert 'Traceback' in text and 'config file not found' in text
    # the launcher is unharmed by its children's failures
    assert srv.alive()


def test_killed_child_reports_the_signal(server, tmp_path):
    srv, _ = server
    pid = srv.fork(_train_args(tmp_path, 100000), {}, str(tmp_path / 'stdout.log'), threads=1)
    assert _wait_for_text(tmp_path / 'stdout.log', 'Iter(train)'), \
        open(tmp_path / 'stdout.log').read()[-3000:]
    assert os.getpgid(pid) == pid  # its own process group, which executors stop
    os.killpg(pid, signal.SIGKILL)
    assert srv.wait(pid, 30) == -signal.SIGKILL


def test_children_die_with_the_launcher(tmp_path):
    srv = PreforkServer(sys.executable, _env(), str(tmp_path / 'launcher.log'))
    srv.start()
    pid = srv.fork(_train_args(tmp_path / 'w', 100000), {}, str(tmp_path / 'stdout.log'),
                   threads=1)
    assert _wait_for_text(tmp_path / 'stdout.log', 'Iter(train)')
    os.kill(srv.proc.pid, signal.SIGKILL)
    assert _wait_dead(pid), 'the forked trial outlived its launcher'
    assert not srv.alive()
    with pytest.raises(PreforkError, match='not running'):
        srv.fork(_train_args(tmp_path / 'x', 2), {}, str(tmp_path / 'x.log'))
    srv.close()


def _spec(tmp_path, name, iters, time_limit=600.0):
    wd = tmp_path / name
    wd.mkdir(parents=True)
    cfg = wd / 'config.py'
    cfg.write_text(
        f'_base_ = {CFG!r}\n'
        f'train_cfg = dict(max_iters={iters}, val_interval={iters})\n'
        "param_scheduler = [dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0, "
        f'end={iters}, by_epoch=False)]\n'
        f'default_hooks = dict(logger=dict(interval=2), checkpoint=dict(interval={iters}))\n'
        "custom_hooks = [dict(type='ASLTrialHook')]\n")
    return TrialSpec(trial_id=name, step=0, index=0, attempt=1, work_dir=str(wd),
                     config_path=str(cfg), seed=0, time_limit=time_limit)


def _run_all(ex, timeout=600.0):
    done = []
    deadline = time.time() + timeout
    while ex.running() and time.time() < deadline:
        done += ex.poll()
        time.sleep(0.2)
    return done


def test_local_executor_forks_times_out_and_survives_a_dead_launcher(tmp_path):
    ex = LocalExecutor(workers=1, gpus=0, launch='fork', log_dir=str(tmp_path))
    try:
        ex.prepare(str(tmp_path))  # the launcher warms up in the background
        # a normal trial, forked, reports through result.json like a spawned one
        spec = _spec(tmp_path, 's00-c00-a1', 4)
        info = ex.launch(spec)
        assert info['launch'] == 'fork' and info['pgid'] == info['pid']
        [(s, comp)] = _run_all(ex)
        assert comp.exit_code == 0 and not comp.timed_out
        result = json.load(open(os.path.join(spec.work_dir, 'result.json')))
        assert result['iter'] == 4 and result['wall_s'] > result['train_iter_s'] > 0
        assert os.path.isfile(tmp_path / 'launcher.log')
        # the time limit stops a forked trial
        spec = _spec(tmp_path, 's00-c01-a1', 100000, time_limit=8.0)
        ex.launch(spec)
        [(s, comp)] = _run_all(ex)
        assert comp.timed_out and 'time limit' in comp.reason
        # the launcher dies under a running trial: the trial is reported failed with the
        # reason, and the next trial gets a new launcher
        spec = _spec(tmp_path, 's00-c02-a1', 100000)
        info = ex.launch(spec)
        assert _wait_for_text(os.path.join(spec.work_dir, 'stdout.log'), 'Iter(train)')
        os.kill(ex._server.proc.pid, signal.SIGKILL)
        [(s, comp)] = _run_all(ex, timeout=60)
        assert comp.exit_code is None and 'launcher died' in comp.reason
        assert _wait_dead(info['pid'])
        spec = _spec(tmp_path, 's00-c03-a1', 2)
        info = ex.launch(spec)
        assert info['launch'] == 'fork'
        [(s, comp)] = _run_all(ex)
        assert comp.exit_code == 0
    finally:
        ex.stop()
    assert ex._server is None


@pytest.mark.skipif(not hasattr(os, 'sched_setaffinity'), reason='Linux CPU affinity')
def test_threads_per_trial_follow_the_cores_the_search_may_run_on():
    """Under taskset, a Slurm CPU set or a container's, the default threads per trial
    divide the cores this process may run on, not the machine's (os.cpu_count())."""
    from asl.utils import usable_cores
    saved = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(saved)})
        assert usable_cores() == 1
        assert LocalExecutor(workers=1, gpus=0).threads == 1
    finally:
        os.sched_setaffinity(0, saved)
    assert usable_cores() == len(saved)
    assert LocalExecutor(workers=1, gpus=0).threads == len(saved)
    assert LocalExecutor(workers=2, gpus=0).threads == max(len(saved) // 2, 1)


def test_local_executor_spawn_mode_and_bad_mode(tmp_path):
    with pytest.raises(ValueError, match="'thread'"):
        LocalExecutor(launch='thread')
    ex = LocalExecutor(workers=1, gpus=0, launch='spawn')
    assert 'a new process each' in ex.describe()
    spec = _spec(tmp_path, 's00-c00-a1', 2)
    info = ex.launch(spec)
    assert info['launch'] == 'spawn' and ex._server is None
    [(s, comp)] = _run_all(ex)
    assert comp.exit_code == 0
    assert json.load(open(os.path.join(spec.work_dir, 'result.json')))['iter'] == 2


# --------------------------------------------------------------- CUDA and forking
# No GPU is needed to test the detection: a stand-in ``libcuda.so.1`` (an empty shared
# library) preloaded into the launcher is what a launcher whose imports initialised the
# CUDA driver looks like from /proc/self/maps.
def test_cuda_driver_detection_reads_the_mappings():
    from asl.search.executors.prefork import cuda_driver_loaded
    maps = ('7f00-7f01 r-xp 00000000 08:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6\n'
            '7f02-7f03 r--p 00000000 00:00 0 [heap]\n')
    assert not cuda_driver_loaded(maps)
    assert cuda_driver_loaded(maps + '7f04-7f05 r-xp 0 08:01 2 /usr/lib/libcuda.so.560.35\n')
    assert not cuda_driver_loaded(maps + '7f04-7f05 r-xp 0 08:01 2 /opt/libcudart.so.12\n')
    assert cuda_driver_loaded() is False  # this test process: CPU torch, no driver


@pytest.fixture(scope='module')
def fake_driver(tmp_path_factory):
    import shutil
    import subprocess
    cc = shutil.which('cc') or shutil.which('gcc')
    if cc is None:
        pytest.skip('no C compiler')
    d = tmp_path_factory.mktemp('fakecuda')
    (d / 'empty.c').write_text('int asl_fake_cuda_driver(void) { return 0; }\n')
    lib = d / 'libcuda.so.1'
    subprocess.run([cc, '-shared', '-fPIC', '-o', str(lib), str(d / 'empty.c')], check=True)
    return str(lib)


@pytest.fixture(scope='module')
def dirty_server(fake_driver, tmp_path_factory):
    """A launcher with the stand-in driver library loaded."""
    srv = PreforkServer(sys.executable, dict(_env(), LD_PRELOAD=fake_driver),
                        str(tmp_path_factory.mktemp('dirty') / 'launcher.log'))
    info = srv.start()
    yield srv, info
    srv.close()


def test_launcher_checks_cuda_through_nvml_and_reports_a_loaded_driver(server, dirty_server):
    srv, info = server
    assert info['cuda_initialized'] is False and info['cuda_driver_loaded'] is False
    environ = open(f'/proc/{srv.proc.pid}/environ', 'rb').read().split(b'\0')
    assert b'PYTORCH_NVML_BASED_CUDA_CHECK=1' in environ
    assert dirty_server[1]['cuda_driver_loaded'] is True


def test_forked_gpu_trial_restarts_fresh_when_cuda_was_touched(dirty_server, tmp_path):
    """A GPU trial forked from a launcher that touched CUDA replaces itself with a fresh
    tools/train.py (same pid and log, its arguments kept); a CPU trial does not."""
    srv, _ = dirty_server
    pid = srv.fork(['--help'], {'CUDA_VISIBLE_DEVICES': '0'}, str(tmp_path / 'gpu.log'))
    assert srv.wait(pid, 120) == 0
    text = open(tmp_path / 'gpu.log').read()
    assert 'starting the trial as a fresh process' in text and 'cuda_driver_loaded' in text
    assert 'usage:' in text  # tools/train.py --help, run by the fresh process
    pid = srv.fork(['--help'], {'CUDA_VISIBLE_DEVICES': ''}, str(tmp_path / 'cpu.log'))
    assert srv.wait(pid, 120) == 0
    text = open(tmp_path / 'cpu.log').read()
    assert 'usage:' in text and 'fresh process' not in text


def test_executor_gives_up_forking_gpu_trials_when_the_launcher_touched_cuda(
        fake_driver, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv('CUDA_VISIBLE_DEVICES', '0')  # one "GPU" slot, without a GPU
    ex = LocalExecutor(launch='fork', env={'LD_PRELOAD': fake_driver}, log_dir=str(tmp_path))
    assert ex.gpu_slots == [['0']] and ex._wants_fork()
    try:
        ex.prepare(str(tmp_path))
        assert ex._launcher(_spec(tmp_path, 's00-c00-a1', 2)) is None
        assert 'cuda_driver_loaded' in ex._fork_broken and not ex._wants_fork()
        assert 'starting every trial as a new process' in capsys.readouterr().err
    finally:
        ex.stop()
