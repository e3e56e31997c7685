"""cislaves tasks for the stock `fab` (Fabric 3). The tasks live in cislaves/tasks.py; the `cislaves`
command runs the same collection.

Both command-line forms work:
    fab it:cloud=local,distribution=debian12        (Fabric 1's form, kept for the seed's users)
    fab it --cloud local --distribution debian12    (Fabric 3's own form)
"""
from cislaves import tasks as _tasks
from cislaves.tasks import *  # noqa: F401,F403 (the task collection: `fab -l`)

_tasks.install_fabric1_syntax()
