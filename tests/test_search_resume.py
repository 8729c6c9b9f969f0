"""A search killed with SIGKILL at many points, resumed each time, ends exactly like the
uninterrupted reference search: same candidates, rewards, policy means, Adam states,
random states, trial losses and result.

One search is killed four times in a row; every run after the first resumes the
previous one and is itself killed at the next point (``ASL_SEARCH_KILL_AT``, the
tests' kill switch in ``killable_search.py``, kills it at an exact journal event; the
first kill comes from outside while a trial trains). Every journal point (17, each
kind of event before it is written, torn and after it), on the in-process test seam:
test_search_rules.py; here, the points where real processes and files matter, in the
order of the 2 x 3 search:

1. step 0, while its second trial trains (SIGKILL from the test: the trial dies too);
2. step 0, the relaunched second trial has finished (its result.json is written) but
   its outcome is not journaled yet;
3. step 1's candidates sampled, half of their journal line written (a torn line);
4. right after the second policy update is journaled (before the search's outputs).
"""
import os
import signal
import subprocess

import pytest

pytest.importorskip('mmseg')

from search_fixtures import (REEVAL, ROOT, STEPS, SAMPLES, assert_same_search, env,  # noqa: E402
                             events_of, journal, kill_group, run, search_cmd, search_losses,
                             tail, wait_dead, wait_for)


def _killed_at(work, point):
    """Run the search (resuming) with the controller set to SIGKILL itself at ``point``."""
    out = run(search_cmd(work, killable=True), env=env(ASL_SEARCH_KILL_AT=point))
    assert out.returncode == -signal.SIGKILL, f'{point}: ' + tail(out)
    return out


def _complete(work):
    with open(os.path.join(work, 'journal.jsonl'), 'rb') as f:
        return f.read().endswith(b'\n')


def _finished(work, step=None):
    return {(e['step'], e['index']) for e in events_of(work, 'trial_finished')
            if step is None or e['step'] == step}


def test_sigkill_at_many_points_then_resume_gives_the_uninterrupted_search(reference_search,
                                                                             tmp_path):
    ref, ref_out = reference_search
    assert ref_out.returncode == 0, tail(ref_out)
    work = tmp_path / 'search'

    # 1. from outside, while step 0's second trial trains
    proc = subprocess.Popen(search_cmd(work), cwd=ROOT, env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        launched = wait_for(lambda: events_of(work, 'trial_launched', step=0, index=1), proc,
                            'the second trial was launched')
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        kill_group(proc)
    # the trial died with its controller (polled: death signals are asynchronous), before
    # the end of its training (which would have written result.json)
    assert wait_dead([launched[0]['info']['pid']], timeout=30.0) == []
    assert not os.path.exists(os.path.join(launched[0]['work_dir'], 'result.json'))
    assert _finished(work) == {(0, 0)}

    # 2. the relaunched trial finished; its outcome is not journaled
    _killed_at(work, 'before:trial_finished:1')
    assert _finished(work) == {(0, 0)}
    assert os.path.isfile(os.path.join(launched[0]['work_dir'], 'result.json'))

    # 3. step 1's candidates: a torn journal line (step 0 ended in this run)
    _killed_at(work, 'torn:step_started:1')
    assert not _complete(work) and journal(work)[-1]['event'] == 'policy_updated'
    assert _finished(work) == {(0, i) for i in range(SAMPLES)}

    # 4. after the last update, before the search's outputs
    _killed_at(work, 'after:policy_updated:1')
    assert len(events_of(work, 'policy_updated')) == STEPS
    assert not os.path.exists(work / 'best.json')

    out = run(search_cmd(work))
    assert out.returncode == 0, tail(out)
    assert 'resuming from' in out.stderr + out.stdout
    # exactly the uninterrupted search, number for number, and the same per-step events
    assert_same_search(work, ref)
    assert search_losses(work) == search_losses(ref)
    # a trial whose outcome was journaled was never launched again
    launches = {}
    for e in events_of(work, 'trial_launched'):
        launches[(e['step'], e['index'])] = launches.get((e['step'], e['index']), 0) + 1
    assert launches == {(0, 0): 1, (0, 1): 3, (0, 2): 1, (1, 0): 1, (1, 1): 1, (1, 2): 1,
                        (-1, 0): 1, (-1, 1): 1}  # (the re-evaluation: step -1)
    assert len(events_of(work, 'trial_finished')) == STEPS * SAMPLES + REEVAL
