"""`http` triggers: request a URL; fire when the response meets `expect` (or, with
`fire_on: change`, when the selected context changes)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from trigctl.triggers._util import NOT_JSON, HttpResponse, http_request, jmes_search, new_session
from trigctl.triggers.base import PollContext, PollError, PollOutcome, TriggerType, check_context, register

STATE_KEY = "last"  # fire_on: change keeps a digest of the last poll's context under this state key


def context_digest(context: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON: the state remembers that a context changed, not what it held
    (a response value may be a secret, and the state file must not hold one)."""
    return hashlib.sha256(json.dumps(context, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _status_text(expected: list[int] | None) -> str:
    if expected is None:
        return "2xx"
    if len(expected) == 1:
        return str(expected[0])
    return "one of " + ", ".join(str(s) for s in expected)


@register
class HttpTrigger(TriggerType):
    type_name = "http"
    blocking = True
    default_dedupe_key = None  # the whole context

    def __init__(self, config, base_dir: Path) -> None:
        super().__init__(config, base_dir)
        import jmespath

        o = self.options
        self.url: str = o["url"]
        self.method: str = str(o.get("method", "GET")).upper()
        self.headers = {str(k): str(v) for k, v in (o.get("headers") or {}).items()}
        self.verify = bool(o.get("verify_tls", True))
        self.data: bytes | None = o["body"].encode() if isinstance(o.get("body"), str) else None
        self.has_json = "json" in o
        self.json_body = o.get("json")
        expect = o.get("expect") or {}
        status = expect.get("status")
        # Without a `status` clause a response must still be 2xx (also when other clauses are given).
        self.expect_status: list[int] | None = None if status is None else (
            [status] if isinstance(status, int) else [int(s) for s in status])
        self.expect_json_src: str | None = expect.get("json")
        self.expect_json = jmespath.compile(self.expect_json_src) if self.expect_json_src else None
        self.expect_contains: str | None = expect.get("contains")
        self.context_exprs = {str(k): jmespath.compile(v) for k, v in (o.get("context") or {}).items()}
        self.fire_on: str = o.get("fire_on", "condition")
        # error: a response that does not meet `expect` is an error (a health check: it counts
        # toward on_error and its end is a recovery), not a skip.
        self.on_mismatch: str = o.get("on_mismatch", "skip")
        self._session: Any = None

    def _request(self, timeout: float) -> HttpResponse:
        if self._session is None:
            self._session = new_session()
        extra: dict[str, Any] = {"json_body": self.json_body} if self.has_json else {}
        return http_request(self._session, self.method, self.url, timeout=timeout, headers=self.headers,
                            verify=self.verify, data=self.data, **extra)

    def mismatch(self, resp: HttpResponse, body: Any) -> str | None:
        """Why the response does not meet `expect`, or None when it does."""
        ok = resp.status in self.expect_status if self.expect_status is not None else 200 <= resp.status < 300
        if not ok:
            return f"status {resp.status}, expected {_status_text(self.expect_status)}"
        if self.expect_contains is not None and self.expect_contains not in resp.text:
            return f"the body does not contain {self.expect_contains!r}"
        if self.expect_json is not None:
            if body is NOT_JSON:
                return f"the body is not JSON (expect.json: {self.expect_json_src})"
            if not jmes_search(self.expect_json, body, "expect.json"):
                return f"expect.json is false: {self.expect_json_src}"
        return None

    def context_of(self, resp: HttpResponse, body: Any) -> dict[str, Any]:
        ctx: dict[str, Any] = {"status": resp.status}
        for key, expr in self.context_exprs.items():
            ctx[key] = None if body is NOT_JSON else jmes_search(expr, body, f"context.{key}")
        return check_context(ctx)

    def poll(self, ctx: PollContext) -> PollOutcome:
        resp = self._request(ctx.timeout)
        body = resp.json() if (self.expect_json is not None or self.context_exprs) else NOT_JSON
        problem = self.mismatch(resp, body)
        if problem:
            if self.on_mismatch == "error":
                raise PollError(f"unexpected response: {problem}")
            return PollOutcome(skip_reason=problem)
        context = self.context_of(resp, body)
        if self.fire_on != "change":
            return PollOutcome(fires=[context])
        digest = context_digest(context)
        if STATE_KEY not in ctx.state:
            return PollOutcome(skip_reason="first poll: context recorded", state_updates={STATE_KEY: digest})
        last = ctx.state[STATE_KEY]
        if last == digest:
            return PollOutcome(skip_reason="no change")
        if last == context:  # stored by an earlier trigctl, which kept the context itself
            return PollOutcome(skip_reason="no change", state_updates={STATE_KEY: digest})
        # The digest goes with the fire: a deferred fire (its key held by a run of another context)
        # leaves the old digest, so the change is seen, and fired, again.
        return PollOutcome(fires=[context], fire_state=[{STATE_KEY: digest}])

    def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            session.close()
