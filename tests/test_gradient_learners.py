"""The gradient-based meta-learners against plain per-task autograd references, in float64, from identical
weights and identical episodes; plus a short real training through the algorithm contract."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from metabench import Budget, EpisodeBatch, LabeledSplit, PluginError, RunContext
from metabench.toolkit.episodes import EpisodeSampler
from metabench.engine.evaluation import evaluate, fixed_episode_indices
from metabench.toolkit import grouped
from metabench.toolkit.layout import activation_layout, resolve_channels_last
from metabench.toolkit.inner_loop import (CPU_CHUNK, GROUPED_MAX_TASK_IMAGES, InnerLoop, MetaModel, adapt, meta_backward,
                                          meta_batch_query, resolve_chunk, resolve_path)
from metabench.seeding import make_generator
from metabench_plugins.algorithms.anil import ANIL
from metabench_plugins.algorithms.fomaml import FOMAML
from metabench_plugins.algorithms.maml import MAML
from metabench_plugins.algorithms.metasgd import MetaSGD
from metabench_plugins.algorithms.reptile import Reptile, minibatches, resolve_task_chunk

T, N, K, Q, SHAPE = 3, 3, 2, 2, (1, 8, 8)  # 8x8 images: three pooled blocks, one unpooled
PATHS = ["loop", "batched", "grouped"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _model(ways: int = N) -> MetaModel:
    torch.manual_seed(0)
    return MetaModel(SHAPE, ways, hidden=8)


def _episodes(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    sx, qx = torch.randn(T, N * K, *SHAPE, generator=g), torch.randn(T, N * Q, *SHAPE, generator=g)
    sy = torch.arange(N).repeat_interleave(K).repeat(T, 1)
    qy = torch.arange(N).repeat_interleave(Q).repeat(T, 1)
    return sx, sy, qx, qy


def _leaves(model: MetaModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().requires_grad_() for k, v in model.named_parameters()}


def ref_forward(model: MetaModel, p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Conv-4 + head written out with ``torch.nn.functional`` (no ``torch.func``): batch statistics."""
    for i, block in enumerate(model.backbone.blocks):
        pre = f"backbone.blocks.{i}."
        x = F.conv2d(x, p[pre + "0.weight"], p[pre + "0.bias"], padding=1)
        x = F.batch_norm(x, None, None, p[pre + "1.weight"], p[pre + "1.bias"], training=True,
                         eps=block[1].eps)
        x = F.relu(x)
        if len(block) == 4:
            x = F.max_pool2d(x, 2)
    return F.linear(x.flatten(1), p["head.weight"], p["head.bias"])


def ref_maml_loss(model, theta, episodes, steps, lr, first_order=False, head_only=False, lrs=None):
    """Mean query loss over tasks, adapting each task by hand with ``torch.autograd.grad``."""
    sx, sy, qx, qy = episodes
    names = [k for k in theta if k.startswith("head.")] if head_only else list(theta)
    total = 0.0
    for t in range(sx.shape[0]):
        phi = dict(theta)
        for _ in range(steps):
            loss = F.cross_entropy(ref_forward(model, phi, sx[t]), sy[t])
            gs = torch.autograd.grad(loss, [phi[n] for n in names], create_graph=not first_order)
            phi.update({n: phi[n] - (lrs[n] if lrs else lr) * g for n, g in zip(names, gs)})
        total = total + F.cross_entropy(ref_forward(model, phi, qx[t]), qy[t])
    return total / sx.shape[0]


def _rel(a: torch.Tensor, b: torch.Tensor, floor: float = 1e-300) -> float:
    """max |a - b| / max |b|; ``floor`` bounds the denominator below."""
    return float((a - b).detach().abs().max() / b.detach().abs().max().clamp(min=floor))


def _grads_close(got, ref, tol: float = 1e-9) -> None:
    """Every tensor within ``tol`` relative (max-norm). A conv bias followed by batch norm has a true
    gradient of exactly 0 and only round-off remains (Adam in Reptile even rescales it): such tensors,
    below 1e-6 of the largest entry in the reference, must be below that in ``got`` too."""
    assert len(got) == len(ref)
    tiny = 1e-6 * max(float(r.abs().max()) for r in ref)
    for i, (g, r) in enumerate(zip(got, ref)):
        if float(r.abs().max()) < tiny:
            assert float(g.detach().abs().max()) < tiny, f"tensor {i} should be ~0"
        else:
            assert _rel(g, r) < tol, f"tensor {i} differs"


def _engine_grads(model, episodes, cfg, path, lrs=None):
    theta = _leaves(model)
    losses, logits = meta_batch_query(model, theta, *episodes, cfg, lrs, path)
    loss = losses.mean()
    wrt = list(theta.values()) + (list(lrs.values()) if lrs else [])
    return loss, torch.autograd.grad(loss, wrt), logits


def _ref_grads(model, episodes, steps, lr, first_order=False, head_only=False, lrs=None):
    theta = _leaves(model)
    loss = ref_maml_loss(model, theta, episodes, steps, lr, first_order, head_only, lrs)
    wrt = list(theta.values()) + (list(lrs.values()) if lrs else [])
    return loss, torch.autograd.grad(loss, wrt)


def test_reference_forward_is_the_module(f64):
    model, (sx, *_) = _model(), _episodes()
    with torch.no_grad():
        assert _rel(ref_forward(model, dict(model.named_parameters()), sx[0]), model(sx[0])) < 1e-12


@pytest.mark.parametrize("path", PATHS)
def test_second_order_maml_matches_reference(f64, path):
    model, ep = _model(), _episodes()
    loss, grads, logits = _engine_grads(model, ep, InnerLoop(steps=2, lr=0.3), path)
    ref_loss, ref = _ref_grads(model, ep, 2, 0.3)
    assert logits.shape == (T, N * Q, N)
    assert _rel(loss, ref_loss) < 1e-9
    assert len(grads) == len(list(model.parameters()))
    _grads_close(grads, ref)


@pytest.mark.parametrize("path", PATHS)
def test_first_order_matches_reference_and_differs_from_second_order(f64, path):
    model, ep = _model(), _episodes()
    loss, grads, _ = _engine_grads(model, ep, InnerLoop(steps=2, lr=0.3, first_order=True), path)
    ref_loss, ref = _ref_grads(model, ep, 2, 0.3, first_order=True)
    _, second = _ref_grads(model, ep, 2, 0.3)
    assert _rel(loss, ref_loss) < 1e-9
    _grads_close(grads, ref)
    assert max(_rel(g, s) for g, s in zip(grads, second)) > 1e-3


@pytest.mark.parametrize("path", PATHS)
def test_metasgd_learning_rates_get_the_reference_gradient(f64, path):
    model, ep = _model(), _episodes()
    g = torch.Generator().manual_seed(3)
    lrs = {k: (0.005 + 0.095 * torch.rand(v.shape, generator=g)).requires_grad_()
           for k, v in model.named_parameters()}
    _, grads, _ = _engine_grads(model, ep, InnerLoop(steps=1), path, lrs)
    _, ref = _ref_grads(model, ep, 1, None, lrs=lrs)
    _grads_close(grads, ref)
    lr_grads = grads[len(list(model.parameters())):]
    assert len(lr_grads) == len(lrs) and all(float(x.abs().max()) > 0 for x in lr_grads)


@pytest.mark.parametrize("path", PATHS)
def test_anil_adapts_only_the_head_and_matches_reference(f64, path):
    model, ep = _model(), _episodes()
    cfg = InnerLoop(steps=2, lr=0.3, head_only=True)
    theta = _leaves(model)
    phi = adapt(model, theta, ep[0][0], ep[1][0], cfg)
    for k in theta:
        if k.startswith("backbone."):
            assert phi[k] is theta[k]
        else:
            assert not torch.equal(phi[k], theta[k])
    _, grads, _ = _engine_grads(model, ep, cfg, path)
    _, ref = _ref_grads(model, ep, 2, 0.3, head_only=True)
    _grads_close(grads, ref)
    assert float(grads[0].abs().max()) > 0, "the outer loop trains the backbone"


def _reptile(path: str, optimizer: str, chunk: int | str = "auto") -> Reptile:
    alg = Reptile()
    opts = Reptile.resolve_options({"path": path, "hidden": 8, "inner_steps": 3, "inner_batch": 4,
                                    "inner_optimizer": optimizer, "inner_lr": 0.01, "total_steps": 10,
                                    "task_chunk": chunk})
    alg.setup(RunContext(torch.device("cpu"), 5, N, K, Q, SHAPE, opts))
    return alg


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
@pytest.mark.parametrize("path,chunk", [(p, "auto") for p in PATHS] + [("grouped", 2), ("batched", 0)])
def test_reptile_outer_update_matches_reference(f64, path, chunk, optimizer):
    alg, (sx, sy, qx, qy) = _reptile(path, optimizer, chunk), _episodes()
    theta = {k: v.detach().clone() for k, v in alg.params.items()}
    gen = torch.Generator().set_state(alg.train_gen.get_state())
    xb, yb = minibatches(torch.cat([sx, qx], 1), torch.cat([sy, qy], 1), 3, 4, gen)
    alg.train_step(EpisodeBatch(sx, sy, qx, qy, N), step=3)

    phis = []
    for t in range(T):  # reference: a module per task, trained with torch.optim
        m = copy.deepcopy(alg.model)
        m.load_state_dict(theta)
        opt = (torch.optim.Adam(m.parameters(), lr=0.01, betas=(0.0, 0.999), eps=1e-8) if optimizer == "adam"
               else torch.optim.SGD(m.parameters(), lr=0.01))
        for i in range(3):
            opt.zero_grad()
            F.cross_entropy(m(xb[t, i]), yb[t, i]).backward()
            opt.step()
        phis.append(dict(m.named_parameters()))
    eps = 1.0 * (1 - 3 / 10)
    want = [eps * (torch.stack([ph[k].detach() for ph in phis]).mean(0) - theta[k]) for k in theta]
    # Adam turns the round-off left in exactly-zero gradients (~1e-17) into steps of up to lr/eps_adam = 1e6
    # times that, so its updates agree to 1e-8 of their scale instead of 1e-9 in float64.
    tol = 1e-9 if optimizer == "sgd" else 1e-7
    _grads_close([alg.params[k].detach() - theta[k] for k in theta], want, tol)  # the updates θ' - θ


def test_grouped_path_refuses_layers_it_cannot_fold():
    x = torch.zeros(2, 3, 1, 4, 4)
    with pytest.raises(ValueError, match="Linear"):
        grouped.backbone(torch.nn.Sequential(torch.nn.Sequential(torch.nn.Linear(4, 4))), {}, x)
    with pytest.raises(ValueError, match="running statistics"):
        grouped.check_foldable(torch.nn.Sequential(torch.nn.Sequential(torch.nn.BatchNorm2d(4))))
    with pytest.raises(ValueError, match="blocks"):
        grouped.backbone(torch.nn.ModuleList([torch.nn.Conv2d(1, 2, 3)]), {}, x)
    grouped.check_foldable(_model().backbone.blocks)
    for cls in (MAML, Reptile):  # another backbone: refused when the algorithm is set up
        with pytest.raises(PluginError, match="grouped"):
            cls().setup(RunContext(torch.device("cpu"), 0, N, K, Q, (3, 16, 16),
                                   cls.resolve_options({"path": "grouped", "backbone": "resnet12", "hidden": 4})))


def _relu_layouts(monkeypatch) -> list[str]:
    """Record the layout of every 4-d ``F.relu`` input from now on: "cl", "nchw", or "both" (ambiguous)."""
    seen, relu = [], F.relu

    def spy(x, *args, **kwargs):
        if x.dim() == 4:
            cl, plain = x.is_contiguous(memory_format=torch.channels_last), x.is_contiguous()
            seen.append("both" if cl and plain else "cl" if cl else "nchw" if plain else "strided")
        return relu(x, *args, **kwargs)
    monkeypatch.setattr(F, "relu", spy)
    return seen


def test_activation_layout_sets_the_layout_of_the_model_and_the_grouped_forward(f64, monkeypatch):
    model, (sx, *_) = _model(), _episodes()
    params = grouped.stack_shared({k[len("backbone.blocks."):]: v for k, v in model.named_parameters()
                                   if k.startswith("backbone.blocks.")}, T)
    seen = _relu_layouts(monkeypatch)
    plain = grouped.backbone(model.backbone.blocks, params, sx)
    with torch.no_grad():
        single = model.backbone(sx[1])
    assert seen and "cl" not in seen and "nchw" in seen
    seen.clear()
    with activation_layout(True):  # one input channel: the first conv's output comes out NCHW unless told
        folded = grouped.backbone(model.backbone.blocks, params, sx)
        with torch.no_grad():
            last = model.backbone(sx[1])
    assert seen and set(seen) <= {"cl", "both"} and "cl" in seen
    torch.testing.assert_close(folded, plain, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(last, single, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(plain[1], single, rtol=1e-12, atol=1e-12)


def test_channels_last_auto_resolves_per_phase_and_device():
    assert resolve_channels_last("auto", "cpu", "grouped", second_order=False)
    assert not resolve_channels_last("auto", "cpu", "grouped", second_order=True)
    assert not resolve_channels_last("auto", "cpu", "loop", second_order=False)
    assert not resolve_channels_last("auto", "cuda", "grouped", second_order=False)
    assert resolve_channels_last(True, "cuda", "loop", True)
    assert not resolve_channels_last(False, "cpu", "grouped", False)
    for bad in ("yes", 1, None):
        with pytest.raises(ValueError, match="channels_last"):
            resolve_channels_last(bad, "cpu", "grouped", False)
    # tasks of N * (K + Q) = 12 images meta-train on grouped, and so does Reptile (minibatches of 10)
    expected = {MAML: (False, True), MetaSGD: (False, True), FOMAML: (True, True), ANIL: (True, True),
                Reptile: (True, True)}
    for cls, phases in expected.items():
        alg = cls()
        alg.setup(RunContext(torch.device("cpu"), 0, N, K, Q, SHAPE, cls.resolve_options({"hidden": 4})))
        assert (alg.train_cl, alg.test_cl) == phases, cls.name
        alg.setup(RunContext(torch.device("cpu"), 0, N, K, Q, SHAPE,
                             cls.resolve_options({"hidden": 4, "path": "loop"})))
        assert (alg.train_cl, alg.test_cl) == (False, False), cls.name
        with pytest.raises(PluginError, match="channels_last"):
            cls().setup(RunContext(torch.device("cpu"), 0, N, K, Q, SHAPE,
                                   cls.resolve_options({"hidden": 4, "channels_last": "on"})))


def test_paths_and_plugin_defaults():
    small, large = GROUPED_MAX_TASK_IMAGES, GROUPED_MAX_TASK_IMAGES + 1
    assert resolve_path("auto", "cpu") == "loop" and resolve_path("auto", "cuda", small) == "batched"
    assert resolve_path("auto", "cpu", small) == "grouped" and resolve_path("auto", "cpu", large) == "loop"
    assert resolve_path("auto", "cpu", small, foldable=False) == "loop"
    assert resolve_path("auto", "cpu", phase="predict") == "grouped"
    assert resolve_path("auto", "cpu", phase="predict", foldable=False) == "loop"
    assert resolve_path("auto", "cuda", phase="predict") == "batched"
    assert resolve_path("loop", "cuda") == "loop" and resolve_path("batched", "cpu") == "batched"
    assert resolve_path("grouped", "cpu") == "grouped" and resolve_path("loop", "cpu", phase="predict") == "loop"
    assert resolve_chunk("auto", "loop", "cpu") == 1 and resolve_chunk("auto", "loop", "cuda") == 1
    assert resolve_chunk("auto", "grouped", "cpu") == CPU_CHUNK and resolve_chunk("auto", "batched", "cuda") == 0
    assert resolve_chunk(0, "grouped", "cpu") == 0 and resolve_chunk(3, "loop", "cpu") == 3
    for bad in (-1, "4", 1.5, True):
        with pytest.raises(ValueError, match="meta_grad_chunk"):
            resolve_chunk(bad, "loop", "cpu")
        with pytest.raises(ValueError, match="task_chunk"):
            resolve_task_chunk(bad, "grouped", "cpu")
    assert resolve_task_chunk("auto", "grouped", "cpu") == CPU_CHUNK
    assert resolve_task_chunk("auto", "loop", "cpu") == 1 and resolve_task_chunk("auto", "batched", "cuda") == 0
    with pytest.raises(ValueError, match="phase"):
        resolve_path("auto", "cpu", phase="test")
    assert MAML.defaults["inner_lr"] == 0.4 and MAML.defaults["test_inner_steps"] > MAML.defaults["inner_steps"]
    assert FOMAML.defaults["first_order"] and not MAML.defaults["first_order"]
    assert ANIL.head_only and "inner_lr" not in MetaSGD.defaults
    with pytest.raises(ValueError):
        resolve_path("vectorised", "cpu")


# ------------------------------------------------------------------------------ a real, short training

def _separable_split(classes: int = 8, per_class: int = 12) -> LabeledSplit:
    """Each class a fixed random binary 8x8 pattern, each image that pattern with 10% pixels flipped."""
    g = torch.Generator().manual_seed(0)
    patterns = torch.rand(classes, 1, 8, 8, generator=g) < 0.5
    labels = torch.arange(classes).repeat_interleave(per_class)
    flips = torch.rand(labels.numel(), 1, 8, 8, generator=g) < 0.1
    return LabeledSplit((patterns[labels] ^ flips).to(torch.uint8) * 255, labels)


@pytest.mark.parametrize("cls,opts", [(MAML, {"outer_lr": 1e-2}), (FOMAML, {"outer_lr": 1e-2}),
                                      (MetaSGD, {"outer_lr": 1e-2}), (ANIL, {"outer_lr": 1e-2}),
                                      (Reptile, {"inner_lr": 1e-2, "test_inner_steps": 10})])
def test_short_training_lowers_the_loss_and_beats_chance(cls, opts):
    torch.manual_seed(0)
    split, ways = _separable_split(), 5
    alg = cls()
    alg.setup(RunContext(torch.device("cpu"), 0, ways, 1, 3, (1, 8, 8),
                         cls.resolve_options({"hidden": 8, **opts})))
    sampler = EpisodeSampler(split.images, split.labels, ways, 1, 3)
    gen = make_generator(1)
    stream = iter(lambda: sampler.sample(4, gen), None)
    losses = alg.meta_train(stream, Budget(steps=30, meta_batch=4))
    assert sum(losses[-5:]) < sum(losses[:5])
    idx = fixed_episode_indices(split, ways, 1, 3, episodes=20, seed=2)
    acc = evaluate(alg, split, idx, shots=1, batch=10)
    assert float(acc.mean()) > 0.4  # chance is 0.2; 30 steps reach 0.5-0.8
    assert alg.embed(split.images[:6].float() / 255).shape == (6, alg.model.backbone.out_dim)


@pytest.mark.parametrize("cls", [MAML, MetaSGD, ANIL])
def test_plugin_paths_agree_and_meta_sgd_learns_its_rates(f64, cls):
    sx, sy, qx, qy = _episodes()
    after = {}
    for path in PATHS:
        alg = cls()
        alg.setup(RunContext(torch.device("cpu"), 0, N, K, Q, SHAPE,
                             cls.resolve_options({"path": path, "hidden": 8})))
        lrs0 = {k: v.detach().clone() for k, v in (alg.lrs or {}).items()}
        loss = alg.train_step(EpisodeBatch(sx, sy, qx, qy, N), 0)
        after[path] = (loss, {k: v.detach().clone() for k, v in alg.params.items()})
        if cls is MetaSGD:
            changed = {k for k, v in alg.lrs.items() if not torch.equal(lrs0[k], v)}
            # a conv bias feeding batch norm has zero gradient, so its rate has none either
            assert changed == {k for k in alg.lrs if not k.endswith(".0.bias")}
    for path in PATHS[1:]:
        assert after["loop"][0] == pytest.approx(after[path][0], rel=1e-12)
        for k, v in after["loop"][1].items():
            torch.testing.assert_close(after[path][1][k], v, rtol=0, atol=1e-9)


def test_predict_with_fewer_ways_than_trained_cuts_the_head():
    alg = MAML()
    alg.setup(RunContext(torch.device("cpu"), 0, 5, 1, 2, SHAPE, MAML.resolve_options({"hidden": 8})))
    sx, sy, qx, _ = _episodes()  # 3-way episodes
    logits = alg.predict(sx.float(), sy, qx.float(), N)
    assert logits.shape == (T, N * Q, N) and not logits.requires_grad
    with pytest.raises(PluginError, match="built for 5 ways"):
        alg.predict(sx.float(), sy, qx.float(), 6)


@pytest.mark.parametrize("cls", [MAML, FOMAML, Reptile])
@pytest.mark.parametrize("path", PATHS)
def test_channels_last_changes_the_layout_not_the_numbers(f64, monkeypatch, cls, path):
    sx, sy, qx, qy = _episodes()
    out, seen = {}, _relu_layouts(monkeypatch) if path != "batched" else []  # vmap: layout left as it comes
    for cl in (False, True):
        alg = cls()
        alg.setup(RunContext(torch.device("cpu"), 0, N, K, Q, SHAPE,
                             cls.resolve_options({"path": path, "hidden": 8, "channels_last": cl})))
        seen.clear()
        loss = alg.train_step(EpisodeBatch(sx, sy, qx, qy, N), 0)
        out[cl] = (loss, {k: v.detach().clone() for k, v in alg.params.items()}, alg.predict(sx, sy, qx, N))
        if path != "batched":
            assert seen and ("cl" in seen) == cl and ("nchw" in seen) == (not cl)
    assert out[True][0] == pytest.approx(out[False][0], rel=1e-12)
    for k, v in out[False][1].items():
        torch.testing.assert_close(out[True][1][k], v, rtol=0, atol=1e-9)
    torch.testing.assert_close(out[True][2], out[False][2], rtol=0, atol=1e-9)


# ------------------------------------------------------------------------------ chunked meta-gradients

@pytest.mark.parametrize("kind", ["second", "first", "metasgd", "anil"])
@pytest.mark.parametrize("path", PATHS)
def test_chunked_meta_backward_gives_the_one_backward_gradient(f64, path, kind):
    model, ep = _model(), _episodes()
    cfg = InnerLoop(steps=2, lr=0.3, first_order=kind == "first", head_only=kind == "anil")
    g = torch.Generator().manual_seed(3)
    lrs0 = ({k: 0.005 + 0.095 * torch.rand(v.shape, generator=g) for k, v in model.named_parameters()}
            if kind == "metasgd" else None)
    grads, losses = {}, {}
    for chunk in (0, 1, 2):  # 2 does not divide T = 3: a short last chunk
        theta = _leaves(model)
        lrs = {k: v.clone().requires_grad_() for k, v in lrs0.items()} if lrs0 else None
        losses[chunk] = meta_backward(model, theta, *ep, cfg, lrs, path, chunk)
        grads[chunk] = [v.grad for v in theta.values()] + ([v.grad for v in lrs.values()] if lrs else [])
        assert not losses[chunk].requires_grad and losses[chunk].shape == (T,)
    for chunk in (1, 2):
        torch.testing.assert_close(losses[chunk], losses[0], rtol=1e-12, atol=0)
        _grads_close(grads[chunk], grads[0], tol=1e-12)


def _trained(cls, options: dict, steps: int):
    """``cls`` set up with ``options`` (8 hidden channels) after ``steps`` steps on :func:`_episodes`: the built
    algorithm, its losses and its meta-parameters (Meta-SGD's rates included)."""
    sx, sy, qx, qy = _episodes()
    alg = cls()
    alg.setup(RunContext(torch.device("cpu"), 0, N, K, Q, SHAPE, cls.resolve_options({"hidden": 8, **options})))
    losses = [alg.train_step(EpisodeBatch(sx, sy, qx, qy, N), i) for i in range(steps)]
    return alg, losses, {k: v.detach().clone() for k, v in {**alg.params, **(alg.lrs or {})}.items()}


def _trains_alike(got, ref) -> None:
    """Two :func:`_trained` results: the same losses to 1e-12 and meta-parameters to 1e-9."""
    assert got[1] == pytest.approx(ref[1], rel=1e-12)
    for k, v in ref[2].items():
        torch.testing.assert_close(got[2][k], v, rtol=0, atol=1e-9)


def test_meta_grad_chunk_option_trains_like_one_backward(f64):
    _trains_alike(_trained(MAML, {"path": "loop", "meta_grad_chunk": 1}, 1),
                  _trained(MAML, {"path": "loop", "meta_grad_chunk": 0}, 1))


@pytest.mark.parametrize("cls,path", [(MAML, "grouped"), (FOMAML, "loop"), (MetaSGD, "loop"), (ANIL, "grouped")])
def test_task_threads_option_trains_like_one_thread(f64, cls, path):
    one, two = (_trained(cls, {"path": path, "task_threads": threads}, 2) for threads in (1, 2))
    assert (one[0].threads, one[0].pool, two[0].threads) == (1, None, 2) and two[0].pool is not None
    _trains_alike(two, one)


def test_auto_resolves_the_paths_and_chunk_from_the_task_size_and_backbone():
    def built(queries, **opts):
        alg = MAML()
        alg.setup(RunContext(torch.device("cpu"), 0, N, K, queries, SHAPE, MAML.resolve_options({"hidden": 4, **opts})))
        return alg.path, alg.predict_path, alg.chunk
    assert N * (K + 2) <= GROUPED_MAX_TASK_IMAGES < N * (K + 5)
    assert built(2) == ("grouped", "grouped", CPU_CHUNK)
    assert built(5) == ("loop", "grouped", 1)
    assert built(2, backbone="resnet12") == ("loop", "loop", 1)
    assert built(2, path="batched", meta_grad_chunk=0) == ("batched", "batched", 0)
    with pytest.raises(PluginError, match="meta_grad_chunk"):
        built(2, meta_grad_chunk=-2)
    with pytest.raises(PluginError, match="task_threads"):
        built(2, task_threads=0)
