"""TOML source text: where a key path is defined (line numbers for errors), key path
formatting and parsing, and value descriptions in TOML's words.

Shared by every loader of TOML input (the fleet file in :mod:`upgrader.config`, the flags file
in :mod:`upgrader.flags.loader`). tomllib reports no positions for values, so a small locator
(:class:`_Locator`) finds the line of a key path in the source text; loaders run it only when
they raise an error, so large files load in linear time.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable
from typing import Any

__all__ = ["Path_", "describe_value", "format_key_path", "line_of", "parse_key_path",
           "toml_error_line"]

Path_ = tuple[str | int, ...]

_BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")
_TOML_POSITION_RE = re.compile(r"\(at line (\d+), column (\d+)\)")


def _toml_error_line(message: str, text: str) -> int:
    match = _TOML_POSITION_RE.search(message)
    if match:
        return int(match.group(1))
    # "(at end of document)"
    return text.count("\n") + (0 if text.endswith("\n") else 1) or 1


# ---------------------------------------------------------------------------------------------
# Key paths


def format_key_path(path: Iterable[str | int]) -> str:
    """("hosts", 3, "labels", "zone") -> 'hosts[3].labels.zone' (odd keys quoted)."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            text = part if _BARE_KEY_RE.fullmatch(part) else _quote_key(part)
            out += f".{text}" if out else text
    return out


def _quote_key(key: str) -> str:
    return '"' + key.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


_PATH_PART_RE = re.compile(r'\s*(?:"((?:[^"\\]|\\.)*)"|([^.\[\]"]+)|\[(\d+)\])\s*\.?')


def parse_key_path(text: str) -> Path_:
    """'steps[1].pause' (or 'steps.1.pause') -> ("steps", 1, "pause"); best effort."""
    parts: list[str | int] = []
    pos = 0
    while pos < len(text):
        match = _PATH_PART_RE.match(text, pos)
        if not match or match.end() == pos:
            parts.append(text[pos:])
            break
        quoted, bare, index = match.groups()
        if index is not None:
            parts.append(int(index))
        elif quoted is not None:
            parts.append(quoted.replace('\\"', '"').replace("\\\\", "\\"))
        else:
            bare = bare.strip()
            parts.append(int(bare) if bare.isdigit() else bare)
        pos = match.end()
    return tuple(parts)


# ---------------------------------------------------------------------------------------------
# The locator: the line of a key path in TOML source text


# Fast paths for the lines most fleet files are made of; anything else takes the general
# scanner. A simple scalar: a one-line string without escapes, a number, a boolean, a date.
_SCALAR = r"""(?:"[^"\\\n]*"(?!")|'[^'\n]*'(?!')|[-+0-9A-Za-z_.:]+)"""
_PAIR = rf"([A-Za-z0-9_-]+)[ \t]*=[ \t]*{_SCALAR}"
_PAIR_RE = re.compile(_PAIR)
#: `key = scalar` or `key = {k = scalar, ...}`, then a comment or the end of the line
_SIMPLE_KEY_VALUE_RE = re.compile(
    rf"([A-Za-z0-9_-]+)[ \t]*=[ \t]*(?:{_SCALAR}|(\{{[ \t]*(?:{_PAIR}(?:[ \t]*,[ \t]*{_PAIR})*)?"
    r"[ \t]*\}))[ \t]*(?:#[^\n]*)?(?=\r?\n|\Z)")
#: `[a.b]` or `[[a.b]]` with bare keys
_SIMPLE_HEADER_RE = re.compile(
    r"(\[\[?)[ \t]*([A-Za-z0-9_-]+(?:[ \t]*\.[ \t]*[A-Za-z0-9_-]+)*)[ \t]*(\]\]?)"
    r"[ \t]*(?:#[^\n]*)?(?=\r?\n|\Z)")

_BLANK_RE = re.compile(r"(?:[ \t\r]+|#[^\n]*)*")
_BLANK_LINES_RE = re.compile(r"(?:[ \t\r\n]+|#[^\n]*)*")


class _Stop(Exception):
    pass


class _Locator:
    """Maps key paths to the 1-based line where they are defined.

    Walks the text once, tracking the current table header (``[a.b]``, ``[[hosts]]`` with a
    counter per array of tables, so ``hosts[3]`` is the 4th ``[[hosts]]``), ``key =`` lines,
    dotted keys, inline tables and array items. Assumes text tomllib accepted; on anything
    unexpected it stops and keeps what it found.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.line = 1
        self.lines: dict[Path_, int] = {}
        self._arrays: dict[Path_, int] = {}
        try:
            self._document()
        except (_Stop, IndexError, RecursionError):
            pass

    def line_of(self, path: Iterable[str | int]) -> int | None:
        """The line of the deepest prefix of ``path`` that is defined in the text."""
        key = tuple(path)
        for n in range(len(key), 0, -1):
            line = self.lines.get(key[:n])
            if line is not None:
                return line
        return None

    # -- structure

    def _document(self) -> None:
        text = self.text
        table: Path_ = ()
        while True:
            self._skip_blank(newlines=True)
            if self.pos >= len(text):
                return
            line = self.line
            header = _SIMPLE_HEADER_RE.match(text, self.pos)
            if header and len(header.group(1)) == len(header.group(3)):
                keys = tuple(k.strip() for k in header.group(2).split("."))
                self.pos = header.end()
                is_array = header.group(1) == "[["
            elif text.startswith("[[", self.pos):
                self.pos += 2
                keys = self._key()
                self._expect("]]")
                is_array = True
            elif text.startswith("[", self.pos):
                self.pos += 1
                keys = self._key()
                self._expect("]")
                is_array = False
            else:
                simple = _SIMPLE_KEY_VALUE_RE.match(text, self.pos)
                if simple:  # `key = value` without the general scanner
                    path = table + (simple.group(1),)
                    self.lines.setdefault(path, line)
                    inline = simple.group(2)
                    if inline:
                        for pair in _PAIR_RE.finditer(inline):
                            self.lines.setdefault(path + (pair.group(1),), line)
                    self.pos = simple.end()
                else:
                    self._key_value(table)
                continue
            if is_array:
                array = self._resolve(keys[:-1]) + (keys[-1],)
                index = self._arrays.get(array, -1) + 1
                self._arrays[array] = index
                self._mark_prefixes(array, line)
                table = array + (index,)
                self.lines[table] = line
            else:
                table = self._resolve(keys)
                self._mark_prefixes(table[:-1], line)
                self.lines[table] = line

    def _key_value(self, table: Path_) -> None:
        line = self.line
        keys = self._key()
        self._expect("=")
        path = table + keys
        self._mark_prefixes(path[:-1], line)
        self._value(path)

    def _resolve(self, keys: Path_) -> Path_:
        """A header's key path, with the current index after every array of tables."""
        path: Path_ = ()
        for key in keys:
            path += (key,)
            index = self._arrays.get(path)
            if index is not None:
                path += (index,)
        return path

    def _mark_prefixes(self, path: Path_, line: int) -> None:
        for n in range(1, len(path) + 1):
            self.lines.setdefault(path[:n], line)

    # -- values

    def _value(self, path: Path_) -> None:
        text = self.text
        self.lines.setdefault(path, self.line)
        char = text[self.pos]
        if char in "\"'":
            self._string()
        elif char == "[":
            self.pos += 1
            index = 0
            while True:
                self._skip_blank(newlines=True)
                if text[self.pos] == "]":
                    self.pos += 1
                    return
                self._value(path + (index,))
                index += 1
                self._skip_blank(newlines=True)
                if text[self.pos] == ",":
                    self.pos += 1
        elif char == "{":
            self.pos += 1
            while True:
                self._skip_blank(newlines=True)
                if text[self.pos] == "}":
                    self.pos += 1
                    return
                self._key_value(path)
                self._skip_blank(newlines=True)
                if text[self.pos] == ",":
                    self.pos += 1
        else:
            start = self.pos
            end = len(text)
            while self.pos < end and text[self.pos] not in ",]}#\r\n":
                self.pos += 1
            if self.pos == start:
                raise _Stop

    def _string(self) -> str:
        """Skip a string of any of the four kinds; return its raw text."""
        text = self.text
        start = self.pos
        quote = text[start]
        if text.startswith(quote * 3, start):
            i = start + 3
            while True:
                if i >= len(text):
                    raise _Stop
                if quote == '"' and text[i] == "\\":
                    i += 2
                    continue
                if text.startswith(quote * 3, i):
                    i += 3
                    for _ in range(2):  # up to two more quotes belong to the content
                        if i < len(text) and text[i] == quote:
                            i += 1
                    break
                i += 1
        else:
            i = start + 1
            while True:
                if i >= len(text) or text[i] == "\n":
                    raise _Stop
                if quote == '"' and text[i] == "\\":
                    i += 2
                    continue
                if text[i] == quote:
                    i += 1
                    break
                i += 1
        self.line += text.count("\n", start, i)
        self.pos = i
        return text[start:i]

    def _key(self) -> Path_:
        text = self.text
        parts: list[str | int] = []
        while True:
            self._skip_blank(newlines=False)
            char = text[self.pos]
            if char in "\"'":
                raw = self._string()
                if char == "'":
                    parts.append(raw[1:-1])
                else:
                    try:
                        parts.append(tomllib.loads(f"k = {raw}")["k"])
                    except tomllib.TOMLDecodeError:
                        parts.append(raw[1:-1])
            else:
                match = _BARE_KEY_RE.match(text, self.pos)
                if not match:
                    raise _Stop
                parts.append(match.group())
                self.pos = match.end()
            self._skip_blank(newlines=False)
            if self.pos < len(text) and text[self.pos] == ".":
                self.pos += 1
                continue
            return tuple(parts)

    def _expect(self, token: str) -> None:
        self._skip_blank(newlines=False)
        if not self.text.startswith(token, self.pos):
            raise _Stop
        self.pos += len(token)
        self._skip_blank(newlines=False)

    def _skip_blank(self, *, newlines: bool) -> None:
        """Skip spaces and comments (and line breaks, counting them, when ``newlines``)."""
        if newlines:
            end = _BLANK_LINES_RE.match(self.text, self.pos).end()  # type: ignore[union-attr]
            self.line += self.text.count("\n", self.pos, end)
        else:
            end = _BLANK_RE.match(self.text, self.pos).end()  # type: ignore[union-attr]
        self.pos = end


# ---------------------------------------------------------------------------------------------
# Value descriptions for messages


def _describe(value: Any) -> str:
    """'a string ("abc")', 'an integer (42)', 'a table', ... in TOML's words."""
    if isinstance(value, bool):
        return f"a boolean ({'true' if value else 'false'})"
    if isinstance(value, int):
        return f"an integer ({value})"
    if isinstance(value, float):
        return f"a float ({value})"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"a string ({shown!r})"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return f"a date/time ({value})"


#: public names for the helpers above
toml_error_line = _toml_error_line
describe_value = _describe


def line_of(text: str, path: Iterable[str | int]) -> int | None:
    """The line (1-based) where ``path`` (or its deepest defined prefix) is defined in ``text``."""
    return _Locator(text).line_of(path)


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``known``, or ``""``: the hint every
    "unknown key / flag / variant" error of a file loader carries."""
    import difflib

    hint = difflib.get_close_matches(str(name), list(known), n=1)
    return f" (did you mean {hint[0]!r}?)" if hint else ""
