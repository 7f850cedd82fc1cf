"""Runs `python src/train.py <args>` once per attempt of a plan, each in a
process of its own, killing it with SIGKILL at the attempt's moment; prints
what became of each attempt (JSON, last line). Used by tests/test_chaos.py.

    python tests/chaos_zygote.py plan.json

plan.json: {"attempts": [{"args": [...], "moment": "training", "n": 3}, ...]};
moment null: run to the end. The libraries are imported once, here; each
attempt is a fork of this process (no threads started yet), so it starts in
a fraction of a second instead of the seconds an interpreter takes to import
torch, Lightning and transformers. What an attempt does after the fork is
what `python src/train.py` does.

Moments (the n-th of this attempt, counted in the attempt's process):
  sft              an SFT training step
  sft-write        the write of the SFT weights' cache file (half written, then killed)
  reference        a split's reference log-probs computed, before the entry is written
  reference-write  the write of the reference log-probs' cache file (half written)
  training         a training step (before it runs)
  checkpoint       a checkpoint write (half written)
  export           the export of the policy (the weights written, not the tokenizer)
"""

import io
import json
import os
import runpy
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]

import torch  # noqa: E402
from lightning_fabric.plugins.io import torch_io  # noqa: E402

import train  # noqa: E402, F401  (src/train.py's imports: gpo.run and everything it uses)
from gpo.model import export  # noqa: E402
from gpo.reference.references import CachedReference  # noqa: E402
from gpo.reference.sft import SFTModule  # noqa: E402
from gpo.training import GPOModule  # noqa: E402


def die():
    os.kill(os.getpid(), signal.SIGKILL)


def half_written(obj, path, save=torch.save) -> None:
    """Write the first half of `obj` serialised to `path`, and die: a kill in the middle of a write."""
    buffer = io.BytesIO()
    save(obj, buffer)
    with open(path, "wb") as handle:
        handle.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        handle.flush()
    die()


def arm(moment: str, n: int) -> None:
    """Patch the function whose n-th call is the moment, to SIGKILL this process there."""
    calls = [0]

    def due() -> bool:
        calls[0] += 1
        return calls[0] == n

    if moment == "sft":
        original_sft_step = SFTModule.training_step

        def sft_step(self, *args):
            if due():
                die()
            return original_sft_step(self, *args)

        SFTModule.training_step = sft_step
    elif moment in ("sft-write", "reference-write"):
        name, original_save = ("model.pt" if moment == "sft-write" else "logps.pt"), torch.save

        def save(obj, f, *args, **kwargs):
            if isinstance(f, (str, os.PathLike)) and Path(f).name == name and due():
                half_written(obj, f, original_save)
            return original_save(obj, f, *args, **kwargs)

        torch.save = save
    elif moment == "reference":
        original_compute = CachedReference._compute

        def compute(self, *args):
            values = original_compute(self, *args)
            if due():
                die()
            return values

        CachedReference._compute = compute
    elif moment == "training":
        original_step = GPOModule.training_step

        def training_step(self, *args):
            if due():
                die()
            return original_step(self, *args)

        GPOModule.training_step = training_step
    elif moment == "checkpoint":
        original_atomic_save = torch_io._atomic_save

        def atomic_save(checkpoint, path):
            if due():
                half_written(checkpoint, path)
            return original_atomic_save(checkpoint, path)

        torch_io._atomic_save = atomic_save
    elif moment == "export":
        original_export_save = export._save

        def export_save(model, tokenizer, directory):
            if due():
                model.save_pretrained(directory.with_name(f".{directory.name}.partial"))
                die()
            return original_export_save(model, tokenizer, directory)

        export._save = export_save
    elif moment is not None:
        raise ValueError(f"unknown moment {moment!r}")


def attempt(args: list[str], moment: str | None, n: int) -> str:
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            arm(moment, n)
            sys.argv = [str(ROOT / "src" / "train.py"), *args]
            runpy.run_path(sys.argv[0], run_name="__main__")  # python src/train.py <args>
        except SystemExit as stop:
            code = 0 if stop.code in (None, 0) else 1
        except BaseException:
            code = 2
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit {os.WEXITSTATUS(status)}"


def main() -> None:
    torch.set_num_threads(1)
    plan = json.loads(Path(sys.argv[1]).read_text())
    outcomes = [attempt(a["args"], a.get("moment"), a.get("n", 1)) for a in plan["attempts"]]
    print(json.dumps(outcomes))


if __name__ == "__main__":
    main()
