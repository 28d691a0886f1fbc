"""Trigger types: base.py holds the interface and the registry; one module per built-in type."""
