"""The module-level app for Hypercorn: `hypercorn app.asgi:app`."""

from __future__ import annotations

import os

from app.config import load_settings
from app.factory import create_app

app = create_app(load_settings(os.environ))
