"""The forward pass of :class:`~metabench.toolkit.inner_loop.MetaModel` for a whole meta-batch at once, with
every task's own parameters: the tasks are folded into the channels (``[T, M, C, H, W]`` -> ``[M, T*C, H, W]``)
and each convolution is one grouped convolution with the tasks as groups (weights ``[T*O, C, k, k]``,
``groups=T``). Batch norm, ReLU and max-pooling act channel by channel, so ``F.batch_norm`` on ``T*O``
channels is exactly per-task batch norm (each task's statistics), with torch's fused kernel and its exact
double backward (unlike its batching rule under ``vmap``); the head is one batched matrix product.

Parameters are stacked per task, ``{name: [T, *shape]}`` (a shared tensor is ``expand``-ed, so gradients
flow back summed over tasks). Everything is plain autograd: no ``vmap``. The folded activations are in the
memory format :func:`metabench.toolkit.layout.activation_layout` asks for; the values are the same either way.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from metabench.toolkit import layout

Params = dict[str, torch.Tensor]


def fold(x: torch.Tensor) -> torch.Tensor:
    """``[T, M, C, H, W]`` -> ``[M, T*C, H, W]`` (task ``t``'s channels at ``t*C .. t*C+C-1``)."""
    t, m = x.shape[:2]
    return x.transpose(0, 1).reshape(m, t * x.shape[2], *x.shape[3:])


def stack_shared(params: Params, tasks: int) -> Params:
    """Every tensor of ``params`` seen as ``[tasks, *shape]`` (an ``expand``: no copy)."""
    return {k: v.expand(tasks, *v.shape) for k, v in params.items()}


def _flat(p: torch.Tensor) -> torch.Tensor:
    return p.reshape(-1, *p.shape[2:])


FOLDABLE = (nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d)


def check_foldable(blocks: nn.Module | None) -> None:
    """Raise ``ValueError`` unless ``blocks`` is a sequence of ``nn.Sequential`` blocks of the layers
    :func:`backbone` folds (batch norm without running statistics)."""
    for block in blocks if isinstance(blocks, nn.Sequential) else [blocks]:
        if not isinstance(block, nn.Sequential):
            raise ValueError(f"the grouped path folds Conv-4's blocks of layers, not {type(block).__name__}")
        for layer in block:
            if not isinstance(layer, FOLDABLE) or getattr(layer, "track_running_stats", False):
                raise ValueError(f"the grouped path does not support {type(layer).__name__} layers"
                                 + (" with running statistics" if isinstance(layer, FOLDABLE) else ""))


def backbone(blocks: nn.Module, params: Params, x: torch.Tensor) -> torch.Tensor:
    """Features ``[T, M, D]`` of ``x`` ``[T, M, C, H, W]`` through the conv blocks ``blocks`` (the modules
    of Conv-4: ``Conv2d``, ``BatchNorm2d`` without running statistics, ``ReLU``, ``MaxPool2d``) with the
    stacked ``params`` keyed ``"<i>.<j>.weight"`` as in ``blocks.named_parameters()``."""
    check_foldable(blocks)
    t, m = x.shape[:2]
    fmt = layout.memory_format()
    h = fold(x).contiguous(memory_format=fmt)
    for i, block in enumerate(blocks):
        for j, layer in enumerate(block):
            pre = f"{i}.{j}."
            if isinstance(layer, nn.Conv2d):
                bias = params.get(pre + "bias")
                h = F.conv2d(h, _flat(params[pre + "weight"]).contiguous(memory_format=fmt),
                             None if bias is None else bias.reshape(-1),
                             layer.stride, layer.padding, layer.dilation, layer.groups * t)
            elif isinstance(layer, nn.BatchNorm2d):
                h = F.batch_norm(h, None, None, params[pre + "weight"].reshape(-1), params[pre + "bias"].reshape(-1),
                                 True, 0.0, layer.eps)
            elif isinstance(layer, nn.ReLU):
                h = F.relu(h)
            else:
                h = F.max_pool2d(h, layer.kernel_size, layer.stride, layer.padding, layer.dilation, layer.ceil_mode)
    return h.reshape(m, t, -1).transpose(0, 1)


def head(params: Params, feats: torch.Tensor) -> torch.Tensor:
    """Logits ``[T, M, ways]`` of the linear heads ``weight`` ``[T, ways, D]``, ``bias`` ``[T, ways]``."""
    return torch.baddbmm(params["bias"].unsqueeze(1), feats, params["weight"].transpose(1, 2))


def task_losses(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-task mean cross-entropy ``[T]`` of logits ``[T, M, ways]`` against labels ``[T, M]``."""
    return F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(y.shape).mean(1)
