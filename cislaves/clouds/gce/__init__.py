"""The gce cloud driver (see driver.py); the package holds its settings, API calls and helpers."""
from cislaves.clouds.gce.driver import GCECloud

__all__ = ["GCECloud"]
