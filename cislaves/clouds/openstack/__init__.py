"""The openstack cloud driver (driver.py) and Rackspace, its subclass (rackspace.py); the package holds
their settings, session, API calls and helpers."""
from cislaves.clouds.openstack.driver import OpenStackCloud
from cislaves.clouds.openstack.rackspace import RackspaceCloud

__all__ = ["OpenStackCloud", "RackspaceCloud"]
