"""The run key: a hash of exactly what changes a run's result.

Paths, loggers, launchers and hardware never enter it, so the same science relaunched
anywhere finds its finished row (and is skipped) or its checkpoint (and resumes).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def run_key(science: dict[str, Any]) -> str:
    """16 hex digits of the SHA-256 of the canonical JSON of ``science``."""
    canonical = json.dumps(science, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
