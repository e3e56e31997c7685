"""State.remove with end_run: the instance and its run leave the state file in one write (the end of a
bake), and without it the run stays (another step of it may still follow)."""
from __future__ import annotations

import json

from cislaves.records import Instance
from cislaves.state import State


def test_remove_can_end_the_run_in_the_same_write(tmp_path):
    state = State(tmp_path)
    instance = Instance(id="i-1", cloud="ec2", name="n", distribution="debian12", run_id="r1")
    for run in ("r1", "r2"):
        state.start_run(run, "ec2", "debian12", "bake")
    state.put(instance, "bake")
    state.remove(instance, end_run="r1")
    data = json.loads((tmp_path / "state.json").read_text())
    assert data["instances"] == {} and list(data["runs"]) == ["r2"]


def test_remove_alone_keeps_the_run(tmp_path):
    state = State(tmp_path)
    instance = Instance(id="i-1", cloud="ec2", name="n", distribution="debian12", run_id="r1")
    state.start_run("r1", "ec2", "debian12", "bake")
    state.put(instance, "bake")
    state.remove(instance)
    assert state.entries() == [] and list(state.runs()) == ["r1"]
