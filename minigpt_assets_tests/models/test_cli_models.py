"""The model commands end to end: save -> export-hf -> transformers loads it -> import-hf -> generate."""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from minigpt_assets.cli import main
from minigpt_assets.models import build_model, from_pretrained, make_config, save_model
from minigpt_assets.models.transformer import generate


@pytest.fixture()
def tokenizer_dir(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["the quick brown fox jumps over the lazy dog"] * 50, trainer)
    d = tmp_path / "tok"
    d.mkdir()
    tok.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
                                                         "tokenizer_class": "PreTrainedTokenizerFast"}))
    return d


def test_export_import_generate_commands(tmp_path, tokenizer_dir, capsys):
    cfg = make_config({"family": "minimind", "vocab_size": 300, "hidden_size": 64, "num_layers": 2,
                       "num_heads": 4, "num_kv_heads": 2, "init_std": 0.2})
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    save_model(model, tmp_path / "ckpt", tokenizer=tokenizer_dir)

    assert main(["export-hf", str(tmp_path / "ckpt"), str(tmp_path / "hf"), "--dtype", "float32"]) == 0
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert type(hf).__name__ == "Qwen3ForCausalLM"
    card = (tmp_path / "hf" / "README.md").read_text()  # a model card, even without a recorded provenance
    assert card.startswith("---\nlibrary_name: transformers\n") and "| Qwen3ForCausalLM |" in card
    assert "## License\n\nUnknown" in card
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    ids = torch.tensor([tok("the quick brown")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(model(ids), hf(ids).logits, atol=1e-4, rtol=1e-4)

    assert main(["import-hf", str(tmp_path / "hf"), str(tmp_path / "back")]) == 0
    back = from_pretrained(tmp_path / "back")
    assert (tmp_path / "back" / "tokenizer.json").is_file()

    capsys.readouterr()
    assert main(["generate", str(tmp_path / "back"), "the quick brown", "--max-new-tokens", "8"]) == 0
    text = capsys.readouterr().out.removesuffix("\n")
    expected = generate(back, ids, 8, eos_token_id=cfg.eos_token_id)
    assert text == "the quick brown" + tok.decode(expected[0, ids.shape[1]:].tolist())
    # sampling with a seed is reproducible
    outs = []
    for _ in range(2):
        main(["generate", str(tmp_path / "back"), "the", "--temperature", "1.0", "--top-k", "20", "--top-p", "0.9",
              "--seed", "3", "--max-new-tokens", "6"])
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1]


def test_model_commands_fail_with_one_line(tmp_path, capsys):
    assert main(["export-hf", str(tmp_path / "missing"), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("export-hf:") and "missing" in err[0]
    cfg = make_config({"family": "minimind", "vocab_size": 50, "hidden_size": 32, "num_layers": 1, "num_heads": 2,
                       "qk_norm": False, "moe": {"n_routed": 4, "n_shared": 1, "top_k": 2}})
    save_model(build_model(cfg), tmp_path / "mm2moe")
    assert main(["export-hf", str(tmp_path / "mm2moe"), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no transformers class" in err[0]
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()
    assert main(["generate", str(tmp_path / "mm2moe"), "hi"]) == 1
    assert "no tokenizer.json" in capsys.readouterr().err
    assert main(["bench", "model", "--models", "nope"]) == 1
    assert "unknown model recipe" in capsys.readouterr().err
    for argv, says in ((["--nproc", "0"], "--nproc: expected a positive number of ranks, got 0"),
                       (["--strategies", "ddp", "--impls", "hf"], "--nproc and --strategies run our variants only"),
                       (["--nproc", "2", "--strategies", "fsdp,tp"], "--strategies: unknown tp"),
                       (["--nproc", "2", "--impls", "hf,ours"], "--nproc and --strategies run our variants only")):
        assert main(["bench", "train", *argv]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and says in err[0], err
    with pytest.raises(SystemExit):  # argparse: one usage line and the reason, exit 2
        main(["bench", "train", "--lr", "-1"])
    assert "--lr: expected a positive number, got '-1'" in capsys.readouterr().err
