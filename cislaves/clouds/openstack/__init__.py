"""The openstack cloud driver (see driver.py); the package holds its settings, API calls and helpers."""
from cislaves.clouds.openstack.driver import OpenStackCloud

__all__ = ["OpenStackCloud"]
