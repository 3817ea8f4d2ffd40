"""Judge one record: render the spec, call the instance, parse, re-ask, combine.

No Celery, no SQL and no I/O here: :func:`judge_steps` is a generator that yields the calls
a record needs and returns its :class:`~workers.store.values.Outcome` (or raises a
:class:`~workers.errors.RecordError`). :func:`judge_record` drives it with a sync client,
:func:`judge_record_async` with the worker's async one: one judge, two transports.
"""

from __future__ import annotations

import json
import statistics
import time
from collections import Counter
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from workers import budget, errors
from workers.codec import Completion, RawResponse
from workers.spec import (
    LABEL_FIELD,
    OPENAI_PATHS,
    WINNER_FIELD,
    Spec,
    combine,
    parse_answer,
    plan_requests,
    reask_messages,
    response_format,
)
from workers.store.values import Outcome


@dataclass(frozen=True)
class ChatCall:
    """Ask the instance one chat completion."""

    messages: list[dict[str, str]]
    params: dict[str, Any]
    response_format: dict[str, Any] | None


@dataclass(frozen=True)
class SendCall:
    """Send an OpenAI batch line's body as it is."""

    path: str
    body: dict[str, Any]


Steps = Generator[ChatCall | SendCall, Any, Outcome]
"""The judge as a generator: it yields the calls it needs and is sent their answers (a
:class:`Completion` or a :class:`RawResponse`), or has their :class:`RecordError` thrown in;
it returns the :class:`Outcome`. The sync and the async drivers run the same steps."""


class ChatClient(Protocol):
    def chat(
        self,
        messages: list[dict[str, str]],
        *,
        params: dict[str, Any],
        response_format: dict[str, Any] | None = None,
    ) -> Completion: ...

    def send(self, path: str, body: dict[str, Any]) -> RawResponse: ...


class AsyncChatClient(Protocol):
    async def chat(
        self,
        messages: list[dict[str, str]],
        *,
        params: dict[str, Any],
        response_format: dict[str, Any] | None = None,
    ) -> Completion: ...

    async def send(self, path: str, body: dict[str, Any]) -> RawResponse: ...


@runtime_checkable
class ContextAware(Protocol):
    """A client that knows its model's context length (``/v1/models``' ``max_model_len``)."""

    def max_model_len(self) -> int | None: ...


SCORE_FIELD = "score"
"""The numeric property of a judge answer that votes are averaged over."""

_FINISH_LENGTH = "length"


@dataclass
class _Tally:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None

    def add(self, c: Completion) -> None:
        self.prompt_tokens += c.prompt_tokens or 0
        self.completion_tokens += c.completion_tokens or 0
        # A record of several answers (swap, votes) says "length" if any was cut.
        if self.finish_reason != _FINISH_LENGTH:
            self.finish_reason = c.finish_reason

    def evidence(self, raw: str) -> dict[str, Any]:
        """What a failed record keeps: the last answer and what the record cost."""
        return {
            "raw": raw,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "finish_reason": self.finish_reason,
        }


@dataclass(frozen=True)
class _Window:
    """The model's context and the request's completion budget, when known."""

    max_model_len: int | None
    max_tokens: int | None
    max_tokens_param: str = "max_tokens"


def _window(spec: Spec, window: int | None) -> _Window:
    max_tokens = budget.max_tokens_of(spec.params)
    if window is not None and max_tokens is not None and max_tokens > window:
        raise errors.ContextLengthError(
            f"max_tokens {max_tokens} is over the model's context of {window} tokens: "
            "lower the spec's max_tokens"
        )
    name = "max_completion_tokens" if "max_completion_tokens" in spec.params else "max_tokens"
    return _Window(window, max_tokens, name)


def _truncated(spec: Spec, completion: Completion, tally: _Tally) -> errors.TruncatedError:
    what = "JSON answer" if spec.json_schema is not None else "answer"
    return errors.TruncatedError(
        f"the {what} was cut at max_tokens ({completion.completion_tokens} tokens) "
        "before it ended: raise max_tokens, or bound the schema's strings (maxLength)",
        **tally.evidence(completion.text),
    )


def _reask(
    messages: list[dict[str, str]],
    completion: Completion,
    error: str,
    window: _Window,
    params: dict[str, Any],
) -> tuple[list[dict[str, str]], dict[str, Any]] | None:
    """The re-ask after an invalid answer and its parameters, fitted into the context
    (:func:`workers.budget.fit_reask`); None if it cannot fit.

    The prompt's tokens are the server's own count; the invalid answer and the correction
    are counted by :mod:`workers.budget`'s upper bounds. An answer that does not fit whole
    is shortened or left out, and ``max_tokens`` lowered to what the context has left.
    """
    if window.max_model_len is None:
        return reask_messages(messages, completion.text, error), params
    correction = reask_messages([], "", error, answer_chars=0)[0]["content"]
    last = completion.completion_tokens or budget.text_tokens(completion.text)
    need = last + budget.NEED_MARGIN
    fit = budget.fit_reask(
        max_model_len=window.max_model_len,
        prompt_tokens=completion.prompt_tokens or budget.messages_tokens(messages),
        # Without max_tokens vLLM allows what the context has left: plan for ``need``.
        max_tokens=window.max_tokens or need,
        need=need,
        correction=correction,
        answer=completion.text,
    )
    if fit is None:
        return None
    whole = budget.text_tokens(completion.text) <= fit.answer_tokens
    keep = None if whole else budget.prefix_for(completion.text, fit.answer_tokens)
    reask = reask_messages(messages, completion.text, error, answer_chars=keep)
    if window.max_tokens is None or fit.max_tokens == window.max_tokens:
        return reask, params
    return reask, {**params, window.max_tokens_param: fit.max_tokens}


def _ask(
    spec: Spec,
    messages: list[dict[str, str]],
    tally: _Tally,
    params: dict[str, Any],
    window: _Window,
) -> Generator[ChatCall, Completion, tuple[str, dict[str, Any] | None]]:
    """One question, re-asked up to ``spec.max_reasks`` times while the answer is invalid.

    A re-ask whose ``max_tokens`` had to be lowered to fit the context, and whose answer is
    then cut, fails as truncated like any other cut answer.

    Raises :class:`workers.errors.TruncatedError` for an answer cut by ``max_tokens``
    that cannot be used, and :class:`workers.errors.OutputInvalidError` when the answer
    stays invalid or a re-ask does not fit the context; both keep the last answer.
    """
    fmt = response_format(spec)
    tries = spec.max_reasks + 1
    last: Completion | None = None
    error = ""
    for attempt in range(1, tries + 1):
        try:
            completion = yield ChatCall(messages, params, fmt)
        except errors.ContextLengthError as e:
            if last is None:
                raise
            # The first prompt fitted; only a re-ask did not (the server counts otherwise
            # than our bounds, or did not tell its context): the answer stays invalid.
            raise errors.OutputInvalidError(
                f"invalid output, and the re-ask was refused: {e}", **tally.evidence(last.text)
            ) from e
        tally.add(completion)
        last = completion
        try:
            return _accept(spec, completion, tally)
        except errors.OutputInvalidError as e:
            error = str(e)
        if attempt < tries:
            reask = _reask(messages, completion, error, window, params)
            if reask is None:
                raise errors.OutputInvalidError(
                    f"invalid output, and a re-ask would not fit the {window.max_model_len}-"
                    f"token context: {error}",
                    **tally.evidence(completion.text),
                )
            messages, params = reask
    assert last is not None
    raise errors.OutputInvalidError(
        f"invalid output after {tries} tries: {error}", **tally.evidence(last.text)
    )


def _accept(spec: Spec, completion: Completion, tally: _Tally) -> tuple[str, dict[str, Any] | None]:
    """The answer's text and parsed output. Raises :class:`errors.OutputInvalidError`
    (worth a re-ask) or :class:`errors.TruncatedError` (not: it would be cut again)."""
    cut = completion.finish_reason == _FINISH_LENGTH
    try:
        answer = parse_answer(spec, completion.text)
    except errors.OutputInvalidError as e:
        if cut:
            raise _truncated(spec, completion, tally) from e
        raise
    # A structured answer that parses and validates is whole even if the budget ran out
    # on its last token; free text cut short is kept only where the spec says so.
    if cut and answer is None and not spec.keep_truncated:
        raise _truncated(spec, completion, tally)
    return completion.text, answer


def judge_steps(spec: Spec, record: dict[str, Any], *, max_model_len: int | None) -> Steps:
    """Run ``spec`` on ``record`` (see :data:`Steps`); ``max_model_len`` is the model's
    context when known. Raises :class:`workers.errors.RecordError`.

    With ``spec.votes`` > 1 every request is asked once per vote, with seeds ``seed``,
    ``seed + 1``...; the output is :func:`aggregate_votes` of the votes.
    """
    if spec.mode == "openai":
        return (yield from send_batch_line(record))
    plans = plan_requests(spec, record)
    window = _window(spec, max_model_len)
    started = time.perf_counter()
    tally = _Tally()
    texts: list[str] = []
    outputs: list[dict[str, Any] | None] = []
    base_seed = int(spec.params.get("seed", 0) or 0)
    for vote in range(spec.votes):
        params = spec.params if spec.votes == 1 else {**spec.params, "seed": base_seed + vote}
        parsed: list[dict[str, Any] | None] = []
        for messages in plans:
            text, answer = yield from _ask(spec, messages, tally, params, window)
            texts.append(text)
            parsed.append(answer)
        outputs.append(combine(spec, parsed))
    return Outcome(
        output_text=texts[0] if len(texts) == 1 else json.dumps(texts, ensure_ascii=False),
        output=outputs[0] if spec.votes == 1 else aggregate_votes(outputs),
        prompt_tokens=tally.prompt_tokens,
        completion_tokens=tally.completion_tokens,
        latency_ms=(time.perf_counter() - started) * 1000,
        finish_reason=tally.finish_reason,
    )


def judge_record(
    spec: Spec, record: dict[str, Any], client: ChatClient, *, max_model_len: int | None = None
) -> Outcome:
    """:func:`judge_steps` with a sync client; the context is asked of the client when
    not given and it knows it."""
    if max_model_len is None and isinstance(client, ContextAware):
        max_model_len = client.max_model_len()
    steps = judge_steps(spec, record, max_model_len=max_model_len)
    try:
        call = next(steps)
        while True:
            answer: Completion | RawResponse
            try:
                if isinstance(call, ChatCall):
                    fmt = call.response_format
                    answer = client.chat(call.messages, params=call.params, response_format=fmt)
                else:
                    answer = client.send(call.path, call.body)
            except errors.RecordError as e:
                call = steps.throw(e)
            else:
                call = steps.send(answer)
    except StopIteration as done:
        outcome: Outcome = done.value
        return outcome


async def judge_record_async(
    spec: Spec, record: dict[str, Any], client: AsyncChatClient, *, max_model_len: int | None
) -> Outcome:
    """:func:`judge_steps` with an async client (the worker's)."""
    steps = judge_steps(spec, record, max_model_len=max_model_len)
    try:
        call = next(steps)
        while True:
            answer: Completion | RawResponse
            try:
                if isinstance(call, ChatCall):
                    fmt = call.response_format
                    answer = await client.chat(
                        call.messages, params=call.params, response_format=fmt
                    )
                else:
                    answer = await client.send(call.path, call.body)
            except errors.RecordError as e:
                call = steps.throw(e)
            else:
                call = steps.send(answer)
    except StopIteration as done:
        outcome: Outcome = done.value
        return outcome


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


def send_batch_line(record: dict[str, Any]) -> Generator[SendCall, RawResponse, Outcome]:
    """Send an OpenAI batch line's body as it is; the output is the batch output's
    ``response`` (``status_code``, ``request_id``, ``body``).

    Raises :class:`workers.errors.BadRequestError` for a URL the fleet does not serve.
    """
    path = OPENAI_PATHS.get(str(record.get("url")))
    body = record.get("body")
    if path is None or not isinstance(body, dict):
        raise errors.BadRequestError(f"unsupported OpenAI batch line (url {record.get('url')!r})")
    started = time.perf_counter()
    resp = yield SendCall(path, body)
    usage = resp.body.get("usage") or {}
    return Outcome(
        output_text=_answer_text(resp.body),
        output={"status_code": resp.status_code, "request_id": resp.request_id, "body": resp.body},
        prompt_tokens=usage.get("prompt_tokens"),
        completion_tokens=usage.get("completion_tokens"),
        latency_ms=(time.perf_counter() - started) * 1000,
        finish_reason=_finish_reason(resp.body),
    )


def _first_choice(body: dict[str, Any]) -> dict[str, Any]:
    choices = body.get("choices")
    first = choices[0] if isinstance(choices, list) and choices else {}
    return first if isinstance(first, dict) else {}


def _finish_reason(body: dict[str, Any]) -> str | None:
    reason = _first_choice(body).get("finish_reason")
    return str(reason)[:32] if reason is not None else None


def _answer_text(body: dict[str, Any]) -> str:
    first = _first_choice(body)
    message = first.get("message")
    if isinstance(message, dict):
        return str(message.get("content") or "")
    return str(first.get("text") or "")
