"""Files written whole (a temporary file renamed into place) and with the
permissions the process's umask gives, as any other file it creates: Python's
tempfile makes private (0600 / 0700) files, which a shared cluster's other
users, or a cache shared by a group, could not read once renamed into place."""

import os
import re
import tempfile
from pathlib import Path


def umask() -> int:
    """The process's umask, read without changing it (os.umask sets it), where Linux says it."""
    try:
        match = re.search(r"^Umask:\s*([0-7]+)$", Path("/proc/self/status").read_text(), re.MULTILINE)
    except OSError:
        match = None
    if match:
        return int(match.group(1), 8)
    current = os.umask(0o022)  # elsewhere: set and put back at once
    os.umask(current)
    return current


def follow_umask(path: str | os.PathLike, directory: bool = False) -> None:
    """Give `path` the mode a plain open() / mkdir() would have given it."""
    os.chmod(path, (0o777 if directory else 0o666) & ~umask())


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` whole or not at all: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
        tmp.write(text)
    try:
        follow_umask(tmp.name)
        os.replace(tmp.name, path)
    except BaseException:
        Path(tmp.name).unlink(missing_ok=True)
        raise
    return path


def make_temp_dir(parent: str | os.PathLike, prefix: str) -> Path:
    """A new directory in `parent`, unique, with the umask's permissions (not mkdtemp's 0700)."""
    path = Path(tempfile.mkdtemp(dir=parent, prefix=prefix))
    follow_umask(path, directory=True)
    return path
