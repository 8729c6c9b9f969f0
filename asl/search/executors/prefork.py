"""A pre-warmed trial launcher: import torch and MMSeg once, fork one process per trial.

Starting ``tools/train.py`` costs a few seconds before the first iteration (importing
torch, MMEngine, MMSeg and mmcv, filling the registries, the imports behind
deterministic mode). On a small proxy training that is a large share of the trial. The
launcher server (``python -m asl.search.executors.prefork``) pays it once: it imports everything a
training needs, then waits for requests on its standard input. For each one it forks a
child that becomes the trial:

* the child is still one process per trial, in its own session (its process group is
  what the executor stops), killed when the server dies (``PR_SET_PDEATHSIG``; the
  server itself dies with the controller), with its own ``stdout.log``, environment,
  working directory and thread count;
* it runs exactly what ``tools/train.py ARGS`` runs (:func:`asl.mmseg.entry.run_training`),
  and its exit status is the one ``tools/train.py`` would give.

The server never runs a torch operation and must never initialise CUDA: a process forked
from one that did fails at its first CUDA call ("Cannot re-initialize CUDA in forked
subprocess", or the driver's "initialization error"). MMEngine, mmcv and MMSeg ask
``torch.cuda.is_available()`` while they are imported, which by default initialises the
CUDA driver (``cuInit``) in the asking process without torch noticing
(``torch.cuda.is_initialized()`` stays False). So:

* the server runs with ``PYTORCH_NVML_BASED_CUDA_CHECK=1``: availability and device
  counts are read through NVML, which leaves the driver alone;
* it reports both torch's flag and whether the CUDA driver library is loaded in it
  (:func:`cuda_state`); the executor gives up forking GPU trials if either is set;
* a forked GPU trial checks its own start (:func:`cuda_state` again, inherited from the
  server, plus torch's bad-fork flag) and, if CUDA was touched before the fork, replaces
  itself with a fresh ``tools/train.py`` process (same pid, log, environment and
  arguments) instead of failing at its first CUDA call.

Protocol (JSON lines): the client writes ``{"id", "argv", "env", "log", "cwd",
"threads"}`` to the server's stdin; the server answers on its stdout
``{"ready": true, ...}`` once, ``{"id", "pid"}`` (or ``{"id", "error"}``) per request,
and ``{"exit": pid, "code": status}`` when a child ends (``-N`` for signal N, like
:class:`subprocess.Popen`). When its stdin closes the server stops its children and exits.
"""
from __future__ import annotations

import gc
import json
import os
import select
import signal
import subprocess
import sys
import time
from typing import Dict, List, Optional

from ...utils import REPO_ROOT, die_with_parent

__all__ = ['PreforkServer', 'PreforkError', 'cuda_state', 'NVML_ENV']

#: Set in the server's environment: CUDA availability checks through NVML.
NVML_ENV = 'PYTORCH_NVML_BASED_CUDA_CHECK'


class PreforkError(RuntimeError):
    """The launcher server could not start, or died."""




# ----------------------------------------------------------------------------- server


def cuda_driver_loaded(maps: Optional[str] = None) -> bool:
    """Whether the CUDA driver library (``libcuda.so``) is mapped into this process
    (``maps``: the text of ``/proc/self/maps``, read if None). The CUDA runtime loads it
    at its first call, which also initialises the driver; NVML does not load it."""
    if maps is None:
        try:
            with open('/proc/self/maps') as f:
                maps = f.read()
        except OSError:  # pragma: no cover (not Linux)
            return False
    return any(os.path.basename(line.split()[-1]).startswith('libcuda.so')
               for line in maps.splitlines() if '/' in line)


def cuda_state() -> Dict[str, bool]:
    """``cuda_initialized`` (torch's lazy CUDA state, or its bad-fork flag in a child) and
    ``cuda_driver_loaded`` (:func:`cuda_driver_loaded`) of this process; reads nothing
    through CUDA itself."""
    torch = sys.modules.get('torch')
    init = False
    if torch is not None:
        init = bool(torch.cuda.is_initialized())
        bad_fork = getattr(torch.cuda, '_is_in_bad_fork', None)
        init = init or bool(bad_fork() if bad_fork is not None else False)
    return dict(cuda_initialized=init, cuda_driver_loaded=cuda_driver_loaded())


def _warm_up() -> Dict:
    """Import what a training imports, without running any torch operation."""
    t0 = time.time()
    import torch
    # Deterministic mode imports part of torch's compiler stack on first use.
    torch.use_deterministic_algorithms(True)
    torch.use_deterministic_algorithms(False)
    import mmengine.hooks  # noqa: F401
    import mmengine.runner  # noqa: F401
    import mmengine.visualization  # noqa: F401
    import mmseg.datasets  # noqa: F401
    import mmseg.evaluation  # noqa: F401
    import mmseg.models  # noqa: F401
    import mmseg.visualization  # noqa: F401
    from mmseg.utils import register_all_modules

    import asl.mmseg  # noqa: F401
    import asl.mmseg.entry  # noqa: F401  (imports MMSeg's models and datasets now, once)
    register_all_modules(init_default_scope=False)
    # What is imported now lives as long as the server: keep the children's garbage
    # collector off it, so that they do not copy its memory pages by touching it.
    gc.collect()
    gc.freeze()
    return dict(import_s=time.time() - t0, pid=os.getpid(), **cuda_state())


def _run_child(req: Dict, proto_fd: int, in_fd: int) -> None:
    """In the forked child: become the trial described by ``req``; never returns."""
    code = 1
    try:
        os.setsid()
        die_with_parent()
        if os.getppid() != req['_server']:  # the server died before prctl took effect
            os._exit(1)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        os.close(proto_fd)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, in_fd)  # the request pipe is replaced, not inherited
        if null != in_fd:
            os.close(null)
        log = os.open(req['log'], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        sys.stdout.reconfigure(line_buffering=True)
        sys.stderr.reconfigure(line_buffering=True)
        if req.get('cwd'):
            os.chdir(req['cwd'])
        os.environ.update({str(k): str(v) for k, v in (req.get('env') or {}).items()})
        if os.environ.get('CUDA_VISIBLE_DEVICES', '').strip():
            _respawn_if_cuda_touched(req)
        import torch
        if req.get('threads'):
            torch.set_num_threads(int(req['threads']))
        from asl.mmseg.entry import run_training
        argv = [str(a) for a in req['argv']]
        sys.argv = ['tools/train.py', *argv]
        try:
            code = run_training(argv)
        except SystemExit as e:  # argparse errors, SystemExit('error: ...')
            if isinstance(e.code, int):
                code = e.code
            elif e.code is None:
                code = 0
            else:
                print(e.code, file=sys.stderr)
                code = 1
    except BaseException:  # noqa: B036  (the child must never return into the server)
        import traceback
        traceback.print_exc()
        code = 1
    finally:
        try:
            from asl.mmseg.entry import exit_process  # flushes the logs, then os._exit
            exit_process(code if isinstance(code, int) else 1)
        finally:
            os._exit(1)  # only if quick_exit itself failed


def _respawn_if_cuda_touched(req: Dict) -> None:
    """In a forked GPU trial: if CUDA was touched before the fork, become a fresh
    ``tools/train.py`` process (``execv``: same pid, session, log and environment);
    returns only when the fork is clean."""
    state = cuda_state()
    if not (state['cuda_initialized'] or state['cuda_driver_loaded']):
        return
    from ...utils import train_entry
    argv = [sys.executable, *train_entry(), *[str(a) for a in req['argv']]]
    print(f'[asl.search] the trial launcher had touched CUDA before this trial was forked '
          f'({", ".join(k for k, v in state.items() if v)}); starting the trial as a fresh '
          'process instead', file=sys.stderr, flush=True)
    os.execv(sys.executable, argv)


def _exit_on_signal(signum, frame):
    raise SystemExit(0)


def serve() -> int:
    """The server loop (``python -m asl.search.executors.prefork``)."""
    proto_fd = os.dup(1)
    os.dup2(2, 1)  # stray prints of imported modules go to the server's log, not the protocol
    proto = os.fdopen(proto_fd, 'w', buffering=1)
    in_fd = 0

    def send(msg: Dict) -> None:
        proto.write(json.dumps(msg) + '\n')
        proto.flush()

    info = _warm_up()
    send(dict(ready=True, **info))
    children: Dict[int, str] = {}
    buf = b''
    me = os.getpid()
    signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        while True:
            while children:  # reap
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    break
                children.pop(pid, None)
                send({'exit': pid, 'code': os.waitstatus_to_exitcode(status)})
            ready, _, _ = select.select([in_fd], [], [], 0.1)
            if not ready:
                continue
            chunk = os.read(in_fd, 65536)
            if not chunk:
                break  # the client closed the pipe: stop
            buf += chunk
            while b'\n' in buf:
                line, buf = buf.split(b'\n', 1)
                if not line.strip():
                    continue
                try:
                    req = json.loads(line)
                    req['_server'] = me
                    pid = os.fork()
                except Exception as e:  # bad request, fork failure
                    send({'id': req.get('id') if isinstance(req, dict) else None,
                          'error': f'{type(e).__name__}: {e}'})
                    continue
                if pid == 0:
                    _run_child(req, proto_fd, in_fd)
                children[pid] = req.get('id')
                send({'id': req.get('id'), 'pid': pid})
    finally:
        for pid in list(children):
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
    return 0


# ----------------------------------------------------------------------------- client


class PreforkServer:
    """Client side: starts the server and forks trials through it.

    Args:
        python (str): interpreter for the server.
        env (dict): the server's environment (thread counts, ``CUDA_VISIBLE_DEVICES``).
        log_path (str): where the server's own output goes.
        start_timeout (float): seconds to wait for the server's warm-up.
    """

    def __init__(self, python: str, env: Dict[str, str], log_path: str,
                 start_timeout: float = 300.0):
        self.python = python
        self.env = dict(env)
        self.log_path = log_path
        self.start_timeout = start_timeout
        self.proc: Optional[subprocess.Popen] = None
        self.info: Dict = {}
        self._buf = b''
        self._exits: Dict[int, int] = {}
        self._next_id = 0

    # -- life cycle
    def start(self, wait: bool = True) -> Optional[Dict]:
        """Start the server; with ``wait``, also wait until it has imported everything
        (else call :meth:`wait_ready` before the first :meth:`fork`)."""
        if self.proc is None:
            root = REPO_ROOT
            env = dict(self.env)
            paths = [p for p in env.get('PYTHONPATH', '').split(os.pathsep) if p]
            env['PYTHONPATH'] = os.pathsep.join([root] + paths)
            env[NVML_ENV] = '1'  # imports must not initialise the CUDA driver here
            os.makedirs(os.path.dirname(os.path.abspath(self.log_path)), exist_ok=True)
            with open(self.log_path, 'ab') as log:
                self.proc = subprocess.Popen(
                    [self.python, '-m', 'asl.search.executors.prefork'], stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE, stderr=log, env=env, start_new_session=True,
                    preexec_fn=die_with_parent)
            os.set_blocking(self.proc.stdout.fileno(), False)
        return self.wait_ready() if wait else None

    def wait_ready(self) -> Dict:
        """Wait for the server's warm-up; return its report (import time, pid...)."""
        if self.info:
            return self.info
        msg = self._wait_for(lambda m: 'ready' in m, self.start_timeout)
        if msg is None:
            self.close()
            raise PreforkError(f'the trial launcher did not start within '
                               f'{self.start_timeout:g} s (see {self.log_path})')
        self.info = msg
        return msg

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def close(self) -> None:
        """Stop the server (its children die with it)."""
        if self.proc is None:
            return
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    # -- messages
    def _read(self, timeout: float) -> List[Dict]:
        if self.proc is None:
            return []
        fd = self.proc.stdout.fileno()
        ready, _, _ = select.select([fd], [], [], max(timeout, 0.0))
        msgs = []
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                chunk = None
            if chunk:
                self._buf += chunk
        while b'\n' in self._buf:
            line, self._buf = self._buf.split(b'\n', 1)
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if 'exit' in msg:
                self._exits[int(msg['exit'])] = int(msg['code'])
            else:
                msgs.append(msg)
        return msgs

    def _wait_for(self, match, timeout: float) -> Optional[Dict]:
        deadline = time.time() + timeout
        while True:
            for msg in self._read(min(0.2, max(deadline - time.time(), 0.0))):
                if match(msg):
                    return msg
            if time.time() >= deadline or not self.alive():
                # one last read: the server may have answered just before exiting
                for msg in self._read(0.0):
                    if match(msg):
                        return msg
                return None

    def fork(self, argv: List[str], env: Dict[str, str], log: str, cwd: Optional[str] = None,
             threads: Optional[int] = None) -> int:
        """Start a trial running ``tools/train.py argv``; return its pid."""
        self.wait_ready()
        if not self.alive():
            raise PreforkError('the trial launcher is not running')
        self._next_id += 1
        rid = self._next_id
        req = dict(id=rid, argv=list(argv), env=dict(env), log=log, cwd=cwd or os.getcwd(),
                   threads=threads)
        try:
            self.proc.stdin.write((json.dumps(req) + '\n').encode())
            self.proc.stdin.flush()
        except OSError as e:
            raise PreforkError(f'the trial launcher stopped: {e}') from None
        msg = self._wait_for(lambda m: m.get('id') == rid, 60.0)
        if msg is None:
            raise PreforkError('the trial launcher did not answer')
        if 'error' in msg:
            raise PreforkError(f'the trial launcher could not fork: {msg["error"]}')
        return int(msg['pid'])

    def exit_code(self, pid: int) -> Optional[int]:
        """The exit status of a child if the server has reported it, else None."""
        self._read(0.0)
        return self._exits.pop(pid, None)

    def wait(self, pid: int, timeout: float) -> Optional[int]:
        """Wait for a child's exit status (None if not reported within ``timeout``)."""
        deadline = time.time() + timeout
        while True:
            code = self.exit_code(pid)
            if code is not None or time.time() >= deadline or not self.alive():
                return code if code is not None else self.exit_code(pid)
            self._read(0.1)


if __name__ == '__main__':
    sys.exit(serve())
