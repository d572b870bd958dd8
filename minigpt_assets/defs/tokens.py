"""tokenizer[tok] (BPE trained on deduplicated documents, HF format) and token_shards[tok.src] (flat token arrays)."""

import json

import dagster as dg

from minigpt_assets.data.tokenizer import train_tokenizer
from minigpt_assets.data.tokens import tokenize_documents
from minigpt_assets.defs.common import artifact_checks, artifact_result, data_asset
from minigpt_assets.defs.dedup import ASSET as DEDUP_ASSET
from minigpt_assets.defs.partitions import (Partitions, source_to_token_shards, source_to_tokenizer,
                                            split_token_key, tokenizer_to_token_shards)
from minigpt_assets.defs.resources import ProjectResource
from minigpt_assets.recipes import Catalog

TOKENIZER_ASSET = "tokenizer"
ASSET = "token_shards"


def build(cat: Catalog, parts: Partitions, recipe_assets: dict) -> list:
    if parts.tokenizers is None:
        return []

    @data_asset(TOKENIZER_ASSET, parts.tokenizers, [recipe_assets["tokenizer_recipe"],
                dg.AssetDep(DEDUP_ASSET, partition_mapping=source_to_tokenizer(cat))], "tokenizers")
    def tokenizer(context: dg.AssetExecutionContext, project: ProjectResource) -> dg.MaterializeResult:
        """Train the byte-level BPE on a deterministic sample of its sources' deduplicated documents."""
        name = context.partition_key
        cat = project.catalog()
        recipe = cat.tokenizers[name]
        store = project.store()
        docs = [p for s in cat.tokenizer_sources(name) for p in store.require(DEDUP_ASSET, s).files(".parquet", "shard")]
        with store.stage(TOKENIZER_ASSET, name) as st:
            stats = train_tokenizer(docs, recipe, st.path)
            art = st.publish(counts=stats, meta={"recipe_hash": cat.tokenizer_hash(name),
                                                 "sources": cat.tokenizer_sources(name)})
        context.log.info(f"{name}: vocab {stats['vocab_size']}, {stats['bytes_per_token']:.2f} bytes/token")
        return artifact_result(art)

    @dg.asset_check(asset=tokenizer, name="loads_and_roundtrips", blocking=True,
                    description="transformers.AutoTokenizer loads the folder and decode(encode(x)) == x")
    def loads_and_roundtrips(context: dg.AssetCheckExecutionContext, project: ProjectResource) -> dg.AssetCheckResult:
        from transformers import AutoTokenizer

        art = project.store().require(TOKENIZER_ASSET, context.partition_key)
        hf = AutoTokenizer.from_pretrained(str(art.path))
        probe = "def f(x):\n    return x  # naïve café, 3.14 ≠ π"
        return dg.AssetCheckResult(passed=hf.decode(hf.encode(probe)) == probe,
                                   metadata={"class": type(hf).__name__, "vocab_size": len(hf)})

    if parts.token_shards is None:
        return [tokenizer, loads_and_roundtrips]

    @data_asset(ASSET, parts.token_shards, [
        dg.AssetDep(TOKENIZER_ASSET, partition_mapping=tokenizer_to_token_shards(cat)),
        dg.AssetDep(DEDUP_ASSET, partition_mapping=source_to_token_shards(cat)),
        dg.AssetDep(recipe_assets["source_recipe"], partition_mapping=source_to_token_shards(cat))], "numpy")
    def token_shards(context: dg.AssetExecutionContext, project: ProjectResource) -> dg.MaterializeResult:
        """Tokenize one source's deduplicated documents with one tokenizer: train.bin, val.bin, index.parquet."""
        tok_name, source = split_token_key(context.partition_key)
        cat = project.catalog()
        store = project.store()
        tok = store.require(TOKENIZER_ASSET, tok_name)
        docs = store.require(DEDUP_ASSET, source)
        with store.stage(ASSET, context.partition_key) as st:
            res = tokenize_documents(docs.files(".parquet", "shard"), tok.path, st.path,
                                     cat.sources[source].validation_fraction, engine=project.engine(),
                                     expected=docs.expected(".parquet", "shard"))
            (st.path / "tokens.json").write_text(json.dumps({"dtype": res.dtype, "vocab_size": res.vocab_size}))
            art = st.publish(
                counts={"documents": sum(res.documents.values()), "tokens": sum(res.tokens.values()),
                        "train_tokens": res.tokens["train"], "val_tokens": res.tokens["val"],
                        "train_documents": res.documents["train"], "val_documents": res.documents["val"]},
                meta={"dtype": res.dtype, "tokenizer": tok_name, "source": source,
                      "optional_missing": docs.manifest.get("meta", {}).get("optional_missing")})
        project.stats().write("token_stats", context.partition_key, [
            {"tokenizer": tok_name, "source": source, "split": sp, "documents": res.documents[sp],
             "tokens": res.tokens[sp], "bytes": res.bytes[sp]} for sp in ("train", "val")])
        context.log.info(f"{context.partition_key}: {res.tokens['train']} train / {res.tokens['val']} val tokens "
                         f"({res.dtype})")
        return artifact_result(art, {"bytes_per_token": dg.MetadataValue.float(
            sum(res.bytes.values()) / max(1, sum(res.tokens.values())))})

    return [tokenizer, loads_and_roundtrips, token_shards, *artifact_checks(token_shards, ASSET, "tokens")]
