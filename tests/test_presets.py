"""The published searched parameters, typed in from the official re-training configs.

These numbers are written here by hand (from the official project's configs, the same
ones DESIGN notes list), independently of ``asl/loss/presets.py``, so that a changed digit,
a swapped metric or a wrong option in the preset table fails a test.
"""
import pytest
import torch

from asl import Surrogate
from asl.mmseg.loss import AutoSegLoss
from asl.loss.presets import PAPER_PRESETS, paper_preset

MIOU = [5.69728440e-04, 6.43720450e-01, 3.38589169e-01, 7.05543360e-01, 6.25281252e-01,
        7.79551927e-01, 6.90375570e-01, 1.30628900e-02, 8.34170515e-01, 9.62431815e-01,
        9.42998269e-01, 9.80038125e-01]
FWIOU = [3.65390355e-04, 9.84171689e-01, 9.69491959e-01, 9.92340326e-01, 9.88328516e-01,
         9.95552719e-01, 3.54609758e-01, 2.67221928e-01, 5.60551465e-01, 4.35290039e-01,
         5.65432191e-01, 6.01448298e-01]
MACC = [2.1453928e-02, 7.3905742e-01, 4.1163361e-01, 7.9865617e-01, 9.1986191e-01,
        9.5041156e-01]
BF1 = [0.8113003373146057, 0.8526162505149841, 0.17164576053619385, 0.03164796531200409,
       0.20997394621372223, 0.44903290271759033, 0.07847517728805542, 0.8753038048744202]

#: metric -> (theta, num_pieces, drop_bg); all Bezier, tol 5
PUBLISHED = {
    'mIoU': (MIOU, 2, False),
    'FWIoU': (FWIOU, 2, False),
    'mAcc': (MACC, 2, False),
    'gAcc': (MACC, 2, False),    # published with mAcc's six numbers
    'BIoU': (FWIOU, 2, True),    # published with FWIoU's twelve numbers
    'BF1': (BF1, 1, False),
}


def test_the_preset_table_has_exactly_the_six_metrics():
    assert sorted(PAPER_PRESETS) == sorted(PUBLISHED)


@pytest.mark.parametrize('metric', sorted(PUBLISHED))
def test_published_numbers_and_options(metric):
    theta, pieces, drop_bg = PUBLISHED[metric]
    preset = paper_preset(metric.upper())  # names are case-insensitive
    assert preset['theta'] == theta  # exactly, as typed
    assert (preset['parameterization'], preset['num_pieces'], preset['drop_bg'],
            preset['tol']) == ('bezier', pieces, drop_bg, 5)


@pytest.mark.parametrize('metric', sorted(PUBLISHED))
def test_theta_paper_builds_the_published_curves(metric):
    theta, pieces, drop_bg = PUBLISHED[metric]
    for sur in (Surrogate(metric, theta='paper'),
                AutoSegLoss(target_metric=metric, theta='paper').surrogate):
        assert sur.num_pieces == pieces and sur.parameterization == 'bezier'
        assert (sur.compiled.tol, sur.compiled.drop_bg) == (5, drop_bg)
        # the curves hold the published control points (float32 storage)
        assert sur.coordinates() == pytest.approx(theta, rel=1e-6, abs=1e-9)
    # and they are the curves that the same numbers passed as theta give
    same = Surrogate(metric, theta=theta, num_pieces=pieces, drop_bg=drop_bg)
    x = torch.linspace(0, 1, 101)
    for a, b in zip(Surrogate(metric, theta='paper').curves, same.curves):
        assert torch.equal(a(x), b(x))
