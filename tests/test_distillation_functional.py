"""Affinity KL (TinyCLIP / MobileCLIP) against the formula written out row by row, in float64."""

from __future__ import annotations

import math

import torch

from vlp.functional_distillation import affinity_kl


def reference(si, st, s_scale, ti, tt, t_scale):
    """KL(p_teacher || p_student) per row, with p = softmax(scale * cos) over the batch; mean over rows."""
    def cos(a, b):
        return [[float(torch.dot(x, y) / (x.norm() * y.norm())) for y in b] for x in a]

    def kl(teacher_row, student_row):
        def softmax(row):
            top = max(row)
            exps = [math.exp(v - top) for v in row]
            return [e / sum(exps) for e in exps]
        p, q = softmax(teacher_row), softmax(student_row)
        return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))

    s_i2t, t_i2t = cos(si, st), cos(ti, tt)
    s_t2i, t_t2i = cos(st, si), cos(tt, ti)
    n = len(si)
    i2t = sum(kl([t_scale * v for v in t_i2t[r]], [s_scale * v for v in s_i2t[r]]) for r in range(n)) / n
    t2i = sum(kl([t_scale * v for v in t_t2i[r]], [s_scale * v for v in s_t2i[r]]) for r in range(n)) / n
    return i2t, t2i


def test_affinity_kl_equals_the_formula_and_only_the_student_gets_gradients():
    torch.manual_seed(0)
    si, st = torch.randn(6, 5, dtype=torch.float64, requires_grad=True), torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    ti, tt = torch.randn(6, 7, dtype=torch.float64, requires_grad=True), torch.randn(6, 7, dtype=torch.float64, requires_grad=True)
    scale = torch.tensor(7.0, dtype=torch.float64, requires_grad=True)
    i2t, t2i = affinity_kl(si, st, scale, ti, tt, 20.0)
    expected = reference(si.detach(), st.detach(), 7.0, ti.detach(), tt.detach(), 20.0)
    assert abs(i2t.item() - expected[0]) < 1e-12 and abs(t2i.item() - expected[1]) < 1e-12
    (i2t + t2i).backward()
    assert ti.grad is None and tt.grad is None
    # The student's gradient: d/ds of KL = -sum p_t d log p_s; check it by central differences.
    def loss_at(x):
        a, b = affinity_kl(x, st.detach(), scale.detach(), ti.detach(), tt.detach(), 20.0)
        return (a + b).item()
    step = 1e-6
    for index in [(0, 0), (3, 2), (5, 4)]:
        plus, minus = si.detach().clone(), si.detach().clone()
        plus[index] += step
        minus[index] -= step
        assert abs((loss_at(plus) - loss_at(minus)) / (2 * step) - si.grad[index].item()) < 1e-7


def test_identical_student_and_teacher_give_zero():
    torch.manual_seed(1)
    images, texts = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    i2t, t2i = affinity_kl(images, texts, torch.tensor(10.0, dtype=torch.float64), images, texts, 10.0)
    assert abs(i2t.item()) < 1e-14 and abs(t2i.item()) < 1e-14


def test_self_distillation_loss_equals_dino_formula():
    from vlp.functional_distillation import self_distillation_loss, updated_center

    torch.manual_seed(2)
    students = [torch.randn(3, 5, dtype=torch.float64, requires_grad=True) for _ in range(4)]
    teachers = [torch.randn(3, 5, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    center = torch.randn(5, dtype=torch.float64)
    loss = self_distillation_loss(students, teachers, center, 0.1, 0.04)
    total = 0.0
    for t in teachers:
        for s in students:
            for row in range(3):
                shifted = [(float(t[row, k]) - float(center[k])) / 0.04 for k in range(5)]
                top = max(shifted)
                p = [math.exp(v - top) for v in shifted]
                p = [v / sum(p) for v in p]
                logits = [float(s[row, k]) / 0.1 for k in range(5)]
                log_z = max(logits) + math.log(sum(math.exp(v - max(logits)) for v in logits))
                total += -sum(p[k] * (logits[k] - log_z) for k in range(5))
    assert abs(loss.item() - total / (2 * 4 * 3)) < 1e-12
    loss.backward()
    assert all(t.grad is None for t in teachers) and all(s.grad is not None for s in students)
    expected_center = 0.9 * center + 0.1 * torch.cat(teachers).detach().mean(0)
    torch.testing.assert_close(updated_center(center, teachers, 0.9), expected_center, rtol=0, atol=1e-15)
