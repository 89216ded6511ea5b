"""Records are atomic and validated; leaderboards are pure functions of them."""
from __future__ import annotations

import copy

import pytest

from metabench.commands.cli import main
from metabench.report.html import plotly_script
from metabench.report.summary import summarize
from metabench.engine.records import SCHEMA_VERSION, RecordError, load_records, read_record, write_record

from tests.helpers import make_record


def test_write_is_atomic_and_round_trips(tmp_path):
    path = tmp_path / "s" / "r1.json"
    write_record(path, make_record())
    assert read_record(path) == make_record()
    assert [p.name for p in path.parent.iterdir()] == ["r1.json"], "no temporary file left behind"


def test_an_invalid_record_is_never_written(tmp_path):
    bad = make_record()
    del bad["evaluations"][0]["metrics"]["accuracy_mean"]
    with pytest.raises(RecordError, match="accuracy_mean"):
        write_record(tmp_path / "r.json", bad)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("mutate, message", [
    (lambda text: text[: len(text) // 2], "not valid JSON"),
    (lambda text: text.replace(f'"schema_version": {SCHEMA_VERSION}', '"schema_version": 99'),
     "schema_version 99 is not supported"),
    (lambda text: text.replace('"status": "ok"', '"status": "great"'), "invalid record at status"),
])
def test_corrupt_truncated_or_foreign_records_name_the_file(tmp_path, mutate, message):
    path = tmp_path / "r1.json"
    write_record(path, make_record())
    path.write_text(mutate(path.read_text()))
    with pytest.raises(RecordError, match=message) as exc:
        read_record(path)
    assert str(path) in str(exc.value)


def test_leaderboard_aggregates_seeds_and_orders_by_accuracy():
    recs = [make_record("a0", "protonet", 0, 0.90), make_record("a1", "protonet", 1, 0.92),
            make_record("b0", "maml", 0, 0.95), make_record("c0", "protonet", 0, 0.99, ways=20)]
    df = summarize(recs)
    five = df[df.ways == 5]
    assert list(five.algorithm) == ["maml", "protonet"]
    row = five[five.algorithm == "protonet"].iloc[0]
    assert row.seeds == 2 and row.accuracy_mean == pytest.approx(0.91)
    assert row.accuracy_ci95 == pytest.approx(12.706 * 0.01414 / 1.4142, rel=1e-3)  # t(0.975, 1) * s / sqrt 2
    assert five[five.algorithm == "maml"].iloc[0].accuracy_ci95 == pytest.approx(0.01)


def test_a_seed_run_before_an_option_existed_shares_the_row_of_its_default():
    """A record made before its plugin gained an option counts at the option's default: seeds made before
    and after share one row; a seed run with another value of the option stays apart."""
    from metabench.engine.registry import discover
    from metabench.report.summary import plugin_defaults

    defaults = plugin_defaults(discover())
    old, new, other = (make_record(f"r{i}", "protonet", i, acc) for i, acc in enumerate((0.90, 0.92, 0.80)))
    old["config"]["options"] = {"protonet": {"hidden": 64}}
    new["config"]["options"] = {"protonet": {**defaults["protonet"], "hidden": 64}}
    other["config"]["options"] = {"protonet": {**defaults["protonet"], "hidden": 64,
                                               "backbone": "resnet12"}}
    assert defaults["protonet"]["backbone"] == "conv4"
    assert sorted(summarize([old, new, other], defaults=defaults).seeds) == [1, 2]
    assert sorted(summarize([old, new, other]).seeds) == [1, 1, 1]   # without the defaults: three configs


def test_leaderboard_is_byte_identical_and_survives_a_corruptmake_record(tmp_path, capsys):
    res = tmp_path / "results" / "s"
    for i, acc in enumerate([0.81, 0.83, 0.9]):
        write_record(res / f"r{i}.json", make_record(f"r{i}", alg=["protonet", "protonet", "maml"][i], seed=i % 2,
                                                 acc=acc))
    failed = copy.deepcopy(make_record("rf", alg="broken"))
    failed.update(status="failed", error="PluginError: broken: bad shape", failed_plugin="algorithm:broken",
                  evaluations=[])
    write_record(res / "rf.json", failed)
    (res / "zz_corrupt.json").write_text('{"schema_version": 1, "run_id": ')
    outs = []
    for n in range(2):
        out = tmp_path / f"lb{n}"
        assert main(["leaderboard", "--results", str(tmp_path / "results"), "--out", str(out)]) == 0
        outs.append({p.name: p.read_bytes() for p in out.iterdir()})
    assert outs[0] == outs[1] and set(outs[0]) == {"README.md", "leaderboard.csv", "index.html",
                                                      "REPRODUCTION.md", plotly_script()[0]}
    err = capsys.readouterr().err
    assert "zz_corrupt.json" in err and "not valid JSON" in err
    md = outs[0]["README.md"].decode()
    assert "| maml" in md and "90.00 ± 1.00" in md and "| protonet" in md
    assert "## Failed runs" in md and "algorithm:broken" in md
    # records made before provenance and sealed runs are marked so, in every rendering
    assert "| no-provenance unsealed unchecked |" in md and "`no-provenance`" in md
    assert outs[0]["leaderboard.csv"].decode().splitlines()[0].endswith(",config_hash,marks")
    assert ",no-provenance unsealed unchecked\n" in outs[0]["leaderboard.csv"].decode()
    assert "<td>no-provenance unsealed unchecked</td>" in outs[0]["index.html"].decode()
    assert main(["leaderboard", "--results", str(tmp_path / "results"), "--out", str(tmp_path / "lb"),
                 "--strict"]) == 1
    recs, errors = load_records(tmp_path / "results")
    assert len(recs) == 4 and len(errors) == 1


def test_cross_domain_runs_get_their_own_tables_and_never_pair_with_in_domain_runs():
    from metabench.report.compare import compare
    from metabench.report.summary import protocol_tables

    home, away = make_record("home", acc=0.9), copy.deepcopy(make_record("away", acc=0.5))
    away["config"]["test_dataset"] = "cub"
    titles = [t.title for t in protocol_tables(summarize([home, away]))]
    ds = home["config"]["dataset"]
    assert len(titles) == 2 and sum(t.startswith(f"{ds} -> cub") for t in titles) == 1, titles
    cmp = compare([home], [away])
    assert not cmp.pairs, "a cross-domain run is not the in-domain run's pair"
