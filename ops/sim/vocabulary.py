"""The small vocabulary deterministic text answers are drawn from."""

from __future__ import annotations

_TEXT = """
    the model answer shows clear reasoning about data with careful attention to detail and
    context while each record gets scored against a rubric that values accuracy coverage
    clarity brevity structure evidence consistency relevance because good results need
    precise steps small examples honest limits useful summaries stable outputs fair
    comparisons strong arguments weak points overall quality remains high given the input
    this response covers main ideas key facts likely causes next actions open questions
"""
WORDS: tuple[str, ...] = tuple(_TEXT.split())
