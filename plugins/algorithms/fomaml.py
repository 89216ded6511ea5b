"""First-order MAML (Finn, Abbeel & Levine, ICML 2017, arXiv:1703.03400, section 5.2).

MAML with the second-derivative terms dropped: the inner gradients are treated as constants, so the
meta-gradient is the query-loss gradient evaluated at the adapted parameters. Same defaults as MAML.
"""
from __future__ import annotations

from metabench import hookimpl
from metabench_plugins.algorithms.maml import MAML


class FOMAML(MAML):
    """First-order MAML."""

    name = "fomaml"
    description = "First-order MAML: the meta-gradient ignores second derivatives through the inner loop"
    defaults = {**MAML.defaults, "first_order": True}


@hookimpl
def metabench_algorithms():
    return [FOMAML]
