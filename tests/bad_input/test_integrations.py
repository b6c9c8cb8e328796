"""Bad input to the training integrations: arguments given to the framework callbacks (the
Hugging Face and Lightning callbacks, ``track_optimizer``) when they are made.

The rule: a bad argument is one line naming it, its value and what is allowed, raised when the
callback is constructed, before training starts (never from inside a hook, where it would
reach the user's loop); a value that means a number (``1e4`` steps) is taken as that number."""

from __future__ import annotations

from pathlib import Path

import pytest

from greentrack.common.errors import ConfigError


def test_the_framework_callbacks_refuse_a_bad_planned_steps_when_made(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    from greentrack.integrations.transformers import GreenTrackTrainerCallback
    with pytest.raises(ConfigError) as e:
        GreenTrackTrainerCallback(tmp_path / "run", planned_steps="10k")
    assert str(e.value).startswith("planned_steps='10k' is invalid")
    assert GreenTrackTrainerCallback(tmp_path / "run", planned_steps=1e4).run.planned_steps == 10000


# -- Lightning ---------------------------------------------------------------------------------
@pytest.mark.slow  # as in its first module, tests/test_integrations_lightning.py
def test_bad_setting_fails_at_construction() -> None:
    pytest.importorskip("lightning")
    from greentrack.integrations.lightning import GreenTrackCallback
    with pytest.raises(ConfigError) as e:
        GreenTrackCallback(counter_interval_s="often")
    assert str(e.value).startswith("counter_interval_s=") and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="unknown setting"):
        GreenTrackCallback(intervall_s=0.1)
