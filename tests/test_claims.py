"""Published-number claims: declared beside the plugins, matched to records, REPRODUCTION.md."""
from __future__ import annotations

import math
import textwrap

import pytest

from metabench import Claim
from metabench.report.reproduction import (SourcedClaim, gather_claims, plugin_claims, render_reproduction,
                                           write_reproduction)
from metabench.commands.cli import main
from metabench.report.summary import summarize
from metabench.engine.records import write_record
from metabench.engine.registry import discover
from tests.helpers import make_record


def rec(alg, gen, ways, shots, acc, ci, seed=0, dataset="omniglot"):
    r = make_record(f"{dataset}-{alg}-{gen}-{ways}w{shots}s-{seed}", alg, seed, acc, ci, ways=ways, shots=shots)
    r["config"].update(task_generator=gen, dataset=dataset)
    return r


@pytest.fixture(scope="module")
def builtin_claims():
    return gather_claims(discover())


def test_claim_validation_and_grid():
    with pytest.raises(ValueError, match="percent"):
        Claim("p", "Table 1", "omniglot", 5, 1, 0.988)
    with pytest.raises(ValueError, match="ways"):
        Claim("p", "Table 1", "omniglot", 1, 1, 98.8)
    with pytest.raises(ValueError, match="paper"):
        Claim("", "Table 1", "omniglot", 5, 1, 98.8)
    grid = Claim.grid("p", "T", "omniglot", {(5, 1): 98.7, (20, 5): (98.9, 0.2)}, algorithm="maml")
    assert [(c.ways, c.shots, c.value, c.ci, c.algorithm) for c in grid] == [(5, 1, 98.7, None, "maml"),
                                                                           (20, 5, 98.9, 0.2, "maml")]


def test_matching_uses_base_names_and_the_claimed_algorithm():
    c = Claim("Hsu", "T", "omniglot", 5, 1, 68.12, task_generator="cactus", algorithm="protonet")
    assert c.matches("omniglot", 5, 1, "cactus@pca", "protonet")
    assert c.matches("omniglot", 5, 1, "cactus", "protonet@small")
    assert not c.matches("omniglot", 5, 1, "cactus", "maml")
    assert not c.matches("omniglot", 5, 5, "cactus", "protonet")
    assert not c.matches("mnist", 5, 1, "cactus", "protonet")
    assert not c.matches("omniglot", 5, 1, "cactusx", "protonet")
    exact = Claim("Hsu", "T", "omniglot", 5, 1, 68.12, task_generator="cactus@acai", algorithm=None)
    assert exact.matches("omniglot", 5, 1, "cactus@acai", "anything")
    assert not exact.matches("omniglot", 5, 1, "cactus@pca", "anything")


def test_claims_are_resolved_per_plugin_and_not_inherited():
    from metabench_plugins.algorithms.fomaml import FOMAML
    from metabench_plugins.algorithms.maml import MAML
    from metabench_plugins.generators.cactus import Cactus

    fo = plugin_claims("algorithm", "fomaml", FOMAML, ("oracle",))
    assert {sc.claim.value for sc in fo} == {98.3, 99.2, 89.4, 97.9}, "FOMAML must not inherit MAML's claims"
    assert {(sc.claim.algorithm, sc.claim.task_generator, sc.source) for sc in fo} == {
        ("fomaml", "oracle", "algorithm:fomaml")}
    maml = {(c.claim.ways, c.claim.shots): (c.claim.value, c.claim.ci)
            for c in plugin_claims("algorithm", "maml", MAML, ("oracle",))}
    assert maml == {(5, 1): (98.7, 0.4), (5, 5): (99.9, 0.1), (20, 1): (95.8, 0.3), (20, 5): (98.9, 0.2)}
    cactus = plugin_claims("task_generator", "cactus", Cactus)
    assert {(c.claim.algorithm, c.claim.task_generator) for c in cactus} == {("protonet", "cactus"),
                                                                             ("maml", "cactus")}


def test_builtin_plugins_declare_the_papers_numbers(builtin_claims):
    have = {(sc.source, sc.claim.algorithm, sc.claim.ways, sc.claim.shots): sc.claim.value for sc in builtin_claims}
    assert have[("algorithm:protonet", "protonet", 5, 1)] == 98.8
    assert have[("algorithm:protonet", "protonet", 20, 5)] == 98.9
    assert have[("algorithm:metasgd", "metasgd", 5, 1)] == 99.53
    assert have[("algorithm:reptile", "reptile", 5, 1)] == 97.68
    assert have[("task_generator:umtra", "maml", 20, 5)] == 92.12
    assert have[("task_generator:cactus", "protonet", 5, 5)] == 83.58
    assert have[("task_generator:cactus", "maml", 5, 1)] == 68.84
    assert have[("algorithm:ssl_protonet", "ssl_protonet", 20, 1)] == 72.27
    sources = {sc.source for sc in builtin_claims}
    assert {"algorithm:maml", "algorithm:fomaml", "algorithm:anil", "task_generator:cactus"} <= sources
    assert all(sc.claim.dataset == "omniglot" for sc in builtin_claims)


def test_reproduction_rows_gap_and_combined_interval():
    claims = [SourcedClaim("algorithm:protonet", Claim("Snell", "Table 1", "omniglot", 5, 1, 98.8,
                                                       algorithm="protonet", task_generator="oracle")),
              SourcedClaim("algorithm:maml", Claim("Finn", "Table 1", "omniglot", 5, 1, 98.7, 0.4, algorithm="maml")),
              SourcedClaim("algorithm:maml", Claim("Finn", "Table 1", "omniglot", 20, 1, 95.8, 0.3, algorithm="maml"))]
    records = [rec("protonet", "oracle", 5, 1, 0.9774, 0.0021), rec("maml", "oracle", 5, 1, 0.975, 0.01)]
    md = render_reproduction(summarize(records), claims, len(records))
    matched = md.split("## Not yet run")[0]
    lines = {ln.split("|")[1].strip(): [c.strip() for c in ln.split("|")[1:-1]] for ln in matched.splitlines()
             if ln.startswith("| algorithm:")}
    proto, maml = lines["algorithm:protonet"], lines["algorithm:maml"]
    assert proto[4:8] == ["98.80", "97.74 ± 0.21", "-1.06", "no (±0.21)"]
    # maml: |97.50 - 98.70| = 1.20 > sqrt(0.4² + 1.0²) = 1.08: outside the combined interval
    assert maml[4:8] == ["98.70 ± 0.40", "97.50 ± 1.00", "-1.20", f"no (±{math.hypot(0.4, 1.0):.2f})"]
    assert "## Not yet run" in md and "20-way 1-shot" in md.split("## Not yet run")[1]
    assert "2 of 3 claim(s) have matching records; 0 of 2 comparison(s) are within the combined CI." in md
    within = render_reproduction(summarize([rec("maml", "oracle", 5, 1, 0.978, 0.01)]), claims[1:2], 1)
    assert "| yes (±1.08)" in within and "Not yet run" not in within


def test_leaderboard_writes_reproduction_for_builtin_and_plugin_dir_claims(tmp_path):
    """Records for ProtoNet, MAML, CACTUs and UMTRA protocols: each paper number appears beside ours."""
    res = tmp_path / "results" / "s"
    recs = [rec("protonet", "oracle", 5, 1, 0.97, 0.005), rec("maml", "oracle", 5, 5, 0.99, 0.002),
            rec("protonet", "cactus@pca", 5, 1, 0.66, 0.01), rec("maml", "umtra", 20, 1, 0.70, 0.01),
            rec("pixel_means", "oracle", 5, 1, 0.6, 0.01)]
    for r in recs:
        write_record(res / f"{r['run_id']}.json", r)
    plug = tmp_path / "my_plugins"
    plug.mkdir()
    (plug / "pixel_means.py").write_text(textwrap.dedent('''
        from metabench import Algorithm, Claim, hookimpl

        class PixelMeans(Algorithm):
            name = "pixel_means"
            claims = Claim.grid("Mensink et al. 2013", "Table 9", "omniglot", {(5, 1): (61.5, 1.5)})
            def setup(self, ctx): pass
            def train_step(self, batch, step): return 0.0
            def predict(self, sx, sy, qx, ways): raise NotImplementedError
            def embed(self, x): return x.flatten(1)

        @hookimpl
        def metabench_algorithms():
            return [PixelMeans]
    '''))
    out = tmp_path / "lb"
    assert main(["leaderboard", "--results", str(tmp_path / "results"), "--out", str(out),
                 "--plugins-dir", str(plug)]) == 0
    md = (out / "REPRODUCTION.md").read_text()
    rows = [ln for ln in md.split("## Not yet run")[0].splitlines() if ln.startswith("| algorithm:")
            or ln.startswith("| task_generator:")]
    cells = [[c.strip() for c in ln.split("|")[1:-1]] for ln in rows]
    got = {(c[0], c[2], c[3]): (c[4], c[5], c[7].split()[0]) for c in cells}
    assert got == {("algorithm:protonet", "protonet", "oracle"): ("98.80", "97.00 ± 0.50", "no"),
                   ("algorithm:maml", "maml", "oracle"): ("99.90 ± 0.10", "99.00 ± 0.20", "no"),
                   ("task_generator:cactus", "protonet", "cactus@pca"): ("68.12", "66.00 ± 1.00", "no"),
                   ("task_generator:umtra", "maml", "umtra"): ("74.25", "70.00 ± 1.00", "no"),
                   ("algorithm:pixel_means", "pixel_means", "oracle"): ("61.50 ± 1.50", "60.00 ± 1.00", "yes")}
    assert "Hsu et al. 2019 (CACTUs-ProtoNets, ACAI)" in md and "Khodadadeh et al. 2019" in md
    not_run = md.split("## Not yet run")[1]
    assert "Snell et al. 2017" in not_run and "20-way 5-shot" in not_run   # ProtoNet 20w5s has no record
    # the same records and plugins give the same bytes; the function form agrees with the command
    again = tmp_path / "again.md"
    write_reproduction(recs, gather_claims(discover([plug])), again)
    assert again.read_text() == md
