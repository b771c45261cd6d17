"""Fold a fitted :class:`~roadwork.policy.Policy` into the weights of a linear head.

The validator reads one probability per image and binarises it with ``round(p)``, so the deployed model must
emit ``p = sigmoid((z - z*) / s)`` (``z = z1 - z0`` the head's margin, ``z*`` the policy's
``decision_margin``, ``s`` its ``scale``): then ``p > 0.5`` exactly where the policy says roadwork. For a
linear head ``z = (W1 - W0) x + (b1 - b0)``, so the policy folds into the head:

    W0' = 0,    b0' = 0,    W1' = (W1 - W0) / s,    b1' = (b1 - b0 - z*) / s

gives ``z0' = 0`` and ``z1' = (z - z*) / s``: ``softmax(z')[1] = sigmoid(z1') = sigmoid((z - z*) / s)``.
With the "None" logit identically 0, a softmax over both logits and a sigmoid of the "Roadwork" logit give
the same probability, so the decision does not depend on which post-processing the image-classification
pipeline of a given transformers version applies (4.48 applies a sigmoid when a config names a
``problem_type``; the exported config names none). A Hugging Face ``*ForImageClassification`` model with
this classifier needs no custom code.

The exact-0.5 caveat. :meth:`Policy.apply` decides roadwork iff ``z > z*`` and nudges the float64
probability of the few ``z`` just above ``z*`` from 0.5 to the next float, so its ``p > 0.5`` equals the
decision everywhere. A folded model cannot do that nudge:

* at ``z == z*`` exactly, the softmax is exactly 0.5, which ``round()`` (round-half-to-even in Python, and
  ``p > 0.5`` anywhere) reads as *not* roadwork: the same as the policy (``z > z*`` is false);
* just above ``z*`` the folded logit difference ``d = (z - z*) / s`` is tiny and the float32 softmax the
  Hugging Face pipeline computes rounds to exactly 0.5 while ``d < ~1.25e-7`` (measured);
  and the float32 logits themselves carry rounding of a few ulps of their magnitude (the bias holds
  ``z* / s``), so ``d`` is only known to about ``1e-7 * (1 + |logits|)``.

So the folded model and the policy (and either of them and the exact real-number answer) can disagree only
for margins within about ``1e-6 * (1 + |logits|)`` of ``z*``: measured on 36,000 margins placed between
``1e-9`` and ``1e-2`` from ``z*`` (logits of order 1, four calibrators), every disagreement had
``|z - z*| < 1e-6``, and float64 folding agrees everywhere except at ``z == z*`` itself. The float32 head
margin our own pipeline computes carries the same rounding, so such an image sits on the decision boundary
where either answer is equally justified by the model.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from roadwork.models.head import HeadModel
from roadwork.policy.policy import Policy

__all__ = ["folded_classifier", "linear_layer"]


def linear_layer(head: HeadModel) -> nn.Linear:
    """The single ``Linear(D, 2)`` of a single-view linear head; ValueError for anything else.

    Raises:
        TypeError: ``head`` is not a :class:`HeadModel`.
        ValueError: the head was trained on more than one view (its image logits aggregate several views and
            cannot be one linear map of one feature vector), or it is an MLP head.
    """
    if not isinstance(head, HeadModel):
        raise TypeError(f"head must be a roadwork HeadModel, got {type(head).__name__}.")
    if head.num_views != 1 or head.pool is not None:
        raise ValueError(
            f"the head was trained on {head.num_views} views per image (multi-view aggregation); only a "
            "single-view head folds into a Hugging Face classifier. Train the model with embed.views=global "
            "to export it."
        )
    layers = [m for m in head.classifier if not isinstance(m, nn.Dropout)]
    if len(layers) != 1 or not isinstance(layers[0], nn.Linear):
        kinds = ", ".join(type(m).__name__ for m in head.classifier)
        raise ValueError(
            f"only a linear head (dropout + Linear(D, 2)) folds into a Hugging Face classifier; this head is "
            f"[{kinds}] (an MLP head or a feature transform). Train with train.head=linear and "
            "train.feature_transform=none to export it."
        )
    linear = layers[0]
    if linear.out_features != 2 or linear.in_features != head.feature_dim or linear.bias is None:
        raise ValueError(
            f"the head's linear layer must be Linear({head.feature_dim}, 2) with a bias, got "
            f"Linear({linear.in_features}, {linear.out_features}, bias={linear.bias is not None})."
        )
    return linear


def folded_classifier(head: HeadModel, policy: Policy) -> tuple[torch.Tensor, torch.Tensor]:
    """The 2-logit classifier whose softmax "Roadwork" probability is the policy's deployed probability.

    Args:
        head: a single-view linear :class:`HeadModel` (``embed.views=global``, ``train.head=linear``).
        policy: the fitted policy; its ``decision_margin`` z* must be finite.

    Returns:
        ``(weight [2, D], bias [2])`` as float64 CPU tensors (cast them to the model's dtype when loading):
        row 0 and bias 0 are zero, row 1 is ``(W1 - W0) / s`` and bias 1 ``(b1 - b0 - z*) / s``, so that for a
        feature vector ``x`` the "None" logit is 0 and ``softmax(weight @ x + bias)[1] ==
        sigmoid((weight @ x + bias)[1]) == sigmoid((z - z*) / s)`` with ``z`` the head's margin. See the
        module docstring for the float edge at ``z`` within about ``1e-6`` of ``z*``.

    Raises:
        TypeError: ``policy`` is not a :class:`Policy` (or ``head`` not a :class:`HeadModel`).
        ValueError: multi-view or MLP head (see :func:`linear_layer`), or an infinite ``decision_margin``.
    """
    linear = linear_layer(head)
    if not isinstance(policy, Policy):
        raise TypeError(f"policy must be a roadwork Policy, got {type(policy).__name__}.")
    z_star, scale = float(policy.decision_margin), float(policy.scale)
    if not math.isfinite(z_star):
        verdict = "never" if z_star > 0 else "always"
        raise ValueError(
            f"the policy's decision_margin is {z_star}: it {verdict} decides roadwork, whatever the image "
            "(the calibration split gave no threshold that beats a constant answer under its constraints, "
            "e.g. max_fnr or the FNR guarantee). A constant cannot be folded into finite classifier biases, "
            "and such a model scores MCC 0; recalibrate on more data or relax the constraints to export."
        )
    w = linear.weight.detach().to("cpu", torch.float64)
    b = linear.bias.detach().to("cpu", torch.float64)
    weight = torch.zeros_like(w)
    weight[1] = (w[1] - w[0]) / scale
    bias = torch.zeros_like(b)
    bias[1] = (b[1] - b[0] - z_star) / scale
    return weight.contiguous(), bias.contiguous()
