"""Thin wrapper around the Slurm command line (``sbatch``, ``squeue``, ``sacct``, ``scancel``).

Standard library only: the search runs trials as Slurm batch jobs through these functions and
polls them with :func:`query`. Nothing here imports torch or mmseg.

Where a finished job's state comes from, in order:

1. ``squeue --states=all``: every job slurmctld still holds, running or finished (finished jobs stay
   there for ``MinJobAge`` seconds; ``tools/slurm/cluster.sh`` sets a day);
2. ``sacct``, when the cluster has job accounting (slurmdbd);
3. the job completion log, when the cluster is configured with ``JobCompType=jobcomp/filetxt``
   (one line per finished job; it has the state and exit code but no reason);
4. otherwise the job is reported as ``UNKNOWN``, finished, "not found".

Example:
    >>> job = submit(['python', 'train.py'], job_name='asl-trial-3', workdir='/tmp/t3',
    ...              log_path='/tmp/t3/log.txt', time_limit_s=600)   # doctest: +SKIP
    >>> query([job])[job].state                                       # doctest: +SKIP
    'PENDING'
"""
import math
import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from ...utils import atomic_write_text

__all__ = ['SlurmError', 'JobInfo', 'slurm_available', 'submit', 'query', 'cancel', 'list_jobs',
           'FINISHED_STATES', 'LIVE_STATES']

#: States after which a job will not run again (Slurm's base job states, plus what sacct adds).
FINISHED_STATES = frozenset({
    'COMPLETED', 'FAILED', 'CANCELLED', 'TIMEOUT', 'PREEMPTED', 'NODE_FAIL', 'OUT_OF_MEMORY',
    'BOOT_FAIL', 'DEADLINE', 'REVOKED', 'UNKNOWN'})
#: States of a job that is queued, running or about to run again.
LIVE_STATES = frozenset({
    'PENDING', 'RUNNING', 'SUSPENDED', 'COMPLETING', 'CONFIGURING', 'REQUEUED', 'REQUEUE_FED',
    'REQUEUE_HOLD', 'RESIZING', 'SIGNALING', 'SPECIAL_EXIT', 'STAGE_OUT', 'STOPPED',
    'RESV_DEL_HOLD'})

_SEP = '\x1f'  # squeue field terminator: never part of a job name, comment or reason
_SQUEUE_FIELDS = ('JobID', 'State', 'exit_code', 'Reason', 'Comment', 'Name', 'WorkDir')
_CANCEL_PREFIX = 'cancelled: '
_JOB_ID = re.compile(r'^\d+(?:[_+]\d+)?$')
_TIMEOUT_S = 60.0

# Slurm's reason codes that are worth a word of explanation in JobInfo.reason.
_REASONS = {
    'Resources': 'waiting for resources',
    'Priority': 'waiting behind higher-priority jobs',
    'BeginTime': 'waiting for its begin time',
    'Dependency': 'waiting for a dependency',
    'DependencyNeverSatisfied': 'a dependency can never be satisfied',
    'JobHeldUser': 'held by the user',
    'JobHeldAdmin': 'held by an administrator',
    'PartitionDown': 'the partition is down',
    'PartitionInactive': 'the partition is inactive',
    'PartitionTimeLimit': 'the time limit exceeds the partition limit',
    'ReqNodeNotAvail': 'a requested node is not available',
    'NodeDown': 'a node of the job is down',
    'NonZeroExitCode': 'non-zero exit code',
    'TimeLimit': 'time limit reached',
    'InactiveLimit': 'inactive limit reached',
    'OutOfMemory': 'out of memory',
    'BadConstraints': 'the constraints cannot be satisfied',
    'launch_failed_requeued_held': 'launch failed; requeued and held',
}


class SlurmError(RuntimeError):
    """A Slurm command failed (the message carries its stderr)."""


@dataclass(frozen=True)
class JobInfo:
    """What Slurm knows about one job.

    Attributes:
        job_id: The job id, as returned by :func:`submit`.
        state: Slurm's base job state, e.g. ``PENDING``, ``RUNNING``, ``COMPLETED``, ``FAILED``,
            ``CANCELLED``, ``TIMEOUT``, ``PREEMPTED``, ``NODE_FAIL``, ``OUT_OF_MEMORY``; ``UNKNOWN``
            when no source knows the job.
        reason: Human-readable explanation: why it waits, why it ended, who/what cancelled it.
        exit_code: For a finished job, the batch script's exit status, or ``-N`` when it was killed
            by signal ``N`` (the convention of :attr:`subprocess.Popen.returncode`); ``None`` while
            the job is live, or when it never ran or the source does not say. For a cancelled or
            timed-out job it is whatever the interrupted script returned (``-15``, ``143``, ``1``
            ...): judge those by ``state``.
        finished: True when the job will not run any more (a terminal state).
        name: The job's name, where the source reports it (squeue); else ``''``.
        work_dir: The job's working directory, where the source reports it (squeue).
    """

    job_id: str
    state: str
    reason: str
    exit_code: Optional[int]
    finished: bool
    name: str = ''
    work_dir: str = ''


# ----------------------------------------------------------------------------------------- helpers
def _run(args: Sequence[str], timeout: float = _TIMEOUT_S) -> subprocess.CompletedProcess:
    """Runs a Slurm command, capturing text output.

    Raises:
        SlurmError: The command is missing or did not finish within ``timeout`` seconds.
    """
    try:
        return subprocess.run(list(args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              stdin=subprocess.DEVNULL, universal_newlines=True, timeout=timeout)
    except FileNotFoundError as e:
        raise SlurmError(f'{args[0]}: command not found (is Slurm installed?)') from e
    except subprocess.TimeoutExpired as e:
        raise SlurmError(f'{" ".join(args[:2])} did not answer within {timeout:.0f}s') from e


def _describe(args: Sequence[str], proc: subprocess.CompletedProcess) -> str:
    err = (proc.stderr or proc.stdout or '').strip()
    return f'{shlex.join(args)} exited with {proc.returncode}: {err or "(no output)"}'


def _directive_value(value: str) -> str:
    """Quotes a value for an ``#SBATCH`` line (sbatch reads double quotes and backslashes)."""
    if '\n' in value or '\r' in value:
        raise ValueError(f'newline in an sbatch option value: {value!r}')
    if re.fullmatch(r'[A-Za-z0-9_@%+=:,./~-]+', value):
        return value
    return '"' + value.replace('\\', '\\\\').replace('"', '\\"') + '"'


def _filename_pattern(path: str) -> str:
    """Escapes ``%`` so that sbatch takes an output path literally (no ``%j`` expansion)."""
    return path.replace('%', '%%')


def _base_state(state: str) -> str:
    """``'CANCELLED by 0'`` -> ``'CANCELLED'``; ``'RUNNING+'`` -> ``'RUNNING'``."""
    state = state.strip().split(' ', 1)[0].rstrip('+*').upper()
    return state or 'UNKNOWN'


def _exit_from_pair(text: str) -> Tuple[Optional[int], Optional[int]]:
    """Parses Slurm's ``EXIT:SIGNAL`` notation (sacct, scontrol, jobcomp)."""
    m = re.fullmatch(r'\s*(\d+):(\d+)\s*', text or '')
    if not m:
        return None, None
    return int(m.group(1)), int(m.group(2))


def _exit_from_status(text: str) -> Tuple[Optional[int], Optional[int]]:
    """Parses the raw wait status of ``squeue -O exit_code``."""
    try:
        status = int(text)
    except (TypeError, ValueError):
        return None, None
    return (status >> 8) & 0xff, status & 0x7f


def _exit_code(state: str, code: Optional[int], sig: Optional[int]) -> Optional[int]:
    if state not in FINISHED_STATES or code is None:
        return None
    if sig:
        return -sig
    if state == 'CANCELLED' and code == 0:
        return None  # cancelled before it ran, or the source does not record the signal
    return code


def _reason(state: str, slurm_reason: str, exit_code: Optional[int], comment: str = '',
            cancelled_by: str = '') -> str:
    """Builds a human-readable reason from Slurm's reason code and the outcome."""
    slurm_reason = (slurm_reason or '').strip()
    if slurm_reason in ('None', '(null)', 'n/a'):
        slurm_reason = ''
    explained = _REASONS.get(slurm_reason, slurm_reason)
    if exit_code is None:
        outcome = ''
    elif exit_code < 0:
        outcome = f'killed by signal {-exit_code}'
    else:
        outcome = f'exit code {exit_code}'
    if state == 'CANCELLED':
        if comment.startswith(_CANCEL_PREFIX):
            text = comment
        else:
            text = 'cancelled' + (f' by {cancelled_by}' if cancelled_by else
                                  ' (scancel or an administrator)')
        parts = [text, f'while {explained}' if explained else '']
    elif state == 'COMPLETED':
        parts = ['completed', outcome]
    elif state == 'FAILED':
        parts = ['failed', outcome if outcome else explained]
    elif state == 'TIMEOUT':
        parts = ['reached its time limit']
    elif state == 'PREEMPTED':
        parts = ['preempted by another job']
    elif state == 'NODE_FAIL':
        parts = ['a node of the job failed', explained]
    elif state == 'OUT_OF_MEMORY':
        parts = ['ran out of memory', outcome]
    elif state == 'BOOT_FAIL':
        parts = ['a node failed to boot', explained]
    elif state == 'DEADLINE':
        parts = ['missed its deadline']
    elif state == 'RUNNING':
        parts = ['running']
    elif state == 'PENDING':
        parts = ['pending', explained]
    else:
        parts = [state.lower().replace('_', ' '), explained, outcome]
    return ': '.join(p for p in parts if p)


# ------------------------------------------------------------------------------------------- API
def slurm_available() -> bool:
    """Tells whether Slurm can take jobs from here.

    Returns:
        True when ``sbatch`` and ``squeue`` are on PATH and ``sinfo`` gets an answer from the
        controller.
    """
    if not (shutil.which('sbatch') and shutil.which('squeue') and shutil.which('sinfo')):
        return False
    try:
        proc = _run(['sinfo', '-h', '-o', '%P'], timeout=20)
    except SlurmError:
        return False
    return proc.returncode == 0


def submit(command: Sequence[str], *, job_name: str, workdir: str, log_path: str,
           partition: Optional[str] = None, gpus: int = 0, cpus_per_task: Optional[int] = None,
           ntasks: int = 1, nodes: Optional[int] = None, time_limit_s: Optional[float] = None,
           extra_args: Sequence[str] = (), env: Optional[Mapping[str, str]] = None) -> str:
    """Writes ``workdir/job.sh`` and submits it with ``sbatch``.

    The script runs ``command`` through ``srun``, so a job with ``ntasks > 1`` starts one process
    per task (each sees ``SLURM_PROCID``/``SLURM_NTASKS``). All sbatch options are written into the
    script as ``#SBATCH`` lines (``extra_args`` excepted), so ``sbatch job.sh`` resubmits the job by
    hand.

    Args:
        command: Program and arguments (shell-quoted into the script; no shell expansion).
        job_name: Slurm job name (:func:`list_jobs` finds jobs by its prefix).
        workdir: Directory for ``job.sh``; also the job's working directory. Created if missing.
        log_path: File receiving the job's stdout and stderr (taken literally, ``%`` included;
            a relative path is relative to ``workdir``). Its directory is created if missing.
        partition: Partition, or None for the cluster's default one.
        gpus: GPUs per node, requested as ``--gres=gpu:N`` when > 0.
        cpus_per_task: CPUs per task, or None for Slurm's default.
        ntasks: Number of tasks (processes).
        nodes: Number of nodes, or None for Slurm's choice.
        time_limit_s: Wall-clock limit in seconds, rounded up to whole minutes; None for the
            partition's default.
        extra_args: More sbatch options, e.g. ``['--mem=8G', '--qos', 'high']``, passed to sbatch
            on its command line (they override the script's ``#SBATCH`` lines) and noted in a
            comment of ``job.sh``. They apply to the allocation, not to the inner ``srun``.
        env: Variables exported in the job on top of the submitting environment (sbatch's
            default ``--export=ALL``).

    Returns:
        The job id.

    Raises:
        ValueError: An argument is out of range.
        SlurmError: sbatch is missing or refused the job (its stderr is in the message).
    """
    command = [str(c) for c in command]
    if not command:
        raise ValueError('empty command')
    if ntasks < 1:
        raise ValueError(f'ntasks must be >= 1, got {ntasks}')
    if gpus < 0:
        raise ValueError(f'gpus must be >= 0, got {gpus}')
    if cpus_per_task is not None and cpus_per_task < 1:
        raise ValueError(f'cpus_per_task must be >= 1, got {cpus_per_task}')
    if nodes is not None and nodes < 1:
        raise ValueError(f'nodes must be >= 1, got {nodes}')
    if time_limit_s is not None and not time_limit_s > 0:
        raise ValueError(f'time_limit_s must be > 0, got {time_limit_s}')
    workdir = os.path.abspath(workdir)
    log_path = os.path.abspath(os.path.join(workdir, log_path))
    os.makedirs(workdir, exist_ok=True)
    os.makedirs(os.path.dirname(log_path), exist_ok=True)

    opts: List[Tuple[str, str]] = [
        ('--job-name', job_name),
        ('--chdir', workdir),
        ('--output', _filename_pattern(log_path)),
        ('--error', _filename_pattern(log_path)),
        ('--ntasks', str(ntasks)),
    ]
    if nodes is not None:
        opts.append(('--nodes', str(nodes)))
    if cpus_per_task is not None:
        opts.append(('--cpus-per-task', str(cpus_per_task)))
    if partition:
        opts.append(('--partition', partition))
    if gpus > 0:
        opts.append(('--gres', f'gpu:{gpus}'))
    if time_limit_s is not None:
        opts.append(('--time', str(max(1, math.ceil(time_limit_s / 60.0)))))

    script = os.path.join(workdir, 'job.sh')
    lines = ['#!/bin/bash',
             '# Written by asl.search.executors.slurm_cli.submit; resubmit with: sbatch '
             + shlex.quote(script)]
    lines += [f'#SBATCH {k}={_directive_value(v)}' for k, v in opts]
    extra = [str(a) for a in extra_args]
    if extra:
        # Given to sbatch as arguments (directives cannot hold "--opt value" pairs), noted here.
        lines.append('# sbatch arguments at submission: ' + shlex.join(extra))
    for key, value in (env or {}).items():
        if not re.fullmatch(r'[A-Za-z_][A-Za-z0-9_]*', key):
            raise ValueError(f'invalid environment variable name {key!r}')
        lines.append(f'export {key}={shlex.quote(str(value))}')
    srun = ['srun', f'--ntasks={ntasks}']
    if cpus_per_task is not None:
        srun.append(f'--cpus-per-task={cpus_per_task}')
    lines.append('exec ' + ' '.join(srun) + ' -- ' + shlex.join(command))
    atomic_write_text(script, '\n'.join(lines) + '\n', mode=0o755)

    args = ['sbatch', '--parsable'] + extra + [script]
    proc = _run(args)
    if proc.returncode != 0:
        raise SlurmError(f'sbatch refused {script}: {(proc.stderr or proc.stdout).strip()}')
    out = proc.stdout.strip().splitlines()
    job_id = out[-1].split(';', 1)[0].strip() if out else ''  # "ID" or "ID;cluster"
    if not _JOB_ID.match(job_id):
        raise SlurmError(f'unexpected sbatch output: {proc.stdout.strip()!r} '
                         f'(stderr: {proc.stderr.strip()!r})')
    return job_id


def _squeue_format() -> str:
    """``-O`` format: each field unpadded, untruncated, terminated by :data:`_SEP`."""
    return ','.join(f'{name}:{_SEP}' for name in _SQUEUE_FIELDS)


def _squeue(args: Sequence[str]) -> Dict[str, JobInfo]:
    cmd = ['squeue', '--noheader', '-O', _squeue_format()] + list(args)
    proc = _run(cmd)
    if proc.returncode != 0:
        if 'Invalid job id' in proc.stderr:  # none of the requested ids is known to slurmctld
            return {}
        raise SlurmError(_describe(cmd, proc))
    jobs: Dict[str, JobInfo] = {}
    for line in proc.stdout.splitlines():
        fields = line.split(_SEP)
        if len(fields) < len(_SQUEUE_FIELDS):
            continue
        job_id, state, status, slurm_reason, comment, name, work_dir = (
            f.strip() for f in fields[:len(_SQUEUE_FIELDS)])
        state = _base_state(state)
        code, sig = _exit_from_status(status)
        exit_code = _exit_code(state, code, sig)
        jobs[job_id] = JobInfo(job_id, state, _reason(state, slurm_reason, exit_code, comment),
                               exit_code, state in FINISHED_STATES, name, work_dir)
    return jobs


def _sacct(job_ids: Sequence[str]) -> Dict[str, JobInfo]:
    """Finished jobs from accounting; empty when the cluster has none (sacct then fails)."""
    if not job_ids or not shutil.which('sacct'):
        return {}
    cmd = ['sacct', '--noheader', '--parsable2', '--allocations', '--jobs', ','.join(job_ids),
           '--format', 'JobID,State,ExitCode,Reason']
    try:
        proc = _run(cmd)
    except SlurmError:
        return {}
    if proc.returncode != 0:
        return {}  # e.g. "Slurm accounting storage is disabled"
    jobs: Dict[str, JobInfo] = {}
    for line in proc.stdout.splitlines():
        fields = line.split('|')
        if len(fields) < 4:
            continue
        job_id, raw_state, pair, slurm_reason = fields[:4]
        state = _base_state(raw_state)
        by = ''
        m = re.match(r'CANCELLED by (\d+)', raw_state.strip())
        if m:
            by = f'uid {m.group(1)}'
        code, sig = _exit_from_pair(pair)
        exit_code = _exit_code(state, code, sig)
        jobs[job_id] = JobInfo(job_id, state, _reason(state, slurm_reason, exit_code,
                                                      cancelled_by=by),
                               exit_code, state in FINISHED_STATES)
    return jobs


def _jobcomp_path() -> Optional[str]:
    proc = _run(['scontrol', 'show', 'config'])
    if proc.returncode != 0:
        return None
    conf = {}
    for line in proc.stdout.splitlines():
        key, sep, value = line.partition('=')
        if sep:
            conf[key.strip()] = value.strip()
    if conf.get('JobCompType') != 'jobcomp/filetxt':
        return None
    return conf.get('JobCompLoc') or None


def _jobcomp(job_ids: Sequence[str]) -> Dict[str, JobInfo]:
    """Finished jobs from the jobcomp/filetxt completion log (the last record of each id wins)."""
    wanted = set(job_ids)
    if not wanted:
        return {}
    path = _jobcomp_path()
    if not path or not os.path.isfile(path):
        return {}
    found: Dict[str, str] = {}
    with open(path, errors='replace') as f:
        for line in f:
            m = re.match(r'JobId=(\S+) ', line)
            if m and m.group(1) in wanted:
                found[m.group(1)] = line
    jobs: Dict[str, JobInfo] = {}
    for job_id, line in found.items():
        m_state = re.search(r' JobState=(\S+)', line)
        m_exit = re.search(r' ExitCode=(\S+)', line)
        state = _base_state(m_state.group(1)) if m_state else 'UNKNOWN'
        code, sig = _exit_from_pair(m_exit.group(1) if m_exit else '')
        exit_code = _exit_code(state, code, sig)
        jobs[job_id] = JobInfo(job_id, state, _reason(state, '', exit_code),
                               exit_code, state in FINISHED_STATES or state not in LIVE_STATES)
    return jobs


def query(job_ids: Sequence[str]) -> Dict[str, JobInfo]:
    """Reports the state of jobs, live or finished.

    Args:
        job_ids: Job ids from :func:`submit`.

    Returns:
        One :class:`JobInfo` per requested id. A job unknown to squeue, sacct and the completion
        log is ``UNKNOWN``, finished, with a reason saying it was not found.

    Raises:
        SlurmError: squeue could not reach the controller (so nothing can be concluded).
    """
    ids = list(dict.fromkeys(str(j).strip() for j in job_ids))
    result: Dict[str, JobInfo] = {}
    valid = [j for j in ids if _JOB_ID.match(j)]
    if valid:
        result.update(_squeue(['--states=all', '--jobs', ','.join(valid)]))
        missing = [j for j in valid if j not in result]
        if missing:
            result.update(_sacct(missing))
            missing = [j for j in missing if j not in result]
        if missing:
            result.update(_jobcomp(missing))
    out: Dict[str, JobInfo] = {}
    for j in ids:
        if j in result:
            out[j] = result[j]
        elif _JOB_ID.match(j):
            out[j] = JobInfo(j, 'UNKNOWN', f'job {j} was not found by squeue, sacct or the job '
                             'completion log', None, True)
        else:
            out[j] = JobInfo(j, 'UNKNOWN', f'{j!r} is not a Slurm job id', None, True)
    return out


def cancel(job_ids: Sequence[str], reason: Optional[str] = None) -> None:
    """Cancels jobs with ``scancel``; jobs that already finished (or are gone) are ignored.

    Args:
        job_ids: Job ids from :func:`submit`.
        reason: Optional words stored in the job's comment first, so that :func:`query` reports
            ``"cancelled: <reason>"`` as the job's reason.

    Raises:
        SlurmError: scancel failed for another reason (e.g. the controller is unreachable).
    """
    ids = [j for j in dict.fromkeys(str(j).strip() for j in job_ids) if _JOB_ID.match(j)]
    if not ids:
        return
    if reason:
        text = _CANCEL_PREFIX + ' '.join(reason.split())
        # Best effort: fails (harmlessly) for jobs that already ended.
        _run(['scontrol', 'update', f'JobId={",".join(ids)}', f'Comment={text}'])
    cmd = ['scancel'] + ids
    proc = _run(cmd)
    if proc.returncode == 0:
        return
    ignorable = ('already completing or completed', 'Invalid job id', 'Job has already finished')
    errors = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    if errors and all(any(s in ln for s in ignorable) for ln in errors):
        return
    raise SlurmError(_describe(cmd, proc))


def list_jobs(name_prefix: str) -> Dict[str, JobInfo]:
    """Finds the current user's live (pending or running) jobs by name prefix.

    Args:
        name_prefix: Start of the job names to match ('' matches all).

    Returns:
        ``{job_id: JobInfo}`` of the matching jobs.

    Raises:
        SlurmError: squeue failed.
    """
    cmd = ['squeue', '--noheader', '--user', str(os.getuid()), '-O', _squeue_format()]
    proc = _run(cmd)
    if proc.returncode != 0:
        raise SlurmError(_describe(cmd, proc))
    jobs: Dict[str, JobInfo] = {}
    for line in proc.stdout.splitlines():
        fields = line.split(_SEP)
        if len(fields) < len(_SQUEUE_FIELDS):
            continue
        job_id, state, _status, slurm_reason, comment, name, work_dir = (
            fields[:len(_SQUEUE_FIELDS)])
        job_id, state = job_id.strip(), _base_state(state)
        if state in FINISHED_STATES or not name.startswith(name_prefix):
            continue
        jobs[job_id] = JobInfo(job_id, state, _reason(state, slurm_reason, None, comment),
                               None, False, name.strip(), work_dir.strip())
    return jobs
