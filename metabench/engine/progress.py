"""Progress bars for long work; silent when stderr is not a terminal (logs, CI, pipes)."""
from __future__ import annotations

import sys

from tqdm import tqdm


def progress(total: int, desc: str, unit: str = "it", initial: int = 0) -> tqdm:
    """A tqdm bar on stderr starting at ``initial``, disabled unless stderr is a terminal."""
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=False, dynamic_ncols=True,
                disable=not sys.stderr.isatty(), mininterval=0.5)
