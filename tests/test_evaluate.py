"""The one-pass comparison of a synthetic frame with a master, against the same sums in NumPy."""

import numpy as np
from conftest import write_params

from cmoscal.config import load_params
from cmoscal.evaluate import compare, downsample
from cmoscal.noise import Noise
from cmoscal.simulate import simulate_campaign
from cmoscal.stages import STAGES


def test_compare_gives_the_numpy_residual_statistics_and_previews():
    rng = np.random.default_rng(3)
    shape, T, inv_gain = (40, 56), 12.5, 0.4
    nframes = rng.integers(0, 6, (1, *shape)).astype(np.int16)
    read_var = rng.uniform(4, 9, shape).astype(np.float32)
    cov = rng.uniform(0, 0.01, (3, *shape)).astype(np.float32)
    noise = Noise(nframes, read_var, inv_gain, (None, None, cov))
    synthetic = rng.uniform(-5, 200, shape).astype(np.float32)
    synthetic[0, :3] = np.nan
    variance = noise.variance(0, synthetic, T)
    master = (synthetic + rng.normal(0, 1, shape) * np.sqrt(variance)).astype(np.float32)
    prediction_var = (0.2 * variance).astype(np.float32)
    good, hot = rng.random(shape) > 0.1, rng.random(shape) > 0.95

    mae, mape, stats, previews = compare(synthetic, master, prediction_var, noise, T, good, hot, 5.0, preview=16)

    expected_var = (read_var + np.clip(synthetic, 0, None) * np.float32(inv_gain)) / np.maximum(nframes[0], 1) \
        + cov[0] + T ** 2 * cov[1] + 2 * T * cov[2]
    assert np.allclose(variance, expected_var, rtol=1e-6, equal_nan=True)
    residual = synthetic - master
    z = residual / np.sqrt(variance)
    use = good & np.isfinite(residual)
    assert np.array_equal(mae, np.abs(residual), equal_nan=True)
    assert stats["npix"] == use.sum()
    assert np.isclose(stats["resid_noise"], np.sqrt(np.mean(z[use] ** 2)), rtol=1e-6)
    assert np.isclose(stats["resid_noise_hot"], np.sqrt(np.mean(z[hot & np.isfinite(residual)] ** 2)), rtol=1e-6)
    assert np.isclose(stats["resid_noise_expected"], np.sqrt(np.mean(1 - 0.2 * np.ones(use.sum()))), rtol=1e-6)
    assert np.isclose(stats["mae_mean"], np.mean(np.abs(residual[use])), rtol=1e-6)
    significant = np.abs(master) > 5.0 * np.sqrt(variance)
    assert np.isclose(stats["mape_share"], (significant & use).sum() / use.sum())
    assert np.allclose(mape[significant], 100 * np.abs(residual[significant] / master[significant]), rtol=1e-6)
    for name, values in (("mae_median", mae[good]), ("mape_median", mape[good])):
        assert stats[name] == np.median(values[np.isfinite(values)])
    factor = 4  # ceil(56 / 16): pure noise averaged over 4 x 4 pixels, scaled back to sigma 1
    expected = [downsample(image, 16) for image in (master, synthetic, mae, mape, np.where(use, z, np.nan))]
    expected[4] *= factor
    for shown, image in zip(previews, expected):
        assert shown.shape == (10, 14) and np.allclose(shown, image, rtol=1e-6, equal_nan=True)


def test_medians_on_a_large_sensor_use_every_fourth_good_pixel():
    rng = np.random.default_rng(4)
    shape = (1030, 1030)  # more than 2^20 good pixels
    master = rng.uniform(50, 150, shape).astype(np.float32)
    synthetic = (master + rng.normal(0, 3, shape)).astype(np.float32)
    noise = Noise(np.full((1, *shape), 4, np.int16), np.full(shape, 9, np.float32), 0.5)
    good = rng.random(shape) > 0.01
    mae, mape, stats, _ = compare(synthetic, master, np.zeros(shape, np.float32), noise, 0.0, good, ~good, 3.0)
    sample = mae[good][::4], mape[good][::4]
    assert stats["mae_median"] == np.median(sample[0])
    assert stats["mape_median"] == np.median(sample[1][np.isfinite(sample[1])])


def test_in_sample_expectation_counts_the_bias_error_the_masters_share(tmp_path):
    """Four darks over 2.5 degC and 5 biases per temperature (a flight's few darks): the fit nearly interpolates the
    60 s masters, whose residual is then mostly the bias model's error they share with the prediction. Their
    expected residual is that error's part (the leverage alone expected 1/3 of what is seen, and the check failed a
    model that fits)."""
    simulate_campaign(tmp_path, shape=(48, 48), temperatures=(10, 12.5), exptimes=(10, 60), frames=3, bias_frames=5,
                      seed=11)
    params = load_params(write_params(tmp_path / "p.yml", campaign="c", raw_dir="raw", output_dir="out"),
                         root=tmp_path)
    for name in ("inventory", "bias", "dark_masters", "dark_model", "hot_pixels", "synthesis", "evaluation"):
        result = STAGES[name](params)
    groups = result["summary"][result["summary"]["kind"] == "dark"]
    ratio = groups["resid_noise"] / groups["resid_noise_expected"]
    assert np.all((0.8 < ratio) & (ratio < 1.25)), ratio  # ~2300 pixels each: known to a few per cent
    assert np.min(groups["resid_noise_expected"]) < 0.3  # the nearly interpolated masters are in the test
