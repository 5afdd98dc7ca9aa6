"""Host USB policy: which tenants may claim which host USB devices.

The policy belongs to the host's administrator, not to the tenants: it lives in its own YAML file,
/etc/epfiot/policy.yaml by default (`--policy PATH` or $EPFIOT_POLICY choose another). For example:

    usb:
      - id: "18d1:9302"              # a Coral, in both of its identities
        aliases: ["1a6e:089a"]
        owners: [charlie]
      - id: "10c4:ea60"              # one of two identical serial adapters
        serial: "A1"                 # (or port: "1-2.3")
        owners: [alice, bob]

Semantics, kept simple on purpose:
- A rule covers a device when the device's id is the rule's `id` or one of its `aliases`, and, when the rule
  gives them, its serial and port path are equal too. Hubs are never claimable, policy or not.
- The first rule (in file order) that covers a device decides: only its `owners` may claim the device.
  `owners: []` reserves a device for nobody.
- A device no rule covers may be claimed by any tenant. There is no "default: deny": to reserve every device,
  write rules for them.
- No policy file at the default path: any tenant may claim any device. A path given explicitly (option or
  environment) must exist.

Quote ids in YAML ("10c4:ea60"): the loader reads the text as written either way, so an unquoted id that YAML
would take for a number (0403:6001) still means what it says.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from epfiot.errors import UsageError
from epfiot.hostfiles import chosen_path, read_host_file
from epfiot.model import NAME_PATTERN, NO_SOURCE, HostUsbDevice, Source, UsbId, UsbSelector
from epfiot.wording import counted

DEFAULT_POLICY_PATH = Path("/etc/epfiot/policy.yaml")
POLICY_ENV = "EPFIOT_POLICY"

USB_ID_PATTERN = re.compile(r"^[0-9a-fA-F]{4}:[0-9a-fA-F]{4}$")
PORT_PATTERN = re.compile(r"^\d+-\d+(\.\d+)*$")
_RULE_KEYS = {"id", "aliases", "serial", "port", "owners"}

_Fail = Callable[[yaml.Node, str], None]  # reports a problem at a node


class PolicyError(UsageError):
    """The policy file is missing (when named explicitly), unreadable or malformed."""


@dataclass(frozen=True)
class UsbRule:
    ids: tuple[UsbId, ...]
    owners: frozenset[str]
    serial: str | None = None
    port: str | None = None
    source: Source = NO_SOURCE

    def covers(self, device: HostUsbDevice) -> bool:
        if device.id not in self.ids:
            return False
        if self.serial is not None and device.serial != self.serial:
            return False
        return self.port is None or device.port == self.port

    def covers_every_match_of(self, selector: UsbSelector) -> bool:
        """True when every device `selector` can match is covered by this rule (used for unplugged claims)."""
        if not set(selector.ids) <= set(self.ids):
            return False
        if self.serial is not None and selector.serial != self.serial:
            return False
        return self.port is None or selector.port == self.port

    def describe(self) -> str:
        owners = ", ".join(sorted(self.owners)) if self.owners else "no tenant"
        return f"the host USB policy ({self.source}) reserves it for {owners}"


@dataclass(frozen=True)
class UsbPolicy:
    """The host's USB rules; the empty policy allows everything."""

    rules: tuple[UsbRule, ...] = ()
    path: str | None = None  # where it was read from; None: no policy file

    def rule_for(self, device: HostUsbDevice) -> UsbRule | None:
        return next((r for r in self.rules if r.covers(device)), None)

    def allows(self, owner: str, device: HostUsbDevice) -> bool:
        rule = self.rule_for(device)
        return rule is None or owner in rule.owners

    def denial(self, owner: str, device: HostUsbDevice) -> str | None:
        """Why `owner` may not claim `device`, or None when it may."""
        rule = self.rule_for(device)
        if rule is None or owner in rule.owners:
            return None
        return rule.describe()

    def denial_for_selector(self, owner: str, selector: UsbSelector) -> str | None:
        """For a claim whose device is not plugged in: a denial when the first rule that would cover any
        device this selector can match is certain to cover it and does not list `owner`."""
        for rule in self.rules:
            if rule.covers_every_match_of(selector):
                return None if owner in rule.owners else rule.describe()
            if set(rule.ids) & set(selector.ids):
                return None  # it depends on the device: decided once it is plugged in
        return None


def policy_path(path: Path | None) -> tuple[Path, bool]:
    """The policy file to read and whether it was named explicitly (then it must exist)."""
    return chosen_path(path, POLICY_ENV, DEFAULT_POLICY_PATH)


def load_policy(path: Path | None = None) -> UsbPolicy:
    """Read the host USB policy: `path`, else $EPFIOT_POLICY, else /etc/epfiot/policy.yaml if it exists."""
    chosen, explicit = policy_path(path)
    text = read_host_file(chosen, explicit, "USB policy file", PolicyError)
    return UsbPolicy() if text is None else parse_policy(text, str(chosen))


def parse_policy(text: str, filename: str = "<policy>") -> UsbPolicy:
    """Parse policy YAML; every problem found is reported at once, each with file:line."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{filename}:{mark.line + 1}" if mark is not None else filename
        problem = getattr(e, "problem", None) or str(e)
        raise PolicyError(f"{where}: invalid YAML in the USB policy: {problem}") from None
    problems: list[tuple[int, str]] = []
    rules: list[UsbRule] = []
    if root is None:
        return UsbPolicy(path=filename)  # an empty file: no rules

    def fail(node: yaml.Node, message: str) -> None:
        problems.append((node.start_mark.line + 1, f"{filename}:{node.start_mark.line + 1}: {message}"))

    if not isinstance(root, yaml.MappingNode):
        fail(root, "the USB policy must be a mapping with a 'usb' list")
    else:
        for key, value in root.value:
            name = _scalar(key)
            if name != "usb":
                fail(key, f"unknown key {name!r} (expected 'usb')")
                continue
            if isinstance(value, yaml.ScalarNode) and value.tag == "tag:yaml.org,2002:null":
                continue
            if not isinstance(value, yaml.SequenceNode):
                fail(value, "'usb' must be a list of rules")
                continue
            for index, item in enumerate(value.value):
                rule = _rule(item, f"usb[{index}]", Source(filename, item.start_mark.line + 1), fail)
                if rule is not None:
                    rules.append(rule)
    if problems:
        lines = [f"{counted(len(problems), 'problem')} in the USB policy; nothing was changed:"]
        raise PolicyError("\n".join(lines + [f"  {p}" for _, p in sorted(problems, key=lambda p: p[0])]))
    return UsbPolicy(tuple(rules), filename)


def _scalar(node: yaml.Node) -> str | None:
    """The text of a scalar as written (so 0403:6001 stays a string), None for anything else."""
    return str(node.value) if isinstance(node, yaml.ScalarNode) else None


def _rule(node: yaml.Node, path: str, source: Source, fail: _Fail) -> UsbRule | None:
    if not isinstance(node, yaml.MappingNode):
        fail(node, f"{path}: a rule must be a mapping with 'id' and 'owners'")
        return None
    fields: dict[str, yaml.Node] = {}
    for key, value in node.value:
        name = _scalar(key)
        if name not in _RULE_KEYS:
            fail(key, f"{path}: unknown key {name!r} (expected one of {', '.join(sorted(_RULE_KEYS))})")
        elif name in fields:
            fail(key, f"{path}: {name!r} given twice")
        else:
            fields[name] = value
    ok = True
    ids: list[UsbId] = []
    if "id" not in fields:
        fail(node, f"{path}: 'id' is required (vendor:product, like \"18d1:9302\")")
        ok = False
    else:
        ok &= _add_id(fields["id"], f"{path}.id", ids, fail)
    if "aliases" in fields:
        aliases = fields["aliases"]
        if not isinstance(aliases, yaml.SequenceNode):
            fail(aliases, f"{path}.aliases: must be a list of vendor:product ids")
            ok = False
        else:
            for i, alias in enumerate(aliases.value):
                ok &= _add_id(alias, f"{path}.aliases[{i}]", ids, fail)
    owners: list[str] = []
    if "owners" not in fields:
        fail(node, f"{path}: 'owners' is required (the tenants that may claim the device; [] for none)")
        ok = False
    else:
        value = fields["owners"]
        if not isinstance(value, yaml.SequenceNode):
            fail(value, f"{path}.owners: must be a list of tenant names")
            ok = False
        else:
            for i, item in enumerate(value.value):
                owner = _scalar(item)
                if owner is None or not re.match(NAME_PATTERN, owner):
                    fail(item, f"{path}.owners[{i}]: {owner!r} is not a tenant name")
                    ok = False
                else:
                    owners.append(owner)
    serial = _optional_text(fields.get("serial"), f"{path}.serial", None, fail)
    port = _optional_text(fields.get("port"), f"{path}.port", PORT_PATTERN, fail)
    if ("serial" in fields and serial is None) or ("port" in fields and port is None):
        ok = False
    if not ok:
        return None
    return UsbRule(tuple(dict.fromkeys(ids)), frozenset(owners), serial, port, source)


def _add_id(node: yaml.Node, path: str, into: list[UsbId], fail: _Fail) -> bool:
    text = _scalar(node)
    if text is None or not USB_ID_PATTERN.match(text):
        fail(node, f"{path}: {text!r} is not a USB id (vendor:product, four hex digits each, like \"18d1:9302\")")
        return False
    into.append(UsbId.parse(text))
    return True


def _optional_text(node: yaml.Node | None, path: str, pattern: re.Pattern[str] | None, fail: _Fail) -> str | None:
    if node is None:
        return None
    text = _scalar(node)
    if text is None or text == "" or (pattern is not None and not pattern.match(text)):
        expected = "a port path like \"1-2.3\"" if pattern is not None else "a non-empty string"
        fail(node, f"{path}: {text!r} is not {expected}")
        return None
    return text

