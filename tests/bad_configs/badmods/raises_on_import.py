"""A module that fails while being imported (tests/bad_configs/python_module_raises_on_import.yaml)."""

raise RuntimeError("this module refuses to be imported")
