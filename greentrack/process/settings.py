"""The settings that need data or a parse, checked before a run creates anything.

They sit here, above ``carbon/``, ``exporters/`` and ``reports/``, because each check is the owning
layer's own parser: a bad value fails with that parser's one-line error, at start rather than when
the run ends. A parser's module loads when its setting is given: ``from greentrack import Tracker``
stays light (``bench/start_stop.py``).
"""

from __future__ import annotations

from greentrack.common.config import Config
from greentrack.exporters.gateway import gateway_url


def check_settings(config: Config) -> None:
    """Check the settings that need data or a parse: country, region and cloud (against
    codecarbon's tables), the intensity CSV (read whole), the Pushgateway URL, the emissions CSV's
    directory. ``Tracker.start``, ``@greentrack.track`` and the commands call it before they create
    anything.

    Raises:
        ConfigError: one line naming the setting, the value and what is allowed.
    """
    if config.country or config.region or config.cloud:
        # loaded for a run that names a location, not with every tracker (bench/start_stop.py)
        from greentrack.carbon.location import resolve_location
        resolve_location(config)
    if config.intensity_csv:
        # loaded for a run with an intensity series (statistics, csv), not with every tracker
        from greentrack.carbon.series import read_csv
        read_csv(config.intensity_csv)
    if config.pushgateway_url:
        gateway_url(config.pushgateway_url)
    if config.emissions_csv:  # now, not when the run ends
        # loaded for a run that writes the emissions CSV, not with every tracker
        from greentrack.reports.emissions_log import check_path
        check_path(config.emissions_csv)
