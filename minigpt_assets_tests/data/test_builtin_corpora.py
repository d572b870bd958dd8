"""Builtin corpora: deterministic stdlib docstrings, man pages from groff, planted web pages, spam."""

from __future__ import annotations

import gzip
import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import pytest

from minigpt_assets.data import builtin_corpora as bc
from minigpt_assets.data.ingest import ingest_source
from minigpt_assets.data.sources import Rejected, SourceMissing, read_source
from minigpt_assets.recipes import _SourceFile


def recipe(**kw):
    kw.setdefault("domain", "test")
    return _SourceFile.model_validate({"source": kw}).source


def _digest(items) -> str:
    return hashlib.sha256(json.dumps(items, sort_keys=True).encode()).hexdigest()


def _shingles(text: str, n: int = 5) -> set:
    w = text.split()
    return {tuple(w[i:i + n]) for i in range(max(1, len(w) - n + 1))}


@pytest.fixture(scope="module")
def docstrings():
    return list(bc.gen_python_docstrings())


@pytest.fixture(scope="module")
def web():
    return list(bc.gen_synthetic_web(num_documents=1000, seed=5))


def test_docstrings_corpus_is_real_and_deterministic(docstrings):
    first = _digest(docstrings[:50])
    bc._docstring_documents.cache_clear()  # really walk and parse the stdlib a second time
    assert _digest(list(bc.gen_python_docstrings(max_documents=50))) == first
    assert len(docstrings) > 150
    keys = [k for k, _, _ in docstrings]
    assert len(set(keys)) == len(keys) and keys == sorted(keys)
    assert not any(re.search(r"/(test|tests|idlelib|lib2to3|site-packages)/", "/" + k[7:]) for k in keys)
    by_key = {k: (t, m) for k, t, m in docstrings}
    text, meta = by_key["stdlib/json/__init__.py"]
    assert meta["module"] == "json" and text.startswith("json\n\nJSON (JavaScript Object Notation)")
    assert "\n\njson.dumps\n\nSerialize ``obj`` to a JSON formatted ``str``." in text
    text, _ = by_key["stdlib/argparse.py"]
    assert "argparse.ArgumentParser.parse_args" in text or "argparse.ArgumentParser\n\n" in text  # qualified names
    for _, text, meta in docstrings:  # at least 50 words of docstrings, one section per name
        assert len(text.split()) >= 50 and meta["sections"] >= 1


def test_synthetic_web_plants_every_kind(web, docstrings):
    n = len(web)
    kinds = Counter(m["kind"] for _, _, m in web)
    assert kinds == {"clean": 700, "exact_dup": 80, "near_dup": 80, "spam": 80, "foreign": 30, "cross_dup": 30}
    assert web == list(bc.gen_synthetic_web(num_documents=1000, seed=5))  # deterministic
    assert web != list(bc.gen_synthetic_web(num_documents=1000, seed=6))
    assert [k for k, _, _ in web] == [f"page/{i:06d}" for i in range(n)]
    assert len({m["url"] for _, _, m in web}) == n
    by_key = {k: t for k, t, _ in web}
    meta_of = {k: m for k, _, m in web}
    for key, text, meta in web:
        if meta["kind"] == "exact_dup":
            assert by_key[meta["copy_of"]] == text and meta_of[meta["copy_of"]]["kind"] == "clean"
        elif meta["kind"] == "near_dup":
            orig = by_key[meta["copy_of"]]
            j = len(_shingles(text) & _shingles(orig)) / len(_shingles(text) | _shingles(orig))
            assert text != orig and 0.8 <= j < 0.99, (key, j)
    # cross-source copies are verbatim python_docstrings documents
    doc_text = {k: t for k, t, _ in docstrings}
    cross = [(t, m) for _, t, m in web if m["kind"] == "cross_dup"]
    assert all(doc_text[m["copy_of_docstrings"]] == t for t, m in cross)
    # clean pages are made of real docstring sentences inside web boilerplate
    sents = set(bc.english_sentences())
    clean = [t for _, t, m in web if m["kind"] == "clean"]
    assert all(any(line in bc.FOOTERS for line in t.splitlines()) for t in clean)
    assert sum(any(s in t for s in list(sents)[:2000]) for t in clean[:50]) > 10
    foreign = Counter(m["language"] for _, _, m in web if m["kind"] == "foreign")
    assert foreign == {"de": 6, "es": 6, "fr": 6, "it": 6, "nl": 6}
    assert len(bc.FOREIGN) == 5 and sum(len(v) for v in bc.FOREIGN.values()) == 20
    spam = [t for _, t, m in web if m["kind"] == "spam"]
    assert any(len(t.split()) < 5 for t in spam) and any("Lorem ipsum" in t for t in spam)
    assert any("!!!" in t and "$$$" in t for t in spam) and any(t.count("...") > 10 for t in spam)


def test_synthetic_spam(web):
    spam = list(bc.gen_synthetic_spam(num_documents=600, seed=7))
    assert spam == list(bc.gen_synthetic_spam(num_documents=600, seed=7)) and len(spam) == 600
    styles = Counter(m["style"] for _, _, m in spam)
    assert set(styles) == set(bc.SPAM_STYLES) and min(styles.values()) > 30
    assert all(t.strip() for _, t, _ in spam)
    noise = next(t for _, t, m in spam if m["style"] == "noise")
    assert sum(not c.isalnum() and not c.isspace() for c in noise) / len(noise) > 0.1
    web_spam = {t for _, t, m in web if m["kind"] == "spam"}
    assert not web_spam & {t for _, t, _ in spam}  # different templates from the web generator's spam


def test_builtin_through_read_source():
    docs = list(read_source("docs", recipe(kind="builtin", generator="synthetic_spam",
                                           options={"num_documents": 50, "seed": 1})))
    assert len(docs) == 50 and not any(isinstance(d, Rejected) for d in docs)
    assert len({d["id"] for d in docs}) == 50 and docs[0]["provenance"] == "spam/000000"
    assert json.loads(docs[0]["meta"])["style"] in bc.SPAM_STYLES
    with pytest.raises(ValueError, match="num_docs"):
        list(read_source("x", recipe(kind="builtin", generator="synthetic_spam", options={"num_docs": 5})))


GROFF = r""".\" Copyright notice in a comment
'\" t
.TH DEMO 1 "2024" "demo 1.0" "User Commands"
.de XX
.  ft B
..
.ie n \{\
.  ds Q \(aq
.\}
.el \{\
.  ds Q '
.\}
.SH NAME
demo \- show what the converter keeps \" trailing comment
.SH SYNOPSIS
.B demo
[\fIOPTION\fR]... [\fIFILE\fR]...
.SH DESCRIPTION
\s-1GNU\s0 demo prints \fBfiles\fP and \f(BIdirectories\fR \(em quickly.
.TP .5i
.BR \-a ", " \-\-all
do not ignore entries starting with \&.
.IP \(bu 2
An item with \h'-04'motion, \*(lqquotes\*(rq and a caf\['e] \[u00E9]t\(:e.
.SS "Exit status"
See
.BR other (1)
and
.UR https://example.org/
the web site
.UE .
.TS
tab(;);
l l.
key;value
.TE
"""


def test_groff_conversion():
    out = bc.groff_to_text(GROFF)
    assert out.startswith("NAME\n\ndemo - show what the converter keeps\n\nSYNOPSIS\n\ndemo\n[OPTION]... [FILE]...")
    assert "GNU demo prints files and directories — quickly." in out
    assert "-a, --all\ndo not ignore entries starting with ." in out
    assert "•\nAn item with motion, \"quotes\" and a café étë." in out
    assert "\n\nExit status\n\n" in out and "other(1)" in out and "<https://example.org/>." in out
    assert "key;value" in out
    for junk in ("\\", "Copyright", ".TH", "ft B", "ds Q", "trailing comment", ".5i", "tab(", "l l."):
        assert junk not in out, junk


def test_groff_mdoc():
    src = ".Dd May 1, 2020\n.Dt LS 1\n.Os\n.Sh NAME\n.Nm ls\n.Nd list directory contents\n.Sh SYNOPSIS\n.Nm\n" \
          ".Op Fl al\n.Op Ar file ...\n.Sh DESCRIPTION\n.Bl -tag -width Ds\n.It Fl 0 , Fl Fl print0\nEnd " \
          "with a null.\n.El\nSee\n.Xr find 1 .\n"
    out = bc.groff_to_text(src)
    assert out == ("NAME\n\nls\n- list directory contents\n\nSYNOPSIS\n\nls\n[-al]\n[file ...]\n\nDESCRIPTION\n\n"
                   "-0, --print0\nEnd with a null.\nSee\nfind(1).")


def _man(path: Path, src: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(src.encode()))


def test_man_pages_from_a_tree(tmp_path, monkeypatch):
    body = " ".join(f"word{i}" for i in range(40))
    _man(tmp_path / "man/man1/alpha.1.gz", f".TH ALPHA 1\n.SH NAME\nalpha \\- first\n.SH DESCRIPTION\n{body}\n")
    _man(tmp_path / "man/man5/beta.conf.5.gz", f".TH BETA 5\n.SH NAME\nbeta \\- conf\n.PP\n{body}\n")
    _man(tmp_path / "man/man1/short.1.gz", ".TH SHORT 1\n.SH NAME\nshort \\- too few words\n")
    _man(tmp_path / "man/man1/stub.1.gz", '.\\" redirect\n.so man1/alpha.1\n')
    (tmp_path / "man/man1/alias.1.gz").symlink_to("alpha.1.gz")
    _man(tmp_path / "man/de/man1/alpha.1.gz", f".TH ALPHA 1\n.SH BEZEICHNUNG\nalpha \\- erstes\n.PP\n{body}\n")
    monkeypatch.setattr(bc, "MAN_ROOT", tmp_path / "man")
    items = list(bc.gen_man_pages())
    assert [k for k, _, _ in items] == ["man/de/man1/alpha.1.gz", "man/man1/alpha.1.gz", "man/man5/beta.conf.5.gz"]
    assert [(m["language"], m["section"], m["page"]) for _, _, m in items] == [
        ("de", "1", "alpha.1"), ("en", "1", "alpha.1"), ("en", "5", "beta.conf.5")]
    assert items[1][1].startswith("NAME\n\nalpha - first\n\nDESCRIPTION\n\nword0 word1")
    assert [k for k, _, _ in bc.gen_man_pages(languages=["en"], max_documents=1)] == ["man/man1/alpha.1.gz"]
    assert len(list(bc.gen_man_pages(min_words=5))) == 4  # the short page counts now
    docs = list(read_source("man", recipe(kind="builtin", generator="man_pages", options={"max_documents": 2})))
    assert len(docs) == 2 and json.loads(docs[0]["meta"])["language"] == "de"


def test_man_pages_optional_when_absent(tmp_path, monkeypatch):
    monkeypatch.setattr(bc, "MAN_ROOT", tmp_path / "none")
    with pytest.raises(SourceMissing, match="no man pages"):
        list(bc.gen_man_pages())
    res = ingest_source("man", recipe(kind="builtin", generator="man_pages", optional=True), tmp_path / "o")
    assert res.documents == 0 and res.shards == [] and "no man pages" in res.missing
    with pytest.raises(SourceMissing):
        ingest_source("man", recipe(kind="builtin", generator="man_pages"), tmp_path / "o2")


@pytest.mark.skipif(not bc.MAN_ROOT.is_dir(), reason="no man pages installed")
def test_installed_man_pages_convert_cleanly():
    items = list(bc.gen_man_pages(max_documents=200, languages=["en"]))
    assert len(items) > 20
    assert all(meta["language"] == "en" and len(text.split()) >= 30 for _, text, meta in items)
    # font/size escapes and macro lines are gone (pages that document groff or regexes may show a few literally)
    residue = [k for k, text, _ in items if re.search(r"\\f[BIRP(\[]|\\s[-+]?\d|^\.(TH|SH|PP|TP|B|I|BR) ", text, re.M)]
    assert len(residue) <= len(items) // 50, residue
