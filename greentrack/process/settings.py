"""The settings that need data or a parse, checked before a run creates anything.

They sit here, above ``carbon/``, ``exporters/`` and ``reports/``, because each check is the owning
layer's own parser: a bad value fails with that parser's one-line error, at start rather than when
the run ends.
"""

from __future__ import annotations

from greentrack.carbon.location import resolve_location
from greentrack.carbon.series import read_csv
from greentrack.common.config import Config
from greentrack.exporters.gateway import gateway_url
from greentrack.reports.emissions_log import check_path


def check_settings(config: Config) -> None:
    """Check the settings that need data or a parse: country, region and cloud (against
    codecarbon's tables), the intensity CSV (read whole), the Pushgateway URL, the emissions CSV's
    directory. ``Tracker.start``, ``@greentrack.track`` and the commands call it before they create
    anything.

    Raises:
        ConfigError: one line naming the setting, the value and what is allowed.
    """
    if config.country or config.region or config.cloud:
        resolve_location(config)
    if config.intensity_csv:
        read_csv(config.intensity_csv)
    if config.pushgateway_url:
        gateway_url(config.pushgateway_url)
    if config.emissions_csv:  # now, not when the run ends
        check_path(config.emissions_csv)
