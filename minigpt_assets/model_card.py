"""The model card `minigpt export-hf` writes (README.md in the Hugging Face Hub's format: YAML metadata, then
Markdown): architecture and size, tokenizer, and — when the checkpoint is a published training artifact of this
home — the mixture with its realized shares, the stages trained with their tokens and losses, the evaluation
scores with their intervals, and the sources' licenses."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from minigpt_assets.store import ArtifactStore, StatsDB


def provenance(home: Path, checkpoint: Path) -> tuple[str, str, str] | None:
    """(asset, experiment, mixture) of a checkpoint under `home/artifacts/<asset>/<experiment>+<mixture>/<version>/`."""
    try:
        rel = Path(checkpoint).resolve().relative_to((Path(home) / "artifacts").resolve())
    except ValueError:
        return None
    parts = rel.parts
    if len(parts) < 3 or "+" not in parts[1]:
        return None
    experiment, mixture = parts[1].split("+", 1)
    return parts[0], experiment, mixture


def _fmt(x, digits: int = 4) -> str:
    if x is None:
        return ""
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return f"{x:,}" if isinstance(x, int) else str(x)


def _table(cols: list[str], rows: list[tuple]) -> str:
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(_fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(out)


def _query(db: StatsDB, sql: str, params: tuple) -> tuple[list[str], list[tuple]]:
    """A parameterized query over the stats views (values quoted here: DuckDB's views are read-only)."""
    quoted = tuple("'" + str(p).replace("'", "''") + "'" for p in params)
    try:
        return db.query(sql % quoted)
    except Exception:  # noqa: BLE001 - a home without that table yet: the card says so
        return [], []


def model_card(model, folder_name: str, home: Path | None = None, checkpoint: Path | None = None,
               catalog=None) -> str:
    """README.md for an exported model (`model`: our module, as loaded)."""
    from minigpt_assets.models.interop import hf_class

    cfg = model.config
    n_params = sum(p.numel() for p in model.parameters())
    where = provenance(home, checkpoint) if home and checkpoint else None
    sources: list[str] = []
    licenses: dict[str, str] = {}
    sections: list[str] = []
    if where is not None and catalog is not None:
        asset, experiment, mixture = where
        db = StatsDB(home)
        mix = catalog.mixtures.get(mixture)
        if mix is not None:
            sources = sorted(mix.sources)
            licenses = {s: getattr(catalog.sources.get(s), "license", "unknown") for s in sources}
        cols, rows = _query(db, "SELECT source, target_share, actual_share, tokens, documents, epochs FROM "
                                "mixture_stats WHERE mixture = %s AND split = 'train' ORDER BY source", (mixture,))
        if rows:
            sections.append(f"## Training data\n\nMixture `{mixture}` (realized shares of the training tokens):\n\n"
                            + _table(cols, rows))
        stages = []
        exp = catalog.experiments.get(experiment)
        from minigpt_assets.training.pipeline import STAGE_ASSETS, stage_partition

        store = ArtifactStore(home)
        for st in exp.stages if exp else []:
            art = store.current(STAGE_ASSETS[st.kind], stage_partition(experiment, mixture))
            if art is None:
                continue
            s = json.loads((art.path / "training.json").read_text())
            stages.append((st.stage_name, st.kind, s.get("steps"), s.get("tokens"), s.get("final_loss"),
                           s.get("final_val_loss")))
            if art.path.resolve() == Path(checkpoint).resolve():
                break
        if stages:
            sections.append(f"## Training\n\nExperiment `{experiment}` (model recipe `{exp.model}`), in order:\n\n"
                            + _table(["stage", "kind", "steps", "tokens", "final train loss", "final val loss"],
                                     stages))
        cols, rows = _query(db, "SELECT stage, task, metric, value, ci_low, ci_high, n FROM eval_scores WHERE "
                                "experiment = %s AND mixture = %s ORDER BY stage, task, metric", (experiment, mixture))
        if rows:
            sections.append("## Evaluation\n\nScores with 95 % bootstrap intervals (`minigpt evaluate`):\n\n"
                            + _table(cols, rows))
    meta = {"library_name": "transformers", "pipeline_tag": "text-generation",
            "tags": ["minigpt-assets", cfg.family] + (["moe"] if cfg.moe is not None else []),
            "license": "other", "license_name": "; ".join(sorted(set(licenses.values()))) or "unknown"}
    if sources:
        meta["datasets"] = sources
    title = f"{where[1]} on {where[2]} ({where[0]})" if where else folder_name
    head = (f"# {title}\n\nA {n_params / 1e6:.1f}M-parameter {cfg.family}-family decoder trained with "
            "minigpt-assets (exported with `minigpt export-hf`).\n\n"
            "## Model\n\n" + _table(["architecture", "parameters", "layers", "hidden", "heads (kv)", "context",
                                    "vocabulary"],
                                   [(hf_class(cfg), n_params, cfg.num_layers, cfg.hidden_size,
                                     f"{cfg.num_heads} ({cfg.kv_heads})", cfg.max_seq_len, cfg.vocab_size)]))
    usage = ("## Use\n\n```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
             f"model = AutoModelForCausalLM.from_pretrained(\"{folder_name}\")\n"
             f"tokenizer = AutoTokenizer.from_pretrained(\"{folder_name}\")\n```")
    lic = ("## License\n\nThe weights inherit the terms of the training data; by source:\n\n"
           + _table(["source", "license"], sorted(licenses.items()))) if licenses else (
        "## License\n\nUnknown: this checkpoint is not a published artifact of the home it was exported from, so "
        "its training data is not recorded here.")
    body = "\n\n".join([head, *sections, usage, lic])
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n\n" + body + "\n"
