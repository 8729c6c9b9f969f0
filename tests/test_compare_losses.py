"""Tests of ``tools/compare_losses.py``: the table/CSV/PNG writers and an end-to-end run."""
import csv
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, 'tools', 'compare_losses.py')

_spec = importlib.util.spec_from_file_location('compare_losses', TOOL)
cl = importlib.util.module_from_spec(_spec)
sys.modules.setdefault('compare_losses', cl)
_spec.loader.exec_module(cl)


def _ok(loss, **metrics):
    base = dict(mIoU=50.0, FWIoU=60.0, BIoU=30.0, BF1=20.0, mAcc=55.0, gAcc=80.0)
    base.update(metrics)
    return cl.RunResult(loss, 'ok', metrics=base, wall_s=1.0)


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


def test_build_command_sets_the_budget_consistently(tmp_path):
    cmds = cl.build_commands(['ce', 'asl-bf1'], str(tmp_path), iters=37, seed=5, python='py')
    assert list(cmds) == ['ce', 'asl-bf1']
    cmd = cmds['asl-bf1']
    run_dir = os.path.join(str(tmp_path), 'runs', 'asl-bf1')
    assert cmd[:2] == ['py', os.path.join(ROOT, 'tools', 'train.py')]
    assert cmd[2] == os.path.join(run_dir, cl.RUN_CONFIG_FILE)
    assert cmd[cmd.index('--work-dir') + 1] == run_dir
    assert cmd[cmd.index('--seed') + 1] == '5'
    opts = cmd[cmd.index('--cfg-options') + 1:]
    assert sorted(opts) == sorted(['train_cfg.max_iters=37', 'param_scheduler.0.end=37',
                                   'train_cfg.val_interval=37',
                                   'default_hooks.checkpoint.interval=37'])
    text = cl.run_config_text('asl-bf1')
    assert cl.config_path('asl-bf1') in text and "type='ASLTrialHook'" in text


def test_markdown_bolds_the_best_and_shows_failures():
    results = [
        _ok('ce', mIoU=61.234, BF1=25.0),
        _ok('asl-miou', mIoU=70.5, BF1=25.0),      # best mIoU; BF1 tied for best
        cl.RunResult('dice', 'failed', reason='exit status 3: non-finite loss | x'),
        _ok('asl-bf1', mIoU=40.0, BF1=10.0, gAcc=99.0),
        cl.RunResult('asl-gacc', 'pending'),
    ]
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
    results = [_ok('ce'), cl.RunResult('lovasz', 'failed', reason='boom')]
    paths = cl.write_outputs(results, str(tmp_path), header='# T\n\nSeed 1')
    rows = list(csv.DictReader(open(paths['csv'])))
    assert [r['loss'] for r in rows] == ['ce', 'lovasz']
    assert rows[0]['status'] == 'ok' and float(rows[0]['mIoU']) == 50.0
    assert rows[1]['status'] == 'failed' and rows[1]['reason'] == 'boom' and rows[1]['mIoU'] == ''
    with open(paths['png'], 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'
    assert open(paths['md']).read().startswith('# T\n')


def test_parse_result_and_reuse(tmp_path):
    d = str(tmp_path)
    cl.prepare_run_dir(d, 'ce', 10, 0, ['x'])
    assert not cl.reusable(d, 'ce', 10, 0)
    r = cl.parse_result(d, 'ce', 0)
    assert r.status == 'failed' and 'result.json' in r.reason
    metrics = dict(mIoU=1, FWIoU=2, BIoU=3, BF1=4, mAcc=5, gAcc=6)
    with open(os.path.join(d, cl.RESULT_FILE), 'w') as f:
        json.dump(dict(metrics=metrics, iter=10, wall_s=3.5), f)
    assert cl.reusable(d, 'ce', 10, 0)
    assert not cl.reusable(d, 'ce', 10, 1) and not cl.reusable(d, 'ce', 20, 0)
    assert not cl.reusable(d, 'dice', 10, 0)
    r = cl.parse_result(d, 'ce', None, reused=True)
    assert r.ok and r.reused and r.metrics['BF1'] == 4.0 and r.wall_s == 3.5
    with open(os.path.join(d, cl.FAILURE_FILE), 'w') as f:
        json.dump(dict(reason='non-finite loss: loss=nan at iteration 3'), f)
    r = cl.parse_result(d, 'ce', 3)
    assert r.status == 'failed' and r.reason == ('exit status 3: non-finite loss: '
                                                 'loss=nan at iteration 3')


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
    args = ('--iters', '4', '--losses', ','.join(losses), '--out', str(out), '--threads', '2')
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
