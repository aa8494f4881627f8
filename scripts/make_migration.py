"""Write a new Alembic migration from the difference between the models and the newest one.

    python scripts/make_migration.py "what changed"

It upgrades a scratch SQLite database to head, then autogenerates against it.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from alembic import command

from app.store.migrate import alembic_config


def main() -> None:
    message = sys.argv[1] if len(sys.argv) > 1 else "schema change"
    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite+aiosqlite:///{Path(folder) / 'scratch.db'}"
        config = alembic_config(url)
        command.upgrade(config, "head")
        command.revision(config, message=message, autogenerate=True)


if __name__ == "__main__":
    main()
