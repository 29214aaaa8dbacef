"""Open311 GeoReport v2 XML: `<service_requests><request>…</request></service_requests>` and friends.

Open311 XML is flat (one element per field, lists of `<value>`s for service attributes), so a few lines
over `xml.sax.saxutils.escape` write it. Text is made safe for XML 1.0: characters XML cannot carry
(most C0 controls, lone surrogates) are dropped, and a carriage return is written as `&#13;` so a parser
gives it back instead of turning it into a newline.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any
from xml.sax.saxutils import escape

XML_DECLARATION = '<?xml version="1.0" encoding="utf-8"?>'
_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_ENTITIES = {"\r": "&#13;"}
# Open311 list fields and the element each member goes in.
_LIST_ITEMS = {"attributes": "attribute", "values": "value", "keywords": "keyword"}


def xml_text(value: Any) -> str:
    """A value as escaped XML character data (None is empty; booleans as Open311 writes them)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return escape(_NOT_XML.sub("", str(value)), _ENTITIES)


def _element(tag: str, value: Any) -> str:
    if isinstance(value, Mapping):
        inner = "".join(_element(key, item) for key, item in value.items())
    elif isinstance(value, list | tuple):
        child = _LIST_ITEMS.get(tag, "item")
        inner = "".join(_element(child, item) for item in value)
    else:
        inner = xml_text(value)
    return f"<{tag}>{inner}</{tag}>"


def document(root: str, item: str, items: Iterable[Mapping[str, Any]]) -> bytes:
    """`<root><item>fields…</item>…</root>` as UTF-8 bytes."""
    body = "".join(_element(item, fields) for fields in items)
    return f"{XML_DECLARATION}\n<{root}>{body}</{root}>\n".encode()


def single(root: str, fields: Mapping[str, Any]) -> bytes:
    """One object as its own root, e.g. `<service_definition>…</service_definition>`."""
    return f"{XML_DECLARATION}\n{_element(root, fields)}\n".encode()


def errors(items: Iterable[Mapping[str, Any]]) -> bytes:
    """`<errors><error><code>400</code><description>…</description></error></errors>`."""
    return document("errors", "error", items)
