"""lm-evaluation-harness as the reference scorer: its own registered task configs (arc_easy, hellaswag, piqa,
mmlu_<subject>, winogrande, lambada_openai) pointed at local files, run through its `HFLM` on an exported HF
folder. The equality test and `minigpt bench eval` both drive it from here. Needs the `lm-eval` extra.

Only the data source of each registered config is swapped (`dataset_path: json` + `data_files`); templates,
preprocessing, splits and few-shot sampling stay lm-eval's. An inline dict config would replace the registered
config instead of overriding it, hence the task factory.
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path

# our format -> lm-eval's task (mmlu: one task per subject, `mmlu_<subject>`)
TASK_OF_FORMAT = {"arc": "arc_easy", "hellaswag": "hellaswag", "piqa": "piqa", "mmlu": "mmlu",
                  "winogrande": "winogrande", "lambada": "lambada_openai"}
FORMAT_OF_TASK = {v: k for k, v in TASK_OF_FORMAT.items()}


def _specs(files: dict[str, Path], work: Path) -> list[dict]:
    """One override per lm-eval task; a mixed-subject mmlu file becomes one file and task per subject."""
    specs = []
    for task, path in files.items():
        if task != "mmlu":
            splits = {s: str(path) for s in ("test", "validation", "train", "dev")}
            specs.append({"task": task, "dataset_path": "json", "dataset_name": None,
                          "dataset_kwargs": {"data_files": splits}})
            continue
        rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
        for subj in sorted({r["subject"] for r in rows}):
            p = Path(work) / f"mmlu_{subj}.jsonl"
            p.write_text("".join(json.dumps(r) + "\n" for r in rows if r["subject"] == subj))
            specs.append({"task": f"mmlu_{subj}", "dataset_path": "json", "dataset_name": None,
                          "dataset_kwargs": {"data_files": {"test": str(p), "dev": str(p)}}})
    return specs


@functools.lru_cache(maxsize=1)
def task_manager():
    """lm-eval's task index (it reads every task config it ships: about 9 s, so once per process)."""
    from lm_eval.tasks import TaskManager

    return TaskManager()


def load_lm(hf_dir: Path, device: str = "cpu", batch_size: int = 4, dtype: str = "float32"):
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=str(hf_dir), device=device, batch_size=batch_size, dtype=dtype)


def lm_eval_samples(lm, files: dict[str, Path], num_fewshot: int = 0, work: Path | None = None,
                    limit: int | None = None) -> tuple[dict[str, list[dict]], float]:
    """lm-eval's logged samples per task of `files` ({lm-eval task: local jsonl}), each sorted by doc_id (mmlu:
    every subject's in subject order, under "mmlu"), and the seconds its scoring took: the `evaluate` call inside
    `simple_evaluate` (building requests, the model's forward passes, the metrics), not the task setup before
    it or the environment report after it (torch's `collect_env`, about 0.8 s per call)."""
    import tempfile
    from unittest import mock

    import lm_eval.evaluator as E
    from lm_eval import simple_evaluate

    spent: list[float] = []
    inner = E.evaluate

    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            spent.append(time.perf_counter() - t0)

    with tempfile.TemporaryDirectory() as tmp, mock.patch.object(E, "evaluate", timed):
        tm = task_manager()
        tasks = [tm._factory.build(tm._entry(s["task"]), overrides=s, registry=tm._index)
                 for s in _specs(files, Path(work or tmp))]
        out = simple_evaluate(model=lm, tasks=tasks, task_manager=tm, num_fewshot=num_fewshot, limit=limit,
                              log_samples=True, bootstrap_iters=0, random_seed=0, numpy_random_seed=1234,
                              torch_random_seed=1234, fewshot_random_seed=1234)
    seconds = sum(spent)
    samples = {k: sorted(v, key=lambda s: s["doc_id"]) for k, v in out["samples"].items()
               if not k.startswith("mmlu_")}
    if "mmlu" in files:
        samples["mmlu"] = [s for k in sorted(out["samples"]) if k.startswith("mmlu_")
                           for s in sorted(out["samples"][k], key=lambda s: s["doc_id"])]
    return samples, seconds


def sample_lls(sample: dict) -> list[float]:
    """Per-request log-likelihoods of one logged lm-eval sample (one per choice)."""
    return [float(r[0][0]) for r in sample["resps"]]
