"""Keystone for the fake cloud: v3 password/application-credential tokens and v2.0 tokens (password or
Rackspace's RAX-KSKEY:apiKeyCredentials), with catalogs shaped as real clouds write them.

Shapes (looked up in libcloud's recorded fixtures, keystoneauth1.fixture and Keystone's api-ref):
a region per endpoint, regions listed in a different order for each service, Rackspace's catalog
naming its services (cloudServersOpenStack, cloudImages, cloudNetworks) with versioned URLs
(`.../v2/<tenant>`, `.../v2`, `.../v2.0`) next to a first-generation `compute` service without a
region, and its user carrying `RAX-AUTH:defaultRegion`.
"""
from __future__ import annotations

import uuid

TIME = "2026-01-01T00:00:00Z"


def endpoints(cloud) -> list[tuple[str, str, str, list[tuple[str, str]]]]:
    """(type, name, id, [(region, url)]) per service; each service lists the regions in its own order."""
    base, regions, tenant = cloud.url, list(cloud.regions), cloud.project_id

    def order(shift):
        return regions[shift % len(regions):] + regions[:shift % len(regions)]

    if cloud.rackspace:
        return [("compute", "cloudServersOpenStack", "compute",
                 [(r, f"{base}/{r}/compute/v2/{tenant}") for r in order(1)]),
                ("image", "cloudImages", "image", [(r, f"{base}/{r}/image/v2") for r in order(2)]),
                ("network", "cloudNetworks", "network", [(r, f"{base}/{r}/network/v2.0") for r in order(0)])]
    return [("compute", "nova", "compute", [(r, f"{base}/{r}/compute/v2.1") for r in order(1)]),
            ("image", "glance", "image", [(r, f"{base}/{r}/image") for r in order(2)]),
            ("network", "neutron", "network", [(r, f"{base}/{r}/network") for r in order(0)])]


def v3_token(cloud, body: dict) -> tuple[int, dict, dict]:
    ident = body.get("auth", {}).get("identity", {})
    pw = ident.get("password", {}).get("user", {})
    appcred = ident.get("application_credential", {})
    token = ident.get("token", {})  # the token method: a token this Keystone issued (or was given)
    ok = (pw.get("name") == cloud.username and pw.get("password") == cloud.password) or \
        (appcred.get("id") == "appcred-id" and appcred.get("secret") == cloud.password) or \
        ("token" in ident.get("methods", []) and token.get("id") in cloud.tokens)
    if not ok:
        return 401, {"error": {"code": 401, "message": "The request you have made requires authentication.",
                               "title": "Unauthorized"}}, {}
    token_id = uuid.uuid4().hex
    cloud.tokens.add(token_id)
    catalog = [{"type": kind, "name": name, "id": sid,
                "endpoints": [{"id": f"{sid}-{region}", "interface": "public", "url": url, "region": region,
                               "region_id": region} for region, url in urls]}
               for kind, name, sid, urls in endpoints(cloud)]
    token = {"token": {
        "methods": ["password"], "expires_at": "2099-01-01T00:00:00.000000Z", "issued_at": TIME,
        "user": {"id": "u", "name": cloud.username, "domain": {"id": "default", "name": "Default"}},
        "project": {"id": cloud.project_id, "name": cloud.project, "domain": {"id": "default", "name": "Default"}},
        "roles": [{"id": "r", "name": "member"}], "audit_ids": [uuid.uuid4().hex], "catalog": catalog}}
    return 201, token, {"X-Subject-Token": token_id}


def v2_token(cloud, body: dict) -> tuple[int, dict, dict]:
    auth = body.get("auth", {})
    rax = auth.get("RAX-KSKEY:apiKeyCredentials", {})
    pw = auth.get("passwordCredentials", {})
    ok = (rax.get("username") == cloud.username and rax.get("apiKey") == cloud.api_key) or \
        (pw.get("username") == cloud.username and pw.get("password") == cloud.password)
    if not ok:
        return 401, {"unauthorized": {"code": 401, "message": "Username or api key is invalid."}}, {}
    token_id = uuid.uuid4().hex
    cloud.tokens.add(token_id)
    tenant = cloud.project_id
    catalog = [{"type": kind, "name": name,
                "endpoints": [{"publicURL": url, "region": region, "tenantId": tenant} for region, url in urls]}
               for kind, name, _, urls in endpoints(cloud)]
    user = {"id": "u", "name": cloud.username, "roles": [{"id": "3", "name": "identity:default"}]}
    if cloud.rackspace:
        # the first-generation servers API: a compute service without a region (libcloud's fixture)
        catalog.insert(0, {"type": "compute", "name": "cloudServers", "endpoints": [
            {"publicURL": f"{cloud.url}/legacy/v1.0/{tenant}", "tenantId": tenant,
             "version": {"versionId": "1.0", "versionInfo": f"{cloud.url}/legacy/v1.0/"}}]})
        user["RAX-AUTH:defaultRegion"] = cloud.default_region
    token = {"access": {
        "token": {"id": token_id, "expires": "2099-01-01T00:00:00.000-06:00",
                  "tenant": {"id": tenant, "name": cloud.project},
                  **({"RAX-AUTH:authenticatedBy": ["APIKEY" if rax else "PASSWORD"]} if cloud.rackspace else {})},
        "user": user, "serviceCatalog": catalog}}
    return 200, token, {}
