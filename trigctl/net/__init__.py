"""Network clients with deadlines: see :mod:`trigctl.net.http`."""
