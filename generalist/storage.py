"""Where a run's files live: a local path or any URI pyarrow understands (s3://, gs://, hdfs://, file://).

A run folder may sit on shared storage so that every node of a cluster checkpoints to the same place. This
module resolves a location into a `pyarrow.fs.FileSystem` and a path on it, and gives the few file
operations a run folder needs, each done as safely as the filesystem allows:

- A plain path (`runs/x`, `/abs/runs/x`) is *native*: read and written with os calls, and a file or folder is
  replaced by writing a temporary one and renaming it (atomic on a POSIX filesystem). This is how run
  folders always behaved.
- A URI (`s3://bucket/runs/x`, `gs://...`, `file:///abs/runs/x`) goes through pyarrow. Object stores cannot
  rename (a "move" is a copy and a delete) or append, so a file is written under its final name in one
  piece (an object appears whole or not at all) and callers make a group of files valid by writing its
  marker last (a checkpoint's `state.json`). `file://` URIs take this same path on the local disk, which is
  how the tests cover what a remote store runs, short of the store itself.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from pathlib import Path

import pyarrow.fs as pafs

from generalist.errors import RunFolderError

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def current_umask() -> int:
    """The process's umask, read without changing it (os.umask can only be read by setting it, which would
    race with the Ray driver's other threads creating files meanwhile)."""
    try:
        with open("/proc/self/status") as status:  # Linux >= 4.7
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def give_umask_mode(path: str | os.PathLike | int, mode: int = 0o666) -> None:
    """Give a file (a path or an open descriptor) made by `tempfile` the mode `open()` would have given it.

    `tempfile.mkstemp` makes files 0600 and `mkdtemp` folders 0700 whatever the umask, so a file renamed into
    a run folder from one would be unreadable to the other users of shared storage; pass mode 0o777 for a
    folder."""
    wanted = mode & ~current_umask()
    if isinstance(path, int):
        os.fchmod(path, wanted)
    else:
        os.chmod(path, wanted)


class Location:
    """A file or folder: `fs` (a pyarrow filesystem) and `path` on it (the URI's scheme stripped).

    `native` locations (plain paths) use os calls and atomic renames; the others use pyarrow calls only, in
    the way every pyarrow filesystem supports. `str()` shows the location as the user wrote it."""

    def __init__(self, fs: pafs.FileSystem, path: str, *, native: bool = False, shown: str | None = None):
        self.fs = fs
        self.path = (path.rstrip("/") or "/") if native else path.rstrip("/")
        self.native = native
        self.shown = shown if shown is not None else (path if native else f"{fs.type_name}:{self.path}")

    # --- naming ---------------------------------------------------------------------------------------

    def __truediv__(self, name: str) -> Location:
        if self.native:
            return Location(self.fs, os.path.join(self.path, name), native=True,
                            shown=os.path.join(self.shown, name))
        return Location(self.fs, f"{self.path}/{name}" if self.path else name,
                        shown=f"{self.shown.rstrip('/')}/{name}")

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    @property
    def parent(self) -> Location:
        if self.native:
            return Location(self.fs, os.path.dirname(self.path), native=True, shown=os.path.dirname(self.shown))
        return Location(self.fs, self.path.rpartition("/")[0], shown=self.shown.rpartition("/")[0])

    def __str__(self) -> str:
        return self.shown

    def __repr__(self) -> str:
        return f"Location({self.shown!r}, fs={self.fs.type_name}, native={self.native})"

    def __eq__(self, other) -> bool:
        return (isinstance(other, Location) and self.path == other.path and self.native == other.native
                and self.fs.equals(other.fs))

    def __hash__(self) -> int:
        return hash((self.path, self.native, self.fs.type_name))

    # --- reading --------------------------------------------------------------------------------------

    def _type(self) -> pafs.FileType:
        return self.fs.get_file_info(self.path).type

    def exists(self) -> bool:
        return os.path.exists(self.path) if self.native else self._type() != pafs.FileType.NotFound

    def is_file(self) -> bool:
        return os.path.isfile(self.path) if self.native else self._type() == pafs.FileType.File

    def is_dir(self) -> bool:
        return os.path.isdir(self.path) if self.native else self._type() == pafs.FileType.Directory

    def size(self) -> int | None:
        """Bytes in the file, or None if there is no such file."""
        if self.native:
            return os.path.getsize(self.path) if os.path.isfile(self.path) else None
        info = self.fs.get_file_info(self.path)
        return info.size if info.type == pafs.FileType.File else None

    def read_bytes(self) -> bytes:
        """The file's bytes; FileNotFoundError (with `.filename`) if it does not exist."""
        if self.native:
            return Path(self.path).read_bytes()
        try:
            with self.fs.open_input_stream(self.path) as stream:
                return stream.read()
        except OSError:
            if self._type() == pafs.FileType.NotFound:
                raise FileNotFoundError(errno.ENOENT, "No such file", self.shown) from None
            raise

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def children(self) -> list[Location]:
        """What the folder holds (files and folders, one level), sorted by name; [] if it does not exist."""
        if self.native:
            try:
                names = sorted(os.listdir(self.path))
            except (FileNotFoundError, NotADirectoryError):
                return []
            return [self / name for name in names]
        infos = self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True))
        return [self / name for name in sorted(info.base_name for info in infos)]

    # --- writing --------------------------------------------------------------------------------------

    def make_dir(self) -> None:
        if self.native:
            os.makedirs(self.path, exist_ok=True)
        else:
            self.fs.create_dir(self.path, recursive=True)

    def write_bytes(self, data: bytes) -> None:
        """Replace the file with `data`, so that a reader sees the old bytes or the new ones, never a part.

        Native: a temporary file beside it, fsync, rename. Otherwise: one whole-object write of the final
        name (on a disk behind a non-native location a crash mid-write can leave a short file; what reads it
        must check, as checkpoint sidecars do)."""
        if not self.native:
            self.parent.make_dir()
            with self.fs.open_output_stream(self.path) as stream:
                stream.write(data)
            return
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(self.path), prefix=f".{self.name}.")
        try:
            give_umask_mode(fd)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode())

    def copy_to(self, target: Location) -> None:
        """Copy this file to `target` on the same filesystem (server-side on object stores)."""
        if self.native:
            target.write_bytes(self.read_bytes())
        else:
            target.parent.make_dir()
            self.fs.copy_file(self.path, target.path)

    def delete(self) -> None:
        """Remove the file or folder (with everything under it); nothing to do if it is not there."""
        if self.native:
            if os.path.isdir(self.path) and not os.path.islink(self.path):
                shutil.rmtree(self.path)
            elif os.path.lexists(self.path):
                os.unlink(self.path)
            return
        kind = self._type()
        if kind == pafs.FileType.Directory:
            self.fs.delete_dir(self.path)
        elif kind != pafs.FileType.NotFound:
            self.fs.delete_file(self.path)


def is_uri(where: str | os.PathLike | Location) -> bool:
    """True for a URI such as s3://bucket/x or file:///x (read through pyarrow), False for a plain path."""
    return isinstance(where, str) and _SCHEME.match(where) is not None


def locate(where: str | os.PathLike | Location) -> Location:
    """A run location from a plain path or a URI that pyarrow understands; RunFolderError if it cannot be used.

    `file:///abs/path` is the local disk through pyarrow (see the module doc); a `Location` is returned as is,
    so a caller may build one with a configured filesystem (credentials, endpoint)."""
    if isinstance(where, Location):
        return where
    text = os.fspath(where)
    if not is_uri(text):
        return Location(pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(text)), native=True,
                        shown=text if isinstance(text, str) else os.fsdecode(text))
    try:
        fs, path = pafs.FileSystem.from_uri(text)
    except Exception as error:  # noqa: BLE001 - pyarrow raises ArrowInvalid, ImportError, OSError, ...
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise RunFolderError(
            f"cannot use {text!r} as a run folder: pyarrow cannot open it ({reason}); give a local path or a "
            "URI pyarrow supports, such as s3://bucket/runs/x, gs://bucket/runs/x, hdfs://host/runs/x or "
            "file:///absolute/path") from None
    return Location(fs, path, shown=text.split("?", 1)[0].rstrip("/"))
