"""Dark-model forms: every temperature law declared once.

Every form is ``DC = t^gamma (C + exp(lnA + slope * x(T)))``: a temperature law (its slope
parameter, unit and meaning, the regressor x(T), the thermal term as written in equations, the
quantities derived from its slope) and, for the forms ``<law>+floor``, a temperature-independent
floor C >= 0 (measured sCMOS curves have one; C = 0 otherwise). One compiled fit serves them all.
The parameter ``dark_form``, the bounds ``fit_bounds.<slope>``, the FITS names (``DARK_<SLOPE>``,
``dark_<slope>_map.fits``, ``DARK_FLOOR``), the form comparison and every page ask :data:`FORMS`.
Adding a law is one more entry in ``_LAWS``; its floor variant follows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

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
    floor : bool
        A temperature-independent term C (same unit as A) is fitted too.
    law : str
        The temperature law: the name of the form without its floor.
    """

    name: str
    slope: str
    unit: str
    meaning: str
    thermal: str
    feature: Callable
    derived: tuple = ()
    floor: bool = False
    law: str = ""

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
        exposure = "t^gamma" if fit_gamma else "t"
        if self.floor:
            return f"DC = {exposure} * (C + A * {self.thermal})"
        return f"DC = A * {exposure} * {self.thermal}"

    def bounds(self, fit_bounds: dict) -> tuple:
        """The slope's bounds from the ``fit_bounds`` parameter."""
        return tuple(fit_bounds[self.slope])


_LAWS = (
    Form("exponential", "B", "1/degC", "dark temperature coefficient B", "exp(B * (T - TMIN))",
         lambda T, tmin: T - tmin, (("doubling temperature", lambda slope: np.log(2) / slope, "degC"),)),
    Form("arrhenius", "Ea", "eV", "dark temperature coefficient Ea", "exp(-EA/k * (1/T_K - 1/TMIN_K))",
         lambda T, tmin: -(1 / (T + KELVIN) - 1 / (tmin + KELVIN)) / BOLTZMANN_EV),
)
#: every form: each law, then each law with a floor
FORMS = {form.name: form for form in [replace(law, law=law.name) for law in _LAWS]
         + [replace(law, name=f"{law.name}+floor", floor=True, law=law.name) for law in _LAWS]}


def dark_form(name: str) -> Form:
    """The form called ``name``; a ValueError lists the known ones."""
    if name not in FORMS:
        raise ValueError(f"dark_form: unknown form {name!r} ({' or '.join(FORMS)})")
    return FORMS[name]
