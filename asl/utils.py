"""Small file helpers shared by the tools and the search (no torch, no MMSeg)."""
from __future__ import annotations

import json
import os
import platform
import tempfile
from typing import Any, Optional

__all__ = ['atomic_write_text', 'atomic_write_json', 'read_json', 'read_json_or_none',
           'sha256_file',
           'cpu_model']


#: The source checkout's root (where ``tools/`` is, if it is a checkout).
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def train_entry() -> list:
    """What follows the interpreter to run ``tools/train.py``: the script of a source
    checkout, else the installed package's entry."""
    script = os.path.join(REPO_ROOT, 'tools', 'train.py')
    return [script] if os.path.isfile(script) else ['-m', 'asl.mmseg.cli', 'train']


def atomic_write_text(path: str, text: str, mode: Optional[int] = None) -> None:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace``.

    Readers see either the old file or the whole new one, never a partial write.
    ``mode``: the file's permission bits (default: the temporary file's, 0o600).
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix='.' + os.path.basename(path) + '.')
    try:
        with os.fdopen(fd, 'w') as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically (see :func:`atomic_write_text`)."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + '\n')


def read_json(path: str) -> Any:
    """Read a JSON file."""
    with open(path) as f:
        return json.load(f)


def sha256_file(path: str) -> str:
    """The SHA-256 of a file's bytes, in hex."""
    import hashlib
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            h.update(block)
    return h.hexdigest()


def read_json_or_none(path: str) -> Any:
    """The parsed JSON file at ``path``, or None when it is missing, unreadable or not
    valid JSON (for instance a file another process has not finished writing)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def usable_cores() -> int:
    """The CPU cores this process may run on: its affinity mask (``taskset``, a Slurm
    job's or a container's CPU set), which ``os.cpu_count()`` ignores; at least 1."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except (AttributeError, OSError):  # pragma: no cover (not Linux)
        return os.cpu_count() or 1


def cpu_model() -> str:
    """The CPU's model name (from ``/proc/cpuinfo`` on Linux, else what ``platform``
    knows)."""
    model = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.lower().startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return model


def die_with_parent() -> None:
    """In a child process: be sent SIGKILL when the parent process dies (Linux's
    ``PR_SET_PDEATHSIG``; nothing elsewhere). Call it first thing in the child."""
    import ctypes
    import signal
    try:
        ctypes.CDLL('libc.so.6', use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover (not Linux)
        pass
