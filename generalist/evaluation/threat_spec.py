"""What a threat to evaluate is written as: a norm and a budget, with eps spelled as RobustBench spells it."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from generalist.errors import ConfigError
from generalist.threat import THREAT_NAMES, Threat, get_threat

# The budgets results are reported at (PAPER.md, RobustBench).
DEFAULT_EPS_TEXT = {"Linf": "8/255", "L2": "0.5", "L1": "12"}


def format_eps(eps: float) -> str:
    """A budget as reports write it: "8/255", "0.5", "12" (RobustBench's spelling)."""
    frac = Fraction(eps).limit_denominator(1000)
    if frac.denominator == 1:
        return str(frac.numerator)
    short = f"{eps:.6g}"
    if float(short) == eps and len(short) <= 6:
        return short
    if abs(float(frac) - eps) <= 1e-12 * max(1.0, abs(eps)):
        return f"{frac.numerator}/{frac.denominator}"
    return repr(eps)


def parse_eps(text: str, norm: str = "") -> float:
    """"8/255" -> 0.0313..., "0.5" -> 0.5; ConfigError unless a finite number > 0."""
    where = f" for {norm}" if norm else ""
    value: Any = None
    text = str(text).strip()
    match = re.fullmatch(r"([0-9.eE+-]+)\s*/\s*([0-9.eE+-]+)", text)
    try:
        if match:
            value = float(match.group(1)) / float(match.group(2))
        else:
            value = float(text)
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"eps{where} must be a number or a fraction like 8/255, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"eps{where} must be > 0, got {text!r}; write it as a fraction like 8/255")
    return value


@dataclass(frozen=True)
class ThreatSpec:
    """One threat model to evaluate: a norm as AutoAttack spells it and a budget eps > 0."""

    norm: str
    eps: float
    eps_text: str

    @classmethod
    def parse(cls, text: str) -> ThreatSpec:
        """"Linf" (default budget 8/255), "L2=1.0", "Linf=4/255"; names are case-insensitive."""
        name, _, eps_text = str(text).partition("=")
        eps_text = eps_text.strip()
        probe = get_threat(name.strip(), 1.0)  # ConfigError with close names for an unknown threat
        norm = probe.name
        if not eps_text:
            eps_text = DEFAULT_EPS_TEXT[norm]
        eps = parse_eps(eps_text, norm)
        return cls(norm, eps, eps_text if "/" in eps_text else format_eps(eps))

    def threat(self) -> Threat:
        return get_threat(self.norm, self.eps)


DEFAULT_THREATS = tuple(ThreatSpec.parse(name) for name in THREAT_NAMES)
