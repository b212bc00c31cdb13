"""The code stays in rooms: no module of `src/` over 600 lines, no function over 60, and the diffusers provider's
batch call a short numbered script."""

import ast
import inspect
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "easel"


def test_no_module_over_600_lines_and_no_function_over_60():
    long_modules, long_functions = [], []
    for path in sorted(SRC.rglob("*.py")):
        text = path.read_text()
        if len(text.splitlines()) > 600:
            long_modules.append(f"{path.relative_to(SRC)}: {len(text.splitlines())}")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                long_functions.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name}")
    assert not long_modules and not long_functions, (long_modules, long_functions)


def test_the_batch_call_is_a_numbered_script():
    from easel.providers.diffusers.provider import DiffusersProvider

    source = inspect.getsource(DiffusersProvider.run_batch)
    body = source.split('"""')[2]
    assert len([line for line in body.splitlines() if line.strip()]) <= 22
    assert all(f"# {step}." in source for step in range(1, 6))
