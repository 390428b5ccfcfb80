"""Atomic outputs: a file or folder is written under a temporary name beside its destination
and renamed into place, so a crash never leaves a half-written output.

- Temporary names are ``.{name}.lowbit-tmp-{host}-{pid}-{token}``: every later write to the
  same destination removes those whose process is gone (on this host), so a killed run
  leaves nothing behind for long (``clean_stale``).
- Files and folders follow the user's umask (modes 0o666 / 0o777 minus the umask).
- Files, then folders, are fsynced before the rename, and the parent folder after it.
- An existing folder is swapped with the new one in one step where the system can (Linux
  ``renameat2(RENAME_EXCHANGE)``). Elsewhere the old folder is first renamed to
  ``.{name}.lowbit-backup``; if a crash comes before the new one is in place, the next write
  or load restores it from there (``recover``).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import re
import secrets
import shutil
import socket
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

from lowbit.errors import InvalidInputError

logger = logging.getLogger(__name__)

_HOST = re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname()) or "host"
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _temp_path(dest: Path) -> Path:
    return dest.parent / f".{dest.name}.lowbit-tmp-{_HOST}-{os.getpid()}-{secrets.token_hex(4)}"


def _backup_path(dest: Path) -> Path:
    return dest.parent / f".{dest.name}.lowbit-backup"


def _process_gone(pid: int) -> bool:
    if os.name != "posix" or pid == os.getpid():
        return False  # never guess on other systems, never remove our own work
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, owned by another user
    return False


def clean_stale(dest: str | os.PathLike) -> list[Path]:
    """Remove the temporary siblings of ``dest`` left by processes of this host that are gone
    (killed mid-write); returns what was removed."""
    dest = Path(dest)
    pattern = re.compile(rf"\.{re.escape(dest.name)}\.lowbit-tmp-([A-Za-z0-9._]+)-(\d+)-[0-9a-f]+")
    removed = []
    with contextlib.suppress(FileNotFoundError):
        for sibling in dest.parent.iterdir():
            match = pattern.fullmatch(sibling.name)
            if match is None or match[1] != _HOST or not _process_gone(int(match[2])):
                continue
            if sibling.is_dir() and not sibling.is_symlink():
                shutil.rmtree(sibling, ignore_errors=True)
            else:
                sibling.unlink(missing_ok=True)
            logger.info("removed %s, left behind by process %s that is gone", sibling, match[2])
            removed.append(sibling)
    return removed


def recover(dest: str | os.PathLike) -> None:
    """Finish a folder replacement that a crash interrupted: restore the previous ``dest``
    from its backup when ``dest`` is missing, or drop the backup when ``dest`` is in place."""
    dest = Path(dest)
    backup = _backup_path(dest)
    if not backup.is_dir():
        return
    if dest.exists():
        shutil.rmtree(backup, ignore_errors=True)
        return
    os.replace(backup, dest)
    _fsync(dest.parent)
    logger.warning("restored %s from %s, left by an interrupted replacement", dest, backup)


def _fsync(path: Path) -> None:
    if path.is_dir() and os.name != "posix":
        return  # folders cannot be opened for fsync there
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _finish_tree(root: Path) -> None:
    """Give every file and folder under ``root`` the modes the umask allows (writers such as
    safetensors create 0600 temporary files and rename them) and make them durable."""
    folder_mode = stat.S_IMODE(root.stat().st_mode)  # created 0o777 & ~umask
    for folder, _, files in os.walk(root, topdown=False):
        for name in files:
            os.chmod(Path(folder) / name, folder_mode & 0o666)
            _fsync(Path(folder) / name)
        os.chmod(folder, folder_mode)
        _fsync(Path(folder))


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2); False where the system cannot."""
    if not sys.platform.startswith("linux"):
        return False
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False  # glibc before 2.28, musl
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False  # a file system or kernel without RENAME_EXCHANGE
    raise OSError(code, os.strerror(code), str(a), None, str(b))


def _replace_folder(tmp: Path, dest: Path) -> None:
    if not dest.exists():
        os.replace(tmp, dest)
        _fsync(dest.parent)
        return
    if _exchange(tmp, dest):
        old = tmp
    else:
        old = _backup_path(dest)
        os.replace(dest, old)
        try:
            os.replace(tmp, dest)
        except BaseException:
            os.replace(old, dest)
            raise
    _fsync(dest.parent)  # the new folder is in place for good before the old one goes
    shutil.rmtree(old, ignore_errors=True)


_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def _errno(exc: BaseException) -> int | None:
    """The errno of an OSError, or of a writer's own error that quotes it (safetensors' Rust
    writer raises SafetensorError "... I/O error: File too large (os error 27)")."""
    if isinstance(exc, OSError):
        return exc.errno
    found = re.search(r"\(os error (\d+)\)", str(exc))
    return int(found.group(1)) if found else None


def _raise_if_out_of_space(exc: BaseException, dest: Path) -> None:
    """A write that ran out of disk space or quota becomes one clear error (the caller has
    already removed its temporary output, so ``dest`` is as it was)."""
    if isinstance(exc, Exception) and _errno(exc) in _NO_SPACE:
        raise InvalidInputError(
            f"not enough disk space to write {dest} ({os.strerror(_errno(exc))}); {dest} is "
            "unchanged: free some space (or raise the quota) or write to another disk"
        ) from exc


@contextlib.contextmanager
def atomic_folder(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``dest``; when the block ends without an
    error, its contents are made durable and it replaces ``dest`` atomically."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    recover(dest)
    clean_stale(dest)
    tmp = _temp_path(dest)
    os.mkdir(tmp, 0o777)
    try:
        yield tmp
        _finish_tree(tmp)
        _replace_folder(tmp, dest)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        _raise_if_out_of_space(exc, dest)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (parent folders are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(path)
    tmp = _temp_path(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        _raise_if_out_of_space(exc, path)
        raise
    _fsync(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_file_path(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``dest`` for a writer that opens files by name (e.g.
    gguf-py's GGUFWriter); when the block ends without an error, the file is fsynced and
    renamed onto ``dest``. On an error the temporary file is removed."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(dest)
    tmp = _temp_path(dest)
    # created here with 0o666 minus the umask; a writer opening it by name keeps that mode
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, dest)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        _raise_if_out_of_space(exc, dest)
        raise
    _fsync(dest.parent)


@contextlib.contextmanager
def scratch_folder(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``dest`` for intermediate files of a write to
    ``dest`` (e.g. a converted source); it is removed when the block ends, also after an error.
    It is named like the other temporaries, so a killed run's folder is removed by the next
    write to ``dest`` (``clean_stale``)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(dest)
    tmp = _temp_path(dest)
    os.mkdir(tmp, 0o700)
    try:
        yield tmp
    except BaseException as exc:
        _raise_if_out_of_space(exc, dest)
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
