"""The version of blu, recorded in every run folder (a module of its own so that nothing imports
the package's __init__ for it)."""

__version__ = "0.1.0"
