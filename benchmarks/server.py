"""Start a server process on a free loopback port, wait until it is ready, and always stop it (workers too).

with running_server([sys.executable, "-m", "serve", "--config", cfg], cwd=".", log_dir=reports) as url:
    ...   # url == "http://127.0.0.1:<port>", /readyz answered 200
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from domainlift.errors import ServiceError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def memory_mb(url: str) -> float | None:
    """Resident memory of the server listening at url, in MiB: every process of its process group (BentoML's
    arbiter and workers; running_server starts each server in a group of its own). None when it cannot be seen."""
    import psutil

    port = int(url.rsplit(":", 1)[1])
    try:
        pids = [c.pid for c in psutil.net_connections("tcp") if c.laddr and c.laddr.port == port and c.pid]
        group = os.getpgid(pids[0])
    except (psutil.AccessDenied, IndexError, ProcessLookupError):
        return None
    total = 0
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == group:
                total += p.memory_info().rss
        except (psutil.Error, ProcessLookupError):
            continue
    return total / 2**20


def is_ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/readyz", timeout=5) as resp:
            return resp.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def running_server(
    command: list[str], cwd: Path, log_dir: Path, env_extra: dict | None = None, timeout: float = 180
) -> Iterator[str]:
    """`command` must accept `--port N`; its output goes to <log_dir>/server-<port>.log."""
    port = free_port()
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    log_path = Path(log_dir) / f"server-{port}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [*command, "--port", str(port)],
            cwd=cwd,
            env={**os.environ, **(env_extra or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stopping it stops BentoML's workers too
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + timeout
            while not is_ready(url):
                if proc.poll() is not None:
                    raise ServiceError(f"server exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
                if time.monotonic() > deadline:
                    raise ServiceError(f"server not ready in {timeout:.0f}s:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.5)
            yield url
            if proc.poll() is not None:
                raise ServiceError(f"server died while in use:\n{log_path.read_text()[-3000:]}")
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
