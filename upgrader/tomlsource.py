"""Checked TOML: the toolkit every loader of TOML input is written with.

The fleet file (:mod:`upgrader.config` and the feature parsers it composes), the flags file
(:mod:`upgrader.flags.loader`) and migration files (:mod:`upgrader.schema.loader`) all read
TOML the same way, so their errors read the same way: a
:class:`~upgrader.errors.ConfigError` naming the file, the key path (``hosts[3].labels.zone``)
and the line.

- Reading: :func:`read_text` (a file, errors naming it; bad UTF-8 names the line) and
  :func:`parse_toml` (tomllib, its syntax errors with their line).
- Locating: tomllib reports no positions for values, so :class:`Locator` finds the line of a
  key path in the source text. A :class:`Checker` builds it only when it raises, so large files
  load in linear time.
- Checking: :class:`Checker` getters (``string``, ``integer``, ``boolean``, ``duration``,
  ``percentage``, ``port``, ``choice``, ``array``, ``table``, ...) take a value out of a table
  and check it, raising ``ConfigError(file, key path, line)``; an unknown key in a table is an
  error with a did-you-mean. The same checks as plain functions (``check_*``) raise
  ``ValueError`` with the message only, for callers that locate errors their own way (a
  strategy's ``where``).

A feature that owns a table of the fleet file (``[windows]``, ``[lab]``, ``[strategy]``, ...)
receives a checker scoped to it (:meth:`Checker.under`), so its key paths are relative to its
table and its errors still name the whole path.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Any, Final, NoReturn, TypeVar

from . import units
from .errors import ConfigError

__all__ = [
    "REQUIRED",
    "Checker",
    "KeyPath",
    "Locator",
    "Path_",
    "check_array",
    "check_boolean",
    "check_choice",
    "check_duration",
    "check_integer",
    "check_path",
    "check_percentage",
    "check_port",
    "check_string",
    "check_url",
    "describe_value",
    "did_you_mean",
    "format_key_path",
    "line_in_file",
    "line_of",
    "parse_key_path",
    "parse_toml",
    "read_text",
    "toml_error_line",
    "unknown_key_message",
]

#: a key path: table keys and array indexes, ``("hosts", 3, "labels", "zone")``
KeyPath = tuple[str | int, ...]
#: the older name of :data:`KeyPath`
Path_ = KeyPath

_T = TypeVar("_T")

_BARE_KEY_RE = re.compile(r"[A-Za-z0-9_-]+")
_TOML_POSITION_RE = re.compile(r"\(at line (\d+), column (\d+)\)")


class _Required:
    """The type of :data:`REQUIRED`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "REQUIRED"


#: the ``default`` of a getter whose key must be present
REQUIRED: Final = _Required()


# ---------------------------------------------------------------------------------------------
# Reading


def toml_error_line(message: str, text: str) -> int:
    """The line a tomllib error message names ("(at line 3, column 7)"), else the last line."""
    match = _TOML_POSITION_RE.search(message)
    if match:
        return int(match.group(1))
    # "(at end of document)"
    return text.count("\n") + (0 if text.endswith("\n") else 1) or 1


def read_text(path: str | Path, what: str) -> str:
    """The text of the file at ``path`` (``what``: "flags file", ...); a missing, unreadable
    or non-UTF-8 file is a ConfigError naming it (and the line of the first bad byte)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"no such {what}", file=path) from None
    except OSError as exc:
        raise ConfigError(f"cannot read the {what}: {exc.strerror or exc}", file=path) from exc
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(f"the {what} is not UTF-8 text", file=path, line=line) from exc


def parse_toml(text: str, source: str | Path | None = "<string>") -> dict[str, Any]:
    """tomllib's document for ``text``; a syntax error is a ConfigError with its line."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", file=source,
                          line=toml_error_line(str(exc), text)) from exc
    except RecursionError as exc:
        raise ConfigError("not valid TOML: values nested too deeply", file=source,
                          line=1) from exc


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


class Locator:
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
# Messages


def describe_value(value: object) -> str:
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
    if value is None:
        return "nothing"
    return f"a date/time ({value})"


def did_you_mean(name: object, known: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest of ``known``, or ``""``: the hint every
    "unknown key / flag / variant" error of a file loader carries."""
    hint = difflib.get_close_matches(str(name), list(known), n=1)
    return f" (did you mean {hint[0]!r}?)" if hint else ""


def unknown_key_message(key: object, allowed: Collection[str], where: str = "") -> str:
    """``unknown key 'x' in [where] (did you mean 'y'?); allowed keys: a, b``."""
    message = f"unknown key {key!r}" + (f" in {where}" if where else "")
    message += did_you_mean(key, allowed)
    return message + f"; allowed keys: {', '.join(allowed) or '(none)'}"


def line_of(text: str, path: Iterable[str | int]) -> int | None:
    """The line (1-based) where ``path`` (or its deepest defined prefix) is defined in ``text``."""
    return Locator(text).line_of(path)


def line_in_file(file: str | Path | None, path: Iterable[str | int]) -> int | None:
    """:func:`line_of` in the file at ``file``, read now (for errors found after loading, when
    the text is gone); None when there is no such file or it cannot be read."""
    if file is None or str(file).startswith("<"):
        return None
    try:
        text = Path(file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    return Locator(text).line_of(path)


# ---------------------------------------------------------------------------------------------
# Value checks: a value in, the checked value out, or ValueError(message)


def check_string(value: object, *, pattern: re.Pattern[str] | None = None, what: str = "value",
                 words: str | None = None, line_breaks: bool = False) -> str:
    """A string; with ``pattern``, one that matches it whole (``words`` say what it allows).
    Line breaks are refused unless ``line_breaks``."""
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {describe_value(value)}")
    if pattern is not None and not pattern.fullmatch(value):
        raise ValueError(f"{value!r} is not a valid {what} "
                         f"(allowed: {words or pattern.pattern})")
    if not line_breaks and ("\n" in value or "\r" in value):
        raise ValueError("a value here may not contain a line break")
    return value


def check_integer(value: object, *, minimum: int | None = None,
                  maximum: int | None = None) -> int:
    """An integer (a boolean is not one) within the bounds given."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected an integer, got {describe_value(value)}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        if minimum is not None and maximum is not None:
            bounds = f"between {minimum} and {maximum}"
        elif minimum is not None:
            bounds = f"at least {minimum}"
        else:
            bounds = f"at most {maximum}"
        raise ValueError(f"expected an integer {bounds}, got {value}")
    return value


#: a file name longer than this (bytes, one path component) no file system takes (NAME_MAX)
PATH_NAME_MAX: Final = 255
#: a whole path longer than this (bytes) the OS refuses (PATH_MAX)
PATH_MAX: Final = 4095
#: C0 and C1 control characters and DEL (NUL included)
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def check_path(value: object, *, what: str = "file path") -> str:
    """A file path the OS can take: a non-empty string without control characters (NUL, line
    breaks, ...), no name longer than 255 bytes, the whole at most 4095 bytes. Checked before
    the path is opened, so a bad one is an error naming its key, never an ``OSError`` ("File
    name too long") or ``ValueError`` ("embedded null byte") from the OS."""
    if not isinstance(value, str):
        raise ValueError(f"expected a {what} (a string), got {describe_value(value)}")
    if not value.strip():
        raise ValueError(f"expected a {what}, got an empty string")
    if _CONTROL_CHARS.search(value):
        raise ValueError(f"a {what} may not contain control characters (NUL, line breaks, "
                         "escape, ...)")
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > PATH_MAX:
        raise ValueError(f"the {what} is {size} bytes long; the most a path can be is "
                         f"{PATH_MAX} bytes")
    for part in value.replace("\\", "/").split("/"):
        if len(part.encode("utf-8", "surrogatepass")) > PATH_NAME_MAX:
            raise ValueError(f"the {what} has a name longer than {PATH_NAME_MAX} bytes "
                             f"({part[:20]}...)")
    return value


def check_url(value: object, *, what: str = "URL") -> str:
    """A URL: a non-empty string without whitespace or control characters (a line break in
    a URL would smuggle a second line into a request or a shell)."""
    if not isinstance(value, str):
        raise ValueError(f"expected a {what} (a string), got {describe_value(value)}")
    if not value:
        raise ValueError(f"expected a {what}, got an empty string")
    if _CONTROL_CHARS.search(value) or any(ch.isspace() for ch in value):
        raise ValueError(f"{value!r} is not a valid {what}: it may not contain whitespace or "
                         "control characters (write a space as %20)")
    if len(value) > PATH_MAX:
        raise ValueError(f"the {what} is {len(value)} characters long; at most {PATH_MAX}")
    return value


def check_port(value: object) -> int:
    """A TCP port, 1 to 65535."""
    return check_integer(value, minimum=1, maximum=65535)


def check_boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {describe_value(value)}")
    return value


def check_choice(value: object, choices: Collection[str]) -> str:
    """One of ``choices`` (strings)."""
    if not isinstance(value, str) or value not in choices:
        shown = repr(value) if isinstance(value, str) else describe_value(value)
        raise ValueError(f"expected one of {', '.join(choices)}; got {shown}")
    return value


def check_duration(value: object, *, positive: bool = False) -> float:
    """Seconds from '10m', '1h30m', '250ms' or a number of seconds (>= 0; > 0 if
    ``positive``)."""
    seconds = units.parse_duration(value)
    if positive and seconds <= 0:
        raise ValueError(f"expected a duration above zero, got {value!r}")
    return seconds


def check_percentage(value: object, *, allow_zero: bool = True) -> float:
    """A percent 0..100 from '12.5%' or a number."""
    return units.parse_percent(value, allow_zero=allow_zero)


def check_array(value: object, *, what: str = "values", non_empty: bool = False) -> list[Any]:
    """A TOML array (``what``: what its items are, for the message)."""
    if not isinstance(value, list) or (non_empty and not value):
        article = "a non-empty" if non_empty else "an"
        raise ValueError(f"expected {article} array of {what}, got {describe_value(value)}")
    return value


# ---------------------------------------------------------------------------------------------
# The checker: getters that raise ConfigError(file, key path, line)


class Checker:
    """Checks values read from one TOML source and raises ConfigError naming the file, the
    key path and its line.

    :param source: the file errors name (``"<string>"`` or None when there is none).
    :param text: the source text, for lines; None for plain data that never was TOML (a
        flag set a store keeps as JSON): errors then carry no line.
    :param prefix: the key path of the table this checker is scoped to (see :meth:`under`).

    Getters take ``(table, path, key, default)``: ``path`` is the key path of ``table``,
    relative to the prefix; ``default`` is returned when ``key`` is absent
    (:data:`REQUIRED`: its absence is an error).
    """

    __slots__ = ("_located", "prefix", "source", "text")

    def __init__(self, source: str | Path | None, text: str | None = None, *,
                 prefix: KeyPath = ()) -> None:
        self.source = source
        self.text = text
        self.prefix = prefix
        self._located: list[Locator] = []     # built on the first error, shared by views

    def under(self, *prefix: str | int) -> Checker:
        """A checker for the table at ``prefix`` (relative to this one's): the paths it is
        given are relative to that table; its errors name the whole path."""
        view = Checker(self.source, self.text, prefix=self.prefix + prefix)
        view._located = self._located
        return view

    # -- errors

    def line_of(self, path: KeyPath) -> int | None:
        """The line of ``path`` (relative to the prefix), or of its deepest defined prefix;
        1 when none is found, None without source text."""
        if self.text is None:
            return None
        if not self._located:
            self._located.append(Locator(self.text))
        return self._located[0].line_of(self.prefix + tuple(path)) or 1

    def error(self, path: KeyPath, message: str) -> NoReturn:
        """Raise ConfigError(message) at ``path`` (relative to the prefix)."""
        full = self.prefix + tuple(path)
        raise ConfigError(message, file=self.source, key=format_key_path(full) or None,
                          line=self.line_of(path))

    def unknown_key(self, path: KeyPath, allowed: Collection[str], where: str) -> NoReturn:
        """``unknown key 'x' in [where] (did you mean 'y'?); allowed keys: ...``."""
        self.error(path, unknown_key_message(path[-1], allowed, where))

    def checked(self, path: KeyPath, check: Any, value: object, *args: Any,
                **kwargs: Any) -> Any:
        """``check(value, ...)``; its ValueError becomes a ConfigError at ``path``."""
        try:
            return check(value, *args, **kwargs)
        except ValueError as exc:
            self.error(path, str(exc))

    # -- tables

    def table(self, value: object, path: KeyPath, allowed: Collection[str] | None = None,
              where: str = "", *, what: str | None = None) -> dict[str, Any]:
        """``value`` must be a table; with ``allowed``, every key must be one of them.
        ``what`` is named in the type error ("expected a table ([windows]), got ...")."""
        if not isinstance(value, dict):
            shown = f" ({what})" if what else ""
            self.error(path, f"expected a table{shown}, got {describe_value(value)}")
        if allowed is not None and not value.keys() <= set(allowed):
            for key in value:
                if key not in allowed:
                    self.unknown_key(path + (key,), allowed, where)
        return value

    def get(self, table: Mapping[str, Any], path: KeyPath, key: str,
            default: object = REQUIRED, *, where: str = "") -> Any:
        """``table[key]``, or ``default`` when absent (missing required key/table)."""
        if key in table:
            return table[key]
        if default is REQUIRED:
            if not path and not self.prefix and not where:
                what = f"table [{key}]"
            else:
                what = f"key {key!r}" + (f" in {where}" if where else "")
            self.error(path + (key,), f"missing required {what}")
        return default

    def _value(self, table: Mapping[str, Any], path: KeyPath, key: str, default: object,
               check: Any, *args: Any, **kwargs: Any) -> Any:
        if key not in table:
            return self.get(table, path, key, default)
        return self.checked(path + (key,), check, table[key], *args, **kwargs)

    # -- getters

    def string(self, table: Mapping[str, Any], path: KeyPath, key: str,
               default: _T | _Required = REQUIRED, *, pattern: re.Pattern[str] | None = None,
               what: str = "", words: str | None = None) -> str | _T:
        """A one-line string; with ``pattern``, one that matches it whole."""
        result: str | _T = self._value(table, path, key, default, check_string,
                                       pattern=pattern, what=what or key, words=words)
        return result

    def integer(self, table: Mapping[str, Any], path: KeyPath, key: str,
                default: _T | _Required = REQUIRED, *, minimum: int | None = None,
                maximum: int | None = None) -> int | _T:
        result: int | _T = self._value(table, path, key, default, check_integer,
                                       minimum=minimum, maximum=maximum)
        return result

    def port(self, table: Mapping[str, Any], path: KeyPath, key: str,
             default: _T | _Required = REQUIRED) -> int | _T:
        result: int | _T = self._value(table, path, key, default, check_port)
        return result

    def path(self, table: Mapping[str, Any], path: KeyPath, key: str,
             default: _T | _Required = REQUIRED, *, what: str = "file path") -> str | _T:
        """A file path (:func:`check_path`)."""
        result: str | _T = self._value(table, path, key, default, check_path, what=what)
        return result

    def url(self, table: Mapping[str, Any], path: KeyPath, key: str,
            default: _T | _Required = REQUIRED, *, what: str = "URL") -> str | _T:
        """A URL (:func:`check_url`)."""
        result: str | _T = self._value(table, path, key, default, check_url, what=what)
        return result

    def boolean(self, table: Mapping[str, Any], path: KeyPath, key: str,
                default: _T | _Required = REQUIRED) -> bool | _T:
        result: bool | _T = self._value(table, path, key, default, check_boolean)
        return result

    def choice(self, table: Mapping[str, Any], path: KeyPath, key: str,
               choices: Collection[str], default: _T | _Required = REQUIRED) -> str | _T:
        result: str | _T = self._value(table, path, key, default, check_choice, choices)
        return result

    def duration(self, table: Mapping[str, Any], path: KeyPath, key: str,
                 default: _T | _Required = REQUIRED, *, positive: bool = False) -> float | _T:
        result: float | _T = self._value(table, path, key, default, check_duration,
                                         positive=positive)
        return result

    def percentage(self, table: Mapping[str, Any], path: KeyPath, key: str,
                   default: _T | _Required = REQUIRED, *,
                   allow_zero: bool = True) -> float | _T:
        result: float | _T = self._value(table, path, key, default, check_percentage,
                                         allow_zero=allow_zero)
        return result

    def array(self, table: Mapping[str, Any], path: KeyPath, key: str,
              default: _T | _Required = REQUIRED, *, what: str = "values",
              non_empty: bool = False) -> list[Any] | _T:
        """A TOML array (its items unchecked: check each with its path + index)."""
        result: list[Any] | _T = self._value(table, path, key, default, check_array,
                                             what=what, non_empty=non_empty)
        return result

    def subtable(self, table: Mapping[str, Any], path: KeyPath, key: str,
                 allowed: Collection[str] | None = None, where: str = "",
                 default: Mapping[str, Any] | _Required | None = None) -> dict[str, Any]:
        """The table at ``key`` (an empty one when absent and no default is given)."""
        value = self.get(table, path, key, {} if default is None else default)
        return self.table(value, path + (key,), allowed, where or f"[{key}]")

    def array_of_tables(self, table: Mapping[str, Any], path: KeyPath,
                        key: str) -> list[Any]:
        """``[[key]]``: a (possibly empty) array; its items are checked by the caller."""
        value = table.get(key, [])
        if not isinstance(value, list):
            self.error(path + (key,), f"expected an array of tables ([[{key}]]), "
                                      f"got {describe_value(value)}")
        return value
