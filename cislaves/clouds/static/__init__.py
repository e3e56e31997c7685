"""The static cloud: existing machines reached over SSH (see driver.py), the template for a new driver."""
from cislaves.clouds.static.driver import StaticCloud

__all__ = ["StaticCloud"]
