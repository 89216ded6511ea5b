"""Small builders shared by the tests."""
from __future__ import annotations

import textwrap
from pathlib import Path


def write_suite(path: Path, body: str) -> Path:
    """Write a suite TOML file (dedented) and return its path."""
    path.write_text(textwrap.dedent(body))
    return path


TINY_DIGITS = """
    name = "tiny"
    datasets = ["digits"]
    task_generators = ["oracle"]
    algorithms = ["protonet"]
    seeds = [0]
    [[protocols]]
    ways = 5
    shots = 1
    queries = 5
    [budget]
    steps = 15
    meta_batch = 2
    test_episodes = 40
    [options.protonet]
    hidden = 16
"""
