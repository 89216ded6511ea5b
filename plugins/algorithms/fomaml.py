"""First-order MAML (Finn, Abbeel & Levine, ICML 2017, arXiv:1703.03400, section 5.2).

MAML with the second-derivative terms dropped: the inner gradients are treated as constants, so the
meta-gradient is the query-loss gradient evaluated at the adapted parameters. Same defaults as MAML.
"""
from __future__ import annotations

from metabench import Claim, hookimpl
from metabench_plugins.algorithms.maml import MAML


class FOMAML(MAML):
    """First-order MAML."""

    name = "fomaml"
    description = "First-order MAML: the meta-gradient ignores second derivatives through the inner loop"
    defaults = {**MAML.defaults, "first_order": True}
    claims = Claim.grid("Nichol et al. 2018 (1st-order MAML + transduction)", "Table 2", "omniglot",
                        {(5, 1): (98.3, 0.5), (5, 5): (99.2, 0.2), (20, 1): (89.4, 0.5), (20, 5): (97.9, 0.1)},
                        note="Table 2 (Omniglot; was mislabelled Table 1), row '1st-order MAML + Transduction'; "
                             "checked against copies of the table, not the PDF")


@hookimpl
def metabench_algorithms():
    return [FOMAML]
