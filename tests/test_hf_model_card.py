"""The Hugging Face model card, read back with the Hub's own client (huggingface_hub) and PyYAML:
numbers stay numbers at any scale, the block has the Hub's documented fields, training_type comes
from the run, and a real Trainer's card (create_model_card, as push_to_hub calls it) carries it."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from greentrack.common.errors import ConfigError
from greentrack.reports import report_document, to_hf
from tests.helpers import clean_env, make_run, run_cli
from tests.tiny_models import hf_trainer, tiny_gpt2_config

#: real Hugging Face Trainers and cards: out of `make test-fast`
pytestmark = pytest.mark.slow

hub = pytest.importorskip("huggingface_hub")

#: https://huggingface.co/docs/hub/model-cards-co2
HUB_FIELDS = {"emissions", "source", "training_type", "geographical_location", "hardware_used"}


@pytest.fixture(scope="module")
def doc(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("hfcard")
    with pytest.MonkeyPatch.context() as mp, clean_env(mp, root):
        run = make_run(root, steps=3, country="FR", training_type="pre-training")
        return report_document(run, {})


def front_matter(text: str) -> dict[str, Any]:
    assert text.startswith("---\n")
    return dict(yaml.safe_load(text.split("---\n")[1]))


@pytest.mark.parametrize("kg", [2e-10, 1e3, 1.0e-3, 123456.789])
def test_emissions_are_yaml_numbers_at_any_scale(doc: dict[str, Any], kg: float,
                                                 tmp_path: Path) -> None:
    """2e-10 kg is 2e-07 g and 1e3 kg is 1e+06 g: written by hand with :.6g, PyYAML read both as
    strings."""
    d = copy.deepcopy(doc)
    d["summary"]["emissions_location_kg"] = kg
    text = to_hf.render(d)
    grams = front_matter(text)["co2_eq_emissions"]["emissions"]
    assert isinstance(grams, float) and grams == pytest.approx(kg * 1000.0, rel=1e-12)
    path = tmp_path / "README.md"
    path.write_text(text, encoding="utf-8")
    card = hub.ModelCard.load(path)  # the Hub's parser
    assert isinstance(card.data.co2_eq_emissions["emissions"], float)
    assert card.data.co2_eq_emissions["emissions"] == pytest.approx(kg * 1000.0, rel=1e-12)
    assert hub.metadata_load(path)["co2_eq_emissions"]["emissions"] == pytest.approx(kg * 1000.0)


def test_block_has_the_hubs_fields_in_grams_and_the_runs_training_type(doc: dict[str, Any]) -> None:
    co2 = front_matter(to_hf.render(doc))["co2_eq_emissions"]
    assert set(co2) == HUB_FIELDS
    assert co2["emissions"] == pytest.approx(doc["summary"]["emissions_location_kg"] * 1000.0)
    assert co2["training_type"] == "pre-training"  # recorded with the run (Tracker setting)
    assert co2["geographical_location"] == "France"
    text = to_hf.render(doc)
    assert "**Training type:** pre-training (the training_type setting)" in text
    assert "**Quality band:**" in text and "Uncertainty" not in text


def test_unknown_training_type_is_left_out_not_unspecified(doc: dict[str, Any]) -> None:
    d = copy.deepcopy(doc)
    d["run"]["training_type"] = None
    co2 = front_matter(to_hf.render(d))["co2_eq_emissions"]
    assert "training_type" not in co2 and set(co2) == HUB_FIELDS - {"training_type"}


def test_training_type_setting_is_validated(tmp_path: Path) -> None:
    from greentrack.common.config import Config
    with pytest.raises(ConfigError) as e:
        Config(run_dir=tmp_path, training_type="finetune")
    assert str(e.value).count("\n") == 0
    assert "training_type" in str(e.value) and "'finetune'" in str(e.value)
    assert "pre-training, fine-tuning" in str(e.value)
    code, _, err = run_cli(["report", str(tmp_path), "--training-type", "finetune"])
    assert code == 2 and "--training-type" in err and "fine-tuning" in err


def test_report_flag_and_config_file_set_the_training_type(tmp_path: Path) -> None:
    with pytest.MonkeyPatch.context() as mp, clean_env(mp, tmp_path):
        run = make_run(tmp_path, steps=2)
        code, _, err = run_cli(["report", str(run), "--format", "hf", "--out", str(tmp_path / "a"),
                                "--training-type", "fine-tuning"])
        assert code == 0, err
        cfg = tmp_path / "gt.toml"
        cfg.write_text('[hf]\ntraining_type = "pre-training"\n')
        code, _, err = run_cli(["report", str(run), "--format", "hf", "--out", str(tmp_path / "b"),
                                "--config", str(cfg)])
        assert code == 0, err
    a = hub.ModelCard.load(tmp_path / "a" / "model-card.md").data.co2_eq_emissions
    b = hub.ModelCard.load(tmp_path / "b" / "model-card.md").data.co2_eq_emissions
    assert a["training_type"] == "fine-tuning" and b["training_type"] == "pre-training"


def test_add_to_card_keeps_the_cards_metadata_and_replaces_its_own_section(
        doc: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "README.md"
    path.write_text("---\nlicense: mit\ntags:\n- generated_from_trainer\n---\n\n# my-model\n\n"
                    "Some text.\n\n## Training procedure\n\nAdam.\n", encoding="utf-8")
    to_hf.add_to_card(path, doc)
    to_hf.add_to_card(path, doc)  # twice: one block, one section
    card = hub.ModelCard.load(path)
    assert card.data.license == "mit" and card.data.tags == ["generated_from_trainer"]
    assert set(card.data.co2_eq_emissions) == HUB_FIELDS
    assert card.text.count("## Environmental impact") == 1
    assert "## Training procedure\n\nAdam." in card.text and "# my-model" in card.text


# -- a real Trainer writing its card ---------------------------------------------------------------

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")


@pytest.mark.slow
@pytest.mark.parametrize("attach", [True, False], ids=["attach", "callbacks-list"])
def test_trainer_card_carries_the_emissions_block(no_host_env: Path, tmp_path: Path,
                                                  attach: bool) -> None:
    """A model built from a config is pre-training; create_model_card (what push_to_hub calls
    before its upload) writes README.md with the block, read back by huggingface_hub, whether
    the callback was attached or given in ``Trainer(callbacks=[...])``."""
    from transformers import GPT2LMHeadModel

    from greentrack.integrations.transformers import GreenTrackTrainerCallback
    torch.manual_seed(0)
    cb = GreenTrackTrainerCallback(tmp_path / "run", country="DE", **_fast())
    trainer = hf_trainer(tmp_path / "out", GPT2LMHeadModel(tiny_gpt2_config()), cb, attach)
    trainer.train()
    trainer.create_model_card(model_name="tiny", license="mit")
    card = hub.ModelCard.load(tmp_path / "out" / "README.md")
    co2 = card.data.co2_eq_emissions
    assert set(co2) == HUB_FIELDS and isinstance(co2["emissions"], float)
    assert co2["training_type"] == "pre-training"
    assert co2["geographical_location"] == "Germany" and co2["emissions"] > 0
    assert card.data.license == "mit"  # the Trainer's own metadata is kept
    assert cb.run.summary is not None
    grams = co2["emissions"]
    total_kwh = cb.run.summary["energy_kwh"]  # the whole run's energy, as the callback logged it
    assert grams == pytest.approx(report_document(tmp_path / "run", {})["summary"]
                                  ["emissions_location_kg"] * 1000.0)
    assert grams > total_kwh * 300.0  # facility energy x DE's intensity (> 300 g/kWh) x PUE >= 1
    assert re.search(r"\*\*Training type:\*\* pre-training \(inferred by greentrack's Hugging "
                     r"Face integration: the model has no name_or_path", card.text)


@pytest.mark.slow
def test_a_model_from_pretrained_is_fine_tuning(no_host_env: Path, tmp_path: Path) -> None:
    from transformers import GPT2LMHeadModel

    from greentrack.integrations.transformers import GreenTrackTrainerCallback
    torch.manual_seed(0)
    GPT2LMHeadModel(tiny_gpt2_config()).save_pretrained(tmp_path / "base")
    model = GPT2LMHeadModel.from_pretrained(tmp_path / "base")  # local: no network
    cb = GreenTrackTrainerCallback(tmp_path / "run", **_fast())
    trainer = hf_trainer(tmp_path / "out", model, cb)
    trainer.train()
    trainer.create_model_card()
    co2 = hub.ModelCard.load(tmp_path / "out" / "README.md").data.co2_eq_emissions
    assert co2["training_type"] == "fine-tuning"
    # a setting wins over the inference
    cb2 = GreenTrackTrainerCallback(tmp_path / "run2", training_type="pre-training", **_fast())
    trainer2 = hf_trainer(tmp_path / "out2", GPT2LMHeadModel.from_pretrained(tmp_path / "base"), cb2)
    trainer2.train()
    trainer2.create_model_card()
    card = hub.ModelCard.load(tmp_path / "out2" / "README.md")
    assert card.data.co2_eq_emissions["training_type"] == "pre-training"
    assert "(the training_type setting)" in card.text


def _fast() -> dict[str, Any]:
    from tests.helpers import FAST
    return dict(FAST)


@pytest.mark.slow
def test_card_lists_no_greentrack_figure_among_the_models_results(no_host_env: Path,
                                                                   tmp_path: Path) -> None:
    """Issue 26: an evaluation's joules reached the card's results ("Greentrack/validation Energy
    J: 25.6579") and TensorBoard's training section. They belong in ``co2_eq_emissions``; the
    evaluation's own energy reaches the reporting integrations filed with the evaluation."""
    from transformers import GPT2LMHeadModel, TrainerCallback
    from transformers.integrations.integration_utils import rewrite_logs
    from transformers.modelcard import TrainingSummary

    from greentrack.integrations.transformers import GreenTrackTrainerCallback
    from tests.tiny_models import Tokens

    class Reporter(TrainerCallback):  # where TensorBoard or W&B stands: what they are given
        logs: list[dict[str, Any]] = []
        evaluated: list[dict[str, Any]] = []

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None,
                   **kw: Any) -> None:
            self.logs.append(dict(logs or {}))

        def on_evaluate(self, args: Any, state: Any, control: Any, metrics: Any = None,
                        **kw: Any) -> None:
            self.evaluated.append(dict(metrics or {}))  # the dict evaluate() returns

    torch.manual_seed(0)
    cb = GreenTrackTrainerCallback(tmp_path / "run", country="DE", progress_every_s=None,
                                   **_fast())
    reporter = Reporter()
    trainer = hf_trainer(tmp_path / "out", GPT2LMHeadModel(tiny_gpt2_config()), cb,
                         eval_dataset=Tokens(4, seed=1), callbacks=[reporter], max_steps=4,
                         eval_strategy="steps", eval_steps=2, logging_steps=2,
                         per_device_eval_batch_size=2)
    trainer.train()
    # evaluate()'s metrics (the hyperparameter search's default objective sums them) are the
    # Trainer's own
    assert len(reporter.evaluated) == 2
    assert not [k for m in reporter.evaluated for k in m if "greentrack" in k]
    summary = TrainingSummary.from_trainer(trainer, model_name="tiny")
    assert summary.eval_results and "Loss" in summary.eval_results
    named = [*summary.eval_results, *(k for line in summary.eval_lines or [] for k in line)]
    assert not [k for k in named if "greentrack" in k.lower()], named
    trainer.create_model_card(model_name="tiny")
    card = hub.ModelCard.load(tmp_path / "out" / "README.md")
    assert set(card.data.co2_eq_emissions) == HUB_FIELDS
    results = card.text.split("## Environmental impact")[0]  # the Trainer's part of the card
    assert "It achieves the following results" in results
    assert "greentrack" not in results.lower()
    # every evaluation's joules reached the reporting integrations, filed by HF's own rule with
    # the evaluation, never among the training scalars; greentrack's training figures sit
    # under train/greentrack/
    evals = [rewrite_logs(log) for log in reporter.logs if "eval_loss" in log]
    assert len(evals) == 2 and all(log["eval/greentrack/validation_energy_j"] > 0
                                   for log in evals)
    tags = {tag for log in reporter.logs for tag in rewrite_logs(log)}
    ours = {t for t in tags if "greentrack" in t}
    assert "train/greentrack/energy_j" in ours
    assert not [t for t in ours if t.startswith("train/") and t.endswith("validation_energy_j")]
    assert all(t.startswith(("train/greentrack/", "eval/greentrack/")) for t in ours), ours
