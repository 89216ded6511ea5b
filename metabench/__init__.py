"""metabench: a plugin-based benchmark suite for (unsupervised) meta-learning.

The package is layered; each layer imports only the ones above it in this list:

* ``metabench`` (this module and its top-level modules): the plugin API -- the contracts, hook specs,
  claims, seeding, atomic writes. ``__all__`` below is its whole public surface.
* :mod:`metabench.toolkit`: building blocks for plugins (episodes, backbones, the inner loop, augment...).
* :mod:`metabench.engine`: suites, discovery, one run from identity to record, records, checkpoints.
* :mod:`metabench.execution`: executors, locks, run outcomes, the throughput benchmark.
* :mod:`metabench.report` and :mod:`metabench.checks`: leaderboards and comparisons; plugin checks.
* :mod:`metabench.commands`: the command line.
"""
from metabench import _legacy
from metabench.atomic import write_atomic
from metabench.claims import Claim
from metabench.contracts import (KINDS, Algorithm, Budget, DataContext, Dataset, DatasetNotFoundError,
                                 EpisodeBatch, ImageSet, LabeledSplit, PluginError, RunContext,
                                 TaskGenerator, UnlabeledSplit)
from metabench.hookspecs import hookimpl
from metabench.names import base_name
from metabench.seeding import derive_seed, make_generator, seeded

__version__ = "0.2.0"

__all__ = ["Algorithm", "Budget", "Claim", "DataContext", "Dataset", "DatasetNotFoundError", "EpisodeBatch",
           "ImageSet", "KINDS", "LabeledSplit", "PluginError", "RunContext", "TaskGenerator", "UnlabeledSplit",
           "base_name", "derive_seed", "hookimpl", "make_generator", "seeded", "write_atomic", "__version__"]

_legacy.install()
