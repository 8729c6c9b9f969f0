"""Tests of ``tools/analysis/compare_losses.py``: the table/CSV/PNG writers, its runs'
reuse (with a stand-in training) and an end-to-end run."""
import csv
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from asl.utils import usable_cores

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, 'tools', 'analysis', 'compare_losses.py')

from search_fixtures import load_tool  # noqa: E402

cl = load_tool('compare_losses')


def _ok(**metrics):
    base = dict(mIoU=50.0, FWIoU=60.0, BIoU=30.0, BF1=20.0, mAcc=55.0, gAcc=80.0)
    base.update(metrics)
    return cl.RunResult('ok', metrics=base, wall_s=1.0)


def _cells(md, label):
    for line in md.splitlines():
        if line.startswith(f'| {label} |'):
            return [c.strip() for c in re.split(r'(?<!\\)\|', line.strip('|'))][1:]
    raise AssertionError(f'no row {label!r} in\n{md}')


# ----------------------------------------------------------------------------- units


def test_parse_losses():
    assert cl.parse_losses('') == list(cl.LOSSES)
    assert cl.parse_losses(' ce, ASL-mIoU ,ce,asl-miou+bf1') == ['ce', 'asl-miou', 'asl-miou+bf1']
    with pytest.raises(ValueError, match=r"unknown loss 'focal'.*valid losses: ce, dice"):
        cl.parse_losses('ce,focal')
    assert len(cl.LOSSES) == 11
    for loss in cl.LOSSES:
        assert os.path.isfile(cl.config_path(loss)), loss


def test_the_budget_and_the_configs():
    assert sorted(cl.iteration_options(37)) == sorted([
        'train_cfg.max_iters=37', 'param_scheduler.0.end=37', 'train_cfg.val_interval=37',
        'default_hooks.checkpoint.interval=37'])
    assert cl.config_path('asl-bf1') == os.path.join(
        ROOT, 'configs', 'retrain', 'demo',
        'deeplabv3plus_r18tiny-d8_asl-bf1_1xb8-1200_asldemo-64x64.py')
    assert cl.run_dir('out', 'ce') == os.path.join(os.path.abspath('out'), 'runs', 'ce')
    assert sorted(cl.METRICS) == sorted(cl.retrain.METRICS)


def test_markdown_bolds_the_best_and_shows_failures():
    results = {
        'ce': _ok(mIoU=61.234, BF1=25.0),
        'asl-miou': _ok(mIoU=70.5, BF1=25.0),      # best mIoU; BF1 tied for best
        'dice': cl.RunResult('failed', reason='exit status 3: non-finite loss | x'),
        'asl-bf1': _ok(mIoU=40.0, BF1=10.0, gAcc=99.0),
        'asl-gacc': cl.RunResult('pending'),
    }
    md = cl.format_markdown(results, header='Seed 0, 4 iterations')
    assert md.startswith('Seed 0, 4 iterations\n')
    assert '| Loss | mIoU | FWIoU | BIoU | BF1 | mAcc | gAcc |' in md
    ce, miou, dice, bf1 = (_cells(md, cl.LOSSES[k]) for k in ('ce', 'asl-miou', 'dice', 'asl-bf1'))
    assert ce[0] == '61.23' and miou[0] == '**70.50**' and bf1[0] == '40.00'
    assert ce[3] == '**25.00**' and miou[3] == '**25.00**' and bf1[3] == '10.00'
    assert bf1[5] == '**99.00**' and ce[5] == '80.00'
    # FWIoU is equal everywhere: every successful row is bold.
    assert ce[1] == miou[1] == bf1[1] == '**60.00**'
    # The failed row: reason (with its '|' escaped) in the first cell, dashes elsewhere.
    assert dice[0] == r'failed: exit status 3: non-finite loss \| x'
    assert all(c == '–' for c in dice[1:])
    assert _cells(md, cl.LOSSES['asl-gacc']) == ['pending'] + ['–'] * 5


def test_csv_and_png(tmp_path):
    results = {'ce': _ok(), 'lovasz': cl.RunResult('failed', reason='boom')}
    paths = cl.write_outputs(results, str(tmp_path), header='# T\n\nSeed 1')
    rows = list(csv.DictReader(open(paths['csv'])))
    assert [r['loss'] for r in rows] == ['ce', 'lovasz']
    assert rows[0]['status'] == 'ok' and float(rows[0]['mIoU']) == 50.0
    assert rows[1]['status'] == 'failed' and rows[1]['reason'] == 'boom' and rows[1]['mIoU'] == ''
    with open(paths['png'], 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'
    assert open(paths['md']).read().startswith('# T\n')


def _fake_python(tmp_path):
    """An interpreter that runs a stand-in for tools/train.py: it records its arguments and
    writes a complete result (the six metrics at the last iteration) unless FAKE_FAIL."""
    fake = tmp_path / 'fake_train.py'
    fake.write_text(
        'import json, os, sys\n'
        'args = sys.argv[1:]\n'
        'work = args[args.index("--work-dir") + 1]\n'
        'iters = int(next(a for a in args if a.startswith("train_cfg.max_iters=")).split("=")[1])\n'
        'open(os.path.join(work, "..", "..", "calls"), "a").write(" ".join(args) + "\\n")\n'
        'if os.environ.get("FAKE_FAIL"):\n'
        '    sys.exit("RuntimeError: the training broke")\n'
        'metrics = dict(mIoU=50.0, FWIoU=60.0, mAcc=55.0, gAcc=80.0, BIoU=30.0, BF1=40.0)\n'
        'json.dump(dict(metrics=metrics, iter=iters, max_iters=iters),'
        ' open(os.path.join(work, "result.json"), "w"))\n')
    python = tmp_path / 'python'  # runs the stand-in in place of tools/train.py
    python.write_text(f'#!/bin/sh\nshift\nexec {sys.executable} {fake} "$@"\n')
    python.chmod(0o755)
    return str(python)


def test_runs_are_reused_only_for_the_same_budget_and_seed(tmp_path, capsys):
    """A second invocation reuses the finished runs; another budget or seed, or
    --no-resume, trains again; a failed run is trained again the next time."""
    python, out = _fake_python(tmp_path), tmp_path / 'out'
    calls = lambda: (out / 'calls').read_text().splitlines()  # noqa: E731
    args = ['--iters', '3', '--losses', 'ce,asl-miou', '--out', str(out), '--python', python]

    assert cl.main(args) == 0
    text = capsys.readouterr().out
    assert text.count('training ...') == 2 and len(calls()) == 2
    for call in calls():
        assert '--resume' in call and '--seed 0' in call and 'train_cfg.max_iters=3' in call
    run = json.loads((out / 'runs' / 'asl-miou' / 'run.json').read_text())
    assert run['config'] == cl.config_path('asl-miou') and run['returncode'] == 0
    assert _cells((out / 'results.md').read_text(), 'Cross-entropy')[0] == '**50.00**'

    assert cl.main(args) == 0
    assert capsys.readouterr().out.count('not retrained') == 2 and len(calls()) == 2
    assert [r['reused'] for r in csv.DictReader(open(out / 'results.csv'))] == ['1', '1']

    assert cl.main(args[:1] + ['4'] + args[2:]) == 0       # another budget
    assert cl.main(args + ['--seed', '5']) == 0             # another seed
    assert cl.main(args + ['--seed', '5', '--no-resume']) == 0
    assert len(calls()) == 8
    assert 'not retrained' not in capsys.readouterr().out

    os.environ['FAKE_FAIL'] = '1'
    try:
        assert cl.main(args + ['--seed', '6', '--losses', 'ce']) == 1
    finally:
        del os.environ['FAKE_FAIL']
    md = (out / 'results.md').read_text()
    assert _cells(md, 'Cross-entropy')[0] == \
        'failed: exit status 1: RuntimeError: the training broke'
    assert cl.main(args + ['--seed', '6', '--losses', 'ce']) == 0  # trained again
    assert len(calls()) == 10


def test_progress_lines_while_a_run_trains(tmp_path):
    """The heartbeat the comparison prints its progress lines with: called while the
    training runs, with the time so far."""
    from asl.search.retrain import run_logged
    beats = []
    code, wall = run_logged([sys.executable, '-c', 'import time; time.sleep(1.0)'],
                            str(tmp_path / 'log'), heartbeat=beats.append, heartbeat_s=0.2)
    assert code == 0 and 2 <= len(beats) and beats == sorted(beats) and beats[-1] <= wall
    log = tmp_path / 'train.log'
    log.write_text('Iter(train) [ 10/40] lr: 1\nIter(train) [ 20/40] lr: 1\n')
    assert cl._last_iter(str(log)) == 20 and cl._last_iter(str(tmp_path / 'none')) is None


# ---------------------------------------------------------------------- command line


def _run(*args, timeout=900):
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    return subprocess.run([sys.executable, TOOL, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_unknown_loss_is_a_usage_error(tmp_path):
    p = _run('--losses', 'ce,nope', '--out', str(tmp_path / 'out'))
    assert p.returncode == 2
    assert "unknown loss 'nope'" in p.stderr and 'asl-miou+bf1' in p.stderr
    assert not (tmp_path / 'out').exists()


@pytest.mark.skipif(shutil.which('false') is None, reason='needs the false command')
def test_failed_runs_are_reported(tmp_path):
    out = tmp_path / 'out'
    p = _run('--iters', '2', '--losses', 'ce,dice', '--out', str(out),
             '--python', shutil.which('false'))
    assert p.returncode == 1, p.stdout + p.stderr
    md = (out / 'results.md').read_text()
    assert _cells(md, 'Cross-entropy')[0].startswith('failed: exit status 1')
    assert _cells(md, 'Dice')[0].startswith('failed')  # --keep-going is the default
    assert (out / 'results.png').is_file()


def test_end_to_end_and_resume(tmp_path):
    out = tmp_path / 'cmp'
    losses = ['ce', 'asl-miou', 'asl-miou+bf1']
    args = ('--iters', '4', '--losses', ','.join(losses), '--out', str(out), '--threads',
            str(usable_cores()))
    p = _run(*args)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert '[3/3] asl-miou+bf1' in p.stdout and 'ETA' in p.stdout
    for name in ('results.md', 'results.csv', 'results.png'):
        assert (out / name).is_file(), name
    rows = list(csv.DictReader(open(out / 'results.csv')))
    assert [r['loss'] for r in rows] == losses
    for r in rows:
        assert r['status'] == 'ok'
        for m in cl.METRICS:
            assert 0.0 <= float(r[m]) <= 100.0, (r['loss'], m, r[m])
    assert len(cl.METRICS) == 6
    md = (out / 'results.md').read_text()
    assert 'Seed 0, 4 iterations' in md and '**' in md
    for loss in losses:
        run = out / 'runs' / loss
        assert (run / 'result.json').is_file() and (run / 'train.log').is_file()
        assert json.loads((run / 'result.json').read_text())['iter'] == 4
        assert any(run.glob('*/*.log')), 'MMEngine log missing'

    stamps = {loss: os.stat(out / 'runs' / loss / 'result.json').st_mtime_ns for loss in losses}
    p2 = _run(*args)
    assert p2.returncode == 0, p2.stdout[-3000:] + p2.stderr[-3000:]
    assert p2.stdout.count('not retrained') == 3 and 'training ...' not in p2.stdout
    assert stamps == {loss: os.stat(out / 'runs' / loss / 'result.json').st_mtime_ns
                      for loss in losses}
    assert list(csv.DictReader(open(out / 'results.csv')))[0]['reused'] == '1'
