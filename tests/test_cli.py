"""The lolcats-lab command: the main job end to end on a tiny local model, and clear errors on bad input."""

import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lolcats_lab.cli import main


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """A tiny random Llama saved with SmolLM2's tokenizer: the hub-id / local-directory loading path."""
    from lolcats_lab.models import load_model

    _, tok = load_model("smollm2-135m")
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=64, vocab_size=len(tok), max_position_embeddings=256)
    path = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


FAST = ["--data", "sample", "--window", "8", "--seq-len", "40", "--transfer-steps", "3", "--lora-steps", "2",
        "--train-sequences", "6", "--val-sequences", "2", "--batch-size", "2", "--no-progress"]


@pytest.mark.embedded
def test_linearize_writes_checkpoint_metrics_and_report(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["linearize", "--out", str(out), "--model", tiny_model_dir, *FAST]) == 0
    m = json.loads((out / "metrics.json").read_text())
    for key in ("teacher_ppl", "ppl_before_transfer", "ppl_after_transfer", "ppl_after_lora", "layer_mse_before",
                "layer_mse_after", "transfer_tokens", "lora_tokens", "wall_seconds", "settings"):
        assert key in m, key
    assert len(m["layer_mse_before"]) == 2 and m["transfer_tokens"] == 3 * 2 * 40
    assert m["layer_mse_after"] != m["layer_mse_before"]
    html = (out / "report.html").read_text()
    assert "Plotly.newPlot" in html and "<script src=\"http" not in html  # self-contained: no CDN script
    assert "perplexity" in capsys.readouterr().out

    # the checkpoint (feature maps, window factors and LoRA) reloads onto the base model and reproduces the
    # trained model's validation perplexity
    from lolcats_lab.data import prepare_data
    from lolcats_lab.evaluate import perplexity
    from lolcats_lab.models import load_linearized, load_model

    model = load_linearized(out / "checkpoint", base=tiny_model_dir)
    _, tok = load_model(tiny_model_dir)
    val = prepare_data("sample", tok, 40, train_sequences=1, val_sequences=2, progress=False).val
    assert perplexity(model, val) == pytest.approx(m["ppl_after_lora"], rel=1e-5)


@pytest.mark.embedded
def test_linearize_without_transfer_is_the_lora_only_ablation(tiny_model_dir, tmp_path):
    """--transfer-steps 0 skips attention transfer: the maps stay at init (MSE and perplexity unchanged by
    stage 1), LoRA still trains and moves the perplexity."""
    out = tmp_path / "lora-only"
    argv = ["linearize", "--out", str(out), "--model", tiny_model_dir, *FAST]
    argv[argv.index("--transfer-steps") + 1] = "0"
    assert main(argv) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["transfer_tokens"] == 0 and m["transfer_loss"] == []
    assert m["layer_mse_after"] == m["layer_mse_before"]
    assert m["ppl_after_transfer"] == m["ppl_before_transfer"]
    assert m["ppl_after_lora"] != pytest.approx(m["ppl_after_transfer"], rel=1e-6)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["linearize", "--out", "{tmp}/a", "--model", "no-such-model-xyz", *FAST], "could not load 'no-such-model-xyz'"),
        (["linearize", "--out", "/proc/forbidden/out", "--model", "{model}", *FAST], "is not a writable directory"),
        (["linearize", "--out", "{tmp}/b", "--model", "{model}", *FAST[:-1], "--seq-len", "12"],
         "--seq-len 12 is too short for hybrid-tk with --window 8"),
        (["linearize", "--out", "{tmp}/c", "--model", "{model}", *FAST[2:], "--data", "{tmp}/missing.txt"], "missing.txt"),
        (["evaluate", "--checkpoint", "{tmp}/nothing-here"], "not found"),
    ],
)
@pytest.mark.embedded
def test_bad_input_exits_2_with_one_clear_line(argv, message, tiny_model_dir, tmp_path, capsys):
    argv = [a.format(tmp=tmp_path, model=tiny_model_dir) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize("argv", [["linearize"], ["linearize", "--out", "x", "--transfer-steps", "-3"],
                                  ["linearize", "--out", "x", "--attention", "quadratic"], ["frobnicate"]])
def test_argument_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "usage:" in capsys.readouterr().err


@pytest.mark.embedded
def test_linearize_layerwise_with_grad_checkpointing_prints_the_memory_plan(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["linearize", "--out", str(out), "--model", tiny_model_dir, *FAST, "--layerwise", "--grad-checkpointing"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["settings"]["layerwise"] and m["settings"]["grad_checkpointing"]
    assert len(m["transfer_loss"]) == 2 * 3  # 3 steps for each of the 2 layers
    printed = capsys.readouterr().out
    assert "memory estimate" in printed and "stage 'transfer'" in printed and "stage 'lora'" in printed
