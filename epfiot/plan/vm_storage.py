"""A VM's volumes: its disk, a qcow2 overlay of a base image in the image pool, and its cloud-init seed,
an ISO that carries its credentials (compared by digest: no secret is ever compared or shown)."""

from __future__ import annotations

from pathlib import PurePosixPath

from epfiot.model import ObservedVm, VmSpec, is_epfiot_volume, overlay_volume_name, seed_volume_name
from epfiot.plan import steps as s
from epfiot.plan.actions import Change
from epfiot.plan.context import Context
from epfiot.plan.vm_update import VmUpdate


def disk_steps(ctx: Context, spec: VmSpec, observed: ObservedVm | None) -> tuple[s.Step, ...] | None:
    """What makes the disk of a VM with an image: nothing when it exists, a new overlay when the pool lacks it
    (a new VM, or its disk deleted by hand); None, a problem recorded, when it cannot be made or kept."""
    assert spec.image
    where = f"{spec.source}: vm {spec.name}: image {spec.image!r}"
    if is_epfiot_volume(spec.image):
        ctx.problems.append(f"{where} is a VM's disk or seed, not a base image")
        return None
    if spec.image not in ctx.volumes and (observed is None or observed.disk_volume is None):
        pool = ctx.observed.image_pool
        if pool is None:
            ctx.problems.append(
                f"{where}: the image pool does not exist yet (epfiot apply creates it; then copy base images "
                "into its directory)"
            )
        else:
            images = sorted(v.name for v in ctx.observed.volumes if not is_epfiot_volume(v.name))
            listing = ", ".join(images) if images else "none"
            ctx.problems.append(f"{where} not found in pool {pool!r} (images: {listing})")
        return None
    overlay = overlay_volume_name(spec.owner, spec.name)
    backing = ctx.backings.get(overlay)
    if backing is not None and PurePosixPath(backing).name != spec.image:
        ctx.problems.append(
            f"{spec.source}: vm {spec.name}: disk {overlay} is backed by {PurePosixPath(backing).name}, "
            f"not by {spec.image}; a disk keeps the image it was made from (delete the VM to change it)"
        )
        return None
    return (s.CreateOverlay(spec),) if overlay not in ctx.volumes else ()


def compare(u: VmUpdate, ctx: Context, seed_digest: str) -> None:
    """Disk and seed live in the definition; a running VM sees a new one after a restart. New seed content
    takes effect at the next boot; adding or removing the seed's CD-ROM takes a restart."""
    spec, vm = u.spec, u.vm
    want_disk = overlay_volume_name(spec.owner, spec.name) if spec.image else None
    if want_disk != vm.disk_volume:
        u.config("disk", vm.disk_volume, want_disk, restart=True)
    elif want_disk is not None and want_disk not in ctx.volumes:  # deleted by hand: disk_steps makes it again
        u.changes.append(Change("disk", None, want_disk, "volume missing: made again from its image"))

    want_seed = seed_volume_name(spec.owner, spec.name) if spec.credentials else None
    observed_digest = vm.ownership.seed_digest if vm.ownership else ""
    if want_seed != vm.seed_volume:
        if spec.credentials:
            u.pre.append(s.WriteSeed(spec))
        u.config("credentials", seed_label(observed_digest), seed_label(seed_digest), restart=True)
    elif spec.credentials and seed_digest != observed_digest:
        u.pre.append(s.WriteSeed(spec))
        u.redefine = True  # records the new digest
        u.changes.append(Change("credentials", seed_label(observed_digest), seed_label(seed_digest), "at next boot"))
    elif want_seed is not None and want_seed not in ctx.volumes:  # deleted by hand: the VM could not boot
        u.pre.append(s.WriteSeed(spec))
        u.changes.append(Change("credentials", None, seed_label(seed_digest), "volume missing: written again"))


def seed_label(digest: str) -> str | None:
    return f"seed {digest}" if digest else None
