"""trigctl: event-driven automation without cron.

The public API for Python trigger callables is :class:`Fire` and :class:`Skip`.
"""

from __future__ import annotations

from trigctl.triggers.base import Fire, Skip, TriggerType

__version__ = "0.1.0"
__all__ = ["Fire", "Skip", "TriggerType", "__version__"]
