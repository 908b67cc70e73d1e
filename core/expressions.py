"""JMESPath over a run's state: the one expression language of specs and agent configs."""

from functools import lru_cache

import jmespath


@lru_cache(maxsize=1024)
def compile_expression(expression: str):
    return jmespath.compile(expression)


def evaluate(expression: str, state: dict):
    return compile_expression(expression).search(state)
