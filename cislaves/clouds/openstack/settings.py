"""Settings of the OpenStack/Rackspace driver: the config section model, environment names and
`clouds.yaml` (OS_CLOUD). The SSH and key settings are the shared block (cislaves.clouds.ssh).

Precedence, highest first: environment variables, the config section (clouds.openstack or
clouds.rackspace), the named cloud of clouds.yaml (plus secure.yaml), the driver class's DEFAULTS.
clouds.yaml is read by openstacksdk's `openstack.config`, as the `openstack` command reads it: a
`profile:` (openstacksdk's vendor profiles, or clouds-public.yaml), secure.yaml merged in, `regions:`
lists (the first unless a region is named; a name not in the list is refused) and any `auth_type`.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, ClassVar

import yaml
from pydantic import Field, SecretStr

from cislaves.clouds.ssh import SSHSettings
from cislaves.errors import ConfigError

log = logging.getLogger(__name__)

CLOUDS_YAML_DIRS = (Path.cwd, lambda: Path.home() / ".config" / "openstack", lambda: Path("/etc/openstack"))
# clouds.yaml auth keys this driver understands (the rest are ignored with a debug line)
AUTH_KEYS = ("auth_url", "username", "user_id", "password", "project_name", "project_id", "tenant_name",
             "tenant_id", "user_domain_name", "user_domain_id", "project_domain_name", "project_domain_id",
             "application_credential_id", "application_credential_name", "application_credential_secret",
             "api_key", "token")
TOP_KEYS = ("region_name", "interface", "cacert", "compute_api_version", "auth_type")


class Settings(SSHSettings):
    """clouds.openstack / clouds.rackspace. Unset fields come from clouds.yaml or the defaults."""

    DEPRECATED: ClassVar[dict[str, str]] = {"ssh_username": "ssh_user", "key_pair": "ssh_key_pair",
                                            "key_filename": "ssh_private_key_file",
                                            "delete_timeout": "destroy_timeout"}

    cloud: str | None = None  # a cloud of clouds.yaml (OS_CLOUD)
    clouds_yaml: Path | None = None  # explicit clouds.yaml (OS_CLIENT_CONFIG_FILE)
    auth_url: str | None = None
    username: str | None = None
    user_id: str | None = None
    password: SecretStr | None = None
    api_key: SecretStr | None = None  # Rackspace API key (RAX-KSKEY:apiKeyCredentials, identity v2.0)
    project_name: str | None = None
    project_id: str | None = None
    tenant_name: str | None = None
    tenant_id: str | None = None
    user_domain_name: str | None = None
    user_domain_id: str | None = None
    project_domain_name: str | None = None
    project_domain_id: str | None = None
    application_credential_id: str | None = None
    application_credential_name: str | None = None
    application_credential_secret: SecretStr | None = None
    auth_type: str | None = None  # keystoneauth's plugin name (password, v3token, v3oidcpassword...)
    token: SecretStr | None = None  # for auth_type token / v3token
    region_name: str | None = None  # one region for every service (default: the token's, or the only one)
    interface: str = "public"
    cacert: Path | None = None
    insecure: bool = False
    compute_api_version: str = Field("2.1", pattern=r"^2\.\d+$")  # checked against the cloud's range
    flavor: str | None = None  # name or id
    image: str | None = None  # base image: exact name or id (overrides the distribution's selector)
    image_pattern: str | None = None  # base image: regex on the name (newest active wins)
    networks: list[str] = Field(default_factory=list)  # network names or ids for the server's NICs
    address_network: str | None = None  # take the SSH address from this network of the server
    floating_network: str | None = None  # allocate a floating IP on this external network (released at the end)
    nat_destination: str | None = None  # the server's network whose port gets the floating IP (default: routed)
    security_groups: list[str] = Field(default_factory=list)
    availability_zone: str | None = None
    api_deadline: float = Field(120, gt=0)  # how long 413/429/5xx answers are retried
    request_timeout: float = Field(60, gt=0)


ENV = {
    "cloud": "OS_CLOUD",
    "clouds_yaml": "OS_CLIENT_CONFIG_FILE",
    "auth_url": "OS_AUTH_URL",
    "username": "OS_USERNAME",
    "user_id": "OS_USER_ID",
    "password": "OS_PASSWORD",
    "api_key": "RACKSPACE_API_KEY",
    "project_name": "OS_PROJECT_NAME",
    "project_id": "OS_PROJECT_ID",
    "tenant_name": "OS_TENANT_NAME",
    "tenant_id": "OS_TENANT_ID",
    "user_domain_name": "OS_USER_DOMAIN_NAME",
    "user_domain_id": "OS_USER_DOMAIN_ID",
    "project_domain_name": "OS_PROJECT_DOMAIN_NAME",
    "project_domain_id": "OS_PROJECT_DOMAIN_ID",
    "application_credential_id": "OS_APPLICATION_CREDENTIAL_ID",
    "application_credential_name": "OS_APPLICATION_CREDENTIAL_NAME",
    "application_credential_secret": "OS_APPLICATION_CREDENTIAL_SECRET",
    "auth_type": "OS_AUTH_TYPE",
    "token": "OS_TOKEN",
    "region_name": "OS_REGION_NAME",
    "interface": "OS_INTERFACE",
    "cacert": "OS_CACERT",
    "insecure": "OS_INSECURE",
    "compute_api_version": "OS_COMPUTE_API_VERSION",
    "ssh_key_pair": "RACKSPACE_KEY_PAIR",  # the seed's names
    "ssh_private_key_file": "RACKSPACE_KEY_FILENAME",
}


def resolve(settings: Settings | dict | None, cloud_name: str, defaults: dict[str, Any]) -> Settings:
    """The effective settings: explicit values over clouds.yaml over the cloud's defaults."""
    if not isinstance(settings, Settings):
        settings = Settings.model_validate(settings or {})
    explicit = settings.model_dump(include=settings.model_fields_set)
    merged: dict[str, Any] = dict(defaults)
    if settings.cloud:
        merged.update(clouds_yaml_entry(settings.cloud, settings.clouds_yaml, cloud_name,
                                        region_name=explicit.get("region_name")))
    merged.update(explicit)
    return Settings.model_validate(merged)


def clouds_yaml_entry(name: str, explicit: Path | None, cloud_name: str,
                      region_name: str | None = None) -> dict[str, Any]:
    """Settings from the cloud `name` of clouds.yaml, as openstack.config resolves it (profile,
    secure.yaml, region list), mapped onto this driver's fields."""
    where = f"clouds.{cloud_name}.cloud (OS_CLOUD)"
    candidates = [Path(explicit)] if explicit else [d() / "clouds.yaml" for d in CLOUDS_YAML_DIRS]
    found = [p for p in candidates if p.is_file()]
    if not found:
        raise ConfigError(f"{where}: cloud {name!r} asked for but no clouds.yaml found "
                          f"(looked at {', '.join(str(p) for p in candidates)})")
    path = found[0]
    raw = _load_cloud(path, name)
    if raw is None:
        raise ConfigError(f"{path}: clouds.{name}: no such cloud in this file ({where})")
    if "region_name" in raw and "regions" not in raw:
        region_name = None  # one region named, no list: the environment's or the section's replaces it
    secure = path.with_name("secure.yaml")
    if secure.is_file():
        _load_cloud(secure, name)  # a readable mapping, or one line naming the file
    entry = cloud_region(path, name, region_name=region_name).config
    values: dict[str, Any] = {"clouds_yaml": str(path)}
    auth = entry.get("auth") or {}
    if not isinstance(auth, dict):
        raise ConfigError(f"{path}: clouds.{name}.auth: expected a mapping")
    for key, value in auth.items():
        if key in AUTH_KEYS and value not in (None, ""):
            values[key] = str(value)
        else:
            log.debug("%s: clouds.%s.auth.%s is left to the auth plugin", path, name, key)
    defaults = _os_defaults()
    for key in TOP_KEYS:
        value = entry.get(key)
        if value not in (None, "") and (key == "region_name" or value != defaults.get(key)):
            values[key] = str(value)
    if entry.get("verify") is False:
        values["insecure"] = True
    try:
        Settings.model_validate(values)
    except Exception as exc:
        raise ConfigError(f"{path}: clouds.{name}: {str(exc).splitlines()[-1].strip()}") from None
    return values


def cloud_region(path: Path | None, name: str | None, *, region_name: str | None = None, validate: bool = False,
                 **overrides: Any):
    """openstack.config's CloudRegion for cloud `name` of clouds.yaml at `path` (secure.yaml and
    clouds-public.yaml beside it, plus openstack.config's usual places for those two), or, without a
    path, for the options given alone. The process environment is not read: ours comes through the
    settings. validate=True loads the auth plugin (region.get_auth())."""
    from keystoneauth1 import exceptions as ks_exc
    from keystoneauth1 import loading as ks_loading
    from openstack import config as os_config
    from openstack import exceptions as os_exc
    from openstack.config import loader

    where = f"{path}: clouds.{name}" if path else "openstack auth"
    try:
        if path is None:
            config = os_config.OpenStackConfig(load_yaml_config=False, load_envvars=False)
        else:
            config = os_config.OpenStackConfig(
                config_files=[str(path)], load_envvars=False,
                secure_files=[str(path.with_name("secure.yaml")), *loader.SECURE_FILES],
                vendor_files=[str(path.with_name("clouds-public.yaml")), *loader.VENDOR_FILES])
        region = config.get_one(cloud=name, validate=False, region_name=region_name or "", **overrides)
        if not validate:
            return region
        auth_type = region.config.get("auth_type")
        given = region.config.get("auth") or {}
        missing = [name for name in _required(ks_loading.get_plugin_loader(auth_type))
                   if given.get(name) in (None, "")]
        if missing:  # keystoneauth would fail with a TypeError naming a Python argument
            raise ConfigError(f"{where}: auth_type {auth_type}: missing {', '.join(missing)}")
        return config.get_one(cloud=name, validate=True, region_name=region_name or "", **overrides)
    except os_exc.ConfigException as exc:
        raise ConfigError(f"{where}: {exc}") from None
    except ks_exc.NoMatchingPlugin as exc:
        raise ConfigError(f"{where}: auth_type: {exc}") from None
    except ks_exc.MissingRequiredOptions as exc:
        missing = ", ".join(o.dest for o in exc.options)
        raise ConfigError(f"{where}: auth_type {overrides.get('auth_type') or ''}: missing {missing}"
                          .replace("  ", " ")) from None


def _required(loader) -> list[str]:
    """The options a keystoneauth plugin cannot do without: those its loader marks required and the
    arguments without a default of the plugin class it builds (v3token's `token` is not marked)."""
    import inspect

    names = [o.dest for o in loader.get_options() if o.required]
    plugin = getattr(loader, "plugin_class", None)
    if plugin is not None:
        for name, param in inspect.signature(plugin.__init__).parameters.items():
            if name not in ("self", "auth_url") and param.default is param.empty and \
                    param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY) and name not in names:
                names.append(name)
    return names


def _os_defaults() -> dict[str, Any]:
    from openstack.config import defaults

    return defaults.get_defaults()


def _load_cloud(path: Path, name: str) -> dict | None:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read as YAML: {getattr(exc, 'problem', None) or exc}") from None
    clouds = data.get("clouds") if isinstance(data, dict) else None
    if not isinstance(clouds, dict):
        raise ConfigError(f"{path}: expected a top-level 'clouds:' mapping")
    entry = clouds.get(name)
    if entry is not None and not isinstance(entry, dict):
        raise ConfigError(f"{path}: clouds.{name}: expected a mapping")
    return entry


