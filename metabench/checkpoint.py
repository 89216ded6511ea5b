"""Mid-run checkpoints: a long meta-training run that is stopped (killed, timed out, a session's end)
resumes at its last checkpoint instead of step 0, and finishes with the numbers an uninterrupted run
would have given.

A checkpoint holds the step reached, the losses so far, the meta-training tasks and seconds so far, the
algorithm's state (:func:`algorithm_state`), the episode generator's state and torch's global RNG
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
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from metabench.atomic import write_atomic

FORMAT = 1


@functools.lru_cache(maxsize=None)
def _source_digest(files: tuple[str, ...]) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(f.encode() + b"\0")
        h.update(Path(f).read_bytes())
    return h.hexdigest()


def code_fingerprint(*plugin_classes: type) -> str:
    """A digest of the Python source of metabench, the built-in plugins and the modules of
    ``plugin_classes``: a checkpoint resumes only under the code that wrote it (documentation edits,
    suites and data do not count)."""
    import metabench
    import metabench_plugins

    files = set()
    for pkg in (metabench, metabench_plugins):
        files.update(str(p) for p in Path(pkg.__file__).resolve().parent.rglob("*.py"))
    for cls in plugin_classes:
        with contextlib.suppress(TypeError, OSError):
            files.add(str(Path(inspect.getsourcefile(cls)).resolve()))
    return _source_digest(tuple(sorted(files)))


def checkpoint_path(out_dir: Path, run_id: str) -> Path:
    """Where the checkpoint of run ``run_id`` of the suite whose records are in ``out_dir`` lives."""
    return out_dir / ".checkpoints" / f"{run_id}.pt"


def _tensor_dict(v: Any) -> bool:
    return isinstance(v, dict) and bool(v) and all(isinstance(t, torch.Tensor) for t in v.values())


def algorithm_state(alg: Any) -> dict[str, Any]:
    """The training state found in ``alg``'s attributes: modules, optimisers and schedulers (their
    ``state_dict``), torch generators (their state), tensors and dicts of tensors (copies), and plain
    numbers, strings, booleans and ``None``. Other attributes are taken to be set up by ``setup`` alone."""
    out: dict[str, Any] = {}
    for name, v in vars(alg).items():
        if isinstance(v, (nn.Module, Optimizer, LRScheduler)):
            out[name] = v.state_dict()
        elif isinstance(v, torch.Generator):
            out[name] = v.get_state()
        elif isinstance(v, torch.Tensor):
            out[name] = v.detach().clone()
        elif _tensor_dict(v):
            out[name] = {k: t.detach().clone() for k, t in v.items()}
        elif v is None or isinstance(v, (bool, int, float, str)):
            out[name] = v
    return out


def load_algorithm_state(alg: Any, state: dict[str, Any]) -> None:
    """Put ``state`` (from :func:`algorithm_state`) back into a freshly set-up ``alg``, in place: tensors
    are copied into the existing ones, so optimisers and parameter dicts keep pointing at them."""
    for name, s in state.items():
        v = getattr(alg, name, None)
        if isinstance(v, (nn.Module, Optimizer, LRScheduler)):
            v.load_state_dict(s)
        elif isinstance(v, torch.Generator):
            v.set_state(s)
        elif isinstance(v, torch.Tensor):
            with torch.no_grad():
                v.copy_(s)
        elif _tensor_dict(v):
            with torch.no_grad():
                for k, t in v.items():
                    t.copy_(s[k])
        else:
            setattr(alg, name, s)


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
