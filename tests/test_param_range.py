"""Every loss parameter from 1e-300 to 1e300 either fits (finite objective, k non-empty
clusters) or is refused up front with one message that names the usable range."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.kmeans import GeneralizedKMeans
from pipeline.losses import PARAM_NAME, LossInputError

DECADES = [10.0 ** e for e in sorted(set(range(-300, 301, 20)) | set(range(-8, 9)))]


@pytest.fixture(scope="module")
def features():
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(c, 0.3, size=(30, 8)) for c in (0.0, 3.0, 6.0)]).astype(np.float32)
    return X / np.linalg.norm(X, axis=1, keepdims=True)


@pytest.mark.parametrize("loss", sorted(PARAM_NAME))
def test_every_decade_fits_or_is_refused_with_the_usable_range(features, loss):
    fitted = refused = 0
    for value in DECADES:
        model = GeneralizedKMeans(n_clusters=3, loss=loss, param=value, n_init=1, max_iter=20, seed=0, device="cpu")
        try:
            model.fit(features)
        except LossInputError as exc:
            message = str(exc)
            assert "usable range" in message and "\n" not in message, (value, message)
            refused += 1
            continue
        assert math.isfinite(model.objective_), (loss, value)
        assert np.bincount(model.labels_, minlength=3).min() > 0, (loss, value)
        fitted += 1
    # the data's scale is about 0.1-1: the decades around it fit, the absurd ones are refused
    assert fitted >= 8 and refused >= 20, (fitted, refused)


@pytest.mark.parametrize("loss", sorted(PARAM_NAME))
def test_auto_parameters_count_each_row_as_often_as_its_weight(loss):
    """With sample_weight the auto parameter (and the scale its range is checked against)
    is the one of the repeated rows: integer weights give exactly the same value."""
    import torch

    from benchmarks.common import vgg_like
    from pipeline.losses import data_scale

    X = vgg_like(90, 6, 3, seed=4, outliers=0.1).astype(np.float32)
    counts = np.random.default_rng(1).integers(0, 5, size=len(X))
    counts[[0, 30, 60]] = 1
    repeated = np.repeat(X, counts, axis=0)
    init = X[[0, 30, 60]]
    weighted = GeneralizedKMeans(3, loss, param="auto", init=init).fit(X, sample_weight=counts)
    plain = GeneralizedKMeans(3, loss, param="auto", init=init).fit(repeated)
    unweighted = GeneralizedKMeans(3, loss, param="auto", init=init).fit(X)
    name = PARAM_NAME[loss]
    assert weighted.params_[name] == pytest.approx(plain.params_[name], rel=1e-6)
    assert unweighted.params_[name] != pytest.approx(plain.params_[name], rel=1e-3)  # the weights matter
    assert data_scale(torch.from_numpy(X), loss, sample_weight=torch.from_numpy(counts).double()) == \
        pytest.approx(data_scale(torch.from_numpy(repeated), loss), rel=1e-9)
