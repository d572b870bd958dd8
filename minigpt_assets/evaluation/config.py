"""Eval recipes (`recipes/evals/<name>.yaml`): what `benchmark_scores` measures on every trained model.

Five kinds:
- `bits_per_byte`: per-source (so per-domain) bits per byte of the held-out split of each source's deduplicated
  documents (the documents `token_shards` never trains on), tokenized with each model's own tokenizer.
- `held_out_choice`: multiple-choice tasks generated offline from the same held-out documents: the true
  continuation of a passage (or the true next line of a code file) against ones taken from other held-out
  documents (lines) of the same source. Small models learn them, so mixtures really differ.
- `multiple_choice`: a local file in a standard format (arc, hellaswag, piqa, mmlu, winogrande, lambada or our
  generic `choice`), scored as lm-evaluation-harness scores it, zero- or few-shot.
- `code`: a HumanEval-format file: samples completions and runs each against the tests in a sandbox (pass@k).
- `chat_task`: greedy answers, through the chat template, to the held-out prompts of a post-training data set
  (the validation split the grpo and ppo stages hold out), scored by a rule (`number_match`): the same number
  for a pretrained, fine-tuned or aligned model, whatever objective trained it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

from minigpt_assets.evaluation.tasks import FORMATS
from minigpt_assets.training.config import ChatData

DEFAULT_METRICS = {"arc": ["acc", "acc_norm"], "hellaswag": ["acc", "acc_norm"], "piqa": ["acc", "acc_norm"],
                   "mmlu": ["acc"], "winogrande": ["acc"], "lambada": ["acc", "nll"], "choice": ["acc", "acc_norm"]}
OPTIONAL_METRICS = {"acc_norm", "acc_mutual_info"}  # any multiple-choice format but winogrande computes these


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _EvalBase(_Model):
    description: str = ""
    max_len: int | None = Field(None, gt=0)  # context window in tokens; default: the model's max_seq_len
    batch_size: int = Field(16, gt=0)
    # decontamination: the largest fraction of examples allowed to share a 13-gram with a mixture's training
    # documents; the blocking check `eval_contamination` on the mixture fails above it (null: report only)
    max_contamination: float | None = Field(None, ge=0, le=1)


class BitsPerByteEval(_EvalBase):
    kind: Literal["bits_per_byte"]
    sources: list[str] | None = None  # default: every source some mixture uses (the same set for every run)
    max_documents: int = Field(200, gt=0)  # per source: the first held-out documents by id (a fixed sample)
    max_bytes: int = Field(400_000, gt=0)  # per source: stop adding documents past this many bytes


class HeldOutChoiceEval(_EvalBase):
    kind: Literal["held_out_choice"]
    sources: list[str] | None = None
    unit: Literal["words", "lines"] = "words"  # continuation of a passage, or the next line of a file
    context: int = Field(48, gt=0)  # words (or lines) of context
    continuation: int = Field(4, gt=0)  # words of the true continuation (unit words); one line for lines
    metrics: list[Literal["acc", "acc_norm", "acc_mutual_info"]] = ["acc", "acc_norm", "acc_mutual_info"]
    choices: int = Field(4, ge=2)
    examples: int = Field(200, gt=0)  # per source
    seed: int = 0


class MultipleChoiceEval(_EvalBase):
    kind: Literal["multiple_choice"]
    format: Literal[FORMATS]  # type: ignore[valid-type]
    path: str
    fewshot_path: str | None = None  # the split few-shot examples come from (lm-eval: train, dev for mmlu)
    num_fewshot: int = Field(0, ge=0)
    fewshot_sampler: Literal["random", "first_n"] | None = None  # default: first_n for mmlu, random otherwise
    fewshot_seed: int = 1234
    limit: int | None = Field(None, gt=0)
    metrics: list[str] | None = None
    optional: bool = False  # a missing file skips the task instead of failing validation

    @model_validator(mode="after")
    def _metrics(self):
        extra = OPTIONAL_METRICS if self.format not in ("winogrande", "lambada") else set()
        bad = [m for m in (self.metrics or []) if m not in set(DEFAULT_METRICS[self.format]) | extra]
        if bad:
            raise ValueError(f"metrics {bad} not computed for format {self.format} "
                             f"(available: {DEFAULT_METRICS[self.format]})")
        return self

    def metric_names(self) -> list[str]:
        return list(self.metrics or DEFAULT_METRICS[self.format])

    def sampler(self) -> str:
        return self.fewshot_sampler or ("first_n" if self.format == "mmlu" else "random")


class CodeEval(_EvalBase):
    kind: Literal["code"]
    path: str
    samples: int = Field(10, gt=0)  # completions per problem (n of pass@k)
    ks: list[int] = [1, 10]
    temperature: float = Field(0.8, ge=0)  # 0: greedy (then samples: 1)
    top_p: float = Field(0.95, gt=0, le=1)
    max_new_tokens: int = Field(256, gt=0)
    stop: list[str] = ["\ndef ", "\nclass ", "\nif ", "\nprint(", "\n#"]  # HumanEval's stop sequences
    timeout_s: float = Field(5.0, gt=0)
    memory_mb: int = Field(1024, gt=0)
    limit: int | None = Field(None, gt=0)
    seed: int = 0
    optional: bool = False

    @model_validator(mode="after")
    def _ks(self):
        if any(k > self.samples for k in self.ks):
            raise ValueError(f"every k in ks {self.ks} must be <= samples ({self.samples})")
        return self


class ChatTaskEval(_EvalBase):
    kind: Literal["chat_task"]
    chat: ChatData  # the stages' `chat:` block: the same rows, the same validation split
    split: Literal["validation", "train"] = "validation"
    reward: Literal["number_match"] = "number_match"
    max_new_tokens: int = Field(16, gt=0)
    limit: int | None = Field(None, gt=0)


EvalRecipe = Annotated[Union[BitsPerByteEval, HeldOutChoiceEval, MultipleChoiceEval, CodeEval, ChatTaskEval],
                       Field(discriminator="kind")]


class EvalFile(BaseModel):
    eval: EvalRecipe


def data_files(recipe) -> list[Path]:
    from minigpt_assets.recipes import expand_location

    return [Path(expand_location(p)) for p in (getattr(recipe, "path", None), getattr(recipe, "fewshot_path", None))
            if p]


def data_digest(recipe) -> str | None:
    """sha256 over the bytes of the recipe's local files: part of its version, so new data re-evaluates."""
    files = [f for f in data_files(recipe) if f.is_file()]
    if not files:
        return None
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()
