"""train_one_epoch, evaluate, the schedule and the metrics against hand-made equivalents."""

import math

import pytest
import torch
from torch import nn

from bagnet.train import TrainConfig, evaluate, topk_correct, train_one_epoch
from bagnet.train.metrics import classification_report
from bagnet.train.optim import build_scheduler, lr_factor


def _batches(x, y, size, skipped=0):
    return [(x[i : i + size], y[i : i + size], skipped) for i in range(0, len(x), size)]


def _linear(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 4))


def test_topk_correct_matches_naive():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 7, generator=g)
    targets = torch.randint(0, 7, (50,), generator=g)
    naive = []
    for k in (1, 3, 5, 9):
        hits = 0
        for row, t in zip(logits.tolist(), targets.tolist()):
            ranked = sorted(range(7), key=lambda j: -row[j])
            hits += t in ranked[:k]
        naive.append(hits)
    assert topk_correct(logits, targets, (1, 3, 5, 9)) == naive
    assert naive[-1] == 50  # k beyond the class count always hits


def test_accumulated_steps_equal_one_big_batch():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 3, 2, 2, generator=g), torch.randint(0, 4, (16,), generator=g)
    runs = []
    for batch, accum in ((8, 1), (4, 2), (2, 4)):
        model = _linear()
        opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
        stats = train_one_epoch(model, nn.CrossEntropyLoss(), opt, _batches(x, y, batch), torch.device("cpu"),
                                accum_steps=accum, progress=False)
        runs.append((model.state_dict(), stats))
    for sd, stats in runs[1:]:
        for k in sd:
            torch.testing.assert_close(sd[k], runs[0][0][k], rtol=1e-5, atol=1e-6)
        assert stats.images == 16


def test_train_one_epoch_reduces_loss_and_counts_skipped():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(32, 3, 2, 2, generator=g)
    y = x.flatten(1)[:, :4].argmax(1)  # learnable by a linear layer
    model = _linear()
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    crit = nn.CrossEntropyLoss()
    batches = [*_batches(x, y, 8, skipped=1), (torch.empty(0), torch.empty(0, dtype=torch.long), 8)]
    first = evaluate(model, crit, _batches(x, y, 8), torch.device("cpu"), progress=False)
    for _ in range(5):
        stats = train_one_epoch(model, crit, opt, batches, torch.device("cpu"), progress=False)
    after = evaluate(model, crit, _batches(x, y, 8), torch.device("cpu"), progress=False)
    assert stats.skipped == 4 + 8 and stats.images == 32
    assert after.loss < first.loss * 0.7 and after.top1 > first.top1
    naive_loss = nn.functional.cross_entropy(model(x), y).item()
    assert after.loss == pytest.approx(naive_loss, rel=1e-5)


def test_scheduler_warmup_then_cosine_by_hand():
    cfg = TrainConfig(lr=1.0, epochs=3, warmup_epochs=1, schedule="cosine", min_lr=0.1)
    model = _linear()
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr)
    sched = build_scheduler(opt, cfg, steps_per_epoch=4)  # 12 steps, 4 of warmup
    seen = []
    for _ in range(12):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    warm = [0.25, 0.5, 0.75, 1.0]
    cos = [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t / 8)) for t in range(8)]
    assert seen == pytest.approx(warm + cos)


def test_step_schedule_by_hand():
    cfg = TrainConfig(lr=1.0, epochs=5, schedule="step", step_size=2, gamma=0.5)
    assert [lr_factor(s, 50, 0, cfg, steps_per_epoch=10) for s in (0, 19, 20, 39, 40, 49)] == [1, 1, 0.5, 0.5, 0.25, 0.25]


def test_classification_report_matches_naive():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(40, 3, generator=g)
    targets = torch.randint(0, 3, (40,), generator=g)
    report = classification_report(logits, targets, ["a", "b", "c"])
    preds = logits.argmax(1).tolist()
    cm = [[0] * 3 for _ in range(3)]
    for t, p in zip(targets.tolist(), preds):
        cm[t][p] += 1
    assert report["confusion"] == cm
    assert report["top1"] == pytest.approx(100 * sum(cm[i][i] for i in range(3)) / 40)
    assert report["top5"] == 100.0
    for i, name in enumerate("abc"):
        assert report["per_class"][name]["top1"] == pytest.approx(100 * cm[i][i] / sum(cm[i]))
