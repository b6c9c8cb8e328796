"""Bad input to the engine: the values a step is given (``samples``, ``tokens``, extra fields)
as NumPy arrays and tensors of any shape, and the ``flops`` per step a user gives
(``greentrack.training.flops.given``).

The rule: a value that is one number, whatever its type or shape, is recorded as that number;
one that is not is dropped for that field of that step alone, with one ``bad-step-field`` event
per field saying why; the step itself, and everything recorded, is kept; nothing raises into
the training loop; a ``flops`` given as a setting is refused in one line naming it. (NaN,
text, objects, Decimals in a step: tests/test_step_inputs.py.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import greentrack
from greentrack.common.errors import ConfigError
from greentrack.store import StoreReader, store_paths
from greentrack.training.flops import analytic, given
from tests.helpers import FAST


def _steps(run: Path) -> tuple[list[Any], list[dict[str, Any]]]:
    store = StoreReader(store_paths(run)[0])
    return [r["samples"] for r in store.steps()], \
        [e for e in store.events() if e["kind"] == "bad-step-field"]


def test_one_element_arrays_and_tensors_of_any_shape_are_one_number(no_host_env: Path,
                                                                   tmp_path: Path) -> None:
    """8a2bbe5: ``step(samples=np.array([3]))`` was dropped while ``torch.tensor([[5]])`` was
    recorded. One rule now, NumPy and torch alike: one element, whatever the shape, is that
    number; more is dropped, saying how many."""
    values = [np.array([3]), np.array([[4]]), np.array(5), torch.tensor([6]),
              torch.tensor([[7]]), np.array([[8.5]], dtype=np.float32),
              np.array([1, 2]), torch.tensor([1, 2, 3])]
    with greentrack.Tracker(tmp_path / "run", **FAST) as t:
        for v in values:
            with t.step(samples=v, extra_count=v):
                pass
    samples, bad = _steps(tmp_path / "run")
    assert samples == [3.0, 4.0, 5.0, 6.0, 7.0, 8.5, None, None]
    messages = sorted(e["message"] for e in bad)  # one event per field: its first drop
    assert len(messages) == 2 and all("an array of 2 elements" in m for m in messages), messages
    assert "'extra_count'" in messages[0] and "'samples'" in messages[1]


# -- flops given per step ----------------------------------------------------------------------
@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), "many", True])
def test_bad_flops_is_one_line_naming_the_setting(bad: object) -> None:
    with pytest.raises(ConfigError) as e:
        given(bad)  # type: ignore[arg-type]
    assert str(e.value).startswith("flops=") and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="n_params"):
        analytic(0, 10)
