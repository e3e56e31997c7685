"""The contract every cloud driver passes. A driver's test module subclasses CloudContract and
provides two fixtures:

    cloud         a configured driver instance talking to its stand-in (moto, fake server, local host)
    distribution  a cislaves.distros.Distribution whose base image the stand-in holds

Nothing here knows a particular cloud: it drives the interface of cislaves.clouds.base.Cloud only.
"""
from __future__ import annotations

import pytest

from cislaves.clouds.base import (TAG_OWNER, TAG_RUN, CleanupPolicy, Image, Instance, LaunchSpec,
                                  new_run_id, standard_tags)
from cislaves.errors import CloudError, NotSupported

OWNER = "ocontract0001"  # this test host's owner id
OTHER = "ocontract0002"  # another host sharing the account


def make_spec(cloud, distribution, key_dir, role="bake", owner=OWNER, ttl_hours=24) -> LaunchSpec:
    run_id = new_run_id()
    name = f"cislaves-contract-{run_id}"
    return LaunchSpec(distribution=distribution, image=cloud.base_image(distribution), run_id=run_id,
                      name=name, tags=standard_tags(run_id, distribution.name, role, name=name, owner=owner,
                                                    ttl_hours=ttl_hours),
                      key_dir=key_dir, role=role)


def policy(keep=(), owner=OWNER, all_owners=False) -> CleanupPolicy:
    return CleanupPolicy(owner=owner, keep_run_ids=set(keep), all_owners=all_owners)


class CloudContract:
    @pytest.fixture
    def launched(self, cloud, distribution, tmp_path):
        spec = make_spec(cloud, distribution, tmp_path / "keys")
        instance = cloud.launch(spec)
        try:
            yield spec, instance
        finally:
            cloud.destroy(instance)

    def test_base_image_is_an_available_image_of_this_cloud(self, cloud, distribution):
        image = cloud.base_image(distribution)
        assert isinstance(image, Image)
        assert image.id and image.cloud == cloud.name
        assert image.state == "available"

    def test_unknown_image_id_is_a_cloud_error(self, cloud):
        with pytest.raises(CloudError):
            cloud.get_image("no-such-image-0000")

    def test_launch_gives_a_running_tagged_instance_with_an_address(self, cloud, launched):
        spec, instance = launched
        assert isinstance(instance, Instance)
        assert instance.state == "running"
        assert instance.address
        assert instance.run_id == spec.run_id
        assert instance.tags.get(TAG_RUN) == spec.run_id
        assert instance.tags.get(TAG_OWNER) == OWNER
        assert cloud.refresh(instance).state == "running"
        listed = cloud.list_instances({TAG_RUN: spec.run_id})
        assert [i.id for i in listed] == [instance.id]

    def test_stop_then_start(self, cloud, launched):
        _, instance = launched
        if not cloud.capabilities.stop_start:  # declared (e.g. a static host): refused, and harmless
            for operation in (cloud.stop, cloud.start):
                with pytest.raises(NotSupported):
                    operation(instance)
            assert cloud.refresh(instance).state == "running"
            return
        stopped = cloud.stop(instance)
        assert stopped.state == "stopped"
        assert cloud.refresh(instance).state == "stopped"
        assert cloud.stop(stopped).state == "stopped"  # twice is harmless
        started = cloud.start(stopped)
        assert started.state == "running"
        assert started.address

    def test_create_list_and_delete_image(self, cloud, launched):
        spec, instance = launched
        tags = standard_tags(spec.run_id, spec.distribution.name, "image")
        if not cloud.capabilities.images:  # declared: refused, nothing made, the instance untouched
            with pytest.raises(NotSupported):
                cloud.create_image(instance, f"cislaves-contract-{spec.run_id}", tags)
            assert cloud.list_images({TAG_RUN: spec.run_id}) == []
            assert cloud.refresh(instance).state == "running"
            return
        image = cloud.create_image(instance, f"cislaves-contract-{spec.run_id}", tags)
        try:
            assert image.state == "available"
            assert image.tags.get(TAG_RUN) == spec.run_id or image.run_id == spec.run_id
            assert cloud.get_image(image.id).id == image.id
            assert image.id in [i.id for i in cloud.list_images({TAG_RUN: spec.run_id})]
        finally:
            cloud.delete_image(image)
        cloud.delete_image(image)  # twice is harmless
        assert image.id not in [i.id for i in cloud.list_images({TAG_RUN: spec.run_id})]

    def test_destroy_removes_the_instance_and_is_idempotent(self, cloud, distribution, tmp_path):
        spec = make_spec(cloud, distribution, tmp_path / "keys")
        instance = cloud.launch(spec)
        cloud.destroy(instance)
        assert cloud.refresh(instance).state == "terminated"
        assert cloud.list_instances({TAG_RUN: spec.run_id}) == []
        cloud.destroy(instance)  # twice is harmless

    def test_cleanup_removes_instances_of_runs_not_kept(self, cloud, distribution, tmp_path):
        spec = make_spec(cloud, distribution, tmp_path / "keys")
        instance = cloud.launch(spec)
        try:
            removed = cloud.cleanup(policy())
            assert any(instance.id in line for line in removed), removed
            assert cloud.list_instances({TAG_RUN: spec.run_id}) == []
        finally:
            cloud.destroy(instance)

    def test_cleanup_keeps_runs_it_is_told_to_keep(self, cloud, launched):
        spec, instance = launched
        cloud.cleanup(policy(keep={spec.run_id}))
        assert cloud.refresh(instance).state == "running"

    def test_cleanup_leaves_another_owners_live_resources_alone(self, cloud, distribution, tmp_path):
        spec = make_spec(cloud, distribution, tmp_path / "keys", owner=OTHER)
        instance = cloud.launch(spec)
        try:
            removed = cloud.cleanup(policy())  # this host knows nothing of the other host's run
            assert not any(instance.id in line for line in removed), removed
            assert cloud.refresh(instance).state == "running"
            removed = cloud.cleanup(policy(all_owners=True))  # the explicit wider sweep
            assert any(instance.id in line for line in removed), removed
            assert cloud.list_instances({TAG_RUN: spec.run_id}) == []
        finally:
            cloud.destroy(instance)

    def test_cleanup_removes_expired_resources_whoever_owns_them(self, cloud, distribution, tmp_path):
        spec = make_spec(cloud, distribution, tmp_path / "keys", owner=OTHER, ttl_hours=-1)
        instance = cloud.launch(spec)
        try:
            removed = cloud.cleanup(policy())
            assert any(instance.id in line for line in removed), removed
            assert cloud.list_instances({TAG_RUN: spec.run_id}) == []
        finally:
            cloud.destroy(instance)
