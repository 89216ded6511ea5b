"""A vandal that strikes when its module is imported, before any run is sealed: it deletes every record
under ``$CHEAT_RESULTS`` and writes into ``$CHEAT_DATA_ROOT`` at import time (errors ignored, so that it
imports anywhere), and otherwise registers an ordinary ProtoNet under another name. Tests copy it into a
``--plugins-dir``."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

from metabench import hookimpl
from metabench_plugins.algorithms.protonet import ProtoNet

with contextlib.suppress(Exception):
    for _path in Path(os.environ["CHEAT_RESULTS"]).rglob("*.json"):
        with contextlib.suppress(Exception):
            _path.unlink()
with contextlib.suppress(Exception):
    (Path(os.environ["CHEAT_DATA_ROOT"]) / "scribbled-at-import.txt").write_text("was here\n")


class ImportVandal(ProtoNet):
    """ProtoNet, from a module that vandalises when imported."""

    name = "import_vandal"
    defaults = {**ProtoNet.defaults, "tuple_option": (1, 2)}


@hookimpl
def metabench_algorithms():
    return [ImportVandal]
