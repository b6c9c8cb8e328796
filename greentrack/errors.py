"""greentrack's small exception hierarchy.

Vendor errors (``pynvml.NVMLError``, ``OSError`` from sysfs) are translated at the sampler edge
into these, so the engine can tell "this device went away" from "this read failed once" without
knowing any vendor library.
"""

from __future__ import annotations


class GreenTrackError(Exception):
    """Base class of every error greentrack raises on purpose."""


class ConfigError(GreenTrackError, ValueError):
    """An invalid setting or argument. ``str()`` is one line naming the setting, the value and what
    is allowed, fit to print to a user as is."""

    def __init__(self, setting: str, value: object, allowed: str) -> None:
        self.setting, self.value, self.allowed = setting, value, allowed
        shown = repr(value)
        if len(shown) > 80:  # a long bad value is cut: the line stays one readable line
            shown = shown[:60] + f"...({len(shown)} chars)"
        super().__init__(f"{setting}={shown} is invalid: {allowed}")


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
