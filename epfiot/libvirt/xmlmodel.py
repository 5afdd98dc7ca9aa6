"""libvirt's XML documents as read-only Python objects whose properties are XPath expressions.

As in virt-manager's virtinst (XMLBuilder), each class wraps one element and declares what it reads next to
its name: `text("source/@volume")` is the value that XPath selects relative to the object's element,
`XmlChild(Resource, "metadata/epfiot:resource")` and `XmlChildren(Disk, "devices/disk")` wrap the elements
it selects in another class. The document's shape is declared once, in the classes that read it; there is
no other reader of these documents in epfiot.

Every XPath is compiled once, when its class is defined, with the prefixes of the class's NAMESPACES. The
two commonest shapes skip the XPath engine, whose set-up costs more than the lookup: "@name" (an attribute
of the object's element) and "." (its text). Parsing never resolves entities nor fetches anything.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Generic, TypeVar, overload

from lxml import etree

T = TypeVar("T")
X = TypeVar("X", bound="XmlObject")

_OWN_ATTRIBUTE = re.compile(r"@([\w-]+)")
# remove_blank_text: no text nodes for the indentation between elements (a tenth of the parsing time);
# the text of an element without children is kept, blank or not.
_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, remove_blank_text=True)


def parse(text: str) -> etree._Element:
    """The root element of an XML document; ValueError when it is not well-formed."""
    try:
        return etree.fromstring(text.encode(), _PARSER)
    except etree.XMLSyntaxError as e:
        raise ValueError(f"not well-formed XML: {e}") from None


class XmlObject:
    """One element of a document. Subclasses declare what they read as XmlProperty/XmlChild/XmlChildren,
    with the namespace prefixes their paths use in NAMESPACES."""

    __slots__ = ("element",)
    TAG: str | None = None  # the root tag a document of this class must have (from_xml checks it)
    NAMESPACES: dict[str, str] = {}  # noqa: RUF012 - read once per property, when its class is made

    def __init__(self, element: etree._Element) -> None:
        self.element = element

    @classmethod
    def from_xml(cls: type[X], text: str) -> X:
        root = parse(text)
        if cls.TAG is not None and root.tag != cls.TAG:
            raise ValueError(f"not a {cls.TAG} XML document: <{root.tag}>")
        return cls(root)


class _Path:
    """A compiled path: the `elements` it selects, or the `value` it selects first (an attribute's value,
    or an element's text)."""

    def __init__(self, owner: type[XmlObject], xpath: str) -> None:
        self.xpath = xpath
        own = _OWN_ATTRIBUTE.fullmatch(xpath)
        self._attribute = own.group(1) if own else None
        self._engine = None
        if own is None and xpath != ".":
            # regexp=False: no EXSLT regular expressions registered for every evaluation (a quarter of its
            # cost); smart_strings=False: values as plain str
            self._engine = etree.XPath(xpath, namespaces=owner.NAMESPACES, regexp=False, smart_strings=False)

    def elements(self, obj: XmlObject) -> list[etree._Element]:
        if self._engine is None:
            return [obj.element] if self._attribute is None else []
        found = self._engine(obj.element)
        return [e for e in found if isinstance(e, etree._Element)] if isinstance(found, list) else []

    def value(self, obj: XmlObject) -> str | None:
        engine = self._engine
        if engine is None:
            return obj.element.text if self._attribute is None else obj.element.get(self._attribute)
        found = engine(obj.element)
        if not isinstance(found, list) or not found:
            return None
        first = found[0]
        if isinstance(first, etree._Element):
            return first.text
        return first if isinstance(first, str) else None


class _Declared:
    """What XmlProperty, XmlChild and XmlChildren share: their XPath, compiled with the owner's NAMESPACES
    when the owner class is made."""

    def __init__(self, xpath: str) -> None:
        self.xpath = xpath
        self._path: _Path | None = None

    def __set_name__(self, owner: type[XmlObject], name: str) -> None:
        self._path = _Path(owner, self.xpath)


class XmlProperty(_Declared, Generic[T]):
    """The first value `xpath` selects (an attribute's value, or an element's text), converted by
    `convert`; None when it selects nothing."""

    def __init__(self, xpath: str, convert: Callable[[str], T]) -> None:
        super().__init__(xpath)
        self._convert = convert

    @overload
    def __get__(self, obj: None, owner: type[XmlObject]) -> XmlProperty[T]: ...
    @overload
    def __get__(self, obj: XmlObject, owner: type[XmlObject]) -> T | None: ...
    def __get__(self, obj: XmlObject | None, owner: type[XmlObject]) -> XmlProperty[T] | T | None:
        if obj is None or self._path is None:
            return self
        value = self._path.value(obj)
        return None if value is None else self._convert(value)


def text(xpath: str) -> XmlProperty[str]:
    return XmlProperty(xpath, str)


def integer(xpath: str) -> XmlProperty[int]:
    """A decimal integer (surrounding blanks allowed); ValueError for anything else."""
    return XmlProperty(xpath, int)


class XmlChild(_Declared, Generic[X]):
    """The first element `xpath` selects, as a `cls`; None when there is none."""

    def __init__(self, cls: type[X], xpath: str) -> None:
        super().__init__(xpath)
        self._cls = cls

    @overload
    def __get__(self, obj: None, owner: type[XmlObject]) -> XmlChild[X]: ...
    @overload
    def __get__(self, obj: XmlObject, owner: type[XmlObject]) -> X | None: ...
    def __get__(self, obj: XmlObject | None, owner: type[XmlObject]) -> XmlChild[X] | X | None:
        if obj is None or self._path is None:
            return self
        found = self._path.elements(obj)
        return self._cls(found[0]) if found else None


class XmlChildren(_Declared, Generic[X]):
    """Every element `xpath` selects, in document order, each as a `cls`."""

    def __init__(self, cls: type[X], xpath: str) -> None:
        super().__init__(xpath)
        self._cls = cls

    @overload
    def __get__(self, obj: None, owner: type[XmlObject]) -> XmlChildren[X]: ...
    @overload
    def __get__(self, obj: XmlObject, owner: type[XmlObject]) -> tuple[X, ...]: ...
    def __get__(self, obj: XmlObject | None, owner: type[XmlObject]) -> XmlChildren[X] | tuple[X, ...]:
        if obj is None or self._path is None:
            return self
        cls = self._cls
        return tuple(cls(e) for e in self._path.elements(obj))


# libvirt's units for scaled integers (its schema's "unit" type), case-insensitive.
_SCALES = {"b": 1, "bytes": 1, "k": 1024, "kib": 1024, "m": 1024**2, "mib": 1024**2, "g": 1024**3, "gib": 1024**3}
_SCALES |= {"t": 1024**4, "tib": 1024**4, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4}


class ScaledInteger(XmlObject):
    """A libvirt scaled integer: <memory unit='KiB'>131072</memory>, <capacity unit='bytes'>..."""

    value = integer(".")
    unit = text("@unit")

    def bytes(self, default_unit: str) -> int:
        """The value in bytes, `default_unit` when the element has none (what libvirt assumes for it)."""
        unit = self.unit or default_unit
        factor = _SCALES.get(unit.lower())
        if factor is None:
            raise ValueError(f"unknown unit {unit!r}")
        return (self.value or 0) * factor
