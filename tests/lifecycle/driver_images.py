"""Images made through a cloud's driver as bakes make them (an instance of the base image, no SSH needed),
for the retention and manifest tests, under a config written by the lifecycle tests' write_config.
MOTO_REBAKE is the rebake section of the moto tests: 2 debian12 images kept in us-west-2, published at
PATH in the segredos repository."""
from __future__ import annotations

from pathlib import Path

from cislaves import clouds, config as config_mod, distros
from cislaves.records import LaunchSpec, new_run_id, standard_tags
from cislaves.state import State
from tests.lifecycle.conftest import segredos_repo, write_config

PATH = "env.default.jenkins.clouds.images.{cloud_key}.{region}.{distribution}"
MOTO_REBAKE = {"targets": [{"cloud": "ec2", "distribution": "debian12", "region": "us-west-2"}], "keep": 2,
               "publish": {"file": "ci-platform/all/all.yaml", "path": PATH}}


class DriverImages:
    """The config (`path`, `config`) in <tmp_path>/segredos (a segredos repository with its published
    file, `published_file`), the `cloud`'s driver and the debian12 base image; `close()` destroys the
    instances launched here that are still there and closes the driver."""

    def __init__(self, tmp_path: Path, cloud: str = "ec2", **settings):
        folder = tmp_path / "segredos"
        self.published_file = segredos_repo(folder)
        self.path = write_config(folder, **settings)  # write_config's keywords (moto_url, rebake, cache_dir...)
        self.config = config_mod.load(self.path, environ={})
        self.owner = State(self.config.data_dir).owner_id()
        self.key_dir = tmp_path / "keys"
        self.debian12 = distros.get("debian12")
        self.cloud = clouds.get(cloud, self.config)
        try:
            self.base = self.cloud.base_image(self.debian12)
        except BaseException:
            self.cloud.close()
            raise
        self.instances = []

    def launch(self, image=None):
        """An instance of `image` (default: the base image), tagged as a bake's."""
        run_id = new_run_id()
        instance = self.cloud.launch(LaunchSpec(
            distribution=self.debian12, image=image or self.base, run_id=run_id, name=f"t-{run_id}",
            tags=standard_tags(run_id, "debian12", "instance", owner=self.owner), key_dir=self.key_dir))
        self.instances.append(instance)
        return instance

    def image(self, source, label: str | None = None, **tags):
        """An image of instance `source` named cislaves-debian12[-<label>]-<run id>, with the standard
        tags (`tags`: standard_tags' keywords, owner defaulting to this data dir's)."""
        run_id = new_run_id()
        name = "-".join(["cislaves-debian12", *([label] if label else []), run_id])
        return self.cloud.create_image(source, name, standard_tags(run_id, "debian12", "image",
                                                                   **{"owner": self.owner, **tags}))

    def destroy(self, instance) -> None:
        self.cloud.destroy(instance)
        self.instances.remove(instance)

    def close(self) -> None:
        try:
            while self.instances:
                self.destroy(self.instances[-1])
        finally:
            self.instances = []
            self.cloud.close()
