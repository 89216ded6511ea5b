"""Executors and crash safety: process workers give the local executor's metrics; a suite killed by a real
signal resumes to complete, valid records; concurrent runs share a results folder; garbage and slow plugins
get failed records while the rest succeed; run locks and their stale-lock handling."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from metabench.commands.cli import main
from metabench.execution.executors import ExecutorError, LocalExecutor, ProcessExecutor, make_executor
from metabench.engine.records import read_record
from metabench.execution.runlock import is_stale, lock_path, try_acquire
from tests.helpers import GARBAGE_PLUGIN, SMALL, metrics_by_identity, small_suite, write_suite

REPO = Path(__file__).resolve().parents[1]

def wait_for(condition, timeout: float, what: str) -> None:
    """Poll ``condition`` until it holds, failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def children(pid: int) -> list[int]:
    """Live (non-zombie) child processes of ``pid`` (Linux /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(stat.parent.name))
    return out


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture(scope="module")
def local_metrics(tmp_path_factory, cache_dir):
    """The local executor's metrics on the small suite (two runs), computed once."""
    tmp = tmp_path_factory.mktemp("local")
    suite = small_suite(tmp / "s.toml", "small")
    assert main(["run", str(suite), "--results", str(tmp / "r"), "--cache-dir", str(cache_dir)]) == 0
    return metrics_by_identity(tmp / "r" / "small")


def test_process_executor_gives_the_local_metrics(tmp_path, env, local_metrics):
    suite = small_suite(tmp_path / "s.toml", "small")
    assert main(["run", str(suite), *env, "--executor", "process", "--workers", "2"]) == 0
    got = metrics_by_identity(tmp_path / "results" / "small")
    assert len(got) == 2 and got == local_metrics


def test_executor_options_are_checked():
    assert isinstance(make_executor("local"), LocalExecutor)
    timed = make_executor("local", run_timeout=3)  # a time limit needs a process it can kill
    assert isinstance(timed, ProcessExecutor) and timed.workers == 1 and timed.run_timeout == 3
    with pytest.raises(ExecutorError, match="--workers must be >= 1"):
        make_executor("process", workers=0)
    with pytest.raises(ExecutorError, match="--address is for --executor ray"):
        make_executor("process", address="auto")


def test_ray_missing_says_how_to_install(tmp_path, env, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    suite = small_suite(tmp_path / "s.toml", "small")
    assert main(["run", str(suite), *env, "--executor", "ray"]) == 2
    assert 'pip install "metabench[ray]"' in capsys.readouterr().err
    assert not (tmp_path / "results").exists()


def test_garbage_and_slow_plugins_fail_alone_under_the_process_executor(tmp_path, env, capsys):
    plugdir = tmp_path / "plugins"
    plugdir.mkdir()
    (plugdir / "garbage.py").write_text(GARBAGE_PLUGIN)
    suite = write_suite(tmp_path / "g.toml", SMALL.format(
        name="garbage", seeds="[0]",
        algorithms='["protonet", "exploding", "nan_loss", "slow"]').replace(
        '["oracle", "umtra"]', '["oracle"]'))
    rc = main(["run", str(suite), *env, "--plugins-dir", str(plugdir), "--executor", "process", "--workers", "2",
               "--run-timeout", "25"])
    assert rc == 1
    recs = {read_record(p)["config"]["algorithm"]: read_record(p)
            for p in (tmp_path / "results" / "garbage").glob("*.json")}
    assert recs["protonet"]["status"] == "ok"
    for name, error in [("exploding", "boom at step 3"), ("nan_loss", "non-finite meta-training loss"),
                        ("slow", "run exceeded --run-timeout of 25 s")]:
        assert recs[name]["status"] == "failed" and error in recs[name]["error"], recs[name]["error"]
        assert recs[name]["failed_plugin"] == f"algorithm:{name}"
    err = capsys.readouterr().err
    assert "1 ran" in err and "3 failed" in err and "failed: " in err and "[algorithm:slow]" in err
    assert not list((tmp_path / "results" / "garbage").glob(".*"))  # no lock or temporary file left


@pytest.mark.parametrize("executor,sig", [("process", signal.SIGKILL), ("local", signal.SIGTERM)])
def test_a_suite_killed_mid_run_resumes_to_complete_valid_records(tmp_path, cache_dir, executor, sig):
    suite = small_suite(tmp_path / "k.toml", "kill", seeds=(0, 1))
    out = tmp_path / "results" / "kill"
    args = ["run", str(suite), "--results", str(tmp_path / "results"), "--cache-dir", str(cache_dir),
            "--executor", executor] + (["--workers", "2"] if executor == "process" else [])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "metabench.commands.cli", *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: any(out.glob("*.json")) or proc.poll() is not None, 120, "a first record")
        assert proc.poll() is None, "the suite finished before it could be killed: " + proc.stderr.read()
        workers = children(proc.pid)
        proc.send_signal(sig)
        rc = proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    assert rc == (-9 if sig == signal.SIGKILL else 128 + signal.SIGTERM)
    wait_for(lambda: not any(alive(c) for c in workers), 10, "the workers to die with their parent")
    done = list(out.glob("*.json"))
    assert 1 <= len(done) < 4
    for p in done:  # whatever was on disk when the signal hit is complete and valid
        assert read_record(p)["status"] == "ok"
    if sig == signal.SIGTERM:  # a terminated run tidies up after itself
        assert not list(out.glob(".*.lock"))
    # resume (here in this process): only the missing runs run; stale locks of the killed process are broken
    assert main(args[:args.index("--executor")]) == 0
    recs = [read_record(p) for p in out.glob("*.json")]
    assert len(recs) == 4 and all(r["status"] == "ok" for r in recs)
    assert not list(out.glob(".*")), "no lock or temporary file is left behind"


def test_two_concurrent_runs_on_one_results_folder_run_each_run_once(tmp_path, cache_dir):
    suite = small_suite(tmp_path / "c.toml", "conc", seeds=(0, 1))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    base = [sys.executable, "-m", "metabench.commands.cli", "run", str(suite), "--results", str(tmp_path / "r"),
            "--cache-dir", str(cache_dir)]
    procs = [subprocess.Popen(base + extra, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True) for extra in ([], ["--executor", "process", "--workers", "1"])]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    recs = [read_record(p) for p in (tmp_path / "r" / "conc").glob("*.json")]
    assert len(recs) == 4 and all(r["status"] == "ok" for r in recs)
    for r in recs:  # each run was executed by exactly one of the two processes
        assert sum(e.count(f"{r['run_id']}: ok") for e in errs) == 1, errs
    assert not list((tmp_path / "r" / "conc").glob(".*"))


# ------------------------------------------------------------------------------------------ locks


def test_a_run_lock_is_exclusive_and_released(tmp_path):
    first = try_acquire(tmp_path, "run-a")
    assert first is not None and try_acquire(tmp_path, "run-a") is None
    assert try_acquire(tmp_path, "run-b") is not None  # other runs are independent
    first.release()
    again = try_acquire(tmp_path, "run-a")
    assert again is not None
    again.release()


def _fake_lock(path: Path, **info) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"token": "x", **info}))


def test_stale_locks_are_broken_and_live_ones_respected(tmp_path):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead_pid = int(gone.stdout)
    host = socket.gethostname()
    path = lock_path(tmp_path, "dead")
    _fake_lock(path, host=host, pid=dead_pid)  # this host, process gone: stale
    assert is_stale(path) and try_acquire(tmp_path, "dead") is not None
    path = lock_path(tmp_path, "live")
    _fake_lock(path, host=host, pid=os.getppid())  # this host, process alive: held
    assert not is_stale(path) and try_acquire(tmp_path, "live") is None
    path = lock_path(tmp_path, "remote")
    _fake_lock(path, host="another-machine", pid=1)  # another host, recently touched: held
    assert try_acquire(tmp_path, "remote") is None
    old = time.time() - 3600
    os.utime(path, (old, old))  # ... and not touched for an hour: stale
    assert try_acquire(tmp_path, "remote") is not None
    path = lock_path(tmp_path, "garbled")
    path.write_text("{not json")
    assert try_acquire(tmp_path, "garbled") is None  # may be being written right now
    os.utime(path, (old, old))
    assert try_acquire(tmp_path, "garbled") is not None
