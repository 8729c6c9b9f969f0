import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# Without a GPU the Triton engine's kernels run through Triton's interpreter. Triton reads
# the variable when it defines its own functions, so it is set before anything (torch's
# compiler among others) imports Triton.
if not torch.cuda.is_available():
    os.environ.setdefault('TRITON_INTERPRET', '1')

# With pytest-xdist (``make test`` runs a worker per core) each worker runs on its own
# share of the cores (its CPU affinity, which every process it starts inherits: trainings,
# searches and their trials then size their threads to it), so that the workers never
# oversubscribe the machine: two 2-thread trainings on 2 cores ran 3 to 4 times slower
# than one. The Slurm cluster, a daemon shared by the workers, is started on every core.
if hasattr(os, 'sched_getaffinity'):
    ALL_CPUS = sorted(os.sched_getaffinity(0))
    if os.environ.get('PYTEST_XDIST_WORKER'):
        _workers = int(os.environ.get('PYTEST_XDIST_WORKER_COUNT', '1'))
        _index = int(os.environ['PYTEST_XDIST_WORKER'].lstrip('gw') or 0)
        _share = len(ALL_CPUS) // _workers
        if _share >= 1 and _workers > 1:
            os.sched_setaffinity(0, ALL_CPUS[_index * _share:(_index + 1) * _share])
        from asl.utils import usable_cores
        torch.set_num_threads(usable_cores())
else:  # pragma: no cover (not Linux)
    ALL_CPUS = None


#: tests marked by name (``file::test``) beside those marked by their fixtures
_MARKS = {
    'build': ('test_package.py::test_wheel_installs_and_trains',
              'test_gpu_scripts.py::test_triton_kernels_compile_for_sm90'),
    'network': ('test_gpu_scripts.py::test_make_kit_then_run_dry',),
    # real trainings, searches or tools end to end, and the tests over about 8 s
    'slow': (
        'test_benchmark_loss.py::test_engine_rows_targets_and_accuracy',
        'test_benchmark_loss.py::test_memory_mode',
        'test_benchmark_loss.py::test_without_mmseg_and_with_torch_compile',
        'test_benchmark_search.py::test_tiny_run_forked',
        'test_camvid.py::test_table_end_to_end_then_resumed',
        'test_compare_losses.py::test_end_to_end_and_resume',
        'test_compile.py::test_plain_path_is_one_graph',
        'test_demo.py::test_demo_tiny_killed_during_a_retraining_then_resumed',
        'test_halving.py::test_halving_compare_runs_both_searches_and_the_promoted_end_as_'
        'uninterrupted',
        'test_engine_triton.py::test_deterministic_run_to_run',
        'test_engine_triton.py::test_without_gradient_and_backward_twice',
        'test_mmseg.py::test_asl_metric_multi_process',
        'test_prefork.py::test_forked_training_matches_a_fresh_process',
        'test_prefork.py::test_local_executor_forks_times_out_and_survives_a_dead_launcher',
        'test_search.py::test_config_errors_before_anything_is_launched',
        'test_search.py::test_failures_are_recorded_retried_and_do_not_kill_the_search',
        'test_search.py::test_sigterm_stops_the_search_and_its_trials',
        'test_search_packing.py::test_a_packed_trial_that_runs_out_of_memory_or_hangs_fails_alone',
        'test_search_packing.py::test_packing_options_are_checked',
        'test_training.py::test_asl_retrain_sh_end_to_end',
        'test_training.py::test_asl_retrain_sh_errors',
        'test_training.py::test_kill_after_first_checkpoint_then_resume',
        'test_training.py::test_tools_test_writes_all_metrics',
        'test_training.py::test_torchrun_two_processes_train_one_model',
        'test_warm_start.py::test_a_real_search_trains_the_warm_start_once_and_its_proxies_'
        'load_it',
    ),
}
#: fixtures that run real trainings or searches: their tests are slow
_SLOW_FIXTURES = ('reference_search',)


def pytest_collection_modifyitems(config, items):
    for item in items:
        name = f'{os.path.basename(str(item.fspath))}::{item.originalname}'
        fixtures = set(getattr(item, 'fixturenames', ()))
        if 'slurm_cluster' in fixtures:
            item.add_marker(pytest.mark.slurm)
            item.add_marker(pytest.mark.slow)
        if fixtures & set(_SLOW_FIXTURES):
            item.add_marker(pytest.mark.slow)
        for mark, names in _MARKS.items():
            if name in names:
                item.add_marker(getattr(pytest.mark, mark))
                item.add_marker(pytest.mark.slow)
    # The order the workers take the tests in (``make test`` hands them out one by one,
    # --maxschedchunk 1): one test of the session's reference search first (the worker
    # that takes it runs the search while the other runs the other slow tests), then the
    # other slow tests, those that read the reference search after them, and the quick
    # tests last, which even out the workers' ends.
    def rank(item):
        if item.get_closest_marker('slow') is None:
            return 3
        return 2 if set(getattr(item, 'fixturenames', ())) & set(_SLOW_FIXTURES) else 1
    items.sort(key=rank)
    first = next((i for i, item in enumerate(items) if rank(item) == 2), None)
    if first is not None:
        items.insert(0, items.pop(first))


def blob_labels(n, c, h, w, seed=0, ignore_frac=0.05, all_classes=True):
    """Spatially coherent random labels (upsampled coarse grid), every class present."""
    g = torch.Generator().manual_seed(seed)
    while True:
        coarse = torch.randint(0, c, (n, 1, max(2, h // 6), max(2, w // 6)), generator=g)
        lab = torch.nn.functional.interpolate(coarse.float(), size=(h, w),
                                              mode='nearest').long()[:, 0]
        if ignore_frac:
            lab[torch.rand(lab.shape, generator=g) < ignore_frac] = 255
        if not all_classes or all((lab == k).any() for k in range(c)):
            return lab


@pytest.fixture
def labels():
    return blob_labels


def _shared_dir(tmp_path_factory):
    """A folder that every pytest-xdist worker of this session sees (the session's own
    temporary folder when the tests run in one process)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get('PYTEST_XDIST_WORKER') else base


@pytest.fixture(scope='session')
def reference_search(tmp_path_factory):
    """The uninterrupted tiny search (``search_fixtures.TINY``), run once per session
    through the real ASL_search.sh into a temporary work directory (``ASL_WORK_DIR``);
    the searches that must end the same way are compared with it. With pytest-xdist the
    first worker that needs it runs it, under a file lock, and the others read its result.

    Returns:
        (work_dir, CompletedProcess)
    """
    pytest.importorskip('mmseg')
    import json
    import subprocess

    from filelock import FileLock

    from search_fixtures import NAME, TINY, env
    shared = _shared_dir(tmp_path_factory)
    work, done = shared / 'reference' / 'search', shared / 'reference' / 'done.json'
    with FileLock(str(shared / 'reference.lock')):
        if not done.exists():
            work.parent.mkdir(parents=True, exist_ok=True)
            out = subprocess.run(['bash', 'ASL_search.sh', NAME + '.py', '0', '1',
                                  '--threads-per-trial', '1', '--cfg-options', *TINY],
                                 cwd=ROOT, env=env(ASL_WORK_DIR=str(work)),
                                 capture_output=True, text=True, timeout=1200)
            done.write_text(json.dumps(dict(args=out.args, returncode=out.returncode,
                                            stdout=out.stdout, stderr=out.stderr)))
    rec = json.loads(done.read_text())
    return work, subprocess.CompletedProcess(**rec)


# ----------------------------------------------------------------------------- Slurm
CLUSTER_SH = os.path.join(ROOT, 'tools', 'slurm', 'cluster.sh')
#: the name prefix of the jobs the Slurm tests submit themselves
SLURM_PREFIX = f'asl-test-{os.getpid()}-'


def _cluster(action, timeout=900):
    import subprocess
    every_core = (lambda: os.sched_setaffinity(0, ALL_CPUS)) if ALL_CPUS else None
    return subprocess.run(['bash', CLUSTER_SH, action], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=timeout,
                          preexec_fn=every_core)


@pytest.fixture(scope='session')
def slurm_cluster(tmp_path_factory):
    """The real one-node Slurm cluster of tools/slurm/cluster.sh, started once for the
    session (and stopped at its end if this session started it: with pytest-xdist, by the
    last worker that used it, counted under a file lock). Skips only when the script exits
    3 (Slurm/munge cannot be installed here); any other failure to bring the cluster up is
    an error of every test that uses it."""
    import json
    import re

    from filelock import FileLock

    from asl.search.executors import slurm_cli as slurm
    shared = _shared_dir(tmp_path_factory)
    lock, users = FileLock(str(shared / 'slurm.lock')), shared / 'slurm_users.json'
    with lock:
        st = json.loads(users.read_text()) if users.exists() else dict(count=0, started=False)
        if st['count'] == 0:  # nobody of this session uses it: was it running before?
            st['started'] = 'slurmctld: running' not in _cluster('status', timeout=60).stdout
        proc = _cluster('start')
        if proc.returncode == 3:
            pytest.skip(f'Slurm is not available: {proc.stderr.strip() or proc.stdout.strip()}')
        if proc.returncode != 0:
            raise RuntimeError(f'{CLUSTER_SH} start exited with {proc.returncode}:\n'
                               f'{proc.stdout}\n{proc.stderr}')
        st['count'] += 1
        users.write_text(json.dumps(st))
    saved = os.environ.get('SLURM_CONF')
    m = re.search(r'^export SLURM_CONF=(\S+)$', proc.stdout, re.M)
    if m:
        os.environ['SLURM_CONF'] = m.group(1)
    try:
        yield m.group(1) if m else None
    finally:
        try:
            live = slurm.list_jobs(SLURM_PREFIX)
            if live:
                slurm.cancel(list(live))
        finally:
            if saved is None:
                os.environ.pop('SLURM_CONF', None)
            else:
                os.environ['SLURM_CONF'] = saved
            with lock:
                st = json.loads(users.read_text())
                st['count'] -= 1
                if st['count'] == 0 and st['started']:
                    _cluster('stop', timeout=120)
                    st['started'] = False
                users.write_text(json.dumps(st))
