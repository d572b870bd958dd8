"""Real offline text for the demo: stdlib docstrings, installed man pages, and generated web-like and spam pages.

Everything is deterministic on a given machine (sorted walks, seeded generators), so artifacts built from it are
content-addressed like any other source.
"""

from __future__ import annotations

import ast
import gzip
import random
import re
import sysconfig
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

Item = tuple[str, str, dict[str, Any]]

SKIP_DIRS = ("test/", "tests/", "idlelib/", "site-packages/", "lib2to3/", "__pycache__/", "turtledemo/",
             "ensurepip/", "pydoc_data/")


# ------------------------------------------------------------------------------------------------ docstrings
def _module_docs(path: Path) -> list[tuple[str, str]]:
    try:
        tree = ast.parse(path.read_bytes())
    except (SyntaxError, ValueError, UnicodeDecodeError):
        return []
    out = []
    mod = ast.get_docstring(tree)
    if mod:
        out.append(("", mod))
    for node in ast.walk(tree):
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
            doc = ast.get_docstring(node)
            if doc and len(doc.split()) >= 5:
                out.append((node.name, doc))
    return out


@lru_cache(maxsize=4)
def _docstring_documents(min_words: int = 50) -> tuple[Item, ...]:
    root = Path(sysconfig.get_paths()["stdlib"])
    items = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if any(rel.startswith(d) or f"/{d}" in rel for d in SKIP_DIRS):
            continue
        parts = _module_docs(path)
        module = rel[:-3].replace("/", ".").removesuffix(".__init__")
        sections = [f"{module}\n\n{doc}" if not n else f"{module}.{n}\n\n{doc}" for n, doc in parts]
        text = "\n\n".join(sections)
        if len(text.split()) >= min_words:
            items.append((f"stdlib/{rel}", text, {"module": module, "sections": len(sections)}))
    return tuple(items)


def gen_python_docstrings(max_documents: int | None = None, min_words: int = 50) -> Iterator[Item]:
    """One document per stdlib module: its module docstring and public class/function docstrings."""
    docs = _docstring_documents(min_words)
    yield from docs[:max_documents] if max_documents else docs


# ------------------------------------------------------------------------------------------------ man pages
MAN_ROOT = Path("/usr/share/man")
_FONT = re.compile(r"\\f(\[[^\]]*\]|\(..|.)")
_ESCAPES = [(r"\-", "-"), (r"\(em", "—"), (r"\(en", "–"), (r"\(aq", "'"), (r"\(dq", '"'), (r"\(bu", "•"),
            (r"\(co", "©"), (r"\(lq", '"'), (r"\(rq", '"'), (r"\e", "\\"), (r"\&", ""), (r"\ ", " "), (r"\~", " "),
            (r"\|", ""), (r"\^", ""), (r"\,", ""), (r"\/", ""), (r"\:", ""), (r"\%", "")]
_TEXT_MACROS = {".B", ".I", ".BR", ".RB", ".BI", ".IB", ".IR", ".RI", ".SM", ".SB", ".IP", ".TP", ".UR", ".MT",
                ".Nm", ".Nd", ".Ar", ".Fl", ".Pa", ".Xr", ".Dq", ".Sy", ".Em", ".Li", ".Cm", ".It"}


def groff_to_text(src: str) -> str:
    """A small man(7)/mdoc(7) to plain text converter: headings, paragraphs, font and character escapes."""
    out: list[str] = []
    for line in src.splitlines():
        if line.startswith(('.\\"', "'\\\"", '.\\\\"')) or line.strip() in (".", "'"):
            continue
        if line.startswith((".", "'")):
            parts = line.split(None, 1)
            macro, arg = parts[0], (parts[1] if len(parts) > 1 else "")
            if macro in (".SH", ".SS", ".Sh", ".Ss"):
                out += ["", arg.strip('"').strip(), ""]
            elif macro in (".PP", ".P", ".LP", ".Pp", ".sp", ".br"):
                out.append("")
            elif macro in _TEXT_MACROS and arg:
                arg = re.sub(r'"', "", arg)
                arg = " ".join(t for t in arg.split() if not re.fullmatch(r"-?\.?\d+(\.\d+)?[cimnpPuv]?", t))
                if arg:
                    out.append(arg)
            continue
        out.append(line)
    text = "\n".join(out)
    text = _FONT.sub("", text)
    for a, b in _ESCAPES:
        text = text.replace(a, b)
    text = re.sub(r"\\\*\(..|\\\*\[[^\]]*\]|\\\*.", "", text)
    text = re.sub(r"\\\(..|\\\[[^\]]*\]", "", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


def gen_man_pages(max_documents: int = 3000, languages: list[str] | None = None, min_words: int = 30,
                  root: str | None = None) -> Iterator[Item]:
    from minigpt_assets.data.sources import SourceMissing

    base = Path(root) if root else MAN_ROOT
    if not base.is_dir():
        raise SourceMissing(f"no man pages on this machine: {base} does not exist")
    n = 0
    for path in sorted(base.glob("**/man*/*.gz")):
        rel = path.relative_to(base)
        lang = "en" if rel.parts[0].startswith("man") else rel.parts[0]
        if languages and lang not in languages:
            continue
        try:
            src = gzip.decompress(path.read_bytes()).decode("utf-8", errors="replace")
        except (OSError, EOFError):
            continue
        if src.lstrip().startswith(".so "):
            continue  # a redirect stub
        text = groff_to_text(src)
        if len(text.split()) < min_words:
            continue
        section = rel.parts[-2].removeprefix("man")
        yield f"man/{rel.as_posix()}", text, {"section": section, "language": lang, "page": path.name[:-3]}
        n += 1
        if n >= max_documents:
            return


# ------------------------------------------------------------------------------------------------ web-like
@lru_cache(maxsize=2)
def _sentences() -> tuple[str, ...]:
    """Real English sentences from stdlib docstrings (prose only: no code, no tables)."""
    out = []
    for _, text, _ in _docstring_documents(50):
        for para in re.split(r"\n\s*\n", text):
            para = " ".join(para.split())
            if not para or ">>>" in para or para.count("(") > 3:
                continue
            for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", para):
                words = s.split()
                if 8 <= len(words) <= 40 and s[-1] in ".!?" and sum(w.isalpha() for w in words) / len(words) > 0.7:
                    out.append(s)
    return tuple(dict.fromkeys(out))  # dedupe, keep order


NAV = ["Home", "About", "Blog", "Products", "Contact", "Docs", "Pricing", "Careers", "Support", "Login"]
FOOTERS = [
    "Copyright 2024 Example Media. All rights reserved.",
    "We use cookies to improve your experience. By continuing you accept our cookie policy.",
    "Privacy Policy | Terms of Use | Sitemap",
    "Subscribe to our newsletter for weekly updates.",
]
FOREIGN = {
    "de": ["Die Stadt liegt am Ufer eines breiten Flusses und ist für ihre alten Brücken bekannt.",
           "Am Wochenende besuchen viele Familien den Markt, um frisches Obst und Gemüse zu kaufen.",
           "Der Bericht beschreibt, wie sich die Preise in den letzten zehn Jahren entwickelt haben.",
           "Wir danken allen Mitarbeitern, die an diesem Projekt mitgewirkt haben."],
    "fr": ["La bibliothèque municipale ouvre ses portes tous les jours sauf le dimanche matin.",
           "Les chercheurs ont observé une hausse importante des températures pendant l'été dernier.",
           "Cette recette traditionnelle se prépare avec des pommes, du beurre et un peu de sucre.",
           "Le conseil a décidé de rénover la place centrale avant la fin de l'année prochaine."],
    "es": ["El museo presenta una colección de pinturas del siglo diecinueve en su sala principal.",
           "Los estudiantes deben entregar el trabajo final antes del viernes por la tarde.",
           "La empresa anunció que abrirá una nueva oficina en la ciudad el próximo mes.",
           "Durante el invierno las carreteras de montaña suelen cerrarse por la nieve."],
    "it": ["Il treno per la capitale parte ogni mattina alle sette dalla stazione centrale.",
           "Gli abitanti del paese si riuniscono in piazza per la festa di primavera.",
           "Il nuovo regolamento entrerà in vigore all'inizio del prossimo anno scolastico."],
    "nl": ["De gemeente heeft besloten om meer fietspaden aan te leggen in het centrum.",
           "In de zomer is het strand druk met toeristen uit het hele land.",
           "Het onderzoek laat zien dat de meeste mensen liever thuis werken."],
}
SPAM_WORDS = ["cheap", "deal", "free", "bonus", "casino", "pills", "winner", "prize", "discount", "crypto",
              "loan", "offer", "click", "buy", "now", "limited", "exclusive", "guaranteed", "viagra", "replica"]


def _paragraphs(rng: random.Random, sents: tuple[str, ...], n_par: int) -> list[str]:
    return [" ".join(rng.sample(sents, rng.randint(3, 6))) for _ in range(n_par)]


def _clean_page(rng: random.Random, sents: tuple[str, ...]) -> str:
    title = rng.choice(sents).split(",")[0].rstrip(".")
    lines = [" | ".join(rng.sample(NAV, 5)), "", title, ""]
    body = _paragraphs(rng, sents, rng.randint(3, 7))
    if rng.random() < 0.3:
        body.insert(1, "\n".join(f"- {rng.choice(sents)}" for _ in range(rng.randint(3, 5))))
    lines += ["\n\n".join(body), "", rng.choice(FOOTERS)]
    return "\n".join(lines)


def _near_dup(rng: random.Random, text: str) -> str:
    """A near duplicate: a few word substitutions and a different footer (5-gram Jaccard roughly 0.8-0.95)."""
    words = text.split(" ")
    for _ in range(max(1, len(words) // 150)):
        i = rng.randrange(len(words))
        words[i] = rng.choice(["quickly", "often", "also", "new", "simple", "general"])
    out = " ".join(words)
    for f in FOOTERS:
        out = out.replace(f, "")
    return out.rstrip() + f"\nUpdated on 2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}."


def _spam_page(rng: random.Random, sents: tuple[str, ...], style: int) -> str:
    w = SPAM_WORDS
    if style == 0:  # keyword stuffing
        return " ".join(rng.choice(w) for _ in range(rng.randint(120, 300)))
    if style == 1:  # repeated promo lines
        line = f"{rng.choice(w).upper()} {rng.choice(w).upper()} NOW!!! Call 555-{rng.randint(1000, 9999)} $$$"
        return "\n".join([line] * rng.randint(15, 40))
    if style == 2:  # bullets and ellipses
        return "\n".join(f"• {rng.choice(w)} {rng.choice(w)}..." for _ in range(rng.randint(20, 50)))
    if style == 3:  # lorem ipsum filler around a real sentence
        return ("Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * rng.randint(5, 15)
                + rng.choice(sents))
    if style == 5:  # SEO page: real sentences around keyword lines; passes most heuristics, not the classifier
        kw = [rng.choice(w) for _ in range(5)]
        return "\n\n".join(f"{rng.choice(sents)} {' '.join(kw)} {rng.choice(sents)} Best {kw[0]} {kw[1]} "
                            f"deals for the {kw[2]} and the {kw[3]} today." for _ in range(rng.randint(4, 8)))
    if style == 4:  # link farm
        return "\n".join(f"http://{rng.choice(w)}-{rng.choice(w)}.example/{rng.randint(1, 999)} "
                         f"{rng.choice(w)} {rng.choice(w)}" for _ in range(rng.randint(20, 40)))
    # style 6: a very short page
    return f"{rng.choice(w)} {rng.choice(w)}!"


def gen_synthetic_web(num_documents: int = 3000, seed: int = 13) -> Iterator[Item]:
    """Web-like pages from real sentences, with planted exact/near duplicates, spam, foreign and cross-source copies."""
    rng = random.Random(seed)
    sents = _sentences()
    docs = _docstring_documents(50)
    pages: list[tuple[str, str, int | None]] = []  # (kind, text, index of the page it copies)
    n = num_documents
    counts = {"exact_dup": int(0.08 * n), "near_dup": int(0.08 * n), "spam": int(0.08 * n),
              "foreign": int(0.03 * n), "cross_dup": int(0.03 * n)}
    n_clean = n - sum(counts.values())
    clean = [_clean_page(rng, sents) for _ in range(n_clean)]
    pages += [("clean", t, None) for t in clean]
    for _ in range(counts["exact_dup"]):
        j = rng.randrange(len(clean))
        pages.append(("exact_dup", clean[j], j))
    for _ in range(counts["near_dup"]):
        j = rng.randrange(len(clean))
        pages.append(("near_dup", _near_dup(rng, clean[j]), j))
    pages += [("spam", _spam_page(rng, sents, i % 7), None) for i in range(counts["spam"])]
    langs = sorted(FOREIGN)
    for i in range(counts["foreign"]):
        pool = FOREIGN[langs[i % len(langs)]]
        body = "\n\n".join(" ".join(rng.sample(pool, min(3, len(pool)))) for _ in range(rng.randint(2, 4)))
        pages.append(("foreign", f"{' | '.join(rng.sample(NAV, 4))}\n\n{body}", None))
    pages += [("cross_dup", docs[rng.randrange(len(docs))][1], None) for _ in range(counts["cross_dup"])]
    order = list(range(len(pages)))
    rng.shuffle(order)
    rank_of = {i: rank for rank, i in enumerate(order)}
    for rank, i in enumerate(order):
        kind, text, src = pages[i]
        meta = {"kind": kind, "url": f"https://site{rank % 97}.example/{rank}"}
        if src is not None:
            meta["copy_of"] = f"page/{rank_of[src]:06d}"  # planted duplicate: the key of its original
        yield f"page/{rank:06d}", text, meta


def gen_synthetic_spam(num_documents: int = 1500, seed: int = 7) -> Iterator[Item]:
    """Low-quality pages in the style of web spam: negative examples for the quality classifier."""
    rng = random.Random(seed)
    sents = _sentences()
    for i in range(num_documents):
        style = rng.randrange(7)
        if style == 6:  # SEO text: a real sentence drowned in keywords
            kw = [rng.choice(SPAM_WORDS) for _ in range(6)]
            text = "\n".join(f"{' '.join(kw)} {rng.choice(sents)} {' '.join(kw)} best {kw[0]} online"
                             for _ in range(rng.randint(4, 10)))
        else:
            text = _spam_page(rng, sents, style)
        yield f"spam/{i:06d}", text, {"style": style}


GENERATORS = {
    "python_docstrings": gen_python_docstrings,
    "man_pages": gen_man_pages,
    "synthetic_web": gen_synthetic_web,
    "synthetic_spam": gen_synthetic_spam,
}


def generate(generator: str, **options: Any) -> Iterator[Item]:
    try:
        return GENERATORS[generator](**options)
    except TypeError as e:  # an unknown option: one line naming it
        raise ValueError(f"builtin generator {generator!r}: {e}") from None
