"""Real searches on the demo data: ASL_search.sh, SIGKILL and resume, fault injection."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

pytest.importorskip('mmseg')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAME = 'deeplabv3plus_r18tiny-d8_search-miou_1xb8-300_asldemo-64x64'
CONFIG = os.path.join(ROOT, 'configs', 'search', 'demo', NAME + '.py')
# 2 steps x 2 candidates of a 6-iteration proxy, 16 hold-out images
TINY = ['search.num_steps=2', 'search.num_samples=2', 'search.holdout.num=16',
        'train_cfg.max_iters=6', 'param_scheduler.0.end=6', 'default_hooks.logger.interval=2']


def _env():
    return dict(os.environ, OMP_NUM_THREADS='2', MKL_NUM_THREADS='2', PYTHON=sys.executable,
                PYTHONUNBUFFERED='1')


def _search_cmd(work_dir, *extra):
    return [sys.executable, os.path.join(ROOT, 'tools', 'search.py'), CONFIG, '--work-dir',
            str(work_dir), '--seed', '1', *extra, '--cfg-options', *TINY]


def _alive(pid):
    """A running (not zombie) process."""
    try:
        with open(f'/proc/{pid}/stat') as f:
            return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except OSError:
        return False


def _journal(work_dir):
    path = os.path.join(str(work_dir), 'journal.jsonl')
    if not os.path.exists(path):
        return []
    out = []
    with open(path) as f:
        for line in f:
            if line.endswith('\n'):
                out.append(json.loads(line))
    return out


@pytest.fixture(scope='module')
def reference_search():
    """An uninterrupted tiny search through the real ASL_search.sh (default work dir)."""
    work = os.path.join(ROOT, 'work_dirs', 'search', NAME)
    subprocess.run(['rm', '-rf', work], check=True)
    out = subprocess.run(['bash', 'ASL_search.sh', NAME + '.py', '0', '1', '--cfg-options',
                          *TINY], cwd=ROOT, env=_env(), capture_output=True, text=True,
                         timeout=900)
    return work, out


def test_asl_search_sh_tiny_search(reference_search):
    work, out = reference_search
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    best = json.load(open(os.path.join(work, 'best.json')))
    assert len(best['raw_theta']) == 12 and len(best['theta']) == 12
    assert [s['step'] for s in best['steps']] == [0, 1]
    assert all(len(s['rewards']) == 2 and all(r is not None for r in s['rewards'])
               for s in best['steps'])
    for png in ('rewards.png', 'mu.png', 'curves.png'):
        assert os.path.getsize(os.path.join(work, png)) > 1000
    events = _journal(work)
    kinds = [e['event'] for e in events]
    assert kinds[0] == 'search_started' and kinds[-1] == 'search_finished'
    assert kinds.count('trial_finished') == 4 and kinds.count('policy_updated') == 2
    # every trial ran as its own MMSeg training with its resolved config and logs
    for e in events:
        if e['event'] == 'trial_finished':
            d = os.path.join(work, 'trials', f'step{e["step"]:02d}', f'cand{e["index"]:02d}',
                             'attempt1')
            assert os.path.isfile(os.path.join(d, 'config.py'))
            assert os.path.isfile(os.path.join(d, 'result.json'))
            assert 0.0 <= e['reward'] <= 1.0
    # the re-training config inherits the demo retrain config and sets the searched theta
    from mmengine.config import Config
    cfg = Config.fromfile(os.path.join(work, 'retrain_config.py'))
    loss = cfg.model.decode_head.loss_decode
    assert loss.type == 'AutoSegLoss' and list(loss.theta) == pytest.approx(best['theta'])
    assert cfg.train_cfg.max_iters == 1200  # from the retrain config, not the proxy
    assert cfg.model.auxiliary_head.loss_decode.loss_weight == 0.4
    assert os.path.isfile(os.path.join(work, 'search.log'))
    assert 'step 2/2' in out.stderr + out.stdout


def test_sigkill_mid_step_then_resume_gives_the_same_result(reference_search, tmp_path):
    ref_work, ref_out = reference_search
    assert ref_out.returncode == 0
    ref = json.load(open(os.path.join(ref_work, 'best.json')))
    work = tmp_path / 'search'
    proc = subprocess.Popen(_search_cmd(work), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    # kill the controller in the middle of step 2: after its first trial was launched
    deadline = time.time() + 900
    while True:
        ev = _journal(work)
        launched = [e for e in ev if e['event'] == 'trial_launched' and e['step'] == 1]
        if launched:
            break
        assert proc.poll() is None, 'the search ended before it could be killed'
        assert time.time() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    trial_pid = launched[0]['info']['pid']
    time.sleep(1.0)
    assert not _alive(trial_pid)  # the trial died with its controller
    before = _journal(work)
    out = subprocess.run(_search_cmd(work), cwd=ROOT, env=_env(), capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    best = json.load(open(work / 'best.json'))
    assert best['raw_theta'] == ref['raw_theta']
    assert [s['rewards'] for s in best['steps']] == [s['rewards'] for s in ref['steps']]
    assert [s['mu'] for s in best['steps']] == [s['mu'] for s in ref['steps']]
    # finished trials were not run again; the in-flight one was relaunched
    events = _journal(work)
    finished_before = {(e['step'], e['index']) for e in before if e['event'] == 'trial_finished'}
    for key in finished_before:
        assert sum(1 for e in events if e['event'] == 'trial_launched'
                   and (e['step'], e['index']) == key) == 1
    assert sum(1 for e in events if e['event'] == 'trial_finished') == 4
    assert sum(1 for e in events if e['event'] == 'step_started') == 2
    assert 'resuming from' in out.stderr + out.stdout


def test_spawned_trials_give_the_same_result_as_forked_ones(reference_search, tmp_path):
    """The reference search forks its CPU trials from the pre-warmed launcher (the
    default); starting every trial as a fresh tools/train.py gives the same search."""
    ref_work, ref_out = reference_search
    assert ref_out.returncode == 0
    ref = json.load(open(os.path.join(ref_work, 'best.json')))
    assert {e['info']['launch'] for e in _journal(ref_work)
            if e['event'] == 'trial_launched'} == {'fork'}
    work = tmp_path / 'spawned'
    out = subprocess.run(_search_cmd(work, '--launch', 'spawn'), cwd=ROOT, env=_env(),
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert {e['info']['launch'] for e in _journal(work)
            if e['event'] == 'trial_launched'} == {'spawn'}
    best = json.load(open(work / 'best.json'))
    assert best['raw_theta'] == ref['raw_theta']
    assert [s['rewards'] for s in best['steps']] == [s['rewards'] for s in ref['steps']]


def test_failures_are_recorded_retried_and_do_not_kill_the_search(tmp_path):
    cfg = tmp_path / 'faulty.py'
    cfg.write_text(
        f'_base_ = {CONFIG!r}\n'
        "custom_hooks = [dict(type='ASLFaultInjectionHook', at_iter=2,\n"
        "                     faults={'s00-c01': 'crash', 's00-c02': 'nonfinite'})]\n"
        'search = dict(num_steps=1, num_samples=3, max_retries=1, holdout=dict(num=16),\n'
        "              retrain_config=None)\n"
        'train_cfg = dict(max_iters=8)\n'
        "param_scheduler = [dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0, end=8,\n"
        '                        by_epoch=False)]\n'
        'default_hooks = dict(logger=dict(interval=1))\n')
    work = tmp_path / 'search'
    out = subprocess.run([sys.executable, 'tools/search.py', str(cfg), '--work-dir', str(work)],
                         cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    events = _journal(work)
    failed = [e for e in events if e['event'] == 'trial_failed']
    crash = [e for e in failed if e['index'] == 1]
    nonfinite = [e for e in failed if e['index'] == 2]
    # retried once (max_retries=1), then failed for good
    assert [e['attempt'] for e in crash] == [1, 2] and [e['final'] for e in crash] == [False, True]
    assert all(e['kind'] == 'crash' and 'injected crash' in e['reason'] for e in crash)
    assert [e['final'] for e in nonfinite] == [False, True]
    assert all(e['kind'] == 'nonfinite' and 'non-finite loss' in e['reason'] for e in nonfinite)
    # stopped as soon as the loss was NaN (iteration 3 of 8), not after its budget
    fail = json.load(open(work / 'trials' / 'step00' / 'cand02' / 'attempt1' / 'failure.json'))
    assert fail['iter'] == 3
    log = open(work / 'trials' / 'step00' / 'cand02' / 'attempt1' / 'stdout.log').read()
    assert 'Iter(train) [3/8]' not in log or 'Iter(train) [4/8]' not in log
    assert 'Iter(train) [8/8]' not in log
    best = json.load(open(work / 'best.json'))
    assert best['steps'][0]['rewards'][0] is not None
    assert best['steps'][0]['rewards'][1:] == [None, None]
    upd = [e for e in events if e['event'] == 'policy_updated'][0]
    assert upd['stats']['skipped']  # one successful candidate: no update, documented


def test_config_errors_before_anything_is_launched(tmp_path):
    demo = os.path.join(ROOT, 'configs', 'retrain', 'demo',
                        'deeplabv3plus_r18tiny-d8_ce_1xb8-1200_asldemo-64x64.py')
    cases = [
        (demo, 'no `search` section'),
        (f'_base_ = {CONFIG!r}\nsearch = dict(target_metric="mIoUx")\n', 'mIoUx'),
        (f'_base_ = {CONFIG!r}\nsearch = dict(target_metric="mean_c(sum(P AND G) / ")\n',
         'column'),
    ]
    for i, (cfg, message) in enumerate(cases):
        if not os.path.isfile(cfg):
            path = tmp_path / f'bad{i}.py'
            path.write_text(cfg)
            cfg = str(path)
        work = tmp_path / f'w{i}'
        out = subprocess.run([sys.executable, 'tools/search.py', cfg, '--work-dir', str(work)],
                             cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
        assert out.returncode == 2, (cfg, out.stderr[-2000:])
        assert message in out.stderr, (message, out.stderr[-2000:])
        assert not (work / 'trials').exists() and not (work / 'journal.jsonl').exists()
