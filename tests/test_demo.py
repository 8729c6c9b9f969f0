"""``make demo``'s script (tools/demo.py) end to end with a tiny budget, killed during a
re-training and resumed, then run once more with everything done."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

pytest.importorskip('mmseg')

from search_fixtures import ROOT, alive, descendants, env, events_of, wait_dead  # noqa: E402

METRICS = ('mIoU', 'FWIoU', 'mAcc', 'gAcc', 'BIoU', 'BF1')
SEARCH = ['search.num_steps=1', 'search.num_samples=2', 'search.holdout.num=16',
          'train_cfg.max_iters=4', 'param_scheduler.0.end=4']
RETRAIN = ['train_cfg.max_iters=24', 'param_scheduler.0.end=24', 'train_cfg.val_interval=24',
           'default_hooks.checkpoint.interval=8', 'default_hooks.logger.interval=8']


def _cmd(work):
    return [sys.executable, 'tools/demo.py', '--work-dir', str(work), '--search-options',
            *SEARCH, '--train-options', *RETRAIN]


def _table(text):
    """The printed comparison: metric -> (cross-entropy, searched loss)."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip('|').split('|')]
        if cells and cells[0] in METRICS:
            rows[cells[0]] = (float(cells[1]), float(cells[2]))
    return rows


def test_demo_tiny_killed_during_a_retraining_then_resumed(tmp_path):
    work = tmp_path / 'demo'
    asl_dir = work / 'retrain_asl-miou'
    proc = subprocess.Popen(_cmd(work), cwd=ROOT, env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 900
        while not (asl_dir / 'last_checkpoint').exists():  # a checkpoint of the re-training
            assert proc.poll() is None, 'the demo ended before it could be killed'
            assert time.time() < deadline
            time.sleep(0.05)
        below = descendants(proc.pid)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert wait_dead(below) == []
    assert not (asl_dir / 'metrics.json').exists(), 'the re-training ended before the kill'
    search_dir = work / 'search'
    launched = events_of(search_dir, 'trial_launched')
    # the step's 2 trials and the re-evaluation of its mean with 2 more seeds (the demo's)
    assert len(launched) == 4 and events_of(search_dir, 'search_finished')

    out = subprocess.run(_cmd(work), cwd=ROOT, env=env(), capture_output=True, text=True,
                         timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert events_of(search_dir, 'trial_launched') == launched  # the search was not rerun
    log = (asl_dir / 'train.log').read_text()
    assert 'resumed epoch: 0, iter: ' in log  # the killed re-training continued
    table = _table(out.stdout)
    assert set(table) == set(METRICS)
    for name, col in (('retrain_ce', 0), ('retrain_asl-miou', 1)):
        metrics = json.loads((work / name / 'metrics.json').read_text())
        assert {m: round(metrics[m], 2) for m in METRICS} == \
            {m: table[m][col] for m in METRICS}, name
    # the searched loss was re-trained with the searched parameters (its config dump)
    from mmengine.config import Config
    best = json.loads((search_dir / 'best.json').read_text())
    assert best['retrain_config'] == str(search_dir / 'retrain_config.py')
    cfg = Config.fromfile(str(asl_dir / 'retrain_config.py'))
    assert cfg.model.decode_head.loss_decode.type == 'AutoSegLoss'
    assert list(cfg.model.decode_head.loss_decode.theta) == pytest.approx(best['theta'],
                                                                          abs=1e-7)
    assert cfg.train_cfg.max_iters == 24  # --train-options reached the re-training
    assert 'searched parameters: ' + str(search_dir / 'best.json') in out.stdout
    results = (work / 'results.md').read_text()
    assert _table(results) == table

    # everything done: nothing is trained again, the same results
    stamps = {n: os.stat(work / n / 'metrics.json').st_mtime_ns
              for n in ('retrain_ce', 'retrain_asl-miou')}
    again = subprocess.run(_cmd(work), cwd=ROOT, env=env(), capture_output=True, text=True,
                           timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert again.stdout.count('already trained and evaluated') == 2
    assert _table(again.stdout) == table
    assert stamps == {n: os.stat(work / n / 'metrics.json').st_mtime_ns for n in stamps}
    assert events_of(search_dir, 'trial_launched') == launched
    assert not any(alive(p) for p in below)
