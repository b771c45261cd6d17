"""The one entry point: ``roadwork <stage|synth|...> [options] [key=value ...]``.

Heavy libraries (torch, lightning, mlflow) are imported only by the command that needs them, so
``roadwork --help`` and the light stages start quickly.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from roadwork import __version__
from roadwork.layout import BUNDLE_MODEL, ONNX_FILE, SUBMISSION_DIR
from roadwork.vocab import PROMOTE_METRICS

# stage name -> one-line description; each is implemented by roadwork.stages.<name>.main(cfg, overrides)
STAGES: dict[str, str] = {
    "ingest": "decode and verify data/, quarantine bad files, write the manifest and working copies",
    "dedupe": "group exact (sha256) and near (pHash) duplicates; report label conflicts",
    "split": "stratified group split into train / val_select / val_calib / val_test",
    "adapt": "ExPLoRA: self-supervised adaptation of the backbone on train images; merge, check (adapted)",
    "embed": "run the variant's frozen backbone once per image, render and view; cache the features",
    "train": "train the head on cached features (or LoRA + head with train.mode=finetune); val logits",
    "calibrate": "fit calibration, the exact MCC threshold and abstention sets on val_calib: policy.json",
    "evaluate": "val_test once: metrics with group-bootstrap CIs, slices, validator-level robustness, plots",
    "bundle": "choose the variant on val_calib, build the pyfunc and HF export, register 'challenger'",
}
# stages run once per variant (a DVC foreach): they take --variant
VARIANT_STAGES = ("embed", "train", "calibrate", "evaluate")
VARIANTS = ("base", "adapted")

EPILOG = """\
Stages read params.yaml and accept overrides in Hydra's syntax, e.g.
  roadwork split split.seed=3
  roadwork ingest ingest.working_min_side=640 --params my_params.yaml
Normally DVC runs them: `dvc repro` (all stages), `dvc exp run -S split.seed=3` (a variant).
"""


class _StageHelp(argparse.Action):
    """``-h``/``--help`` of a stage: the usual help, then the parameters the stage reads with their values
    (from ``--params`` and any overrides given before ``--help``) and descriptions."""

    def __init__(self, option_strings: Sequence[str], dest: str, stage: str, help: str | None = None) -> None:
        super().__init__(option_strings, argparse.SUPPRESS, default=argparse.SUPPRESS, nargs=0, help=help)
        self.stage = stage

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option: Any = None
    ) -> None:
        from roadwork.config import split_overrides
        from roadwork.stage_help import stage_parameters

        parser.print_help()
        overrides = split_overrides(getattr(namespace, "overrides", None) or ())
        print(f"\n{stage_parameters(self.stage, namespace.params, overrides)}")
        parser.exit()


def _add_stage_parser(subparsers: argparse._SubParsersAction, name: str, description: str) -> None:
    parser = subparsers.add_parser(
        name,
        help=description,
        description=description,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=False,
    )
    parser.add_argument(
        "-h", "--help", action=_StageHelp, stage=name, help="this help and the parameters the stage reads"
    )
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value", help="parameter overrides (Hydra syntax)"
    )
    parser.add_argument(
        "--params", type=Path, default=Path("params.yaml"), help="parameter file (default: %(default)s)"
    )
    if name in VARIANT_STAGES:
        parser.add_argument(
            "--variant",
            choices=VARIANTS,
            default="base",
            help="base: the configured backbone; adapted: its ExPLoRA-adapted copy (default: %(default)s)",
        )


def _add_synth(subparsers: argparse._SubParsersAction) -> None:
    """``roadwork synth``: draw the embedded synthetic data set."""
    synth = subparsers.add_parser(
        "synth",
        help="draw the embedded synthetic street-scene data set (ImageFolder layout)",
        description="Draw procedurally generated street scenes into OUT "
        "(roadwork/, no_roadwork/, metadata.csv, "
        "near_duplicates.csv). The same arguments always give byte-identical files. Defaults come from "
        "params.yaml's data.synth section when that file exists.",
    )
    synth.add_argument(
        "out",
        type=Path,
        metavar="OUT",
        help="output folder (created; must be empty or a previous synth output)",
    )
    synth.add_argument(
        "--n", type=int, default=None, help="number of images, planted near-duplicates included"
    )
    synth.add_argument("--seed", type=int, default=None, help="random seed")
    synth.add_argument(
        "--near-duplicate-fraction", type=float, default=None, help="share of planted near-duplicate copies"
    )
    _hidden_params(synth)
    synth.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_check_data(subparsers: argparse._SubParsersAction) -> None:
    """``roadwork check-data``: what in the data folder DVC cannot take."""
    check = subparsers.add_parser(
        "check-data",
        help="find what in the data folder DVC cannot take or should not copy; --fix moves it aside",
        description="List every entry of DIR that `dvc add` cannot take or should not copy: symlink loops, "
        "dangling links, links pointing outside DIR, folder links, FIFOs, sockets, devices, unreadable "
        "files and folders, each with its fix. Exits 1 when there are any (and no --fix). Nothing is "
        "opened but regular files. Run it before `dvc add`.",
    )
    check.add_argument(
        "dir",
        type=Path,
        nargs="?",
        default=None,
        metavar="DIR",
        help="data folder (default: params data.dir)",
    )
    check.add_argument(
        "--fix",
        action="store_true",
        help="move each listed entry to the quarantine folder (same relative path, by rename: nothing lost)",
    )
    check.add_argument(
        "--quarantine",
        type=Path,
        default=None,
        metavar="QDIR",
        help="quarantine folder, outside DIR (default: DIR-quarantine beside DIR)",
    )
    _hidden_params(check)


def _hidden_params(parser: argparse.ArgumentParser) -> None:
    """``--params FILE``: another params.yaml (tests use it; not in --help)."""
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help=argparse.SUPPRESS)


def _add_fetch(subparsers: argparse._SubParsersAction) -> None:
    """``roadwork fetch``: a public data set at a pinned revision."""
    fetch = subparsers.add_parser(
        "fetch",
        help="download a public data set at a pinned revision, verified, and print the `dvc add` to run",
        description="Download the NATIX roadwork parquet set from the Hugging Face Hub at REVISION (a commit "
        "SHA), verify every file's hash against the revision's metadata (offline: the cache's record of it), "
        "copy the files to OUT and print the `dvc add` to run. HF_TOKEN is used when set; HF_HUB_OFFLINE=1 "
        "takes the files from the cache only.",
    )
    fetch.add_argument("dataset", choices=["natix"], help="which data set")
    fetch.add_argument(
        "--revision", required=True, help="commit SHA of the dataset repository (40 hex digits)"
    )
    fetch.add_argument(
        "--out", type=Path, default=Path("data/natix"), help="folder for the files (default: %(default)s)"
    )
    fetch.add_argument(
        "--allow-moving-revision",
        action="store_true",
        help="accept a branch or tag (e.g. main) and take the commit it points to now",
    )
    fetch.add_argument(
        "--cache-dir", type=Path, default=None, help="Hugging Face cache (default: HF_HUB_CACHE)"
    )
    fetch.add_argument("--repo-id", default=None, help="dataset repository (default: NATIX's roadwork set)")


def _add_predict(subparsers: argparse._SubParsersAction) -> None:
    """``roadwork predict``: score image files with a registered model."""
    predict = subparsers.add_parser(
        "predict",
        help="score image files / folders with a registered model",
        description="Score image files and folders (searched recursively) with an MLflow model. Every "
        "argument and folder entry gets a row, in order; one that is not scored (missing, not an image, a "
        "link loop, a FIFO, a hidden file...) gets decision -1 and the reason in the error column.",
    )
    predict.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="image files or folders")
    predict.add_argument(
        "--model",
        default="models:/roadwork-classifier@champion",
        help="MLflow model URI: models:/NAME@ALIAS, models:/NAME/VERSION, runs:/…, or a local folder "
        "(default: %(default)s)",
    )
    predict.add_argument("--out", type=Path, default=None, help="CSV to write (default: standard output)")
    predict.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_export_onnx(subparsers: argparse._SubParsersAction) -> None:
    """``roadwork export-onnx``: a model folder as one ONNX graph."""
    onnx = subparsers.add_parser(
        "export-onnx",
        help="export a model folder (backbone + head + folded policy) to ONNX",
        description="Export backbone, head and the folded policy as one ONNX graph: input pixel_values "
        "[B, 3, S, S] (the backbone's preprocessing), outputs probability [B] (> 0.5 exactly when the "
        "policy says roadwork) and logits [B, 2]. Checks onnxruntime against torch on a fixed batch.",
    )
    onnx.add_argument("--model", type=Path, default=BUNDLE_MODEL, help="model folder (default: %(default)s)")
    onnx.add_argument("--out", type=Path, default=ONNX_FILE, help="ONNX file (default: %(default)s)")
    onnx.add_argument("--opset", type=int, default=17, help="ONNX opset (default: %(default)s)")


def _add_relog(subparsers: argparse._SubParsersAction) -> None:
    """``roadwork relog``: log a finished stage's outputs again."""
    relog = subparsers.add_parser(
        "relog",
        help="log a finished stage's outputs to MLflow again (after a tracking outage)",
        description="Open a new MLflow run for STAGE and log its metrics.json and small output files; "
        "nothing is recomputed. Then `dvc commit STAGE[@VARIANT]` records the outputs.",
    )
    relog.add_argument("stage", choices=list(STAGES), help="the stage whose outputs to log")
    relog.add_argument("--variant", choices=VARIANTS, default=None, help="variant of a per-variant stage")
    _hidden_params(relog)


def _add_export_submission(subparsers: argparse._SubParsersAction) -> None:
    """``roadwork export-submission``: the folder a NATIX miner publishes."""
    submission = subparsers.add_parser(
        "export-submission",
        help="build the Hugging Face folder a NATIX miner publishes, from the champion",
        description="Export the champion (or --model-uri) as a Hugging Face image-classification folder "
        "that loads in the subnet's pinned transformers 4.45, with a model_card.json the validator accepts "
        "(your hotkey's SS58 address, your own model name, version X.Y.Z, the build time) and a README "
        "with the validator-faithful evaluation. The folder is checked against the model on val_calib "
        "images before success is reported; nothing is uploaded (the upload command is printed).",
    )
    submission.add_argument("--hotkey", required=True, help="the miner's hotkey, an SS58 address")
    submission.add_argument(
        "--model-name", required=True, help="your model's name (the validator refuses one already used)"
    )
    submission.add_argument("--version", default=None, help="X.Y.Z (default: params.yaml deploy.version)")
    submission.add_argument(
        "--out", type=Path, default=SUBMISSION_DIR, help="new folder (default: %(default)s)"
    )
    submission.add_argument(
        "--model-uri",
        default="models:/roadwork-classifier@champion",
        help="MLflow model URI or a local model folder (default: %(default)s)",
    )
    _hidden_params(submission)


def _add_promote(subparsers: argparse._SubParsersAction) -> None:
    """``roadwork promote``: move 'champion' when the challenger is better."""
    promote = subparsers.add_parser(
        "promote",
        help="move 'champion' to 'challenger' when it is better on the current hold-out",
        description="Run the registered 'challenger' and 'champion' on today's val_test images rendered as "
        "the validator sends them (the renders evaluate scores) and move 'champion' only when challenger > "
        "champion + min-delta and the paired group-bootstrap interval of the difference lies above zero "
        "(the first model becomes champion). The decision, both scores and the interval are recorded as "
        "tags on the challenger version.",
    )
    promote.add_argument(
        "--metric",
        choices=PROMOTE_METRICS,
        default=None,
        help="comparison metric (default: params.yaml deploy.promote_metric)",
    )
    promote.add_argument(
        "--min-delta",
        type=float,
        default=None,
        help="required margin (default: params.yaml deploy.promote_min_delta)",
    )
    promote.add_argument("--dry-run", action="store_true", help="decide and record, but move no alias")
    _hidden_params(promote)


def build_parser() -> argparse.ArgumentParser:
    """Every command's parser, in the order ``roadwork --help`` lists them."""
    parser = argparse.ArgumentParser(
        prog="roadwork",
        description="Reproducible roadwork / no-roadwork classifier pipeline (DVC + MLflow).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"roadwork {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_synth(subparsers)
    _add_check_data(subparsers)
    _add_fetch(subparsers)
    for name, description in STAGES.items():
        _add_stage_parser(subparsers, name, description)
    _add_predict(subparsers)
    _add_export_onnx(subparsers)
    _add_relog(subparsers)
    _add_export_submission(subparsers)
    _add_promote(subparsers)
    return parser


def _synth(args: argparse.Namespace) -> None:
    from roadwork.config import SynthParams, load_config
    from roadwork.data.synth import generate_dataset

    defaults = load_config(args.params).data.synth if args.params.is_file() else SynthParams()
    summary = generate_dataset(
        args.out,
        n=args.n if args.n is not None else defaults.n,
        seed=args.seed if args.seed is not None else defaults.seed,
        near_duplicate_fraction=(
            args.near_duplicate_fraction
            if args.near_duplicate_fraction is not None
            else defaults.near_duplicate_fraction
        ),
        show_progress=not args.quiet,
    )
    print(
        f"synth: wrote {summary.n_images} images "
        f"({summary.n_positive} roadwork, {summary.n_negative} no_roadwork, "
        f"{summary.n_near_duplicates} planted near-duplicates) to {args.out}"
    )


def _check_data(args: argparse.Namespace) -> int:
    from roadwork.data.check import check_quarantine_dir, default_quarantine_dir, find_problems, move_aside

    if args.dir is not None:
        data_dir = args.dir
    else:
        from roadwork.config import DataParams, load_config

        data_dir = Path(load_config(args.params).data.dir if args.params.is_file() else DataParams().dir)
    quarantine = args.quarantine or default_quarantine_dir(data_dir)
    check_quarantine_dir(data_dir, quarantine)
    problems = find_problems(data_dir)
    for problem in problems:
        print(f"{data_dir / problem.path}: {problem.kind}: {problem.detail}\n    fix: {problem.fix}")
    if not problems:
        print(f"check-data: nothing in {data_dir} that DVC cannot take")
        return 0
    if not args.fix:
        print(
            f"check-data: {len(problems)} problem(s) in {data_dir}; fix each as shown, or run "
            f"`roadwork check-data {data_dir} --fix` to move them to {quarantine}",
            file=sys.stderr,
        )
        return 1
    for outcome in move_aside(data_dir, problems, quarantine):
        where = outcome.destination if outcome.destination is not None else f"not moved: {outcome.error}"
        print(f"check-data: {data_dir / outcome.problem.path} -> {where}")
    left = find_problems(data_dir)
    if left:
        print(f"check-data: {len(left)} problem(s) remain in {data_dir}; fix them by hand", file=sys.stderr)
        return 1
    print(f"check-data: moved {len(problems)} entr{'y' if len(problems) == 1 else 'ies'} to {quarantine}")
    return 0


def _fetch(args: argparse.Namespace) -> int:
    from roadwork.data.fetch import NATIX_REPO, dvc_add_command, fetch_dataset

    result = fetch_dataset(
        args.out,
        args.revision,
        repo_id=args.repo_id or NATIX_REPO,
        allow_moving_revision=args.allow_moving_revision,
        cache_dir=args.cache_dir,
    )
    print(
        f"fetch: {len(result.files)} file(s), {result.n_bytes / 1e6:.1f} MB of {result.repo_id} at commit "
        f"{result.commit} -> {result.out}, each verified against {result.checked_against}"
    )
    print(f"next: {dvc_add_command(result.out, result.commit)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from roadwork.config import ConfigError
    from roadwork.progress import quiet_library_progress
    from roadwork.tracking import TrackingLostError, TrackingUnavailableError

    try:
        quiet_library_progress()
        if args.command == "synth":
            _synth(args)
            return 0
        if args.command == "check-data":
            return _check_data(args)
        if args.command == "fetch":
            return _fetch(args)
        if args.command == "predict":
            from roadwork.stages import predict

            return predict.main(args.model, args.paths, args.out, show_progress=not args.quiet)
        if args.command == "export-onnx":
            from roadwork.deploy.predictor import export_onnx_from_dir

            diff = export_onnx_from_dir(args.model, args.out, opset=args.opset)
            print(f"export-onnx: wrote {args.out}; onnxruntime vs torch max |dp| {diff:.2e} on a fixed batch")
            return 0
        if args.command == "relog":
            from roadwork.config import load_config
            from roadwork.stages import relog

            variant = args.variant or ("base" if args.stage in VARIANT_STAGES else None)
            return relog.main(load_config(args.params), args.stage, variant)
        if args.command == "export-submission":
            from roadwork.config import load_config
            from roadwork.stages import submission

            return submission.main(
                load_config(args.params),
                hotkey=args.hotkey,
                model_name=args.model_name,
                version=args.version,
                out=args.out,
                model_uri=args.model_uri,
            )
        if args.command == "promote":
            from roadwork.config import load_config
            from roadwork.stages import promote

            cfg = load_config(args.params)
            return promote.main(cfg, metric=args.metric, min_delta=args.min_delta, dry_run=args.dry_run)
        from roadwork.config import load_config, split_overrides

        overrides = split_overrides(args.overrides)
        cfg = load_config(args.params, overrides)
        module = importlib.import_module(f"roadwork.stages.{args.command}")
        if args.command in VARIANT_STAGES:
            module.main(cfg, overrides, variant=args.variant)
        else:
            module.main(cfg, overrides)
    except ConfigError as exc:
        print(f"roadwork {args.command}: configuration error: {exc}", file=sys.stderr)
        return 2
    except (TrackingUnavailableError, TrackingLostError) as exc:
        print(f"roadwork {args.command}: tracking error: {exc}", file=sys.stderr)
        return 3
    except (ValueError, FileNotFoundError) as exc:
        # Library input errors already name the file or argument; a traceback adds nothing for the user.
        print(f"roadwork {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
