"""A stopped LoRA warm-up resumes from its last saved point with the result of an unbroken run."""

from __future__ import annotations

import json
import time

import pandas as pd
import pytest

from thresher.train import progress as progress_mod
from thresher.train import warmup as warmup_mod
from thresher.train.progress import Progress, WarmupMismatch
from thresher.train.warmup import warmup_lora

pytest.importorskip("peft")
safetensors_torch = pytest.importorskip("safetensors.torch")

POOL = pd.DataFrame(
    {
        "id": [f"r{i}" for i in range(20)],
        "instruction": [f"Add {i} and {i % 7}." for i in range(20)],
        "input": [""] * 20,
        "output": [str(i + i % 7) for i in range(20)],
    }
)
# 20 rows, batches of 3: 7 steps an epoch, 21 in all
KW = dict(fraction=1.0, epochs=3, lr=5e-3, r=4, alpha=8, targets=["q_proj", "v_proj"], batch_size=3,
          max_length=128, template="plain", seed=1)  # fmt: skip


class Stop(Exception):
    pass


@pytest.fixture(scope="module")
def lm():
    from thresher.models import tiny_causal_lm

    return tiny_causal_lm(seed=2, tokenizer="bytes", hidden=32, layers=2, heads=4, kv_heads=2, intermediate=64)


@pytest.fixture(scope="module")
def unbroken(lm, tmp_path_factory):
    return warmup_lora(POOL, lm, tmp_path_factory.mktemp("ref") / "w", checkpoint_s=0, log=lambda _m: None, **KW)


def _stop_at(monkeypatch, n: int, exc: type = Stop) -> None:
    """The n-th training batch (1-based) raises ``exc`` before its optimizer step."""
    real, calls = warmup_mod._batch_loss, [0]

    def loss(*a, **k):
        calls[0] += 1
        if calls[0] == n:
            raise exc(f"stopped at batch {n}")
        return real(*a, **k)

    monkeypatch.setattr(warmup_mod, "_batch_loss", loss)


def _state(res) -> dict:
    """Every checkpoint's LoRA weights and Adam moments, and the epochs' mean learning rates and losses."""
    out = {"lr_mean": res.lrs, "loss_mean": res.losses}
    for ck in res.checkpoints:
        for f in ("adapter.safetensors", "optimizer.safetensors"):
            out.update({f"{ck.name}/{f}/{k}": v for k, v in safetensors_torch.load_file(str(ck / f)).items()})
    return out


def _assert_same(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for k, v in want.items():
        if isinstance(v, list):
            assert got[k] == v, k  # exact floats
        else:
            assert got[k].dtype == v.dtype and bool((got[k] == v).all()), k


def _stopped(lm, out, monkeypatch, n: int, **kw) -> None:
    with monkeypatch.context() as m:
        _stop_at(m, n)
        with pytest.raises(Stop):
            warmup_lora(POOL, lm, out, log=lambda _m: None, **{**KW, **kw})


@pytest.mark.parametrize("stop", [5, 12, 21])
def test_stopped_part_way_resumes_to_the_unbroken_result(lm, unbroken, tmp_path, monkeypatch, stop):
    monkeypatch.setattr(progress_mod, "SAVE_COST_FACTOR", 0.0)  # save after every step
    out = tmp_path / "w"
    _stopped(lm, out, monkeypatch, stop, checkpoint_s=1e-9)
    rec = json.loads((out / "progress.json").read_text())
    assert rec["folder"] == f"progress-{stop - 1}" and rec["point"]["step"] == stop - 1
    assert sorted(p.name for p in out.glob("progress-*")) == [f"progress-{stop - 1}"]  # older ones swept
    logs: list = []
    res = warmup_lora(POOL, lm, out, checkpoint_s=1e-9, log=logs.append, **KW)
    epoch = (stop - 1) // 7 + 1
    assert logs[0] == f"warmup: resumed at epoch {epoch}, step {stop - 1} of 21 (saved in progress-{stop - 1})"
    _assert_same(_state(res), _state(unbroken))
    assert not (out / "progress.json").exists() and not list(out.glob("progress-*"))
    assert json.loads((out / "warmup.json").read_text())["train_ids"] == unbroken.meta["train_ids"]


def test_without_part_way_saves_resumes_from_the_last_epoch(lm, unbroken, tmp_path, monkeypatch):
    out = tmp_path / "w"
    _stopped(lm, out, monkeypatch, 12, checkpoint_s=0)
    assert not list(out.glob("progress-*"))
    assert json.loads((out / "progress.json").read_text())["folder"] == "checkpoint-1"
    logs: list = []
    res = warmup_lora(POOL, lm, out, checkpoint_s=0, log=logs.append, **KW)
    assert logs[0] == "warmup: resumed at epoch 2, step 7 of 21 (saved in checkpoint-1)"
    assert len([m for m in logs if m.startswith("warmup: epoch")]) == 2  # epochs 2 and 3 only
    _assert_same(_state(res), _state(unbroken))


def test_stopped_before_any_save_starts_over(lm, unbroken, tmp_path, monkeypatch):
    out = tmp_path / "w"
    _stopped(lm, out, monkeypatch, 4, checkpoint_s=0)
    assert not (out / "progress.json").exists()
    logs: list = []
    res = warmup_lora(POOL, lm, out, checkpoint_s=0, log=logs.append, **KW)
    assert not any("resumed" in m for m in logs)
    _assert_same(_state(res), _state(unbroken))


def test_other_options_or_rows_do_not_resume_and_keep_the_stopped_run(lm, unbroken, tmp_path, monkeypatch):
    monkeypatch.setattr(progress_mod, "SAVE_COST_FACTOR", 0.0)
    out = tmp_path / "w"
    _stopped(lm, out, monkeypatch, 9, checkpoint_s=1e-9)
    before = (out / "progress.json").read_bytes()
    with pytest.raises(WarmupMismatch, match=r"other lr; rerun it with the same"):
        warmup_lora(POOL, lm, out, log=lambda _m: None, **{**KW, "lr": 1e-3})
    edited = POOL.copy()
    edited.loc[3, "output"] = "seven"
    with pytest.raises(WarmupMismatch, match=r"other rows;"):
        warmup_lora(edited, lm, out, log=lambda _m: None, **KW)
    with pytest.raises(WarmupMismatch, match=r"other epochs, rows;"):
        warmup_lora(edited, lm, out, log=lambda _m: None, **{**KW, "epochs": 2})
    assert (out / "progress.json").read_bytes() == before and (out / "progress-8").is_dir()
    res = warmup_lora(POOL, lm, out, checkpoint_s=1e-9, log=lambda _m: None, **KW)
    _assert_same(_state(res), _state(unbroken))
    with pytest.raises(FileExistsError):  # a finished run is never resumed or overwritten
        warmup_lora(POOL, lm, out, log=lambda _m: None, **KW)


def test_part_way_saves_wait_for_the_interval_and_20x_their_own_cost(tmp_path):
    prog = Progress(tmp_path, {}, checkpoint_s=10.0)
    prog.last = time.monotonic() - 5
    assert not prog.due()
    prog.last = time.monotonic() - 11
    assert prog.due()
    prog.cost = 1.0  # a save took a second: the next one waits 20 s
    assert not prog.due()
    prog.last = time.monotonic() - 21
    assert prog.due()
    assert not Progress(tmp_path, {}, checkpoint_s=0).due()


def test_a_negative_interval_is_refused(lm, tmp_path):
    with pytest.raises(ValueError, match=r"checkpoint_s: expected a number of seconds >= 0"):
        warmup_lora(POOL, lm, tmp_path / "w", checkpoint_s=-1, log=lambda _m: None, **KW)
    assert not (tmp_path / "w").exists()


def test_unreadable_progress_file_starts_over(lm, unbroken, tmp_path, monkeypatch):
    monkeypatch.setattr(progress_mod, "SAVE_COST_FACTOR", 0.0)
    out = tmp_path / "w"
    _stopped(lm, out, monkeypatch, 9, checkpoint_s=1e-9)
    (out / "progress-8" / "optimizer.safetensors").unlink()  # the folder it names lost a file
    logs: list = []
    res = warmup_lora(POOL, lm, out, checkpoint_s=0, log=logs.append, **KW)
    assert not any("resumed" in m for m in logs)
    _assert_same(_state(res), _state(unbroken))


def test_cli_warmup_resumes_a_stopped_run(lm, tmp_path, monkeypatch, capsys):
    from thresher.cli.main import main

    mdir = tmp_path / "model"
    lm.model.save_pretrained(mdir)
    lm.tokenizer.save_pretrained(mdir)
    data = tmp_path / "pool.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in POOL.drop(columns=["input"]).to_dict("records")))
    args = ["warmup", str(data), "--out", str(tmp_path / "w"), "--fraction", "1", "--epochs", "2", "--model",
            str(mdir), "--lora-r", "4", "--targets", "q_proj", "--template", "plain", "--lr", "1e-3",
            "--batch-size", "3", "--checkpoint-every", "0"]  # fmt: skip
    with monkeypatch.context() as m:
        _stop_at(m, 10, KeyboardInterrupt)  # Ctrl-C in epoch 2
        assert main(args) == 130
    assert "thresher: interrupted" in capsys.readouterr().err
    assert main(args) == 0
    assert "warmup: resumed at epoch 2, step 7 of 14 (saved in checkpoint-1)" in capsys.readouterr().out
    assert main(args) == 2  # a finished run is not trained again
    assert "already holds a warm-up run" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # not a number: argparse's one line
        main(args[:-2] + ["--checkpoint-every", "x"])


def test_a_failed_part_way_save_is_dropped_and_training_goes_on(lm, unbroken, tmp_path, monkeypatch):
    monkeypatch.setattr(progress_mod, "SAVE_COST_FACTOR", 0.0)
    real, calls = progress_mod.atomic_save, [0]

    def full_disk(path, save):
        calls[0] += 1
        if calls[0] == 3:  # the second part-way save's weights
            raise OSError(28, "No space left on device")
        return real(path, save)

    monkeypatch.setattr(progress_mod, "atomic_save", full_disk)
    logs: list = []
    res = warmup_lora(POOL, lm, tmp_path / "w", checkpoint_s=1e-9, log=logs.append, **KW)
    assert (
        "warmup: a part-way save at step 2 failed ([Errno 28] No space left on device); saving at the ends of "
        "epochs only" in logs
    )
    assert calls[0] == 3  # no part-way save after the failure
    _assert_same(_state(res), _state(unbroken))
    assert not list((tmp_path / "w").glob("progress*"))
