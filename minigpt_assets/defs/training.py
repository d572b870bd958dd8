"""pretrained_model[experiment|mixture]: the experiment's pretraining stage on one mixture, launched through
Dagster Pipes (a subprocess that streams its metrics back), published as a checkpoint artifact."""

import base64
from pathlib import Path

import dagster as dg

from minigpt_assets.defs.automation import ON_DATA_OR_CODE_CHANGE
from minigpt_assets.defs.common import artifact_metadata
from minigpt_assets.defs.mixtures import ASSET as MIXTURE_ASSET
from minigpt_assets.defs.partitions import Partitions
from minigpt_assets.defs.resources import ProjectResource
from minigpt_assets.recipes import Catalog
from minigpt_assets.training.pipeline import train_stage

ASSET = "pretrained_model"


def split_training_key(key) -> tuple[str, str]:
    """(experiment, mixture) of a training partition key (`MultiPartitionKey` or its "experiment|mixture")."""
    dims = getattr(key, "keys_by_dimension", None)
    if dims:
        return dims["experiment"], dims["mixture"]
    exp, mix = str(key).split("|", 1)
    return exp, mix


def build(cat: Catalog, parts: Partitions, recipe_assets: dict) -> list:
    if parts.training is None or "experiment_recipe" not in recipe_assets:
        return []
    deps = [dg.AssetDep(MIXTURE_ASSET, partition_mapping=dg.MultiToSingleDimensionPartitionMapping("mixture")),
            dg.AssetDep(recipe_assets["experiment_recipe"],
                        partition_mapping=dg.MultiToSingleDimensionPartitionMapping("experiment"))]

    @dg.asset(name=ASSET, partitions_def=parts.training, deps=deps, group_name="training",
              code_version=f"{ASSET}-v1", automation_condition=ON_DATA_OR_CODE_CHANGE, kinds={"pytorch"},
              pool="training")
    def pretrained_model(context: dg.AssetExecutionContext, project: ProjectResource,
                         pipes: dg.PipesSubprocessClient) -> dg.MaterializeResult:
        """Pretrain the experiment's model on the mixture (resuming the same run if one was interrupted)."""
        experiment, mixture = split_training_key(context.partition_key)

        def launch(command: list[str], _log: Path) -> int:
            pipes.run(context=context, command=command)  # torchrun passes the Pipes env on; rank 0 reports
            return 0  # a non-zero exit raises DagsterPipesExecutionError with the output

        out = train_stage(Path(project.home), project.catalog(), mixture, experiment, launch=launch)
        s = out.summary
        weights = next(f["sha256"] for f in out.artifact.manifest["files"] if f["path"] == "model.safetensors")
        png = (out.artifact.path / "loss_curve.png").read_bytes()
        md = artifact_metadata(out.artifact, {
            "loss_curve": dg.MetadataValue.md(f"![loss](data:image/png;base64,{base64.b64encode(png).decode()})"),
            "run_dir": dg.MetadataValue.path(str(out.run_dir)),
        })
        for k in ("first_loss", "final_loss", "first_val_loss", "final_val_loss"):
            if s.get(k) is not None:
                md[k] = dg.MetadataValue.float(float(s[k]))
        md["bad_steps"] = dg.MetadataValue.int(int(s["bad_steps"]))
        md["complete"] = dg.MetadataValue.bool(bool(s["complete"]))
        # the weights are the data version: a re-run that reproduces them leaves everything below fresh
        return dg.MaterializeResult(data_version=dg.DataVersion(weights[:16]), metadata=md)

    @dg.asset_check(asset=pretrained_model, name="loss_decreased", blocking=True,
                    description="the final training loss is below the first one, and no step was skipped")
    def loss_decreased(context: dg.AssetCheckExecutionContext, project: ProjectResource) -> dg.AssetCheckResult:
        import json

        experiment, mixture = split_training_key(context.partition_key)
        from minigpt_assets.training.pipeline import stage_partition

        art = project.store().require(ASSET, stage_partition(experiment, mixture))
        s = json.loads((art.path / "training.json").read_text())
        ok = s["final_loss"] is not None and s["final_loss"] < s["first_loss"] and s["bad_steps"] == 0
        return dg.AssetCheckResult(passed=bool(ok), metadata={k: s[k] for k in ("first_loss", "final_loss",
                                                                                   "bad_steps") if s[k] is not None})

    return [pretrained_model, loss_decreased]
