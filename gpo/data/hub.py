"""A quick check that the Hugging Face Hub can be reached, before loading a hub name.

Without it, ``from_pretrained`` and ``load_dataset`` retry an unreachable Hub for about 50 s
before failing. One TCP connect with a short timeout (to the proxy, when one is configured)
answers the same question in at most a few seconds. With ``HF_HUB_OFFLINE`` set, the libraries
read only their local cache: no check.
"""

from __future__ import annotations

import os
import socket
import urllib.request
from urllib.parse import urlsplit

DEFAULT_ENDPOINT = "https://huggingface.co"
TRUE = ("1", "ON", "YES", "TRUE")  # what huggingface_hub accepts as a true flag


class HubUnreachable(ValueError):
    """The Hub cannot be reached; the message says what to set or pass instead."""


def hub_offline(*variables: str) -> bool:
    """Whether ``HF_HUB_OFFLINE`` (or one of ``variables``) is set to a true value."""
    return any(
        os.environ.get(v, "").strip().upper() in TRUE for v in ("HF_HUB_OFFLINE", *variables)
    )


def _address(url: str) -> tuple[str, int]:
    parts = urlsplit(url if "://" in url else "http://" + url)
    port = parts.port or (80 if parts.scheme == "http" else 443)
    return parts.hostname or "huggingface.co", port


def _first_hop(endpoint: str) -> tuple[str, int]:
    """The address a request to ``endpoint`` connects to: its proxy (HTTPS_PROXY etc.) if any."""
    host, _ = _address(endpoint)
    proxy = urllib.request.getproxies().get(urlsplit(endpoint).scheme or "https")
    if proxy and not urllib.request.proxy_bypass(host):
        return _address(proxy)
    return _address(endpoint)


def check_hub_reachable(what: str, timeout: float = 3.0, endpoint: str | None = None) -> None:
    """Raise :class:`HubUnreachable` naming ``what`` (e.g. ``"model 'org/name'"``) when the Hub
    at ``endpoint`` (default ``HF_ENDPOINT``, else huggingface.co) accepts no connection."""
    endpoint = endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT
    try:
        with socket.create_connection(_first_hop(endpoint), timeout=timeout):
            return
    except OSError as e:
        reason = "timed out" if isinstance(e, TimeoutError) else (e.strerror or str(e))
        raise HubUnreachable(
            f"cannot load {what}: the Hugging Face Hub ({endpoint}) is unreachable ({reason}); "
            "pass a local path, or set HF_HUB_OFFLINE=1 to use only what is already cached"
        ) from None
