"""Seeds derived from a run's identity: every random choice flows from one of these."""
from __future__ import annotations

import hashlib
import json
from typing import Any

import torch


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from the SHA-256 of ``parts`` (JSON-encoded), stable across processes and machines."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "little") & (2**63 - 1)


def make_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with ``seed``."""
    g = torch.Generator(device=torch.device(device))
    g.manual_seed(seed)
    return g


def seeded(seed: int):
    """Context manager: run module construction under ``seed`` without touching the caller's RNG state."""
    import contextlib

    @contextlib.contextmanager
    def _ctx():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield

    return _ctx()
