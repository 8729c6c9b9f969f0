"""torch.compile with the surrogate losses (MMEngine's ``compile=True`` compiles models and
their losses): the plain PyTorch path is traced (one graph after the label check, which
runs eagerly), the engines are called from compiled graphs."""
import pytest
import torch

from asl import Surrogate
from asl.engines.cpp.extension import ext

from conftest import blob_labels


def _loss(metric, backend):
    s = Surrogate(metric, theta='paper', backend=backend)
    return lambda x, label: 1.0 - s(x, label)


@pytest.mark.parametrize('metric', ['mIoU', 'BF1'])
@pytest.mark.parametrize('backend', ['torch', 'cpp'])
def test_compiled_loss_matches_eager(metric, backend):
    if backend == 'cpp' and ext is None:
        pytest.skip('C++ engine not built')
    torch._dynamo.reset()
    label = blob_labels(2, 5, 24, 24, seed=3)
    logits = torch.randn(2, 5, 24, 24, generator=torch.Generator().manual_seed(4)) * 3
    loss = _loss(metric, backend)
    compiled = torch.compile(loss)
    for _ in range(2):  # the second call reuses the compiled graph
        x1, x2 = logits.clone().requires_grad_(), logits.clone().requires_grad_()
        v1, v2 = compiled(x1, label), loss(x2, label)
        v1.backward()
        v2.backward()
        assert v1.item() == pytest.approx(v2.item(), abs=1e-6)
        assert torch.allclose(x1.grad, x2.grad, atol=1e-7, rtol=1e-5)


def test_plain_path_is_one_graph():
    """The whole surrogate is one graph; the label check runs after it (eagerly), and
    still names invalid labels."""
    torch._dynamo.reset()
    label = blob_labels(1, 4, 16, 16, seed=1)
    logits = torch.randn(1, 4, 16, 16).requires_grad_()
    for metric in ('FWIoU', 'BIoU'):
        expl = torch._dynamo.explain(_loss(metric, 'torch'))(logits, label)
        assert expl.graph_break_count == 1
        assert [len(ops) for ops in expl.ops_per_graph][1:] == [1]  # the loss's 1 - value
    label[0, 0, 0] = 9
    with pytest.raises(ValueError, match=r'label values \[9\] are neither'):
        torch.compile(_loss('mIoU', 'torch'))(logits, label)


@pytest.mark.skipif(ext is None, reason='C++ engine not built')
def test_compiled_model_with_the_loss_trains_like_eager():
    pytest.importorskip('mmseg')
    from asl.mmseg import AutoSegLoss
    torch._dynamo.reset()
    label = blob_labels(2, 3, 16, 16, seed=5)
    image = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(6))
    losses = []
    for compile_it in (False, True):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                                    torch.nn.Conv2d(8, 3, 1))
        crit = AutoSegLoss(target_metric='mIoU', theta='paper')
        step = torch.compile(lambda im, lab: crit(model(im), lab)) if compile_it else (
            lambda im, lab: crit(model(im), lab))
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        run = []
        for _ in range(3):
            opt.zero_grad()
            loss = step(image, label)
            loss.backward()
            opt.step()
            run.append(loss.item())
        losses.append(run)
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)
    assert losses[0][-1] < losses[0][0]
