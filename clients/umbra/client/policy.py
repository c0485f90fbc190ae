"""A job's release policy from a YAML or JSON file, a dict, or a `ReleasePolicy` as it is.

    # policy.yaml
    max_reidentification: 0.05          # at most 5% of released faces re-identified
    max_adversary_advantage:            # per protected attribute: an attacker's advantage over chance
      gender: 0.10
    min_kept_utility:                   # per kept attribute: utility kept, as a share of the originals'
      skin_tone: 0.80
    max_epsilon: 20                     # the whole job's ε

    policy = load_policy("policy.yaml")             # a umbra.coordinator.v1.ReleasePolicy

Every limit is optional; a policy needs at least one. Unknown keys, values that are not numbers, and shares outside
[0, 1] are refused with a `PolicyError` naming the field (and the file). Whether an attribute is one the job
protects or keeps is checked with the job (`umbra.client.jobs.protection_job_spec`, and the coordinator again).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import yaml

from umbra.coordinator.v1 import job_service_pb2 as js

SHARES = ("max_reidentification", "max_adversary_advantage", "min_kept_utility")
FIELDS = ("max_reidentification", "max_adversary_advantage", "min_kept_utility", "max_epsilon")
YAML_SUFFIXES, JSON_SUFFIXES = (".yaml", ".yml"), (".json",)


class PolicyError(ValueError):
    """A policy that cannot be read or holds a bad value; `field` names it ("min_kept_utility.skin_tone")."""

    def __init__(self, message: str, *, field: str = "", source: str = ""):
        where = ": ".join(part for part in (source, field) if part)
        super().__init__(f"{where}: {message}" if where else message)
        self.field = field
        self.source = source


def load_policy(source: str | Path | dict | js.ReleasePolicy) -> js.ReleasePolicy:
    """A `ReleasePolicy` from a file path (YAML or JSON, by suffix, else by content), a dict, or a proto (copied);
    `PolicyError` naming the field and the file otherwise."""
    if isinstance(source, js.ReleasePolicy):
        policy = js.ReleasePolicy()
        policy.CopyFrom(source)
        check(policy)
        return policy
    if isinstance(source, dict):
        return policy_from_dict(source)
    if isinstance(source, (str, Path)):
        path = Path(source)
        return policy_from_dict(_read(path), source=str(path))
    raise PolicyError(f"a policy is a file path, a dict or a ReleasePolicy, not {type(source).__name__}")


def _read(path: Path):
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"cannot read the policy file: {exc}", source=str(path)) from None
    suffix = path.suffix.lower()
    as_json = suffix in JSON_SUFFIXES or (suffix not in YAML_SUFFIXES and text.lstrip().startswith("{"))
    try:
        return json.loads(text) if as_json else yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise PolicyError(f"is not valid JSON: {exc}", source=str(path)) from None
    except yaml.YAMLError as exc:
        raise PolicyError(f"is not valid YAML: {exc}", source=str(path)) from None


def _number(value, field: str, source: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PolicyError(f"must be a number, not {value!r}", field=field, source=source)
    number = float(value)
    if not math.isfinite(number):
        raise PolicyError(f"must be a finite number, not {value!r}", field=field, source=source)
    if field.split(".", 1)[0] in SHARES and not 0.0 <= number <= 1.0:
        raise PolicyError(f"{value!r} is not a share in [0, 1] (write 5% as 0.05)", field=field, source=source)
    if field == "max_epsilon" and number <= 0:
        raise PolicyError(f"{value!r} is not a positive number", field=field, source=source)
    return number


def policy_from_dict(data, *, source: str = "") -> js.ReleasePolicy:
    """A `ReleasePolicy` from a mapping (a file's content); `PolicyError` naming the field otherwise."""
    if not isinstance(data, dict):
        raise PolicyError(f"must be a mapping of limits ({', '.join(FIELDS)}), not {type(data).__name__}",
                          source=source)
    unknown = sorted(str(key) for key in data if key not in FIELDS)
    if unknown:
        raise PolicyError(f"is not a policy field (fields: {', '.join(FIELDS)})", field=unknown[0], source=source)
    policy = js.ReleasePolicy()
    for name in ("max_reidentification", "max_epsilon"):
        if data.get(name) is not None:
            setattr(policy, name, _number(data[name], name, source))
    for name in ("max_adversary_advantage", "min_kept_utility"):
        limits = data.get(name) or {}
        if not isinstance(limits, dict):
            raise PolicyError("must map attribute names to limits", field=name, source=source)
        for attribute, limit in limits.items():
            if not isinstance(attribute, str) or not attribute:
                raise PolicyError(f"{attribute!r} is not an attribute name", field=name, source=source)
            getattr(policy, name)[attribute] = _number(limit, f"{name}.{attribute}", source)
    if is_empty(policy):
        raise PolicyError(f"sets no limit; set at least one of {', '.join(FIELDS)}", source=source or "policy")
    return policy


def check(policy: js.ReleasePolicy, *, source: str = "") -> None:
    """The same checks on a proto built by hand."""
    policy_from_dict(policy_to_dict(policy), source=source)


def policy_to_dict(policy: js.ReleasePolicy) -> dict:
    """The policy as the mapping a file holds (unset limits left out)."""
    out: dict = {}
    if policy.HasField("max_reidentification"):
        out["max_reidentification"] = policy.max_reidentification
    if policy.max_adversary_advantage:
        out["max_adversary_advantage"] = dict(policy.max_adversary_advantage)
    if policy.min_kept_utility:
        out["min_kept_utility"] = dict(policy.min_kept_utility)
    if policy.HasField("max_epsilon"):
        out["max_epsilon"] = policy.max_epsilon
    return out


def is_empty(policy: js.ReleasePolicy) -> bool:
    return not policy_to_dict(policy)
