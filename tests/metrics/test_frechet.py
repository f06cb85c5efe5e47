from __future__ import annotations

import numpy as np
import pytest

from fairdiff.errors import FairdiffError
from fairdiff.metrics.frechet import (
    fit_gaussian,
    frechet_distance,
    frechet_distance_ci,
    frechet_distance_from_stats,
)


def _sample(n, d, seed, scale=None):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    return x * (scale if scale is not None else rng.uniform(0.5, 2.0, size=d)) + rng.normal(size=d)


@pytest.mark.parametrize("n", [6, 40])  # fewer and more images than feature dimensions
def test_fd_of_a_set_with_itself_is_zero(n):
    x = _sample(n, 12, 0)
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance_from_stats(*fit_gaussian(x), *fit_gaussian(x)) == pytest.approx(0.0, abs=1e-5)


def test_fd_grows_with_a_mean_shift_as_its_squared_norm():
    x = _sample(50, 8, 1)
    delta = np.random.default_rng(2).normal(size=8)
    for t in (0.1, 1.0, 3.0):  # same covariance, means t * delta apart: FD = t^2 ||delta||^2 exactly
        assert frechet_distance(x, x + t * delta) == pytest.approx(t * t * delta @ delta, rel=1e-9, abs=1e-9)


def test_diagonal_gaussians_match_the_closed_form():
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([0.5, 1.0, 0.0])
    v1, v2 = np.array([1.0, 4.0, 0.25]), np.array([2.0, 1.0, 0.25])
    want = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(v1) - np.sqrt(v2)) ** 2).sum()
    assert frechet_distance_from_stats(mu1, np.diag(v1), mu2, np.diag(v2)) == pytest.approx(want, rel=1e-10)


@pytest.mark.parametrize(("n1", "n2", "d"), [(40, 30, 5), (9, 300, 16), (300, 280, 16)])
def test_feature_path_matches_the_sqrtm_formula(n1, n2, d):
    # the nuclear-norm form (no matrix root) against pytorch-fid's recipe on the fitted Gaussians, also where a
    # covariance is singular (9 images, 16 dimensions) and sqrtm needs its rounding handled
    x, y = _sample(n1, d, 3), _sample(n2, d, 4) + 0.3
    direct = frechet_distance_from_stats(*fit_gaussian(x), *fit_gaussian(y))
    assert frechet_distance(x, y) == pytest.approx(direct, rel=1e-4)


def test_small_sample_bias_two_samples_of_one_distribution_score_above_zero_less_at_larger_n():
    def mean_fd(n):
        rng = np.random.default_rng(n)
        return np.mean([frechet_distance(rng.normal(size=(n, 8)), rng.normal(size=(n, 8))) for _ in range(5)])

    small, large = mean_fd(30), mean_fd(600)
    assert small > 5 * large > 0  # the bias shrinks about as 1/n (Chong & Forsyth 2020): 20 times fewer, ~20 x


def test_bootstrap_ci_is_seeded_and_brackets_the_estimate():
    x, y = _sample(60, 6, 5), _sample(60, 6, 6) + 0.5
    a = frechet_distance_ci(x, y, n_boot=100, seed=1, paired=True)
    assert a == frechet_distance_ci(x, y, n_boot=100, seed=1, paired=True)
    assert a != frechet_distance_ci(x, y, n_boot=100, seed=2, paired=True)
    assert a.ci_low <= a.fd <= a.ci_high and a.ci_high > a.ci_low
    assert a.fd == frechet_distance(x, y) and (a.n_x, a.n_y, a.n_boot) == (60, 60, 100)
    unpaired = frechet_distance_ci(x, y[:40], n_boot=50, seed=1)
    assert unpaired.ci_low <= unpaired.fd <= unpaired.ci_high


def test_bad_input_is_one_error():
    x = _sample(10, 4, 0)
    with pytest.raises(FairdiffError, match="different widths"):
        frechet_distance(x, x[:, :3])
    with pytest.raises(FairdiffError, match="N >= 2"):
        frechet_distance(x[:1], x)
    with pytest.raises(FairdiffError, match="NaN"):
        frechet_distance(np.where(x > 1, np.nan, x), x)
    with pytest.raises(FairdiffError, match="same number of rows"):
        frechet_distance_ci(x, x[:5], paired=True)
    with pytest.raises(FairdiffError, match="do not match"):
        frechet_distance_from_stats(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))


def test_world_classifier_features_tell_attribute_mixes_apart():
    from fairdiff.world.classifier import features, load_classifier
    from fairdiff.world.render import render_batch
    from fairdiff.world.schema import Portrait

    model = load_classifier()
    men = [Portrait("man", s, "young", "covered", "doctor") for s in ("light", "dark")] * 20
    women = [Portrait("woman", p.skin, p.age, p.attire, p.occupation) for p in men]
    a, b = (features(model, render_batch(men, range(s, s + 40))) for s in (0, 1000))
    c = features(model, render_batch(women, range(2000, 2040)))
    assert a.shape == (40, 256) and a.dtype == np.float64
    assert np.allclose(a, features(model, render_batch(men, range(40)), batch_size=7), atol=1e-5)  # batches agree
    same, other = frechet_distance(a, b), frechet_distance(a, c)
    assert other > 10 * same > 0  # new seeds of the same people are near; another gender is far
