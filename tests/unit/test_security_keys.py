"""API key file parsing, reloading and matching, and the bearer metadata parser."""

from __future__ import annotations

import hashlib
import logging
import os

import pytest

from services.gateway.auth import ApiKeyFile, KeyFileError, bearer_token, key_digest, parse_api_keys

ALICE_KEY = "alice-0123456789abcdef"
BOB_KEY = "bob-fedcba9876543210"


class FakeClock:
    def __init__(self):
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


def test_parses_names_keys_hashes_and_options():
    bob_hash = hashlib.sha256(BOB_KEY.encode()).hexdigest()
    keys = parse_api_keys(f"""
        # comment line
        alice  {ALICE_KEY}  max_sessions=3   # trailing comment
        bob    sha256:{bob_hash.upper()}
        carol  carol-0123456789abcdef revoked max_sessions=1
    """)
    assert [k.name for k in keys] == ["alice", "bob", "carol"]
    assert keys[0].sha256 == key_digest(ALICE_KEY) and keys[0].max_sessions == 3
    assert not keys[0].revoked
    assert keys[1].sha256 == key_digest(BOB_KEY) and keys[1].max_sessions is None
    assert keys[2].revoked and keys[2].max_sessions == 1


@pytest.mark.parametrize(
    "line, needle",
    [
        ("alice", "expected NAME KEY"),
        ("al/ice 0123456789abcdef0", "may hold only"),
        ("alice short", "shorter than 16"),
        ("alice sha256:abc", "64 hex digits"),
        ("alice 0123456789abcdef0 max_sessions=0", "max_sessions"),
        ("alice 0123456789abcdef0 max_sessions=two", "max_sessions"),
        ("alice 0123456789abcdef0 expired", "unknown option 'expired'"),
    ],
)
def test_malformed_lines_are_refused_naming_the_line(line, needle):
    with pytest.raises(KeyFileError) as err:
        parse_api_keys(f"# header\n{line}\n")
    assert "line 2" in str(err.value) and needle in str(err.value)


def test_repeated_names_or_keys_are_refused_without_showing_the_key():
    with pytest.raises(KeyFileError, match="used twice"):
        parse_api_keys(f"alice {ALICE_KEY}\nalice {BOB_KEY}\n")
    with pytest.raises(KeyFileError, match="repeats") as err:
        parse_api_keys(f"alice {ALICE_KEY}\nbob {ALICE_KEY}\n")
    assert ALICE_KEY not in str(err.value)


@pytest.mark.parametrize(
    "metadata, token",
    [
        ((("authorization", f"Bearer {ALICE_KEY}"),), ALICE_KEY),
        ((("x-other", "1"), ("authorization", f"bearer   {ALICE_KEY} ")), ALICE_KEY),
        ((), None),
        (None, None),
        ((("authorization", ALICE_KEY),), None),
        ((("authorization", f"Basic {ALICE_KEY}"),), None),
        ((("authorization", "Bearer "),), None),
        ((("authorization", "Bearer two words"),), None),
        ((("authorization", f"Bearer {ALICE_KEY}"), ("authorization", f"Bearer {BOB_KEY}")), None),
    ],
)
def test_bearer_token(metadata, token):
    assert bearer_token(metadata) == token


def write_atomically(path, text: str) -> None:
    """Replace the file the way a Kubernetes Secret update does: a new inode, swapped in."""
    staging = path.with_suffix(".new")
    staging.write_text(text)
    os.replace(staging, path)


def test_finds_keys_and_follows_file_changes_after_the_interval(tmp_path):
    path = tmp_path / "keys"
    path.write_text(f"alice {ALICE_KEY}\n")
    clock = FakeClock()
    keys = ApiKeyFile(path, reload_interval_s=2.0, clock=clock)
    assert keys.find(key_digest(ALICE_KEY)).name == "alice"
    assert keys.find(key_digest(BOB_KEY)) is None

    write_atomically(path, f"alice {ALICE_KEY} revoked\nbob {BOB_KEY} max_sessions=2\n")
    clock.now_s = 1.9  # not yet time to look at the file
    assert not keys.find(key_digest(ALICE_KEY)).revoked
    assert keys.find(key_digest(BOB_KEY)) is None
    clock.now_s = 2.0
    assert keys.find(key_digest(ALICE_KEY)).revoked
    assert keys.find(key_digest(BOB_KEY)).max_sessions == 2

    write_atomically(path, f"bob {BOB_KEY}\n")
    clock.now_s = 4.0
    assert keys.find(key_digest(ALICE_KEY)) is None


def test_an_in_place_edit_is_seen(tmp_path):
    path = tmp_path / "keys"
    path.write_text(f"alice {ALICE_KEY}\n")
    clock = FakeClock()
    keys = ApiKeyFile(path, reload_interval_s=2.0, clock=clock)
    path.write_text(f"alice {ALICE_KEY} revoked\n")  # same inode, other size and mtime
    clock.now_s = 2.0
    assert keys.find(key_digest(ALICE_KEY)).revoked


def test_a_broken_update_keeps_the_previous_keys_and_is_logged(tmp_path, caplog):
    path = tmp_path / "keys"
    path.write_text(f"alice {ALICE_KEY}\n")
    clock = FakeClock()
    keys = ApiKeyFile(path, reload_interval_s=2.0, clock=clock)
    write_atomically(path, f"alice {ALICE_KEY} sometimes\n")
    clock.now_s = 2.0
    with caplog.at_level(logging.ERROR):
        assert keys.find(key_digest(ALICE_KEY)).name == "alice"
    assert "not reloaded" in caplog.text and "unknown option" in caplog.text
    assert ALICE_KEY not in caplog.text
    path.unlink()
    clock.now_s = 4.0
    assert keys.find(key_digest(ALICE_KEY)).name == "alice"
    write_atomically(path, f"bob {BOB_KEY}\n")  # fixed: taken up at the next check
    clock.now_s = 6.0
    assert keys.find(key_digest(ALICE_KEY)) is None
    assert keys.find(key_digest(BOB_KEY)).name == "bob"


def test_an_unreadable_or_malformed_file_fails_at_start(tmp_path):
    with pytest.raises(KeyFileError, match="cannot read --api-keys-file"):
        ApiKeyFile(tmp_path / "missing")
    (tmp_path / "bad").write_text("alice short\n")
    with pytest.raises(KeyFileError, match="line 1"):
        ApiKeyFile(tmp_path / "bad")
