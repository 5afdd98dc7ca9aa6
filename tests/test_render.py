"""The text plan: what a reader sees before anything is applied."""

from __future__ import annotations

from epfiot.model import (
    Desired,
    Observed,
    ObservedVm,
    ObservedVolume,
    Ownership,
    PowerState,
    StackSpec,
    overlay_volume_name,
    seed_volume_name,
)
from epfiot.plan import Options, make_plan
from epfiot.render import plan_as_dict, render_plan


def _observed() -> Observed:
    vm = ObservedVm("alice.old", "", Ownership("alice", "s", "old"), PowerState.SHUTOFF, 1, 1, 64, 64)
    volumes = (
        ObservedVolume("images", overlay_volume_name("alice", "old")),
        ObservedVolume("images", seed_volume_name("alice", "old")),
        ObservedVolume("images", "debian.qcow2"),
    )
    return Observed(vms=(vm,), volumes=volumes, image_pool="images")


def test_the_text_plan_lists_every_volume_a_destroy_deletes() -> None:
    plan = make_plan(Desired(stacks=(StackSpec("alice", "s"),)), _observed())
    text = render_plan(plan)
    assert f"      deletes volume {overlay_volume_name('alice', 'old')}" in text
    assert f"      deletes volume {seed_volume_name('alice', 'old')}" in text
    assert "debian.qcow2" not in text  # a base image is nobody's disk
    steps = plan_as_dict(plan)["actions"][0]["steps"]
    assert sum(step.startswith("delete volume") for step in steps) == 2  # the JSON says the same


def test_a_destroy_that_keeps_its_disks_lists_none() -> None:
    plan = make_plan(Desired(stacks=(StackSpec("alice", "s"),)), _observed(), Options(keep_disks=True))
    text = render_plan(plan)
    assert "- vm alice/old: destroy" in text
    assert "deletes volume" not in text
