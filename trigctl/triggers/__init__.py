"""Built-in trigger types. Importing this package registers them all."""

import trigctl.triggers.command  # noqa: F401
import trigctl.triggers.file  # noqa: F401
import trigctl.triggers.http  # noqa: F401
import trigctl.triggers.queue_depth  # noqa: F401
import trigctl.triggers.schedule  # noqa: F401
from trigctl.triggers import python  # noqa: F401
