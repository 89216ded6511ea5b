"""The functional inner loop shared by the gradient-based meta-learners (MAML, FOMAML, Meta-SGD, ANIL,
Reptile), written on ``torch.func``.

A model's parameters are a plain dict ``{name: tensor}`` run through ``functional_call``; one task's
adaptation is a pure function of (parameters, support set), so the same function runs over the tasks
of a meta-batch either vectorised with ``vmap`` (``path="batched"``), in a Python loop
(``path="loop"``), or, for the Conv-4 :class:`MetaModel`, with the tasks folded into grouped convolutions
(``path="grouped"``, :mod:`metabench.toolkit.grouped`: plain autograd, fused batch norm). Second order
(MAML) differentiates through the inner updates simply by not detaching anything; first order (FOMAML,
Reptile) evaluates the inner gradients at detached parameters, so they carry no graph back to the
meta-parameters.

Batch norm is per task, with that task's batch statistics (``track_running_stats=False``, as in the
MAML reference code): there are no running buffers, so nothing is updated in place and ``vmap`` is
legal. Under ``vmap`` with second-order gradients it is computed from elementary ops (see
:class:`TaskBatchNorm2d`).
"""
from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from metabench.contracts import PluginError
from metabench.toolkit import grouped
from metabench.toolkit import layout
from metabench.toolkit import nets

Params = dict[str, torch.Tensor]
PATHS = ("auto", "batched", "loop", "grouped")


_ELEMENTARY_BN: contextvars.ContextVar[bool] = contextvars.ContextVar("metabench_elementary_bn", default=False)
_UNDER_VMAP: contextvars.ContextVar[bool] = contextvars.ContextVar("metabench_under_vmap", default=False)


@contextlib.contextmanager
def _vmapping(elementary_bn: bool | None = None) -> Iterator[None]:
    """Tell :class:`TaskBatchNorm2d` that it runs under ``vmap`` within the block (and, unless
    ``elementary_bn`` is None, whether to use its elementary form)."""
    inside = _UNDER_VMAP.set(True)
    token = _ELEMENTARY_BN.set(elementary_bn) if elementary_bn is not None else None
    try:
        yield
    finally:
        if token is not None:
            _ELEMENTARY_BN.reset(token)
        _UNDER_VMAP.reset(inside)


class TaskBatchNorm2d(nn.BatchNorm2d):
    """Batch norm with the statistics of the batch at hand and no running buffers.

    Under :func:`over_tasks`'s ``vmap`` with second-order gradients it is written in elementary ops:
    ``F.batch_norm``'s batching rule for the double backward is wrong (pytorch/functorch issue #534;
    second-order MAML under ``vmap`` got meta-gradients ~5% off in float64 with torch 2.14), while its
    first-order gradients under ``vmap`` are exact (1e-15). Elsewhere it calls the fused ``F.batch_norm``,
    which is exact and faster (see ``benchmarks/results/README.md``).

    Outside ``vmap`` its input is first put in the layout :func:`metabench.toolkit.layout.activation_layout`
    asks for, so that everything after the first convolution computes in it.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__(num_features, eps=eps, track_running_stats=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise each channel of ``[M, C, H, W]`` over ``M, H, W`` (biased variance), scale and shift."""
        if not _UNDER_VMAP.get():  # vmap cannot query a layout other than the default
            x = x.contiguous(memory_format=layout.memory_format())
        if not _ELEMENTARY_BN.get():
            return F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)
        # the affine map folded into one per-channel scale: a single full-size multiply-add
        var, mean = torch.var_mean(x, (0, 2, 3), correction=0, keepdim=True)
        scale = torch.rsqrt(var + self.eps) * self.weight.view(1, -1, 1, 1)
        return torch.addcmul(self.bias.view(1, -1, 1, 1) - mean * scale, x, scale)


class MetaModel(nn.Module):
    """A backbone (:func:`metabench.toolkit.nets.backbone`: Conv-4 by default, or ResNet-12; per-task batch
    norm) followed by a linear head to ``ways`` logits."""

    def __init__(self, image_shape: tuple[int, int, int], ways: int, hidden: int = 64,
                 backbone: str = "conv4") -> None:
        super().__init__()
        self.backbone = nets.backbone(backbone, image_shape, hidden, track_running_stats=False, norm=TaskBatchNorm2d)
        self.head = nn.Linear(self.backbone.out_dim, ways)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[M, C, H, W]`` -> logits ``[M, ways]``."""
        return self.head(self.backbone(x))


@dataclass(frozen=True)
class InnerLoop:
    """How one task is adapted.

    ``steps`` updates of rule ``optimizer`` (``"sgd"``, or ``"adam"`` with fresh per-task moments as
    in Reptile) at learning rate ``lr`` (overridden per parameter by the ``lrs`` given to
    :func:`adapt`, as in Meta-SGD). ``head_only`` adapts only ``head.*`` (ANIL): the backbone features
    of the support set are computed once. ``minibatches``: the support tensors carry a leading
    ``steps`` axis and step ``i`` uses slice ``i`` (Reptile); otherwise every step uses the whole set.
    """

    steps: int
    lr: float = 0.4
    first_order: bool = False
    head_only: bool = False
    optimizer: str = "sgd"
    betas: tuple[float, float] = (0.0, 0.999)
    eps: float = 1e-8
    minibatches: bool = False

    def __post_init__(self) -> None:
        if self.steps < 0 or self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"bad inner loop {self}")
        if self.head_only and self.minibatches:
            raise ValueError("head_only adaptation on minibatches is not supported")


#: On CPU, ``auto`` meta-trains on the ``grouped`` path when a task holds at most this many images (support
#: plus query) and the backbone folds (Conv-4); larger tasks use the per-task ``loop``. Measured with
#: ``metabench bench`` (2-core CPU, Conv-4, 28x28, meta-batch 32, ``grouped`` backpropagating 4 tasks at a
#: time): 10 images per task 1.40-1.59x the loop (MAML, FOMAML, ANIL), 30 images 1.10-1.15x, 80 images 0.83x.
GROUPED_MAX_TASK_IMAGES = 16

#: Tasks per backward pass (``meta_grad_chunk = "auto"``) on CPU for the ``grouped`` and ``batched`` paths:
#: 4 tasks at a time was faster than the whole meta-batch (1.41x vs 1.15x the loop, MAML, 10 images per
#: task) and holds 7x less memory. The ``loop`` backpropagates each task as soon as it is computed (1): as
#: fast as one backward over the mean loss (0.99-1.01x) with 8x less memory.
CPU_CHUNK = 4


def resolve_path(path: str, device: torch.device | str, task_images: int | None = None, foldable: bool = True,
                 phase: str = "train") -> str:
    """``"batched"``, ``"loop"`` or ``"grouped"`` for ``path`` on ``device``, for meta-training (``phase =
    "train"``, tasks of ``task_images`` support + query images) or test-time adaptation (``"predict"``).

    ``auto`` is a rule measured with ``metabench bench`` (figures in ``benchmarks/results/README.md``): on
    CUDA the batched path, one launch for every task; on CPU, meta-training on ``grouped`` for tasks of at
    most :data:`GROUPED_MAX_TASK_IMAGES` images, else the per-task loop, and adaptation on ``grouped`` (the
    episodes of an evaluation batch adapted together, :func:`predict_chunk` at a time: 1.8-2.4x per-episode
    adaptation for every learner). ``grouped`` is chosen only for a backbone it can fold (``foldable``: Conv-4).
    """
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    if phase not in ("train", "predict"):
        raise ValueError(f"phase must be 'train' or 'predict', got {phase!r}")
    if path != "auto":
        return path
    if torch.device(device).type == "cuda":
        return "batched"
    if not foldable:
        return "loop"
    if phase == "predict":
        return "grouped"
    return "grouped" if task_images is not None and task_images <= GROUPED_MAX_TASK_IMAGES else "loop"


def resolve_chunk(chunk: int | str, path: str, device: torch.device | str) -> int:
    """Tasks per backward pass of :func:`meta_backward` for option ``meta_grad_chunk``: an integer is kept
    (0: one backward over the whole meta-batch); ``"auto"`` is 1 on the ``loop`` path, :data:`CPU_CHUNK` on the
    others on CPU, and the whole meta-batch (0) on the others on CUDA (memory to spare, one launch)."""
    if chunk != "auto":
        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 0:
            raise ValueError(f"meta_grad_chunk must be 'auto' or an integer >= 0, got {chunk!r}")
        return chunk
    if path == "loop":
        return 1
    return 0 if torch.device(device).type == "cuda" else CPU_CHUNK


def check_path(model: nn.Module, path: str) -> None:
    """Raise ``ValueError`` when the resolved ``path`` cannot run ``model``: ``grouped`` folds only Conv-4
    (:func:`metabench.toolkit.grouped.check_foldable`)."""
    if path == "grouped":
        grouped.check_foldable(getattr(model.backbone, "blocks", None))


def _sub(params: Params, prefix: str) -> Params:
    return {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}


def _update(fast: Params, g: Params, lrs: Params | None, lr: float, cfg: InnerLoop,
            state: dict[str, Any], step: int, prefix: str) -> Params:
    """One SGD (per-parameter ``lrs`` if given) or Adam update of ``fast``."""
    if cfg.optimizer == "sgd":
        return {k: p - (lrs[prefix + k] if lrs is not None else lr) * g[k] for k, p in fast.items()}
    b1, b2 = cfg.betas
    bc1, bc2 = 1 - b1 ** (step + 1), (1 - b2 ** (step + 1)) ** 0.5
    out = {}
    for k, p in fast.items():
        m = b1 * state["m"][k] + (1 - b1) * g[k]
        v = b2 * state["v"][k] + (1 - b2) * g[k] * g[k]
        state["m"][k], state["v"][k] = m, v
        out[k] = p - (lr / bc1) * m / (v.sqrt() / bc2 + cfg.eps)
    return out


def adapt(model: nn.Module, params: Params, x: torch.Tensor, y: torch.Tensor, cfg: InnerLoop,
          lrs: Params | None = None, with_loss: bool = False) -> Params | tuple[Params, torch.Tensor]:
    """One task's adapted parameters (all of ``params``, keyed alike) after ``cfg.steps`` updates on
    the support set ``x`` ``[S, C, H, W]`` / ``y`` ``[S]`` (``[steps, B, ...]`` with ``cfg.minibatches``).

    With ``with_loss`` also returns the support loss measured at the last update (before it).
    """
    if cfg.head_only:  # ANIL: features once, then adapt the head on them
        x = functional_call(model.backbone, _sub(params, "backbone."), (x,))
        net, prefix = model.head, "head."
        fast = _sub(params, prefix)
    else:
        net, prefix, fast = model, "", dict(params)
    if cfg.first_order:
        x = x.detach()  # head_only: the features must not carry the backbone's graph either

    def loss_fn(p: Params, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(net, p, (xb,)), yb)

    grad_fn = grad_and_value(loss_fn)
    state = {"m": {k: torch.zeros_like(v) for k, v in fast.items()},
             "v": {k: torch.zeros_like(v) for k, v in fast.items()}} if cfg.optimizer == "adam" else {}
    loss = x.new_zeros(())
    for i in range(cfg.steps):
        xb, yb = (x[i], y[i]) if cfg.minibatches else (x, y)
        point = {k: v.detach() for k, v in fast.items()} if cfg.first_order else fast
        g, loss = grad_fn(point, xb, yb)
        fast = _update(fast, g, lrs, cfg.lr, cfg, state, i, prefix)
    adapted = {**params, **{prefix + k: v for k, v in fast.items()}}
    return (adapted, loss) if with_loss else adapted


def task_query(model: nn.Module, params: Params, lrs: Params | None, support_x: torch.Tensor,
               support_y: torch.Tensor, query_x: torch.Tensor, query_y: torch.Tensor | None,
               cfg: InnerLoop) -> tuple[torch.Tensor, torch.Tensor]:
    """Adapt to one task's support set; return its query loss (0 if ``query_y`` is None) and logits."""
    phi = adapt(model, params, support_x, support_y, cfg, lrs)
    logits = functional_call(model, phi, (query_x,))
    loss = F.cross_entropy(logits, query_y) if query_y is not None else logits.new_zeros(())
    return loss, logits


def adapt_grouped(model: nn.Module, params: Params, x: torch.Tensor, y: torch.Tensor, cfg: InnerLoop,
                  lrs: Params | None = None) -> tuple[Params, torch.Tensor]:
    """:func:`adapt` for every task of a meta-batch at once on the grouped forward: ``x`` ``[T, S, C, H, W]``,
    ``y`` ``[T, S]`` (``[T, steps, B, ...]`` with ``cfg.minibatches``) from the shared ``params``; returns
    the adapted parameters stacked ``[T, *shape]`` (all of ``params``) and the last support losses ``[T]``.

    The inner gradient is that of the sum of the task losses w.r.t. the stacked parameters: task ``t``'s
    parameters reach only task ``t``'s loss, so its slice is that task's own gradient.
    """
    tasks, blocks = y.shape[0], model.backbone.blocks
    stacked = grouped.stack_shared(params, tasks)
    if cfg.head_only:
        x = grouped.backbone(blocks, _sub(stacked, "backbone.blocks."), x)
        prefix = "head."

        def forward(p: Params, xb: torch.Tensor) -> torch.Tensor:
            return grouped.head(p, xb)
    else:
        prefix = ""

        def forward(p: Params, xb: torch.Tensor) -> torch.Tensor:
            return grouped_logits(model, p, xb)
    fast = _sub(stacked, prefix)
    if cfg.first_order:
        x = x.detach()

    def loss_fn(p: Params, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        losses = grouped.task_losses(forward(p, xb), yb)
        return losses.sum(), losses.detach()

    grad_fn = grad_and_value(loss_fn, has_aux=True)
    state = {"m": {k: torch.zeros_like(v) for k, v in fast.items()},
             "v": {k: torch.zeros_like(v) for k, v in fast.items()}} if cfg.optimizer == "adam" else {}
    loss = x.new_zeros(tasks)
    for i in range(cfg.steps):
        xb, yb = (x[:, i], y[:, i]) if cfg.minibatches else (x, y)
        point = {k: v.detach() for k, v in fast.items()} if cfg.first_order else fast
        g, (_, loss) = grad_fn(point, xb, yb)
        fast = _update(fast, g, lrs, cfg.lr, cfg, state, i, prefix)
    return {**stacked, **{prefix + k: v for k, v in fast.items()}}, loss


def grouped_logits(model: nn.Module, params: Params, x: torch.Tensor) -> torch.Tensor:
    """Logits ``[T, M, ways]`` of :class:`MetaModel` with per-task ``params`` ``[T, *shape]`` on ``x``
    ``[T, M, C, H, W]`` (:mod:`metabench.toolkit.grouped`)."""
    feats = grouped.backbone(model.backbone.blocks, _sub(params, "backbone.blocks."), x)
    return grouped.head(_sub(params, "head."), feats)


def over_tasks(fn: Callable[..., Any], shared: tuple, per_task: tuple, path: str,
               second_order: bool = True) -> Any:
    """``fn(*shared, *task_slices)`` for every task (dim 0 of each ``per_task`` tensor), outputs stacked.

    ``batched`` is one ``vmap`` over the tasks; ``loop`` calls ``fn`` task by task. ``fn`` returns a
    tensor, a tuple of tensors or a dict of tensors. ``second_order=False`` promises that nothing
    differentiates ``fn``'s gradients again, which lets batch norm use its fused kernel under ``vmap``.
    """
    if path == "batched":
        in_dims = (None,) * len(shared) + (0,) * len(per_task)
        with _vmapping(elementary_bn=second_order):
            return vmap(fn, in_dims=in_dims, randomness="error")(*shared, *per_task)
    if path != "loop":
        raise ValueError(f"path must be 'batched' or 'loop' here, got {path!r}")
    return _stack([fn(*shared, *(a[t] for a in per_task)) for t in range(per_task[0].shape[0])])


def _stack(outs: list) -> Any:
    """Stack a list of equally structured outputs (tensors, tuples, dicts) along a new dim 0."""
    first = outs[0]
    if isinstance(first, dict):
        return {k: _stack([o[k] for o in outs]) for k in first}
    if isinstance(first, tuple):
        return tuple(_stack(list(z)) for z in zip(*outs))
    return torch.stack(outs)


def meta_batch_query(model: nn.Module, params: Params, support_x: torch.Tensor, support_y: torch.Tensor,
                     query_x: torch.Tensor, query_y: torch.Tensor | None, cfg: InnerLoop,
                     lrs: Params | None = None, path: str = "loop") -> tuple[torch.Tensor, torch.Tensor]:
    """Per-task query losses ``[T]`` and logits ``[T, Q, ways]`` of a meta-batch (``[T, ...]`` tensors).

    Differentiable w.r.t. ``params`` (and ``lrs``): the mean loss is the MAML meta-objective.
    """
    if path == "grouped":
        phi, _ = adapt_grouped(model, params, support_x, support_y, cfg, lrs)
        logits = grouped_logits(model, phi, query_x)
        losses = grouped.task_losses(logits, query_y) if query_y is not None else logits.new_zeros(len(logits))
        return losses, logits
    if query_y is None:
        def fn(p, lr, sx, sy, qx):
            return task_query(model, p, lr, sx, sy, qx, None, cfg)
        return over_tasks(fn, (params, lrs), (support_x, support_y, query_x), path, not cfg.first_order)

    def fn(p, lr, sx, sy, qx, qy):
        return task_query(model, p, lr, sx, sy, qx, qy, cfg)
    return over_tasks(fn, (params, lrs), (support_x, support_y, query_x, query_y), path, not cfg.first_order)


def meta_backward(model: nn.Module, params: Params, support_x: torch.Tensor, support_y: torch.Tensor,
                  query_x: torch.Tensor, query_y: torch.Tensor, cfg: InnerLoop, lrs: Params | None = None,
                  path: str = "loop", chunk: int = 0) -> torch.Tensor:
    """Backpropagate the meta-objective, the mean query loss of the ``T`` tasks, into the ``.grad`` of
    ``params`` (and ``lrs``); return the detached per-task losses ``[T]``.

    ``chunk = 0`` (or ``>= T``): one forward and one backward over the whole meta-batch, every task's graph
    alive at once. ``chunk = k``: ``k`` tasks at a time, each chunk's loss sum / ``T`` backpropagated and
    accumulated: the same gradient up to round-off (the task sums are added in another order), with the
    memory of ``k`` tasks' graphs.
    """
    tasks = support_y.shape[0]
    if chunk <= 0 or chunk >= tasks:
        losses, _ = meta_batch_query(model, params, support_x, support_y, query_x, query_y, cfg, lrs, path)
        losses.mean().backward()
        return losses.detach()
    out = []
    for s in range(0, tasks, chunk):
        part = slice(s, s + chunk)
        losses, _ = meta_batch_query(model, params, support_x[part], support_y[part], query_x[part],
                                     query_y[part], cfg, lrs, path)
        (losses.sum() / tasks).backward()
        out.append(losses.detach())
    return torch.cat(out)


#: On CPU, test-time adaptation on ``grouped`` / ``batched`` adapts the episodes of an evaluation batch together
#: in chunks of at most this many support pixels per inner step (images x height x width: 100 Omniglot-sized
#: 28x28 images), so that its memory does not grow with ``eval_batch`` or the image size. Measured on a 2-core
#: CPU (Conv-4, ``grouped``, ms per episode by episodes per call; ``benchmarks/results/README.md``): the gain
#: of adapting together stops at 40-100 28x28 support images per step and turns into a loss beyond (MAML
#: 5-way 5-shot: 8 episodes 44.8 ms, 16: 58.9, 48: 74.1; 84x84 5-way 1-shot: 2 episodes 319 ms, 4: 393).
PREDICT_MAX_PIXELS = 100 * 28 * 28

#: ... but at least this many episodes together, even over the pixel budget: on 84x84 5-way 5-shot episodes (4.5x
#: the budget per episode) two at a time took 632 ms per episode and 820 MB, one at a time 889 ms and 658 MB
#: (``cpu2-predict-chunks-84px.json``).
PREDICT_MIN_EPISODES = 2


def predict_chunk(support_x: torch.Tensor, minibatches: bool) -> int:
    """Episodes :func:`predict_logits` adapts together on ``grouped`` / ``batched``: all of them on CUDA; on
    CPU as many as keep one inner step within :data:`PREDICT_MAX_PIXELS` support pixels, at least
    :data:`PREDICT_MIN_EPISODES`. ``support_x`` is ``[T, S, C, H, W]`` (``[T, steps, B, C, H, W]`` with
    ``minibatches``)."""
    if support_x.device.type == "cuda":
        return support_x.shape[0]
    per_step = support_x.shape[2 if minibatches else 1] * support_x.shape[-2] * support_x.shape[-1]
    return max(PREDICT_MIN_EPISODES, PREDICT_MAX_PIXELS // per_step)


def predict_logits(model: nn.Module, params: Params, support_x: torch.Tensor, support_y: torch.Tensor,
                   query_x: torch.Tensor, ways: int, cfg: InnerLoop, path: str, who: str,
                   lrs: Params | None = None) -> torch.Tensor:
    """Test-time prediction of the gradient-based learners: detached query logits ``[T, Q, ways]`` after
    adapting detached copies of ``params`` (and ``lrs``), head cut to ``ways`` (:func:`fit_head`), to each
    support set; gradients are enabled for the inner loop even under ``torch.no_grad``.

    On ``loop`` each episode is adapted and then predicts in turn. On ``batched`` / ``grouped`` the episodes
    of the evaluation batch are adapted together, :func:`predict_chunk` of them at a time (no outer graph is
    built: the adapted parameters are detached), then their query sets go through the network as
    :func:`query_forward` decides per device.
    """
    params = fit_head({k: v.detach() for k, v in params.items()}, ways, who)
    lrs = fit_head({k: v.detach() for k, v in lrs.items()}, ways, who) if lrs else None
    if path == "loop":
        with torch.enable_grad():
            _, logits = meta_batch_query(model, params, support_x, support_y, query_x, None, cfg, lrs, path)
        return logits.detach()
    chunk = predict_chunk(support_x, cfg.minibatches)
    return torch.cat([_predict_together(model, params, support_x[s:s + chunk], support_y[s:s + chunk],
                                        query_x[s:s + chunk], cfg, path, lrs)
                      for s in range(0, support_y.shape[0], chunk)])


def _predict_together(model: nn.Module, params: Params, support_x: torch.Tensor, support_y: torch.Tensor,
                      query_x: torch.Tensor, cfg: InnerLoop, path: str, lrs: Params | None) -> torch.Tensor:
    """:func:`predict_logits` for episodes adapted in one call on ``grouped`` or ``batched``."""
    with torch.enable_grad():
        if path == "grouped":
            phi, _ = adapt_grouped(model, params, support_x, support_y, cfg, lrs)
        else:
            def fn(p, lr, xt, yt):
                return adapt(model, p, xt, yt, cfg, lr)
            phi = over_tasks(fn, (params, lrs), (support_x, support_y), path, second_order=False)
    with torch.no_grad():
        return query_forward(model, {k: v.detach() for k, v in phi.items()}, query_x, path)


def fold_queries(device: torch.device | str) -> bool:
    """Whether :func:`query_forward` sends the query sets of all episodes through one folded forward pass:
    on CUDA (one launch for every episode), not on CPU, where a Conv-4 forward of 75 query images costs the
    same per image at batch 750 and the grouped form of 32 episodes costs 2.1x the per-episode forwards
    (measured with ``metabench bench``, see ``benchmarks/results/README.md``)."""
    return torch.device(device).type == "cuda"


def query_forward(model: nn.Module, phi: Params, query_x: torch.Tensor, path: str) -> torch.Tensor:
    """Logits ``[T, Q, ways]`` of per-episode parameters ``phi`` (``[T, *shape]``) on ``query_x``
    ``[T, Q, ...]``: per episode, or folded (``grouped``: grouped convolutions; ``batched``: ``vmap``)
    where :func:`fold_queries` says so for the device."""
    if not fold_queries(query_x.device):
        return torch.stack([functional_call(model, {k: v[t] for k, v in phi.items()}, (query_x[t],))
                            for t in range(query_x.shape[0])])
    if path == "grouped":
        return grouped_logits(model, phi, query_x)
    with _vmapping():
        return vmap(lambda p, x: functional_call(model, p, (x,)), randomness="error")(phi, query_x)


def meta_batch_adapt(model: nn.Module, params: Params, x: torch.Tensor, y: torch.Tensor, cfg: InnerLoop,
                     path: str = "loop") -> tuple[Params, torch.Tensor]:
    """Adapted parameters of every task (each ``[T, *shape]``) and the last inner losses ``[T]``."""
    if path == "grouped":
        return adapt_grouped(model, params, x, y, cfg)

    def fn(p, xt, yt):
        return adapt(model, p, xt, yt, cfg, None, with_loss=True)
    return over_tasks(fn, (params,), (x, y), path, not cfg.first_order)


def fit_head(params: Params, ways: int, who: str) -> Params:
    """``params`` with the head cut to its first ``ways`` outputs (evaluation may use fewer ways than
    training); more ways than the head has is an error naming ``who``."""
    have = params["head.weight"].shape[0]
    if ways > have:
        raise PluginError(f"{who}: the head was built for {have} ways, asked to predict {ways}")
    if ways == have:
        return params
    return {k: (v[:ways] if k.startswith("head.") else v) for k, v in params.items()}
