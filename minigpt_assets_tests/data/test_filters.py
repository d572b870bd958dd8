"""Each filter rule fires on a document built to violate it (and only it), spares clean prose; sharded filtering is exact."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from minigpt_assets.data.documents import ShardWriter, document, iter_documents
from minigpt_assets.data.filters import DocumentFilter, FilterResult, filter_shards
from minigpt_assets.recipes import FilterProfile

CLEAN_A = (
    "The river runs through the middle of the old town, and most of the houses that stand along it were built "
    "in the last century. In the summer the banks are full of people who come to walk, to read and to watch the "
    "boats that pass under the bridges. The town council has decided to plant more trees on the eastern side, "
    "where the path is wide enough for bicycles as well as for people on foot. A small museum near the main "
    "square tells the story of the mills that once used the water to grind grain and to saw wood for the region."
)
CLEAN_B = (
    "Bread has been baked in much the same way for thousands of years. Flour, water and salt are mixed with a "
    "little yeast, and the dough is left to rise in a warm place until it has doubled in size. A good baker knows "
    "that time matters more than effort: a slow rise gives the loaf a deeper flavour and a lighter crumb. When "
    "the oven is hot, the bread goes in with a splash of water on the floor, so that the steam keeps the crust "
    "soft long enough for the loaf to grow. Most people agree that it tastes best while still slightly warm."
)
CLEAN = CLEAN_A + "\n\n" + CLEAN_B

GERMAN = ("Die Stadt liegt am Ufer eines breiten Flusses und ist für ihre alten Brücken bekannt. Am Wochenende "
          "besuchen viele Familien den Markt, um frisches Obst und Gemüse zu kaufen. Im Winter ist es hier ruhig, "
          "und nur wenige Touristen kommen in die engen Gassen der Altstadt.")
FRENCH = ("La bibliothèque municipale ouvre ses portes tous les jours sauf le dimanche matin. Les enfants y "
          "viennent après l'école pour lire des bandes dessinées, tandis que leurs parents consultent les "
          "journaux dans la grande salle au premier étage.")

# the profile most rules are checked against: every prose family on, a few thresholds scaled to small documents
PROSE = FilterProfile.model_validate({
    "length": {"min_chars": 250, "max_chars": 5000},
    "gopher_quality": {"min_words": 40, "max_words": 1000},
    "gopher_repetition": {},
    "c4": {"bad_words": ["casino", "free money"], "min_terminal_punct_line_fraction": 0.5},
    "language": {"languages": ["en"], "min_score": 0.65},
})
CODE = FilterProfile.model_validate({"length": {"min_chars": 20}, "code": {}})


# ---------------------------------------------------------------------------------------------- text builders
SIMPLE = {  # short words: mean word length about 3.3
    "det": ["the", "a", "my", "his", "her", "our", "one", "that"],
    "adj": ["big", "red", "old", "wet", "hot", "sad", "fat", "odd", "shy", "tall", "dry", "new", "bad", "cold"],
    "noun": ["dog", "cat", "cow", "hen", "pig", "fox", "bee", "owl", "ant", "man", "kid", "boy", "girl", "king"],
    "verb": ["sat", "ran", "hid", "lay", "ate", "dug", "sang", "fell", "woke", "slept", "hopped", "swam"],
    "prep": ["on", "in", "by", "near", "under", "with", "to", "of"],
}
PLAIN = {  # longer words: mean word length about 6.5
    "det": ["the", "every", "another", "this", "each"],
    "adj": ["careful", "quiet", "curious", "patient", "modern", "ancient", "generous", "nervous", "famous",
            "clever", "wooden", "distant"],
    "noun": ["teacher", "gardener", "traveller", "engineer", "museum", "village", "library", "orchestra",
             "student", "harbour", "painter", "farmer", "mountain", "kitchen"],
    "verb": ["visited", "described", "repaired", "admired", "followed", "photographed", "remembered",
             "discovered", "painted", "explained"],
    "prep": ["near", "behind", "beyond", "across", "inside", "beside", "without", "through"],
}


def sentences(vocab: dict[str, list[str]], n: int, seed: int = 0) -> list[str]:
    """n random English sentences of one template (no repeated passages, plenty of stop words)."""
    rng = random.Random(seed)
    c = {k: (lambda k=k: rng.choice(vocab[k])) for k in vocab}
    return [f"{c['det']()} {c['adj']()} {c['noun']()} {c['verb']()} {c['prep']()} the {c['adj']()} "
            f"{c['noun']()} and {c['det']()} {c['noun']()}.".capitalize() for _ in range(n)]


def paragraphs(sents: list[str], per: int = 6) -> str:
    return "\n\n".join(" ".join(sents[i:i + per]) for i in range(0, len(sents), per))


def first_words(text: str, n: int) -> str:
    return " ".join(text.split()[:n]).rstrip(".,") + "."


def disable(profile: FilterProfile, rule: str) -> FilterProfile:
    """The profile with exactly one rule switched off (null field, False flag, dropped n-gram key or family)."""
    d = profile.model_dump()
    if rule in ("language", "quality"):
        d[rule] = None
        return FilterProfile.model_validate(d)
    family, name = rule.split(".")
    fam = d[family]
    if family == "gopher_repetition" and "gram_" in name:
        key = "max_top_ngram_char_fraction" if name.startswith("top_") else "max_duplicate_ngram_char_fraction"
        n = int(name.split("_")[1].removesuffix("gram"))
        del fam[key][n]
    elif family == "gopher_repetition":
        fam[f"max_{name}"] = None
    elif rule in ("c4.lorem_ipsum", "c4.curly_bracket"):
        fam[f"filter_{name}"] = False
    elif rule == "c4.bad_words":
        fam["bad_words"] = ()
    elif rule == "code.generated_marker":
        fam["max_generated_marker"] = False
    else:
        fam[name] = None
    return FilterProfile.model_validate(d)


# ---------------------------------------------------------------------------------------------- rule names
def test_rule_names_follow_the_profile():
    f = DocumentFilter(PROSE)
    assert f.rule_names == [
        "length.min_chars", "length.max_chars",
        "gopher_quality.min_words", "gopher_quality.max_words", "gopher_quality.min_mean_word_length",
        "gopher_quality.max_mean_word_length", "gopher_quality.max_symbol_word_ratio",
        "gopher_quality.max_bullet_lines_ratio", "gopher_quality.max_ellipsis_lines_ratio",
        "gopher_quality.min_alpha_words_ratio", "gopher_quality.min_stop_words",
        "c4.lorem_ipsum", "c4.curly_bracket", "c4.bad_words", "c4.max_policy_line_fraction", "c4.min_sentences",
        "c4.min_terminal_punct_line_fraction",
        "gopher_repetition.duplicate_line_fraction", "gopher_repetition.duplicate_paragraph_fraction",
        "gopher_repetition.duplicate_line_char_fraction", "gopher_repetition.duplicate_paragraph_char_fraction",
        "gopher_repetition.top_2gram_char_fraction", "gopher_repetition.top_3gram_char_fraction",
        "gopher_repetition.top_4gram_char_fraction",
        *[f"gopher_repetition.duplicate_{n}gram_char_fraction" for n in range(5, 11)],
        "language",
    ]
    assert DocumentFilter(CODE).rule_names == [
        "length.min_chars", "code.max_line_length", "code.max_mean_line_length", "code.min_alnum_fraction",
        "code.generated_marker"]
    assert DocumentFilter(FilterProfile()).rule_names == [] and DocumentFilter(None).rule_names == []
    # C4 defaults: no terminal-punctuation rule, no bad-words rule
    assert "c4.min_terminal_punct_line_fraction" not in DocumentFilter(
        FilterProfile.model_validate({"c4": {}})).rule_names


def test_clean_prose_passes_every_rule():
    f = DocumentFilter(PROSE)
    for text in (CLEAN, CLEAN_A + " " + CLEAN_B, paragraphs(sentences(PLAIN, 30)),
                 paragraphs(sentences(SIMPLE, 40))):
        assert f.reason(text) is None, text[:80]
    assert f.reasons([CLEAN, CLEAN_A]) == [None, None]


# ---------------------------------------------------------------------------------------------- each rule
POLICY_LINES = [
    "We use cookies to understand how readers move through the pages of this site.",
    "By reading further you accept our privacy policy and the terms of use of the service.",
    "The cookie policy explains which data is stored and for how long it is kept by us.",
]
NUMBERS = " ".join(f"{1000 + 37 * i} {i * 3.5:.1f}" for i in range(60))
PROSE_CASES = [
    ("length.min_chars", first_words(" ".join(sentences(SIMPLE, 5)), 45)),  # 45 short words, < 250 chars
    ("length.max_chars", paragraphs(sentences(PLAIN, 75))),  # > 5000 chars, < 1000 words
    ("gopher_quality.min_words", first_words(" ".join(sentences(PLAIN, 4)), 38)),
    ("gopher_quality.max_words", paragraphs(sentences(SIMPLE, 95))),  # > 1000 short words, < 5000 chars
    ("gopher_quality.min_mean_word_length",
     "I am at my old inn. It is by the sea. We go up to it on a bus. He is my pal and we do a lot. If it is wet we "
     "sit in, or go to see a pig on a big hay pile. So I say to him: let us dig. Oh no, he says, it is too hot to "
     "dig. Do we go out? We may. My dad has an ox; it ate a fig off his map. You can see why we nap a lot up at "
     "my inn by the sea. Is it ok? Yes, it is ok as it is."),
    ("gopher_quality.max_mean_word_length",
     "Internationalization responsibilities characteristically overshadowed administrative considerations. "
     "Telecommunications infrastructure modernization necessitated extraordinarily comprehensive "
     "reorganization. Environmental sustainability commitments transformed manufacturing establishments "
     "fundamentally. Nevertheless, interdisciplinary collaborations strengthened institutional accountability "
     "considerably, and the representatives acknowledged organizational shortcomings with unprecedented "
     "determination. Consequently, pharmaceutical laboratories reconsidered experimentation methodologies."),
    ("gopher_quality.max_symbol_word_ratio",
     CLEAN_A + "\n" + " ".join(f"#{w}" for w in "river town summer boats bridges trees museum mills grain wood "
                                "walk read watch council path bicycles square water region houses".split())),
    ("gopher_quality.max_bullet_lines_ratio", "Things to see in the town:\n" + "\n".join(
        f"- {s}" for s in sentences(PLAIN, 12))),
    ("gopher_quality.max_ellipsis_lines_ratio", "\n".join(
        s[:-1] + " and then..." if i % 2 else s for i, s in enumerate(sentences(PLAIN, 12)))),
    ("gopher_quality.min_alpha_words_ratio", CLEAN_A + "\n\n" + NUMBERS),
    ("gopher_quality.min_stop_words",
     "Gardens bloom early in spring. Rivers flow quietly past old mills. Farmers plant barley, oats, beans and "
     "potatoes in neat rows. Children run across green meadows while dogs chase butterflies. Bakers open their "
     "shops before sunrise; fresh loaves fill every shelf. Travellers arrive by train, carrying maps, cameras "
     "or small notebooks. Evening brings cool air, long shadows, quiet streets."),
    ("c4.lorem_ipsum", CLEAN + " Lorem ipsum dolor sit amet."),
    ("c4.curly_bracket", CLEAN + " The letter begins with {name} and ends with a signature."),
    ("c4.bad_words", CLEAN + " Later the old mill became a casino."),
    ("c4.bad_words", CLEAN + " Nobody there ever promised free\nmoney to the millers."),  # multi-word entry
    ("c4.max_policy_line_fraction", "\n".join(POLICY_LINES + sentences(PLAIN, 2))),
    ("c4.min_sentences", CLEAN_A.replace(". ", "; ").replace("; A small", ", while a small")),
    ("c4.min_terminal_punct_line_fraction", "\n".join(
        (s if i % 3 == 0 else s[:-1]) for i, s in enumerate(sentences(PLAIN, 12)))),
    ("gopher_repetition.duplicate_line_fraction", "\n".join(
        x for s in sentences(PLAIN, 10) for x in (s, "Read more.")[: 1 + (len(s) % 2 == 0)]) + "\nRead more."),
    ("gopher_repetition.duplicate_paragraph_fraction", "\n\n".join(
        ["\n".join(sentences(PLAIN, 4, seed=k)) for k in range(4)] + ["Thanks for reading."] * 4)),
    ("language", GERMAN + " " + FRENCH.replace("La ", "Die ") + " The end, and that is all with it."),
]


@pytest.mark.parametrize("rule, text", PROSE_CASES, ids=[f"{r}-{i}" for i, (r, _) in enumerate(PROSE_CASES)])
def test_each_prose_rule_fires_alone(rule, text):
    assert DocumentFilter(PROSE).reason(text) == rule
    assert DocumentFilter(disable(PROSE, rule)).reason(text) is None  # the document violates no other rule


CODE_OK = "def add(a, b):\n    return a + b\n\n\nclass Point:\n    x: int = 0\n    y: int = 0\n"
CODE_CASES = [
    ("code.max_line_length", CODE_OK * 8 + "TABLE = [" + ", ".join(str(i) for i in range(300)) + "]\n"),
    ("code.max_mean_line_length", "\n".join(f"value_{i} = compute(" + ", ".join(f"arg_{j}" for j in range(20))
                                            + ")" for i in range(10))),
    ("code.min_alnum_fraction", CODE_OK + "\n".join("#" * 20 + " {}[]();,.+-*/ " * 3 for _ in range(10))),
    ("code.generated_marker", "# Code generated by protoc-gen-go. DO NOT EDIT.\n" + CODE_OK),
    ("code.generated_marker", "'''\nModule docs.\n\nThis file is AUTOGENERATED from the schema.\n'''\n" + CODE_OK),
]


@pytest.mark.parametrize("rule, text", CODE_CASES, ids=[f"{r}-{i}" for i, (r, _) in enumerate(CODE_CASES)])
def test_each_code_rule_fires_alone(rule, text):
    assert DocumentFilter(CODE).reason(text) == rule
    assert DocumentFilter(disable(CODE, rule)).reason(text) is None


def test_code_rules_spare_ordinary_code():
    f = DocumentFilter(CODE)
    assert f.reason(CODE_OK) is None
    # the generated marker only counts in the first lines
    assert f.reason(CODE_OK * 3 + "# this part is auto-generated\n") is None


def test_repetition_rules():
    rep_only = FilterProfile.model_validate({"gopher_repetition": {}})
    f = DocumentFilter(rep_only)
    assert f.reason(CLEAN) is None
    # keyword stuffing: the most frequent 2-gram covers most characters
    assert f.reason("buy cheap pills " * 40) == "gopher_repetition.top_2gram_char_fraction"
    # one long line repeated: both the line-character and (with line rules off) the n-gram rules see it
    long_line = " ".join(sentences(PLAIN, 3, seed=7))
    text = "\n".join(sentences(PLAIN, 8)) + "\n" + long_line + "\n" + long_line
    assert f.reason(text) == "gopher_repetition.duplicate_line_char_fraction"
    no_lines = FilterProfile.model_validate({"gopher_repetition": {
        "max_duplicate_line_fraction": None, "max_duplicate_paragraph_fraction": None,
        "max_duplicate_line_char_fraction": None, "max_duplicate_paragraph_char_fraction": None}})
    assert DocumentFilter(no_lines).reason(text) == "gopher_repetition.duplicate_5gram_char_fraction"
    # a passage of exactly 7 words, copied: duplicated 5..7-grams, no duplicated 8-grams
    seven = "the quiet harbour painter remembered every boat"
    doc = CLEAN_A + " " + seven + ". " + CLEAN_B + " " + seven + "."
    only = {n: 0.02 for n in (7, 8)}
    p7 = FilterProfile.model_validate({"gopher_repetition": {"max_top_ngram_char_fraction": {},
                                                             "max_duplicate_ngram_char_fraction": only}})
    assert DocumentFilter(p7).reason(doc) == "gopher_repetition.duplicate_7gram_char_fraction"
    p8 = FilterProfile.model_validate({"gopher_repetition": {"max_top_ngram_char_fraction": {},
                                                             "max_duplicate_ngram_char_fraction": {8: 0.02}}})
    assert DocumentFilter(p8).reason(doc) is None


def test_paragraph_char_fraction():
    p = FilterProfile.model_validate({"gopher_repetition": {
        "max_duplicate_line_fraction": None, "max_duplicate_paragraph_fraction": None,
        "max_duplicate_line_char_fraction": None}})
    para = "\n".join(sentences(PLAIN, 5, seed=3))
    text = paragraphs(sentences(PLAIN, 8)) + "\n\n" + para + "\n\n" + para
    assert DocumentFilter(p).reason(text) == "gopher_repetition.duplicate_paragraph_char_fraction"


# ---------------------------------------------------------------------------------------------- thresholds, nulls, order
def test_null_disables_rule_and_thresholds_matter():
    short = "A short but fine sentence about the river and the town."
    on = FilterProfile.model_validate({"gopher_quality": {"min_words": 50}})
    off = FilterProfile.model_validate({"gopher_quality": {"min_words": None}})
    loose = FilterProfile.model_validate({"gopher_quality": {"min_words": 5}})
    assert DocumentFilter(on).reason(short) == "gopher_quality.min_words"
    assert DocumentFilter(off).reason(short) is None
    assert "gopher_quality.min_words" not in DocumentFilter(off).rule_names
    assert DocumentFilter(loose).reason(short) is None

    tags = dict(PROSE_CASES)["gopher_quality.max_symbol_word_ratio"]
    for ratio, expect in ((0.1, "gopher_quality.max_symbol_word_ratio"), (0.5, None)):
        p = FilterProfile.model_validate({"gopher_quality": {"max_symbol_word_ratio": ratio}})
        assert DocumentFilter(p).reason(tags) == expect

    lines = dict(PROSE_CASES)["gopher_repetition.duplicate_line_fraction"]
    for frac, expect in ((0.3, "gopher_repetition.duplicate_line_fraction"), (0.6, None)):
        p = FilterProfile.model_validate({"gopher_repetition": {"max_duplicate_line_fraction": frac}})
        assert DocumentFilter(p).reason(lines) == expect

    assert DocumentFilter(FilterProfile.model_validate({"length": {"max_chars": 100}})).reason(CLEAN) \
        == "length.max_chars"
    assert DocumentFilter(FilterProfile.model_validate({"length": {"max_chars": 10_000}})).reason(CLEAN) is None
    assert DocumentFilter(FilterProfile.model_validate({"c4": {"min_sentences": 20}})).reason(CLEAN) \
        == "c4.min_sentences"
    assert DocumentFilter(FilterProfile.model_validate({"code": {"max_line_length": 50}})).reason(CODE_OK) is None
    assert DocumentFilter(FilterProfile.model_validate({"code": {"max_line_length": 10}})).reason(CODE_OK) \
        == "code.max_line_length"


def test_first_failing_rule_order():
    f = DocumentFilter(PROSE)
    assert f.reason("Guten Tag.") == "length.min_chars"  # also fails words, sentences and language
    # fails gopher stop words, C4 curly brackets and language: the earliest family wins
    assert f.reason(GERMAN + " {x} " + GERMAN.replace("Stadt", "Burg")) == "gopher_quality.min_stop_words"
    assert DocumentFilter(disable(PROSE, "gopher_quality.min_stop_words")).reason(
        GERMAN + " {x} " + GERMAN.replace("Stadt", "Burg")) == "c4.curly_bracket"
    # batched reasons equal one-by-one reasons
    texts = [text for _, text in PROSE_CASES] + [CLEAN, ""]
    assert f.reasons(texts) == [f.reason(t) for t in texts]


def test_language_rule():
    f = DocumentFilter(FilterProfile.model_validate({"language": {"languages": ["en"], "min_score": 0.65}}))
    assert f.reason(GERMAN) == "language" and f.reason(FRENCH) == "language" and f.reason(CLEAN) is None
    assert f.detect_language(GERMAN)[0] == "de" and f.detect_language(FRENCH)[0] == "fr"
    lang, prob = f.detect_language(CLEAN)
    assert lang == "en" and 0.65 < prob <= 1.0
    assert f.detect_language(CLEAN.replace(" ", "\n")) == f.detect_language(CLEAN)  # newlines read as spaces
    both = DocumentFilter(FilterProfile.model_validate({"language": {"languages": ["de", "fr"]}}))
    assert both.reasons([GERMAN, FRENCH, CLEAN]) == [None, None, "language"]
    short = "The market opens early on Saturday."  # English, but less certain: P(en) is about 0.86
    for min_score, expect in ((0.65, None), (0.8, None), (0.95, "language")):  # min_score is a probability
        assert DocumentFilter(FilterProfile.model_validate({"language": {"min_score": min_score}})).reason(short) \
            == expect
    langs: Counter[str] = Counter()
    f.reasons([GERMAN, FRENCH, CLEAN, CLEAN_A], langs)
    assert langs == {"de": 1, "fr": 1, "en": 2}


def test_quality_rule_requires_model():
    p = FilterProfile.model_validate({"quality": {"classifier": "x", "min_score": 0.5}})
    with pytest.raises(ValueError, match="no classifier model"):
        DocumentFilter(p)


# ---------------------------------------------------------------------------------------------- filter_shards
def _shards(tmp_path: Path, texts: list[str], per_shard: int = 7) -> list[Path]:
    w = ShardWriter(tmp_path / "in", max_documents=per_shard)
    for i, t in enumerate(texts):
        w.write(document(f"s/{i:03d}", t, "s", "test", f"f:{i}", {"i": i}))
    return [s.path for s in w.close()]


def _layout(res: FilterResult) -> list[tuple[str, list[str]]]:
    return [(s.path.name, [d["id"] for d in iter_documents([s.path])]) for s in res.shards]


def test_filter_shards_parallel_equals_serial(tmp_path):
    texts = []
    for i in range(90):
        texts.append([CLEAN_A + f" It was repainted in {1900 + i}.", "Too short.", GERMAN + " " + GERMAN.upper(),
                      CLEAN + " lorem ipsum."][i % 4] if i % 5 else CLEAN_B + f" Bakers rise at {i % 12 + 1}.")
    shards = _shards(tmp_path, texts)
    r1 = filter_shards(shards, tmp_path / "o1", PROSE, None, workers=1, shard_documents=5)
    r2 = filter_shards(shards, tmp_path / "o2", PROSE, None, workers=2, shard_documents=5)
    expected = [t for t, r in zip(texts, DocumentFilter(PROSE).reasons(texts)) if r is None]
    assert r1.input_documents == 90 and r1.documents == len(expected) > 0
    assert [d["text"] for d in iter_documents([s.path for s in r1.shards])] == expected  # input order kept
    assert _layout(r1) == _layout(r2)
    assert r1.shards[0].path.name == "shard-00000-00000.parquet"
    assert (r1.documents, r1.bytes, r1.removed, r1.language_counts) == \
        (r2.documents, r2.bytes, r2.removed, r2.language_counts)
    assert list(r1.removed) == DocumentFilter(PROSE).rule_names  # every rule listed, zeros included
    assert r1.removed["length.min_chars"] == sum(t == "Too short." for t in texts)
    assert r1.removed["c4.lorem_ipsum"] > 0 and r1.removed["gopher_quality.max_words"] == 0
    assert sum(r1.removed.values()) + r1.documents == r1.input_documents
    assert r1.language_counts["en"] == r1.documents and r1.bytes == sum(len(t.encode()) for t in expected)

    sample = pq.read_table(tmp_path / "o1/removed_sample.parquet").to_pylist()
    assert sample == pq.read_table(tmp_path / "o2/removed_sample.parquet").to_pylist()
    assert set(sample[0]) == {"id", "rule", "text_head"}
    per_rule = Counter(r["rule"] for r in sample)
    assert per_rule == {r: min(20, c) for r, c in r1.removed.items() if c}
    assert all(len(r["text_head"]) <= 300 for r in sample)
    # the other columns travel unchanged
    kept = next(iter_documents([r1.shards[0].path]))
    assert kept["source"] == "s" and json.loads(kept["meta"])["i"] == int(kept["id"].split("/")[1])

    # a second run into the same folder leaves no stale shard behind
    r3 = filter_shards(shards[:1], tmp_path / "o1", PROSE, None)
    assert sorted(p.name for p in (tmp_path / "o1").glob("shard-*.parquet")) == [s.path.name for s in r3.shards]


def test_filter_none_profile_keeps_all(tmp_path):
    shards = _shards(tmp_path, ["x", "y", "z"], per_shard=2)
    res = filter_shards(shards, tmp_path / "o", None, None, workers=2)
    assert res.documents == 3 and res.input_documents == 3 and res.removed == {} and res.language_counts == {}
    assert [d["text"] for d in iter_documents([s.path for s in res.shards])] == ["x", "y", "z"]
    assert pq.read_table(tmp_path / "o/removed_sample.parquet").num_rows == 0


def test_language_id_in_lockstep_gives_py3langids_answers(monkeypatch):
    from minigpt_assets.data import langid
    from minigpt_assets.data.builtin_corpora import gen_synthetic_web

    texts = [" ".join(t[:2000].split()) for _, t, _ in gen_synthetic_web(num_documents=300, seed=5)]
    texts += ["", "HELLO WORLD IN CAPITALS", GERMAN, FRENCH, "これは日本語の文です。", "def f(x):\n    return x",
              "ça", "\udcff lone surrogate"]
    ref = [langid.identifier().classify(t) for t in texts]
    got = langid.classify_batch(texts)
    assert [g[0] for g in got] == [r[0] for r in ref]
    assert all(abs(g[1] - r[1]) <= 1e-5 * max(r[1], 1e-3) for g, r in zip(got, ref))
    monkeypatch.setattr(langid, "_automaton", lambda: None)  # a py3langid without the arrays: per text
    assert langid.classify_batch(texts[-8:]) == ref[-8:]
