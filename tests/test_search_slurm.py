"""Searches and trainings as Slurm jobs on the real one-node cluster (tools/slurm/cluster.sh).

Skipped only where Slurm cannot be installed (the fixture says why).
"""
import glob
import os
import signal
import subprocess
import sys
import time

import pytest

pytest.importorskip('mmseg')

from asl.search.executors import slurm_cli as slurm  # noqa: E402
from search_fixtures import (CONFIG, NAME, REEVAL, ROOT, SAMPLES, STEPS, TINY,  # noqa: E402
                             assert_same_search, env, events_of, journal, search_losses,
                             sigkill_after_launches, tail, wait_for)

_env = env


def _slurm_cmd(work_dir, *extra):
    return [sys.executable, os.path.join(ROOT, 'tools', 'search.py'), CONFIG, '--work-dir',
            str(work_dir), '--seed', '1', '--executor', 'slurm', '--max-jobs', '2', *extra,
            '--cfg-options', *TINY]


def _wait_for(pred, proc, what, timeout=900):
    return wait_for(pred, proc, what, timeout)


def test_scancel_from_outside_is_a_failed_trial_then_retried_and_halving_runs_as_jobs(
        slurm_cluster, reference_search, tmp_path):
    """One step with successive halving (3 -> 2 -> 1 at iterations 9 and 18): the second
    candidate's first job is cancelled from outside (a failure, retried as a new job);
    each promoted candidate's continuation is a new job that resumes its rung checkpoint,
    and the policy mean, trained in three jobs, ends with the reward the local reference
    search's uninterrupted training of it has."""
    ref, _ = reference_search
    work = tmp_path / 'search'
    cmd = _slurm_cmd(work) + ['search.num_steps=1', 'search.halving.rungs=[0.3,0.6]',
                              'search.halving.eta=2']
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        ev = _wait_for(lambda: [e for e in journal(work) if e['event'] == 'trial_launched'
                                and e['index'] == 1], proc, 'the second trial was launched')
        job = ev[0]['info']['job_id']
        subprocess.run(['scancel', job], check=True, timeout=60)
        assert proc.wait(timeout=900) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    events = journal(work)
    failed = [e for e in events if e['event'] == 'trial_failed']
    assert len(failed) == 1 and failed[0]['index'] == 1 and not failed[0]['final']
    assert failed[0]['kind'] == 'slurm:CANCELLED' and 'cancel' in failed[0]['reason'].lower()
    assert job in failed[0]['reason']
    retried = [e for e in events if e['event'] == 'trial_launched' and e['index'] == 1
               and not e.get('leg')]
    assert [e['attempt'] for e in retried] == [1, 2] and retried[1]['info']['job_id'] != job
    # halving: every candidate paused at iteration 9, two went on, the mean to the end
    decided = [e for e in events if e['event'] == 'rung_decided']
    assert [(d['iter'], len(d['promoted'])) for d in decided] == [(9, 2), (18, 1)]
    paused = {(e['rung'], e['index']): e for e in events if e['event'] == 'trial_paused'}
    legs = [e for e in events if e['event'] == 'trial_launched' and e.get('leg')]
    assert sorted((e['leg'], e['index']) for e in legs) == sorted(
        [(1, i) for i in decided[0]['promoted']] + [(2, 0)])
    jobs = {e['info']['job_id'] for e in events if e['event'] == 'trial_launched'}
    assert len(jobs) == len([e for e in events if e['event'] == 'trial_launched'])
    for e in legs:  # a new job resuming the checkpoint of the candidate's previous rung
        assert e['executor'] == 'slurm'
        assert e['resume_from'] == paused[(e['leg'] - 1, e['index'])]['checkpoint']
    # the step's one full-length trial (the mean) and the re-evaluation of the mean
    finished = [e for e in events if e['event'] == 'trial_finished']
    assert len(finished) == 2
    own = next(e['reward'] for e in finished if e['step'] == 0 and e['index'] == 0)
    assert own == next(e['reward'] for e in journal(ref)
                       if e['event'] == 'trial_finished' and e['step'] == 0
                       and e['index'] == 0)


def test_controller_killed_and_resumed_waits_for_its_running_jobs(slurm_cluster,
                                                                  reference_search, tmp_path):
    """The controller killed while two trials run as Slurm jobs; resumed, it re-attaches
    them and ends exactly like the local reference search."""
    ref, _ = reference_search
    work = tmp_path / 'search'
    launched = sigkill_after_launches(_slurm_cmd(work), work, 2, 'two trials were launched')
    jobs = [e['info']['job_id'] for e in launched]
    live = slurm.query(jobs)
    assert any(not live[j].finished for j in jobs), 'the jobs should outlive the controller'
    out = subprocess.run(_slurm_cmd(work), cwd=ROOT, env=_env(), capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0, tail(out)
    for idx in (0, 1):  # no duplicate jobs for the trials that were running
        assert len(events_of(work, 'trial_launched', step=0, index=idx)) == 1
    assert 're-attached' in out.stdout + out.stderr
    # every trial a Slurm job: the same search as the local reference, number for number,
    # down to the per-iteration losses of every trial
    assert_same_search(work, ref)
    assert search_losses(work) == search_losses(ref)
    launched = events_of(work, 'trial_launched')
    assert len(launched) == STEPS * SAMPLES + REEVAL
    assert all(e['executor'] == 'slurm' for e in launched)
    for e in launched:  # a Slurm job per trial, named after the search and the trial
        job = os.path.join(e['work_dir'], 'job.sh')
        text = open(job).read()
        assert f'--job-name=asl-{NAME}-{e["trial_id"]}' in text
        assert '#SBATCH --time=' in text
        assert os.path.getsize(os.path.join(e['work_dir'], 'stdout.log')) > 0
    for png in ('rewards.png', 'mu.png', 'curves.png'):
        assert os.path.isfile(work / png)


def test_stopping_the_search_cancels_its_jobs_only(slurm_cluster, tmp_path):
    # a job that is not the search's must survive
    other = slurm.submit(['sleep', '300'], job_name='asl-test-bystander', workdir=str(tmp_path),
                         log_path=str(tmp_path / 'bystander.log'))
    work = tmp_path / 'search'
    proc = subprocess.Popen(_slurm_cmd(work), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        ev = _wait_for(lambda: [e for e in journal(work) if e['event'] == 'trial_launched'],
                       proc, 'a trial was launched')
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 130
        job = ev[0]['info']['job_id']
        deadline = time.time() + 60
        while not slurm.query([job])[job].finished:
            assert time.time() < deadline
            time.sleep(0.25)
        assert slurm.query([job])[job].state == 'CANCELLED'
        assert not slurm.query([other])[other].finished
    finally:
        slurm.cancel([other])
        if proc.poll() is None:
            proc.kill()


def test_retrain_slurm_two_tasks_one_training(slurm_cluster, tmp_path):
    name = 'deeplabv3plus_r18tiny-d8_asl-miou_1xb8-1200_asldemo-64x64'
    work = tmp_path / 'retrain'
    env = dict(_env(), GPUS_PER_NODE='0', CPUS_PER_TASK='1', OMP_NUM_THREADS='1',
               ASL_WORK_DIR=str(work))
    out = subprocess.run(['bash', 'ASL_retrain_slurm.sh', 'debug', name, '2', '1',
                          '--cfg-options', 'train_cfg.max_iters=4', 'train_cfg.val_interval=4',
                          'param_scheduler.0.end=4', 'default_hooks.checkpoint.interval=4'],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, tail(out)
    assert os.path.isfile(work / 'iter_4.pth')
    log = open(glob.glob(str(work / '*' / '*.log'))[0]).read()
    assert 'Distributed launcher: slurm' in log and 'Distributed training: True' in log
    assert 'mIoU:' in log and 'BF1:' in log
