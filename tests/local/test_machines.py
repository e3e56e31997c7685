"""Local machines for real: images keep changes, disks survive down/up, NAT reaches the mirror,
destroy and cleanup leave nothing behind, instances never share addresses or host keys."""
from __future__ import annotations

import json
import os
import shlex
import socket
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from urllib.parse import urlsplit

import paramiko
import pytest
import yaml

from cislaves import clouds, config
from cislaves.clouds.local import host
from cislaves.clouds.local import net
from cislaves.clouds.base import CleanupPolicy, LaunchSpec, new_run_id, standard_tags, wait_for
from tests.fixtures_local import TEST_OWNER, tool_leftovers

pytestmark = pytest.mark.root
REPO = Path(__file__).resolve().parents[2]


def ssh(cloud, instance, *argv, warn=False):
    """Run argv on the machine over real SSH as its user with its key; return stdout."""
    client = connect(instance)
    try:
        _, out, _ = client.exec_command(shlex.join(argv), timeout=60)
        text = out.read().decode()
        status = out.channel.recv_exit_status()
        assert warn or status == 0, f"{argv} exited {status}"
        return text
    finally:
        client.close()


def connect(instance) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    client.connect(instance.address, port=instance.port, username=instance.user, key_filename=instance.key_file,
                   look_for_keys=False, allow_agent=False, timeout=10)
    return client


def host_key(instance) -> str:
    client = connect(instance)
    try:
        return client.get_transport().get_remote_server_key().get_base64()
    finally:
        client.close()


def spec_for(cloud, distribution, image, key_dir, role="bake"):
    run_id = new_run_id()
    name = f"cislaves-test-{run_id}"
    return LaunchSpec(distribution=distribution, image=image, run_id=run_id, name=name,
                      tags=standard_tags(run_id, distribution.name, role, name=name, owner=TEST_OWNER),
                      key_dir=key_dir, role=role)


def make_cloud(tmp_path, cache_dir):
    path = tmp_path / "cislaves.yaml"
    path.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data"),
                                    "clouds": {"local": {"cache_dir": str(cache_dir)}}}))
    return path, clouds.get("local", config.load(path, environ={}))


def test_machine_runs_systemd_and_answers_ssh_as_root(local_cloud, local_machine):
    assert ssh(local_cloud, local_machine, "id", "-un").strip() == "root"
    state = ssh(local_cloud, local_machine, "systemctl", "is-system-running", "--wait", warn=True).strip()
    assert state in ("running", "degraded"), state
    assert ssh(local_cloud, local_machine, "hostname").strip() == local_machine.id
    # its own name resolves (else every sudo prints "unable to resolve host")
    assert ssh(local_cloud, local_machine, "getent", "hosts", local_machine.id).split()[0] == "127.0.1.1"


def test_booting_a_created_image_shows_the_change_made_before(local_cloud, local_machine, debian12, tmp_path):
    ssh(local_cloud, local_machine, "sh", "-c", "echo baked > /root/marker && rm /etc/issue")
    tags = standard_tags(local_machine.run_id, "debian12", "image")
    image = local_cloud.create_image(local_machine, "cislaves-test-image", tags)
    try:
        assert local_cloud.refresh(local_machine).state == "stopped"
        assert image.source_image == local_machine.image_id and image.run_id == local_machine.run_id
        assert image.created and image.distribution == "debian12"
        child = local_cloud.launch(spec_for(local_cloud, debian12, image, tmp_path / "keys"))
        try:
            assert ssh(local_cloud, child, "cat", "/root/marker") == "baked\n"
            assert ssh(local_cloud, child, "test", "-e", "/etc/issue", warn=True) == ""  # whiteout kept
            keys = ssh(local_cloud, child, "cat", "/root/.ssh/authorized_keys")
            assert local_machine.id not in keys and child.id in keys  # the baking key is not baked in
        finally:
            local_cloud.destroy(child)
        # the imaged instance boots again, on top of its image
        local_cloud.start(local_machine)
        assert ssh(local_cloud, local_machine, "cat", "/root/marker") == "baked\n"
    finally:
        local_cloud.delete_image(image)


STOP_MARK = """[Unit]
Description=writes a mark when stopped by an orderly shutdown
[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/true
ExecStop=/bin/sh -c 'echo clean > /var/tmp/stopped-cleanly'
[Install]
WantedBy=multi-user.target
"""


def test_down_and_up_keep_the_disk_address_and_key(local_cloud, local_machine):
    ssh(local_cloud, local_machine, "sh", "-c", "echo kept > /var/tmp/disk-marker")
    ssh(local_cloud, local_machine, "sh", "-c", f"printf %s {shlex.quote(STOP_MARK)} > "
        "/etc/systemd/system/stop-mark.service && systemctl start stop-mark.service")
    key_before = host_key(local_machine)
    assert local_cloud.stop(local_machine).state == "stopped"
    assert not tool_leftovers_of_process(local_machine)
    started = local_cloud.start(local_machine)
    assert started.state == "running" and started.address == local_machine.address
    assert started.key_file == local_machine.key_file
    assert ssh(local_cloud, started, "cat", "/var/tmp/disk-marker") == "kept\n"
    assert ssh(local_cloud, started, "cat", "/var/tmp/stopped-cleanly") == "clean\n"  # an orderly poweroff
    assert host_key(started) == key_before  # same host key: a pinned known_hosts entry still matches


def tool_leftovers_of_process(instance):
    return [line for line in tool_leftovers() if line.startswith("nspawn") and instance.id in line]


def test_reboot_gives_a_new_boot(local_cloud, local_machine):
    before = ssh(local_cloud, local_machine, "cat", "/proc/sys/kernel/random/boot_id")
    local_cloud.reboot(local_machine, timeout=60)
    assert ssh(local_cloud, local_machine, "cat", "/proc/sys/kernel/random/boot_id") != before


def test_outbound_network_reaches_the_debian_mirror(local_cloud, local_machine, debian12):
    mirror = urlsplit(local_cloud.mirror_for(debian12.images["local"]))
    probe = textwrap.dedent(f"""
        import socket
        s = socket.create_connection(({mirror.hostname!r}, {mirror.port or 80}), timeout=10)
        s.sendall(b"HEAD /debian/dists/bookworm/Release HTTP/1.0\\r\\nHost: {mirror.hostname}\\r\\n\\r\\n")
        print(s.recv(12).decode())
    """)
    assert ssh(local_cloud, local_machine, "python3", "-c", probe).startswith("HTTP/1.")


PROBE = """
import socket, sys
for host, port in zip(sys.argv[1::2], sys.argv[2::2]):
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
        print("open", end=" ")
    except OSError as exc:
        print(type(exc).__name__, end=" ")
"""


def test_a_machine_cannot_open_connections_to_the_host_or_other_machines(local_cloud, local_machine, debian12,
                                                                          tmp_path):
    mirror = urlsplit(local_cloud.mirror_for(debian12.images["local"]))
    other = local_cloud.launch(spec_for(local_cloud, debian12, local_cloud.base_image(debian12),
                                        tmp_path / "keys"))
    with socket.create_server(("0.0.0.0", 0)) as server:
        port = server.getsockname()[1]
        try:
            seen = ssh(local_cloud, local_machine, "python3", "-c", PROBE, mirror.hostname, str(mirror.port or 80),
                       local_machine.extra["host_ip"], str(port), other.address, "22").split()
        finally:
            local_cloud.destroy(other)
    assert seen[0] == "open"  # out to the world: allowed (so the probe itself works)
    assert seen[1:] == ["TimeoutError", "TimeoutError"], seen  # the host's server, another machine: dropped


def test_two_machines_at_once_get_their_own_address_and_host_key(local_cloud, local_machine, debian12,
                                                                   tmp_path):
    other = local_cloud.launch(spec_for(local_cloud, debian12, local_cloud.base_image(debian12),
                                        tmp_path / "keys"))
    try:
        assert other.address != local_machine.address
        keys = [ssh(local_cloud, m, "cat", "/etc/ssh/ssh_host_ed25519_key.pub").split()[1]
                for m in (local_machine, other)]
        assert keys[0] != keys[1]
        assert ssh(local_cloud, other, "hostname").strip() == other.id
    finally:
        local_cloud.destroy(other)


def test_destroy_leaves_nothing_behind(local_cloud, debian12, tmp_path):
    instance = local_cloud.launch(spec_for(local_cloud, debian12, local_cloud.base_image(debian12),
                                           tmp_path / "keys"))
    assert any(instance.id in line for line in tool_leftovers(local_cloud.data_dir))
    local_cloud.destroy(instance)
    assert tool_leftovers(local_cloud.data_dir) == []
    assert not Path(instance.key_file).exists()
    assert not (local_cloud.instances_dir / instance.id).exists()
    local_cloud.destroy(instance)


CHILD = """
import sys
from pathlib import Path
from cislaves import clouds, config, distros
from cislaves.clouds.base import LaunchSpec, standard_tags
cloud = clouds.get("local", config.load(sys.argv[1], environ={}))
d = distros.get("debian12")
run_id = sys.argv[2]
spec = LaunchSpec(distribution=d, image=cloud.base_image(d), run_id=run_id, name="crash-" + run_id,
                  tags=standard_tags(run_id, "debian12", "bake", owner=sys.argv[4]), key_dir=Path(sys.argv[3]))
instance = cloud.launch(spec)
print("launched", instance.id, flush=True)
sys.stdin.read()
"""


@pytest.mark.parametrize("moment", ["allocated", "booting", "launched"])
def test_a_killed_launch_is_cleaned_up(local_cache_dir, tmp_path, moment):
    """SIGKILL the launching process at some moment; cleanup in a later process removes everything."""
    config_file, cloud = make_cloud(tmp_path, local_cache_dir)
    run_id = new_run_id()
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(config_file), run_id, str(tmp_path / "keys"),
                              TEST_OWNER],
                             cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        if moment == "launched":
            assert child.stdout.readline().startswith("launched")
        else:
            def reached():
                for record in net.list_records():
                    if record["data_dir"] == str(cloud.data_dir.resolve()):
                        meta = (Path(record["instance_dir"]) / "meta.json")
                        state = json.loads(meta.read_text())["state"]
                        return moment == "allocated" or state in ("booting", "running")
                return None
            wait_for(reached, f"the child launch to reach {moment}", 60, first_delay=0.005, max_delay=0.01)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
        child.stdin.close()
    assert tool_leftovers(cloud.data_dir)  # something was left behind by the crash...
    if moment == "launched":  # the machine outlives the process that launched it
        (instance,) = cloud.list_instances()
        assert instance.state == "running" and host.ssh_banner(instance.address)
    removed = cloud.cleanup(CleanupPolicy(owner=TEST_OWNER))
    assert any(run_id in line for line in removed), removed
    assert tool_leftovers(cloud.data_dir) == []  # ...and cleanup removed it
    assert cloud.list_instances() == []


def test_cleanup_sweeps_orphans_of_a_vanished_data_dir_but_not_live_instances(local_cache_dir, local_cloud,
                                                                              local_machine, debian12, tmp_path):
    _, other = make_cloud(tmp_path, local_cache_dir)
    orphan = other.launch(spec_for(other, debian12, other.base_image(debian12), tmp_path / "keys"))
    # The other data dir's instance folder vanishes (its tmp dir renamed away: the mount moves along).
    moved = tmp_path / "vanished"
    os.rename(other.instances_dir, moved)
    removed = local_cloud.cleanup(CleanupPolicy(owner=TEST_OWNER, keep_run_ids={local_machine.run_id}))
    assert any("orphan nspawn" in line for line in removed), removed
    assert any(orphan.id in line for line in removed), removed
    assert tool_leftovers(other.data_dir) == []
    assert not [line for line in tool_leftovers() if str(moved) in line]
    # the live machine of the session data dir was not touched
    assert local_cloud.refresh(local_machine).state == "running"
    assert ssh(local_cloud, local_machine, "true") == ""


def test_images_stack_and_a_deleted_parent_stays_until_its_child_goes(local_cloud, local_machine, debian12,
                                                                      tmp_path):
    ssh(local_cloud, local_machine, "sh", "-c", "echo one > /root/first")
    first = local_cloud.create_image(local_machine, "first", standard_tags("stack-1", "debian12", "image"))
    machine = local_cloud.launch(spec_for(local_cloud, debian12, first, tmp_path / "keys"))
    try:
        ssh(local_cloud, machine, "sh", "-c", "echo two > /root/second && rm /root/first")
        second = local_cloud.create_image(machine, "second", standard_tags("stack-2", "debian12", "image"))
    finally:
        local_cloud.destroy(machine)
    local_cloud.delete_image(first)  # the second image and the first machine still build on it
    assert first.id not in [i.id for i in local_cloud.list_images()]
    assert second.id in [i.id for i in local_cloud.list_images({"cislaves:run-id": "stack-2"})]
    child = local_cloud.launch(spec_for(local_cloud, debian12, second, tmp_path / "keys"))
    try:
        assert ssh(local_cloud, child, "cat", "/root/second") == "two\n"
        assert ssh(local_cloud, child, "test", "-e", "/root/first", warn=True) == ""
    finally:
        local_cloud.destroy(child)
    local_cloud.delete_image(second)
    assert (local_cloud.images_dir / first.id).exists()  # local_machine is now on top of it
    local_cloud.destroy(local_machine)
    assert not (local_cloud.images_dir / first.id).exists()
    assert not (local_cloud.images_dir / second.id).exists()


def test_a_machine_launched_by_another_process_is_driven_by_this_one(local_cache_dir, tmp_path):
    config_file, cloud = make_cloud(tmp_path, local_cache_dir)
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(config_file), new_run_id(), str(tmp_path / "keys"),
                              TEST_OWNER],
                             cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             env=dict(os.environ, PYTHONPATH=str(REPO)))
    line = child.stdout.readline()
    child.stdin.close()  # the launching process ends; its machine stays
    child.wait()
    child.stdout.close()
    assert line.startswith("launched")
    (instance,) = cloud.list_instances()
    try:
        assert instance.state == "running"
        assert cloud.stop(instance).state == "stopped"
        assert cloud.start(instance).state == "running"
        assert ssh(cloud, instance, "hostname").strip() == instance.id
    finally:
        cloud.destroy(instance)
    assert tool_leftovers(cloud.data_dir) == []
