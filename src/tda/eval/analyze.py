"""`tda analyze` registration hook for the main CLI's plugin list (the code lives in eval/cli.py and
eval/report.py); a no-op if `add_eval_cli` already registered it."""
from .cli import add_analyze_cli as _add
from .report import analyze_models  # noqa: F401  (the function layer, for `from tda.eval.analyze import ...`)


def add_analyze_cli(subparsers) -> None:
    if "analyze" not in subparsers.choices:
        _add(subparsers)
