"""Dark-model forms: every temperature law declared once.

Every form is ``DC = exp(lnA + slope * x(T) + gamma * ln t)``, linear in its parameters after
the log, so one compiled fit serves them all. A form declares its slope parameter (name, unit,
what it means), the regressor x(T), the equation text of headers and pages, and the quantities
derived from its slope; the parameter ``dark_form``, the bounds ``fit_bounds.<slope>``, the FITS
names (``DARK_<SLOPE>``, ``dark_<slope>_map.fits``), the form comparison and every page ask
:data:`FORMS`. Adding a law is one more entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["BOLTZMANN_EV", "FORMS", "KELVIN", "Form", "dark_form"]

BOLTZMANN_EV = 8.617333262e-5  # eV / K
KELVIN = 273.15


@dataclass(frozen=True)
class Form:
    """One temperature law of the dark signal.

    Attributes
    ----------
    name : str
        The ``dark_form`` value.
    slope : str
        Name of the slope parameter (also its ``fit_bounds`` key).
    unit : str
        Unit of the slope.
    meaning : str
        What the slope is, for map descriptions.
    thermal : str
        The temperature term as written in the equation (T and TMIN in degC).
    feature : callable
        x(T, Tmin) [the slope's inverse unit], with x(Tmin) = 0.
    derived : tuple
        ``(name, function of the slope, unit)`` of quantities shown beside the slope.
    """

    name: str
    slope: str
    unit: str
    meaning: str
    thermal: str
    feature: Callable
    derived: tuple = ()

    @property
    def extension(self) -> str:
        """Name of the slope's extension in the model file."""
        return f"DARK_{self.slope.upper()}"

    @property
    def map_name(self) -> str:
        """Stem of the slope's map file."""
        return f"dark_{self.slope}_map"

    def equation(self, fit_gamma: bool) -> str:
        """The dark equation of this form, 2d (``t^gamma``) or 1d (``t``)."""
        return f"DC = A * {'t^gamma' if fit_gamma else 't'} * {self.thermal}"

    def bounds(self, fit_bounds: dict) -> tuple:
        """The slope's bounds from the ``fit_bounds`` parameter."""
        return tuple(fit_bounds[self.slope])


FORMS = {law.name: law for law in (
    Form("exponential", "B", "1/degC", "dark temperature coefficient B", "exp(B * (T - TMIN))",
         lambda T, tmin: T - tmin, (("doubling temperature", lambda slope: np.log(2) / slope, "degC"),)),
    Form("arrhenius", "Ea", "eV", "dark temperature coefficient Ea", "exp(-EA/k * (1/T_K - 1/TMIN_K))",
         lambda T, tmin: -(1 / (T + KELVIN) - 1 / (tmin + KELVIN)) / BOLTZMANN_EV),
)}


def dark_form(name: str) -> Form:
    """The form called ``name``; a ValueError lists the known ones."""
    if name not in FORMS:
        raise ValueError(f"dark_form: unknown form {name!r} ({' or '.join(FORMS)})")
    return FORMS[name]
