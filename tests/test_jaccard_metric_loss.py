"""The Jaccard metric loss (Wang & Blaschko, NeurIPS 2023): hand-computed values, its
relation to the soft Jaccard loss, soft labels, ignore_index, options, the MMSeg contract."""
import pytest
import torch

from asl.loss.jaccard import jaccard_metric_loss, soft_labels

# one image of 4 pixels, 2 classes: the probability of class 1 and the labels
X1 = [0.2, 0.7, 0.1, 0.9]
LABEL = [0, 1, 0, 1]


def _probs():
    x1 = torch.tensor(X1, dtype=torch.float64)
    return torch.stack([1 - x1, x1])[None]  # (1, 2, 4)


def _target():
    y1 = torch.tensor(LABEL, dtype=torch.float64)
    return torch.stack([1 - y1, y1])[None]


# By hand. Class 1: |x| = 1.9, |y| = 2, |x - y|_1 = .2 + .3 + .1 + .1 = .7,
# ||x - y||^2 = .04 + .09 + .01 + .01 = .15. Class 0: |x| = 2.1, |y| = 2, |x - y|_1 = .7,
# ||x - y||^2 = .15.
JML1 = [1 - (2.1 + 2 - .7) / (2.1 + 2 + .7), 1 - (1.9 + 2 - .7) / (1.9 + 2 + .7)]
JML2 = [1 - (2.1 + 2 - .15) / (2.1 + 2 + .15), 1 - (1.9 + 2 - .15) / (1.9 + 2 + .15)]


def test_hand_computed_values():
    p, y = _probs(), _target()
    assert jaccard_metric_loss(p, y).item() == pytest.approx(sum(JML1) / 2, abs=1e-12)
    assert jaccard_metric_loss(p, y, norm='l2').item() == pytest.approx(sum(JML2) / 2,
                                                                         abs=1e-12)
    assert jaccard_metric_loss(p, y, classes=[1]).item() == pytest.approx(JML1[1], abs=1e-12)
    # with hard labels JML1 is the soft Jaccard loss: <x, y> = 1.6 for class 1
    assert JML1[1] == pytest.approx(1 - 1.6 / (1.9 + 2 - 1.6), abs=1e-12)
    # weighted class mean
    assert jaccard_metric_loss(p, y, class_weight=[1.0, 3.0]).item() == \
        pytest.approx((JML1[0] + 3 * JML1[1]) / 4, abs=1e-12)


def test_module_on_logits_with_an_ignored_pixel():
    from asl.mmseg import JaccardMetricLoss
    p = _probs()[0]                                          # (2, 4)
    extra = torch.tensor([[0.05], [0.95]], dtype=torch.float64)  # the ignored pixel
    logits = torch.cat([p, extra], 1).log().reshape(1, 2, 1, 5).float()
    label = torch.tensor(LABEL + [255]).reshape(1, 1, 5)
    loss = JaccardMetricLoss(loss_weight=2.0)
    assert loss(logits, label).item() == pytest.approx(2 * sum(JML1) / 2, abs=1e-6)
    assert loss.loss_name == 'loss_jml'
    # another ignore_index: 255 becomes a label out of range
    with pytest.raises(ValueError, match=r'\[255\]'):
        loss(logits, label, ignore_index=0)


def _soft_iou_loss(probs, label, per_image):
    """1 - soft IoU (<p, g> / (|p| + |g| - <p, g>)), mean over the present classes."""
    n, c = probs.shape[:2]
    valid = (label != 255)
    g = torch.stack([(label == k) for k in range(c)], 1).to(probs.dtype)
    p = probs * valid[:, None]
    dims = (2, 3) if per_image else (0, 2, 3)
    inter = (p * g).sum(dims)
    union = p.sum(dims) + g.sum(dims) - inter
    present = g.sum(dims) > 0
    per = 1 - inter / union
    if per_image:
        return torch.stack([per[i][present[i]].mean() for i in range(n)]).mean()
    return per[present].mean()


@pytest.mark.parametrize('per_image', [False, True])
def test_hard_labels_give_one_minus_soft_iou(per_image, labels):
    from asl.mmseg import JaccardMetricLoss
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 12, 12, generator=g, dtype=torch.float64)
    label = labels(3, 4, 12, 12, seed=1)  # class 4 absent, 5% ignored
    expected = _soft_iou_loss(logits.softmax(1), label, per_image)
    got = JaccardMetricLoss(per_image=per_image)(logits, label)
    assert got.item() == pytest.approx(expected.item(), abs=1e-6)
    # JML2 differs from the soft Jaccard loss on soft predictions
    got2 = JaccardMetricLoss(norm='l2', per_image=per_image)(logits, label)
    assert abs(got2.item() - expected.item()) > 1e-3


def test_classes_present_all_and_listed(labels):
    g = torch.Generator().manual_seed(2)
    probs = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64).softmax(1)
    label = labels(2, 3, 8, 8, seed=3, ignore_frac=0.0)  # class 3 absent
    target, valid, hard = soft_labels(label, 4, dtype=torch.float64)
    per_class = [jaccard_metric_loss(probs, target, valid, classes=[k]).item()
                 for k in range(4)]
    # an absent class: |y| = 0 and |x - y| = |x|, so its ratio is 0 and its loss 1
    assert per_class[3] == pytest.approx(1.0)
    assert jaccard_metric_loss(probs, target, valid).item() == \
        pytest.approx(sum(per_class[:3]) / 3)
    assert jaccard_metric_loss(probs, target, valid, classes='all').item() == \
        pytest.approx(sum(per_class) / 4)
    assert jaccard_metric_loss(probs, target, valid, classes=[0, 2]).item() == \
        pytest.approx((per_class[0] + per_class[2]) / 2)


def test_per_image_averages_the_images():
    p, y = _probs(), _target()
    p2, y2 = torch.cat([p, p.flip(1)]), torch.cat([y, y])  # image 2: the classes swapped
    loss = jaccard_metric_loss(p2, y2, per_image=True).item()
    img2 = jaccard_metric_loss(p.flip(1), y).item()
    assert loss == pytest.approx((sum(JML1) / 2 + img2) / 2, abs=1e-12)
    # pooled over the batch: the sums of both images in each ratio
    pooled = jaccard_metric_loss(p2, y2).item()
    assert pooled != pytest.approx(loss, abs=1e-6)


def test_label_smoothing_is_a_soft_target(labels):
    from asl.mmseg import JaccardMetricLoss
    eps, c = 0.1, 4
    label = labels(2, c, 8, 8, seed=4)
    target, valid, _ = soft_labels(label, c, label_smoothing=eps, dtype=torch.float64)
    valid_px = (label != 255)
    assert torch.allclose(target.sum(1), valid_px.to(target.dtype))  # rows sum to 1 (or 0)
    assert target.max().item() == pytest.approx(1 - eps + eps / c)
    assert (target * (~valid_px)[:, None]).abs().sum() == 0  # ignored pixels: no label
    # a prediction equal to the soft target has loss 0 (the soft Jaccard loss would not)
    logits = torch.where(valid_px[:, None], target, torch.full_like(target, 0.25)).log()
    assert JaccardMetricLoss(label_smoothing=eps)(logits, label).item() == \
        pytest.approx(0.0, abs=1e-6)
    assert JaccardMetricLoss()(logits, label).item() > 0.05


@pytest.mark.parametrize('norm', ['l1', 'l2'])
def test_metric_properties(norm):
    """On soft vectors of one class: zero only on equal inputs and symmetric (both); the
    triangle inequality for JML1, which the squared distance of JML2 breaks."""
    g = torch.Generator().manual_seed(5)
    broken = 0
    for _ in range(200):
        a, b, c = (torch.rand(1, 1, 6, generator=g, dtype=torch.float64) for _ in range(3))
        d = lambda x, y: jaccard_metric_loss(x, y, norm=norm, classes='all').item()  # noqa
        assert d(a, a) == pytest.approx(0.0, abs=1e-12) and d(a, b) > 1e-6
        assert d(a, b) == pytest.approx(d(b, a), abs=1e-12)
        broken += d(a, c) > d(a, b) + d(b, c) + 1e-12
    assert (broken == 0) == (norm == 'l1')


def test_ignored_pixels_change_nothing_and_get_no_gradient(labels):
    from asl.mmseg import JaccardMetricLoss
    g = torch.Generator().manual_seed(6)
    logits = torch.randn(2, 3, 10, 10, generator=g, requires_grad=True)
    label = labels(2, 3, 10, 10, seed=7, ignore_frac=0.2)
    loss = JaccardMetricLoss(per_image=True)
    value = loss(logits, label)
    value.backward()
    ignored = (label == 255)[:, None].expand_as(logits)
    assert torch.isfinite(logits.grad).all()
    assert logits.grad[ignored].abs().max() == 0
    other = logits.detach().clone()
    other[ignored] = torch.randn(int(ignored.sum()), generator=g) * 10
    assert loss(other, label).item() == pytest.approx(value.item(), abs=1e-6)


def test_no_chosen_class_gives_zero_with_a_gradient():
    from asl.mmseg import JaccardMetricLoss
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    value = JaccardMetricLoss()(logits, torch.full((1, 4, 4), 255))
    assert value.item() == 0.0
    value.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


@pytest.mark.parametrize('kwargs, match', [
    (dict(norm='l3'), "norm must be one of .*'l3'"),
    (dict(classes='some'), "classes must be .*'some'"),
    (dict(classes=[]), r'classes must be .*\[\]'),
    (dict(label_smoothing=1.0), 'label_smoothing must be .*1.0'),
    (dict(smooth=-1), 'smooth must be .*-1'),
    (dict(class_weight=[1, -2]), r'class_weight must be .*\[1, -2\]'),
    (dict(loss_name='jml'), "loss_name must start with 'loss_'.*'jml'"),
    (dict(per_image='yes'), "per_image must be True or False, got 'yes'"),
])
def test_bad_options_are_named(kwargs, match):
    from asl.mmseg import JaccardMetricLoss
    with pytest.raises(ValueError, match=match):
        JaccardMetricLoss(**kwargs)


def test_bad_inputs_are_named():
    from asl.mmseg import JaccardMetricLoss
    logits = torch.randn(1, 3, 4, 4)
    label = torch.zeros(1, 4, 4, dtype=torch.long)
    label[0, 0, 0] = 7
    with pytest.raises(ValueError, match=r'label values \[7\]'):
        JaccardMetricLoss()(logits, label)
    with pytest.raises(ValueError, match=r'classes \[5\] are not below the 3 classes'):
        JaccardMetricLoss(classes=[0, 5])(logits, torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r'class_weight has 2 entries'):
        JaccardMetricLoss(class_weight=[1, 1])(logits, torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match=r'weight must have the shape of label'):
        JaccardMetricLoss()(logits, torch.zeros(1, 4, 4, dtype=torch.long),
                            weight=torch.ones(1, 2, 2))


def test_mmseg_decode_head_sums_it_with_cross_entropy():
    """In a ``loss_decode`` list next to cross-entropy, built from the registry (the
    combination configs), each loss logged under its own name."""
    pytest.importorskip('mmseg')
    from mmengine.structures import PixelData
    from mmseg.models.decode_heads import FCNHead
    from mmseg.structures import SegDataSample
    import asl.mmseg  # noqa: F401  (registers the loss)
    head = FCNHead(in_channels=4, channels=4, num_convs=1, num_classes=3, loss_decode=[
        dict(type='CrossEntropyLoss', loss_weight=1.0),
        dict(type='JaccardMetricLoss', loss_weight=1.0)])
    g = torch.Generator().manual_seed(8)
    seg_logits = torch.randn(2, 3, 8, 8, generator=g, requires_grad=True)
    samples = []
    for i in range(2):
        s = SegDataSample()
        s.gt_sem_seg = PixelData(data=torch.randint(0, 3, (1, 8, 8), generator=g))
        samples.append(s)
    losses = head.loss_by_feat(seg_logits, samples)
    assert {'loss_ce', 'loss_jml'} <= set(losses)
    label = torch.stack([s.gt_sem_seg.data[0] for s in samples])
    from asl.mmseg import JaccardMetricLoss
    assert losses['loss_jml'].item() == pytest.approx(
        JaccardMetricLoss()(seg_logits, label).item(), abs=1e-6)
    sum(v for k, v in losses.items() if 'loss' in k).backward()
    assert torch.isfinite(seg_logits.grad).all()


def test_pixel_weights_multiply_the_valid_mask(labels):
    """A pixel sampler's weights: weight 0 is an ignored pixel, weight 2 a doubled one."""
    from asl.mmseg import JaccardMetricLoss
    g = torch.Generator().manual_seed(9)
    logits = torch.randn(1, 3, 6, 6, generator=g, dtype=torch.float64)
    label = labels(1, 3, 6, 6, seed=10, ignore_frac=0.0)
    weight = torch.ones(1, 6, 6, dtype=torch.float64)
    weight[0, :2] = 0
    masked = label.clone()
    masked[0, :2] = 255
    loss = JaccardMetricLoss()
    assert loss(logits, label, weight=weight).item() == pytest.approx(
        loss(logits, masked).item(), abs=1e-9)
    doubled = torch.cat([logits, logits], 3)  # every pixel twice = weight 2 everywhere
    assert loss(logits, label, weight=2 * torch.ones_like(weight)).item() == pytest.approx(
        loss(doubled, torch.cat([label, label], 2)).item(), abs=1e-9)
