"""greentrack's small exception hierarchy.

Vendor errors (``pynvml.NVMLError``, ``OSError`` from sysfs) are translated at the sampler edge
into these, so the engine can tell "this device went away" from "this read failed once" without
knowing any vendor library.
"""

from __future__ import annotations

from greentrack.common.text import printable


class GreenTrackError(Exception):
    """Base class of every error greentrack raises on purpose."""


class ConfigError(GreenTrackError, ValueError):
    """An invalid setting or argument. ``str()`` is one line naming the setting, the value and what
    is allowed, fit to print to a user as is."""

    #: the longest a setting's name or value is shown; a longer one is cut (its repr ends in "...")
    MAX_SHOWN = 120

    def __init__(self, setting: str, value: object, allowed: str) -> None:
        self.setting, self.value, self.allowed = setting, value, allowed
        # Values come from users, files and shells: shown by repr, printable, cut; one line.
        super().__init__(f"{printable(setting, self.MAX_SHOWN)}={printable(repr(value), self.MAX_SHOWN)}"
                         f" is invalid: {printable(allowed)}")


class SamplerError(GreenTrackError):
    """A read failed; the device may answer next time (a gap, not a loss)."""


class DeviceLost(SamplerError):
    """The device stopped answering for good (GPU fell off the bus, zone disappeared)."""


class PermissionDenied(SamplerError):
    """The OS refused the read; ``hint`` says how to grant access."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.hint = hint


class RunStoreError(GreenTrackError):
    """A run directory or store cannot be read or written."""
