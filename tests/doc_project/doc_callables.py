"""The callables of the docs' example project."""


def broken():
    raise RuntimeError("database unreachable")


def always():
    return {}
