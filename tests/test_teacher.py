"""Teacher/student scoring on a tiny random Qwen2: gathered == full logits, chunked == unchunked
for every loss, memory never holds [N, V] at once, teacher inputs align, copy/EMA refresh."""

import pytest
import torch
from tests.losses_fixtures import tiny_qwen2, tiny_tokenizer

from train.losses import LOSSES, call_loss, forward_kl, reverse_kl, topk_forward_kl
from train.scoring import pack_batch, rows_to_BT, score, span_kl
from train.teacher import Teacher, build_student_batch, build_teacher_batch, render_privileged

V = 512


@pytest.fixture(scope="module")
def model():
    return tiny_qwen2(V)


def _batches(seed=0):
    g = torch.Generator().manual_seed(seed)
    resp = [torch.randint(3, V, (n,), generator=g).tolist() for n in (9, 5, 7)]
    s_prompts = [torch.randint(3, V, (n,), generator=g).tolist() for n in (4, 6, 3)]
    t_prompts = [torch.randint(3, V, (n,), generator=g).tolist() for n in (11, 8, 13)]
    student, teacher = pack_batch(s_prompts, resp), pack_batch(t_prompts, resp)
    select = torch.rand(student.response_mask_BT.shape, generator=g) > 0.6
    return student, teacher, select


def _full_logprobs_BTV(model, batch):
    """The naive reference: full [B, L, V] logits, then pick the response positions."""
    logits = model(input_ids=batch.input_ids_BL, attention_mask=batch.attention_mask_BL).logits
    idx = batch.pred_pos_BT.unsqueeze(-1).expand(-1, -1, logits.shape[-1])
    return torch.log_softmax(logits.float(), -1).gather(1, idx)  # [B, T, V]


def test_gathered_scoring_equals_full_logits(model):
    student, _, select = _batches()
    with torch.no_grad():
        ref_BTV = _full_logprobs_BTV(model, student)
        sc = score(model, student, select_BT=select, topk=5, chunk_rows=4, entropy=True)
    m = student.response_mask_BT
    ref_lp = ref_BTV.gather(-1, student.response_ids_BT.unsqueeze(-1)).squeeze(-1) * m
    torch.testing.assert_close(sc.logprobs_BT, ref_lp, atol=1e-5, rtol=1e-5)
    ref_ent = -(ref_BTV.exp() * ref_BTV).sum(-1) * m
    torch.testing.assert_close(sc.entropy_BT, ref_ent, atol=1e-5, rtol=1e-5)
    sel = select & m
    torch.testing.assert_close(sc.full_logprobs_NV(chunk_rows=2), ref_BTV[sel], atol=1e-5, rtol=1e-5)
    top = torch.topk(ref_BTV[sel], 5, -1)
    torch.testing.assert_close(sc.topk_logprobs_NK, top.values, atol=1e-5, rtol=1e-5)
    assert torch.equal(sc.topk_ids_NK, top.indices)
    assert sc.hidden_NH.shape == (int(sel.sum()), 64)
    with torch.no_grad():
        only_spans = score(model, student, select_BT=select, token_logprobs=False)
    assert only_spans.logprobs_BT is None and torch.equal(only_spans.hidden_NH, sc.hidden_NH)


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_span_kl_matches_full_logits_kl_and_gradient(model, direction):
    student, teacher_b, select = _batches(1)
    teacher_model = tiny_qwen2(V, seed=5)
    sel = select & student.response_mask_BT
    # reference: full logits everywhere, then KL at the span rows
    model.zero_grad()
    s_ref = _full_logprobs_BTV(model, student)[sel]
    with torch.no_grad():
        t_ref = _full_logprobs_BTV(teacher_model, teacher_b)[sel]
    kl_fn = forward_kl if direction == "forward" else reverse_kl
    ref = kl_fn(t_ref, s_ref, 0.05)
    ref.sum().backward()
    g_ref = [p.grad.clone() for p in model.parameters()]
    # gathered and chunked
    model.zero_grad()
    with torch.no_grad():
        t = score(teacher_model, teacher_b, select_BT=select)
    s = score(model, student, select_BT=select, chunk_rows=3)
    got = span_kl(s, t, direction=direction, term_clip=0.05, chunk_rows=2)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)
    got.sum().backward()
    for p, g in zip(model.parameters(), g_ref):
        torch.testing.assert_close(p.grad, g, atol=1e-5, rtol=1e-4)


def test_span_kl_from_topk_only_teacher(model):
    """A top-k-only teacher (what vLLM returns) gives the top-k estimators."""
    student, teacher_b, select = _batches(2)
    teacher_model = tiny_qwen2(V, seed=6)
    with torch.no_grad():
        t = score(teacher_model, teacher_b, select_BT=select, topk=8)
        s = score(model, student, select_BT=select)
    t_topk_only = type(t)(logprobs_BT=t.logprobs_BT, response_mask_BT=t.response_mask_BT, select_BT=t.select_BT,
                          topk_logprobs_NK=t.topk_logprobs_NK, topk_ids_NK=t.topk_ids_NK)
    s_logits = s.head(s.hidden_NH)
    got = span_kl(s, t_topk_only, direction="forward", tail=True)
    ref = topk_forward_kl(t.topk_logprobs_NK, t.topk_ids_NK, s_logits, tail=True)
    torch.testing.assert_close(got, ref)
    # same as the transformers teacher asked for top-k
    torch.testing.assert_close(span_kl(s, t, direction="forward", topk=8, tail=True), ref, atol=1e-5, rtol=1e-5)


def _loss_inputs(model, teacher_model, chunk_rows):
    student, teacher_b, select = _batches(3)
    with torch.no_grad():
        t = score(teacher_model, teacher_b, select_BT=student.response_mask_BT, chunk_rows=chunk_rows)
    s = score(model, student, select_BT=student.response_mask_BT, chunk_rows=chunk_rows)
    kl_N = span_kl(s, t, direction="forward", chunk_rows=chunk_rows)
    kl_BT = rows_to_BT(kl_N, s.select_BT)
    B = student.response_mask_BT.shape[0]
    return dict(
        logprobs_BT=s.logprobs_BT, old_logprobs_BT=s.logprobs_BT.detach() - 0.05, advantages_B=torch.linspace(-1, 1, B),
        response_mask_BT=student.response_mask_BT, span_mask_BT=select, span_kl_BT=kl_BT, token_kl_BT=kl_BT,
        teacher_logprobs_BT=t.logprobs_BT, kl_coef=0.2, coef=0.01,
    )


@pytest.mark.parametrize("method", sorted(LOSSES))
def test_every_loss_chunked_equals_unchunked(model, method):
    teacher_model = tiny_qwen2(V, seed=7)
    results = []
    for chunk_rows in (2, 10_000):
        model.zero_grad()
        loss, _ = call_loss(method, **_loss_inputs(model, teacher_model, chunk_rows))
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (l1, g1), (l2, g2) = results
    torch.testing.assert_close(l1, l2, atol=1e-6, rtol=1e-5)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


def test_no_tensor_of_n_times_v_is_kept_for_backward(model):
    """Structural memory check: with checkpointed chunks, nothing saved for backward is bigger
    than one chunk of logits, however many rows are scored."""
    student, teacher_b, _ = _batches(4)
    chunk = 4
    biggest = [0]

    def pack(t):
        if t.dim() and t.shape[-1] == V:  # logits-like (parameters are [V, H] or smaller)
            biggest[0] = max(biggest[0], t.numel())
        return t

    with torch.no_grad():
        t = score(model, teacher_b, select_BT=student.response_mask_BT, chunk_rows=chunk)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        s = score(model, student, select_BT=student.response_mask_BT, chunk_rows=chunk)
        kl = span_kl(s, t, direction="reverse", chunk_rows=chunk)
        loss = s.logprobs_BT.sum() + kl.sum()
    loss.backward()
    n_rows = int(student.response_mask_BT.sum())
    assert n_rows > chunk and biggest[0] <= chunk * V  # the naive way saves n_rows · V


def test_teacher_inputs_align_on_response_tokens():
    tok = tiny_tokenizer()
    rows = [
        {"rollout_id": "r0", "prompt": "Compute (17 + 25) * 3.", "reference": "17 + 25 = 42\n42 * 3 = 126",
         "messages": [{"role": "user", "content": "Compute (17 + 25) * 3."}]},
        {"rollout_id": "r1", "prompt": "Compute 2 + 3.", "reference": "2 + 3 = 5", "error_type": "arithmetic",
         "skill": '{"success_analysis": "check each step", "golden_workflow": "one op per line"}'},
    ]
    resp = [tok("42 * 3 = 126", add_special_tokens=False)["input_ids"], tok("Answer: 5", add_special_tokens=False)["input_ids"]]
    tb = build_teacher_batch(tok, rows, resp, template="reference")
    sb = build_student_batch(tok, [r["prompt"] for r in rows], resp)
    assert torch.equal(tb.response_ids_BT, sb.response_ids_BT) and torch.equal(tb.response_mask_BT, sb.response_mask_BT)
    for b in (tb, sb):
        for i, r in enumerate(resp):
            n = len(r)
            # the token after each prediction position is the response token itself
            assert b.input_ids_BL[i, b.pred_pos_BT[i, :n] + 1].tolist() == r
    text0 = tok.decode(tb.input_ids_BL[0, : int(tb.pred_pos_BT[0, 0]) + 1])
    assert "reference solution" in text0 and "42 * 3 = 126" in text0 and text0.endswith("<|im_start|>assistant\n")
    assert "skill" not in text0
    assert "one op per line" in render_privileged(rows[1], "skill")
    assert "arithmetic" in render_privileged(rows[1], "error_type")
    with pytest.raises(ValueError, match="rollout r0"):
        render_privileged(rows[0], "error_type")


def test_teacher_copy_refresh_and_ema():
    student = tiny_qwen2(V, seed=1)
    copy_t, ema_t, live_t = Teacher(student, "copy", refresh_every=3), Teacher(student, "ema", ema_decay=0.9), Teacher(student, "live")
    assert live_t.model is student and copy_t.model is not student
    w0 = student.model.embed_tokens.weight.detach().clone()
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)  # an "optimizer step"
    assert not copy_t.update(1) and not copy_t.update(2)  # not yet: refresh every 3 steps
    torch.testing.assert_close(copy_t.model.model.embed_tokens.weight, w0)
    assert copy_t.update(3)
    torch.testing.assert_close(copy_t.model.model.embed_tokens.weight, w0 + 1)
    assert ema_t.update(1)  # θ_T ← 0.9·θ_T + 0.1·θ_S = w0 + 0.1
    torch.testing.assert_close(ema_t.model.model.embed_tokens.weight, w0 + 0.1)
    # teachers never build a graph and never hold gradients
    student_b, teacher_b, select = _batches()
    out = copy_t.score(teacher_b, select_BT=select, topk=3)
    assert not out.logprobs_BT.requires_grad and not any(p.requires_grad for p in copy_t.model.parameters())
    assert live_t.score(teacher_b).logprobs_BT.grad_fn is None and student.training == live_t.model.training
    with pytest.raises(ValueError, match="teacher mode"):
        Teacher(student, "frozen")


def test_readme_trace_step_end_to_end():
    """The README's TRACE step, as written, on a tiny model: loss is finite and gradients flow."""
    from train.losses import active_span_mask, call_loss, kl_schedule

    tok = tiny_tokenizer()
    policy = tiny_qwen2(len(tok), seed=3)
    rows = [{"prompt": "Compute 2 + 3.", "reference": "2 + 3 = 5"}, {"prompt": "Compute 4 * 2.", "reference": "4 * 2 = 8"}]
    resp = [tok("2 + 3 = 5", add_special_tokens=False)["input_ids"], tok("Answer: 9", add_special_tokens=False)["input_ids"]]
    student_batch = build_student_batch(tok, [r["prompt"] for r in rows], resp)
    teacher_batch = build_teacher_batch(tok, rows, resp, template="reference")
    T = student_batch.response_mask_BT.shape[1]
    route_BT = torch.ones(2, T, dtype=torch.long)
    correct_B = torch.tensor([True, False])
    teacher = Teacher(policy, mode="copy", refresh_every=10)
    span_BT = active_span_mask(route_BT, correct_B, key=True)
    s = score(policy, student_batch, select_BT=span_BT)
    t = teacher.score(teacher_batch, select_BT=span_BT, token_logprobs=False)
    kl_BT = rows_to_BT(span_kl(s, t, direction="forward", term_clip=0.05), s.select_BT)
    loss, metrics = call_loss("trace", logprobs_BT=s.logprobs_BT, old_logprobs_BT=s.logprobs_BT.detach(),
                              advantages_B=torch.tensor([1.0, -1.0]), response_mask_BT=s.response_mask_BT,
                              span_mask_BT=span_BT, span_kl_BT=kl_BT, kl_coef=kl_schedule(0),
                              num_tokens=s.response_mask_BT.sum(), num_seqs=2)
    loss.backward()
    assert torch.isfinite(loss) and policy.lm_head.weight.grad.abs().sum() > 0
    assert 0 < metrics["span_frac"] < 1 and metrics["kl_span_mean"] >= 0
