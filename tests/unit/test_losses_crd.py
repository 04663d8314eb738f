"""CRD (Tian et al. 2020): NCE loss by hand, bank updates, sampling, exact resume."""

import copy
import math

import pytest
import torch

from distill.errors import ConfigError
from distill.losses.base import StepOutputs
from distill.losses.crd import (
    ContrastiveRepresentationKD,
    momentum_update,
    nce_loss,
    sample_negatives,
)

NUM_DATA = 12
STUDENT_SHAPE = torch.Size([4, 2, 3])  # flattened to 6
TEACHER_SHAPE = torch.Size([4, 5])


def make_term(**kwargs):
    settings = {"feat_dim": 4, "num_negatives": 5, "seed": 3, **kwargs}
    term = ContrastiveRepresentationKD(student="s", teacher="t", **settings)
    term.build({"s": STUDENT_SHAPE}, {"t": TEACHER_SHAPE}, NUM_DATA)
    return term


def make_data(seed=0):
    generator = torch.Generator().manual_seed(seed)
    student = torch.randn(NUM_DATA, 2, 3, generator=generator)
    teacher = torch.randn(NUM_DATA, 5, generator=generator)
    return student, teacher


def outputs_for(indices, student, teacher):
    return StepOutputs(
        student_logits=torch.zeros(len(indices), 3),
        targets=torch.zeros(len(indices), dtype=torch.long),
        teacher_logits=torch.zeros(len(indices), 3),
        student_features={"s": student[indices]},
        teacher_features={"t": teacher[indices]},
        indices=indices,
    )


def hand_nce(anchor, positive, negatives, temperature, num_data):
    noise = len(negatives) / num_data

    def h(a, b):
        e = math.exp(sum(x * y for x, y in zip(a, b, strict=True)) / temperature)
        return e / (e + noise)

    return -(math.log(h(anchor, positive)) + sum(math.log(1 - h(anchor, n)) for n in negatives))


def unit(x, y):
    norm = math.hypot(x, y)
    return [x / norm, y / norm]


def test_nce_loss_matches_hand_computation():
    anchors = [unit(1.0, 0.0), unit(0.6, -0.8)]
    positives = [unit(0.8, 0.6), unit(1.0, -1.0)]
    negatives = [[unit(-1.0, 0.2), unit(0.0, 1.0)], [unit(0.3, 0.4), unit(-0.5, -0.5)]]
    temperature, num_data = 0.5, 10
    expected = sum(
        hand_nce(a, p, n, temperature, num_data)
        for a, p, n in zip(anchors, positives, negatives, strict=True)
    ) / len(anchors)
    value = nce_loss(
        torch.tensor(anchors, dtype=torch.float64),
        torch.tensor(positives, dtype=torch.float64),
        torch.tensor(negatives, dtype=torch.float64),
        temperature,
        num_data,
    )
    assert value.item() == pytest.approx(expected, rel=1e-12)


def test_momentum_update_follows_the_formula():
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    momentum_update(bank, torch.tensor([2, 0]), torch.tensor([[0.0, 1.0], [0.0, -1.0]]), 0.25)
    row2 = unit(0.25 * 0.6 + 0.75 * 0.0, 0.25 * 0.8 + 0.75 * 1.0)
    row0 = unit(0.25 * 1.0, 0.75 * -1.0)
    expected = torch.tensor([row0, [0.0, 1.0], row2])
    assert torch.allclose(bank, expected, atol=1e-7)


def test_term_updates_banks_with_its_embeddings():
    term = make_term(momentum=0.5)
    student, teacher = make_data()
    indices = torch.tensor([1, 7, 4])
    old_student_bank, old_teacher_bank = term.student_bank.clone(), term.teacher_bank.clone()
    term(outputs_for(indices, student, teacher))
    with torch.no_grad():
        s_emb = torch.nn.functional.normalize(term.student_head(student[indices].flatten(1)))
        t_emb = torch.nn.functional.normalize(term.teacher_head(teacher[indices]))
    expected_student = old_student_bank.clone()
    expected_student[indices] = torch.nn.functional.normalize(
        0.5 * old_student_bank[indices] + 0.5 * s_emb
    )
    expected_teacher = old_teacher_bank.clone()
    expected_teacher[indices] = torch.nn.functional.normalize(
        0.5 * old_teacher_bank[indices] + 0.5 * t_emb
    )
    assert torch.allclose(term.student_bank, expected_student, atol=1e-6)
    assert torch.allclose(term.teacher_bank, expected_teacher, atol=1e-6)
    assert int(term.sampling_step) == 1


def test_negatives_never_include_the_positive_and_cover_the_rest():
    positives = torch.arange(4).repeat(50)  # 200 anchors over a 4-sample dataset
    negatives = sample_negatives(positives, 30, 4, torch.Generator().manual_seed(0))
    assert negatives.shape == (200, 30)
    assert not (negatives == positives.unsqueeze(1)).any()
    for positive in range(4):
        drawn = set(negatives[positives == positive].flatten().tolist())
        assert drawn == set(range(4)) - {positive}


def test_num_negatives_is_capped_at_dataset_size_minus_one():
    term = make_term(num_negatives=4096)
    assert term.effective_num_negatives == NUM_DATA - 1
    assert term.draw_negatives(torch.tensor([0, 5])).shape == (2, NUM_DATA - 1)


def test_loss_decreases_when_heads_train():
    torch.manual_seed(0)
    term = make_term(temperature=0.5, num_negatives=6)
    student, teacher = make_data()
    optimizer = torch.optim.Adam(term.parameters(), lr=0.05)
    indices = torch.arange(NUM_DATA)
    losses = []
    for _ in range(40):
        loss = term(outputs_for(indices, student, teacher))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5


def test_banks_and_step_are_buffers_in_the_state_dict():
    term = make_term()
    state = term.state_dict()
    assert state["student_bank"].shape == (NUM_DATA, 4)
    assert state["teacher_bank"].shape == (NUM_DATA, 4)
    assert "sampling_step" in state
    assert torch.allclose(state["student_bank"].norm(dim=1), torch.ones(NUM_DATA))
    parameter_names = {name for name, _ in term.named_parameters()}
    assert not {"student_bank", "teacher_bank", "sampling_step"} & parameter_names
    assert {"student_head.weight", "teacher_head.weight"} <= parameter_names


def run_steps(term, optimizer, batches, student, teacher):
    losses, negatives = [], []
    for indices in batches:
        negatives.append(term.draw_negatives(indices))
        loss = term(outputs_for(indices, student, teacher))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses, negatives


def test_same_seed_same_losses_and_resume_is_exact():
    student, teacher = make_data()
    batches = [torch.tensor(b) for b in ([0, 3, 5], [7, 1, 2], [11, 4, 9], [6, 8, 10])]

    torch.manual_seed(1)
    first = make_term()
    torch.manual_seed(1)
    twin = make_term()
    first_losses, first_negatives = run_steps(
        first, torch.optim.SGD(first.parameters(), lr=0.1), batches, student, teacher
    )
    twin_losses, _ = run_steps(
        twin, torch.optim.SGD(twin.parameters(), lr=0.1), batches, student, teacher
    )
    assert first_losses == twin_losses

    torch.manual_seed(1)
    interrupted = make_term()
    optimizer = torch.optim.SGD(interrupted.parameters(), lr=0.1)
    run_steps(interrupted, optimizer, batches[:2], student, teacher)
    checkpoint = copy.deepcopy(interrupted.state_dict())

    torch.manual_seed(99)  # different head initialization, replaced by the checkpoint
    resumed = make_term()
    resumed.load_state_dict(checkpoint)
    resumed_losses, resumed_negatives = run_steps(
        resumed, torch.optim.SGD(resumed.parameters(), lr=0.1), batches[2:], student, teacher
    )
    assert resumed_losses == first_losses[2:]
    for resumed_batch, first_batch in zip(resumed_negatives, first_negatives[2:], strict=True):
        assert torch.equal(resumed_batch, first_batch)
    assert not torch.equal(first_negatives[2], first_negatives[3])


def test_eval_mode_leaves_banks_and_step_alone():
    term = make_term().eval()
    student, teacher = make_data()
    bank = term.student_bank.clone()
    term(outputs_for(torch.tensor([0, 1]), student, teacher))
    assert torch.equal(term.student_bank, bank)
    assert int(term.sampling_step) == 0


def test_missing_indices_raise_a_clear_error():
    term = make_term()
    student, teacher = make_data()
    outputs = outputs_for(torch.tensor([0, 1]), student, teacher)
    outputs.indices = None
    with pytest.raises(RuntimeError, match="dataset indices"):
        term(outputs)
    assert ContrastiveRepresentationKD.requires_indices


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"temperature": 0}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"feat_dim": 0}, "feat_dim"),
        ({"num_negatives": 0}, "num_negatives"),
        ({"momentum": 1.0}, "momentum"),
        ({"momentum": -0.1}, "momentum"),
        ({"weight": -1}, "weight"),
        ({"student": ["a", "b"]}, "student"),
    ],
)
def test_bad_settings_name_the_field(settings, field):
    arguments = {"student": "s", "teacher": "t", **settings}
    with pytest.raises(ConfigError) as error:
        ContrastiveRepresentationKD(**arguments)
    assert error.value.field == field


def test_first_batch_normalizer_starts_the_loss_at_the_uniform_critic_value():
    # With nearly equal scores (large T) and Z fixed from the first batch, h = 1 / (K + 1) for
    # every pair: per direction -log h(pos) - K log(1 - h(neg)) = log(K + 1) + K log(1 + 1/K).
    term = make_term(temperature=1000.0)
    student, teacher = make_data()
    indices = torch.tensor([0, 1, 2])
    loss = term(outputs_for(indices, student, teacher))
    k = term.effective_num_negatives
    expected = 2 * (math.log(k + 1) + k * math.log(1 + 1 / k))
    assert loss.item() == pytest.approx(expected, rel=1e-3)
    assert not torch.isnan(term.log_normalizer).any()
    assert "log_normalizer" in dict(term.named_buffers())
