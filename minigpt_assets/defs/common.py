"""Shared pieces of the Dagster layer: artifact metadata, previews, and the two blocking checks every artifact has."""


from typing import Any

import dagster as dg
import pyarrow.parquet as pq

from minigpt_assets.defs.automation import ON_DATA_OR_CODE_CHANGE
from minigpt_assets.defs.resources import ProjectResource
from minigpt_assets.store import Artifact

NONEMPTY = "nonempty"
IN_FLIGHT = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
             dg.DagsterRunStatus.STARTED]  # run statuses of a run that has not finished
MANIFEST_MATCHES = "manifest_matches"


def data_asset(name: str, partitions_def: dg.PartitionsDefinition, deps: list, kind: str, version: int = 1):
    """The decorator every artifact asset uses: group, hand-bumped code version, data-version automation."""
    return dg.asset(name=name, partitions_def=partitions_def, deps=deps, group_name="data",
                    code_version=f"{name}-v{version}", automation_condition=ON_DATA_OR_CODE_CHANGE, kinds={kind})


def artifact_result(art: Artifact, extra: dict[str, Any] | None = None) -> dg.MaterializeResult:
    """The content hash of the published artifact is the data version: identical output, nothing downstream."""
    return dg.MaterializeResult(data_version=dg.DataVersion(art.version[:16]), metadata=artifact_metadata(art, extra))


def preview_markdown(shards: list, rows: int = 5, width: int = 80) -> str:
    """A Markdown table of the first documents of the first shard (id, domain, start of text)."""
    if not shards:
        return "_no documents_"
    tbl = pq.ParquetFile(shards[0]).read_row_group(0, columns=["id", "domain", "text"]).slice(0, rows)
    lines = ["| id | domain | text |", "|---|---|---|"]
    for r in tbl.to_pylist():
        text = " ".join(r["text"][: width * 2].split())[:width].replace("|", "\\|")
        lines.append(f"| `{r['id']}` | {r['domain']} | {text} |")
    return "\n".join(lines)


def artifact_metadata(art: Artifact, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    md: dict[str, Any] = {
        "path": dg.MetadataValue.path(str(art.path)),
        "content_hash": art.version,
        "files": len(art.manifest["files"]),
    }
    for k, v in art.counts.items():
        if isinstance(v, bool):
            md[k] = dg.MetadataValue.bool(v)
        elif isinstance(v, int):
            md[k] = dg.MetadataValue.int(v)
        elif isinstance(v, float):
            md[k] = dg.MetadataValue.float(v)
    for k in ("recipe_hash", "optional_missing"):
        if art.manifest.get("meta", {}).get(k):
            md[k] = str(art.manifest["meta"][k])
    md.update(extra or {})
    return md


def counts_table(counts: dict[str, int], key: str, value: str) -> dg.MetadataValue:
    rows = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return dg.MetadataValue.md("\n".join([f"| {key} | {value} |", "|---|---:|", *[f"| {k} | {v} |" for k, v in rows]]))


def artifact_checks(asset: dg.AssetsDefinition, asset_name: str, count_field: str) -> list[dg.AssetChecksDefinition]:
    """Blocking checks for an artifact asset: it is non-empty, and its files match the manifest checksums."""

    @dg.asset_check(asset=asset, name=NONEMPTY, blocking=True,
                    description=f"{asset_name} holds at least one {count_field.rstrip('s')}")
    def nonempty(context: dg.AssetCheckExecutionContext, project: ProjectResource) -> dg.AssetCheckResult:
        art = project.store().current(asset_name, context.partition_key if context.has_partition_key else None)
        if art is None:
            return dg.AssetCheckResult(passed=False, description="no artifact found")
        n = int(art.counts.get(count_field, 0))
        missing = art.manifest.get("meta", {}).get("optional_missing")
        pk = context.partition_key if context.has_partition_key else None
        cat = project.catalog(record=False)
        src = pk.split(".", 1)[-1] if pk and pk not in cat.sources else pk  # token_shards: `<tokenizer>.<source>`
        if not missing and n == 0 and src in cat.sources and cat.sources[src].optional:
            missing = "an optional source with no documents left on this machine"  # e.g. a few man pages, all filtered
        return dg.AssetCheckResult(
            passed=n > 0 or bool(missing),
            severity=dg.AssetCheckSeverity.WARN if missing else dg.AssetCheckSeverity.ERROR,
            metadata={count_field: n, **({"optional_missing": str(missing)} if missing else {})},
            description=f"optional source missing: {missing}" if missing and n == 0 else None,
        )

    @dg.asset_check(asset=asset, name=MANIFEST_MATCHES, blocking=True,
                    description="every file of the artifact re-hashes to its manifest sha256")
    def manifest_matches(context: dg.AssetCheckExecutionContext, project: ProjectResource) -> dg.AssetCheckResult:
        art = project.store().current(asset_name, context.partition_key if context.has_partition_key else None)
        if art is None:
            return dg.AssetCheckResult(passed=False, description="no artifact found")
        problems = art.verify()
        return dg.AssetCheckResult(passed=not problems,
                                   metadata={"files": len(art.manifest["files"]), "problems": "; ".join(problems[:5])})

    return [nonempty, manifest_matches]
