"""The local cloud's settings, distribution checks, mirror detection, build lock, allocation and
process identity (no machine boots here)."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from cislaves import clouds, config, distros
from cislaves.clouds.local import host
from cislaves.clouds.local import net
from cislaves.clouds.local import tree
from cislaves.clouds.base import CleanupPolicy, wait_for
from cislaves.clouds.local import LocalCloud
from cislaves.errors import CloudError, ConfigError


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("name", ["rocky9", "centos7", "ubuntu14.04"])
def test_distributions_it_cannot_build_give_a_clear_error(tmp_path, name):
    cloud = LocalCloud({"cache_dir": str(tmp_path / "cache")}, tmp_path)
    with pytest.raises(CloudError) as error:
        cloud.base_image(distros.get(name))
    message = str(error.value)
    assert f"cannot build distribution {name!r}" in message
    assert distros.get(name).local_unavailable in message
    assert "debian12" in message
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").iterdir())


def test_settings_come_from_the_config_file_and_environment(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "d"),
                                    "clouds": {"local": {"cache_dir": str(tmp_path / "cache"),
                                                         "subnet": "10.77.0.0/20"}}}))
    environ = {"CISLAVES_LOCAL_MIRROR": "http://mirror.example/debian"}
    cloud = clouds.get("local", config.load(path, environ=environ))
    assert cloud.cache_dir == (tmp_path / "cache").resolve()
    assert cloud.settings.subnet == "10.77.0.0/20"
    assert cloud.mirror_for(distros.get("debian12").images["local"]) == "http://mirror.example/debian"
    default = LocalCloud({}, tmp_path / "d2")
    assert default.cache_dir == (tmp_path / "d2" / "local" / "cache").resolve()


@pytest.mark.parametrize("subnet, expected", [("10.255.0.0/20", "10.255.0.0/16"), ("nonsense", "subnet"),
                                              ("10.1.0.0/31", "at least /30")])
def test_a_bad_subnet_names_the_key(tmp_path, subnet, expected):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"clouds": {"local": {"subnet": subnet}}}))
    with pytest.raises(ConfigError) as error:
        clouds.get("local", config.load(path, environ={}))
    assert "clouds.local.subnet" in str(error.value) and expected in str(error.value)


def test_a_bad_environment_value_names_the_variable():
    with pytest.raises(ConfigError, match="CISLAVES_LOCAL_BOOT_TIMEOUT"):
        clouds.get("local", config.Config({}, None, {"CISLAVES_LOCAL_BOOT_TIMEOUT": "soon"}))


def test_host_mirror_is_read_from_deb822_and_one_line_sources(tmp_path):
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\n# a comment\nURIs: http://mirror.one/debian/\nSuites: bookworm bookworm-updates\n"
        "Components: main\n\nTypes: deb\nURIs: http://security.one/debian-security\n"
        "Suites: bookworm-security\nComponents: main\n")
    assert tree.host_mirror("bookworm", tmp_path) == "http://mirror.one/debian"
    assert tree.host_mirror("trixie", tmp_path) is None
    (tmp_path / "sources.list").write_text("# deb http://old/ bookworm main\n"
                                           "deb [arch=amd64] http://mirror.two/debian trixie main\n")
    assert tree.host_mirror("trixie", tmp_path) == "http://mirror.two/debian"


def test_an_unreachable_mirror_fails_fast_and_leaves_no_build(tmp_path):
    mirror = f"http://127.0.0.1:{closed_port()}/debian"
    cloud = LocalCloud({"cache_dir": str(tmp_path / "cache"), "mirror": mirror}, tmp_path)
    with pytest.raises(CloudError, match="not reachable"):
        cloud.base_image(distros.get("debian12"))
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [".local-debian12-base-bookworm.lock"]


def test_a_second_builder_waits_for_the_first_and_does_not_build_again(tmp_path):
    """While one process holds the build lock, base_image waits on it; when the first build lands,
    the waiter uses it (with an unreachable mirror it would fail if it tried to build)."""
    cache = tmp_path / "cache"
    cloud = LocalCloud({"cache_dir": str(cache), "mirror": f"http://127.0.0.1:{closed_port()}/d"}, tmp_path)
    image_id = "local-debian12-base-bookworm"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
        "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); sys.stdin.read()"),
        str(cache / f".{image_id}.lock")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    cache.mkdir(exist_ok=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        result: dict = {}
        waiter = threading.Thread(target=lambda: result.update(image=cloud.base_image(distros.get("debian12"))))
        waiter.start()
        inode = (cache / f".{image_id}.lock").stat().st_ino
        wait_for(lambda: any("->" in line and f":{inode} " in line
                             for line in Path("/proc/locks").read_text().splitlines()),
                 "the second builder to block on the build lock", 60)
        (cache / image_id / "rootfs").mkdir(parents=True)
        (cache / image_id / "meta.json").write_text(json.dumps({"id": image_id, "layers": [image_id]}))
    finally:
        holder.stdin.close()
        holder.wait()
        holder.stdout.close()
    waiter.join(60)
    assert result["image"].id == image_id
    assert not list(cache.glob(".build-*"))


def test_a_reused_pid_is_never_signalled():
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        wait_for(lambda: host.cmdline(sleeper.pid)[0] == "sleep", "sleep to be exec'd", 60)
        proc = {"pid": sleeper.pid, "start": host.start_time(sleeper.pid)}
        assert host.alive(proc, "sleep")
        stale = dict(proc, start=proc["start"] - 1)  # same pid, another process's start time
        assert not host.alive(stale, "sleep")
        assert not host.kill(stale, "sleep", "stale record")
        assert not host.alive(proc, "systemd-nspawn")  # not the command we started
        assert sleeper.poll() is None
        assert host.kill(proc, "sleep", "sleeper")
        sleeper.wait(5)  # (host.kill already reaped our child, so its status reads as 0 here)
        assert host.start_time(proc["pid"]) is None
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
            sleeper.wait()


@pytest.mark.root
def test_concurrent_allocations_from_several_processes_never_collide(tmp_path):
    """Eight processes (as if from different data dirs) allocate at once in one small pool."""
    pool = "10.198.76.0/27"  # eight /30s
    dirs = []
    for n in range(9):
        folder = tmp_path / f"data{n}" / "local" / "instances" / f"vm-{n}"
        folder.mkdir(parents=True)
        (folder / "meta.json").write_text("{}")  # a live instance: an orphan sweep leaves it alone
        dirs.append(folder)
    code = ("import sys, json; from pathlib import Path; from cislaves.clouds.local import net; "
            "r = net.allocate(sys.argv[1], Path(sys.argv[2]), sys.argv[3], Path(sys.argv[4])); "
            "print(json.dumps(r))")
    procs = [subprocess.Popen([sys.executable, "-c", code, pool, str(d.parents[2]), d.name, str(d)],
                              stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2])
             for d in dirs[:8]]
    records = [json.loads(p.communicate(timeout=60)[0]) for p in procs]
    try:
        assert len({r["subnet"] for r in records}) == 8
        assert len({r["token"] for r in records}) == 8
        assert all(len(r["veth"]) <= 15 for r in records)
        again = net.allocate(pool, dirs[0].parents[2], "vm-0", dirs[0])
        assert again["token"] == records[0]["token"]  # the same instance keeps its allocation
        with pytest.raises(CloudError, match="no free /30"):
            net.allocate(pool, dirs[8].parents[2], "vm-8", dirs[8])
    finally:
        for record in records:
            net.release(record["token"])


@pytest.mark.root
def test_a_failing_debootstrap_is_a_clear_error_and_leaves_no_build(tmp_path):
    """A mirror that answers 404 to everything: debootstrap fails; the error says so, nothing remains."""
    import http.server

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    server.RequestHandlerClass = type("NotFound", (http.server.BaseHTTPRequestHandler,), {
        "do_GET": lambda self: self.send_error(404), "log_message": lambda self, *a: None})
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        mirror = f"http://127.0.0.1:{server.server_address[1]}/debian"
        cloud = LocalCloud({"cache_dir": str(tmp_path / "cache"), "mirror": mirror}, tmp_path)
        with pytest.raises(CloudError, match=r"debootstrap of bookworm from .* failed"):
            cloud.base_image(distros.get("debian12"))
    finally:
        server.shutdown()
        server.server_close()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [".local-debian12-base-bookworm.lock"]


@pytest.mark.root
def test_an_image_left_pending_by_a_crashed_create_image_is_hidden_and_removed(tmp_path):
    """create_image writes the image's metadata (pending) before moving the layer; if it dies there
    and its machine is destroyed, the half-made image is never listed and cleanup removes it."""
    cloud = LocalCloud({"cache_dir": str(tmp_path / "cache")}, tmp_path)
    folder = cloud.images_dir / "img-crashed"
    (folder / "layer").mkdir(parents=True)
    (folder / "meta.json").write_text(json.dumps({"id": "img-crashed", "state": "pending", "layers": ["img-crashed"],
                                                  "source_instance": "vm-gone-0000"}))
    assert cloud.list_images() == []
    with pytest.raises(CloudError, match="no image 'img-crashed'"):
        cloud.get_image("img-crashed")
    cloud.cleanup(CleanupPolicy(owner=None))
    assert not folder.exists()


def test_boot_timeout_is_the_deprecated_name_of_launch_timeout(tmp_path, caplog):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"clouds": {"local": {"boot_timeout": 12, "ssh_timeout": 7}}}))
    with caplog.at_level("WARNING"):
        cloud = clouds.get("local", config.load(path, environ={}))
    assert cloud.settings.launch_timeout == 12 and cloud.settings.ssh_timeout == 7
    warnings = [r.getMessage() for r in caplog.records if "deprecated" in r.getMessage()]
    assert len(warnings) == 1 and "clouds.local.boot_timeout" in warnings[0] and "launch_timeout" in warnings[0]
    default = clouds.get("local", config.Config({}, None, {"CISLAVES_LOCAL_BOOT_TIMEOUT": "9"}))
    assert default.settings.launch_timeout == 9


@pytest.mark.parametrize("key, value", [("ssh_user", "jenkins"), ("ssh_port", 2222),
                                        ("ssh_bastion", "me@jump:22"), ("ssh_private_key_file", "k")])
def test_ssh_settings_the_local_cloud_cannot_honour_are_refused_by_name(tmp_path, key, value):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"clouds": {"local": {key: value}}}))
    with pytest.raises(ConfigError) as error:
        clouds.get("local", config.load(path, environ={}))
    assert f"clouds.local.{key}" in str(error.value) and "not used by the local cloud" in str(error.value)
