"""Files: atomic writes, no-clobber checks, content hashes, safe names and run manifests.

Every file lorasum writes goes through a temporary file in the same folder,
``fsync`` and ``os.replace``, so an interrupted write never leaves half a file.
Folders (adapters, merged models, reports) are written into a temporary sibling
folder and renamed into place once complete. A write that fails because of the
file system (no space, no permission, read-only, a file where a folder should be)
is a one-line :class:`~lorasum.errors.UserError` naming the target path.

Loading is safetensors-only: pickle-based weight files (:data:`PICKLE_SUFFIXES`) can
run code when read and are refused unless :func:`allow_pickle` is active (the CLI's
``--allow-pickle``).
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import hashlib
import json
import os
import platform
import re
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lorasum.errors import ConfigError, OutputExistsError, UserError

__all__ = [
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_dir",
    "check_output",
    "check_output_name",
    "check_writable_parent",
    "check_no_links",
    "make_folders",
    "settle_path",
    "check_tree_no_links",
    "check_regular",
    "read_regular_file",
    "sha256_file",
    "sha256_json",
    "sha256_bytes",
    "sha256_path",
    "read_safetensors_header",
    "PICKLE_SUFFIXES",
    "allow_pickle",
    "pickle_allowed",
    "safe_name",
    "check_free_space",
    "write_manifest",
    "MANIFEST_NAME",
]

#: File endings of pickle-based weight files (torch.save / pickle), refused unless allowed.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
#: Name of the run-folder manifest written by :func:`write_manifest`.
MANIFEST_NAME = "manifest.json"

# errno values of a write that fails because of the file system, not because of lorasum
_FS_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR,
              errno.EISDIR, errno.EEXIST, errno.ELOOP, errno.ENAMETOOLONG, errno.EFBIG}


def _is_fs_error(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in _FS_ERRNOS


class _WriteError(UserError):
    """A file-system failure while writing ``path`` (kept as attributes to re-target temporaries)."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: cannot write: {reason}")
        self.path, self.reason = Path(path), reason


def _fs_error(path: Path, exc: OSError) -> UserError:
    """The one-line UserError for a file-system failure while writing ``path``; a failure on one of our
    temporaries names the folder it was made in, not the temporary."""
    where = ""
    if exc.filename and str(exc.filename) != str(path):
        where = (f" (in the folder {Path(path).parent})" if _is_temporary(os.path.basename(os.fspath(exc.filename)))
                 else f" ({exc.filename})")
    return _WriteError(path, f"{exc.strerror or os.strerror(exc.errno)}{where}")


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def settle_path(path: str | os.PathLike) -> Path:
    """``path`` with the ``..`` and ``.`` of its missing part resolved by name: ``newp/../c2``, with no
    ``newp``, is ``c2``. The missing part holds no symlinks (it does not exist), so this is where the file
    system would put it once the folders were made; the operating system itself cannot see through a
    missing folder (``newp/../c2`` does not exist although ``c2`` may) and making ``newp`` to get there
    would leave it behind. ``..`` that climb above the nearest existing folder are kept as they are.
    A path whose missing part has no ``..`` or ``.`` is returned as given."""
    path = Path(path)
    base = _nearest_existing(path)
    if base == path:
        return path
    rest = path.relative_to(base).parts
    if ".." not in rest and "." not in rest:
        return path
    missing: list[str] = []
    for part in rest:
        if part == "..":
            if missing:
                missing.pop()
            else:
                base = base / part
        elif part != ".":
            missing.append(part)
    return base.joinpath(*missing)


def make_folders(folder: str | os.PathLike) -> Path:
    """Create ``folder`` and the missing folders above it (``mkdir -p``) at :func:`settle_path`'s place:
    ``newp/../c2`` makes ``c2`` and no ``newp`` (it would stay behind, empty).

    Returns:
        The folder made (or found), as :func:`settle_path` gives it.

    Raises:
        OSError: as ``Path.mkdir``.
    """
    folder = settle_path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


_NAME_MAX = 255  # bytes in one file name on Linux, macOS and Windows file systems


def _temp_prefix(name: str) -> str:
    """``.NAME.`` for a temporary sibling of ``name``, cut so that with mkstemp's 8 random characters and a
    4-byte suffix the temporary's name stays within :data:`_NAME_MAX` bytes (an output name of 250 bytes
    failed only when its result was written). A cut inside a multi-byte character is kept as the file system's
    bytes (``os.fsdecode``), so the name stays valid."""
    return f".{os.fsdecode(os.fsencode(name)[:_NAME_MAX - 2 - 8 - 4])}."


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, rename).

    The file gets the usual permissions (0666 less the umask), not mkstemp's private 0600.

    Raises:
        UserError: ``path`` is a folder, or the file system refuses the write (no space, no permission,
            read-only, a file where a folder is needed); ``path`` is left as it was.
    """
    path = settle_path(path)
    if path.is_dir():  # os.replace would fail on it naming our temporary file
        raise _WriteError(path, "is a folder; give a file name")
    try:
        make_folders(path.parent)
        fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path.name), suffix=".tmp", dir=path.parent)
    except OSError as exc:  # the folder cannot take a new file
        raise _fs_error(path, exc) from exc
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if _is_fs_error(exc):
            raise _fs_error(path, exc) from exc
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented, key-sorted JSON to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, allow_nan=True) + "\n")


def check_output(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Refuse to clobber: raise if ``path`` exists and is not an empty folder.

    A symlink counts as existing even when it is broken or loops. An empty or blank path
    (``--out ""``, which ``Path`` would read as the current folder) and a path with no name of its
    own (``.``, ``..``, ``/``, ``a/..``) are refused: such a folder cannot be replaced by a rename.

    Raises:
        UserError: ``path`` is empty or blank, or names no file or folder of its own.
        OutputExistsError: ``path`` exists (and holds something) and ``overwrite`` is False, or it is a
            device, pipe or socket (never replaced).
        UserError: the folder that would hold ``path`` cannot take it (:func:`check_writable_parent`):
            checked here so that a command refuses such an output before its slow steps, not when it
            writes the result.
    """
    check_output_name(path)
    path = settle_path(path)  # `newp/../c2` with no newp: c2, which may exist
    if os.path.lexists(path) and not overwrite:
        if path.is_dir() and not path.is_symlink() and not any(path.iterdir()):
            check_writable_parent(path)
            return path
        raise OutputExistsError(f"{path}: already exists; pass --overwrite (overwrite=True from Python) to replace it")
    if os.path.lexists(path) and not path.is_symlink() and not (path.is_dir() or path.is_file()):
        raise OutputExistsError(f"{path}: exists and is neither a file nor a folder (a device, pipe or socket); "
                                "not replaced, even with --overwrite")
    check_writable_parent(path)
    return path


def _nearest_existing(path: Path) -> Path:
    """``path`` itself if it exists (a broken symlink counts), else its nearest existing ancestor."""
    probe = path
    while not os.path.lexists(probe) and probe != probe.parent:
        probe = probe.parent
    return probe


def check_writable_parent(path: str | os.PathLike) -> Path:
    """Refuse an output that the file system will not let lorasum create, before any slow work.

    Every output is written as a temporary sibling (``PARENT/.NAME.*.tmp``) renamed into place, and
    missing folders above it are created (``--out runs/a/b`` makes ``runs/a``). So the output can be
    written exactly when the nearest existing ancestor of its parent folder is a folder that accepts
    a new entry. That is tested by creating (and at once removing) a hidden temporary folder there: the
    permission bits alone do not tell (root passes ``os.access`` on ``/proc``, where nothing can be
    created; a read-only mount; an ACL).

    Returns:
        ``path`` as a Path.

    Raises:
        UserError: that ancestor is not a folder (a file, a broken symlink, a device) or refuses a new
            entry (no permission, read-only, ``/proc``, no space); one line naming ``path``.
    """
    path = Path(path)
    parent = _nearest_existing(path.parent)
    if not parent.is_dir():
        what = ("a broken symlink" if parent.is_symlink() and not parent.exists() else
                "a file" if parent.is_file() else "not a folder")
        raise _WriteError(path, f"{parent} is {what}, not a folder")
    try:
        trial = tempfile.mkdtemp(prefix=".lorasum-check.", suffix=".tmp", dir=parent)
    except OSError as exc:
        raise _WriteError(path, f"the folder {parent} does not accept new files or folders "
                                f"({exc.strerror or os.strerror(exc.errno)}); choose another output path") from None
    with contextlib.suppress(OSError):
        os.rmdir(trial)
    return path


def check_output_name(path: str | os.PathLike) -> None:
    """Refuse an output path that names no entry of its own: empty or blank (``--out ""``, which
    ``Path`` reads as the current folder), or one whose last part is ``.`` or ``..``, or the root
    ``/`` (``Path`` drops a trailing ``/`` and a ``/.``, so ``runs/x/`` is ``runs/x`` and is fine).

    Raises:
        UserError: ``path`` is empty or blank, or names no file or folder of its own; the message
            quotes it.
    """
    text = os.fspath(path)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if not text.strip():
        raise UserError(f"output path {text!r} is empty or blank: give a file or folder name, e.g. --out NAME")
    if Path(text).name in ("", ".", ".."):
        raise UserError(f"output path {text!r} names no file or folder of its own (it is '.', '..' or '/', or "
                        "ends in '/..'): give a file or folder name, e.g. --out NAME")
    long = next((part for part in Path(text).parts if len(os.fsencode(part)) > _NAME_MAX), None)
    if long is not None:
        raise UserError(f"output path {text[:60]!r}…: the name {long[:40]!r}… is {len(os.fsencode(long))} bytes long, "
                        f"more than the {_NAME_MAX} a file system allows in one name; choose a shorter one")


def _link_error(path: Path) -> OutputExistsError:
    return OutputExistsError(f"{path}: is a symbolic link; lorasum writes only into folders it made; move it away")


def check_no_links(root: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Refuse to write at ``path`` inside ``root`` (a folder lorasum owns, such as a run folder) through a
    symbolic link: ``path`` and every folder between ``root`` and it must not be a symlink (a link to a
    user's folder elsewhere would have lorasum write into, or replace, what is there). ``root`` itself may
    be one (the user chose it). Parts that do not exist yet are fine (lorasum makes them).

    Returns:
        ``path`` as a Path.

    Raises:
        OutputExistsError: a part is a symbolic link (broken or not); the message names it.
    """
    root, path = Path(root), Path(path)
    probe = root
    for part in path.relative_to(root).parts:
        probe = probe / part
        if probe.is_symlink():
            raise _link_error(probe)
        if not os.path.lexists(probe):
            break
    return path


def check_regular(path: str | os.PathLike) -> Path:
    """Refuse ``path`` if it exists and is neither a regular file, a folder nor a symbolic link (those are
    :func:`check_no_links`'s): a named pipe, device or socket that lorasum would replace (it never makes
    one) or block on.

    Raises:
        OutputExistsError: the message names ``path`` and what it is.
    """
    path = Path(path)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return path
    except OSError as exc:
        raise _WriteError(path, exc.strerror or str(exc)) from None
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode)):
        raise OutputExistsError(f"{path}: is {_kind(mode)}; lorasum writes only files and folders it made "
                                "here; move it away")
    return path


def check_tree_no_links(root: str | os.PathLike, names: tuple[str, ...] | list[str]) -> None:
    """Refuse a folder lorasum writes into (``root``) if one of its entries ``names``, or anything below
    them, is a symbolic link (see :func:`check_no_links`) or a named pipe, device or socket
    (:func:`check_regular`); links are never followed by the walk.

    Raises:
        OutputExistsError: the first such entry found (in sorted order); the message names it.
    """
    root = Path(root)
    for name in names:
        top = root / name
        check_no_links(root, top)
        check_regular(top)
        if not top.is_dir():
            continue
        for base, dirs, files in os.walk(top, followlinks=False):
            for entry in sorted(dirs + files):
                if (Path(base) / entry).is_symlink():
                    raise _link_error(Path(base) / entry)
                check_regular(Path(base) / entry)
            dirs.sort()


def check_not_inputs(out: str | os.PathLike, inputs: list) -> None:
    """Refuse an output path that is one of ``inputs``, lies inside one, or holds one: replacing it
    (``--overwrite``) would delete what the command reads.

    Raises:
        OutputExistsError: ``out`` overlaps an input, named in the message.
    """
    target = Path(os.path.realpath(out))  # realpath, not resolve: a symlink loop is the loader's to report
    for item in inputs:
        source = Path(os.path.realpath(item))
        if target == source or target in source.parents or source in target.parents:
            raise OutputExistsError(f"{out}: overlaps the input {item}; choose an output outside the inputs")


def _remove(path: Path) -> None:
    """Remove a file, symlink or folder tree; ignore errors (used on temporaries and old copies)."""
    if path.is_symlink() or path.is_file():
        with contextlib.suppress(OSError):
            path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)


def _usual_permissions(folder: Path) -> None:
    """Give everything under ``folder`` the permissions a new file or folder gets: files 0666 (0777 if
    executable by anyone), folders (``folder`` too) 0777, less the umask. Symlinks are neither followed
    nor changed.

    Raises:
        OSError: a chmod is refused.
    """
    mask = _umask()
    os.chmod(folder, 0o777 & ~mask)
    for root, dirs, files in os.walk(folder):
        for name in dirs:
            d = Path(root) / name
            if not d.is_symlink():
                os.chmod(d, 0o777 & ~mask)
        for name in files:
            f = Path(root) / name
            st = os.lstat(f)
            if stat.S_ISREG(st.st_mode):
                os.chmod(f, (0o777 if st.st_mode & 0o111 else 0o666) & ~mask)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Build a folder in a temporary sibling and move it to ``path`` when the block succeeds.

    On an exception the temporary folder is removed and ``path`` is left as it was.
    With ``overwrite`` an existing ``path`` (folder, file or symlink) is replaced only
    after the new folder is complete.

    Before the rename, the permissions of everything in the new folder are set to the usual
    ones (files 0666, executable files and folders 0777, less the umask): writers such as
    safetensors' ``save_file`` create files with a private 0600, which would leave an adapter
    unreadable to the group and others although every other file lorasum writes is not.

    Raises:
        OutputExistsError: ``path`` exists and ``overwrite`` is False.
        UserError: ``path`` is empty or names no folder of its own (``.``, ``..``, ``/``); the file
            system refuses a write, here or in the block (no space, no permission, read-only, a file
            where a folder is needed); ``path`` is left as it was.
    """
    path = check_output(path, overwrite)  # also refuses a path with no name of its own
    try:
        make_folders(path.parent)
        tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path.name), suffix=".tmp", dir=path.parent))
        os.chmod(tmp, 0o777 & ~_umask())
    except OSError as exc:  # the parent cannot take a new folder
        raise _fs_error(path, exc) from exc
    try:
        yield tmp
        _usual_permissions(tmp)
        if os.path.lexists(path):
            # the old copy waits in a fresh hidden folder of its own: no existing name is ever reused
            holder = Path(tempfile.mkdtemp(prefix=_temp_prefix(path.name), suffix=".old", dir=path.parent))
            old = holder / path.name
            try:
                os.replace(path, old)
            except BaseException:  # e.g. a read-only old folder cannot be moved: it stays, the holder goes
                _remove(holder)
                raise
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(old, path)
                _remove(holder)
                raise
            _remove(holder)
        else:
            os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if _is_fs_error(exc):
            raise _fs_error(path, exc) from exc
        if isinstance(exc, _WriteError) and tmp in exc.path.parents:  # name the target, not the temporary
            raise _WriteError(path / exc.path.relative_to(tmp), exc.reason) from exc
        raise


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    """Hex SHA-256 of the canonical JSON form of ``obj`` (sorted keys, no spaces)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return sha256_bytes(text.encode("utf-8"))


def _kind(mode: int) -> str:
    """What a file that is not a regular file or a folder is, in words (for messages)."""
    for test, name in ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


def read_regular_file(path: str | os.PathLike, *, error: type[UserError] = UserError, what: str = "file") -> bytes:
    """Read a whole regular file (symlinks are followed); refuse anything else before reading it.

    The target is checked with ``stat`` before it is opened and again with ``fstat`` on the
    descriptor, which is opened without blocking: a device (a symlink to ``/dev/zero`` would be
    read until memory runs out), a named pipe (would wait for a writer forever), a socket or a
    folder is refused without a byte being read.

    Args:
        path: the file.
        error: the :class:`~lorasum.errors.UserError` subclass to raise (``DataError`` for data
            files, ``ConfigError`` for configs).
        what: the file's role, for the message of a missing file (``"config file"`` gives
            ``x.yaml: config file not found``).

    Raises:
        error: ``path`` is missing, is a folder, is not a regular file (device, pipe, socket) or
            cannot be read (no permission, symlink loop, ...); the message names ``path``.
    """
    path = Path(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = -1
    try:
        mode = os.stat(path).st_mode
        if stat.S_ISREG(mode):  # nothing else is even opened (opening a device can have effects)
            fd = os.open(path, flags)
            mode = os.fstat(fd).st_mode  # the file opened, should it have been swapped since the stat
        if stat.S_ISDIR(mode):
            raise error(f"{path}: expected a file, found a folder")
        if not stat.S_ISREG(mode):
            raise error(f"{path}: expected a regular file, found {_kind(mode)}; refused before reading")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        with os.fdopen(fd, "rb") as fh:
            fd = -1  # closed by the file object
            return fh.read()
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    except OSError as e:
        raise error(f"{path}: cannot read ({e.strerror or e})") from None
    finally:
        if fd >= 0:
            os.close(fd)


# -- pickle policy -----------------------------------------------------------------------------------

_PICKLE_ALLOWED: contextvars.ContextVar[bool] = contextvars.ContextVar("lorasum_allow_pickle", default=False)


@contextlib.contextmanager
def allow_pickle(enabled: bool = True) -> Iterator[None]:
    """Within the block, let loaders read pickle-based weight files (the CLI's ``--allow-pickle``).

    Loaders that take ``allow_pickle=None`` (:func:`lorasum.adapters.load_adapter`,
    :func:`lorasum.models.load_model`) read this setting; an explicit True/False wins.
    Pickle files can run arbitrary code when loaded, so this is off by default.
    """
    token = _PICKLE_ALLOWED.set(bool(enabled))
    try:
        yield
    finally:
        _PICKLE_ALLOWED.reset(token)


def pickle_allowed(explicit: bool | None = None) -> bool:
    """``explicit`` if given, else whether an :func:`allow_pickle` block is active."""
    return _PICKLE_ALLOWED.get() if explicit is None else bool(explicit)


_MAX_HEADER_BYTES = 100_000_000  # the limit safetensors itself enforces


def read_safetensors_header(path: str | os.PathLike) -> dict[str, tuple[tuple[int, ...], str]]:
    """Tensor name → (shape, dtype name such as ``"F32"``) from a safetensors header, reading
    only the header (at most 100 MB), never the data and without mapping the file.

    Callers check the claimed shapes before loading, so a file that claims huge tensors
    (a sparse file, say) is refused before anything is allocated or mapped.

    Raises:
        ValueError: the file is shorter than its header, the header length is out of range,
            or the header is not UTF-8 JSON of the safetensors form.
        OSError: the file cannot be read.
    """
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise ValueError("header too small")
        n = int.from_bytes(head, "little")
        if n > _MAX_HEADER_BYTES:
            raise ValueError(f"header too large ({n} bytes)")
        raw = fh.read(n)
    if len(raw) < n:
        raise ValueError("file shorter than its header")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"header is not UTF-8 JSON ({type(exc).__name__})") from None
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")
    out = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        shape = info.get("shape") if isinstance(info, dict) else None
        dtype = info.get("dtype") if isinstance(info, dict) else None
        if (not isinstance(shape, list) or not isinstance(dtype, str)
                or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
            raise ValueError(f"header entry {key!r} has no valid shape and dtype")
        out[key] = (tuple(shape), dtype)
    return out


# -- names, disk space -------------------------------------------------------------------------------

_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.+-]+$")


def safe_name(name: str) -> str:
    """Return ``name`` if it can be used as one path component inside a run folder.

    Allowed: 1–200 characters from ``A-Z a-z 0-9 _ . + -``, not starting with ``.``
    (hidden files and lorasum's temporaries) and not containing ``..``, so a name from a
    config can never point outside the folder it is joined to.

    Raises:
        ConfigError: the name is empty, too long, has another character (``/``, ``\\``,
            space, NUL, …), starts with ``.`` or contains ``..``.
    """
    if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name) or len(name) > 200:
        raise ConfigError(f"name {name!r}: use 1-200 characters from A-Z a-z 0-9 _ . + - (it becomes a folder name)")
    if name.startswith(".") or ".." in name:
        raise ConfigError(f"name {name!r}: must not start with '.' or contain '..' (it becomes a folder name)")
    return name


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def check_free_space(path: str | os.PathLike, needed_bytes: int, what: str = "the output") -> None:
    """Refuse to start a write that cannot fit: compare ``needed_bytes`` with the free space
    (``shutil.disk_usage``) of the file system that will hold ``path``.

    The check uses the nearest existing ancestor of ``path``. Callers estimate
    ``needed_bytes`` generously, e.g. a merged model: parameters × dtype size × 1.1.

    Raises:
        UserError: less than ``needed_bytes`` is free (message: path, need, free).
    """
    path = Path(path)
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed_bytes:
        raise UserError(f"{path}: not enough free disk space: {what} needs about {_fmt_bytes(needed_bytes)}, "
                        f"{_fmt_bytes(free)} free on {probe}")


# -- manifests ---------------------------------------------------------------------------------------

_MANIFEST_PACKAGES = ("lorasum", "torch", "transformers", "peft", "safetensors", "tokenizers", "huggingface-hub",
                      "numpy", "scipy", "pydantic", "PyYAML", "defusedxml", "matplotlib", "tqdm", "gguf")


def _is_temporary(name: str) -> bool:
    """Whether the file name ``name`` is one of the hidden temporaries lorasum writes next to a target
    (``.NAME.*.tmp``, ``.NAME.*.old``)."""
    return name.startswith(".") and (name.endswith(".tmp") or name.endswith(".old"))


def sha256_path(path: str | os.PathLike, *, skip: Path | None = None) -> dict:
    """Content hash of a file or folder, as a JSON-ready dict.

    A file gives ``{"path", "kind": "file", "sha256", "bytes"}``. A folder gives
    ``{"path", "kind": "folder", "sha256", "bytes", "files"}`` where ``sha256`` is the SHA-256
    of the sorted lines ``"<relative path> <file sha256>\\n"`` (symlinks are not followed
    into folders; lorasum's temporaries ``.*.tmp``/``.*.old`` and ``skip`` are left out).
    A missing path gives ``{"path", "kind": "missing", "sha256": None}``.
    """
    path = Path(path)
    if path.is_file():
        return {"path": str(path), "kind": "file", "sha256": sha256_file(path), "bytes": path.stat().st_size}
    if not path.is_dir():
        return {"path": str(path), "kind": "missing", "sha256": None}
    lines, total = [], 0
    for root, dirs, files in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not _is_temporary(d))
        for name in sorted(files):
            f = Path(root) / name
            if _is_temporary(name) or (skip is not None and f == skip) or not f.is_file():
                continue
            lines.append(f"{f.relative_to(path).as_posix()} {sha256_file(f)}\n")
            total += f.stat().st_size
    digest = sha256_bytes("".join(sorted(lines)).encode("utf-8"))
    return {"path": str(path), "kind": "folder", "sha256": digest, "bytes": total, "files": len(lines)}


def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for name in _MANIFEST_PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def write_manifest(folder: str | os.PathLike, *, config: dict, inputs: dict[str, Path],
                   outputs: list[Path]) -> Path:
    """Write ``folder/manifest.json``: what produced the folder's outputs, atomically.

    Fields: ``format`` (``lorasum.manifest.v1``), ``created`` (UTC), ``python``,
    ``platform``, ``packages`` (installed versions of lorasum and its dependencies; None
    when absent), ``config`` (as given; non-JSON values are written with ``str``),
    ``inputs`` (name → :func:`sha256_path` of the file or folder) and ``outputs`` (list of
    :func:`sha256_path`, paths relative to ``folder`` when inside it). The manifest itself
    is never hashed.

    Returns:
        The manifest's path.

    Raises:
        UserError: the manifest cannot be written (see :func:`atomic_write_bytes`).
    """
    folder = Path(folder)
    own = folder / MANIFEST_NAME

    def entry(p: Path) -> dict:
        info = sha256_path(p, skip=own)
        with contextlib.suppress(ValueError):
            info["path"] = Path(p).resolve().relative_to(folder.resolve()).as_posix() or "."
        return info

    manifest = {
        "format": "lorasum.manifest.v1",
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "packages": _versions(),
        "config": config,
        "inputs": {name: entry(Path(p)) for name, p in sorted(inputs.items())},
        "outputs": [entry(Path(p)) for p in outputs],
    }
    text = json.dumps(manifest, indent=2, sort_keys=True, default=str, allow_nan=True) + "\n"
    return atomic_write_text(own, text)


def describe_json_value(v) -> str:
    """A JSON value in words, for one-line errors about a malformed file: ``null``, ``the number 3``,
    ``the string "x"`` (cut to 40 characters), ``an empty list``, ``an object``; ``a large integer`` for one
    of 16 digits or more (a huge one is not printed)."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return f"the number {v!r}" if isinstance(v, float) or abs(v) < 10**15 else "a large integer"
    if isinstance(v, str):
        return f"the string {json.dumps(v if len(v) <= 40 else v[:37] + '...')}"
    if isinstance(v, list):
        return "a list" if v else "an empty list"
    if isinstance(v, dict):
        return "an object" if v else "an empty object"
    return type(v).__name__
