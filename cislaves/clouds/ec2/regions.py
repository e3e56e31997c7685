"""Region names checked against the cloud before anything is created.

A typo in `region` or `copy_regions` (us-esat-1) used to pass the name pattern, run the whole bake and
fail at the copy (or, on an endpoint that does not know the region, answer an HTML error page). One
DescribeRegions call (AllRegions, so a region the account has not enabled is named as such) answers
for all of them. It is asked in the configured region when botocore knows that name, else in the
partition's first region: asking a misspelt region would itself fail with an unhelpful error.
An account whose policy denies ec2:DescribeRegions falls back to botocore's own region list.
"""
from __future__ import annotations

import difflib
import logging

from cislaves.clouds.ec2.api import Clients, call
from cislaves.errors import CloudError, ConfigError

log = logging.getLogger(__name__)

DENIED = ("UnauthorizedOperation", "AccessDenied", "AuthFailure")


def check(clients: Clients, region: str, copy_regions: list[str]) -> None:
    """Raise a one-line ConfigError naming the key when `region` or a copy region is not one of the
    cloud's enabled regions."""
    wanted = [("region", region)] + [(f"copy_regions[{i}]", r) for i, r in enumerate(copy_regions)]
    known = _botocore_regions(clients)
    ask = region if region in known else _first(known, region)
    try:
        listing = call(clients, "describe_regions", ask, AllRegions=True).get("Regions", [])
        status = {r["RegionName"]: r.get("OptInStatus", "opt-in-not-required") for r in listing}
        source = "DescribeRegions"
    except CloudError as exc:
        if exc.code not in DENIED:
            raise
        log.debug("ec2: DescribeRegions denied (%s); checking region names against botocore's list", exc.code)
        status = {name: "opt-in-not-required" for name in known}
        source = "botocore's region list"
    for key, name in wanted:
        if name not in status:
            close = _closest(name, list(status))
            hint = f"; did you mean {close}?" if close else ""
            raise ConfigError(f"clouds.ec2.{key}: {name!r} is not an EC2 region (checked with {source}){hint}")
        if status[name] == "not-opted-in":
            raise ConfigError(f"clouds.ec2.{key}: region {name!r} is not enabled for this account "
                              f"(enable it in the account settings, or choose another region)")


def _botocore_regions(clients: Clients) -> set[str]:
    """Every EC2 region botocore's endpoint data names, in every partition (no network)."""
    session = clients.session
    names: set[str] = set()
    for partition in session.get_available_partitions():
        names.update(session.get_available_regions("ec2", partition_name=partition))
    return names


def _closest(name: str, names: list[str]) -> str | None:
    """The likeliest intended name: same letters in another order (a swap, us-esat-1), else the
    most similar spelling."""
    swapped = [n for n in names if sorted(n) == sorted(name)]
    if swapped:
        return swapped[0]
    close = difflib.get_close_matches(name, names, n=1)
    return close[0] if close else None


def _first(known: set[str], region: str) -> str:
    """The region to ask when `region` is unknown to botocore: the closest known name (its partition)."""
    close = difflib.get_close_matches(region, sorted(known), n=1, cutoff=0.0)
    return close[0] if close else "us-east-1"
