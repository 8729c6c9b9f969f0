"""Pre-screening (``search.prescreen``): candidates scored by optimising free logits with
their surrogate, hopeless ones rejected before any proxy training."""
import pytest
import torch

from asl import ExactMetrics, Surrogate
from asl.data.demo import ensure_demo_data
from asl.loss.presets import PAPER_PRESETS
from asl.search.screening import PRESCREEN_DEFAULTS, rejected, screen_score, screening_labels
from asl.search.settings import SearchConfigError, parse_search_section

# a curve that stays near 0 until x = 0.99, and one that is near 1 from x = 0.01 on: both
# flat where the probabilities are, so the loss gives the logits almost no gradient
FLAT_LOW = [0.99, 0.0, 0.5, 0.0, 0.5, 0.0] * 2
FLAT_HIGH = [0.0, 0.99, 0.0, 0.99, 0.0, 0.99] * 2


@pytest.fixture(scope='module')
def labels(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('d') / 'asl_demo')
    ensure_demo_data(root, seed=0, num_train=12, num_val=2, num_holdout=3)
    ds = dict(type='BaseSegDataset', data_root=root, ann_file='splits/train_proxy.txt',
              data_prefix=dict(img_path='img_dir/train', seg_map_path='ann_dir/train'))
    return screening_labels(ds, 4)


def _score(labels, steps=10, **kw):
    sur = Surrogate('mIoU', num_pieces=2, **kw)
    return screen_score(sur, labels, 5, ExactMetrics(['mIoU'], 5), steps,
                        PRESCREEN_DEFAULTS['lr'])


def test_screening_labels_come_from_the_proxy_split(labels):
    assert labels.shape == (4, 64, 64) and labels.dtype == torch.int64
    assert set(labels.unique().tolist()) <= {0, 1, 2, 3, 4, 255}


def test_useful_surrogates_pass_and_flat_ones_fail(labels):
    identity = _score(labels)
    published = _score(labels, theta=PAPER_PRESETS['mIoU']['theta'])
    flat_low = _score(labels, raw_theta=FLAT_LOW)
    flat_high = _score(labels, raw_theta=FLAT_HIGH)
    assert identity > 0.9 and published > 0.9
    # both fall below the default rule: threshold x the score of a useful surrogate
    cut = PRESCREEN_DEFAULTS['threshold'] * identity
    assert flat_low < cut and flat_high < cut, (flat_low, flat_high)
    scores = [identity, published, flat_low, flat_high]
    assert rejected(scores, identity, 0.5) == [2, 3]
    assert rejected(scores, flat_low, 0.5, keep=[2]) == []
    # deterministic: the same score twice
    assert _score(labels, raw_theta=FLAT_HIGH) == flat_high


def test_prescreen_settings_are_checked():
    s = parse_search_section(dict(prescreen=dict(threshold=0.7)))
    assert s.prescreen == dict(PRESCREEN_DEFAULTS, threshold=0.7)
    assert parse_search_section(dict()).prescreen is None
    for bad, word in ((dict(images=0), 'images'), (dict(threshold=1.5), 'threshold'),
                      (dict(lr=-1), 'lr'), (dict(step=3), 'keys among')):
        with pytest.raises(SearchConfigError, match=word):
            parse_search_section(dict(prescreen=bad))
