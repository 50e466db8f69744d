import numpy as np

from cmoscal.masters import combine
from cmoscal.noise import inverse_gain, read_variance


def test_clipped_mean_removes_outliers_and_reports_variance():
    rng = np.random.default_rng(1)
    truth = rng.uniform(50, 60, (40, 40))
    stack = truth + rng.normal(0, 2.0, (8, 40, 40))
    stack[3, 5, 5] += 500  # a cosmic ray
    saturated = np.zeros(stack.shape, bool)
    master, variance, n, nsat = combine(stack, saturated, "mean", 4.0)
    assert n[5, 5] == 7 and abs(master[5, 5] - truth[5, 5]) < 4
    pulls = (master - truth) / np.sqrt(variance)
    assert abs(np.std(pulls) - 1) < 0.2  # variance of the master matches its scatter
    assert np.median(n) == 8 and nsat.max() == 0


def test_saturated_samples_are_left_out_and_counted():
    stack = np.full((5, 4, 4), 100.0)
    stack[:, 0, 0] = [100, 4095, 100, 4095, 100]
    master, _, n, nsat = combine(stack, stack >= 4095, "mean", 4.0)
    assert master[0, 0] == 100 and n[0, 0] == 3 and nsat[0, 0] == 2 and nsat.sum() == 2


def test_mean_of_quantized_frames_has_no_median_floor():
    rng = np.random.default_rng(2)
    truth = rng.uniform(100, 101, (200, 200))
    stack = np.rint(truth + rng.normal(0, 0.5, (20, 200, 200)))  # read noise below 1 DN, quantized
    none = np.zeros(stack.shape, bool)
    mean_err = combine(stack, none, "mean", 4.0)[0] - truth
    median_err = combine(stack, none, "median", 4.0)[0] - truth
    assert np.sqrt(np.mean(mean_err**2)) < 0.15  # ~0.5/sqrt(20) + quantization / sqrt(20)
    assert np.sqrt(np.mean(median_err**2)) > 0.2  # the median's quantization floor


def test_noise_model_recovers_read_noise_and_gain():
    rng = np.random.default_rng(3)
    shape, n, rn, gain = (100, 100), 10, 1.5, 2.0
    bias_var = np.stack([rng.chisquare(n - 1, shape) * rn**2 / (n - 1) / n for _ in range(8)])
    rv = read_variance(bias_var, np.full((8,) + shape, n))
    assert abs(np.sqrt(rv.mean()) - rn) < 0.02
    signal = np.stack([np.full(shape, s) for s in (5.0, 20.0, 80.0)])
    var = (rn**2 + signal / gain) * rng.chisquare(n - 1, signal.shape) / (n - 1) / n
    inv = inverse_gain(signal, var, np.full(signal.shape, n), rv, np.ones(signal.shape, bool))
    assert abs(1 / inv - gain) / gain < 0.03
