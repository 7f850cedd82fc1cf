"""Read an offline W&B run (run-<id>.wandb) with wandb's own record reader, so
offline runs can be checked and summarised without an account or a server."""

import glob
import json
import os

from wandb.proto import wandb_internal_pb2
from wandb.sdk.internal import datastore


def _items(updates) -> dict:
    return {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in updates}


def read_run(path: str) -> dict:
    """`path` is a .wandb file or an offline-run directory. Returns name, group,
    config, history (one dict per logged step), summary and exit code."""
    if os.path.isdir(path):
        (path,) = glob.glob(os.path.join(path, "*.wandb"))
    store = datastore.DataStore()
    store.open_for_scan(path)
    run = {"history": [], "summary": {}, "config": {}, "exit_code": None}
    while (data := store.scan_data()) is not None:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
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
