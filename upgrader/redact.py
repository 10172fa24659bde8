"""Keep secrets out of logs, events and the journal.

Three kinds of secret are replaced by ``***`` wherever text leaves the process through
upgrader (events, the journal, log records, error messages on stderr, the control API):

- the password part of a URL (``postgresql://user:PASSWORD@host/db``) and ``password=...``
  in a libpq connection string or a query string (``?token=...``);
- the value of an ``Authorization`` / ``X-API-Key`` header, and ``Bearer <token>``;
- known secret values: settings whose names say they are secret (``token``, ``password``,
  ``secret``, ``api_key``, ``passphrase``, ...), environment variables with such names
  (``PGPASSWORD``, ``DEPLOY_TOKEN``), passwords of configured URLs and the hosts' secret
  ``vars`` (secret-named, or written as a reference: ``{ env = "NAME" }``,
  ``{ file = "PATH" }``, ``{ value = "...", secret = true }``), registered with
  :func:`add_secret` when a rollout opens. A command that echoes its ``$DEPLOY_TOKEN`` in an
  error message, or whose rendered argv holds a secret var, is therefore masked too.

A ``key: value`` pattern masks a value, not prose: ``password: unknown key`` keeps "unknown"
(an ordinary word followed by more words is the rest of a sentence, not a password).

A leaf module: it imports nothing from upgrader, so every layer may use it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import traceback
from collections.abc import Iterable, Mapping
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit, urlunsplit

MASK = "***"
#: known secret values shorter than this are not registered (masking "1" or "true"
#: everywhere would garble every message and protect nothing)
MIN_SECRET_LENGTH = 6

#: a setting or variable whose name has one of these words holds a secret
_SECRET_WORDS = ("password", "passwd", "pass", "passphrase", "secret", "token", "apikey",
                 "api_key", "key", "credential", "credentials", "auth", "authorization",
                 "cookie", "private_key", "access_key", "dsn")
#: ... unless the name ends like this: it says where the secret is, not what it is
_POINTER_SUFFIXES = ("_file", "_env", "_path", "_var", "_name", "_id", "_kind", "_url", "_host",
                     "_port", "_user", "_username", "_sock", "_socket", "_dir", "_mode",
                     "_type", "_timeout")

_URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*):(?P<pw>[^@\s/]*)@")
_KEYWORD = re.compile(
    r"(?P<head>\b(?:password|passwd|passphrase|pwd|token|access_token|api_key|apikey|secret|"
    r"client_secret|sslpassword)\s*(?P<sep>[=:])(?P<space>\s*))"
    r"(?P<value>'[^']*'|\"[^\"]*\"|[^\s&;,'\"]+)",
    re.IGNORECASE)
#: after ``key: `` an ordinary word (letters, at most a capital first) followed by another
#: word is the rest of a sentence ("no token: every local client may ..."), not a secret
_PROSE_WORD = re.compile(r"[A-Za-z][a-z]*")
_PROSE_NEXT = re.compile(r" +[A-Za-z'\"(]")
_HEADER = re.compile(
    r"(?P<head>\b(?:proxy-)?authorization\s*[:=]\s*(?:(?:bearer|basic|token|digest)\s+)?|"
    r"\bx-api-key\s*[:=]\s*)(?P<value>[^\s,;'\"}]+)", re.IGNORECASE)
_BEARER = re.compile(r"(?P<head>\bbearer\s+)(?P<value>[A-Za-z0-9._~+/=-]{8,})",
                     re.IGNORECASE)

_lock = threading.Lock()
#: registered values masked wherever they occur (MIN_SECRET_LENGTH or longer)
_secrets: frozenset[str] = frozenset()
_secret_re: re.Pattern[str] | None = None
#: declared secrets shorter than that: masked where they stand as a word of their own
_short_secrets: frozenset[str] = frozenset()
_short_re: re.Pattern[str] | None = None
_log_redaction_installed = False
# Bumped whenever the registered values change: cached results are keyed on it, so a result
# computed before a secret was added is never served after.
_generation = 0


def is_secret_name(name: str) -> bool:
    """True if a setting, header or variable called ``name`` holds a secret value."""
    lowered = name.lower().replace("-", "_")
    if lowered.endswith(_POINTER_SUFFIXES):
        return False
    words = [w for w in re.split(r"[_.\s]+", lowered) if w]
    joined = "_".join(words)
    return any(w in _SECRET_WORDS for w in words) or any(
        w in joined for w in ("password", "passphrase", "secret", "token", "api_key", "apikey",
                              "private_key", "access_key", "credential"))


def _forms(value: str) -> set[str]:
    """``value`` as it may be written out: itself, JSON-escaped (with and without
    ``ensure_ascii``) and inside a Python ``repr`` (backslashes, quotes, unicode escapes)."""
    return {value, json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1],
            repr(value)[1:-1]}


def _alternation(values: Iterable[str]) -> str:
    ordered = sorted(values, key=len, reverse=True)   # longest first: no partial masks
    return "|".join(re.escape(v) for v in ordered)


def add_secret(value: Any, *, declared: bool = False) -> None:
    """Mask ``value`` from now on wherever upgrader writes text.

    A value shorter than :data:`MIN_SECRET_LENGTH` is ignored (masking every "1" or "true"
    would garble every message and protect nothing), unless ``declared``: a value the fleet
    says is a secret (a secret var) is then masked where it stands as a word of its own, not
    inside other words. Values made only of ``*`` cannot be told from the mask and are
    ignored."""
    add_secrets((value,), declared=declared)


def add_secrets(values: Iterable[Any], *, declared: bool = False) -> None:
    """:func:`add_secret` for many values, compiling the pattern once (not once per host of
    a fleet whose hosts each have their own secret var)."""
    global _secrets, _secret_re, _short_secrets, _short_re, _generation
    long_forms: set[str] = set()
    short_forms: set[str] = set()
    for value in values:
        if not isinstance(value, str):
            continue
        value = value.strip()
        if not value.strip("*"):
            continue
        for form in _forms(value):
            if len(form) >= MIN_SECRET_LENGTH:
                long_forms.add(form)
            elif declared:
                short_forms.add(form)
    if long_forms <= _secrets and short_forms <= _short_secrets:
        return
    with _lock:
        if not long_forms <= _secrets:
            _secrets = _secrets | long_forms
            _secret_re = re.compile(_alternation(_secrets))
        if not short_forms <= _short_secrets:
            _short_secrets = _short_secrets | short_forms
            _short_re = re.compile(rf"(?<!\w)(?:{_alternation(_short_secrets)})(?!\w)")
        _generation += 1            # after the patterns: a result cached under it used them


def forget_secrets() -> None:
    """Forget every registered value (tests; a long-lived process between fleets)."""
    global _secrets, _secret_re, _short_secrets, _short_re, _generation
    with _lock:
        _secrets, _secret_re = frozenset(), None
        _short_secrets, _short_re = frozenset(), None
        _generation += 1


def add_host_secrets(hosts: Iterable[Any]) -> None:
    """Register the secret ``vars`` of ``hosts`` (:class:`upgrader.model.Host`): those whose
    names say they are secret, those the fleet file marked secret (``secret_vars``: written
    as an ``env`` / ``file`` reference or with ``secret = true``), and URL passwords in any."""
    declared: set[str] = set()
    for host in hosts:
        marked = getattr(host, "secret_vars", ())
        for name, value in getattr(host, "vars", {}).items():
            if name in marked or is_secret_name(str(name)):
                declared.add(value)
            if isinstance(value, str) and "://" in value:
                add_url_secret(value)
    add_secrets(declared, declared=True)


def add_url_secret(url: str | None) -> None:
    """Register the password of ``url`` (if it has one)."""
    if not url or "://" not in url:
        return
    try:
        password = urlsplit(url).password
    except ValueError:
        return
    if password:
        add_secret(password)
        from urllib.parse import unquote

        add_secret(unquote(password))


def add_environment_secrets(environ: Mapping[str, str] | None = None) -> None:
    """Register the values of environment variables whose names say they are secret."""
    for name, value in (os.environ if environ is None else environ).items():
        if is_secret_name(name):
            add_secret(value)


def add_settings_secrets(settings: Mapping[str, Any]) -> None:
    """Register the secrets in a provider's settings table: secret-named values, secret-named
    variables of an ``env`` table, the token a ``*_env`` / ``*_file`` setting points at, and
    URL passwords."""
    for key, value in settings.items():
        key = str(key)
        if isinstance(value, Mapping):
            for name, item in value.items():
                if is_secret_name(str(name)) or is_secret_name(key):
                    add_secret(item)
                if isinstance(item, str):
                    add_url_secret(item)
            continue
        if isinstance(value, str):
            add_url_secret(value)
            lowered = key.lower()
            if is_secret_name(key):
                add_secret(value)
            elif lowered.endswith("_env") and is_secret_name(lowered[:-4]):
                add_secret(os.environ.get(value, ""))
            elif lowered.endswith("_file") and is_secret_name(lowered[:-5]):
                try:
                    with open(os.path.expanduser(value), encoding="utf-8") as handle:
                        add_secret(handle.read(4096))
                except (OSError, UnicodeDecodeError):
                    pass
        elif isinstance(value, (list, tuple)):
            for item in value:
                if isinstance(item, str):
                    add_url_secret(item)


def known_secret_count() -> int:
    return len(_secrets) + len(_short_secrets)


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (other parts kept, for messages)."""
    if "://" not in url:
        return redact_text(url)
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return redact_text(url)
    if password is None:
        return redact_text(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port:
        host += f":{parts.port}"
    netloc = f"{parts.username}:{MASK}@{host}" if parts.username else f"{MASK}@{host}"
    return redact_text(urlunsplit(parts._replace(netloc=netloc)))


def _mask_known(text: str) -> str:
    """Registered values masked until none is left (so a mask next to a secret's own first or
    last characters cannot spell it again). Ends: each pass that changes the text replaces
    at least one character other than ``*`` by ``*`` (no value is made only of ``*``)."""
    while True:
        before = text
        pattern = _secret_re
        if pattern is not None:
            text = pattern.sub(MASK, text)
        short = _short_re
        if short is not None:
            text = short.sub(MASK, text)
        if text == before:
            break
    return text


def _mask_pair(match: re.Match[str]) -> str:
    value = match["value"]
    if value == MASK:
        return match[0]
    if match["sep"] == ":" and match["space"] and _PROSE_WORD.fullmatch(value) \
            and _PROSE_NEXT.match(match.string, match.end()):
        return match[0]                 # "no token: every local client ...": a sentence
    return match["head"] + MASK


def redact_text(text: str) -> str:
    """``text`` with URL passwords, credential headers, ``password=``-style pairs and every
    registered secret value replaced by ``***``."""
    if not text:
        return text
    if len(text) <= _CACHED_LENGTH:
        # events repeat the same short strings (host names, phases, releases) many times a
        # second on a big fleet: their redaction is remembered per set of registered values
        return _redact_cached(text, _generation)
    return _redact_text(text)


_CACHED_LENGTH = 200


@lru_cache(maxsize=16384)
def _redact_cached(text: str, generation: int) -> str:
    return _redact_text(text)


def _redact_text(text: str) -> str:
    known = _secret_re is not None or _short_re is not None
    if known:
        text = _mask_known(text)
    if "://" in text:
        text = _URL_PASSWORD.sub(lambda m: f"{m['head']}:{MASK}@", text)
    if "=" in text or ":" in text:
        text = _KEYWORD.sub(_mask_pair, text)
        text = _HEADER.sub(lambda m: m["head"] + MASK, text)
    text = _BEARER.sub(lambda m: m["head"] + MASK, text)
    if known:
        text = _mask_known(text)        # a kept head next to a mask spells no secret either
    return text


def redact_data(value: Any) -> Any:
    """``value`` (JSON-like data: dicts, lists, strings) with every string redacted. Keys and
    non-string values are kept; the input is not changed."""
    kind = type(value)
    if kind is str:
        return redact_text(value)
    if kind is int or kind is float or kind is bool or value is None:
        return value
    if kind is dict:
        return {k: redact_data(v) for k, v in value.items()}
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {k: redact_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_data(v) for v in value) if isinstance(value, list) \
            else tuple(redact_data(v) for v in value)
    return value


def redact_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """A settings table fit to show: secret-named values masked, the rest redacted."""
    shown: dict[str, Any] = {}
    for key, value in settings.items():
        if is_secret_name(str(key)) and value not in ("", None):
            shown[key] = MASK
        elif isinstance(value, Mapping):
            shown[key] = {k: (MASK if is_secret_name(str(k)) else redact_data(v))
                          for k, v in value.items()}
        else:
            shown[key] = redact_data(value)
    return shown


def install_log_redaction() -> None:
    """Redact every log record created in this process from now on (message, arguments and
    traceback text). Idempotent."""
    global _log_redaction_installed
    with _lock:
        if _log_redaction_installed:
            return
        _log_redaction_installed = True
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:           # a bad format string: leave it to the handler to report
            return record
        record.msg, record.args = redact_text(message), ()
        if record.exc_info and record.exc_info[0] is not None:
            record.exc_text = redact_text("".join(
                traceback.format_exception(*record.exc_info)).rstrip("\n"))
        return record

    logging.setLogRecordFactory(factory)


def register_all(urls: Iterable[str | None] = (), settings: Iterable[Mapping[str, Any]] = (),
                 hosts: Iterable[Any] = ()) -> None:
    """Register environment secrets, URL passwords, settings secrets and the hosts' secret
    vars, and redact logs."""
    add_environment_secrets()
    for url in urls:
        add_url_secret(url)
    for table in settings:
        add_settings_secrets(table)
    add_host_secrets(hosts)
    install_log_redaction()
