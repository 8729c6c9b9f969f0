"""Real searches on the demo data: ASL_search.sh, spawned vs forked trials, several
workers, the random searcher, a foreign work directory, SIGTERM, fault injection.

Every search here is the tiny one of ``search_fixtures`` (or a smaller variant), written
under a temporary folder; the ones that must end like the session's reference search
are compared with it number for number (``assert_same_search``).
"""
import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip('mmseg')

from search_fixtures import (CONFIG, REEVAL, ROOT, SAMPLES, STEPS,  # noqa: E402
                             assert_not_degenerate,
                             assert_same_search, descendants, env, events_of, journal,
                             kill_group, run, search_cmd, search_in_process, search_losses,
                             tail, trajectory,
                             wait_dead, wait_for)


def test_asl_search_sh_tiny_search(reference_search):
    work, out = reference_search
    assert out.returncode == 0, tail(out)
    assert f'work dir {work}' in out.stdout  # ASL_WORK_DIR, not the checkout's work_dirs/
    # candidates got different rewards and the policy moved: the comparisons below can fail
    assert_not_degenerate(work)
    best = json.load(open(os.path.join(work, 'best.json')))
    assert len(best['raw_theta']) == 12 and len(best['theta']) == 12
    assert [s['step'] for s in best['steps']] == list(range(1, STEPS + 1))  # (from 1)
    assert all(len(s['rewards']) == SAMPLES and None not in s['rewards'] for s in best['steps'])
    # the two step means, trained again with another proxy seed: the result is the one with
    # the best average of its two rewards (the step's candidate 0 and the re-evaluation)
    t = trajectory(work)
    means = [np.mean(list(s['rewards'].values())) for s in t['steps']]
    order = [int(k) for k in np.argsort(means, kind='stable')[::-1]]
    re = t['reeval']
    assert [e['raw'] for e in re['entries']] == [t['steps'][k]['mu'] for k in order]
    assert re['seeds'] == [2, 2]  # the search seed is 1
    avg = [np.mean([t['steps'][k]['rewards'][0], re['rewards'][n]]) for n, k in
           enumerate(order)]
    assert [s['mean'] for s in re['finished']['scores']] == pytest.approx(avg, abs=1e-12)
    k = order[int(np.argmax(avg))]
    assert best['best_step'] == k + 1 and best['raw_theta'] == t['steps'][k]['mu']
    assert best['reevaluation'] == re['finished']['scores']
    for png in ('rewards.png', 'mu.png', 'curves.png'):
        assert os.path.getsize(os.path.join(work, png)) > 1000
    kinds = [e['event'] for e in journal(work)]
    assert kinds[0] == 'search_started' and kinds[-1] == 'search_finished'
    assert kinds.count('trial_finished') == STEPS * SAMPLES + REEVAL
    assert kinds.count('policy_updated') == STEPS
    # every trial ran as its own MMSeg training, of its own candidate (not the mean):
    # the loss in its resolved config holds the candidate's raw parameters
    from mmengine.config import Config
    for e in events_of(work, 'trial_finished'):
        step = 'reeval' if e.get('phase') == 'reeval' else f'step{e["step"]:02d}'
        d = os.path.join(work, 'trials', step, f'cand{e["index"]:02d}', 'attempt1')
        cfg = Config.fromfile(os.path.join(d, 'config.py'))
        cand = (re['candidates'] if e.get('phase') == 'reeval' else
                t['steps'][e['step']]['candidates'])[e['index']]
        assert list(cfg.model.decode_head.loss_decode.raw_theta) == cand
        assert list(cfg.model.auxiliary_head.loss_decode.raw_theta) == cand
        assert json.load(open(os.path.join(d, 'result.json')))['metrics']['mIoU'] == \
            pytest.approx(100 * e['reward'], abs=1e-9)
    # the re-training config inherits the demo retrain config and sets the searched theta
    cfg = Config.fromfile(os.path.join(work, 'retrain_config.py'))
    loss = cfg.model.decode_head.loss_decode
    assert loss.type == 'AutoSegLoss' and list(loss.theta) == pytest.approx(best['theta'])
    assert cfg.train_cfg.max_iters == 1200  # from the retrain config, not the proxy
    assert cfg.model.auxiliary_head.loss_decode.loss_weight == 0.4
    assert os.path.isfile(os.path.join(work, 'search.log'))
    assert f'step {STEPS}/{STEPS}' in out.stderr + out.stdout


def test_two_workers_give_the_same_search(reference_search, tmp_path):
    """The reference search runs its CPU trials one at a time; two at once
    (``--workers 2``, both forked from the one pre-warmed launcher) give the same search,
    down to every trial's per-iteration losses. (Trials started as a fresh tools/train.py
    give the same search too: the Slurm searches of test_search_slurm.py and
    test_search_packing.py, whose jobs run it, are compared with the same reference; the
    local executor's spawn mode and a forked training matching a fresh process, loss for
    loss: test_prefork.py.)"""
    ref, _ = reference_search
    assert {e['info']['launch'] for e in events_of(ref, 'trial_launched')} == {'fork'}
    work = tmp_path / 'two'
    out = run(search_cmd(work, '--workers', '2'))
    assert out.returncode == 0, tail(out)
    assert {e['info']['launch'] for e in events_of(work, 'trial_launched')} == {'fork'}
    assert '2 CPU trial(s) at once' in open(work / 'search.log').read()
    # in every step a second trial was launched before the first one finished
    for step in range(STEPS):
        seq = [(e['event'], e['index']) for e in journal(work) if e.get('step') == step
               and e['event'] in ('trial_launched', 'trial_finished')]
        assert seq[:2] == [('trial_launched', 0), ('trial_launched', 1)], seq
    assert_same_search(work, ref)
    assert search_losses(work) == search_losses(ref)


def test_a_work_dir_holding_another_search_is_refused(reference_search, tmp_path):
    ref, _ = reference_search
    work = tmp_path / 'other'
    work.mkdir()
    shutil.copy(os.path.join(ref, 'journal.jsonl'), work / 'journal.jsonl')
    before = (work / 'journal.jsonl').read_bytes()
    cases = [(['--seed', '2'], "['seed']"), (['--searcher', 'random'], "['searcher']"),
             (['--cfg-options', 'search.sigma=0.3'], "['settings']")]
    for extra, differs in cases:
        cmd = search_cmd(work)
        if extra[0] == '--seed':
            cmd[cmd.index('--seed') + 1] = extra[1]
        elif extra[0] == '--searcher':
            cmd[cmd.index('--seed'):cmd.index('--seed')] = extra
        else:
            cmd += extra[1:]
        code, err = search_in_process(cmd)  # (the script's exit status: below)
        assert code == 2, err
        assert f'{work} holds another search (differs in {differs})' in err, err
        assert 'use another --work-dir' in err
        assert (work / 'journal.jsonl').read_bytes() == before
        assert not (work / 'trials').exists() and not (work / 'holdout').exists()


def test_sigterm_stops_the_search_and_its_trials(tmp_path):
    work = tmp_path / 'search'
    # trials that would train for hours: one that ends is one that was stopped
    cmd = search_cmd(work, options=['train_cfg.max_iters=100000', 'param_scheduler.0.end=100000'])
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        launched = wait_for(lambda: events_of(work, 'trial_launched'), proc,
                            'a trial was launched')
        trial = launched[0]['info']['pid']
        wait_for(lambda: os.path.exists(os.path.join(launched[0]['work_dir'], 'stdout.log'))
                 and 'Iter(train)' in open(os.path.join(launched[0]['work_dir'],
                                                        'stdout.log')).read(),
                 proc, 'the trial trained')
        below = descendants(proc.pid)  # the trial launcher and the trial
        assert trial in below
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 130, err[-3000:]
        assert 'run the same command again to resume' in err
        # nothing it started is left running (allow the kernel a moment to reap)
        assert wait_dead(below, timeout=5.0) == []
    finally:
        kill_group(proc)
    assert not events_of(work, 'trial_finished')


def test_failures_are_recorded_retried_and_do_not_kill_the_search(tmp_path):
    cfg = tmp_path / 'faulty.py'
    cfg.write_text(
        f'_base_ = {CONFIG!r}\n'
        "custom_imports = dict(imports=['asl.mmseg', 'asl_search_hooks'], "
        "allow_failed_imports=False)\n"
        "custom_hooks = [dict(type='FaultInjectionHook', at_iter=2,\n"
        "                     faults={'s00-c01': 'crash', 's00-c02': 'nonfinite'})]\n"
        'search = dict(num_steps=1, num_samples=3, max_retries=1, holdout=dict(num=16),\n'
        "              retrain_config=None)\n"
        'train_cfg = dict(max_iters=8)\n'
        "param_scheduler = [dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0, end=8,\n"
        '                        by_epoch=False)]\n'
        'default_hooks = dict(logger=dict(interval=1))\n')
    work = tmp_path / 'search'
    out = run([sys.executable, 'tools/search.py', str(cfg), '--work-dir', str(work)])
    assert out.returncode == 0, tail(out)
    failed = events_of(work, 'trial_failed')
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
    assert 'Iter(train) [3/8]' in log and 'Iter(train) [4/8]' not in log
    best = json.load(open(work / 'best.json'))
    assert best['steps'][0]['rewards'][0] is not None
    assert best['steps'][0]['rewards'][1:] == [None, None]
    upd = events_of(work, 'policy_updated')[0]
    assert upd['stats']['skipped']  # one successful candidate: no update, documented
    assert upd['mu'] == events_of(work, 'step_started')[0]['mu']


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
        cmd = [sys.executable, 'tools/search.py', cfg, '--work-dir', str(work)]
        if i == 0:  # the script itself: exit status 2 and the message
            out = run(cmd, timeout=300)
            code, err = out.returncode, out.stderr
        else:  # its function, in this process
            code, err = search_in_process(cmd)
        assert code == 2, (cfg, err[-2000:])
        assert message in err, (message, err[-2000:])
        assert not (work / 'trials').exists() and not (work / 'journal.jsonl').exists()
