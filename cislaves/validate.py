"""`cislaves validate`: the whole configuration checked without creating anything.

Every cloud section through its driver's Settings model and the presence of its credentials (not
their validity: no cloud is asked to authenticate), the gerrit and ci sections with ci.jobs, and the
rebake section. Every problem is one line; the command exits 2 when there is any (cislaves.exitcodes).
"""
from __future__ import annotations

import logging
from typing import Callable

from cislaves import clouds, distros
from cislaves.errors import CislavesError, ConfigError

log = logging.getLogger(__name__)


def run(config, out: Callable[[str], None] = print) -> list[str]:
    """Check everything; print one `ok:` line per part that passed; return the problems (one line each)."""
    problems: list[str] = []
    log.info("validating %s (data directory %s)", config.where, config.data_dir)

    def part(name: str, check: Callable[[], str | None]) -> None:
        log.debug("checking %s", name)
        try:
            detail = check()
        except CislavesError as exc:
            problems.append(str(exc))
        else:
            out(f"ok: {name}" + (f" ({detail})" if detail else ""))

    part("data directory", lambda: str(config.check_data_dir()))
    part("defaults", lambda: _defaults(config))
    for name in used_clouds(config):
        part(f"clouds.{name}", lambda name=name: _cloud(config, name))
    if config.raw.get("gerrit") or config.raw.get("ci"):
        part("gerrit", lambda: _gerrit(config))
        part("ci", lambda: _ci(config))
    if config.raw.get("rebake"):
        part("rebake", lambda: _rebake(config))
    if config.raw.get("zookeeper"):
        part("zookeeper", lambda: _zookeeper(config))
    return problems


def used_clouds(config) -> list[str]:
    """The clouds to check: every section under `clouds`, and the default cloud."""
    names = list(config.raw.get("clouds") or {})
    default = config.raw.get("defaults", {}).get("cloud") or config.defaults.cloud
    return sorted(set(names) | {default})


def credentials(name: str, settings) -> str:
    """Where the cloud's credentials come from, or a ConfigError when none are set. Reads files and the
    environment only (no network: presence, not validity)."""
    if name == "ec2":
        import botocore.session

        session = botocore.session.Session(profile=getattr(settings, "profile", None) or None)
        session.set_config_variable("metadata_service_num_attempts", 1)
        found = session.get_credentials()
        if found is None:
            raise ConfigError("clouds.ec2: no AWS credentials found (AWS_ACCESS_KEY_ID and "
                              "AWS_SECRET_ACCESS_KEY, a profile in ~/.aws/credentials, or an instance role)")
        return f"credentials: {found.method}"
    if name in ("openstack", "rackspace"):
        from cislaves.clouds.openstack import auth

        plugin = auth.auth_plugin(settings, name)  # ConfigError when the URL or the secret is missing
        return f"credentials: {type(plugin).__name__}"
    if name == "gce":
        from cislaves.clouds.gce import api

        where = f"clouds.{name}.credentials_file (or GOOGLE_APPLICATION_CREDENTIALS)"
        api.load_credentials(settings.credentials_file, where)
        return "credentials: " + (str(settings.credentials_file) if settings.credentials_file
                                  else "application default")
    return ""


def _defaults(config) -> str:
    clouds.check_name(config.defaults.cloud, f"{config.where}: defaults.cloud")
    distros.get(config.defaults.distribution, f"{config.where}: defaults.distribution")
    return f"cloud {config.defaults.cloud}, distribution {config.defaults.distribution}"


def _cloud(config, name: str) -> str:
    clouds.check_name(name, f"{config.where}: clouds")
    cls = clouds.driver_class(name)  # a missing SDK: which extra to install
    settings = config.cloud_settings(name, getattr(cls, "Settings", None), getattr(cls, "ENV", {}))
    return credentials(name, settings)


def _gerrit(config) -> str:
    from cislaves.ci.settings import gerrit_settings

    settings = gerrit_settings(config, need_connection=True)
    return f"{settings.user}@{settings.host}"


def _ci(config) -> str:
    from cislaves.ci import jobsettings
    from cislaves.ci.settings import ci_settings

    ci = ci_settings(config)
    plans = jobsettings.check(config, ci)  # asks each job's cloud for its image: reading, never creating
    return f"{len(ci.triggers)} trigger(s), {len(plans)} job(s)"


def _zookeeper(config) -> str:
    from cislaves.coord.settings import zookeeper_settings  # kazoo is imported only to connect

    settings = zookeeper_settings(config)
    return f"{settings.hosts}, root {settings.root}"


def _rebake(config) -> str:
    from cislaves.lifecycle import settings as rebake_settings

    settings = rebake_settings.load(config)
    for target in settings.targets:
        target_config = target.session_config(config)
        _cloud(target_config, target.cloud)
    return f"{len(settings.targets)} target(s)"
