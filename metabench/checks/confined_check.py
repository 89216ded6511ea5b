"""``check-plugin`` of an outside task generator or algorithm without importing it in this process.

Discovery gave a stand-in (:mod:`metabench.engine.plugin_probe`): the plugin's code may run only in a
sandbox. The supervisor draws the secret dataset and runs the sealed half of the isolation check itself
(the run of a stand-in is sealed); every other check -- the contract, the plugin's own calls, pickling, the
smoke run, and the half of the isolation check that runs in reach of the labels -- runs in one ``bwrap``
child (the whole file system read-only; data roots, cache and results hidden; a scratch folder writable),
which imports the plugin and calls :func:`~metabench.checks.conformance.check_plugin` unconfined there. The
child hands back its check results and the numbers of its in-reach run as JSON; the supervisor compares
them with the sealed run's and alone writes the check stamp. Bubblewrap does not nest, so the child
cannot run the sealed half itself.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from metabench.checks.conformance import (SEALED, CheckResult, InReach, _reference_data, check_plugin, failures,
                                          smoke_suite)
from metabench.checks.sealed_check import compare, numbers, secret_dataset, secret_run
from metabench.contracts import ImageSet
from metabench.engine import check_stamps, sandbox
from metabench.engine.paths import default_cache_dir, default_data_root
from metabench.engine.registry import PluginInfo, Registry

_TIMEOUT_S = 3600


def check_confined(info: PluginInfo, registry: Registry, options: dict[str, Any], plugins_dirs: list[Path],
                   data_root: Path, cache_dir: Path, isolated: bool) -> list[CheckResult]:
    """The battery for stand-in ``info`` (after "found"): the sealed half here, the rest in a sandbox."""
    reference, files = sandbox.opened_files(lambda: _reference_data(registry, data_root, cache_dir))
    data = secret_dataset(reference.name, reference.image_shape)
    no_tasks = info.kind == "task_generator" and not info.cls.gives_tasks
    suite = smoke_suite(registry, info.kind, info.name, options, no_tasks)
    sealed_record, sealed_problem = secret_run(suite, registry, data, files, data_root, cache_dir, seal=True)
    # the in-reach half only after the sealed one passed, as in an unconfined check
    child_results, here = _child(info, options, plugins_dirs, isolated, [data_root, cache_dir],
                                 None if sealed_problem else (data, suite))
    results = [r for r in child_results if r.check not in ("found", SEALED)]
    in_reach = next((r for r in child_results if r.check == SEALED), None)
    note: list[str] = []
    if sealed_problem:
        results.append(CheckResult(SEALED, False, sealed_problem))
    elif in_reach is None or in_reach.ok is not True or here is None:
        results.append(in_reach._replace(check=SEALED) if in_reach is not None and in_reach.ok is not True
                       else CheckResult(SEALED, False, "the run in reach of the labels gave no numbers"))
    else:
        problem = compare(numbers(sealed_record), here, note)
        results.append(CheckResult(SEALED, problem is None, problem or "; ".join(note)))
    if results[-1].ok and not failures(results):
        path = check_stamps.write_stamp(cache_dir, info.kind, info.name, info.cls)
        results.append(CheckResult("stamp", True, f"passed at this code: {path.name}"))
    return results


def _child(info: PluginInfo, options: dict[str, Any], plugins_dirs: list[Path], isolated: bool,
           hidden: list[Path], secret: tuple[ImageSet, dict[str, Any]] | None
           ) -> tuple[list[CheckResult], list[Any] | None]:
    """Run the unconfined battery in a sandboxed child; its results and in-reach numbers (None: none)."""
    with tempfile.TemporaryDirectory(prefix="metabench-confined-check-") as scratch:
        work = Path(scratch) / "work"
        (work / "cache").mkdir(parents=True)
        empty = Path(scratch) / ".hidden"
        empty.write_bytes(b"")
        args = {"name": info.name, "kind": info.kind, "options": options, "isolated": isolated,
                "plugins_dirs": [str(d) for d in plugins_dirs], "data_root": str(hidden[0]),
                "suite": secret[1] if secret else None}
        (work / "args.json").write_text(json.dumps(args))
        if secret is not None:
            d = secret[0]
            torch.save({"name": d.name, "images": d.images, "labels": d.labels, "train": d.splits["train"],
                        "test": d.splits["test"]}, work / "secret.pt")
        cmd = sandbox.command([sys.executable, "-m", "metabench.checks.confined_check", str(work)],
                              hidden_dirs=[*hidden, default_data_root(), default_cache_dir(),
                                           Path("results").resolve()],
                              hidden_files=[], writable=[str(work)], empty_file=empty, cwd=os.getcwd())
        env = {**os.environ, "TMPDIR": str(work), "PYTHONDONTWRITEBYTECODE": "1"}
        try:
            done = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, env=env, timeout=_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return [CheckResult("confined checks", False, f"did not finish in {_TIMEOUT_S} s")], None
        try:
            out = json.loads((work / "out.json").read_text())
            results = [CheckResult(str(c), None if ok is None else bool(ok), str(m)) for c, ok, m in out["results"]]
        except (OSError, ValueError, TypeError, KeyError) as exc:
            tail = done.stderr.decode(errors="replace").strip()[-400:]
            return [CheckResult("confined checks", False, f"the sandboxed checks gave no report ({exc}; exit "
                                f"code {done.returncode}){': ' + tail if tail else ''}")], None
    return results, out.get("numbers")


def _main(work: Path) -> int:
    """In the sandbox: the unconfined battery (no stamp), results and in-reach numbers to ``out.json``."""
    args = json.loads((work / "args.json").read_text())
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
