"""An in-process OpenFeature provider: Python services evaluate flags locally, no server.

    from openfeature import api
    from upgrader.flags.openfeature import UpgraderProvider

    api.set_provider(UpgraderProvider("flags.db", "production"))
    client = api.get_client()
    client.get_boolean_value("new-checkout", False, EvaluationContext("user-42", {"tier": "gold"}))

Needs ``openfeature-sdk`` (the ``openfeature`` extra); nothing else in upgrader imports it.
A thread polls the store every 200 ms, so a change arrives within a second.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

from openfeature.evaluation_context import EvaluationContext
from openfeature.event import ProviderEventDetails
from openfeature.exception import ErrorCode
from openfeature.flag_evaluation import FlagResolutionDetails, Reason
from openfeature.provider import AbstractProvider, Metadata

from .watch import POLL_INTERVAL_S, FlagWatcher

__all__ = ["UpgraderProvider"]

_REASONS = {reason.value: reason for reason in Reason}
_ERROR_CODES = {code.value: code for code in ErrorCode}


class UpgraderProvider(AbstractProvider):
    """Evaluates one environment of an upgrader flag store in this process.

    ``store`` is a store spec (SQLite path or ``postgresql://`` URL) or a store object. The
    flags load when the provider is constructed (a ConfigError if they do not); a later flag
    set that does not load is logged and never replaces the last good one. OpenFeature calls
    ``shutdown()`` (``api.shutdown()``); it stops the poller.
    """

    def __init__(self, store: Any, environment: str, *,
                 poll_interval: float = POLL_INTERVAL_S) -> None:
        super().__init__()
        self.environment = environment
        self._watcher = FlagWatcher(store, environment, interval=poll_interval,
                                    on_change=self._changed, name="openfeature")
        self._watcher.start()

    @property
    def evaluator(self) -> Any:
        return self._watcher.evaluator

    def get_metadata(self) -> Metadata:
        return Metadata(name="upgrader")

    def shutdown(self) -> None:
        self._watcher.stop()

    def _changed(self, evaluator: Any) -> None:
        self.emit_provider_configuration_changed(
            ProviderEventDetails(message=f"flag set version {evaluator.version}"))

    # ------------------------------------------------------------------------- resolving

    def resolve_boolean_details(self, flag_key: str, default_value: bool,
                                evaluation_context: EvaluationContext | None = None
                                ) -> FlagResolutionDetails[bool]:
        return self._resolve(flag_key, default_value, evaluation_context, (bool,))

    def resolve_string_details(self, flag_key: str, default_value: str,
                               evaluation_context: EvaluationContext | None = None
                               ) -> FlagResolutionDetails[str]:
        return self._resolve(flag_key, default_value, evaluation_context, (str,))

    def resolve_integer_details(self, flag_key: str, default_value: int,
                                evaluation_context: EvaluationContext | None = None
                                ) -> FlagResolutionDetails[int]:
        return self._resolve(flag_key, default_value, evaluation_context, (int,))

    def resolve_float_details(self, flag_key: str, default_value: float,
                              evaluation_context: EvaluationContext | None = None
                              ) -> FlagResolutionDetails[float]:
        return self._resolve(flag_key, default_value, evaluation_context, (float, int))

    def resolve_object_details(self, flag_key: str,
                               default_value: Sequence[Any] | Mapping[str, Any],
                               evaluation_context: EvaluationContext | None = None
                               ) -> FlagResolutionDetails[Any]:
        return self._resolve(flag_key, default_value, evaluation_context, (dict, list))

    def _resolve(self, key: str, default: Any, context: EvaluationContext | None,
                 types: tuple[type, ...]) -> FlagResolutionDetails[Any]:
        evaluator = self._watcher.evaluator
        ctx = to_context(context)
        if not ctx.get("targetingKey") and _needs_targeting_key(evaluator, key):
            return _error(default, ErrorCode.TARGETING_KEY_MISSING,
                          f"flag {key!r} needs a targeting key (it targets users or rolls "
                          "out by percentage)")
        resolution = evaluator.evaluate(key, ctx)
        code = _name(resolution.error_code)
        if code:
            return _error(default, _ERROR_CODES.get(code, ErrorCode.GENERAL),
                          resolution.error_message or code)
        value = resolution.value
        # bool is an int in Python: an integer flag must not answer True, nor a boolean 1
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            return _error(default, ErrorCode.TYPE_MISMATCH,
                          f"flag {key!r} is {type(value).__name__}, asked for "
                          f"{types[0].__name__}")
        if types == (float, int):
            value = float(cast("float", value))
        metadata: dict[str, Any] = {}
        if resolution.rule is not None:
            metadata["rule"] = resolution.rule if isinstance(resolution.rule, (str, int, float)) \
                else str(resolution.rule)
        return FlagResolutionDetails(
            value=value,
            reason=_REASONS.get(_name(resolution.reason) or "", Reason.UNKNOWN),
            variant=None if resolution.variant is None else str(resolution.variant),
            flag_metadata=metadata,
        )


def to_context(context: EvaluationContext | None) -> dict[str, Any]:
    """An OpenFeature EvaluationContext -> the evaluator's context (OFREP's shape)."""
    if context is None:
        return {}
    data = dict(context.attributes)
    if context.targeting_key:
        data["targetingKey"] = context.targeting_key
    return data


def _needs_targeting_key(evaluator: Any, key: str) -> bool:
    try:
        return bool(evaluator.needs_targeting_key(key))
    except KeyError:
        return False


def _error(default: Any, code: ErrorCode, message: str) -> FlagResolutionDetails[Any]:
    return FlagResolutionDetails(value=default, reason=Reason.ERROR, error_code=code,
                                 error_message=message)


def _name(value: Any) -> str | None:
    if value is None:
        return None
    return str(getattr(value, "value", value))
