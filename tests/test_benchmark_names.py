"""Every global name the benchmark scripts' functions read is defined.

Most of benchmarks/ runs only on the GPU machine, so a name lost in a refactor (a helper moved to another
module without its import) shows up there as a NameError, after minutes of device time. This reads each
function's compiled global loads (``dis``) and checks them against the imported module and the builtins."""

import builtins
import dis
import importlib
import os
import sys
import types
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(p.stem for p in BENCHMARKS.glob("*.py"))


def function_globals(code: types.CodeType, top: bool = True) -> set[str]:
    """Names read with LOAD_GLOBAL by the functions nested anywhere in ``code`` (not the module body)."""
    names = set() if top else {i.argval for i in dis.get_instructions(code) if i.opname == "LOAD_GLOBAL"}
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= function_globals(const, top=False)
    return names


def undefined_globals(path: Path, module) -> list[str]:
    code = compile(path.read_text(), str(path), "exec")
    return sorted(n for n in function_globals(code) if n not in vars(module) and not hasattr(builtins, n))


@pytest.fixture
def benchmarks_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    env = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(env)  # host_overhead_stubbed sets TRITON_INTERPRET when imported


def test_scripts_found():
    assert {"bench_attention", "bench_8b", "decode_harness"} <= set(SCRIPTS)


@pytest.mark.parametrize("name", SCRIPTS)
def test_benchmark_functions_read_only_defined_globals(name, benchmarks_importable):
    module = importlib.import_module(name)
    assert undefined_globals(BENCHMARKS / f"{name}.py", module) == []


def test_an_undefined_global_is_found(tmp_path):
    """The check can fail: a function reading a name its module never defines."""
    path = tmp_path / "lost_import.py"
    path.write_text("import math\n\ndef f(x):\n    return math.sqrt(x) / GiB + len(x)\n")
    module = types.ModuleType("lost_import")
    exec(compile(path.read_text(), str(path), "exec"), vars(module))
    assert undefined_globals(path, module) == ["GiB"]
