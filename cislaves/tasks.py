"""The cislaves tasks: one collection for the `cislaves` command (cislaves.cli) and the stock `fab`
(fabfile.py re-exports it). Each task parses its arguments and calls one function of the package.

Both command-line forms work:
    cislaves it --cloud local --distribution debian12    fab it:cloud=local,distribution=debian12
Errors end as one line on stderr and an exit code of cislaves.exitcodes.
"""
from __future__ import annotations

import atexit
import contextlib
import gc
import os
import sys
import threading

from invoke import task
from invoke.exceptions import Exit, ParseError

from cislaves import exitcodes, fabcompat, interrupts, lazy_module
from cislaves.errors import CislavesError

bake = lazy_module("cislaves.bake")  # imported by the first task that uses it: `fab -l` imports neither
config_mod = lazy_module("cislaves.config")
remote = lazy_module("cislaves.remote")

CLOUD = "cloud: local, ec2, openstack, rackspace, gce or static (default: config defaults.cloud, else local)"
DIST = "distribution: debian12, centos7, ubuntu14.04, ubuntu22.04, ubuntu24.04, rocky9 (default: debian12)"
INSTANCE = "id of the instance to act on, when the state knows several (see `fab status`)"
_REMAINDER: list[str] = []  # words after `--` (for `fab ssh -- CMD ARGS`)
VERBOSITY = {"--verbose": 1, "-v": 1, "--quiet": -1, "-q": -1}  # global flags, before the first task
_verbosity = [0]
DEFAULT_GC = gc.get_threshold()  # the interpreter's (700, 10, 10), before an entry point changes them
SHORT_LIVED_GC = (20_000, 50, 100)

__all__ = ["help", "it", "up", "bootstrap", "tests", "create_image", "destroy", "down", "status", "ssh",
           "images", "cleanup", "validate", "rebake", "prune", "image_diff", "delete_image", "listen", "worker",
           "jobs", "enqueue", "cancel", "logs"]


def signatures(collection) -> fabcompat.Signatures:
    """Every task name and alias of `collection` -> its parameters (for the colon form)."""
    out = {}
    for name, aliases in collection.task_names.items():
        params = fabcompat.signature_of(collection[name].body)
        for alias in [name, *aliases]:
            out[alias] = params
    return out


def take_verbosity(argv: list[str]) -> list[str]:
    """Remove the leading --verbose/-v/--quiet/-q flags from argv (before the first task) and remember
    them for the log setup: -1 warnings only, 0 info, 1 debug."""
    out = list(argv)
    while out and out[0] in VERBOSITY:
        _verbosity[0] = VERBOSITY[out.pop(0)]
    return out


def set_verbosity(level: int) -> None:
    _verbosity[0] = level


def set_remainder(words: list[str]) -> None:
    _REMAINDER[:] = words


def install_fabric1_syntax() -> None:
    """For the stock `fab`: rewrite `task:k=v` tokens before invoke parses tasks, take --verbose and
    --quiet, and make a usage error exit 2 (Program.run imports the fabfile before it parses tasks)."""
    try:
        from fabric.main import program
    except ImportError:
        return
    original_tasks, original_cleanup = program.parse_tasks, program.parse_cleanup
    if getattr(original_tasks, "cislaves", False):
        return
    original_execute = program.execute
    short_lived_start()
    guard_output()

    def parse_tasks():
        argv = list(program.argv or [])
        try:
            unparsed = take_verbosity(list(program.core.unparsed))
            program.core.unparsed = fabcompat.translate(unparsed, signatures(program.collection))
            if "--" in argv and program.core.unparsed:
                set_remainder(argv[argv.index("--") + 1:])
                program.core.remainder = ""  # ours, not Fabric's "run this on -H hosts"
            return original_tasks()
        except ParseError as exc:
            raise Exit(f"error: {exc}", code=exitcodes.USAGE) from None

    def parse_cleanup():
        try:
            return original_cleanup()
        except ParseError as exc:
            raise Exit(f"error: {exc}", code=exitcodes.USAGE) from None
        except Exit as exc:
            if exc.code == 0 and not exc.message:  # --list, --help, no task: printed, nothing else to do
                exit_now()
            raise

    def execute():
        original_execute()
        exit_now()  # every task returned: the command is over (exit 0)

    parse_tasks.cislaves = True
    program.parse_tasks, program.parse_cleanup, program.execute = parse_tasks, parse_cleanup, execute


def short_lived_start() -> None:
    """The collector's settings for a command's start-up, from the entry point on: the modules, classes
    and SDK models it imports live until it ends, so collecting the youngest objects every 700 new
    ones (and the older generations every 10 of those) is wasted work; a long-running task goes back
    to the defaults (_long_lived). No gc.freeze() at the end: with the GCE SDK loaded, a frozen heap
    made about half of the interpreter's exits crash (SIGSEGV, SIGABRT, SIGBUS) —
    tests/gce/test_gce_e2e.py::test_short_commands_exit_cleanly."""
    gc.set_threshold(*SHORT_LIVED_GC)


class _ReaderSafe:
    """A command's sys.stdout or sys.stderr whose writes cannot end the command. When the reader of
    its pipe has gone (`fab -l | head -1`, `fab it ... | head`), what is left to write goes to
    /dev/null instead of raising BrokenPipeError in whatever printed — a print inside a bake's
    cleanup, or invoke's thread that copies a remote command's output, used to end the command with a
    traceback. The command runs to its own end (a bake still cleans up and records its image) and
    exits with its own status; only output nobody reads is lost. Any other write error (a full disk
    under `> file`) does the same, is said once in one line on the other stream, and makes a command
    that otherwise succeeded exit 1 (exit_now). Everything else is the wrapped stream's."""

    failed = False  # a write failed for another reason than a gone reader: the exit status says so

    def __init__(self, stream, name: str):
        self._stream, self._name = stream, name

    def __getattr__(self, name):
        return getattr(self._stream, name)

    def write(self, text):
        return self._guarded(self._stream.write, text)

    def writelines(self, lines):
        return self._guarded(self._stream.writelines, lines)

    def flush(self):
        return self._guarded(self._stream.flush)

    def _guarded(self, operation, *args):
        try:
            return operation(*args)
        except OSError as exc:
            fd = self._stream.fileno()
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, fd)  # the same file descriptor, now a sink
            finally:
                os.close(devnull)
            if not isinstance(exc, BrokenPipeError):
                _ReaderSafe.failed = True
                with contextlib.suppress(OSError):
                    os.write(2 if fd != 2 else 1, f"error: writing {self._name} failed: {exc.strerror}; "
                                                  f"the rest of it is dropped\n".encode())
            return operation(*args)  # what the buffer still held, and this text, go there


def guard_output() -> None:
    """Make a closed pipe on stdout or stderr lose output, not the command (_ReaderSafe); only in the
    process run as the `fab` or `cislaves` console script (a test runner's own streams stay as they are)."""
    if not _run_as_command():
        return
    for name, said in (("stdout", "standard output"), ("stderr", "standard error")):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, _ReaderSafe):
            setattr(sys, name, _ReaderSafe(stream, said))


def exit_now(code: int = 0) -> None:
    """End the process of a command whose tasks all succeeded as the interpreter would, minus its
    teardown: freeing every module and object took 0.07 s of a bake (bench/ec2_vs_packer.py's exit).

    What an exit must do still happens, in the interpreter's order: it has no other (non-daemon)
    thread to wait for, or this returns and the interpreter exits as usual; the atexit handlers run
    (logging's flush and close, paramiko's transport threads, weakref finalizers such as temporary
    folders, multiprocessing's children); stdout and stderr are flushed (if that fails, this returns
    and the interpreter reports it with its own exit status). Files are not left to the collector:
    the state, the manifest and every other file are written, fsynced and closed by the code that
    writes them (cislaves.util.write_json). Only the process run as the `fab` or `cislaves` console
    script ends here: a caller in-process (a test calling Program.run) gets its return."""
    if not _run_as_command() or any(t.is_alive() and not t.daemon for t in threading.enumerate()
                                    if t is not threading.main_thread()):
        return
    if not _flushed():
        return
    atexit._run_exitfuncs()  # the handlers run once: the interpreter does not run them again
    if _flushed():
        os._exit(code or (exitcodes.FAILURE if _ReaderSafe.failed else 0))


def _flushed() -> bool:
    try:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
    except (OSError, ValueError):  # a closed pipe, a closed stream
        return False
    return True


def _run_as_command() -> bool:
    """Whether this process is the `fab` (or `python -m fabric`) or `cislaves` console script."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    name = spec.name if spec is not None else os.path.basename(getattr(main, "__file__", None) or "")
    return name in ("fab", "cislaves", "fabric.__main__")


def _setup_logging() -> None:
    config_mod.setup_logging(_verbosity[0])


@contextlib.contextmanager
def _one_line_errors():
    """Turn cislaves errors into one line on stderr and a non-zero exit (130 for an interrupt).
    The signal policy lives here, at the command boundary: SIGTERM interrupts like Ctrl-C, and the
    library's shielded cleanup blocks hold both until they end (cislaves.interrupts)."""
    _setup_logging()
    if not interrupts.installed():
        interrupts.install()
    try:
        yield
    except CislavesError as exc:  # 2 for configuration, 75 locked (cron tries again), 130 interrupted
        raise Exit(f"error: {exc}", code=exitcodes.for_error(exc)) from None
    except KeyboardInterrupt:
        raise Exit("error: interrupted", code=exitcodes.INTERRUPTED) from None


def _config():
    """The configuration, once its data directory is known to be usable (one line otherwise)."""
    config = config_mod.load()
    config.check_data_dir(create=True)
    return config


@contextlib.contextmanager
def _session(cloud=None, distribution=None):
    """Load config and open a Session for one cloud."""
    with _one_line_errors(), remote.kept_connections():  # the steps share SSH connections
        session = bake.Session(_config(), cloud, distribution,
                               out=lambda line: print(line, flush=True))
        try:
            yield session
        finally:
            session.close()


def _long_lived() -> None:
    """A task that runs until it is stopped (the listener, a worker) collects with the interpreter's
    default settings: its objects come and go."""
    gc.set_threshold(*DEFAULT_GC)


@task
def help(c):
    """Lists the commands with a one-line description each."""
    lines = [
        ("bootstrap", "bootstraps an existing running instance"),
        ("cleanup", "removes what interrupted runs left behind (found by tag)"),
        ("create_image", "create an image from the instance"),
        ("delete_image", "deletes an image this tool made (not a published or in-use one)"),
        ("destroy", "destroy an existing instance"),
        ("down", "halt an existing instance"),
        ("cancel", "aborts a CI job (queued or running)"),
        ("enqueue", "queues a manual CI run of a change's patch set"),
        ("help", "lists the commands"),
        ("image_diff", "lists the packages added, removed and changed between two images"),
        ("images", "lists the images made by this tool"),
        ("it", "runs the full stack (up, bootstrap, tests, create_image, destroy)"),
        ("jobs", "lists the CI queue"),
        ("listen", "runs the Gerrit third-party CI listener"),
        ("logs", "where a CI job's output is, and its last lines"),
        ("prune", "deletes old images, keeping the newest validated, published and in-use ones"),
        ("rebake", "bakes, validates and publishes the rebake matrix (for cron)"),
        ("ssh", "opens an ssh connection to the instance (or runs `fab ssh -- CMD ARGS`)"),
        ("status", "lists the instances the state knows on a cloud (all=true: every cloud)"),
        ("tests", "run tests against an existing instance"),
        ("up", "boots a new instance"),
        ("validate", "checks the whole configuration and the credentials' presence, creating nothing"),
    ]
    for name, text in lines:
        print(f"{name:<13} {text}")
    print("\nExample: fab it:cloud=local,distribution=debian12   (or: fab it --cloud local --distribution debian12)")
    print("Arguments of a task: fab -h TASK")


@task(help={"cloud": CLOUD, "distribution": DIST,
            "keep_on_error": "keep the instance when a step fails, and say how to reach and remove it"})
def it(c, cloud=None, distribution=None, keep_on_error=False):
    """Runs the full stack: up, bootstrap, tests, create_image, destroy."""
    with _session(cloud, distribution) as s:
        bake.it(s, keep_on_error=keep_on_error or s.config.top.keep_on_error)


@task(help={"cloud": CLOUD, "distribution": DIST, "image": "boot from this image id instead of the newest base",
            "new": "boot another instance even if the state knows one on this cloud"})
def up(c, cloud=None, distribution=None, image=None, new=False):
    """Boots a new instance (or starts the stopped one the state knows)."""
    with _session(cloud, distribution) as s:
        bake.up(s, image=image, new=new)


@task(help={"cloud": CLOUD, "distribution": DIST, "instance": INSTANCE})
def bootstrap(c, cloud=None, distribution=None, instance=None):
    """Bootstraps an existing running instance."""
    with _session(cloud, distribution) as s:
        bake.bootstrap(s, instance)


@task(help={"cloud": CLOUD, "distribution": DIST, "instance": INSTANCE})
def tests(c, cloud=None, distribution=None, instance=None):
    """Run tests against an existing instance."""
    with _session(cloud, distribution) as s:
        bake.tests(s, instance)


@task(help={"cloud": CLOUD, "distribution": DIST, "instance": INSTANCE})
def create_image(c, cloud=None, distribution=None, instance=None):
    """Create an image from the instance."""
    with _session(cloud, distribution) as s:
        bake.create_image(s, instance)


@task(help={"cloud": CLOUD, "instance": INSTANCE})
def destroy(c, cloud=None, instance=None):
    """Destroy an existing instance."""
    with _session(cloud) as s:
        bake.destroy(s, instance)


@task(help={"cloud": CLOUD, "instance": INSTANCE})
def down(c, cloud=None, instance=None):
    """Halt an existing instance (its disk is kept; `fab up` starts it again)."""
    with _session(cloud) as s:
        bake.down(s, instance)


@task(help={"cloud": CLOUD, "all": "instances on every cloud"})
def status(c, cloud=None, all=False):
    """Lists the instances the state knows on a cloud (all=true: on every cloud), with their status."""
    with _session(cloud) as s:
        for line in bake.status(s, all_clouds=all):
            print(line)


@task(help={"cloud": CLOUD, "instance": INSTANCE})
def ssh(c, cloud=None, instance=None):
    """Opens an ssh connection to the instance; `fab ssh -- CMD ARGS` runs one command."""
    with _session(cloud) as s:
        inst = s.state.current(s.cloud_name, instance)
        argv = bake.ssh_argv(s, inst, list(_REMAINDER))
    sys.stdout.flush()
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        raise Exit(f"error: cannot run {argv[0]}: {exc.strerror}", code=1) from None


@task(help={"cloud": CLOUD})
def images(c, cloud=None):
    """Lists the images made by this tool (id, cloud, distribution, created, source)."""
    with _session(cloud) as s:
        for line in bake.images(s):
            print(line)


@task(help={"cloud": CLOUD,
            "all_owners": "also remove the leftovers of other hosts' runs on a shared account (not only "
                          "this data dir's and the expired ones)"})
def cleanup(c, cloud=None, all_owners=False):
    """Removes what interrupted runs left behind on a cloud (found by the tool's tags)."""
    with _session(cloud) as s:
        removed = bake.cleanup(s, all_owners=all_owners)
        print(f"Removed {len(removed)} leftover(s)" + "".join(f"\n  {r}" for r in removed))


@task
def validate(c):
    """Checks the whole configuration and that credentials are present, creating nothing (exit 0 or 2)."""
    from cislaves import validate as validate_mod

    with _one_line_errors():
        problems = validate_mod.run(config_mod.load(), out=lambda line: print(line, flush=True))
    for line in problems:
        print(f"error: {line}", file=sys.stderr)
    if problems:
        raise Exit(code=exitcodes.USAGE)


ONLY = ("targets of rebake.targets to act on: cloud, cloud/distribution or cloud/distribution/region, "
        "several joined with + (default: all)")


@task(help={"only": ONLY, "dry_run": "bake and validate, but only print the YAML diff and what prune would delete"})
def rebake(c, only=None, dry_run=False):
    """Bakes the rebake matrix in parallel, validates, publishes the ids into segredos, prunes, notifies."""
    from cislaves.lifecycle import matrix

    with _one_line_errors():
        code = matrix.rebake(_config(), only=only, dry_run=dry_run, out=lambda line: print(line, flush=True))
    if code:
        raise Exit(code=code)


@task(help={"only": ONLY, "cloud": "prune every distribution of this cloud (without a rebake section)",
            "dry_run": "list what would be deleted, delete nothing"})
def prune(c, only=None, cloud=None, dry_run=False):
    """Deletes old images: keeps the newest `rebake.keep` validated ones and every published or in-use one."""
    from cislaves.lifecycle import cli as lifecycle_cli

    with _one_line_errors():
        lifecycle_cli.prune(_config(), only=only, cloud=cloud, dry_run=dry_run)


@task(help={"old": "the older image id", "new": "the newer image id"})
def image_diff(c, old=None, new=None):
    """Lists the packages added, removed and changed between two images (fab image_diff:OLD,NEW)."""
    from cislaves.lifecycle import cli as lifecycle_cli

    with _one_line_errors():
        for line in lifecycle_cli.image_diff(_config(), old, new):
            print(line)


@task(help={"image": "the image id", "cloud": CLOUD, "region": "the image's region (default: the cloud's)",
            "force": "delete even a published or in-use image"})
def delete_image(c, image=None, cloud=None, region=None, force=False):
    """Deletes an image this tool made, with its snapshots, and forgets it (fab delete_image:ID)."""
    from cislaves.lifecycle import cli as lifecycle_cli

    with _one_line_errors():
        lifecycle_cli.delete_image(_config(), image, cloud=cloud, region=region, force=force)


@task
def listen(c):
    """Runs the Gerrit third-party CI listener and its workers until SIGINT/SIGTERM."""
    from cislaves.ci import cli as ci_cli

    _long_lived()
    with _one_line_errors():
        ci_cli.listen(_config())


@task(help={"concurrency": "builds run at once (default 1)",
            "clouds": "the clouds this host can drive, joined with , or + (default: every cloud)"})
def worker(c, concurrency=None, clouds=None):  # concurrency checked by coord.cli (one line)
    """Runs CI builds from ZooKeeper (ci.backend: zookeeper) until SIGINT/SIGTERM."""
    from cislaves.coord import cli as coord_cli

    _long_lived()
    with _one_line_errors():
        coord_cli.worker(_config(), concurrency=1 if concurrency is None else concurrency, clouds=clouds)


@task(help={"limit": "how many jobs to show, newest first (default 200)"})
def jobs(c, limit=200):
    """Lists the CI queue and its builds (state, change, patch set, project, trigger, age, job, result, duration, logs)."""
    from cislaves.ci import cli as ci_cli

    with _one_line_errors():
        for line in ci_cli.jobs(_config(), limit=int(limit)):
            print(line)


@task(help={"change": "Gerrit change number", "patchset": "patch set number",
            "job": "run only this job of ci.jobs (default: every job)"})
def enqueue(c, change=None, patchset=None, job=None):
    """Queues a manual CI run of a change's patch set."""
    from cislaves.ci import cli as ci_cli

    with _one_line_errors():
        if change is None or patchset is None:
            raise config_mod.ConfigError("enqueue needs change=N and patchset=M "
                                         "(fab enqueue:change=1234,patchset=2)")
        print(ci_cli.enqueue(_config(), change, patchset, job=job))


@task(help={"job": "the job id `fab jobs` shows"})
def cancel(c, job=None):
    """Aborts a CI job: cancels it if queued, stops its builds if running (instances destroyed)."""
    from cislaves.ci import buildcli

    with _one_line_errors():
        if job is None:
            raise config_mod.ConfigError("cancel needs job=N (fab cancel:job=12; `fab jobs` lists them)")
        print(buildcli.cancel(_config(), job))


@task(help={"job": "the job id `fab jobs` shows", "lines": "how many last lines of each build's output (default 20)"})
def logs(c, job=None, lines=20):
    """Prints where a CI job's builds keep their output, and its last lines."""
    from cislaves.ci import buildcli

    with _one_line_errors():
        if job is None:
            raise config_mod.ConfigError("logs needs job=N (fab logs:job=12; `fab jobs` lists them)")
        for line in buildcli.logs(_config(), job, lines=int(lines)):
            print(line)
