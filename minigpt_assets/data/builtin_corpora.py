"""Real offline text for the demo: stdlib docstrings, installed man pages, and generated web-like and spam pages.

Every generator yields `(key, text, meta)` and is deterministic on a given machine (sorted walks, seeded RNGs), so
artifacts built from it are content-addressed like any other source. `generate(name, **options)` dispatches.
"""

from __future__ import annotations

import ast
import gzip
import random
import re
import sysconfig
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterator

Item = tuple[str, str, dict[str, Any]]

SKIP_DIRS = ("test/", "tests/", "idlelib/", "site-packages/", "lib2to3/", "__pycache__/", "turtledemo/",
             "ensurepip/", "pydoc_data/")


# ------------------------------------------------------------------------------------------------ docstrings
def _module_sections(tree: ast.Module, module: str) -> list[tuple[str, str]]:
    """(qualified name, docstring) for the module and its public classes, methods and functions, in source order.

    Definitions under module-level `if`/`try` (platform and import fallbacks) count; nested functions do not.
    """
    out: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()

    def add(name: str, doc: str | None, min_words: int) -> None:
        if doc and len(doc.split()) >= min_words and (name, doc) not in seen:
            seen.add((name, doc))
            out.append((name, doc))

    def visit(body: list[ast.stmt], prefix: str) -> None:
        for node in body:
            if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                if node.name.startswith("_"):
                    continue
                qual = f"{prefix}.{node.name}"
                add(qual, ast.get_docstring(node), 5)
                if isinstance(node, ast.ClassDef):
                    visit(node.body, qual)
            elif isinstance(node, ast.If):
                visit(node.body + node.orelse, prefix)
            elif isinstance(node, ast.Try):
                visit(node.body + [s for h in node.handlers for s in h.body] + node.orelse + node.finalbody, prefix)

    add(module, ast.get_docstring(tree), 1)
    visit(tree.body, module)
    return out


def _stdlib_modules() -> Iterator[tuple[str, str, Path]]:
    """(relative path, dotted module name, path) of every stdlib .py file outside tests and tooling, sorted."""
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if any(rel.startswith(d) or f"/{d}" in rel for d in SKIP_DIRS):
            continue
        yield rel, rel[:-3].replace("/", ".").removesuffix(".__init__"), path


@lru_cache(maxsize=4)
def _docstring_documents(min_words: int = 50) -> tuple[Item, ...]:
    items = []
    for rel, module, path in _stdlib_modules():
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError, OSError):
            continue  # a file this interpreter cannot parse (or read)
        sections = _module_sections(tree, module)
        text = "\n\n".join(f"{name}\n\n{doc}" for name, doc in sections)
        if sum(len(doc.split()) for _, doc in sections) >= min_words:
            items.append((f"stdlib/{rel}", text, {"module": module, "sections": len(sections)}))
    return tuple(items)


def gen_python_docstrings(max_documents: int | None = None, min_words: int = 50) -> Iterator[Item]:
    """One document per stdlib module: its docstring, then each public class/function docstring as
    "qualified.name\\n\\ndocstring" sections. Modules with fewer than `min_words` words of docstrings are skipped."""
    docs = _docstring_documents(min_words)
    yield from docs[:max_documents] if max_documents else docs


# ------------------------------------------------------------------------------------------------ man pages
MAN_ROOT = Path("/usr/share/man")

_CHARS = {  # groff special characters (\(xx, \[xx], \C'xx') that have a plain-text form
    "em": "—", "en": "–", "hy": "-", "mi": "-", "pl": "+", "eq": "=", "aq": "'", "dq": '"', "lq": '"', "rq": '"',
    "oq": "'", "cq": "'", "Bq": "„", "bq": "‚", "Fo": "«", "Fc": "»", "fo": "‹", "fc": "›", "bu": "•", "co": "©",
    "rg": "®", "tm": "™", "de": "°", "mu": "×", "di": "÷", "+-": "±", "<=": "≤", ">=": "≥", "!=": "≠", "==": "≡",
    "~=": "≅", "~~": "≈", "->": "→", "<-": "←", "<>": "↔", "ua": "↑", "da": "↓", "rA": "⇒", "lA": "⇐",
    "ti": "~", "ha": "^", "ba": "|", "br": "|", "bv": "|", "sl": "/", "rs": "\\", "at": "@", "sh": "#",
    "Do": "$", "ul": "_", "ru": "_", "lB": "[", "rB": "]", "lC": "{", "rC": "}", "la": "⟨", "ra": "⟩",
    "ss": "ß", "dg": "†", "dd": "‡", "sc": "§", "ps": "¶", "ct": "¢", "Po": "£", "Eu": "€", "eu": "€", "ye": "¥",
    "no": "¬", "if": "∞", "aa": "´", "ga": "`", "fm": "′", "sd": "″", "ff": "ff", "fi": "fi", "fl": "fl",
    "Fi": "ffi", "Fl": "ffl", "12": "½", "14": "¼", "34": "¾", "sq": "□", "ci": "○", "OK": "✓", "pc": "·",
    "hA": "⇔", "ap": "~", "mc": "µ", "*m": "µ", "*a": "α", "*b": "β", "*l": "λ", "*p": "π", "*s": "σ",
}
_CHARS.update({f"{m}{c}": ch for m, pairs in {
    ":": "aäeëiïoöuüyÿAÄEËIÏOÖUÜ", "'": "aáeéiíoóuúyýAÁEÉIÍOÓUÚ", "`": "aàeèiìoòuùAÀEÈIÌOÒUÙ",
    "^": "aâeêiîoôuûAÂEÊIÎOÔUÛ", "~": "aãnñoõAÃNÑOÕ", ",": "cçCÇ", "o": "aåAÅ", "/": "oøOØ"}.items()
    for c, ch in zip(pairs[::2], pairs[1::2])})
_STRINGS = {"lq": '"', "rq": '"', "R": "®", "Tm": "™", "aq": "'", "Aq": "'", "dq": '"', "Lq": '"', "Rq": '"'}

_ESCAPE = re.compile(r"""\\(?:
      f(?:\[[^\]]*\]|\(..|.)                                   # font change
    | s(?:[-+]?\(\d\d|\(\d\d|[-+]?\[[^\]]*\]|'[^']*'|[-+]?\d)   # point size
    | \((?P<c2>..)                                             # \(xx special character
    | \[(?P<cn>[^\]]*)\]                                       # \[name] special character
    | \*(?:\((?P<s2>..)|\[(?P<sn>[^\]]*)\]|(?P<s1>.))         # string interpolation
    | [nkgmMFYV$](?:\[[^\]]*\]|\(..|[-+]?.)                    # registers, marks, colours, macro arguments
    | (?P<dl>[hvwolLDXbxRSHNCZAB])(?P<d>.)(?P<da>.*?)(?P=d)     # escapes with a delimited argument
    | (?P<o>.)                                                 # everything else: one character
)""", re.X | re.S)
_SIMPLE = {"\\": "\\", "e": "\\", "E": "\\", "-": "-", ".": ".", "'": "'", "`": "`", " ": " ", "~": " ",
           "0": " ", "_": "_", "t": "\t"}  # any other \X prints nothing (\& \| \^ \c \% \{ \} ...)
_COMMENT = re.compile(r"\\\\|\\\".*|\\#.*")  # a \" or \# comment runs to the end of the line


def _special(name: str) -> str:
    if name in _CHARS:
        return _CHARS[name]
    m = re.fullmatch(r"u([0-9A-Fa-f]{4,6})(?:_.*)?|char(\d+)", name)
    if m:
        return chr(int(m.group(1), 16) if m.group(1) else int(m.group(2)))
    return ""


def _unescape(text: str) -> str:
    def sub(m: re.Match) -> str:
        if m.group("c2") is not None:
            return _special(m.group("c2"))
        if m.group("cn") is not None:
            return _special(m.group("cn"))
        s = m.group("s2") or m.group("sn") or m.group("s1")
        if s is not None:
            return _STRINGS.get(s, "")
        if m.group("dl"):
            kind, arg = m.group("dl"), m.group("da")
            if kind == "N" and arg.isdigit():
                return chr(int(arg))
            if kind == "C":
                return _special(arg)
            return _unescape(arg) if kind in "Zo" else ""
        o = m.group("o")
        return _SIMPLE.get(o, "") if o is not None else ""

    return _ESCAPE.sub(sub, text)


def _args(s: str) -> list[str]:
    """Macro arguments: blank-separated, double quotes group (and "" inside quotes is one quote)."""
    out, cur, quoted, i, started = [], [], False, 0, False
    while i < len(s):
        ch = s[i]
        if quoted:
            if ch == '"' and s[i + 1: i + 2] == '"':
                cur.append('"')
                i += 1
            elif ch == '"':
                quoted = False
            else:
                cur.append(ch)
        elif ch == '"' and not cur:
            quoted, started = True, True
        elif ch in " \t":
            if cur or started:
                out.append("".join(cur))
            cur, started = [], False
        elif ch == "\\" and i + 1 < len(s):  # keep an escape (and an escaped blank) inside its argument
            cur.append(s[i: i + 2])
            i += 1
        else:
            cur.append(ch)
        i += 1
    if cur or started:
        out.append("".join(cur))
    return out


_FONT_MACROS = {"B", "I", "SM", "SB", "R"}
_ALT_MACROS = {"BR", "RB", "BI", "IB", "IR", "RI"}
_BREAKS = {"PP", "P", "LP", "sp", "Pp", "Lp", "HP"}
_BLOCKS = {"TS": "TE", "EQ": "EN", "PS": "PE", "GS": "GE", "G1": "G2", "de": "..", "de1": "..", "am": "..",
           "am1": "..", "ig": ".."}
_MDOC_DROP = {"Dd", "Dt", "Os", "Bl", "El", "Bd", "Ed", "Bk", "Ek", "Bf", "Ef", "Sm", "Rs", "Re", "Xo", "Xc"}
_MDOC_WORDS = {"Ux": "UNIX", "Bx": "BSD", "Nx": "NetBSD", "Fx": "FreeBSD", "Ox": "OpenBSD", "Dx": "DragonFly",
               "Bsx": "BSD/OS", "At": "AT&T UNIX", "Ta": "\t"}
_MDOC_WRAP = {"Op": ("[", "]"), "Dq": ('"', '"'), "Qq": ('"', '"'), "Sq": ("'", "'"), "Ql": ("'", "'"),
              "Pq": ("(", ")"), "Aq": ("<", ">"), "Bq": ("[", "]"), "Brq": ("{", "}")}
_MDOC_OPEN = {"Oo": "[", "Do": '"', "Qo": '"', "So": "'", "Po": "(", "Ao": "<", "Bo": "[", "Bro": "{"}
_MDOC_CLOSE = {"Oc": "]", "Dc": '"', "Qc": '"', "Sc": "'", "Pc": ")", "Ac": ">", "Bc": "]", "Brc": "}"}
_MDOC_CALLABLE = (set(_MDOC_WORDS) | set(_MDOC_WRAP) | set(_MDOC_OPEN) | set(_MDOC_CLOSE) | {
    "Ad", "An", "Ar", "Cd", "Cm", "Dv", "Em", "Er", "Ev", "Fa", "Fl", "Fn", "Ft", "Ic", "In", "It", "Li", "Lk",
    "Ms", "Mt", "Nm", "No", "Ns", "Pa", "Pf", "St", "Sx", "Sy", "Tn", "Va", "Vt", "Xr", "Lb", "Ot", "Fo", "Fc"})
_CLOSING_PUNCT = {".", ",", ";", ":", ")", "]", "?", "!"}


def _mdoc_line(tokens: list[str], state: dict[str, Any]) -> str:
    """An mdoc(7) line with its callable macros resolved: `.Fl a Ar file` -> `-a file`, `.Xr ls 1` -> `ls(1)`."""
    parts: list[str] = []  # pieces; "\0" before a piece means no space before it
    closers: list[str] = []
    glue = False
    i = 0
    while i < len(tokens):
        t = tokens[i]
        nxt = tokens[i + 1] if i + 1 < len(tokens) else None
        piece: str | None = None
        if t in _MDOC_CALLABLE:
            if t == "Fl":
                if nxt is not None and nxt not in _MDOC_CALLABLE and nxt not in _CLOSING_PUNCT:
                    piece, i = "-" + nxt, i + 1
                else:
                    piece = "-"
                    if nxt == "Fl":  # `Fl Fl name` is --name
                        parts.append(("\0" if glue else "") + piece)
                        piece, glue = None, True
            elif t == "Xr" and nxt is not None:
                sec = tokens[i + 2] if i + 2 < len(tokens) and tokens[i + 2][:1].isdigit() else None
                piece = f"{nxt}({sec})" if sec else nxt
                i += 2 if sec else 1
            elif t == "Nm" and (nxt is None or nxt in _MDOC_CALLABLE or nxt in _CLOSING_PUNCT):
                piece = state.get("name", "")
            elif t == "Nm" and "name" not in state:
                state["name"] = nxt
            elif t in _MDOC_WORDS:
                piece = _MDOC_WORDS[t]
            elif t in _MDOC_WRAP:
                parts.append(("\0" if glue else "") + _MDOC_WRAP[t][0])
                glue = True
                closers.append(_MDOC_WRAP[t][1])
            elif t in _MDOC_OPEN:
                parts.append(("\0" if glue else "") + _MDOC_OPEN[t])
                glue = True
            elif t in _MDOC_CLOSE:
                parts.append("\0" + _MDOC_CLOSE[t])
            elif t in ("Ns", "Pf"):
                glue = True
                if t == "Pf" and nxt is not None:
                    parts.append(nxt)
                    i += 1
            i += 1
            if piece is not None:
                parts.append(("\0" if glue else "") + piece)
                glue = False
            continue
        if t in _CLOSING_PUNCT:
            parts.append("\0" + t)
        else:
            parts.append(("\0" if glue else "") + t)
            glue = False
        i += 1
    for c in reversed(closers):
        parts.append("\0" + c)
    text = ""
    for p in parts:
        text += p[1:] if p.startswith("\0") else (" " if text else "") + p
    return text.strip()


def _odd_backslashes_before(line: str, end: int) -> bool:
    n = 0
    while end - n - 1 >= 0 and line[end - n - 1] == "\\":
        n += 1
    return n % 2 == 1


def groff_to_text(src: str) -> str:
    """A small man(7)/mdoc(7) to plain text converter.

    Comments, macro and request lines are dropped, keeping the text of font and mdoc macros; .SH/.SS/.Sh/.Ss
    become heading lines between blank lines; tables keep their cells; escapes become their characters.
    Text lines keep their line breaks (nothing is refilled), except that `\\c` glues the next output on.
    """
    out: list[str] = []
    glue = False  # the previous output line ended in \c: the next output continues it

    def emit(text: str) -> None:
        nonlocal glue
        if glue and out:
            out[-1] += text
        else:
            out.append(text)
        glue = False

    def blank(*lines: str) -> None:
        nonlocal glue
        out.extend(["", *lines, ""] if lines else [""])
        glue = False

    lines = src.replace("\r\n", "\n").split("\n")
    block_end: str | None = None  # inside .de/.ig/.EQ... until this request
    table = 0  # 0: no table, 1: table options/format lines, 2: table data
    brace_depth = 0  # inside an \{ ... \} conditional block
    heading_next = False
    url: str | None = None
    mdoc: dict[str, Any] = {}
    i = 0
    while i < len(lines):
        line = lines[i]
        i += 1
        while line.endswith("\\") and _odd_backslashes_before(line, len(line)) and i < len(lines):
            line = line[:-1] + lines[i]  # an escaped newline joins the next input line
            i += 1
        control = line[:1] in (".", "'")
        body = line[1:].lstrip() if control else ""
        name = body.split(None, 1)[0] if body.split() else ""
        if block_end is not None:
            if control and (name == block_end.lstrip(".") or (block_end == ".." and body.startswith("."))):
                block_end = None
            continue
        if brace_depth:
            brace_depth += line.count("\\{") - line.count("\\}")
            continue
        line = _COMMENT.sub(lambda m: m.group(0) if m.group(0) == "\\\\" else "", line)
        cont = line.endswith("\\c") and _odd_backslashes_before(line, len(line) - 1)
        if cont:
            line = line[:-2]
        if control:
            args = _args(line[1:].lstrip()[len(name):].strip())
            text: str | None = None
            if name in ("if", "ie", "el", "while"):
                brace_depth = max(0, line.count("\\{") - line.count("\\}"))
            elif name in _BLOCKS:
                if name == "TS":
                    table = 1
                else:
                    block_end = _BLOCKS[name]
            elif name == "TE":
                table = 0
            elif name in ("SH", "SS", "Sh", "Ss"):
                heading = _unescape(" ".join(args)).strip()
                if heading:
                    blank(heading)
                else:
                    heading_next = True
            elif name in _BREAKS:
                blank()
            elif name in _FONT_MACROS and args:
                text = _unescape(" ".join(args))
            elif name in _ALT_MACROS and args:
                text = _unescape("".join(args))
            elif name == "IP" and args and args[0]:
                text = _unescape(args[0])
            elif name in ("UR", "MT") and args:
                url = args[0]
            elif name in ("UE", "ME"):
                if url:
                    text = f"<{_unescape(url)}>{_unescape(''.join(args))}"
                url = None
            elif name == "SY" and args:
                text = _unescape(args[0])
            elif name == "OP" and args:
                text = "[" + _unescape(" ".join(args)) + "]"
            elif name == "MR" and len(args) >= 2:
                text = f"{_unescape(args[0])}({args[1]}){_unescape(''.join(args[2:]))}"
            elif name == "Nd":
                text = "- " + _unescape(" ".join(args))
            elif name in _MDOC_CALLABLE and name not in _MDOC_DROP:
                text = _unescape(_mdoc_line([name, *args], mdoc)) or None
            if text is not None:
                emit(text)
                glue = cont
            continue
        if table == 1:  # options and format lines end with the line that ends in "."
            if line.rstrip().endswith("."):
                table = 2
            continue
        if table == 2:
            line = re.sub(r"T[{}]", "", line).replace("\t", "  ")
            if line.strip() in ("_", "=", ""):
                continue
        text = _unescape(line)
        if heading_next:
            blank(text.strip())
            heading_next = False
            continue
        emit(text)
        glue = cont
    text = "\n".join(s.rstrip() for s in out)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _is_redirect(src: str) -> bool:
    """A `.so other/page.1` stub (its first non-comment line is a .so request)."""
    for line in src.splitlines():
        s = line.strip()
        if not s or s.startswith(('.\\"', "'\\\"", '\\"')):
            continue
        return s.startswith((".so ", "'so "))
    return True  # nothing but comments


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")  # older translated pages


def gen_man_pages(max_documents: int = 3000, languages: list[str] | None = None, min_words: int = 30,
                  root: str | None = None) -> Iterator[Item]:
    """Installed groff man pages (`<root>/[<lang>/]man<section>/*.gz`) converted to plain text, in path order.

    Redirect stubs (`.so`) and symlinks to a page read under its own name are skipped. Raises SourceMissing
    when the folder does not exist (the recipe is optional).
    """
    from minigpt_assets.data.sources import SourceMissing

    base = Path(root) if root else MAN_ROOT
    if not base.is_dir():
        raise SourceMissing(f"no man pages on this machine: {base} does not exist")
    wanted = set(languages) if languages else None
    real_base = base.resolve()
    n = 0
    for path in sorted(base.glob("**/man*/*.gz")):
        rel = path.relative_to(base)
        lang = "en" if rel.parts[0].startswith("man") else rel.parts[0]
        if wanted is not None and lang not in wanted:
            continue
        if path.is_symlink():
            target = path.resolve()
            if target.is_relative_to(real_base) and target != path:
                continue  # an alias of a page that is read under its own name
        try:
            src = _decode(gzip.decompress(path.read_bytes()))
        except (OSError, EOFError):
            continue
        if _is_redirect(src):
            continue
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
def english_sentences() -> tuple[str, ...]:
    """Real English sentences from stdlib docstrings (prose only: no code, no tables), deduplicated, in order."""
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
    return tuple(dict.fromkeys(out))


NAV = ["Home", "About", "Blog", "Products", "Contact", "Docs", "Pricing", "Careers", "Support", "Login"]
FOOTERS = [
    "Copyright 2024 Example Media. All rights reserved.",
    "We use cookies to improve your experience. By continuing you accept our cookie policy.",
    "Privacy Policy | Terms of Use | Sitemap",
    "Subscribe to our newsletter for weekly updates.",
]
FOREIGN_NAV = {
    "de": ["Startseite", "Über uns", "Kontakt", "Impressum", "Datenschutz", "Aktuelles"],
    "fr": ["Accueil", "À propos", "Contact", "Mentions légales", "Actualités", "Boutique"],
    "es": ["Inicio", "Quiénes somos", "Contacto", "Noticias", "Aviso legal", "Tienda"],
    "it": ["Home", "Chi siamo", "Contatti", "Notizie", "Privacy", "Negozio"],
    "nl": ["Home", "Over ons", "Contact", "Nieuws", "Privacy", "Winkel"],
}
FOREIGN = {  # short paragraphs written for this project; foreign pages are composed from their sentences
    "de": [
        "Die Stadt liegt am Ufer eines breiten Flusses und ist für ihre alten Brücken bekannt. Im Sommer fahren "
        "kleine Boote zwischen den beiden Ufern hin und her. Viele Besucher bleiben länger, als sie geplant hatten.",
        "Am Wochenende besuchen viele Familien den Markt, um frisches Obst und Gemüse zu kaufen. Die Händler "
        "kommen schon früh am Morgen aus den umliegenden Dörfern. Wer spät kommt, findet oft nur noch Kartoffeln.",
        "Der Bericht beschreibt, wie sich die Preise in den letzten zehn Jahren entwickelt haben. Besonders stark "
        "gestiegen sind die Kosten für Wohnungen in der Innenstadt. Die Autoren empfehlen, mehr bezahlbaren "
        "Wohnraum zu bauen.",
        "Wir danken allen Mitarbeiterinnen und Mitarbeitern, die an diesem Projekt mitgewirkt haben. Ohne ihre "
        "Geduld und ihre Ideen wäre die neue Ausstellung nicht möglich gewesen. Die Eröffnung findet am ersten "
        "Freitag im Mai statt.",
    ],
    "fr": [
        "La bibliothèque municipale ouvre ses portes tous les jours sauf le dimanche matin. Les lecteurs peuvent "
        "emprunter jusqu'à dix livres pendant trois semaines. Une salle de travail silencieuse est réservée aux "
        "étudiants.",
        "Les chercheurs ont observé une hausse importante des températures pendant l'été dernier. Selon eux, les "
        "rivières de la région ont atteint leur niveau le plus bas depuis trente ans. Ils demandent aux habitants "
        "de limiter leur consommation d'eau.",
        "Cette recette traditionnelle se prépare avec des pommes, du beurre et un peu de sucre. Il faut laisser "
        "cuire la tarte pendant quarante minutes dans un four bien chaud. Elle se déguste tiède, avec une boule "
        "de glace à la vanille.",
        "Le conseil a décidé de rénover la place centrale avant la fin de l'année prochaine. Les arbres seront "
        "conservés et de nouveaux bancs seront installés. Les travaux commenceront dès que le marché d'hiver sera "
        "terminé.",
    ],
    "es": [
        "El museo presenta una colección de pinturas del siglo diecinueve en su sala principal. La exposición "
        "incluye paisajes, retratos y escenas de la vida en el campo. La entrada es gratuita los domingos por la "
        "tarde.",
        "Los estudiantes deben entregar el trabajo final antes del viernes por la tarde. Los profesores revisarán "
        "cada proyecto durante la semana siguiente. Quienes necesiten más tiempo pueden pedir una prórroga por "
        "escrito.",
        "La empresa anunció que abrirá una nueva oficina en la ciudad el próximo mes. Se espera que el proyecto "
        "cree más de cien puestos de trabajo. El alcalde celebró la noticia durante una rueda de prensa.",
        "Durante el invierno las carreteras de montaña suelen cerrarse por la nieve. Los conductores deben "
        "consultar el estado de las vías antes de salir de viaje. En los pueblos altos, muchas familias guardan "
        "provisiones para varias semanas.",
    ],
    "it": [
        "Il treno per la capitale parte ogni mattina alle sette dalla stazione centrale. Il viaggio dura poco più "
        "di due ore e attraversa colline e vigneti. Molti pendolari approfittano del tragitto per leggere o "
        "lavorare.",
        "Gli abitanti del paese si riuniscono in piazza per la festa di primavera. Ci sono musica, bancarelle di "
        "dolci e una lunga tavolata all'aperto. La serata si conclude con i fuochi d'artificio sul lago.",
        "Il nuovo regolamento entrerà in vigore all'inizio del prossimo anno scolastico. Le lezioni cominceranno "
        "mezz'ora più tardi e finiranno alle quattro. I genitori potranno esprimere la loro opinione durante una "
        "riunione pubblica.",
        "La biblioteca del quartiere organizza ogni giovedì un incontro di lettura per bambini. I volontari "
        "scelgono storie brevi e divertenti, adatte a tutte le età. Alla fine ogni bambino può portare a casa un "
        "libro in prestito.",
    ],
    "nl": [
        "De gemeente heeft besloten om meer fietspaden aan te leggen in het centrum. Daardoor moeten auto's op "
        "sommige plekken langzamer rijden. De bewoners zijn over het algemeen tevreden met het plan.",
        "In de zomer is het strand druk met toeristen uit het hele land. De strandtenten blijven open tot laat in "
        "de avond. Op warme dagen rijden er extra treinen naar de kust.",
        "Het onderzoek laat zien dat de meeste mensen liever thuis werken. Zij besparen tijd omdat ze niet meer in "
        "de file staan. Toch missen veel werknemers het contact met hun collega's.",
        "Op de markt van zaterdag verkopen boeren kaas, brood en verse groenten. Veel klanten komen al jaren bij "
        "dezelfde kraam. Na afloop drinken ze samen koffie in het café op de hoek.",
    ],
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
    """A near duplicate: a few word substitutions, the footer dropped and a date line added (5-word-shingle
    Jaccard with the original about 0.88-0.96)."""
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


def _foreign_page(rng: random.Random, lang: str) -> str:
    sents = [s for p in FOREIGN[lang] for s in re.split(r"(?<=[.!?])\s+", p)]
    paras = [" ".join(rng.sample(sents, rng.randint(2, 4))) for _ in range(rng.randint(2, 4))]
    return f"{' | '.join(rng.sample(FOREIGN_NAV[lang], 4))}\n\n" + "\n\n".join(paras)


WEB_KINDS = ("clean", "exact_dup", "near_dup", "spam", "foreign", "cross_dup")
WEB_SHARES = {"exact_dup": 0.08, "near_dup": 0.08, "spam": 0.08, "foreign": 0.03, "cross_dup": 0.03}


def gen_synthetic_web(num_documents: int = 3000, seed: int = 13) -> Iterator[Item]:
    """Web-like pages from real sentences, with planted exact/near duplicates, spam, foreign and cross-source copies.

    meta: kind (one of WEB_KINDS), url, and for planted copies `copy_of` (the key of the page copied) or
    `copy_of_docstrings` (the python_docstrings key whose text a cross_dup page repeats verbatim).
    """
    rng = random.Random(seed)
    sents = english_sentences()
    docs = _docstring_documents(50)
    n = num_documents
    counts = {k: int(share * n) for k, share in WEB_SHARES.items()}
    n_clean = max(1, n - sum(counts.values()))
    pages: list[tuple[str, str, dict]] = []  # (kind, text, extra meta); "copy_of" holds an index until shuffled
    clean = [_clean_page(rng, sents) for _ in range(n_clean)]
    pages += [("clean", t, {}) for t in clean]
    for _ in range(counts["exact_dup"]):
        j = rng.randrange(len(clean))
        pages.append(("exact_dup", clean[j], {"copy_of": j}))
    for _ in range(counts["near_dup"]):
        j = rng.randrange(len(clean))
        pages.append(("near_dup", _near_dup(rng, clean[j]), {"copy_of": j}))
    pages += [("spam", _spam_page(rng, sents, i % 7), {}) for i in range(counts["spam"])]
    langs = sorted(FOREIGN)
    pages += [("foreign", _foreign_page(rng, langs[i % len(langs)]), {"language": langs[i % len(langs)]})
              for i in range(counts["foreign"])]
    for _ in range(counts["cross_dup"]):
        key, text, _ = docs[rng.randrange(len(docs))]
        pages.append(("cross_dup", text, {"copy_of_docstrings": key}))
    order = list(range(len(pages)))
    rng.shuffle(order)
    rank_of = {i: rank for rank, i in enumerate(order)}
    for rank, i in enumerate(order):
        kind, text, extra = pages[i]
        meta = {"kind": kind, "url": f"https://site{rank % 97}.example/{rank}", **extra}
        if "copy_of" in extra:
            meta["copy_of"] = f"page/{rank_of[extra['copy_of']]:06d}"  # planted duplicate: the key of its original
        yield f"page/{rank:06d}", text, meta


# ------------------------------------------------------------------------------------------------ spam
_SPAM_EXTRA = ["online", "best", "top", "sale", "save", "fast", "cash", "win", "earn", "rich", "hot", "sexy",
               "weight", "loss", "miracle", "secret", "instant", "approved", "cheapest", "wholesale"]
_NOISE = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789#$%&*+=<>~^@!?/|"


def _spam_doc(rng: random.Random, sents: tuple[str, ...], style: str) -> str:
    w = SPAM_WORDS + _SPAM_EXTRA
    kw = [rng.choice(w) for _ in range(6)]
    if style == "keywords":  # comma-separated keyword lists
        return "\n".join(", ".join(f"{rng.choice(['best', 'cheap', 'top', 'free'])} {rng.choice(w)} "
                                   f"{rng.choice(['online', 'now', 'today', '2024', 'deals'])}"
                                   for _ in range(rng.randint(6, 12))) for _ in range(rng.randint(5, 15)))
    if style == "promo":  # repeated promotional lines with symbols
        lines = [f"!!! {kw[0].upper()} {kw[1].upper()} !!! >>> CLICK HERE <<< only ${rng.randint(1, 99)}.99 ***",
                 f"Get your {kw[2]} {kw[3]} today, {rng.randint(50, 90)}% OFF, offer ends soon!!!",
                 f"Call now: +1-800-{rng.randint(100, 999)}-{rng.randint(1000, 9999)} $$$ {kw[4]} $$$"]
        return "\n".join(rng.choice(lines) for _ in range(rng.randint(12, 40)))
    if style == "link_farm":
        return "\n".join(f"Top {rng.randint(3, 20)} {rng.choice(w)} sites: " + " | ".join(
            f"www.{rng.choice(w)}{rng.choice(w)}{rng.randint(1, 99)}.example" for _ in range(rng.randint(3, 6)))
            for _ in range(rng.randint(10, 30)))
    if style == "seo":  # a real sentence drowned in keywords
        return "\n".join(f"{' '.join(kw)} {rng.choice(sents)} {' '.join(kw)} best {kw[0]} online"
                         for _ in range(rng.randint(4, 10)))
    if style == "seo_article":  # real prose with keyword runs and sales pitches: only a classifier sees through it
        pitches = ["Find the {} and the {} for your {} at the lowest price.", "Compare {} with {} and get {} today.",
                   "The {} you need is here, with {} and {} for everyone.", "Order {} now and get a {} {} for free.",
                   "We have the {} of the year, {} for the {} in your life."]
        return "\n\n".join(f"{rng.choice(sents)} {' '.join(rng.choice(w) for _ in range(rng.randint(3, 6)))} "
                             f"{rng.choice(sents)} " + rng.choice(pitches).format(*(rng.choice(w) for _ in range(3)))
                             for _ in range(rng.randint(3, 7)))
    if style == "noise":  # random character noise
        return "\n".join(" ".join("".join(rng.choice(_NOISE) for _ in range(rng.randint(2, 12)))
                                  for _ in range(rng.randint(5, 15))) for _ in range(rng.randint(5, 25)))
    if style == "bullets":
        return "\n".join(f"★ {rng.choice(w)} {rng.choice(w)} ★ ..." for _ in range(rng.randint(15, 40)))
    if style == "lorem":
        return " ".join(["Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor."]
                        * rng.randint(4, 12) + [f"{kw[0]} {kw[1]} {kw[2]}!!!"])
    if style == "shouting":
        return " ".join(f"{rng.choice(w).upper()}!!!" for _ in range(rng.randint(30, 120)))
    return f"{kw[0]} {kw[1]} {kw[2]}!!! click here"  # "short"


SPAM_STYLES = ("keywords", "promo", "link_farm", "seo", "seo_article", "noise", "bullets", "lorem", "shouting",
               "short")


def gen_synthetic_spam(num_documents: int = 1500, seed: int = 7) -> Iterator[Item]:
    """Low-quality pages in the style of web spam (keyword lists, promotions, link farms, SEO text, character
    noise...): negative examples for the quality classifier. Templates differ from synthetic_web's spam."""
    rng = random.Random(seed)
    sents = english_sentences()
    for i in range(num_documents):
        style = SPAM_STYLES[rng.randrange(len(SPAM_STYLES))]
        yield f"spam/{i:06d}", _spam_doc(rng, sents, style), {"style": style}


GENERATORS: dict[str, Callable[..., Iterator[Item]]] = {
    "python_docstrings": gen_python_docstrings,
    "man_pages": gen_man_pages,
    "synthetic_web": gen_synthetic_web,
    "synthetic_spam": gen_synthetic_spam,
}


def generate(generator: str, **options: Any) -> Iterator[Item]:
    """The items of one builtin generator; an unknown generator or option is a one-line ValueError."""
    if generator not in GENERATORS:
        raise ValueError(f"unknown builtin generator {generator!r} (known: {', '.join(GENERATORS)})")
    try:
        return GENERATORS[generator](**options)
    except TypeError as e:  # an unknown option: one line naming it
        raise ValueError(f"builtin generator {generator!r}: {e}") from None
