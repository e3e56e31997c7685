"""A manifest of the earlier shape through the real command line: `fab delete_image` reads it, deletes
one image on moto's EC2 and writes the manifest back in Packer's shape with the other image's record
and marks kept."""
from __future__ import annotations

import json

from tests.cli import fab
from tests.lifecycle.conftest import fab_env
from tests.lifecycle.driver_images import MOTO_REBAKE, DriverImages


def test_delete_image_converts_an_old_manifest_to_packers_shape(tmp_path, moto_url, ec2):
    images = DriverImages(tmp_path, moto_url=moto_url, rebake=MOTO_REBAKE)
    path, config, base = images.path, images.config, images.base
    try:
        instance = images.launch()
        made = [images.image(instance, label) for label in ("old", "kept")]
    finally:
        images.close()
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
