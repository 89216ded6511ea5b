"""A tried and rejected formulation of the batched path: Conv-4 over a meta-batch as batched GEMMs.

    python benchmarks/gemm_conv_experiment.py [--queries 1,15] [--rounds 3]

Each convolution of every task becomes one ``torch.bmm``: activations kept task-major ``[T, C, M, H, W]``,
im2col as 9 shifted slices of the padded input stacked to ``[T, C*9, M*H*W]``, weights ``[T, O, C*9]``;
batch norm is ``F.batch_norm`` on ``[1, T*O, M*H*W]`` (per task and channel), max-pooling on ``[T*O, M, H,
W]``. Every op is a GEMM or a copy, so second-order gradients need no grouped-convolution double backward.
It swaps :func:`metabench.toolkit.grouped.backbone` and times MAML (second and first order) meta-training
steps and test-time adaptation (MAML 3 steps, Reptile 50 Adam steps) against the ``loop`` and ``grouped``
paths, interleaved, after checking float64 meta-gradients against the loop. On the 2-core CPU it lost to
``grouped`` everywhere and to the loop from 15 queries on (figures in ``benchmarks/results/README.md``).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from metabench.toolkit import grouped
from metabench.toolkit import inner_loop as il

GROUPED_BACKBONE = grouped.backbone


def gemm_backbone(blocks: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """:func:`metabench.toolkit.grouped.backbone` (3x3 convolutions, padding 1) as batched GEMMs."""
    t, m = x.shape[:2]
    h = x.transpose(1, 2)                                              # [T, C, M, H, W]
    for i, block in enumerate(blocks):
        for j, layer in enumerate(block):
            pre = f"{i}.{j}."
            if isinstance(layer, nn.Conv2d):
                w, b = params[pre + "weight"], params.get(pre + "bias")
                c, hh, ww = h.shape[1], h.shape[3], h.shape[4]
                hp = F.pad(h, (1, 1, 1, 1))
                cols = torch.stack([hp[..., ky:ky + hh, kx:kx + ww] for ky in range(3) for kx in range(3)], 2)
                cols = cols.reshape(t, c * 9, m * hh * ww)
                wf = w.reshape(t, w.shape[1], -1)
                h = torch.baddbmm(b.unsqueeze(2), wf, cols) if b is not None else torch.bmm(wf, cols)
                h = h.view(t, w.shape[1], m, hh, ww)
            elif isinstance(layer, nn.BatchNorm2d):
                o = h.shape[1]
                h = F.batch_norm(h.reshape(1, t * o, -1), None, None, params[pre + "weight"].reshape(-1),
                                 params[pre + "bias"].reshape(-1), True, 0.0, layer.eps).view(h.shape)
            elif isinstance(layer, nn.ReLU):
                h = F.relu(h)
            else:
                o, hh, ww = h.shape[1], h.shape[3], h.shape[4]
                h = F.max_pool2d(h.reshape(t * o, m, hh, ww), layer.kernel_size, layer.stride)
                h = h.view(t, o, m, *h.shape[-2:])
    return h.reshape(t, h.shape[1], m, -1).permute(0, 2, 1, 3).reshape(t, m, -1)


def _use(path: str) -> str:
    grouped.backbone = gemm_backbone if path == "gemm" else GROUPED_BACKBONE
    return {"gemm": "grouped"}.get(path, path)


def _data(tasks: int, queries: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    sx = torch.randn(tasks, 5, 1, 28, 28, generator=g, dtype=dtype)
    qx = torch.randn(tasks, 5 * queries, 1, 28, 28, generator=g, dtype=dtype)
    sy = torch.arange(5).expand(tasks, -1).contiguous()
    return sx, sy, qx, torch.arange(5).repeat_interleave(queries).expand(tasks, -1).contiguous()


def meta_grads(path: str, model: nn.Module, data: tuple, cfg: il.InnerLoop, chunk: int) -> dict:
    """The meta-gradient of one step on ``path`` (``loop``, ``grouped`` or ``gemm``)."""
    params = dict(model.named_parameters())
    for v in params.values():
        v.grad = None
    il.meta_backward(model, params, *data, cfg, None, _use(path), chunk)
    return {k: v.grad.clone() for k, v in params.items()}


def _timed(fns: dict, rounds: int) -> dict[str, float]:
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--queries", default="1,15")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = il.MetaModel((1, 28, 28), 5).double()
    small = _data(4, 2, torch.float64)
    for first_order in (False, True):
        cfg = il.InnerLoop(steps=2, lr=0.4, first_order=first_order)
        ref, got = meta_grads("loop", model, small, cfg, 1), meta_grads("gemm", model, small, cfg, 0)
        err = max((ref[k] - got[k]).abs().max().item() for k in ref) / max(v.abs().max().item() for v in ref.values())
        print(f"float64 meta-gradient, first_order={first_order}: gemm vs loop, max error {err:.1e} (relative)")
    model = il.MetaModel((1, 28, 28), 5)
    for q in map(int, a.queries.split(",")):
        data = _data(32, q, torch.float32)
        for first_order in (False, True):
            cfg = il.InnerLoop(steps=1, lr=0.4, first_order=first_order)
            t = _timed({path: (lambda path=path, c=c: meta_grads(path, model, data, cfg, c))
                        for path, c in (("loop", 1), ("grouped", 4), ("gemm", 4))}, a.rounds)
            print(f"{'FO' if first_order else ''}MAML meta-training, {q} queries/class: "
                  + ", ".join(f"{k} {t['loop'] / v:.2f}x" for k, v in t.items()))
    params = dict(model.named_parameters())
    sx, sy, qx, _ = _data(32, 15, torch.float32)
    for name, cfg, x, y in (
            ("MAML 3 steps", il.InnerLoop(steps=3, lr=0.4), sx, sy),
            ("Reptile 50 Adam steps", il.InnerLoop(steps=50, lr=1e-3, optimizer="adam", first_order=True,
                                                   minibatches=True),
             sx.unsqueeze(1).expand(-1, 50, -1, -1, -1, -1), sy.unsqueeze(1).expand(-1, 50, -1))):
        t = _timed({path: (lambda path=path: il.predict_logits(model, params, x, y, qx, 5, cfg, _use(path), "x"))
                    for path in ("loop", "grouped", "gemm")}, a.rounds)
        print(f"adaptation, {name}, 15 queries: "
              + ", ".join(f"{k} {1000 * v / 32:.1f} ms/episode ({t['loop'] / v:.2f}x)" for k, v in t.items()))
    _use("grouped")


if __name__ == "__main__":
    main()
