"""Run generated programs in a separate, limited Python process (for code-generation tasks).

A program never runs in the evaluating process. :func:`run_program` starts a fresh
``python -I`` (isolated: no user site, no environment-driven imports) in its own session and
an empty temporary folder, with a stripped environment (no proxy settings, no home), and
before the program runs the child:

- sets resource limits: CPU seconds, address space, file size and open files;
- turns networking off in Python: creating, connecting or resolving a socket raises
  ``OSError`` (the program cannot reach a server through Python's socket module);
- turns off ``os.system``, ``subprocess`` launching and ``os.fork`` family calls.

The wall-clock ``timeout`` kills the whole process group. This is a guard against
accidents in model-written code (infinite loops, stray file writes, network calls), not a
sandbox for hostile code: run untrusted completions in a container as well.

Example:
    >>> run_program("assert 1 + 1 == 2").status
    'passed'
    >>> run_program("while True: pass", timeout=1).status
    'timeout'
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ..errors import ConfigError

__all__ = ["ExecutionResult", "run_program", "run_programs", "STATUSES"]

STATUSES = ("passed", "failed", "timeout")
"""What :class:`ExecutionResult.status` can be."""

_GUARD = r"""
import builtins, os, resource, socket, subprocess, sys
limit_s, memory, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
resource.setrlimit(resource.RLIMIT_CPU, (limit_s, limit_s + 1))
if memory:
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
def _refuse(*args, **kwargs):
    raise OSError("networking and process launching are turned off while evaluating generated code")
class _NoSocket(socket.socket):
    def __init__(self, *args, **kwargs):
        _refuse()
socket.socket = _NoSocket
for _name in ("create_connection", "getaddrinfo", "gethostbyname", "socketpair", "fromfd", "create_server"):
    setattr(socket, _name, _refuse)
for _name in ("system", "popen", "fork", "forkpty", "execv", "execve", "execvp", "execvpe", "spawnv", "spawnve",
              "posix_spawn", "posix_spawnp", "kill", "killpg"):
    if hasattr(os, _name):
        setattr(os, _name, _refuse)
subprocess.Popen = _refuse
with open(path, encoding="utf-8") as handle:
    source = handle.read()
del handle
code = compile(source, "program.py", "exec")
namespace = {"__name__": "__main__", "__builtins__": builtins}
exec(code, namespace)
"""


@dataclass(frozen=True)
class ExecutionResult:
    """How a program ran: ``status`` is ``"passed"`` (exit code 0), ``"failed"`` or ``"timeout"``.

    ``detail`` holds the end of its standard error (the exception), empty when it passed.
    """

    status: str
    detail: str = ""
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def _check(timeout: float, memory_mb: int | None) -> None:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 3600:
        raise ConfigError("timeout", timeout, "seconds in (0, 3600]")
    if memory_mb is not None and (isinstance(memory_mb, bool) or not isinstance(memory_mb, int) or memory_mb < 64):
        raise ConfigError("memory_mb", memory_mb, "an integer >= 64 (megabytes), or None for no limit")


def run_program(program: str, *, timeout: float = 10.0, memory_mb: int | None = 2048) -> ExecutionResult:
    """Run ``program`` (Python source) in a separate limited process; see the module docstring.

    Args:
        program: the whole program; it passes when it exits with status 0 (e.g. its asserts hold).
        timeout: wall-clock seconds before the process group is killed (status ``"timeout"``).
        memory_mb: the address-space limit in megabytes (None: no limit).

    >>> result = run_program("raise ValueError('no')")
    >>> result.status, result.detail.splitlines()[-1]
    ('failed', 'ValueError: no')
    """
    import time

    if not isinstance(program, str):
        raise ConfigError("program", type(program).__name__, "Python source as a string")
    _check(timeout, memory_mb)
    with tempfile.TemporaryDirectory(prefix="packllm-exec-") as folder:
        path = os.path.join(folder, "program.py")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(program)
        env = {"PATH": os.defpath, "LANG": "C.UTF-8", "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"}
        memory = 0 if memory_mb is None else memory_mb * 1024 * 1024
        argv = [sys.executable, "-I", "-c", _GUARD, str(max(1, int(timeout) + 1)), str(memory), path]
        start = time.perf_counter()
        proc = subprocess.Popen(
            argv,
            cwd=folder,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill(proc)
            return ExecutionResult("timeout", f"killed after {timeout} s", time.perf_counter() - start)
        finally:
            if proc.poll() is None:
                _kill(proc)
        seconds = time.perf_counter() - start
        detail = err.decode("utf-8", "replace")[-2000:].strip()
        if proc.returncode == 0:
            return ExecutionResult("passed", "", seconds)
        if proc.returncode in (-signal.SIGXCPU, -signal.SIGKILL) and not detail:
            return ExecutionResult("timeout", f"CPU limit (exit {proc.returncode})", seconds)
        return ExecutionResult("failed", detail or f"exit status {proc.returncode}", seconds)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def run_programs(
    programs: Sequence[str], *, timeout: float = 10.0, memory_mb: int | None = 2048, workers: int = 2
) -> list[ExecutionResult]:
    """:func:`run_program` for each program, ``workers`` processes at a time, results in order.

    >>> [r.status for r in run_programs(["pass", "assert False"])]
    ['passed', 'failed']
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError("workers", workers, "an integer >= 1")
    _check(timeout, memory_mb)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda p: run_program(p, timeout=timeout, memory_mb=memory_mb), programs))
