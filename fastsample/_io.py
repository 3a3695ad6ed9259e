"""Files the commands write and read: never overwrite a user's file, never leave half a file.

- :func:`refuse_existing`: the final name a writer will produce (with the extension it adds), refused
  when it exists unless ``force``.
- :func:`atomic_path` / :func:`atomic_write`: a temporary file next to the target, fsynced and renamed
  over it; the result has the permissions of a normally created file (``0o666 & ~umask``, not
  ``mkstemp``'s 0600); the temporary file is removed on every exit path, and temporary files that
  killed processes left for the same target are removed by the next write.
- :func:`file_lock`: a ``filelock`` lock that makes a second run into the same folder wait or refuse.
- :func:`file_digest` / :func:`tree_digest`: SHA-256 of file contents, each file hashed once per process
  (keyed by path, size, inode and modification time).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import sys
import tempfile
from pathlib import Path

__all__ = [
    "UserError",
    "refuse_existing",
    "atomic_path",
    "atomic_write",
    "remove_stale_temps",
    "file_lock",
    "file_digest",
    "tree_digest",
]

_TMP = ".tmp-"  # temporary files: ".<name>.tmp-<pid>-<random>.tmp"
LOCK_NAME = ".fastsample.lock"


class UserError(ValueError):
    """Bad input or a refused action: ``fastsample`` prints its message as one line, without a traceback."""


def refuse_existing(path, force: bool = False, suffix: str = "") -> Path:
    """The path a writer will create (``suffix`` appended when missing, as ``np.savez`` does with '.npz').

    Raises:
        UserError: the path is a folder, its parent is a file, or it exists and ``force`` is false.
    """
    p = Path(path)
    if suffix and not p.name.endswith(suffix):
        p = p.with_name(p.name + suffix)
    if p.is_dir():
        raise UserError(f"{p} is a folder; give a file name")
    if p.parent.exists() and not p.parent.is_dir():
        raise UserError(f"cannot write {p}: {p.parent} is not a folder")
    if p.exists() and not force:
        raise UserError(f"{p} exists; not overwriting it (pass --force to replace it)")
    return p


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(folder, name: str | None = None) -> int:
    """Remove the temporary files of dead processes in ``folder`` (for target ``name`` only, if given)."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    pattern = re.compile(r"^\.(.+)" + re.escape(_TMP) + r"(\d+)-[^/]*\.tmp$")
    removed = 0
    for f in folder.iterdir():
        m = pattern.match(f.name)
        if m and (name is None or m.group(1) == name) and not _pid_alive(int(m.group(2))):
            f.unlink(missing_ok=True)
            removed += 1
    return removed


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path in ``path``'s folder; on success it replaces ``path`` (see the module docstring).

    The writer must write the temporary path exactly (a writer that adds an extension needs a file
    object: ``with atomic_path(p) as tmp, open(tmp, "wb") as f: np.savez(f, ...)``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent, path.name)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}{_TMP}{os.getpid()}-", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def atomic_write(path, data: str | bytes) -> None:
    """Write ``data`` (text or bytes) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data if isinstance(data, bytes) else data.encode())


@contextlib.contextmanager
def file_lock(lock_file, wait: bool = True, what: str = "fastsample run"):
    """Hold the lock ``lock_file`` (an output folder's is ``folder / LOCK_NAME``).

    Another holder makes this wait (with a message on stderr) or, with ``wait=False``, raise UserError.
    """
    from filelock import FileLock, Timeout

    lock_file = Path(lock_file)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_file))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if not wait:
            raise UserError(f"another {what} holds {lock_file}; wait for it to finish or use another path") from None
        print(f"waiting for another {what} that holds {lock_file} ...", file=sys.stderr, flush=True)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


_DIGESTS: dict[tuple, str] = {}


def file_digest(path) -> str:
    """SHA-256 (hex) of a file's bytes, computed once per process for an unchanged file."""
    p = Path(path).resolve()
    st = p.stat()
    key = (str(p), st.st_size, st.st_ino, st.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def tree_digest(folder) -> str:
    """SHA-256 (hex) of every file under ``folder``: relative names and contents (hidden files skipped)."""
    folder = Path(folder)
    h = hashlib.sha256()
    for f in sorted(folder.rglob("*")):
        rel = f.relative_to(folder)
        if f.is_file() and not any(part.startswith(".") for part in rel.parts):
            h.update(f"{rel.as_posix()}\0{file_digest(f)}\n".encode())
    return h.hexdigest()
