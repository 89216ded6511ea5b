"""Meta-SGD (Li, Zhou, Chen & Li 2017, arXiv:1707.09835).

MAML whose inner step θ' = θ - α ∘ ∇L_support(θ) uses a learned learning rate for every parameter
entry; α is meta-learned with θ by the same (second-order) meta-gradient. As in the paper, α is
initialised uniformly in [0.005, 0.1] and one inner step is taken at training and at test.
"""
from __future__ import annotations

import torch
from torch import nn

from metabench import Claim, PluginError, RunContext, hookimpl
from metabench.toolkit.inner_loop import Params
from metabench_plugins.algorithms.maml import MAML


class MetaSGD(MAML):
    """MAML with meta-learned per-parameter inner learning rates."""

    name = "metasgd"
    description = "Meta-SGD: MAML with meta-learned per-parameter inner learning rates"
    paper = "Li, Zhou, Chen & Li 2017, Meta-SGD: Learning to Learn Quickly for Few-Shot Learning, " \
            "arXiv:1707.09835"
    defaults = {**{k: v for k, v in MAML.defaults.items() if k != "inner_lr"},  # alpha is learned
                "inner_steps": 1, "test_inner_steps": 1, "lr_init_low": 0.005, "lr_init_high": 0.1}
    claims = Claim.grid("Li et al. 2017", "Omniglot table", "omniglot",
                        {(5, 1): (99.53, 0.26), (5, 5): (99.93, 0.09), (20, 1): (95.93, 0.38),
                         (20, 5): (98.97, 0.19)},
                        note="row 'Meta-SGD'; paper not readable here: 5-way values and CIs match a later paper's "
                             "copy, 20-way only a copy rounded to 95.9/99.0; 20-way CIs and table no. not verified")

    def make_lrs(self, ctx: RunContext) -> Params:
        """One learning rate per parameter entry, uniform in ``[lr_init_low, lr_init_high]`` (equal
        bounds give a constant)."""
        lo, hi = float(ctx.options["lr_init_low"]), float(ctx.options["lr_init_high"])
        if not 0 <= lo <= hi:
            raise PluginError(f"{self.name}: need 0 <= lr_init_low <= lr_init_high, got {lo}, {hi}")
        return {k: nn.Parameter(torch.empty(p.shape, dtype=p.dtype).uniform_(lo, hi).to(p.device))
                for k, p in self.model.named_parameters()}


@hookimpl
def metabench_algorithms():
    return [MetaSGD]
