"""Imports run one way: ops / data -> layers -> models -> hf / eval -> train -> the package root -> cli.

hf (Hugging Face wrappers) and eval share a rank: neither imports the other.

Every import statement of every module is read with ast, including imports inside functions: a lazy import
does not make a backwards import acceptable. Modules of one package import each other freely."""
import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
PKG = SRC / "tda"

# rank of each part of tda; a module may import only from its own part or from a lower rank
RANK = {"ops": 0, "data": 0, "layers": 1, "models": 2, "hf": 3, "eval": 3, "train": 4, "": 5, "cli": 6}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def part(module: str) -> str:
    """'tda.models.gpt' -> 'models'; 'tda' -> '' (the package root)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def imported_modules(path: Path, name: str | None = None) -> list[tuple[int, str]]:
    """(line, absolute module) for every tda module `path` (module `name`, default from its path) imports."""
    name = name or module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "tda"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "tda":
                continue
            if node.module is None or target == "tda":
                # `from . import x` / `from tda import x`: x may itself be a module of that package
                for a in node.names:
                    sub = f"{target}.{a.name}"
                    where = SRC / Path(*sub.split("."))
                    is_mod = where.is_dir() or where.with_suffix(".py").is_file()
                    out.append((node.lineno, sub if is_mod else target))
            else:
                out.append((node.lineno, target))
    return out


MODULES = sorted(PKG.rglob("*.py"))


def test_every_part_has_a_rank():
    parts = {part(module_name(p)) for p in MODULES}
    assert parts <= set(RANK), parts - set(RANK)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_imports_go_one_way(path):
    src = part(module_name(path))
    bad = [f"line {line}: {target}" for line, target in imported_modules(path)
           if part(target) != src and RANK[part(target)] >= RANK[src]]
    assert not bad, f"{module_name(path)} ({src or 'root'}) imports upward or sideways: {bad}"


def test_the_checker_sees_lazy_and_relative_imports(tmp_path):
    """A backwards import inside a function, written relatively, is found."""
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from ..models.gpt import GPT\n    from .. import train, __version__\n"
                     "    import tda.eval.sparsity\n    return GPT\n")
    found = [t for _, t in imported_modules(probe, "tda.layers.probe")]
    assert found == ["tda.models.gpt", "tda.train", "tda", "tda.eval.sparsity"]


def test_one_cli_module():
    clis = sorted(str(p.relative_to(SRC)) for p in MODULES if p.name == "cli.py")
    assert clis == ["tda/cli.py"]
