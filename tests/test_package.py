"""A real package: ``python -m build`` gives a wheel that installs into a fresh virtual
environment, and a 2-iteration MMSeg training with ``AutoSegLoss`` runs there, with the
C++ engine built and without it (then the PyTorch path, with one warning).

The fresh environment is ``python -m venv`` plus a ``.pth`` line naming the test
environment's site-packages (torch, mmcv, MMSeg), whose own ``.pth`` files (the editable
install of this checkout among them) are then not run: ``asl`` comes from the wheel only."""
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest

from asl.utils import usable_cores

pytest.importorskip('mmseg')
pytest.importorskip('build')

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, 'configs', 'retrain', 'demo',
                      'deeplabv3plus_r18tiny-d8_asl-miou_1xb8-1200_asldemo-64x64.py')
TRAIN = r'''
import os, sys
site, config, data, work = sys.argv[1:5]
import asl
assert asl.__file__.startswith(site), asl.__file__
from asl.data.demo import ensure_demo_data
from mmengine.config import Config
from mmengine.runner import Runner
ensure_demo_data(data, 0)
cfg = Config.fromfile(config)
cfg.merge_from_dict({'work_dir': work, 'train_cfg.max_iters': 2, 'train_cfg.val_interval': 2,
                     'param_scheduler.0.end': 2, 'default_hooks.logger.interval': 1,
                     'train_dataloader.dataset.data_root': data,
                     'val_dataloader.dataset.data_root': data,
                     'test_dataloader.dataset.data_root': data, 'demo_data.root': data})
Runner.from_cfg(cfg).train()
from asl.engines.cpp.extension import ext
print('ENGINE', 'cpp' if ext is not None else 'none', asl.__file__)
'''


def _copy_source(dst):
    for name in ('asl', 'setup.py', 'pyproject.toml', 'README.md', 'LICENSE'):
        src = os.path.join(ROOT, name)
        if os.path.isdir(src):
            shutil.copytree(src, os.path.join(dst, name), ignore=shutil.ignore_patterns(
                '__pycache__', '*.so', '*.pyc'))
        else:
            shutil.copy(src, dst)


def _fresh_venv(path):
    """A new venv whose interpreter also sees the packages of this one (torch, mmcv,
    MMSeg), but not their .pth hooks; returns (python, its site-packages)."""
    subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(path)], check=True,
                   timeout=300)
    python = str(path / 'bin' / 'python')
    site = subprocess.run([python, '-c', 'import sysconfig; print(sysconfig.get_paths()'
                           '["purelib"])'], capture_output=True, text=True,
                          check=True).stdout.strip()
    ours = sysconfig.get_paths()['purelib']
    with open(os.path.join(site, 'test_env.pth'), 'w') as f:
        f.write(ours + '\n')
    return python, site


@pytest.mark.parametrize('with_engine', [True, False])
def test_wheel_installs_and_trains(tmp_path, with_engine):
    src, dist = tmp_path / 'src', tmp_path / 'dist'
    src.mkdir()
    _copy_source(str(src))
    env = dict(os.environ, PYTHONPATH='')
    # one module, unoptimised (-O0 after setup.py's -O3: 40 s of compiling instead of 62;
    # what is tested is the package, not the engine's speed)
    env.update({'ASL_CPU_FLAGS': '-O0'} if with_engine else {'ASL_NO_EXT': '1'})
    out = subprocess.run([sys.executable, '-m', 'build', '--no-isolation', '--wheel',
                          '--outdir', str(dist)], cwd=str(src), env=env, capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (wheel, ) = [str(p) for p in dist.iterdir() if p.suffix == '.whl']
    names = zipfile.ZipFile(wheel).namelist()
    assert 'asl/engines/triton/kernels.py' in names and 'asl/engines/cpp/csrc/ir_ops.h' in names
    assert any(n.startswith('asl/engines/cpp/_C') for n in names) is with_engine
    python, site = _fresh_venv(tmp_path / 'venv')
    subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', '--no-deps', '--target',
                    site, wheel], check=True, timeout=300)
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    run = subprocess.run([python, '-c', TRAIN, site, CONFIG, str(tmp_path / 'data'),
                          str(tmp_path / 'work')], cwd=str(tmp_path), capture_output=True,
                         text=True, timeout=900, env=dict(env, OMP_NUM_THREADS=str(usable_cores())))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert f'ENGINE {"cpp" if with_engine else "none"} {site}' in run.stdout
    warning = 'UserWarning: the C++ extension asl.engines.cpp._C is not built'
    assert (run.stderr.count(warning) == 1) is not with_engine, run.stderr[-2000:]


def test_engine_module_dispatch():
    """A distributed build has a portable engine and an AVX2/FMA one; the latter is taken
    only on CPUs torch reports as AVX2 or AVX512."""
    from asl.engines.cpp.extension import module_names
    assert module_names('AVX2') == module_names('AVX512') == ['_C_avx2', '_C']
    assert module_names('DEFAULT') == ['_C']
