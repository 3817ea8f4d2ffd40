"""Judge one record: render the spec, call the instance, parse, re-ask, combine.

No Celery and no SQL here: :func:`judge_record` takes a spec, a record and a client and
returns an :class:`~workers.store.ledger.Outcome` or raises a
:class:`~workers.errors.RecordError`.
"""

from __future__ import annotations

import json
import statistics
import time
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from workers import errors
from workers.spec import (
    LABEL_FIELD,
    OPENAI_PATHS,
    WINNER_FIELD,
    InvalidOutputError,
    Spec,
    TemplateRenderError,
    combine,
    parse_answer,
    plan_requests,
    reask_messages,
    response_format,
)
from workers.store.values import Outcome

if TYPE_CHECKING:
    # Types only: importing the openai client costs the producer a second.
    from workers.llm import Completion, RawResponse


class ChatClient(Protocol):
    def chat(
        self,
        messages: list[dict[str, str]],
        *,
        params: dict[str, Any],
        response_format: dict[str, Any] | None = None,
    ) -> Completion: ...


@runtime_checkable
class BatchClient(Protocol):
    """A client that can send an OpenAI batch line's body as it is."""

    def send(self, path: str, body: dict[str, Any]) -> RawResponse: ...


SCORE_FIELD = "score"
"""The numeric property of a judge answer that votes are averaged over."""


@dataclass
class _Tally:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, c: Completion) -> None:
        self.prompt_tokens += c.prompt_tokens or 0
        self.completion_tokens += c.completion_tokens or 0


def _ask(
    spec: Spec,
    messages: list[dict[str, str]],
    client: ChatClient,
    tally: _Tally,
    params: dict[str, Any],
) -> tuple[str, dict[str, Any] | None]:
    """One question, re-asked up to ``spec.max_reasks`` times while the answer is invalid."""
    fmt = response_format(spec)
    for _ in range(spec.max_reasks + 1):
        completion = client.chat(messages, params=params, response_format=fmt)
        tally.add(completion)
        try:
            return completion.text, parse_answer(spec, completion.text)
        except InvalidOutputError as e:
            last_error, last_raw = str(e), e.raw
            messages = reask_messages(messages, completion.text, str(e))
    raise errors.OutputInvalidError(
        f"invalid output after {spec.max_reasks + 1} tries: {last_error}", raw=last_raw
    )


def judge_record(spec: Spec, record: dict[str, Any], client: ChatClient) -> Outcome:
    """Run ``spec`` on ``record``. Raises :class:`workers.errors.RecordError`.

    With ``spec.votes`` > 1 every request is asked once per vote, with seeds ``seed``,
    ``seed + 1``...; the output is :func:`aggregate_votes` of the votes.
    """
    if spec.mode == "openai":
        return send_batch_line(record, client)
    try:
        plans = plan_requests(spec, record)
    except TemplateRenderError as e:
        raise errors.TemplateError(str(e)) from e
    started = time.perf_counter()
    tally = _Tally()
    texts: list[str] = []
    outputs: list[dict[str, Any] | None] = []
    base_seed = int(spec.params.get("seed", 0) or 0)
    for vote in range(spec.votes):
        params = spec.params if spec.votes == 1 else {**spec.params, "seed": base_seed + vote}
        parsed: list[dict[str, Any] | None] = []
        for messages in plans:
            text, answer = _ask(spec, messages, client, tally, params)
            texts.append(text)
            parsed.append(answer)
        outputs.append(combine(spec, parsed))
    return Outcome(
        output_text=texts[0] if len(texts) == 1 else json.dumps(texts, ensure_ascii=False),
        output=outputs[0] if spec.votes == 1 else aggregate_votes(outputs),
        prompt_tokens=tally.prompt_tokens,
        completion_tokens=tally.completion_tokens,
        latency_ms=(time.perf_counter() - started) * 1000,
    )


def aggregate_votes(outputs: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    """Combine the answers of several votes on one record.

    A numeric ``score`` becomes the mean, with ``votes.stdev``/``min``/``max`` and every
    score; a ``label`` or ``winner`` becomes the most common one (first seen wins a tie), with
    ``votes.counts`` and ``votes.agreement`` (the majority's share). Free text: None.
    """
    answers = [o for o in outputs if o is not None]
    if not answers:
        return None
    result = dict(answers[0])
    votes: dict[str, Any] = {"n": len(answers)}
    scores = [a[SCORE_FIELD] for a in answers if _is_number(a.get(SCORE_FIELD))]
    if len(scores) == len(answers):
        result[SCORE_FIELD] = statistics.fmean(scores)
        votes |= {
            "scores": scores,
            "mean": statistics.fmean(scores),
            "stdev": statistics.pstdev(scores),
            "min": min(scores),
            "max": max(scores),
        }
    for name in (LABEL_FIELD, WINNER_FIELD):
        if all(name in a for a in answers):
            counts = Counter(str(a[name]) for a in answers)
            top, n = counts.most_common(1)[0]
            result[name] = top
            votes |= {"field": name, "counts": dict(counts), "agreement": n / len(answers)}
    if all("consistent" in a for a in answers):
        result["consistent"] = all(bool(a["consistent"]) for a in answers)
    result["votes"] = votes
    return result


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def send_batch_line(record: dict[str, Any], client: ChatClient) -> Outcome:
    """Send an OpenAI batch line's body as it is; the output is the batch output's
    ``response`` (``status_code``, ``request_id``, ``body``).

    Raises :class:`workers.errors.BadRequestError` for a URL the fleet does not serve.
    """
    path = OPENAI_PATHS.get(str(record.get("url")))
    body = record.get("body")
    if path is None or not isinstance(body, dict):
        raise errors.BadRequestError(f"unsupported OpenAI batch line (url {record.get('url')!r})")
    if not isinstance(client, BatchClient):
        raise errors.BadRequestError("this worker's client cannot send OpenAI batch lines")
    started = time.perf_counter()
    resp = client.send(path, body)
    usage = resp.body.get("usage") or {}
    return Outcome(
        output_text=_answer_text(resp.body),
        output={"status_code": resp.status_code, "request_id": resp.request_id, "body": resp.body},
        prompt_tokens=usage.get("prompt_tokens"),
        completion_tokens=usage.get("completion_tokens"),
        latency_ms=(time.perf_counter() - started) * 1000,
    )


def _answer_text(body: dict[str, Any]) -> str:
    choices = body.get("choices") or [{}]
    first = choices[0] if isinstance(choices[0], dict) else {}
    message = first.get("message")
    if isinstance(message, dict):
        return str(message.get("content") or "")
    return str(first.get("text") or "")
