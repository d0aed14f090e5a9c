"""Where meshgate keeps its state: ``$MESHGATE_HOME`` (default ``~/.meshgate``)."""

from __future__ import annotations

import os
from pathlib import Path


def meshgate_home() -> Path:
    """The registry, the audit log and the demo data live here unless a flag says otherwise."""
    return Path(os.environ.get("MESHGATE_HOME", Path.home() / ".meshgate"))
