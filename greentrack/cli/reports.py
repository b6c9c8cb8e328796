"""``greentrack report`` and ``greentrack compare``, and the carbon/cost options they share with
``greentrack run``.

Settings are merged in this order, later wins: ``GREENTRACK_*`` environment variables, the
``--config`` TOML file (or ``GREENTRACK_CONFIG``), command-line flags. Bad input ends in one line
naming the setting, the value and what is allowed (exit 2); never a traceback.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Any

from greentrack.carbon.resolve import config_for_run
from greentrack.common.config import TRAINING_TYPES, Config
from greentrack.common.errors import ConfigError
from greentrack.common.files import not_regular, staged_dir
from greentrack.common.text import json_text, printable
from greentrack.process.settings import check_settings
from greentrack.reports.advise import MAX_SLOWDOWN, advise, format_text, run_footprint_of
from greentrack.reports.compare import compare, curves, parse_groups
from greentrack.reports.compare_format import format_html, format_markdown, format_table
from greentrack.reports.document import FORMATS, iter_reports
from greentrack.reports.emissions_log import append
from greentrack.reports.run_data import read_run
from greentrack.reports.summary import footprint_summary
from greentrack.run import parse_target, run_dirs_of
from greentrack.store import store_paths

#: flag -> (Config field, type, help)
CARBON_OPTIONS: dict[str, tuple[str, Any, str]] = {
    "--country": ("country", str, "ISO 3166 alpha-3 or alpha-2 code (FRA, FR) or English name"),
    "--region": ("region", str, "US state, Canadian/Chinese province or Nordic zone (CA, QC, SE3)"),
    "--cloud": ("cloud", str, "PROVIDER:REGION, e.g. gcp:europe-west9, aws:us-east-1"),
    "--carbon-intensity": ("carbon_intensity_g_per_kwh", float, "location-based gCO2e/kWh to use"),
    "--intensity-csv": ("intensity_csv", str, "time series of gCO2e/kWh (greentrack CSV or an "
                                              "Electricity Maps export), integrated over the run"),
    "--market-factor": ("market_factor_g_per_kwh", float, "market-based gCO2e/kWh (contracts, "
                                                          "supplier or residual mix)"),
    "--pue": ("pue", float, "power usage effectiveness (default: provider's, else 1.56)"),
    "--electricity-price": ("electricity_price", float, "price per kWh"),
    "--gpu-hour-price": ("gpu_hour_price", float, "price per GPU-hour"),
    "--currency": ("currency", str, "currency code of the prices, e.g. EUR"),
}
TABLES = {"embodied", "boamps", "hf", "report", "electricitymaps"}


def add_training_type(p: argparse.ArgumentParser) -> None:
    p.add_argument("--training-type", dest="training_type", choices=TRAINING_TYPES,
                   help="what the run is, for the model card's co2_eq_emissions.training_type "
                        "(default: the Hugging Face integration's inference, else not stated)")


def add_project_name(p: argparse.ArgumentParser) -> None:
    p.add_argument("--project-name", dest="project_name", metavar="NAME",
                   help="project_name of the run's emissions.csv rows, as codecarbon's setting "
                        "(default: greentrack; also GREENTRACK_PROJECT_NAME)")


def add_carbon_options(p: argparse.ArgumentParser) -> None:
    """The carbon and cost flags, and ``--config``."""
    g = p.add_argument_group("carbon and cost")
    for flag, (dest, typ, help_) in CARBON_OPTIONS.items():
        g.add_argument(flag, dest=dest, type=typ, metavar=flag[2:].upper().replace("-", "_"),
                       help=help_)
    g.add_argument("--config", dest="config_file", metavar="FILE",
                   help="TOML file with these settings (default: $GREENTRACK_CONFIG)")


#: A config file larger than this is refused before it is read.
MAX_CONFIG_BYTES = 2**20


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Config overrides from a TOML file: top-level keys (or a ``[greentrack]`` table) are Config
    fields; ``[embodied]``, ``[boamps]``, ``[hf]``, ``[report]`` and ``[electricitymaps]`` go into
    ``Config.extra``.

    Raises:
        ConfigError: unreadable file, invalid TOML, unknown key, or a secret in the file.
    """
    import tomllib
    from dataclasses import fields

    path = Path(path)
    what = not_regular(path)
    if what is not None:  # a FIFO would wait for a writer, /dev/zero never end
        raise ConfigError("config", str(path), f"is {what}, not a TOML file")
    try:
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError("config", str(path), f"is larger than {MAX_CONFIG_BYTES // 2**20} MiB "
                              "(a config is a few lines)")
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError("config", str(path), f"cannot be read ({e.strerror or e})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError("config", str(path), f"is not valid TOML ({e})") from None
    except RecursionError:  # tomllib parses nested tables and arrays recursively
        raise ConfigError("config", str(path), "is not valid TOML for greentrack (nested too "
                          "deeply)") from None
    known = {f.name for f in fields(Config)} - {"extra"}
    out: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    flat = {**{k: v for k, v in data.items() if k != "greentrack"}, **dict(data.get("greentrack") or {})}
    for key, value in flat.items():
        if key in TABLES and isinstance(value, dict):
            if key == "electricitymaps":
                if "token" in value:
                    raise ConfigError("electricitymaps.token", "***", "put the token in "
                                      "GREENTRACK_ELECTRICITYMAPS_TOKEN, never in a file that may be shared")
                for k, v in value.items():
                    extra[f"electricitymaps_{k}"] = v
            elif key == "report":
                extra.update(value)
            elif key == "hf" and "training_type" in value:  # a Config field, validated there
                rest = dict(value)
                out.setdefault("training_type", rest.pop("training_type"))
                if rest:
                    extra[key] = rest
            else:
                extra[key] = dict(value)
        elif key in known:
            out[key] = value
        else:
            raise ConfigError(f"{path.name}: {key}", value, "unknown setting; known: "
                              + ", ".join(sorted(known | TABLES)))
    if extra:
        out["extra"] = extra
    return out


def carbon_settings(ns: argparse.Namespace) -> dict[str, Any]:
    """Overrides from ``--config`` (or $GREENTRACK_CONFIG) then from the flags."""
    out: dict[str, Any] = {}
    file = getattr(ns, "config_file", None) or os.environ.get("GREENTRACK_CONFIG")
    if file:
        out.update(load_config_file(file))
    for dest in [d for d, _, _ in CARBON_OPTIONS.values()] + ["training_type", "project_name"]:
        value = getattr(ns, dest, None)
        if value is not None:
            out[dest] = value
    return out


def make_config(ns: argparse.Namespace) -> dict[str, Any]:
    """The explicit settings of the command line (and ``--config``), checked now: a report or
    compare applies them over each run's recorded settings, over the environment."""
    explicit = carbon_settings(ns)
    check_settings(config_for_run(None, explicit))  # one clear line for a bad flag, before any reading
    return explicit


def _formats(text: str) -> list[str]:
    names = [t.strip().lower() for t in text.split(",") if t.strip()]
    if "all" in names:
        import importlib.util
        if importlib.util.find_spec("huggingface_hub") is None:  # the optional extra [hf]
            print("greentrack: warning: no model card (hf): huggingface_hub is not installed "
                  "(pip install 'greentrack[hf]')", file=sys.stderr)
            return [f for f in FORMATS if f != "hf"]
        return list(FORMATS)
    bad = [n for n in names if n not in FORMATS]
    if bad or not names:
        raise ConfigError("--format", text, f"must be all or a comma list of {', '.join(FORMATS)}")
    return list(dict.fromkeys(names))


def add_commands(sub: Any) -> None:
    """Register ``report`` and ``compare`` on the main parser's subparsers."""
    rep = sub.add_parser("report", help="disclosure reports of one or more runs",
                         description="Write energy, carbon and cost disclosures of RUN_DIR(s): "
                                     "json, md, html, csv (codecarbon columns), boamps, hf.")
    rep.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                     help="a run directory; node-local directories of one run joined by '+' "
                          "(node0/run+node1/run) are one run, each store counted once")
    rep.add_argument("--format", default="all", help="all, or a comma list of json, md, html, csv, "
                                                     "boamps, hf (default all)")
    rep.add_argument("--out", default="greentrack-report", metavar="DIR",
                     help="output directory (one sub-directory per run when several)")
    rep.add_argument("--sci-unit", choices=["run", "million-tokens", "flop"],
                     help="SCI functional unit (default run)")
    rep.add_argument("--emissions-csv", metavar="FILE",
                     help="also append each run's row to FILE, a per-project CSV in codecarbon's "
                          "emissions.csv columns (created if missing)")
    add_project_name(rep)
    add_training_type(rep)
    add_carbon_options(rep)
    rep.set_defaults(handler=cmd_report)
    cmp_ = sub.add_parser("compare", help="compare runs side by side",
                          description="Joules per step/sample/token, FLOPs per joule, MFU, duration, "
                                      "emissions and cost of each run, with ratios to a baseline "
                                      "(the first run, or --baseline) and their noise bands.")
    cmp_.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                      help="a run directory; node-local directories of one run joined by '+' "
                           "(node0/run+node1/run) are one run")
    cmp_.add_argument("--json", action="store_true", help="machine-readable output (--format json)")
    cmp_.add_argument("--format", dest="cmp_format", choices=["text", "json", "md", "html"],
                      default=None, help="text (default), json, md, or html (with the metric of "
                                         "--target, else loss, against cumulative kWh per run)")
    cmp_.add_argument("--target", metavar="METRIC<=X",
                      help="energy, emissions, cost, GPU-hours, time, steps and tokens until a "
                           "recorded metric first reached X (<=, >=, <, >), e.g. val_loss<=2.5")
    cmp_.add_argument("--group", action="append", metavar="NAME=RUN,RUN",
                      help="repeated runs of one setting: mean and spread (repeatable)")
    cmp_.add_argument("--baseline", metavar="RUN",
                      help="the run the ratios are to, by directory or by its name in the table "
                           "(default: the first)")
    add_carbon_options(cmp_)
    cmp_.set_defaults(handler=cmd_compare)
    adv = sub.add_parser("advise", help="where a run's energy could go further, ranked",
                         description="Findings ranked by the joules (and grams, and money when "
                                     "prices are set) at stake, each with its evidence from the "
                                     "run's own measurements and a suggestion: energy outside "
                                     "steps, idle GPUs, low MFU, start time (--intensity-csv), "
                                     "region, power limit (from a measured curve only).")
    adv.add_argument("run_dir", metavar="RUN_DIR", help="the run directory to examine")
    adv.add_argument("--json", action="store_true", help="machine-readable output")
    adv.add_argument("--max-slowdown", metavar="FRACTION", default=None,
                     help="slower steps accepted for a lower GPU power limit, as a fraction or a "
                          "percentage (default 0.05, i.e. 5%%; above 100%% only with the %% sign)")
    add_carbon_options(adv)
    adv.set_defaults(handler=cmd_advise)


def _guard(fn: Any, ns: argparse.Namespace) -> int:
    """Run a command; anything unexpected becomes one line (GREENTRACK_DEBUG=1 re-raises)."""
    try:
        return int(fn(ns))
    except (ConfigError, BrokenPipeError):
        raise
    except OSError as e:
        raise ConfigError("path", str(e.filename or ""), f"cannot be used ({e.strerror or e})") from None
    except Exception as e:  # noqa: BLE001 - never a traceback for the user
        if os.environ.get("GREENTRACK_DEBUG"):
            raise
        print(f"greentrack: internal error ({type(e).__name__}: {printable(e, 300)}); rerun with GREENTRACK_DEBUG=1 "
              "for details", file=sys.stderr)
        return 1


def cmd_report(ns: argparse.Namespace) -> int:
    return _guard(_report, ns)


def _report(ns: argparse.Namespace) -> int:
    formats = _formats(ns.format)
    config = make_config(ns)
    unit = ns.sci_unit or str((config.get("extra") or {}).get("sci_unit") or "run")
    out = Path(ns.out)
    if out.exists() and not out.is_dir():
        raise ConfigError("--out", str(out), "exists and is not a directory")
    for run_dir in ns.run_dirs:  # check every directory before writing anything
        for one in run_dirs_of(run_dir):
            store_paths(one)
    # The whole set is written into a temporary directory beside --out and moved into place only
    # when every run's report is done: an error leaves --out as it was.
    with staged_dir(out) as tmp:
        results = list(iter_reports(ns.run_dirs, config, formats, tmp, unit))
    if ns.emissions_csv:
        for w in append([doc for doc, _ in results], ns.emissions_csv):
            print(f"greentrack: warning: {printable(w)}", file=sys.stderr)
    for doc, written in results:
        for path in written:
            print(printable(out / path.relative_to(tmp)))
        for w in doc["warnings"]:
            print(f"greentrack: warning: {printable(doc['run']['run_dir'])}: {printable(w)}",
                  file=sys.stderr)
    return 0


def cmd_compare(ns: argparse.Namespace) -> int:
    return _guard(_compare, ns)


def _compare(ns: argparse.Namespace) -> int:
    target = parse_target(ns.target) if ns.target is not None else None
    groups = parse_groups(ns.group, ns.run_dirs)
    fmt = ns.cmp_format or ("json" if ns.json else "text")
    config = make_config(ns)
    result = compare(ns.run_dirs, config, target=target, groups=groups, baseline=ns.baseline)
    if fmt == "html":
        result["curves"] = curves([r["run_dir"] for r in result["runs"]],
                                  target[0] if target else "loss")
    render = {"json": json_text, "text": format_table, "md": format_markdown, "html": format_html}
    sys.stdout.write(render[fmt](result).rstrip("\n") + "\n")
    return 0


def cmd_advise(ns: argparse.Namespace) -> int:
    return _guard(_advise, ns)


def _advise(ns: argparse.Namespace) -> int:
    explicit = make_config(ns)
    data = read_run(ns.run_dir, step_detail=False)  # advice reads no per-step detail
    config = config_for_run(data.settings, explicit)
    fp = run_footprint_of(data, explicit)
    findings = advise(data, config, fp, max_slowdown=parse_slowdown(ns.max_slowdown))
    if ns.json:
        print(json_text({"run_id": data.summary["run_id"], "run_dir": str(data.run_dir),
                         "energy_j": data.summary["energy_j"]["total"],
                         "footprint": footprint_summary(fp), "findings": findings,
                         "warnings": list(data.warnings) + list(fp.warnings)}))
    else:
        print(format_text(findings, data))
        for w in data.warnings:
            print(f"greentrack: warning: {printable(w)}", file=sys.stderr)
    return 0


def parse_slowdown(text: str | None) -> float:
    """``--max-slowdown``: a fraction (0.05) or a percentage (5%), from 0 to 10 (1000%)."""
    if text is None:
        return MAX_SLOWDOWN
    raw = text.strip()
    try:
        value = float(raw[:-1]) / 100.0 if raw.endswith("%") else float(raw)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 10.0:  # NaN fails too
        raise ConfigError("--max-slowdown", text, "must be a fraction from 0 to 10 (0.05) or a "
                          "percentage from 0% to 1000% (5%)")
    if value > 1.0 and not raw.endswith("%"):  # '5' meant 5% far more often than 500%
        raise ConfigError("--max-slowdown", text, f"reads as {value:.0%} slower steps: for "
                          f"{value:g}% write {value:g}% or {value / 100:g}; a slowdown above "
                          "100% is given with its % sign")
    return value
