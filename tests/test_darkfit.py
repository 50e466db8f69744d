"""The dark fit on synthetic master samples: truth recovered within honest errors, robust, never absurd."""

import numpy as np
import pytest
from numba import njit

from cmoscal.bias import bias_variance_at
from cmoscal.darkfit import (
    compare_forms,
    covariance_matrix,
    design,
    deviance,
    fit_dark,
    fit_loglinear,
    floor_test,
    predict,
    predict_bias_covariance,
    predict_variance,
    select_form,
)
from cmoscal.kernels import FIT_FLAGS, _exp
from cmoscal.noise import Noise

T = np.repeat([-10.0, -5, 0, 5, 10, 15, 20, 25], 5)
t = np.tile([1.0, 5, 10, 30, 60], 8)
RV, GAIN, N = 1.5, 1.5, 5
ROBUST = dict(outlier_sigma=5.0, max_outliers=8)


def simulate(npix, rng, lnA_mean=np.log(0.05), form="exponential", slope=0.1, gamma=1.0, temperatures=T,
             exptimes=t, tmin=-10.0, frames=N, floor=None):
    """Master dark signals of npix pixels (masters of ``frames`` frames) with Gaussian noise from the noise model;
    ``floor`` [DN/s^gamma]: a temperature-independent floor (``form`` then one with a floor)."""
    params = np.stack([rng.normal(lnA_mean, 0.3, npix), rng.normal(slope, slope * 0.05, npix),
                       rng.normal(gamma, 0.02, npix)] + ([rng.lognormal(np.log(floor), 0.2, npix)] if floor else []))
    truth = predict(params[:, None, :], temperatures[:, None], exptimes[:, None], tmin, form)
    noise = Noise(np.full(truth.shape, frames), np.full(npix, RV), 1 / GAIN)
    signal = truth + rng.normal(size=truth.shape) * np.sqrt((RV + truth / GAIN) / frames)
    return params, truth, signal, noise


def robust_std(x):
    return 1.4826 * np.median(np.abs(x - np.median(x)))


def test_weighted_fit_recovers_parameters_with_honest_errors():
    rng = np.random.default_rng(5)
    params, _, signal, noise = simulate(20000, rng)
    fit = fit_dark(signal, noise, T, t, -10.0)
    assert np.mean(fit.flags == FIT_FLAGS["CONVERGED"]) > 0.99
    cov = covariance_matrix(fit.cov)
    for i in range(3):
        pulls = (fit.params[i] - params[i]) / np.sqrt(cov[i, i])
        assert abs(np.median(pulls)) < 0.05, i
        assert abs(robust_std(pulls) - 1) < 0.06, i
    assert abs(np.nanmean(fit.chi2r) - 1) < 0.03


def test_kernel_reaches_the_reweighting_fixed_point_of_an_independent_solver():
    """scipy least_squares, reweighted from its own model until stable, lands where the kernel does."""
    from scipy.optimize import least_squares

    rng = np.random.default_rng(15)
    _, _, signal, noise = simulate(40, rng)
    fit = fit_dark(signal, noise, T, t, -10.0)
    Z = design(T, t, -10.0, "exponential")
    cov = covariance_matrix(fit.cov)
    for p in range(signal.shape[1]):
        theta = np.array([np.log(0.05), 0.1, 1.0])
        for _ in range(30):
            sigma = np.sqrt((RV + np.exp(Z @ theta) / GAIN) / N)
            theta = least_squares(lambda q: (signal[:, p] - np.exp(Z @ q)) / sigma, theta, xtol=1e-14,
                                  ftol=1e-14).x
        step = (fit.params[:, p] - theta) / np.sqrt(np.diag(cov[..., p]))
        assert np.all(np.abs(step) < 0.05), (p, step)  # the kernel stops within ~0.03 sigma of the optimum


def test_weighted_fit_beats_log_space_at_held_out_points():
    rng = np.random.default_rng(6)
    params, _, signal, noise = simulate(5000, rng)
    fit = fit_dark(signal, noise, T, t, -10.0)
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
    params, _, signal, noise = simulate(2000, rng, gamma=1.0)
    fit = fit_dark(signal, noise, T, t, -10.0, fit_gamma=False)
    assert np.all(fit.params[2] == 1) and np.all(covariance_matrix(fit.cov)[2] == 0)
    assert abs(np.median(fit.params[1] - params[1])) < 0.002


def arrhenius_masters(rng, npix):
    """Masters of ``npix`` pixels following the Arrhenius law over -20..40 degC: temperatures, exposures, signal,
    noise."""
    temps = np.repeat([-20.0, -10, 0, 10, 20, 30, 40], 5)
    times = np.tile([1.0, 5, 10, 30, 60], 7)
    params = np.stack([np.full(npix, np.log(0.01)), rng.normal(0.65, 0.01, npix), np.ones(npix)])
    truth = predict(params, temps[:, None], times[:, None], -20.0, "arrhenius")
    noise = Noise(np.ones(truth.shape), np.full(npix, 0.3), 0.1)
    return temps, times, truth + rng.normal(size=truth.shape) * np.sqrt(0.3 + 0.1 * truth), noise


def test_forms_are_told_apart_only_when_the_data_can():
    rng = np.random.default_rng(8)
    temps, times, signal, noise = arrhenius_masters(rng, 3000)
    chi2 = {}
    for form in ("exponential", "arrhenius"):
        fit = fit_dark(signal, noise, temps, times, -20.0, form)
        chi2[form] = fit.chi2r * (fit.nvalid - 3)
    wide = compare_forms(chi2)
    assert wide["better"] == "arrhenius" and wide["z"] > 3
    # over 5 degC both laws describe exponential data equally well: no significant difference
    narrow_T = np.repeat([0.0, 2.5, 5.0], 5)
    narrow_t = np.tile([1.0, 5, 10, 30, 60], 3)
    _, _, signal, noise = simulate(3000, rng, temperatures=narrow_T, exptimes=narrow_t, tmin=0.0)
    chi2 = {form: fit_dark(signal, noise, narrow_T, narrow_t, 0.0, form).chi2r
            for form in ("exponential", "arrhenius")}
    narrow = compare_forms(chi2)
    assert narrow["better"] == "" and "no significant difference" in narrow["verdict"]
    # a tiny difference over many pixels is significant but not material: said so, and no form chosen
    shifted = 20.0 - 0.01 * (1 + rng.normal(0, 1, 10000))
    tiny = compare_forms({"exponential": np.full(10000, 20.0), "arrhenius": shifted})
    assert tiny["better"] == "" and tiny["z"] > 3 and "no material difference" in tiny["verdict"]


def test_a_form_added_to_the_registry_takes_part_in_fits_and_the_comparison(monkeypatch):
    """A third law, declared once: the fit, the prediction and the choice of the form use it."""
    from cmoscal import forms

    power = forms.Form("power", "C", "", "dark power-law index C", "(1 + T - TMIN)^C",
                       lambda T, tmin: np.log1p(T - tmin))
    monkeypatch.setitem(forms.FORMS, "power", power)
    temps, times, signal, noise = arrhenius_masters(np.random.default_rng(13), 2000)
    chi2 = {}
    for name in forms.FORMS:
        fit = fit_dark(signal, noise, temps, times, -20.0, name)
        chi2[name] = fit.chi2r * (fit.nvalid - 3 - forms.FORMS[name].floor)
    assert np.nanmedian(chi2["power"]) > 2 * np.nanmedian(chi2["arrhenius"])  # a law the data reject
    result = select_form(chi2)
    assert result["form"] == "arrhenius" and "power" not in result["law"]["verdict"]
    assert forms.dark_form("power").equation(False) == "DC = A * t * (1 + T - TMIN)^C"
    assert forms.dark_form("power").extension == "DARK_C"
    with pytest.raises(ValueError, match="unknown form 'quadratic'"):
        forms.dark_form("quadratic")


def test_pixels_without_enough_samples_get_population_values_and_a_flag():
    rng = np.random.default_rng(9)
    _, _, signal, noise = simulate(10, rng)
    valid = np.ones(signal.shape, bool)
    valid[3:, 0] = False  # pixel 0 keeps 3 samples: no own 3-parameter fit with min_dof 1
    valid[:, 1] = False  # pixel 1 has none
    fit = fit_dark(signal, noise, T, t, -10.0, usable=valid, min_dof=1, prior=(0.1, 1.0, np.nan, 1e-4, 1e-4, 0.0))
    assert fit.flags[0] & FIT_FLAGS["FALLBACK"] and fit.flags[0] & FIT_FLAGS["FEW_SAMPLES"]
    assert fit.params[1, 0] == 0.1 and fit.params[2, 0] == 1.0 and np.isfinite(fit.params[0, 0])
    assert np.all(np.isnan(fit.params[:, 1])) and fit.flags[1] & FIT_FLAGS["NO_SAMPLES"]
    assert np.all(fit.flags[2:] == FIT_FLAGS["CONVERGED"])


def test_fallback_pixels_of_a_form_with_a_floor_take_the_population_floor():
    rng = np.random.default_rng(19)
    _, _, signal, noise = simulate(400, rng, form="exponential+floor", floor=0.05)
    valid = np.ones(signal.shape, bool)
    valid[4:, :100] = False  # 4 samples left: no own 4-parameter fit with min_dof 1
    prior = (0.1, 1.0, 0.05, 1e-4, 1e-4, 1e-4)
    fit = fit_dark(signal, noise, T, t, -10.0, "exponential+floor", usable=valid, min_dof=1, prior=prior)
    few = np.arange(100)
    assert np.all(fit.flags[few] & FIT_FLAGS["FALLBACK"]) and not np.any(fit.flags[100:] & FIT_FLAGS["FALLBACK"])
    assert np.all(fit.params[1:4, few] == np.array(prior[:3])[:, None])  # slope, gamma and floor of the population
    assert np.allclose(fit.cov[6, few], prior[5]) and np.all(np.isfinite(fit.params[0, few]))
    assert np.all(fit.cov[0, few] > 0) and np.all(fit.cov[7, few] != 0)  # the floor's spread reaches lnA


def test_an_invalid_nan_sample_does_not_poison_the_fit():
    rng = np.random.default_rng(10)
    _, _, signal, noise = simulate(200, rng)
    valid = np.ones(signal.shape, bool)
    valid[7] = False
    clean = fit_dark(signal, noise, T, t, -10.0, usable=valid)
    poisoned = signal.copy()
    poisoned[7] = np.nan
    fit = fit_dark(poisoned, noise, T, t, -10.0, usable=valid)
    np.testing.assert_array_equal(fit.params, clean.params)
    assert np.all(fit.flags == FIT_FLAGS["CONVERGED"])


def test_cosmic_rays_in_one_frame_masters_are_dropped():
    rng = np.random.default_rng(11)
    params, _, signal, noise = simulate(3000, rng, frames=1)
    hit = signal.copy()
    struck = rng.integers(0, len(T), 3000)
    hit[struck, np.arange(3000)] += 10 ** rng.uniform(1.5, 3, 3000)  # 30..1000 DN
    clean = fit_dark(signal, noise, T, t, -10.0, **ROBUST)
    robust = fit_dark(hit, noise, T, t, -10.0, **ROBUST)
    naive = fit_dark(hit, noise, T, t, -10.0)
    assert np.mean(robust.dropped[struck, np.arange(3000)]) > 0.97
    assert np.mean((robust.flags & FIT_FLAGS["OUTLIERS"]) > 0) > 0.97
    truth = predict(params, 12.5, 45.0, -10.0, "exponential")
    error = {name: np.sqrt(np.nanmean((predict(f.params, 12.5, 45.0, -10.0, "exponential") - truth) ** 2))
             for name, f in (("clean", clean), ("robust", robust), ("naive", naive))}
    assert error["robust"] < 1.1 * error["clean"] < error["naive"]


def test_samples_on_a_full_well_plateau_are_dropped():
    rng = np.random.default_rng(12)
    params, truth, signal, noise = simulate(500, rng, lnA_mean=np.log(20.0))  # very hot pixels
    bias, well = 60.0, 2800.0
    level = np.minimum(signal + bias, well)
    noise.bias = (np.full(500, bias), np.zeros(500), np.zeros((3, 500)))  # the bias removed: 60 DN, exactly known
    fit = fit_dark(level - bias, noise, T, t, -10.0, full_well=0.25 * 4095, **ROBUST)
    capped = truth + bias > well + 100
    assert np.all(fit.dropped[capped]) and np.all(fit.flags & FIT_FLAGS["FULL_WELL"])
    assert abs(np.median(fit.params[1] - params[1])) < 0.005  # B still right, not negative


def test_out_of_bounds_fits_fall_back_and_predictions_stay_finite():
    rng = np.random.default_rng(13)
    temps, times = np.repeat([0.0, 5.0], 5), np.tile([10.0, 30, 60, 120, 300], 2)
    _, _, signal, noise = simulate(3000, rng, lnA_mean=np.log(1e-4), temperatures=temps, exptimes=times,
                                        tmin=0.0)  # pure noise at two temperatures
    bounds = {"slope": (-0.1, 0.5), "gamma": (0.0, 3.0), "lnA": (-60.0, np.log(40950))}
    fit = fit_dark(signal, noise, temps, times, 0.0, bounds=bounds,
                   prior=(0.1, 1.0, np.nan, 1e-4, 1e-4, 0.0), **ROBUST)
    own = ~(fit.flags & FIT_FLAGS["FALLBACK"]).astype(bool)
    assert np.all((fit.params[1][own] >= -0.1) & (fit.params[1][own] <= 0.5))
    assert np.all((fit.params[2][own] >= 0) & (fit.params[2][own] <= 3))
    far = predict(fit.params, 10.0, 600.0, 0.0, "exponential")
    assert np.all(np.isfinite(far)) and far.max() < 1e4


def test_unknown_form_is_an_error():
    with pytest.raises(ValueError, match="unknown form"):
        design(T, t, -10.0, "linear")


@njit
def _exp_of(values, out):
    for i in range(values.size):
        out[i] = _exp(values[i])


def test_the_fit_s_inline_exp_is_within_one_ulp_of_libm():
    x = np.concatenate([np.random.default_rng(8).uniform(-700, 700, 200_000),
                        [0.0, -80.0, 80.0, 0.5 * np.log(2), -0.5 * np.log(2), 1e-300]])
    out = np.empty_like(x)
    _exp_of(x, out)
    assert np.max(np.abs(out - np.exp(x)) / np.spacing(np.exp(x))) <= 1 and out[x == 0] == 1.0


def test_the_floor_is_taken_only_where_the_data_have_one():
    """The likelihood ratio on deviances: about 0.5 per pixel without a floor in the data, far more with one."""
    rng = np.random.default_rng(17)
    for floor, form in ((None, "exponential"), (0.05, "exponential+floor")):
        params, _, signal, noise = simulate(3000, rng, form=form, floor=floor)
        deviances = {name: deviance(signal, noise, T, t, -10.0, name, fit_dark(signal, noise, T, t, -10.0, name))
                     for name in ("exponential", "exponential+floor")}
        test = floor_test(deviances["exponential"], deviances["exponential+floor"])
        assert test["supported"] == (floor is not None), test["verdict"]
        if floor is None:
            assert abs(np.nanmean(deviances["exponential"] - deviances["exponential+floor"]) - 0.5) < 0.15
        else:
            fit = fit_dark(signal, noise, T, t, -10.0, form)
            pull = (fit.params[3] - params[3]) / np.sqrt(fit.cov[6])
            assert abs(np.median(pull)) < 0.15 and 0.85 < np.std(pull) < 1.2
            truth = predict(params, 12.5, 45.0, -10.0, form)
            z = (predict(fit.params, 12.5, 45.0, -10.0, form) - truth) / np.sqrt(
                predict_variance(fit.params, fit.cov, 12.5, 45.0, -10.0, form))
            assert abs(np.median(z)) < 0.1 and 0.85 < np.std(z) < 1.2


@pytest.mark.parametrize(("form", "floor"), [("exponential", None), ("exponential+floor", 0.05)])
def test_the_bias_model_removed_from_every_master_counts_as_one_common_error(form, floor):
    """The bias model's error shifts all masters of a pixel alike: the chi-square and the covariance count it once,
    and a synthetic frame (bias model + dark) has the variance of its scatter only with the two models' covariance
    (without it the frame's error is overstated by up to ~1.5x here)."""
    rng = np.random.default_rng(21)
    params, _, signal, noise = simulate(20000, rng, lnA_mean=np.log(0.02), form=form, floor=floor)
    bias_cov = np.array([0.0336, 1.17e-4, -8.8e-4])  # var a, var b, cov ab: a line from 80 frames over -10..25 degC
    npix = signal.shape[1]
    error = rng.multivariate_normal([0, 0], [[bias_cov[0], bias_cov[2]], [bias_cov[2], bias_cov[1]]], npix).T
    signal = signal - (error[0] + error[1] * T[:, None])
    noise = Noise(noise.nframes, noise.read_var, noise.inv_gain,
                  bias=(np.zeros(npix), np.zeros(npix), np.repeat(bias_cov[:, None], npix, axis=1)))
    fit = fit_dark(signal, noise, T, t, -10.0, form)
    assert abs(np.nanmean(fit.chi2r) - 1) < 0.02
    cov = covariance_matrix(fit.cov)
    for i in range(len(params)):
        assert abs(robust_std((fit.params[i] - params[i]) / np.sqrt(cov[i, i])) - 1) < 0.05, i
    for T0, t0 in ((12.5, 20.0), (-7.5, 2.0), (22.5, 45.0)):
        frame_error = predict(fit.params, T0, t0, -10.0, form) - predict(params, T0, t0, -10.0, form) + (
            error[0] + error[1] * T0)
        variance = (bias_variance_at(bias_cov, T0) + predict_variance(fit.params, fit.cov, T0, t0, -10.0, form)
                    + 2 * predict_bias_covariance(fit.params, fit.bias_cross, T0, t0, -10.0, form))
        assert abs(np.std(frame_error / np.sqrt(variance)) - 1) < 0.03, (T0, t0)
