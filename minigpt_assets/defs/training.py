"""Training assets, partitioned by experiment x mixture: pretrained_model (pretrain) -> sft_model (sft, lora or
distill) -> aligned_model (dpo, grpo or ppo) or reward_model (reward). Each runs its experiment's stage through Dagster Pipes (a subprocess or
torchrun that streams metrics back) and publishes a checkpoint."""

import base64
from pathlib import Path

import dagster as dg

from minigpt_assets.defs.automation import ON_DATA_OR_CODE_CHANGE
from minigpt_assets.defs.common import IN_FLIGHT, artifact_metadata
from minigpt_assets.defs.mixtures import ASSET as MIXTURE_ASSET
from minigpt_assets.defs.partitions import Partitions
from minigpt_assets.defs.resources import ProjectResource
from minigpt_assets.recipes import Catalog
from minigpt_assets.settings import quiet_openmp
from minigpt_assets.training.pipeline import STAGE_ASSETS, reward_stage, stage_partition, teacher_stage, train_stage

ASSET = "pretrained_model"
SFT_ASSET = "sft_model"
ALIGNED_ASSET = "aligned_model"
REWARD_ASSET = "reward_model"


def split_training_key(key) -> tuple[str, str]:
    """(experiment, mixture) of a training partition key (`MultiPartitionKey` or its "experiment|mixture")."""
    dims = getattr(key, "keys_by_dimension", None)
    if dims:
        return dims["experiment"], dims["mixture"]
    exp, mix = str(key).split("|", 1)
    return exp, mix


def _stage_partitions(cat: Catalog, parts: Partitions, slot: int,
                      asset: str | None = None) -> dg.MultiPartitionsDefinition | None:
    """experiment x mixture for the experiments that have a stage in this slot of the chain (publishing `asset`)."""
    exps = sorted(e for e in parts.experiments.get_partition_keys()
                  if len(cat.experiments[e].stages) > slot
                  and asset in (None, STAGE_ASSETS[cat.experiments[e].stages[slot].kind])) if parts.experiments else []
    if not exps or parts.mixtures is None:
        return None
    return dg.MultiPartitionsDefinition({"experiment": dg.StaticPartitionsDefinition(exps),
                                         "mixture": parts.mixtures})


SAME_RUN = dg.MultiPartitionMapping({
    "experiment": dg.DimensionPartitionMapping("experiment", dg.IdentityPartitionMapping()),
    "mixture": dg.DimensionPartitionMapping("mixture", dg.IdentityPartitionMapping())})


def same_run(child: dg.PartitionsDefinition, parent: dg.PartitionsDefinition) -> dg.PartitionMapping:
    """The same experiment|mixture upstream. Identity where both assets have the same partitions (a backfill can
    then run a partition of both in one run), else the per-dimension mapping (a stage only some experiments have)."""
    return dg.IdentityPartitionMapping() if child == parent else SAME_RUN


def wait_for_teacher(context, store, cat: Catalog, experiment: str, mixture: str, slot: int) -> None:
    """A distill stage whose teacher, or a ppo stage whose reward model (another experiment's stage on this
    mixture), is not published yet but is being trained by a run in flight — the same backfill reaches both at
    once — waits for it: the step is retried every 30 s (Dagster's RetryRequested) instead of failing. With no
    such run it goes on and fails with the one line that says how to train it."""
    st = cat.experiments[experiment].stages[slot]
    if st.kind == "distill" and not st.distill.teacher_path:
        name, chosen = teacher_stage(cat, st, experiment, slot)
    elif st.kind == "ppo" and st.ppo.reward_from is not None and st.ppo.reward_from.experiment:
        name, chosen = reward_stage(cat, st, experiment, slot)
    else:
        return
    asset = STAGE_ASSETS[chosen.kind]
    if store.current(asset, stage_partition(name, mixture)) is not None:
        return
    runs = context.instance.get_run_records(dg.RunsFilter(statuses=IN_FLIGHT, tags={
        "dagster/partition/experiment": name, "dagster/partition/mixture": mixture}))
    if any(dg.AssetKey(asset) in (r.dagster_run.asset_selection or ()) for r in runs):
        context.log.info(f"waiting for {name}/{chosen.stage_name} on {mixture} ({STAGE_ASSETS[chosen.kind]}), "
                         "trained by a run in flight")
        raise dg.RetryRequested(max_retries=240, seconds_to_wait=30)


def _stage_asset(name: str, slot: int, pdef: dg.MultiPartitionsDefinition, deps: list, doc: str):
    @dg.asset(name=name, partitions_def=pdef, deps=deps, group_name="training", code_version=f"{name}-v1",
              automation_condition=ON_DATA_OR_CODE_CHANGE, kinds={"pytorch"}, pool="training", description=doc)
    def _asset(context: dg.AssetExecutionContext, project: ProjectResource,
               pipes: dg.PipesSubprocessClient) -> dg.MaterializeResult:
        experiment, mixture = split_training_key(context.partition_key)
        cat = project.catalog()
        stage = cat.experiments[experiment].stages[slot].stage_name
        wait_for_teacher(context, project.store(), cat, experiment, mixture, slot)

        def launch(command: list[str], _log: Path) -> int:
            pipes.run(context=context, command=command, env=quiet_openmp())  # torchrun passes it on; rank 0 reports
            return 0  # a non-zero exit raises DagsterPipesExecutionError with the output

        out = train_stage(Path(project.home), cat, mixture, experiment, stage, launch=launch)
        s = out.summary
        weights = next(f["sha256"] for f in out.artifact.manifest["files"] if f["path"] == "model.safetensors")
        png = (out.artifact.path / "loss_curve.png").read_bytes()
        md = artifact_metadata(out.artifact, {
            "loss_curve": dg.MetadataValue.md(f"![loss](data:image/png;base64,{base64.b64encode(png).decode()})"),
            "run_dir": dg.MetadataValue.path(str(out.run_dir)),
        })
        for k in ("first_loss", "final_loss", "first_val_loss", "final_val_loss", "first_val_reward",
                  "final_val_reward", "first_val_reward_accuracy", "final_val_reward_accuracy"):
            if s.get(k) is not None:
                md[k] = dg.MetadataValue.float(float(s[k]))
        md["bad_steps"] = dg.MetadataValue.int(int(s["bad_steps"]))
        md["complete"] = dg.MetadataValue.bool(bool(s["complete"]))
        # the weights are the data version: a re-run that reproduces them leaves everything below fresh
        return dg.MaterializeResult(data_version=dg.DataVersion(weights[:16]), metadata=md)

    def summary(context: dg.AssetCheckExecutionContext, project: ProjectResource) -> dict:
        import json

        from minigpt_assets.training.pipeline import stage_partition

        experiment, mixture = split_training_key(context.partition_key)
        art = project.store().require(name, stage_partition(experiment, mixture))
        return json.loads((art.path / "training.json").read_text())

    @dg.asset_check(asset=_asset, name="loss_decreased", blocking=True,
                    description="no step was skipped and the final training loss is below the first one (grpo and "
                                "ppo: no skipped step; their loss is not a quantity that should fall); a failure "
                                "blocks what is below")
    def loss_decreased(context: dg.AssetCheckExecutionContext, project: ProjectResource) -> dg.AssetCheckResult:
        return training_check(summary(context, project))

    @dg.asset_check(asset=_asset, name="held_out_reward", blocking=False,
                    description="grpo and ppo: the held-out greedy reward did not fall over the stage (a warning: a "
                                "control run or a method that failed is still worth evaluating); passes for others")
    def held_out_reward(context: dg.AssetCheckExecutionContext, project: ProjectResource) -> dg.AssetCheckResult:
        return reward_check(summary(context, project))

    return [_asset, loss_decreased, held_out_reward]


def training_check(s: dict) -> dg.AssetCheckResult:
    """`loss_decreased` on a stage's training.json summary: a skipped step, or a supervised loss that did not
    fall, is an error that blocks the assets below (in a run and in the automation alike)."""
    policy = s.get("final_val_reward") is not None  # grpo, ppo: held_out_reward watches them instead
    ok = s["bad_steps"] == 0 and (policy or (s["final_loss"] is not None and s["final_loss"] < s["first_loss"]))
    keys = ("bad_steps",) if policy else ("first_loss", "final_loss", "bad_steps")
    return dg.AssetCheckResult(passed=bool(ok), metadata={k: s[k] for k in keys if s.get(k) is not None})


def reward_check(s: dict) -> dg.AssetCheckResult:
    """`held_out_reward`: a warning when a policy stage's held-out reward fell; blocks nothing."""
    if s.get("final_val_reward") is None:
        return dg.AssetCheckResult(passed=True, metadata={"applies": "grpo and ppo stages only"})
    return dg.AssetCheckResult(passed=bool(s["final_val_reward"] >= s["first_val_reward"]),
                               severity=dg.AssetCheckSeverity.WARN,
                               metadata={k: s[k] for k in ("first_val_reward", "final_val_reward")})


def _reward_mapping(cat: Catalog, aligned: dg.MultiPartitionsDefinition,
                    rewarded: dg.MultiPartitionsDefinition) -> dg.PartitionMapping | None:
    """ppo stages that name another experiment's reward model depend on its `reward_model` partition on the same
    mixture (lineage, staleness, and the order a backfill runs them in); None when no ppo stage does."""
    have = set(rewarded.get_partitions_def_for_dimension("experiment").get_partition_keys())
    users: dict[str, list[str]] = {}
    for e in aligned.get_partitions_def_for_dimension("experiment").get_partition_keys():
        st = cat.experiments[e].stages[2]
        if st.kind == "ppo" and st.ppo.reward_from is not None and st.ppo.reward_from.experiment in have:
            users.setdefault(st.ppo.reward_from.experiment, []).append(e)
    if not users:
        return None
    return dg.MultiPartitionMapping({
        "experiment": dg.DimensionPartitionMapping("experiment", dg.StaticPartitionMapping(users)),
        "mixture": dg.DimensionPartitionMapping("mixture", dg.IdentityPartitionMapping())})


def build(cat: Catalog, parts: Partitions, recipe_assets: dict) -> list:
    if parts.training is None or "experiment_recipe" not in recipe_assets:
        return []
    recipe = dg.AssetDep(recipe_assets["experiment_recipe"], partition_mapping=SAME_RUN)
    out = _stage_asset(ASSET, 0, parts.training,
                       [dg.AssetDep(MIXTURE_ASSET, partition_mapping=dg.MultiToSingleDimensionPartitionMapping("mixture")),
                        recipe],
                       "Pretrain the experiment's model on the mixture (resuming the same run if interrupted).")
    sft = _stage_partitions(cat, parts, 1)
    if sft is not None:
        out += _stage_asset(SFT_ASSET, 1, sft, [dg.AssetDep(ASSET, partition_mapping=same_run(sft, parts.training)),
                                                recipe],
                            "Fine-tune the pretrained model (sft, LoRA adapters merged into the weights, or "
                            "distillation from a teacher).")
    # experiments order their stages pretrain -> sft|lora|distill -> dpo|grpo|ppo|reward
    rewarded = _stage_partitions(cat, parts, 2, REWARD_ASSET)
    if rewarded is not None:
        out += _stage_asset(REWARD_ASSET, 2, rewarded,
                            [dg.AssetDep(SFT_ASSET, partition_mapping=same_run(rewarded, sft)), recipe],
                            "A reward model: the fine-tuned model with a scalar head on the last token, trained on "
                            "preference pairs (Bradley-Terry); ppo stages name it with reward_from.")
    aligned = _stage_partitions(cat, parts, 2, ALIGNED_ASSET)
    if aligned is not None:
        deps = [dg.AssetDep(SFT_ASSET, partition_mapping=same_run(aligned, sft)), recipe]
        if rewarded is not None and (scored := _reward_mapping(cat, aligned, rewarded)) is not None:
            deps.append(dg.AssetDep(REWARD_ASSET, partition_mapping=scored))
        out += _stage_asset(ALIGNED_ASSET, 2, aligned, deps,
                            "Align the fine-tuned model: DPO/IPO on preference pairs, GRPO with a rule-based "
                            "reward, or PPO against a trained reward model or a rule, measured against its frozen "
                            "copy.")
    return out
