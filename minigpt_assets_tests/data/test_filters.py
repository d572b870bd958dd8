"""Each filter rule fires on a document built to violate it and spares clean prose; sharded filtering is exact."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from minigpt_assets.data.documents import ShardWriter, document, iter_documents
from minigpt_assets.data.filters import DocumentFilter, filter_shards
from minigpt_assets.recipes import FilterProfile

CLEAN = (
    "The river runs through the middle of the old town, and most of the houses that stand along it were built "
    "in the last century. In the summer the banks are full of people who come to walk, to read and to watch the "
    "boats that pass under the bridges. The town council has decided to plant more trees on the eastern side, "
    "where the path is wide enough for bicycles as well as for people on foot. A small museum near the main "
    "square tells the story of the mills that once used the water to grind grain and to saw wood for the region. "
    "Visitors who have time should also see the market, which opens early on Saturday and sells fruit, bread "
    "and cheese from the farms in the valley."
)

FULL = FilterProfile.model_validate({
    "length": {"min_chars": 100, "max_chars": 20000},
    "gopher_quality": {}, "gopher_repetition": {}, "c4": {"bad_words": ["casino"]},
    "language": {"languages": ["en"], "min_score": 0.65},
})


def test_clean_prose_passes_every_rule():
    f = DocumentFilter(FULL)
    assert f.reason(CLEAN) is None
    assert "gopher_quality.min_words" in f.rule_names and "language" in f.rule_names


@pytest.mark.parametrize("text, rule", [
    ("Too short.", "length.min_chars"),
    (CLEAN * 40, "length.max_chars"),
    ("the and of to " * 8 + "word. " * 2, "gopher_quality.min_words"),
    (" ".join(["extraordinarily incomprehensible characteristically"] * 30) + " the and.",
     "gopher_quality.max_mean_word_length"),
    (CLEAN + " #tag" * 30, "gopher_quality.max_symbol_word_ratio"),
    ("\n".join(f"- the item {i} of the list and more" for i in range(40)), "gopher_quality.max_bullet_lines_ratio"),
    ("\n".join(f"Then the story of item {i} goes on and on ..." for i in range(20)),
     "gopher_quality.max_ellipsis_lines_ratio"),
    (CLEAN + " " + " ".join(["12345 67.89 ---- 1999"] * 60), "gopher_quality.min_alpha_words_ratio"),
    ("Gardens rivers mountains valleys forests meadows. " * 10, "gopher_quality.min_stop_words"),
    (CLEAN + "\n" + "\n".join(["Click the button to read the rest of the page today."] * 12),
     "gopher_repetition.duplicate_line_fraction"),
    (CLEAN + " lorem ipsum dolor sit amet.", "c4.lorem_ipsum"),
    (CLEAN + " function() { return 1; }", "c4.curly_bracket"),
    ("Cookie policy: we use cookies to run the site and to measure the visits of the readers.\n" * 1
     + "Privacy policy: read the terms of use of the site before you sign up for the news.\n"
     + "The town has a river and the people walk along it in the summer and the winter.", "c4.max_policy_line_fraction"),
    (CLEAN + " Play at the casino.", "c4.bad_words"),
])
def test_each_rule_fires(text, rule):
    assert DocumentFilter(FULL).reason(text) == rule


def test_language_rule():
    f = DocumentFilter(FilterProfile.model_validate({"language": {"languages": ["en"], "min_score": 0.65}}))
    german = ("Die Stadt liegt am Ufer eines breiten Flusses und ist für ihre alten Brücken bekannt. "
              "Am Wochenende besuchen viele Familien den Markt, um frisches Obst und Gemüse zu kaufen.")
    french = "La bibliothèque municipale ouvre ses portes tous les jours sauf le dimanche matin."
    assert f.reason(german) == "language" and f.reason(french) == "language" and f.reason(CLEAN) is None
    assert f.detect_language(german)[0] == "de"
    # the Gopher stop-word rule also catches non-English text, earlier and more cheaply
    assert DocumentFilter(FULL).reason(german * 3) == "gopher_quality.min_stop_words"


def test_repetition_ngram_rules():
    p = FilterProfile.model_validate({"gopher_repetition": {
        "max_duplicate_line_fraction": None, "max_duplicate_paragraph_fraction": None,
        "max_duplicate_line_char_fraction": None, "max_duplicate_paragraph_char_fraction": None}})
    f = DocumentFilter(p)
    assert f.reason(CLEAN) is None
    assert f.reason("buy cheap pills " * 40).startswith("gopher_repetition.top_2gram")
    assert f.reason(CLEAN + " " + " ".join(CLEAN.split()[:60])).startswith("gopher_repetition.duplicate_")


def test_null_disables_rule_and_thresholds_matter():
    short = "A short but fine sentence about the river and the town."
    on = FilterProfile.model_validate({"gopher_quality": {"min_words": 50}})
    off = FilterProfile.model_validate({"gopher_quality": {"min_words": None}})
    loose = FilterProfile.model_validate({"gopher_quality": {"min_words": 5}})
    assert DocumentFilter(on).reason(short) == "gopher_quality.min_words"
    assert DocumentFilter(off).reason(short) is None
    assert "gopher_quality.min_words" not in DocumentFilter(off).rule_names
    assert DocumentFilter(loose).reason(short) is None


def test_code_rules():
    p = FilterProfile.model_validate({"code": {}})
    f = DocumentFilter(p)
    good = "def add(a, b):\n    return a + b\n\n\nclass Point:\n    x: int = 0\n"
    assert f.reason(good) is None
    assert f.reason("x = '" + "a" * 2000 + "'\n") == "code.max_line_length"
    assert f.reason("# Auto-generated by protoc. DO NOT EDIT.\n" + good) == "code.generated_marker"
    assert f.reason("{}[]();,.{}[]();,.\n" * 20) == "code.min_alnum_fraction"


def test_first_failing_rule_order():
    # fails both length.min_chars and language: the cheap rule is reported
    assert DocumentFilter(FULL).reason("Guten Tag.") == "length.min_chars"


def test_quality_rule_requires_model():
    p = FilterProfile.model_validate({"quality": {"classifier": "x", "min_score": 0.5}})
    with pytest.raises(ValueError, match="no classifier model"):
        DocumentFilter(p)


def _shards(tmp_path, texts, per_shard=7):
    w = ShardWriter(tmp_path / "in", max_documents=per_shard)
    for i, t in enumerate(texts):
        w.write(document(f"s/{i}", t, "s", "test", f"f:{i}"))
    return [s.path for s in w.close()]


def test_filter_shards_parallel_equals_serial(tmp_path):
    texts = [CLEAN + f" Item {i}." if i % 3 else "Too short." for i in range(30)]
    texts[4] = CLEAN + " lorem ipsum."
    shards = _shards(tmp_path, texts)
    r1 = filter_shards(shards, tmp_path / "o1", FULL, None, workers=1, shard_documents=5)
    r2 = filter_shards(shards, tmp_path / "o2", FULL, None, workers=2, shard_documents=5)
    assert r1.input_documents == 30 and r1.documents == 19
    assert r1.removed["length.min_chars"] == 10 and r1.removed["c4.lorem_ipsum"] == 1
    assert r1.removed["gopher_quality.min_words"] == 0  # every rule listed, zeros included
    assert sum(r1.removed.values()) + r1.documents == r1.input_documents
    assert [s.path.name for s in r1.shards] == [s.path.name for s in r2.shards]
    ids1 = [d["id"] for d in iter_documents([s.path for s in r1.shards])]
    ids2 = [d["id"] for d in iter_documents([s.path for s in r2.shards])]
    assert ids1 == ids2
    sample = pq.read_table(tmp_path / "o1/removed_sample.parquet").to_pylist()
    assert {r["rule"] for r in sample} == {"length.min_chars", "c4.lorem_ipsum"}
    assert r1.language_counts.get("en") == 19


def test_filter_none_profile_keeps_all(tmp_path):
    shards = _shards(tmp_path, ["x", "y", "z"])
    res = filter_shards(shards, tmp_path / "o", None, None)
    assert res.documents == 3 and res.removed == {}
    assert json.loads(next(iter_documents([res.shards[0].path]))["meta"]) == {}
