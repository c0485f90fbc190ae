"""Text the CLI prints, made safe for a terminal.

Names, labels and messages that come from a tenant (a dataset's display name, an attribute's label, a sample key,
an error message quoting them) may hold control characters: an ESC sequence retitles or recolours a terminal, a
carriage return overwrites what was printed before it. `printable` escapes them the way Python's repr does (`\\x1b`,
`\\u009b`, `\\n`), keeping ordinary text ("é", "顔") as it is; `echo` prints a line through it.

A backslash is left as it is, so a name holding the four characters `\\x1b` reads like an escaped ESC; it does
nothing to the terminal either way. JSON output (`json.dumps`, `json_format.MessageToJson`) escapes control
characters itself (`ensure_ascii`) and needs none of this.
"""

from __future__ import annotations

import sys
from typing import TextIO

NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(char: str) -> str:
    if char in NAMED:
        return NAMED[char]
    code = ord(char)
    if code < 0x80:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def printable(value: object) -> str:
    """`value` as text with every non-printable code point escaped: C0 controls, DEL, C1 controls, and the other
    code points Python does not print (format characters such as bidi overrides, separators, unassigned)."""
    text = value if isinstance(value, str) else str(value)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def echo(text: object, *, file: TextIO | None = None) -> None:
    """Prints one line of output, escaped (see `printable`)."""
    print(printable(text), file=file if file is not None else sys.stdout)
