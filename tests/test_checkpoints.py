"""Nothing lost, nothing silent: a run SIGKILLed at any moment resumes (`--resume_from_checkpoint last`) to the weights
of an uninterrupted run, bit for bit; a killed save is never taken for a checkpoint or a model; a damaged checkpoint
file is named before training starts; a save that fills the disk is one line and leaves the saves before it intact; no
saved file holds the Hub token."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from killing import max_abs_difference, run_recipe, weights

from tippo_rl import build_tiny_tippo, load_artmuse
from tippo_rl.checkpoints import CheckpointError, DiskFullError, check_checkpoint, resolve_checkpoint
from tippo_rl.trainer import TIPPoSFTConfig, TIPPoSFTTrainer
from tippo_rl.trainer.ppo_config import PPOConfig


REPO = Path(__file__).resolve().parents[1]
SFT = ("TIPPoScriptArguments", "TIPPoSFTConfig", "TIPPoModelConfig")
POLISH = ("TIPPoScriptArguments", "PolishPPOConfig", "TIPPoModelConfig")
KILLED = -signal.SIGKILL


def sft_arguments(tmp_path, name, *extra):
    return [
        "--config",
        str(REPO / "recipes/configs/demo_sft.yaml"),
        "--output_dir",
        str(tmp_path / name),
        "--demo_dir",
        str(tmp_path / "demo"),
        "--demo_num_train",
        "24",
        "--demo_num_test",
        "4",
        "--feature_cache_dir",
        str(tmp_path / "cache"),
        "--max_steps",
        "6",
        "--save_steps",
        "2",
        "--per_device_train_batch_size",
        "8",
        "--logging_steps",
        "1",
        "--disable_tqdm",
        "true",
        *extra,
    ]  # 3 steps per pass over the data: checkpoints 2 (first pass), 4 (second), 6 (the end)


def polish_arguments(tmp_path, model, name, *extra):
    return [
        "--config",
        str(REPO / "recipes/configs/demo_polishppo.yaml"),
        "--model_name_or_path",
        str(model),
        "--output_dir",
        str(tmp_path / name),
        "--demo_dir",
        str(tmp_path / "demo"),
        "--demo_num_train",
        "16",
        "--demo_num_test",
        "4",
        "--feature_cache_dir",
        str(tmp_path / "cache"),
        "--total_iterations",
        "4",
        "--per_device_train_batch_size",
        "4",
        "--steps_per_generation",
        "2",
        "--num_ppo_epochs",
        "1",
        "--max_new_tokens",
        "8",
        "--logging_steps",
        "1",
        "--save_steps",
        "2",
        "--save_total_limit",
        "0",
        "--disable_tqdm",
        "true",
        *extra,
    ]  # an iteration is 8 rollouts in 2 steps, a pass over the data 2 iterations: checkpoints 2, 4 (end of the first
    # pass), 6 (second pass), 8 (the end)


@pytest.fixture(scope="module")
def sft_straight(tmp_path_factory):
    """The uninterrupted SFT run the killed ones must match (its output folder)."""
    folder = tmp_path_factory.mktemp("sft")
    assert run_recipe("sft", SFT, sft_arguments(folder, "straight")) == 0
    return folder / "straight"


@pytest.fixture(scope="module")
def polish_straight(tmp_path_factory, saved_model):
    folder = tmp_path_factory.mktemp("polishppo")
    assert run_recipe("polishppo", POLISH, polish_arguments(folder, saved_model, "straight")) == 0
    return folder / "straight"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("moment", "step", "resumes_from"),
    [
        ("mid_step", 4, 4),  # the second pass over the data
        ("checkpoint_write", 4, 2),  # checkpoint-4 half written: resumes from checkpoint-2, crosses the pass boundary
        ("final_save", None, 6),  # the weights written, not the processor
    ],
)
def test_sft_killed_then_resumed_ends_bit_identical(tmp_path, sft_straight, moment, step, resumes_from):
    assert run_recipe("sft", SFT, sft_arguments(tmp_path, "killed"), moment, step) == KILLED
    killed = tmp_path / "killed"
    if moment == "final_save":
        assert not (killed / "model.safetensors").exists()  # a killed final save never looks like a model
    complete = sorted(path.name for path in killed.glob("checkpoint-*"))
    assert f"checkpoint-{resumes_from}" in complete and all(
        (killed / name / "trainer_state.json").is_file() for name in complete
    )
    assert run_recipe("sft", SFT, sft_arguments(tmp_path, "killed", "--resume_from_checkpoint", "last")) == 0
    assert max_abs_difference(weights(killed), weights(sft_straight)) == 0.0
    assert json.loads((killed / "checkpoint-6/trainer_state.json").read_text())["global_step"] == 6
    assert not list(killed.glob("checkpoint-7")) and not list(killed.glob("_incomplete-*"))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("moment", "step"),
    [
        ("mid_step", 6),  # iteration 3, the second pass over the data: resumes from checkpoint-6
        ("checkpoint_write", 6),  # resumes from checkpoint-4, at the pass boundary
        ("final_save", None),  # resumes from checkpoint-8, the end: trains nothing
    ],
)
def test_polishppo_killed_then_resumed_ends_bit_identical(tmp_path, saved_model, polish_straight, moment, step):
    assert run_recipe("polishppo", POLISH, polish_arguments(tmp_path, saved_model, "killed"), moment, step) == KILLED
    assert (
        run_recipe(
            "polishppo", POLISH, polish_arguments(tmp_path, saved_model, "killed", "--resume_from_checkpoint", "last")
        )
        == 0
    )
    killed, straight = tmp_path / "killed", polish_straight
    assert max_abs_difference(weights(killed), weights(straight)) == 0.0
    for name in ("checkpoint-6", "checkpoint-8"):
        assert json.loads((killed / name / "ppo_state.json").read_text()) == json.loads(
            (straight / name / "ppo_state.json").read_text()
        )
    assert json.loads((killed / "checkpoint-8/ppo_state.json").read_text())["iteration"] == 4
    assert not list(killed.glob("checkpoint-9"))


# -- fast: resume arguments, finished runs, damaged files, secrets -----------------------------------------------------

TOKEN = "hf_NotARealTokenButSecret1234"


def sft_trainer(tmp_path, dataset_dir, eval_split=False, **overrides):
    settings = dict(
        output_dir=str(tmp_path / "out"),
        max_steps=4,
        per_device_train_batch_size=8,
        learning_rate=3e-3,
        logging_steps=1,
        save_strategy="steps",
        save_steps=2,
        report_to="none",
        use_cpu=True,
        bf16=False,
        seed=0,
        feature_cache_dir=str(tmp_path / "cache"),
        disable_tqdm=True,
    )
    settings.update(overrides)
    model, processor = build_tiny_tippo(seed=0)
    return TIPPoSFTTrainer(
        model=model,
        args=TIPPoSFTConfig(**settings),
        processor=processor,
        train_dataset=load_artmuse(dataset_dir / "train.jsonl"),
        eval_dataset=load_artmuse(dataset_dir / "test.jsonl") if eval_split else None,
    )


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, demo_dataset_dir):
    """An SFT run of 4 steps with checkpoints 2 and 4 and a Hub token in its arguments (read-only)."""
    folder = tmp_path_factory.mktemp("finished")
    trainer = sft_trainer(folder, demo_dataset_dir, hub_token=TOKEN)
    trainer.train()
    trainer.save_model()
    return folder / "out"


def test_resume_last_or_true_picks_the_newest_complete_checkpoint(finished_run, tmp_path):
    for value in ("last", "true", "True", True):
        assert resolve_checkpoint(value, finished_run) == str(finished_run / "checkpoint-4")
    for value in (None, False, "false", ""):
        assert resolve_checkpoint(value, finished_run) is None
    with pytest.raises(
        CheckpointError, match=r"--resume_from_checkpoint last: '.*' holds no complete checkpoint-N folder"
    ):
        resolve_checkpoint("last", tmp_path)
    with pytest.raises(
        CheckpointError,
        match=r"--resume_from_checkpoint /no/such: no such checkpoint folder; pass a checkpoint-N folder, or 'last'",
    ):
        resolve_checkpoint("/no/such", tmp_path)
    staged = tmp_path / "_incomplete-checkpoint-9"
    staged.mkdir()
    (tmp_path / "checkpoint-1").mkdir()
    assert resolve_checkpoint("last", tmp_path) == str(tmp_path / "checkpoint-1")  # never the unfinished save
    with pytest.raises(CheckpointError, match="a save that never finished"):
        resolve_checkpoint(str(staged), tmp_path)


def test_resuming_a_finished_run_trains_nothing_and_keeps_its_weights(finished_run, tmp_path, demo_dataset_dir):
    run = tmp_path / "out"
    shutil.copytree(finished_run, run)
    before = weights(run / "checkpoint-4")
    trainer = sft_trainer(tmp_path, demo_dataset_dir)
    trainer.train(resume_from_checkpoint="last")
    assert trainer.state.global_step == 4 and not (run / "checkpoint-5").exists()
    after = {name: tensor.detach() for name, tensor in trainer.model.state_dict().items()}
    assert all(torch.equal(after[name], before[name]) for name in before)  # λ1 (a buffer) included: no step 5 moved it


def test_changing_the_run_length_on_resume_is_said(finished_run, tmp_path, demo_dataset_dir):
    shutil.copytree(finished_run, tmp_path / "out")
    trainer = sft_trainer(tmp_path, demo_dataset_dir, max_steps=5, save_strategy="no")
    with pytest.warns(UserWarning, match=r"step 2 of a run of max_steps 4\) with max_steps 5 .*schedule"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "out/checkpoint-2"))
    assert trainer.state.global_step == 5


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGES = {
    "model.safetensors": truncate,
    "optimizer.pt": truncate,
    "scheduler.pt": truncate,
    "rng_state.pth": truncate,
    "trainer_state.json": lambda path: path.write_text('{"global_step": 2, "log_hist'),
}


@pytest.mark.parametrize("name", list(DAMAGES))
def test_a_damaged_checkpoint_file_is_named_before_training(finished_run, tmp_path, demo_dataset_dir, name):
    checkpoint = tmp_path / "out/checkpoint-2"
    shutil.copytree(finished_run / "checkpoint-2", checkpoint)
    DAMAGES[name](checkpoint / name)
    message = rf"checkpoint '{checkpoint}': file {name} is damaged \(.+\); resume from an earlier checkpoint-N"
    with pytest.raises(CheckpointError, match=message):
        check_checkpoint(checkpoint)
    trainer = sft_trainer(tmp_path, demo_dataset_dir)
    with pytest.raises(CheckpointError, match=message):
        trainer.train(resume_from_checkpoint=str(checkpoint))
    assert trainer.state.global_step == 0


def test_a_checkpoint_missing_its_state_is_called_incomplete(finished_run, tmp_path):
    checkpoint = tmp_path / "checkpoint-2"
    shutil.copytree(finished_run / "checkpoint-2", checkpoint)
    (checkpoint / "trainer_state.json").unlink()
    with pytest.raises(
        CheckpointError, match=rf"checkpoint '{checkpoint}' is incomplete: it holds no trainer_state.json"
    ):
        check_checkpoint(checkpoint)


def test_the_hub_token_is_never_written(finished_run, tmp_path, demo_dataset_dir, monkeypatch):
    files = [path for path in finished_run.rglob("*") if path.is_file()]
    assert any(path.name == "training_args.bin" for path in files) and len(files) > 20
    assert not [path for path in files if TOKEN.encode() in path.read_bytes()]
    assert torch.load(finished_run / "training_args.bin", weights_only=False).hub_token is None

    uploads = []

    class FakeHub:
        def create_repo(self, repo_id, **kwargs):
            return SimpleNamespace(repo_id=repo_id)

        def upload_folder(self, repo_id, folder_path, **kwargs):
            uploads.extend(path.read_bytes() for path in Path(folder_path).rglob("*") if path.is_file())

    import transformers.trainer

    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: FakeHub())
    trainer = sft_trainer(
        tmp_path,
        demo_dataset_dir,
        max_steps=1,
        save_strategy="no",
        push_to_hub=True,
        hub_model_id="someone/tippo",
        hub_token=TOKEN,
    )
    trainer.train()
    trainer.push_to_hub()
    assert uploads and not [data for data in uploads if TOKEN.encode() in data]
    assert trainer.args.hub_token == TOKEN  # the run itself still has it


def test_a_final_save_is_staged_and_moved_in_weights_last(finished_run):
    names = {path.name for path in finished_run.iterdir()}
    assert {"model.safetensors", "config.json", "tippo_processor_config.json", "title_tokenizer"} <= names
    assert not [name for name in names if name.startswith("_incomplete-")]


@pytest.mark.parametrize(
    "strategy",
    [
        dict(save_strategy="steps", save_steps=2, eval_strategy="steps", eval_steps=1),  # a log and an eval first
        dict(save_strategy="epoch", max_steps=-1, num_train_epochs=2, logging_strategy="epoch"),
        dict(save_strategy="best", eval_strategy="steps", eval_steps=1, metric_for_best_model="eval_loss"),
    ],
    ids=["steps", "epoch", "best"],
)
def test_every_save_strategy_writes_its_checkpoints_into_a_staging_folder_first(
    tmp_path, demo_dataset_dir, monkeypatch, strategy
):
    """The Trainer writes each checkpoint under `_incomplete-checkpoint-N/`, which is renamed once complete, whatever
    comes between the step's end and the save (a log, an evaluation, a save that depends on it); the run's arguments
    are back after training."""
    written = []
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if "checkpoint-" in str(f):
            written.append(Path(f))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    trainer = sft_trainer(tmp_path, demo_dataset_dir, eval_split=True, **strategy)
    trainer.train()
    run = tmp_path / "out"
    checkpoints = {path.name for path in run.iterdir() if "checkpoint" in path.name}
    assert checkpoints and not [name for name in checkpoints if name.startswith("_incomplete-")]
    assert trainer.args.output_dir == str(run)
    folders = {path.parent for path in written}
    assert folders == {run / f"_incomplete-{name}" / name for name in checkpoints}  # nothing written in place
    for name in checkpoints:
        assert check_checkpoint(run / name)["global_step"] == int(name.split("-")[1])
    if strategy["save_strategy"] == "best":
        assert trainer.state.best_model_checkpoint in {str(run / name) for name in checkpoints}


def test_max_steps_zero_is_refused_naming_the_option(tmp_path):
    with pytest.raises(ValueError, match="max_steps 0 trains nothing: set --max_steps"):
        TIPPoSFTConfig(output_dir=str(tmp_path), max_steps=0, use_cpu=True)
    with pytest.raises(ValueError, match="max_steps 0 trains nothing: set --total_iterations"):
        PPOConfig(output_dir=str(tmp_path), max_steps=0, use_cpu=True, reward_funcs=["literal"])


# -- a full disk ---------------------------------------------------------------------------------------------------------


def failing_writes_under(monkeypatch, folder_name: str):
    """`torch.save` into a folder named `folder_name` fails as on a full disk (ENOSPC, as Python's own writes do)."""
    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if isinstance(f, (str, Path)) and folder_name in Path(f).parts:
            raise OSError(errno.ENOSPC, "No space left on device", str(f))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)


def test_a_checkpoint_that_fills_the_disk_is_one_line_and_leaves_the_one_before(
    tmp_path, demo_dataset_dir, monkeypatch
):
    trainer = sft_trainer(tmp_path, demo_dataset_dir)
    failing_writes_under(monkeypatch, "_incomplete-checkpoint-4")
    with pytest.raises(DiskFullError) as raised:
        trainer.train()
    run = tmp_path / "out"
    size = sum(path.stat().st_size for path in (run / "checkpoint-2").rglob("*") if path.is_file())
    assert str(raised.value).startswith(
        f"no space left on device writing '{run / 'checkpoint-4'}' (it needs about {size / 2**20:.1f} MB, "
    )
    assert "\n" not in str(raised.value)
    assert check_checkpoint(run / "checkpoint-2")["global_step"] == 2  # the checkpoint before, whole
    checkpoints = sorted(path.name for path in run.iterdir() if "checkpoint" in path.name)
    assert checkpoints == ["checkpoint-2"]  # the partial save (_incomplete-checkpoint-4) removed


def test_a_final_save_that_fills_the_disk_leaves_the_previous_model(
    finished_run, tmp_path, demo_dataset_dir, monkeypatch
):
    run = tmp_path / "out"
    shutil.copytree(finished_run, run)
    before = weights(run)
    trainer = sft_trainer(tmp_path, demo_dataset_dir, max_steps=1, save_strategy="no")
    trainer.train()
    failing_writes_under(monkeypatch, "_incomplete-save")
    with pytest.raises(DiskFullError, match=rf"^no space left on device writing '{run}' \(it needs about 1.\d MB, "):
        trainer.save_model()
    assert max_abs_difference(weights(run), before) == 0
    assert not [path for path in run.iterdir() if path.name.startswith("_incomplete-")]


@pytest.fixture
def small_disk(tmp_path):
    """A 6 MB tmpfs: room for one checkpoint of the tiny model (3.7 MB), not two. Skips where mounting is not allowed."""
    folder = tmp_path / "small_disk"
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(folder)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.strip()})")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def test_the_sft_recipe_on_a_full_disk_ends_with_one_line(tmp_path, small_disk):
    """A real full disk under a real recipe: torch's archive writer fails (`inline_container.cc`, no errno)."""
    run = small_disk / "out"
    arguments = sft_arguments(tmp_path, "unused", "--output_dir", str(run), "--max_steps", "2", "--save_steps", "1")
    result = subprocess.run(
        [sys.executable, str(REPO / "recipes/sft.py"), *arguments],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 2, result.stderr[-3000:]
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith(f"sft.py: error: no space left on device writing '{run / 'checkpoint-2'}' (it needs")
    assert "Traceback" not in result.stderr
    assert check_checkpoint(run / "checkpoint-1")["global_step"] == 1
    assert sorted(path.name for path in run.iterdir() if "checkpoint" in path.name) == ["checkpoint-1"]
