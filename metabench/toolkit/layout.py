"""The memory layout of the gradient-based learners' activations: contiguous (NCHW) or ``channels_last``
(NHWC), chosen per computation with :func:`activation_layout` and read by the layers that set it (the
per-task batch norm of :class:`~metabench.toolkit.inner_loop.MetaModel`, the folded activations of
:mod:`metabench.toolkit.grouped`).

The layout changes no value, only the convolutions' round-off. The activations, not the weights, decide it:
a convolution with a channels-last input computes channels-last whatever its weight's layout. It is set at
batch norm, after the first convolution, because a one-channel image (Omniglot, MNIST) is both layouts at
once to torch, so that convolution's output (the largest activation of Conv-4) comes out contiguous, in
which the CPU's batch norm and max-pooling run 4x and 15x slower than channels-last
(``benchmarks/results/README.md``).
"""
from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import torch

_CHANNELS_LAST: contextvars.ContextVar[bool] = contextvars.ContextVar("metabench_channels_last", default=False)

#: Values of the MAML family's and Reptile's ``channels_last`` option.
CHOICES = ("auto", True, False)


@contextlib.contextmanager
def activation_layout(channels_last: bool) -> Iterator[None]:
    """Within the block, :class:`~metabench.toolkit.inner_loop.MetaModel` and the grouped forward compute in
    ``channels_last`` memory format when ``channels_last`` is true, else in torch's default layout."""
    token = _CHANNELS_LAST.set(bool(channels_last))
    try:
        yield
    finally:
        _CHANNELS_LAST.reset(token)


def memory_format() -> torch.memory_format:
    """The activation layout :func:`activation_layout` asked for (contiguous outside any)."""
    return torch.channels_last if _CHANNELS_LAST.get() else torch.contiguous_format


def resolve_channels_last(option: bool | str, device: torch.device | str, path: str, second_order: bool) -> bool:
    """Whether a phase (meta-training or test-time adaptation) computes channels-last, for option
    ``channels_last``: ``True`` / ``False`` as given; ``"auto"``: on CPU where it runs on the ``grouped`` path
    (``path``, resolved) and differentiates the convolutions only once (``second_order`` false: first-order
    meta-training, test-time adaptation), else contiguous. Measured on a 2-core CPU (Conv-4, Omniglot-sized
    5-way tasks, meta-batch 32; ``benchmarks/results/README.md``, "Channels-last activations where they pay"):
    on ``grouped`` it took FOMAML's meta-training from 1.37x to 1.84x the loop and test-time adaptation from
    1.13-1.68x to 1.78-2.18x per-episode adaptation (``cpu2-issue16-auto-rule-tq1.json`` against
    ``cpu2-layout-tq1.json``); it slowed second-order meta-training on ``grouped`` (0.8x: batch norm's double
    backward mixes the layouts) and the per-task loop at 10 images per task (0.9x); on CUDA it is not measured."""
    if option not in CHOICES or not isinstance(option, (bool, str)):
        raise ValueError(f"channels_last must be one of {list(CHOICES)}, got {option!r}")
    if option != "auto":
        return bool(option)
    return torch.device(device).type == "cpu" and path == "grouped" and not second_order
