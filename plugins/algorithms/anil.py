"""ANIL, Almost No Inner Loop (Raghu, Raghu, Bengio & Vinyals, ICLR 2020, arXiv:1909.09157).

MAML whose inner loop adapts only the linear head; the backbone is left untouched by adaptation and
learned by the outer loop alone (second order through the head updates). The backbone features of a
support set are therefore computed once per task. Hyperparameters follow MAML's, as in the paper.
"""
from __future__ import annotations

from metabench import Claim, hookimpl
from metabench_plugins.algorithms.maml import MAML


class ANIL(MAML):
    """MAML with a head-only inner loop."""

    name = "anil"
    description = "ANIL: MAML whose inner loop adapts only the classifier head"
    paper = "Raghu, Raghu, Bengio & Vinyals 2020, Rapid Learning or Feature Reuse? Towards Understanding " \
            "the Effectiveness of MAML (ICLR), arXiv:1909.09157"
    head_only = True
    claims = Claim.grid("Raghu et al. 2020", "Table 2", "omniglot", {(20, 1): (96.2, 0.5), (20, 5): (98.0, 0.3)},
                        note="Table 2, row 'ANIL' (the paper reports Omniglot 20-way only); checked against the "
                             "paper's text")


@hookimpl
def metabench_algorithms():
    return [ANIL]
