"""The planner: a pure function from (desired, observed) to ordered actions, each with its reason.

It imports neither libvirt nor aiocoap and makes no call: everything it knows arrives in its arguments.
Every desired resource gets an action, no-ops included, so a plan explains why nothing changes as well as
what will. Problems (a name held by an unmanaged domain, two claims on one device, a missing base image)
make the whole plan unappliable: apply then changes nothing.

actions (what a plan is made of), steps (what an action does), planner (the entry points), context (what
one run knows), networks, vms (with vm_sizing, vm_network, vm_storage, vm_usb, vm_power), things; and with
the host's rules (host_rules), the checks across the whole host: host_networks, host_usb, quotas.
"""

from epfiot.plan.actions import Action, Change, Kind, Options, Phase, Plan, UsbResolution, Verb
from epfiot.plan.host_rules import HostRules
from epfiot.plan.planner import make_plan, plan_deletion

__all__ = [
    "Action",
    "Change",
    "HostRules",
    "Kind",
    "Options",
    "Phase",
    "Plan",
    "UsbResolution",
    "Verb",
    "make_plan",
    "plan_deletion",
]
