"""Mid-run checkpoints: an algorithm's state round-trips exactly, and a run stopped mid-training resumes
at its checkpoint and ends with the record an uninterrupted run writes."""
from __future__ import annotations

import io

import pytest
import torch

from metabench import EpisodeBatch, RunContext
from metabench.execution.bench import synthetic_batch
from metabench.engine import checkpoint
from metabench.engine.checkpoint import checkpoint_path
from metabench.engine.registry import discover
from metabench.engine.runner import Settings, SuiteRunner
from metabench.execution.outcomes import run_one
from metabench.engine.suite import load_suite
from metabench_plugins.algorithms.maml import MAML
from metabench_plugins.algorithms.metasgd import MetaSGD
from metabench_plugins.algorithms.protonet import ProtoNet
from metabench_plugins.algorithms.reptile import Reptile
from tests.helpers import TINY_DIGITS, scores, write_suite

SHAPE, WAYS = (1, 8, 8), 3


def _batches(n: int) -> list[EpisodeBatch]:
    return [synthetic_batch(2, WAYS, 1, 2, SHAPE, torch.device("cpu")) for _ in range(n)]


def _same(a, b) -> bool:
    """Deep, exact equality of nested state dicts."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    return a == b


@pytest.mark.parametrize("cls", [MAML, MetaSGD, Reptile, ProtoNet])
def test_state_round_trip_continues_training_identically(cls):
    torch.manual_seed(0)
    batches = _batches(4)
    ctx = RunContext(torch.device("cpu"), 7, WAYS, 1, 2, SHAPE, cls.resolve_options({"hidden": 8}))
    a = cls()
    a.setup(ctx)
    for step in range(2):
        a.train_step(batches[step], step)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    b = cls()
    b.setup(ctx)
    assert not _same(a.state_dict(), b.state_dict())  # b starts elsewhere ...
    b.load_state_dict(saved)
    for step in (2, 3):
        a.train_step(batches[step], step)
        b.train_step(batches[step], step)
    assert _same(a.state_dict(), b.state_dict())  # ... and continues exactly as a did


def _tiny_maml_suite(tmp_path):
    body = TINY_DIGITS.replace('algorithms = ["protonet"]', 'algorithms = ["metasgd"]') \
        .replace("[options.protonet]", "[options.metasgd]").replace("steps = 15", "steps = 6") \
        .replace("test_episodes = 40", "test_episodes = 10\n    cluster_tasks = 5")
    return load_suite(write_suite(tmp_path / "tiny.toml", body))


def _run(tmp_path, cache_dir, results: str, every):
    suite = _tiny_maml_suite(tmp_path)
    settings = Settings(tmp_path / results, tmp_path / "no-data", cache_dir, checkpoint_every=every)
    runner = SuiteRunner(suite, discover(), settings)
    (spec,) = suite.runs()
    return runner, spec


def test_a_stopped_run_resumes_at_its_checkpoint_with_identical_results(tmp_path, cache_dir, monkeypatch,
                                                                        capsys):
    runner, spec = _run(tmp_path, cache_dir, "straight", None)
    straight = run_one(runner, spec).record
    assert straight["status"] == "ok" and "resumed_from_step" not in straight["speed"]

    runner, spec = _run(tmp_path, cache_dir, "stopped", 0)  # a checkpoint after every step
    original = MetaSGD.train_step

    def stop_at_4(self, batch, step):
        if step == 4:
            raise KeyboardInterrupt  # what SIGINT or a session's end does mid-run
        return original(self, batch, step)

    ck = checkpoint_path(runner.out_dir, spec.run_id)

    def stop() -> None:
        monkeypatch.setattr(MetaSGD, "train_step", stop_at_4)
        with pytest.raises(KeyboardInterrupt):
            run_one(runner, spec)
        assert ck.exists() and not runner.record_path(spec).exists()
        assert torch.load(ck, weights_only=True)["step"] == 4
        monkeypatch.setattr(MetaSGD, "train_step", original)

    stop()
    with monkeypatch.context() as m:  # other code: the checkpoint is not used
        m.setattr(checkpoint, "code_fingerprint", lambda *classes: "edited")
        fresh = run_one(runner, spec).record
    assert "resumed_from_step" not in fresh["speed"] and scores(fresh) == scores(straight)
    assert "another configuration or code version" in capsys.readouterr().err and not ck.exists()

    runner.record_path(spec).unlink()
    stop()
    resumed = run_one(runner, spec).record
    assert resumed["status"] == "ok" and resumed["speed"]["resumed_from_step"] == 4
    assert scores(resumed) == scores(straight)
    assert resumed["speed"]["meta_train_tasks"] == straight["speed"]["meta_train_tasks"] == 6 * 2
    assert not ck.exists()

    # a torn checkpoint is reported and ignored: the run starts from step 0 and still gives the same numbers
    ck.parent.mkdir(parents=True, exist_ok=True)
    ck.write_bytes(b"not a checkpoint")
    runner.settings.force = True
    again = run_one(runner, spec).record
    assert "resumed_from_step" not in again["speed"] and scores(again) == scores(straight)
    runner.settings.force = False
    ck.parent.mkdir(parents=True, exist_ok=True)
    ck.write_bytes(b"not a checkpoint")
    runner.record_path(spec).unlink()
    assert scores(run_one(runner, spec).record) == scores(straight)
    assert "unreadable" in capsys.readouterr().err
