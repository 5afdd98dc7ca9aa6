"""Where manifests take secrets from: the `{file: PATH}` and `{env: NAME}` of their `password:` and `key:`
fields, found in the YAML text alone (PyYAML's node tree, for the lines), so that the CLI sends the service
only the variables its manifests name, and the service can check files before anything reads them."""

from __future__ import annotations

import yaml

SECRET_KEYS = frozenset({"password", "key"})


def secret_refs(text: str, kind: str) -> list[tuple[int, str]]:
    """(line, reference) of every `password: {KIND: ...}` and `key: {KIND: ...}` in `text`; text that is no
    YAML has none (the loader reports it)."""
    found: list[tuple[int, str]] = []
    try:
        documents = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.YAMLError:
        return found
    stack: list[yaml.Node] = [d for d in documents if d is not None]
    while stack:
        node = stack.pop()
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value in SECRET_KEYS and isinstance(value, yaml.MappingNode):
                    for inner, ref in value.value:
                        if isinstance(inner, yaml.ScalarNode) and inner.value == kind and isinstance(ref, yaml.ScalarNode):
                            found.append((ref.start_mark.line + 1, str(ref.value)))
                stack.append(value)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
    return sorted(found)
