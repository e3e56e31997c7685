"""How a command's process ends (cislaves.tasks.exit_now): after its tasks succeeded, without the
interpreter's teardown, yet with everything an exit owes done — atexit handlers run, buffered output
delivered, other threads waited for — and never inside a caller that runs the program in-process.

The scripts below run in a real interpreter under the name `fab` (the console script's name, which is
what exit_now looks for); the real commands' exits are covered by tests/test_cli.py and
tests/gce/test_gce_e2e.py::test_short_commands_exit_cleanly."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from tests.cli import REPO, cislaves, closed_pipe, fab

PRELUDE = """\
import atexit, os, sys, threading
sys.path.insert(0, {repo!r})
from cislaves import tasks
marker = {marker!r}
atexit.register(lambda: open(marker, "a").write("atexit ran\\n"))
sys.stdout.write("x" * 200_000 + "\\n")  # a pipe: block-buffered, more than one buffer and one pipe's worth
print("before exit_now")
"""
BUFFERED = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # output waits in the buffer


def run_as_fab(tmp_path, body: str) -> tuple[subprocess.CompletedProcess, str]:
    script = tmp_path / "fab"
    marker = tmp_path / "marker"
    script.write_text(PRELUDE.format(repo=str(REPO), marker=str(marker)) + textwrap.dedent(body))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60,
                            stdin=subprocess.DEVNULL, env=BUFFERED)
    return result, marker.read_text() if marker.exists() else ""


def test_the_process_ends_there_with_its_output_and_atexit_handlers(tmp_path):
    result, marker = run_as_fab(tmp_path, """\
        tasks.exit_now()
        print("after exit_now")
        sys.exit(3)
    """)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines == ["x" * 200_000, "before exit_now"], lines[-2:]
    assert marker == "atexit ran\n"
    assert result.stderr == ""


def test_another_thread_still_running_is_waited_for_by_the_usual_exit(tmp_path):
    result, marker = run_as_fab(tmp_path, """\
        r, w = os.pipe()
        def work():
            os.read(r, 1)  # until the main thread writes, after exit_now returned
            open(marker, "a").write("thread finished\\n")
        threading.Thread(target=work).start()
        tasks.exit_now()
        print("after exit_now")
        os.write(w, b"go")
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-2:] == ["before exit_now", "after exit_now"]
    assert marker == "thread finished\natexit ran\n"


def test_a_closed_stdout_is_left_to_the_interpreter_to_report(tmp_path):
    script = tmp_path / "fab"
    script.write_text(f"import sys\nsys.path.insert(0, {str(REPO)!r})\nfrom cislaves import tasks\n"
                      "print('lost')\ntasks.exit_now()\n")
    reader = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=BUFFERED)
    reader.stdout.close()  # nobody reads: the flush fails with a broken pipe
    _, err = reader.communicate(timeout=60)
    assert reader.returncode == 120, err  # the interpreter's status for output it could not flush
    assert b"BrokenPipeError" in err


def test_in_process_the_caller_gets_control_back():
    from cislaves import cli

    with pytest.raises(SystemExit) as exited:
        cli.program.run(["cislaves", "--version"])  # exits 0 through exit_now as a command
    assert exited.value.code == 0


@pytest.mark.parametrize("run", [fab, cislaves])
def test_list_and_a_task_exit_zero_with_all_their_output(run, tmp_path):
    from cislaves.tasks import __all__ as names

    listed = run("-l")
    assert listed.returncode == 0 and listed.stderr == ""
    assert [n for n in names if f"  {n} " not in listed.stdout] == []  # the last lines too: nothing cut off
    assert listed.stdout.endswith("SIGINT/SIGTERM.\n\n")  # the last task's wrapped summary, as invoke ends it
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    env = {"CISLAVES_DATA_DIR": str(tmp_path / "data"), "CISLAVES_CONFIG": str(empty),
           "CISLAVES_MANIFEST": str(tmp_path / "manifest.json")}
    status = run("status:cloud=static", env=env)
    assert status.returncode == 0, status.stderr
    assert status.stdout == f"No instances on cloud 'static' in {tmp_path / 'data' / 'state.json'}\n"


@pytest.mark.parametrize("command", ["fab", "cislaves"])
def test_output_into_a_pipe_nobody_reads_is_dropped_without_a_traceback(command):
    """`fab -l | head -1`: the reader went away; the listing is not an error and says nothing of it."""
    argv = [command, "-l"] if command == "fab" else [command, "--help"]
    write = closed_pipe()
    try:
        result = subprocess.run(argv, cwd=REPO, stdout=write, stderr=subprocess.PIPE, text=True, timeout=60,
                                stdin=subprocess.DEVNULL, env=BUFFERED)
    finally:
        os.close(write)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_output_into_a_full_disk_is_one_line_and_a_failure():
    with open("/dev/full", "w") as full:
        result = subprocess.run(["fab", "-l"], cwd=REPO, stdout=full, stderr=subprocess.PIPE, text=True,
                                timeout=60, stdin=subprocess.DEVNULL, env=BUFFERED)
    assert result.returncode == 1
    assert result.stderr == "error: writing standard output failed: No space left on device; the rest of it is dropped\n"
