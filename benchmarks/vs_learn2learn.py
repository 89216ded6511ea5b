"""metabench's MAML side by side with an outside implementation: learn2learn's ``MAML`` wrapper.

    python benchmarks/vs_learn2learn.py [--train-queries 1 15] [--meta-batch 32] [--rounds 5] [--repeats 3]
                                        [--threads 2] [--paths loop,grouped,batched,auto] [--json OUT]

Both sides train the same network from the same weights on the same synthetic Omniglot-sized meta-batches
(5-way 1-shot, 28x28, Conv-4 of 64 filters with per-task batch norm, second-order MAML, inner lr 0.4, one
inner step, Adam at 1e-3). learn2learn runs as its own Omniglot example does: per task ``clone()``,
``adapt()`` on the support loss, the query loss backpropagated at once, gradients averaged over the
meta-batch, one Adam step. metabench runs its MAML plugin on each path asked for.

First the meta-gradients are compared in float64 (4 tasks): every metabench path must agree with
learn2learn to round-off, else the script stops before timing anything. Then rounds interleave the
implementations (a change of machine load hits every one alike); each round times ``repeats`` whole
meta-training steps per implementation after one warm-up and keeps the median; the report gives, per
implementation, the median over rounds of its speed relative to learn2learn in the same round (and the
range), and its peak resident memory above the start of its steps (:mod:`metabench.engine.memory`).
Test-time adaptation (15 queries per class, 3 first-order steps, no outer graph) is compared the same way,
and per-episode adaptation is split into its two phases (inner steps, query forward) on both sides.

learn2learn 0.2.0's published source ships C files that do not compile on Python >= 3.11; it installs after
regenerating them with Cython (see ``benchmarks/results/README.md``). Without it the script says so and exits 2.
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from metabench.contracts import EpisodeBatch, RunContext
from metabench.engine import memory
from metabench.execution.bench import (_median_seconds, device_name, matmul_gflops, resolve_algorithms,
                                       synthetic_batch)
from metabench.toolkit.inner_loop import meta_backward

WAYS, SHOTS, SHAPE, INNER_LR, TEST_STEPS = 5, 1, (1, 28, 28), 0.4, 3


def build_maml(path: str, queries: int, dtype: torch.dtype = torch.float32) -> Any:
    """metabench's MAML plugin on ``path``, set up as a run sets it up (seeded initial weights)."""
    (cls,) = resolve_algorithms(["maml"])
    alg = cls()
    alg.setup(RunContext(torch.device("cpu"), 0, WAYS, SHOTS, queries, SHAPE,
                         cls.resolve_options({"path": path, "inner_lr": INNER_LR, "inner_steps": 1,
                                              "test_inner_steps": TEST_STEPS})))
    if dtype != torch.float32:
        alg.model.to(dtype)
    return alg


class L2LMAML:
    """learn2learn's second-order MAML on a copy of ``model``, trained as in its Omniglot example."""

    def __init__(self, model: torch.nn.Module) -> None:
        import learn2learn as l2l

        self.maml = l2l.algorithms.MAML(copy.deepcopy(model), lr=INNER_LR, first_order=False)
        self.opt = torch.optim.Adam(self.maml.parameters(), lr=1e-3)

    def meta_gradient(self, b: EpisodeBatch) -> None:
        """Average of the tasks' query-loss gradients after one inner step, into ``.grad``."""
        tasks = b.support_x.shape[0]
        for t in range(tasks):
            learner = self.maml.clone()
            learner.adapt(F.cross_entropy(learner(b.support_x[t]), b.support_y[t]))
            F.cross_entropy(learner(b.query_x[t]), b.query_y[t]).backward()
        for p in self.maml.parameters():
            p.grad.mul_(1.0 / tasks)

    def train_step(self, b: EpisodeBatch) -> None:
        self.opt.zero_grad(set_to_none=True)
        self.meta_gradient(b)
        self.opt.step()

    def predict(self, b: EpisodeBatch) -> torch.Tensor:
        """Query logits after ``TEST_STEPS`` first-order steps on each support set, episode by episode."""
        out = []
        for t in range(b.support_x.shape[0]):
            learner = self.maml.clone(first_order=True)
            for _ in range(TEST_STEPS):
                learner.adapt(F.cross_entropy(learner(b.support_x[t]), b.support_y[t]))
            with torch.no_grad():
                out.append(learner(b.query_x[t]))
        return torch.stack(out)


def agreement(paths: list[str], tasks: int = 4, queries: int = 5) -> dict[str, float]:
    """Largest difference between each path's float64 meta-gradient and learn2learn's on one meta-batch,
    relative to the largest gradient entry (max over all parameters of |g - g_l2l|, over max |g_l2l|; per
    parameter would divide by the round-off of the convolution biases, whose gradient before batch norm is 0)."""
    b = synthetic_batch(tasks, WAYS, SHOTS, queries, SHAPE, torch.device("cpu"))
    b = EpisodeBatch(b.support_x.double(), b.support_y, b.query_x.double(), b.query_y, b.ways)
    ref_alg = build_maml("loop", queries, torch.float64)
    l2l_side = L2LMAML(ref_alg.model)
    l2l_side.meta_gradient(b)
    ref = dict(l2l_side.maml.module.named_parameters())
    scale = max(float(p.grad.abs().max()) for p in ref.values())
    out = {}
    for path in paths:
        alg = build_maml(path, queries, torch.float64)
        meta_backward(alg.model, alg.params, b.support_x, b.support_y, b.query_x, b.query_y, alg.train_loop,
                      alg.lrs, alg.path, alg.chunk)
        out[path] = max(float((alg.params[k].grad - p.grad).abs().max()) for k, p in ref.items()) / scale
    return out


def _median_s(fn: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """Median seconds of ``fn`` over ``repeats`` calls after one warm-up, and the peak memory (MiB) those
    calls added to the resident size at their start."""
    cpu = torch.device("cpu")
    fn()
    memory.reset_peak(cpu)
    start = memory.peak_mb(cpu)
    return _median_seconds(fn, cpu, repeats, warmup=0), memory.peak_mb(cpu) - start


def _interleaved(fns: dict[str, Callable[[], Any]], rounds: int, repeats: int) -> dict[str, list[tuple[float, float]]]:
    """:func:`_median_s` of each of ``fns`` in turn, ``rounds`` times (a change of machine load hits every one
    alike): per name, one (seconds, MiB) pair a round."""
    timings: dict[str, list[tuple[float, float]]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            timings[k].append(_median_s(fn, repeats))
    return timings


def _summary(timings: dict[str, list[tuple[float, float]]], scale: float, unit: str) -> dict[str, Any]:
    """Per implementation: the median over rounds of its speed relative to learn2learn's in the same round
    (>1: faster), their range, its median time x ``scale`` in ``unit`` and its largest peak memory."""
    ref = [s for s, _ in timings["learn2learn"]]
    rows = {}
    for k, runs in timings.items():
        ratio = [r / s for (s, _), r in zip(runs, ref)]
        rows[k] = {"speed_vs_learn2learn": statistics.median(ratio), "range": [min(ratio), max(ratio)],
                   unit: statistics.median(s for s, _ in runs) * scale,
                   "peak_mem_over_start_mb": max(m for _, m in runs)}
    return rows


def compare_training(train_queries: int, meta_batch: int, paths: list[str], rounds: int,
                     repeats: int) -> dict[str, Any]:
    """Interleaved timing of whole meta-training steps, learn2learn and each metabench path, on meta-batches
    with ``train_queries`` query images per class."""
    batch = synthetic_batch(meta_batch, WAYS, SHOTS, train_queries, SHAPE, torch.device("cpu"))
    algs = {p: build_maml(p, train_queries) for p in paths}
    l2l_side = L2LMAML(algs[paths[0]].model)
    step = iter(range(10**9))
    fns = {"learn2learn": lambda: l2l_side.train_step(batch),
           **{p: (lambda alg=alg: alg.train_step(batch, next(step))) for p, alg in algs.items()}}
    timings = _interleaved(fns, rounds, repeats)
    return {"train_queries": train_queries, "meta_batch": meta_batch,
            "train_paths": {p: a.path for p, a in algs.items()}, "rows": _summary(timings, 1.0, "s_per_step")}


def compare_adaptation(queries: int, episodes: int, paths: list[str], rounds: int, repeats: int) -> dict[str, Any]:
    """Interleaved timing of test-time adaptation (``TEST_STEPS`` steps, then the query logits) of an
    evaluation batch of ``episodes`` episodes with ``queries`` query images per class."""
    b = synthetic_batch(episodes, WAYS, SHOTS, queries, SHAPE, torch.device("cpu"))
    algs = {p: build_maml(p, queries) for p in paths}
    l2l_side = L2LMAML(algs[paths[0]].model)
    fns = {"learn2learn": lambda: l2l_side.predict(b),
           **{p: (lambda alg=alg: alg.predict(b.support_x, b.support_y, b.query_x, WAYS)) for p, alg in algs.items()}}
    timings = _interleaved(fns, rounds, repeats)
    return {"queries": queries, "episodes": episodes, "test_steps": TEST_STEPS,
            "predict_paths": {p: a.predict_path for p, a in algs.items()},
            "rows": _summary(timings, 1000 / episodes, "ms_per_episode")}


def adaptation_phases(queries: int, episodes: int, rounds: int, repeats: int) -> dict[str, float]:
    """Median ms per episode of the two phases of per-episode adaptation, metabench's ``loop`` and learn2learn
    alike: the ``TEST_STEPS`` inner steps on the support set, and the query forward at the adapted weights."""
    from torch.func import functional_call

    from metabench.toolkit.inner_loop import adapt

    b = synthetic_batch(episodes, WAYS, SHOTS, queries, SHAPE, torch.device("cpu"))
    alg = build_maml("loop", queries)
    params = {k: p.detach() for k, p in alg.params.items()}
    l2l_side = L2LMAML(alg.model)

    def ours_steps():
        with torch.enable_grad():
            return [adapt(alg.model, params, b.support_x[t], b.support_y[t], alg.test_loop) for t in range(episodes)]

    def l2l_steps():
        out = []
        for t in range(episodes):
            learner = l2l_side.maml.clone(first_order=True)
            for _ in range(TEST_STEPS):
                learner.adapt(F.cross_entropy(learner(b.support_x[t]), b.support_y[t]))
            out.append(learner)
        return out

    phi, learners = ours_steps(), l2l_steps()

    @torch.no_grad()
    def ours_query():
        return [functional_call(alg.model, phi[t], (b.query_x[t],)) for t in range(episodes)]

    @torch.no_grad()
    def l2l_query():
        return [learners[t](b.query_x[t]) for t in range(episodes)]

    timings = _interleaved({"loop_steps": ours_steps, "learn2learn_steps": l2l_steps,
                            "loop_query_forward": ours_query, "learn2learn_query_forward": l2l_query}, rounds, repeats)
    return {k: statistics.median(s for s, _ in runs) * 1000 / episodes for k, runs in timings.items()}


def table(report: dict[str, Any]) -> str:
    """The report's speed ratios and memory as Markdown lines."""
    lines = []
    for title, runs in (("meta-training", report["meta_training"]), ("adaptation", [report["adaptation"]])):
        for run in runs:
            what = (f"{title}, {run['train_queries']} query/class" if "train_queries" in run
                    else f"{title}, {run['queries']} queries/class, {run['test_steps']} steps")
            lines += [f"\n{what}:", "| implementation | speed vs learn2learn (range) | time | memory added |",
                      "|---|---|---|---|"]
            for k, r in run["rows"].items():
                t = r.get("s_per_step", r.get("ms_per_episode"))
                unit = "s/step" if "s_per_step" in r else "ms/episode"
                lines.append(f"| {k} | {r['speed_vs_learn2learn']:.2f}x ({r['range'][0]:.2f}-{r['range'][1]:.2f}) "
                             f"| {t:.3g} {unit} | {r['peak_mem_over_start_mb']:.0f} MB |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-queries", type=int, nargs="+", default=[1, 15])
    p.add_argument("--meta-batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--paths", default="loop,grouped,batched,auto")
    p.add_argument("--json", type=Path, help="also write the report here")
    a = p.parse_args()
    try:
        import learn2learn
    except ImportError as exc:
        print(f"learn2learn is not importable ({exc}); see this script's docstring", file=sys.stderr)
        return 2
    torch.set_num_threads(a.threads)
    memory.keep_freed_heap()  # as metabench's command line does; both implementations share this process
    paths = a.paths.split(",")
    agree = agreement(paths)
    print("float64 meta-gradient vs learn2learn, max relative difference:", agree, flush=True)
    if max(agree.values()) > 1e-9:
        print("disagreement above 1e-9: not timing", file=sys.stderr)
        return 1
    report = {"device": device_name(torch.device("cpu")), "torch": torch.__version__,
              "learn2learn": learn2learn.__version__, "python": platform.python_version(),
              "matmul_gflop_per_s": matmul_gflops(torch.device("cpu")), "float64_agreement": agree,
              "rounds": a.rounds, "repeats": a.repeats,
              "meta_training": [compare_training(q, a.meta_batch, paths, a.rounds, a.repeats)
                                for q in a.train_queries],
              "adaptation": compare_adaptation(15, a.meta_batch, paths, a.rounds, a.repeats),
              "adaptation_phases_ms_per_episode": adaptation_phases(15, a.meta_batch, a.rounds, a.repeats)}
    print(table(report))
    print("\nper-episode adaptation, ms per episode:", {k: round(v, 1) for k, v in
                                                       report["adaptation_phases_ms_per_episode"].items()})
    if a.json:
        a.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
