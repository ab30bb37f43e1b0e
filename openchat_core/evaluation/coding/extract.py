"""Code extraction from a chat answer, exactly as OpenChat's `coding_humaneval_match_answer`.

Candidates, in order: every fenced markdown block, then the whole answer. Each candidate is tried
first after the prompt's imports (the text before its first `def`), then after the whole prompt
(signature and docstring, for answers that give only a body); the first that parses and defines
the entry-point function wins. The result is a complete program (EvalPlus calls it a `solution`).
With no such candidate the answer is unmatched and the raw answer is the (failing) program, as in
OpenChat. Kept exactly so pass@1 stays comparable with OpenChat's reported HumanEval numbers.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_FENCED = re.compile(r"(`{3}.*?\n+)([\s\S]*?)(\n+`{3})")


@dataclass(frozen=True)
class ExtractedCode:
    matched: bool
    solution: str


def _defines(code: str, name: str) -> bool:
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):  # ValueError: source with NUL bytes
        return False
    return any(isinstance(node, ast.FunctionDef) and node.name == name for node in ast.walk(tree))


def _first_defining(response: str, prefix: str, entry_point: str) -> str | None:
    for block in [m[1] for m in _FENCED.findall(response)] + [response]:
        if _defines(prefix + block, entry_point):
            return prefix + block
    return None


def extract_solution(problem: Mapping[str, Any], response: str) -> ExtractedCode:
    """`problem`: HumanEval fields `prompt` and `entry_point` (a row's `_metadata`)."""
    prompt, entry_point = problem["prompt"], problem["entry_point"]
    imports = prompt.split("def")[0].strip() + "\n\n"
    for prefix in (imports, prompt):
        solution = _first_defining(response, prefix, entry_point)
        if solution is not None:
            return ExtractedCode(True, solution)
    return ExtractedCode(False, response)
