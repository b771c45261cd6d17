from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from roadwork.config import (
    ConfigError,
    RoadworkConfig,
    describe,
    field_docs,
    flatten,
    load_config,
    parse_overrides,
    split_overrides,
    to_dict,
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


def test_train_section_mirrors_head_train_config_names_and_defaults() -> None:
    from dataclasses import fields

    from roadwork.config import TrainParams, head_train_config
    from roadwork.train.head_config import HeadTrainConfig

    names = [f.name for f in fields(TrainParams)]
    assert names == ["mode", "refit", *[f.name for f in fields(HeadTrainConfig)], "finetune"]
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


def test_vocabularies_the_schema_checks_are_the_libraries_own() -> None:
    """config keeps its own copies so loading params imports no scipy or torch; they must not drift."""
    from roadwork import config
    from roadwork.models.inference import VIEW_MODES
    from roadwork.models.pooling import POOLINGS
    from roadwork.policy import THRESHOLD_RULES

    assert config.THRESHOLD_RULES == THRESHOLD_RULES and set(config.VIEW_MODES) == set(VIEW_MODES)
    assert config.POOLINGS == POOLINGS


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
