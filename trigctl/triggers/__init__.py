"""Built-in trigger types. Importing this package registers them all."""

from trigctl.triggers import python  # noqa: F401
