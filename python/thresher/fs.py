"""File-system helpers: the one way thresher writes a file or folder.

Every write goes to a temporary sibling with a name unique to this process and
call (``.<name>.<pid>.<random>.thresher-tmp``), is flushed and fsynced, renamed
over the target with ``os.replace`` (atomic on POSIX), and the folder is fsynced
so the rename survives a power loss. Concurrent writers of one path never touch
each other's temporary files; :func:`clean_stale_temp` removes only temporary
files of this naming scheme whose writing process is gone.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Iterator

TMP_SUFFIX = ".thresher-tmp"


def fsync_dir(d: Path) -> None:
    """fsync a folder (so a rename inside it is durable); a no-op where folders cannot be opened."""
    try:
        fd = os.open(d, os.O_RDONLY)
    except OSError:  # pragma: no cover (platforms without directory fds)
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def temp_name(path: Path) -> Path:
    """A temporary sibling of ``path`` that no other process or call can pick."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{TMP_SUFFIX}")


@contextlib.contextmanager
def atomic_file(path: Any, mode: str = "wb", encoding: str | None = None) -> Iterator[IO[Any]]:
    """Open a temporary sibling for writing; on success fsync it and rename it over ``path``.

    On an exception the temporary file is removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        with open(tmp, mode, encoding=encoding if "b" not in mode else None) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: Any, data: bytes) -> None:
    with atomic_file(path, "wb") as fh:
        fh.write(data)


def atomic_write_text(path: Any, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json_atomic(obj: Any, path: Any, *, indent: int = 2) -> None:
    """JSON with sorted keys and a final newline (deterministic bytes), written atomically."""
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=True, default=str) + "\n")


def atomic_save(path: Any, save: Callable[[Path], None]) -> None:
    """For libraries that write to a path themselves: ``save(tmp_path)``, then fsync and rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        save(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_dir(final: Any, build: Callable[[Path], None]) -> Path:
    """Build a folder under a temporary name (``build(tmp)``), fsync its files, rename it into place.

    If another process finished the same folder first, its copy is kept and ours dropped."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.{os.getpid()}.", suffix=TMP_SUFFIX, dir=final.parent))
    try:
        build(tmp)
        for p in tmp.rglob("*"):
            if p.is_file():
                with open(p, "rb") as fh:
                    os.fsync(fh.fileno())
        fsync_dir(tmp)
        try:
            os.replace(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
        fsync_dir(final.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover (another user's live process)
        return True
    return True


def clean_stale_temp(root: Any) -> int:
    """Remove this scheme's temporary files and folders under ``root`` whose writer process is gone.

    Files of other programs, and temporary files of live processes, are never touched."""
    root = Path(root)
    n = 0
    if not root.is_dir():
        return 0
    for p in list(root.rglob(f".*{TMP_SUFFIX}")):
        parts = p.name.split(".")  # ['', name..., pid, random, 'thresher-tmp']
        pid = int(parts[-3]) if len(parts) >= 5 and parts[-3].isdigit() else None
        if pid is None or _pid_alive(pid):
            continue
        with contextlib.suppress(OSError):
            shutil.rmtree(p) if p.is_dir() else p.unlink()
            n += 1
    return n
