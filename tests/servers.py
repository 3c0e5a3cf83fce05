"""A real llama.cpp OpenAI-compatible server (``llama-cpp-python[server]``), run by the tests.

It listens on 127.0.0.1 only, on a free port, and is stopped by the test that started it
(or by its fixture's teardown). ``pause()``/``resume()`` stop and continue the process
(SIGSTOP/SIGCONT): a server that accepts connections and never answers, as a slowed or
hung one does.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LlamaServer:
    """``python -m llama_cpp.server`` on one GGUF file."""

    def __init__(self, model: Path, *, n_ctx: int = 1024, api_key: str | None = None, alias: str | None = None):
        self.model, self.n_ctx, self.api_key, self.alias = Path(model), n_ctx, api_key, alias
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log = Path(tempfile.mkstemp(prefix="llama-server-", suffix=".log")[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, wait: float = 120.0) -> LlamaServer:
        args = [sys.executable, "-m", "llama_cpp.server", "--model", str(self.model), "--host", "127.0.0.1"]
        args += ["--port", str(self.port), "--n_ctx", str(self.n_ctx), "--n_threads", "1", "--verbose", "False"]
        if self.api_key:
            args += ["--api_key", self.api_key]
        if self.alias:
            args += ["--model_alias", self.alias]
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the llama.cpp server exited: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/models", headers=headers, timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"the llama.cpp server did not answer within {wait} s: {self.log.read_text()[-2000:]}")

    def pause(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.resume()
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.kill()

    def __enter__(self) -> LlamaServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
