"""Would the equivalence check (``search.equivalence``) fire, and would it be right?

    python tools/equivalence_stats.py WORK_DIR [WORK_DIR ...] [--thresholds 0.99 0.999 0.9999]

For finished searches (their journals and configs; nothing is trained), every candidate of
every step after the first is compared, as the search would compare it, with the
candidates trained in the earlier steps: the largest cosine similarity of their surrogate
gradients on the screening images. Printed per threshold: how many candidates would have
reused a reward, and how far the reward they would have taken was from the reward they
really got when trained (mean and largest absolute difference, in mIoU points for mIoU).
"""
import argparse
import json
import os
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _journal(work):
    with open(os.path.join(work, 'journal.jsonl')) as f:
        return [json.loads(line) for line in f if line.endswith('\n')]


def load_search(work):
    """A finished search, as its screening saw it: ``(settings, screening options,
    labels, classes, candidates per step, rewards per (step, index))`` (re-evaluations
    left out); the screening options are the search's ``prescreen`` or their defaults,
    as in the search."""
    from mmengine.config import Config
    from asl.search.prescreen import PRESCREEN_DEFAULTS, screening_labels
    from asl.search.settings import parse_search_section
    from asl.search.trial import head_classes
    events = _journal(work)
    start = next(e for e in events if e['event'] == 'search_started')
    s = parse_search_section(start['fingerprint']['settings'])
    first = next(e for e in events if e['event'] == 'trial_launched')
    cfg = Config.fromfile(os.path.join(first['work_dir'], 'config.py'))  # the proxy split
    p = s.prescreen or PRESCREEN_DEFAULTS
    labels = screening_labels(cfg.train_dataloader.dataset, p['images'])
    steps, rewards = {}, {}
    for e in events:
        if e['event'] == 'step_started':
            steps[e['step']] = e['candidates']
        elif e['event'] == 'trial_finished' and e.get('phase') != 'reeval':
            rewards[(e['step'], e['index'])] = e['reward']
    return s, p, labels, head_classes(cfg), steps, rewards


def search_pairs(work):
    """``(cosine, reward it would reuse, its own reward)`` per candidate of steps >= 2."""
    from asl.search.prescreen import EQUIVALENCE_DEFAULTS, most_similar, surrogate_gradient
    from asl.search.trial import settings_surrogate
    s, p, labels, classes, steps, rewards = load_search(work)
    entries = (s.equivalence or EQUIVALENCE_DEFAULTS)['entries']

    def grad(raw):
        return surrogate_gradient(settings_surrogate(s, raw), labels, classes, p['seed'],
                                  entries)

    grads = {key: grad(steps[key[0]][key[1]]) for key in rewards}
    out = []
    for (k, i), r in sorted(rewards.items()):
        known = {key: g for key, g in grads.items() if key[0] < k}
        best = most_similar(grads[(k, i)], known)
        if best is not None:
            out.append((best[1], rewards[best[0]], r))
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('work_dirs', nargs='+')
    p.add_argument('--thresholds', type=float, nargs='+', default=[0.99, 0.999, 0.9999])
    args = p.parse_args(argv)
    pairs = []
    for w in args.work_dirs:
        pairs += search_pairs(w)
    if not pairs:
        print('no candidate after the first step')
        return 1
    cos = [c for c, _, _ in pairs]
    print(f'{len(pairs)} candidates after the first step, in {len(args.work_dirs)} search(es); '
          f'largest cosine with an earlier trained candidate: median {statistics.median(cos):.5f}, '
          f'min {min(cos):.5f}, max {max(cos):.5f}')
    print('| threshold | would reuse | mean |reward error| (points) | largest (points) |')
    print('|---|---|---|---|')
    for t in args.thresholds:
        hit = [abs(a - b) * 100 for c, a, b in pairs if c >= t]
        print(f'| {t:g} | {len(hit)}/{len(pairs)} | '
              + (f'{statistics.mean(hit):.2f} | {max(hit):.2f} |' if hit else 'n/a | n/a |'))
    return 0


if __name__ == '__main__':
    sys.exit(main())
