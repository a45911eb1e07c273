"""Policy-gradient objectives as pure tensor functions.

Shapes: per-token tensors are ``[B, T]`` with a ``mask`` of the completion tokens;
``advantages`` are per sequence ``[B]``.  Losses are token means over the mask.

- :func:`ppo_loss`: plain PPO, the ratio taken against the behaviour policy that
  sampled the tokens (stale for asynchronous rollouts).
- :func:`decoupled_loss`: AReaL's decoupled PPO: the clipped ratio is taken against
  a *proximal* policy (the weights just before this update), and the behaviour
  policy enters only through an importance weight ``pi_prox / pi_behav`` (no
  gradient through it); tokens whose weight exceeds ``cap`` are dropped.
- :func:`interpolate_proximal`: proximal log-probs without a forward pass, by
  log-linear interpolation between the behaviour and the current policy according
  to the versions involved.
- :func:`second_moment_mask`: the tokens to keep so that the mean squared log-ratio
  between the current and the behaviour policy stays under a bound, the largest
  ratios dropped first (as M2PO does for very stale samples).
- :func:`kl_estimate`: the per-token KL between the current policy and another one
  (a frozen reference, or the behaviour policy), from sampled tokens' log-probs.
"""

from __future__ import annotations

import torch


def group_advantages(rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """GRPO advantages: each reward minus its group's mean over the group's std.
    ``rewards`` is ``[groups, group_size]``; a group of equal rewards gets zeros."""
    mean = rewards.mean(dim=-1, keepdim=True)
    std = rewards.std(dim=-1, keepdim=True, unbiased=False)
    return (rewards - mean) / (std + eps)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over the tokens where ``mask`` is 1 (0 with none)."""
    return (values * mask).sum() / mask.sum().clamp(min=1)


def _clipped_surrogate(ratio: torch.Tensor, advantages: torch.Tensor, clip_eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    adv = advantages[:, None]
    unclipped = ratio * adv
    clipped = ratio.clamp(1 - clip_eps, 1 + clip_eps) * adv
    return torch.minimum(unclipped, clipped), (unclipped != clipped).float()


def ppo_loss(
    logprobs: torch.Tensor, behaviour: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip_eps: float = 0.2
) -> tuple[torch.Tensor, dict[str, float]]:
    """Plain PPO: ``-min(r A, clip(r) A)`` with ``r = pi / pi_behav``."""
    ratio = (logprobs - behaviour).exp()
    surrogate, clipped = _clipped_surrogate(ratio, advantages, clip_eps)
    loss = -masked_mean(surrogate, mask)
    return loss, {"clip_fraction": masked_mean(clipped, mask).item()}


def decoupled_loss(
    logprobs: torch.Tensor,
    proximal: torch.Tensor,
    behaviour: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
    cap: float = 5.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Decoupled PPO: ``-w * min(r A, clip(r) A)`` with ``r = pi / pi_prox`` and the
    behaviour weight ``w = pi_prox / pi_behav``.  As in AReaL, a token whose weight
    exceeds ``cap`` is dropped (``w = 0``): too far off-policy to correct."""
    ratio = (logprobs - proximal.detach()).exp()
    weight = (proximal - behaviour).detach().exp()
    capped = (weight > cap).float()
    weight = weight * (1 - capped)
    surrogate, clipped = _clipped_surrogate(ratio, advantages, clip_eps)
    loss = -masked_mean(weight * surrogate, mask)
    return loss, {
        "clip_fraction": masked_mean(clipped, mask).item(),
        "capped_fraction": masked_mean(capped, mask).item(),
        "behaviour_weight": masked_mean(weight, mask).item(),
    }


def interpolate_proximal(
    behaviour: torch.Tensor, current: torch.Tensor, versions: torch.Tensor, proximal_version: int, current_version: float
) -> torch.Tensor:
    """Log-linear interpolation of the proximal log-probs.

    A token sampled under version ``v_t`` has ``log pi_behav`` at ``v_t`` and
    ``log pi`` (``current``, detached) at ``current_version``; the proximal policy
    sits at ``proximal_version`` between them, so
    ``log pi_prox = log pi_behav + a (log pi - log pi_behav)`` with
    ``a = (proximal_version - v_t) / (current_version - v_t)``.  Where the two
    versions coincide, the token's own behaviour log-prob is used (``a = 0``).
    """
    versions = versions.to(behaviour.dtype)
    span = current_version - versions
    alpha = torch.where(span > 0, (proximal_version - versions) / span.clamp(min=1e-9), torch.zeros_like(span))
    return behaviour + alpha.clamp(0, 1) * (current.detach() - behaviour)


def kl_estimate(logprobs: torch.Tensor, other: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Masked mean of ``KL(pi || pi_other)`` per token from the sampled tokens'
    log-probs, by the unbiased, non-negative estimator ``exp(d) - d - 1`` with
    ``d = log pi_other - log pi`` (Schulman's k3); differentiable in ``logprobs``."""
    delta = other.detach() - logprobs
    return masked_mean(delta.exp() - delta - 1, mask)


def second_moment_mask(gap: torch.Tensor, mask: torch.Tensor, bound: float) -> torch.Tensor:
    """A 0/1 mask of the tokens of ``mask`` to keep so that the masked mean of
    ``gap ** 2`` (``gap``: a log-ratio per token, e.g. current minus behaviour
    log-prob) is at most ``bound``: the tokens with the largest squared gap are dropped
    first, as few as the bound allows (none when the mean is already under it).  Ties
    at the cut are dropped together.  No gradient flows through it."""
    squared = gap.detach().float() ** 2
    valid = mask > 0
    values = squared[valid]
    if values.numel() == 0:
        return mask.clone()
    ordered, _ = torch.sort(values)
    counts = torch.arange(1, ordered.numel() + 1, device=ordered.device, dtype=ordered.dtype)
    # the means of the k smallest grow with k: keep the longest prefix whose mean is in bound
    within = (ordered.cumsum(0) / counts) <= bound
    if not bool(within.any()):
        return torch.zeros_like(mask)
    kept = int(within.nonzero().max()) + 1
    cut = ordered[kept - 1]
    if kept < ordered.numel() and bool(ordered[kept] == cut):  # a tie at the cut: drop the tied tokens too
        below = ordered < cut
        if not bool(below.any()):
            return torch.zeros_like(mask)
        cut = ordered[below].max()
    return (valid & (squared <= cut)).to(mask.dtype)

