"""Prometheus relabel_config semantics (replace, keep, drop, label*, hashmod, case, *equal), the
prometheus_ prefix merge rule, the `_source` marker and collision detection (no servers needed)."""

from __future__ import annotations

import hashlib

import pytest
from pydantic import ValidationError

from m3migrate.errors import ConfigError
from m3migrate.relabel import Relabeler, RelabelRule, merge_prometheus_prefix_rule

Labels = tuple[tuple[str, str], ...]

NODE: Labels = (("__name__", "node_load1"), ("instance", "node-000:9100"), ("job", "node"))


def L(**labels: str) -> Labels:
    return tuple(sorted(labels.items()))


def apply(labels: Labels, *rules: RelabelRule, **kw: object) -> dict[str, str] | None:
    out = Relabeler(list(rules), **kw)(labels)  # type: ignore[arg-type]
    return None if out is None else dict(out)


def go_hashmod(value: str, modulus: int) -> int:
    """Prometheus: md5 of the joined source values, the LAST 8 bytes as a big-endian uint64, mod modulus
    (relabel.go sum64 shifts bytes 0..7 out of a uint64, so only bytes 8..15 count)."""
    digest = hashlib.md5(value.encode()).digest()
    acc = 0
    for i, byte in enumerate(digest):
        shift = (15 - i) * 8
        if shift < 64:  # Go: a uint64 shifted by >= 64 is 0
            acc |= byte << shift
    return acc % modulus


# -- replace --------------------------------------------------------------------------------------


def test_replace_defaults_copy_the_value() -> None:
    """regex (.*) and replacement $1 by default: a plain copy into target_label."""
    rule = RelabelRule(source_labels=["job"], target_label="job_copy")
    assert (rule.regex, rule.replacement, rule.separator, rule.action) == ("(.*)", "$1", ";", "replace")
    assert apply(NODE, rule) == {**dict(NODE), "job_copy": "node"}


@pytest.mark.parametrize(
    ("replacement", "expected"),
    [
        ("$1", "node-000"),
        ("${1}", "node-000"),
        ("${1}_$2", "node-000_9100"),
        ("${1}-x", "node-000-x"),
        ("$$1", "$1"),  # $$ is a literal dollar
        ("host=${host},port=${port}", "host=node-000,port=9100"),  # named groups
        ("$host:$port", "node-000:9100"),
        ("[$3]", "[]"),  # a group that does not exist expands to ""
        ("constant", "constant"),
    ],
)
def test_replace_expands_groups_like_go(replacement: str, expected: str) -> None:
    rule = RelabelRule(
        source_labels=["instance"],
        regex=r"(?P<host>[^:]+):(?P<port>\d+)",
        target_label="out",
        replacement=replacement,
    )
    assert apply(NODE, rule)["out"] == expected  # type: ignore[index]


def test_replace_dollar_name_runs_to_the_longest_name() -> None:
    """Go's Expand reads `$1_x` as the group named `1_x` (empty), not `$1` + `_x`: the target is deleted."""
    rule = RelabelRule(source_labels=["job"], regex="(.*)", target_label="job", replacement="$1_x")
    assert "job" not in apply(NODE, rule)  # type: ignore[operator]


def test_replace_joins_sources_with_separator_and_missing_labels_are_empty() -> None:
    rule = RelabelRule(source_labels=["job", "missing", "instance"], separator="|", target_label="joined")
    assert apply(NODE, rule)["joined"] == "node||node-000:9100"  # type: ignore[index]
    only_missing = RelabelRule(source_labels=["missing", "job"], regex=";(.+)", target_label="from_job")
    assert apply(NODE, only_missing)["from_job"] == "node"  # type: ignore[index]


def test_replace_empty_result_deletes_the_target_label() -> None:
    labels = (*NODE, ("team", "infra"))
    rule = RelabelRule(source_labels=["env"], target_label="team")  # env missing -> "" -> $1 == ""
    assert apply(labels, rule) == dict(NODE)


def test_replace_without_match_changes_nothing() -> None:
    rule = RelabelRule(source_labels=["job"], regex="api", target_label="job", replacement="changed")
    assert apply(NODE, rule) == dict(NODE)


def test_regexes_are_anchored() -> None:
    rule = RelabelRule(source_labels=["job"], regex="nod", target_label="hit", replacement="yes")
    assert "hit" not in apply(NODE, rule)  # type: ignore[operator]
    keep = RelabelRule(source_labels=["instance"], regex="node-000", action="keep")
    assert apply(NODE, keep) is None  # "node-000" does not match "node-000:9100" as a whole


def test_replace_target_label_is_expanded_and_invalid_names_are_skipped() -> None:
    rule = RelabelRule(source_labels=["job"], regex="(.*)", target_label="is_$1", replacement="true")
    assert apply(NODE, rule)["is_node"] == "true"  # type: ignore[index]
    invalid = RelabelRule(source_labels=["instance"], regex="(.*)", target_label="${1}", replacement="x")
    assert apply(NODE, invalid) == dict(NODE)  # "node-000:9100" is no label name: Prometheus skips


def test_rules_apply_in_order_on_the_current_labels() -> None:
    first = RelabelRule(source_labels=["job"], target_label="stage", replacement="one")
    second = RelabelRule(source_labels=["stage"], regex="one", target_label="stage", replacement="two")
    assert apply(NODE, first, second)["stage"] == "two"  # type: ignore[index]


# -- keep / drop / keepequal / dropequal --------------------------------------------------------------


def test_keep_and_drop() -> None:
    keep = RelabelRule(source_labels=["job"], regex="node|api", action="keep")
    drop = RelabelRule(source_labels=["job"], regex="node|api", action="drop")
    assert apply(NODE, keep) == dict(NODE)
    assert apply(NODE, drop) is None
    other = L(__name__="up", job="billing")
    assert apply(other, keep) is None
    assert apply(other, drop) == dict(other)


def test_keep_on_a_missing_label_matches_the_empty_string() -> None:
    assert apply(NODE, RelabelRule(source_labels=["missing"], regex="", action="keep")) == dict(NODE)
    assert apply(NODE, RelabelRule(source_labels=["missing"], regex=".+", action="keep")) is None


def test_keepequal_and_dropequal() -> None:
    same = L(__name__="x", a="1", b="1")
    different = L(__name__="x", a="1", b="2")
    keepequal = RelabelRule(source_labels=["a"], target_label="b", action="keepequal")
    dropequal = RelabelRule(source_labels=["a"], target_label="b", action="dropequal")
    assert apply(same, keepequal) == dict(same)
    assert apply(different, keepequal) is None
    assert apply(same, dropequal) is None
    assert apply(different, dropequal) == dict(different)


# -- labeldrop / labelkeep / labelmap -------------------------------------------------------------


def test_labeldrop_and_labelkeep_match_label_names() -> None:
    labels = L(__name__="http_request_duration_seconds_bucket", instance="api-000:8080", job="api", le="0.5")
    assert apply(labels, RelabelRule(regex="le|instance", action="labeldrop")) == {
        "__name__": "http_request_duration_seconds_bucket",
        "job": "api",
    }
    assert apply(labels, RelabelRule(regex="__name__|job", action="labelkeep")) == {
        "__name__": "http_request_duration_seconds_bucket",
        "job": "api",
    }
    # anchored: "l" matches no name entirely
    assert apply(labels, RelabelRule(regex="l", action="labeldrop")) == dict(labels)


def test_labelmap_copies_matching_labels_under_the_new_name() -> None:
    labels = L(__name__="up", k8s_pod="p-1", k8s_namespace="prod", job="kube")
    out = apply(labels, RelabelRule(regex="k8s_(.+)", replacement="kube_$1", action="labelmap"))
    assert out == {**dict(labels), "kube_pod": "p-1", "kube_namespace": "prod"}  # originals stay


def test_labelmap_default_replacement_is_the_first_group() -> None:
    labels = L(__name__="up", meta_zone="eu-1")
    assert apply(labels, RelabelRule(regex="meta_(.+)", action="labelmap"))["zone"] == "eu-1"  # type: ignore[index]


# -- hashmod, lowercase, uppercase ----------------------------------------------------------------


@pytest.mark.parametrize("modulus", [1, 2, 7, 8, 1000, 2**40])
@pytest.mark.parametrize("value", ["node-000:9100", "", "api-017:8080;api", "東京"])
def test_hashmod_matches_prometheus(value: str, modulus: int) -> None:
    labels = (("__name__", "up"), ("instance", value)) if value else (("__name__", "up"),)
    rule = RelabelRule(source_labels=["instance"], target_label="shard", modulus=modulus, action="hashmod")
    expected = go_hashmod(value, modulus)
    assert apply(labels, rule)["shard"] == str(expected)  # type: ignore[index]


@pytest.mark.parametrize(
    ("value", "shards"),
    [
        # md5 = 1125597d3a2af50b 43250ecf54127d56 -> uint64(0x43250ecf54127d56) = 4838289658310982998
        ("node-000:9100", {3: 2, 16: 6, 97: 32}),
        # md5 = ff2ec92c2e29ca14 9d66c8e3eb862b83 -> 11341973592813742979 (> 2**63: unsigned)
        ("api-017:8080", {3: 2, 16: 3, 97: 21}),
    ],
)
def test_hashmod_pinned_values(value: str, shards: dict[int, int]) -> None:
    for modulus, shard in shards.items():
        rule = RelabelRule(source_labels=["instance"], target_label="shard", modulus=modulus, action="hashmod")
        assert apply(L(__name__="up", instance=value), rule) == {
            "__name__": "up",
            "instance": value,
            "shard": str(shard),
        }


def test_lowercase_and_uppercase() -> None:
    labels = L(__name__="edge_probe_rtt_seconds", city="Zürich", region="EU-West")
    lower = RelabelRule(source_labels=["city", "region"], target_label="lower", action="lowercase")
    upper = RelabelRule(source_labels=["region"], target_label="region", action="uppercase")
    out = apply(labels, lower, upper)
    assert out["lower"] == "zürich;eu-west"  # type: ignore[index]
    assert out["region"] == "EU-WEST"  # type: ignore[index]


def test_lowercase_of_nothing_deletes_the_target() -> None:
    labels = (*NODE, ("x", "set"))
    assert apply(labels, RelabelRule(source_labels=["missing"], target_label="x", action="lowercase")) == dict(NODE)


# -- prometheus_ prefix merge, _source, output rules, collisions --------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("prometheus_http_requests_total", "http_requests_total"),
        ("prometheus_tsdb_head_series", "tsdb_head_series"),
        ("http_requests_total", "http_requests_total"),
        ("up", "up"),
        ("prometheus_", "prometheus_"),  # nothing after the prefix: unchanged
        ("my_prometheus_x", "my_prometheus_x"),  # anchored
    ],
)
def test_merge_prometheus_prefix_rule(name: str, expected: str) -> None:
    labels = (("__name__", name), ("job", "prometheus"))
    assert apply(labels, merge_prometheus_prefix_rule())["__name__"] == expected  # type: ignore[index]


def test_merge_prefix_rule_with_another_prefix_is_escaped() -> None:
    rule = merge_prometheus_prefix_rule("m3.")
    assert apply(L(__name__="m3.x"), rule) == {"__name__": "x"}
    assert apply(L(__name__="m3_x"), rule) == {"__name__": "m3_x"}  # "." is literal, not any character


def test_source_label_is_added_after_the_rules() -> None:
    drop_source = RelabelRule(regex="_source", action="labeldrop")
    out = apply((*NODE, ("_source", "old")), drop_source, add_labels={"_source": "m3db"})
    assert out == {**dict(NODE), "_source": "m3db"}


def test_output_is_sorted_unique_without_empty_values() -> None:
    rules = [
        RelabelRule(source_labels=["job"], target_label="a_first", replacement="x"),
        RelabelRule(source_labels=["job"], target_label="zz_last", replacement="y"),
        RelabelRule(source_labels=["job"], target_label="a_first", replacement="x2"),  # overwrites, no duplicate
    ]
    out = Relabeler(rules, add_labels={"_source": "m3db"})(NODE)
    assert out is not None
    names = [name for name, _ in out]
    assert names == sorted(names)
    assert len(names) == len(set(names))
    assert all(value for _, value in out)
    assert dict(out)["a_first"] == "x2"
    assert out == tuple(sorted({**dict(NODE), "a_first": "x2", "zz_last": "y", "_source": "m3db"}.items()))


def test_unsorted_input_comes_out_sorted() -> None:
    out = Relabeler()((("job", "node"), ("__name__", "up"), ("instance", "i")))
    assert out == (("__name__", "up"), ("instance", "i"), ("job", "node"))


def test_empty_input_values_are_dropped() -> None:
    assert Relabeler()((("__name__", "up"), ("empty", ""))) == (("__name__", "up"),)


def test_invalid_output_label_name_raises_config_error() -> None:
    bad = RelabelRule(regex="k8s_(.+)", replacement="$1", action="labelmap")  # a valid template...
    relabel = Relabeler([bad])
    assert relabel(L(__name__="up", k8s_zone="a")) == L(__name__="up", k8s_zone="a", zone="a")
    with pytest.raises(ConfigError, match="invalid label name"):
        relabel(L(__name__="up", k8s_1zone="a"))  # ...expanding to "1zone", which is no label name


def test_removing_every_label_raises_config_error() -> None:
    with pytest.raises(ConfigError, match="removed every label"):
        Relabeler([RelabelRule(regex=".*", action="labeldrop")])(NODE)


def test_duplicate_source_label_names_raise_config_error() -> None:
    with pytest.raises(ConfigError, match="duplicate label names"):
        Relabeler()((("__name__", "up"), ("job", "a"), ("job", "b")))


def test_find_collisions_reports_prefix_merge_clashes() -> None:
    relabel = Relabeler([merge_prometheus_prefix_rule()], add_labels={"_source": "m3db"})
    prefixed = (("__name__", "prometheus_x"), ("a", "1"))
    plain = (("__name__", "x"), ("a", "1"))
    other = (("__name__", "x"), ("a", "2"))
    found = relabel.find_collisions([prefixed, other, plain])
    assert found == [(prefixed, plain, (("__name__", "x"), ("_source", "m3db"), ("a", "1")))]
    assert relabel.find_collisions([prefixed, other]) == []
    assert relabel.find_collisions([prefixed, prefixed]) == []  # the same series twice is no collision


def test_find_collisions_ignores_dropped_series_and_respects_limit() -> None:
    drop_x = RelabelRule(source_labels=["__name__"], regex="x", action="drop")
    relabel = Relabeler([merge_prometheus_prefix_rule(), drop_x])
    assert relabel.find_collisions([L(__name__="prometheus_x"), L(__name__="x")]) == []
    merging = Relabeler([RelabelRule(regex="i", action="labeldrop")])
    series = [L(__name__="m", i=str(k)) for k in range(10)]
    assert len(merging.find_collisions(series, limit=3)) == 3
    assert len(merging.find_collisions(series, limit=100)) == 9


# -- rule validation and cache --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"source_labels": ["a"], "action": "replace"}, "needs target_label"),
        ({"source_labels": ["a"], "action": "hashmod", "target_label": "s"}, "modulus"),
        ({"source_labels": ["a"], "action": "hashmod", "target_label": "s", "modulus": -1}, "modulus"),
        ({"source_labels": ["a"], "action": "lowercase"}, "needs target_label"),
        ({"source_labels": ["a"], "action": "uppercase", "target_label": "1bad"}, "not a valid label name"),
        ({"source_labels": ["a"], "action": "keepequal"}, "needs target_label"),
        ({"source_labels": ["a"], "action": "dropequal", "target_label": "b-c"}, "not a valid label name"),
        ({"source_labels": ["a"], "action": "hashmod", "target_label": "$1", "modulus": 2}, "not a valid label name"),
        ({"source_labels": ["a"], "action": "labeldrop", "regex": "x"}, "takes no source_labels"),
        ({"source_labels": ["a"], "action": "labelkeep", "regex": "x"}, "takes no source_labels"),
        ({"source_labels": ["a"], "action": "labelmap", "regex": "x"}, "takes no source_labels"),
        ({"source_labels": ["a"], "target_label": "bad-name"}, "not a valid"),  # Prometheus refuses it too
        ({"regex": "k8s_(.+)", "replacement": "bad-$1", "action": "labelmap"}, "not a valid"),
    ],
)
def test_check_rejects_bad_rules(kwargs: dict, message: str) -> None:
    rule = RelabelRule(**kwargs)
    with pytest.raises(ConfigError, match=message):
        rule.check()
    with pytest.raises(ConfigError):
        Relabeler([rule])  # the relabeler checks every rule up front


@pytest.mark.parametrize(
    "kwargs",
    [
        {"regex": "(unclosed"},
        {"action": "rename"},
        {"source_labels": ["a"], "target_label": "b", "unknown_field": 1},
    ],
)
def test_invalid_rule_fields_fail_validation(kwargs: dict) -> None:
    with pytest.raises(ValidationError):
        RelabelRule(**kwargs)


def test_check_accepts_valid_rules() -> None:
    for rule in [
        RelabelRule(source_labels=["a"], target_label="b"),
        RelabelRule(source_labels=["a"], target_label="${1}_x"),
        RelabelRule(source_labels=["a"], target_label="s", modulus=4, action="hashmod"),
        RelabelRule(regex="x", action="labeldrop"),
        RelabelRule(regex="k8s_(.+)", replacement="kube_$1", action="labelmap"),
        merge_prometheus_prefix_rule(),
    ]:
        rule.check()


def test_added_labels_are_validated() -> None:
    with pytest.raises(ConfigError):
        Relabeler(add_labels={"bad-name": "x"})
    with pytest.raises(ConfigError):
        Relabeler(add_labels={"_source": ""})


def test_cache_returns_the_same_result() -> None:
    calls = 0

    class Counting(Relabeler):
        def _apply(self, labels: Labels) -> Labels | None:
            nonlocal calls
            calls += 1
            return super()._apply(labels)

    relabel = Counting([merge_prometheus_prefix_rule()], add_labels={"_source": "m3db"})
    labels = (("__name__", "prometheus_x"), ("a", "1"))
    first = relabel(labels)
    second = relabel(labels)
    assert first == second == (("__name__", "x"), ("_source", "m3db"), ("a", "1"))
    assert first is second
    assert calls == 1
    dropping = Counting([RelabelRule(source_labels=["a"], regex="1", action="drop")])
    assert dropping(labels) is None and dropping(labels) is None  # a cached drop stays a drop
    assert calls == 2


def test_cache_is_bounded() -> None:
    relabel = Relabeler(cache_size=3)
    for k in range(10):
        assert relabel(L(__name__="m", i=str(k))) == L(__name__="m", i=str(k))
    assert len(relabel._cache) <= 3
