"""The ``lolcats-lab`` command under bad arguments: exit code 2 and a clear ``error:`` line on stderr, never a
traceback.

Two layers:
* argument parsing, fuzzed with hypothesis (random sub-commands, flags and values, good and bad), with the
  command handlers replaced by stubs so an accepted command line returns at once;
* the handlers themselves on inputs that fail at run time (missing or damaged checkpoints, empty prompts,
  unknown models), for real.

argparse prints its usage block before the error line; the rule checked is: exit code 2, the LAST stderr line
is ``lolcats-lab[ <command>]: error: <message>``, exactly one line contains ``error:``, and no traceback.
"""

import contextlib
import io
import json
import os
import re
from collections import Counter
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lolcats_lab import cli

EXAMPLES = 40 if os.environ.get("LOLCATS_CI") else 150
COUNTS: Counter = Counter()
ERROR_LINE = re.compile(r"^lolcats-lab( (linearize|evaluate|explore))?: error: \S.*$")


def run_cli(argv):
    """main(argv) -> (exit code, stderr); SystemExit is turned into its code."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = cli.main(argv)
        except SystemExit as e:
            code = e.code
    return code, err.getvalue()


def assert_clear_failure(code, stderr, argv):
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert code == 2, f"{argv}: exit code {code}, stderr {stderr[-500:]!r}"
    assert "Traceback" not in stderr, f"{argv}: traceback on stderr:\n{stderr[-2000:]}"
    assert lines and ERROR_LINE.match(lines[-1]), f"{argv}: last stderr line is not a clear error: {lines[-1:]}"
    assert sum("error:" in ln for ln in lines) == 1, f"{argv}: several error lines: {lines}"


# ----------------------------------------------------------------------------------------------------------
# parsing, fuzzed

INTS = ["8", "0", "-3", "2.5", "abc", "", "1e3", "9999999999999999999999"]
FLOATS = ["1e-3", "0", "-1", "nan", "inf", "x", ""]
FLAGS = {
    "linearize": {
        "--out": ["/tmp/lolcats-fuzz-out"], "--model": ["smollm2-135m", "/nonexistent"],
        "--attention": ["linear", "hybrid-tk", "quadratic", ""], "--feature-map": ["hedgehog", "elu", "softmax"],
        "--feature-dim": INTS, "--window": INTS, "--sink-tokens": INTS, "--preset": ["quick", "paper", "huge"],
        "--seq-len": INTS, "--batch-size": INTS, "--transfer-steps": INTS, "--transfer-lr": FLOATS,
        "--lora-steps": INTS, "--lora-lr": FLOATS, "--lora-rank": INTS, "--seed": INTS,
        "--dtype": ["float32", "bfloat16", "float64", "int8"], "--checkpoint-every": INTS, "--resume": [None],
        "--no-progress": [None], "--bogus-flag": ["1"],
    },
    "evaluate": {
        "--checkpoint": ["/nonexistent"], "--model": ["minilm"], "--seq-len": INTS, "--val-sequences": INTS,
        "--batch-size": INTS, "--json": ["/tmp/x.json"], "--window": ["4"],
    },
    "explore": {
        "--prompt": ["hello", ""], "--model": ["smollm2-135m"], "--attention": ["linear", "sw"],
        "--feature-map": ["taylor", "hedgehog2"], "--window": INTS, "--layer": INTS, "--out": ["/tmp/r.html"],
    },
}
REQUIRED = {"linearize": ["--out"], "evaluate": ["--checkpoint"], "explore": ["--prompt", "--out"]}


@st.composite
def command_lines(draw):
    cmd = draw(st.sampled_from(["linearize", "evaluate", "explore", "bench", "", "--help-me"]))
    argv = [cmd] if cmd else []
    flags = FLAGS.get(cmd, FLAGS["linearize"])
    for flag in draw(st.lists(st.sampled_from(sorted(flags)), max_size=5)):
        value = draw(st.sampled_from(flags[flag]))
        argv += [flag] if value is None else [flag, value]
    if draw(st.booleans()):
        argv.append(draw(st.sampled_from(["--window", "--seq-len", "stray", "-x"])))  # dangling or stray token
    return argv


def _stub(name):
    def handler(args):
        COUNTS[f"accepted/{name}"] += 1
        return 0

    return handler


@settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(command_lines())
def test_fuzz_argument_parsing(argv):
    stubs = {f"cmd_{c}": _stub(c) for c in ("linearize", "evaluate", "explore")}
    with mock.patch.multiple(cli, **stubs):
        code, stderr = run_cli(argv)
    COUNTS["parse/cases"] += 1
    if code == 0:
        COUNTS["parse/accepted"] += 1
        assert not stderr.strip(), stderr
        assert argv and argv[0] in REQUIRED and all(r in argv for r in REQUIRED[argv[0]])
    else:
        COUNTS["parse/clear_errors"] += 1
        assert_clear_failure(code, stderr, argv)


@pytest.mark.parametrize("argv", [
    [], ["bench"], ["linearize"], ["linearize", "--out", "x", "--window", "0"],
    ["linearize", "--out", "x", "--transfer-lr", "nan"], ["linearize", "--out", "x", "--dtype", "float64"],
    ["evaluate", "--checkpoint"], ["explore", "--prompt", "hi"], ["explore", "--prompt", "hi", "--out", "r.html", "--layer", "-1"],
])
def test_known_bad_command_lines(argv):
    assert_clear_failure(*run_cli(argv), argv)


def test_a_valid_command_line_reaches_its_handler():  # control: the stubs do get called
    with mock.patch.multiple(cli, cmd_evaluate=_stub("evaluate")):
        assert run_cli(["evaluate", "--checkpoint", "/some/dir"]) == (0, "")


# ----------------------------------------------------------------------------------------------------------
# handlers, for real


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from lolcats_lab.models import linearize, save_linearized

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=128, vocab_size=101, attn_implementation="eager")
    root = tmp_path_factory.mktemp("ckpt")
    base = LlamaForCausalLM(cfg).eval()
    base.save_pretrained(root / "base")  # a real local base model (no tokenizer files)
    model = linearize(base, attention="hybrid-tk", window=8, feature_dim=16)
    return save_linearized(model, root / "checkpoint", base_model=str(root / "base"))


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


RUNTIME_CASES = {
    "missing_checkpoint": lambda ck, tmp: ["evaluate", "--checkpoint", str(tmp / "nope")],
    "checkpoint_is_a_file": lambda ck, tmp: ["evaluate", "--checkpoint", str(ck / "lolcats_config.json")],
    "base_model_missing": lambda ck, tmp: ["evaluate", "--checkpoint", str(ck), "--model", str(tmp / "no_base")],
    "base_without_tokenizer": lambda ck, tmp: ["evaluate", "--checkpoint", str(ck)],
    "config_truncated": lambda ck, tmp: ["evaluate", "--checkpoint", str(_damage(ck, tmp, "lolcats_config.json", lambda b: b[: len(b) // 2]))],
    "config_wrong_version": lambda ck, tmp: ["evaluate", "--checkpoint", str(_damage(ck, tmp, "lolcats_config.json", lambda b: b'{"format_version": 99}'))],
    "empty_prompt": lambda ck, tmp: ["explore", "--prompt", "   ", "--out", str(tmp / "r.html")],
    "unknown_model": lambda ck, tmp: ["explore", "--prompt", "hi", "--model", str(tmp / "no_such_model"), "--out", str(tmp / "r.html")],
}


def _damage(ck: Path, tmp: Path, name: str, fn) -> Path:
    d = _copy(ck, tmp / f"damaged_{name}")
    (d / name).write_bytes(fn((d / name).read_bytes()))
    return d


@pytest.mark.parametrize("case", sorted(RUNTIME_CASES))
def test_runtime_failures_are_one_clear_line(case, checkpoint, tmp_path):
    argv = RUNTIME_CASES[case](checkpoint, tmp_path)
    code, stderr = run_cli(argv)
    COUNTS["runtime/cases"] += 1
    assert_clear_failure(code, stderr, argv)
    # handlers: exactly one line, apart from transformers' "Loading weights" tqdm bars (reported)
    lines = [ln for ln in stderr.replace("\r", "\n").splitlines() if ln.strip() and "Loading weights" not in ln]
    assert len(lines) == 1, stderr
    COUNTS["runtime/clear_errors"] += 1


RUNTIME_GAPS = {
    "config_missing_keys": ("lolcats_config.json", lambda b: b'{"format_version": 1}'),
    "weights_truncated": ("linearized.safetensors", lambda b: b[: len(b) // 2]),
}


@pytest.mark.parametrize("case", sorted(RUNTIME_GAPS))
def test_runtime_gap_damaged_checkpoint(case, checkpoint, tmp_path):
    name, fn = RUNTIME_GAPS[case]
    argv = ["evaluate", "--checkpoint", str(_damage(checkpoint, tmp_path, name, fn))]
    COUNTS["runtime/cases"] += 1
    try:
        code, stderr = run_cli(argv)
    except Exception as err:  # noqa: BLE001 - an escaped exception is what this test guards against
        pytest.fail(f"{type(err).__name__} escaped main(): {err}")
    assert_clear_failure(code, stderr, argv)
    COUNTS["runtime/clear_errors"] += 1


def test_zz_write_counts():
    if os.environ.get("LOLCATS_WRITE_RESULTS") == "1" and COUNTS:
        path = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "reliability-cpu.json"
        data = json.loads(path.read_text()) if path.exists() else {}
        data["cli_fuzz"] = {
            "examples": EXAMPLES,
            "cases": COUNTS["parse/cases"] + COUNTS["runtime/cases"],
            "accepted": COUNTS["parse/accepted"],
            "clear_errors": COUNTS["parse/clear_errors"] + COUNTS["runtime/clear_errors"],
            "tracebacks": 0,  # any would have failed the run before this point
            "per_kind": dict(sorted(COUNTS.items())),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
