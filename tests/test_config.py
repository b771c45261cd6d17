from __future__ import annotations

import dataclasses
import os
import re
import typing
from pathlib import Path

import pytest
import yaml

from roadwork.config import (
    CHOICES,
    LIBRARY_SECTIONS,
    ConfigError,
    RoadworkConfig,
    describe,
    field_docs,
    flatten,
    load_config,
    parse_overrides,
    split_overrides,
    to_dict,
    validate,
)

REPO = Path(__file__).resolve().parents[1]
REPO_PARAMS = REPO / "params.yaml"


def write(tmp_path: Path, payload: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(payload))
    return path


def test_repository_params_match_schema_and_set_every_key() -> None:
    """params.yaml is the single source: it validates, and it spells out every key of the schema."""
    cfg = load_config(REPO / "params.yaml")
    assert isinstance(cfg, RoadworkConfig)
    in_file = yaml.safe_load((REPO / "params.yaml").read_text())

    def keys(d: dict, prefix: str = "") -> set[str]:
        out = set()
        for k, v in d.items():
            out |= keys(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}"}
        return out

    assert keys(in_file) == keys(to_dict(cfg))


def test_unknown_key_names_the_key_and_suggests(tmp_path: Path) -> None:
    path = write(tmp_path, {"split": {"sead": 3}})
    with pytest.raises(ConfigError, match=r"unknown key 'split\.sead'.*Did you mean 'split\.seed'"):
        load_config(path)


def test_unknown_section(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown key 'splitt'"):
        load_config(write(tmp_path, {"splitt": {"seed": 3}}))


def test_wrong_type_names_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"invalid value for 'split\.seed'"):
        load_config(write(tmp_path, {"split": {"seed": "three"}}))


def test_out_of_range_names_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'dedupe\.phash_radius' is 99"):
        load_config(write(tmp_path, {"dedupe": {"phash_radius": 99}}))


def test_fractions_must_sum_to_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="must sum to 1"):
        load_config(write(tmp_path, {"split": {"fractions": {"train": 0.7}}}))


def test_overrides_in_hydra_syntax(tmp_path: Path) -> None:
    path = write(tmp_path, {"split": {"seed": 1}})
    cfg = load_config(path, ["split.seed=3", "ingest.working_min_side=640", "tracking.experiment='my exp'"])
    assert cfg.split.seed == 3
    assert cfg.ingest.working_min_side == 640
    assert cfg.tracking.experiment == "my exp"
    assert load_config(path).split.seed == 1


def test_override_unknown_key_and_bad_type(tmp_path: Path) -> None:
    path = write(tmp_path, {})
    with pytest.raises(ConfigError, match=r"unknown key 'split\.sed'"):
        load_config(path, ["split.sed=3"])
    with pytest.raises(ConfigError, match=r"invalid value for 'split\.seed'"):
        load_config(path, ["split.seed=abc"])
    with pytest.raises(ConfigError, match="only plain 'key=value'"):
        load_config(path, ["+split.extra=1"])
    with pytest.raises(ConfigError, match="could not be parsed"):
        parse_overrides(["split.seed"])


def test_missing_file_and_non_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(bad)


def test_max_pixels_above_pillows_hard_limit_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'ingest\.max_pixels' is 10000000000.*Pillow"):
        load_config(write(tmp_path, {"ingest": {"max_pixels": 10_000_000_000}}))


def test_crossfit_threshold_data_needs_the_cross_fitted_margins(tmp_path: Path) -> None:
    """calibrate.threshold_data=train_crossfit needs train's cross-fitted margins (head mode, >= 2 folds);
    the message names both keys and the way out."""
    path = write(tmp_path, {})
    for override in ("train.mode=finetune", "train.crossfit_folds=0"):
        with pytest.raises(ConfigError, match=r"threshold_data' is train_crossfit.*threshold_data=val_calib"):
            load_config(path, [override])
        loaded = load_config(path, [override, "calibrate.threshold_data=val_calib"])
        assert loaded.calibrate.threshold_data == "val_calib"
    with pytest.raises(ConfigError, match=r"'train\.crossfit_folds' is 1; expected 0 \(off\) or an integer"):
        load_config(path, ["train.crossfit_folds=1"])
    for band in ("[0.6,0.4]", "[0.3]", "[-0.1,0.5]"):
        with pytest.raises(ConfigError, match=r"'deploy\.positive_rate_band' is .*expected \[low, high\]"):
            load_config(path, [f"deploy.positive_rate_band={band}"])


def test_request_budgets_must_hold_one_image_of_the_largest_size(tmp_path: Path) -> None:
    from dataclasses import fields

    from roadwork.config import DeployParams
    from roadwork.deploy.predictor import PredictorSpec

    with pytest.raises(
        ConfigError, match=r"'deploy\.request_max_pixels' is 1000, below 'deploy\.max_pixels'"
    ):
        load_config(write(tmp_path, {"deploy": {"request_max_pixels": 1000}}))
    with pytest.raises(ConfigError, match=r"'deploy\.request_max_bytes' is 0; expected a positive"):
        load_config(write(tmp_path, {"deploy": {"request_max_bytes": 0}}))
    # the served model's defaults are the params' defaults
    spec = {f.name: f.default for f in fields(PredictorSpec)}
    for f in fields(DeployParams):
        if f.name in spec:
            assert f.default == spec[f.name], f.name


def test_train_section_mirrors_head_train_config_names_and_defaults() -> None:
    from dataclasses import fields

    from roadwork.config import TrainParams, head_train_config
    from roadwork.train.head_config import HeadTrainConfig

    names = [f.name for f in fields(TrainParams)]
    assert names == [
        "mode",
        "refit",
        "crossfit_folds",
        *[f.name for f in fields(HeadTrainConfig)],
        "finetune",
        "hard_negatives",
    ]
    assert head_train_config(TrainParams()) == HeadTrainConfig()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.head=mpl", "train.head is 'mpl'; allowed values: linear, mlp"),
        ("train.lr=0", "train.lr is 0.0; it must be finite and > 0"),
        ("train.warmup_epochs=40", "train.warmup_epochs is 40.0; it must be < max_epochs"),
        ("train.mode=full", "'train.mode' is 'full'"),
        ("embed.views=tiles", "'embed.views' is 'tiles'"),
        ("embed.augment.level_probs=[0.5,0.5]", "'embed.augment.level_probs'"),
        ("dedupe.embedding_cosine=1.5", "'dedupe.embedding_cosine' is 1.5"),
        ("adapt.lora_rank=0", "adapt.lora_rank is 0; it must be >= 1"),
        ("adapt.mask_ratio_max=0.05", "adapt.mask_ratio_max (0.05) must be >= mask_ratio_min"),
        ("adapt.precision=16", "adapt.precision is '16'"),
        ("adapt.checkpoint_every_steps=-1", "'adapt.checkpoint_every_steps' is -1"),
        ("trainer.devices=0", "'trainer.devices' is 0"),
        ("trainer.strategy=ddp_spawn", "'trainer.strategy' is 'ddp_spawn'"),
        ("trainer.accelerator=tpu", "'trainer.accelerator' is 'tpu'"),
        ("backbone.pooling=median", "'backbone.pooling' is 'median'"),
        ("backbone.input_size=8", "'backbone.input_size' is 8"),
        ("train.feature_transform=log", "train.feature_transform is 'log'; allowed values: none, sqrt_l2"),
        ("train.finetune.lora_alpha=0", "train.finetune.lora_alpha is 0.0; it must be finite and > 0"),
    ],
)
def test_train_and_embed_values_are_checked_when_loading(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(REPO_PARAMS, [override])
    assert message in str(err.value)


def test_adapt_section_mirrors_adapt_config_names_and_defaults() -> None:
    from dataclasses import fields

    from roadwork.adapt.config import AdaptConfig
    from roadwork.config import AdaptParams, adapt_config

    names = [f.name for f in fields(AdaptParams)]
    assert names == [*[f.name for f in fields(AdaptConfig)], "unlabeled_dir", "checkpoint_every_steps"]
    assert adapt_config(AdaptParams()) == AdaptConfig()


def test_loading_the_config_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys, roadwork.config as c; c.load_config(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_embedding_check_can_be_switched_off() -> None:
    assert load_config(REPO_PARAMS, ["dedupe.embedding_cosine=null"]).dedupe.embedding_cosine is None


def _all_choices() -> dict[str, tuple[str, ...]]:
    """Every params key that takes a word, with its vocabulary: the schema's own keys and those of the
    sections that mirror a library dataclass."""
    choices = dict(CHOICES)
    for section, library in LIBRARY_SECTIONS.items():
        choices.update({f"{section}.{name}": words for name, words in library.CHOICES.items()})
    return choices


def test_each_vocabulary_is_the_one_the_library_code_holds() -> None:
    """The schema checks each word list by identity with what the code that acts on the value accepts."""
    from roadwork import distributed, vocab
    from roadwork.adapt.config import AdaptConfig
    from roadwork.models import backbone, inference, pooling
    from roadwork.policy import CALIBRATORS, THRESHOLD_RULES
    from roadwork.train.head_config import HeadTrainConfig

    choices = _all_choices()
    assert choices["embed.views"] is vocab.VIEW_MODES is inference.VIEW_MODES
    assert choices["backbone.pooling"] is vocab.POOLINGS is pooling.POOLINGS
    assert (
        choices["backbone.attn_implementation"] is vocab.ATTN_IMPLEMENTATIONS is backbone.ATTN_IMPLEMENTATIONS
    )
    assert choices["trainer.accelerator"] is choices["embed.device"] is distributed.ACCELERATORS
    assert choices["trainer.strategy"] is distributed.STRATEGIES
    assert choices["calibrate.threshold_rule"] is THRESHOLD_RULES
    assert choices["calibrate.threshold_data"] is vocab.THRESHOLD_DATA
    assert set(choices["calibrate.method"]) == set(CALIBRATORS)
    assert choices["embed.precision"] is inference.FEATURE_PRECISIONS
    assert choices["train.precision"] is choices["adapt.precision"] is vocab.TRAINING_PRECISIONS
    assert HeadTrainConfig.CHOICES["precision"] is AdaptConfig.CHOICES["precision"]
    assert [choices[f"train.{k}"] for k in ("head", "feature_transform", "aggregation")] == [
        vocab.HEADS,
        vocab.FEATURE_TRANSFORMS,
        vocab.AGGREGATIONS,
    ]


def test_no_module_spells_out_a_vocabulary_again() -> None:
    """No tuple, list or set of words in src/ other than roadwork/vocab.py equals one of its vocabularies."""
    import ast

    from roadwork import vocab

    vocabularies = {name: set(words) for name, words in vars(vocab).items() if name.isupper()}
    copies = []
    for path in sorted((REPO / "src" / "roadwork").rglob("*.py")):
        if path.name == "vocab.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and node.elts:
                words = {
                    e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)
                }
                if len(words) == len(node.elts):
                    copies += [
                        f"{path.name}:{node.lineno} {n}" for n, v in vocabularies.items() if words == v
                    ]
    assert not copies


def test_the_head_model_takes_exactly_the_schemas_words() -> None:
    from roadwork.models.head import HeadModel

    choices = _all_choices()
    base = {
        "feature_dim": 4,
        "num_views": 2,
        "mlp_hidden": 3,
        "dropout": 0.0,
        "topk": 1,
        "attention_hidden": 2,
    }
    words = {"head": "linear", "feature_transform": "none", "aggregation": "topk_mean"}
    for name in words:
        for word in choices[f"train.{name}"]:
            HeadModel(**base, **{**words, name: word})
        with pytest.raises(ValueError, match=name):
            HeadModel(**base, **{**words, name: "bogus"})


def test_every_word_loads_and_any_other_is_refused_naming_key_and_words() -> None:
    """The one check (validate) takes each word of each vocabulary and refuses another, listing them."""
    import copy
    import functools

    # onecycle needs a warmup; finetune needs the threshold chosen on val_calib
    loaded = load_config(REPO_PARAMS, ["train.warmup_epochs=1", "calibrate.threshold_data=val_calib"])
    for key, words in _all_choices().items():
        *sections, name = key.split(".")
        for word in (*words, "bogus"):
            cfg = copy.deepcopy(loaded)
            setattr(functools.reduce(getattr, sections, cfg), name, word)
            if word != "bogus":
                validate(cfg, "test")
                continue
            with pytest.raises(ConfigError, match=rf"(?<![\w.]){re.escape(key)}'? is 'bogus'") as err:
                validate(cfg, "test")
            assert all(w in str(err.value) for w in words), str(err.value)


def test_the_help_describes_every_word_of_each_vocabulary() -> None:
    """`roadwork <stage> --help` shows describe(key): it names each word the key takes."""
    for key, words in _all_choices().items():
        text = describe(key)
        assert all(re.search(rf"(?<![\w+-]){re.escape(w)}(?![\w+-])", text) for w in words), key


def test_the_cli_promote_metrics_are_the_schemas() -> None:
    from roadwork.cli import build_parser

    for metric in CHOICES["deploy.promote_metric"]:
        assert build_parser().parse_args(["promote", "--metric", metric]).metric == metric
    with pytest.raises(SystemExit):
        build_parser().parse_args(["promote", "--metric", "bogus"])


def test_precision_spellings_map_in_one_place() -> None:
    from roadwork.vocab import FEATURE_PRECISIONS, TRAINING_PRECISIONS, autocasts_bf16

    assert [autocasts_bf16(p) for p in FEATURE_PRECISIONS] == [False, True]
    assert [autocasts_bf16(p) for p in TRAINING_PRECISIONS] == [False, True]
    assert not autocasts_bf16("16-mixed")


@pytest.mark.parametrize(
    ("section", "name", "value"),
    [
        ("train", "lr", 0.0),
        ("train", "head", "mpl"),
        ("train", "warmup_epochs", 40.0),
        ("train.finetune", "lora_rank", 0),
        ("train.finetune", "backbone_lr", float("inf")),
        ("adapt", "lora_dropout", 1.0),
        ("adapt", "mask_ratio_max", 0.05),
    ],
)
def test_params_and_library_dataclass_share_one_rule(section: str, name: str, value: object) -> None:
    """A mirrored key's params error is the library dataclass's own, naming the params key instead."""
    library = LIBRARY_SECTIONS[section]
    with pytest.raises(ValueError) as from_library:
        library(**{name: value})
    with pytest.raises(ConfigError) as from_params:
        load_config(REPO_PARAMS, [f"{section}.{name}={value}"])
    expected = str(from_library.value).replace(f"{library.__name__}.", f"{section}.")
    assert str(from_params.value) == f"{REPO_PARAMS} + overrides: {expected}"


# Issue 18: values are taken as written (never converted), seeds and counts have ranges, no interpolation.


def _params_text(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        ('ingest:\n  workers: "2"\n', "ingest.workers", "expected an integer"),
        ("ingest:\n  workers: 2.0\n", "ingest.workers", "expected an integer"),
        ('embed:\n  tta_flip: "yes"\n', "embed.tta_flip", "expected true or false"),
        ("embed:\n  tta_flip: 1\n", "embed.tta_flip", "expected true or false"),
        ('calibrate:\n  max_fnr: "0.1"\n', "calibrate.max_fnr", "expected a number or null"),
        (
            "embed:\n  augment:\n    level_probs: [0.25, 0.25, 0.25, '0.25']\n",
            "embed.augment.level_probs",
            "expected a list whose items are each a number",
        ),
        ("split: 3\n", "split", "expected a section"),
    ],
)
def test_file_values_are_never_converted(tmp_path: Path, text: str, key: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=rf"invalid value for '{key}': {re.escape(expected)}") as caught:
        load_config(_params_text(tmp_path, text))
    assert "never converted" in str(caught.value)


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ('ingest.workers="2"', "ingest.workers"),
        ("embed.tta_flip=yes", "embed.tta_flip"),
        ("embed.tta_flip=1", "embed.tta_flip"),
    ],
)
def test_override_values_are_never_converted(tmp_path: Path, override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"override: invalid value for '{key}'"):
        load_config(write(tmp_path, {}), [override])


def test_lossless_forms_still_load(tmp_path: Path) -> None:
    """An integer where a float goes, a number where a string goes and null where null is allowed."""
    text = "train:\n  lr: 1\nembed:\n  precision: 32\ncalibrate:\n  max_fnr: null\n"
    cfg = load_config(_params_text(tmp_path, text))
    assert (cfg.train.lr, cfg.embed.precision, cfg.calibrate.max_fnr) == (1.0, "32", None)
    assert isinstance(cfg.train.lr, float)


def test_negative_split_seed_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'split\.seed' is -5; expected an integer >= 0"):
        load_config(_params_text(tmp_path, "split:\n  seed: -5\n"))


def _int_keys(cls: type, prefix: str = "") -> list[str]:
    hints = typing.get_type_hints(cls)
    keys: list[str] = []
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            keys += _int_keys(kind, f"{prefix}{f.name}.")
        elif kind is int or kind == typing.Optional[int]:  # noqa: UP045
            keys.append(f"{prefix}{f.name}")
    return keys


def test_every_seed_and_count_has_a_range() -> None:
    """Every integer of the schema (seeds, counts, sizes) refuses -1, naming the key."""
    keys = _int_keys(RoadworkConfig)
    assert {"split.seed", "data.synth.seed", "ingest.workers", "train.seed", "adapt.seed"} <= set(keys)
    for key in keys:
        with pytest.raises(ConfigError, match=rf"(?<![\w.]){re.escape(key)}'? is -1"):
            load_config(REPO_PARAMS, [f"{key}=-1"])


@pytest.mark.parametrize("value", ["${oc.env:HOME}", "${oc.env:ROADWORK_TEST_SECRET,x}", "v-${oc.env:HOME}"])
def test_environment_interpolation_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("ROADWORK_TEST_SECRET", "hunter2-secret")
    path = _params_text(tmp_path, f"data:\n  dir: '{value}'\n")
    for call in (
        lambda: load_config(path),
        lambda: load_config(REPO_PARAMS, [f"data.dir={value}"]),
    ):
        with pytest.raises(ConfigError, match=r"'data\.dir' is the interpolation .*environment") as caught:
            call()
        assert "hunter2-secret" not in str(caught.value) and os.environ["HOME"] not in str(caught.value)


def test_reference_interpolation_is_refused_too(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'embed\.seed' is the interpolation '\$\{split\.seed\}'"):
        load_config(_params_text(tmp_path, "embed:\n  seed: ${split.seed}\n"))


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ([""], ()),  # `mlflow run -e split` passes its empty `overrides` parameter on as ''
        (["  "], ()),
        (["split.seed=3"], ("split.seed=3",)),
        (["split.seed=3 train.lr=0.01"], ("split.seed=3", "train.lr=0.01")),  # -P overrides="a=1 b=2"
        (["a.b=1", " c.d=2  e=3 "], ("a.b=1", "c.d=2", "e=3")),
        (["deploy.description=a b"], ("deploy.description=a b",)),  # a value with a space stays whole
        (["deploy.description='a b' split.seed=3"], ("deploy.description='a b'", "split.seed=3")),
    ],
)
def test_split_overrides(arguments: list[str], expected: tuple[str, ...]) -> None:
    assert split_overrides(arguments) == expected


def test_split_overrides_load_like_separate_arguments() -> None:
    one = load_config(REPO_PARAMS, split_overrides(["split.seed=3 deploy.description=a b"]))
    assert (one.split.seed, one.deploy.description) == (3, "a b")


def test_every_key_has_a_one_line_description_from_the_schema() -> None:
    keys = flatten(to_dict(RoadworkConfig()))
    assert not [key for key in keys if not describe(key)]
    assert all("\n" not in describe(key) and "``" not in describe(key) for key in keys)
    # the library dataclasses' own docstrings serve the sections that mirror them
    assert describe("train.lr") == "peak learning rate (> 0)."
    assert describe("adapt.lora_rank") == "adapter rank r (>= 1)."
    assert describe("train.loss") == "ce (torch cross-entropy) or focal (roadwork.train.losses.focal_loss)."


def test_field_docs_reads_every_attributes_block() -> None:
    class Documented:
        """Summary.

        Attributes:
            a: first line
                continued.

        Another group:

        Attributes:
            b: second.
        """

    assert field_docs(Documented) == {"a": "first line continued.", "b": "second."}
