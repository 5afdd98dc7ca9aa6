"""Tenants' networks kept apart on the wire: epfiot's own nftables table, `inet epfiot`.

libvirt forwards between routed networks through the host, so without more a VM of one tenant reaches the
VMs of another. The table drops every packet forwarded from a bridge of one tenant to a bridge of another
tenant; what crosses between one tenant's own networks, and what goes between a VM and the host or the
outside, is left to libvirt's own rules, as before.

- `ruleset`: the pure part. Which bridge is whose (`Isolation`), the table as an `nft -f` script (delete and
  create in one transaction), and the reading back of `nft -j list table inet epfiot`.
- `planning`: the pure decision whether a plan needs the table rewritten, as a plan action.
- `nft`: running nft in this process's network namespace, the host-wide lock of its writers, and the check
  that the networks' bridges are in this namespace.
- `sync`: the action's step: under the lock, the host's managed networks read afresh, the table rewritten
  when it does not say exactly that.
- `guard`: what reconcile calls to add that action (or a problem) to a plan.
"""
