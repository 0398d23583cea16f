"""Clustering metrics against ground-truth labels, as pure functions over label arrays.

The definitions follow scikit-learn's (tests compare to 1e-9): NMI with the arithmetic
mean of the two entropies, ARI from the pair-confusion matrix, clustering accuracy with
the Hungarian matching of clusters to classes (scipy `linear_sum_assignment`; works when
the number of clusters differs from the number of classes: unmatched clusters count as
wrong), and purity (each cluster counted as its majority class).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment


def contingency(truth, predicted) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(classes x clusters) count table, with the class and cluster values of its rows/columns."""
    classes, t = np.unique(np.asarray(truth), return_inverse=True)
    clusters, p = np.unique(np.asarray(predicted), return_inverse=True)
    table = np.zeros((len(classes), len(clusters)), dtype=np.int64)
    np.add.at(table, (t.ravel(), p.ravel()), 1)
    return table, classes, clusters


def _entropy(counts: np.ndarray) -> float:
    counts = counts[counts > 0].astype(np.float64)
    share = counts / counts.sum()
    return float(-(share * np.log(share)).sum())


def nmi(truth, predicted) -> float:
    table, _, _ = contingency(truth, predicted)
    n = table.sum()
    if n == 0:
        return 1.0
    h_true, h_pred = _entropy(table.sum(1)), _entropy(table.sum(0))
    if h_true + h_pred == 0:  # one class and one cluster: identical partitions
        return 1.0
    nz = np.nonzero(table)
    joint = table[nz].astype(np.float64)
    outer = table.sum(1)[nz[0]].astype(np.float64) * table.sum(0)[nz[1]].astype(np.float64)
    mi = float((joint / n * (np.log(joint * n) - np.log(outer))).sum())
    return max(0.0, mi) / ((h_true + h_pred) / 2)


def ari(truth, predicted) -> float:
    table, _, _ = contingency(truth, predicted)
    n = int(table.sum())
    rows, cols = table.sum(1), table.sum(0)
    sum_squares = int((table.astype(np.int64) ** 2).sum())
    tp = sum_squares - n
    fp = int(table.dot(cols).sum()) - sum_squares
    fn = int(table.T.dot(rows).sum()) - sum_squares
    tn = n * n - fp - fn - sum_squares
    if fn == 0 and fp == 0:
        return 1.0
    return 2.0 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn))


def accuracy(truth, predicted) -> float:
    """Share of points whose cluster is matched to their class by the best one-to-one matching."""
    table, _, _ = contingency(truth, predicted)
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum() / table.sum())


def purity(truth, predicted) -> float:
    table, _, _ = contingency(truth, predicted)
    return float(table.max(0).sum() / table.sum())
