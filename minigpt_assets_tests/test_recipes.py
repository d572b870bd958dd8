"""Recipe validation: every kind of bad input gives one line naming file, field and expectation."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from minigpt_assets.cli import main
from minigpt_assets.recipes import Catalog, RecipeError
from minigpt_assets_tests.conftest import REPO, write


def _problems(root: Path) -> list[str]:
    return [str(p) for p in Catalog.load(root).problems]


def test_shipped_recipes_are_valid():
    cat = Catalog.load(REPO / "recipes")
    assert cat.problems == []
    assert {"python_code", "python_docs", "web", "web_spam"} <= set(cat.sources)
    assert cat.classifiers_for_source("web") == ["docs_vs_spam"]
    assert "web" in cat.group_members("default") and "web_spam" not in cat.group_members("default")


def test_tiny_recipes_valid(tiny_recipes):
    cat = Catalog.load_or_raise(tiny_recipes)
    assert sorted(cat.sources) == ["alpha", "beta", "spam"]


@pytest.mark.parametrize("body, field, expect", [
    ("kind: [\n", "line 2", "invalid YAML"),
    ("- a\n- b\n", "", "expected a YAML mapping"),
    ("kind: csv\nlocation: x\ndomain: web\n", "kind", "unknown kind 'csv'"),
    ("location: x\ndomain: web\n", "kind", "required field is missing"),
    ("kind: jsonl\ndomain: web\n", "location", "required field is missing"),
    ("kind: jsonl\nlocation: {data}\ndomain: web\nlimit_documents: -5\n", "limit_documents", "greater than 0"),
    ("kind: jsonl\nlocation: {data}\ndomain: web\nshard_documents: many\n", "shard_documents", "valid integer"),
    ("kind: jsonl\nlocation: {data}\ndomain: web\ntext_fild: body\n", "text_fild", "unknown field"),
    ("kind: jsonl\nlocation: {data}\ndomain: Web Pages\n", "domain", "slug"),
    ("kind: jsonl\nlocation: /does/not/exist.jsonl\ndomain: web\n", "location", "not found"),
    ("kind: jsonl\nlocation: {data}\ndomain: web\nfilters: nosuch\n", "filters", "unknown filter profile"),
    ("kind: jsonl\nlocation: {data}\ndomain: web\ndedup: {{group: nosuch}}\n", "dedup.group", "unknown dedup group"),
])
def test_bad_source_recipe_one_line(tmp_path, body, field, expect):
    data = write(tmp_path / "d.jsonl", '{"text": "x"}\n')
    root = tmp_path / "recipes"
    write(root / "sources/bad.yaml", body.format(data=data))
    probs = _problems(root)
    assert len(probs) == 1, probs
    line = probs[0]
    assert "\n" not in line
    assert line.startswith(str(root / "sources/bad.yaml").lstrip("/").split("/")[-1]) or "bad.yaml" in line
    assert f": {field}:" in line or (field == "" and line.endswith("top level"))
    assert expect in line


def test_cross_references(tmp_path):
    data = write(tmp_path / "d.jsonl", '{"text": "x"}\n')
    root = tmp_path / "recipes"
    write(root / "sources/web.yaml", f"kind: jsonl\nlocation: {data}\ndomain: web\ndedup: {{group: null}}\n")
    write(root / "classifiers/clf.yaml", "positive: [web]\nnegative: [ghost]\n")
    write(root / "mixtures/mix.yaml", "sources: {web: 0.7, phantom: 0.3}\ntokenizer: t\n")
    write(root / "mixtures/neg.yaml", "sources: {web: 0.0}\ntokenizer: t\n")
    write(root / "mixtures/notok.yaml", "sources: {web: 1.0}\ntokenizer: missing\n")
    write(root / "tokenizers/t.yaml", "vocab_size: 100\nsources: [nothere]\n")
    write(root / "filters/f.yaml", "quality: {classifier: nope}\n")
    probs = _problems(root)
    assert any("classifiers/clf.yaml: negative: unknown source name 'ghost'" in p for p in probs), probs
    assert any("mixtures/mix.yaml: sources.phantom: unknown source name" in p for p in probs), probs
    assert any("mixtures/neg.yaml: sources: weights must be > 0" in p for p in probs), probs
    assert any("filters/f.yaml: quality.classifier: unknown classifier 'nope'" in p for p in probs), probs
    assert any("mixtures/notok.yaml: tokenizer: unknown tokenizer 'missing'" in p for p in probs), probs
    assert any("tokenizers/t.yaml: vocab_size: Input should be greater than or equal to 300" in p for p in probs), probs
    with pytest.raises(RecipeError) as e:
        Catalog.load_or_raise(root)
    assert len(str(e.value).splitlines()) == len(probs)


def test_optional_source_may_be_missing(tmp_path):
    root = tmp_path / "recipes"
    write(root / "sources/opt.yaml", "kind: text_dir\nlocation: /nope/dir\ndomain: misc\noptional: true\n"
                                     "dedup: {group: null}\n")
    assert _problems(root) == []


def test_hash_changes_with_content_and_profile(tmp_path):
    root = tmp_path / "recipes"
    shutil.copytree(REPO / "recipes", root)
    h1 = Catalog.load(root).source_hash("web")
    assert Catalog.load(root).source_hash("web") == h1  # stable
    prof = root / "filters/web.yaml"
    prof.write_text(prof.read_text().replace("min_score: 0.5", "min_score: 0.6"))
    assert Catalog.load(root).source_hash("web") != h1  # the inlined profile is part of the source hash
    # comments and key order do not matter
    src = root / "sources/python_docs.yaml"
    h_docs = Catalog.load(root).source_hash("python_docs")
    src.write_text("# a new comment\n" + src.read_text())
    assert Catalog.load(root).source_hash("python_docs") == h_docs


def test_cli_validate_exit_codes(tmp_path, capsys):
    assert main(["validate", str(REPO / "recipes")]) == 0
    assert "valid" in capsys.readouterr().out
    root = tmp_path / "recipes"
    write(root / "sources/bad.yaml", "kind: jsonl\nlocation: /nope.jsonl\ndomain: web\nweight: -1\n")
    write(root / "sources/good.yaml", "kind: builtin\ngenerator: synthetic_spam\ndomain: spam\n"
                                      "dedup: {group: null}\n")
    assert main(["validate", "--recipes", str(root)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.yaml: weight: unknown field" in err[0]
    assert main(["validate", str(root / "sources/good.yaml")]) == 0
    assert main(["validate", str(root / "sources/bad.yaml")]) == 1
    assert "Traceback" not in capsys.readouterr().err
