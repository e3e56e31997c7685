"""The lifecycle tasks' bodies (`fab prune`, `fab image_diff`, `fab delete_image`): argument checks,
then one call into retention or packages."""
from __future__ import annotations

from typing import Callable

from cislaves import clouds, distros
from cislaves.errors import ConfigError
from cislaves.lifecycle import packages, retention, settings as settings_mod


def prune(config, only: str | None = None, cloud: str | None = None, dry_run: bool = False,
          out: Callable[[str], None] = print) -> list:
    """Retention over the rebake targets (or every distribution of `cloud` when there is no rebake
    section, or when cloud= is given)."""
    section = config.raw.get("rebake") or {}
    keep = 3
    if section:
        rebake = config.section("rebake", settings_mod.Rebake)
        keep = rebake.keep
    if cloud:
        clouds.check_name(cloud)
        targets = [settings_mod.Target(cloud=cloud, distribution=d) for d in distros.names()]
    elif section:
        targets = settings_mod.select(settings_mod.load(config), only)
    else:
        raise ConfigError(f"{config.where}: prune needs cloud=NAME or a rebake section with targets")
    publish_file = None
    if section and section.get("publish"):
        publish_file = config.relative(config.section("rebake", settings_mod.Rebake).publish.file)
    decisions = retention.prune(config, targets, keep, published=retention.published_ids(publish_file),
                                dry_run=dry_run, out=out)
    gone = sum(d.action == "delete" for d in decisions)
    out(f"{gone} image(s) {'would be deleted' if dry_run else 'deleted'}, "
        f"{len(decisions) - gone} kept (keep {keep})")
    return decisions


def image_diff(config, old: str | None, new: str | None) -> list[str]:
    if not old or not new:
        raise ConfigError("image_diff needs two image ids: fab image_diff:OLD,NEW")
    return packages.diff_lines(config.data_dir, old, new)


def delete_image(config, image_id: str | None, cloud: str | None = None, region: str | None = None,
                 force: bool = False, out: Callable[[str], None] = print) -> None:
    if not image_id:
        raise ConfigError("delete_image needs an image id: fab delete_image:ID[,cloud=NAME]")
    cloud = clouds.check_name(cloud or config.defaults.cloud,
                              "argument 'cloud'" if cloud else f"{config.where}: defaults.cloud")
    target = settings_mod.Target(cloud=cloud, distribution=config.defaults.distribution, region=region)
    if region and not settings_mod.region_field(cloud):
        raise ConfigError(f"argument 'region': cloud {cloud!r} has no regions")
    publish_file = None
    section = config.raw.get("rebake") or {}
    if section.get("publish"):
        publish_file = config.relative(config.section("rebake", settings_mod.Rebake).publish.file)
    retention.delete_image(target.session_config(config), cloud, image_id,
                           published=retention.published_ids(publish_file), force=force, out=out)
