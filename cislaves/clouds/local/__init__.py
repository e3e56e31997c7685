"""The local cloud driver (see driver.py); the package holds its settings, API calls and helpers."""
from cislaves.clouds.local.driver import LocalCloud

__all__ = ["LocalCloud"]
