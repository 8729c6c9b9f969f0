"""Would pre-screening (``search.prescreen``) have rejected, and would it have been right?

    python tools/prescreen_stats.py WORK_DIR [WORK_DIR ...] [--steps 1 2 3 10]
        [--thresholds 0.5 0.9 0.95 0.99] [--lr 0.5]

For finished searches (their journals and configs; nothing is trained), every candidate
is screened as the search would screen it (:func:`asl.search.prescreen.screen_score`, on
the search's screening images and seed), for each number of screening ``--steps`` at
learning rate ``--lr``, and judged against the policy mean of its step
(candidate 0, with the 'mu' baseline) by each relative ``--thresholds``. Every candidate
of these searches was trained, so each rejection can be checked: it is a **false
rejection** when the candidate's real reward beats the median reward of its step (the
rule of ``tools/benchmark_search.py --compare``). Printed: the spread of the scores, the
rank correlation (Spearman) of score and reward within each step, and per setting how
many candidates would have been rejected, how many of those falsely, and the share of
the proxy trainings saved.
"""
import argparse
import os
import statistics
import sys
from collections import namedtuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'tools'))

from equivalence_stats import load_search  # noqa: E402
from search_seeds import spearman  # noqa: E402

#: one trained candidate, screened: its step median and its step's policy-mean score
Screened = namedtuple('Screened', 'step index score reward median reference')


def search_scores(work, steps_list, lr):
    """``{steps: [Screened]}`` for the candidates of one search that were trained (the
    policy mean is the reference)."""
    from asl.exact import ExactMetrics
    from asl.search.prescreen import screen_score
    from asl.search.trial import settings_surrogate
    s, p, labels, classes, cands, rewards = load_search(work)
    metric = ExactMetrics([s.target_metric], classes, tol=s.tol, drop_bg=s.drop_bg)
    out = {n: [] for n in steps_list}
    for k in sorted(cands):
        got = {i: rewards[(k, i)] for i in range(len(cands[k])) if (k, i) in rewards}
        if 0 not in got or len(got) < 2:  # no policy mean to compare with
            continue
        median = statistics.median(got.values())
        for n in steps_list:
            sc = {i: screen_score(settings_surrogate(s, cands[k][i]), labels, classes, metric,
                                  n, lr, p['seed']) for i in got}
            out[n] += [Screened(k, i, sc[i], got[i], median, sc[0]) for i in got]
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('work_dirs', nargs='+')
    p.add_argument('--steps', type=int, nargs='+', default=[1, 2, 3, 10])
    p.add_argument('--thresholds', type=float, nargs='+', default=[0.5, 0.9, 0.95, 0.99])
    p.add_argument('--lr', type=float, default=0.5)
    args = p.parse_args(argv)
    rows = {n: [] for n in args.steps}  # (work dir, Screened)
    for w in args.work_dirs:
        for n, r in search_scores(w, args.steps, args.lr).items():
            rows[n] += [(w, x) for x in r]
    for n in args.steps:
        r = [x for _, x in rows[n]]
        if not r:
            print('no step with a trained policy mean and another trained candidate')
            return 1
        scores = [x.score for x in r]
        by_step = {}
        for w, x in rows[n]:
            by_step.setdefault((w, x.step), []).append((x.score, x.reward))
        rhos = [spearman(*zip(*v)) for v in by_step.values()]
        rhos = [x for x in rhos if x is not None]
        print(f'\n{n} screening step(s), lr {args.lr}: {len(r)} trained candidates in '
              f'{len(by_step)} steps; score min {min(scores):.3f}, median '
              f'{statistics.median(scores):.3f}, max {max(scores):.3f}; Spearman of score and '
              f'reward within a step: median '
              + (f'{statistics.median(rhos):.2f} over {len(rhos)} steps' if rhos else 'n/a'))
        others = [x for x in r if x.index != 0]  # the policy mean is never rejected
        print('| threshold | rejected | false rejections | trainings saved |')
        print('|---|---|---|---|')
        for t in args.thresholds:
            rej = [x for x in others if x.score < t * x.reference]
            false = [x for x in rej if x.reward > x.median]
            print(f'| {t:g} | {len(rej)}/{len(others)} | {len(false)}/{len(rej)} | '
                  f'{len(rej) / len(r):.0%} |')
    return 0


if __name__ == '__main__':
    sys.exit(main())
