"""Several trials per GPU slot (``search.trials_per_gpu``, ``--trials-per-gpu``): on the local
executor's CPU workers, and packed into one job on the real one-node Slurm cluster.

Packing changes where and when trials run, never what they compute: a packed search ends
exactly like the reference search of ``search_fixtures``.
"""
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip('mmseg')

from asl.search.executors import slurm_cli as slurm  # noqa: E402
from asl.search.executors.pack import PACK_STATUS_FILE  # noqa: E402
from search_fixtures import (CONFIG, REEVAL, ROOT, SAMPLES, STEPS, TINY,  # noqa: E402
                             assert_same_search, env, events_of, journal, run, search_cmd,
                             search_in_process, search_losses, sigkill_after_launches,
                             tail)


def _concurrent(work, step, n):
    """The first ``n`` trial events of a step are ``n`` launches (all ran at once)."""
    seq = [e['event'] for e in journal(work) if e.get('step') == step
           and e['event'] in ('trial_launched', 'trial_finished', 'trial_failed')]
    return seq[:n] == ['trial_launched'] * n


def test_local_workers_run_packed_trials_with_the_same_result(reference_search, tmp_path):
    ref, _ = reference_search
    work = tmp_path / 'packed'
    out = run(search_cmd(work, '--trials-per-gpu', str(SAMPLES)))
    assert out.returncode == 0, tail(out)
    assert f'{SAMPLES} CPU trial(s) at once ({SAMPLES} per worker)' in \
        open(work / 'search.log').read()
    for step in range(STEPS):
        assert _concurrent(work, step, SAMPLES), journal(work)
    assert_same_search(work, ref)
    assert search_losses(work) == search_losses(ref)


def _faulty_config(tmp_path, faults, limit=None, retries=0):
    cfg = tmp_path / 'faulty.py'
    cfg.write_text(
        f'_base_ = {CONFIG!r}\n'
        "custom_imports = dict(imports=['asl.mmseg', 'asl_search_hooks'], "
        "allow_failed_imports=False)\n"
        f"custom_hooks = [dict(type='FaultInjectionHook', at_iter=2, faults={faults!r})]\n"
        f'search = dict(num_steps=1, num_samples=3, max_retries={retries}, '
        f'holdout=dict(num=16), reevaluate=None, retrain_config=None'
        + (f', trial_time_limit={limit}' if limit else '') + ')\n'
        'train_cfg = dict(max_iters=8)\n'
        "param_scheduler = [dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0, end=8,\n"
        '                        by_epoch=False)]\n')
    return cfg


def test_a_packed_trial_that_runs_out_of_memory_or_hangs_fails_alone(tmp_path):
    """Three trials at once on one worker: one raises CUDA's out-of-memory error, one hangs
    until its own time limit; the third finishes and is rewarded."""
    cfg = _faulty_config(tmp_path, {'s00-c01': 'oom', 's00-c02': 'hang'}, limit=20)
    work = tmp_path / 'search'
    out = run([sys.executable, 'tools/search.py', str(cfg), '--work-dir', str(work),
               '--trials-per-gpu', '3', '--threads-per-trial', '1'])
    assert out.returncode == 0, tail(out)
    assert _concurrent(work, 0, 3)
    failed = {e['index']: e for e in events_of(work, 'trial_failed')}
    assert failed[1]['kind'] == 'crash' and 'CUDA out of memory' in failed[1]['reason']
    assert failed[2]['kind'] == 'timeout' and '20 s' in failed[2]['reason']
    finished = events_of(work, 'trial_finished')
    assert [e['index'] for e in finished] == [0] and finished[0]['reward'] > 0
    # the out-of-memory trial ended long before its hanging sibling was stopped
    ends = [e for e in journal(work) if e['event'] in ('trial_finished', 'trial_failed')]
    assert ends[-1]['index'] == 2


def test_packing_options_are_checked(tmp_path):
    """(tools/search.py's function in this process: test_search.py runs the script's
    exit status 2 for such errors)"""
    work = tmp_path / 'bad'
    code, err = search_in_process(search_cmd(work, '--trials-per-gpu', '0'))
    assert code == 2 and '--trials-per-gpu must be at least 1, got 0' in err
    code, err = search_in_process(search_cmd(
        work, options=['search.trials_per_gpu=2', 'search.gpus_per_trial=2']))
    assert code == 2 and 'trials_per_gpu=2 packs single-GPU proxy trainings' in err, err
    code, err = search_in_process(search_cmd(work, options=['search.amp=True']))
    assert code == 2 and 'search.amp=True needs GPUs' in err, err
    code, err = search_in_process(search_cmd(work, options=['search.amp=1']))
    assert code == 2 and "search.amp must be False, True, 'float16'" in err, err
    assert not os.path.exists(work / 'journal.jsonl')


# --------------------------------------------------------------------------- Slurm
def _slurm_cmd(work_dir, *extra, options=()):
    return [sys.executable, os.path.join(ROOT, 'tools', 'search.py'), CONFIG, '--work-dir',
            str(work_dir), '--seed', '1', '--executor', 'slurm', '--max-jobs', '1',
            '--trials-per-gpu', str(SAMPLES), *extra, '--cfg-options', *TINY, *options]


def _jobs_of(work):
    """Job id -> the trial ids journaled as launched in it."""
    jobs = {}
    for e in events_of(work, 'trial_launched'):
        jobs.setdefault(e['info']['job_id'], []).append(e['trial_id'])
    return jobs


def test_slurm_a_failed_packed_trial_is_retried_alone(slurm_cluster, tmp_path):
    cfg = _faulty_config(tmp_path, {'s00-c01-a1': 'crash'}, retries=1)
    work = tmp_path / 'search'
    out = subprocess.run([sys.executable, 'tools/search.py', str(cfg), '--work-dir', str(work),
                          '--executor', 'slurm', '--trials-per-gpu', '3', '--max-jobs', '1'],
                         cwd=ROOT, env=env(), capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, tail(out)
    failed = events_of(work, 'trial_failed')
    assert [(e['index'], e['attempt'], e['kind']) for e in failed] == [(1, 1, 'crash')]
    assert 'injected crash' in failed[0]['reason']
    launched = events_of(work, 'trial_launched')
    pack = launched[0]['info']['job_id']
    assert [e['info']['job_id'] for e in launched[:3]] == [pack] * 3
    retry = [e for e in launched if e['index'] == 1 and e['attempt'] == 2]
    assert len(retry) == 1 and retry[0]['info']['job_id'] != pack
    assert 'pack' not in retry[0]['info']  # a job of its own
    assert sorted(e['index'] for e in events_of(work, 'trial_finished')) == [0, 1, 2]


def test_slurm_controller_killed_during_a_packed_job_resumes_without_duplicates(
        slurm_cluster, reference_search, tmp_path):
    ref, _ = reference_search
    work = tmp_path / 'search'
    launched = sigkill_after_launches(_slurm_cmd(work), work, SAMPLES,
                                      'the first packed job was launched')
    job = launched[0]['info']['job_id']
    assert not slurm.query([job])[job].finished, 'the job should outlive the controller'
    out = subprocess.run(_slurm_cmd(work), cwd=ROOT, env=env(), capture_output=True,
                         text=True, timeout=1200)
    assert out.returncode == 0, tail(out)
    assert 're-attached' in out.stdout + out.stderr
    for idx in range(SAMPLES):  # no second launch of the packed trials
        assert len(events_of(work, 'trial_launched', step=0, index=idx)) == 1
    # one job per step runs the step's three trials; the re-evaluation's two trials share
    # one job too; the search ends exactly like the unpacked local one
    jobs = _jobs_of(work)
    assert sorted(len(v) for v in jobs.values()) == [REEVAL] + [SAMPLES] * STEPS, jobs
    for e in events_of(work, 'trial_launched'):
        assert e['info']['pack'] == jobs[e['info']['job_id']]
        status = json.load(open(os.path.join(e['work_dir'], PACK_STATUS_FILE)))
        assert status['exit_code'] == 0 and status['trial_id'] == e['trial_id']
        assert os.path.getsize(os.path.join(e['work_dir'], 'stdout.log')) > 0
    first = events_of(work, 'trial_launched', index=0, step=0)[0]
    script = open(os.path.join(first['work_dir'], 'job.sh')).read()
    assert '--job-name=asl-' in script and '+'.join(jobs[first['info']['job_id']]) in script
    assert_same_search(work, ref)
    assert search_losses(work) == search_losses(ref)
