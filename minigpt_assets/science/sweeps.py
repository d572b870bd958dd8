"""Sweep recipes (`recipes/sweeps/<name>.yaml`) and their deterministic expansion into points.

Two kinds:
- `mixture` (RegMix): `points` mixtures sampled around a prior over the named sources, each trained by the proxy
  experiment and scored by the objective; plus one point per hand-written mixture of the transfer set
  (`<sweep>.<mixture>`), so every member of the transfer set is measured at the proxy scale too. The searched
  mixture becomes the ordinary mixture `<sweep>-searched`.
- `scaling`: a ladder of models x token budgets on one mixture; each point is one pretraining run.

A point is `<sweep>.<NNN>` (or `<sweep>.<mixture>`): a static partition known from the recipe alone. The sampled
weights depend on the sources' token counts (the natural prior), so they are drawn by the `sweep_points` asset,
not here; what is static is the point's identity, experiment and token budget. No Dagster, no torch here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from minigpt_assets.recipe_schemas import positive_weights

SWEEP_SEPARATOR = "."  # recipe names never hold a dot (mixtures) so a point key never collides with a recipe
SEARCHED_SUFFIX = "-searched"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SweepBase(_Strict):
    """What every point's mixture shares: tokenizer, window, validation split; `total_tokens` defaults to what
    the largest run of the sweep reads."""

    tokenizer: str
    seq_len: int = Field(256, gt=0)
    validation_tokens: int = Field(20_000, ge=0)
    total_tokens: int | None = Field(None, gt=0)
    max_epochs: float = Field(50.0, gt=0)
    seed: int = 0


class Sampler(_Strict):
    """RegMix's sampler: Dirichlet(prior x s), prior = natural token shares ** temperature (or the weights the
    recipe gives), s from `concentration_steps` log-spaced values in `concentration`; a sample with a weight
    above `max_ratio_to_prior` x its prior is rejected; weights below `min_weight` become 0."""

    prior: Literal["natural", "uniform"] | dict[str, float] = "natural"
    temperature: float = Field(0.5, gt=0)
    concentration: tuple[float, float] = (0.1, 5.0)
    concentration_steps: int = Field(15, ge=1)
    max_ratio_to_prior: float = Field(15.0, gt=1)
    min_weight: float = Field(2e-4, ge=0, lt=0.5)

    @field_validator("concentration")
    @classmethod
    def _range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1]:
            raise ValueError(f"expected 0 < low <= high (got {list(v)})")
        return v


class Objective(_Strict):
    """What a point scores: an eval recipe and the weighted mean of some of its tasks (for a bits-per-byte eval
    the tasks are source names; default: every source of the sweep, equally weighted)."""

    eval: str = "held_out_bpb"
    tasks: dict[str, float] = Field(default_factory=dict)
    metric: str | None = None  # default: the eval kind's metric (bits_per_byte, acc, ...)

    _positive = field_validator("tasks")(classmethod(lambda cls, v: positive_weights(v)))


class Search(_Strict):
    """The regression (`auto` picks by k-fold cross-validated Spearman) and the search over sampled mixtures."""

    model: Literal["auto", "lightgbm", "linear", "mixing_law"] = "auto"
    folds: int = Field(5, ge=2)
    candidates: int = Field(100_000, ge=100)
    top_k: int = Field(100, ge=1)
    min_points: int | None = Field(None, ge=3)  # default: sources + 2
    seed: int = 0


class Transfer(_Strict):
    """The larger experiment and which mixtures run there: the searched one always, hand-written mixtures (`all`:
    every mixture of the sweep's tokenizer over the sweep's sources), and the top/bottom/random k points."""

    experiment: str
    mixtures: Literal["all"] | list[str] = "all"
    top: int = Field(2, ge=0)
    bottom: int = Field(2, ge=0)
    random: int = Field(2, ge=0)
    bootstrap: int = Field(2000, ge=100)
    seed: int = 0


class MixtureSweep(_Strict):
    kind: Literal["mixture"]
    description: str = ""
    base: SweepBase
    sources: list[str] = Field(min_length=2)
    points: int = Field(gt=0)
    seed: int = 0
    sampler: Sampler = Sampler()
    proxy: str
    objective: Objective = Objective()
    search: Search = Search()
    transfer: Transfer | None = None

    @model_validator(mode="after")
    def _check(self) -> "MixtureSweep":
        dup = sorted({s for s in self.sources if self.sources.count(s) > 1})
        if dup:
            raise ValueError(f"sources: repeated {', '.join(dup)}")
        if self.points < len(self.sources) + 2:
            raise ValueError(f"points: {self.points} is fewer than sources + 2 ({len(self.sources) + 2}): "
                             "the regression needs more points than weights")
        if isinstance(self.sampler.prior, dict) and set(self.sampler.prior) != set(self.sources):
            raise ValueError("sampler.prior: must give a weight for exactly the sweep's sources")
        return self


class LadderSize(_Strict):
    """A model of the ladder made from `base_model` with these fields changed (hidden_size, num_layers, ...)."""

    hidden_size: int = Field(gt=0)
    num_layers: int = Field(gt=0)
    num_heads: int | None = Field(None, gt=0)
    num_kv_heads: int | None = Field(None, gt=0)
    intermediate_size: int | None = Field(None, gt=0)


class Ladder(_Strict):
    """Model sizes (model recipes, or `sizes` applied to `base_model`) x budgets in tokens per parameter. N is the
    non-embedding parameter count (Kaplan et al.), unless `parameters: total`."""

    models: list[str] = Field(default_factory=list)
    base_model: str | None = None
    sizes: list[LadderSize] = Field(default_factory=list)
    tokens_per_parameter: list[float] = Field(min_length=1)
    parameters: Literal["non_embedding", "total"] = "non_embedding"
    held_out: Literal["largest", "none"] | list[str] = "largest"  # or point labels `<model>@<tpp>`

    @model_validator(mode="after")
    def _check(self) -> "Ladder":
        if self.sizes and not self.base_model:
            raise ValueError("sizes: needs base_model (the recipe the sizes change)")
        if len(self.models) + len(self.sizes) < 2:
            raise ValueError("a ladder needs at least 2 model sizes (models or sizes)")
        if any(t <= 0 for t in self.tokens_per_parameter):
            raise ValueError("tokens_per_parameter: every budget must be > 0")
        return self


class Target(_Strict):
    """The run to predict: a model recipe and its training tokens (e.g. llama-3.1-8b on 2e12)."""

    model: str
    tokens: float = Field(gt=0)


class ScalingSweep(_Strict):
    kind: Literal["scaling"]
    description: str = ""
    mixture: str
    ladder: Ladder
    stage: dict = Field(default_factory=dict)  # a pretrain stage (batch_size, optim, ...); max_steps from the budget
    compute: str = "local"
    max_epochs: float = Field(100.0, gt=0)  # how often a run may repeat a bounded source (the mixture's own limit
    #                                        is for its own budget; the ladder's largest runs read far more)
    objective: Objective = Objective()
    target: Target | None = None
    bootstrap: int = Field(200, ge=0)
    seed: int = 0


SweepRecipe = Union[MixtureSweep, ScalingSweep]


class SweepFile(BaseModel):
    sweep: SweepRecipe = Field(discriminator="kind")


@dataclass(frozen=True)
class Point:
    """One generated run of a sweep: a mixture (`key` is its name) trained by `experiment`.

    `index` is the sample number of a sampled point (None for a hand-written mixture's copy or a ladder run);
    `label` names it for people (`017`, `web_heavy`, `proxy-10m@20`)."""

    key: str
    sweep: str
    label: str
    experiment: str
    tokens: int  # training tokens of the point's run
    index: int | None = None
    mixture: str | None = None  # the hand-written mixture a copy reproduces, or a ladder's mixture
    model: str | None = None
    params: int | None = None
    held_out: bool = False
    extra: dict = field(default_factory=dict, compare=False)


def point_key(sweep: str, label: str) -> str:
    return f"{sweep}{SWEEP_SEPARATOR}{label}"


def searched_name(sweep: str) -> str:
    return f"{sweep}{SEARCHED_SUFFIX}"


def stage_tokens(stage, seq_len: int) -> int:
    return int(stage.max_steps) * int(stage.batch_size) * int(seq_len)


def non_embedding_params(cfg) -> int:
    """Parameters outside the token embedding and output head (Kaplan et al.'s N)."""
    emb = cfg.vocab_size * cfg.hidden_size * (1 if cfg.tie_embeddings else 2)
    return int(cfg.num_params() - emb)


def ladder_params(cfg, ladder: Ladder) -> int:
    return non_embedding_params(cfg) if ladder.parameters == "non_embedding" else int(cfg.num_params())


def tpp_label(model: str, tpp: float) -> str:
    return f"{model}@{tpp:g}"


def steps_for(tokens: float, batch_size: int, seq_len: int) -> int:
    return max(1, math.ceil(tokens / (batch_size * seq_len)))


@dataclass
class Expansion:
    """What a sweep adds to the catalog: its points, their mixtures, and the experiments and models it generates."""

    points: list[Point] = field(default_factory=list)
    mixtures: dict = field(default_factory=dict)  # name -> MixtureRecipe (points, and the searched mixture)
    experiments: dict = field(default_factory=dict)
    models: dict = field(default_factory=dict)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (field, message)


def transfer_mixtures(cat, sweep: MixtureSweep) -> list[str]:
    """The hand-written mixtures of the transfer set: those named, or every mixture of the sweep's tokenizer whose
    sources are all varied by the sweep."""
    if sweep.transfer is None:
        return []
    if sweep.transfer.mixtures != "all":
        return list(sweep.transfer.mixtures)
    return sorted(n for n, m in cat.mixtures.items() if SWEEP_SEPARATOR not in n and not n.endswith(SEARCHED_SUFFIX)
                  and m.tokenizer == sweep.base.tokenizer and set(m.sources) <= set(sweep.sources))


def _pretrain_stage(cat, exp_name: str, where: str, ex: Expansion):
    exp = cat.experiments.get(exp_name)
    if exp is None:
        ex.problems.append((where, f"unknown experiment {exp_name!r} (known: {', '.join(sorted(cat.experiments)) or 'none'})"))
        return None
    if exp.stages[0].kind != "pretrain" or len(exp.stages) != 1:
        ex.problems.append((where, f"experiment {exp_name!r} must have exactly one stage, a pretrain stage"))
        return None
    return exp.stages[0]


def _check_objective(cat, obj: Objective, sources: list[str], ex: Expansion) -> None:
    if obj.eval not in cat.evals:
        ex.problems.append(("objective.eval", f"unknown eval {obj.eval!r} (known: {', '.join(sorted(cat.evals)) or 'none'})"))
        return
    ev = cat.evals[obj.eval]
    if getattr(ev, "kind", None) == "bits_per_byte":
        bad = [t for t in obj.tasks if t not in sources]
        if bad:
            ex.problems.append(("objective.tasks", f"{', '.join(bad)}: not a source of the sweep "
                                                   f"({', '.join(sources)})"))


def expand_mixture_sweep(cat, name: str, sweep: MixtureSweep) -> Expansion:
    from minigpt_assets.recipes import MixtureRecipe

    ex = Expansion()
    for s in sweep.sources:
        if s not in cat.sources:
            ex.problems.append(("sources", f"unknown source name {s!r}"))
    if sweep.base.tokenizer not in cat.tokenizers:
        ex.problems.append(("base.tokenizer", f"unknown tokenizer {sweep.base.tokenizer!r}"))
    proxy = _pretrain_stage(cat, sweep.proxy, "proxy", ex)
    target = _pretrain_stage(cat, sweep.transfer.experiment, "transfer.experiment", ex) if sweep.transfer else None
    _check_objective(cat, sweep.objective, sweep.sources, ex)
    hand = transfer_mixtures(cat, sweep)
    for m in hand:
        rec = cat.mixtures.get(m)
        if rec is None:
            ex.problems.append(("transfer.mixtures", f"unknown mixture {m!r}"))
        elif rec.tokenizer != sweep.base.tokenizer or not set(rec.sources) <= set(sweep.sources):
            ex.problems.append(("transfer.mixtures", f"mixture {m!r} must use tokenizer {sweep.base.tokenizer!r} and "
                                                     f"only the sweep's sources"))
    if sweep.transfer and sweep.transfer.top + sweep.transfer.bottom + sweep.transfer.random > sweep.points:
        ex.problems.append(("transfer", f"top + bottom + random exceeds the {sweep.points} points"))
    if ex.problems or proxy is None:
        return ex
    proxy_tokens = stage_tokens(proxy, sweep.base.seq_len)
    target_tokens = stage_tokens(target, sweep.base.seq_len) if target is not None else 0
    total = sweep.base.total_tokens or max(proxy_tokens, target_tokens)
    if total < max(proxy_tokens, target_tokens):
        ex.problems.append(("base.total_tokens", f"{total} is fewer than the {max(proxy_tokens, target_tokens)} tokens "
                                                 "the proxy or transfer run reads (the plan would repeat)"))
        return ex
    placeholder = {s: 1.0 for s in sweep.sources}  # sweep_points draws the real weights (they need token counts)

    def recipe(sources: dict[str, float]) -> MixtureRecipe:
        b = sweep.base
        return MixtureRecipe(sources=sources, tokenizer=b.tokenizer, total_tokens=total, seq_len=b.seq_len,
                             validation_tokens=b.validation_tokens, seed=b.seed, max_epochs=b.max_epochs)

    width = max(3, len(str(sweep.points - 1)))
    for i in range(sweep.points):
        label = f"{i:0{width}d}"
        key = point_key(name, label)
        ex.points.append(Point(key, name, label, sweep.proxy, proxy_tokens, index=i))
        ex.mixtures[key] = recipe(placeholder)
    for m in hand:
        key = point_key(name, m)
        ex.points.append(Point(key, name, m, sweep.proxy, proxy_tokens, mixture=m))
        ex.mixtures[key] = recipe(dict(cat.mixtures[m].sources))
    ex.mixtures[searched_name(name)] = recipe(placeholder)  # mixture[<sweep>-searched] takes mixture_search's weights
    return ex


def expand_scaling_sweep(cat, name: str, sweep: ScalingSweep) -> Expansion:
    from minigpt_assets.models.registry import make_config
    from minigpt_assets.training.config import ExperimentRecipe, StageConfig

    ex = Expansion()
    mix = cat.mixtures.get(sweep.mixture)
    if mix is None:
        ex.problems.append(("mixture", f"unknown mixture {sweep.mixture!r} (known: {', '.join(sorted(cat.mixtures))})"))
    lad = sweep.ladder
    for m in lad.models + ([lad.base_model] if lad.base_model else []):
        if m not in cat.models:
            ex.problems.append(("ladder", f"unknown model recipe {m!r}"))
    if sweep.target is not None and sweep.target.model not in cat.models:
        ex.problems.append(("target.model", f"unknown model recipe {sweep.target.model!r}"))
    _check_objective(cat, sweep.objective, list(mix.sources) if mix else [], ex)
    try:
        StageConfig.model_validate({**sweep.stage, "kind": "pretrain"})
    except Exception as e:  # pydantic's message, one line
        ex.problems.append(("stage", str(e).splitlines()[-1].strip()))
    if ex.problems:
        return ex
    models: list[tuple[str, object]] = [(m, cat.models[m]) for m in lad.models]
    for size in lad.sizes:
        base = cat.models[lad.base_model].model_dump(mode="json")
        cfg = make_config({**base, **size.model_dump(exclude_none=True), "description": f"{name} ladder"})
        mname = point_key(name, f"d{size.hidden_size}x{size.num_layers}")
        ex.models[mname] = cfg
        models.append((mname, cfg))
    sized = sorted(((ladder_params(cfg, lad), m, cfg) for m, cfg in models), key=lambda t: t[0])
    if len({n for n, _, _ in sized}) < 2:
        ex.problems.append(("ladder", "needs at least 2 distinct model sizes"))
        return ex
    largest = sized[-1][0]
    short = {m: m.removeprefix(name + SWEEP_SEPARATOR) for _, m, _ in sized}
    labels = {tpp_label(short[m], t) for _, m, _ in sized for t in lad.tokens_per_parameter}
    if isinstance(lad.held_out, list):
        bad = [h for h in lad.held_out if h not in labels]
        if bad:
            ex.problems.append(("ladder.held_out", f"unknown runs {', '.join(bad)} (runs are <model>@<tokens per "
                                                   "parameter>)"))
            return ex
    for n, mname, cfg in sized:
        if mix.seq_len > cfg.max_seq_len:
            ex.problems.append(("ladder", f"model {mname!r}: max_seq_len {cfg.max_seq_len} < the mixture's seq_len"))
            continue
        for tpp in sorted(lad.tokens_per_parameter):
            stage = StageConfig.model_validate({**sweep.stage, "kind": "pretrain", "max_steps": steps_for(
                tpp * n, int(sweep.stage.get("batch_size", 16)), mix.seq_len)})
            tokens = stage_tokens(stage, mix.seq_len)
            label = tpp_label(short[mname], tpp)
            key = point_key(name, f"{short[mname]}-t{tpp:g}")  # stable: adding a size or budget keeps the others
            held = (lad.held_out == "largest" and n == largest) or (isinstance(lad.held_out, list)
                                                                   and label in lad.held_out)
            ex.experiments[key] = ExperimentRecipe(model=mname, stages=[stage], compute=sweep.compute,
                                                   description=f"{name}: {label}")
            ex.mixtures[key] = mix.model_copy(update={"total_tokens": tokens, "max_epochs": sweep.max_epochs})
            ex.points.append(Point(key, name, label, key, tokens, mixture=sweep.mixture, model=mname, params=n,
                                   held_out=held, extra={"tokens_per_parameter": tpp}))
    return ex


def expand_sweep(cat, name: str, sweep: SweepRecipe) -> Expansion:
    if isinstance(sweep, MixtureSweep):
        return expand_mixture_sweep(cat, name, sweep)
    return expand_scaling_sweep(cat, name, sweep)
