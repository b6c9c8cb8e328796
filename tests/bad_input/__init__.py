"""Bad input, one file per layer that defends against it (the layers of `.importlinter`):

- ``test_settings.py``: common/process: ``Config``, environment variables, run_dir, labels,
  planned steps, power limits, config files, file settings such as ``emissions_csv``;
- ``test_cli.py``: cli: command-line options and ``greentrack run``'s handling of them;
- ``test_carbon.py``: carbon: intensity CSVs, PUE, country, region, price;
- ``test_reports.py``: run/reports: ``report``, ``compare``, ``merge`` arguments, targets;
- ``test_store.py``: store: damaged or hostile store files;
- ``test_steps.py``: engine: step values (counts, flops, extra fields) of odd types;
- ``test_integrations.py``: training/integrations: callbacks refusing bad arguments.

The rule each file holds its layer to: bad input is refused with one clear line naming the
setting, the value and what is allowed (exit 2 on the command line, a ``ConfigError`` in
Python), before anything is created; a bad value met while recording drops that value alone,
saying so; nothing already recorded is lost; never a traceback.
"""

from __future__ import annotations

import pytest

from greentrack.common.errors import ConfigError


def one_line(e: pytest.ExceptionInfo[ConfigError], setting: str) -> str:
    """The text of a refused setting, checked to be one line starting ``SETTING=``."""
    text = str(e.value)
    assert text.startswith(f"{setting}=") and "\n" not in text, text
    return text


def one_line_error(code: int, out: str, err: str, *words: str) -> str:
    """A command refused its input: exit 2, one ``greentrack: `` line holding `words`, no
    output, no traceback; returns that line."""
    assert code == 2, (code, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("greentrack: "), err
    assert "Traceback" not in err and "internal error" not in err and not out
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]
