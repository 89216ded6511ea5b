"""`metabench compare`: runs matched by identity, paired tests on the per-episode results, exit codes."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from scipy import stats

from metabench.commands.cli import main
from metabench.report.compare import compare, holm, paired_test
from metabench.engine.records import write_record
from tests.helpers import make_record

QUERIES = 75  # 5-way, 15 queries per class


def base_counts(seed: int, episodes: int = 200, p: float = 0.9) -> list[int]:
    """Per-episode correct counts of a plausible run (fixed by ``seed``)."""
    return np.random.default_rng(seed).binomial(QUERIES, p, size=episodes).tolist()


def record(alg: str, seed: int, counts: list[int], options: dict | None = None, rate: float = 10.0,
           gen: str = "oracle", suite: str = "s") -> dict:
    """A record whose accuracy and CI follow from ``counts``."""
    r = make_record(f"{alg}-{gen}-{seed}-{suite}", alg, seed, rate=rate)
    acc = np.asarray(counts) / QUERIES
    r["config"].update(task_generator=gen, suite=suite, options=options or {alg: {"lr": 0.001}})
    r["config"]["budget"]["test_episodes"] = len(counts)
    r["evaluations"][0]["metrics"].update(accuracy_mean=float(acc.mean()),
                        accuracy_ci95=float(1.96 * acc.std(ddof=1) / np.sqrt(len(acc))),
                        test_episodes=len(counts), episode_correct=list(counts), episode_queries=QUERIES)
    return r


def shifted(counts: list[int], every: int, by: int) -> list[int]:
    """``counts`` with ``by`` added to every ``every``-th episode (clipped to [0, QUERIES])."""
    return [min(QUERIES, max(0, c + by)) if i % every == 0 else c for i, c in enumerate(counts)]


def write_side(root, records):
    for r in records:
        write_record(root / r["config"]["suite"] / f"{r['run_id']}.json", r)
    return root


def test_paired_test_matches_scipy_and_handles_degenerate_differences():
    base = np.asarray(base_counts(0), dtype=float)
    new = base + np.random.default_rng(1).integers(-2, 4, size=base.size)
    effect, (lo, hi), p = paired_test(base, new)
    assert effect == pytest.approx((new - base).mean())
    assert p == pytest.approx(stats.ttest_rel(new, base).pvalue)
    assert lo < effect < hi
    assert paired_test(base, new, "wilcoxon")[2] == pytest.approx(stats.wilcoxon(new - base).pvalue)
    assert paired_test(base, base) == (0.0, (0.0, 0.0), 1.0)          # identical: a tie, p = 1
    assert paired_test(base, base + 1)[2] == 0.0                       # a constant shift: no variance
    assert paired_test(base[:1], base[:1] + 3)[2] == 1.0               # one episode: nothing to test


def test_holm_adjustment():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.001]) == pytest.approx([0.5, 0.002])
    assert holm([]) == []


def test_option_change_of_one_plugin_is_reported_and_untouched_runs_are_ties(tmp_path, capsys):
    """Two results folders that differ only in protonet's lr: protonet's runs improve, maml's tie."""
    base, new = [], []
    for seed in (0, 1):
        m = base_counts(100 + seed)
        base.append(record("maml", seed, m, {"maml": {"lr": 0.001}}))
        new.append(record("maml", seed, m, {"maml": {"lr": 0.001}}))
        p = base_counts(seed, p=0.85)
        base.append(record("protonet", seed, p, {"protonet": {"lr": 0.001}}))
        new.append(record("protonet", seed, shifted(p, 2, 3), {"protonet": {"lr": 0.002}}, rate=25.0))
    b, n = write_side(tmp_path / "base", base), write_side(tmp_path / "new", new)
    assert main(["compare", str(b), str(n)]) == 0
    out = capsys.readouterr().out
    lines = {(ln.split()[3], ln.split()[4]): ln for ln in out.splitlines() if ln.startswith("omniglot")}
    assert len(lines) == 4
    for seed in ("0", "1"):
        assert " tie " in lines[("maml", seed)] and " 1.000 " in lines[("maml", seed)]
        proto = lines[("protonet", seed)]
        assert "improvement" in proto and "options.protonet.lr: 0.001 -> 0.002" in proto and "2.50x" in proto
    assert "Summary: 2 improvement, 2 tie" in out

    assert main(["compare", str(b), str(n), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["counts"] == {"improvement": 2, "tie": 2} and doc["regression_gate_failed"] is False
    proto = [p for p in doc["pairs"] if p["identity"]["algorithm"] == "protonet"]
    for p in proto:
        seed = p["identity"]["seed"]
        old = [r for r in base if r["config"]["algorithm"] == "protonet" and r["config"]["seed"] == seed][0]
        c = np.asarray(old["evaluations"][0]["metrics"]["episode_correct"])
        assert p["effect"] == pytest.approx(100 * (np.asarray(shifted(c.tolist(), 2, 3)) - c).mean() / QUERIES)
        assert p["effect"] > 1.0 and p["p"] < 1e-10 and p["train_ratio"] == pytest.approx(2.5)
        assert p["ci95"][0] < p["effect"] < p["ci95"][1]


def test_a_significant_regression_exits_nonzero(tmp_path, capsys):
    counts = base_counts(7)
    b = write_side(tmp_path / "base", [record("protonet", 0, counts)])
    n = write_side(tmp_path / "new", [record("protonet", 0, shifted(counts, 3, -4))])
    assert main(["compare", str(b), str(n)]) == 1
    out = capsys.readouterr().out
    assert "REGRESSION" in out and "significant regression, exit 1" in out
    # single record files work too, and the reverse direction is an improvement
    rb, rn = next(b.rglob("*.json")), next(n.rglob("*.json"))
    assert main(["compare", str(rn), str(rb)]) == 0


def test_holm_correction_keeps_three_borderline_regressions_as_ties():
    """5 of 100 episodes lose one query each: t = -sqrt(5 * 99 / 95), p ~ 0.025 per run."""
    base, new = [], []
    for seed in range(3):
        counts = [60] * 100
        base.append(record("protonet", seed, counts))
        new.append(record("protonet", seed, [59] * 5 + [60] * 95))
    p_one = stats.t.sf(np.sqrt(5 * 99 / 95), 99) * 2
    plain = compare(base, new, correction="none")
    assert [p.verdict for p in plain.pairs] == ["regression"] * 3
    assert plain.pairs[0].p == pytest.approx(p_one) and 0.0167 < p_one < 0.05
    corrected = compare(base, new)
    assert [p.verdict for p in corrected.pairs] == ["tie"] * 3 and not corrected.gate_failed
    assert corrected.pairs[0].p_adjusted == pytest.approx(3 * p_one)
    assert compare(base, new, test="wilcoxon", correction="none").pairs[0].p == pytest.approx(
        stats.wilcoxon([-1] * 5 + [0] * 95).pvalue)


def test_unmatched_failed_duplicate_and_incomparable_runs(tmp_path, capsys):
    c = base_counts(3)
    ok = record("protonet", 0, c)
    failed = copy.deepcopy(ok)
    failed.update(status="failed", error="PluginError: protonet: boom", failed_plugin="algorithm:protonet")
    fewer = record("maml", 0, c[:100])
    base = [ok, record("maml", 0, c), record("anil", 0, c), record("reptile", 0, c),
            record("reptile", 0, c, suite="other")]
    new = [failed, fewer, record("fomaml", 0, c), record("reptile", 0, c)]
    cmp = compare(base, new)
    verdicts = {p.identity["algorithm"]: p.verdict for p in cmp.pairs}
    assert verdicts == {"protonet": "failed", "maml": "incomparable"}
    assert [i["algorithm"] for i in cmp.only_in_base] == ["anil"]
    assert [i["algorithm"] for i in cmp.only_in_new] == ["fomaml", "reptile"]  # base's reptile is ambiguous
    assert len(cmp.duplicates) == 1 and "reptile" in cmp.duplicates[0] and cmp.gate_failed
    b, n = write_side(tmp_path / "b", base), write_side(tmp_path / "n", new)
    assert main(["compare", str(b), str(n)]) == 1
    out = capsys.readouterr().out
    assert "Only in BASE (1): anil" in out and "Only in NEW (2): fomaml" in out and "FAILED" in out
    # nothing in common, a missing path, a bad alpha: exit 2
    assert main(["compare", str(b), str(tmp_path / "missing")]) == 2
    only_new = write_side(tmp_path / "x", [record("fomaml", 0, c)])
    assert main(["compare", str(b), str(only_new)]) == 2
    assert main(["compare", str(b), str(n), "--alpha", "2"]) == 2


def test_match_episodes_pairs_two_methods_on_their_shared_episodes(tmp_path, capsys):
    counts = base_counts(11)
    clr = record("ssl_protonet", 0, counts, gen="unlabeled")
    psco = record("psco", 0, shifted(counts, 2, 5), gen="unlabeled")
    other_seed = record("psco", 1, counts, gen="unlabeled")
    b, n = write_side(tmp_path / "b", [clr]), write_side(tmp_path / "n", [psco, other_seed])
    assert main(["compare", str(b), str(n)]) == 2                      # by run identity: nothing matches
    capsys.readouterr()
    assert main(["compare", str(b), str(n), "--match", "episodes"]) == 0
    out = capsys.readouterr().out
    assert "improvement" in out and "algorithm: 'ssl_protonet' -> 'psco'" in out
    cmp = compare([clr], [psco, other_seed], match="episodes")
    assert len(cmp.pairs) == 1 and cmp.pairs[0].verdict == "improvement" and cmp.pairs[0].effect > 0
    assert [i["seed"] for i in cmp.only_in_new] == [1]
    # two records on the same episodes on one side cannot be paired: left out with a warning
    dup = compare([clr], [psco, record("maml", 0, counts, gen="unlabeled")], match="episodes")
    assert not dup.pairs and dup.duplicates
    with pytest.raises(ValueError):
        compare([clr], [psco], match="bogus")
