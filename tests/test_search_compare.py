"""Tests of ``tools/analysis/search_compare.py`` (also ``benchmark_search.py --compare``) on
hand-made journals: the iterations counted, the equal-budget rewards, the table and the
false-rejection training (no real training)."""
import json
import os
import sys

import pytest


from search_fixtures import load_tool  # noqa: E402

sc = load_tool('search_compare')

from asl.search.analysis import load_search  # noqa: E402

DIM = 2
STARTED = dict(fingerprint=dict(config='hand-made', settings={}, seed=1, searcher='ppo',
                                dim=DIM, reward_key='mIoU'),
               policy=dict(u=[0.0] * DIM, exp_avg=[0.0] * DIM, exp_avg_sq=[0.0] * DIM,
                           adam_step=0),
               rng={})
#: a trial config, as far as the false-rejection training reads it: the model's loss and
#: the trial hook with early stopping's probes
TRIAL_CONFIG = """model = dict(decode_head=dict(type='FCNHead', num_classes=5, loss_decode=None))
custom_hooks = [dict(type='ASLTrialHook', result_file='result.json', probe_iters=[10],
                     probe_thresholds=[0.1], probe_key='mIoU'), dict(type='OtherHook')]
"""


def _cand(step, index):
    return [round(0.1 * (step + 1), 3), round(0.05 * (index + 1), 3)]


def _search(tmp_path, name, trials, stopped=(), rejected=(), iters=300):
    """``trials``: (step, index, reward) finished in that order; ``stopped``: (step, index,
    iteration); ``rejected``: (step, index). The trials' folders are not where the search
    puts them: the tool must find them through the journal."""
    work = tmp_path / name
    events = [dict(event='search_started', **STARTED)]
    for step in sorted({t[0] for t in trials}):
        n = 1 + max(i for s, i, *_ in [*trials, *stopped, *rejected] if s == step)
        events.append(dict(event='step_started', step=step, mu=_cand(step, 0), rng={},
                           candidates=[_cand(step, i) for i in range(n)]))
        events.append(dict(event='step_screened', step=step, scores=[1.0] * n, reference=1.0,
                           threshold=0.5, rejected=[i for s, i in rejected if s == step]))
        for s, i, r in [t for t in trials if t[0] == step]:
            d = work / 'elsewhere' / f'{name}-{s}-{i}'
            d.mkdir(parents=True)
            (d / 'result.json').write_text(json.dumps(dict(max_iters=iters)))
            (d / 'config.py').write_text(TRIAL_CONFIG)
            tid = f's{s:02d}-c{i:02d}-a1'
            events.append(dict(event='trial_launched', step=s, index=i, attempt=1,
                               trial_id=tid, work_dir=str(d), info={}))
            events.append(dict(event='trial_finished', step=s, index=i, attempt=1,
                               trial_id=tid, reward=r, metrics={}, timing={}))
        for s, i, it in [t for t in stopped if t[0] == step]:
            events.append(dict(event='trial_stopped', step=s, index=i, attempt=1, iter=it,
                               score=0.0, threshold=0.1, probes=[]))
    # a re-evaluation trial is not part of the search's budget
    events.append(dict(event='reeval_started', entries=[], candidates=[_cand(0, 0)],
                       seeds=[2]))
    events.append(dict(event='trial_finished', step=-1, index=0, attempt=1, reward=0.99,
                       metrics={}, timing={}, phase='reeval'))
    lines = [json.dumps(dict(seq=n, time=1000.0 + n, **e)) for n, e in enumerate(events)]
    (work / 'journal.jsonl').write_text('\n'.join(lines) + '\n'
                                        + '{"event": "torn')  # a torn last line is skipped
    return str(work)


def test_analyse_counts_iterations_and_rewards(tmp_path):
    work = _search(tmp_path, 'a', [(0, 0, 0.2), (0, 1, 0.4), (1, 0, 0.3), (1, 2, 0.5)],
                   stopped=[(1, 1, 100)], rejected=[(1, 3)])
    r = sc.analyse(work)
    assert r['iterations'] == 4 * 300 + 100  # a stopped trial counts what it ran
    assert r['best'] == 0.5 and r['mean'] == pytest.approx(0.35)
    assert r['rejected'] == [(1, 3)] and r['stopped'] == 1
    assert 'reused' not in r
    assert r['step_medians'] == {0: pytest.approx(0.3), 1: pytest.approx(0.4)}
    assert r['curve'] == [(300, 0.2), (600, 0.4), (900, 0.4), (1200, 0.5), (1300, 0.5)]
    assert sc.best_within(r['curve'], 1199) == 0.4
    assert sc.best_within(r['curve'], 1200) == 0.5
    assert sc.best_within(r['curve'], 299) is None


def test_render_equal_budget_table(tmp_path):
    ppo = sc.analyse(_search(tmp_path, 'ppo', [(0, 0, 0.2), (0, 1, 0.4), (1, 0, 0.3),
                                               (1, 1, 0.6)]))
    pre = sc.analyse(_search(tmp_path, 'pre', [(0, 0, 0.2), (0, 1, 0.4), (1, 0, 0.3)],
                             rejected=[(1, 1)]))
    stop = sc.analyse(_search(tmp_path, 'stop', [(0, 0, 0.2), (0, 1, 0.4), (1, 0, 0.5)],
                              stopped=[(1, 1, 100)]))
    results = {'ppo': {1: ppo}, 'prescreen': {1: pre}, 'prescreen+stop': {1: stop}}
    for r in results.values():  # as compare() does: the cheapest variant's budget
        r[1]['best_within'] = sc.best_within(r[1]['curve'], 900)
    checks = [dict(variant='prescreen', seed=1, step=1, index=1, reward=0.7, step_median=0.3,
                   false=True)]
    text = sc.render(results, [1], checks, steps=2, samples=2)
    assert '| variant | iterations spent | vs ppo | best reward | mean reward | best at equal ' \
        'iterations | rejected | stopped |\n' in text
    assert '| ppo | 1200 | 1.00x | 0.6000 | 0.3750 | 0.4000 | 0 | 0 |\n' in text
    assert '| prescreen | 900 | 0.75x | 0.4000 | 0.3000 | 0.4000 | 1 | 0 |\n' in text
    assert '| prescreen+stop | 1000 | 0.83x | 0.5000 | 0.3667 | 0.5000 | 0 | 1 |\n' in text
    assert 'reused' not in text
    assert 'False rejections: 1 of 1 rejected candidates trained anyway beat their step\'s ' \
        'median (1 rejected in all).' in text
    results['prescreen'][1] = ppo
    assert 'False rejections: no candidate was rejected.' in sc.render(results, [1], [], 2, 2)


def test_a_rejected_candidate_is_trained_to_the_end_once(tmp_path, monkeypatch):
    """The false-rejection check trains the rejected candidate's parameters with the
    trials' config, without early stopping's probes, and reads its reward; run again, it
    reuses that result."""
    pytest.importorskip('mmengine')
    from mmengine.config import Config
    work = _search(tmp_path, 'pre', [(0, 0, 0.2), (0, 1, 0.4)], rejected=[(0, 2)])
    calls = []

    def fake_run(cmd, log_file, **kwargs):  # the training: writes the trial's result
        calls.append(cmd)
        out = cmd[cmd.index('--work-dir') + 1]
        with open(os.path.join(out, 'result.json'), 'w') as f:
            json.dump(dict(metrics={'mIoU': 42.0}, iter=300, max_iters=300), f)
        return 0, 1.0

    monkeypatch.setattr(sc, 'run_logged', fake_run)
    run = load_search(work)
    assert sc.train_rejected(run, 0, 2, 7, sys.stdout) == pytest.approx(0.42)
    (cmd,) = calls
    assert cmd[cmd.index('--seed') + 1] == '7'
    cfg = Config.fromfile(cmd[cmd.index('--work-dir') - 1])
    assert list(cfg.model.decode_head.loss_decode.raw_theta) == _cand(0, 2)
    hook = next(h for h in cfg.custom_hooks if h['type'] == 'ASLTrialHook')
    assert 'probe_iters' not in hook and 'probe_thresholds' not in hook
    assert hook['result_file'] == 'result.json'
    assert [h['type'] for h in cfg.custom_hooks] == ['ASLTrialHook', 'OtherHook']
    assert sc.train_rejected(run, 0, 2, 7, sys.stdout) == pytest.approx(0.42)
    assert len(calls) == 1  # done already


def test_main_hands_its_options_to_compare(tmp_path, monkeypatch, capsys):
    seen = {}
    monkeypatch.setattr(sc, 'compare', lambda *a: seen.setdefault('args', a) and 'TABLE')
    assert sc.main(['--run-dir', str(tmp_path / 'cmp'), '--seeds', '2', '--steps', '1',
                    '--samples', '3', '--iters', '5', '--false-sample', '0']) == 0
    assert seen['args'] == (sc.DEMO_SEARCH_CONFIG, str(tmp_path / 'cmp'), [2], 1, 3, 0, 5)
    assert os.path.isdir(tmp_path / 'cmp') and 'TABLE' in capsys.readouterr().out


def test_analyse_reads_a_real_search(tmp_path):
    """A search the controller ran (through the test seam's executor: no training), with
    early stopping: its trials' folders are found through its journal."""
    pytest.importorskip('mmseg')
    from search_sim import events, sim_search
    work = tmp_path / 'sim'
    sim_search(work, options={'search.early_stop': dict(min_trials=2)}).run()
    r = sc.analyse(str(work))
    finished = [e for e in events(work, 'trial_finished') if e.get('phase') != 'reeval']
    stopped = events(work, 'trial_stopped')
    assert stopped and r['stopped'] == len(stopped) and r['rejected'] == []
    assert r['iterations'] == 30 * len(finished) + sum(e['iter'] for e in stopped)
    assert r['best'] == max(e['reward'] for e in finished)
    assert [b for _, b in r['curve']] == sorted(b for _, b in r['curve'])  # the best so far
