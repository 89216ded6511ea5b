"""metabench: a plugin-based benchmark suite for (unsupervised) meta-learning."""
from metabench.contracts import (Algorithm, Budget, DataContext, Dataset, DatasetNotFoundError,
                                 EpisodeBatch, ImageSet, LabeledSplit, PluginError, RunContext,
                                 TaskGenerator, UnlabeledSplit)
from metabench.claims import Claim
from metabench.hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = ["Algorithm", "Budget", "Claim", "DataContext", "Dataset", "DatasetNotFoundError", "EpisodeBatch",
           "ImageSet", "LabeledSplit", "PluginError", "RunContext", "TaskGenerator", "UnlabeledSplit",
           "hookimpl", "__version__"]
