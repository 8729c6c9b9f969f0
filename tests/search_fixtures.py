"""What the search tests share: the tiny (but not degenerate) demo search, its command
lines, and exact readers of what a search leaves behind (journal, trajectory, trial
losses), so that two searches can be compared number for number.

The tiny search trains its proxies long enough, with a learning rate high enough, that
they learn the larger classes: candidates get distinct rewards and the policy mean
moves, so a resume that replays the wrong random state, a trial that trains the wrong
candidate or an update computed from the wrong rewards changes the numbers compared.
"""
import json
import os
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME = 'deeplabv3plus_r18tiny-d8_search-miou_1xb8-300_asldemo-64x64'
CONFIG = os.path.join(ROOT, 'configs', 'search', 'demo', NAME + '.py')
ITERS = 30
#: 2 steps x 3 candidates of a 30-iteration proxy trained with RMSprop (which learns the
#: larger classes in 30 iterations; SGD needs hundreds), 16 hold-out images, every
#: iteration logged (the per-iteration losses are compared between executors); the two
#: step means re-evaluated with one more proxy seed each
TINY = ['search.num_steps=2', 'search.num_samples=3', 'search.holdout.num=16',
        f'train_cfg.max_iters={ITERS}', f'param_scheduler.0.end={ITERS}',
        'optim_wrapper.optimizer.type=RMSprop', 'optim_wrapper.optimizer.lr=0.001',
        'default_hooks.logger.interval=1', 'search.reevaluate.top=2',
        'search.reevaluate.seeds=1']
STEPS, SAMPLES, REEVAL = 2, 3, 2


def load_tool(name):
    """The module of ``tools/<name>.py`` or ``tools/analysis/<name>.py`` (registered under
    ``name``)."""
    import importlib.util
    if name not in sys.modules:
        path = os.path.join(ROOT, 'tools', name + '.py')
        if not os.path.isfile(path):
            path = os.path.join(ROOT, 'tools', 'analysis', name + '.py')
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def env(**extra):
    """The tests' environment: one thread per process (trials give the same numbers with the
    same thread count, and two trials at once then fit two cores), ``tests/`` on the path."""
    tests = os.path.join(ROOT, 'tests')  # the tests' hooks (asl_search_hooks) for trials
    out = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', PYTHON=sys.executable,
               PYTHONUNBUFFERED='1', PYTHONPATH=os.pathsep.join(
                   [tests] + [p for p in os.environ.get('PYTHONPATH', '').split(os.pathsep)
                              if p and p != tests]))
    out.pop('ASL_SEARCH_KILL_AT', None)
    out.update(extra)
    return out


def search_cmd(work_dir, *extra, options=(), killable=False):
    """``tools/search.py`` on the tiny search (``options``: more ``--cfg-options``;
    ``killable``: through ``tests/killable_search.py``, which obeys ``ASL_SEARCH_KILL_AT``)."""
    script = os.path.join(ROOT, 'tests', 'killable_search.py') if killable else \
        os.path.join(ROOT, 'tools', 'search.py')
    return [sys.executable, script, CONFIG, '--work-dir', str(work_dir), '--seed', '1',
            '--threads-per-trial', '1', *extra, '--cfg-options', *TINY, *options]


def run(cmd, timeout=900, **kwargs):
    """Run a command to its end; its CompletedProcess (text output captured)."""
    kwargs.setdefault('env', env())
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          **kwargs)


def search_in_process(cmd):
    """``tools/search.py``'s own function called in this process with the arguments of
    ``cmd`` (a ``search_cmd`` list): (exit status, what it wrote to stderr). For commands
    that must stop before anything is launched (command-line and config errors): no
    interpreter to start and no MMSeg to import again."""
    import contextlib
    import io

    from asl.search.cli import search_main
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = search_main([str(a) for a in cmd[2:]])
    return code, err.getvalue()


def tail(out):
    return out.stdout[-3000:] + out.stderr[-3000:]


# ------------------------------------------------------------------------ processes
def alive(pid):
    """A running (not zombie) process."""
    try:
        with open(f'/proc/{pid}/stat') as f:
            return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except OSError:
        return False


def wait_dead(pids, timeout=30.0):
    """Poll until none of ``pids`` runs; return those still running at the deadline."""
    deadline = time.time() + timeout
    while True:
        left = [p for p in pids if alive(p)]
        if not left or time.time() > deadline:
            return left
        time.sleep(0.05)


def descendants(pid):
    """Every live process below ``pid`` (children, grandchildren...), from /proc."""
    parent = {}
    for name in os.listdir('/proc'):
        if name.isdigit():
            try:
                with open(f'/proc/{name}/stat') as f:
                    parent[int(name)] = int(f.read().rsplit(')', 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    out, todo = set(), [pid]
    while todo:
        p = todo.pop()
        for child, par in parent.items():
            if par == p and child not in out:
                out.add(child)
                todo.append(child)
    return {p for p in out if alive(p)}


def wait_for(pred, proc, what, timeout=900):
    """Poll ``pred()`` until it returns something true, while ``proc`` runs."""
    deadline = time.time() + timeout
    while True:
        value = pred()
        if value:
            return value
        assert proc.poll() is None, f'the search ended before {what}'
        assert time.time() < deadline, f'timed out waiting for {what}'
        time.sleep(0.05)


def sigkill_after_launches(cmd, work_dir, n, what):
    """Start a search, SIGKILL its controller once ``n`` trials are journaled as launched;
    those launch events."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)

    def launched():
        ev = events_of(work_dir, 'trial_launched')
        return ev if len(ev) >= n else None

    try:
        return wait_for(launched, proc, what)
    finally:  # the controller only: what it launched must outlive it
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def kill_group(proc):
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


# ------------------------------------------------------------------------ what it left
def journal(work_dir):
    """The complete events of a search's journal (a torn last line is left out)."""
    path = os.path.join(str(work_dir), 'journal.jsonl')
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.endswith('\n')]


def events_of(work_dir, kind, **match):
    return [e for e in journal(work_dir) if e['event'] == kind
            and all(e.get(k) == v for k, v in match.items())]


def trajectory(work_dir):
    """Everything a search decided, exactly: the initial policy and random state, then per
    step the policy mean, the candidates, the random state after sampling, the reward of
    every candidate, the update's statistics and the policy after it (mean, ``u`` and
    Adam's moments and step), the re-evaluation (what, with which seeds, the rewards, the
    choice) and the final choice of ``best.json``."""
    out = dict(start=None, steps=[], reeval=None, best=None)
    for e in journal(work_dir):
        kind = e['event']
        if kind == 'reeval_started':
            out['reeval'] = dict(entries=e['entries'], candidates=e['candidates'],
                                 seeds=e['seeds'], rewards={}, failures={}, finished=None)
        elif kind == 'reeval_finished':
            out['reeval']['finished'] = dict(scores=e['scores'], chosen=e['chosen'])
        elif e.get('phase') == 'reeval' and kind == 'trial_finished':
            assert e['index'] not in out['reeval']['rewards'], ('finished twice', e)
            out['reeval']['rewards'][e['index']] = e['reward']
        elif e.get('phase') == 'reeval' and kind == 'trial_failed':
            out['reeval']['failures'].setdefault(e['index'], []).append(
                (e['attempt'], e['kind'], e['final']))
        elif kind == 'search_started':
            out['start'] = dict(policy=e['policy'], rng=e['rng'], fingerprint=e['fingerprint'])
        elif kind == 'step_started':
            assert e['step'] == len(out['steps'])
            out['steps'].append(dict(mu=e['mu'], candidates=e['candidates'], rng=e['rng'],
                                     rewards={}, failures={}, update=None))
        elif kind == 'trial_finished':
            step = out['steps'][e['step']]
            assert e['index'] not in step['rewards'], ('finished twice', e)
            step['rewards'][e['index']] = e['reward']
        elif kind == 'trial_failed':
            out['steps'][e['step']]['failures'].setdefault(e['index'], []).append(
                (e['attempt'], e['kind'], e['final']))
        elif kind == 'policy_updated':
            out['steps'][e['step']]['update'] = dict(policy=e['policy'], mu=e['mu'],
                                                     rewards=e['rewards'], stats=e['stats'])
    best = os.path.join(str(work_dir), 'best.json')
    if os.path.exists(best):
        b = json.load(open(best))
        out['best'] = dict(raw_theta=b['raw_theta'], theta=b['theta'], best_step=b['best_step'],
                           steps=b['steps'], reevaluation=b.get('reevaluation'))
    return out


def event_sets(work_dir):
    """The journal as a sequence of per-step sets of ``(kind, step, candidate, attempt)``
    (a trial relaunched after a kill shows once; the order of trials within a step,
    which depends on timing, does not matter)."""
    groups = []
    for e in journal(work_dir):
        key = (e['event'], e.get('step'), e.get('index'), e.get('attempt'))
        step = e.get('step')
        if not groups or groups[-1][0] != step:
            groups.append((step, set()))
        groups[-1][1].add(key)
    return groups


def trial_losses(trial_dir):
    """Every logged training value of a trial whose key contains ``loss``, per
    iteration, from MMEngine's ``scalars.json``."""
    found = []
    for sub in sorted(os.listdir(trial_dir)):
        path = os.path.join(trial_dir, sub, 'vis_data', 'scalars.json')
        if os.path.isfile(path):
            found.append(path)
    assert len(found) == 1, (trial_dir, found)
    out = []
    with open(found[0]) as f:
        for line in f:
            rec = json.loads(line)
            if 'lr' in rec:  # a training line
                out.append((rec['iter'], {k: v for k, v in rec.items() if 'loss' in k}))
    return out


def search_losses(work_dir):
    """``{(step, candidate): per-iteration losses}`` of every finished trial (step -1: the
    re-evaluation)."""
    return {(e['step'], e['index']): trial_losses(_trial_dir(work_dir, e))
            for e in events_of(work_dir, 'trial_finished')}


def _trial_dir(work_dir, e):
    step = 'reeval' if e.get('phase') == 'reeval' else f'step{e["step"]:02d}'
    return os.path.join(str(work_dir), 'trials', step, f'cand{e["index"]:02d}',
                        f'attempt{e["attempt"]}')


def assert_same_search(work_dir, ref_dir, events=True):
    """Two searches decided exactly the same things (see :func:`trajectory`); with
    ``events``, their journals also hold the same per-step sets of events."""
    a, b = trajectory(work_dir), trajectory(ref_dir)
    assert a['start'] == b['start']
    assert len(a['steps']) == len(b['steps'])
    for k, (x, y) in enumerate(zip(a['steps'], b['steps'])):
        for key in ('mu', 'rng', 'candidates', 'rewards', 'failures', 'update'):
            assert x[key] == y[key], f'step {k}: {key} differs:\n{x[key]}\n{y[key]}'
    assert a['reeval'] == b['reeval'], f're-evaluation differs:\n{a["reeval"]}\n{b["reeval"]}'
    assert a['best'] == b['best']
    if events:
        assert event_sets(work_dir) == event_sets(ref_dir)


def assert_not_degenerate(work_dir):
    """The search's candidates got at least three distinct rewards and every update moved
    the policy mean (so that comparing two searches can tell them apart)."""
    t = trajectory(work_dir)
    rewards = [r for s in t['steps'] for r in s['rewards'].values()]
    assert len(set(rewards)) >= 3, rewards
    for s in t['steps']:
        assert not s['update']['stats']['skipped']
        assert s['update']['mu'] != s['mu']
        assert any(v != 0.0 for v in s['update']['policy']['exp_avg'])
    assert t['steps'][1]['mu'] != t['steps'][0]['mu']
