"""The record's commit: ``+dirty`` for uncommitted code, not for records or leaderboards written in the checkout."""
import subprocess
from pathlib import Path

from metabench.engine.environment import commit_of


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def test_outputs_written_into_the_checkout_do_not_make_the_code_dirty(tmp_path):
    repo = tmp_path / "repo"
    for rel in ("pkg/code.py", "results/suite/run.json", "leaderboards/README.md", "suites/s.toml"):
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text("0\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    sha = _git(repo, "rev-parse", "HEAD")
    pkg = repo / "pkg"
    assert commit_of(pkg) == sha
    (repo / "results/suite/run.json").write_text("1\n")          # a re-run replaced a committed record
    (repo / "leaderboards/README.md").write_text("1\n")
    (repo / "results/suite/new.json").write_text("1\n")          # untracked: never counted
    assert commit_of(pkg) == sha
    (repo / "suites/s.toml").write_text("1\n")                   # anything else is code or configuration
    assert commit_of(pkg) == sha + "+dirty"
    _git(repo, "checkout", "-q", "--", "suites")
    (pkg / "code.py").write_text("1\n")
    assert commit_of(pkg) == sha + "+dirty"
    assert commit_of(tmp_path) is None                            # not a checkout
