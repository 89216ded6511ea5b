"""The default training state of an algorithm (:meth:`metabench.Algorithm.state_dict`): what a mid-run
checkpoint saves and restores for a ``resumable`` algorithm that does not override it."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler


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
