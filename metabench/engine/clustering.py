"""Clustering evaluation: embed an unlabeled set from N held-out classes, k-means with k = N, and score
the partition against the hidden classes with NMI, ARI and Hungarian-matched accuracy."""
from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from metabench.toolkit.kmeans import kmeans
from metabench.seeding import make_generator


def matched_accuracy(true: np.ndarray, pred: np.ndarray) -> float:
    """Accuracy under the best one-to-one mapping of clusters to classes (Hungarian algorithm)."""
    k = int(max(true.max(), pred.max())) + 1
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (pred, true), 1)
    rows, cols = linear_sum_assignment(confusion, maximize=True)
    return float(confusion[rows, cols].sum()) / len(true)


def score_partition(true: np.ndarray, pred: np.ndarray) -> tuple[float, float, float]:
    """``(NMI, ARI, matched accuracy)`` of cluster assignment ``pred`` against classes ``true``."""
    return (float(normalized_mutual_info_score(true, pred)), float(adjusted_rand_score(true, pred)),
            matched_accuracy(true, pred))


def score_tasks(pred: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Scores ``[E, 3]`` (NMI, ARI, accuracy) of the partitions ``pred`` ``[E, M]`` against ``labels``."""
    pred, true = pred.detach().cpu().numpy(), labels.detach().cpu().numpy()
    return torch.tensor([score_partition(true[e], pred[e]) for e in range(pred.shape[0])], dtype=torch.float64)


def cluster_tasks(features: torch.Tensor, labels: torch.Tensor, k: int, seed: int,
                  n_init: int = 10) -> torch.Tensor:
    """Scores ``[E, 3]`` (NMI, ARI, accuracy) of k-means (k-means++, best of ``n_init`` restarts) run on
    each of ``E`` tasks at once: ``features`` ``[E, M, D]`` with hidden classes ``labels`` ``[E, M]``."""
    feats = features.detach().to(torch.float64)
    result = kmeans(feats, k, make_generator(seed, feats.device), n_init=n_init)
    return score_tasks(result.labels, labels)
