"""Tidings: a FHIR Subscription-aware outbound webhook publisher."""

from __future__ import annotations

__version__ = "0.1.0"
