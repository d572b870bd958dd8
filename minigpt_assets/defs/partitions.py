"""Static partitions built from recipe file names, and the recipe-derived partition mappings between them."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import dagster as dg

from minigpt_assets.recipes import Catalog


@dataclass(frozen=True)
class Partitions:
    sources: dg.StaticPartitionsDefinition
    classifiers: dg.StaticPartitionsDefinition | None
    dedup_groups: dg.StaticPartitionsDefinition | None

    @classmethod
    def from_catalog(cls, cat: Catalog) -> "Partitions":
        def static(keys) -> dg.StaticPartitionsDefinition | None:
            return dg.StaticPartitionsDefinition(sorted(keys)) if keys else None

        used_groups = {s.dedup.group for s in cat.sources.values() if s.dedup.group is not None}
        return cls(
            sources=dg.StaticPartitionsDefinition(sorted(cat.sources)),
            classifiers=static(cat.classifiers),
            dedup_groups=static(used_groups & set(cat.dedup)),
        )


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
