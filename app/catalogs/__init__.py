"""The event catalogs shipped with Tidings (TOML files read by `app.domain.catalog`)."""

from __future__ import annotations
