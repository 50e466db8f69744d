import numpy as np
import pytest

from cmoscal.darkfit import design, fit_dark, fit_loglinear, predict, predict_variance

T = np.repeat([-10.0, -5, 0, 5, 10, 15, 20, 25], 5)
t = np.tile([1.0, 5, 10, 30, 60], 8)
RV, GAIN, N = 1.5, 1.5, 5


def simulate(npix, rng, lnA_mean=np.log(0.05), form="exponential", slope=0.1, gamma=1.0):
    """Master dark signals of npix pixels with Gaussian noise from the noise model."""
    params = np.stack([rng.normal(lnA_mean, 0.3, npix), rng.normal(slope, slope * 0.05, npix),
                       rng.normal(gamma, 0.02, npix)])
    truth = predict(params[:, None, :], T[:, None], t[:, None], -10.0, form)
    base = np.full(truth.shape, RV / N)
    shot = np.full(truth.shape, 1 / (GAIN * N))
    signal = truth + rng.normal(size=truth.shape) * np.sqrt(base + shot * truth)
    return params, truth, signal, base, shot


def test_weighted_fit_recovers_parameters_with_honest_errors():
    rng = np.random.default_rng(5)
    params, _, signal, base, shot = simulate(20000, rng)
    fit = fit_dark(signal, np.ones(signal.shape, bool), base, shot, T, t, -10.0)
    assert fit.converged.mean() > 0.99
    for i in range(3):
        pulls = (fit.params[i] - params[i]) / np.sqrt(fit.cov[i, i])
        assert abs(np.median(pulls)) < 0.05, i
        assert abs(1.4826 * np.median(np.abs(pulls - np.median(pulls))) - 1) < 0.06, i
    assert abs(np.nanmean(fit.chi2r) - 1) < 0.03


def test_weighted_fit_beats_log_space_at_held_out_points():
    rng = np.random.default_rng(6)
    params, _, signal, base, shot = simulate(5000, rng)
    fit = fit_dark(signal, np.ones(signal.shape, bool), base, shot, T, t, -10.0)
    z = design(T, t, -10.0, "exponential")
    log_fit = fit_loglinear(signal, np.ones(signal.shape), z, np.zeros(len(T))).T
    for T0, t0 in ((12.5, 20.0), (-7.5, 2.0), (22.5, 45.0)):
        truth = predict(params, T0, t0, -10.0, "exponential")
        err_w = predict(fit.params, T0, t0, -10.0, "exponential") - truth
        err_log = predict(log_fit, T0, t0, -10.0, "exponential") - truth
        assert np.sqrt(np.mean(err_w**2)) < 0.7 * np.sqrt(np.nanmean(err_log**2))
        pulls = err_w / np.sqrt(predict_variance(fit.params, fit.cov, T0, t0, -10.0, "exponential"))
        assert abs(np.std(pulls) - 1) < 0.1


def test_one_d_model_fixes_gamma():
    rng = np.random.default_rng(7)
    params, _, signal, base, shot = simulate(2000, rng, gamma=1.0)
    fit = fit_dark(signal, np.ones(signal.shape, bool), base, shot, T, t, -10.0, fit_gamma=False)
    assert np.all(fit.params[2] == 1) and np.all(fit.cov[2] == 0)
    assert abs(np.median(fit.params[1] - params[1])) < 0.002


def test_arrhenius_data_prefer_the_arrhenius_form():
    rng = np.random.default_rng(8)
    temps = np.repeat([-20.0, -10, 0, 10, 20, 30, 40], 5)
    times = np.tile([1.0, 5, 10, 30, 60], 7)
    params = np.stack([np.full(3000, np.log(0.01)), rng.normal(0.65, 0.01, 3000), np.ones(3000)])
    truth = predict(params, temps[:, None], times[:, None], -20.0, "arrhenius")
    base, shot = np.full(truth.shape, 0.3), np.full(truth.shape, 0.1)
    signal = truth + rng.normal(size=truth.shape) * np.sqrt(base + shot * truth)
    chi2 = {form: np.nanmean(fit_dark(signal, np.ones(signal.shape, bool), base, shot, temps, times, -20.0,
                                      form).chi2r) for form in ("exponential", "arrhenius")}
    assert chi2["arrhenius"] < 1.1 < chi2["exponential"]


def test_pixels_with_too_few_samples_are_flagged_not_guessed():
    rng = np.random.default_rng(9)
    _, _, signal, base, shot = simulate(10, rng)
    valid = np.ones(signal.shape, bool)
    valid[3:, 0] = False  # pixel 0 keeps 3 samples
    fit = fit_dark(signal, valid, base, shot, T, t, -10.0, min_dof=1)
    assert np.all(np.isnan(fit.params[:, 0])) and fit.nvalid[0] == 3
    assert np.all(np.isfinite(fit.params[:, 1:]))


def test_unknown_form_is_an_error():
    with pytest.raises(ValueError, match="unknown form"):
        design(T, t, -10.0, "linear")
