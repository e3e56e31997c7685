"""The keystoneauth1 session of the OpenStack driver: Keystone v3 (password, application credential),
v2.0 (password) and Rackspace's API key (RAX-KSKEY:apiKeyCredentials on identity v2.0) built here;
every other `auth_type` (token, v3token, v3oidcpassword, v3totp... whatever keystoneauth's plugins
offer) loaded by openstack.config exactly as the `openstack` command loads it, from clouds.yaml and
the settings, whose values (environment, config section) win over the file's."""
from __future__ import annotations

from keystoneauth1 import identity
from keystoneauth1 import session as ks_session

from cislaves.clouds.openstack.settings import AUTH_KEYS, Settings, cloud_region
from cislaves.errors import ConfigError

OWN_AUTH_TYPES = {None, "password", "v2password", "v3password", "v3applicationcredential"}


def session(s: Settings, cloud_name: str):
    """A keystoneauth1 Session authenticated as the settings say (authentication happens on first use)."""
    verify: bool | str = False if s.insecure else (str(s.cacert) if s.cacert else True)
    return ks_session.Session(auth=auth_plugin(s, cloud_name), verify=verify, timeout=s.request_timeout,
                              user_agent="cislaves")


def auth_plugin(s: Settings, cloud_name: str):
    """The keystoneauth1 plugin for the settings: application credential, Rackspace API key or password."""
    section = f"clouds.{cloud_name}"
    auth_type = s.auth_type.replace("-", "_") if s.auth_type else None
    if auth_type not in OWN_AUTH_TYPES and not s.api_key:
        return loaded_plugin(s, auth_type)
    if not s.auth_url:
        raise ConfigError(f"{section}.auth_url: not set; set OS_AUTH_URL, {section}.auth_url or OS_CLOUD")
    project = {"project_name": s.project_name or s.tenant_name, "project_id": s.project_id or s.tenant_id}
    url = s.auth_url.rstrip("/")
    if s.application_credential_id or s.application_credential_name:
        if not s.application_credential_secret:
            raise ConfigError(f"{section}.application_credential_secret: not set "
                              "(OS_APPLICATION_CREDENTIAL_SECRET)")
        return identity.v3.ApplicationCredential(
            _v3_url(url), application_credential_id=s.application_credential_id,
            application_credential_name=s.application_credential_name,
            application_credential_secret=s.application_credential_secret.get_secret_value(),
            username=s.username, user_id=s.user_id, user_domain_name=s.user_domain_name,
            user_domain_id=s.user_domain_id)
    if not (s.username or s.user_id):
        raise ConfigError(f"{section}.username: not set; set OS_USERNAME, {section}.username or OS_CLOUD")
    if s.api_key:
        return RackspaceApiKey(url, s.username, s.api_key.get_secret_value(),
                               tenant_id=project["project_id"], tenant_name=project["project_name"])
    if not s.password:
        raise ConfigError(f"{section}.password: not set; set OS_PASSWORD (or RACKSPACE_API_KEY), "
                          f"{section}.password or OS_CLOUD")
    password = s.password.get_secret_value()
    if url.endswith("/v2.0"):
        return identity.v2.Password(url, username=s.username, user_id=s.user_id, password=password,
                                    tenant_id=project["project_id"], tenant_name=project["project_name"])
    domains = {"user_domain_name": s.user_domain_name, "user_domain_id": s.user_domain_id,
               "project_domain_name": s.project_domain_name, "project_domain_id": s.project_domain_id}
    if not (s.user_domain_name or s.user_domain_id):
        domains["user_domain_id"] = "default"
    if (project["project_name"] and not (s.project_domain_name or s.project_domain_id)):
        domains["project_domain_id"] = "default"
    if url.endswith("/v3"):
        return identity.v3.Password(url, username=s.username, user_id=s.user_id, password=password,
                                    **project, **domains)
    return identity.Password(url, username=s.username, user_id=s.user_id, password=password,
                             **project, **domains)


def loaded_plugin(s: Settings, auth_type: str):
    """The plugin openstack.config loads for this auth type: clouds.yaml's auth (when OS_CLOUD names a
    cloud) under the settings' own values, so OS_TOKEN or the section still override the file."""
    auth = {}
    for key in AUTH_KEYS:
        value = getattr(s, key, None)
        if value is not None:
            auth[key] = value.get_secret_value() if hasattr(value, "get_secret_value") else value
    region = cloud_region(s.clouds_yaml if s.cloud else None, s.cloud, validate=True, auth_type=auth_type,
                          auth=auth)  # the region was settled with the settings; auth does not need it
    return region.get_auth()


def _v3_url(url: str) -> str:
    return url if url.endswith("/v3") else url + "/v3"


class RackspaceApiKey(identity.v2.Auth):
    """Rackspace identity v2.0 with an API key (RAX-KSKEY:apiKeyCredentials)."""

    def __init__(self, auth_url, username, api_key, **kwargs):
        super().__init__(auth_url, **kwargs)
        self.username, self.api_key = username, api_key

    def get_auth_data(self, headers=None):
        return {"RAX-KSKEY:apiKeyCredentials": {"username": self.username, "apiKey": self.api_key}}
