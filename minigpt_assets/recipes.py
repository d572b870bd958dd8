"""Recipe schemas: load, validate, cross-check, normalize and hash every YAML recipe under the recipes dir.

Recipes are the only knobs of the project. Every problem is reported as one line naming the file, the field
and what was expected (`RecipeProblem`); `Catalog.load` collects all of them instead of stopping at the first.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sysconfig
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from minigpt_assets.recipe_schemas import (  # noqa: F401  (re-exported: the schemas are part of this module's API)
    CHATML_TEMPLATE, MODEL_SLUG, RECIPE_KINDS, SLUG, SOURCE_KINDS, SWEEP_KINDS, ClassifierRecipe, DedupRecipe,
    FilterProfile, MixtureRecipe, Model, SourceRecipe, TokenizerRecipe, _SourceFile, positive_weights)

# --------------------------------------------------------------------------------------------- loading
class RecipeProblem(Model):
    file: str
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}: {self.field}" if self.field else self.file
        return f"{where}: {self.message}"


class RecipeError(Exception):
    """Raised with every problem found; str() is one line per problem (no traceback material)."""

    def __init__(self, problems: list[RecipeProblem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


_MODELS: dict[str, Any] = {
    "filters": FilterProfile,
    "tokenizers": TokenizerRecipe,
    "classifiers": ClassifierRecipe,
    "dedup": DedupRecipe,
    "mixtures": MixtureRecipe,
}


def expand_location(location: str) -> str:
    """Expand `${stdlib}`, `${VAR}` and `~` in a recipe location (URLs pass through unchanged)."""
    mapping = dict(os.environ)
    mapping["stdlib"] = sysconfig.get_paths()["stdlib"]
    out = re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda m: mapping.get(m.group(1), m.group(0)), location)
    return os.path.expanduser(out)


def is_url(location: str) -> bool:
    return bool(re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", location))


def _field_path(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc]
    # drop the wrapper (source/sweep) and the discriminated-union tag pydantic inserts (e.g. 'jsonl') after it
    if parts and parts[0] in ("source", "sweep"):
        parts = parts[1:]
        if parts and parts[0] in SOURCE_KINDS + SWEEP_KINDS:
            parts = parts[1:]
    return ".".join(parts)


def _format_validation(file: str, err: ValidationError) -> list[RecipeProblem]:
    problems = []
    for e in err.errors():
        field = _field_path(tuple(e["loc"]))
        msg = e["msg"]
        if e["type"] == "missing":
            msg = "required field is missing"
        elif e["type"] == "extra_forbidden":
            msg = "unknown field"
        elif e["type"] == "union_tag_invalid":
            field = "kind"
            msg = f"unknown kind {e['input'].get('kind')!r} (expected one of {', '.join(SOURCE_KINDS)})"
        elif e["type"] == "union_tag_not_found":
            field = "kind"
            msg = f"required field is missing (expected one of {', '.join(SOURCE_KINDS)})"
        else:
            msg = msg.removeprefix("Value error, ")
            if isinstance(e.get("input"), (int, float, str, bool)) and e["type"] != "value_error":
                msg = f"{msg} (got {e['input']!r})"
        problems.append(RecipeProblem(file=file, field=field, message=msg.replace("\n", " ")))
    return problems


def _read_yaml(path: Path, rel: str) -> tuple[dict | None, list[RecipeProblem]]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        return None, [RecipeProblem(file=rel, field=where, message=f"invalid YAML: {problem}")]
    except (OSError, UnicodeDecodeError) as e:
        return None, [RecipeProblem(file=rel, field="", message=f"cannot read: {e}")]
    if not isinstance(data, dict):
        return None, [RecipeProblem(file=rel, field="", message="expected a YAML mapping at the top level")]
    return data, []


def canonical_hash(obj: Any) -> str:
    """sha256 of the canonical JSON form of a pydantic model or plain data."""
    if isinstance(obj, BaseModel):
        obj = obj.model_dump(mode="json")
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return hashlib.sha256(blob).hexdigest()


class Catalog:
    """Every recipe under one recipes dir, validated and cross-checked."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.sources: dict[str, Any] = {}
        self.filters: dict[str, FilterProfile] = {}
        self.classifiers: dict[str, ClassifierRecipe] = {}
        self.dedup: dict[str, DedupRecipe] = {}
        self.tokenizers: dict[str, TokenizerRecipe] = {}
        self.mixtures: dict[str, MixtureRecipe] = {}
        self.models: dict[str, Any] = {}  # name -> models.config.ModelConfig
        self.experiments: dict[str, Any] = {}  # name -> training.config.ExperimentRecipe
        self.evals: dict[str, Any] = {}  # name -> evaluation.config.EvalRecipe
        self.sweeps: dict[str, Any] = {}  # name -> science.sweeps.MixtureSweep | ScalingSweep
        self.points: dict[str, Any] = {}  # point key -> science.sweeps.Point (its mixture is in self.mixtures)
        self.searched: dict[str, str] = {}  # a mixture sweep's searched mixture -> its sweep
        self.generated: set[str] = set()  # mixtures, experiments and models a sweep made (no file of their own)
        self.problems: list[RecipeProblem] = []

    # -- loading
    @classmethod
    def load(cls, root: str | Path, check_files: bool = True) -> "Catalog":
        cat = cls(Path(root))
        if not cat.root.is_dir():
            cat.problems.append(RecipeProblem(file=str(root), field="", message="recipes directory does not exist"))
            return cat
        for kind in RECIPE_KINDS:
            for path in sorted((cat.root / kind).glob("*.y*ml")):
                cat._load_file(kind, path)
        cat._cross_check(check_files)
        return cat

    @classmethod
    def load_or_raise(cls, root: str | Path, check_files: bool = True) -> "Catalog":
        cat = cls.load(root, check_files)
        if cat.problems:
            raise RecipeError(cat.problems)
        return cat

    def _rel(self, path: Path) -> str:
        """The path as the user would type it: relative to the working directory when inside it."""
        rel = os.path.relpath(path)
        return rel if not rel.startswith("..") else str(path)

    def _load_file(self, kind: str, path: Path) -> None:
        rel = self._rel(path)
        name = path.stem
        dotted = kind in ("models", "experiments")
        if not (MODEL_SLUG if dotted else SLUG).match(name):
            allowed = "[a-z0-9._-]" if dotted else "[a-z0-9_-]"
            self.problems.append(RecipeProblem(file=rel, field="", message=f"file name must be a slug of {allowed}"))
            return
        data, problems = _read_yaml(path, rel)
        if problems:
            self.problems.extend(problems)
            return
        try:
            if kind == "sources":
                recipe = _SourceFile.model_validate({"source": data}).source
            elif kind == "models":
                from minigpt_assets.models.registry import make_config

                try:
                    recipe = make_config(data)
                except ValueError as e:
                    if isinstance(e, ValidationError):
                        raise
                    field = "family" if "family" in str(e) else ""
                    self.problems.append(RecipeProblem(file=rel, field=field, message=str(e)))
                    return
            elif kind == "experiments":
                from minigpt_assets.training.config import ExperimentRecipe

                recipe = ExperimentRecipe.model_validate(data)
            elif kind == "evals":
                from minigpt_assets.evaluation.config import EvalFile

                recipe = EvalFile.model_validate({"eval": data}).eval
            elif kind == "sweeps":
                from minigpt_assets.science.sweeps import SweepFile

                if data.get("kind") not in SWEEP_KINDS:
                    self.problems.append(RecipeProblem(file=rel, field="kind", message=(
                        f"unknown kind {data.get('kind')!r} (expected one of {', '.join(SWEEP_KINDS)})")))
                    return
                recipe = SweepFile.model_validate({"sweep": data}).sweep
            else:
                recipe = _MODELS[kind].model_validate(data)
        except ValidationError as e:
            self.problems.extend(_format_validation(rel, e))
            return
        getattr(self, kind)[name] = recipe

    def _cross_check(self, check_files: bool) -> None:
        src_dir = "sources"
        if "default" not in self.dedup and any(s.dedup.group == "default" for s in self.sources.values()):
            self.dedup["default"] = DedupRecipe()  # implicit group with default settings
        for name, src in self.sources.items():
            rel = f"{self._rel(self.root / src_dir / name)}.yaml"
            if isinstance(src.filters, str) and src.filters not in self.filters:
                self._problem(rel, "filters", f"unknown filter profile {src.filters!r} "
                                              f"(known: {', '.join(sorted(self.filters)) or 'none'})")
            if src.dedup.group is not None and src.dedup.group not in self.dedup:
                self._problem(rel, "dedup.group", f"unknown dedup group {src.dedup.group!r} "
                                                  f"(known: {', '.join(sorted(self.dedup)) or 'none'})")
            profile = self.filter_profile(name)
            if profile is not None and profile.quality is not None and profile.quality.classifier not in self.classifiers:
                self._problem(rel, "filters.quality.classifier",
                              f"unknown classifier {profile.quality.classifier!r}")
            if check_files and not src.optional:
                missing = missing_location(src)
                if missing:
                    self._problem(rel, "location", missing)
        for name, clf in self.classifiers.items():
            rel = f"{self._rel(self.root / 'classifiers' / name)}.yaml"
            for side in ("positive", "negative"):
                for s in getattr(clf, side):
                    if s not in self.sources:
                        self._problem(rel, side, f"unknown source name {s!r}")
        for fname, prof in self.filters.items():
            if prof.quality is not None and prof.quality.classifier not in self.classifiers:
                self._problem(f"{self._rel(self.root / 'filters' / fname)}.yaml", "quality.classifier",
                              f"unknown classifier {prof.quality.classifier!r}")
        for name, tok in self.tokenizers.items():
            rel = f"{self._rel(self.root / 'tokenizers' / name)}.yaml"
            for s in tok.sources:
                if s not in self.sources:
                    self._problem(rel, "sources", f"unknown source name {s!r}")
            if tok.kind == "pretrained" and check_files and not Path(expand_location(tok.path)).is_dir():
                self._problem(rel, "path", f"directory not found: {expand_location(tok.path)}")
        for name, mix in self.mixtures.items():
            rel = f"{self._rel(self.root / 'mixtures' / name)}.yaml"
            for s in mix.sources:
                if s not in self.sources:
                    self._problem(rel, f"sources.{s}", "unknown source name")
            if mix.tokenizer not in self.tokenizers:
                self._problem(rel, "tokenizer", f"unknown tokenizer {mix.tokenizer!r} "
                                                f"(known: {', '.join(sorted(self.tokenizers)) or 'none'})")

        for name, exp in self.experiments.items():
            rel = f"{self._rel(self.root / 'experiments' / name)}.yaml"
            if exp.model not in self.models:
                self._problem(rel, "model", f"unknown model recipe {exp.model!r} "
                                            f"(known: {', '.join(sorted(self.models)) or 'none'})")
            for i, st in enumerate(exp.stages):  # stages that name another experiment's stage
                named = None
                if st.kind == "ppo" and st.ppo.reward_from is not None and st.ppo.reward_from.experiment:
                    named = ("ppo.reward_from", st.ppo.reward_from.experiment, st.ppo.reward_from.stage, "reward")
                elif st.kind == "distill" and st.distill.teacher_experiment:
                    named = ("distill.teacher_experiment", st.distill.teacher_experiment, st.distill.teacher_stage, None)
                if named is None:
                    continue
                field, other, stage, kind = named
                target = self.experiments.get(other)
                if target is None:
                    self._problem(rel, f"stages.{i}.{field}", f"unknown experiment {other!r}")
                elif kind and not any(s.kind == kind and stage in (None, s.stage_name) for s in target.stages):
                    self._problem(rel, f"stages.{i}.{field}", f"experiment {other!r} has no {kind} stage"
                                                              + (f" named {stage!r}" if stage else ""))

        self._expand_sweeps()

        for name, ev in self.evals.items():
            rel = f"{self._rel(self.root / 'evals' / name)}.yaml"
            for s in getattr(ev, "sources", None) or []:
                if s not in self.sources:
                    self._problem(rel, "sources", f"unknown source name {s!r}")
            if check_files and not getattr(ev, "optional", False):
                from minigpt_assets.evaluation.config import data_files

                for field, f in zip(("path", "fewshot_path"), data_files(ev)):
                    if not f.is_file():
                        self._problem(rel, field, f"file not found: {f} (download it once, or set optional: true)")

    def _expand_sweeps(self) -> None:
        """Add each valid sweep's points (mixtures, experiments, models) to the catalog; a point name never
        collides with a recipe file (it holds a dot), the searched mixture `<sweep>-searched` may."""
        from minigpt_assets.science.sweeps import expand_sweep, searched_name

        for name, sweep in sorted(self.sweeps.items()):
            rel = f"{self._rel(self.root / 'sweeps' / name)}.yaml"
            if "." in name:
                self._problem(rel, "", "file name must be a slug of [a-z0-9_-]")
                continue
            ex = expand_sweep(self, name, sweep)
            clash = sorted(set(ex.mixtures) & set(self.mixtures))
            if clash:
                ex.problems.append(("", f"mixture {clash[0]!r} already exists: rename the sweep or the mixture"))
            for field, message in ex.problems:
                self._problem(rel, field, message)
            if ex.problems:
                continue
            self.points.update({p.key: p for p in ex.points})
            if sweep.kind == "mixture":
                self.searched[searched_name(name)] = name
            for kind in ("mixtures", "experiments", "models"):
                getattr(self, kind).update(getattr(ex, kind))
                self.generated.update(getattr(ex, kind))

    def _problem(self, file: str, field: str, message: str) -> None:
        p = RecipeProblem(file=file, field=field, message=message)
        if p not in self.problems:
            self.problems.append(p)

    # -- resolved views
    def filter_profile(self, source: str) -> FilterProfile | None:
        f = self.sources[source].filters
        if isinstance(f, str):
            return self.filters.get(f)
        return f

    def resolved_source(self, source: str) -> dict[str, Any]:
        """The source recipe with its named filter profile inlined: what `source_recipe` hashes."""
        d = self.sources[source].model_dump(mode="json")
        prof = self.filter_profile(source)
        d["filters"] = prof.model_dump(mode="json") if prof is not None else None
        return d

    def source_hash(self, source: str) -> str:
        return canonical_hash(self.resolved_source(source))

    def classifier_hash(self, name: str) -> str:
        return canonical_hash(self.classifiers[name])

    def dedup_hash(self, group: str) -> str:
        return canonical_hash(self.dedup[group])

    def model_hash(self, name: str) -> str:
        return canonical_hash(self.models[name].model_dump(mode="json", exclude={"description"}))

    def experiment_hash(self, name: str) -> str:
        """The experiment with its model recipe inlined (and the digests of the jsonl files its stages read):
        editing any of them changes the experiment's version."""
        exp = self.experiments[name]
        return canonical_hash({"experiment": exp.model_dump(mode="json", exclude={"description"}),
                               "model": self.models[exp.model].model_dump(mode="json", exclude={"description"}),
                               **({"data": d} if (d := exp.data_digests()) else {})})

    def eval_hash(self, name: str) -> str:
        """The eval recipe and the digest of its local files."""
        from minigpt_assets.evaluation.config import data_digest

        ev = self.evals[name]
        return canonical_hash({"eval": ev.model_dump(mode="json", exclude={"description"}), "data": data_digest(ev)})

    def eval_sources(self, name: str) -> list[str]:
        """The sources a held-out eval reads: those it names, else every source some mixture uses."""
        named = getattr(self.evals[name], "sources", None)
        return list(named) if named else sorted({s for m in self.mixtures.values() for s in m.sources
                                                  if s in self.sources})

    def active_evals(self) -> list[str]:
        """Eval recipes whose data is present (an optional one with a missing file is skipped)."""
        from minigpt_assets.evaluation.config import data_files

        return sorted(n for n, ev in self.evals.items()
                      if not getattr(ev, "optional", False) or all(f.is_file() for f in data_files(ev)))

    def mixture_hash(self, name: str) -> str:
        return canonical_hash(self.mixtures[name])

    def sweep_hash(self, name: str) -> str:
        """The sweep recipe with the experiments it names inlined."""
        sweep = self.sweeps[name]
        exps = {e: self.experiment_hash(e) for e in (getattr(sweep, "proxy", None),
                getattr(getattr(sweep, "transfer", None), "experiment", None)) if e in self.experiments}
        lad, target = getattr(sweep, "ladder", None), getattr(sweep, "target", None)
        models = [*(lad.models if lad else []), *([lad.base_model] if lad and lad.base_model else []),
                  *([target.model] if target else [])]
        return canonical_hash({"sweep": sweep.model_dump(mode="json", exclude={"description"}), "experiments": exps,
                               "models": {m: self.model_hash(m) for m in models if m in self.models}})

    def point_hash(self, key: str) -> str:
        """A point's identity: its sweep's settings that shape it, its mixture recipe and its experiment."""
        from dataclasses import asdict

        p = self.points[key]
        sweep = self.sweeps[p.sweep]
        # what shapes the run: not the point count, the objective (proxy_scores re-scores), fits, targets, held_out
        shaping = {"mixture": {"base", "sources", "seed", "sampler", "proxy"} if p.index is not None else {"base", "proxy"},
                   "scaling": {"mixture", "stage", "compute", "max_epochs"}}[sweep.kind]
        ident = {k: v for k, v in asdict(p).items() if k not in ("held_out", "extra")}
        return canonical_hash({"point": ident, "sweep": sweep.model_dump(mode="json", include=shaping),
                               "mixture": self.mixture_hash(key), "experiment": self.experiment_hash(p.experiment)})

    def ordinary_mixtures(self) -> list[str]:
        """Mixture partitions: the recipe files and each sweep's searched mixture (not the points)."""
        return sorted(m for m in self.mixtures if m not in self.points)

    def sweep_point_keys(self, sweep: str) -> list[str]:
        return [k for k, p in self.points.items() if p.sweep == sweep]

    def tokenizer_hash(self, name: str) -> str:
        return canonical_hash(self.tokenizers[name])

    def tokenizer_sources(self, name: str) -> list[str]:
        """The sources a tokenizer trains on: those it names, else every source some mixture of it uses."""
        tok = self.tokenizers[name]
        if tok.sources:
            return list(tok.sources)
        return sorted({s for m in self.ordinary_mixtures() if self.mixtures[m].tokenizer == name
                       for s in self.mixtures[m].sources})

    def token_shard_keys(self) -> list[tuple[str, str]]:
        """(tokenizer, source) pairs some mixture needs, as token_shards partitions `<tokenizer>.<source>`."""
        return sorted({(m.tokenizer, s) for m in self.mixtures.values() for s in m.sources
                       if m.tokenizer in self.tokenizers and s in self.sources})

    def classifiers_for_source(self, source: str) -> list[str]:
        prof = self.filter_profile(source)
        return [prof.quality.classifier] if prof is not None and prof.quality is not None else []

    def group_members(self, group: str) -> list[str]:
        return sorted(n for n, s in self.sources.items() if s.dedup.group == group)


def missing_location(src: Any) -> str | None:
    """A one-line description of why a source's location cannot be found, or None if it can (URLs not probed)."""
    loc = getattr(src, "location", None)
    if loc is None or src.kind == "hf_dataset" and not any(c in loc for c in "/\\.~$"):
        return None  # builtin and duckdb sources, and hf hub names (checked at read time, offline cache)
    if is_url(loc) and not loc.startswith("file://"):
        return None
    path = expand_location(loc.removeprefix("file://"))
    if any(ch in path for ch in "*?["):
        import glob as _glob

        return None if _glob.glob(path, recursive=True) else f"no file matches {loc!r}"
    return None if Path(path).exists() else f"file or directory not found: {path}"
