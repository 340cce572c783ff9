"""The dashboard's signed session cookies: what a cookie value stands for, and when it stops."""

from __future__ import annotations

from forge.api.auth import SessionCookies
from forge.config import AuthSettings
from forge.core.auth import ADMIN, Caller

ADMIN_KEY = "forge-admin-" + "c" * 32
NOW = 1_800_000_000.0
OWNER = Caller(key_id="key_" + "a" * 26, owner_id="alice")


def cookies(**settings: object) -> SessionCookies:
    return SessionCookies(AuthSettings.model_validate({"enabled": True, **settings}))


def test_a_cookie_names_its_key_until_it_expires() -> None:
    signer = cookies(admin_key=ADMIN_KEY)
    value = signer.issue(OWNER, now=NOW)
    assert signer.key_id_of(value, now=NOW + 60) == OWNER.key_id
    expires = int(value.split(".")[2])
    assert signer.key_id_of(value, now=expires - 1) == OWNER.key_id
    assert signer.key_id_of(value, now=expires) is None


def test_a_changed_cookie_names_nothing() -> None:
    signer = cookies(admin_key=ADMIN_KEY)
    value = signer.issue(OWNER, now=NOW)
    version, key_id, expires, mac = value.split(".")
    for changed in (
        f"{version}.key_{'b' * 26}.{expires}.{mac}",  # another key
        f"{version}.{key_id}.{int(expires) + 3600}.{mac}",  # a later expiry
        f"{version}.{key_id}.{expires}.{mac[:-1]}{'0' if mac[-1] != '0' else '1'}",
        f"v2.{key_id}.{expires}.{mac}",
        f"{version}.admin.{expires}.{mac}",
        "",
        "v1.x.y.z",
    ):
        assert signer.key_id_of(changed, now=NOW) is None, changed


def test_replicas_with_the_same_admin_key_agree_and_a_new_admin_key_ends_admin_sessions() -> None:
    value = cookies(admin_key=ADMIN_KEY).issue(ADMIN, now=NOW)
    assert cookies(admin_key=ADMIN_KEY).key_id_of(value, now=NOW) == "admin"
    assert cookies(admin_key="forge-admin-" + "d" * 32).key_id_of(value, now=NOW) is None
    # Also with a session secret of its own: an admin session is bound to the admin key.
    secret = "s" * 32
    bound = cookies(admin_key=ADMIN_KEY, session_secret=secret).issue(ADMIN, now=NOW)
    same = cookies(admin_key=ADMIN_KEY, session_secret=secret)
    changed = cookies(admin_key="forge-admin-" + "d" * 32, session_secret=secret)
    assert same.key_id_of(bound, now=NOW) == "admin"
    assert changed.key_id_of(bound, now=NOW) is None
    # An owner's session outlives the admin key's change when the secret is configured.
    owner = same.issue(OWNER, now=NOW)
    assert changed.key_id_of(owner, now=NOW) == OWNER.key_id


def test_without_an_admin_key_there_is_no_admin_session() -> None:
    signer = cookies()
    assert signer.key_id_of(signer.issue(ADMIN, now=NOW), now=NOW) is None
    # Sessions are this process's own then.
    assert cookies().key_id_of(signer.issue(OWNER, now=NOW), now=NOW) is None
