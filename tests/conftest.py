import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# Without a GPU the Triton engine's kernels run through Triton's interpreter. Triton reads
# the variable when it defines its own functions, so it is set before anything (torch's
# compiler among others) imports Triton.
if not torch.cuda.is_available():
    os.environ.setdefault('TRITON_INTERPRET', '1')


def blob_labels(n, c, h, w, seed=0, ignore_frac=0.05, all_classes=True):
    """Spatially coherent random labels (upsampled coarse grid), every class present."""
    g = torch.Generator().manual_seed(seed)
    while True:
        coarse = torch.randint(0, c, (n, 1, max(2, h // 6), max(2, w // 6)), generator=g)
        lab = torch.nn.functional.interpolate(coarse.float(), size=(h, w),
                                              mode='nearest').long()[:, 0]
        if ignore_frac:
            lab[torch.rand(lab.shape, generator=g) < ignore_frac] = 255
        if not all_classes or all((lab == k).any() for k in range(c)):
            return lab


@pytest.fixture
def labels():
    return blob_labels


@pytest.fixture(scope='session')
def reference_search(tmp_path_factory):
    """The uninterrupted tiny search (``search_fixtures.TINY``), run once per session
    through the real ASL_search.sh into a temporary work directory (``ASL_WORK_DIR``);
    the searches that must end the same way are compared with it.

    Returns:
        (work_dir, CompletedProcess)
    """
    pytest.importorskip('mmseg')
    import subprocess

    from search_fixtures import NAME, TINY, env
    work = tmp_path_factory.mktemp('reference') / 'search'
    out = subprocess.run(['bash', 'ASL_search.sh', NAME + '.py', '0', '1',
                          '--threads-per-trial', '1', '--cfg-options', *TINY], cwd=ROOT,
                         env=env(ASL_WORK_DIR=str(work)), capture_output=True, text=True,
                         timeout=1200)
    return work, out
