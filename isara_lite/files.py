"""Crash-safe file writes: whole files by temp + rename, JSONL by fsynced appends; run locks."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def writing_file(final: str | Path):
    """A sibling temp path to write; moved onto `final` when the block ends, removed if it fails,
    so `final` is either whole or as it was."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600; the file should get what open() would give it
    try:
        yield Path(tmp)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    os.replace(tmp, final)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> None:
    with writing_file(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_jsonl(path: str | Path, records) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))


def append_jsonl(path: str | Path, records) -> None:
    """Append records as one write, then fsync, so a batch is on disk before we go on."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        f.flush()
        os.fsync(f.fileno())


def read_jsonl_tolerant(path: str | Path) -> list[dict]:
    """Our own append-only logs: a torn last line (killed mid-write) is dropped and cut off the file."""
    path = Path(path)
    if not path.exists():
        return []
    raw = path.read_bytes()
    records, good = [], 0
    for line in raw.splitlines(keepends=True):
        try:
            if not line.endswith(b"\n"):
                raise ValueError("torn line")
            records.append(json.loads(line))
        except ValueError:
            break
        good += len(line)
    if good != len(raw):
        with open(path, "r+b") as f:
            f.truncate(good)
    return records


@contextmanager
def writing_dir(final: Path):
    """Fill a temp dir, then move it onto `final`; on failure the temp dir goes and `final` stays as it was.
    Writers that report a full disk in their own exception type (safetensors) get a plain OSError."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    try:
        yield tmp
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if not isinstance(e, OSError) and "os error 28" in str(e):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(final)) from e
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


class RunLock:
    """An exclusive lock on a run directory, held for the life of the process.

    flock, not a pid file: the kernel drops the lock when its holder dies, however it dies, so a
    lock left by a killed run is never stale. The holder's pid is written in the file for the message.
    """

    def __init__(self, root: Path):
        self.path = Path(root) / ".lock"
        self.fd: int | None = None

    def acquire(self) -> "RunLock":
        try:
            import fcntl
        except ImportError:  # Windows: no flock; runs are not locked there
            return self
        from .errors import IsaraError

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise IsaraError(f"{self.path.parent}: in use by another isara process (pid {holder}); "
                             f"wait for it to finish or stop it, then --resume") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock
            self.fd = None


def sha256_files(paths) -> str:
    """One hash of several files, each by name and content, in the order given."""
    h = hashlib.sha256()
    for path in map(Path, paths):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()
