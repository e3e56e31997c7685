"""novaclient's bash-completion cache: a run against the fake cloud (key pair and server created, servers,
flavors and key pairs listed, a snapshot, destroy and cleanup: every novaclient list and create the
driver makes) leaves no ~/.novaclient/ in the HOME it ran with."""
from __future__ import annotations

from cislaves.clouds.base import CleanupPolicy, standard_tags
from tests.contract import OWNER, make_spec
from tests.openstack.conftest import NOTHING, leftovers


def test_a_run_leaves_no_novaclient_cache_in_home(make_cloud, fake, debian12, tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))  # novaclient expands ~ from HOME at each call
    monkeypatch.delenv("NOVACLIENT_UUID_CACHE_DIR", raising=False)
    cloud = make_cloud()
    spec = make_spec(cloud, debian12, tmp_path / "keys")
    instance = cloud.launch(spec)
    try:
        assert [i.id for i in cloud.list_instances()] == [instance.id]
        image = cloud.create_image(instance, f"{spec.name}-image", standard_tags(spec.run_id, "debian12", "image",
                                                                                owner=OWNER))
    finally:
        cloud.destroy(instance)
    cloud.delete_image(image)
    assert cloud.cleanup(CleanupPolicy(owner=OWNER)) == []
    assert leftovers(fake) == NOTHING
    # novaclient's lists and creates happened (where its cache files would have been opened) ...
    assert fake.statuses("POST", r"/os-keypairs$") and fake.statuses("POST", r"/servers$")
    assert fake.statuses("GET", r"/servers/detail") and fake.statuses("GET", r"/flavors")
    assert not (home / ".novaclient").exists(), sorted(p.relative_to(home) for p in home.rglob("*"))  # ... no cache
