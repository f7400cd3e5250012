"""Threat models (Linf, L2, L1 eps-balls intersected with the [0, 1] box), spelled as AutoAttack spells them."""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from generalist.errors import ConfigError

__all__ = ["THREAT_NAMES", "Threat", "LinfThreat", "L2Threat", "L1Threat", "get_threat"]

THREAT_NAMES: tuple[str, ...] = ("Linf", "L2", "L1")

# Guards divisions by a per-example norm; far below any pixel-scale quantity.
_TINY = 1e-12


def _per_example(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Reshape a (B,) tensor so it broadcasts against x: (B, ...)."""
    return v.view(-1, *([1] * (x.dim() - 1)))


def _require_generator(generator: torch.Generator | None) -> torch.Generator:
    if not isinstance(generator, torch.Generator):
        # A silent fresh generator would make every call draw the same "random" start.
        raise ValueError(
            "random_init needs an explicit torch.Generator (e.g. torch.Generator().manual_seed(seed)); "
            f"got {generator!r}"
        )
    return generator


def _rand(shape: torch.Size, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """Uniform [0, 1) draws on the generator's device, moved to `like`: the same seed gives the same
    start whether x lives on CPU or GPU."""
    return torch.rand(shape, generator=generator, device=generator.device).to(like.device, like.dtype)


def _randn(shape: torch.Size, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    return torch.randn(shape, generator=generator, device=generator.device).to(like.device, like.dtype)


def _clip_to_box(delta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Shrink delta coordinatewise so that x + delta lies in [0, 1]; never increases any Lp norm."""
    return (x + delta).clamp(0.0, 1.0) - x


@dataclass(frozen=True)
class Threat:
    """An eps-ball of one norm around x, intersected with the image box [0, 1].

    Subclasses implement the four per-norm operations PGD needs; all are batched over the first
    dimension and treat every other dimension as one flat vector per example.
    """

    eps: float
    name: ClassVar[str] = ""

    def __post_init__(self) -> None:
        eps = self.eps
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps <= 0:
            raise ConfigError(f"eps must be > 0, got {eps!r}; write it as a fraction like 8/255")
        object.__setattr__(self, "eps", float(eps))

    def random_init(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """x: (B, ...) in [0, 1] -> delta (B, ...) with norm(delta) <= eps and x + delta in [0, 1].

        Draws only from `generator` (required), never from the global RNG.
        """
        _require_generator(generator)
        return _clip_to_box(self._sample_ball(x, generator), x)

    def _sample_ball(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def step(self, grad: torch.Tensor) -> torch.Tensor:
        """grad: (B, ...) -> steepest-ascent direction (B, ...) of unit norm per example (0 where grad is 0)."""
        raise NotImplementedError

    def project(self, delta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """delta, x: (B, ...), x in [0, 1] -> delta inside the eps-ball with x + delta in [0, 1]."""
        return _clip_to_box(self._project_ball(delta), x)

    def _project_ball(self, delta: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def norm(self, delta: torch.Tensor) -> torch.Tensor:
        """delta: (B, ...) -> (B,) per-example norm of this threat's kind."""
        raise NotImplementedError


@dataclass(frozen=True)
class LinfThreat(Threat):
    """max_i |delta_i| <= eps."""

    name: ClassVar[str] = "Linf"

    def _sample_ball(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return (2 * _rand(x.shape, generator, x) - 1) * self.eps

    def step(self, grad: torch.Tensor) -> torch.Tensor:
        return grad.sign()

    def _project_ball(self, delta: torch.Tensor) -> torch.Tensor:
        return delta.clamp(-self.eps, self.eps)

    def norm(self, delta: torch.Tensor) -> torch.Tensor:
        return delta.flatten(1).abs().amax(dim=1)


@dataclass(frozen=True)
class L2Threat(Threat):
    """||delta||_2 <= eps."""

    name: ClassVar[str] = "L2"

    def _sample_ball(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        # Uniform in the ball: Gaussian direction, radius eps * U^(1/d).
        direction = _randn(x.shape, generator, x)
        direction = direction / _per_example(self.norm(direction).clamp_min(_TINY), x)
        d = x[0].numel()
        radius = self.eps * _rand(x.shape[:1], generator, x) ** (1.0 / d)
        return direction * _per_example(radius, x)

    def step(self, grad: torch.Tensor) -> torch.Tensor:
        return grad / _per_example(self.norm(grad).clamp_min(_TINY), grad)

    def _project_ball(self, delta: torch.Tensor) -> torch.Tensor:
        scale = (self.eps / self.norm(delta).clamp_min(_TINY)).clamp(max=1.0)
        return delta * _per_example(scale, delta)

    def norm(self, delta: torch.Tensor) -> torch.Tensor:
        return delta.flatten(1).norm(p=2, dim=1)


@dataclass(frozen=True)
class L1Threat(Threat):
    """||delta||_1 <= eps.

    `l1_sparsity` is the fraction of coordinates a step moves: the largest |grad| ones, i.e. those
    above the 95th percentile for the default 0.05 (Tramer & Boneh 2019, SLIDE). A dense sign step
    would spend the whole L1 budget spreading mass thinly over every pixel.
    """

    l1_sparsity: float = 0.05
    name: ClassVar[str] = "L1"

    def __post_init__(self) -> None:
        super().__post_init__()
        s = self.l1_sparsity
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not (0 < s <= 1):
            raise ConfigError(f"l1_sparsity must be in (0, 1], e.g. 0.05 (top 5% of coordinates), got {s!r}")

    def _sample_ball(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        # Uniform in the L1 ball: the first d of d + 1 Exp(1) draws divided by their sum are uniform on
        # the solid simplex; random signs spread it over the orthants.
        b, d = x.shape[0], x[0].numel()
        e = -torch.log1p(-_rand(torch.Size((b, d + 1)), generator, x))  # Exp(1), finite since rand < 1
        magnitude = e[:, :d] / e.sum(dim=1, keepdim=True)
        sign = torch.where(_rand(torch.Size((b, d)), generator, x) < 0.5, -1.0, 1.0).to(x.dtype)
        return (self.eps * magnitude * sign).view_as(x)

    def step(self, grad: torch.Tensor) -> torch.Tensor:
        g = grad.flatten(1)
        k = max(1, int(round(self.l1_sparsity * g.shape[1])))
        top = g.abs().topk(k, dim=1).indices
        direction = torch.zeros_like(g).scatter_(1, top, g.gather(1, top).sign())
        # Normalise by the count of non-zero entries so the step has L1 norm exactly 1 (0 for zero grad).
        direction = direction / direction.abs().sum(dim=1, keepdim=True).clamp_min(1.0)
        return direction.view_as(grad)

    def _project_ball(self, delta: torch.Tensor) -> torch.Tensor:
        return project_l1_ball(delta, self.eps)

    def norm(self, delta: torch.Tensor) -> torch.Tensor:
        return delta.flatten(1).abs().sum(dim=1)


def project_l1_ball(delta: torch.Tensor, eps: float) -> torch.Tensor:
    """Exact Euclidean projection of each example onto {||v||_1 <= eps} (Duchi et al. 2008, sort-based).

    delta: (B, ...) -> (B, ...). Examples already inside the ball are returned unchanged.
    """
    v = delta.flatten(1)
    abs_v = v.abs()
    # Computed for every row and selected with torch.where: no data-dependent branch, no GPU sync.
    outside = abs_v.sum(dim=1) > eps
    u = abs_v.sort(dim=1, descending=True).values
    cssv = u.cumsum(dim=1)
    j = torch.arange(1, v.shape[1] + 1, device=v.device, dtype=v.dtype)
    # rho = largest j with u_j > (sum_{i<=j} u_i - eps) / j; the condition holds on a prefix.
    # Taking the largest true index (not the count) stays right if rounding breaks the prefix.
    cond = u * j > cssv - eps
    rho = (cond * torch.arange(1, v.shape[1] + 1, device=v.device)).amax(dim=1).clamp_min(1)
    theta = ((cssv.gather(1, (rho - 1).unsqueeze(1)) - eps) / rho.unsqueeze(1).to(v.dtype)).clamp_min(0)
    w = v.sign() * (abs_v - theta).clamp_min(0)
    # Float rounding can leave the sum a few ulps above eps; shrink those rows the last bit.
    norm = w.abs().sum(dim=1, keepdim=True)
    w = torch.where(norm > eps, w * (eps / norm) * (1 - 1e-6), w)
    return torch.where(outside.unsqueeze(1), w, v).view_as(delta)


_THREATS: dict[str, type[Threat]] = {cls.name.lower(): cls for cls in (LinfThreat, L2Threat, L1Threat)}


def get_threat(name: str, eps: float) -> Threat:
    """Threat model by AutoAttack name ("Linf", "L2", "L1"; case-insensitive) and budget eps > 0.

    eps is in pixel units of x in [0, 1], written as a fraction: get_threat("Linf", 8/255).
    """
    cls = _THREATS.get(name.lower()) if isinstance(name, str) else None
    if cls is None:
        # Match case-insensitively, but suggest the AutoAttack spelling.
        close = difflib.get_close_matches(str(name).lower(), list(_THREATS), n=3, cutoff=0.3)
        close = [_THREATS[c].name for c in close]
        hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""
        raise ConfigError(f"unknown threat model {name!r}; {hint}valid names: {', '.join(THREAT_NAMES)}")
    return cls(eps)
