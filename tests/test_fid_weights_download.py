"""The opt-in DINOv2 / CLIP download: ``from_pretrained`` of a hub id into the Hugging Face cache, played offline
against a local stand-in for the hub (an HTTP server answering the hub's ``resolve`` URLs from folders written by
``save_pretrained``), through the real command line; and the one-line message when weights are missing."""

import hashlib
import http.server
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_pipelines import save_tiny_clip_vision, save_tiny_dinov2

from fastsample._io import tree_digest
from fastsample.fid.cli import read_image
from fastsample.fid.encoders import CLIPEncoder, DINOv2Encoder
from fastsample.fid.suite import MetricSuite

ROOT = Path(__file__).resolve().parents[1]


class _Hub(http.server.BaseHTTPRequestHandler):
    """``/<org>/<name>/resolve/<rev>/<file>`` from ``repos/<org>/<name>/<file>`` with the headers the hub client reads;
    anything else is a 404 the client understands."""

    repos: Path
    served: list

    def _answer(self, body: bool) -> None:
        parts = self.path.split("?")[0].strip("/").split("/")
        f = self.repos.joinpath(*parts[:2], *parts[4:]) if len(parts) > 4 and parts[2] == "resolve" else None
        if f is None or not f.is_file():
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = f.read_bytes()
        self.send_response(200)
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("X-Repo-Commit", "0123456789abcdef0123456789abcdef01234567")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if body:
            self.served.append(self.path)
            self.wfile.write(data)

    def do_HEAD(self):
        self._answer(False)

    def do_GET(self):
        self._answer(True)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def repos(tmp_path_factory):
    root = tmp_path_factory.mktemp("repos")
    torch.manual_seed(0)
    save_tiny_dinov2(root / "tiny" / "dinov2")
    save_tiny_clip_vision(root / "tiny" / "clip")
    return root


def test_missing_hub_weights_one_line():
    for cls in (DINOv2Encoder, CLIPEncoder):
        with pytest.raises(FileNotFoundError) as e:
            cls("fastsample-tests/not-a-model")
        msg = str(e.value)
        assert "\n" not in msg and "'fastsample-tests/not-a-model' not found" in msg and "download=True" in msg


def _folders(tmp_path):
    for name, seed in (("a", 0), ("b", 1)):
        (tmp_path / name).mkdir()
        rng = np.random.default_rng(seed)
        for i in range(4):
            Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(tmp_path / name / f"{i}.png")
    return [str(tmp_path / "a"), str(tmp_path / "b")]


@pytest.mark.slow
def test_cli_download_into_hf_cache_then_offline(tmp_path, repos):
    folders = _folders(tmp_path)
    _Hub.repos, _Hub.served = repos, []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = dict(
        os.environ,
        HF_ENDPOINT=f"http://127.0.0.1:{server.server_address[1]}",
        HF_HOME=str(tmp_path / "hf"),
        HF_HUB_DISABLE_TELEMETRY="1",
    )
    env.pop("HF_HUB_OFFLINE", None)
    args = [*folders, "--metrics", "fd_dinov2,cmmd", "--dinov2", "tiny/dinov2", "--clip", "tiny/clip"]
    args += ["--device", "cpu", "--num-workers", "0"]

    def fid(*extra):
        cmd = [sys.executable, "-m", "fastsample", "fid", *args, *extra]
        return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)

    try:
        r = fid()
        assert r.returncode == 1 and not _Hub.served, r.stderr
        error = r.stderr.strip().splitlines()
        assert len(error) == 1 and "'tiny/dinov2' not found" in error[0] and "--download" in error[0]
        r = fid("--download")
        assert r.returncode == 0, r.stderr
        assert {p.rsplit("/", 1)[1] for p in _Hub.served} == {"config.json", "model.safetensors"}
    finally:
        server.shutdown()
        server.server_close()
    downloaded = dict(line.split(": ") for line in r.stdout.strip().splitlines())
    r = fid()  # the server is gone: the cached copy serves
    assert r.returncode == 0, r.stderr
    assert dict(line.split(": ") for line in r.stdout.strip().splitlines()) == downloaded
    # the numbers are those of the very folders the hub served, loaded directly
    suite = MetricSuite(["fd_dinov2", "cmmd"], dinov2=repos / "tiny" / "dinov2", clip=repos / "tiny" / "clip")
    for folder, real in zip(folders, (True, False)):
        suite.update(torch.stack([read_image(f) for f in sorted(Path(folder).iterdir())]), real=real)
    for key, value in suite.compute().items():
        assert float(downloaded[key]) == pytest.approx(value, rel=1e-9, abs=1e-12), key
    # the downloaded snapshot is byte for byte the served folder, and the hub id's weights digest says so
    cached = sorted((tmp_path / "hf" / "hub").glob("models--tiny--dinov2/snapshots/*"))
    assert len(cached) == 1 and tree_digest(cached[0]) == tree_digest(repos / "tiny" / "dinov2")
    code = "from fastsample.fid.encoders import DINOv2Encoder; print(DINOv2Encoder('tiny/dinov2').weights_digest)"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.split()[-1] == tree_digest(repos / "tiny" / "dinov2"), r.stderr
