"""Driver behaviour against the fake cloud: image and flavor choice, key pairs, addresses, networks,
floating IPs, snapshots, microversions and cleanup."""
import stat
from pathlib import Path

import pytest

from cislaves import distros
from cislaves.clouds.base import TAG_RUN, CleanupPolicy, generate_keypair, public_key_of, standard_tags
from cislaves.clouds.openstack import tagging
from cislaves.errors import CloudError, ConfigError
from tests.contract import OWNER, make_spec
from tests.openstack.conftest import NOTHING, leftovers, openstack_env


@pytest.fixture
def launched(cloud, debian12, tmp_path):
    spec = make_spec(cloud, debian12, tmp_path / "keys")
    instance = cloud.launch(spec)
    yield spec, instance
    cloud.destroy(instance)


def image_named(fake, name):
    return next(i["id"] for i in fake.images.values() if i["name"] == name)


def test_base_image_is_the_newest_active_match_across_pages(cloud, fake, debian12):
    image = cloud.base_image(debian12)
    assert image.name == "Debian 12 (Bookworm)"  # newer "broken" one is killed, "old" is older
    assert len(fake.statuses("GET", r"^/image/v2/images\?")) >= 2  # 3 per page: the driver followed `next`


def test_rackspace_uses_its_exact_image_names_and_root(make_cloud, fake):
    env = {"OS_AUTH_URL": fake.url + "/identity/v2.0", "OS_USERNAME": fake.username,
           "OS_PASSWORD": fake.password, "OS_REGION_NAME": fake.region}
    rackspace = make_cloud("rackspace", env=env)
    openstack = make_cloud("openstack")
    trusty, centos = distros.get("ubuntu14.04"), distros.get("centos7")
    assert rackspace.base_image(trusty).name == "Ubuntu 14.04 LTS (Trusty Tahr) (PVHVM)"
    assert openstack.base_image(trusty).name == "Ubuntu 14.04 LTS (Trusty Tahr) (PV)"  # newest of the pattern
    assert rackspace.base_image(centos).name == "CentOS 7 (PVHVM)"
    assert rackspace.cfg.flavor == "general1-2"


def test_image_setting_by_exact_name_or_id(make_cloud, fake, debian12):
    assert make_cloud(image="Debian 12 (Bookworm) old").base_image(debian12).name == "Debian 12 (Bookworm) old"
    image_id = image_named(fake, "CentOS 7 (PVHVM)")
    assert make_cloud(image=image_id).base_image(debian12).id == image_id
    with pytest.raises(CloudError, match="no active image named or with id 'Debian 99'"):
        make_cloud(image="Debian 99").base_image(debian12)
    with pytest.raises(ConfigError, match=r"clouds.openstack.image_pattern: not a valid regular expression"):
        make_cloud(image_pattern="(").base_image(debian12)
    assert make_cloud(image_pattern=r"^Windows").base_image(debian12).name == "Windows Server 2012"


def test_flavor_by_name_or_id_and_unknown_flavor(make_cloud, fake, debian12, tmp_path):
    cloud = make_cloud(flavor="2")
    instance = cloud.launch(make_spec(cloud, debian12, tmp_path))
    cloud.destroy(instance)
    cloud = make_cloud(flavor="m3.huge")
    with pytest.raises(ConfigError, match=r"clouds.openstack.flavor: no flavor named or with id 'm3.huge'.*m1.small"):
        cloud.launch(make_spec(cloud, debian12, tmp_path))
    assert leftovers(fake) == NOTHING


def test_flavor_on_a_later_page_of_novas_list(make_cloud, fake, debian12, tmp_path):
    for n in range(4):  # 6 flavors, 3 a page: novaclient reads one page a call, the driver asks for the next
        fake.flavors[f"x{n}"] = {"id": f"x{n}", "name": f"big-{n}", "ram": 4096, "vcpus": 2, "disk": 40}
    cloud = make_cloud(flavor="big-3")
    instance = cloud.launch(make_spec(cloud, debian12, tmp_path))
    assert fake.servers[instance.id]["flavor"]["id"] == "x3"
    assert fake.statuses("GET", r"/flavors/detail\?marker=x0$") == [200]  # ids sorted: 2, general1-2, x0
    cloud.destroy(instance)
    assert leftovers(fake) == NOTHING


def test_cleanup_reads_every_page_of_key_pairs_from_2_35(make_cloud, fake, debian12, tmp_path):
    cloud = make_cloud(compute_api_version="2.37")  # Nova pages key pairs from 2.35
    dead = make_spec(cloud, debian12, tmp_path)
    names = [tagging.key_pair_name(dead.tags) for _ in range(5)]
    for name in names:
        fake.add_keypair(name, "ssh-ed25519 AAAA leaked")
    removed = cloud.cleanup(CleanupPolicy(owner=OWNER))
    assert sorted(line.split(" (")[0] for line in removed) == sorted(f"key pair {n}" for n in names)
    assert len(fake.statuses("GET", r"/os-keypairs\?marker=")) == 2  # pages 2 and 3 (empty)
    assert leftovers(fake) == NOTHING


def test_launch_tags_user_address_and_generated_key(cloud, fake, launched):
    spec, instance = launched
    server = fake.servers[instance.id]
    assert server["metadata"] == spec.tags
    assert instance.user == "debian"  # the distribution's OpenStack user
    assert instance.address.startswith("192.0.2.")  # the public network's address
    key = Path(instance.key_file)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert fake.keypairs[server["key_name"]]["public_key"].split()[:2] == public_key_of(key).split()[:2]
    cloud.destroy(instance)
    assert not key.exists() and leftovers(fake) == NOTHING


def test_address_from_access_ipv4_or_a_named_network(make_cloud, fake, debian12, tmp_path):
    fake.access_ipv4 = True
    for section, expect in (({}, "accessIPv4"), ({"address_network": "private"}, "private")):
        cloud = make_cloud(**section)
        instance = cloud.launch(make_spec(cloud, debian12, tmp_path))
        view = fake.server_view(fake.servers[instance.id])
        want = view["accessIPv4"] if expect == "accessIPv4" else view["addresses"]["private"][0]["addr"]
        assert instance.address == want
        cloud.destroy(instance)


def test_network_choice_puts_the_server_only_there(make_cloud, fake, debian12, tmp_path):
    cloud = make_cloud(networks=["private"])
    instance = cloud.launch(make_spec(cloud, debian12, tmp_path))
    assert list(fake.server_view(fake.servers[instance.id])["addresses"]) == ["private"]
    cloud.destroy(instance)
    with pytest.raises(ConfigError, match="clouds.openstack.networks: no network named or with id 'nope'"):
        make_cloud(networks=["nope"]).launch(make_spec(cloud, debian12, tmp_path))
    assert leftovers(fake) == NOTHING


def test_floating_ip_is_the_address_and_is_released(make_cloud, fake, debian12, tmp_path):
    cloud = make_cloud(floating_network="public")
    spec = make_spec(cloud, debian12, tmp_path)
    instance = cloud.launch(spec)
    fip = fake.floatingips[instance.extra["floating_ip_id"]]
    assert instance.address == fip["floating_ip_address"]
    assert fip["description"].startswith(f"cislaves run {spec.run_id} owner {spec.tags['cislaves:owner']} expires ")
    assert cloud.refresh(instance).address == fip["floating_ip_address"]
    cloud.destroy(instance)
    assert leftovers(fake) == NOTHING


def test_address_override_for_ssh(make_cloud, debian12, tmp_path):
    cloud = make_cloud(ssh_host="127.0.0.1", ssh_port=2222, ssh_username="root")
    instance = cloud.launch(make_spec(cloud, debian12, tmp_path))
    assert (instance.address, instance.port, instance.user) == ("127.0.0.1", 2222, "root")
    cloud.destroy(instance)


def test_named_key_pair_is_used_and_kept(make_cloud, fake, debian12, tmp_path):
    key = tmp_path / "id_mine"
    fake.add_keypair("mine", generate_keypair(key))
    env = {**openstack_env(fake), "RACKSPACE_KEY_PAIR": "mine", "RACKSPACE_KEY_FILENAME": str(key)}
    cloud = make_cloud(env=env)
    instance = cloud.launch(make_spec(cloud, debian12, tmp_path))
    assert fake.servers[instance.id]["key_name"] == "mine" and instance.key_file == str(key)
    cloud.destroy(instance)
    assert "mine" in fake.keypairs and key.exists() and leftovers(fake) == NOTHING


def test_key_pair_settings_errors(make_cloud, fake, debian12, tmp_path):
    key = tmp_path / "id_mine"
    generate_keypair(key)
    with pytest.raises(ConfigError, match=r"key_pair \(RACKSPACE_KEY_PAIR\): no key pair named 'ghost'"):
        make_cloud(key_pair="ghost", key_filename=str(key)).launch(make_spec(make_cloud(), debian12, tmp_path))
    with pytest.raises(ConfigError, match=r"ssh_key_pair 'ghost' needs ssh_private_key_file"):
        make_cloud(key_pair="ghost").launch(make_spec(make_cloud(), debian12, tmp_path))
    assert leftovers(fake) == NOTHING


def test_key_file_alone_is_uploaded_as_a_temporary_key_pair(make_cloud, fake, debian12, tmp_path):
    key = tmp_path / "id_mine"
    public = generate_keypair(key)
    cloud = make_cloud(key_filename=str(key))
    instance = cloud.launch(make_spec(cloud, debian12, tmp_path))
    name = fake.servers[instance.id]["key_name"]
    assert name.startswith("cislaves-") and fake.keypairs[name]["public_key"].split() == public.split()[:2]
    cloud.destroy(instance)
    assert key.exists() and leftovers(fake) == NOTHING


def test_create_image_polls_glance_until_active(cloud, fake, launched):
    spec, instance = launched
    tags = standard_tags(spec.run_id, "debian12", "image")
    image = cloud.create_image(instance, f"cislaves-debian12-{spec.run_id}", tags)
    held = fake.images[image.id]
    assert held["status"] == "active" and held[TAG_RUN] == spec.run_id and held["instance_uuid"] == instance.id
    assert len(fake.statuses("GET", rf"/image/v2/images/{image.id}$")) > fake.image_polls  # saw queued, saving
    assert cloud.image_lines([image]) == [f"finished image: {image.id}"]
    assert image.distribution == "debian12" and image.state == "available"


@pytest.mark.parametrize("version", ["2.37", "2.45"])
def test_newer_microversions(make_cloud, fake, debian12, tmp_path, version):
    cloud = make_cloud(compute_api_version=version)
    spec = make_spec(cloud, debian12, tmp_path)
    instance = cloud.launch(spec)  # 2.37+ needs nics="auto"
    image = cloud.create_image(instance, "snap", standard_tags(spec.run_id, "debian12", "image"))  # 2.45: id in body
    assert fake.images[image.id]["status"] == "active"
    cloud.delete_image(image)
    cloud.destroy(instance)
    assert leftovers(fake) == NOTHING


def test_cleanup_removes_leaked_key_pairs_floating_ips_servers_and_unfinished_images(make_cloud, fake, debian12,
                                                                                    tmp_path):
    cloud = make_cloud(floating_network="public")
    old, kept = (make_spec(cloud, debian12, tmp_path / n) for n in ("a", "b"))
    leaked, alive = cloud.launch(old), cloud.launch(kept)
    orphan = tagging.key_pair_name(old.tags)  # a key pair whose server never came
    fake.add_keypair(orphan, "ssh-ed25519 AAAA leaked")
    fake.add_keypair(f"cislaves-{old.run_id}-abcdef", "ssh-ed25519 AAAA before owners")  # no owner in the name
    fake.add_keypair("someone-elses", "ssh-ed25519 AAAA other")
    saving = fake.add_image("half-made", status="queued", **old.tags)  # a snapshot cut short by a crash
    fake.images[saving]["_end"] = "queued"
    done = fake.add_image("baked", **old.tags)  # a finished image is retention's business, not cleanup's
    removed = cloud.cleanup(CleanupPolicy(owner=OWNER, keep_run_ids={kept.run_id}))
    kinds = [line.split(" (")[0] for line in removed]
    assert kinds[0] == f"instance {leaked.id}", removed
    assert kinds[1].startswith("floating IP 198.51.100.") and leaked.extra["floating_ip_id"] in removed[1]
    assert kinds[2:] == [f"key pair {leaked.extra['key_pair']}", f"key pair {orphan}", f"image {saving}"], removed
    assert f"cislaves-{old.run_id}-abcdef" in fake.keypairs and "someone-elses" in fake.keypairs
    assert done in fake.images and cloud.refresh(alive).state == "running"
    assert cloud.cleanup(CleanupPolicy(owner=OWNER, keep_run_ids={kept.run_id}, all_owners=True)) == [
        f"key pair cislaves-{old.run_id}-abcdef (all owners)"]
    cloud.destroy(alive)
    del fake.keypairs["someone-elses"], fake.images[done]
    assert leftovers(fake) == NOTHING


def test_destroy_from_a_listing_removes_the_key_pair_and_floating_ip(make_cloud, fake, debian12, tmp_path):
    cloud = make_cloud(floating_network="public")
    spec = make_spec(cloud, debian12, tmp_path)
    cloud.launch(spec)
    [listed] = cloud.list_instances({TAG_RUN: spec.run_id})  # what a later run knows: no extra
    cloud.destroy(listed)
    assert leftovers(fake) == NOTHING


def test_list_instances_reads_the_tags(cloud, launched):
    spec, instance = launched
    [listed] = cloud.list_instances({TAG_RUN: spec.run_id})
    assert (listed.id, listed.distribution, listed.user, listed.run_id) == (instance.id, "debian12", "debian",
                                                                             spec.run_id)
    assert listed.tags == spec.tags


def test_an_image_id_stays_inside_the_image_path(cloud):
    with pytest.raises(CloudError, match=r"no image with id '\.\./\.\./compute/v2.1/servers'"):
        cloud.get_image("../../compute/v2.1/servers")


def test_cleanup_where_the_cloud_has_no_floating_ips(make_rax, rax, debian12, tmp_path):
    cloud = make_rax("rackspace")
    instance = cloud.launch(make_spec(cloud, debian12, tmp_path))
    removed = cloud.cleanup(CleanupPolicy(owner=OWNER))
    assert len(removed) == 2 and instance.id in removed[0] and "key pair" in removed[1]
    assert rax.statuses("GET", "floatingips") == []  # the extension list says there are none: no 404 guessing
    assert leftovers(rax) == NOTHING
