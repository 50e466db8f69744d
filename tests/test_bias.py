import numpy as np
import pytest

from cmoscal.bias import bias_at, bias_variance_at, fit_bias
from cmoscal.noise import moderate, own_read_variance, read_noise_prior


def test_bias_line_recovers_truth_within_its_errors():
    rng = np.random.default_rng(4)
    shape, n, rn = (80, 80), 10, 1.2
    a, b = rng.normal(60, 2, shape), rng.normal(0.3, 0.05, shape)
    T = np.array([-10.0, -5, 0, 5, 10, 15, 20, 25])
    masters = a + b * T[:, None, None] + rng.normal(0, rn / np.sqrt(n), (len(T),) + shape)
    fa, fb, cov, rms, fallback = fit_bias(T, masters, np.full(masters.shape, n), np.full(shape, rn**2))
    assert not fallback.any()
    for fitted, true, var in ((fa, a, cov[0]), (fb, b, cov[1])):
        pulls = (fitted - true) / np.sqrt(var)
        assert abs(pulls.mean()) < 0.05 and abs(pulls.std() - 1) < 0.05
    expected_rms = rn / np.sqrt(n) * np.sqrt(1 - 2 / len(T))
    assert abs(np.sqrt(np.mean(rms**2)) / expected_rms - 1) < 0.05
    prediction_pull = (bias_at(fa, fb, 12.0) - (a + b * 12.0)) / np.sqrt(bias_variance_at(cov, 12.0))
    assert abs(prediction_pull.std() - 1) < 0.05


def test_unusable_samples_are_ignored():
    T = np.array([0.0, 10.0, 20.0])
    masters = np.array([[[50.0]], [[53.0]], [[999.0]]])
    weights = np.array([[[5]], [[5]], [[0]]])
    a, b, _, _, _ = fit_bias(T, masters, weights, np.ones((1, 1)))
    assert np.isclose(a[0, 0], 50) and np.isclose(b[0, 0], 0.3)


def test_a_pixel_seen_at_one_temperature_gets_the_population_slope():
    T = np.array([0.0, 10.0, 20.0])
    masters = np.array([[[50.0, 50.0]], [[53.0, 53.0]], [[56.0, 56.0]]])
    weights = np.array([[[5, 5]], [[5, 0]], [[5, 0]]])
    a, b, cov, _, fallback = fit_bias(T, masters, weights, np.ones((1, 2)), prior=(0.25, 0.01))
    assert fallback.tolist() == [[False, True]]
    assert np.isclose(b[0, 0], 0.3) and b[0, 1] == np.float32(0.25) and np.isclose(a[0, 1], 50.0)
    assert np.isclose(cov[1, 0, 1], 0.01) and np.all(np.isfinite(cov))
    assert np.isnan(fit_bias(T, masters, weights, np.ones((1, 2)))[1][0, 1])  # without a prior: not guessed


@pytest.mark.parametrize("dof", [3, 8, 72])
def test_read_noise_moderation_recovers_the_population_and_its_telegraph_pixels(dof):
    """Read variances of a scaled inverse chi-square population (s0^2 = 1.5, d0 = 30) and 2 % telegraph pixels at
    10x, each estimated from ``dof`` degrees of freedom: the population and the telegraph share are recovered
    (d0, weakly determined by 3 degrees of freedom a pixel, within 35 %); a residual over the moderated variance
    of a population pixel has variance 1 (0.94 at 3 degrees of freedom; over its own estimate: 2.9, 1.33, 1.03),
    and a telegraph pixel's is no worse than over its own estimate."""
    rng = np.random.default_rng(dof)
    n, s0, d0 = 200_000, 1.5, 30.0
    true = s0 * d0 / rng.chisquare(d0, n)
    telegraph = rng.random(n) < 0.02
    true[telegraph] *= 10
    own = true * rng.chisquare(dof, n) / dof
    prior = read_noise_prior(own, np.full(n, dof))
    assert abs(prior.variance / s0 - 1) < 0.02 and abs(prior.dof / d0 - 1) < 0.35, prior
    assert 0.015 < prior.telegraph_share < 0.03, prior
    moderated = moderate(own, dof, prior)
    assert np.all(np.diff(moderate(np.sort(own), dof, prior)) >= 0)  # the order of the pixels is kept
    residual2 = true * rng.chisquare(1, n)  # a residual of the pixel's true noise, squared
    # at 3 degrees of freedom the population's high estimates pass in part for telegraph pixels': 0.94
    assert abs(np.mean(residual2[~telegraph] / moderated[~telegraph]) - 1) < (0.07 if dof == 3 else 0.02)
    assert 0.9 < np.mean(residual2[telegraph] / moderated[telegraph]) < 1.1 * dof / (dof - 2)
    assert np.allclose(own_read_variance(moderated, dof, prior), own, rtol=1e-4, atol=1e-4)
