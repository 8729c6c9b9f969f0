"""asl.search.executors.slurm_cli against a real one-node Slurm cluster started by tools/slurm/cluster.sh.

The module is skipped only when the script exits 3 (Slurm/munge cannot be installed here); any
other failure to bring the cluster up is an error of every test.
"""
import os
import re
import subprocess
import time

import pytest

from asl.search.executors import slurm_cli as slurm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
from conftest import SLURM_PREFIX as PREFIX  # noqa: E402


def _wait(job_id, until=lambda info: info.finished, timeout=60.0):
    deadline = time.monotonic() + timeout
    while True:
        info = slurm.query([job_id])[job_id]
        if until(info):
            return info
        if time.monotonic() > deadline:
            raise AssertionError(f'job {job_id} still {info} after {timeout:.0f}s')
        time.sleep(0.25)


def _submit(tmp_path, name, command, **kwargs):
    return slurm.submit(command, job_name=PREFIX + name, workdir=str(tmp_path),
                        log_path=str(tmp_path / 'log.txt'), **kwargs)


def test_available_and_srun_two_tasks(slurm_cluster):
    assert slurm.slurm_available()
    proc = subprocess.run(['srun', '-n2', 'hostname'], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.split()) == 2


def test_completed_job_writes_file_and_log(slurm_cluster, tmp_path):
    out = tmp_path / 'result.txt'
    job = _submit(tmp_path, 'ok', ['bash', '-c', f'echo "hello $GREETING" > {out}; echo logged'],
                  env={'GREETING': "it's me"}, extra_args=['--comment', 'trial 1', '--nice=3'])
    assert re.fullmatch(r'\d+', job)
    info = _wait(job)
    assert (info.state, info.exit_code, info.finished) == ('COMPLETED', 0, True), info
    assert out.read_text() == "hello it's me\n"
    assert 'logged' in (tmp_path / 'log.txt').read_text()
    script = (tmp_path / 'job.sh').read_text()
    assert '#SBATCH --job-name=' + PREFIX + 'ok' in script
    assert 'srun --ntasks=1' in script
    show = subprocess.run(['scontrol', 'show', 'job', job], stdout=subprocess.PIPE,
                          universal_newlines=True, check=True).stdout
    assert 'Comment=trial 1' in show and 'Nice=3' in show


def test_failed_job_reports_exit_code(slurm_cluster, tmp_path):
    job = _submit(tmp_path, 'fail', ['bash', '-c', 'echo failing >&2; exit 3'])
    info = _wait(job)
    assert (info.state, info.exit_code, info.finished) == ('FAILED', 3, True), info
    assert '3' in info.reason
    assert 'failing' in (tmp_path / 'log.txt').read_text()


def test_multi_task_job_runs_one_process_per_task(slurm_cluster, tmp_path):
    job = _submit(tmp_path, 'mt', ['bash', '-c', 'touch task-$SLURM_PROCID-of-$SLURM_NTASKS'],
                  ntasks=2)
    info = _wait(job)
    assert info.state == 'COMPLETED', info
    assert sorted(p.name for p in tmp_path.glob('task-*')) == ['task-0-of-2', 'task-1-of-2']


def test_list_jobs_time_limit_and_cancel(slurm_cluster, tmp_path):
    job = _submit(tmp_path, 'sleep', ['sleep', '600'], time_limit_s=61)
    try:
        running = _wait(job, until=lambda i: i.state == 'RUNNING')
        assert not running.finished and running.exit_code is None
        # The limit is rounded up to whole minutes, in the script and in Slurm.
        assert '#SBATCH --time=2\n' in (tmp_path / 'job.sh').read_text()
        show = subprocess.run(['scontrol', 'show', 'job', job], stdout=subprocess.PIPE,
                              universal_newlines=True, check=True).stdout
        assert 'TimeLimit=00:02:00' in show
        found = slurm.list_jobs(PREFIX + 'sle')
        assert job in found and found[job].state == 'RUNNING'
        assert job not in slurm.list_jobs(PREFIX + 'other')
    finally:
        slurm.cancel([job], reason='pruned by the test')
    info = _wait(job)
    assert info.state == 'CANCELLED' and info.finished, info
    assert info.reason == 'cancelled: pruned by the test'
    assert job not in slurm.list_jobs(PREFIX)
    slurm.cancel([job])  # already finished: ignored


def test_job_cancelled_with_scancel_command(slurm_cluster, tmp_path):
    job = _submit(tmp_path, 'ext', ['sleep', '600'])
    _wait(job, until=lambda i: i.state == 'RUNNING')
    subprocess.run(['scancel', job], check=True, timeout=60)
    info = _wait(job)
    assert info.state == 'CANCELLED' and info.finished, info
    assert 'cancelled' in info.reason
    # exit_code is whatever the interrupted script/srun returned (-15, 143, 1...): not asserted.


def test_finished_job_found_in_completion_log(slurm_cluster, tmp_path):
    job = _submit(tmp_path, 'comp', ['true'])
    assert _wait(job).state == 'COMPLETED'
    # The fallback used once slurmctld has forgotten the job (after MinJobAge).
    deadline = time.monotonic() + 30
    while job not in slurm._jobcomp([job]) and time.monotonic() < deadline:
        time.sleep(0.25)
    info = slurm._jobcomp([job])[job]
    assert (info.state, info.exit_code, info.finished) == ('COMPLETED', 0, True), info


def test_unknown_job(slurm_cluster):
    infos = slurm.query(['987654321', 'not-a-job'])
    for job_id, info in infos.items():
        assert (info.job_id, info.state, info.finished) == (job_id, 'UNKNOWN', True)
        assert 'not' in info.reason
    slurm.cancel(['987654321'])  # unknown: ignored


def test_submit_failure_raises(slurm_cluster, tmp_path):
    with pytest.raises(slurm.SlurmError, match='sbatch'):
        _submit(tmp_path, 'bad', ['true'], partition='no-such-partition')


def test_gpu_request_reaches_sbatch(slurm_cluster, tmp_path):
    # The test cluster has no GPUs (no gres.conf): sbatch must refuse --gres=gpu:1 with its reason.
    with pytest.raises(slurm.SlurmError, match='gres'):
        _submit(tmp_path, 'gpu', ['true'], gpus=1)
    assert '#SBATCH --gres=gpu:1\n' in (tmp_path / 'job.sh').read_text()
