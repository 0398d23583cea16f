"""A straightforward re-implementation of the clustering of the VGG16 multi-loss tutorial photoclust grew from.

The baseline photoclust's engine is measured against, in tests and in `make bench-cluster`.
It follows the tutorial step by step: a loss function per (point, center) pair, the
assignment matrix built by a Python double loop, each center updated by the mean (square),
the coordinate-wise median (absolute) or `scipy.optimize.minimize(method="BFGS",
maxiter=20)` started at the cluster mean (the other four), an empty cluster's center set
to zeros, and at most `max_iter=3` rounds stopped on center shift. Two differences, both
documented where they are used: the initial centers are passed in (so both engines start
from the same place), and `vectorized=True` sums a cluster's objective with NumPy instead
of a Python loop over its points (same numbers, far less time; the benchmark uses it to
finish in minutes and reports the tutorial's own loop as an estimate).
"""

from __future__ import annotations

import time

import numpy as np
from scipy.optimize import minimize


def get_loss_func(loss_type: str, params: dict):
    """The tutorial's per-pair losses, verbatim in meaning."""
    if loss_type == "square":
        return lambda x, mu: np.sum((x - mu) ** 2)
    if loss_type == "absolute":
        return lambda x, mu: np.sum(np.abs(x - mu))
    if loss_type == "huber":
        delta = params.get("delta", 1.0)

        def loss(x, mu):
            res = np.abs(x - mu)
            return np.sum(np.where(res <= delta, 0.5 * res**2, delta * (res - 0.5 * delta)))
        return loss
    if loss_type == "pseudo_huber":
        delta = params.get("delta", 1.0)
        return lambda x, mu: np.sum(delta**2 * (np.sqrt(1 + ((x - mu) / delta) ** 2) - 1))
    if loss_type == "correntropy":
        sigma = params.get("sigma", 1.0)
        return lambda x, mu: 1 - np.exp(-np.sum((x - mu) ** 2) / (2 * sigma**2))
    if loss_type == "epsilon_insensitive":
        epsilon = params.get("epsilon", 1.0)
        return lambda x, mu: max(0, np.linalg.norm(x - mu) - epsilon)
    raise ValueError(loss_type)


def batch_loss(loss_type: str, params: dict):
    """Sum of the same loss over the rows of `points` with NumPy (the vectorized variant)."""
    if loss_type == "huber":
        delta = params["delta"]

        def total(points, mu):
            res = np.abs(points - mu)
            return np.sum(np.where(res <= delta, 0.5 * res**2, delta * (res - 0.5 * delta)))
        return total
    if loss_type == "pseudo_huber":
        delta = params["delta"]
        return lambda points, mu: np.sum(delta**2 * (np.sqrt(1 + ((points - mu) / delta) ** 2) - 1))
    if loss_type == "correntropy":
        sigma = params["sigma"]
        return lambda points, mu: np.sum(1 - np.exp(-np.sum((points - mu) ** 2, axis=1) / (2 * sigma**2)))
    if loss_type == "epsilon_insensitive":
        epsilon = params["epsilon"]
        return lambda points, mu: np.sum(np.maximum(0, np.linalg.norm(points - mu, axis=1) - epsilon))
    raise ValueError(loss_type)


class Counter:
    """Counts objective evaluations, so the benchmark can price the tutorial's own loop."""

    def __init__(self):
        self.evaluations = 0
        self.points = 0
        self.seconds = 0.0  # spent inside objective evaluations


def update_center(points, loss_type, params, vectorized=False, counter: Counter | None = None):
    if len(points) == 0:
        return np.zeros(points.shape[1])  # the tutorial's choice (a bug: the center jumps to the origin)
    if loss_type == "square":
        return np.mean(points, axis=0)
    if loss_type == "absolute":
        return np.median(points, axis=0)
    loss_func = get_loss_func(loss_type, params)
    total = batch_loss(loss_type, params) if vectorized else None

    def objective(mu):
        started = time.perf_counter()
        value = total(points, mu) if vectorized else sum(loss_func(x, mu) for x in points)
        if counter is not None:
            counter.evaluations += 1
            counter.points += len(points)
            counter.seconds += time.perf_counter() - started
        return value

    result = minimize(objective, np.mean(points, axis=0), method="BFGS", options={"maxiter": 20})
    return result.x


def generalized_clustering(data, initial_centers, loss_type, params=None, max_iter=3, tol=1e-4,
                           vectorized=False, counter: Counter | None = None):
    """The tutorial's loop. Returns (centers, labels, objective): labels from the last
    assignment, as the tutorial returns them, and, in the reference's favour, the objective
    of its final centers with every point on its cheapest center."""
    params = params or {}
    data = np.asarray(data, dtype=np.float64)
    n, _ = data.shape
    k = len(initial_centers)
    centers = np.array(initial_centers, dtype=np.float64)
    loss_func = get_loss_func(loss_type, params)
    prev_shift = np.inf
    for _ in range(max_iter):
        dists = np.array([[loss_func(data[i], centers[j]) for j in range(k)] for i in range(n)])
        labels = np.argmin(dists, axis=1)
        new_centers = np.zeros_like(centers)
        for j in range(k):
            points_j = data[labels == j]
            if len(points_j) > 0:
                new_centers[j] = update_center(points_j, loss_type, params, vectorized, counter)
        shift = np.sum(np.linalg.norm(new_centers - centers, axis=1))
        centers = new_centers
        if shift < tol or abs(shift - prev_shift) < 1e-6:
            break
        prev_shift = shift
    objective = float(sum(min(loss_func(data[i], centers[j]) for j in range(k)) for i in range(n)))
    return centers, labels, objective
