"""Conversions of the messages every service shares (umbra.common.v1), one copy each: a privacy cost and a budget.
Each service's own messages are converted in its package's convert.py."""

from __future__ import annotations

import math

from umbra.common.v1 import privacy_pb2
from umbra.privacy.ledger import Budget
from umbra.privacy.mechanisms import Cost
from umbra.runtime.errors import InvalidInput

_MECHANISMS = {"dp_sgd": privacy_pb2.PRIVACY_MECHANISM_DP_SGD, "gaussian": privacy_pb2.PRIVACY_MECHANISM_GAUSSIAN,
               "laplace": privacy_pb2.PRIVACY_MECHANISM_LAPLACE,
               "randomized_response": privacy_pb2.PRIVACY_MECHANISM_RANDOMIZED_RESPONSE,
               "composition": privacy_pb2.PRIVACY_MECHANISM_COMPOSITION}
# umbra.privacy.accountants' names (and composition's "tight"), and the accountant a mechanism has by default
_ACCOUNTANTS = {"prv": privacy_pb2.PRIVACY_ACCOUNTANT_PRV, "rdp": privacy_pb2.PRIVACY_ACCOUNTANT_RDP,
                "gdp": privacy_pb2.PRIVACY_ACCOUNTANT_GDP, "analytic": privacy_pb2.PRIVACY_ACCOUNTANT_ANALYTIC,
                "basic": privacy_pb2.PRIVACY_ACCOUNTANT_BASIC_COMPOSITION,
                "tight": privacy_pb2.PRIVACY_ACCOUNTANT_TIGHT_COMPOSITION}
_DEFAULT_ACCOUNTANT = {"dp_sgd": "prv", "gaussian": "gdp", "laplace": "analytic", "randomized_response": "analytic",
                       "composition": "basic"}


def privacy_cost_to_proto(cost: Cost) -> privacy_pb2.PrivacyCost:
    accountant = cost.accountant or _DEFAULT_ACCOUNTANT.get(cost.mechanism, "")
    return privacy_pb2.PrivacyCost(
        mechanism=_MECHANISMS.get(cost.mechanism, privacy_pb2.PRIVACY_MECHANISM_UNSPECIFIED),
        accountant=_ACCOUNTANTS.get(accountant, privacy_pb2.PRIVACY_ACCOUNTANT_UNSPECIFIED), epsilon=cost.epsilon,
        delta=cost.delta, description=cost.description, parameters={k: float(v) for k, v in cost.parameters.items()},
        components=[privacy_cost_to_proto(c) for c in cost.components])


def privacy_cost_from_proto(message: privacy_pb2.PrivacyCost, field: str = "cost") -> Cost:
    mechanisms = {v: k for k, v in _MECHANISMS.items()}
    accountants = {v: k for k, v in _ACCOUNTANTS.items()}
    if message.mechanism not in mechanisms:
        raise InvalidInput(f"{field}.mechanism", "must be set")
    if not (math.isfinite(message.epsilon) and message.epsilon >= 0):
        raise InvalidInput(f"{field}.epsilon", "must be a finite number of at least 0")
    if not (math.isfinite(message.delta) and 0 <= message.delta < 1):
        raise InvalidInput(f"{field}.delta", "must be in [0, 1)")
    return Cost(message.epsilon, message.delta, mechanisms[message.mechanism], message.description,
                dict(message.parameters),
                tuple(privacy_cost_from_proto(c, f"{field}.components") for c in message.components),
                accountants.get(message.accountant, ""))


def budget_to_proto(budget: Budget) -> privacy_pb2.PrivacyBudget:
    return privacy_pb2.PrivacyBudget(epsilon=budget.epsilon, delta=budget.delta)


def budget_from_proto(message: privacy_pb2.PrivacyBudget, field: str) -> Budget | None:
    """A request's optional limit: unset (0, 0) is none."""
    if message.epsilon == 0 and message.delta == 0:
        return None
    if not (math.isfinite(message.epsilon) and message.epsilon > 0):
        raise InvalidInput(f"{field}.epsilon", "must be a positive number (leave epsilon and delta 0 for no limit)")
    if not (math.isfinite(message.delta) and 0 <= message.delta < 1):
        raise InvalidInput(f"{field}.delta", "must be in [0, 1)")
    return Budget(message.epsilon, message.delta)


def accountant_to_proto(name: str) -> int:
    """umbra.privacy.accountants' name -> PrivacyAccountant; unknown names are refused (ValueError)."""
    if name not in _ACCOUNTANTS:
        raise ValueError(f"unknown accountant {name!r}")
    return _ACCOUNTANTS[name]


def accountant_from_proto(value: int, field: str, *, allowed: tuple[str, ...], default: str) -> str:
    """PrivacyAccountant -> its name, one of `allowed` (UNSPECIFIED: `default`); anything else refused by field."""
    if value == privacy_pb2.PRIVACY_ACCOUNTANT_UNSPECIFIED:
        return default
    name = next((k for k, v in _ACCOUNTANTS.items() if v == value), None)
    if name not in allowed:
        raise InvalidInput(field, f"must be one of {', '.join(n.upper() for n in allowed)}")
    return name
