#!/usr/bin/env python
"""torch.compile of a small plain torch segmentation model trained with a surrogate loss.

Trains the same tiny network a few steps eagerly and under ``torch.compile`` (model and
loss together, as MMEngine's ``compile=True`` does), with the surrogate on each engine
given, and prints the losses side by side and whether they agree. Needs torch only (and
Triton for the Triton engine); no MMSeg.

    python tools/gpu/compile_model.py --device cuda --backends auto torch
    python tools/gpu/compile_model.py --device cpu --backends cpp torch
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torch.nn as nn

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


class TinySeg(nn.Module):

    def __init__(self, classes: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32),
                                  nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(32, classes, 1))

    def forward(self, x):
        return self.body(x)


def train(metric: str, backend: str, compiled: bool, args, device) -> tuple:
    from asl import Surrogate
    torch.manual_seed(0)
    model = TinySeg(args.classes).to(device)
    surrogate = Surrogate(metric, theta='paper', backend=backend)

    def step_fn(image, label):
        return 1.0 - surrogate(model(image), label)

    step = torch.compile(step_fn) if compiled else step_fn
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    image = torch.randn(args.batch, 3, args.size, args.size, generator=g).to(device)
    label = (image[:, 0] > 0).long() + (image[:, 1] > 0.5).long()  # learnable
    label = label.clamp(max=args.classes - 1)
    losses, t0 = [], time.perf_counter()
    first = None
    for i in range(args.steps):
        opt.zero_grad()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp):
            loss = step(image, label)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if i == 0:
            first = time.perf_counter() - t0
    return losses, first, (time.perf_counter() - t0 - first) / max(1, args.steps - 1)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--device', default='cuda')
    p.add_argument('--backends', nargs='+', default=['auto', 'torch'])
    p.add_argument('--metrics', nargs='+', default=['mIoU', 'BF1'])
    p.add_argument('--steps', type=int, default=5)
    p.add_argument('--batch', type=int, default=4)
    p.add_argument('--size', type=int, default=64)
    p.add_argument('--classes', type=int, default=3)
    p.add_argument('--amp', action='store_true', help='bf16 autocast around model + loss')
    args = p.parse_args()
    device = torch.device(args.device)
    print(f'# torch.compile with a surrogate loss ({device}, torch {torch.__version__}, '
          f'{args.steps} steps, batch {args.batch}x3x{args.size}x{args.size}'
          f'{", bf16 autocast" if args.amp else ""})\n')
    print('| metric | backend | eager losses | compiled losses | max diff | first compiled '
          'step s | step ms eager / compiled | agree |')
    print('|---|---|---|---|---:|---:|---:|---|')
    bad = 0
    for metric in args.metrics:
        for backend in args.backends:
            e, _, te = train(metric, backend, False, args, device)
            c, first, tc = train(metric, backend, True, args, device)
            diff = max(abs(a - b) for a, b in zip(e, c))
            ok = diff <= 1e-3 and e[-1] < e[0]
            bad += not ok
            fmt = lambda v: ' '.join(f'{x:.4f}' for x in v)  # noqa: E731
            print(f'| {metric} | {backend} | {fmt(e)} | {fmt(c)} | {diff:.1e} | {first:.1f} | '
                  f'{te * 1e3:.1f} / {tc * 1e3:.1f} | {"yes" if ok else "NO"} |', flush=True)
    return 1 if bad else 0


if __name__ == '__main__':
    sys.exit(main())
