"""Static partitions built from recipe file names, and the recipe-derived partition mappings between them."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import dagster as dg

from minigpt_assets.data.mixture import token_key
from minigpt_assets.recipes import Catalog


@dataclass(frozen=True)
class Partitions:
    sources: dg.StaticPartitionsDefinition
    classifiers: dg.StaticPartitionsDefinition | None
    dedup_groups: dg.StaticPartitionsDefinition | None
    tokenizers: dg.StaticPartitionsDefinition | None = None
    token_shards: dg.StaticPartitionsDefinition | None = None
    mixtures: dg.StaticPartitionsDefinition | None = None
    experiments: dg.StaticPartitionsDefinition | None = None
    training: dg.MultiPartitionsDefinition | None = None  # experiment x mixture: keys "experiment|mixture"
    evals: dg.StaticPartitionsDefinition | None = None
    sweeps: dg.StaticPartitionsDefinition | None = None
    mixture_sweeps: dg.StaticPartitionsDefinition | None = None  # mixture_search / mixture_transfer
    scaling_sweeps: dg.StaticPartitionsDefinition | None = None  # scaling_law
    points: dg.StaticPartitionsDefinition | None = None  # every sweep's points, `<sweep>.<label>`

    @classmethod
    def from_catalog(cls, cat: Catalog) -> "Partitions":
        def static(keys) -> dg.StaticPartitionsDefinition | None:
            return dg.StaticPartitionsDefinition(sorted(keys)) if keys else None

        used_groups = {s.dedup.group for s in cat.sources.values() if s.dedup.group is not None}
        mixtures = {m for m in cat.ordinary_mixtures() if cat.mixtures[m].tokenizer in cat.tokenizers}
        experiments = {e for e, r in cat.experiments.items() if r.model in cat.models and e not in cat.generated}
        training = None
        if mixtures and experiments:
            training = dg.MultiPartitionsDefinition({"experiment": dg.StaticPartitionsDefinition(sorted(experiments)),
                                                     "mixture": dg.StaticPartitionsDefinition(sorted(mixtures))})
        return cls(
            sources=dg.StaticPartitionsDefinition(sorted(cat.sources)),
            classifiers=static(cat.classifiers),
            dedup_groups=static(used_groups & set(cat.dedup)),
            tokenizers=static(cat.tokenizers),
            token_shards=static([token_key(t, s) for t, s in cat.token_shard_keys()]),
            mixtures=static(mixtures),
            experiments=static(experiments),
            training=training,
            evals=static(cat.evals),
            sweeps=static(cat.sweeps),
            mixture_sweeps=static(n for n, s in cat.sweeps.items() if s.kind == "mixture"),
            scaling_sweeps=static(n for n, s in cat.sweeps.items() if s.kind == "scaling"),
            points=static(cat.points),
        )


def split_token_key(key: str) -> tuple[str, str]:
    tok, src = key.split(".", 1)
    return tok, src


def _mapping(pairs: list[tuple[str, str]]) -> dg.StaticPartitionMapping:
    out: dict[str, set[str]] = defaultdict(set)
    for up, down in pairs:
        out[up].add(down)
    return dg.StaticPartitionMapping({k: v for k, v in out.items()})


def source_to_classifier(cat: Catalog) -> dg.StaticPartitionMapping:
    """source_documents[src] feeds quality_classifier[clf] when clf names src as a positive or negative."""
    return _mapping([(s, name) for name, c in cat.classifiers.items() for s in (*c.positive, *c.negative)])


def classifier_to_source(cat: Catalog) -> dg.StaticPartitionMapping:
    """quality_classifier[clf] feeds filtered_documents[src] when src's filter profile uses clf."""
    return _mapping([(c, s) for s in cat.sources for c in cat.classifiers_for_source(s)])


def source_to_group(cat: Catalog) -> dg.StaticPartitionMapping:
    """filtered_documents[src] feeds dedup_index[group] of the group src belongs to."""
    return _mapping([(s, r.dedup.group) for s, r in cat.sources.items() if r.dedup.group is not None])


def group_to_source(cat: Catalog) -> dg.StaticPartitionMapping:
    """dedup_index[group] feeds deduplicated_documents[src] of every member src."""
    return _mapping([(r.dedup.group, s) for s, r in cat.sources.items() if r.dedup.group is not None])


def source_to_tokenizer(cat: Catalog) -> dg.StaticPartitionMapping:
    """deduplicated_documents[src] feeds tokenizer[tok] when tok trains on src."""
    return _mapping([(s, t) for t in cat.tokenizers for s in cat.tokenizer_sources(t)])


def source_to_token_shards(cat: Catalog) -> dg.StaticPartitionMapping:
    return _mapping([(s, token_key(t, s)) for t, s in cat.token_shard_keys()])


def tokenizer_to_token_shards(cat: Catalog) -> dg.StaticPartitionMapping:
    return _mapping([(t, token_key(t, s)) for t, s in cat.token_shard_keys()])


def token_shards_to_mixture(cat: Catalog) -> dg.StaticPartitionMapping:
    """token_shards[tok.src] feeds mixture[mix] when mix uses tokenizer tok and names source src."""
    return _mapping([(token_key(cat.mixtures[name].tokenizer, s), name) for name in cat.ordinary_mixtures()
                     if cat.mixtures[name].tokenizer in cat.tokenizers for s in cat.mixtures[name].sources])


def token_shards_to_points(cat: Catalog) -> dg.StaticPartitionMapping:
    """token_shards[tok.src] feeds point_mixture[point] when the point's sweep varies (or its mixture names) src."""
    return _mapping([(token_key(cat.mixtures[k].tokenizer, s), k) for k in cat.points for s in cat.mixtures[k].sources])


def token_shards_to_sweep(cat: Catalog) -> dg.StaticPartitionMapping:
    """token_shards[tok.src] feeds sweep_points[sweep] (the natural prior counts the sources' tokens)."""
    return _mapping([(token_key(cat.mixtures[k].tokenizer, s), p.sweep) for k, p in cat.points.items()
                     for s in cat.mixtures[k].sources])


def sweep_to_points(cat: Catalog) -> dg.StaticPartitionMapping:
    return _mapping([(p.sweep, k) for k, p in cat.points.items()])


def points_to_sweep(cat: Catalog, sweeps: set[str]) -> dg.StaticPartitionMapping:
    """proxy_scores[point] feeds the fit (or transfer) of its sweep, for the sweeps that asset is partitioned by."""
    return _mapping([(k, p.sweep) for k, p in cat.points.items() if p.sweep in sweeps])


def eval_to_points(cat: Catalog) -> dg.StaticPartitionMapping:
    """eval_recipe[eval] feeds proxy_scores[point] when the point's sweep scores with that eval."""
    return _mapping([(cat.sweeps[p.sweep].objective.eval, k) for k, p in cat.points.items()])


def sweep_to_searched(cat: Catalog) -> dg.StaticPartitionMapping:
    """mixture_search[sweep] feeds mixture[<sweep>-searched]."""
    return _mapping([(sweep, name) for name, sweep in cat.searched.items()])


def searched_to_sweep(cat: Catalog, sweeps: set[str]) -> dg.StaticPartitionMapping:
    return _mapping([(name, sweep) for name, sweep in cat.searched.items() if sweep in sweeps])


def same_sweep(sweeps: set[str]) -> dg.StaticPartitionMapping:
    """sweep_recipe[sweep] (every sweep) -> an asset partitioned by some of them."""
    return _mapping([(n, n) for n in sweeps])
