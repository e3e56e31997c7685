"""Rackspace: the OpenStack driver with Rackspace's identity URL and flavor, its own image names, root
logins, and the catalog names of its OpenStack services (its catalog also lists a first-generation
`compute` service without a region, which these names pass over). The region is the account's
default (the token's RAX-AUTH:defaultRegion) unless OS_REGION_NAME names another.
"""
from __future__ import annotations

from typing import Any, ClassVar

from cislaves.clouds.openstack.driver import OpenStackCloud


class RackspaceCloud(OpenStackCloud):
    """Bakes on the Rackspace public cloud (identity v2.0 with an API key or a password)."""

    name = "rackspace"
    DEFAULTS: ClassVar[dict[str, Any]] = {"auth_url": "https://identity.api.rackspacecloud.com/v2.0/",
                                          "flavor": "general1-2"}
    # Rackspace's own image names for the distributions the seed baked there (exact, newest active wins)
    IMAGES: ClassVar[dict[str, str]] = {
        "ubuntu14.04": r"^Ubuntu 14\.04 LTS \(Trusty Tahr\) \(PVHVM\)$",
        "centos7": r"^CentOS 7 \(PVHVM\)$",
    }
    SERVICE_NAMES: ClassVar[dict[str, str]] = {"compute": "cloudServersOpenStack", "image": "cloudImages",
                                               "network": "cloudNetworks"}
    DEFAULT_USER: ClassVar[str | None] = "root"  # Rackspace images log in as root
