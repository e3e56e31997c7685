"""The OpenStack and Rackspace APIs as real clouds answer (issue 18), each through `fab`: versioned
catalog URLs, Glance `next` links, createImage without Location, one region for every service,
floating IPs on the routed port, Nova's server pages, 409 NetworkAmbiguous, Retry-After dates,
and the SSH address rules (accessIPv4, address_network)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from cislaves.clouds.base import TAG_RUN, standard_tags
from cislaves.clouds.openstack.api import retry_after
from cislaves.errors import CloudError
from tests.cli import fab
from tests.contract import make_spec
from tests.openstack.conftest import NOTHING, FakeOpenStack, leftovers, openstack_env, rackspace_env, seeded

UNSET = {name: "" for name in ("OS_CLOUD", "OS_PROJECT_ID", "OS_TENANT_NAME", "OS_TENANT_ID", "OS_REGION_NAME",
                               "RACKSPACE_API_KEY", "OS_APPLICATION_CREDENTIAL_ID", "OS_COMPUTE_API_VERSION",
                               "RACKSPACE_KEY_PAIR", "RACKSPACE_KEY_FILENAME")}


class Fab:
    """`fab` against one fake cloud with one data dir (so several calls act as one host)."""

    def __init__(self, fake, tmp_path: Path, cloud: str, env: dict[str, str], **section):
        self.fake, self.cloud, self.data_dir = fake, cloud, tmp_path / "data"
        config = {"data_dir": str(self.data_dir),
                  "clouds": {cloud: {"launch_timeout": 30, "image_timeout": 30, "destroy_timeout": 30,
                                     "api_deadline": 10, **section}}}
        tmp_path.mkdir(parents=True, exist_ok=True)
        self.config_file = tmp_path / "cislaves.yaml"
        self.config_file.write_text(yaml.safe_dump(config))
        self.env = {**UNSET, **env, "CISLAVES_CONFIG": str(self.config_file)}

    def __call__(self, task: str, ok: bool = True, **args) -> str:
        argv = ",".join([f"cloud={self.cloud}", *(f"{k}={v}" for k, v in args.items())])
        done = fab(f"{task}:{argv}", env=self.env, timeout=300)
        output = done.stdout + done.stderr
        assert "Traceback" not in output, output
        assert (done.returncode == 0) == ok, output
        return output

    def owner(self) -> str:
        return (self.data_dir / "owner").read_text().strip()


@pytest.fixture
def rax_fab(rax, tmp_path):
    return Fab(rax, tmp_path, "rackspace", rackspace_env(rax))


@pytest.fixture
def os_fab(fake, tmp_path):
    return Fab(fake, tmp_path, "openstack", openstack_env(fake))


# -- Rackspace: versioned catalog URLs, Glance pages, one region, createImage without Location --------
def test_fab_on_rackspace_uses_versioned_catalog_urls_and_follows_next_links(rax, rax_fab):
    rax.add_image("cislaves-debian12-old", **standard_tags("20260101000000-aaaaaa", "debian12", "image"))
    out = rax_fab("images")
    assert re.search(r"^\S+\s+rackspace\s+debian12\s", out, re.M), out  # the tool's image, among Rackspace's
    paths = [p for _, p, _ in rax.requests]
    assert not [p for p in paths if "/v2/v2/" in p or "/v2.0/v2.0/" in p], paths
    assert rax.links_given and all(f"/image{link}" in paths for link in rax.links_given)  # as given
    assert set(rax.regions_seen) == {"DFW"}


def test_fab_create_image_on_rackspace_without_location(rax, rax_fab):
    base = next(i["id"] for i in rax.images.values() if i["name"] == "Debian 12 (Bookworm) old")
    up = rax_fab("up", distribution="debian12", image=base)  # an explicit image id, read from Glance v2
    made = rax_fab("create_image")
    [image_id] = re.findall(r"^finished image: ([0-9a-f-]{36})$", made, re.M)
    assert rax.images[image_id]["status"] == "active" and rax.images[image_id]["instance_uuid"] in up
    assert rax.images[image_id]["base_image_ref"] == base
    assert rax.image_location is False  # the fake answered createImage without a Location header
    rax_fab("destroy")
    assert leftovers(rax) == {**NOTHING, "images": [rax.images[image_id]["name"]]}
    rax_fab("cleanup")  # no floating IPs on Rackspace: read from its extensions, no 404 taken for "none"
    assert rax.statuses("GET", "floatingips") == [] and image_id in rax.images
    assert set(rax.regions_seen) == {"DFW"}


def test_create_image_whose_answer_is_lost_makes_one_image(make_rax, rax, debian12, tmp_path):
    cloud = make_rax("rackspace")
    spec = make_spec(cloud, debian12, tmp_path)
    instance = cloud.launch(spec)
    rax.lose_answer("POST", r"/action$", 503)  # Nova made the image, the client heard a 503
    image = cloud.create_image(instance, "snap-lost", standard_tags(spec.run_id, "debian12", "image"))
    assert [i["id"] for i in rax.images.values() if i["name"] == "snap-lost"] == [image.id]
    assert rax.statuses("POST", r"/action$") == [503]  # found it instead of asking again
    cloud.delete_image(image)
    cloud.destroy(instance)
    assert leftovers(rax) == NOTHING


def test_ctrl_c_during_create_image_without_location_leaves_no_image(make_rax, rax, debian12, tmp_path):
    cloud = make_rax("rackspace")
    spec = make_spec(cloud, debian12, tmp_path)
    instance = cloud.launch(spec)
    rax.interrupt_on("POST", r"/action$")  # the id never reaches the client
    with pytest.raises(KeyboardInterrupt):
        cloud.create_image(instance, "snap-cut", standard_tags(spec.run_id, "debian12", "image"))
    assert not [i for i in rax.images.values() if i["name"] == "snap-cut"]
    cloud.destroy(instance)
    assert leftovers(rax) == NOTHING


def test_one_region_for_every_service_from_the_token_or_the_setting(rax, rax_fab):
    rax_fab.env["OS_REGION_NAME"] = "IAD"  # listed last for compute, first for image... each its own order
    out = rax_fab("up", distribution="debian12")
    assert set(rax.regions_seen) == {"IAD"}, out
    state = (rax_fab.data_dir / "state.json").read_text()
    assert '"region": "IAD"' in state
    rax_fab("destroy")
    assert leftovers(rax) == NOTHING


def test_several_regions_and_no_setting_is_one_line_naming_it(tmp_path):
    for fake in seeded(FakeOpenStack(regions=["RegionOne", "RegionTwo"])):
        env = {**openstack_env(fake), "OS_REGION_NAME": ""}
        out = Fab(fake, tmp_path, "openstack", env)("up", ok=False, distribution="debian12")
        assert "clouds.openstack.region_name (OS_REGION_NAME): not set, and the service catalog has several " \
               "regions (RegionOne, RegionTwo)" in out
        assert fake.servers == {} and fake.regions_seen == []


# -- networks: 409 NetworkAmbiguous, floating IPs on the routed port ----------------------------------
def test_two_networks_and_none_configured_names_the_setting(fake, os_fab):
    fake.add_network("isolated")  # no router: the devstack `private` and this one are both candidates
    out = os_fab("up", ok=False, distribution="debian12")
    line = next(line for line in out.splitlines() if "HTTP 409" in line)
    assert "Multiple possible networks found" in line and "set clouds.openstack.networks" in line
    assert "(the project has: isolated, private)" in line
    assert leftovers(fake) == NOTHING


def test_floating_ip_goes_on_the_port_of_the_routed_network(fake, tmp_path):
    fake.add_network("isolated")
    run = Fab(fake, tmp_path, "openstack", openstack_env(fake), networks=["isolated", "private"],
              floating_network="public")
    out = run("up", distribution="debian12")
    [fip] = fake.floatingips.values()
    port = fake.ports[fip["port_id"]]
    assert fake.networks[port["network_id"]]["name"] == "private"  # the first port (isolated) has no router
    assert f"@{fip['floating_ip_address']}:22" in out
    run("destroy")
    assert leftovers(fake) == NOTHING


def test_network_ambiguity_keeps_novas_status_and_code(make_cloud, fake, debian12, tmp_path):
    fake.add_network("isolated")
    cloud = make_cloud()
    with pytest.raises(CloudError) as exc:
        cloud.launch(make_spec(cloud, debian12, tmp_path))
    assert (exc.value.status, exc.value.code) == (409, "conflictingRequest")
    assert leftovers(fake) == NOTHING


def test_nat_destination_picks_the_port_and_neutron_refusal_is_kept_as_data(make_cloud, fake, debian12, tmp_path):
    fake.add_network("isolated")
    cloud = make_cloud(networks=["isolated", "private"], floating_network="public", nat_destination="isolated")
    with pytest.raises(CloudError) as exc:
        cloud.launch(make_spec(cloud, debian12, tmp_path))
    assert exc.value.status == 404 and exc.value.code == "ExternalGatewayForFloatingIPNotFound"
    assert leftovers(fake) == NOTHING


# -- Nova's pages ---------------------------------------------------------------------------------------
def test_fab_cleanup_reads_every_page_of_servers(make_cloud, fake, os_fab, debian12, tmp_path):
    os_fab("status")  # makes the data dir's owner id
    cloud = make_cloud()
    dead = [cloud.launch(make_spec(cloud, debian12, tmp_path / str(n), owner=os_fab.owner())) for n in range(5)]
    other = cloud.launch(make_spec(cloud, debian12, tmp_path / "o", owner="oanotherhost1"))
    out = os_fab("cleanup")
    assert all(f"instance {i.id}" in out for i in dead), out  # 6 servers, 3 a page: two pages and an empty one
    assert other.id in fake.servers and f"instance {other.id}" not in out
    assert len([p for m, p, _ in fake.requests if m == "GET" and "/servers/detail" in p and "marker=" in p]) >= 2
    cloud.destroy(other)
    assert leftovers(fake) == NOTHING


# -- Retry-After as an HTTP date ------------------------------------------------------------------------
def test_retry_after_http_date_is_read():
    assert retry_after("Wed, 02 Dec 2026 13:00:04 GMT", now=1796216400.0) == pytest.approx(4.0)
    assert retry_after("7") == 7.0 and retry_after("soon") == 0.0 and retry_after(None) == 0.0


def test_fab_waits_as_a_retry_after_date_says(fake, os_fab):
    fake.fail_next("GET", r"^/image/v2/images$", 429, retry_at=4)
    out = os_fab("images")
    [wait] = [float(w) for w in re.findall(r"HTTP 429: injected fault; retrying in (\d+\.\d)s", out)]
    assert 2.5 <= wait <= 4.5, out  # the date's whole seconds, not the 0.5 s first backoff
    assert fake.statuses("GET", r"^/image/v2/images")[:2] == [429, 200]


@pytest.mark.parametrize("status, header", [(429, {"retry_at": 4}), (503, {"retry_after": "4"})])
def test_fab_waits_as_novas_retry_after_says(fake, os_fab, status, header):
    # novaclient reads Retry-After as whole seconds on 413/429 only: the answer kept on its exception says it
    fake.fail_next("GET", r"/compute/v2\.1/servers/detail$", status, **header)
    out = os_fab("cleanup")
    [wait] = [float(w) for w in re.findall(rf"HTTP {status}: injected fault; retrying in (\d+\.\d)s", out)]
    assert 2.5 <= wait <= 4.5, out  # not the 0.5 s first backoff
    assert fake.statuses("GET", r"/servers/detail$")[:2] == [status, 200]


# -- the SSH address: README's order, and a missing address_network named --------------------------------
def test_address_network_wins_over_access_ipv4_and_a_missing_one_is_named(fake, tmp_path):
    fake.access_ipv4 = True
    out = Fab(fake, tmp_path / "a", "openstack", openstack_env(fake), address_network="private")(
        "up", distribution="debian12")
    [server] = fake.servers.values()
    private = fake.server_view(server)["addresses"]["private"][0]["addr"]
    assert f"@{private}:22" in out and server["_access_ipv4"] not in out
    Fab(fake, tmp_path / "a", "openstack", openstack_env(fake))("destroy")
    out = Fab(fake, tmp_path / "b", "openstack", openstack_env(fake), address_network="storage")(
        "up", ok=False, distribution="debian12")
    assert "has no IPv4 address on network 'storage' (clouds.openstack.address_network); its networks: private" \
        in out
    assert leftovers(fake) == NOTHING


def test_listing_keeps_a_server_without_the_address_network(make_cloud, fake, debian12, tmp_path):
    spec = make_spec(make_cloud(), debian12, tmp_path)
    instance = make_cloud().launch(spec)
    [listed] = make_cloud(address_network="storage").list_instances({TAG_RUN: spec.run_id})
    assert listed.id == instance.id and listed.address is None
    make_cloud().destroy(instance)
