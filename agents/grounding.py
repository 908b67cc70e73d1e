"""What a reply may claim: its citations must be verbatim passages of the snippets a `rag` node found, and its
numbers must come from a `sql` node's result cells or from a calculation over them."""

import ast
import operator
import re
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from tools import knowledge

NUMBER = re.compile(r"(?<![\w.])-?\d[\d,]*(?:\.\d+)?(?![\w])")
_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def grounds(state: dict) -> tuple[list[dict], list[dict]]:
    """The snippets and the SQL results that earlier nodes put in the run's state."""
    snippets, results = [], []
    for output in state.values():
        if isinstance(output, dict):
            snippets += output.get("snippets") or []
            if isinstance(output.get("columns"), list) and isinstance(output.get("rows"), list):
                results.append(output)
    return snippets, results


def citation_problems(*, tenant_id: int, citations: list[dict], snippets: list[dict]) -> list[str]:
    """Why the citations do not hold: one naming a passage that was not found for this question, or quoting what
    its passage does not say verbatim (tools.knowledge.citation_verify)."""
    if not citations:
        return ["the reply cites nothing; cite the passages it rests on"]
    found = {snippet["chunk"] for snippet in snippets}
    stray = [f"citation {n}: chunk {c.get('chunk')} was not among the passages found"
             for n, c in enumerate(citations, 1) if c.get("chunk") not in found]
    return stray or knowledge.citation_verify(tenant_id=tenant_id, citations=citations)


def untraced_numbers(reply: str, *, results: list[dict], calculations: list[str], question: str) -> list[str]:
    """The numbers in `reply` that no result cell, row count, calculation over those, or the question gives
    (a number written with fewer decimals counts when the value rounds to it)."""
    known = {value for result in results for value in _result_numbers(result)}
    known |= {_number(text) for text in NUMBER.findall(question)}
    known.discard(None)
    for expression in calculations:
        value = calculate(expression, known)
        if value is not None:
            known.add(value)
    return [text for text in NUMBER.findall(reply) if not _traced(text, known)]


def _result_numbers(result: dict):
    yield Decimal(result.get("row_count", len(result["rows"])))
    for row in result["rows"]:
        for cell in row:
            if isinstance(cell, bool) or cell is None:
                continue
            if isinstance(cell, int | float | Decimal):
                yield Decimal(str(cell))
            else:  # a number kept as text (a Decimal), or a date's parts
                yield from (_number(text) for text in NUMBER.findall(str(cell)))
                yield _number(str(cell))


def _number(text: str) -> Decimal | None:
    try:
        return Decimal(text.replace(",", ""))
    except InvalidOperation:
        return None


def _traced(text: str, known: set[Decimal]) -> bool:
    value = _number(text)
    if value is None:
        return True
    step = Decimal(1).scaleb(min(value.as_tuple().exponent, 0))  # 0.01 for "37.62", 1 for "37"
    try:
        return any(k.quantize(step, rounding=ROUND_HALF_UP) == value for k in known)
    except InvalidOperation:  # a value too large to round to that step
        return value in known


def calculate(expression: str, known: set[Decimal]) -> Decimal | None:
    """The value of an arithmetic expression (+ - * / and parentheses) whose every number is known; else None."""
    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError:
        return None

    def value(node) -> Decimal:
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            number = Decimal(str(node.value))
            if not any(abs(k - number) < Decimal("0.005") for k in known):
                raise ValueError("a number the data does not give")
            return number
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            return _OPERATORS[type(node.op)](value(node.left), value(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -value(node.operand)
        raise ValueError("not arithmetic")

    try:
        return value(tree.body)
    except (ValueError, ArithmeticError):
        return None
