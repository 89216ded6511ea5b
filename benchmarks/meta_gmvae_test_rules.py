"""Meta-GMVAE's test-time rule against alternatives, on a saved model and its record's own test episodes.

    python benchmarks/meta_gmvae_test_rules.py MODEL [EPISODES]

MODEL: a ``.model.pt`` that ``metabench run --save-models`` wrote for a ``meta_gmvae`` run; EPISODES: how many
of each test protocol's fixed episodes to score (default 300, the first ones of the record's 1000). Prints, per
protocol, the accuracy (mean ± 95% CI over episodes) of each rule on the posterior means of support and query
images taken as one set:

* ``paper_all_diag``: the plugin's (and the paper's) rule, semi-supervised EM on all latent dimensions, per-
  component diagonal variances in the final posterior;
* ``all_identity``: the same EM with identity covariances throughout;
* ``active_diag`` / ``active_identity`` / ``active_tied``: EM on the informative dimensions only (posterior
  variance below 0.8 of the prior's, averaged over the episode's images; the others set to 0), with
  per-component diagonal, identity, or one shared diagonal covariance;
* ``active_proto`` / ``all_proto``: nearest class mean of the support (ProtoNet's ``prototype_logits``),
  informative or all dimensions;

and ``n_active``, the mean number of informative dimensions. Data from ``METABENCH_DATA`` as for ``run``.
"""
from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from metabench.contracts import DataContext
from metabench.engine.evaluation import fixed_episode_indices, mean_ci95
from metabench.engine.models import load_model, rebuild
from metabench.engine.paths import default_cache_dir, default_data_root
from metabench.engine.registry import discover
from metabench.engine.suite import episode_seed, test_shapes
from metabench.toolkit.episodes import batch_from_indices


def rules(alg, em_fit, prototype_logits, sx, sy, qx, ways) -> dict[str, torch.Tensor]:
    """Query scores ``[T, Q, ways]`` of every rule (and ``n_active`` ``[T]``) for one batch of episodes."""
    z, logvar = alg.net.posterior(torch.cat([sx, qx], 1))
    s = sx.shape[1]
    fixed = F.one_hot(sy, ways).to(z.dtype)
    active = logvar.exp().mean(1, keepdim=True) < 0.8
    active = active | ~active.any(-1, keepdim=True)
    za = z * active.to(z.dtype)

    def em(points, **kw):
        return em_fit(points, ways, 10, fixed_resp=fixed, learn_weights=False, **kw).log_resp[:, s:]

    def proto(points):
        return prototype_logits(points[:, :s], sy, points[:, s:], ways)

    return {"paper_all_diag": em(z, diag=True), "all_identity": em(z), "active_diag": em(za, diag=True),
            "active_identity": em(za), "active_tied": em(za, diag=True, tied=True),
            "active_proto": proto(za), "all_proto": proto(z), "n_active": active.sum(-1).double().flatten()}


def main() -> None:
    torch.set_num_threads(2)
    model = load_model(sys.argv[1])
    episodes = int(sys.argv[2]) if len(sys.argv) > 2 else 300
    reg, c = discover(), model.config
    cls = reg.get("algorithm", "meta_gmvae").cls
    em_fit = sys.modules[cls.__module__].em_fit
    prototype_logits = sys.modules[reg.get("algorithm", "protonet").cls.__module__].prototype_logits
    ds_info, ds_opts = reg.resolve("dataset", c["dataset"], c["options"].get(c["dataset"]))
    data = ds_info.cls().load(DataContext(default_data_root(), default_cache_dir(), ds_opts))
    alg = rebuild(model, cls, torch.device("cpu"), default_cache_dir(), data.split("train"))
    alg.net.eval()
    test = data.split("test")
    with torch.no_grad():
        for t in test_shapes(c):
            seed = episode_seed(c.get("test_dataset") or c["dataset"], t, c["seed"])
            idx = fixed_episode_indices(test, t.ways, t.shots, t.queries, c["budget"]["test_episodes"], seed)
            idx = idx[:episodes]
            scores: dict[str, list[torch.Tensor]] = {}
            for start in range(0, episodes, 50):
                ep = batch_from_indices(test.images, idx[start:start + 50], t.shots)
                out = rules(alg, em_fit, prototype_logits, ep.support_x, ep.support_y, ep.query_x, ep.ways)
                for k, v in out.items():
                    scores.setdefault(k, []).append(v if k == "n_active"
                                                    else (v.argmax(-1) == ep.query_y).double().mean(1))
            for k, v in scores.items():
                m, ci = mean_ci95(torch.cat(v))
                if k == "n_active":
                    print(f"{t.tag} n_active {m:.1f}", flush=True)
                else:
                    print(f"{t.tag} {k:16s} {100 * m:6.2f} ± {100 * ci:.2f}", flush=True)


if __name__ == "__main__":
    main()
