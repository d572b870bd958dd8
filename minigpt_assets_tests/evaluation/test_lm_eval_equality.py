"""Our log-likelihood tasks give lm-evaluation-harness's numbers: same exported HF model, same rows, lm-eval's own
task configs (arc_easy, hellaswag, piqa, mmlu, winogrande, lambada_openai) pointed at local files. Per-request
log-likelihoods agree within 1e-4 and acc / acc_norm per example exactly, zero-shot and few-shot."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

lm_eval = pytest.importorskip("lm_eval")

from minigpt_assets.evaluation.lm_eval_ref import FORMAT_OF_TASK as FORMAT  # noqa: E402
from minigpt_assets.evaluation.lm_eval_ref import lm_eval_samples, load_lm, sample_lls  # noqa: E402
from minigpt_assets.evaluation.tasks import evaluate_task, load_docs  # noqa: E402
from minigpt_assets.models import build_model, export_hf, make_config, save_model  # noqa: E402

WORDS = ("the cat dog sat ran on a mat in house red blue tree water fire stone quick slow man woman child bird "
         "fish sky sun moon river walk eat drink sleep read write open close big small old new good bad "
         "it's they'd 1984 42 3.14 café").split()  # digits, contractions, accents: where pre-tokenizers differ


def _sentence(r: random.Random, n: int) -> str:
    return " ".join(r.choice(WORDS) for _ in range(n))


def _rows(r: random.Random) -> dict[str, list[dict]]:
    arc = [{"id": f"arc{i}", "question": _sentence(r, 8) + "?",
            "choices": {"text": [_sentence(r, r.randint(1, 4)) for _ in range(4)], "label": list("ABCD")},
            "answerKey": r.choice("ABCD")} for i in range(8)]
    arc[0]["choices"]["label"] = ["1", "2", "3", "4"]
    arc[0]["answerKey"] = "3"
    hs = [{"ind": i, "activity_label": _sentence(r, 2).capitalize(), "ctx_a": _sentence(r, 7) + ".",
           "ctx_b": _sentence(r, 3), "ctx": "", "endings": [_sentence(r, r.randint(2, 6)) + " [header] x"
                                                             for _ in range(4)],
           "source_id": "s", "split": "val", "split_type": "indomain", "label": str(r.randrange(4))}
          for i in range(8)]
    piqa = [{"goal": _sentence(r, 6), "sol1": _sentence(r, 5), "sol2": _sentence(r, 9), "label": r.randrange(2)}
            for _ in range(8)]
    mmlu = [{"question": _sentence(r, 7) + "?", "subject": subj, "choices": [_sentence(r, 2) for _ in range(4)],
             "answer": r.randrange(4)} for subj in ("high_school_biology", "astronomy") for _ in range(4)]
    wino = [{"sentence": f"{_sentence(r, 4)} _ {_sentence(r, 5)}.", "option1": r.choice(WORDS),
             "option2": r.choice(WORDS), "answer": r.choice("12")} for _ in range(8)]
    lamb = [{"text": _sentence(r, 12)} for _ in range(8)]
    return {"arc_easy": arc, "hellaswag": hs, "piqa": piqa, "mmlu": mmlu, "winogrande": wino,
            "lambada_openai": lamb}


def _tokenizer(folder: Path, pre_tokenizer: str) -> None:
    from minigpt_assets.data.tokenizer import train_bpe
    from minigpt_assets.recipes import TokenizerRecipe

    r = random.Random(0)
    train_bpe([_sentence(r, 30) for _ in range(300)],
              TokenizerRecipe(vocab_size=400, min_frequency=1, pre_tokenizer=pre_tokenizer), folder)


def _setup(root: Path, family: str):
    # a qwen2 export's tokenizer is rebuilt by transformers with Qwen2's split: trained with it, it is the same
    _tokenizer(root / "tok", "qwen2" if family == "qwen2" else "bytelevel")
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_file(str(root / "tok" / "tokenizer.json")).get_vocab_size()
    cfg = make_config({"family": family, "vocab_size": vocab, "hidden_size": 64, "num_layers": 2,
                       "num_heads": 4, "num_kv_heads": 2, "max_seq_len": 256})
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():  # weights far from init, so choices get clearly different scores
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    save_model(model, root / "ours", tokenizer=root / "tok")
    export_hf(root / "ours", root / "hf")
    files = {}
    for task, rows in _rows(random.Random(1)).items():
        files[task] = root / f"{task}.jsonl"
        files[task].write_text("".join(json.dumps(x) + "\n" for x in rows))
    return root, model, files


@pytest.fixture(scope="module")
def setups(tmp_path_factory):
    made: dict[str, tuple] = {}

    def get(family: str):
        if family not in made:
            made[family] = _setup(tmp_path_factory.mktemp(f"lmeval-{family}"), family)
        return made[family]

    return get


# minimind exports as Llama, qwen2 as Qwen2 (whose tokenizer transformers rebuilds)
@pytest.mark.parametrize("family,num_fewshot", [("minimind", 0), ("minimind", 2), ("qwen2", 0)])
def test_scores_equal_lm_eval(setups, family, num_fewshot):
    root, model, files = setups(family)
    ref, _ = lm_eval_samples(load_lm(root / "hf"), files, num_fewshot, work=root)
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(root / "tok" / "tokenizer.json"))

    def encode(s: str) -> list[int]:
        return tok.encode(s).ids

    for task, path in files.items():
        fmt = FORMAT[task]
        docs = load_docs(fmt, path)
        if task == "mmlu":
            docs = sorted(docs, key=lambda d: d.group)  # lm-eval runs one task per subject
        # lm-eval's sampler: the few-shot pool is the training split (here the same rows) for arc/hellaswag/piqa/
        # winogrande/lambada, excluded only when it is the test split; mmlu takes the first n of `dev`
        sampler = "first_n" if task == "mmlu" else "random"
        same = task == "lambada_openai"  # lambada's only split is test: the pool is the evaluated split
        ours = evaluate_task(model, encode, fmt, docs, max_len=256, num_fewshot=num_fewshot,
                             fewshot_docs=None if same else docs, sampler=sampler,
                             prefix_id=tok.token_to_id("<|im_start|>"), batch_size=4)
        theirs = ref[task]
        assert len(ours) == len(theirs) == len(docs)
        for o, t in zip(ours, theirs):
            lls = sample_lls(t)
            assert o.lls == pytest.approx(lls, abs=1e-4), (task, t["doc_id"])
            for metric in ("acc", "acc_norm"):
                if metric in t:
                    assert o.metrics[metric] == t[metric], (task, t["doc_id"], metric)
            if task != "lambada_openai":
                assert len(set(round(x, 3) for x in lls)) > 1  # choices were really told apart
            if num_fewshot and task in ("arc_easy", "mmlu"):
                assert t["arguments"][0][0].count("\n\n") >= num_fewshot  # the few-shot context was really there

