"""The `cislaves` command: invoke's Program over the same task collection as the fabfile.

Only its own options (no Fabric SSH flags, none of invoke's shell-runner flags): `-c/--cloud` is the
cloud of every task that takes one (`cislaves -c ec2 status`), `-v/--verbose` and `-q/--quiet` set the
log level, `-l/--list`, `-h/--help [TASK]`, `-V/--version`. Tasks take both forms:
`cislaves it --cloud ec2 --distribution centos7` and Fabric 1's `cislaves it:cloud=ec2,distribution=centos7`.
A usage error exits 2 (cislaves.exitcodes).
"""
from __future__ import annotations

import sys

from invoke import Argument, Collection, Program
from invoke.exceptions import Exit, ParseError

from cislaves import __version__, exitcodes, fabcompat, tasks

EXIT_CODES = "Exit codes: " + ", ".join(f"{code} {text}" for code, text in exitcodes.DOCUMENTED.items())


class Cislaves(Program):
    """invoke's Program with cislaves' own core options and exit codes."""

    def core_args(self) -> list[Argument]:
        return [
            Argument(names=("cloud", "c"), help="the cloud of every task that takes one "
                                                "(local, ec2, openstack, rackspace, gce, static)"),
            Argument(names=("help", "h"), optional=True, help="this help, or a task's arguments: --help TASK"),
            Argument(names=("list", "l"), kind=bool, default=False, help="list the tasks with their summaries"),
            Argument(names=("quiet", "q"), kind=bool, default=False, help="log warnings and errors only"),
            Argument(names=("verbose", "v"), kind=bool, default=False,
                     help="log debug messages too (like CISLAVES_DEBUG=1)"),
            Argument(names=("version", "V"), kind=bool, default=False, help="show the version and exit"),
        ]

    def task_args(self) -> list[Argument]:
        return []

    def run(self, argv=None, exit: bool = True) -> None:
        """Parse and execute; always exits with a code of cislaves.exitcodes (ParseError: 2)."""
        try:
            self._run(argv)
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            sys.exit(exitcodes.INTERRUPTED)

    def _run(self, argv) -> None:
        try:
            self.create_config()
            self.parse_core(argv)
            self.parse_collection()
            self.parse_tasks()
            self.parse_cleanup()
            self.update_config()
            self.execute()
        except ParseError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(exitcodes.USAGE)
        except Exit as exc:
            if exc.message:
                print(exc.message, file=sys.stderr)
            if exc.code == 0:  # --version, --list, --help: printed, nothing else to do
                tasks.exit_now()
            sys.exit(exc.code)

    def parse_core(self, argv) -> None:
        self.normalize_argv(argv)
        self.parse_core_args()
        if self.args.version.value:
            self.print_version()
            raise Exit

    def parse_tasks(self) -> None:
        argv = list(self.argv[1:])
        self.core.unparsed = fabcompat.translate(list(self.core.unparsed), tasks.signatures(self.collection))
        if "--" in argv:
            tasks.set_remainder(argv[argv.index("--") + 1:])  # `cislaves ssh -- CMD ARGS`
        super().parse_tasks()
        if self.args.verbose.value and self.args.quiet.value:
            raise ParseError("--verbose and --quiet exclude each other")
        tasks.set_verbosity(1 if self.args.verbose.value else -1 if self.args.quiet.value else 0)
        cloud = self.args.cloud.value
        if cloud:
            for context in self.tasks:
                arg = context.args.get("cloud")
                if arg is not None and not arg.got_value:
                    arg.value = cloud

    def parse_cleanup(self) -> None:
        wanted = self.args.help.value
        if wanted is True:
            self.print_help()
            raise Exit
        if wanted:
            if wanted not in self.parser.contexts:
                raise ParseError(f"no task {wanted!r}; `{self.binary} --list` lists them")
            self.print_task_help(wanted)
            raise Exit
        if self.args.list.value:
            self.list_tasks()
            raise Exit
        if not self.tasks:
            self.print_help()
            raise Exit(code=exitcodes.USAGE)

    def update_config(self, merge: bool = True) -> None:
        self.config.merge()  # no runner flags: the tasks run nothing through invoke's shell runner

    def print_help(self) -> None:
        print(f"Usage: {self.binary} [OPTIONS] TASK [--TASK-OPTIONS] [TASK ...]")
        print(f"       {self.binary} TASK:ARG,KEY=VALUE ...   (Fabric 1's form, as with fab)\n")
        print("Options:\n")
        self.print_columns(self.initial_context.help_tuples())
        self.list_tasks()
        print(EXIT_CODES)

    def task_list_opener(self, extra: str = "") -> str:
        return "Tasks"


def collection() -> Collection:
    return Collection.from_module(tasks, name="cislaves", auto_dash_names=False)


program = Cislaves(name="cislaves", binary="cislaves", binary_names=["cislaves"], version=__version__,
                   namespace=collection())


def main() -> None:
    """The console script's entry point (pyproject.toml: cislaves = "cislaves.cli:main")."""
    tasks.short_lived_start()
    tasks.guard_output()
    program.run()  # an error or --help ends in sys.exit; a command that succeeded returns
    tasks.exit_now()
