"""A manifest of the earlier shape through the real command line: `fab delete_image` reads it, deletes
one image on moto's EC2 and writes the manifest back in Packer's shape with the other image's record
and marks kept."""
from __future__ import annotations

import json

from cislaves import clouds, config as config_mod, distros
from cislaves.records import LaunchSpec, new_run_id, standard_tags
from cislaves.state import State
from tests.cli import fab
from tests.lifecycle.conftest import fab_env, segredos_repo, write_config

PATH = "env.default.jenkins.clouds.images.{cloud_key}.{region}.{distribution}"


def test_delete_image_converts_an_old_manifest_to_packers_shape(tmp_path, moto_url, ec2):
    folder = tmp_path / "segredos"
    segredos_repo(folder)
    path = write_config(folder, moto_url=moto_url, rebake={
        "targets": [{"cloud": "ec2", "distribution": "debian12", "region": "us-west-2"}], "keep": 2,
        "publish": {"file": "ci-platform/all/all.yaml", "path": PATH}})
    config = config_mod.load(path, environ={})
    owner = State(config.data_dir).owner_id()
    cloud = clouds.get("ec2", config)
    debian12 = distros.get("debian12")
    base = cloud.base_image(debian12)
    run_id = new_run_id()
    instance = cloud.launch(LaunchSpec(distribution=debian12, image=base, run_id=run_id, name=f"t-{run_id}",
                                       tags=standard_tags(run_id, "debian12", "instance", owner=owner),
                                       key_dir=tmp_path / "keys"))
    try:
        made = []
        for label in ("old", "kept"):
            image_run = new_run_id()
            made.append(cloud.create_image(instance, f"cislaves-debian12-{label}-{image_run}",
                                           standard_tags(image_run, "debian12", "image", owner=owner)))
    finally:
        cloud.destroy(instance)
        cloud.close()
    old, kept = made
    config.manifest.parent.mkdir(parents=True, exist_ok=True)
    config.manifest.write_text(json.dumps({"builds": [
        {"name": i.name, "cloud": "ec2", "region": i.region, "distribution": "debian12", "artifact_id": i.id,
         "build_time": 1764670000 + n, "created": i.created, "run_id": i.run_id, "source_image": base.id,
         "copy_of": None, "validated": True} for n, i in enumerate(made)], "last_run_uuid": kept.run_id}))

    result = fab(f"delete_image:{old.id},cloud=ec2", env=fab_env(path), timeout=120)
    assert result.returncode == 0, result.stderr
    data = json.loads(config.manifest.read_text())
    (build,) = data["builds"]
    assert build["artifact_id"] == f"{kept.region}:{kept.id}" and build["builder_type"] == "cislaves-ec2"
    assert build["packer_run_uuid"] == kept.run_id and build["build_time"] == 1764670001
    assert build["custom_data"]["validated"] == "true" and build["custom_data"]["source_image"] == base.id
    assert data["last_run_uuid"] == kept.run_id
    assert not ec2("us-west-2").describe_images(Owners=["self"], ImageIds=[old.id])["Images"]
