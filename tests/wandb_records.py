"""Read an offline W&B run back (run-<id>.wandb), so tests check what W&B
recorded without an account or a server.

wandb >= 0.23 has no Python reader for its run files any more (the service,
wandb-core, is written in Go), and an offline run leaves no summary or config
file beside them: the .wandb file is the record. Its framing is the LevelDB
log format (https://github.com/google/leveldb/blob/main/doc/log_format.md)
behind a 7-byte W&B header, each checksummed; the records inside are wandb's
own protobuf schema (wandb.proto.wandb_internal_pb2, part of the package).
So this reads the framing (checksums verified: a damaged file fails, it is
never half read) and leaves the records to wandb's schema.
"""

import glob
import json
import os
import struct
import zlib

from wandb.proto import wandb_internal_pb2

HEADER = struct.Struct("<4sHB")  # ident, magic, version
IDENT, MAGIC, VERSION = b":W&B", 0xBEE1, 0
RECORD = struct.Struct("<IHB")  # crc32 of type and data, length, type
BLOCK = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def _chunks(data: bytes, path: str):
    """(type, payload) of every physical record: records never straddle a
    32 KiB block; a block's tail too short for a record header is zero padding."""
    position = HEADER.size
    while position < len(data):
        left = BLOCK - position % BLOCK
        if left < RECORD.size:
            if data[position:position + left].strip(b"\0"):
                raise ValueError(f"{path}: bad block padding at byte {position}")
            position += left
            continue
        if position + RECORD.size > len(data):
            raise ValueError(f"{path}: truncated record header at byte {position}")
        checksum, length, kind = RECORD.unpack_from(data, position)
        payload = data[position + RECORD.size:position + RECORD.size + length]
        if len(payload) != length or zlib.crc32(payload, zlib.crc32(bytes([kind]))) != checksum:
            raise ValueError(f"{path}: damaged or truncated record at byte {position}")
        yield kind, payload
        position += RECORD.size + length


def records(path: str):
    """The protobuf Records of a .wandb file, in the order W&B wrote them."""
    with open(path, "rb") as handle:
        data = handle.read()
    if len(data) < HEADER.size or HEADER.unpack_from(data) != (IDENT, MAGIC, VERSION):
        raise ValueError(f"{path}: not a W&B run file of a known version")
    pending = None
    for kind, payload in _chunks(data, path):
        if kind == FULL and pending is None:
            whole = payload
        elif kind == FIRST and pending is None:
            pending = payload
            continue
        elif kind == MIDDLE and pending is not None:
            pending += payload
            continue
        elif kind == LAST and pending is not None:
            whole, pending = pending + payload, None
        else:
            raise ValueError(f"{path}: record of type {kind} out of order")
        record = wandb_internal_pb2.Record()
        record.ParseFromString(whole)
        yield record
    if pending is not None:
        raise ValueError(f"{path}: ends inside a record")


def _items(updates) -> dict:
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in updates}


def read_run(path: str) -> dict:
    """`path` is a .wandb file or an offline-run directory. Returns id, name,
    group, project, config, history (one dict per logged step), summary and exit code."""
    if os.path.isdir(path):
        (path,) = glob.glob(os.path.join(path, "*.wandb"))
    run = {"history": [], "summary": {}, "config": {}, "exit_code": None}
    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.update(id=record.run.run_id, name=record.run.display_name, group=record.run.run_group,
                       project=record.run.project)
            run["config"].update(_items(record.run.config.update))
        elif kind == "config":
            run["config"].update(_items(record.config.update))
        elif kind == "history":
            run["history"].append(_items(record.history.item))
        elif kind == "summary":
            run["summary"].update(_items(record.summary.update))
        elif kind == "exit":
            run["exit_code"] = record.exit.exit_code
    return run


def find_runs(directory: str) -> list[str]:
    return sorted(glob.glob(os.path.join(directory, "**", "offline-run-*"), recursive=True))
