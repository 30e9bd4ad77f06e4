"""The bento's OCI image, built and run for real (make container, make container-run): podman (docker where podman is
missing), a base image built from Debian's packages, real HTTP to the container on 127.0.0.1. Skips, saying why,
only where no container engine can run a container."""

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from conftest import KITCHEN, ROOT, write_easy_job
from test_serve import call

from benchmarks.server import free_port
from domainlift.config import load_config
from export.recipe import Exporter
from finetune.recipe import run as finetune

pytestmark = [pytest.mark.slow, pytest.mark.container]
KEY = "container-key-3d81"
ENGINE = shutil.which("podman") or shutil.which("docker")


def _engine_runs() -> str | None:
    """Why no container can run here, or None."""
    if ENGINE is None:
        return "neither podman nor docker is installed (Debian: apt-get install podman buildah runc debootstrap)"
    if shutil.which("debootstrap") is None:
        return "debootstrap is not installed: the base image is built from Debian's packages"
    if os.geteuid() != 0:
        return "building the base image with debootstrap needs root"
    return None


@pytest.fixture(scope="module")
def image(tmp_path_factory, tiny_model_dir):
    reason = _engine_runs()
    if reason:
        pytest.skip(reason)
    cfg_path = write_easy_job(
        tmp_path_factory.mktemp("container"),
        tiny_model_dir,
        job="boxed",
        model={"max_length": 32},
        export={"variants": ["onnx-fp32"], "latency_samples": 5},
    )
    cfg = load_config(cfg_path)
    finetune(cfg)
    Exporter(cfg).run(["onnx-fp32"])
    tag = "domainlift:e2e-test"
    t0 = time.perf_counter()
    build = subprocess.run(
        [str(ROOT / "deploy/container/build.sh"), sys.executable, str(cfg_path), tag],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    yield tag, cfg, time.perf_counter() - t0
    subprocess.run([ENGINE, "rmi", "-f", tag], capture_output=True)


def _in_image(tag: str, *command: str) -> subprocess.CompletedProcess:
    env = {**os.environ, **_conf()}
    return subprocess.run([ENGINE, "run", "--rm", "--entrypoint", command[0], tag, *command[1:]],
                          capture_output=True, text=True, env=env, timeout=300)  # fmt: skip


def _conf() -> dict:
    conf = ROOT / "artifacts/container/containers.conf"  # written by build.sh where plain podman cannot run
    return {"CONTAINERS_CONF": str(conf)} if conf.is_file() and ENGINE.endswith("podman") else {}


def test_the_image_serves_real_reviews_on_loopback_with_the_key(image):
    tag, cfg, build_s = image
    port = free_port()
    env = {**os.environ, "DOMAINLIFT_API_KEY": KEY}
    proc = subprocess.Popen(
        [str(ROOT / "deploy/container/run.sh"), tag, str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    t0 = time.perf_counter()
    try:
        while True:
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            assert time.perf_counter() - t0 < 180, "not ready in 180 s"
            try:
                with urllib.request.urlopen(url + "/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                time.sleep(0.5)
        ready_s = time.perf_counter() - t0
        reviews = [json.loads(line)["text"] for line in open(KITCHEN)][:8]
        status, out = call(url, "/classify", {"texts": reviews}, key=KEY)
        assert status == 200 and len(out) == 8 and {r["label"] for r in out} <= {"negative", "positive"}
        assert call(url, "/classify", {"texts": reviews})[0] == 401
        size = subprocess.run([ENGINE, "image", "inspect", tag, "--format", "{{.Size}}"], capture_output=True,
                              text=True, env={**os.environ, **_conf()}).stdout.strip()  # fmt: skip
        report = {"image": tag, "size_bytes": int(size or 0), "build_s": round(build_s), "start_to_ready_s": ready_s}
        (cfg.job_dir / "container.json").write_text(json.dumps(report, indent=2))
        print(report)
    finally:
        subprocess.run(
            [ENGINE, "stop", "-t", "5", f"domainlift-{port}"], capture_output=True, env={**os.environ, **_conf()}
        )
        proc.wait(timeout=60)


def test_the_image_runs_as_a_user_without_build_tools_caches_or_torch(image):
    tag, _, _ = image
    assert _in_image(tag, "id", "-un").stdout.strip() == "bentoml"
    assert _in_image(tag, "/app/.venv/bin/python", "-c", "import onnxruntime, tokenizers").returncode == 0
    assert _in_image(tag, "/app/.venv/bin/python", "-c", "import torch").returncode != 0, "no torch at run time"
    tools = _in_image(tag, "sh", "-c", "command -v gcc cc g++ make uv; ls -d /root/.cache /home/bentoml/.cache")
    assert tools.stdout.strip() == "", tools.stdout


def test_a_container_without_a_key_refuses_to_serve(image):
    tag, _, _ = image
    env = {k: v for k, v in os.environ.items() if k != "DOMAINLIFT_API_KEY"} | _conf()
    proc = subprocess.run(
        [ENGINE, "run", "--rm", "--network=host", tag, "serve", "--host", "127.0.0.1", "--port", str(free_port())],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert proc.returncode != 0 and "would serve without auth" in proc.stdout + proc.stderr
