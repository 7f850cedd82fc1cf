"""One disk-cache primitive for everything runs share: content-addressed
entries, published atomically, verified on every read, built by one job while
concurrent ones wait.

An entry is a directory <root>/<kind>/<key>, where the key hashes explicit
parts (a model config, settings, a digest of token ids), never a whole run
config. It is written into a temporary directory and renamed into place, so a
reader sees a whole entry or none; a file lock serialises builders, so jobs of
a parallel sweep that miss at once build it once. Its meta.json records what it
holds and a sha256 digest of every file, checked before each read: an entry
whose files changed on disk (a flipped bit, a truncation: torch.load checks no
checksum) is rebuilt, never used. A build that fails (or that the builder finds
wrong, e.g. non-finite values) publishes nothing; what a killed build left
behind is removed by the next builder of that entry.
"""

import fcntl
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from omegaconf import DictConfig, ListConfig, OmegaConf

from gpo.infra.errors import InputError
from gpo.infra.files import make_temp_dir

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
        """read(entry) if the entry exists, is whole and reads; else write(tmp
        dir), publish it as the entry and read that. `describe` is stored beside
        the data (meta.json) so a person can tell what an entry holds."""
        start = time.perf_counter()
        path = self.path(kind, key)
        with self._lock(kind, key):
            self._remove_leftovers(kind, key)
            if path.is_dir():
                problem = damage(path)
                if problem is None:
                    try:
                        return read(path), Outcome("loaded", time.perf_counter() - start, str(path))
                    except Exception as error:  # whatever a damaged file raises: rebuild it
                        problem = f"{type(error).__name__}: {error}"
                log.warning("Cache entry %s is damaged (%s); rebuilding it", path, problem)
                shutil.rmtree(path, ignore_errors=True)
            tmp = make_temp_dir(path.parent, f".{key}{TMP}")
            try:
                write(tmp)
                meta = {"key": key, **(describe or {}), "files": file_digests(tmp)}
                (tmp / META).write_text(json.dumps(meta, indent=2, default=str))
                os.rename(tmp, path)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            return read(path), Outcome("built", time.perf_counter() - start, str(path))

    def _remove_leftovers(self, kind: str, key: str) -> None:
        """Temporary directories of builds killed midway. Only those of entries
        no live builder holds: this entry's (its lock is ours) and any other
        whose lock is free."""
        for leftover in (self.root / kind).glob(f".*{TMP}*"):
            other = leftover.name[1:].split(TMP)[0]
            with open(self.root / kind / f".{other}.lock", "a") as handle:
                if other != key:  # ours is held already (by another open file: flock would refuse it)
                    try:
                        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        continue  # being built right now
                shutil.rmtree(leftover, ignore_errors=True)
            log.info("Removed %s, left by a build that was killed", leftover)


META = "meta.json"
TMP = ".tmp-"


def file_digests(entry: Path) -> dict[str, str]:
    """sha256 of every file of an entry (meta.json aside), by path inside it."""
    digests = {}
    for path in sorted(p for p in entry.rglob("*") if p.is_file() and p.name != META):
        with open(path, "rb") as handle:
            digests[str(path.relative_to(entry))] = hashlib.file_digest(handle, "sha256").hexdigest()
    return digests


def damage(entry: Path) -> str | None:
    """Why an entry cannot be trusted (a file changed, missing or added since it
    was published, or no digests to check), None if it is whole."""
    try:
        recorded = json.loads((entry / META).read_text()).get("files")
    except (OSError, ValueError, AttributeError) as error:
        return f"{META} cannot be read: {type(error).__name__}"
    if not isinstance(recorded, dict):
        return f"{META} records no file digests (an entry of an older version)"
    actual = file_digests(entry)
    for name in sorted(set(recorded) | set(actual)):
        if name not in actual:
            return f"{name} is missing"
        if name not in recorded:
            return f"{name} was added after it was published"
        if actual[name] != recorded[name]:
            return f"{name} changed since it was published (sha256 mismatch)"
    return None
