"""Validation: boot a fresh instance from a new image, run the distribution's checks on it, destroy it.

The bake's own checks ran on the machine that became the image; validation proves the image itself
boots and passes them (a broken snapshot, a first-boot service that fails, a key that did not make
it). The instance is recorded in the state like any other run's, so a crash leaves nothing the next
run or `fab cleanup` cannot find.
"""
from __future__ import annotations

import logging

from cislaves import bake
from cislaves.interrupts import shielded
from cislaves.records import Image, new_run_id

log = logging.getLogger(__name__)


def validate(s: bake.Session, image: Image) -> None:
    """Raise (CheckFailed, CloudError, SSHError...) unless an instance of `image` passes the checks."""
    run_id = new_run_id()
    instance = bake.up(s, image=image.id, new=True, role="validate", run_id=run_id)
    try:
        bake.tests(s, instance=instance)
    finally:
        with shielded(), s.step("validate destroy"):
            s.cloud.destroy(instance)
            s.state.remove(instance)
            s.state.end_run(run_id)
            bake.forget_files(s, instance)
