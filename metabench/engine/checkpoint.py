"""Mid-run checkpoints: a long meta-training run that is stopped (killed, timed out, a session's end)
resumes at its last checkpoint instead of step 0, and finishes with the numbers an uninterrupted run
would have given.

A checkpoint holds the step reached, the losses so far, the meta-training tasks and seconds so far, the
algorithm's state (:meth:`metabench.Algorithm.state_dict`), the episode generator's state and torch's global RNG
states. It lives in ``<suite results>/.checkpoints/<run id>.pt``, is written atomically, read with
``weights_only=True``, used only by a run with the same configuration and the same code
(:func:`code_fingerprint`), and deleted once the run's ``ok`` record is written.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import sys
from pathlib import Path
from typing import Any

import torch
from metabench.atomic import write_atomic

FORMAT = 1


@functools.lru_cache(maxsize=None)
def _source_digest(files: tuple[str, ...]) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(f.encode() + b"\0")
        h.update(Path(f).read_bytes())
    return h.hexdigest()


def plugin_files(cls: type) -> list[str]:
    """The source files :func:`code_fingerprint` reads for plugin class ``cls``: its top-level package's
    (the file itself for a module outside a package); a stand-in for an outside plugin carries them."""
    confined = vars(cls).get("__metabench_code_files__")
    if confined is not None:
        return list(confined)
    files = set()
    top = sys.modules.get(cls.__module__.split(".")[0])
    where = getattr(top, "__file__", None)
    if where is not None:
        where = Path(where).resolve()
        files.update(str(p) for p in where.parent.rglob("*.py")) if where.name == "__init__.py" \
            else files.add(str(where))
    with contextlib.suppress(TypeError, OSError):
        files.add(str(Path(inspect.getsourcefile(cls)).resolve()))
    return sorted(files)


def code_fingerprint(*plugin_classes: type) -> str:
    """A digest of the Python source of metabench and of the top-level package of each of
    ``plugin_classes`` (the file itself for a plugin module outside a package): a checkpoint resumes only
    under the code that wrote it (documentation edits, suites and data do not count)."""
    core = Path(sys.modules["metabench"].__file__).resolve().parent
    files = {str(p) for p in core.rglob("*.py")}
    for cls in plugin_classes:
        files.update(plugin_files(cls))
    return _source_digest(tuple(sorted(files)))


def checkpoint_path(out_dir: Path, run_id: str) -> Path:
    """Where the checkpoint of run ``run_id`` of the suite whose records are in ``out_dir`` lives."""
    return out_dir / ".checkpoints" / f"{run_id}.pt"


def rng_state(device: torch.device) -> dict[str, Any]:
    """torch's global CPU RNG state (and ``device``'s CUDA RNG state)."""
    out = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        out["cuda"] = torch.cuda.get_rng_state(device)
    return out


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Restore what :func:`rng_state` saved."""
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def save(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically (temporary file in the same folder, then rename)."""
    write_atomic(path, lambda f: torch.save({"format": FORMAT, **payload}, f))


def load(path: Path, identity: dict[str, Any]) -> dict[str, Any] | None:
    """The checkpoint at ``path`` if it exists, reads, and was written for ``identity`` (configuration,
    versions, commit); otherwise ``None``, with a warning naming the file when one was there but unusable."""
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):  # left by a writer killed mid-write (we hold the lock)
        tmp.unlink(missing_ok=True)
    if not path.exists():
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a torn or foreign file: start the run afresh
        print(f"metabench: warning: checkpoint {path} unreadable ({type(exc).__name__}: {exc}); "
              "starting the run from step 0", file=sys.stderr)
        return None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or payload.get("identity") != identity:
        print(f"metabench: warning: checkpoint {path} was written for another configuration or code version; "
              "starting the run from step 0", file=sys.stderr)
        return None
    return payload


def remove(path: Path) -> None:
    """Delete the checkpoint at ``path`` (and its folder when that is left empty)."""
    path.unlink(missing_ok=True)
    try:
        path.parent.rmdir()
    except OSError:
        pass
