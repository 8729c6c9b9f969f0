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

# With pytest-xdist (``make test`` runs a worker per core) each worker's own torch work
# takes its share of the cores, so that the workers do not oversubscribe the machine.
if os.environ.get('PYTEST_XDIST_WORKER'):
    _workers = int(os.environ.get('PYTEST_XDIST_WORKER_COUNT', '1'))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // _workers))


#: tests marked by name (``file::test``) beside those marked by their fixtures
_MARKS = {
    'build': ('test_package.py::test_wheel_installs_and_trains',
              'test_gpu_scripts.py::test_triton_kernels_compile_for_sm90'),
    'network': ('test_gpu_scripts.py::test_make_kit_then_run_dry',),
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
    return subprocess.run(['bash', CLUSTER_SH, action], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=timeout)


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
