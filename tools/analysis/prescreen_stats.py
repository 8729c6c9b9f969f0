"""Would pre-screening (``search.prescreen``) have rejected, and would it have been right?

    python tools/analysis/prescreen_stats.py WORK_DIR [WORK_DIR ...] [--steps 1 2 3 10]
        [--thresholds 0.5 0.9 0.95 0.99] [--lr 0.5]

For finished searches (their journals and configs; nothing is trained), every candidate
is screened as the search would screen it (:func:`asl.search.screening.screen_score`, on
the search's screening images and seed), for each number of screening ``--steps`` at
learning rate ``--lr``, and judged against the policy mean of its step
(candidate 0, with the 'mu' baseline) by each relative ``--thresholds``. Every candidate
of these searches was trained, so each rejection can be checked: it is a **false
rejection** when the candidate's real reward beats the median reward of its step (the
rule of ``tools/analysis/search_compare.py``). Printed: the spread of the scores, the
rank correlation (Spearman) of score and reward within each step, and per setting how
many candidates would have been rejected, how many of those falsely, and the share of
the proxy trainings saved.
"""
import argparse
import os
import statistics
import sys
from collections import namedtuple

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

from asl.search.analysis import load_search, spearman  # noqa: E402

#: one trained candidate, screened: its step median and its step's policy-mean score
Screened = namedtuple('Screened', 'step index score reward median reference')


def search_scores(work, steps_list, lr):
    """``{steps: [Screened]}`` for the candidates of one search that were trained (the
    policy mean is the reference). The screening task is the search's own: its
    ``prescreen`` options (or their defaults), the label maps of its proxy training split
    (from its trials' config) and its seed."""
    from asl.loss.exact import ExactMetrics
    from asl.search.screening import PRESCREEN_DEFAULTS, screen_score, screening_labels
    from asl.search.trial import head_classes, settings_surrogate
    run = load_search(work)
    s = run.settings
    p = s.prescreen or PRESCREEN_DEFAULTS
    cfg = run.trial_config()  # the proxy training split, as the search carved it
    labels = screening_labels(cfg.train_dataloader.dataset, p['images'])
    classes = head_classes(cfg)
    metric = ExactMetrics([s.target_metric], classes, tol=s.tol, drop_bg=s.drop_bg)
    by_step = {}
    for t in run.trials():
        if t.reward is not None:
            by_step.setdefault(t.step, {})[t.index] = t
    out = {n: [] for n in steps_list}
    for k, got in sorted(by_step.items()):
        if 0 not in got or len(got) < 2:  # no policy mean to compare with
            continue
        median = statistics.median(t.reward for t in got.values())
        for n in steps_list:
            sc = {i: screen_score(settings_surrogate(s, t.raw), labels, classes, metric, n, lr,
                                  p['seed']) for i, t in sorted(got.items())}
            out[n] += [Screened(k, i, sc[i], t.reward, median, sc[0])
                       for i, t in sorted(got.items())]
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
