"""Tests of ``tools/analysis/benchmark_search.py`` on hand-made journals (no training is
run), and one real tiny run of it."""
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, 'tools', 'analysis', 'benchmark_search.py')

from search_fixtures import load_tool  # noqa: E402

bs = load_tool('benchmark_search')

from asl.search.analysis import load_search  # noqa: E402

#: a started search, as far as reading it needs: its fingerprint (default settings),
#: policy and random state
STARTED = dict(fingerprint=dict(config='hand-made', settings={}, seed=1, searcher='ppo', dim=2,
                                reward_key='mIoU'),
               policy=dict(u=[0.0, 0.0], exp_avg=[0.0, 0.0], exp_avg_sq=[0.0, 0.0], adam_step=0),
               rng={})


def _line(seq, t, event, **fields):
    return json.dumps(dict(seq=seq, time=t, event=event, **fields)) + '\n'


def _make_search(tmp_path, torn=False, waited=None, name='search'):
    """Two trials run one after the other, and one failed attempt."""
    work = tmp_path / name
    lines = [_line(0, 1000.0, 'search_started', **STARTED),
             _line(1, 1000.5, 'step_started', step=0, mu=[0.5, 0.5],
                   candidates=[[0.5, 0.5], [0.4, 0.6], [0.6, 0.4]], rng={})]
    seq = 2
    t = 1001.0
    # (trial id, executor wall, wall, train iterations, eval)
    trials = [('s00-c00-a1', 100.0, 98.0, 80.0, 5.0), ('s00-c01-a1', 50.0, 49.0, 45.0, 1.0)]
    for index, (tid, ex, wall, train, val) in enumerate(trials):
        d = work / 'trials' / tid
        (d / '20260101_000000' / 'vis_data').mkdir(parents=True)
        (d / 'result.json').write_text(json.dumps(dict(metrics={'mIoU': 1.0}, iter=100,
                                                       wall_s=wall, train_iter_s=train,
                                                       val_s=val, overhead_s=wall - train)))
        (d / '20260101_000000' / 'vis_data' / 'scalars.json').write_text(
            json.dumps(dict(lr=0.1, data_time=0.02, time=0.5, iter=50)) + '\n'
            + json.dumps(dict(lr=0.1, data_time=0.04, time=0.5, iter=100)) + '\n'
            + json.dumps(dict(mIoU=1.0, data_time=9.0, time=9.0, step=100)) + '\n')
        info = dict(waited_for_launcher_s=waited) if waited and seq == 2 else {}
        lines.append(_line(seq, t, 'trial_launched', step=0, index=index, attempt=1,
                           trial_id=tid, work_dir=str(d), info=info))
        lines.append(_line(seq + 1, t + ex, 'trial_finished', step=0, index=index, attempt=1,
                           trial_id=tid, reward=0.1, metrics={},
                           timing=dict(wall_s=wall, train_iter_s=train, val_s=val,
                                       overhead_s=wall - train, executor_wall_s=ex)))
        seq += 2
        t += ex + 2.0  # 2 s of controller work between trials
    lines.append(_line(seq, t, 'trial_launched', step=0, index=2, attempt=1,
                       trial_id='s00-c02-a1', work_dir=str(work / 'x'), info={}))
    lines.append(_line(seq + 1, t + 10.0, 'trial_failed', step=0, index=2, attempt=1,
                       trial_id='s00-c02-a1', kind='crash', reason='exit status 1', final=True))
    text = ''.join(lines) + ('{"seq": 99, "time": 1' if torn else '')
    (work / 'journal.jsonl').write_text(text)
    return work


@pytest.mark.parametrize('torn', [False, True])
def test_analyse_work_dir(tmp_path, capsys, torn):
    work = _make_search(tmp_path, torn)
    assert bs.main(['--work-dir', str(work)]) == 0
    out = capsys.readouterr().out
    rep = json.loads((work / 'benchmark.json').read_text())
    assert rep['finished'] == 2 and rep['failed'] == 1
    a, b = rep['trials']
    assert a['overhead_s'] == pytest.approx(20.0) and a['overhead_pct'] == pytest.approx(20.0)
    assert a['startup_s'] == pytest.approx(13.0) and a['teardown_s'] == pytest.approx(2.0)
    assert a['data_fetch_s_est'] == pytest.approx(3.0)  # mean 0.03 s x 100 iterations
    assert b['overhead_pct'] == pytest.approx(10.0)
    assert rep['overhead_pct_mean'] == pytest.approx(15.0)
    assert rep['overhead_pct_median'] == pytest.approx(15.0)
    assert rep['totals']['overhead_pct'] == pytest.approx(100.0 * 25.0 / 150.0)
    # first launch 1001, last outcome: 1001 + 100 + 2 + 50 + 2 + 10 = 1165
    assert rep['span_s'] == pytest.approx(164.0)
    assert rep['trials_per_hour'] == pytest.approx(3600.0 * 2 / 164.0)
    assert rep['idle_s'] == pytest.approx(4.0)
    b_s = rep['breakdown_mean_s']
    assert b_s['startup_s'] + b_s['val_s'] + b_s['teardown_s'] == pytest.approx(b_s['overhead_s'])
    assert rep['meets_target'] is True
    assert '**trials per hour**' in out and 'PASS' in out


def test_target_and_empty(tmp_path, capsys):
    work = _make_search(tmp_path)
    bs.main(['--work-dir', str(work), '--target', '15'])
    assert 'FAIL: max overhead per trial 20.0%' in capsys.readouterr().out
    empty = tmp_path / 'empty'
    empty.mkdir()
    (empty / 'journal.jsonl').write_text(_line(0, 1.0, 'search_started', **STARTED))
    assert bs.main(['--work-dir', str(empty)]) == 1  # no finished trial
    assert bs.main(['--work-dir', str(tmp_path / 'nothing')]) == 1  # no search
    assert 'holds no search' in capsys.readouterr().err


def test_compare_runs_the_search_compare_script(tmp_path, monkeypatch):
    """--compare hands its options to tools/analysis/search_compare.py (a subprocess)."""
    calls = []

    class Done:
        returncode = 0

    monkeypatch.setattr(bs.subprocess, 'run', lambda cmd, **kw: calls.append(cmd) or Done())
    assert bs.main(['--compare', '--run-dir', str(tmp_path), '--seeds', '4', '5',
                    '--iters', '7', '--false-sample', '2']) == 0
    (cmd,) = calls
    assert cmd[1] == os.path.join(ROOT, 'tools', 'analysis', 'search_compare.py')
    assert cmd[cmd.index('--run-dir') + 1] == os.path.join(str(tmp_path), 'compare')
    assert cmd[cmd.index('--seeds') + 1:cmd.index('--seeds') + 3] == ['4', '5']
    assert cmd[cmd.index('--steps') + 1] == '3' and cmd[cmd.index('--samples') + 1] == '4'
    assert cmd[cmd.index('--iters') + 1] == '7'
    assert cmd[cmd.index('--false-sample') + 1] == '2'


def test_search_command():
    args = bs.argparse.Namespace(config='c.py', run_dir='w', steps=1, samples=2, iters=20,
                                 workers=None, time_limit=None)
    cmd = bs.search_command(args, 'w', 'fork')
    assert cmd[1].endswith(os.path.join('tools', 'search.py'))
    assert cmd[2:5] == ['c.py', '--work-dir', 'w']
    assert cmd[cmd.index('--launch') + 1] == 'fork'
    assert '--launch' not in bs.search_command(args, 'w')
    assert cmd[cmd.index('--cfg-options') + 1:] == [
        'search.num_steps=1', 'search.num_samples=2', 'train_cfg.max_iters=20',
        'train_cfg.val_interval=20', 'param_scheduler.0.end=20']


def test_launcher_wait_counts_in_the_search_span_not_in_trials(tmp_path, capsys):
    plain = bs.analyse(load_search(str(_make_search(tmp_path))))
    work = _make_search(tmp_path, waited=3.0, name='forked')
    a = bs.analyse(load_search(str(work)))
    assert a['launcher_wait_s'] == 3.0 and plain['launcher_wait_s'] == 0.0
    assert a['span_s'] == pytest.approx(plain['span_s'] + 3.0)
    assert a['trials_per_hour'] < plain['trials_per_hour']
    # the trials' own figures do not include the wait
    assert [t['overhead_s'] for t in a['trials']] == [t['overhead_s'] for t in plain['trials']]
    assert "launcher's warm-up" in bs.render(a) and '| 3.00 s |' in bs.render(a)
    table = bs.render_comparison([('spawn', plain, None), ('fork', a, None)])
    assert '| launch | spawn | fork |' in table
    ratio = a['trials_per_hour'] / plain['trials_per_hour']
    assert f'trials per hour x{ratio:.2f}' in table


def test_tiny_run_forked(tmp_path):
    """A real run of the tool (a tiny search, trials forked): its table lists every trial
    with the figures of the journal. (That spawned and forked trials give the same search
    is test_search.py's; the two-mode comparison table is tested above.)"""
    import subprocess
    work = tmp_path / 'bench'
    cmd = [sys.executable, TOOL, '--run-dir', str(work), '--steps', '1', '--samples', '2',
           '--iters', '4', '--launch', 'fork']
    env = dict(os.environ, OMP_NUM_THREADS='1', MKL_NUM_THREADS='1', PYTHONUNBUFFERED='1')
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    events = load_search(str(work)).events
    assert {e['info']['launch'] for e in events if e['event'] == 'trial_launched'} == {'fork'}
    finished = {e['trial_id']: e for e in events if e['event'] == 'trial_finished'}
    rep = json.loads((work / 'benchmark.json').read_text())
    # the step's 2 trials and the re-evaluation of its mean with 2 more seeds (the demo's)
    assert rep['finished'] == 4 and rep['failed'] == 0
    assert sorted(t['trial_id'] for t in rep['trials']) == [
        're-c00-a1', 're-c01-a1', 's00-c00-a1', 's00-c01-a1']
    for t in rep['trials']:
        timing = finished[t['trial_id']]['timing']
        assert t['iters'] == 4
        assert t['executor_wall_s'] == timing['executor_wall_s']
        assert t['overhead_s'] == pytest.approx(timing['executor_wall_s']
                                                - timing['train_iter_s'])
        assert t['startup_s'] == pytest.approx(timing['wall_s'] - timing['train_iter_s']
                                               - timing['val_s'])
        # its row in the printed table
        assert (f"| {t['trial_id']} | 4 | {t['executor_wall_s']:.1f} | "
                f"{t['train_iter_s']:.1f} | {t['val_s']:.2f} |") in out.stdout
    assert rep['trials_per_hour'] == pytest.approx(3600 * 4 / rep['span_s'])
    assert f'search: {work}' in out.stdout
    assert '| finished trials / failed attempts | 4 / 0 |' in out.stdout
    assert out.stdout.count('PASS: max overhead') + out.stdout.count('FAIL: max overhead') == 1
    # an earlier run is not overwritten unless asked
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and 'pass --overwrite' in again.stderr
