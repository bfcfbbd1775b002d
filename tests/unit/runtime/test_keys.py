"""API key files: created with digests only (0600, atomically), checked, matched against a presented key, reloaded
with the last good one kept."""

from __future__ import annotations

import hashlib
import json
import os
import stat

import pytest

from orchestrator.runtime.keys import KEY_PREFIX, KeyRing, bearer_token, create_key, read_key_file


def test_create_key_appends_a_digest_and_returns_the_only_copy_of_the_key(tmp_path):
    path = tmp_path / "keys.yaml"
    first = create_key(path, "team-a", ("tiny-chat",))
    second = create_key(path, "ops")
    assert first.startswith(KEY_PREFIX) and len(first) > 40 and first != second
    text = path.read_text()
    assert first not in text and second not in text
    keys = read_key_file(path).keys
    assert [(k.name, k.deployments) for k in keys] == [("team-a", ("tiny-chat",)), ("ops", None)]
    assert keys[0].sha256 == hashlib.sha256(first.encode()).hexdigest()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["keys.yaml"]  # no temporary file left behind
    with pytest.raises(ValueError, match="already has a key named 'ops'"):
        create_key(path, "ops")


def test_a_json_key_file_stays_json(tmp_path):
    path = tmp_path / "keys.json"
    create_key(path, "a")
    assert json.loads(path.read_text())["keys"][0]["name"] == "a"


@pytest.mark.parametrize("text, says", [
    ("keys: [{name: Team_A, sha256: " + "a" * 64 + "}]", "keys.0.name"),
    ("keys: [{name: a, sha256: abc}]", "keys.0.sha256"),
    ("keys: [{name: a, sha256: " + "g" * 64 + "}]", "keys.0.sha256"),
    ("keys: [{name: a, sha256: " + "a" * 64 + ", key: mx-1}]", "keys.0.key: Extra inputs"),
    ("keys: [{name: a, sha256: " + "a" * 64 + ", deployments: [Bad Name]}]", "keys.0.deployments.0"),
    ("keys: [{name: a, sha256: " + "a" * 64 + "}, {name: a, sha256: " + "b" * 64 + "}]", "unique: ['a']"),
    ("keys: [{name: a, sha256: " + "a" * 64 + "}, {name: b, sha256: " + "A" * 64 + "}]", "same sha256"),
    ("keys: {a: 1}", "keys"),
    ("[1, 2]", "file"),
    ("keys: [", "not YAML"),
])
def test_a_broken_key_file_says_where(tmp_path, text, says):
    path = tmp_path / "keys.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=r"keys.yaml: .*" + says.replace("[", r"\[").replace("]", r"\]")):
        read_key_file(path)


@pytest.mark.parametrize("values, token", [
    (["Bearer mx-abc"], "mx-abc"),
    (["bearer   mx-abc  "], "mx-abc"),
    ([], None),
    (["mx-abc"], None),
    (["Basic mx-abc"], None),
    (["Bearer"], None),
    (["Bearer a b"], None),
    (["Bearer mx-abc", "Bearer mx-abc"], None),  # two Authorization headers: ambiguous, refused
])
def test_only_one_bearer_token_is_a_credential(values, token):
    assert bearer_token(values) == token


def test_the_keyring_finds_the_entry_of_a_key_and_keeps_the_last_good_file(tmp_path):
    path = tmp_path / "keys.yaml"
    a, b = create_key(path, "a"), create_key(path, "b", ("d",))
    ring = KeyRing(path, check_every_s=0.0)
    assert ring.identify(a).name == "a" and ring.identify(b).name == "b"
    assert ring.identify(a + "x") is None and ring.identify("") is None and ring.identify("\udcff") is None
    assert ring.identify(b).allows("d") and not ring.identify(b).allows("e") and ring.identify(a).allows("e")
    path.write_text("keys: [")  # broken: the last good keys stay
    assert ring.identify(a).name == "a"
    path.unlink()  # gone: the same
    assert ring.identify(b).name == "b"
    c = create_key(path, "c")  # a new good file replaces them
    assert ring.identify(c).name == "c" and ring.identify(a) is None


def test_a_keyring_will_not_start_on_a_broken_file(tmp_path):
    path = tmp_path / "keys.yaml"
    path.write_text("keys: [{name: a}]")
    with pytest.raises(ValueError, match="sha256"):
        KeyRing(path)
    with pytest.raises(OSError):
        KeyRing(tmp_path / "absent.yaml")
