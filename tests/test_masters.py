"""Combining frames into masters, judging frames, and the noise model."""

import numpy as np
import pytest
from astropy.stats import sigma_clip

from cmoscal.config import default_params
from cmoscal.masters import FrameRules, combine, frame_problem, gain_error, gain_sums, group_noise, inverse_gain
from cmoscal.noise import read_variance


def test_clipped_mean_matches_astropy_sigma_clip():
    """Without a noise floor the kernel is astropy's one-pass median/MAD clip, then the mean; the variance is the
    scatter of the samples within twice the clip, over the samples used."""
    rng = np.random.default_rng(0)
    stack = rng.normal(100, 3, (7, 60, 60)).astype(np.float32)
    stack[rng.random(stack.shape) < 0.02] += 200
    master, variance, n, nsat, nclip = combine(stack, "mean", 3.0)
    clipped, wide = (sigma_clip(stack.astype(np.float64), sigma=k, maxiters=1, cenfunc="median", stdfunc="mad_std",
                                axis=0) for k in (3.0, 6.0))
    np.testing.assert_allclose(master, clipped.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(variance, wide.var(axis=0, ddof=1) / clipped.count(axis=0), rtol=1e-5)
    np.testing.assert_array_equal(n, clipped.count(axis=0))
    assert np.all(nclip == 7 - n) and not nsat.any()


def test_clipped_mean_removes_cosmic_rays_and_reports_variance():
    rng = np.random.default_rng(1)
    truth = rng.uniform(50, 60, (40, 40))
    stack = (truth + rng.normal(0, 2.0, (8, 40, 40))).astype(np.float32)
    stack[3, 5, 5] += 500  # a cosmic ray
    master, variance, n, nsat, nclip = combine(stack, "mean", 4.0, noise=(4.0, 0.0))
    assert n[5, 5] == 7 and nclip[5, 5] == 1 and abs(master[5, 5] - truth[5, 5]) < 4
    pulls = (master - truth) / np.sqrt(variance)
    assert abs(np.std(pulls) - 1) < 0.2  # variance of the master matches its scatter
    assert np.median(n) == 8 and nsat.max() == 0


def test_the_variance_of_few_frames_is_not_truncated_by_the_clip():
    """Five frames of a few DN of dark: clipping around their noisy median drops ~0.5 % of good samples; the scatter
    of the clipped samples read the excess variance (signal / gain) 3 % low and the gain as much high."""
    rng = np.random.default_rng(7)
    gain, shape = 1.5, (200, 1000)
    stack = np.stack([np.rint(60.3 + rng.poisson(3.0, shape) / gain + rng.normal(0, 1.2, shape)) - 60.3
                      for _ in range(5)]).astype(np.float32)
    _, variance, n, _, nclip = combine(stack, "mean", 4.0, noise=(1.2**2 + 1 / 12, 1 / gain))
    assert nclip.mean() > 0.002  # the mean's clip does drop good samples
    per_frame = np.var(stack.astype(np.float64), axis=0, ddof=1)
    assert abs(np.nanmean(variance * n) / per_frame.mean() - 1) < 0.002


def test_two_frames_drop_a_cosmic_ray_and_one_frame_passes_through():
    rng = np.random.default_rng(2)
    stack = rng.normal(60, 1.2, (2, 50, 50)).astype(np.float32)
    stack[1, 10, 10] += 300
    master, _variance, n, _, nclip = combine(stack, "mean", 4.0, noise=(1.44, 0.0))
    assert master[10, 10] == stack[0, 10, 10] and n[10, 10] == 1 and nclip[10, 10] == 1
    assert np.mean(nclip) < 0.002  # noise alone is not clipped
    single = combine(stack[:1], "mean", 4.0)
    np.testing.assert_array_equal(single[0], stack[0])
    assert np.all(np.isnan(single[1])) and np.all(single[2] == 1)


def test_saturated_and_invalid_samples_are_left_out_and_counted():
    stack = np.full((5, 4, 4), 100.0, np.float32)
    stack[:, 0, 0] = [100, np.inf, 100, np.inf, 100]  # +inf marks saturation
    stack[:, 1, 1] = [np.nan, 100, 100, 100, 100]
    master, _, n, nsat, _ = combine(stack, "mean", 4.0)
    assert master[0, 0] == 100 and n[0, 0] == 3 and nsat[0, 0] == 2 and nsat.sum() == 2
    assert n[1, 1] == 4


def test_mean_of_quantized_frames_has_no_median_floor():
    rng = np.random.default_rng(3)
    truth = rng.uniform(100, 101, (200, 200))
    stack = np.rint(truth + rng.normal(0, 0.5, (20, 200, 200))).astype(np.float32)  # read noise < 1 DN
    noise = group_noise(stack)
    mean_err = combine(stack, "mean", 4.0, noise)[0] - truth
    median_err = combine(stack, "median", 4.0, noise)[0] - truth
    assert np.sqrt(np.mean(mean_err**2)) < 0.15  # ~0.5/sqrt(20) + quantization / sqrt(20)
    assert np.sqrt(np.mean(median_err**2)) > 0.2  # the median's quantization floor


def test_group_noise_model_recovers_read_variance_and_gain_despite_cosmic_rays():
    rng = np.random.default_rng(4)
    level = rng.uniform(0, 400, (200, 200))
    for frames in (2, 5):
        stack = level + rng.normal(size=(frames, 200, 200)) * np.sqrt(2.0 + level / 1.5)
        stack[rng.random(stack.shape) < 0.01] += 1000
        floor, inv_gain = group_noise(stack.astype(np.float32), read_var=2.0)
        assert floor == 2.0 and abs(inv_gain * 1.5 - 1) < 0.1, (frames, inv_gain)  # only sets the clip scale
    flat = rng.normal(0.1, 1.4, (2, 200, 200)).astype(np.float32)  # no signal: the gain is not measurable
    assert group_noise(flat, read_var=2.0)[1] == -1


def test_frames_are_judged_on_all_their_pixels():
    params = FrameRules.from_params(default_params())
    npix = 10000
    assert frame_problem((0, 0, 0), npix, params) == ""
    assert frame_problem((0, npix, 0), npix, params) == "all-zero frame"
    assert "saturated (light leak" in frame_problem((9000, 0, 0), npix, params)
    assert frame_problem((100, 0, 0), npix, params) == ""  # a few saturated pixels only drop samples
    assert "NaN" in frame_problem((0, 0, 6000), npix, params)
    assert frame_problem((0, 0, 50), npix, params) == ""


def test_noise_model_recovers_read_noise_and_gain():
    rng = np.random.default_rng(5)
    shape, n, rn, gain = (100, 100), 10, 1.5, 2.0
    bias_var = np.stack([rng.chisquare(n - 1, shape) * rn**2 / (n - 1) / n for _ in range(8)])
    nframes = np.full((8,) + shape, n)
    nframes[0] = 1  # a one-frame group carries no scatter and is left out of the pool
    bias_var[0] = np.nan
    rv, dof = read_variance(bias_var, nframes)
    assert np.all(dof == 7 * (n - 1))
    assert abs(np.sqrt(rv.mean()) - rn) < 0.02
    signal = np.stack([np.full(shape, s) for s in (5.0, 20.0, 80.0, 200.0)])
    jitter = (0.015 * signal) ** 2  # frames of a group differ by their temperature jitter: a signal^2 term
    var = (rn**2 + signal / gain + jitter) * rng.chisquare(n - 1, signal.shape) / (n - 1) / n
    sums = sum(gain_sums(signal[k], var[k], np.full(shape, n), rv) for k in range(len(signal)))
    assert abs(1 / inverse_gain(sums) - gain) / gain < 0.03


def test_the_gain_error_matches_the_scatter_of_the_gain():
    """The stated (statistical) error of the gain is its scatter over repeated campaigns of ideal frames: pulls ~1."""
    rng = np.random.default_rng(6)
    shape, n, rn, gain = (40, 40), 3, 1.5, 2.0
    levels = np.geomspace(3, 300, 8)
    pulls, errors = [], []
    for _ in range(200):
        signal = levels[:, None, None] + np.zeros((1,) + shape)
        var = (rn**2 + signal / gain) * rng.chisquare(n - 1, signal.shape) / (n - 1) / n
        sums = sum(gain_sums(signal[k], var[k], np.full(shape, n), np.full(shape, rn**2)) for k in range(len(levels)))
        measured, error = 1 / inverse_gain(sums), gain_error(sums)
        pulls.append((measured - gain) / (error * measured))
        errors.append(error)
    assert 0.85 < np.std(pulls) < 1.15 and abs(np.mean(pulls)) < 0.2
    assert 0.01 < np.median(errors) < 0.1  # a few small groups measure it to a few per cent
    assert np.isnan(gain_error(sums[:5]))  # the sums of an older cmoscal: no error to state


@pytest.mark.parametrize("kind", ["bias", "dark"])
def test_master_counts_are_bytes_and_what_no_stage_reads_is_written_on_request(tmp_path, kind):
    """NFRAMES and NCLIP of a group of at most 255 frames take a byte per pixel on disk; NCLIP, and VARIANCE of a
    master dark, only with master_diagnostics."""
    from astropy.io import fits

    from cmoscal.masters import load_masters, write_master

    rng = np.random.default_rng(4)
    stack = rng.normal(100, 2, (6, 30, 40)).astype(np.float32)
    stack[2, 7, 9] += 400
    combined = combine(stack, "mean", 4.0, noise=(4.0, 0.0))
    names = {}
    for diagnostics in (False, True):
        path = write_master(tmp_path / f"m{diagnostics}" / "master.fits", combined, kind=kind,
                            temperatures=[10.0] * 6, exptime=5.0, inputs=[f"f{i}" for i in range(6)],
                            rules=FrameRules.from_params({**default_params(), "master_diagnostics": diagnostics}),
                            scale=16.0, saturation=4095.0, noise=(4.0, 0.0))
        with fits.open(path) as hdul:
            names[diagnostics] = [hdu.name for hdu in hdul[1:]]
    assert names[True] == ["VARIANCE", "NFRAMES", "NSATUR", "NCLIP"]
    assert names[False] == (["VARIANCE"] if kind == "bias" else []) + ["NFRAMES", "NSATUR"]
    assert load_masters(tmp_path / "mFalse").nclipped is None
    with fits.open(path) as hdul:
        assert hdul["NFRAMES"].data.dtype == np.uint8 and hdul["NCLIP"].data.dtype == np.uint8
    masters = load_masters(tmp_path / "mTrue")
    assert masters.nframes.dtype == np.int16 and masters.nclipped.dtype == np.int16
    np.testing.assert_array_equal(masters.nframes[0], combined[2])
    np.testing.assert_array_equal(masters.nclipped[0], combined[4])
    assert masters.nframes[0, 7, 9] == 5 and masters.nclipped[0, 7, 9] == 1
