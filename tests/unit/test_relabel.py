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


# -- Prometheus' own cases and RE2 semantics (issue 20) ---------------------------------------------
#
# PROM_CASES are TestRelabel in prometheus/prometheus model/relabel/relabel_test.go (main, 2026-08), as data:
# input, rules, and the output (None: dropped) Prometheus states. Left out: the cases with UTF-8 label
# names ("utf-8.label"), which m3migrate's legacy-name target does not accept. Go's test fills defaults
# as RelabelRule does: regex (.*), separator ";", replacement $1, action replace.


def R(**fields: object) -> dict[str, object]:
    """A rule's fields, built into a RelabelRule inside the test (a rule that fails to build fails its case)."""
    return fields


PROM_CASES: list[tuple[dict[str, str], list[dict[str, object]], dict[str, str] | None]] = [
    (
        {"a": "foo", "b": "bar", "c": "baz"},
        [R(source_labels=["a"], regex="f(.*)", target_label="d", replacement="ch${1}-ch${1}")],
        {"a": "foo", "b": "bar", "c": "baz", "d": "choo-choo"},
    ),
    (
        {"a": "foo", "b": "bar", "c": "baz"},
        [
            R(source_labels=["a", "b"], regex="f(.*);(.*)r", target_label="a", replacement="b${1}${2}m"),
            R(source_labels=["c", "a"], regex="(b).*b(.*)ba(.*)", target_label="d", replacement="$1$2$2$3"),
        ],
        {"a": "boobam", "b": "bar", "c": "baz", "d": "boooom"},
    ),
    (
        {"a": "foo"},
        [
            R(source_labels=["a"], regex=".*o.*", action="drop"),
            R(source_labels=["a"], regex="f(.*)", target_label="d", replacement="ch$1-ch$1"),
        ],
        None,
    ),
    ({"a": "foo", "b": "bar"}, [R(source_labels=["a"], regex=".*o.*", action="drop")], None),
    (
        {"a": "abc"},
        [R(source_labels=["a"], regex=".*(b).*", target_label="d", replacement="$1")],
        {"a": "abc", "d": "b"},
    ),
    ({"a": "foo"}, [R(source_labels=["a"], regex="no-match", action="drop")], {"a": "foo"}),
    ({"a": "foo"}, [R(source_labels=["a"], regex="f|o", action="drop")], {"a": "foo"}),
    ({"a": "foo"}, [R(source_labels=["a"], regex="no-match", action="keep")], None),
    ({"a": "foo"}, [R(source_labels=["a"], regex="f.*", action="keep")], {"a": "foo"}),
    ({"a": "boo"}, [R(source_labels=["a"], regex="f", target_label="b", replacement="bar")], {"a": "boo"}),
    (
        {"a": "foo", "f": "baz"},
        [R(source_labels=["a"], regex="(f).*", target_label="$1", replacement="$2")],
        {"a": "foo"},
    ),
    (
        {"a": "foo", "b": "bar", "c": "baz"},
        [R(source_labels=["c"], target_label="d", action="hashmod", modulus=1000)],
        {"a": "foo", "b": "bar", "c": "baz", "d": "976"},
    ),
    (
        {"a": "foo\nbar"},
        [R(source_labels=["a"], target_label="b", action="hashmod", modulus=1000)],
        {"a": "foo\nbar", "b": "734"},
    ),
    (
        {"a": "foo", "b1": "bar", "b2": "baz"},
        [R(regex="(b.*)", replacement="bar_${1}", action="labelmap")],
        {"a": "foo", "b1": "bar", "b2": "baz", "bar_b1": "bar", "bar_b2": "baz"},
    ),
    (
        {"a": "foo", "__meta_my_bar": "aaa", "__meta_my_baz": "bbb", "__meta_other": "ccc"},
        [R(regex="__meta_(my.*)", replacement="${1}", action="labelmap")],
        {
            "a": "foo",
            "__meta_my_bar": "aaa",
            "__meta_my_baz": "bbb",
            "__meta_other": "ccc",
            "my_bar": "aaa",
            "my_baz": "bbb",
        },
    ),
    (
        {"a": "some-name-value"},
        [R(source_labels=["a"], regex="some-([^-]+)-([^,]+)", replacement="${2}", target_label="${1}")],
        {"a": "some-name-value", "name": "value"},
    ),
    (
        {"a": "some-name-value"},
        [R(source_labels=["a"], regex="some-([^-]+)-([^,]+)", replacement="${3}", target_label="${1}")],
        {"a": "some-name-value"},
    ),
    (
        {"a": "some-name-0"},
        [
            R(source_labels=["a"], regex="some-([^-]+)-([^,]+)", replacement="${1}", target_label="${3}"),
            R(source_labels=["a"], regex="some-([^-]+)-([^,]+)", replacement="${1}", target_label="${3}"),
            R(source_labels=["a"], regex="some-([^-]+)(-[^,]+)", replacement="${1}", target_label="${3}"),
        ],
        {"a": "some-name-0"},
    ),
    (
        {"__meta_sd_tags": "path:/secret,job:some-job,label:foo=bar"},
        [
            R(
                source_labels=["__meta_sd_tags"],
                regex="(?:.+,|^)path:(/[^,]+).*",
                replacement="${1}",
                target_label="__metrics_path__",
            ),
            R(source_labels=["__meta_sd_tags"], regex="(?:.+,|^)job:([^,]+).*", replacement="${1}", target_label="job"),
            R(
                source_labels=["__meta_sd_tags"],
                regex="(?:.+,|^)label:([^=]+)=([^,]+).*",
                replacement="${2}",
                target_label="${1}",
            ),
        ],
        {
            "__meta_sd_tags": "path:/secret,job:some-job,label:foo=bar",
            "__metrics_path__": "/secret",
            "job": "some-job",
            "foo": "bar",
        },
    ),
    (  # prometheus/prometheus#12283
        {
            "__meta_kubernetes_pod_container_port_name": "foo",
            "__meta_kubernetes_pod_annotation_XXX_metrics_port": "9091",
        },
        [
            R(regex="^__meta_kubernetes_pod_container_port_name$", action="labeldrop"),
            R(
                source_labels=["__meta_kubernetes_pod_annotation_XXX_metrics_port"],
                regex="(.+)",
                replacement="metrics",
                target_label="__meta_kubernetes_pod_container_port_name",
            ),
            R(source_labels=["__meta_kubernetes_pod_container_port_name"], regex="^metrics$", action="keep"),
        ],
        {
            "__meta_kubernetes_pod_annotation_XXX_metrics_port": "9091",
            "__meta_kubernetes_pod_container_port_name": "metrics",
        },
    ),
    ({"a": "foo", "b1": "bar", "b2": "baz"}, [R(regex="(b.*)", action="labelkeep")], {"b1": "bar", "b2": "baz"}),
    ({"a": "foo", "b1": "bar", "b2": "baz"}, [R(regex="(b.*)", action="labeldrop")], {"a": "foo"}),
    (
        {"foo": "bAr123Foo"},
        [
            R(source_labels=["foo"], action="uppercase", target_label="foo_uppercase"),
            R(source_labels=["foo"], action="lowercase", target_label="foo_lowercase"),
        ],
        {"foo": "bAr123Foo", "foo_lowercase": "bar123foo", "foo_uppercase": "BAR123FOO"},
    ),
    (
        {"__tmp_port": "1234", "__port1": "1234", "__port2": "5678"},
        [R(source_labels=["__tmp_port"], action="keepequal", target_label="__port1")],
        {"__tmp_port": "1234", "__port1": "1234", "__port2": "5678"},
    ),
    (
        {"__tmp_port": "1234", "__port1": "1234", "__port2": "5678"},
        [R(source_labels=["__tmp_port"], action="dropequal", target_label="__port1")],
        None,
    ),
    (
        {"__tmp_port": "1234", "__port1": "1234", "__port2": "5678"},
        [R(source_labels=["__tmp_port"], action="dropequal", target_label="__port2")],
        {"__tmp_port": "1234", "__port1": "1234", "__port2": "5678"},
    ),
    (
        {"__tmp_port": "1234", "__port1": "1234", "__port2": "5678"},
        [R(source_labels=["__tmp_port"], action="keepequal", target_label="__port2")],
        None,
    ),
    (  # `.` matches a newline: Prometheus compiles ^(?s:REGEX)$
        {"a": "line1\nline2", "b": "bar", "c": "baz"},
        [R(source_labels=["a"], regex="line1.*line2", target_label="d", replacement="match${1}")],
        {"a": "line1\nline2", "b": "bar", "c": "baz", "d": "match"},
    ),
    (  # (?<name>...) groups, ${name} and $name
        {"a": "line1\nline2", "b": "bar", "c": "baz"},
        [
            R(
                source_labels=["a"],
                regex="(line1).*(?<second>line2)",
                target_label="label1_${1}",
                replacement="val_${second}",
            ),
            R(
                source_labels=["a"],
                regex="(line1).*(?<second>line2)",
                target_label="label2_$1",
                replacement="val_$second",
            ),
        ],
        {"a": "line1\nline2", "b": "bar", "c": "baz", "label1_line1": "val_line2", "label2_line1": "val_line2"},
    ),
    (
        {"__name__": "http_requests_total"},
        [R(source_labels=["__name__"], regex=".*_total$", target_label="__type__", replacement="counter")],
        {"__name__": "http_requests_total", "__type__": "counter"},
    ),
    (
        {"__name__": "disk_usage_bytes"},
        [R(source_labels=["__name__"], regex=".*_bytes$", target_label="__unit__", replacement="bytes")],
        {"__name__": "disk_usage_bytes", "__unit__": "bytes"},
    ),
]


@pytest.mark.parametrize(("labels", "rules", "expected"), PROM_CASES)
def test_prometheus_relabel_cases(
    labels: dict[str, str], rules: list[dict[str, object]], expected: dict[str, str] | None
) -> None:
    assert apply(L(**labels), *(RelabelRule(**fields) for fields in rules)) == expected  # type: ignore[arg-type]


_VISIT_EVERY_LABEL = {"labeldrop", "labelkeep", "labelmap"}


@pytest.mark.parametrize(
    ("labels", "rules", "expected"),
    [case for case in PROM_CASES if not any(rule.get("action") in _VISIT_EVERY_LABEL for rule in case[1])],
)
def test_prometheus_cases_hold_for_every_series_sharing_the_labels_the_rules_read(
    labels: dict[str, str], rules: list[dict[str, object]], expected: dict[str, str] | None
) -> None:
    """Rules that read only named labels are worked out once per value of those labels and replayed on
    every later series with the same values: each must still get Prometheus' answer for its own labels."""
    relabel = Relabeler([RelabelRule(**fields) for fields in rules])  # type: ignore[arg-type]
    others = [{**labels, "zz_other": "1"}, {**labels, "zz_other": "2", "zz_empty": ""}, labels]
    for other in others:
        out = relabel(L(**other))
        extra = {k: v for k, v in other.items() if k.startswith("zz_") and v}
        assert (None if out is None else dict(out)) == (None if expected is None else {**expected, **extra})


def test_rules_reading_the_name_are_worked_out_once_per_metric_name() -> None:
    worked_out: list[tuple[str, ...]] = []

    class Counting(Relabeler):
        def _outcome(self, key: tuple[str, ...]):  # type: ignore[no-untyped-def]
            worked_out.append(key)
            return super()._outcome(key)

    relabel = Counting([merge_prometheus_prefix_rule()], add_labels={"_source": "m3db"})
    for i in range(300):
        name = ("prometheus_up", "up", "node_load1")[i % 3]
        out = relabel(L(__name__=name, instance=f"host{i}", job="node"))
        assert out == L(__name__=name.removeprefix("prometheus_"), _source="m3db", instance=f"host{i}", job="node")
    assert sorted(worked_out) == [("node_load1",), ("prometheus_up",), ("up",)]


def test_an_invalid_source_label_name_is_refused_with_the_rename_hint() -> None:
    relabel = Relabeler([merge_prometheus_prefix_rule()], add_labels={"_source": "m3db"})
    assert relabel(L(__name__="up", job="a")) == L(__name__="up", _source="m3db", job="a")
    with pytest.raises(ConfigError, match="invalid label name 'bad-name'") as refused:
        relabel((("__name__", "up"), ("bad-name", "x"), ("job", "a")))  # same name: a remembered outcome
    assert "rename it with a relabel rule" in (refused.value.hint or "")


@pytest.mark.parametrize(
    ("target", "valid"),
    [  # TestTargetLabelLegacyValidity in model/relabel/relabel_test.go
        ("-label", False),
        ("label", True),
        ("label${1}", True),
        ("${1}label", True),
        ("${1}", True),
        ("${", False),
        ("$", False),
        ("${}", False),
        ("foo${", False),
        ("$1", True),
        ("asd$2asd", True),
        ("-foo${1}bar-", False),
        ("bar.foo${1}bar", False),
        ("_${1}_", True),
        ("foo${bar}foo", True),
        # Go's $ is the end of the text: a trailing newline is no part of a label name
        ("label\n", False),
        ("${1}\n", False),
    ],
)
def test_target_label_validity_as_in_prometheus(target: str, valid: bool) -> None:
    rule = RelabelRule(source_labels=["a"], target_label=target)
    if valid:
        rule.check()
    else:
        with pytest.raises(ConfigError, match="not a valid label name"):
            rule.check()


@pytest.mark.parametrize(
    "rule",
    [
        RelabelRule(source_labels=["a"], target_label="b\n", action="lowercase"),
        RelabelRule(source_labels=["a"], target_label="s\n", modulus=2, action="hashmod"),
        RelabelRule(regex="(.+)", replacement="x_$1\n", action="labelmap"),
    ],
)
def test_label_names_with_a_trailing_newline_are_rejected(rule: RelabelRule) -> None:
    with pytest.raises(ConfigError, match="not a valid label name"):
        Relabeler([rule])


def test_a_trailing_newline_never_becomes_part_of_a_label_name() -> None:
    """An expanded target "job\\n" is no valid name, so Prometheus skips the replace; an added label too."""
    rule = RelabelRule(source_labels=["v"], regex="(.*)", target_label="$1", replacement="x")
    assert apply(L(__name__="up", v="job\n"), rule) == {"__name__": "up", "v": "job\n"}
    with pytest.raises(ConfigError):
        Relabeler(add_labels={"_source\n": "m3db"})


@pytest.mark.parametrize(
    ("regex", "value", "kept"),
    [
        # POSIX classes inside brackets (RE2/Go); Python's re reads [[:alpha:]] as a set of ":ahlp[" + "]"
        ("[[:alpha:]]+", "node", True),
        ("[[:alpha:]]+", "node1", False),
        ("[[:digit:][:upper:]_]+", "A_1", True),
        # Perl classes are ASCII in RE2: \d is [0-9], \w is [0-9A-Za-z_], \s is [\t\n\f\r ]
        (r"\d+", "١٢", False),
        (r"\d+", "12", True),
        (r"\w+", "zürich", False),
        (r"\w+", "zurich_1", True),
        (r"x\sy", "x\u00a0y", False),
        (r"x\sy", "x y", True),
        (r"a\b.*", "aé", True),  # ASCII \b: "é" is no word character, so there is a boundary after "a"
        # Unicode classes and flags in the middle of a regex
        (r"\pL+", "zürich", True),
        (r"\p{Greek}+", "δέλτα", True),
        (r"\PL+", "123", True),
        ("a(?i)b", "aB", True),
        ("a(?i)b", "AB", False),
        ("(?i:node)|api", "NODE", True),
        # ^(?s:REGEX)$: `.` matches a newline, and `$` only at the very end (Python's also before a final \n)
        ("a.b", "a\nb", True),
        ("foo$\n", "foo\n", False),
        (r"foo\z", "foo", True),
    ],
)
def test_keep_uses_re2_syntax_like_prometheus(regex: str, value: str, kept: bool) -> None:
    labels = L(__name__="up", v=value)
    out = apply(labels, RelabelRule(source_labels=["v"], regex=regex, action="keep"))
    assert (out == dict(labels)) if kept else (out is None)


def test_labeldrop_uses_re2_classes() -> None:
    labels = L(__name__="up", a1="x", b="y")
    assert apply(labels, RelabelRule(regex="[[:lower:]][[:digit:]]", action="labeldrop")) == {
        "__name__": "up",
        "b": "y",
    }


@pytest.mark.parametrize(
    "regex",
    [
        "(unclosed",
        "[[:alpha:]",
        "[[:foo:]]",  # no such class in RE2
        r"(a)\1",  # no backreferences
        "(?<=a)b",  # no lookbehind
        "a(?=b)",  # no lookahead
        r"a\Z",  # RE2 has \z only
        "a++",  # no possessive repetition
        "x{1001}",  # repetition above 1000
        r"a\Cb",  # RE2 C++ has \C (any byte), Go's regexp does not
        "(?P<é>x)",  # Go allows ASCII group names only
    ],
)
def test_regexes_re2_rejects_are_config_errors_naming_the_rule(regex: str) -> None:
    with pytest.raises(ValidationError, match="not valid RE2"):
        RelabelRule(source_labels=["job"], regex=regex, action="keep")
    rule = RelabelRule.model_construct(source_labels=["job"], regex=regex, action="keep")  # skips validation
    with pytest.raises(ConfigError, match=r"relabel rule 2 \(action 'keep', source_labels \['job'\]\).*not valid RE2"):
        Relabeler([merge_prometheus_prefix_rule(), rule])


def test_invalid_regex_in_a_migration_spec_names_the_rule() -> None:
    from m3migrate.settings.spec import MigrationSpec, format_validation_error

    rules = [
        {"source_labels": ["job"], "regex": "node|api", "action": "keep"},
        {"regex": "[[:alpha:]", "action": "labeldrop"},
    ]
    with pytest.raises(ValidationError) as info:
        MigrationSpec(start="2025-01-01T00:00:00Z", end="2025-01-02T00:00:00Z", relabel_rules=rules)
    text = format_validation_error(info.value, "migration settings")
    assert "relabel_rules.1.regex" in text
    assert "'[[:alpha:]' is not valid RE2" in text
    assert "missing ]" in text


@pytest.mark.parametrize(
    ("replacement", "expected"),
    [
        # Go's regexp.Expand: the name after $ is the longest run of letters, digits and "_"; it is a group
        # number only when all ASCII digits without a leading zero. "$01" is the group NAMED "01".
        ("$01", ""),
        ("${01}", ""),
        ("$01x", ""),
        ("$1", "a"),
        ("${1}", "a"),
        ("${1}x", "ax"),
        ("$2", "b"),
        ("${2}0", "b0"),
        ("$10", ""),  # group 10, not $1 + "0"
        ("$١", ""),  # an Arabic-Indic digit is a letter-or-digit of a name, not the number 1
        ("$1é", ""),  # the group named "1é"
        ("$$1", "$1"),
        ("${1", "${1"),  # malformed: the $ is literal
        ("$-", "$-"),
        ("a$", "a$"),
    ],
)
def test_replacement_expands_with_go_rules(replacement: str, expected: str) -> None:
    labels = L(__name__="up", v="ab", out="old")
    rule = RelabelRule(source_labels=["v"], regex="(a)(b)", target_label="out", replacement=replacement)
    assert apply(labels, rule).get("out") == (expected or None)  # type: ignore[union-attr]


def test_dollar_zero_one_names_a_group_called_01() -> None:
    rule = RelabelRule(source_labels=["v"], regex="(?P<01>q)(a)", target_label="out", replacement="[$01|$1|$2]")
    assert apply(L(__name__="up", v="qa"), rule)["out"] == "[q|q|a]"  # type: ignore[index]


def test_labelmap_visits_changed_labels_after_unchanged_ones() -> None:
    """Prometheus' labels.Builder.Range (model/labels/labels_common.go) visits the original labels that no
    earlier rule set, in name order, then the ones that were set, in the order they were set. When two
    labels map to one name, the one visited last wins: a_x was set by rule 1, so it is visited after b_x."""
    labels = L(__name__="up", a_x="1", b_x="2")
    touch_a = RelabelRule(source_labels=["a_x"], target_label="a_x")  # sets a_x to its own value
    mapping = RelabelRule(regex="[ab]_(x)", replacement="$1", action="labelmap")
    assert apply(labels, mapping)["x"] == "2"  # type: ignore[index]  # neither set: name order, b_x last
    assert apply(labels, touch_a, mapping)["x"] == "1"  # type: ignore[index]
    touch_b_then_a = [
        RelabelRule(source_labels=["b_x"], target_label="b_x"),
        RelabelRule(source_labels=["a_x"], target_label="a_x"),
    ]
    assert apply(labels, *touch_b_then_a, mapping)["x"] == "1"  # type: ignore[index]  # set order: a_x last


def test_labelmap_does_not_visit_labels_it_creates() -> None:
    """Range works on a snapshot: a label labelmap creates is not mapped again in the same rule."""
    labels = L(__name__="up", k_a="1")
    out = apply(labels, RelabelRule(regex="k_(.+)", replacement="k_k_$1", action="labelmap"))
    assert out == {"__name__": "up", "k_a": "1", "k_k_a": "1"}


@pytest.mark.parametrize(
    ("action", "value", "expected"),
    [
        # Go's strings.ToUpper/ToLower map each rune by unicode.ToUpper/ToLower, the simple one-to-one
        # mappings of UnicodeData.txt; Python's str.upper/lower use the full mappings of SpecialCasing.txt
        ("uppercase", "straße", "STRAßE"),  # U+00DF has no simple uppercase (Python: "STRASSE")
        ("uppercase", "ﬁle", "ﬁLE"),  # U+FB01 neither (Python: "FILE")
        ("uppercase", "ᾳ", "ᾼ"),  # U+1FB3's simple uppercase is U+1FBC (Python: "ΑΙ")
        ("uppercase", "zürich", "ZÜRICH"),
        ("lowercase", "İSTANBUL", "istanbul"),  # U+0130's simple lowercase is U+0069 (Python adds U+0307)
        ("lowercase", "ΟΔΟΣ", "οδοσ"),  # Σ is always σ: no final-sigma rule (Python: "οδος")
        ("lowercase", "ZÜRICH", "zürich"),
    ],
)
def test_case_actions_use_go_simple_case_mapping(action: str, value: str, expected: str) -> None:
    rule = RelabelRule(source_labels=["v"], target_label="out", action=action)  # type: ignore[arg-type]
    assert apply(L(__name__="up", v=value), rule)["out"] == expected  # type: ignore[index]
