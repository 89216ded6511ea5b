"""Trained models kept beside their records (``metabench run --save-models``), and loaded back to score
episodes (``metabench evaluate``).

A model file ``<run id>.model.pt`` holds tensors, numbers and strings only (``torch.save``; read with
``weights_only=True``): the run's identity (``run_id``, the resolved ``config``), the ``code`` digest of
metabench and the plugins that trained it (:func:`metabench.engine.checkpoint.code_fingerprint`), what the
algorithm's ``setup`` was given (``context``), and the algorithm's :meth:`~metabench.Algorithm.state_dict`
serialised to bytes with its SHA-256. Loading checks the format, the digest and that the state loads, and
refuses a file that fails any of them with :class:`ModelError` naming it. The record of the run names the
file and its digest (``model``).
"""
from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from metabench.atomic import write_atomic
from metabench.contracts import Algorithm, RunContext

FORMAT = "metabench-model"
VERSION = 1


class ModelError(ValueError):
    """A model file that cannot be used; the message names the file and the reason."""


@dataclass(frozen=True)
class SavedModel:
    """A loaded model file: identity, the context its algorithm was set up with, and its state."""

    path: Path
    run_id: str
    config: dict[str, Any]
    code: str
    context: dict[str, Any]
    state: dict[str, Any]

    @property
    def algorithm(self) -> str:
        """The suite entry of the algorithm (``name`` or ``name@variant``)."""
        return self.config["algorithm"]

    @property
    def dataset(self) -> str:
        """The suite entry of the dataset."""
        return self.config["dataset"]


def model_path(out_dir: Path, run_id: str) -> Path:
    """Where the model of run ``run_id`` lives, beside its record."""
    return out_dir / f"{run_id}.model.pt"


def context_fields(ctx: RunContext) -> dict[str, Any]:
    """What :func:`rebuild` needs to set the algorithm up again as the run did (not the unlabeled images)."""
    return {"seed": ctx.seed, "ways": ctx.ways, "shots": ctx.shots, "queries": ctx.queries,
            "image_shape": list(ctx.image_shape), "options": ctx.options, "dataset": ctx.dataset,
            "augmentation": ctx.augmentation}


def save_model(path: Path, run_id: str, config: dict[str, Any], code: str, ctx: RunContext,
               algorithm: Algorithm) -> str:
    """Write the trained ``algorithm`` of run ``run_id`` to ``path`` atomically; returns the SHA-256 of its
    state bytes (also stored in the file)."""
    buf = io.BytesIO()
    torch.save(_to_cpu(algorithm.state_dict()), buf)
    blob = buf.getvalue()
    digest = hashlib.sha256(blob).hexdigest()
    payload = {"format": FORMAT, "version": VERSION, "run_id": run_id, "config": config, "code": code,
               "context": context_fields(ctx), "state_sha256": digest,
               "state": torch.frombuffer(bytearray(blob), dtype=torch.uint8)}
    write_atomic(path, lambda f: torch.save(payload, f))
    return digest


def load_model(path: str | Path) -> SavedModel:
    """Read and verify a model file (:class:`ModelError` naming it when it is absent, not a model file,
    tampered with or truncated)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such model file (metabench run --save-models writes <run id>.model.pt "
                         "beside each record)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"{path}: not a readable model file ({type(exc).__name__}: {str(exc)[:200]})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelError(f"{path}: not a metabench model file")
    if payload.get("version") != VERSION:
        raise ModelError(f"{path}: model format version {payload.get('version')!r} is not supported "
                         f"(this metabench reads {VERSION})")
    missing = [k for k in ("run_id", "config", "code", "context", "state_sha256", "state") if k not in payload]
    if missing or not isinstance(payload["state"], torch.Tensor) or payload["state"].dtype != torch.uint8:
        raise ModelError(f"{path}: model file lacks {missing or ['state bytes']}")
    blob = payload["state"].numpy().tobytes()
    if hashlib.sha256(blob).hexdigest() != payload["state_sha256"]:
        raise ModelError(f"{path}: the trained state does not match its SHA-256: the file was altered or "
                         "damaged; refusing it")
    try:
        state = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"{path}: the trained state does not load ({type(exc).__name__}: {str(exc)[:200]})") \
            from None
    return SavedModel(path, payload["run_id"], payload["config"], payload["code"], payload["context"], state)


def setup_context(fields: dict[str, Any], cls: type[Algorithm], device: torch.device, cache_dir: Path | None,
                  unlabeled: Any = None) -> RunContext:
    """The :class:`RunContext` of saved :func:`context_fields` on ``device``; options the plugin gained
    after the model was saved take their defaults."""
    c = fields
    options = {**getattr(cls, "defaults", {}), **c["options"]}
    return RunContext(device, c["seed"], c["ways"], c["shots"], c["queries"], tuple(c["image_shape"]),
                      options, cache_dir, unlabeled=unlabeled, dataset=c["dataset"],
                      augmentation=c["augmentation"])


def rebuild(model: SavedModel, cls: type[Algorithm], device: torch.device, cache_dir: Path | None,
            unlabeled: Any = None) -> Algorithm:
    """A fresh instance of ``cls`` set up with the saved context on ``device`` (``unlabeled``: the
    meta-training images, for algorithms whose ``setup`` wants them) and the trained state loaded, in this
    process (``metabench evaluate --no-seal``; sealed, the worker does the same)."""
    algorithm = cls()
    algorithm.setup(setup_context(model.context, cls, device, cache_dir, unlabeled))
    algorithm.load_state_dict(model.state)  # tensors are copied into the set-up ones, on their device
    return algorithm


def _to_cpu(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu()
    if isinstance(x, dict):
        return {k: _to_cpu(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_to_cpu(v) for v in x)
    return x

