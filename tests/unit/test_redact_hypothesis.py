"""Property tests of the redactor (issue 13): random secrets, short, with regex
metacharacters, with unicode, registered as a fleet registers its secret vars, never come out
of :func:`upgrader.redact.redact_text` / :func:`redact_data`, in plain text or JSON."""

from __future__ import annotations

import json

from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from upgrader import redact

#: any printable text (a var is one line, without control characters), metacharacters
#: and unicode included
secrets = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=24)
words = st.text(st.characters(whitelist_categories=("Ll", "Lu", "Nd")), min_size=1,
                max_size=10)
TEMPLATES = ("install failed: token {s} rejected", "deploy --password={s} --host web-02",
             '["deploy", "{s}", "2.0.0"]', "{s}", "auth {s}: {s} again {s}",
             "url https://app:{s}@db/x", "password: {s}")


def registered(secret: str) -> str:
    redact.forget_secrets()
    redact.add_secret(secret, declared=True)
    return secret.strip()


@settings(max_examples=300, deadline=None)
@given(secret=secrets, template=st.sampled_from(TEMPLATES), before=words, after=words)
@example(secret="a.b*c", template="install failed: token {s} rejected", before="x", after="y")
@example(secret="(?:", template="{s}", before="x", after="y")
@example(secret="pässwörd-日本", template="{s}", before="x", after="y")
@example(secret="\\1$&", template="deploy --password={s} --host web-02", before="x", after="y")
def test_a_registered_secret_never_comes_out(secret, template, before, after):
    value = registered(secret)
    assume(value.strip("*"))
    text = f"{before} {template.format(s=value)} {after}"
    shown = redact.redact_text(text)
    if len(value) >= redact.MIN_SECRET_LENGTH:
        assert value not in shown
    else:                           # short: masked wherever it stands as a word of its own
        assert not redact._short_re.search(shown)
    if not any(value in part for part in (before, after, *template.split("{s}"))):
        assert shown.startswith(before) and shown.endswith(after)   # the rest is kept


@settings(max_examples=200, deadline=None)
@given(secret=secrets, before=words)
def test_json_output_carries_no_form_of_the_secret(secret, before):
    value = registered(secret)
    assume(len(value) >= redact.MIN_SECRET_LENGTH and value.strip("*"))
    data = {"kind": "host_failed", "reason": f"{before} {value}", "argv": ["x", value]}
    for dumped in (json.dumps(redact.redact_data(data)),
                   json.dumps(redact.redact_data(data), ensure_ascii=False),
                   redact.redact_text(json.dumps(data)),
                   redact.redact_text(repr(data))):
        assert value not in dumped
        assert json.dumps(value)[1:-1] not in dumped


@settings(max_examples=200, deadline=None)
@given(secret=secrets, template=st.sampled_from(TEMPLATES))
def test_redaction_is_idempotent(secret, template):
    value = registered(secret)
    once = redact.redact_text(template.format(s=value))
    assert redact.redact_text(once) == once


def teardown_module() -> None:
    redact.forget_secrets()
