"""The Pushgateway URL setting's parser: apart from the exporter, so that checking the setting at
start (:mod:`greentrack.process.settings`) does not load the exporter and the live footprint."""

from __future__ import annotations

from urllib.parse import urlsplit

from greentrack.common.errors import ConfigError


def gateway_url(value: str) -> str:
    """``value`` as ``http(s)://host:port``; ``host:port`` means http. ConfigError otherwise."""
    text = value.strip()
    if "://" not in text:
        text = "http://" + text
    parts = urlsplit(text)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme not in ("http", "https") or not parts.hostname or port == -1 \
            or parts.query or parts.fragment:
        raise ConfigError("pushgateway_url", value,
                          "must be http(s)://HOST:PORT of a Pushgateway, e.g. http://127.0.0.1:9091")
    return text.rstrip("/")


__all__ = ["gateway_url"]
