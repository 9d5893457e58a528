"""Signed URLs, the pure part: the scheme as README writes it, every refusal, the expiry edge, rotation, client
binding, prefix tokens, the key that leaves the token out, and the config that describes it."""

from __future__ import annotations

import base64
import hashlib
import hmac
from pathlib import Path

import pytest

from edgecache.config import Site, build
from edgecache.core.keys import make_key
from edgecache.core.signing import Refusal, Signing, sign, verify
from edgecache.errors import ConfigError

SECRET = "s3cret-s3cret-s3cret"
OLD = "old-secret-old-secret"
RULES = Signing((SECRET,))
T = 1_900_000_000  # an expiry


def site(rules: Signing = RULES) -> Site:
    return Site("v", ("video.test",), ("http://127.0.0.1:1",), signing=rules)


def check(target: str, client: str = "192.0.2.7", now: float = T - 60, rules: Signing = RULES) -> Refusal | None:
    """As both request paths ask it: the key leaves the token out, and verify() reads it from the key."""
    s = site(rules)
    key = make_key(s.name, "video.test", target, s.key_query)
    return verify(rules, key.path, key.unkeyed, client, now)


def mac(secret: str, text: str) -> str:
    digest = hmac.new(secret.encode(), text.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def test_the_scheme_is_exactly_the_one_the_readme_gives() -> None:
    """A provider's backend computes the signature from the documented string alone (here, without sign())."""
    expected = mac(SECRET, f"{T}\npath\n/v/a.mp4\n")
    assert sign(RULES, "/v/a.mp4", T) == f"/v/a.mp4?expires={T}&signature={expected}"
    assert check(f"/v/a.mp4?expires={T}&signature={expected}") is None
    bound = Signing((SECRET,), client=True)
    assert sign(bound, "/v/a.mp4", T, client="192.0.2.7").endswith(mac(SECRET, f"{T}\npath\n/v/a.mp4\n192.0.2.7"))
    prefixed = sign(RULES, "/v/set/seg1.ts", T, prefix="/v/set/")
    expected = mac(SECRET, f"{T}\nprefix\n/v/set/\n")
    assert prefixed == f"/v/set/seg1.ts?prefix=/v/set/&expires={T}&signature={expected}"


def test_missing_and_malformed_tokens() -> None:
    good = sign(RULES, "/v/a.mp4", T)
    sig = good.rpartition("signature=")[2]
    assert check("/v/a.mp4") is Refusal.MISSING
    assert check(f"/v/a.mp4?expires={T}") is Refusal.MISSING
    assert check(f"/v/a.mp4?signature={sig}") is Refusal.MISSING
    assert check(f"/v/a.mp4?expires=-{T}&signature={sig}") is Refusal.MALFORMED
    assert check(f"/v/a.mp4?expires=1e9&signature={sig}") is Refusal.MALFORMED
    assert check(f"/v/a.mp4?expires=1234567890123&signature={sig}") is Refusal.MALFORMED  # 13 digits
    assert check(f"/v/a.mp4?expires={T}&signature={sig}=") is Refusal.MALFORMED  # padding
    assert check(f"/v/a.mp4?expires={T}&signature={sig[:-1]}") is Refusal.MALFORMED
    assert check(f"/v/a.mp4?expires={T}&signature={sig[:-1]}%2B") is Refusal.MALFORMED  # '+': not base64url
    assert check(f"{good}&expires={T}") is Refusal.MALFORMED  # twice: which one would count?
    assert check(f"{good}&prefix=v/") is Refusal.MALFORMED  # a prefix is a path
    assert check(f"{good}&prefix=/%FF/") is Refusal.MALFORMED  # not UTF-8
    assert check(good.replace("expires=", "Expires=")) is Refusal.MISSING  # names are case-sensitive


def test_wrong_signatures() -> None:
    good = sign(RULES, "/v/a.mp4", T)
    assert check(good) is None
    assert check(good.replace("/a.mp4", "/b.mp4")) is Refusal.WRONG  # another object
    assert check(good.replace(f"expires={T}", f"expires={T + 1}")) is Refusal.WRONG  # a longer life
    assert check(sign(Signing(("someone-elses-secret",)), "/v/a.mp4", T)) is Refusal.WRONG
    # The path is signed normalised: the same object spelt otherwise is the same object...
    assert check(good.replace("/v/a.mp4", "/v/./x/../%61.mp4")) is None
    # ...and other parameters (keyed or not) are not signed: they never change which object is fetched
    assert check(good + "&itag=22") is None


def test_the_expiry_edge_is_the_expires_second_itself() -> None:
    good = sign(RULES, "/v/a.mp4", T)
    assert check(good, now=T - 1) is None
    assert check(good, now=T - 0.001) is None
    assert check(good, now=T) is Refusal.EXPIRED
    assert check(good, now=T + 3600) is Refusal.EXPIRED
    # A wrong token is called wrong, not expired: "expired" is only said of a real one
    assert check(good.replace("/a.mp4", "/b.mp4"), now=T + 1) is Refusal.WRONG


def test_rotation_any_listed_secret_validates_and_the_first_signs() -> None:
    old_token = sign(Signing((OLD,)), "/v/a.mp4", T)
    rotating = Signing((SECRET, OLD))
    assert check(old_token, rules=rotating) is None
    assert sign(rotating, "/v/a.mp4", T) == sign(RULES, "/v/a.mp4", T)
    assert check(old_token, rules=RULES) is Refusal.WRONG  # once the old one is removed


def test_tokens_bound_to_the_client_address() -> None:
    bound = Signing((SECRET,), client=True)
    token = sign(bound, "/v/a.mp4", T, client="192.0.2.7")
    assert check(token, client="192.0.2.7", rules=bound) is None
    assert check(token, client="::ffff:192.0.2.7", rules=bound) is None  # a dual-stack socket's view of it
    assert check(token, client="192.0.2.8", rules=bound) is Refusal.WRONG
    assert check(token, client="-", rules=bound) is Refusal.WRONG
    assert check(sign(RULES, "/v/a.mp4", T), rules=bound) is Refusal.WRONG  # an unbound token
    v6 = sign(bound, "/v/a.mp4", T, client="2001:DB8:0:0::1")
    assert check(v6, client="2001:db8::1", rules=bound) is None
    with pytest.raises(ValueError, match="binds tokens to a client"):
        sign(bound, "/v/a.mp4", T)
    with pytest.raises(ValueError, match="does not bind"):
        sign(RULES, "/v/a.mp4", T, client="192.0.2.7")


def test_prefix_tokens_cover_a_segment_set_and_nothing_else() -> None:
    token = sign(RULES, "/v/set/", T, prefix="/v/set/")
    query = token.partition("?")[2]
    for segment in ("/v/set/master.m3u8", "/v/set/720p/seg00001.ts", "/v/set/"):
        assert check(f"{segment}?{query}") is None
    assert check(f"/v/setx/a.ts?{query}") is Refusal.OUTSIDE
    assert check(f"/v/other/a.ts?{query}") is Refusal.OUTSIDE
    assert check(f"/v/set/../other/a.ts?{query}") is Refusal.OUTSIDE  # normalised before it is compared
    assert check(f"/v/set/a.ts?{query.replace('/v/set/', '/v/')}") is Refusal.WRONG  # a wider prefix
    assert check(f"/v/set/a.ts?{query.replace('prefix=/v/set/', 'prefix=%2Fv%2Fset%2F')}") is None  # urlencoded
    # A token for the path "/v/set/" is no prefix token for it: the scope is signed
    path_token = sign(RULES, "/v/set/", T).partition("?")[2]
    assert check(f"/v/set/a.ts?{path_token}&prefix=/v/set/") is Refusal.WRONG
    with pytest.raises(ValueError, match="not under the prefix"):
        sign(RULES, "/v/other/a.ts", T, prefix="/v/set/")


def test_sign_refuses_what_could_never_be_valid() -> None:
    with pytest.raises(ValueError, match="already carries"):
        sign(RULES, f"/v/a.mp4?expires={T}", T)
    with pytest.raises(ValueError, match="origin-form"):
        sign(RULES, "v/a.mp4", T)
    with pytest.raises(ValueError, match="out of range"):
        sign(RULES, "/v/a.mp4", 10**12)
    # No request comes from these: `edgecache sign --client` printed URLs no viewer could ever use.
    bound = Signing((SECRET,), client=True)
    for client in ("viewer.example", "203.0.113.7 ", "203.0.113.007", ""):
        with pytest.raises(ValueError, match="is not an IP address"):
            sign(bound, "/v/a.mp4", T, client=client)


def test_the_token_is_neither_keyed_nor_sent_to_the_origin() -> None:
    s = site()
    one = make_key(s.name, "video.test", sign(RULES, "/v/a.mp4?itag=22", T), s.key_query)
    two = make_key(s.name, "video.test", sign(RULES, "/v/a.mp4?itag=22", T + 60), s.key_query)
    plain = make_key(s.name, "video.test", "/v/a.mp4?itag=22", s.key_query)
    assert one.primary == two.primary == plain.primary == "v|video.test|/v/a.mp4?itag=22"
    assert one.target == one.full_target == "/v/a.mp4?itag=22"
    assert one.unkeyed == f"expires={T}&signature={sign(RULES, '/v/a.mp4?itag=22', T).rpartition('=')[2]}"
    # A site without signing keys every parameter, as before
    unsigned = Site("u", ("video.test",), ("http://127.0.0.1:1",))
    assert make_key("u", "video.test", "/a?expires=1", unsigned.key_query).primary == "u|video.test|/a?expires=1"


SITE = {"name": "v", "hosts": ["video.test"], "origins": ["http://10.0.0.1:8080"]}


def problems(signing: object, base: Path = Path("/etc/edgecache"), **site: object) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        build({"sites": [{**SITE, **site, "signing": signing}]}, "f.toml", base)
    return exc.value.problems


def test_config_of_signing(tmp_path: Path) -> None:
    cfg = build({"sites": [{**SITE, "signing": {"secrets": [SECRET, OLD], "client": True}}]}, "f.toml", tmp_path)
    assert cfg.sites[0].signing == Signing((SECRET, OLD), client=True)
    assert SECRET not in repr(cfg.sites[0])  # a site is logged now and then: its secrets never are
    (tmp_path / "keys").write_text(f"# rotated 2026-12-01\n{SECRET}\n\n  {OLD}  \n")
    cfg = build({"sites": [{**SITE, "signing": {"secret_file": "keys", "expires_param": "e"}}]}, "f.toml", tmp_path)
    assert cfg.sites[0].signing == Signing((SECRET, OLD), expires_param="e")


def test_bad_signing_config_is_named(tmp_path: Path) -> None:
    assert problems({}) == ["f.toml: sites[0].signing.secrets: give exactly one of secrets and secret_file"]
    assert problems({"secrets": [SECRET], "secret_file": "k"}) == [
        "f.toml: sites[0].signing.secrets: give exactly one of secrets and secret_file"
    ]
    assert problems({"secrets": []}) == ["f.toml: sites[0].signing.secrets: must give at least one secret"]
    assert problems({"secrets": [12345678901234567890]}) == [
        "f.toml: sites[0].signing.secrets: expected a list of strings",
        "f.toml: sites[0].signing.secrets: must give at least one secret",
    ]
    assert problems({"secrets": [SECRET, "short"]}) == [
        "f.toml: sites[0].signing.secrets: every secret must be at least 16 characters"
    ]
    assert problems({"secret_file": "nope"}, tmp_path) == [
        f"f.toml: sites[0].signing.secret_file: cannot read {str(tmp_path / 'nope')!r}: No such file or directory"
    ]
    (tmp_path / "empty").write_text("# nothing yet\n")
    assert problems({"secret_file": "empty"}, tmp_path) == [
        "f.toml: sites[0].signing.secret_file: must give at least one secret"
    ]
    assert problems({"secrets": [SECRET], "signature_param": "sig&x", "client": "yes", "ttl": 3}) == [
        "f.toml: sites[0].signing.ttl: unknown key",
        "f.toml: sites[0].signing.signature_param: expected a query parameter name of letters, digits, '-', '.', "
        "'_' or '~'",
        "f.toml: sites[0].signing.client: expected true or false",
    ]
    assert problems({"secrets": [SECRET], "prefix_param": "expires"}) == [
        "f.toml: sites[0].signing.expires_param: the expiry, signature and prefix parameters must have different names"
    ]
    assert problems({"secrets": [SECRET]}, key_query=["itag", "signature"]) == [
        "f.toml: sites[0].key_query: 'signature' carries a signed URL's token: it is never keyed"
    ]
    assert problems("yes") == ["f.toml: sites[0].signing: expected a table"]


def test_edgecache_sign_durations_and_refusals(tmp_path: Path) -> None:
    from edgecache.signcmd import duration, signed_url

    assert [duration(d) for d in ("90", "90s", "30m", "1h", "7d")] == [90, 90, 1800, 3600, 7 * 86400]
    for bad in ("1y", "-1h", "1.5h", "", "h"):
        with pytest.raises(ValueError, match="not a duration"):
            duration(bad)
    # A URL valid for no time is refused from the moment it is made (valid while now < expires): it printed one,
    # exit 0, that every node answers 403 "signed URL expired".
    for zero in ("0", "0s", "00h"):
        with pytest.raises(ValueError, match="must be at least 1 second"):
            duration(zero)
    plain = {"name": "plain", "hosts": ["plain.test"], "origins": ["http://10.0.0.1:8080"]}
    cfg = build({"sites": [{**SITE, "signing": {"secrets": [SECRET]}}, plain]}, "f.toml", tmp_path)
    url = signed_url(cfg, "http://video.test/v/a.mp4?itag=1", None, 60, T - 60)
    assert url == "http://video.test" + sign(RULES, "/v/a.mp4?itag=1", T)
    assert signed_url(cfg, "/v/a.mp4", "v", 60, T - 60) == sign(RULES, "/v/a.mp4", T)
    refusals = [
        (("http://other.test/a", None), "no site serves 'other.test'"),
        (("http://video.test/a", "plain"), "'video.test' is not a host of site 'plain'"),
        (("http://plain.test/a", None), "site 'plain' has no \\[sites.signing\\] table"),
        (("/a", "nope"), "no site is named 'nope'"),
        (("/a", None), "give a URL with a host, or --site"),
        (("/a", "plain"), "site 'plain' has no \\[sites.signing\\] table"),
    ]
    for (url, site_name), message in refusals:
        with pytest.raises(ValueError, match=message):
            signed_url(cfg, url, site_name, 60, T)
