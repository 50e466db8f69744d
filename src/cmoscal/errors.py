"""What cmoscal raises and warns: one-line messages a user can act on."""

from __future__ import annotations

__all__ = ["CampaignError", "CampaignWarning", "LockError", "OutOfRangeWarning"]


class CampaignError(ValueError):
    """The campaign (or a request) cannot give a trustworthy result; the message says why in one line."""


class LockError(RuntimeError):
    """Another run holds the output folder; the message names it."""


class CampaignWarning(UserWarning):
    """Something a person must know about the campaign or its products.

    Recorded by the stage that raised it, printed once on the console and shown on the
    stage page and the report index.
    """


class OutOfRangeWarning(CampaignWarning):
    """A frame was requested outside the calibrated temperature or exposure range."""
