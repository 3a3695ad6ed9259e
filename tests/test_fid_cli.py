"""The ``fastsample fid`` command line: folders, .npz files, --save-stats, mode checks, pytorch-fid parity."""

import numpy as np
import pytest
import torch
from PIL import Image

from fastsample.fid import cli
from fastsample.fid.inception import FIDInceptionV3


def _folder(path, seed, sizes):
    path.mkdir()
    rng = np.random.default_rng(seed)
    for i, (h, w) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path / f"{i}.png")
    return path


def test_cli_folders_and_stats(tmp_path, capsys):
    a = _folder(tmp_path / "a", 0, [(20, 24), (30, 30)])
    b = _folder(tmp_path / "b", 1, [(16, 16), (16, 16)])
    # --dims 64: the first Inception block only, and 64 x 64 covariances: fast on a loaded CPU
    common = ["--weights", "random", "--device", "cpu", "--num-workers", "0", "--dims", "64"]
    assert cli.main(["--save-stats", str(a), str(tmp_path / "a.npz"), *common]) == 0
    assert cli.main([str(tmp_path / "a.npz"), str(b), *common]) == 0
    fid = float(capsys.readouterr().out.split()[-1])
    assert fid > 0
    assert cli.main([str(tmp_path / "a.npz"), str(tmp_path / "a.npz"), *common]) == 0
    assert abs(float(capsys.readouterr().out.split()[-1])) < 1e-6
    assert cli.main([str(tmp_path / "a.npz"), str(tmp_path / "a.npz"), "--resize", "clean-fid", *common]) == 1
    assert "resize_mode mismatch" in capsys.readouterr().err
    assert cli.main([str(tmp_path / "a.npz"), str(tmp_path / "a.npz"), *common, "--dims", "192"]) == 1
    assert "mismatch" in capsys.readouterr().err
    assert cli.main(["--save-stats", str(a), str(tmp_path / "a.npz"), *common]) == 1
    assert "exists" in capsys.readouterr().err
    assert cli.main([str(tmp_path / "missing"), str(b), *common]) == 1
    assert "invalid path" in capsys.readouterr().err
    (tmp_path / "bad.npz").write_bytes(b"\x00" * 10)
    assert cli.main([str(tmp_path / "bad.npz"), str(tmp_path / "a.npz"), *common]) == 1
    assert "corrupt" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_matches_pytorch_fid(tmp_path, capsys, monkeypatch):
    fid_score = pytest.importorskip("pytorch_fid.fid_score")
    import pytorch_fid.inception as inception

    a = _folder(tmp_path / "a", 0, [(20, 20)] * 3)
    b = _folder(tmp_path / "b", 1, [(20, 20)] * 3)
    state = FIDInceptionV3("random").state_dict()
    torch.save(state, tmp_path / "w.pth")
    monkeypatch.setattr(inception, "load_state_dict_from_url", lambda *a, **k: state)
    ref = fid_score.calculate_fid_given_paths([str(a), str(b)], 3, "cpu", 192, num_workers=0)
    args = [
        str(a),
        str(b),
        "--weights",
        str(tmp_path / "w.pth"),
        "--device",
        "cpu",
        "--batch-size",
        "3",
        "--dims",
        "192",
    ]
    assert cli.main(args) == 0
    assert float(capsys.readouterr().out.split()[-1]) == pytest.approx(ref, rel=1e-5, abs=1e-6)


def test_folder_read_shows_progress_on_a_terminal(tmp_path):
    """Reading a folder shows images read, rate and ETA when stderr is a terminal (and nothing in a log file)."""
    import fcntl
    import os
    import pty
    import struct
    import subprocess
    import sys
    import termios
    from pathlib import Path

    a = _folder(tmp_path / "a", 0, [(16, 16)] * 6)
    opts = ["--weights", "random", "--device", "cpu", "--num-workers", "0", "--dims", "64", "--batch-size", "2"]
    cmd = [sys.executable, "-m", "fastsample", "fid", "--save-stats", str(a), str(tmp_path / "a.npz"), *opts]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 160, 0, 0))  # a terminal 160 columns wide
    proc = subprocess.run(cmd, stderr=slave, stdout=subprocess.DEVNULL, env=env, timeout=300)
    os.close(slave)
    shown = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        shown += chunk
    os.close(master)
    assert proc.returncode == 0
    assert b"/6 [" in shown and b"img/s" in shown, shown  # count, rate (and ETA) of the folder read
    cmd = [sys.executable, "-m", "fastsample", "fid", "--save-stats", str(a), str(tmp_path / "b.npz"), *opts]
    logged = subprocess.run(cmd, capture_output=True, env=env, timeout=300)
    assert logged.returncode == 0 and b"img" not in logged.stderr
