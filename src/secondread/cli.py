"""The ``secondread`` command: parse, call, print. Nothing else lives here.

Every user-caused failure arrives as a ``SecondreadError`` and leaves as one line on stderr,
``secondread: error: <file>: <problem>``, with exit code 1; usage errors exit 2 (argparse).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from . import __version__
from .errors import SecondreadError
from .finding import format_probability

log = logging.getLogger("secondread")

EXIT_FAILED = 1
# The data sets `secondread train` knows (secondread.train.DATASETS); kept here so that --help
# does not import torch.
TRAINABLE = ["pneumoniamnist", "breastmnist", "adrenalmnist3d", "lgg", "mini-mias"]


def _fail(exc: SecondreadError) -> None:
    print(f"secondread: error: {exc.message}", file=sys.stderr)


def _report_dirs(images: list[str], out: Path) -> list[Path]:
    """One folder per image (named after its file, made unique); a single image writes into ``out``."""
    if len(images) == 1:
        return [out]
    seen: dict[str, int] = {}
    dirs = []
    for path in images:
        stem = Path(path.split("#")[0]).stem or "image"
        seen[stem] = seen.get(stem, 0) + 1
        dirs.append(out / (stem if seen[stem] == 1 else f"{stem}-{seen[stem]}"))
    return dirs


def _llm_config(args: argparse.Namespace):
    """The optional language-model server of ``--llm-url``/``--llm-model`` (None when not asked)."""
    from .records.llm import LLMConfig

    if not (args.llm_url or args.llm_model):
        return None
    if not (args.llm_url and args.llm_model):
        raise SecondreadError(None, "--llm-url and --llm-model go together")
    return LLMConfig(url=args.llm_url, model=args.llm_model, timeout=args.llm_timeout)


def _add_llm_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--llm-url", metavar="URL", help="optional OpenAI-compatible server on this machine "
                        "(e.g. http://127.0.0.1:8080) to write the summary; off by default")
    parser.add_argument("--llm-model", metavar="NAME", help="the model name that server expects")
    parser.add_argument("--llm-timeout", type=float, default=30.0, metavar="S", help="seconds before falling back")


def cmd_analyze(args: argparse.Namespace) -> int:
    from .analyze import analyze_image
    from .models.bundle import load_bundle
    from .records.merge import RecordSource
    from .suggest import record_area

    bundle = None if args.model == "auto" else load_bundle(args.model)
    if args.explain == "heatmap" and bundle is not None and not hasattr(bundle.model, "probability_map"):
        raise SecondreadError(args.model, "has no lesion map of its own: --explain heatmap needs a detector "
                                          "(mammo-abnormal); use gradcam or gradcam++")
    record = RecordSource(args.notes, args.record)
    if record:  # a bad note or FHIR file fails once, here; each image reads it again with its study date
        record.load(area=record_area(bundle.finding) if bundle is not None else "chest")
    llm = _llm_config(args)
    failed = 0
    for path, out_dir in zip(args.images, _report_dirs(args.images, Path(args.out))):
        try:
            report = analyze_image(path, out_dir, bundle, record, llm=llm, explain_with=args.explain)
        except SecondreadError as exc:
            _fail(exc)
            failed += 1
            continue
        if args.json:
            from .report.build import to_json
            print(to_json(report))
        else:
            s = report["suggestion"]
            print(f"{path}: {s['finding']} p={format_probability(s['probability'], 3)} "
                  f"{'SUGGESTED' if s['suggested'] else 'not suggested'} -> {out_dir / 'report.html'}")
    if failed:
        print(f"secondread: {failed} of {len(args.images)} image(s) failed; the others were analysed",
              file=sys.stderr)
    return EXIT_FAILED if failed else 0


def cmd_train(args: argparse.Namespace) -> int:
    from .train import train_bundle

    config = train_bundle(dataset=args.dataset, out=args.out, data_dir=args.data, epochs=args.epochs,
                          seed=args.seed, limit=args.limit, progress=not args.quiet)
    m = config["metrics"]
    print(f"wrote {args.out}: validation AUC {m['auc']:.4f} "
          f"(95% CI {m['auc_ci95'][0]:.4f}-{m['auc_ci95'][1]:.4f}), threshold {config['threshold']:.4f}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_bundle

    result = evaluate_bundle(args.model, args.data, split=args.split, predictions=args.predictions,
                             plots_dir=args.plots)
    _print_result(result, args.json, ("n", "auc", "auc_ci95", "accuracy", "accuracy_at_threshold", "threshold",
                                      "sensitivity", "specificity", "ece"))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(out=Path(args.out), data_dir=args.data, allow_download=not args.offline)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .info import describe, format_table

    info = describe(args.path, series_uid=args.series)
    print(json.dumps(info, indent=2) if args.json else format_table(info))
    return 0


def cmd_nodules(args: argparse.Namespace) -> int:
    from .nodules import evaluate_nodules, nodules_report

    limit = {} if args.max_candidates is None else {"max_candidates": args.max_candidates}
    if args.evaluate:
        result = evaluate_nodules(args.series, annotations=args.annotations, predictions=args.predictions, **limit)
    else:
        result = nodules_report(args.series, predictions=args.predictions, **limit)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    for c in result.get("candidates", []):
        x, y, z = c["center_mm"]
        print(f"#{c['rank']:<3} score {c['score']:.3f}  centre ({x:.1f}, {y:.1f}, {z:.1f}) mm  "
              f"diameter {c['diameter_mm']:.1f} mm")
    for key in ("sensitivity_at_fp_per_scan", "cpm", "diameters", "caveat"):
        if key in result:
            print(f"{key}: {result[key]}")
    return 0


def cmd_batch(args: argparse.Namespace) -> int:
    from .batch.runner import format_summary, run_batch

    ray_address = None if args.ray is None else (args.ray or "local")
    summary = run_batch(args.input, args.out, models=args.model or ["pneumonia"], workers=args.workers,
                        retry_failed=args.retry_failed, ray_address=ray_address, progress=not args.quiet,
                        llm=_llm_config(args))
    print(format_summary(summary))
    return summary.exit_code


# Localisation sources `secondread localise --model` knows today; classifier maps join when their
# bundles exist (issue 5).
LOCALISERS = {"mammo-blobs": "classical mass candidates on mini-MIAS (breast mask, CLAHE, blob_log)",
              "mammo-calcifications": "classical calcification-cluster candidates on mini-MIAS (Hessian specks, "
                                      "clustered; the third candidate of mammo-abnormal)"}


def cmd_localise(args: argparse.Namespace) -> int:
    from .localise import localise_dataset

    if args.model in LOCALISERS:
        source = None
        if args.model == "mammo-calcifications":
            from .calcifications import calcification_clusters

            def source(image):
                return calcification_clusters(image, top=args.top_k)
        result = localise_dataset(args.data, split=args.split, predictions=args.predictions,
                                  top_k=args.top_k, source=source)
    else:  # a classifier bundle: the regions of its explanation map, scored against the experts
        from .maps import localise_with_map

        result = localise_with_map(args.model, args.data, split=args.split, predictions=args.predictions,
                                   top_k=args.top_k, layer=args.layer, method=args.method)
    _print_result(result, args.json, ("summary", "seconds"))
    return 0


def cmd_deid(args: argparse.Namespace) -> int:
    from .io.deid import deidentify

    summary = deidentify(args.src, args.dst, salt=args.salt)
    if args.json:
        print(json.dumps(summary.to_dict(), indent=2))
    else:
        print(f"de-identified {len(summary.written)} file(s) into {args.dst} "
              f"(PS3.15 Basic Profile); skipped {len(summary.skipped)} non-DICOM file(s)")
        for warning in summary.warnings:
            print(f"secondread: warning: {warning}", file=sys.stderr)
    for failure in summary.failed:
        print(f"secondread: error: {failure['file']}: {failure['problem']}", file=sys.stderr)
    return EXIT_FAILED if summary.failed else 0


def _print_result(result: dict, as_json: bool, keys: tuple[str, ...]) -> None:
    """JSON for scripts, or the headline keys for a person."""
    if as_json:
        print(json.dumps(result, indent=2))
        return
    for key in keys:
        if key in result:
            print(f"{key:>22}  {result[key]}")


def cmd_records_extract(args: argparse.Namespace) -> int:
    from .records import extract_from_file

    record = extract_from_file(args.note, area=args.area).to_dict()
    if args.json:
        print(json.dumps(record, indent=2))
        return 0
    for f in record["facts"]:
        flags = [k for k in ("negated", "uncertain", "historical", "hypothetical", "family") if f[k]]
        print(f"{f['concept']:<24} {f['category']:<12} {f['section'] or '-':<28} {','.join(flags) or 'affirmed'}"
              f"  [{f['start']}:{f['end']}] {f['text']!r}")
    return 0


def cmd_records_negex(args: argparse.Namespace) -> int:
    from .records.negex import evaluate_negex

    result = evaluate_negex(args.tsv, predictions=args.predictions, additions=not args.baseline)
    _print_result(result, args.json, ("n", "headline"))
    return 0


def cmd_records_label(args: argparse.Namespace) -> int:
    from .records.reportlabels import label_reports, score_labels

    result = label_reports(args.reports, args.out)
    if args.gold:
        result["score"] = score_labels(args.out, args.gold)
    _print_result(result, args.json, ("n", "out", "positives"))
    if args.gold and not args.json:
        score = result["score"]
        print(f"{'micro_f1':>22}  {score.get('micro_f1')}\n{'macro_f1':>22}  {score.get('macro_f1')}")
    return 0


def cmd_records_robustness(args: argparse.Namespace) -> int:
    from .records.robustness import robustness

    result = robustness(args.csv, limit=args.limit, area=args.area)
    _print_result(result, args.json, ("area", "notes", "analysed", "empty", "facts", "failures", "seconds", "notes_per_second"))
    return 1 if result.get("failures") else 0


def add_records_parser(sub) -> None:
    """``secondread records ...``: read notes, and measure the reading against experts' labels."""
    r = sub.add_parser("records", help="read clinical notes; evaluate the reading on annotated text")
    rs = r.add_subparsers(dest="records_command", required=True)

    x = rs.add_parser("extract", help="facts (with ConText attributes) from one note")
    x.add_argument("note", metavar="NOTE.txt")
    x.add_argument("--area", default="chest")
    x.add_argument("--json", action="store_true")
    x.set_defaults(func=cmd_records_extract)

    n = rs.add_parser("evaluate-negex", help="negation/temporality/experiencer on a NegEx-format TSV")
    n.add_argument("tsv", metavar="FILE.tsv")
    n.add_argument("--json", action="store_true", help="print one JSON object")
    n.add_argument("--predictions", metavar="OUT.tsv", help="write line, negation, temporality, experiencer")
    n.add_argument("--baseline", action="store_true", help="medspaCy's default ConText rules only")
    n.set_defaults(func=cmd_records_negex)

    lab = rs.add_parser("label-reports", help="label chest X-ray reports with the 14 findings + normal")
    lab.add_argument("reports", metavar="REPORTS.csv")
    lab.add_argument("--out", required=True, metavar="LABELS.csv")
    lab.add_argument("--gold", metavar="LABELS.csv", help="score against these gold labels")
    lab.add_argument("--json", action="store_true")
    lab.set_defaults(func=cmd_records_label)

    rb = rs.add_parser("robustness", help="run every MTSamples note through the reader; notes per second")
    rb.add_argument("csv", metavar="MTSAMPLES.csv")
    rb.add_argument("--limit", type=int, default=None)
    rb.add_argument("--area", default="chest", help="body area whose rules read the notes (chest, breast, brain)")
    rb.add_argument("--json", action="store_true")
    rb.set_defaults(func=cmd_records_robustness)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="secondread", description="A second reader for medical images. "
                                "Decision support, not a diagnosis.")
    p.add_argument("--version", action="version", version=f"secondread {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log progress (never patient identifiers)")
    sub = p.add_subparsers(dest="command", required=True)

    a = sub.add_parser("analyze", help="analyse images (PNG/JPEG/TIFF/PGM/DICOM) and write reports")
    a.add_argument("images", nargs="+", metavar="IMAGE")
    a.add_argument("--notes", metavar="NOTE.txt", help="the patient's free-text note")
    a.add_argument("--record", metavar="FHIR.json", help="the patient's FHIR R4 bundle (merged with the note)")
    _add_llm_options(a)
    a.add_argument("--model", default="auto", help="bundle path or shipped name; 'auto' (default) chooses per "
                   "image from its modality and dimensionality, and a CT volume gets the lung-nodule search")
    a.add_argument("--out", required=True, metavar="DIR", help="report folder (one sub-folder per image if several)")
    a.add_argument("--json", action="store_true", help="also print report.json to stdout")
    a.add_argument("--explain", default=None, choices=["gradcam", "gradcam++", "heatmap"],
                   help="explanation map for positive findings (default: the bundle's choice, else gradcam; "
                        "heatmap: a detector's own lesion map, e.g. mammo-abnormal)")
    a.set_defaults(func=cmd_analyze)

    t = sub.add_parser("train", help="train a model bundle on a data set")
    t.add_argument("--dataset", required=True, choices=TRAINABLE)
    t.add_argument("--out", required=True, metavar="DIR")
    t.add_argument("--data", metavar="PATH", help="data folder (default: $SECONDREAD_DATA or ../shared/data)")
    t.add_argument("--epochs", type=int, default=None, help="default: the task's own setting")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--limit", type=int, default=None, help="train on a seeded random subset of N training images (quick runs)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="evaluate a bundle on a data split")
    e.add_argument("--model", required=True, help="bundle path or shipped name")
    e.add_argument("--data", required=True, metavar="PATH",
                   help="a MedMNIST .npz, or a data set folder laid out like ../shared/data (e.g. mri/lgg)")
    e.add_argument("--split", default="val", choices=["train", "val", "test", "all"],
                   help="'all' scores every split present (ids become <split>/<index>)")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument("--predictions", metavar="OUT.csv", help="write id,label,probability per image")
    e.add_argument("--plots", metavar="DIR", help="write roc.png and confusion.png into DIR")
    e.set_defaults(func=cmd_evaluate)

    i = sub.add_parser("info", help="what a file or DICOM series folder is (no patient identifiers)")
    i.add_argument("path", metavar="PATH", help="a DICOM/NIfTI/PNG... file or a folder of DICOM slices")
    i.add_argument("--json", action="store_true", help="print one JSON object")
    i.add_argument("--series", metavar="UID", help="the Series Instance UID to describe when a folder holds several")
    i.set_defaults(func=cmd_info)

    no = sub.add_parser("nodules", help="lung nodule candidates in a CT series (classical baseline)")
    no.add_argument("series", metavar="SERIES_DIR")
    no.add_argument("--json", action="store_true", help="print one JSON object")
    no.add_argument("--predictions", metavar="OUT.csv", help="write rank,score,x_mm,y_mm,z_mm,diameter_mm")
    no.add_argument("--max-candidates", type=int, default=None, help="at most N candidates (default 50)")
    no.add_argument("--evaluate", action="store_true", help="score against the LIDC readers' XML")
    no.add_argument("--annotations", metavar="XML", help="LIDC XML (default: annotations.xml beside the series)")
    no.set_defaults(func=cmd_nodules)

    b = sub.add_parser("batch", help="analyse a whole folder, manifest or data set; resumable, exactly once")
    b.add_argument("input", metavar="INPUT", help="a folder, a CSV manifest (path[,notes][,fhir]) or a data set folder")
    b.add_argument("--out", required=True, metavar="DIR", help="report folders, journal.sqlite, results.parquet")
    b.add_argument("--model", action="append", metavar="NAME", help="bundle name or path, or 'auto' to choose per study (a CT volume: the "
                   "lung-nodule search); repeatable; default pneumonia")
    b.add_argument("--workers", type=int, default=1, help="worker processes (0 = in this process)")
    b.add_argument("--retry-failed", action="store_true", help="analyse again the studies that failed before")
    b.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run on Ray: a cluster address, or none to start a local instance")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_llm_options(b)
    b.set_defaults(func=cmd_batch)

    lo = sub.add_parser("localise", help="ranked lesion candidates per image, scored against the experts")
    lo.add_argument("--model", required=True, help=f"localiser ({', '.join(LOCALISERS)}) or a classifier bundle "
                    "(regions of its explanation map: brain-mri-tumour's lesion map, mammo-abnormal's detector map)")
    lo.add_argument("--data", required=True, metavar="PATH", help="data root or the mini-MIAS folder (any name: it holds info.csv)")
    lo.add_argument("--split", default="all", help="all, train, val or fold<k> (per-woman splits)")
    lo.add_argument("--predictions", metavar="OUT.csv", help="write id,rank,score,x,y,radius")
    lo.add_argument("--top-k", type=int, default=10, help="candidates kept per image")
    lo.add_argument("--layer", default=None, help="classifier maps: the layer to explain (default: the bundle's)")
    lo.add_argument("--method", default=None, choices=["gradcam", "gradcam++", "heatmap"],
                    help="classifier maps: CAM method, or a detector's own map (default: the bundle's)")
    lo.add_argument("--json", action="store_true")
    lo.set_defaults(func=cmd_localise)

    di = sub.add_parser("deid", help="de-identified copy of a DICOM file or folder (PS3.15 Basic Profile)")
    di.add_argument("src", metavar="IN", help="a DICOM file or a folder of them (searched recursively)")
    di.add_argument("dst", metavar="OUT", help="output file or folder (mirrors the input's relative paths)")
    di.add_argument("--salt", help="secret that makes the new UIDs repeatable across runs (default: random)")
    di.add_argument("--json", action="store_true", help="print the summary as JSON")
    di.set_defaults(func=cmd_deid)

    add_records_parser(sub)

    d = sub.add_parser("demo", help="analyse real validation images with sample notes")
    d.add_argument("--out", default="demo-output", metavar="DIR")
    d.add_argument("--data", metavar="PATH", help="data folder (default: $SECONDREAD_DATA or ../shared/data)")
    d.add_argument("--offline", action="store_true", help="never download PneumoniaMNIST")
    d.set_defaults(func=cmd_demo)

    from . import pacs, segment, serve  # each registers its own sub-commands; heavy imports stay lazy
    pacs.add_parser(sub)
    segment.add_parser(sub)
    serve.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="secondread: %(levelname)s: %(message)s")
    try:
        return args.func(args)
    except SecondreadError as exc:
        _fail(exc)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("secondread: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `secondread info ... | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:  # a bug of ours: still one line, no traceback, unless asked for
        if os.environ.get("SECONDREAD_DEBUG"):
            raise
        print(f"secondread: internal error: {type(exc).__name__} (set SECONDREAD_DEBUG=1 for details)",
              file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
