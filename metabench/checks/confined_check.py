"""The sandboxed child of ``check-plugin`` for an outside task generator or algorithm.

Discovery gave a stand-in (:mod:`metabench.engine.plugin_probe`): the plugin's code may run only in a
sandbox. The supervisor draws the secret dataset and runs the sealed half of the isolation check itself
(the run of a stand-in is sealed); every other check -- the contract, the plugin's own calls, pickling, the
smoke run, and the half of the isolation check that runs in reach of the labels -- runs in one ``bwrap``
child (the whole file system read-only; data roots, cache and results hidden; a scratch folder writable),
which imports the plugin and calls :func:`~metabench.checks.conformance.check_plugin` unconfined there
(this module, run as ``python -m metabench.checks.confined_check WORK``). The child hands back its check
results and the numbers of its in-reach run as JSON; the supervisor
(:func:`metabench.checks.conformance._check_confined`) compares them with the sealed run's and alone
writes the check stamp. Bubblewrap does not nest, so the child cannot run the sealed half itself.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from metabench.checks.conformance import SEALED, InReach, check_plugin
from metabench.contracts import ImageSet


def _main(work: Path) -> int:
    """In the sandbox: the unconfined battery (no stamp), results and in-reach numbers to ``out.json``."""
    args = json.loads((work / "args.json").read_text())
    torch.set_num_threads(int(args["threads"]))  # the supervisor's: its sealed run's numbers must match ours
    in_reach = None
    if args["suite"] is not None:
        s = torch.load(work / "secret.pt", weights_only=True)
        in_reach = InReach(ImageSet(s["name"], s["images"], s["labels"], {"train": s["train"], "test": s["test"]},
                                    protocol="sealed-check"), args["suite"])
    results = check_plugin(args["name"], args["kind"], plugins_dirs=args["plugins_dirs"], options=args["options"],
                           data_root=Path(args["data_root"]), cache_dir=work / "cache", isolated=args["isolated"],
                           confine=False, in_reach=in_reach)
    if in_reach is None:
        results = [r for r in results if r.check != SEALED]
    (work / "out.json").write_text(json.dumps({"results": [list(r) for r in results],
                                               "numbers": in_reach.numbers if in_reach else None}))
    return 0


if __name__ == "__main__":
    sys.dont_write_bytecode = True
    code = _main(Path(sys.argv[1]))
    sys.stdout.flush()
    os._exit(code)
