"""pluggy hook specifications: how a plugin module hands its classes to metabench.

A plugin module (built-in, installed through the ``metabench`` entry-point group, or a file in
``--plugins-dir``) implements one or more of these hooks, each returning a list of classes::

    from metabench import hookimpl

    @hookimpl
    def metabench_algorithms():
        return [MyAlgorithm]
"""
from __future__ import annotations

import pluggy

PROJECT = "metabench"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def metabench_datasets() -> list[type]:
    """Return :class:`metabench.contracts.Dataset` subclasses."""


@hookspec
def metabench_task_generators() -> list[type]:
    """Return :class:`metabench.contracts.TaskGenerator` subclasses."""


@hookspec
def metabench_algorithms() -> list[type]:
    """Return :class:`metabench.contracts.Algorithm` subclasses."""
