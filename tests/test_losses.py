"""Loss functions: hand-computed cases, identities, micro-batch × accumulation invariance.

(Chunked == unchunked scoring for every loss lives in tests/test_teacher.py, which has a model.)
"""

import math

import pytest
import torch

from train.losses import (
    AGG_MODES,
    LOSSES,
    active_span_mask,
    aggregate,
    all_token_opd_loss,
    call_loss,
    forward_kl,
    grpo_loss,
    grpo_token_loss,
    group_advantages,
    k3,
    kl_schedule,
    reverse_kl,
    skill_sd_loss,
    topk_forward_kl,
    topk_reverse_kl,
    trace_loss,
)

LN = math.log


def logits(*probs):
    return torch.log(torch.tensor([list(probs)], dtype=torch.float64))


# --------------------------------------------------------------------------- hand-computed


def test_group_advantages_by_hand():
    rewards = torch.tensor([1.0, 0.0, 2.0, 2.0, 5.0])
    groups = ["a", "a", "b", "b", "c"]
    # a: mean 0.5, population std 0.5 → ±0.5/(0.5+1e-6); b: std 0 → 0/(0+eps) = 0; c: alone → 0
    adv = group_advantages(rewards, groups)
    torch.testing.assert_close(adv, torch.tensor([0.5 / 0.500001, -0.5 / 0.500001, 0.0, 0.0, 0.0]))
    # Dr. GRPO: no division
    torch.testing.assert_close(group_advantages(rewards, groups, scale=False), torch.tensor([0.5, -0.5, 0.0, 0.0, 0.0]))
    # tensor ids work the same
    torch.testing.assert_close(group_advantages(rewards, torch.tensor([7, 7, 3, 3, 9])), adv)


def test_grpo_token_loss_by_hand_and_clip_bounds():
    lp = torch.tensor([[LN(1.5), LN(1.5), LN(0.5), LN(0.5)]], requires_grad=True)
    old = torch.zeros(1, 4)
    # r = 1.5, 1.5, 0.5, 0.5; per-token A via two sequences below
    g = grpo_token_loss(lp.expand(2, 4), old.expand(2, 4), torch.tensor([1.0, -1.0]))
    # A=+1: r=1.5 → −min(1.5, 1.28) = −1.28 ; r=0.5 → −min(0.5, 0.8) = −0.5
    # A=−1: r=1.5 → −min(−1.5, −1.28) = 1.5 ; r=0.5 → −min(−0.5, −0.8) = 0.8
    torch.testing.assert_close(g, torch.tensor([[-1.28, -1.28, -0.5, -0.5], [1.5, 1.5, 0.8, 0.8]]))
    # clip bounds: A>0 with r above 1+ε_hi, or A<0 with r below 1−ε_lo, pass no gradient
    (gA,) = torch.autograd.grad(grpo_token_loss(lp, old, torch.tensor([1.0])).sum(), lp)
    assert gA[0, 0] == 0 and gA[0, 2] != 0
    (gB,) = torch.autograd.grad(grpo_token_loss(lp, old, torch.tensor([-1.0])).sum(), lp)
    assert gB[0, 2] == 0 and gB[0, 0] != 0
    # r = 1 exactly: loss = −A
    assert grpo_token_loss(torch.zeros(1, 1), torch.zeros(1, 1), torch.tensor([2.0])).item() == -2.0


def test_aggregate_by_hand():
    v = torch.tensor([[1.0, 2.0, 3.0], [4.0, float("nan"), 0.0]])
    m = torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    assert aggregate(v, m, "token-mean").item() == pytest.approx(10 / 4)  # (1+2+3+4)/4
    assert aggregate(v, m, "seq-mean-token-mean").item() == pytest.approx((6 / 3 + 4 / 1) / 2)  # 3
    assert aggregate(v, m, "seq-mean-token-sum-norm").item() == pytest.approx(10 / (2 * 3))
    assert aggregate(v, m, "token-mean", num_tokens=8).item() == pytest.approx(10 / 8)
    with pytest.raises(ValueError, match="unknown mode"):
        aggregate(v, m, "sum")


def test_kls_by_hand():
    t, s = logits(0.5, 0.5), logits(0.25, 0.75)
    # forward: 0.5·ln(0.5/0.25) + 0.5·ln(0.5/0.75) = 0.5·ln(4/3) = 0.143841
    assert forward_kl(t, s).item() == pytest.approx(0.5 * LN(4 / 3), abs=1e-6)
    # reverse: 0.25·ln(0.25/0.5) + 0.75·ln(0.75/0.5) = −0.173287 + 0.304099 = 0.130812
    assert reverse_kl(t, s).item() == pytest.approx(0.25 * LN(0.5) + 0.75 * LN(1.5), abs=1e-6)
    # term clip 0.1: terms 0.346574 → 0.1 and −0.202733 → −0.1 (magnitudes capped) → 0
    assert forward_kl(t, s, term_clip=0.1).item() == pytest.approx(0.0, abs=1e-6)
    # terms under the cap are untouched: clip 0.5 leaves 0.143841
    assert forward_kl(t, s, term_clip=0.5).item() == pytest.approx(0.5 * LN(4 / 3), abs=1e-6)


@pytest.mark.parametrize("direction", ["forward", "reverse", "topk_forward", "topk_reverse"])
@pytest.mark.parametrize("clip", [None, 0.1, 0.01])
def test_clipped_kl_still_pulls_toward_the_teacher(direction, clip):
    """q = (½, ½), p = (¼, ¾): every KL form, clipped or not, must give a gradient whose descent
    step raises p(0) toward ½. A plain clamp (the old clip) kept only the forward KL's negative
    term, whose gradient −½(e_1 − p) = (+⅛, −⅛) lowered p(0) instead."""
    t = logits(0.5, 0.5)
    z = logits(0.25, 0.75).clone().requires_grad_(True)
    if direction == "forward":
        kl = forward_kl(t, z, term_clip=clip)
    elif direction == "reverse":
        kl = reverse_kl(t, z, term_clip=clip)
    elif direction == "topk_forward":
        kl = topk_forward_kl(torch.log_softmax(t, -1), torch.tensor([[0, 1]]), z, term_clip=clip)
    else:
        kl = topk_reverse_kl(t, z, k=2, term_clip=clip)
    kl.sum().backward()
    g = z.grad[0]
    assert g[0] < 0 < g[1]  # descent raises the under-weighted token 0 and lowers token 1
    if clip is not None:  # the cap binds here: no term's magnitude exceeds it
        assert abs(kl.item()) <= 2 * clip + 1e-6


def test_clip_forward_gradient_by_hand():
    t = logits(0.5, 0.5)
    z = logits(0.25, 0.75).clone().requires_grad_(True)
    forward_kl(t, z, term_clip=0.1).sum().backward()
    s0, s1 = 0.1 / (0.5 * LN(2)), 0.1 / (0.5 * LN(1.5))  # scales of the two capped terms
    p, e0, e1 = (torch.tensor(v, dtype=torch.float64) for v in ([0.25, 0.75], [1.0, 0.0], [0.0, 1.0]))
    want = -(s0 * 0.5 * (e0 - p) + s1 * 0.5 * (e1 - p))
    torch.testing.assert_close(z.grad[0], want, atol=1e-6, rtol=1e-5)


def test_topk_forward_kl_by_hand():
    s = logits(0.25, 0.25, 0.5)
    top_lp, top_id = torch.tensor([[LN(0.5)]]), torch.tensor([[0]])  # teacher q = (0.5, 0.3, 0.2), top-1 = id 0
    # no tail: 0.5·ln(0.5/0.25) = 0.346574
    assert topk_forward_kl(top_lp, top_id, s).item() == pytest.approx(0.5 * LN(2), abs=1e-6)
    # tail bucket: q_tail = 0.5, p_tail = 0.75 → + 0.5·ln(0.5/0.75) → 0.5·ln(4/3) = 0.143841
    assert topk_forward_kl(top_lp, top_id, s, tail=True).item() == pytest.approx(0.5 * LN(4 / 3), abs=1e-6)


def test_topk_reverse_kl_by_hand():
    t, s = logits(0.5, 0.3, 0.2), logits(0.25, 0.25, 0.5)
    # student top-1 is id 2: p=0.5, q=0.2 → 0.5·ln(0.5/0.2) = 0.458145
    assert topk_reverse_kl(t, s, 1).item() == pytest.approx(0.5 * LN(2.5), abs=1e-6)
    # teacher support {0}: 0.25·ln(0.25/0.5) = −0.173287
    out = topk_reverse_kl(torch.tensor([[LN(0.5)]]), s, teacher_ids_NK=torch.tensor([[0]]))
    assert out.item() == pytest.approx(0.25 * LN(0.5), abs=1e-6)


def test_schedule_and_active_mask_by_hand():
    assert [kl_schedule(s) for s in (0, 9, 10, 25, 40, 99)] == [0.5, 0.5, 0.5, 0.25, 0.0, 0.0]
    route = torch.tensor([[0, 1, 2], [0, 1, 2]])
    correct = torch.tensor([True, False])
    assert active_span_mask(route, correct).tolist() == [[False, True, False], [False, False, False]]
    assert active_span_mask(route, correct, key=False, error=True).tolist() == [[False, False, False], [False, False, True]]
    assert active_span_mask(route, correct, error=True).tolist() == [[False, True, False], [False, False, True]]


def test_trace_loss_by_hand():
    z = torch.zeros(1, 2)
    loss, m = trace_loss(
        logprobs_BT=z, old_logprobs_BT=z, advantages_B=torch.tensor([1.0]),
        response_mask_BT=torch.tensor([[True, True]]), span_mask_BT=torch.tensor([[True, False]]),
        span_kl_BT=torch.tensor([[0.4, float("nan")]]), kl_coef=0.25,
    )
    # r = 1, A = 1 → g = (−1, −1); w = 1 − 0.25/0.5 = 0.5 on the span token
    # pg = (0.5·(−1) + 1·(−1)) / 2 = −0.75 ; kl = 0.4 / |y|=2 = 0.2 ; loss = −0.75 + 0.25·0.2 = −0.70
    assert loss.item() == pytest.approx(-0.70)
    assert m["span_frac"] == 0.5 and m["kl_span_mean"] == pytest.approx(0.4) and isinstance(m["loss"], float)


def test_skill_sd_loss_by_hand():
    z = torch.zeros(1, 2)
    loss, m = skill_sd_loss(
        logprobs_BT=z, old_logprobs_BT=z, teacher_logprobs_BT=torch.tensor([[-LN(2), 0.0]]),
        advantages_B=torch.tensor([0.0]), response_mask_BT=torch.ones(1, 2, dtype=torch.bool), coef=0.001,
    )
    # ρ = 1; u = (ln2, 0) → k3 = (e^{−ln2} − 1 + ln2, 0) = (0.193147, 0); A = 0 → g = 0
    # loss = 0.001 · (0.193147 + 0)/2 = 9.65736e-5
    assert loss.item() == pytest.approx(0.001 * (0.5 - 1 + LN(2)) / 2)
    assert m["kl_sampled_k3"] == pytest.approx((0.5 - 1 + LN(2)) / 2)


# --------------------------------------------------------------------------- identities


def test_kl_of_a_distribution_with_itself_is_zero():
    x = torch.randn(5, 50)
    for fn in (forward_kl, reverse_kl):
        torch.testing.assert_close(fn(x, x), torch.zeros(5), atol=1e-6, rtol=0)
    lp = torch.log_softmax(x, -1)
    top = torch.topk(lp, 7, -1)
    torch.testing.assert_close(topk_forward_kl(top.values, top.indices, x, tail=True), torch.zeros(5), atol=1e-5, rtol=0)
    torch.testing.assert_close(topk_reverse_kl(x, x, 7), torch.zeros(5), atol=1e-6, rtol=0)
    assert (forward_kl(torch.randn(5, 50), x) >= 0).all() and (reverse_kl(torch.randn(5, 50), x) >= 0).all()


def test_topk_with_full_support_equals_full_kl():
    t, s = torch.randn(4, 30), torch.randn(4, 30)
    ids = torch.arange(30).expand(4, 30)
    torch.testing.assert_close(topk_forward_kl(torch.log_softmax(t, -1), ids, s), forward_kl(t, s))
    torch.testing.assert_close(topk_reverse_kl(t, s, 30), reverse_kl(t, s))
    # tail with K = V−1: the tail bucket is the one missing token, so again exact
    top = torch.topk(torch.log_softmax(t, -1), 29, -1)
    torch.testing.assert_close(topk_forward_kl(top.values, top.indices, s, tail=True), forward_kl(t, s), atol=1e-5, rtol=1e-4)


def test_topk_reverse_kl_gradient_is_full_gradient_restricted_to_k():
    torch.manual_seed(0)
    t = torch.randn(3, 20, dtype=torch.float64)
    s = torch.randn(3, 20, dtype=torch.float64, requires_grad=True)
    k = 5
    (g_topk,) = torch.autograd.grad(topk_reverse_kl(t, s, k).sum(), s)
    # Full reverse KL: ∇_z KL = Σ_v (log p_v − log q_v) ∇_z p_v, with ∂p_v/∂z_j = p_v(δ_vj − p_j).
    # Restricted to K: grad_j = p_j c_j 1[j∈K] − p_j Σ_{v∈K} c_v p_v, c_v = log p_v − log q_v.
    with torch.no_grad():
        logp, logq = torch.log_softmax(s, -1), torch.log_softmax(t, -1)
        p, c = logp.exp(), logp - logq
        inK = torch.zeros_like(p, dtype=torch.bool).scatter_(-1, torch.topk(logp, k, -1).indices, True)
        expected = p * c * inK - p * (c * p * inK).sum(-1, keepdim=True)
    torch.testing.assert_close(g_topk, expected)
    # and with K = V it is exactly autograd of the full reverse KL
    (g_full,) = torch.autograd.grad(reverse_kl(t, s).sum(), s)
    (g_all,) = torch.autograd.grad(topk_reverse_kl(t, s, 20).sum(), s)
    torch.testing.assert_close(g_all, g_full)
    # the plain truncated form (no stop-gradient) does NOT have that gradient
    logp_K = torch.log_softmax(s, -1).gather(-1, torch.topk(logp, k, -1).indices)
    logq_K = torch.log_softmax(t, -1).gather(-1, torch.topk(logp, k, -1).indices)
    (g_plain,) = torch.autograd.grad((logp_K.exp() * (logp_K - logq_K)).sum(), s)
    assert not torch.allclose(g_plain, expected)


def test_kl_coef_zero_is_exactly_grpo_and_opd_is_all_token_trace():
    torch.manual_seed(1)
    B, T = 3, 6
    lp = (torch.randn(B, T) * 0.1).requires_grad_()
    old, adv = torch.randn(B, T) * 0.1, torch.randn(B)
    mask = torch.rand(B, T) > 0.2
    span = torch.rand(B, T) > 0.5
    kl = torch.rand(B, T)
    for agg in AGG_MODES:
        ref, _ = grpo_loss(logprobs_BT=lp, old_logprobs_BT=old, advantages_B=adv, response_mask_BT=mask, agg=agg)
        got, _ = trace_loss(logprobs_BT=lp, old_logprobs_BT=old, advantages_B=adv, response_mask_BT=mask,
                            span_mask_BT=span, span_kl_BT=kl, kl_coef=0.0, agg=agg)
        assert torch.equal(got, ref)
        (g1,), (g2,) = torch.autograd.grad(ref, lp), torch.autograd.grad(got, lp)
        assert torch.equal(g1, g2)
    opd, _ = all_token_opd_loss(logprobs_BT=lp, old_logprobs_BT=old, advantages_B=adv, response_mask_BT=mask,
                                token_kl_BT=kl, kl_coef=0.3)
    tr, _ = trace_loss(logprobs_BT=lp, old_logprobs_BT=old, advantages_B=adv, response_mask_BT=mask,
                       span_mask_BT=mask, span_kl_BT=kl, kl_coef=0.3)
    assert torch.equal(opd, tr)
    # skill-SD with coef 0 is GRPO too
    sd, _ = skill_sd_loss(logprobs_BT=lp, old_logprobs_BT=old, teacher_logprobs_BT=kl, advantages_B=adv,
                          response_mask_BT=mask, coef=0.0)
    ref, _ = grpo_loss(logprobs_BT=lp, old_logprobs_BT=old, advantages_B=adv, response_mask_BT=mask)
    assert torch.equal(sd, ref)


def test_kl_coef_max_hands_all_span_weight_to_kl():
    # at λ = λ_max the span tokens carry no policy gradient at all
    lp = torch.zeros(1, 2, requires_grad=True)
    loss, _ = trace_loss(logprobs_BT=lp, old_logprobs_BT=torch.zeros(1, 2), advantages_B=torch.tensor([1.0]),
                         response_mask_BT=torch.ones(1, 2, dtype=torch.bool), span_mask_BT=torch.tensor([[True, False]]),
                         span_kl_BT=torch.zeros(1, 2), kl_coef=0.5, kl_coef_max=0.5)
    (g,) = torch.autograd.grad(loss, lp)
    assert g[0, 0] == 0 and g[0, 1] != 0


def test_skill_sd_gradient_at_old_policy_is_reverse_kl_policy_gradient():
    torch.manual_seed(2)
    B, T, V = 2, 5, 11
    z = torch.randn(B, T, V, dtype=torch.float64, requires_grad=True)  # student logits, θ
    ids = torch.randint(0, V, (B, T))
    lp = torch.log_softmax(z, -1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    old = lp.detach()  # θ = θ_old
    lq = torch.randn(B, T, dtype=torch.float64) - 2
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, 3:] = False
    coef = 0.001
    # A = 0 → GRPO part has zero gradient; only the Skill-SD term remains
    loss, _ = skill_sd_loss(logprobs_BT=lp, old_logprobs_BT=old, teacher_logprobs_BT=lq, advantages_B=torch.zeros(B),
                            response_mask_BT=mask, coef=coef)
    (g,) = torch.autograd.grad(loss, z, retain_graph=True)
    # expected: coef · (1/N) Σ_t (lp_t − lq_t) ∇lp_t
    surrogate = (((lp - lq).detach() * lp) * mask).sum() / mask.sum()
    (g_ref,) = torch.autograd.grad(coef * surrogate, z)
    torch.testing.assert_close(g, g_ref)


def test_k3_is_nonnegative_and_zero_at_zero():
    u = torch.linspace(-5, 5, 101)
    assert (k3(u) >= 0).all() and k3(torch.zeros(1)).item() == 0


# --------------------------------------------------------------------------- micro-batch invariance


def _inputs(seed=3, B=4, T=7):
    g = torch.Generator().manual_seed(seed)
    lp = (torch.randn(B, T, generator=g) * 0.3).double().requires_grad_()
    mask = torch.rand(B, T, generator=g) > 0.3
    mask[:, 0] = True
    return dict(
        logprobs_BT=lp,
        old_logprobs_BT=(torch.randn(B, T, generator=g) * 0.3).double(),
        advantages_B=torch.randn(B, generator=g).double(),
        response_mask_BT=mask,
        span_mask_BT=torch.rand(B, T, generator=g) > 0.5,
        span_kl_BT=torch.rand(B, T, generator=g).double(),
        token_kl_BT=torch.rand(B, T, generator=g).double(),
        teacher_logprobs_BT=(torch.randn(B, T, generator=g) * 0.3 - 1).double(),
        kl_coef=0.2,
        coef=0.01,
    )


@pytest.mark.parametrize("method", sorted(LOSSES))
@pytest.mark.parametrize("agg", AGG_MODES)
def test_micro_batch_accumulation_invariance(method, agg):
    inp = _inputs()
    full, _ = call_loss(method, agg=agg, **inp)
    (g_full,) = torch.autograd.grad(full, inp["logprobs_BT"])
    n_tok, n_seq = inp["response_mask_BT"].sum(), inp["response_mask_BT"].shape[0]
    total, g_acc = 0.0, torch.zeros_like(g_full)
    for sl in (slice(0, 1), slice(1, 4)):  # uneven micro-batches on purpose
        part = {k: (v[sl] if isinstance(v, torch.Tensor) else v) for k, v in inp.items()}
        lp = inp["logprobs_BT"].detach()[sl].clone().requires_grad_()
        part["logprobs_BT"] = lp
        loss, _ = call_loss(method, agg=agg, num_tokens=n_tok, num_seqs=n_seq, **part)
        (g,) = torch.autograd.grad(loss, lp)
        g_acc[sl] = g
        total = total + loss.detach()
    torch.testing.assert_close(total, full.detach())
    torch.testing.assert_close(g_acc, g_full)


def test_registry_and_call_loss():
    assert set(LOSSES) == {"grpo", "trace", "skill_sd", "opd"}
    with pytest.raises(ValueError, match="needs span_mask_BT"):
        call_loss("trace", logprobs_BT=torch.zeros(1, 1), old_logprobs_BT=torch.zeros(1, 1),
                  advantages_B=torch.zeros(1), response_mask_BT=torch.ones(1, 1, dtype=torch.bool),
                  span_kl_BT=torch.zeros(1, 1), kl_coef=0.1)
    with pytest.raises(ValueError, match="unknown loss method"):
        call_loss("ppo")
    _, m = call_loss("trace", **_inputs())
    assert all(isinstance(v, float) for v in m.values())


def test_bfloat16_inputs_reduce_in_float32():
    torch.manual_seed(4)
    t, s = torch.randn(3, 1000), torch.randn(3, 1000)
    for fn in (forward_kl, reverse_kl):
        out = fn(t.bfloat16(), s.bfloat16())
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, fn(t.bfloat16().float(), s.bfloat16().float()))
    inp = {k: (v.detach().bfloat16() if isinstance(v, torch.Tensor) and v.is_floating_point() else v) for k, v in _inputs().items()}
    loss, _ = call_loss("trace", **inp)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
