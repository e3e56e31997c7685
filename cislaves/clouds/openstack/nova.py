"""Nova through python-novaclient, on the driver's keystoneauth1 session and its one region.

What novaclient does here: every Nova resource call (servers: create with nics, get, list over all
pages, delete, os-stop/os-start; key pairs; flavors), the microversion headers, the comparison of
versions (novaclient.api_versions) and the reading of the cloud's version document
(`versions.get_current`, with its fallbacks for endpoints that carry a project id or block it).

What it does not do, and why (read in novaclient 18.13.1):
- `exceptions.from_response` keeps the HTTP status and message but drops the fault's name (the key
  of Nova's `{"conflictingRequest": {...}}`) and the answer itself; `RetryAfterException` does
  `int(retry_after)`, so a Retry-After HTTP date becomes 0, and a 503's Retry-After is not read at
  all. `KeepAnswer` (the SessionClient novaclient talks through) raises the same novaclient
  exception with the answer attached (`exc.response`), and Api.call reads status, fault code and
  Retry-After from it: one retry loop for Nova, Glance and Neutron.
- `servers.create_image` reads `resp.headers['location']` below 2.45: a Location-less answer
  (Rackspace) raises KeyError after the snapshot exists. createImage is posted through
  novaclient's own SessionClient (`nova.client.post`) and the answer is read by images.py.
- flavors and (from 2.35) key pairs come one page per call: `every_page` asks with a marker until a
  page is empty, as novaclient's `servers.list(limit=-1)` does for servers.
- Glance v2 and Neutron have no novaclient API: they stay JSON on the session (api.py).
- every list and create of a novaclient manager opens the `nova` CLI's bash-completion cache files
  (~/.novaclient/<hash>/<resource>-uuid-cache, base.Manager.completion_cache; empty ones, since
  write_to_completion_cache has no caller). novaclient has no setting that turns it off, also not
  upstream (NOVACLIENT_UUID_CACHE_DIR only moves it, for the whole process): `connect` gives each
  manager of its client a completion_cache that opens nothing.
The catalog, the region and the versioned endpoint are api.py's (one region for every service);
novaclient gets that endpoint as `endpoint_override`.
"""
from __future__ import annotations

import contextlib
import logging

import novaclient
from novaclient import api_versions
from novaclient import base as nova_base
from novaclient import client as nova_client
from novaclient import exceptions as nova_exc

from cislaves.clouds.openstack.api import Api
from cislaves.errors import CloudError, ConfigError

log = logging.getLogger(__name__)
# keystoneauth logs whole request and response bodies to the client's logger at DEBUG, and a server
# create answer holds the server's adminPass: that logger never shows DEBUG, even with CISLAVES_DEBUG.
wire_log = logging.getLogger("keystoneauth.cislaves.nova")
wire_log.setLevel(logging.INFO)
BASE = api_versions.APIVersion("2.1")  # every Nova speaks it (a legacy v2 API answers it as 2.0)


class KeepAnswer(nova_client.SessionClient):
    """novaclient's SessionClient whose exceptions carry the answer (`exc.response`): the fault's
    name and a Retry-After date are in it, and from_response keeps neither."""

    def request(self, url, method, **kwargs):
        raise_exc = kwargs.pop("raise_exc", True)
        resp, body = super().request(url, method, raise_exc=False, **kwargs)
        if raise_exc and resp.status_code >= 400:
            exc = nova_exc.from_response(resp, body, url, method)
            exc.response = resp
            raise exc
        return resp, body


def connect(api: Api, version: str, setting: str):
    """A novaclient Client for the compute endpoint of `api`'s region at `version`, checked first
    against the installed novaclient (no request made), then against the cloud's range."""
    wanted = check_client(version, setting)
    endpoint = api.endpoint("compute")
    nova = nova_client.Client(BASE, session=api.session, endpoint_override=endpoint, logger=wire_log)
    nova.client = KeepAnswer(session=api.session, api_version=BASE, endpoint_override=endpoint,
                             service_type="compute", user_agent="cislaves", logger=wire_log)
    for manager in vars(nova).values():  # no ~/.novaclient (see the module docstring)
        if isinstance(manager, nova_base.Manager):
            manager.completion_cache = _no_completion_cache
    if wanted > BASE:
        check_cloud(api, nova, wanted, setting)
    nova.api_version = wanted
    return nova


def check_client(version: str, setting: str) -> api_versions.APIVersion:
    """The APIVersion of `version` if the installed novaclient can speak it; else one ConfigError."""
    try:
        wanted = api_versions.APIVersion(version)
        api_versions.check_version(wanted)
    except nova_exc.UnsupportedVersion:
        low, high = novaclient.API_MIN_VERSION.get_string(), novaclient.API_MAX_VERSION.get_string()
        raise ConfigError(f"{setting}: {version} is outside the range {low} to {high} that the installed "
                          f"python-novaclient {novaclient.__version__} supports") from None
    return wanted


def check_cloud(api: Api, nova, wanted: api_versions.APIVersion, setting: str) -> None:
    """`wanted` must be within the range of the cloud's version document (read at 2.1, which every
    Nova accepts); a legacy v2 API (Rackspace) has no microversions: 2.1 only."""
    try:
        current = api.call("reading the compute API version", nova.versions.get_current)
    except CloudError as exc:  # the cloud will say it (406) on the first call that needs the version
        log.debug("%s: cannot read the compute version document: %s", api.cloud, exc)
        return
    doc = current.to_dict() if current is not None else {}  # None: the endpoint refused it (Rackspace)
    if not doc.get("version"):
        raise ConfigError(f"{setting}: {wanted.get_string()} asked for, but the compute API of {api.label} has "
                          "no microversions; use 2.1")
    low, high = api_versions.APIVersion(doc.get("min_version") or "2.1"), api_versions.APIVersion(doc["version"])
    if not wanted.matches(low, high):
        raise ConfigError(f"{setting}: {wanted.get_string()} is outside the range {low.get_string()} to "
                          f"{high.get_string()} that {api.label} supports")


def every_page(list_page) -> list:
    """Every item of a collection novaclient reads one page per call (`list_page(marker=...)`):
    the next page starts after the last item, until a page brings nothing new."""
    items: list = []
    seen: set = set()
    marker = None
    while True:
        page = list_page(marker=marker) if marker else list_page()
        fresh = [item for item in page if item.id not in seen]
        if not fresh:
            return items
        items += fresh
        seen |= {item.id for item in fresh}
        marker = fresh[-1].id


@contextlib.contextmanager
def _no_completion_cache(cache_type, obj_class, mode):
    """Manager.completion_cache(cache_type, obj_class, mode) that opens no file."""
    yield
