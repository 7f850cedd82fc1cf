"""One disk-cache primitive for everything runs share: content-addressed
entries, published atomically, built by one job while concurrent ones wait.

An entry is a directory <root>/<kind>/<key>, where the key hashes explicit
parts (a model config, settings, a digest of token ids), never a whole run
config. It is written into a temporary directory and renamed into place, so a
reader sees a whole entry or none; a file lock serialises builders, so jobs of
a parallel sweep that miss at once build it once. An entry that cannot be read
(truncated by a crash, damaged on disk) is rebuilt, never silently used.
"""

import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from omegaconf import DictConfig, ListConfig, OmegaConf

from gpo.infra.errors import InputError

log = logging.getLogger(__name__)
T = TypeVar("T")


def digest(*parts) -> str:
    """A short stable hash of plain values and config nodes."""
    plain = [OmegaConf.to_container(p, resolve=True) if isinstance(p, (DictConfig, ListConfig)) else p for p in parts]
    return hashlib.sha256(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class Outcome:
    """What a lookup did, for the run summary and the console."""

    status: str  # "loaded" or "built"
    seconds: float
    path: str


class DiskCache:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(os.path.expanduser(root))

    def path(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    @contextmanager
    def _lock(self, kind: str, key: str):
        directory = self.root / kind
        try:
            directory.mkdir(parents=True, exist_ok=True)
            handle = open(directory / f".{key}.lock", "a")  # noqa: SIM115 (held open by the lock below)
        except OSError as error:
            raise InputError(f"cache directory {directory} is not writable ({error.strerror}); "
                             "set cache_dir=<a writable directory>") from error
        with handle:
            fcntl.flock(handle, fcntl.LOCK_EX)  # released when the file closes, or the process dies
            yield

    def get_or_build(self, kind: str, key: str, read: Callable[[Path], T], write: Callable[[Path], None],
                     describe: dict | None = None) -> tuple[T, Outcome]:
        """read(entry) if the entry exists and reads; else write(tmp dir),
        publish it as the entry and read that. `describe` is stored beside the
        data (meta.json) so a person can tell what an entry holds."""
        start = time.perf_counter()
        path = self.path(kind, key)
        with self._lock(kind, key):
            if path.is_dir():
                try:
                    return read(path), Outcome("loaded", time.perf_counter() - start, str(path))
                except Exception as error:  # whatever a damaged file raises: rebuild it
                    log.warning("Cache entry %s cannot be read (%s: %s); rebuilding it", path,
                                type(error).__name__, error)
                    shutil.rmtree(path, ignore_errors=True)
            tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{key}.tmp-"))
            try:
                write(tmp)
                (tmp / "meta.json").write_text(json.dumps({"key": key, **(describe or {})}, indent=2, default=str))
                os.rename(tmp, path)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            return read(path), Outcome("built", time.perf_counter() - start, str(path))
